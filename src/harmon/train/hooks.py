"""What the trainer does with the model as a user would: sample grids, and quick evals chosen by name.

Both run through a :class:`harmon.pipeline.HarmonPipeline` over the live model, so the trainer itself only
optimises. The trainer knows no dataset: an application registers its evals here (``import harmon.world``
registers "shapes"). An eval is ``fn(pipe, cfg) -> {name: number}``, flat numbers for the metrics log, where
``pipe`` is a pipeline of the model being trained and ``cfg`` the run's TrainConfig.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from harmon.model import Harmon
from harmon.pipeline import HarmonPipeline

EvalFn = Callable[[Any, Any], dict[str, float]]
EVALS: dict[str, EvalFn] = {}


def register_eval(name: str, fn: EvalFn) -> None:
    """Make ``fn`` the quick eval a TrainConfig selects with ``eval=name``."""
    EVALS[name] = fn


@torch.no_grad()
def sample_images(model: Harmon, tokenizer, cfg) -> list[Image.Image]:
    """The run's sample prompts drawn with its sample settings, seeded by the run's seed (puts the model in eval
    mode: the caller switches it back)."""
    settings = {"image_size": cfg.image_size, **cfg.sample_settings}
    generator = torch.Generator().manual_seed(cfg.seed)
    return HarmonPipeline(model, tokenizer).generate(list(cfg.sample_prompts), generator=generator, **settings)


@torch.no_grad()
def run_eval(name: str, model: Harmon, tokenizer, cfg) -> dict[str, float]:
    """The registered eval ``name`` on the model (puts it in eval mode: the caller switches it back)."""
    fn = EVALS.get(name)
    if fn is None:
        raise ValueError(f"unknown eval {name!r}; known: {sorted(EVALS)}")
    return fn(HarmonPipeline(model, tokenizer), cfg)
