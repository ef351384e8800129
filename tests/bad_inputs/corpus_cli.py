"""Bad command lines: missing and unknown arguments, devices, output paths, out-of-range sampling flags."""

from __future__ import annotations

from corpus_case import Case, cli
from corpus_files import both, folder, llm_folder, model_copy, png, text, torch_file


def gen(*flags: str) -> list[str]:
    """``harmon generate`` of one prompt into the case's folder, on the shared model, with ``flags``."""
    return ["generate", "a red circle", "-o", "{ws}/x.png", "--model", "{model}", *flags]


def describe(*flags: str, question: str = "What is in the image?") -> list[str]:
    """``harmon describe`` of the case's img.png (made by :func:`corpus_files.png`), a short answer at most."""
    return ["describe", "{ws}/img.png", question, "--model", "{model}", "--max-new-tokens", "2", *flags]


ARGPARSE = [
    cli("cli-no-command", "cli", [], "required: command"),
    cli("cli-unknown-command", "cli", ["paint", "a cat"], "invalid choice: 'paint'"),
    cli("cli-generate-without-prompt", "cli", ["generate"], "required: prompt"),
    cli("cli-describe-without-image", "cli", ["describe"], "required: image"),
    cli("cli-eval-without-suite", "cli", ["eval"], "required: suite"),
    cli("cli-unknown-flag", "cli", gen("--steps", "3"), "unrecognized arguments: --steps"),
    cli("cli-dtype-unknown", "cli", gen("--dtype", "fp8"), "invalid choice: 'fp8'"),
    cli("cli-preset-unknown", "cli", gen("--preset", "turbo"), "invalid choice: 'turbo'"),
    cli("cli-cfg-schedule-unknown", "cli", gen("--cfg-schedule", "cubic"), "invalid choice: 'cubic'"),
    cli("cli-num-iter-word", "cli", gen("--num-iter", "ten"), "'ten' is not an integer"),
    cli("cli-guidance-word", "cli", gen("--guidance-scale", "high"), "invalid float value: 'high'"),
    cli("cli-seed-word", "cli", gen("--seed", "lucky"), "'lucky' is not an integer"),
    cli("cli-train-recipe-and-config", "cli", ["train", "--recipe", "stage1", "--config", "c.json"], "not allowed"),
]

DEVICES = [
    cli("cli-device-cuda-on-cpu", "cli", gen("--device", "cuda"), "no CUDA device is available", cpu_only=True),
    cli("cli-device-cuda-index", "cli", gen("--device", "cuda:7"), "no CUDA device is available", cpu_only=True),
    cli("cli-device-unknown", "cli", gen("--device", "gpu"), "device 'gpu'"),
    cli("cli-device-typo", "cli", gen("--device", "cpux"), "device 'cpux'"),
    cli(
        "cli-describe-device-cuda",
        "cli",
        describe("--device", "cuda"),
        "no CUDA device is available",
        setup=png,
        cpu_only=True,
    ),
]

# generate checks -o before it loads a model or draws anything (issue item 4)
OUTPUTS = [
    cli("cli-output-no-extension", "cli", gen("-o", "{ws}/picture"), "no file extension", before_model=True),
    cli("cli-output-unknown-extension", "cli", gen("-o", "{ws}/picture.xyz"), "'.xyz'", before_model=True),
    cli("cli-output-text-extension", "cli", gen("-o", "{ws}/notes.txt"), "'.txt'", before_model=True),
    cli(
        "cli-output-is-folder",
        "cli",
        gen("-o", "{ws}/folder.png"),
        "is a folder",
        setup=folder("folder.png"),
        before_model=True,
    ),
    cli(
        "cli-output-folder-without-extension",
        "cli",
        gen("-o", "{ws}/outdir"),
        "{ws}/outdir",
        setup=folder("outdir"),
        before_model=True,
    ),
    cli(
        "cli-output-under-a-file",
        "cli",
        gen("-o", "{ws}/notes.txt/x.png"),
        ("{ws}/notes.txt", "not a folder"),
        setup=text("notes.txt", "my notes\n"),
        before_model=True,
    ),
    cli(
        "cli-output-read-only-fs",
        "cli",
        gen("-o", "/sys/harmon-x.png"),
        "cannot write",
        before_model=True,
    ),
    cli(
        "cli-output-in-proc",
        "cli",
        gen("-o", "/proc/harmon-x.png"),
        "/proc",
        before_model=True,
    ),
    cli("cli-output-bad-jpeg-name", "cli", gen("-o", "{ws}/x.jpeg.bak"), "'.bak'", before_model=True),
]

SETTINGS = [
    cli("cli-num-images-zero", "cli", gen("-n", "0"), "--num-images"),
    cli("cli-num-images-negative", "cli", gen("-n", "-3"), "--num-images"),
    cli("cli-num-iter-zero", "cli", gen("--num-iter", "0"), "--num-iter"),
    cli("cli-num-iter-negative", "cli", gen("--num-iter", "-4"), "--num-iter"),
    cli("cli-guidance-nan", "cli", gen("--guidance-scale", "nan"), "guidance_scale"),
    cli("cli-guidance-inf", "cli", gen("--guidance-scale", "inf"), "guidance_scale"),
    cli("cli-guidance-below-one", "cli", gen("--guidance-scale", "0.5"), "guidance_scale"),
    cli("cli-temperature-inf", "cli", gen("--temperature", "inf"), "temperature"),
    cli("cli-temperature-nan", "cli", gen("--temperature", "nan"), "temperature"),
    cli("cli-temperature-negative", "cli", gen("--temperature", "-1"), "temperature"),
    cli("cli-x0-clip-negative", "cli", gen("--x0-clip", "-1"), "x0_clip"),
    cli("cli-x0-clip-zero", "cli", gen("--x0-clip", "0"), "x0_clip"),
    cli("cli-x0-clip-nan", "cli", gen("--x0-clip", "nan"), "x0_clip"),
    cli("cli-diffusion-steps-word", "cli", gen("--diffusion-steps", "ten"), ("respacing", "'ten'")),
    cli("cli-diffusion-steps-zero", "cli", gen("--diffusion-steps", "0"), ("respacing", "'0'")),
    cli("cli-diffusion-steps-empty", "cli", gen("--diffusion-steps", ""), ("respacing", "''")),
    cli("cli-diffusion-steps-final-zero", "cli", gen("--diffusion-steps-final", "0"), "--diffusion-steps-final"),
    cli("cli-diffusion-steps-final-negative", "cli", gen("--diffusion-steps-final", "-2"), "--diffusion-steps-final"),
    cli(
        "cli-seed-beyond-64-bits",
        "cli",
        gen("--seed", str(2**70)),
        "seed",
    ),
    cli("cli-huge-num-iter-is-capped", "cli", gen("--num-iter", "1000000", "--diffusion-steps", "2"), "x.png", code=0),
    cli("cli-describe-max-new-tokens-zero", "cli", describe("--max-new-tokens", "0"), "--max-new-tokens", setup=png),
    cli(
        "cli-describe-max-new-tokens-negative", "cli", describe("--max-new-tokens", "-5"), "--max-new-tokens", setup=png
    ),
    cli(
        "cli-describe-temperature-negative",
        "cli",
        describe("--sample", "--temperature", "-1"),
        "temperature",
        setup=png,
    ),
    cli("cli-describe-temperature-nan", "cli", describe("--sample", "--temperature", "nan"), "temperature", setup=png),
    cli("cli-describe-temperature-inf", "cli", describe("--sample", "--temperature", "inf"), "temperature", setup=png),
]

CONVERT = [
    cli(
        "cli-convert-onto-its-source",
        "cli",
        ["convert", "--model", "{ws}/m", "-o", "{ws}/m"],
        "being converted",
        setup=model_copy,
        before_model=True,
    ),
    cli(
        "cli-convert-into-the-folder-holding-its-source",
        "cli",
        ["convert", "--model", "{ws}/m", "-o", "{ws}"],
        "being converted",
        setup=model_copy,
        before_model=True,
    ),
    cli(
        "cli-convert-onto-a-link-to-its-source",
        "cli",
        ["convert", "--model", "{ws}/m", "-o", "{ws}/link"],
        "being converted",
        setup=lambda ctx: (model_copy(ctx), (ctx.ws / "link").symlink_to(ctx.ws / "m")),
        before_model=True,
    ),
    cli(
        "cli-convert-official-into-the-checkpoint-folder",
        "cli",
        ["convert", "--checkpoint", "{ws}/w/c.pth", "--vae", "{ws}/w/v.ckpt", "--llm", "{ws}/qwen", "-o", "{ws}/w"],
        "being converted",
        setup=both(torch_file("w/c.pth", lambda ctx: {}), torch_file("w/v.ckpt", lambda ctx: {}), llm_folder()),
        before_model=True,
    ),
    cli(
        "cli-convert-output-is-a-file",
        "cli",
        ["convert", "--model", "{model}", "-o", "{ws}/notes.txt"],
        "{ws}/notes.txt",
        setup=text("notes.txt", "my notes\n"),
        before_model=True,
    ),
    cli(
        "cli-convert-missing-model",
        "cli",
        ["convert", "--model", "{ws}/nope", "-o", "{ws}/out"],
        "{ws}/nope",
        before_model=False,
    ),
]

OFFICIAL_FLAGS = [
    cli(
        "cli-official-without-vae-and-llm",
        "cli",
        gen("--checkpoint", "{ws}/c.pth"),
        ("--vae", "--llm"),
        setup=torch_file("c.pth", lambda ctx: {}),
        before_model=True,
    ),
    cli(
        "cli-model-and-official-flags-together",
        "cli",
        [*gen("--checkpoint", "{ws}/c.pth", "--vae", "{ws}/v.ckpt", "--llm", "{ws}/qwen")],
        ("--model", "--checkpoint"),
        setup=both(torch_file("c.pth", lambda ctx: {}), torch_file("v.ckpt", lambda ctx: {}), llm_folder()),
        before_model=True,
    ),
]


def edit(*flags: str) -> list[str]:
    """``harmon edit`` of the case's img.png (made by :func:`corpus_files.png`)."""
    return ["edit", "{ws}/img.png", "make the square blue", "-o", "{ws}/e.png", "--model", "{model}", *flags]


EDIT = [
    cli("cli-quantize-int4", "cli", gen("--quantize", "int4"), "invalid choice: 'int4'"),
    cli("cli-edit-without-instruction", "cli", ["edit", "{ws}/img.png"], "required: instruction", setup=png),
    cli("cli-edit-image-missing", "cli", edit(), "img.png", before_model=True),
    cli("cli-edit-num-images-zero", "cli", edit("-n", "0"), "--num-images", setup=png, before_model=True),
    cli("cli-edit-seed-negative", "cli", edit("--seed", "-1"), "--seed", setup=png, before_model=True),
    cli("cli-edit-understanding-size-8", "cli", edit("--understanding-image-size", "8"), "8", setup=png),
    cli("cli-edit-output-not-an-image", "cli", edit("-o", "{ws}/e.txt"), "e.txt", setup=png, before_model=True),
    cli("cli-edit-image-guidance-word", "cli", edit("--image-guidance-scale", "lots"), "'lots'", setup=png),
]


CASES: list[Case] = [*ARGPARSE, *DEVICES, *OUTPUTS, *SETTINGS, *CONVERT, *OFFICIAL_FLAGS, *EDIT]
