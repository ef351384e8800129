"""Cost of a training step of world v2's recipes against the shipped model's, stage by stage, on this CPU.

Steps are timed in CPU seconds of the process (``time.process_time``), which a busy machine inflates far less than
wall time; with ``--threads 1`` that is the step's work. The v1 stages start from the shipped model (its config and
tokenizer); the v2 stages from the exports of a toy-length v2 pipeline run, which fixes the architecture (MAR patch
size 1) and the tokenizer (trained on v2 text), all that a step's cost depends on:

    python -m harmon.world.pipeline --world v2 --root /tmp/v2time --until stage2 --set tokenizer:texts=3000 \\
        --set vae:steps=2 --set vae:eval_scenes=2 --set lm:max_steps=2 --set stage1:max_steps=2 \\
        --set stage2:max_steps=2
    OMP_NUM_THREADS=1 python scripts/world_v2_step_cost.py --root /tmp/v2time --threads 1 --steps 20

The v2 wall time of a stage on the 2-core machine is then estimated as the shipped model's recorded wall time per
step (``src/harmon/assets/shapes-tiny/pipeline.json``) times the ratio of CPU seconds per step, v2 over v1.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import harmon.world  # noqa: F401  (registers the shapes data format and evals)
from harmon.shipped import shipped_model_path
from harmon.train.trainer import Trainer
from harmon.world import recipes, recipes_v2

V1_STEPS = {"lm": 1500, "stage1": 2000, "stage2": 6000, "stage3": 1800}


def configs(root: Path) -> dict[str, tuple]:
    """stage -> (v1 config, v2 config), quick eval, samples and checkpoints off."""
    ship = str(shipped_model_path())
    v1 = {
        "lm": recipes.shapes_lm(),
        "stage1": recipes.shapes_stage1(),
        "stage2": recipes.shapes_stage2(),
        "stage3": recipes.shapes_stage3(),
    }
    v2 = {
        "lm": recipes_v2.shapes_v2_lm(),
        "stage1": recipes_v2.shapes_v2_stage1(),
        "stage2": recipes_v2.shapes_v2_stage2(),
        "stage3": recipes_v2.shapes_v2_stage3(),
    }
    v1["lm"].model.tokenizer, v1["lm"].model.vae_weights = ship, None
    v2["lm"].model.tokenizer, v2["lm"].model.vae_weights = str(root / "tokenizer"), None
    for stage in ("stage1", "stage2", "stage3"):
        v1[stage].model.pretrained = ship
    v2["stage1"].model.pretrained = str(root / "lm" / "final")
    v2["stage2"].model.pretrained = str(root / "stage1" / "final")
    v2["stage3"].model.pretrained = str(root / "stage2" / "final")
    for cfg in (*v1.values(), *v2.values()):
        cfg.eval_every = cfg.sample_every = cfg.save_every = 0
    return {stage: (v1[stage], v2[stage]) for stage in V1_STEPS}


def step_cost(cfg, warmup: int, steps: int) -> dict[str, float]:
    """CPU and wall seconds per optimizer step of ``cfg``, after ``warmup`` steps."""
    with tempfile.TemporaryDirectory() as out:
        cfg.output_dir = out
        trainer = Trainer(cfg, device="cpu")
        loader = trainer.build_loader(0)
        batches = iter(loader)
        for step in range(warmup):
            trainer.train_step(step, loader, batches)
        cpu, wall = time.process_time(), time.perf_counter()
        for step in range(warmup, warmup + steps):
            trainer.train_step(step, loader, batches)
        return {"cpu_s": (time.process_time() - cpu) / steps, "wall_s": (time.perf_counter() - wall) / steps}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="root of a v2 pipeline run through stage2 (any length)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--stages", nargs="+", default=list(V1_STEPS), choices=list(V1_STEPS))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    recorded = json.loads((shipped_model_path() / "pipeline.json").read_text())["stages"]
    total = 0.0
    for stage in args.stages:
        v1_cfg, v2_cfg = configs(Path(args.root))[stage]
        v1, v2 = step_cost(v1_cfg, args.warmup, args.steps), step_cost(v2_cfg, args.warmup, args.steps)
        ratio = v2["cpu_s"] / v1["cpu_s"]
        per_step = recorded[stage]["seconds"] / V1_STEPS[stage] * ratio
        total += per_step * v2_cfg.max_steps
        row = {"stage": stage, "v1": v1, "v2": v2, "ratio_cpu": ratio, "v2_est_2core_s_per_step": per_step}
        row["v2_est_2core_min"] = per_step * v2_cfg.max_steps / 60
        row["v2_steps"] = v2_cfg.max_steps
        print(json.dumps(row), flush=True)
    print(json.dumps({"v2_stages_est_2core_min": total / 60}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
