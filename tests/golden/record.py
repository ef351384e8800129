"""Record the golden outputs that a behaviour-preserving change must reproduce byte for byte.

Run from the repository root: ``python tests/golden/record.py`` (about two minutes). It writes ``golden.json``, the
generated PNGs, and the tables and per-item judgements of ``harmon eval shapes --seed 0`` beside this file;
``tests/test_golden.py`` recomputes them. Re-record only when a change is meant to alter outputs, and say why in the
commit.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import platform
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SEEDS = (0, 1, 2)
PROMPTS = ("a red circle to the left of a blue square", "two green triangles", "a purple square")
QUESTIONS = (
    "How many circles are there?",
    "Is there a red square in the image?",
    "What color is the triangle?",
    "Describe the image.",
    "Is there a circle in the image?",
)
TRAIN_STEPS = 10


def cpu_fingerprint() -> str:
    """Float results can differ between instruction sets; exact bytes are compared only on the recording kind."""
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4")))
    return f"{platform.machine()} torch {torch.__version__} " + " ".join(isa)


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def eval_images() -> list[Path]:
    from harmon.shipped import shipped_model_path

    folder = shipped_model_path().parent / "eval" / "shapes_pope" / "images"
    return sorted(folder.glob("*.png"))[:10]


def generations() -> list[tuple[str, int, bytes]]:
    from harmon import HarmonPipeline
    from harmon.shipped import shipped_model_path

    pipe = HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu")
    out = []
    for seed, prompt in zip(SEEDS, PROMPTS):
        image = pipe.generate(prompt, generator=torch.Generator().manual_seed(seed))[0]
        out.append((prompt, seed, png_bytes(image)))
    return out


def answers() -> list[dict]:
    from harmon import HarmonPipeline
    from harmon.shipped import shipped_model_path

    pipe = HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu")
    out = []
    for i, path in enumerate(eval_images()):
        question = QUESTIONS[i % len(QUESTIONS)]
        out.append({"image": path.name, "question": question, "answer": pipe.describe(path, question)})
    return out


def training_losses(output_dir: Path) -> list[float]:
    """Ten steps of the shapes world's stage II mix (text-to-image, QA, captioning) from the shipped model."""
    from harmon.shipped import shipped_model_path
    from harmon.train.config import apply_overrides
    from harmon.train.trainer import Trainer
    from harmon.world.recipes import shapes_stage2

    cfg = shapes_stage2()
    overrides = [
        f"model.pretrained={shipped_model_path()}",
        f"output_dir={output_dir}",
        f"max_steps={TRAIN_STEPS}",
        "data.0.batch_size=4",
        "data.1.batch_size=2",
        "data.2.batch_size=2",
        "save_every=0",
        "sample_every=0",
        "eval_every=0",
        "log_every=1",
    ]
    cfg = apply_overrides(cfg, overrides)
    history = Trainer(cfg, device="cpu").run(resume="none")
    return [h["loss"] for h in history]


def judgements(scores: dict) -> str:
    """Each item of a generation or understanding table, judged right ("1") or wrong ("0"), in order."""
    return "".join("01"[c] for c in scores["correct"])


def eval_shapes() -> tuple[str, dict]:
    """``harmon eval shapes --seed 0`` as a user runs it: its printed tables (without wall times) and its ``--json``
    result."""
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "seed0.json"
        cmd = [sys.executable, "-m", "harmon.cli", "eval", "shapes", "--seed", "0", "--json", str(out)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        printed = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
        result = json.loads(out.read_text())
    return "".join(line for line in printed.splitlines(keepends=True) if "seconds:" not in line), result


def main() -> None:
    import tempfile

    torch.set_num_threads(1)  # as tests/conftest.py: thread count changes float reduction order
    record = {"cpu": cpu_fingerprint(), "generate": [], "describe": answers()}
    for prompt, seed, data in generations():
        name = f"generate_seed{seed}.png"
        (HERE / name).write_bytes(data)
        record["generate"].append(
            {"prompt": prompt, "seed": seed, "file": name, "sha256": hashlib.sha256(data).hexdigest()}
        )
    with tempfile.TemporaryDirectory() as tmp:
        losses = training_losses(Path(tmp) / "run")
    assert len(losses) == TRAIN_STEPS and all(math.isfinite(x) for x in losses), losses
    record["train_losses"] = losses
    (HERE / "golden.json").write_text(json.dumps(record, indent=2) + "\n")
    tables, result = eval_shapes()
    items = {"command": "harmon eval shapes --seed 0"}
    items.update({task: judgements(result[task]) for task in ("generation", "understanding")})
    (HERE / "eval_shapes_seed0.txt").write_text(tables)
    (HERE / "eval_shapes_seed0_items.json").write_text(json.dumps(items, indent=2) + "\n")
    print(json.dumps(record, indent=2), file=sys.stderr)


if __name__ == "__main__":
    main()
