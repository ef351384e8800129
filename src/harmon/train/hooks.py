"""Quick evals the trainer can run every ``eval_every`` steps (config field ``eval``), by name.

The trainer knows no dataset: an application registers its evals here (``import harmon.world`` registers
"shapes"). An eval is ``fn(pipe, cfg) -> {name: number}``, flat numbers for the metrics log, where ``pipe`` is
a :class:`harmon.pipeline.HarmonPipeline` of the model being trained and ``cfg`` the run's TrainConfig.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

EvalFn = Callable[[Any, Any], dict[str, float]]
EVALS: dict[str, EvalFn] = {}


def register_eval(name: str, fn: EvalFn) -> None:
    """Make ``fn`` the quick eval a TrainConfig selects with ``eval=name``."""
    EVALS[name] = fn
