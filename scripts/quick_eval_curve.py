"""The quick-eval curve of a world pipeline run: score against training steps, stage by stage.

    python scripts/quick_eval_curve.py runs/shapes_v2            # stages I-III of a world v2 run

Reads each stage's ``metrics.jsonl`` (the trainer's quick evals, ``eval/<level>/...`` keys, logged every
``eval_every`` steps) and prints one Markdown row per quick eval: the stage, its step, the steps since stage I
began, and the headline scores. Wall times are in ``<root>/pipeline.json`` (for a stage that was interrupted and
resumed, the time of its last run only).
Quick evals are small (8 prompts per category, a few questions per kind): they show a trend, not a result.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

STAGES = ("stage1", "stage2", "stage3")
COLUMNS = {
    "geneval_overall": "GenEval-rule overall",
    "geneval/single_object": "single object",
    "geneval/position": "position",
    "understanding_overall": "understanding overall",
    "qa/counting": "counting",
    "qa/color": "colour",
    "qa/describe": "describe",
}


def curve(root: Path, level: str) -> list[dict]:
    """One row per quick eval of the stages under ``root``, in training order."""
    rows, steps_before = [], 0
    for stage in STAGES:
        path = root / stage / "metrics.jsonl"
        if not path.exists():
            break
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        last_step = max((r.get("step", 0) for r in records), default=0)
        for r in records:
            if f"eval/{level}/geneval_overall" not in r:
                continue
            row = {"stage": stage, "step": r["step"], "total_steps": steps_before + r["step"]}
            row.update({k: r.get(f"eval/{level}/{k}") for k in COLUMNS})
            rows.append(row)
        steps_before += last_step
    return rows


def format_curve(rows: list[dict]) -> str:
    head = ["stage", "step", "steps since stage I", *COLUMNS.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["stage"], str(r["step"]), str(r["total_steps"])]
        cells += [f"{r[k]:.3f}" if r[k] is not None else "-" for k in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="the pipeline's --root")
    p.add_argument("--level", default="free", help="the quick eval's level key (free for world v2)")
    args = p.parse_args(argv)
    rows = curve(args.root, args.level)
    if not rows:
        print(f"no quick evals of level {args.level!r} under {args.root}")
        return 1
    print(format_curve(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
