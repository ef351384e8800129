"""Linear layers at the model's shapes in each precision, side by side: which dtype is fastest for which component.

    OMP_NUM_THREADS=1 python benchmarks/precision.py --rounds 5 --out precision.jsonl
    python benchmarks/precision.py --latents      # bf16 / int8 latents against fp32 on the shipped model instead
    python benchmarks/precision.py --latents --config 0.5b --num-iter 64 --diffusion-steps 100   # random 0.5B weights

Each shape is one ``nn.Linear`` at the rows x in -> out of a component of the 0.5B architecture (the diffusion head's
MLP at batch 1 with guidance, the MAR blocks, the LLM's MLP at a generation step's rows and at one decoded token).
Routes: fp32 plain, fp32 with the packed weight generation uses (:mod:`harmon.accel.linear`), bf16 plain, bf16 packed
(where the CPU has bf16 matmul instructions: the diffusion head and the LLM's decoding run it), and weight-only int8
(:mod:`harmon.accel.quant`) with bf16 and with fp32 activations. Rounds are interleaved, so a slow minute of a
shared machine hits every route; each route's fastest round counts. The first line names the CPU.

``--latents``: the shipped shapes model's latents for one prompt and seed (its defaults: 8 masked-autoregressive
steps, guidance 3, 100 diffusion steps) in bf16, int8 and both, each against fp32: max and mean absolute difference
and the largest fp32 latent, for scale. With ``--config 0.5b`` (random weights, seeded, at 256 px and guidance 3 with
the given steps): fp32 against bf16 as generation runs it (the head packed on a bf16 CPU) and with plain layers;
its layers are large enough to be packed, the shipped model's are not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

# (component, rows, in, out) at the 0.5B architecture, batch 1 with guidance (2 rows per image)
SHAPES = [
    ("LLM MLP up, decoding", 1, 896, 4864),
    ("diffusion head MLP", 8, 1024, 1024),
    ("diffusion head MLP", 16, 1024, 1024),
    ("diffusion head MLP", 64, 1024, 1024),
    ("MAR block fc1", 320, 768, 3072),
    ("LLM MLP up", 330, 896, 4864),
    ("LLM MLP down", 330, 4864, 896),
]


def routes(rows: int, d_in: int, d_out: int) -> dict:
    """name -> a no-argument callable doing the layer's work once on fresh random data."""
    from harmon.accel import linear as accel_linear
    from harmon.accel.quant import Int8Linear

    gen = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(d_in, d_out)
    x = torch.randn(rows, d_in, generator=gen)
    bf16 = torch.nn.Linear(d_in, d_out).to(torch.bfloat16)
    int8 = Int8Linear.from_linear(layer)
    packed = accel_linear.PackedForward(layer)
    packed_bf16 = accel_linear.PackedForward(bf16)
    xb = x.bfloat16()
    out = {
        "fp32": lambda: layer(x),
        "fp32 packed": lambda: packed(x),
        "bf16": lambda: bf16(xb),
        "bf16 packed": lambda: packed_bf16(xb),
        "int8 weights, bf16 activations": lambda: int8(x.bfloat16()),
        "int8 weights, fp32 activations": lambda: int8(x),
    }
    if not accel_linear.available():
        del out["fp32 packed"], out["bf16 packed"]
    elif torch.bfloat16 not in accel_linear.packable_dtypes():
        del out["bf16 packed"]
    return out


def bench(rounds: int, min_seconds: float) -> list[dict]:
    """Best microseconds per call of every route at every shape (interleaved rounds)."""
    results = []
    for name, rows, d_in, d_out in SHAPES:
        fns = routes(rows, d_in, d_out)
        best = dict.fromkeys(fns, float("inf"))
        with torch.no_grad():
            for fn in fns.values():
                fn()  # warm-up: packing, first-call allocation
            for _ in range(rounds):
                for route, fn in fns.items():
                    calls, t = 0, time.perf_counter()
                    while (elapsed := time.perf_counter() - t) < min_seconds:
                        fn()
                        calls += 1
                    best[route] = min(best[route], elapsed / calls)
        base = best["fp32 packed"] if "fp32 packed" in best else best["fp32"]
        for route, seconds in best.items():
            results.append(
                {
                    "bench": "linear",
                    "component": name,
                    "shape": f"{rows} x {d_in} -> {d_out}",
                    "route": route,
                    "us_per_call": round(seconds * 1e6, 1),
                    "speedup_vs_fastest_fp32": round(min(base, best["fp32"]) / seconds, 2),
                }
            )
    return results


def latent_errors(prompt: str = "a red circle to the left of a blue square", seed: int = 0) -> list[dict]:
    """Max / mean |latent - fp32 latent| of the shipped model in each precision (see the module docstring)."""
    from harmon.pipeline import HarmonPipeline
    from harmon.shipped import shipped_model_path

    def latents(dtype: str, quantize: str | None) -> torch.Tensor:
        pipe = HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu", dtype=dtype).quantize(quantize)
        out = pipe.generate(prompt, generator=torch.Generator().manual_seed(seed), output_type="latent")
        return out.float()  # (1, C, h, w)

    ref = latents("fp32", None)
    results = []
    for dtype, quantize in (("bf16", None), ("fp32", "int8"), ("bf16", "int8")):
        diff = (latents(dtype, quantize) - ref).abs()
        row = {"bench": "latent_error", "dtype": dtype, "quantize": quantize, "seed": seed, "prompt": prompt}
        row.update(max_abs=diff.max().item(), mean_abs=diff.mean().item(), fp32_max_abs=ref.abs().max().item())
        results.append(row)
    return results


def latent_errors_0p5b(num_iter: int, diffusion_steps: str, prompt: str = "a red circle", seed: int = 0) -> list[dict]:
    """Max / mean |latent - fp32 latent| of random 0.5B weights in bf16, packed and plain (module docstring)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from generate import build_pipeline

    from harmon.accel import linear as accel_linear

    def latents(dtype: torch.dtype, pack: bool) -> torch.Tensor:
        accel_linear.ENABLED = pack
        pipe = build_pipeline("0.5b", "cpu", dtype)
        kw = dict(image_size=256, num_iter=num_iter, num_sampling_steps=diffusion_steps, guidance_scale=3.0)
        try:
            return pipe.generate(prompt, generator=torch.Generator().manual_seed(seed), output_type="latent", **kw)
        finally:
            accel_linear.ENABLED = True

    ref = latents(torch.float32, True).float()
    results = []
    for pack in (True, False):
        diff = (latents(torch.bfloat16, pack).float() - ref).abs()
        row = {"bench": "latent_error", "config": "0.5b", "dtype": "bf16", "packed": pack, "seed": seed}
        row.update(num_iter=num_iter, diffusion_steps=diffusion_steps, prompt=prompt)
        row.update(max_abs=diff.max().item(), mean_abs=diff.mean().item(), fp32_max_abs=ref.abs().max().item())
        row["packed_in_run"] = pack and torch.bfloat16 in accel_linear.packable_dtypes()
        results.append(row)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; each route's fastest counts")
    p.add_argument("--min-seconds", type=float, default=0.2, help="time each route for at least this long a round")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--latents", action="store_true", help="latent errors against fp32 instead of speed")
    p.add_argument("--config", default="shipped", choices=["shipped", "0.5b"], help="--latents: which model")
    p.add_argument("--num-iter", type=int, default=8, help="--latents --config 0.5b: masked-autoregressive steps")
    p.add_argument("--diffusion-steps", default="20", help="--latents --config 0.5b: diffusion steps")
    p.add_argument("--out", help="append JSON lines here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from harmon.cpuinfo import cpu_info

    if not args.latents:
        measured = bench(args.rounds, args.min_seconds)
    elif args.config == "0.5b":
        measured = latent_errors_0p5b(args.num_iter, args.diffusion_steps)
    else:
        measured = latent_errors()
    lines = [{"bench": "machine", **cpu_info()}, *measured]
    for res in lines:
        print(json.dumps(res), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
