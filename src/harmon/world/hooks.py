"""The shapes world's quick eval for the trainer (``eval="shapes"`` in a TrainConfig; registered on import)."""

from __future__ import annotations

from typing import Any

from harmon.world.analyses.context import context_curve
from harmon.world.evaluate import evaluate_shapes


def shapes_quick(pipe, cfg) -> dict[str, Any]:
    """A small shapes-world eval: 48 prompts and 56 questions, fixed seed, flat numbers for the metrics log."""
    r = evaluate_shapes(pipe, n_prompts=48, n_questions=56, seed=1234, image_size=cfg.image_size, **cfg.sample_settings)
    g, u = r["generation"], r["understanding"]
    out = {"geneval_overall": g["overall"], "understanding_overall": u["overall"]}
    out.update({f"geneval/{k}": v for k, v in g["accuracy"].items()})
    out.update({f"pope_f1/{k}": v["f1"] for k, v in u["pope"].items()})
    out.update({f"qa/{k}": v for k, v in u["accuracy"].items()})
    c = context_curve(pipe, n_images=32, repeats=1, image_size=cfg.image_size)
    out.update({f"context_loss/visible_{v}": x for v, x in zip(c["visible"], c["loss"])})
    out["context_loss/shuffled_text"] = c["shuffled_text_loss"]
    return out
