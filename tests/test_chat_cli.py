"""``harmon chat`` in a pseudo-terminal (pexpect), as a person types into it, on the shipped model offline."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from harmon.shipped import shipped_model_path

pytestmark = pytest.mark.skipif(shipped_model_path() is None, reason="this checkout carries no shipped model")
SRC = str(Path(__file__).resolve().parents[1] / "src")
GOLDEN = json.loads((Path(__file__).parent / "golden" / "golden.json").read_text())["describe"]


def golden_image(case: dict) -> Path:
    return shipped_model_path().parent / "eval" / "shapes_pope" / "images" / case["image"]


@pytest.mark.slow
def test_a_conversation_in_a_terminal(tmp_path):
    pexpect = pytest.importorskip("pexpect")
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TERM": "dumb"}
    child = pexpect.spawn(
        sys.executable, ["-m", "harmon.cli", "chat"], env=env, encoding="utf-8", timeout=90, dimensions=(40, 250)
    )
    try:
        child.expect("/image PATH attaches an image")
        case = GOLDEN[3]
        child.expect("you> ")
        child.sendline(f"/image {golden_image(case)}")
        child.expect(r"\(image \S+ attached to your next message\)")
        child.sendline(case["question"])
        child.expect(r"harmon> (.*?)\r\n")
        assert child.match.group(1) == case["answer"]  # a one-turn chat answers as describe
        child.sendline("How many circles are there?")
        child.expect(r"harmon> (.*?)\r\n")
        second = child.match.group(1)
        child.sendline("/image /no/such/picture.png")
        child.expect("harmon chat: error: image file not found: /no/such/picture.png")
        child.sendline(f"/save {tmp_path / 'talk.json'}")
        child.expect(r"\(saved 4 messages to ")
        child.sendline("/reset")
        child.expect(r"\(conversation cleared\)")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    saved = json.loads((tmp_path / "talk.json").read_text())["messages"]
    assert [m["role"] for m in saved] == ["user", "assistant", "user", "assistant"]
    assert saved[0]["content"][0] == {"type": "image", "path": str(golden_image(case))}
    assert saved[1]["content"] == case["answer"] and saved[3]["content"] == second


class Recorder:
    """A terminal stand-in that keeps each write."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        pass


def test_the_answer_is_written_piece_by_piece_as_it_streams():
    from harmon.cli.chat import ANSWER, TerminalChat
    from harmon.pipeline import HarmonPipeline

    pipe = HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu")
    out = Recorder()
    session = TerminalChat(pipe, {}, out)
    session.command(f"/image {golden_image(GOLDEN[3])}")
    session.turn(GOLDEN[3]["question"])
    start = out.writes.index(ANSWER)
    pieces = out.writes[start + 1 : out.writes.index("\n", start)]
    assert len(pieces) >= 2 and "".join(pieces) == GOLDEN[3]["answer"]
    with pytest.raises(ValueError, match="context"):
        session.turn("word " * 600)  # named, and the conversation keeps its two messages
    assert len(session.messages) == 2
