"""Reading weight files safely and checking them against a model, naming every key that does not fit."""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TIED_KEYS = ("llm.lm_head.weight",)  # the LM head shares the token-embedding tensor (tie_word_embeddings)


class CheckpointError(ValueError):
    """A weight file does not match the model: lists missing, unexpected and misshaped keys by name."""

    def __init__(self, source: str, missing=(), unexpected=(), mismatched=()) -> None:
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        parts = [f"checkpoint {source} does not match the model:"]
        if self.missing:
            parts.append(f"  missing keys ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"  unexpected keys ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        if self.mismatched:
            shown = ", ".join(f"{k} (checkpoint {tuple(a)} vs model {tuple(b)})" for k, a, b in self.mismatched)
            parts.append(f"  misshaped keys ({len(self.mismatched)}): {shown}")
        super().__init__("\n".join(parts))


def read_weights(path: str | Path, entry: str | None = None) -> dict[str, torch.Tensor]:
    """Load a flat {name: tensor} dict from .safetensors or a torch pickle (``weights_only=True``).

    ``entry`` selects a sub-dict of a pickle (e.g. ``"model"`` for kl16.ckpt). A pickle that carries code or
    objects other than tensors and plain containers is refused with a ValueError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as err:
            raise ValueError(
                f"refusing to load {path}: it is not a plain tensor checkpoint (it may contain pickled code); "
                f"only weights_only-safe files are read. Underlying error: {err}"
            ) from err
        if entry is not None:
            if not isinstance(sd, Mapping) or entry not in sd:
                keys = list(sd)[:10] if isinstance(sd, Mapping) else type(sd).__name__
                raise ValueError(f"{path} has no {entry!r} entry (top level: {keys})")
            sd = sd[entry]
        elif isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
            sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise ValueError(f"{path} does not hold a state dict (found {type(sd).__name__})")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: entries that are not tensors: {', '.join(map(str, bad[:20]))}")
    return dict(sd)


def check_state_dict(
    expected: Mapping[str, torch.Size | tuple],
    found: Mapping[str, torch.Tensor],
    source: str,
    optional: tuple[str, ...] = (),
) -> None:
    """Raise CheckpointError unless ``found`` has exactly the names and shapes of ``expected``.

    Names in ``optional`` may be absent (e.g. a tied LM head).
    """
    missing = [k for k in expected if k not in found and k not in optional]
    unexpected = [k for k in found if k not in expected]
    mismatched = [
        (k, tuple(found[k].shape), tuple(expected[k]))
        for k in expected
        if k in found and tuple(found[k].shape) != tuple(expected[k])
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(source, missing, unexpected, mismatched)


def load_checked(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``module`` after :func:`check_state_dict` against the module's own names and
    shapes, so a wrong file names its missing, unexpected and misshaped keys."""
    check_state_dict({k: v.shape for k, v in module.state_dict().items()}, state_dict, source)
    module.load_state_dict(state_dict, strict=True)


def atomic_write(path: str | Path, write_fn) -> None:
    """Write through a temporary file in the same folder, then rename: a crash never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write_fn(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; the final file gets ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata))
