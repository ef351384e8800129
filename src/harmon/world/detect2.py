"""The scorer's detector for world v2: free layouts, small and near objects, tinted and gradient backgrounds.

Detection (:func:`detect_objects_v2`):
    1. Background. Pixels whose every channel is >= ``light_min`` (no palette colour has all three channels above
       40) are background candidates; a plane per channel, a + b x + c y, is fitted to them by least squares and
       refitted on the candidates within ``color_threshold`` / 2 of the first fit. Flat tints and linear gradients
       are planes; a generated image's background is close to one. With too few candidates the world's background
       colour is used.
    2. Pixels. Each pixel x is compared with every segment from its local background b to a palette colour c_k:
       x ~ b + a (c_k - b). On the nearest segment (residual <= ``color_threshold``) it is colour k when a >= 1/2
       (more than half covered: anti-aliased and blurred edges neither grow nor erode shapes) and background
       otherwise; "pure" when a >= ``pure_alpha``. A pixel near no segment is "unknown" foreground (paint of no
       palette colour).
    3. Objects. Foreground pixels (colours and unknown) are split into 8-connected components, regardless of colour:
       an object painted in two colours stays ONE object. Components whose hole-filled area is under
       ``min_area_frac`` of the image are noise and dropped.
    4. Colour: the most common colour among the object's pure pixels (all its coloured pixels when it has too few
       pure ones), if it holds >= ``min_color_share`` of them; otherwise the object is ``MIXED`` (and with no
       coloured pixel, ``UNKNOWN``): a two-coloured object is a wrong colour for any colour prompt.
    5. Shape: the ideal circle, square or upright triangle with the blob's area and centroid
       (:func:`harmon.world.detection.fitted_template`) with the best IoU, if it is >= ``min_fit``, beats the
       runner-up by ``min_fit_margin``, the box aspect is <= ``max_aspect`` and the blob is solid; else "unknown".

Generation is then judged by GenEval's rules exactly as before (:func:`harmon.world.scoring.judge_prompt`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from harmon.world.detection import (
    UNKNOWN,
    DetectedObject,
    fill_holes,
    fitted_template,
    image_to_array,
    label_components,
)
from harmon.world.scene import WorldConfig

MIXED = "mixed"  # the colour of an object painted in more than one palette colour: matches no asked colour


@dataclass(frozen=True)
class DetectorV2Config:
    """Thresholds of :func:`detect_objects_v2`; the defaults read both renderers' ground truth (tests)."""

    color_threshold: float = 60.0  # max RGB distance to a background-to-colour segment; ~half the closest pair
    light_min: float = 170.0  # every channel >= this: a background candidate (palette colours have one <= 40)
    min_area_frac: float = 0.006  # blobs under 0.6 % of the image (25 px at 64) are noise; a 10 px triangle is ~50
    pure_alpha: float = 0.85  # colour share of a pixel's paint for it to vote on the object's colour
    min_color_share: float = 0.8  # the object's colour must hold this share of its voting pixels, else MIXED
    min_fit: float = 0.84  # IoU with the fitted ideal shape; 10 px shapes drawn either way score >= 0.88
    min_fit_margin: float = 0.04  # the best shape must beat the runner-up by this much
    max_aspect: float = 1.35  # world objects have square boxes
    min_solidity: float = 0.8  # own pixels / hole-filled pixels

    def __post_init__(self) -> None:
        if self.color_threshold <= 0 or not 0 <= self.light_min <= 255:
            raise ValueError(
                f"need color_threshold > 0, light_min in [0, 255]; got {self.color_threshold}, {self.light_min}"
            )
        if not 0 <= self.min_area_frac < 1 or not 0.5 <= self.pure_alpha <= 1:
            raise ValueError(
                f"need min_area_frac in [0, 1), pure_alpha in [0.5, 1]; got {self.min_area_frac}, {self.pure_alpha}"
            )
        if not 0.5 <= self.min_color_share <= 1 or not 0 < self.min_fit <= 1 or self.max_aspect < 1:
            raise ValueError("need min_color_share in [0.5, 1], min_fit in (0, 1], max_aspect >= 1")


def estimate_background(arr: np.ndarray, config: WorldConfig, detector: DetectorV2Config) -> np.ndarray:
    """Per-pixel background (H, W, 3) float: a plane per channel fitted to the light pixels (step 1)."""
    h, w, _ = arr.shape
    ys, xs = np.mgrid[0:h, 0:w]
    design = np.stack([np.ones(h * w), (xs.ravel() + 0.5) / w, (ys.ravel() + 0.5) / h], axis=1)  # (HW, 3)
    flat = arr.reshape(-1, 3)
    keep = (flat >= detector.light_min).all(axis=1)
    fitted = None
    for _ in range(2):
        if keep.sum() < max(16, 0.1 * h * w):
            break
        coef, *_ = np.linalg.lstsq(design[keep], flat[keep], rcond=None)  # (3, 3): one plane per channel
        fitted = design @ coef  # (HW, 3)
        keep &= np.linalg.norm(flat - fitted, axis=1) <= detector.color_threshold / 2
    if fitted is None:
        return np.broadcast_to(np.asarray(config.background, dtype=np.float64), arr.shape).copy()
    return np.clip(fitted, 0.0, 255.0).reshape(h, w, 3)


def classify_pixels_v2(
    arr: np.ndarray, background: np.ndarray, config: WorldConfig, detector: DetectorV2Config
) -> tuple[np.ndarray, np.ndarray]:
    """(classes (H, W) int: k for palette colour k, K for background, -1 for unknown; pure (H, W) bool) (step 2)."""
    palette = np.array([rgb for _, rgb in config.colors], dtype=np.float64)  # (K, 3)
    k_bg = len(palette)
    x = arr - background  # (H, W, 3), relative to the local background
    d = palette[None, None, :, :] - background[..., None, :]  # (H, W, K, 3)
    a = np.clip((x[..., None, :] * d).sum(-1) / np.maximum((d**2).sum(-1), 1e-9), 0.0, 1.0)  # (H, W, K)
    resid = np.linalg.norm(x[..., None, :] - a[..., None] * d, axis=-1)  # (H, W, K)
    k = resid.argmin(-1)  # (H, W)
    best_a = np.take_along_axis(a, k[..., None], -1)[..., 0]
    near = np.take_along_axis(resid, k[..., None], -1)[..., 0] <= detector.color_threshold
    classes = np.where(near, np.where(best_a >= 0.5, k, k_bg), -1)
    pure = near & (best_a >= detector.pure_alpha) & (classes < k_bg) & (classes >= 0)
    return classes, pure


def _object_color(classes: np.ndarray, pure: np.ndarray, names: tuple[str, ...], detector: DetectorV2Config) -> str:
    """Colour of one object from its pixels' classes (step 4)."""
    coloured = classes[(classes >= 0) & (classes < len(names))]
    voters = classes[pure] if pure.sum() >= max(4, 0.25 * len(coloured)) else coloured
    if len(voters) == 0:
        return UNKNOWN
    counts = np.bincount(voters, minlength=len(names))
    top = int(counts.argmax())
    return names[top] if counts[top] >= detector.min_color_share * len(voters) else MIXED


def _object_shape(filled: np.ndarray, own: int, config: WorldConfig, detector: DetectorV2Config) -> tuple[str, float]:
    """Shape of one hole-filled blob (step 5): a world shape or "unknown", and the best IoU."""
    h, w = filled.shape
    pad = max(2, math.ceil(0.3 * max(h, w)))
    blob = np.pad(filled, pad)
    fits = sorted(
        (
            (np.logical_and(t, blob).sum() / np.logical_or(t, blob).sum(), s)
            for s in config.shapes
            for t in [fitted_template(s, filled, pad)]
        ),
        reverse=True,
    )
    best, shape = fits[0]
    runner_up = fits[1][0] if len(fits) > 1 else 0.0
    ok = (
        best >= detector.min_fit
        and best - runner_up >= detector.min_fit_margin
        and max(w, h) / min(w, h) <= detector.max_aspect
        and own / filled.sum() >= detector.min_solidity
    )
    return (shape if ok else UNKNOWN), float(best)


def detect_objects_v2(
    image: Image.Image | np.ndarray, config: WorldConfig | None = None, detector: DetectorV2Config | None = None
) -> list[DetectedObject]:
    """Recover the objects of an image of world v2 (see the module docstring).

    Args:
        image: PIL image, (H, W, 3) array (uint8, or float in [0, 1]) or tensor (3, H, W) / (H, W, 3).
        config: the world (palette, shapes, fallback background); default ``WorldConfig()``.
    Returns:
        Detections sorted left to right (then top to bottom); colours may be ``MIXED`` or "unknown" and shapes
        "unknown", which match no class or colour of a prompt.
    """
    config = config or WorldConfig()
    detector = detector or DetectorV2Config()
    arr = image_to_array(image)  # (H, W, 3)
    h, w, _ = arr.shape
    classes, pure = classify_pixels_v2(arr, estimate_background(arr, config, detector), config, detector)
    labels, count = label_components(classes != len(config.colors), connectivity=8)
    min_area = detector.min_area_frac * h * w
    found = []
    for idx in range(1, count + 1):
        ys, xs = np.nonzero(labels == idx)
        if len(ys) < min_area / 2:
            continue
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        own = labels[y0:y1, x0:x1] == idx  # (bh, bw)
        filled = fill_holes(own)
        if filled.sum() < min_area:
            continue
        shape, fit = _object_shape(filled, int(own.sum()), config, detector)
        color = _object_color(classes[y0:y1, x0:x1][own], pure[y0:y1, x0:x1][own], config.color_names, detector)
        center = ((x0 + x1) / 2, (y0 + y1) / 2)
        found.append(
            DetectedObject(
                shape=shape, color=color, bbox=(x0, y0, x1, y1), center=center, area=int(filled.sum()), fit=fit
            )
        )
    found.sort(key=lambda d: (d.center[0], d.center[1]))
    return found
