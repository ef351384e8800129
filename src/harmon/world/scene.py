"""The shapes world: scenes of flat-coloured circles, squares and triangles on a plain background.

A scene holds 1 to ``max_objects`` objects. Each object is a (colour, shape) pair drawn inside a square
bounding box; boxes never overlap or touch (they are separated by at least ``min_gap_frac`` of the image side).
Rendering (:mod:`harmon.world.render`) has no anti-aliasing, so every pixel of a rendered image is exactly one
palette colour or the background, and the detector in :mod:`harmon.world.detection` recovers scenes exactly.

This module holds what a scene IS: the world's configuration and vocabulary, objects, scenes and the rules a scene
must keep (:func:`check_scene`). How random scenes are drawn (a Markov process over (colour, shape) pairs, then
placement) is :mod:`harmon.world.sampling`. Held-out (colour, shape) pairs never appear in training scenes; they
measure composition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

RGB = tuple[int, int, int]
BBox = tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels, x1/y1 exclusive

SUPPORTED_SHAPES = ("circle", "square", "triangle")

# Flat colours chosen far apart in RGB (the closest pair, yellow/orange, is ~116 apart; every colour is > 200
# from the white background), so a nearest-colour rule separates them even on noisy generated images.
DEFAULT_COLORS: tuple[tuple[str, RGB], ...] = (
    ("red", (200, 10, 10)),
    ("green", (20, 150, 40)),
    ("blue", (20, 60, 230)),
    ("yellow", (240, 230, 10)),
    ("purple", (150, 30, 170)),
    ("orange", (250, 115, 0)),
)

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def article(word: str) -> str:
    """The English indefinite article for ``word`` ("an orange circle", "a red circle")."""
    return "an" if word[:1] in "aeiou" else "a"


def plural(shape: str) -> str:
    """Plural of a shape name ("circle" -> "circles")."""
    return shape + "s"


def noun_phrase(shape: str, color: str | None = None) -> str:
    """ "a circle", "a red circle", "an orange square"."""
    words = f"{color} {shape}" if color else shape
    return f"{article(words)} {words}"


@dataclass(frozen=True)
class WorldConfig:
    """Everything that defines the shapes world. Frozen (hashable) so statistics can be cached per config.

    All sizes are fractions of the image side, so the same world renders at 64, 96 or 128 pixels.
    """

    image_size: int = 64  # pixels per side; objects scale with it
    colors: tuple[tuple[str, RGB], ...] = DEFAULT_COLORS  # (name, flat RGB); names must be single words
    shapes: tuple[str, ...] = SUPPORTED_SHAPES  # all three stay unambiguous at 64 px
    background: RGB = (255, 255, 255)  # plain white: far from every palette colour
    # "grid": every object sits inside its own cell of a grid_cells x grid_cells grid, at a random size and a
    # random offset within the cell. At 64 px the 2 x 2 cells are 32 px: each object covers the same 2 x 2 block
    # of 16-pixel latent tokens of a stride-16 VAE, one quadrant per token (measured: a small VAE redraws shapes
    # that span several tokens far more exactly than 12-14 px shapes squeezed into one token).
    # "free": objects anywhere, boxes only kept apart by min_gap_frac.
    layout: str = "grid"
    grid_cells: int = 2
    min_size_frac: float = 22 / 64  # smallest object side: 22 px at 64
    max_size_frac: float = 28 / 64  # largest object side: 28 px at 64 (a 32 px cell leaves +-1-5 px of jitter)
    max_objects: int = 4  # a scene holds 1..max_objects objects
    min_gap_frac: float = 2 / 64  # bounding boxes are separated by >= 2 px at 64 px (no overlap, no touching)
    margin_frac: float = 1 / 64  # keep objects >= 1 px (at 64) off the border so they are whole
    # One (colour, shape) pair per shape that never appears in training scenes: tests composition.
    held_out: tuple[tuple[str, str], ...] = (("blue", "triangle"), ("yellow", "circle"), ("purple", "square"))
    # Relative frequencies of colours / shapes in training scenes (aligned with `colors` / `shapes`); deliberately
    # non-uniform so POPE's "popular" negatives differ from random ones.
    color_weights: tuple[float, ...] = (0.24, 0.20, 0.17, 0.15, 0.13, 0.11)
    shape_weights: tuple[float, ...] = (0.40, 0.33, 0.27)
    reuse_prob: float = 0.5  # chance a later object copies an earlier object's colour or shape (co-occurrence)
    max_attempts: int = 200  # placement restarts before sample_scene gives up with an error
    # "white": every scene on `background`. "varied": scenes may carry their own light tint or linear gradient
    # (:class:`Background`, drawn by harmon.world.free.sample_background), so "background" is not one colour; such
    # scenes are read by the background-estimating detector of harmon.world.detect2.
    backgrounds: str = "white"

    def __post_init__(self) -> None:
        self._check_palette()
        self._check_shapes()
        self._check_sizes()
        self._check_held_out()
        self._check_content_weights()

    # ---- validation (in this order, so the first broken rule is the one reported) -----------------------

    def _check_palette(self) -> None:
        if not 32 <= self.image_size <= 1024:
            raise ValueError(f"image_size must be in [32, 1024], got {self.image_size}")
        names = [name for name, _ in self.colors]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"colors need >= 2 distinct names, got {names}")
        for name, rgb in self.colors:
            if not name.isalpha() or name != name.lower():
                raise ValueError(f"color name must be one lower-case word, got {name!r}")
            if len(rgb) != 3 or any(not 0 <= int(v) <= 255 for v in rgb):
                raise ValueError(f"color {name!r} must be an RGB triple in [0, 255], got {rgb}")
        if len(self.background) != 3 or any(not 0 <= int(v) <= 255 for v in self.background):
            raise ValueError(f"background must be an RGB triple in [0, 255], got {self.background}")
        table = np.array([rgb for _, rgb in self.colors] + [self.background], dtype=np.float64)
        dists = np.linalg.norm(table[:, None] - table[None, :], axis=-1)
        closest = dists[~np.eye(len(table), dtype=bool)].min()
        if closest < 80:
            raise ValueError(f"palette colours (and background) must be >= 80 apart in RGB, closest is {closest:.1f}")

    def _check_shapes(self) -> None:
        if not self.shapes or len(set(self.shapes)) != len(self.shapes):
            raise ValueError(f"shapes must be distinct and non-empty, got {self.shapes}")
        for shape in self.shapes:
            if shape not in SUPPORTED_SHAPES:
                raise ValueError(f"unsupported shape {shape!r}; supported: {SUPPORTED_SHAPES}")
        if set(self.color_names) & set(self.shapes):
            raise ValueError("a word cannot be both a colour and a shape")

    def _check_sizes(self) -> None:
        if not 0 < self.min_size_frac <= self.max_size_frac < 0.5:
            raise ValueError(
                f"need 0 < min_size_frac <= max_size_frac < 0.5, got {self.min_size_frac}, {self.max_size_frac}"
            )
        if self.min_size_px < 8:
            raise ValueError(f"objects of {self.min_size_px} px are too small to classify; raise min_size_frac")
        if self.layout not in ("grid", "free"):
            raise ValueError(f"layout must be 'grid' or 'free', got {self.layout!r}")
        if self.backgrounds not in ("white", "varied"):
            raise ValueError(f"backgrounds must be 'white' or 'varied', got {self.backgrounds!r}")
        if self.layout == "grid":
            if self.grid_cells < 1 or self.image_size % self.grid_cells:
                raise ValueError(f"image_size {self.image_size} must be a multiple of grid_cells {self.grid_cells}")
            if self.min_size_px > self.cell_px - self.gap_px:
                raise ValueError(
                    f"objects of {self.min_size_px} px do not fit a {self.cell_px} px cell with a "
                    f"{self.gap_px} px gap; lower min_size_frac or grid_cells"
                )
            if self.max_objects > self.grid_cells**2:
                raise ValueError(f"max_objects {self.max_objects} exceeds the {self.grid_cells**2} grid cells")
        if not 1 <= self.max_objects <= 8:
            raise ValueError(f"max_objects must be in [1, 8], got {self.max_objects}")
        if self.min_gap_frac <= 0 or self.margin_frac < 0:
            raise ValueError(f"need min_gap_frac > 0 and margin_frac >= 0, got {self.min_gap_frac}, {self.margin_frac}")

    def _check_held_out(self) -> None:
        for pair in self.held_out:
            if len(pair) != 2 or pair[0] not in self.color_names or pair[1] not in self.shapes:
                raise ValueError(f"held_out pair must be (known colour, known shape), got {pair}")
        for shape in self.shapes:
            if len(self.colors_for(shape, allow_held_out=False)) < 2:
                raise ValueError(f"held_out leaves fewer than 2 training colours for {shape!r}")
        for color in self.color_names:
            if not self.shapes_for(color, allow_held_out=False):
                raise ValueError(f"held_out leaves no training shape for colour {color!r}")

    def _check_content_weights(self) -> None:
        if len(self.color_weights) != len(self.colors) or any(w <= 0 for w in self.color_weights):
            raise ValueError(f"color_weights must be {len(self.colors)} positive numbers, got {self.color_weights}")
        if len(self.shape_weights) != len(self.shapes) or any(w <= 0 for w in self.shape_weights):
            raise ValueError(f"shape_weights must be {len(self.shapes)} positive numbers, got {self.shape_weights}")
        if not 0 <= self.reuse_prob <= 1:
            raise ValueError(f"reuse_prob must be in [0, 1], got {self.reuse_prob}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")

    # ---- derived quantities -------------------------------------------------------------------------------

    @property
    def color_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.colors)

    @property
    def palette(self) -> dict[str, RGB]:
        """Colour name -> RGB."""
        return {name: tuple(int(v) for v in rgb) for name, rgb in self.colors}  # type: ignore[misc]

    @property
    def min_size_px(self) -> int:
        return max(1, round(self.min_size_frac * self.image_size))

    @property
    def max_size_px(self) -> int:
        return max(self.min_size_px, round(self.max_size_frac * self.image_size))

    @property
    def cell_px(self) -> int:
        """Side of a grid cell in pixels (grid layout)."""
        return self.image_size // self.grid_cells

    @property
    def gap_px(self) -> int:
        return max(1, round(self.min_gap_frac * self.image_size))

    @property
    def margin_px(self) -> int:
        return round(self.margin_frac * self.image_size)

    def is_held_out(self, color: str | None, shape: str) -> bool:
        """Whether (color, shape) is a held-out pair (an uncoloured object never is)."""
        return color is not None and (color, shape) in self.held_out

    def colors_for(self, shape: str, allow_held_out: bool) -> tuple[str, ...]:
        """Colours a ``shape`` may take (held-out pairs removed unless allowed)."""
        return tuple(c for c in self.color_names if allow_held_out or not self.is_held_out(c, shape))

    def shapes_for(self, color: str, allow_held_out: bool) -> tuple[str, ...]:
        """Shapes a ``color`` may take (held-out pairs removed unless allowed)."""
        return tuple(s for s in self.shapes if allow_held_out or not self.is_held_out(color, s))

    def pairs(self, allow_held_out: bool = False) -> tuple[tuple[str, str], ...]:
        """All (colour, shape) pairs, colour-major, held-out ones removed unless allowed."""
        return tuple(
            (c, s) for c in self.color_names for s in self.shapes if allow_held_out or not self.is_held_out(c, s)
        )


@dataclass(frozen=True)
class WorldObject:
    """One object of a scene: a flat ``color`` ``shape`` drawn inside ``bbox`` = (x0, y0, x1, y1), x1/y1 exclusive."""

    shape: str
    color: str
    bbox: BBox

    @property
    def width(self) -> int:
        return self.bbox[2] - self.bbox[0]

    @property
    def height(self) -> int:
        return self.bbox[3] - self.bbox[1]

    @property
    def center(self) -> tuple[float, float]:
        """Centre of the bounding box (x, y) in pixels; GenEval's relation rule uses box centres."""
        return ((self.bbox[0] + self.bbox[2]) / 2, (self.bbox[1] + self.bbox[3]) / 2)

    @property
    def pair(self) -> tuple[str, str]:
        return (self.color, self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "color": self.color, "bbox": list(self.bbox)}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> WorldObject:
        x0, y0, x1, y1 = (int(v) for v in data["bbox"])
        return WorldObject(shape=data["shape"], color=data["color"], bbox=(x0, y0, x1, y1))


@dataclass(frozen=True)
class Background:
    """A scene's own background: a linear gradient from ``start`` to ``end`` along the direction ``angle`` (degrees;
    0 runs left to right, 90 top to bottom), reaching ``start`` and ``end`` exactly at the two extreme corners. Flat
    (a tint) when ``start == end``. The colour at a point is linear in its coordinates, so a plane fitted to the
    background pixels recovers it (harmon.world.detect2)."""

    start: RGB
    end: RGB
    angle: float = 0.0

    def at(self, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
        """Float RGB (..., 3) at image coordinates ``x``, ``y`` (pixels; a pixel's centre is at +0.5)."""
        a = np.deg2rad(self.angle)
        c, s = float(np.cos(a)), float(np.sin(a))
        t = 0.5 + ((x - size / 2) * c + (y - size / 2) * s) / (size * (abs(c) + abs(s)))  # 0..1 corner to corner
        start, end = np.array(self.start, dtype=np.float64), np.array(self.end, dtype=np.float64)
        return start + (end - start) * np.clip(t, 0.0, 1.0)[..., None]

    def to_dict(self) -> dict[str, Any]:
        return {"start": list(self.start), "end": list(self.end), "angle": self.angle}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Background:
        start = tuple(int(v) for v in data["start"])
        end = tuple(int(v) for v in data["end"])
        return Background(start=start, end=end, angle=float(data["angle"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Scene:
    """A list of non-overlapping objects in an ``image_size`` x ``image_size`` image, on the world's background
    unless the scene carries its own (``background``, worlds with ``backgrounds="varied"``)."""

    objects: tuple[WorldObject, ...]
    image_size: int
    background: Background | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(colour, shape) of every object, in storage order."""
        return [o.pair for o in self.objects]

    @property
    def unique_objects(self) -> list[WorldObject]:
        """The objects that are the only one of their (colour, shape): what "the red circle" names, in storage
        order."""
        pairs = self.pairs
        return [o for o in self.objects if pairs.count(o.pair) == 1]

    def count(self, shape: str | None = None, color: str | None = None) -> int:
        """Number of objects matching ``shape`` and/or ``color`` (None matches anything)."""
        return sum((shape is None or o.shape == shape) and (color is None or o.color == color) for o in self.objects)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image_size": self.image_size, "objects": [o.to_dict() for o in self.objects]}
        if self.background is not None:
            out["background"] = self.background.to_dict()
        return out

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Scene:
        objects = tuple(WorldObject.from_dict(o) for o in data["objects"])
        background = Background.from_dict(data["background"]) if data.get("background") else None
        return Scene(objects=objects, image_size=int(data["image_size"]), background=background)


# ---- rules --------------------------------------------------------------------------------------------------


def boxes_separated(a: BBox, b: BBox, gap: int) -> bool:
    """True if boxes ``a`` and ``b`` leave at least ``gap`` empty pixels between them along x or along y."""
    return a[0] >= b[2] + gap or b[0] >= a[2] + gap or a[1] >= b[3] + gap or b[1] >= a[3] + gap


def check_scene(scene: Scene, config: WorldConfig) -> None:
    """Raise ValueError if ``scene`` breaks the world's rules (vocabulary, bounds, gaps)."""
    n, gap = scene.image_size, config.gap_px
    for i, o in enumerate(scene.objects):
        if o.shape not in config.shapes or o.color not in config.palette:
            raise ValueError(f"object {i} has unknown shape/colour {o.pair}")
        x0, y0, x1, y1 = o.bbox
        if not (0 <= x0 < x1 <= n and 0 <= y0 < y1 <= n):
            raise ValueError(f"object {i} box {o.bbox} is outside the {n} px image")
        for j in range(i):
            if not boxes_separated(o.bbox, scene.objects[j].bbox, gap):
                raise ValueError(f"objects {j} and {i} are closer than {gap} px")
