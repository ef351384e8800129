"""Checkpoints that lose nothing: model, optimizer, scheduler, EMA, step, RNG and data position.

Written with torch.distributed.checkpoint (sharded under FSDP2, plain in one process) into ``step_XXXXXXX.tmp``
and renamed to ``step_XXXXXXX`` once complete, so a crash never leaves a checkpoint that looks finished.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from harmon.atomic import write_text_atomic
from harmon.train.parallel import unwrap

logger = logging.getLogger(__name__)
_STEP_DIR = re.compile(r"^step_(\d{7})$")
MARKER = "COMPLETE"


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def latest_checkpoint(root: str | Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def trainable_names(model: torch.nn.Module) -> set[str]:
    """Names of the parameters that train, as the state-dict API names them: without a DDP wrapper's ``module.``
    prefix (FSDP2 shards in place and adds none)."""
    return {n for n, p in unwrap(model).named_parameters() if p.requires_grad}


def _trainable_only(sd: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """Frozen weights (VAE, a frozen LLM) come back from the model's source; only what trains is saved. Every
    trainable weight must be there: a checkpoint without them would resume from the initial weights."""
    trainable = trainable_names(model)
    missing = sorted(trainable - set(sd))
    if missing:
        raise RuntimeError(f"checkpoint state lacks {len(missing)} trainable weights, e.g. {', '.join(missing[:5])}")
    return {k: v for k, v in sd.items() if k in trainable}


_OPTS = StateDictOptions(ignore_frozen_params=True)


def _state(model: torch.nn.Module, optimizer, ema_state: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    """What a checkpoint holds as tensors (sharded under FSDP2): trainable weights, optimizer, EMA."""
    state = {
        "model": _trainable_only(get_model_state_dict(model, options=_OPTS), model),
        "optim": get_optimizer_state_dict(model, optimizer, options=_OPTS),
    }
    if ema_state is not None:
        state["ema"] = ema_state
    return state


def _remove(path: Path, ignore_errors: bool = False) -> None:
    """Delete a checkpoint, its marker first: a process killed part-way through leaves a folder that resume
    ignores, never one that looks complete with files missing."""
    (path / MARKER).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=ignore_errors)


def save_checkpoint(
    root: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    extra: dict[str, Any],
    ema_state: dict[str, torch.Tensor] | None = None,
    keep: int = 2,
) -> Path:
    """Save everything needed to continue at ``step``. Collective: every rank must call it."""
    root = Path(root)
    final = root / f"step_{step:07d}"
    tmp = root / f"step_{step:07d}.tmp"
    if _rank() == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _barrier()
    dcp.save(_state(model, optimizer, ema_state), checkpoint_id=str(tmp))
    if _rank() == 0:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save({"scheduler": scheduler.state_dict(), "rng": rng, "step": step}, tmp / "trainer.pt")
        (tmp / "extra.json").write_text(json.dumps(extra, indent=2))
        (tmp / MARKER).write_text(f"{step}\n")
        if final.exists():  # the same step saved again (e.g. a finished run resumed)
            _remove(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(root)[:-keep] if keep > 0 else []:
            _remove(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(
    path: str | Path, model: torch.nn.Module, optimizer, scheduler, ema_state: dict[str, torch.Tensor] | None = None
) -> dict[str, Any]:
    """Restore a checkpoint written by save_checkpoint; returns its ``extra`` dict (with ``step``)."""
    path = Path(path)
    if not (path / MARKER).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    state = _state(model, optimizer, ema_state)
    # Strict where it matters: ``state`` names every trainable weight (_trainable_only) and dcp.load refuses a
    # checkpoint that lacks any of them (no partial loads); the model's frozen weights are absent by design, hence
    # strict=False below, which would otherwise demand them too.
    dcp.load(state, checkpoint_id=str(path))  # in place, into the tensors of ``state``
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=False))
    set_optimizer_state_dict(model, optimizer, state["optim"], options=_OPTS)
    trainer = torch.load(path / "trainer.pt", weights_only=True)
    scheduler.load_state_dict(trainer["scheduler"])
    torch.set_rng_state(trainer["rng"]["torch"])
    if torch.cuda.is_available() and "cuda" in trainer["rng"]:
        torch.cuda.set_rng_state_all(trainer["rng"]["cuda"])
    extra = json.loads((path / "extra.json").read_text())
    extra["step"] = trainer["step"]
    return extra


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
