"""Quality vs speed of the sampling presets on the shapes world (issue #5's preset table).

    python benchmarks/presets.py --prompts 504 --seed 0 --out presets.jsonl     # the shipped model
    python benchmarks/presets.py --model runs/shapes/stage3/final --presets full fast
    python benchmarks/presets.py --presets full full:compiled brisk brisk:compiled   # generate(compile=True)

For each preset, the same fresh prompts (``harmon eval shapes`` draws them from the seed) are generated with the
same generator seed, in batches of ``--batch``; the script prints GenEval-rule overall and per-category accuracy,
the generation wall time and images/s, and the speed-up and quality change against the first preset (``full``).
Only the ``generate`` calls are timed (prompt to PIL images); drawing the prompts and scoring the images are not.
Presets run one after another in one process, in ``--repeats`` interleaved rounds (full, lean, ..., full, lean,
...); each preset's images/s comes from its fastest round, so a slow minute of a shared machine does not decide a
ratio. Quality is the same in every round (same seed, same images; checked). Quote the ratios. One JSON line per
preset. A preset named ``NAME:compiled`` runs preset NAME with ``generate(compile=True)`` (the diffusion MLP through
torch.compile); an untimed warm-up call compiles it before the first round.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time

import torch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder (default: the shipped shapes model)")
    p.add_argument(
        "--presets",
        nargs="+",
        default=["full", "fast", "faster"],
        help="preset names; NAME:compiled runs NAME with generate(compile=True)",
    )
    p.add_argument("--prompts", type=int, default=504)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed rounds over all presets (interleaved); each preset's images/s is from its fastest round",
    )
    p.add_argument(
        "--level",
        choices=["grid", "free"],
        help="score world v2 prompts of this level (seen phrasings; harmon eval shapes --level); default: the "
        "shipped model's grid report",
    )
    p.add_argument("--out", help="append JSON lines here")
    return p


def run_rounds(pipe, runs: dict[str, tuple[str, bool]], args: argparse.Namespace, path) -> dict[str, dict]:
    """Every preset of ``runs`` (entry -> (preset, compiled)) in ``args.repeats`` interleaved rounds: one row each,
    with the seconds of every round (only the ``generate`` calls timed)."""
    from harmon.cpuinfo import cpu_info
    from harmon.world.evaluate import generation_scores
    from harmon.world.evaluate2 import generation_split

    generate = pipe.generate
    spent = [0.0]

    def timed_generate(*a, **k):  # time the sampler only, not the prompt drawing or the scorer
        t = time.perf_counter()
        try:
            return generate(*a, **k)
        finally:
            spent[0] += time.perf_counter() - t

    if any(compiled for _, compiled in runs.values()):  # compile once, untimed
        generate("a red circle", num_iter=2, compile=True, generator=torch.Generator().manual_seed(0))
    rows: dict[str, dict] = {}
    for round_ in range(args.repeats):  # interleaved rounds: a slow minute of the machine hits every preset
        for name, (preset, compiled) in runs.items():
            spent[0] = 0.0
            t = time.perf_counter()
            pipe.generate = functools.partial(timed_generate, compile=compiled)
            if args.level:
                scores = generation_split(pipe, args.level, "seen", args.prompts, args.seed, args.batch, preset=preset)
            else:
                scores, _, _ = generation_scores(pipe, args.prompts, args.seed, args.batch, preset=preset)
            total = time.perf_counter() - t
            if name not in rows:
                rows[name] = {
                    "preset": name,
                    "compiled": compiled,
                    "model": str(path),
                    "prompts": args.prompts,
                    "seed": args.seed,
                    "batch": args.batch,
                    **cpu_info(),
                    "overall": scores["overall"],
                    "accuracy": scores["accuracy"],
                    "level": args.level,
                    "held_out": scores["held_out"] if "held_out" in scores else scores["held_out_pairs"],
                    "seconds_runs": [],
                    "seconds_with_scoring_runs": [],
                }
            elif scores["overall"] != rows[name]["overall"]:  # same seed, same images: a changed score is a bug
                raise RuntimeError(
                    f"preset {name}: overall {scores['overall']} in round {round_ + 1}, {rows[name]['overall']} before"
                )
            rows[name]["seconds_runs"].append(spent[0])
            rows[name]["seconds_with_scoring_runs"].append(total)
            print(f"round {round_ + 1}/{args.repeats} {name}: {spent[0]:.2f} s", file=sys.stderr, flush=True)
    return rows


def print_table(table: list[dict]) -> None:
    """The README table: each preset against the first."""
    base = table[0]
    print(
        f"\n| preset | GenEval-rule overall | change vs {base['preset']} | images/s (best round) | speed-up | "
        "speed-up from medians |"
    )
    print("|---|---|---|---|---|---|")
    for r in table:
        print(
            f"| {r['preset']} | {r['overall']:.3f} | {r['overall'] - base['overall']:+.3f} | "
            f"{r['images_per_s']:.2f} | {r['images_per_s'] / base['images_per_s']:.2f}x | "
            f"{base['seconds_median'] / r['seconds_median']:.2f}x |"
        )


def main() -> int:
    p = build_parser()
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)

    from harmon.pipeline import HarmonPipeline
    from harmon.shipped import shipped_model_path

    path = args.model or shipped_model_path()
    if path is None:
        print("no model: pass --model or install the package with its shipped model", file=sys.stderr)
        return 2
    runs = {}
    for entry in args.presets:
        name, _, mode = entry.partition(":")
        if mode not in ("", "compiled"):
            p.error(f"--presets entry {entry!r}: the only suffix is ':compiled'")
        runs[entry] = (name, mode == "compiled")
    pipe = HarmonPipeline.from_pretrained(path, device="cpu", dtype=torch.float32)
    rows = run_rounds(pipe, runs, args, path)
    for row in rows.values():
        row["seconds"] = min(row["seconds_runs"])  # the best round: the least disturbed by other processes
        row["images_per_s"] = args.prompts / row["seconds"]
        row["seconds_median"] = statistics.median(row["seconds_runs"])
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    print_table(list(rows.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
