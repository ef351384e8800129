"""Drawing a scene: flat colours, no anti-aliasing, so every pixel is exactly a palette colour or the background.

A scene with its own :class:`harmon.world.scene.Background` gets that tint or gradient, evaluated at pixel centres
and rounded; :mod:`harmon.world.render2` is a second, independently written renderer (supersampled, anti-aliased)
that the scorer must read as well.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from harmon.world.scene import Scene, WorldConfig


@functools.lru_cache(maxsize=4096)
def _shape_mask_cached(shape: str, width: int, height: int) -> np.ndarray:
    # pixel centres relative to the box: x in (0.5, 1.5, ..., width - 0.5)
    px = np.arange(width, dtype=np.float64)[None, :] + 0.5
    py = np.arange(height, dtype=np.float64)[:, None] + 0.5
    if shape == "square":
        mask = np.ones((height, width), dtype=bool)
    elif shape == "circle":
        mask = ((px - width / 2) / (width / 2)) ** 2 + ((py - height / 2) / (height / 2)) ** 2 <= 1.0 + 1e-9
    elif shape == "triangle":
        # upright isosceles: apex centred on the top edge, base spanning the bottom row; the half-width grows
        # linearly so the top row holds 1-2 pixels and the bottom row the full width (tight box either way)
        mask = np.abs(px - width / 2) <= (width / 2) * (py + 0.5) / height + 1e-9
    else:
        raise ValueError(f"unknown shape {shape!r}")
    mask.setflags(write=False)
    return mask


def shape_mask(shape: str, width: int, height: int) -> np.ndarray:
    """Boolean (height, width) mask of ``shape`` filling a width x height box, as :func:`render` draws it.

    Pixel (i, j) is inside when its centre is; the mask's tight bounding box is the whole box.
    """
    return _shape_mask_cached(shape, int(width), int(height))


def render_array(scene: Scene, config: WorldConfig | None = None) -> np.ndarray:
    """Render ``scene`` as uint8 (H, W, 3); every pixel is exactly a palette colour or the background (the world's,
    or the scene's own tint or gradient)."""
    config = config or WorldConfig()
    palette = config.palette
    n = scene.image_size
    image = np.empty((n, n, 3), dtype=np.uint8)
    if scene.background is None:
        image[:] = np.array(config.background, dtype=np.uint8)
    else:
        centres = np.arange(n, dtype=np.float64) + 0.5
        image[:] = np.rint(scene.background.at(centres[None, :], centres[:, None], n)).astype(np.uint8)  # (n, n, 3)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.bbox
        mask = shape_mask(obj.shape, x1 - x0, y1 - y0)
        region = image[y0:y1, x0:x1]  # view, (h, w, 3)
        region[mask] = np.array(palette[obj.color], dtype=np.uint8)
    return image


def render(scene: Scene, config: WorldConfig | None = None) -> Image.Image:
    """Render ``scene`` as an RGB PIL image with flat colours and no anti-aliasing."""
    return Image.fromarray(render_array(scene, config), mode="RGB")
