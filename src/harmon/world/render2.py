"""A second renderer of shapes-world scenes, written apart from :mod:`harmon.world.render` to test the scorer.

Where the first renderer tests each pixel centre against an analytic mask and paints flat colours, this one
rasterises every shape with Pillow's polygon and ellipse filling on a canvas ``supersample`` times finer, takes each
pixel's coverage as the mean of its sub-pixels (a box filter: true area anti-aliasing) and blends the object's colour
over the background by that coverage. Its gradients are computed from the scene's background parameters by its own
formula, per sub-pixel. Edges are therefore soft and sub-pixel placement differs from the first renderer's, as in a
picture drawn by other software; the scorer (:mod:`harmon.world.detect2`) must read both alike.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from harmon.world.scene import Background, Scene, WorldConfig


def _gradient(background: Background, size: int, supersample: int) -> np.ndarray:
    """(size, size, 3) float background: the gradient averaged over ``supersample``**2 points per pixel.

    The position along the gradient is a sum of an x term and a y term, and within the image it never needs
    clipping, so its mean over a pixel's sub-pixel grid is the sum of the two terms' means over the pixel's
    sub-columns and sub-rows.
    """
    u = (np.arange(size * supersample, dtype=np.float64) + 0.5) / supersample - size / 2  # sub-pixel centres
    angle = math.radians(background.angle)
    ux, uy = math.cos(angle), math.sin(angle)
    reach = 0.5 * size * (abs(ux) + abs(uy))  # distance from the centre to the extreme corners along the direction
    across = (u * ux).reshape(size, supersample).mean(1)  # (size,) mean x term of each column
    down = (u * uy).reshape(size, supersample).mean(1)  # (size,) mean y term of each row
    t = np.clip((across[None, :] + down[:, None] + reach) / (2 * reach), 0.0, 1.0)  # (size, size)
    lo, hi = np.asarray(background.start, dtype=np.float64), np.asarray(background.end, dtype=np.float64)
    return lo[None, None, :] * (1.0 - t[..., None]) + hi[None, None, :] * t[..., None]  # (size, size, 3)


def _coverage(shape: str, bbox: tuple[int, int, int, int], supersample: int) -> np.ndarray:
    """(h, w) float in [0, 1] over the box: the share of each pixel the shape covers (Pillow fill, fine canvas)."""
    x0, y0, x1, y1 = bbox
    w, h = (x1 - x0) * supersample, (y1 - y0) * supersample
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "square":
        draw.rectangle([0, 0, w - 1, h - 1], fill=255)  # Pillow's rectangle includes its last row and column
    elif shape == "circle":
        draw.ellipse([0, 0, w - 1, h - 1], fill=255)
    elif shape == "triangle":
        draw.polygon([(0, h - 1), (w - 1, h - 1), ((w - 1) / 2, 0)], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    cover = np.asarray(canvas, dtype=np.float64) / 255.0
    return cover.reshape(y1 - y0, supersample, x1 - x0, supersample).mean(axis=(1, 3))


def render2_array(scene: Scene, config: WorldConfig | None = None, supersample: int = 8) -> np.ndarray:
    """Render ``scene`` as uint8 (H, W, 3) with area anti-aliasing (``supersample``**2 samples per pixel)."""
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    config = config or WorldConfig()
    n = scene.image_size
    if scene.background is None:
        image = np.empty((n, n, 3), dtype=np.float64)
        image[:] = np.asarray(config.background, dtype=np.float64)
    else:
        image = _gradient(scene.background, n, supersample)
    palette = config.palette
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.bbox
        alpha = _coverage(obj.shape, obj.bbox, supersample)[..., None]  # (h, w, 1)
        region = image[y0:y1, x0:x1]
        image[y0:y1, x0:x1] = region * (1.0 - alpha) + np.asarray(palette[obj.color], dtype=np.float64) * alpha
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render2(scene: Scene, config: WorldConfig | None = None, supersample: int = 8) -> Image.Image:
    """:func:`render2_array` as an RGB PIL image."""
    return Image.fromarray(render2_array(scene, config, supersample), mode="RGB")
