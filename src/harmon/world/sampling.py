"""Random scenes of the shapes world: which objects a scene holds, and where they go.

The (colour, shape) content of a training scene comes from a small Markov process (see
:func:`pair_transition`): the first object is drawn from a non-uniform base distribution (colour and shape
weights), and each later object, with probability ``reuse_prob``, copies the colour or the shape of an earlier
object. The non-uniform weights give POPE's "popular" split something to measure, and the reuse gives it real
co-occurrence statistics for the "adversarial" split; :func:`pair_statistics` computes both exactly by
enumeration. Held-out (colour, shape) pairs never appear in training scenes.

Every random choice goes through a ``torch.Generator``: the same seed gives the same scene.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from harmon.world.scene import Scene, WorldConfig, WorldObject, boxes_separated

# ---- random helpers (all through the generator) -------------------------------------------------------------


def randint(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def choice(generator: torch.Generator, items: Any) -> Any:
    """One of ``items``, uniformly."""
    items = list(items)
    return items[randint(generator, 0, len(items) - 1)]


def categorical(generator: torch.Generator, probs: np.ndarray) -> int:
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
            size = randint(generator, config.min_size_px, largest)
            cx, cy = (c % config.grid_cells) * cell, (c // config.grid_cells) * cell
            x0 = cx + randint(generator, lead, cell - (gap - lead) - size)
            y0 = cy + randint(generator, lead, cell - (gap - lead) - size)
            placed.append(WorldObject(shape=shape, color=color, bbox=(x0, y0, x0 + size, y0 + size)))
        return placed
    placed: list[WorldObject] = []
    for color, shape in content:
        size = randint(generator, config.min_size_px, config.max_size_px)
        hi = n - margin - size
        if hi < margin:
            return None
        for _ in range(max_tries_per_object):
            x0, y0 = randint(generator, margin, hi), randint(generator, margin, hi)
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
        content.append(pairs[categorical(generator, probs)])
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
        num_objects = randint(generator, 1, config.max_objects)
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
