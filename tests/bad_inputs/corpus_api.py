"""The Python API: devices, sampling and decoding settings out of range or of the wrong type (issue item 5), and the
training API's typed configs. Each refusal must be the documented exception type naming the argument."""

from __future__ import annotations

import math

import torch
from corpus_case import Case, Ctx, api
from corpus_files import folder, text
from PIL import Image

from harmon.images import load_image
from harmon.pipeline import HarmonPipeline
from harmon.train.config import TrainConfig, apply_overrides

RED = Image.new("RGB", (64, 64), "red")


def generate(**kwargs):
    """A call: the shared pipeline's ``generate`` of one prompt with ``kwargs``."""
    return lambda ctx: ctx.pipe.generate("a red circle", **kwargs)


def describe(**kwargs):
    """A call: the shared pipeline's ``describe`` of a red square (a short answer) with ``kwargs``."""
    kwargs.setdefault("max_new_tokens", 2)
    return lambda ctx: ctx.pipe.describe(RED, "What is in the image?", **kwargs)


def bad(id: str, call, phrase, raises: type[BaseException] | tuple = ValueError, xfail: str | None = None) -> Case:
    return api(id, "api", call, raises, phrase, xfail=xfail)


def load(path: str, **kwargs):
    return lambda ctx: HarmonPipeline.from_pretrained(path.replace("{ws}", str(ctx.ws)), **kwargs)


def model_with(**kwargs):
    return lambda ctx: HarmonPipeline.from_pretrained(ctx.model, **kwargs)


def toy_config(ctx: Ctx, **changes) -> TrainConfig:
    """The toy run's config, output in the case's folder, with top-level ``changes`` (as a config file has them)."""
    import json

    d = json.loads((ctx.run / "config.json").read_text())
    return TrainConfig.from_dict({**d, "output_dir": str(ctx.ws / "run"), **changes})


def trainer(**changes):
    def call(ctx: Ctx):
        from harmon.train.trainer import Trainer

        return Trainer(toy_config(ctx, **changes), device="cpu")

    return call


LOADING = [
    api("api-load-missing-folder", "api", load("{ws}/nope"), FileNotFoundError, "{ws}/nope"),
    api(
        "api-load-a-file",
        "api",
        load("{ws}/notes.txt"),
        FileNotFoundError,
        "{ws}/notes.txt",
        setup=text("notes.txt", "x"),
    ),
    api("api-load-empty-folder", "api", load("{ws}/e"), FileNotFoundError, "{ws}/e", setup=folder("e")),
    Case("api-device-cuda", "api", ValueError, ("no CUDA device",), call=model_with(device="cuda"), cpu_only=True),
    Case("api-device-index", "api", ValueError, ("device 0",), call=model_with(device=0), cpu_only=True),
    bad("api-device-unknown", model_with(device="tpu"), "tpu"),
    bad("api-dtype-integer", model_with(device="cpu", dtype=torch.int8), "dtype", (TypeError, ValueError)),
    bad("api-load-image-missing", lambda ctx: load_image(ctx.ws / "nope.png"), "{ws}/nope.png", FileNotFoundError),
]

GENERATION = [
    bad("api-num-images-zero", generate(num_images_per_prompt=0), "num_images_per_prompt"),
    bad(
        "api-num-images-fraction",
        generate(num_images_per_prompt=1.5),
        "num_images_per_prompt",
        (TypeError, ValueError),
    ),
    bad("api-output-type-unknown", generate(output_type="numpy"), "output_type"),
    bad("api-guidance-nan", generate(guidance_scale=math.nan), "guidance_scale"),
    bad("api-guidance-minus-inf", generate(guidance_scale=-math.inf), "guidance_scale"),
    bad(
        "api-guidance-a-string",
        generate(guidance_scale="3"),
        "guidance_scale",
        (TypeError, ValueError),
    ),
    bad("api-temperature-negative", generate(temperature=-0.5), "temperature"),
    bad("api-temperature-inf", generate(temperature=math.inf), "temperature"),
    bad("api-x0-clip-zero", generate(x0_clip=0.0), "x0_clip"),
    bad("api-num-iter-zero", generate(num_iter=0), "num_iter"),
    bad(
        "api-num-iter-fraction",
        generate(num_iter=2.5),
        "num_iter",
        (TypeError, ValueError),
    ),
    bad("api-sampling-steps-word", generate(num_sampling_steps="ten"), "ten"),
    bad("api-sampling-steps-negative", generate(num_sampling_steps=-5), "-5"),
    bad("api-sampling-steps-zero", generate(num_sampling_steps="0"), ("respacing", "'0'")),
    bad("api-preset-unknown", generate(preset="turbo"), "turbo"),
    bad("api-cfg-schedule-unknown", generate(cfg_schedule="cosine"), "cosine"),
    bad(
        "api-generator-an-int",
        generate(generator=0, num_iter=1),
        "generator",
        TypeError,
    ),
    bad("api-unknown-keyword", generate(steps=3), "steps", TypeError),
]

DECODING = [
    bad("api-describe-top-p-zero", describe(do_sample=True, top_p=0.0), "top_p"),
    bad("api-describe-top-p-two", describe(do_sample=True, top_p=2.0), "top_p"),
    bad("api-describe-top-p-nan", describe(do_sample=True, top_p=math.nan), "top_p"),
    bad("api-describe-top-p-zero-greedy", describe(top_p=0.0), "top_p"),
    bad("api-describe-repetition-zero", describe(repetition_penalty=0.0), "repetition_penalty"),
    bad("api-describe-repetition-negative", describe(repetition_penalty=-1.2), "repetition_penalty"),
    bad("api-describe-repetition-inf", describe(repetition_penalty=math.inf), "repetition_penalty"),
    bad("api-describe-temperature-negative", describe(do_sample=True, temperature=-1.0), "temperature"),
    bad("api-describe-temperature-nan", describe(do_sample=True, temperature=math.nan), "temperature"),
    bad("api-describe-max-new-tokens-zero", describe(max_new_tokens=0), "max_new_tokens"),
    bad(
        "api-describe-max-new-tokens-fraction",
        describe(max_new_tokens=2.5),
        "max_new_tokens",
        (TypeError, ValueError),
    ),
    bad("api-describe-image-size-48", describe(image_size=48), "48"),
    bad(
        "api-describe-image-missing",
        lambda ctx: ctx.pipe.describe(ctx.ws / "nope.png"),
        "{ws}/nope.png",
        FileNotFoundError,
    ),
]


def edit(**kwargs):
    """A call: the shared pipeline's ``edit`` of a red square with ``kwargs`` (one cheap step at most; the direct
    route unless ``plan`` is given)."""
    kwargs.setdefault("plan", False)
    if kwargs["plan"] is False:
        kwargs.setdefault("num_iter", 1)
    instruction = kwargs.pop("instruction", "make the square blue")
    image = kwargs.pop("image", RED)
    return lambda ctx: ctx.pipe.edit(image, instruction, **kwargs)


PRECISION = [
    bad("api-quantize-int4", lambda ctx: HarmonPipeline.from_pretrained(ctx.model).quantize("int4"), "int4"),
    bad("api-dtype-auto-misspelt", model_with(dtype="automatic"), "automatic", (TypeError, ValueError)),
]

EDITING = [
    bad("api-edit-instruction-empty", edit(instruction="  "), "instruction"),
    bad("api-edit-instruction-bytes", edit(instruction=b"make it blue"), "instruction", TypeError),
    bad("api-edit-image-guidance-below-one", edit(image_guidance_scale=0.5), "image_guidance_scale"),
    bad("api-edit-image-guidance-nan", edit(image_guidance_scale=math.nan), "image_guidance_scale"),
    bad("api-edit-understanding-size-48", edit(understanding_image_size=48), "understanding_image_size"),
    bad("api-edit-generator-an-int", edit(generator=1), "generator", TypeError),
    bad("api-edit-image-missing", lambda ctx: ctx.pipe.edit(ctx.ws / "nope.png", "make it blue"), "nope.png", OSError),
    bad("api-edit-image-a-number", edit(image=7), "image", TypeError),
    bad("api-edit-layout-image-a-number", edit(image=7.5, plan=True), "image", TypeError),
    bad("api-edit-layout-with-num-iter", edit(plan=True, num_iter=2), "takes none of ['num_iter']"),
    bad("api-edit-layout-strength-2", edit(plan=True, strength=2.0), "strength must be in (0, 1]"),
    bad("api-edit-direct-with-strength", edit(strength=0.5), "strength applies only to the layout route"),
    bad("api-edit-direct-with-checks", edit(checks=3, strength=0.5), "checks and strength apply only to the layout"),
    bad("api-edit-layout-checks-0", edit(plan=True, checks=0), "checks must be an integer in [1, 32]"),
    bad("api-edit-layout-checks-a-float", edit(plan=True, checks=2.5), "checks must be an integer"),
    bad("api-images-empty", generate(images=[], num_iter=1), "images is empty"),
    bad("api-images-a-path-not-a-list", generate(images="circle.png", num_iter=1), "images must be a list", TypeError),
    bad(
        "api-images-marks-mismatch",
        lambda ctx: ctx.pipe.generate("a <image> beside a <image>", images=[RED], num_iter=1),
        "2 <image> marks for 1 images",
    ),
]


TRAINING = [
    bad(
        "api-train-config-from-list",
        lambda ctx: TrainConfig.from_dict([]),
        "list",
        TypeError,
    ),
    bad(
        "api-train-config-betas-number",
        lambda ctx: TrainConfig.from_dict({"optim": {"betas": 0.9}}),
        "betas",
        (TypeError, ValueError),
    ),
    bad(
        "api-train-config-max-steps-word",
        lambda ctx: toy_config(ctx, max_steps="ten").validate(),
        "max_steps",
        (TypeError, ValueError),
    ),
    bad("api-train-override-unknown", lambda ctx: apply_overrides(toy_config(ctx), ["colour=red"]), "colour"),
    bad(
        "api-train-override-lr-word",
        lambda ctx: apply_overrides(toy_config(ctx), ["optim.lr=fast"]).validate(),
        "optim.lr",
        (TypeError, ValueError),
    ),
    api(
        "api-trainer-tokenizer-missing",
        "api",
        trainer(model={"preset": "tiny", "tokenizer": "/nonexistent/tokenizer"}),
        FileNotFoundError,
        "/nonexistent/tokenizer",
    ),
    api("api-trainer-no-data", "api", trainer(data=[]), ValueError, "data"),
]

CASES: list[Case] = [*LOADING, *GENERATION, *DECODING, *EDITING, *PRECISION, *TRAINING]
