"""The ``harmon`` command: one module per command group, assembled into one parser here.

Commands import torch, transformers and the model only when they run, so building the parser (and answering
``--help`` or ``--version``) stays fast. ``python -m harmon.cli ...`` runs the same command (torchrun uses it).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from harmon import __version__
from harmon.cli.analyze import add_analyze
from harmon.cli.chat import add_chat
from harmon.cli.eval import add_eval
from harmon.cli.generate import add_convert, add_describe, add_edit, add_generate
from harmon.cli.serve import add_serve
from harmon.cli.train import add_train

# never reach for a hub: everything we load is local (set before any command imports transformers)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# errors a command raises for bad input (an unreadable or missing file, a wrong setting, a bad image, a number too
# large for a float): one stderr line naming the problem, not a traceback (--debug shows it)
EXPECTED_ERRORS = (ValueError, OSError, TypeError, OverflowError)
# how running out of memory reads: Python's MemoryError, torch's CPU allocator and CUDA's OutOfMemoryError
OUT_OF_MEMORY = ("can't allocate memory", "bad_alloc", "out of memory")


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says that an allocation failed (a request too large for this machine, not a fault)."""
    return isinstance(err, MemoryError) or (
        isinstance(err, RuntimeError) and any(words in str(err) for words in OUT_OF_MEMORY)
    )


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (``harmon generate: error: argument -o: ...``), like a command's own
    errors; ``--help`` still shows the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="harmon", description="Harmon: one shared encoder for image understanding and generation.")
    parser.add_argument("--version", action="version", version=f"harmon {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not one line")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train(sub)
    add_generate(sub)
    add_edit(sub)
    add_describe(sub)
    add_chat(sub)
    add_serve(sub)
    add_eval(sub)
    add_analyze(sub)
    add_convert(sub)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; an expected error becomes ``harmon <command>: error: ...`` and exit status 2."""
    try:
        return args.func(args)
    except (*EXPECTED_ERRORS, MemoryError, RuntimeError) as err:
        if getattr(args, "debug", False) or not (isinstance(err, EXPECTED_ERRORS) or out_of_memory(err)):
            raise
        if out_of_memory(err):
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            err = f"out of memory ({first[:200]}); ask for less at once: fewer images, a smaller image or batch"
        print(f"harmon {args.command}: error: {err}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as done:  # --help, --version, or a flag refused while parsing (one line on stderr)
        return done.code if isinstance(done.code, int) else 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    return run(args)
