"""Quick evals the trainer can run every ``eval_every`` steps (config field ``eval``)."""

from __future__ import annotations

from typing import Any


def shapes_quick(pipe, cfg) -> dict[str, Any]:
    """A small shapes-world eval: 48 prompts and 56 questions, fixed seed, flat numbers for the metrics log."""
    from harmon.eval.shapes import evaluate_shapes

    r = evaluate_shapes(pipe, n_prompts=48, n_questions=56, seed=1234, image_size=cfg.image_size, **cfg.sample_settings)
    g, u = r["generation"], r["understanding"]
    out = {"geneval_overall": g["overall"], "understanding_overall": u["overall"]}
    out.update({f"geneval/{k}": v for k, v in g["accuracy"].items()})
    out.update({f"pope_f1/{k}": v["f1"] for k, v in u["pope"].items()})
    out.update({f"qa/{k}": v for k, v in u["accuracy"].items()})
    from harmon.analyze.context import context_curve

    c = context_curve(pipe, n_images=32, repeats=1, image_size=cfg.image_size)
    out.update({f"context_loss/visible_{v}": x for v, x in zip(c["visible"], c["loss"])})
    out["context_loss/shuffled_text"] = c["shuffled_text_loss"]
    return out


EVALS = {"shapes": shapes_quick}
