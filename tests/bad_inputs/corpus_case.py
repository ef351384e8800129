"""The record of one bad-input case, the context its files and calls are built from, and the table's constructors.

A case is data: what the user does (``argv`` for the ``harmon`` command, or ``call`` for the Python API), the files
they have beforehand (``setup``), and what must happen (an exit status or an exception type, and phrases that the
message must contain, so that it names the problem). ``test_corpus.py`` runs every case the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The table's areas, in the order; every case belongs to one.
AREAS = ("cli", "api", "config", "checkpoint", "image", "prompt", "train")


@dataclass
class Ctx:
    """What a case's setup and call work with.

    ``ws`` is the case's own folder (the user's files: every one is hashed before and after the command); ``model``
    a pristine copy of the shipped model shared by all cases (read-only by convention, checked after each case);
    ``pipe`` that model loaded once; ``run`` a finished two-step toy training run to copy from.
    """

    ws: Path
    model: Path
    pipe: Any
    run: Path

    def path(self, name: str) -> Path:
        """``ws / name``, its folder made."""
        p = self.ws / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


@dataclass(frozen=True)
class Case:
    """One bad input and its expected outcome.

    ``expect``: an exit status of ``harmon.cli.main`` (CLI cases) or an exception type (API cases); 0 or None
    mark the few inputs that must *work* (a 1x1 image, a transparent one), whose phrases are looked for in the
    standard output or in ``str()`` of the call's result. ``before_model``: the refusal must come before any
    model is loaded (a check that can be made on the arguments alone). ``xfail``: what happens today, while the
    fix is pending (strict: the case fails once the fix lands, and the marker must go). ``cpu_only``: skipped
    where CUDA is available (a ``--device cuda`` case). Phrases may hold ``{ws}`` and ``{model}`` too.
    """

    id: str
    area: str
    expect: int | type[BaseException] | tuple[type[BaseException], ...] | None
    phrases: tuple[str, ...]
    argv: tuple[str, ...] = ()
    call: Callable[[Ctx], Any] | None = None
    setup: Callable[[Ctx], Any] | None = None
    before_model: bool = False
    xfail: str | None = None
    cpu_only: bool = False

    @property
    def kind(self) -> str:
        return "api" if self.call is not None else "cli"

    def __post_init__(self) -> None:
        if self.area not in AREAS:
            raise ValueError(f"case {self.id}: unknown area {self.area!r}")
        if self.call is not None and self.argv:
            raise ValueError(f"case {self.id}: give argv or call, not both")
        if not self.phrases or not all(self.phrases):
            raise ValueError(f"case {self.id}: give at least one non-empty phrase")


def _phrases(phrase: str | tuple[str, ...]) -> tuple[str, ...]:
    return (phrase,) if isinstance(phrase, str) else tuple(phrase)


def cli(
    id: str,
    area: str,
    argv: list[str] | tuple[str, ...],
    phrase: str | tuple[str, ...],
    *,
    code: int = 2,
    setup: Callable[[Ctx], Any] | None = None,
    before_model: bool = False,
    xfail: str | None = None,
    cpu_only: bool = False,
) -> Case:
    """A ``harmon`` command line; ``{ws}`` and ``{model}`` in an argument stand for the case's folder and the
    shared model copy. ``code`` is the exit status (2: a one-line ``harmon <cmd>: error: ...``)."""
    return Case(
        id,
        area,
        code,
        _phrases(phrase),
        argv=tuple(argv),
        setup=setup,
        before_model=before_model,
        xfail=xfail,
        cpu_only=cpu_only,
    )


def api(
    id: str,
    area: str,
    call: Callable[[Ctx], Any],
    raises: type[BaseException] | tuple[type[BaseException], ...] | None,
    phrase: str | tuple[str, ...],
    *,
    setup: Callable[[Ctx], Any] | None = None,
    before_model: bool = False,
    xfail: str | None = None,
) -> Case:
    """A Python call; ``raises`` is the exception type expected (a subclass passes), None when it must return."""
    return Case(id, area, raises, _phrases(phrase), call=call, setup=setup, before_model=before_model, xfail=xfail)


def as_root(reason: str) -> str | None:
    """``reason`` when running as root, else None: root passes ``os.access`` write checks on folders it cannot
    write in fact (/sys, /proc), so such a case fails only as root."""
    return reason if os.geteuid() == 0 else None


def expand(arg: str, ctx: Ctx) -> str:
    """``{ws}`` and ``{model}`` replaced (plain replacement: prompts may hold braces of their own)."""
    return arg.replace("{ws}", str(ctx.ws)).replace("{model}", str(ctx.model))
