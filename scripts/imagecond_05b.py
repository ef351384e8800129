"""The reca and edit recipes on random weights of the real Harmon-0.5B architecture, for a few steps at a tiny image
size: one process with twice the recipe's accumulation, and (``--nproc 2``) torchrun with 2 processes at the
recipe's accumulation, whose losses must match (the same micro-batches, :mod:`harmon.data.mixture`).

    python scripts/imagecond_05b.py --recipe reca --steps 1            # one process: ~13 GB of memory
    python scripts/imagecond_05b.py --recipe edit --steps 1 --nproc 2  # then 2 FSDP ranks, ~9 GB each

Two ranks of reca take over 11 GB each (its understanding source and accumulation 2): they ran with 21 GB free,
and one attempt on the same machine, then shared with other work, was killed for memory.

Too slow and too large for the test suite (building the 0.7 B-parameter model alone takes ~20 s on 2 CPU cores;
AdamW holds four copies of its weights), which runs the same recipes on the tiny model instead
(tests/test_imagecond_train.py). The tokenizer is a small one trained here: the 0.5B LLM keeps its full vocabulary.
Data: shapes-world images for reconstruction and text-to-image, and random edit pairs written to the work folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from harmon.data.tasks import Task
from harmon.tokenizer import train_tokenizer
from harmon.train.config import OptimConfig, SourceConfig
from harmon.train.recipes import RECIPES
from harmon.world.recipes import toy

SIZE = 32  # pixels of targets and conditions: 2 x 2 tokens + 64 buffers


def edit_file(root: Path, n: int = 4) -> str:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        for side in ("src", "tgt"):
            arr = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / f"{side}{i}.png")
        lines.append(json.dumps({"source": f"src{i}.png", "instruction": f"change {i}", "target": f"tgt{i}.png"}))
    (root / "edits.jsonl").write_text("\n".join(lines) + "\n")
    return str(root / "edits.jsonl")


def config(recipe: str, root: Path, out: Path, steps: int, **fields):
    cfg = toy(RECIPES[recipe](), str(root / "tok"), str(out), steps=steps)
    cfg.model.preset = "0.5b"
    cfg.image_size, cfg.grad_checkpointing = SIZE, True
    cfg.optim, cfg.save_every, cfg.export = OptimConfig(lr=1e-5), 0, False
    cfg.data = [
        SourceConfig(s.name, "jsonl", edit_file(root), task=Task.IMAGE_EDIT, batch_size=1, text_drop_prob=0.1)
        if s.task is Task.IMAGE_EDIT
        else s
        for s in cfg.data
    ]
    for s in cfg.data:
        s.batch_size = 1
    for key, value in fields.items():
        setattr(cfg, key, value)
    return cfg


def train(cfg_path: Path, nproc: int) -> list[float]:
    """``harmon train --config cfg_path`` in child processes (1, or 2 under torchrun): the losses of its steps."""
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if nproc == 2 else []
    cmd = [*(run or [sys.executable]), "-m", "harmon.cli", "train", "--config", str(cfg_path), "--device", "cpu"]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    out = Path(json.loads(cfg_path.read_text())["output_dir"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", choices=["reca", "edit"], required=True)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--nproc", type=int, choices=[1, 2], default=1)
    p.add_argument("--parallel", choices=["ddp", "fsdp"], default="fsdp", help="of the 2 ranks (fsdp: half the memory)")
    p.add_argument("--skip-single", action="store_true", help="only the 2 ranks (compare with an earlier run)")
    p.add_argument("--root", help="work folder (default: a new temporary one); each run ends with a ~8 GB checkpoint")
    args = p.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="imagecond05b-"))
    root.mkdir(parents=True, exist_ok=True)
    train_tokenizer(["Generate an image: a red circle", "Edit the image: change it"] * 8).save_pretrained(root / "tok")
    result: dict = {"recipe": args.recipe}
    if not args.skip_single:  # each run in its own processes: this one never holds a model
        start = time.time()
        accum = 2 * config(args.recipe, root, root / "one", args.steps).accum_steps  # both ranks' micro-batches
        config(args.recipe, root, root / "one", args.steps, accum_steps=accum, parallel="none").save(root / "one.json")
        result["one_process"] = train(root / "one.json", 1)
        result["seconds"] = round(time.time() - start, 1)
    if args.nproc == 2:
        start = time.time()
        config(args.recipe, root, root / "two", args.steps, parallel=args.parallel).save(root / "two.json")
        result["two_processes"] = train(root / "two.json", 2)
        result["seconds_two"] = round(time.time() - start, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
