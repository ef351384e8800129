"""Does the world's distribution distance order models the way a person would? Shipped > earlier > noise, 3 seeds.

    OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/world_quality_table.py --root runs/world_quality

"Earlier checkpoint": no earlier checkpoint of the shipped model is shipped, so one is trained here. The shipped
model's generation side (the MAR and both projections) starts again from a seeded random init and trains for
``--steps`` steps of stage I's recipe (:func:`harmon.world.recipes.shapes_stage1`: text-to-image + captions, LLM
frozen); the LLM and the VAE stay the shipped ones. So the early model is the shipped architecture with its
generator at step ``--steps`` of its training from scratch (the shipped generator had 2,000 + 6,000 + 1,800 +
3,000).

For each seed: ``--prompts`` balanced eval prompts (``harmon eval shapes``' draw), one image each from the shipped
model and the early model at the shipped sampling defaults, and uniform noise images; each set against renders of
the same prompts (:func:`harmon.world.quality.world_distance`). A second draw of renders is the floor: what a
perfect generator would score at this size. The GenEval-rule overall accuracy of each set is printed beside it.
Prints a markdown table (mean over seeds, and each seed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harmon.pipeline import HarmonPipeline
from harmon.shipped import shipped_model_path
from harmon.world import WorldConfig, sample_eval_prompts
from harmon.world.evaluate import generation_scores
from harmon.world.quality import WorldFeatures, reference_renders, world_distance
from harmon.world.scoring import score_generation


def train_early(root: Path, steps: int, device: str) -> Path:
    """The shipped model with its generation side re-initialised and trained ``steps`` steps (stage I recipe)."""
    from harmon.train.config import ModelInit
    from harmon.train.trainer import Trainer
    from harmon.world import recipes

    out = root / "early"
    if (out / "final" / "model.safetensors").is_file():
        return out / "final"
    cfg = recipes.shapes_stage1()
    prefixes = ["mar.", "proj_in.", "proj_out."]
    cfg.model = ModelInit(preset=None, pretrained=str(shipped_model_path()), reinit=prefixes)
    cfg.output_dir, cfg.max_steps = str(out), steps
    cfg.save_every, cfg.sample_every, cfg.eval_every, cfg.eval = 0, 0, 0, None
    Trainer(cfg, device=device).run(resume="auto")
    return out / "final"


def noise_images(n: int, size: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def one_seed(models: dict, n: int, seed: int, features: WorldFeatures) -> dict[str, tuple[float, float, float]]:
    """{set name: (FD, KD, GenEval-rule overall)} for one seed."""
    world = WorldConfig()
    prompts = sample_eval_prompts(n, torch.Generator().manual_seed(seed), world)
    sets = {}
    for name, pipe in models.items():
        scores, drawn_for, images = generation_scores(pipe, n, seed)  # eval shapes' own prompt and sample draws
        assert drawn_for == prompts
        sets[name] = (images, scores["overall"])
    renders = reference_renders(prompts, seed + 100, world)  # another draw than the reference (seed + 4)
    sets["renders (floor)"] = (renders, score_generation(prompts, renders, world)["overall"])
    noise = noise_images(n, world.image_size, seed)
    sets["uniform noise"] = (noise, score_generation(prompts, noise, world)["overall"])
    out = {}
    for name, (images, overall) in sets.items():
        d = world_distance(images, prompts, seed, world, features)
        out[name] = (d["fd"], d["kd"], overall)
    return out


def table(results: dict[int, dict], n: int) -> str:
    names = list(next(iter(results.values())))
    seeds = sorted(results)
    head = "| set | FD (mean) | KD x 1e3 (mean) | GenEval-rule overall | " + " | ".join(f"FD seed {s}" for s in seeds)
    lines = [head + " |", "|---" * (4 + len(seeds)) + "|"]
    for name in names:
        fd = [results[s][name][0] for s in seeds]
        kd = [results[s][name][1] for s in seeds]
        acc = [results[s][name][2] for s in seeds]
        cells = [f"{np.mean(fd):.2f}", f"{1e3 * np.mean(kd):.1f}", f"{100 * np.mean(acc):.1f}%"]
        lines.append(f"| {name} | " + " | ".join(cells + [f"{v:.2f}" for v in fd]) + " |")
    return "\n".join(lines) + f"\n\n{n} prompts per seed, seeds {', '.join(map(str, seeds))}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="runs/world_quality", type=Path, help="where the early model is trained")
    p.add_argument("--steps", type=int, default=300, help="training steps of the early model's generation side")
    p.add_argument("--prompts", type=int, default=504, help="prompts per seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    t = time.perf_counter()
    early = train_early(args.root, args.steps, args.device)
    print(f"early model: {early} ({time.perf_counter() - t:.0f} s)")
    load = lambda path: HarmonPipeline.from_pretrained(path, device=args.device, dtype=torch.float32)  # noqa: E731
    models = {"shipped model": load(shipped_model_path()), f"early ({args.steps} steps)": load(early)}
    features = WorldFeatures()
    results = {s: one_seed(models, args.prompts, s, features) for s in args.seeds}
    print(table(results, args.prompts))
    print(f"total {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
