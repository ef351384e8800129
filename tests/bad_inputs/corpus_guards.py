"""What keeps a case that misbehaves today from taking the test run down with it, and what records its outcome.

A case whose check is missing may run a model on a 100k-token prompt or draw a 10^12-pixel image. Tripwires on the
shared model stop such work at its start; a memory ceiling and an alarm stop whatever gets past them. Each stop
raises an exception no command catches, so the case reads as a raw traceback: the failure it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import resource
import signal
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The most image tokens a case may draw or encode on the shared 64-px model before a tripwire stops it: a
# 2048-px image, far beyond anything a sane check lets through.
MAX_GRID_TOKENS = 64 * 64
CASE_SECONDS = 10  # every case either fails early or runs the tiny model briefly
CASE_EXTRA_BYTES = 4 << 30  # address space a case may add before allocations fail


class Tripwire(Exception):
    """The shared model was asked to do work that a missing check should have refused."""


class ReachedModel(Exception):
    """A case that must be refused on its arguments alone went on to load a model."""


class CaseTimeout(Exception):
    """A case ran past :data:`CASE_SECONDS`."""


def install_tripwires(pipe: Any) -> None:
    """Refuse, on the shared pipeline's model, LLM inputs longer than its context and oversized image grids."""
    model = pipe.model
    context = int(model.llm.config.max_position_embeddings)

    def llm_input(_module, args: tuple, kwargs: dict) -> None:
        x = kwargs.get("inputs_embeds")
        x = kwargs.get("input_ids") if x is None else x
        x = args[0] if x is None and args else x
        if x is not None and x.shape[1] > context:
            raise Tripwire(f"the LLM was run on {x.shape[1]} positions, beyond its context of {context}")

    model.llm.model.register_forward_pre_hook(llm_input, with_kwargs=True)
    grid_for = model.grid_for

    def checked_grid(image_size: Any) -> tuple[int, int]:
        h, w = grid_for(image_size)
        if h * w > MAX_GRID_TOKENS:
            raise Tripwire(f"an image of {h}x{w} tokens was about to be drawn or encoded")
        return h, w

    model.grid_for = checked_grid


def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _alarm(_signum: int, _frame: Any) -> None:
    raise CaseTimeout(f"the case ran past {CASE_SECONDS} s")


@contextlib.contextmanager
def limits() -> Iterator[None]:
    """A memory ceiling (current address space + :data:`CASE_EXTRA_BYTES`) and an alarm, both lifted after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    ceiling = _vm_bytes() + CASE_EXTRA_BYTES
    if hard != resource.RLIM_INFINITY:
        ceiling = min(ceiling, hard)
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, hard))
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@dataclass
class Outcome:
    """How a case ended: ``code`` (an exit status, or None when a Python call returned or raised), ``error``
    (the exception a call raised), ``message`` (stderr, the exception text, or stdout/the result on success) and
    ``raw``: the traceback of an exception that escaped (which the user would have seen)."""

    code: int | None
    error: BaseException | None
    message: str
    raw: str | None = None


def raw_outcome(err: BaseException) -> Outcome:
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return Outcome(1, err, f"{type(err).__name__}: {err}", raw=text)


def run_cli(argv: list[str]) -> Outcome:
    """``harmon.cli.main(argv)`` in this process as the ``harmon`` command would end: the exit status, the
    stderr text (stdout on success); a SystemExit with a message exits 1 with that message, as Python does."""
    from harmon import cli

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), limits():
            code = cli.main(argv)
    except SystemExit as done:
        if isinstance(done.code, str):
            err.write(done.code + "\n")
            code = 1
        else:
            code = done.code or 0
    except Exception as escaped:
        return raw_outcome(escaped)
    return Outcome(code, None, out.getvalue() if code == 0 else err.getvalue())


def run_call(call: Any, ctx: Any) -> Outcome:
    """``call(ctx)`` under the limits: what it returned (as text) or raised."""
    try:
        with limits():
            result = call(ctx)
    except Exception as err:
        return Outcome(None, err, str(err))
    return Outcome(None, None, str(result))


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def stats(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under ``folder``: a cheap check that a shared folder was not written."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}
