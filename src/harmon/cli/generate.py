"""``harmon generate`` (text -> image), ``harmon edit`` (image + instruction -> image), ``harmon describe`` (image +
question -> text) and ``harmon convert``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harmon.cli.common import (
    DTYPE_NAMES,
    add_generation_args,
    add_model_args,
    generation_settings,
    image_output,
    int_at_least,
    load_pipeline,
    output_folder,
    save_image,
    seed_value,
    seeded,
    torch_dtype,
)


def cmd_generate(args: argparse.Namespace) -> int:
    out = args.output  # checked when parsed (image_output), before minutes of loading and sampling
    pipe = load_pipeline(args)
    settings = generation_settings(args)
    prompts = list(args.prompt)
    if settings.pop("plan", False):  # the model's layouts, shown, then drawn as generate(plan=True) draws them
        prompts = pipe.plan(prompts)
        for p, plan in zip(args.prompt, prompts):
            print(f"plan for {p!r}: {plan}", file=sys.stderr)
    images = pipe.generate(
        prompts,
        num_images_per_prompt=args.num_images,
        generator=seeded(args.seed),
        compile=args.compile,
        **settings,
    )
    if len(images) == 1:
        print(save_image(images[0], out))
        return 0
    for i, im in enumerate(images):
        print(save_image(im, out.with_name(f"{out.stem}_{i:02d}{out.suffix}")))
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    from harmon.images import load_image

    out = args.output  # checked when parsed (image_output), before minutes of loading and sampling
    source = load_image(args.image)  # a missing or unreadable image is named before that too
    pipe = load_pipeline(args)
    images = pipe.edit(
        source,
        args.instruction,
        image_guidance_scale=args.image_guidance_scale,
        understanding_image_size=args.understanding_image_size,
        num_images_per_prompt=args.num_images,
        generator=seeded(args.seed),
        compile=args.compile,
        plan={"auto": None, "layout": True, "direct": False}[args.route],
        strength=args.strength,
        checks=args.checks,
        **generation_settings(args),
    )
    paths = (
        [out] if len(images) == 1 else [out.with_name(f"{out.stem}_{i:02d}{out.suffix}") for i in range(len(images))]
    )
    for im, path in zip(images, paths):
        print(save_image(im, path))
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    pipe = load_pipeline(args)
    answer = pipe.describe(
        args.image,
        args.question,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        repetition_penalty=args.repetition_penalty,
        generator=seeded(args.seed),
        image_size=args.image_size,
    )
    print(answer)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    sources = [Path(p).resolve() for p in (args.model, args.checkpoint, args.vae, args.llm) if p]
    out = Path(args.output).resolve()
    if any(out == s or out in s.parents for s in sources):
        raise ValueError(f"output {args.output} is (or holds) a file being converted; write to a new folder")
    pipe = load_pipeline(args)
    pipe.save_pretrained(args.output, dtype=torch_dtype(args.save_dtype))
    print(args.output)
    return 0


def add_generate(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="text -> image")
    g.add_argument("prompt", nargs="+", help="one or more prompts")
    g.add_argument(
        "-o", "--output", type=image_output, default="out.png", help="PNG path (numbered when several images)"
    )
    g.add_argument("-n", "--num-images", type=int_at_least(1), default=1, help="images per prompt")
    add_generation_args(g, plan=True)
    g.add_argument(
        "--compile",
        action="store_true",
        help="run the diffusion head's MLP through torch.compile: "
        "the same images, faster once compiled (the compilation takes tens of seconds, so it pays for "
        "large models or many images; on CPU it needs a C++ compiler)",
    )
    g.add_argument("--seed", type=seed_value, default=0)
    add_model_args(g)
    g.set_defaults(func=cmd_generate)


def add_edit(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("edit", help="image + instruction -> edited image (a model trained to edit)")
    e.add_argument("image", help="the image to edit")
    e.add_argument("instruction", help='what to change, e.g. "make the circle blue"')
    e.add_argument(
        "-o", "--output", type=image_output, default="edited.png", help="PNG path (numbered when several images)"
    )
    e.add_argument("-n", "--num-images", type=int_at_least(1), default=1, help="edited images to draw")
    e.add_argument(
        "--image-guidance-scale",
        type=float,
        help="guidance towards the source image, against the prompt without it (>= 1; default 1: off, two prompt "
        "rows instead of three); --guidance-scale guides towards the instruction",
    )
    e.add_argument(
        "--understanding-image-size",
        type=int_at_least(16),
        help="pixels the encoder sees of the source (default: the model's)",
    )
    e.add_argument(
        "--route",
        choices=("auto", "layout", "direct"),
        default="auto",
        help="layout: the model reads the image's layout, rewrites it and redraws the changed places (models "
        "trained so, like the shipped one); direct: generation conditioned on the image and the instruction; auto "
        "(default): layout where the model records it",
    )
    e.add_argument(
        "--strength",
        type=float,
        help="layout route: SDEdit strength of a redrawn place seeded from its source token, in (0, 1] (default: "
        "the model's)",
    )
    e.add_argument(
        "--checks",
        type=int,
        help="layout route: draws of the changed places per image, each read back by the model; the first that reads "
        "as the edited layout is kept, else the closest (default: the model's)",
    )
    add_generation_args(e)
    e.add_argument("--compile", action="store_true", help="run the diffusion head's MLP through torch.compile")
    e.add_argument("--seed", type=seed_value, default=0)
    add_model_args(e)
    e.set_defaults(func=cmd_edit)


def add_describe(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("describe", help="image + question -> text")
    d.add_argument("image")
    d.add_argument("question", nargs="?", default="Describe the image in detail.")
    d.add_argument("--max-new-tokens", type=int_at_least(1))
    d.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    d.add_argument("--temperature", type=float, default=1.0)
    d.add_argument(
        "--repetition-penalty",
        type=float,
        help="divide the logits of tokens already generated (default: the model's, which official weights take "
        "from the Qwen folder's generation_config.json; 1.0 = none)",
    )
    d.add_argument("--image-size", type=int, help="pixels the encoder sees (default: the model's understanding size)")
    d.add_argument("--seed", type=seed_value, default=0)
    add_model_args(d)
    d.set_defaults(func=cmd_describe)


def add_convert(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("convert", help="official files -> our format (config.json + model.safetensors)")
    c.add_argument("-o", "--output", type=output_folder, required=True, help="output folder")
    c.add_argument("--save-dtype", choices=sorted(DTYPE_NAMES), help="store weights in this dtype")
    add_model_args(c)
    c.set_defaults(func=cmd_convert)
