"""Training-step throughput and peak memory for the tiny, 0.5B and 1.5B architectures (random weights).

    python benchmarks/train_step.py                       # all three, fp32 and bf16 autocast, on CPU
    python benchmarks/train_step.py --configs tiny 0.5b --batch 2 --image-size 256 --device cuda

Each configuration runs in its own subprocess so its peak memory (max RSS on CPU, max allocated on CUDA) is its
own. A configuration whose estimated training state (weights + grads + AdamW moments, fp32) exceeds the memory
available is skipped and reported as such. One JSON line per result is printed (and appended to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch


def _estimate_bytes(cfg_name: str) -> int:
    from harmon.config import CONFIGS
    from harmon.model import Harmon

    with torch.device("meta"):
        model = Harmon(CONFIGS[cfg_name]())
    trainable = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("vae."))
    frozen = sum(p.numel() for n, p in model.named_parameters() if n.startswith("vae."))
    return 4 * (4 * trainable + frozen)  # weights, grads, two AdamW moments (fp32) + the frozen VAE


def _available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(0).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def synthetic_batch(config, batch: int, image_size: int, device: str) -> dict:
    """A text-to-image and an image-to-text sub-batch of ``batch`` random samples each (64 answer tokens)."""
    from harmon.data.tasks import Task
    from harmon.model import IGNORE_INDEX, IMAGE_PLACEHOLDER

    g = torch.Generator().manual_seed(0)
    vocab = int(config.llm["vocab_size"])
    grid = image_size // config.vae.stride
    n_img = grid * grid + config.mar.buffer_size
    pixels = (torch.rand(batch, 3, image_size, image_size, generator=g) * 2 - 1).to(device)
    t2i_ids = torch.randint(10, min(vocab, 1000), (batch, 32), generator=g).to(device)
    ids = torch.cat(
        [
            torch.randint(10, min(vocab, 1000), (batch, 8), generator=g),
            torch.full((batch, n_img), IMAGE_PLACEHOLDER),
            torch.randint(10, min(vocab, 1000), (batch, 64), generator=g),
        ],
        1,
    ).to(device)
    labels = ids.clone()
    labels[:, : 8 + n_img] = IGNORE_INDEX
    return {
        "text2image": {
            "task": Task.TEXT_TO_IMAGE,
            "pixels": pixels,
            "input_ids": t2i_ids,
            "attention_mask": torch.ones_like(t2i_ids, dtype=torch.bool),
        },
        "image2text": {
            "task": Task.IMAGE_TO_TEXT,
            "pixels": pixels,
            "input_ids": ids,
            "labels": labels,
            "attention_mask": torch.ones_like(ids, dtype=torch.bool),
        },
    }


def run_one(
    cfg_name: str, batch: int, image_size: int, precision: str, steps: int, device: str, grad_ckpt: bool
) -> dict:
    from harmon.config import CONFIGS
    from harmon.model import Harmon
    from harmon.train.config import OptimConfig
    from harmon.train.optim import build_optimizer, select_trainable

    torch.manual_seed(0)
    config = CONFIGS[cfg_name]()
    model = Harmon(config).to(device)
    model.set_gradient_checkpointing(grad_ckpt)
    select_trainable(model, ("llm.", "mar.", "proj_in.", "proj_out."))
    opt = build_optimizer(model, OptimConfig())
    batch_dict = synthetic_batch(config, batch, image_size, device)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")
    model.train()
    times = []
    for step in range(steps + 1):  # the first step warms up and is not timed
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        with autocast:
            losses = model(batch_dict, generator=torch.Generator().manual_seed(step))
            loss = sum(losses.values())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - t)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step_s = sorted(times)[len(times) // 2]
    return {
        "bench": "train_step",
        "config": cfg_name,
        "device": device,
        "precision": precision,
        "image_size": image_size,
        "batch_per_source": batch,
        "samples_per_step": 2 * batch,
        "step_seconds": step_s,
        "samples_per_s": 2 * batch / step_s,
        "peak_memory_gib": peak / 2**30,
        "grad_checkpointing": grad_ckpt,
        "threads": torch.get_num_threads(),
    }


def _run_child(args: argparse.Namespace, cfg_name: str, precision: str) -> dict:
    """One (config, precision) measurement in a fresh process, so peak memory is its own."""
    cmd = [sys.executable, __file__, "--_child", cfg_name, precision, "--batch", str(args.batch)]
    cmd += ["--image-size", str(args.image_size), "--steps", str(args.steps), "--device", args.device]
    if args.no_grad_checkpointing:
        cmd.append("--no-grad-checkpointing")
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode == 0 and lines:
        return json.loads(lines[-1])
    error = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"
    return {"bench": "train_step", "config": cfg_name, "precision": precision, "error": error}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["tiny", "0.5b", "1.5b"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=2, help="samples per source (text2image + image2text)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-grad-checkpointing", action="store_true")
    p.add_argument("--out", help="append JSON lines here")
    p.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        res = run_one(
            args._child[0],
            args.batch,
            args.image_size,
            args._child[1],
            args.steps,
            args.device,
            not args.no_grad_checkpointing,
        )
        print(json.dumps(res))
        return 0
    from harmon.cpuinfo import cpu_info

    for cfg_name in args.configs:
        need, have = _estimate_bytes(cfg_name), _available_bytes(args.device)
        for precision in args.precisions:
            if need > 0.85 * have:
                res = {
                    "bench": "train_step",
                    "config": cfg_name,
                    "device": args.device,
                    "precision": precision,
                    "skipped": f"needs ~{need / 2**30:.0f} GiB for weights, grads and AdamW states "
                    f"(fp32) but the device has {have / 2**30:.0f} GiB",
                }
            else:
                res = _run_child(args, cfg_name, precision)
            res = {**cpu_info(), **res}  # every line names the CPU (threads: the child's, when it reports them)
            print(json.dumps(res), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
