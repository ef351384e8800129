"""``harmon chat``: a conversation about images in the terminal, each answer printed as the model writes it."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from harmon.cli.common import add_model_args, int_at_least, load_pipeline, seed_value, seeded

HELP = (
    "Type a message and press Enter. /image PATH attaches an image to your next message, /reset starts over, "
    "/save FILE writes the conversation as JSON, /quit (or Ctrl-D) ends."
)
PROMPT = "you> "
ANSWER = "harmon> "


class TerminalChat:
    """One conversation: the messages so far, the images waiting for the next message, and the decoding settings.

    Images are read when attached (a bad file is named at once) and kept in memory for the whole conversation;
    the transcript records their paths.
    """

    def __init__(self, pipe, settings: dict[str, Any], out: TextIO, model: str = "shipped") -> None:
        self.pipe, self.settings, self.out, self.model = pipe, settings, out, model
        self.messages: list[dict[str, Any]] = []
        self.pending: list[tuple[Path, Any]] = []  # (path, PIL image) for the next user message

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def command(self, line: str) -> bool:
        """Run a /command; False when it ends the conversation."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit"):
            return False
        if name == "/image" and arg:
            from harmon.images import load_image

            path = Path(arg).expanduser().resolve()
            self.pending.append((path, load_image(path)))
            self.say(f"(image {path.name} attached to your next message)")
        elif name == "/reset":
            self.messages.clear()
            self.pending.clear()
            self.say("(conversation cleared)")
        elif name == "/save" and arg:
            from harmon.atomic import write_text_atomic

            path = write_text_atomic(Path(arg).expanduser(), json.dumps(self.transcript(), indent=2) + "\n")
            self.say(f"(saved {len(self.messages)} messages to {path})")
        else:
            self.say(HELP)
        return True

    def turn(self, text: str) -> None:
        """Send ``text`` (with the pending images) and print the answer as it streams in. Ctrl-C stops the answer
        and keeps what was written; an error drops the message and names the problem."""
        parts = [{"type": "image", "image": image, "path": str(path)} for path, image in self.pending]
        user = {"role": "user", "content": [*parts, {"type": "text", "text": text}]}
        stream = self.pipe.chat([*self.messages, user], stream=True, **self.settings)  # raises before any output
        self.out.write(ANSWER)
        pieces: list[str] = []
        try:
            for piece in stream:
                pieces.append(piece)
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            stream.close()
            self.out.write(" [stopped]")
        self.out.write("\n")
        self.out.flush()
        self.pending.clear()
        self.messages += [user, {"role": "assistant", "content": "".join(pieces)}]

    def transcript(self) -> dict[str, Any]:
        """The conversation as JSON: images by path, in the order of their message's parts."""

        def part(p: dict[str, Any]) -> dict[str, Any]:
            return {"type": "image", "path": p["path"]} if p["type"] == "image" else p

        messages = [
            {**m, "content": [part(p) for p in m["content"]]} if isinstance(m["content"], list) else m
            for m in self.messages
        ]
        return {"model": self.model, "messages": messages}


def cmd_chat(args: argparse.Namespace) -> int:
    from harmon.decoding import check_decoding_settings

    # every message would fail on a bad setting: refuse it once, before the model loads
    check_decoding_settings(args.max_new_tokens or 1, args.temperature, args.top_p, 1.0)
    pipe = load_pipeline(args)
    if args.image_size is not None:
        pipe.image_tokens(args.image_size, "--image-size")
    settings = {
        "max_new_tokens": args.max_new_tokens,
        "do_sample": args.sample,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "generator": seeded(args.seed),
        "image_size": args.image_size,
    }
    session = TerminalChat(pipe, settings, sys.stdout, model=args.model or args.checkpoint or "shipped")
    for path in args.image or []:
        session.command(f"/image {path}")
    session.say(HELP)
    return converse(session, args.command)


def converse(session: TerminalChat, command: str) -> int:
    """Read lines until /quit or end of input; a bad command or message is named and the conversation goes on."""
    with contextlib.suppress(ImportError):  # line editing and history for input(), where the platform has it
        import readline  # noqa: F401
    while True:
        try:
            line = input(PROMPT).strip()
        except (EOFError, KeyboardInterrupt):
            session.say("")
            return 0
        if not line:
            continue
        try:
            if line.startswith("/"):
                if not session.command(line):
                    return 0
            else:
                session.turn(line)
        except (ValueError, OSError, TypeError) as err:
            session.say(f"harmon {command}: error: {err}")


def add_chat(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("chat", help="a conversation about images in the terminal (answers streamed)")
    c.add_argument("--image", action="append", help="attach an image to the first message (repeatable)")
    c.add_argument("--max-new-tokens", type=int_at_least(1), help="longest answer in tokens (default: the model's)")
    c.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    c.add_argument("--temperature", type=float, default=1.0)
    c.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the top tokens of this mass")
    c.add_argument("--image-size", type=int, help="pixels the encoder sees (default: the model's understanding size)")
    c.add_argument("--seed", type=seed_value, default=0)
    add_model_args(c)
    c.set_defaults(func=cmd_chat)
