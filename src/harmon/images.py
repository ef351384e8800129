"""Loading and preparing images: safe mode conversion, square padding, resizing, tensor <-> PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

GRAY = (127, 127, 127)  # padding colour of understanding inputs (spec §10)
# Transparent pixels are shown on white, as image viewers and browsers show them (and as the shapes world draws its
# background); grey let the edges of a transparent object read as shapes of their own.
WHITE = (255, 255, 255)
# The largest square canvas expand_to_square builds (8192^2 RGB: 200 MB); Pillow's own decoding limit lets a thin
# image far longer through, and every photo a camera takes fits under it unchanged.
MAX_SQUARE_SIDE = 8192


def load_image(path: str | Path) -> Image.Image:
    """Open an image file fully, raising a ValueError that names the file if it cannot be read."""
    if isinstance(path, str) and not path.strip():  # Path("") is the current folder
        raise ValueError("image path is empty")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not an image file")
    if path.exists() and not path.is_file():  # a pipe or a device would block or never end
        raise ValueError(f"{path} is not a regular file (a pipe, socket or device), not an image file")
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except Image.DecompressionBombError as err:
        raise ValueError(
            f"image {path} is larger than Pillow's safety limit of {Image.MAX_IMAGE_PIXELS} pixels: {err}"
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def to_rgb(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without surprises.

    Transparency is composited onto ``background`` (instead of exposing whatever colour hides under alpha 0);
    16-bit and 32-bit integer / float greyscale are rescaled to 0..255 rather than clipped.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        if not np.isfinite(arr).all():  # NaN would cast to an arbitrary grey and inf would squash the rest to 0
            raise ValueError(f"the {mode}-mode image holds NaN or infinite pixels")
        if mode.startswith("I;16"):
            arr = arr / 257.0
        elif arr.size and (arr.max() > 255 or arr.min() < 0):
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
        elif mode == "F" and arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        grey = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
        return grey.convert("RGB")
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        if image.mode == "RGB":
            return image
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def expand_to_square(image: Image.Image, fill: tuple[int, int, int] = GRAY) -> Image.Image:
    """Centre the image on a square canvas of ``fill`` (offset (long - short) // 2). An image whose long side is
    over :data:`MAX_SQUARE_SIDE` is first shrunk to it (aspect kept): a 1 x 200000 strip, a file of a few hundred
    bytes, would otherwise ask for a 120 GB canvas. Callers resize the square to far less anyway."""
    w, h = image.size
    if w == h:
        return image
    if max(w, h) > MAX_SQUARE_SIDE:
        scale = MAX_SQUARE_SIDE / max(w, h)
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
        image = image.resize((w, h), Image.Resampling.BICUBIC)
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def center_crop_square(image: Image.Image) -> Image.Image:
    """The centred square of side min(w, h)."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def image_grid(images: list[Image.Image], columns: int) -> Image.Image:
    """The images tiled row by row, ``columns`` to a row, on white (all of the first image's size)."""
    rows = -(-len(images) // columns)
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, rows * h), (255, 255, 255))
    for k, im in enumerate(images):
        grid.paste(im, ((k % columns) * w, (k // columns) * h))
    return grid


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 in [-1, 1]."""
    arr = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())  # (H, W, 3)
    return arr.permute(2, 0, 1).float().div(255.0).mul(2.0).sub(1.0).contiguous()  # (3, H, W), NCHW strides


def tensor_to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in about [-1, 1] -> PIL images, with clamp(127.5 x + 128, 0, 255) then truncation."""
    arr = torch.clamp(127.5 * pixels.float() + 128.0, 0, 255).to(torch.uint8)  # truncation, as the official
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, mode="RGB") for a in arr]


def tokens_as(model, tokens: torch.Tensor, grid: tuple[int, int], output_type: str) -> list[Image.Image] | torch.Tensor:
    """Latent tokens (N, L, C) of ``model`` on ``grid`` as ``output_type`` asks: "latent", the scaled VAE latents
    (N, C, h, w); "pt", pixels (N, 3, H, W) from its VAE decoder; "pil", those pixels as PIL images."""
    if output_type == "latent":
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)
    pixels = model.decode_tokens(tokens, grid)  # (N, 3, H, W)
    return pixels if output_type == "pt" else tensor_to_pil(pixels)


def prepare_for_understanding(image: Image.Image | str | Path, size: int) -> torch.Tensor:
    """Any image or path -> (1, 3, size, size) in [-1, 1]: RGB, padded to a gray square, resized (bicubic)."""
    if isinstance(image, (str, Path)):
        image = load_image(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a path, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image has no pixels ({image.width}x{image.height})")
    image = expand_to_square(to_rgb(image))
    image = image.resize((size, size), Image.Resampling.BICUBIC)
    return pil_to_tensor(image).unsqueeze(0)
