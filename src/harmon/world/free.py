"""World v2: the ``grid`` and ``free`` levels, scene backgrounds, and the relation rule of free layouts.

Levels (:func:`level_world`):

    grid  today's world, unchanged: 1-4 objects of 22-28 px, one per cell of a 2 x 2 grid, on white.
    free  1-5 objects of 10-30 px (at 64 px; sizes scale with the image) anywhere in the image. Bounding boxes never
          overlap: any two are at least 3 px apart along x or y (an anti-aliased edge spreads at most 1 px on each
          side, so at least 1 px of clean background always separates two objects and the scorer's connected
          components cannot merge them). Each object is at least 1 px off the border. Sizes are uniform per object,
          conditioned on the whole scene fitting (placement is redrawn until it does). Backgrounds vary
          (:func:`sample_background`): white in 20 % of scenes, a flat light tint in 40 %, a linear gradient
          between two light colours in 40 %.

Image size: 64 px, the stride-8 VAE's 8 x 8 latent grid read by the MAR at patch size 2 (16 tokens of 64 dims).
A 10-30 px object then covers 1-3 tokens a side and a 16 px token holds parts of at most a few objects, so where an
object goes is a choice among 16 places, not 4; 96 or 128 px would cost 2.25-4x the VAE work and as many more LLM
positions per image, which the 3-hour, 2-core budget of the retrain cannot pay (docs/world-v2.md).

Relations. The scorer judges generated images with GenEval's rule (:func:`harmon.eval.metrics.relation`). What the
world itself asserts (position prompts of training pairs, position questions) must hold with a margin, so that no
label depends on a pixel: :func:`clear_relations` keeps a relation only when GenEval's rule gives it for the true
boxes AND for every shift of one box by up to ``relation_margin_px`` (2 px at 64) along x and y. The data generator
uses it, and since a clear relation is also a GenEval relation, the scorer agrees with every label.
"""

from __future__ import annotations

import functools

import torch

from harmon.eval.metrics import RELATIONS, relation
from harmon.world.prompts import PromptMeta, objects_for_prompt
from harmon.world.sampling import place_objects, randint, sample_scene
from harmon.world.scene import Background, BBox, Scene, WorldConfig
from harmon.world.scoring import judge_prompt

LEVELS = ("grid", "free")
LIGHT_MIN = 205  # background channels are drawn in [LIGHT_MIN, 255]: every palette colour has a channel <= 40
BACKGROUND_KINDS = (("white", 0.2), ("tint", 0.4), ("gradient", 0.4))
RELATION_MARGIN_FRAC = 2 / 64  # a clear relation survives a 2 px shift (at 64 px) of either box


def free_world(image_size: int = 64) -> WorldConfig:
    """The ``free`` level's world at ``image_size`` (see the module docstring for its rules)."""
    return WorldConfig(
        image_size=image_size,
        layout="free",
        min_size_frac=10 / 64,  # 10 px at 64: the smallest triangle still covers ~50 px, 1.2 % of the image
        max_size_frac=30 / 64,  # 30 px at 64: four of the largest still fit beside each other with their gaps
        max_objects=5,
        min_gap_frac=3 / 64,  # >= 1 px of clean background between two anti-aliased edges
        margin_frac=1 / 64,
        backgrounds="varied",
    )


def level_world(level: str, image_size: int = 64) -> WorldConfig:
    """The world of ``level`` ("grid" or "free") at ``image_size``."""
    if level == "grid":
        return WorldConfig(image_size=image_size)
    if level == "free":
        return free_world(image_size)
    raise ValueError(f"unknown world level {level!r}; expected one of {LEVELS}")


def sample_background(generator: torch.Generator) -> Background | None:
    """A random background for a world with ``backgrounds="varied"``: None (the world's white), a flat light tint
    or a linear gradient between two light colours at a random angle (see BACKGROUND_KINDS for the mix)."""
    u = float(torch.rand((), generator=generator))
    kind = "gradient"
    for name, p in BACKGROUND_KINDS:
        if u < p:
            kind = name
            break
        u -= p
    if kind == "white":
        return None

    def light() -> tuple[int, int, int]:
        return (
            randint(generator, LIGHT_MIN, 255),
            randint(generator, LIGHT_MIN, 255),
            randint(generator, LIGHT_MIN, 255),
        )

    start = light()
    if kind == "tint":
        return Background(start=start, end=start, angle=0.0)
    return Background(start=start, end=light(), angle=float(randint(generator, 0, 359)))


def with_background(scene: Scene, generator: torch.Generator, config: WorldConfig) -> Scene:
    """``scene`` on a random background when the world varies them; unchanged (no random draw) otherwise."""
    if config.backgrounds != "varied":
        return scene
    return Scene(objects=scene.objects, image_size=scene.image_size, background=sample_background(generator))


def sample_level_scene(
    generator: torch.Generator, config: WorldConfig, num_objects: int | None = None, allow_held_out: bool = False
) -> Scene:
    """:func:`harmon.world.sampling.sample_scene` followed by a background draw (worlds with varied backgrounds)."""
    return with_background(sample_scene(generator, config, num_objects, allow_held_out), generator, config)


def relation_margin_px(config: WorldConfig) -> int:
    """The shift (pixels) a clear relation must survive: 2 px at 64 px."""
    return max(1, round(RELATION_MARGIN_FRAC * config.image_size))


def _shifted(box: BBox, dx: int, dy: int) -> BBox:
    return (box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy)


def clear_relations(a: BBox, b: BBox, margin: int) -> set[str]:
    """GenEval relations of box ``a`` to box ``b`` that still hold when ``a`` moves by any of (-margin, 0, margin)
    along x and along y (moving ``b`` instead is the same test)."""
    out = relation(a, b)
    for dx in (-margin, 0, margin):
        for dy in (-margin, 0, margin):
            out &= relation(_shifted(a, dx, dy), b)
    return out


def prompt_holds_clearly(prompt: PromptMeta, objects, config: WorldConfig) -> bool:
    """GenEval's judgement of ``objects`` (the scene's own) and, for every positioned entry, the clear rule between
    the objects of the two entries."""
    if not judge_prompt(prompt, objects):
        return False
    include, margin = prompt.get("include", []), relation_margin_px(config)

    def group(entry: dict) -> list:
        return [o for o in objects if o.shape == entry["class"] and o.color == entry.get("color", o.color)]

    for entry in include:
        if "position" in entry:
            rel, j = entry["position"][0], int(entry["position"][1])
            for a in group(entry):
                for b in group(include[j]):
                    if rel not in clear_relations(a.bbox, b.bbox, margin):
                        return False
    return True


def level_scene_for_prompt(
    prompt: PromptMeta, generator: torch.Generator, config: WorldConfig, allow_held_out: bool = False
) -> Scene:
    """A scene drawing ``prompt`` exactly, with no extra object, its relations clear (:func:`clear_relations`),
    on a background of the world's kind.

    Raises:
        ValueError: the prompt names an object outside the world, or a held-out pair while ``allow_held_out`` is
            False, needs more objects than the world holds, or no placement satisfies it in ``config.max_attempts``
            attempts.
    """
    holds = functools.partial(prompt_holds_clearly, config=config)
    objects = objects_for_prompt(prompt, generator, config, allow_held_out, holds)
    scene = Scene(objects=tuple(objects), image_size=config.image_size)
    return with_background(scene, generator, config)


@functools.lru_cache(maxsize=8)
def position_chance(config: WorldConfig, samples: int = 2000, seed: int = 0) -> float:
    """How often GenEval's rule gives one asked relation between two objects placed at random by the world's own
    sampler: the rate a generator that draws the right objects at random places scores on position prompts (the
    same for the four relations, by symmetry; averaged over them). Monte Carlo with a fixed seed."""
    generator = torch.Generator().manual_seed(seed)
    hits = 0
    for i in range(samples):
        objects = None
        while objects is None:
            objects = place_objects([("red", "circle"), ("blue", "square")], generator, config)
        hits += RELATIONS[i % len(RELATIONS)] in relation(objects[0].bbox, objects[1].bbox)
    return hits / samples
