"""Images: unreadable, truncated, over Pillow's limit, folders and text files, odd modes (CMYK, 16-bit, animated,
transparent: composited on white, issue item 14), tiny or empty images, and image sizes the model cannot take
(issue item 9: the shipped model needs multiples of 32, not 16; 1048576 is absurd)."""

from __future__ import annotations

import numpy as np
from corpus_case import Case, Ctx, api, cli
from corpus_files import (
    animated_gif,
    bomb_png,
    cmyk_jpeg,
    file_bytes,
    folder,
    png,
    png16,
    text,
    transparent,
    truncated_png,
)
from PIL import Image

from harmon.images import load_image, prepare_for_understanding, to_rgb


def describe(image: str, *flags: str) -> list[str]:
    return ["describe", image, "What is in the image?", "--model", "{model}", "--max-new-tokens", "2", *flags]


def gen(*flags: str) -> list[str]:
    return ["generate", "a red circle", "-o", "{ws}/x.png", "--model", "{model}", *flags]


def first_pixel(name: str):
    """A call: the first pixel of the case's image ``name`` as the pipeline sees it (RGB, transparency on white)."""
    return lambda ctx: to_rgb(load_image(ctx.ws / name)).getpixel((0, 0))


def understood(image: Image.Image):
    """A call: the image through the pipeline's understanding preprocessing; its mean pixel in [-1, 1]."""
    return lambda ctx: f"mean {prepare_for_understanding(image, 64).mean().item():.2f}"


def answered(image: Image.Image):
    """A call: ``describe`` on ``image`` (one token); it must answer, not fail."""
    return lambda ctx: f"answered {ctx.pipe.describe(image, 'What is in the image?', max_new_tokens=1)!r}"


def transparent_file(mode: str, name: str):
    def setup(ctx: Ctx) -> None:
        transparent(mode).save(ctx.path(name))

    return setup


UNREADABLE = [
    cli("img-missing", "image", describe("{ws}/nope.png"), "{ws}/nope.png"),
    cli(
        "img-is-a-folder",
        "image",
        describe("{ws}/pics"),
        ("{ws}/pics", "folder"),
        setup=folder("pics"),
    ),
    cli("img-text-file", "image", describe("{ws}/notes.txt"), "{ws}/notes.txt", setup=text("notes.txt", "hello\n")),
    cli("img-empty-file", "image", describe("{ws}/empty.png"), "{ws}/empty.png", setup=file_bytes("empty.png", b"")),
    cli("img-truncated-png", "image", describe("{ws}/cut.png"), "{ws}/cut.png", setup=truncated_png),
    cli(
        "img-over-pillow-limit",
        "image",
        describe("{ws}/bomb.png"),
        ("{ws}/bomb.png", "limit"),
        setup=bomb_png,
    ),
    cli(
        "img-svg",
        "image",
        describe("{ws}/logo.svg"),
        "{ws}/logo.svg",
        setup=text("logo.svg", '<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>'),
    ),
    cli(
        "img-html-named-jpg",
        "image",
        describe("{ws}/photo.jpg"),
        "{ws}/photo.jpg",
        setup=text("photo.jpg", "<html><body>Not found</body></html>"),
    ),
    cli("img-weights-file-as-image", "image", describe("{model}/model.safetensors"), "model.safetensors"),
    api(
        "img-api-folder",
        "image",
        lambda ctx: load_image(ctx.ws / "pics"),
        OSError,
        ("{ws}/pics", "folder"),
        setup=folder("pics"),
    ),
    api(
        "img-api-over-pillow-limit",
        "image",
        lambda ctx: load_image(ctx.ws / "bomb.png"),
        ValueError,
        "limit",
        setup=bomb_png,
    ),
    api(
        "img-api-empty-pil-image",
        "image",
        lambda ctx: ctx.pipe.describe(Image.new("RGB", (0, 0)), "What is it?"),
        ValueError,
        "no pixels",
    ),
    api(
        "img-api-numpy-array",
        "image",
        lambda ctx: ctx.pipe.describe(np.zeros((64, 64, 3), np.uint8), "What is it?"),
        TypeError,
        "ndarray",
    ),
    api(
        "img-api-png-bytes",
        "image",
        lambda ctx: ctx.pipe.describe(b"\x89PNG\r\n\x1a\n", "What is it?"),
        TypeError,
        "bytes",
    ),
]

# inputs that must work: odd but valid images (their first pixel or the answer is the phrase)
ODD_BUT_VALID = [
    api("img-cmyk-jpeg", "image", first_pixel("cmyk.jpg"), None, "(255, 0, 0)", setup=cmyk_jpeg),
    api("img-16-bit-png-is-rescaled", "image", first_pixel("deep.png"), None, "(156, 156, 156)", setup=png16),
    api("img-animated-gif-first-frame", "image", first_pixel("anim.gif"), None, "(255, 0, 0)", setup=animated_gif),
    api(
        "img-transparent-rgba-on-white",
        "image",
        first_pixel("t.png"),
        None,
        "(255, 255, 255)",
        setup=transparent_file("RGBA", "t.png"),
    ),
    api(
        "img-transparent-la-on-white",
        "image",
        first_pixel("t.png"),
        None,
        "(255, 255, 255)",
        setup=transparent_file("LA", "t.png"),
    ),
    api(
        "img-transparent-palette-on-white",
        "image",
        first_pixel("t.png"),
        None,
        "(255, 255, 255)",
        setup=transparent_file("P", "t.png"),
    ),
    api("img-transparent-understood-as-white", "image", understood(transparent("RGBA")), None, "mean 1.00"),
    api("img-one-pixel", "image", answered(Image.new("RGB", (1, 1), "red")), None, "answered"),
    api("img-thin-strip", "image", answered(Image.new("RGB", (1, 4000), "blue")), None, "answered"),
    api("img-greyscale", "image", answered(Image.new("L", (64, 64), 128)), None, "answered"),
]

SIZES = [
    cli("img-generate-size-not-multiple-of-32", "image", gen("--image-size", "48"), ("48", "32")),
    cli("img-generate-size-16", "image", gen("--image-size", "16"), ("16", "32")),
    cli("img-generate-size-zero", "image", gen("--image-size", "0"), ("0", "32")),
    cli("img-generate-size-negative", "image", gen("--image-size", "-64"), "-64"),
    cli(
        "img-generate-size-absurd",
        "image",
        gen("--image-size", "1048576"),
        "1048576",
    ),
    cli(
        "img-describe-size-not-multiple-of-32",
        "image",
        describe("{ws}/img.png", "--image-size", "48"),
        ("48", "32"),
        setup=png,
    ),
    cli("img-describe-size-zero", "image", describe("{ws}/img.png", "--image-size", "0"), ("0", "32"), setup=png),
    cli(
        "img-describe-size-absurd",
        "image",
        describe("{ws}/img.png", "--image-size", "1048576"),
        "1048576",
        setup=png,
    ),
    api(
        "img-api-generate-size-absurd",
        "image",
        lambda ctx: ctx.pipe.generate("a red circle", image_size=1048576),
        ValueError,
        "1048576",
    ),
    api(
        "img-api-generate-size-as-string",
        "image",
        lambda ctx: ctx.pipe.generate("a red circle", image_size="64"),
        (TypeError, ValueError),
        "image_size",
    ),
    api(
        "img-api-generate-size-rectangular-tuple",
        "image",
        lambda ctx: ctx.pipe.generate("a red circle", image_size=(64, 48)),
        ValueError,
        "48",
    ),
]

CASES: list[Case] = [*UNREADABLE, *ODD_BUT_VALID, *SIZES]
