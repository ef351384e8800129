"""``harmon eval shapes-edit``: fresh edits of every type, edited by a model, scored exactly.

For each phrasing split (seen, held-out) and each edit type, :func:`evaluate_edits` draws ``n`` edits
(:func:`harmon.world.edits.sample_edit`, training pairs only) from a generator of its own, renders each source
(:func:`harmon.world.render.render`), asks ``edit_fn`` for the edited image, reads it with
:func:`harmon.world.detect2.detect_objects_v2` and scores it (:func:`harmon.world.edit_scoring.score_edit`). It
reports, per type and overall (the mean over types), the share of edits done right (``edit_ok``), of images that
kept everything else (``preserved``) and of both at once (``correct``).

``edit_fn(edit, source_image, generator) -> image`` is the model (:func:`pipeline_edit_fn`) or anything else that
edits: :func:`target_edit_fn` returns the rendered target, which must score 100 % (the scorer's ground truth).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from harmon.eval.metrics import pct, table
from harmon.layout_edit import LayoutError
from harmon.world.detect2 import detect_objects_v2
from harmon.world.edit_grammar import EDIT_TYPES
from harmon.world.edit_scoring import score_edit
from harmon.world.edits import Edit, sample_edit
from harmon.world.free import LEVELS, level_world
from harmon.world.grammar import SPLITS
from harmon.world.render import render
from harmon.world.render2 import render2
from harmon.world.scene import WorldConfig

logger = logging.getLogger(__name__)

EditFn = Callable[[Edit, Image.Image, torch.Generator], Image.Image]
SPLIT_NAMES = {"seen": "seen phrasing", "held_out": "held-out phrasing"}
METRICS = ("edit_ok", "preserved", "correct")


def pipeline_edit_fn(pipe, image_guidance_scale: float | None = None, **settings: Any) -> EditFn:
    """``edit_fn`` of a :class:`harmon.pipeline.HarmonPipeline`: one ``pipe.edit`` call per edit, with the
    generation ``settings`` (guidance_scale, num_iter, plan, ...). Where the layout route's model answers no layout
    (:class:`harmon.layout_edit.LayoutError`) the edit returns the source unchanged, with a warning: a failed
    edit, not a failed evaluation."""

    def edit_fn(edit: Edit, source: Image.Image, generator: torch.Generator) -> Image.Image:
        try:
            out = pipe.edit(
                source, edit.instruction, image_guidance_scale=image_guidance_scale, generator=generator, **settings
            )
        except LayoutError as e:
            logger.warning("edit %r left undone: %s", edit.instruction, e)
            return source
        return out[0]

    return edit_fn


def target_edit_fn(world: WorldConfig, antialiased: bool = False) -> EditFn:
    """An ``edit_fn`` that does every edit perfectly: the target, drawn by the first or the anti-aliasing renderer."""
    draw = render2 if antialiased else render
    return lambda edit, source, generator: draw(edit.target, world)


def _generator(seed: int, level: str, split: str, stream: int) -> torch.Generator:
    """One generator per (level, split, stream), apart from the other reports' offsets (100-499)."""
    return torch.Generator().manual_seed(seed + 1000 + 100 * (2 * LEVELS.index(level) + SPLITS.index(split)) + stream)


def _rates(scores: list[tuple[bool, bool]]) -> dict[str, Any]:
    n = len(scores)
    if not n:
        return {"count": 0, **dict.fromkeys(METRICS)}
    return {
        "count": n,
        "edit_ok": sum(ok for ok, _ in scores) / n,
        "preserved": sum(kept for _, kept in scores) / n,
        "correct": sum(ok and kept for ok, kept in scores) / n,
    }


def evaluate_split(edit_fn: EditFn, world: WorldConfig, level: str, split: str, n: int, seed: int) -> dict:
    """Scores of ``n`` fresh edits per type phrased in ``split``: ``{"types": {type: rates}, "overall": rates}``
    (overall: the mean of the types' rates)."""
    edits_g, model_g = _generator(seed, level, split, 0), _generator(seed, level, split, 1)
    types = {}
    for edit_type in EDIT_TYPES:
        scores = []
        for _ in range(n):
            edit = sample_edit(edits_g, world, edit_type, split)
            image = edit_fn(edit, render(edit.source, world), model_g)
            if image.size != (world.image_size, world.image_size):
                raise ValueError(
                    f"edited image is {image.size[0]} x {image.size[1]}; the scenes are {world.image_size}"
                )
            verdict = score_edit(edit, detect_objects_v2(image, world))
            scores.append((verdict.edit_ok, verdict.preserved))
        types[edit_type] = _rates(scores)
    overall = {"count": sum(t["count"] for t in types.values())}
    for metric in METRICS:
        values = [t[metric] for t in types.values() if t[metric] is not None]
        overall[metric] = sum(values) / len(values) if values else None
    return {"types": types, "overall": overall}


def evaluate_edits(
    edit_fn: EditFn,
    image_size: int,
    n: int = 50,
    seed: int = 0,
    splits: tuple[str, ...] = SPLITS,
    level: str = "free",
) -> dict[str, Any]:
    """The report's numbers: ``{"level", "seed", "edits_per_type", "image_size", "splits": {split: ...}}`` with
    :func:`evaluate_split` for each phrasing split; scenes of ``level`` drawn at ``image_size``."""
    if n < 1:
        raise ValueError(f"edits per type must be >= 1, got {n}")
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"unknown phrasing split {split!r}; expected some of {SPLITS}")
    world = level_world(level, image_size)
    out: dict[str, Any] = {"level": level, "seed": seed, "edits_per_type": n, "image_size": image_size, "splits": {}}
    for split in splits:
        out["splits"][split] = evaluate_split(edit_fn, world, level, split, n, seed)
        logger.info("%s: %s", split, out["splits"][split]["overall"])
    return out


def format_edits(result: dict[str, Any]) -> str:
    """A Markdown table: one row per edit type and overall, edit / preserved / both (%) and n per phrasing split."""
    splits = list(result["splits"])
    head = ["edit type"]
    for split in splits:
        head += [f"{SPLIT_NAMES[split]}: edit ok", "preserved", "both", "n"]

    def cells(rates: dict) -> list[str]:
        return [*(pct(rates[m]) for m in METRICS), str(rates["count"])]

    rows = [[t] + [c for s in splits for c in cells(result["splits"][s]["types"][t])] for t in EDIT_TYPES]
    rows.append(["overall (mean of types)"] + [c for s in splits for c in cells(result["splits"][s]["overall"])])
    title = f"Edits, level {result['level']} (exact scoring, %; seed {result['seed']})\n"
    return title + table(head, rows)
