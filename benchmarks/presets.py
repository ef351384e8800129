"""Quality vs speed of the sampling presets on the shapes world (issue #5's preset table).

    python benchmarks/presets.py --prompts 504 --seed 0 --out presets.jsonl     # the shipped model
    python benchmarks/presets.py --model runs/shapes/stage3/final --presets full fast

For each preset, the same fresh prompts (``harmon eval shapes`` draws them from the seed) are generated with the
same generator seed, in batches of ``--batch``; the script prints GenEval-rule overall and per-category accuracy,
the generation wall time and images/s, and the speed-up and quality change against the first preset (``full``).
Presets run one after another in one process, so their timings share the machine's state; quote the ratios.
One JSON line per preset.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder (default: the shipped shapes model)")
    p.add_argument("--presets", nargs="+", default=["full", "fast", "faster"])
    p.add_argument("--prompts", type=int, default=504)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", help="append JSON lines here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from harmon.eval.shapes import generation_scores
    from harmon.pipeline import HarmonPipeline
    from harmon.shipped import shipped_model_path

    path = args.model or shipped_model_path()
    if path is None:
        print("no model: pass --model or install the package with its shipped model", file=sys.stderr)
        return 2
    pipe = HarmonPipeline.from_pretrained(path, device="cpu", dtype=torch.float32)
    rows = []
    for name in args.presets:
        t = time.perf_counter()
        scores, _, _ = generation_scores(pipe, args.prompts, seed=args.seed, batch_size=args.batch, preset=name)
        seconds = time.perf_counter() - t  # generation + scoring (~1.3 s per 504 images: it lowers speed-ups a little)
        row = {"preset": name, "model": str(path), "prompts": args.prompts, "seed": args.seed, "batch": args.batch,
               "threads": torch.get_num_threads(), "overall": scores["overall"], "accuracy": scores["accuracy"],
               "held_out": scores["held_out"], "seconds": seconds, "images_per_s": args.prompts / seconds}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    base = rows[0]
    print(f"\n| preset | GenEval-rule overall | change vs {base['preset']} | images/s | speed-up |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['overall']:.3f} | {r['overall'] - base['overall']:+.3f} | "
              f"{r['images_per_s']:.2f} | {r['images_per_s'] / base['images_per_s']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
