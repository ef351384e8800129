"""Weight files on disk: reading a flat {name: tensor} dict from .safetensors or a torch pickle, safely
(``weights_only=True``), with every unreadable file named (truncated, corrupt, a Git LFS pointer, code-carrying),
and writing .safetensors atomically. What the tensors must match is :mod:`harmon.loading`'s business."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from harmon.atomic import atomic_write

LFS_POINTER = b"version https://git-lfs"


def _refuse_lfs_pointer(path: Path) -> None:
    """A clone without ``git lfs pull`` holds small text pointers where the weights should be: say so."""
    with open(path, "rb") as f:
        if f.read(len(LFS_POINTER)) == LFS_POINTER:
            raise ValueError(
                f"{path} is a Git LFS pointer, not the weights: fetch the file itself (e.g. `git lfs pull`)"
            )


def _load_pickle(path: Path) -> Any:
    _refuse_lfs_pointer(path)
    errors = (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError, ValueError)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # files in torch's legacy (non-zip) layout cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except errors as err:
        raise ValueError(
            f"refusing to load {path}: it is not a readable plain tensor checkpoint (it may be truncated or "
            f"corrupt, or contain pickled code; only weights_only-safe files are read): {_pickle_reason(path, err)}"
        ) from None


def _pickle_reason(path: Path, err: Exception) -> str:
    """The one informative line of torch.load's error (its weights_only message is a page of advice)."""
    if path.stat().st_size == 0:
        return "the file is empty"
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A .safetensors file's tensors; a truncated or corrupt file is named (safetensors' own error does not)."""
    _refuse_lfs_pointer(path)
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError (not an OSError) for bad headers and sizes
        if isinstance(err, (MemoryError, KeyboardInterrupt)):
            raise
        raise ValueError(f"{path} is not a readable .safetensors file (truncated or corrupt?): {err}") from None


def _tensors_only(sd: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(sd, Mapping):
        raise ValueError(f"{path} does not hold a state dict (found {type(sd).__name__})")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: entries that are not tensors: {', '.join(map(str, bad[:20]))}")
    return dict(sd)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def read_weights(path: str | Path, entry: str | None = None) -> dict[str, torch.Tensor]:
    """Load a flat {name: tensor} dict from .safetensors or a torch pickle (``weights_only=True``).

    ``entry`` selects a sub-dict of a pickle (e.g. ``"model"`` for kl16.ckpt); without it a top-level
    ``"state_dict"`` entry is unwrapped. A pickle that carries code or objects other than tensors and plain
    containers is refused with a ValueError naming the file.
    """
    path = _existing(path)
    if path.suffix == ".safetensors":
        return _tensors_only(_read_safetensors(path), path)
    sd = _load_pickle(path)
    if entry is not None:
        if not isinstance(sd, Mapping) or entry not in sd:
            keys = list(sd)[:10] if isinstance(sd, Mapping) else type(sd).__name__
            raise ValueError(f"{path} has no {entry!r} entry (top level: {keys})")
        sd = sd[entry]
    elif isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    return _tensors_only(sd, path)


def read_vae_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A VAE state dict: kl16.ckpt keeps it under ``"model"``; a .safetensors file or a plain pickle is it."""
    path = _existing(path)
    if path.suffix == ".safetensors":
        return read_weights(path)
    raw = _load_pickle(path)
    if isinstance(raw, Mapping) and isinstance(raw.get("model"), Mapping):
        return _tensors_only(raw["model"], path)
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        return _tensors_only(raw["state_dict"], path)
    return _tensors_only(raw, path)


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    """Write tensors (detached, contiguous, on the CPU) to a .safetensors file atomically."""
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata))
