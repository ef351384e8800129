"""The shapes world: scenes of flat-coloured circles, squares and triangles on a plain background.

A scene holds 1 to ``max_objects`` objects. Each object is a (colour, shape) pair drawn inside a square
bounding box; boxes never overlap or touch (they are separated by at least ``min_gap_frac`` of the image side).
Rendering has no anti-aliasing, so every pixel of a rendered image is exactly one palette colour or the
background, and the detector in :mod:`harmon.world.scoring` recovers scenes exactly.

The (colour, shape) content of a training scene comes from a small Markov process (see
:func:`pair_transition`): the first object is drawn from a non-uniform base distribution (colour and shape
weights), and each later object, with probability ``reuse_prob``, copies the colour or the shape of an earlier
object. The non-uniform weights give POPE's "popular" split something to measure, and the reuse gives it real
co-occurrence statistics for the "adversarial" split; :func:`pair_statistics` computes both exactly by
enumeration. Held-out (colour, shape) pairs never appear in training scenes; they measure composition.

Every random choice goes through a ``torch.Generator``: the same seed gives the same scene.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

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

    def __post_init__(self) -> None:
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
        if not self.shapes or len(set(self.shapes)) != len(self.shapes):
            raise ValueError(f"shapes must be distinct and non-empty, got {self.shapes}")
        for shape in self.shapes:
            if shape not in SUPPORTED_SHAPES:
                raise ValueError(f"unsupported shape {shape!r}; supported: {SUPPORTED_SHAPES}")
        if set(names) & set(self.shapes):
            raise ValueError("a word cannot be both a colour and a shape")
        if not 0 < self.min_size_frac <= self.max_size_frac < 0.5:
            raise ValueError(
                f"need 0 < min_size_frac <= max_size_frac < 0.5, got {self.min_size_frac}, {self.max_size_frac}"
            )
        if self.min_size_px < 8:
            raise ValueError(f"objects of {self.min_size_px} px are too small to classify; raise min_size_frac")
        if self.layout not in ("grid", "free"):
            raise ValueError(f"layout must be 'grid' or 'free', got {self.layout!r}")
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
        for pair in self.held_out:
            if len(pair) != 2 or pair[0] not in names or pair[1] not in self.shapes:
                raise ValueError(f"held_out pair must be (known colour, known shape), got {pair}")
        for shape in self.shapes:
            if len(self.colors_for(shape, allow_held_out=False)) < 2:
                raise ValueError(f"held_out leaves fewer than 2 training colours for {shape!r}")
        for color in names:
            if not self.shapes_for(color, allow_held_out=False):
                raise ValueError(f"held_out leaves no training shape for colour {color!r}")
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
class Scene:
    """A list of non-overlapping objects in an ``image_size`` x ``image_size`` image."""

    objects: tuple[WorldObject, ...]
    image_size: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(colour, shape) of every object, in storage order."""
        return [o.pair for o in self.objects]

    def count(self, shape: str | None = None, color: str | None = None) -> int:
        """Number of objects matching ``shape`` and/or ``color`` (None matches anything)."""
        return sum((shape is None or o.shape == shape) and (color is None or o.color == color) for o in self.objects)

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "objects": [o.to_dict() for o in self.objects]}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Scene:
        objects = tuple(WorldObject.from_dict(o) for o in data["objects"])
        return Scene(objects=objects, image_size=int(data["image_size"]))


# ---- random helpers (all through the generator) -------------------------------------------------------------


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def _choice(generator: torch.Generator, items: Any) -> Any:
    items = list(items)
    return items[_randint(generator, 0, len(items) - 1)]


def _categorical(generator: torch.Generator, probs: np.ndarray) -> int:
    """Index drawn from ``probs`` (sums to 1) by inverse CDF on one uniform from the generator."""
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    return min(int(np.searchsorted(np.cumsum(probs), u, side="right")), len(probs) - 1)


# ---- content distribution -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _content_tables(
    config: WorldConfig, allow_held_out: bool
) -> tuple[tuple[tuple[str, str], ...], np.ndarray, dict[tuple[str, str], np.ndarray]]:
    """(allowed pairs, base distribution P0 over them, reuse distribution for every previous pair)."""
    pairs = config.pairs(allow_held_out)
    cw = dict(zip(config.color_names, config.color_weights))
    sw = dict(zip(config.shapes, config.shape_weights))
    p0 = np.array([cw[c] * sw[s] for c, s in pairs], dtype=np.float64)
    p0 /= p0.sum()
    reuse = {}
    for color, shape in config.pairs(allow_held_out=True):
        # keep the colour (resp. shape) and draw the other attribute from P0 restricted to allowed pairs;
        # config validation guarantees both restrictions are non-empty
        same_color = np.array([c == color for c, _ in pairs]) * p0
        same_shape = np.array([s == shape for _, s in pairs]) * p0
        reuse[(color, shape)] = 0.5 * same_color / same_color.sum() + 0.5 * same_shape / same_shape.sum()
    return pairs, p0, reuse


def pair_transition(
    previous: list[tuple[str, str]], config: WorldConfig, allow_held_out: bool = False
) -> tuple[tuple[tuple[str, str], ...], np.ndarray]:
    """Distribution of the next object's (colour, shape) given the objects placed so far.

    With no previous object, or with probability ``1 - reuse_prob``, the pair comes from the base distribution
    P0(c, s) ∝ w_c * w_s over allowed pairs. Otherwise an earlier object is picked uniformly, its colour or its
    shape (1/2 each) is kept, and the other attribute is drawn from P0 restricted to pairs sharing the kept one.

    Returns:
        (pairs, probs): the allowed pairs and a probability vector of the same length.
    """
    pairs, p0, reuse = _content_tables(config, allow_held_out)
    if not previous or config.reuse_prob == 0:
        return pairs, p0
    copied = sum(reuse[p] for p in previous) / len(previous)
    return pairs, (1 - config.reuse_prob) * p0 + config.reuse_prob * copied


@dataclass(frozen=True)
class PairStatistics:
    """Exact statistics of training-scene content, used for POPE's popular / adversarial negatives.

    ``frequency[i]``: probability that a random training scene contains pair ``pairs[i]``.
    ``cooccurrence[i, j]``: probability that it contains both ``pairs[i]`` and ``pairs[j]`` (diagonal = frequency).
    """

    pairs: tuple[tuple[str, str], ...]
    frequency: np.ndarray  # (P,)
    cooccurrence: np.ndarray  # (P, P)


@functools.lru_cache(maxsize=8)
def pair_statistics(config: WorldConfig) -> PairStatistics:
    """Exact presence and co-occurrence probabilities of (colour, shape) pairs over ``sample_scene``'s training
    distribution (``num_objects`` uniform in 1..max_objects, held-out pairs excluded).

    Computed analytically, by enumerating every sequence of object pairs of the Markov process in
    :func:`pair_transition` (15**3 prefixes for the default world; about 0.1 s, cached), not by sampling.
    """
    pairs = config.pairs(allow_held_out=False)
    index = {p: i for i, p in enumerate(pairs)}
    n = len(pairs)
    freq = np.zeros(n)
    cooc = np.zeros((n, n))
    eye = np.eye(n, dtype=bool)

    def visit(prefix: list[tuple[str, str]], prob: float, length: int) -> None:
        _, probs = pair_transition(prefix, config)
        if len(prefix) + 1 == length:
            present = np.zeros(n, dtype=bool)
            for p in prefix:
                present[index[p]] = True
            rows = (present[None, :] | eye).astype(np.float64)  # (P, P): presence after adding pair j (row j)
            weighted = rows * probs[:, None] * prob
            freq[:] += weighted.sum(0)
            cooc[:] += rows.T @ weighted
            return
        for j, p in enumerate(pairs):
            if probs[j] > 0:
                visit(prefix + [p], prob * probs[j], length)

    for length in range(1, config.max_objects + 1):
        visit([], 1.0 / config.max_objects, length)
    return PairStatistics(pairs=pairs, frequency=freq, cooccurrence=cooc)


# ---- placement ----------------------------------------------------------------------------------------------


def boxes_separated(a: BBox, b: BBox, gap: int) -> bool:
    """True if boxes ``a`` and ``b`` leave at least ``gap`` empty pixels between them along x or along y."""
    return a[0] >= b[2] + gap or b[0] >= a[2] + gap or a[1] >= b[3] + gap or b[1] >= a[3] + gap


def place_objects(
    content: list[tuple[str, str]],
    generator: torch.Generator,
    config: WorldConfig,
    max_tries_per_object: int = 50,
) -> list[WorldObject] | None:
    """One attempt at placing ``content`` [(colour, shape), ...] at random sizes and positions, separated by
    ``gap_px``. Returns None when some object found no free spot in ``max_tries_per_object`` tries.

    With the grid layout every object takes a distinct random cell, a random size that leaves the gap, and a
    random offset inside the cell (boxes in different cells are then always ``gap_px`` apart); it never fails.
    """
    n, gap, margin = config.image_size, config.gap_px, config.margin_px
    if config.layout == "grid":
        if len(content) > config.grid_cells**2:
            return None
        cell, lead = config.cell_px, gap // 2
        largest = min(config.max_size_px, cell - gap)
        cells = torch.randperm(config.grid_cells**2, generator=generator)[: len(content)].tolist()
        placed = []
        for (color, shape), c in zip(content, cells):
            size = _randint(generator, config.min_size_px, largest)
            cx, cy = (c % config.grid_cells) * cell, (c // config.grid_cells) * cell
            x0 = cx + _randint(generator, lead, cell - (gap - lead) - size)
            y0 = cy + _randint(generator, lead, cell - (gap - lead) - size)
            placed.append(WorldObject(shape=shape, color=color, bbox=(x0, y0, x0 + size, y0 + size)))
        return placed
    placed: list[WorldObject] = []
    for color, shape in content:
        size = _randint(generator, config.min_size_px, config.max_size_px)
        hi = n - margin - size
        if hi < margin:
            return None
        for _ in range(max_tries_per_object):
            x0, y0 = _randint(generator, margin, hi), _randint(generator, margin, hi)
            box = (x0, y0, x0 + size, y0 + size)
            if all(boxes_separated(box, o.bbox, gap) for o in placed):
                placed.append(WorldObject(shape=shape, color=color, bbox=box))
                break
        else:
            return None
    return placed


def sample_content(
    generator: torch.Generator, config: WorldConfig, num_objects: int, allow_held_out: bool = False
) -> list[tuple[str, str]]:
    """(colour, shape) of ``num_objects`` objects from the Markov process of :func:`pair_transition`."""
    content: list[tuple[str, str]] = []
    for _ in range(num_objects):
        pairs, probs = pair_transition(content, config, allow_held_out)
        content.append(pairs[_categorical(generator, probs)])
    return content


def sample_scene(
    generator: torch.Generator,
    config: WorldConfig | None = None,
    num_objects: int | None = None,
    allow_held_out: bool = False,
) -> Scene:
    """A random scene of the training distribution.

    Args:
        generator: the only source of randomness.
        config: the world (default ``WorldConfig()``).
        num_objects: exact number of objects; default uniform in 1..max_objects.
        allow_held_out: let held-out (colour, shape) pairs appear (never in training scenes).

    Raises:
        RuntimeError: when ``config.max_attempts`` placement attempts all fail (objects too large or too many).
    """
    config = config or WorldConfig()
    if num_objects is None:
        num_objects = _randint(generator, 1, config.max_objects)
    if not 1 <= num_objects <= config.max_objects:
        raise ValueError(f"num_objects must be in [1, {config.max_objects}], got {num_objects}")
    content = sample_content(generator, config, num_objects, allow_held_out)
    return place_content(content, generator, config)


def place_content(content: list[tuple[str, str]], generator: torch.Generator, config: WorldConfig) -> Scene:
    """A scene holding exactly ``content`` [(colour, shape), ...] at random non-overlapping places.

    Raises:
        RuntimeError: when ``config.max_attempts`` whole-scene attempts all fail.
    """
    for _ in range(config.max_attempts):
        objects = place_objects(content, generator, config)
        if objects is not None:
            return Scene(objects=tuple(objects), image_size=config.image_size)
    raise RuntimeError(
        f"could not place {len(content)} objects of {config.min_size_px}-{config.max_size_px} px with a "
        f"{config.gap_px} px gap in a {config.image_size} px image after {config.max_attempts} attempts"
    )


# ---- rendering ----------------------------------------------------------------------------------------------


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
    """Render ``scene`` as uint8 (H, W, 3); every pixel is exactly a palette colour or the background."""
    config = config or WorldConfig()
    palette = config.palette
    n = scene.image_size
    image = np.empty((n, n, 3), dtype=np.uint8)
    image[:] = np.array(config.background, dtype=np.uint8)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.bbox
        mask = shape_mask(obj.shape, x1 - x0, y1 - y0)
        region = image[y0:y1, x0:x1]  # view, (h, w, 3)
        region[mask] = np.array(palette[obj.color], dtype=np.uint8)
    return image


def render(scene: Scene, config: WorldConfig | None = None) -> Image.Image:
    """Render ``scene`` as an RGB PIL image with flat colours and no anti-aliasing."""
    return Image.fromarray(render_array(scene, config), mode="RGB")


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
