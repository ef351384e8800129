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

# --dtype / --save-dtype choices, named here so that parsing imports no torch; harmon.loading.DTYPES maps them
# (tests/test_cli.py checks that the two agree); --dtype also takes "auto" (harmon.cpuinfo.choose_dtype)
DTYPE_NAMES = ("fp32", "float32", "bf16", "bfloat16", "fp16", "float16")
QUANTIZE_NAMES = ("int8",)  # harmon.accel.quant.QUANTIZE_MODES

# The names of harmon.sampling.PRESETS, in its order, for --preset choices without importing the sampler (and so
# torch) at parse time; tests/test_cli.py checks that the two agree.
PRESET_NAMES = ("full", "fast", "faster", "lean", "leaner", "brisk", "gtr", "lazy", "gtr-lazy", "lazy-tokens")
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
    "detail_steps": "detail_steps",
    "cond_refresh": "cond_refresh",
    "token_refresh": "token_refresh",
    "token_ratio": "token_ratio",
    "preset": "preset",
    "plan": "plan",
}


def torch_dtype(name: str | None):
    """The torch dtype a --dtype / --save-dtype name stands for; None stays None (the command's default) and "auto"
    stays "auto" (chosen from the hardware when the model loads)."""
    if name is None or name == "auto":
        return name
    from harmon.loading import as_dtype

    return as_dtype(name)


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (default: the shipped tiny shapes-world model)")
    g.add_argument("--model", help="folder saved by save_pretrained / `harmon convert`")
    g.add_argument("--checkpoint", help="official harmon_*.pth (with --vae and --llm)")
    g.add_argument("--vae", help="official kl16.ckpt")
    g.add_argument("--llm", help="local Qwen2.5-Instruct folder (config + tokenizer)")
    g.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: best available)")
    g.add_argument(
        "--dtype",
        choices=sorted(DTYPE_NAMES) + ["auto"],
        help="default: bf16 on CUDA, fp32 elsewhere; auto: bf16 where the CPU or card multiplies it natively",
    )
    g.add_argument(
        "--quantize",
        choices=QUANTIZE_NAMES,
        help="int8: weight-only int8 for the LLM and MAR blocks (about half the memory of bf16 weights)",
    )


def add_generation_args(
    p: argparse.ArgumentParser, *, image_size: bool = True, annealing: bool = True, plan: bool = False
) -> None:
    """The sampling flags of generate, eval shapes and eval geneval; each left unset keeps the model's default.
    ``plan=True`` adds --plan (generate and eval shapes: the model writes each prompt's layout, then draws it).

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
    p.add_argument("--num-iter", type=int_at_least(1), help="masked-autoregressive steps")
    p.add_argument("--guidance-scale", type=float, help="classifier-free guidance (>= 1)")
    p.add_argument("--cfg-schedule", choices=["constant", "linear"])
    p.add_argument("--temperature", type=float)
    p.add_argument("--diffusion-steps", help='diffusion sampling steps, e.g. "100" or "50,20"')
    if not annealing:
        return
    p.add_argument("--x0-clip", type=float, help="clamp the predicted clean latent token (default: the model's)")
    p.add_argument(
        "--diffusion-steps-final",
        type=int_at_least(1),
        help="annealed diffusion steps: the last MAR step uses "
        "this many, the first --diffusion-steps, linear in between",
    )
    p.add_argument(
        "--detail-steps",
        type=int_at_least(1),
        help="two-stage sampling (GtR): a checkerboard half of the tokens, then the rest in this many last steps",
    )
    p.add_argument(
        "--cond-refresh",
        type=int_at_least(1),
        help="condition cache (LazyMAR): the guidance branches through the network every this many steps",
    )
    p.add_argument(
        "--token-refresh",
        type=int_at_least(1),
        help="token cache (LazyMAR): every token through every layer every this many steps, between them only "
        "the --token-ratio that moved most",
    )
    p.add_argument("--token-ratio", type=float, help="token cache: share of tokens recomputed between refreshes")
    p.add_argument("--preset", choices=list(PRESET_NAMES), help=PRESET_HELP)
    if plan:
        p.add_argument(
            "--plan",
            action="store_true",
            default=None,
            help="the model first writes each prompt's layout and draws from it (models trained to plan, like the "
            "shipped one; the plan is logged)",
        )


def generation_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The generation flags the user set, as ``HarmonPipeline.generate`` keywords (unset ones are left out)."""
    return {
        keyword: getattr(args, dest)
        for dest, keyword in GENERATION_SETTINGS.items()
        if getattr(args, dest, None) is not None
    }


def load_pipeline(args: argparse.Namespace):
    """The pipeline the model flags name (official weights, a saved folder, or the shipped model), in --dtype and
    quantized as --quantize says."""
    return _load_float_pipeline(args).quantize(getattr(args, "quantize", None))


def _load_float_pipeline(args: argparse.Namespace):
    """The pipeline the model flags name, before any quantization."""
    from harmon.pipeline import HarmonPipeline

    dtype = torch_dtype(args.dtype)
    if args.checkpoint or args.vae or args.llm:
        missing = [n for n in ("checkpoint", "vae", "llm") if not getattr(args, n)]
        if missing:
            raise ValueError(f"official weights need --checkpoint, --vae and --llm; missing: --{', --'.join(missing)}")
        if args.model:
            raise ValueError("--model and --checkpoint/--vae/--llm name two models; pass one of them")
        return HarmonPipeline.from_official(args.checkpoint, args.vae, args.llm, device=args.device, dtype=dtype)
    if args.model:
        return HarmonPipeline.from_pretrained(args.model, device=args.device, dtype=dtype)
    from harmon.shipped import shipped_model_path

    path = shipped_model_path()
    if path is None:
        raise ValueError("no shipped model is installed in this copy of harmon; pass --model or official weights")
    return HarmonPipeline.from_pretrained(path, device=args.device, dtype=dtype)


def _writable_place(out: Path, what: str, folder: bool) -> Path:
    """``out`` if it can be written: a file path that is not a folder (or a folder path that is not a file), under
    the nearest existing folder, which is probed with a real temporary file (permission bits do not stop root, a
    read-only or virtual file system does)."""
    import tempfile

    if folder and out.exists() and not out.is_dir():
        raise ValueError(f"{what} {out} exists and is not a folder")
    if not folder and out.is_dir():
        raise ValueError(f"{what} {out} is a folder; name a file in it")
    existing = out if folder else out.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{what} {out}: {existing} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".harmon-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{what} {out}: cannot write in {existing} ({err.strerror or err})") from None
    return out


def _argument_type(check):
    """An argparse type from a check that raises ValueError: argparse shows the check's own message (it hides
    a ValueError's text behind 'invalid ... value')."""

    def parse(text: str):
        try:
            return check(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = check.__name__
    return parse


@_argument_type
def output_file(text: str) -> Path:
    """argparse type of a file a command writes (JSON, answers): checked when the command line is parsed."""
    return _writable_place(Path(text), "output", folder=False)


@_argument_type
def output_folder(text: str) -> Path:
    """argparse type of a folder a command writes into."""
    return _writable_place(Path(text), "output folder", folder=True)


@_argument_type
def image_output(text: str) -> Path:
    """argparse type of an image path ``-o`` names: an extension Pillow writes, not a folder, in a place that can be
    written; checked before any model work (which can take minutes on a large model)."""
    from PIL import Image

    out = Path(text)
    writable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}
    if out.suffix.lower() not in writable:
        shown = f"extension {out.suffix!r}" if out.suffix else "no file extension"
        raise ValueError(f"output {out}: {shown}; use an image extension such as .png or .jpg")
    return _writable_place(out, "output", folder=False)


def save_image(image, path: Path) -> Path:
    """Write a PIL image atomically (a crash never leaves a truncated file under the asked name)."""
    from PIL import Image

    from harmon.atomic import atomic_write

    fmt = Image.registered_extensions()[path.suffix.lower()]
    return atomic_write(path, lambda tmp: image.save(tmp, format=fmt))


def int_at_least(low: int, high: int | None = None):
    """argparse type: an integer in [low, high], refused at parse time with the flag named by argparse."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


seed_value = int_at_least(0, 2**64 - 1)  # what torch.Generator.manual_seed takes


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
