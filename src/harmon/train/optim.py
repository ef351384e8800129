"""Optimiser, learning-rate schedule and EMA (spec §11.5)."""

from __future__ import annotations

import math

import torch
from torch import nn

from harmon.train.config import OptimConfig


def select_trainable(model: nn.Module, prefixes: tuple[str, ...]) -> list[str]:
    """Freeze every parameter whose name starts with none of ``prefixes``; return the trainable names.

    The VAE and the unused class embedding never train. Raises ValueError if nothing matches.
    """
    names = []
    for name, p in model.named_parameters():
        train = name.startswith(tuple(prefixes)) and not name.startswith("vae.") and "class_emb" not in name
        p.requires_grad_(train)
        if train:
            names.append(name)
    if not names:
        raise ValueError(f"train_modules {prefixes} match no parameter")
    return names


def no_decay(name: str, p: torch.Tensor) -> bool:
    """No weight decay on 1-D tensors, biases and everything of the diffusion head (the official grouping)."""
    return p.ndim <= 1 or name.endswith(".bias") or "diffloss" in name


def lr_scale_of(name: str, scales: dict[str, float]) -> float:
    """The multiplier of the longest prefix in ``scales`` that ``name`` starts with (1 when none does)."""
    matches = [k for k in scales if name.startswith(k)]
    return float(scales[max(matches, key=len)]) if matches else 1.0


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, one group per (weight decay, lr multiplier) pair.

    Raises ValueError if an ``lr_scale`` prefix matches no trainable parameter (a typo would silently do nothing).
    """
    groups: dict[tuple[bool, float], list[torch.Tensor]] = {}
    used: set[str] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        name = name.removeprefix("module.")  # DDP's wrapper
        used.update(k for k in cfg.lr_scale if name.startswith(k))
        groups.setdefault((not no_decay(name, p), lr_scale_of(name, cfg.lr_scale)), []).append(p)
    unused = sorted(set(cfg.lr_scale) - used)
    if unused:
        raise ValueError(f"optim.lr_scale prefixes {unused} match no trainable parameter")
    return torch.optim.AdamW(
        [
            {"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0, "lr": cfg.lr * scale}
            for (decay, scale), ps in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))
        ],
        lr=cfg.lr,
        betas=tuple(cfg.betas),
    )


def lr_factor(step: int, max_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of the base lr at ``step``: linear warm-up from ``warmup_start`` to 1, then cosine to min_lr_ratio."""
    warmup = round(cfg.warmup_ratio * max_steps)
    if warmup and step < warmup:
        return cfg.warmup_start + (1.0 - cfg.warmup_start) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, max_steps: int, cfg: OptimConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, max_steps, cfg))


class EMA:
    """Exponential moving average of the trainable parameters, kept in fp32."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for n, p in model.named_parameters():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise ValueError(f"EMA state lacks {sorted(missing)[:10]}")
        for n in self.shadow:
            self.shadow[n].copy_(state[n])
