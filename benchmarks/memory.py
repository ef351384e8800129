"""Peak resident memory of load, ``generate`` and ``describe`` for the released architectures in fp32, bf16 and
weight-only int8 (random weights, nothing downloaded).

    OMP_NUM_THREADS=1 python benchmarks/memory.py --configs 0.5b 1.5b --out memory.jsonl
    python benchmarks/generate.py --memory 0.5b 1.5b        # the same table

Each (architecture, mode, task) runs in a fresh child process, so that peaks do not mix; the child reports the
kernel's high-water mark of its resident set (``VmHWM`` in /proc/self/status, else ``ru_maxrss``) after imports, after
the model is in memory ("load"), and after one call of the task (glibc's large-block threshold fixed: see
``ALLOCATOR_ENV``). The model is built in place in its dtype, each
weight filled with random numbers (no file is read); int8 is the bf16 model with each block layer filled and
quantized one at a time (``quantize_model(before_each=...)``), so the float model never exists whole. generate: one
image, few steps (memory, not time: the activations of a step do not grow with the number of steps); describe: the
model's understanding image size and 4 new tokens. Every line names the CPU and the bytes of the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

MODES = ("fp32", "bf16", "int8")
# glibc raises its mmap threshold after each large free, so that later blocks come from a heap it keeps: peaks then
# moved by hundreds of MiB between identical runs. A fixed threshold (its default start, 128 KiB) returns every large
# block to the system when freed: the peaks measure live memory and repeat within a few MiB.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", **os.environ}
TASKS = ("generate", "describe")


def high_water_bytes() -> int:
    """Peak resident set of this process so far."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kB


def build_in_place(config: str, mode: str, tok):
    """A pipeline of the ``config`` architecture with random weights, built layer by layer in its final form."""
    import torch

    from harmon.accel.quant import quantize_model
    from harmon.config import CONFIGS
    from harmon.loading import build_empty_model
    from harmon.pipeline import HarmonPipeline

    gen = torch.Generator().manual_seed(0)

    @torch.no_grad()
    def fill(module: torch.nn.Module) -> None:
        for p in module.parameters():
            p.normal_(0.0, 0.02, generator=gen)  # in place, in the weight's dtype: no temporary copy

    model = build_empty_model(CONFIGS[config](), "cpu", torch.float32 if mode == "fp32" else torch.bfloat16)
    if mode == "int8":
        quantize_model(model, "int8", before_each=fill)
    fill(model)  # what is still float (every parameter, in the float modes)
    with torch.no_grad():
        for norm in model.modules():  # unit scales keep activations of random weights in range
            if "Norm" in type(norm).__name__ and getattr(norm, "weight", None) is not None:
                norm.weight.fill_(1.0)
    return HarmonPipeline(model.eval(), tok)


def weights(pipe) -> dict[str, int]:
    """Bytes of the weights: the LLM + MAR (with its diffusion head and the projections between them), the VAE."""
    from harmon.accel.quant import weight_bytes

    m = pipe.model
    return {
        "llm_mar_bytes": sum(weight_bytes(part) for part in (m.llm, m.mar, m.proj_in, m.proj_out)),
        "diffusion_head_bytes": weight_bytes(m.mar.diffloss),
        "vae_bytes": weight_bytes(m.vae),
    }


def child(config: str, mode: str, task: str) -> dict:
    """One measurement, in this (fresh) process."""
    import torch
    from PIL import Image

    import harmon.pipeline  # noqa: F401 (everything a task imports, before the baseline)
    from harmon.cpuinfo import cpu_info
    from harmon.tokenizer import train_tokenizer

    # the tokenizer before the baseline: its training threads' allocations are not the model's
    tok = train_tokenizer(["Generate an image: a red circle", "Describe the image."] * 4, vocab_size=300)
    res = {"bench": "memory", "config": config, "mode": mode, "task": task, "imports_peak": high_water_bytes()}
    pipe = build_in_place(config, mode, tok)
    res.update(weights(pipe))
    res["load_peak"] = high_water_bytes()
    with torch.no_grad():
        if task == "generate":
            steps = {"image_size": 256, "num_iter": 2, "num_sampling_steps": "5", "guidance_scale": 3.0}
            pipe.generate("a red circle", generator=torch.Generator().manual_seed(0), output_type="pt", **steps)
        else:
            pipe.describe(Image.new("RGB", (256, 256), (200, 30, 30)), max_new_tokens=4)
    res["task_peak"] = high_water_bytes()
    return {**res, **cpu_info()}


def run_table(configs: list[str], modes: list[str], tasks: list[str], out: str | None) -> list[dict]:
    """Every (config, mode, task) in a fresh child process, one after the other; one JSON line each."""
    results = []
    for config in configs:
        for mode in modes:
            for task in tasks:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", config, mode, task]
                done = subprocess.run(cmd, capture_output=True, text=True, env=ALLOCATOR_ENV)
                lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
                if done.returncode == 0 and lines:
                    res = json.loads(lines[-1])
                else:
                    error = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                    res = {"bench": "memory", "config": config, "mode": mode, "task": task, "error": error}
                print(json.dumps(res), flush=True)
                if out:
                    with open(out, "a") as f:
                        f.write(json.dumps(res) + "\n")
                results.append(res)
    return results


def markdown(results: list[dict]) -> str:
    """The README table: MiB per (config, mode), after imports, the load peak from any task's run, the tasks'
    peaks; then each config's int8 / bf16 ratios of the LLM + MAR weights and of the load peak above imports."""
    mib, rows = 2**20, {}
    for r in results:
        if "error" not in r:
            rows.setdefault((r["config"], r["mode"]), {})[r["task"]] = r
    head = "| config | mode | LLM + MAR weights | after imports | load peak | generate peak | describe peak |"
    out = [head, "|---|---|---|---|---|---|---|"]
    for (config, mode), tasks in rows.items():
        first = next(iter(tasks.values()))
        cells = [first["llm_mar_bytes"], first["imports_peak"], first["load_peak"]]
        cells += [tasks[t]["task_peak"] if t in tasks else None for t in TASKS]
        shown = [f"{c / mib:,.0f} MiB" if c is not None else "-" for c in cells]
        out.append(f"| {config} | {mode} | " + " | ".join(shown) + " |")
    for config in dict.fromkeys(c for c, _ in rows):
        if (config, "int8") in rows and (config, "bf16") in rows:
            q, b = (next(iter(rows[config, m].values())) for m in ("int8", "bf16"))
            weights = q["llm_mar_bytes"] / b["llm_mar_bytes"]
            load = (q["load_peak"] - q["imports_peak"]) / (b["load_peak"] - b["imports_peak"])
            out.append(
                f"\n{config}: int8 / bf16 = {weights:.3f} (LLM + MAR weights), {load:.3f} (load peak above imports)"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["0.5b", "1.5b"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--out", help="append JSON lines here")
    p.add_argument("--table", metavar="JSONL", help="only print the table of results saved with --out")
    p.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        print(json.dumps(child(*args._child)), flush=True)
        return 0
    if args.table:
        print(markdown([json.loads(line) for line in Path(args.table).read_text().splitlines() if line.strip()]))
        return 0
    print(markdown(run_table(args.configs, args.modes, args.tasks, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
