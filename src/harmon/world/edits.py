"""Edits in the shapes world: a source scene, an instruction, and the exact target scene it asks for.

Six edit types (:data:`EDIT_TYPES`): ``recolor`` one object, ``remove`` one, ``add`` one at a named place, ``move``
one to a named place, ``swap_colors`` of two objects, ``change_shape`` of one. :func:`sample_edit` draws a source
scene of the world's own distribution in which every object the instruction names is the only one of its colour
and shape, and builds the target: every other object identical (colour, shape, box), the background identical; an
added or moved object gets a concrete box of the world's sizes whose centre lies ``place_margin_px`` inside the
named place, kept apart from the others by the world's gap (and, in the grid layout, inside a free cell). When an
edit cannot be built on a drawn scene (no free spot, no unique object), the scene is redrawn. Held-out (colour,
shape) pairs appear, in source or target, only when allowed. Phrasings and places: :mod:`harmon.world.edit_grammar`.
Scoring: :mod:`harmon.world.edit_scoring`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch

from harmon.world.edit_grammar import (
    CENTER_HALF_FRAC,
    EDIT_TYPES,
    PLACE_MARGIN_FRAC,
    QUADRANTS,
    EditPhraser,
    new_object,
    place_phrase,
    place_slot,
    reference,
    with_det,
)
from harmon.world.free import sample_level_scene
from harmon.world.grammar import SPLITS
from harmon.world.sampling import choice, randint
from harmon.world.scene import BBox, Scene, WorldConfig, WorldObject, boxes_separated, check_scene

MAX_EDIT_ATTEMPTS = 200  # source scenes drawn before sample_edit gives up
BOX_TRIES = 200  # random boxes tried per source scene for an added or moved object


@dataclass(frozen=True)
class Edit:
    """One edit: ``source`` --``instruction``--> ``target``.

    ``source_index`` / ``target_index`` are the indices, in ``source.objects`` / ``target.objects``, of the objects
    the edit touches (recolor, change_shape, move: one each; swap_colors: two each; remove: one / none; add: none /
    one). Every other target object is a source object, unchanged, in the same order. ``place`` names the region of
    an add or move (:data:`harmon.world.edit_grammar.PLACES`); ``phrasing`` is the split of the instruction.
    """

    edit_type: str
    source: Scene
    instruction: str
    target: Scene
    source_index: tuple[int, ...] = ()
    target_index: tuple[int, ...] = ()
    place: str | None = None
    phrasing: str = "seen"


def edit_type_probabilities(weights: Mapping[str, float] | None) -> np.ndarray:
    """Probabilities over :data:`EDIT_TYPES` from relative ``weights`` ({type: weight >= 0}, missing types 0);
    uniform for None."""
    if weights is None:
        return np.full(len(EDIT_TYPES), 1 / len(EDIT_TYPES))
    if not isinstance(weights, Mapping):
        raise ValueError(f"edit_weights must be a {{edit type: weight}} dict, got {weights!r}")
    unknown = sorted(set(weights) - set(EDIT_TYPES))
    if unknown:
        raise ValueError(f"edit_weights: unknown edit type(s) {unknown}; expected some of {EDIT_TYPES}")
    w = np.array([float(weights.get(t, 0.0)) for t in EDIT_TYPES])
    if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"edit_weights must be finite, >= 0 and not all 0, got {dict(weights)}")
    return w / w.sum()


# ---- places --------------------------------------------------------------------------------------------------


def place_margin_px(image_size: int) -> int:
    """How far inside its place an added or moved centre is put (4 px at 64)."""
    return max(1, round(PLACE_MARGIN_FRAC * image_size))


def place_offset(place: str, center: tuple[float, float], image_size: int) -> float:
    """How far (pixels) the point ``center`` = (cx, cy) lies inside the region of ``place`` (negative: outside).
    The region is open: a centre on its border is at 0, which the scorer does not accept."""
    cx, cy = center
    h = image_size / 2
    slot = place_slot(place)
    if slot == "center":
        return CENTER_HALF_FRAC * image_size - max(abs(cx - h), abs(cy - h))
    words = place.split()
    inside = {"left": h - cx, "right": cx - h, "top": h - cy, "bottom": cy - h}
    return min(inside[w] for w in words)


def in_place(place: str, center: tuple[float, float], image_size: int) -> bool:
    """The scorer's region rule: the centre lies strictly inside ``place``."""
    return place_offset(place, center, image_size) > 0


def places_for(config: WorldConfig) -> tuple[str, ...]:
    """The places an edit of ``config`` may name: the centre only in free layouts (a grid cell keeps every object
    centre at least a quarter cell from the middle)."""
    return (*QUADRANTS, "left", "right", "top", "bottom") + (("center",) if config.layout == "free" else ())


def _random_box(generator: torch.Generator, config: WorldConfig, size: int) -> BBox:
    """A box of side ``size`` where the world's layout may put one: anywhere off the border (free), or at a random
    offset inside a random grid cell leaving the gap (grid), as :func:`harmon.world.sampling.place_objects`."""
    if config.layout == "grid":
        cell, lead = config.cell_px, config.gap_px // 2
        c = randint(generator, 0, config.grid_cells**2 - 1)
        x0 = (c % config.grid_cells) * cell + randint(generator, lead, cell - (config.gap_px - lead) - size)
        y0 = (c // config.grid_cells) * cell + randint(generator, lead, cell - (config.gap_px - lead) - size)
    else:
        hi = config.image_size - config.margin_px - size
        x0, y0 = randint(generator, config.margin_px, hi), randint(generator, config.margin_px, hi)
    return (x0, y0, x0 + size, y0 + size)


def box_in_place(
    generator: torch.Generator, config: WorldConfig, place: str, size: int, others: list[WorldObject]
) -> BBox | None:
    """A box of side ``size`` with its centre ``place_margin_px`` inside ``place``, apart from ``others`` by the
    world's gap; None when :data:`BOX_TRIES` random boxes all fail."""
    margin = place_margin_px(config.image_size)
    for _ in range(BOX_TRIES):
        box = _random_box(generator, config, size)
        center = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        if place_offset(place, center, config.image_size) >= margin and all(
            boxes_separated(box, o.bbox, config.gap_px) for o in others
        ):
            return box
    return None


# ---- the sampler ---------------------------------------------------------------------------------------------


def _unique(scene: Scene) -> list[int]:
    """Indices of the objects that are the only one of their (colour, shape) in ``scene``."""
    return [i for i, o in enumerate(scene.objects) if scene.pairs.count(o.pair) == 1]


PairRule = Callable[[str, str], bool]  # (colour, shape) -> whether the edit may use the pair


def _allowed(config: WorldConfig, allow_held_out: bool) -> PairRule:
    return lambda color, shape: allow_held_out or not config.is_held_out(color, shape)


def _object_counts(edit_type: str, config: WorldConfig) -> tuple[int, int]:
    """(fewest, most) objects of a source scene for ``edit_type``: a target keeps 1..max_objects objects."""
    if edit_type in ("remove", "swap_colors"):
        return 2, config.max_objects
    if edit_type == "add":
        return 1, config.max_objects - 1
    return 1, config.max_objects


def _swap(g: torch.Generator, scene: Scene, ok: PairRule) -> tuple[tuple[int, ...], tuple[WorldObject, ...]] | None:
    """(the two swapped objects' indices, the objects after the swap), or None when no two unique objects of
    different colours can swap them within the allowed pairs."""
    objs = scene.objects
    pairs = [
        (i, j)
        for i in _unique(scene)
        for j in _unique(scene)
        if i < j
        and objs[i].color != objs[j].color
        and ok(objs[j].color, objs[i].shape)
        and ok(objs[i].color, objs[j].shape)
    ]
    if not pairs:
        return None
    i, j = choice(g, pairs)
    out = list(objs)
    out[i], out[j] = replace(objs[i], color=objs[j].color), replace(objs[j], color=objs[i].color)
    return (i, j), tuple(out)


def _build(g: torch.Generator, edit_type: str, scene: Scene, config: WorldConfig, ok: PairRule) -> dict | None:
    """The edit's target objects and its meta on ``scene``, or None when this scene cannot carry it."""
    objs, unique = list(scene.objects), _unique(scene)
    if edit_type == "swap_colors":
        found = _swap(g, scene, ok)
        return None if found is None else {"index": found[0], "objects": found[1]}
    if edit_type == "add":
        place = choice(g, places_for(config))
        pairs = [p for p in config.pairs(allow_held_out=True) if ok(*p) and p not in scene.pairs]
        color, shape = choice(g, pairs)
        largest = (
            min(config.max_size_px, config.cell_px - config.gap_px) if config.layout == "grid" else config.max_size_px
        )
        box = box_in_place(g, config, place, randint(g, config.min_size_px, largest), objs)
        if box is None:
            return None
        return {"index": (), "objects": (*objs, WorldObject(shape, color, box)), "place": place, "new": (color, shape)}
    if not unique:
        return None
    i = choice(g, unique)
    o = objs[i]
    if edit_type == "remove":
        return {"index": (i,), "objects": tuple(objs[:i] + objs[i + 1 :])}
    if edit_type == "recolor":
        colors = [c for c in config.color_names if c != o.color and ok(c, o.shape)]
        objs[i] = replace(o, color=choice(g, colors))
    elif edit_type == "change_shape":
        shapes = [s for s in config.shapes if s != o.shape and ok(o.color, s)]
        if not shapes:
            return None
        objs[i] = replace(o, shape=choice(g, shapes))
    elif edit_type == "move":
        margin = place_margin_px(config.image_size)
        places = [p for p in places_for(config) if place_offset(p, o.center, config.image_size) <= -margin]
        if not places:
            return None
        place = choice(g, places)
        box = box_in_place(g, config, place, o.width, objs[:i] + objs[i + 1 :])
        if box is None:
            return None
        objs[i] = replace(o, bbox=box)
        return {"index": (i,), "objects": tuple(objs), "place": place}
    else:
        raise ValueError(f"unknown edit type {edit_type!r}; expected one of {EDIT_TYPES}")
    return {"index": (i,), "objects": tuple(objs)}


def _instruction(g: torch.Generator, edit_type: str, source: Scene, target: Scene, built: dict, split: str) -> str:
    """The instruction of a built edit, phrased in ``split``."""
    keys = {"swap_colors": [("t", edit_type), ("a", "ref"), ("b", "ref")], "add": [("t", edit_type)]}
    slots = keys.get(edit_type, [("t", edit_type), ("ref", "ref")])
    if "place" in built:
        slots = slots + [("place", place_slot(built["place"]))]
    ph = EditPhraser(g, split, slots)
    template = ph.pick(edit_type, "t")
    if edit_type == "add":
        return template.format(obj=new_object(ph, *built["new"]), place=place_phrase(ph, built["place"]))
    if edit_type == "swap_colors":
        a, b = (source.objects[k] for k in built["index"])
        return template.format(a=reference(ph, a.color, a.shape, "a"), b=reference(ph, b.color, b.shape, "b"))
    i = built["index"][0]
    o = source.objects[i]
    ref = reference(ph, o.color, o.shape)
    if edit_type == "move":
        return template.format(ref=ref, place=place_phrase(ph, built["place"]))
    if edit_type in ("recolor", "change_shape"):
        new = target.objects[i]
        return template.format(
            ref=ref,
            color=new.color,
            new=with_det(ph.shape(new.shape)),
            new_colored=with_det(f"{new.color} {ph.shape(new.shape)}"),
        )
    return template.format(ref=ref)


def sample_edit(
    generator: torch.Generator,
    config: WorldConfig,
    edit_type: str,
    split: str = "seen",
    allow_held_out: bool = False,
) -> Edit:
    """A random edit of ``edit_type`` in the world ``config`` (see the module docstring), phrased in ``split``.

    Raises:
        ValueError: unknown edit type or phrasing split.
        RuntimeError: :data:`MAX_EDIT_ATTEMPTS` source scenes could not carry the edit.
    """
    if edit_type not in EDIT_TYPES:
        raise ValueError(f"unknown edit type {edit_type!r}; expected one of {EDIT_TYPES}")
    if split not in SPLITS:
        raise ValueError(f"unknown phrasing split {split!r}; expected one of {SPLITS}")
    low, high = _object_counts(edit_type, config)
    ok = _allowed(config, allow_held_out)
    for _ in range(MAX_EDIT_ATTEMPTS):
        source = sample_level_scene(generator, config, randint(generator, low, high), allow_held_out)
        built = _build(generator, edit_type, source, config, ok)
        if built is None:
            continue
        target = Scene(objects=built["objects"], image_size=source.image_size, background=source.background)
        check_scene(target, config)
        index = built["index"]
        source_index = () if edit_type == "add" else index
        target_index = {"remove": (), "add": (len(source.objects),)}.get(edit_type, index)
        text = _instruction(generator, edit_type, source, target, built, split)
        return Edit(edit_type, source, text, target, source_index, target_index, built.get("place"), split)
    raise RuntimeError(f"no {edit_type} edit fits {MAX_EDIT_ATTEMPTS} scenes of this world")
