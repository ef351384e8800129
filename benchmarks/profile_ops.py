"""Where generation time goes, operator by operator (torch.profiler), on random weights of a named architecture.

    OMP_NUM_THREADS=1 python benchmarks/profile_ops.py --config 0.5b --batch 8 --num-iter 4 --diffusion-steps 10
    python benchmarks/profile_ops.py --config 0.5b --batch 1 --num-iter 8 --diffusion-steps 100 --dtype bf16

One untimed warm-up call, then one profiled ``generate`` call; prints the CPU line, the wall time and the operators
that took the most self time, with the share of the linear layers (packed ``mkldnn::_linear_pointwise`` and plain
``aten::addmm``/``aten::mm``), attention and everything else. Explains a throughput figure of generate.py: the
whole call reaches a fraction of the matmul peak no larger than the linear layers' share times their own rate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

LINEAR_OPS = ("mkldnn::_linear_pointwise", "aten::addmm", "aten::mm", "aten::bmm")
ATTENTION_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="0.5b")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--num-iter", type=int, default=4)
    p.add_argument("--diffusion-steps", default="10")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rows", type=int, default=15, help="operators to list")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).parent))
    from generate import build_pipeline
    from torch.profiler import ProfilerActivity, profile

    from harmon.cpuinfo import cpu_line

    pipe = build_pipeline(args.config, "cpu", torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    kw = dict(image_size=args.image_size, num_sampling_steps=args.diffusion_steps, output_type="latent")
    prompts = ["a red circle to the left of a blue square"] * args.batch
    pipe.generate(prompts[:1], num_iter=2, generator=torch.Generator().manual_seed(0), **kw)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        pipe.generate(prompts, num_iter=args.num_iter, generator=torch.Generator().manual_seed(0), **kw)
        seconds = time.perf_counter() - t
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    share = {
        "linear": sum(e.self_cpu_time_total for e in events if e.key in LINEAR_OPS) / total,
        "attention": sum(e.self_cpu_time_total for e in events if e.key in ATTENTION_OPS) / total,
    }
    share["other"] = 1 - share["linear"] - share["attention"]
    print(cpu_line())
    print(
        f"{args.config}, {args.dtype}, {args.image_size} px, batch {args.batch}, {args.num_iter} steps, "
        f"{args.diffusion_steps} diffusion steps: {seconds:.1f} s"
    )
    print("share of self time: " + ", ".join(f"{k} {v:.1%}" for k, v in share.items()))
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
