"""Quick evals the trainer can run every ``eval_every`` steps (config field ``eval``)."""

from __future__ import annotations

from typing import Any


def shapes_quick(pipe, cfg) -> dict[str, Any]:
    """A small shapes-world eval: 48 prompts and 56 questions, fixed seed, flat numbers for the metrics log."""
    from harmon.eval.shapes import evaluate_shapes

    r = evaluate_shapes(pipe, n_prompts=48, n_questions=56, seed=1234, image_size=cfg.image_size,
                        **cfg.sample_settings)
    g, u = r["generation"], r["understanding"]
    out = {"geneval_overall": g["overall"], "understanding_overall": u["overall"]}
    out.update({f"geneval/{k}": v for k, v in g["accuracy"].items()})
    out.update({f"pope_f1/{k}": v["f1"] for k, v in u["pope"].items()})
    out.update({f"qa/{k}": v for k, v in u["accuracy"].items()})
    return out


EVALS = {"shapes": shapes_quick}
