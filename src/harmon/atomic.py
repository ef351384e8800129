"""Atomic file writes: a temporary sibling is written, flushed to disk and renamed over the target.

An interrupted run (a crash, a killed job, a full disk) then never leaves a truncated file under its final name:
readers see either the old file or the complete new one. Weights, configs, JSON records and images all go
through :func:`atomic_write`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def is_temp(path: Path) -> bool:
    """Whether ``path`` is one of :func:`atomic_write`'s temporaries (``.<name>.<random>.tmp``), left by a crash."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def atomic_write(path: str | Path, write_fn: Callable[[str], object]) -> Path:
    """Call ``write_fn(tmp)`` on a temporary file in ``path``'s folder, sync it, then rename it over ``path``.

    The folder is created when missing. On any failure the temporary is removed and ``path`` keeps its old
    content. The final file gets ordinary permissions (mkstemp creates 0600). Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as f:  # the rename must not reach the disk before the data does
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))
