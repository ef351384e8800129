"""Answers/s of greedy understanding: ``describe`` one question at a time against ``describe_many`` in batches.

    python benchmarks/describe.py --questions 280 --batch 1 8 32 --repeats 3     # the shipped model

The questions are ``harmon eval shapes``'s (fresh scenes from ``--seed``); the scenes are rendered before timing.
Each route runs ``--repeats`` interleaved rounds and counts its fastest; every route must give the one-by-one answers
(the script stops otherwise). One JSON line per route, each naming the CPU; quote the ratios.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder (default: the shipped shapes model)")
    p.add_argument("--questions", type=int, default=280)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, nargs="+", default=[8, 32], help="describe_many batch sizes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", help="append JSON lines here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from harmon.cpuinfo import cpu_info
    from harmon.pipeline import HarmonPipeline
    from harmon.shipped import shipped_model_path
    from harmon.world.questions import sample_eval_questions
    from harmon.world.render import render
    from harmon.world.scene import WorldConfig

    pipe = HarmonPipeline.from_pretrained(args.model or shipped_model_path(), device="cpu")
    world = WorldConfig(image_size=pipe.config.generation.understanding_image_size)
    items = sample_eval_questions(args.questions, torch.Generator().manual_seed(args.seed + 2), world)
    images, questions = [render(s, world) for s, _ in items], [q["question"] for _, q in items]

    routes = {"describe": lambda: [pipe.describe(im, q) for im, q in zip(images, questions)]}
    for b in args.batch:
        routes[f"describe_many:{b}"] = lambda b=b: pipe.describe_many(images, questions, batch_size=b)
    best = dict.fromkeys(routes, float("inf"))
    reference = None
    for _ in range(args.repeats):
        for name, run in routes.items():
            t = time.perf_counter()
            answers = run()
            best[name] = min(best[name], time.perf_counter() - t)
            reference = reference or answers
            if answers != reference:
                raise SystemExit(f"{name} answered differently from describe")
    cpu = cpu_info()  # every line names the CPU
    lines = [
        json.dumps(
            {
                "route": name,
                "questions": len(items),
                "seconds": round(seconds, 3),
                "answers_per_s": round(len(items) / seconds, 1),
                "speedup": round(best["describe"] / seconds, 2),
                **cpu,
            }
        )
        for name, seconds in best.items()
    ]
    print("\n".join(lines))
    if args.out:
        with open(args.out, "a") as f:
            f.write("".join(line + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
