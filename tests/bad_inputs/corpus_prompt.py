"""Prompts and questions: empty, too long for the model's context (issue item 8), not text or not UTF-8, and
chat-template tokens typed by a user (issue item 10), which must be escaped or refused, never injected."""

from __future__ import annotations

from corpus_case import Case, Ctx, api, cli
from corpus_files import file_bytes, png, text
from PIL import Image

from harmon.prompts import END_OF_TEXT, IM_END, IM_START

LONG = "x" * 100_000  # a pasted document
# ~1200 tokens: a long question, still far below LONG, beyond the shipped model's 512 positions
BEYOND_CONTEXT = "What colour is the shape on the left of the picture? " * 110


def gen(prompt: str, *flags: str) -> list[str]:
    return ["generate", prompt, "-o", "{ws}/x.png", "--model", "{model}", *flags]


def describe(question: str) -> list[str]:
    return ["describe", "{ws}/img.png", question, "--model", "{model}", "--max-new-tokens", "2"]


def geneval(*flags: str) -> list[str]:
    return ["eval", "geneval", "--outdir", "{ws}/out", "-n", "1", "--model", "{model}", *flags]


# special-token counts of one templated conversation (see harmon.prompts.CHAT_TEMPLATE)
TEMPLATE = {IM_START: 2, IM_END: 1, END_OF_TEXT: 0}


def stays_text(token: str, describe_it: bool):
    """A call: ``token`` typed by the user inside a prompt (or question); the special tokens the model receives
    must be the template's own, or the input refused with the token named."""

    def call(ctx: Ctx) -> str:
        pipe = ctx.pipe
        embedded: list[list[int]] = []  # every id sequence the LLM's token embedding receives
        embedding = pipe.model.llm.get_input_embeddings()
        hook = embedding.register_forward_hook(lambda module, args, out: embedded.extend(args[0].tolist()))
        user_text = f"a red circle {token} and a blue square"
        try:
            if describe_it:
                pipe.describe(Image.new("RGB", (64, 64), "red"), user_text, max_new_tokens=1)
                rows = [[i for row in embedded[:2] for i in row]]  # the prompt's text before and after the image
            else:
                pipe.generate(user_text, num_iter=1, num_sampling_steps="1", guidance_scale=1.0)
                rows = embedded
        except ValueError as err:
            if token in str(err):
                return f"escaped or refused: {err}"
            raise
        finally:
            hook.remove()
        expected = {**TEMPLATE, pipe.config.image_token: 0}  # describe's image slot holds embeddings, not the token
        for row in rows:
            for special, n in expected.items():
                got = row.count(pipe.tokenizer.convert_tokens_to_ids(special))
                assert got == n, f"{token!r} typed by the user reached the model as {got} x {special} (expected {n})"
        return "escaped or refused: kept as text"

    return call


LENGTH = [
    cli(
        "prompt-100k-characters",
        "prompt",
        gen(LONG),
        ("prompt", "too long"),
    ),
    cli(
        "prompt-question-100k-characters",
        "prompt",
        describe(LONG),
        ("question", "too long"),
        setup=png,
    ),
    cli(
        "prompt-question-beyond-context",
        "prompt",
        describe(BEYOND_CONTEXT),
        ("question", "too long"),
        setup=png,
    ),
    api(
        "prompt-api-100k-characters",
        "prompt",
        lambda ctx: ctx.pipe.generate(LONG),
        ValueError,
        ("prompt", "too long"),
    ),
    api(
        "prompt-api-one-long-prompt-among-short",
        "prompt",
        lambda ctx: ctx.pipe.generate(["a red circle", BEYOND_CONTEXT]),
        ValueError,
        ("prompt", "too long"),
    ),
    api(
        "prompt-api-question-beyond-context",
        "prompt",
        lambda ctx: ctx.pipe.describe(Image.new("RGB", (64, 64)), BEYOND_CONTEXT),
        ValueError,
        ("question", "too long"),
    ),
]

EMPTY = [
    cli(
        "prompt-empty",
        "prompt",
        gen(""),
        ("prompt", "empty"),
    ),
    cli(
        "prompt-whitespace-only",
        "prompt",
        gen("   "),
        ("prompt", "empty"),
    ),
    cli("prompt-newlines-only", "prompt", gen("\n\n"), ("prompt", "empty")),
    cli("prompt-question-empty", "prompt", describe(""), "question", setup=png),
    cli("prompt-question-whitespace", "prompt", describe("  \t "), "question", setup=png),
    api("prompt-api-empty-list", "prompt", lambda ctx: ctx.pipe.generate([]), ValueError, "empty"),
    api(
        "prompt-api-empty-among-others",
        "prompt",
        lambda ctx: ctx.pipe.generate(["a red circle", ""]),
        ValueError,
        "empty",
    ),
]

NOT_TEXT = [
    api(
        "prompt-api-bytes",
        "prompt",
        lambda ctx: ctx.pipe.generate(b"a red circle"),
        TypeError,
        "bytes",
    ),
    api(
        "prompt-api-none",
        "prompt",
        lambda ctx: ctx.pipe.generate(None),
        TypeError,
        ("prompt", "None"),
    ),
    api("prompt-api-number-in-list", "prompt", lambda ctx: ctx.pipe.generate(["a red circle", 3]), TypeError, "int"),
    api(
        "prompt-api-question-bytes",
        "prompt",
        lambda ctx: ctx.pipe.describe(Image.new("RGB", (64, 64)), b"What is it?"),
        TypeError,
        "bytes",
    ),
    cli(
        "prompt-argv-not-utf8",
        "prompt",
        gen("caf\udce9 au lait"),
        "UTF-8",
    ),
    cli(
        "prompt-question-argv-not-utf8",
        "prompt",
        describe("qu'est-ce que c'est \udce9"),
        "UTF-8",
        setup=png,
    ),
    cli(
        "prompt-file-not-utf8",
        "prompt",
        geneval("--prompts", "{ws}/p.jsonl"),
        ("{ws}/p.jsonl", "UTF-8"),
        setup=file_bytes("p.jsonl", b'{"prompt": "caf\xe9"}\n'),
        before_model=True,
    ),
    cli(
        "prompt-file-empty",
        "prompt",
        geneval("--prompts", "{ws}/p.jsonl"),
        ("{ws}/p.jsonl", "no prompts"),
        setup=text("p.jsonl", ""),
        before_model=True,
    ),
    cli(
        "prompt-file-prompt-is-a-number",
        "prompt",
        geneval("--prompts", "{ws}/p.jsonl"),
        ("{ws}/p.jsonl", "'prompt'"),
        setup=text("p.jsonl", '{"prompt": 3}\n'),
        before_model=True,
    ),
    cli(
        "prompt-file-json-array",
        "prompt",
        geneval("--prompts", "{ws}/p.jsonl"),
        "{ws}/p.jsonl",
        setup=text("p.jsonl", '[{"prompt": "a red circle"}]\n'),
        before_model=True,
    ),
    cli(
        "prompt-file-without-prompt-field",
        "prompt",
        geneval("--prompts", "{ws}/p.jsonl"),
        ("{ws}/p.jsonl", "prompt"),
        setup=text("p.jsonl", '{"text": "a red circle"}\n'),
        before_model=True,
    ),
    cli(
        "prompt-file-missing",
        "prompt",
        geneval("--prompts", "{ws}/nope.jsonl"),
        "{ws}/nope.jsonl",
        before_model=True,
    ),
]

# what the model receives today when the user types each token (the template's own count in brackets)
CHAT_TOKENS = [
    api(
        f"prompt-{name}-in-{where}",
        "prompt",
        stays_text(token, where == "question"),
        None,
        "escaped or refused",
    )
    for name, token in (("im-end", IM_END), ("im-start", IM_START), ("endoftext", END_OF_TEXT), ("image", "<image>"))
    for where in ("prompt", "question")
]

CASES: list[Case] = [*LENGTH, *EMPTY, *NOT_TEXT, *CHAT_TOKENS]
