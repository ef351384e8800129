"""The ``harmon`` command: generate, describe, convert (and, when installed, train / eval)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: everything we load is local

import torch  # noqa: E402

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (default: the shipped tiny shapes-world model)")
    g.add_argument("--model", help="folder saved by save_pretrained / `harmon convert`")
    g.add_argument("--checkpoint", help="official harmon_*.pth (with --vae and --llm)")
    g.add_argument("--vae", help="official kl16.ckpt")
    g.add_argument("--llm", help="local Qwen2.5-Instruct folder (config + tokenizer)")
    g.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: best available)")
    g.add_argument("--dtype", choices=sorted(DTYPES), help="default: bf16 on CUDA, fp32 elsewhere")


def load_pipeline(args: argparse.Namespace):
    from harmon.pipeline import HarmonPipeline

    dtype = DTYPES[args.dtype] if args.dtype else None
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


def cmd_generate(args: argparse.Namespace) -> int:
    pipe = load_pipeline(args)
    generator = torch.Generator().manual_seed(args.seed)
    images = pipe.generate(args.prompt, num_images_per_prompt=args.num_images, image_size=args.image_size,
                           num_iter=args.num_iter, guidance_scale=args.guidance_scale, cfg_schedule=args.cfg_schedule,
                           temperature=args.temperature, num_sampling_steps=args.diffusion_steps,
                           generator=generator)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(images) == 1:
        images[0].save(out)
        print(out)
        return 0
    stem, suffix = out.stem, out.suffix or ".png"
    for i, im in enumerate(images):
        path = out.with_name(f"{stem}_{i:02d}{suffix}")
        im.save(path)
        print(path)
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    pipe = load_pipeline(args)
    generator = torch.Generator().manual_seed(args.seed)
    answer = pipe.describe(args.image, args.question, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                           temperature=args.temperature, generator=generator, image_size=args.image_size)
    print(answer)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    pipe = load_pipeline(args)
    dtype = DTYPES[args.save_dtype] if args.save_dtype else None
    pipe.save_pretrained(args.output, dtype=dtype)
    print(args.output)
    return 0


def cmd_eval_shapes(args: argparse.Namespace) -> int:
    import json

    from harmon.eval.shapes import evaluate_shapes
    from harmon.world import format_tables

    pipe = load_pipeline(args)
    settings = {k: v for k, v in dict(num_iter=args.num_iter, guidance_scale=args.guidance_scale,
                                      temperature=args.temperature, num_sampling_steps=args.diffusion_steps,
                                      cfg_schedule=args.cfg_schedule).items() if v is not None}
    result = evaluate_shapes(pipe, n_prompts=args.prompts, n_questions=args.questions, seed=args.seed, **settings)
    tables = [result[k] for k in ("generation", "understanding") if k in result]
    print(format_tables(tables))
    for k in ("generation_seconds", "understanding_seconds"):
        if k in result:
            print(f"{k.replace('_', ' ')}: {result[k]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harmon", description="Harmon: one shared encoder for image "
                                     "understanding and generation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train with a recipe (see `harmon train --help`)", add_help=False)

    g = sub.add_parser("generate", help="text -> image")
    g.add_argument("prompt", nargs="+", help="one or more prompts")
    g.add_argument("-o", "--output", default="out.png", help="PNG path (numbered when several images)")
    g.add_argument("-n", "--num-images", type=int, default=1, help="images per prompt")
    g.add_argument("--image-size", type=int, help="pixels, a multiple of 16 (default: the model's)")
    g.add_argument("--num-iter", type=int, help="masked-autoregressive steps")
    g.add_argument("--guidance-scale", type=float, help="classifier-free guidance (>= 1)")
    g.add_argument("--cfg-schedule", choices=["constant", "linear"])
    g.add_argument("--temperature", type=float)
    g.add_argument("--diffusion-steps", help='diffusion sampling steps, e.g. "100" or "50,20"')
    g.add_argument("--seed", type=int, default=0)
    _add_model_args(g)
    g.set_defaults(func=cmd_generate)

    d = sub.add_parser("describe", help="image + question -> text")
    d.add_argument("image")
    d.add_argument("question", nargs="?", default="Describe the image in detail.")
    d.add_argument("--max-new-tokens", type=int)
    d.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    d.add_argument("--temperature", type=float, default=1.0)
    d.add_argument("--image-size", type=int)
    d.add_argument("--seed", type=int, default=0)
    _add_model_args(d)
    d.set_defaults(func=cmd_describe)

    e = sub.add_parser("eval", help="evaluation (shapes world)")
    esub = e.add_subparsers(dest="suite", required=True)
    es = esub.add_parser("shapes", help="fresh shapes-world prompts and questions, scored exactly")
    es.add_argument("--prompts", type=int, default=504, help="generation prompts (balanced over 6 categories)")
    es.add_argument("--questions", type=int, default=1512, help="questions (balanced over 7 kinds)")
    es.add_argument("--seed", type=int, default=0)
    es.add_argument("--num-iter", type=int)
    es.add_argument("--guidance-scale", type=float)
    es.add_argument("--cfg-schedule", choices=["constant", "linear"])
    es.add_argument("--temperature", type=float)
    es.add_argument("--diffusion-steps")
    es.add_argument("--json", help="also write the full result here")
    _add_model_args(es)
    es.set_defaults(func=cmd_eval_shapes)

    c = sub.add_parser("convert", help="official files -> our format (config.json + model.safetensors)")
    c.add_argument("-o", "--output", required=True, help="output folder")
    c.add_argument("--save-dtype", choices=sorted(DTYPES), help="store weights in this dtype")
    _add_model_args(c)
    c.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "train":  # the trainer has its own parser (torchrun -m harmon.train takes the same flags)
        from harmon.train.cli import main as train_main

        return train_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"harmon {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
