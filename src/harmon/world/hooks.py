"""The shapes world's quick eval for the trainer (``eval="shapes"`` in a TrainConfig; registered on import)."""

from __future__ import annotations

from typing import Any

from harmon.world.analyses.context import context_curve
from harmon.world.evaluate import evaluate_shapes
from harmon.world.evaluate2 import evaluate_levels


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


def shapes_v2_quick(pipe, cfg) -> dict[str, Any]:
    """World v2's quick eval: 48 prompts and 56 questions of the free level in seen phrasings, fixed seed."""
    r = evaluate_levels(
        pipe, ("free",), 48, 56, seed=1234, splits=("seen",), image_size=cfg.image_size, **cfg.sample_settings
    )
    g, u = r["levels"]["free"]["seen"]["generation"], r["levels"]["free"]["seen"]["understanding"]
    out = {"free/geneval_overall": g["overall"], "free/understanding_overall": u["overall"]}
    out.update({f"free/geneval/{k}": v for k, v in g["accuracy"].items() if v is not None})
    out.update({f"free/pope_f1/{k}": v["f1"] for k, v in u["pope"].items()})
    out.update({f"free/qa/{k}": v for k, v in u["accuracy"].items() if v is not None})
    out["free/position_bound"] = g["binding"]["position"]["right"]
    out["free/color_attr_bound"] = g["binding"]["color_attr"]["right"]
    return out
