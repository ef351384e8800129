"""What several commands share: the model flags, the generation flags, pipeline loading, small output helpers.

Nothing here imports torch at module level: the parser is built (and ``--help`` answered) before any command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

# --dtype / --save-dtype names -> torch dtype attribute names (resolved in torch_dtype, when a command runs)
DTYPE_NAMES = {
    "fp32": "float32",
    "float32": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
}

# The names of harmon.sampling.PRESETS, in its order, for --preset choices without importing the sampler (and so
# torch) at parse time; tests/test_cli.py checks that the two agree.
PRESET_NAMES = ("full", "fast", "faster", "lean", "leaner", "brisk")
PRESET_HELP = (
    "speed preset applied to the model's defaults (explicit settings win); quality/speed table in benchmarks/README.md"
)

# generation flag dest -> HarmonPipeline.generate keyword
GENERATION_SETTINGS = {
    "image_size": "image_size",
    "num_iter": "num_iter",
    "guidance_scale": "guidance_scale",
    "cfg_schedule": "cfg_schedule",
    "temperature": "temperature",
    "diffusion_steps": "num_sampling_steps",
    "x0_clip": "x0_clip",
    "diffusion_steps_final": "diffusion_steps_final",
    "preset": "preset",
}


def torch_dtype(name: str | None):
    """The torch dtype a --dtype / --save-dtype name stands for; None stays None (the command's default)."""
    if name is None:
        return None
    import torch

    return getattr(torch, DTYPE_NAMES[name])


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (default: the shipped tiny shapes-world model)")
    g.add_argument("--model", help="folder saved by save_pretrained / `harmon convert`")
    g.add_argument("--checkpoint", help="official harmon_*.pth (with --vae and --llm)")
    g.add_argument("--vae", help="official kl16.ckpt")
    g.add_argument("--llm", help="local Qwen2.5-Instruct folder (config + tokenizer)")
    g.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: best available)")
    g.add_argument("--dtype", choices=sorted(DTYPE_NAMES), help="default: bf16 on CUDA, fp32 elsewhere")


def add_generation_args(p: argparse.ArgumentParser, *, image_size: bool = True, annealing: bool = True) -> None:
    """The sampling flags of generate, eval shapes and eval geneval; each left unset keeps the model's default.

    ``image_size=False`` leaves out --image-size (eval shapes draws its scenes at the model's size);
    ``annealing=False`` leaves out --x0-clip, --diffusion-steps-final and --preset (eval geneval records and
    checks on resume only the settings before them).
    """
    if image_size:
        p.add_argument(
            "--image-size",
            type=int,
            help="pixels: a multiple of the model's token size (16 for the releases, 32 for the shipped model), "
            "with the prompt within the LLM's context (default: the model's)",
        )
    p.add_argument("--num-iter", type=int, help="masked-autoregressive steps")
    p.add_argument("--guidance-scale", type=float, help="classifier-free guidance (>= 1)")
    p.add_argument("--cfg-schedule", choices=["constant", "linear"])
    p.add_argument("--temperature", type=float)
    p.add_argument("--diffusion-steps", help='diffusion sampling steps, e.g. "100" or "50,20"')
    if not annealing:
        return
    p.add_argument("--x0-clip", type=float, help="clamp the predicted clean latent token (default: the model's)")
    p.add_argument(
        "--diffusion-steps-final",
        type=int,
        help="annealed diffusion steps: the last MAR step uses "
        "this many, the first --diffusion-steps, linear in between",
    )
    p.add_argument("--preset", choices=list(PRESET_NAMES), help=PRESET_HELP)


def generation_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The generation flags the user set, as ``HarmonPipeline.generate`` keywords (unset ones are left out)."""
    return {
        keyword: getattr(args, dest)
        for dest, keyword in GENERATION_SETTINGS.items()
        if getattr(args, dest, None) is not None
    }


def load_pipeline(args: argparse.Namespace):
    """The pipeline the model flags name: official weights, a saved folder, or the shipped model."""
    from harmon.pipeline import HarmonPipeline

    dtype = torch_dtype(args.dtype)
    if args.checkpoint or args.vae or args.llm:
        missing = [n for n in ("checkpoint", "vae", "llm") if not getattr(args, n)]
        if missing:
            raise SystemExit(f"official weights need --checkpoint, --vae and --llm; missing: {', '.join(missing)}")
        return HarmonPipeline.from_official(args.checkpoint, args.vae, args.llm, device=args.device, dtype=dtype)
    if args.model:
        return HarmonPipeline.from_pretrained(args.model, device=args.device, dtype=dtype)
    from harmon.shipped import shipped_model_path

    path = shipped_model_path()
    if path is None:
        raise SystemExit("no shipped model is installed in this copy of harmon; pass --model or official weights")
    return HarmonPipeline.from_pretrained(path, device=args.device, dtype=dtype)


def image_output(path: str) -> Path:
    """The image path ``-o`` names, checked before any sampling work: an image extension Pillow writes, not a
    folder, in a folder that exists (made here) and can be written."""
    from PIL import Image

    out = Path(path)
    writable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}
    if out.suffix.lower() not in writable:
        shown = f"extension {out.suffix!r}" if out.suffix else "no file extension"
        raise ValueError(f"output {out}: {shown}; use an image extension such as .png or .jpg")
    if out.is_dir():
        raise ValueError(f"output {out} is a folder; name an image file in it, e.g. {out / 'out.png'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(out.parent, os.W_OK):
        raise PermissionError(f"output folder {out.parent} is not writable")
    return out


def save_image(image, path: Path) -> None:
    """Write a PIL image to ``path`` atomically, in the format its extension names."""
    from PIL import Image

    from harmon.atomic import atomic_write

    fmt = Image.registered_extensions()[path.suffix.lower()]
    atomic_write(path, lambda tmp: image.save(tmp, format=fmt))


def seeded(seed: int):
    """A CPU ``torch.Generator`` seeded with ``seed``."""
    import torch

    return torch.Generator().manual_seed(seed)


def write_json(path: str | None, result: dict) -> None:
    """Write ``result`` as indented JSON to ``path`` (its folder made, atomically), when a path is given."""
    if path:
        from harmon.atomic import write_text_atomic

        write_text_atomic(path, json.dumps(result, indent=2, default=str) + "\n")


def command_line(fallback: str | None) -> str | None:
    """The analyze command as typed, for the records a study writes; ``fallback`` when called from Python."""
    return "harmon " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["analyze"] else fallback
