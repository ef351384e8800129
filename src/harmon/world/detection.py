"""An exact object detector for (possibly imperfect) images of the shapes world.

Detection (:func:`detect_objects`):
    1. every pixel goes to the nearest palette colour or the background (Euclidean RGB); a pixel farther than
       ``DetectorConfig.color_threshold`` from all of them is "unknown" and belongs to nothing;
    2. a pixel that is none of these but lies (within the same threshold) on the segment between the
       background and one palette colour is a blurred or anti-aliased edge: it goes to that colour when it holds
       at least half of it, else to the background, so blur does not erode or grow shapes;
    3. pixels of each palette colour are split into 8-connected components;
    4. components whose hole-filled area is below ``min_area_frac`` of the image are noise and dropped;
    5. the shape is the ideal shape (circle, square, upright isosceles triangle), fitted to the hole-filled blob's
       area and centroid (:func:`fitted_template`), with the best IoU against the blob. A blob is reported with
       shape "unknown" (which matches no class) unless that IoU is >= ``min_fit``, beats the runner-up by
       ``min_fit_margin``, the box aspect is <= ``max_aspect`` (world objects have square boxes) and the blob is
       solid (own pixels / hole-filled pixels >= ``min_solidity``).

With the default thresholds, rendered scenes are recovered exactly, also under Gaussian pixel noise (sigma 16/255)
or Gaussian blur (radius 1.2 px) at 64 px; ellipses, rectangles, diamonds, pentagons, inverted or right
triangles, strongly rounded squares and two merged discs come out "unknown" (hexagons and octagons, which are
near-discs at this size, count as circles).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from harmon.world.scene import BBox, WorldConfig

try:  # scipy is faster; a pure-numpy/python fallback keeps the package usable without it
    from scipy import ndimage as _ndimage
except ImportError:  # pragma: no cover - exercised only where scipy is absent
    _ndimage = None

UNKNOWN = "unknown"  # the shape of a blob that fits no world shape well enough


@dataclass(frozen=True)
class DetectorConfig:
    """Thresholds of :func:`detect_objects`; the defaults recover rendered scenes exactly, even under noise."""

    color_threshold: float = 60.0  # max RGB distance to the nearest palette colour; ~half the closest pair (~116)
    min_area_frac: float = 0.01  # blobs under 1% of the image (41 px at 64) are noise; smallest object is ~85 px
    min_fit: float = 0.9  # IoU with the fitted ideal shape; world shapes score >= 0.94 even blurred (1.2 px)
    min_fit_margin: float = 0.05  # the best shape must beat the runner-up by this much (rounded squares fail)
    max_aspect: float = 1.3  # world objects have square boxes; blur cutting a triangle's tip stays under 1.3
    min_solidity: float = 0.8  # own pixels / hole-filled pixels; a ring (blur rim around an object) is not one

    def __post_init__(self) -> None:
        if self.color_threshold <= 0:
            raise ValueError(f"color_threshold must be > 0, got {self.color_threshold}")
        if not 0 <= self.min_area_frac < 1:
            raise ValueError(f"min_area_frac must be in [0, 1), got {self.min_area_frac}")
        if not 0 < self.min_fit <= 1 or not 0 <= self.min_fit_margin < 1:
            raise ValueError(
                f"need 0 < min_fit <= 1 and 0 <= min_fit_margin < 1, got {self.min_fit}, {self.min_fit_margin}"
            )
        if self.max_aspect < 1:
            raise ValueError(f"max_aspect must be >= 1, got {self.max_aspect}")
        if not 0 <= self.min_solidity <= 1:
            raise ValueError(f"min_solidity must be in [0, 1], got {self.min_solidity}")


@dataclass(frozen=True)
class DetectedObject:
    """One detected blob: ``shape`` is a world shape or "unknown"; ``fit`` is the IoU with the best fitted shape."""

    shape: str
    color: str
    bbox: BBox  # (x0, y0, x1, y1), x1/y1 exclusive, like WorldObject
    center: tuple[float, float]  # bbox centre (x, y)
    area: int  # hole-filled pixel count
    fit: float = 1.0

    @property
    def pair(self) -> tuple[str, str]:
        return (self.color, self.shape)


# ---- connected components -----------------------------------------------------------------------------------


def label_components(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Label connected components of a boolean (H, W) mask; returns (labels int32 (H, W), count).

    Uses scipy.ndimage.label when scipy is installed, otherwise an equivalent breadth-first search.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    if _ndimage is not None:
        structure = np.ones((3, 3), dtype=bool) if connectivity == 8 else None
        labels, count = _ndimage.label(mask, structure=structure)
        return labels.astype(np.int32), int(count)
    return _label_bfs(mask, connectivity)


def _label_bfs(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    count = 0
    for y, x in zip(*np.nonzero(mask)):
        if labels[y, x]:
            continue
        count += 1
        labels[y, x] = count
        queue = deque([(y, x)])
        while queue:
            cy, cx = queue.popleft()
            for dy, dx in steps:
                ny, nx = cy + dy, cx + dx
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = count
                    queue.append((ny, nx))
    return labels, count


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every region not 4-connected to the border filled in."""
    padded = np.pad(~mask, 1, constant_values=True)
    labels, _ = label_components(padded, connectivity=4)
    outside = labels == labels[0, 0]
    return ~outside[1:-1, 1:-1]


# ---- detection ----------------------------------------------------------------------------------------------


def image_to_array(image: Image.Image | np.ndarray | torch.Tensor) -> np.ndarray:
    """Float64 (H, W, 3) in [0, 255] from a PIL image, a uint8/float (H, W, 3) array (floats in [0, 1]), or a
    tensor (3, H, W) / (H, W, 3) (floats in [0, 1])."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 3 and t.shape[0] == 3 and t.shape[-1] != 3:
            t = t.permute(1, 2, 0)  # (H, W, 3)
        image = t.numpy()
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0
    return arr.astype(np.float64)


def classify_pixels(
    image: Image.Image | np.ndarray | torch.Tensor, config: WorldConfig, detector: DetectorConfig
) -> np.ndarray:
    """Per-pixel class (H, W) int: k in [0, K) for palette colour k, K for background, -1 for unknown
    (steps 1-2 of the module docstring)."""
    arr = image_to_array(image)  # (H, W, 3)
    table = np.array([rgb for _, rgb in config.colors] + [config.background], dtype=np.float64)  # (K+1, 3)
    # squared distances |x - p|^2 = |x|^2 - 2 x.p + |p|^2, without an (H, W, K+1, 3) intermediate
    dist2 = (arr**2).sum(-1)[..., None] - 2.0 * arr @ table.T + (table**2).sum(-1)  # (H, W, K+1)
    classes = dist2.argmin(-1)
    far = dist2.min(-1) > detector.color_threshold**2  # (H, W)
    if far.any():
        # blends x = bg + a (c_k - bg): find the colour whose segment passes closest, split at a = 1/2
        x = arr[far] - table[-1]  # (N, 3), relative to the background
        d = table[:-1] - table[-1]  # (K, 3)
        a = np.clip(x @ d.T / (d**2).sum(-1), 0.0, 1.0)  # (N, K) mixing fraction
        resid = ((x[:, None, :] - a[..., None] * d[None]) ** 2).sum(-1)  # (N, K)
        k = resid.argmin(-1)
        blend = np.where(a[np.arange(len(k)), k] >= 0.5, k, len(d))
        classes[far] = np.where(resid.min(-1) <= detector.color_threshold**2, blend, -1)
    return classes


def fitted_template(shape: str, filled: np.ndarray, pad: int) -> np.ndarray:
    """The ideal ``shape`` with the blob's area and centroid, rasterised on the blob's crop padded by ``pad``.

    Matching area and centroid (not the bounding box) makes the fit insensitive to blur, which shrinks boxes
    and cuts triangle tips, and to sub-pixel placement. Square: side sqrt(A); circle: radius sqrt(A / pi);
    upright isosceles triangle with base = height = sqrt(2 A), centroid at 2/3 of the height below the apex.

    Args:
        filled: boolean (h, w) blob mask.
    Returns:
        boolean (h + 2 pad, w + 2 pad) mask; pixel (i, j) is inside when its centre is.
    """
    h, w = filled.shape
    ys, xs = np.nonzero(filled)
    area = len(ys)
    cx, cy = xs.mean() + 0.5 + pad, ys.mean() + 0.5 + pad  # centroid in padded-crop coordinates
    px = np.arange(w + 2 * pad, dtype=np.float64)[None, :] + 0.5
    py = np.arange(h + 2 * pad, dtype=np.float64)[:, None] + 0.5
    if shape == "circle":
        r = math.sqrt(area / math.pi)
        return (px - cx) ** 2 + (py - cy) ** 2 <= r * r
    if shape == "square":
        half = math.sqrt(area) / 2
        return (np.abs(px - cx) <= half) & (np.abs(py - cy) <= half)
    if shape == "triangle":
        t = math.sqrt(2 * area)
        top = cy - 2 * t / 3
        return (py >= top) & (py <= top + t) & (np.abs(px - cx) <= 0.5 * (py - top))
    raise ValueError(f"unknown shape {shape!r}")


def _classify_shape(
    filled: np.ndarray, solidity: float, config: WorldConfig, detector: DetectorConfig
) -> tuple[str, float]:
    h, w = filled.shape
    pad = max(2, math.ceil(0.3 * max(h, w)))  # room for a template larger than the (blur-shrunk) box
    blob = np.pad(filled, pad)
    fits = []
    for shape in config.shapes:
        ideal = fitted_template(shape, filled, pad)
        fits.append((np.logical_and(ideal, blob).sum() / np.logical_or(ideal, blob).sum(), shape))
    fits.sort(reverse=True)
    best, shape = fits[0]
    runner_up = fits[1][0] if len(fits) > 1 else 0.0
    ok = (
        best >= detector.min_fit
        and best - runner_up >= detector.min_fit_margin
        and max(w, h) / min(w, h) <= detector.max_aspect
        and solidity >= detector.min_solidity
    )
    return (shape if ok else UNKNOWN), float(best)


def detect_objects(
    image: Image.Image | np.ndarray | torch.Tensor,
    config: WorldConfig | None = None,
    detector: DetectorConfig | None = None,
) -> list[DetectedObject]:
    """Recover the objects of an image (see the module docstring for the procedure).

    Args:
        image: PIL image, (H, W, 3) array (uint8, or float in [0, 1]) or tensor (3, H, W) / (H, W, 3).
        config: the world (palette, background, shapes); default ``WorldConfig()``.
        detector: thresholds; default ``DetectorConfig()``.

    Returns:
        Detections sorted left to right (then top to bottom), "unknown"-shaped blobs included.
    """
    config = config or WorldConfig()
    detector = detector or DetectorConfig()
    classes = classify_pixels(image, config, detector)  # (H, W)
    h, w = classes.shape
    min_area = detector.min_area_frac * h * w
    found: list[DetectedObject] = []
    for k, color in enumerate(config.color_names):
        mask = classes == k
        if mask.sum() < min_area / 2:
            continue
        labels, count = label_components(mask, connectivity=8)
        for idx in range(1, count + 1):
            ys, xs = np.nonzero(labels == idx)
            if len(ys) < min_area / 2:  # cannot reach min_area even with holes filled
                continue
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            own = labels[y0:y1, x0:x1] == idx  # (bh, bw)
            filled = fill_holes(own)
            area = int(filled.sum())
            if area < min_area:
                continue
            shape, fit = _classify_shape(filled, own.sum() / area, config, detector)
            found.append(
                DetectedObject(
                    shape=shape,
                    color=color,
                    bbox=(x0, y0, x1, y1),
                    center=((x0 + x1) / 2, (y0 + y1) / 2),
                    area=area,
                    fit=fit,
                )
            )
    found.sort(key=lambda d: (d.center[0], d.center[1]))
    return found
