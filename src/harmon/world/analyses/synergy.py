"""``harmon analyze synergy``: does understanding data help generation? (the paper's joint-training claim)

Two arms start from the same model and train for the same number of optimizer steps on the same text-to-image
stream (same batch size, same learning-rate schedule):

    t2i_only   text-to-image only
    joint      the same text-to-image batches plus a batch of shapes-world question answering per step

So both arms see exactly the same number of text-to-image samples; the joint arm spends extra compute on the
understanding loss (the paper's comparison adds understanding data to a fixed generation recipe). Every arm runs
with several seeds (the seed drives data order, masks and noise); each final model is scored with the shapes
world's GenEval-style judge on the same fresh prompts. Results are written after every run, so an interrupted
study resumes where it stopped.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from harmon.data.tasks import Task
from harmon.pipeline import HarmonPipeline
from harmon.train.config import ModelInit, OptimConfig, SourceConfig, TrainConfig
from harmon.train.trainer import Trainer
from harmon.world.evaluate import generation_scores

ARMS = ("t2i_only", "joint")


def synergy_config(
    arm: str,
    base: str | Path,
    out_dir: str | Path,
    seed: int,
    steps: int,
    t2i_batch: int = 32,
    und_batch: int = 8,
    lr: float = 3e-4,
    image_size: int = 64,
):
    """The TrainConfig of one run of the study."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; known: {ARMS}")
    data = [SourceConfig("text2image", "shapes", task=Task.TEXT_TO_IMAGE, batch_size=t2i_batch)]
    if arm == "joint":
        data.append(
            SourceConfig("image2text_qa", "shapes", task=Task.IMAGE_TO_TEXT, batch_size=und_batch, max_text_length=256)
        )
    return TrainConfig(
        name=f"synergy_{arm}_s{seed}",
        output_dir=str(out_dir),
        model=ModelInit(preset=None, pretrained=str(base)),
        data=data,
        image_size=image_size,
        train_modules=("llm.", "mar.", "proj_in.", "proj_out."),
        max_steps=steps,
        seed=seed,
        optim=OptimConfig(lr=lr, warmup_ratio=0.02),
        log_every=max(1, steps // 10),
        save_every=max(1, steps // 2),
    )


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_synergy(
    base: str | Path,
    out_dir: str | Path,
    seeds: tuple[int, ...] = (0, 1, 2),
    steps: int = 500,
    n_prompts: int = 120,
    eval_seed: int = 0,
    device: str = "cpu",
    t2i_batch: int = 32,
    und_batch: int = 8,
    lr: float = 3e-4,
    command: str | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Train and score every (arm, seed); returns (and writes to ``out_dir/synergy.json``) the whole study.

    ``command``: the command line that ran the study, recorded for the report (None leaves any recorded one).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "synergy.json"
    study: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    study.update(
        {
            "base": str(base),
            "steps": steps,
            "t2i_batch": t2i_batch,
            "und_batch": und_batch,
            "lr": lr,
            "n_prompts": n_prompts,
            "eval_seed": eval_seed,
            "settings": settings,
        }
    )
    if command is not None:
        study["command"] = command
    runs = study.setdefault("runs", {})
    for seed in seeds:
        for arm in ARMS:
            key = f"{arm}/seed{seed}"
            if key in runs:
                continue
            cfg = synergy_config(
                arm,
                base,
                out / arm / f"seed{seed}",
                seed,
                steps,
                t2i_batch,
                und_batch,
                lr,
                image_size=int(settings.get("image_size") or 64),
            )
            runs[key] = _train_and_score(cfg, device, n_prompts, eval_seed, settings)
            path.write_text(json.dumps(study, indent=2) + "\n")
    study["summary"] = summarize(study)
    path.write_text(json.dumps(study, indent=2) + "\n")
    return study


def _train_and_score(cfg: TrainConfig, device: str, n_prompts: int, eval_seed: int, settings: dict) -> dict[str, Any]:
    """Train one run of the study, then score its export on ``n_prompts`` fresh prompts (seed ``eval_seed``)."""
    t = time.perf_counter()
    history = Trainer(cfg, device=device).run(resume="auto")
    train_seconds = time.perf_counter() - t
    pipe = HarmonPipeline.from_pretrained(Path(cfg.output_dir) / "final", device=device)
    t = time.perf_counter()
    scores, _, _ = generation_scores(pipe, n_prompts, seed=eval_seed, **settings)
    return {
        "overall": scores["overall"],
        "accuracy": scores["accuracy"],
        "final_t2i_loss": history[-1].get("loss_text2image") if history else None,
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(time.perf_counter() - t, 1),
    }


def summarize(study: dict[str, Any]) -> dict[str, Any]:
    """Mean ± std of GenEval-style overall (and of each category) per arm over its seeds."""
    summary: dict[str, Any] = {}
    for arm in ARMS:
        rows = [r for k, r in study.get("runs", {}).items() if k.startswith(arm + "/")]
        if not rows:
            continue
        overall = mean_std([r["overall"] for r in rows])
        cats = {c: mean_std([r["accuracy"][c] for r in rows]) for c in rows[0]["accuracy"]}
        summary[arm] = {"n": len(rows), "overall": overall, "accuracy": cats}
    return summary


def format_synergy_table(study: dict[str, Any]) -> str:
    summary = study.get("summary") or summarize(study)
    if not summary:
        return "(no finished runs)"
    cats = list(next(iter(summary.values()))["accuracy"])
    lines = ["| arm | seeds | overall | " + " | ".join(cats) + " |", "|---" * (len(cats) + 3) + "|"]
    for arm, s in summary.items():
        cells = [f"{m:.3f} ± {sd:.3f}" for m, sd in (s["accuracy"][c] for c in cats)]
        lines.append(
            f"| {arm} | {s['n']} | {s['overall'][0]:.3f} ± {s['overall'][1]:.3f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)
