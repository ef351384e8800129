"""The v2 scorer on ground truth of both renderers (``python -m harmon.world.analyses.scorer_check``).

For fresh scenes of a level (seeded; none used by the tests), each drawn by :func:`harmon.world.render.render_array`
and by the independent :func:`harmon.world.render2.render2_array`, it prints
    * exact recovery: the detected (colour, shape) multiset equals the scene's and every box is within 1 px;
    * judge acceptance: of fresh evaluation prompts (both phrasing splits, held-out pairs included), drawn exactly
      by :func:`harmon.world.free.level_scene_for_prompt`, the share GenEval's rules accept on the detections.
The acceptance bar of world v2 is >= 99 % for each.

With ``--edits N`` it checks the edit scorer instead (:mod:`harmon.world.edit_scoring`): N fresh edits per edit type
and phrasing split (:func:`harmon.world.edits.sample_edit`), each scored on the rendered target (must score edit ok
and preserved: 100 %) and on the untouched source (must score edit ok 0 %, preserved 100 %), per renderer.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from harmon.world.detect2 import detect_objects_v2
from harmon.world.detection import detect_objects
from harmon.world.edit_grammar import EDIT_TYPES
from harmon.world.edit_scoring import score_edit
from harmon.world.edits import sample_edit
from harmon.world.free import level_scene_for_prompt, level_world, sample_level_scene
from harmon.world.grammar import SPLITS
from harmon.world.language import sample_eval_prompts_v2
from harmon.world.render import render_array
from harmon.world.render2 import render2_array
from harmon.world.scoring import judge_prompt

logger = logging.getLogger(__name__)

RENDERERS = {"render": render_array, "render2": render2_array}


def recovery(level: str, scenes: int, seed: int) -> dict[str, float]:
    """Share of ``scenes`` fresh scenes of ``level`` read exactly, per renderer."""
    world = level_world(level)
    detect = detect_objects_v2 if level == "free" else detect_objects
    g = torch.Generator().manual_seed(seed)
    hits = dict.fromkeys(RENDERERS, 0)
    for _ in range(scenes):
        scene = sample_level_scene(g, world, allow_held_out=True)
        want = sorted(o.pair for o in scene.objects)
        for name, draw in RENDERERS.items():
            found = detect(draw(scene, world), world)
            near = all(any(max(abs(a - b) for a, b in zip(d.bbox, o.bbox)) <= 1 for o in scene.objects) for d in found)
            hits[name] += sorted(d.pair for d in found) == want and len(found) == len(want) and near
    return {name: n / scenes for name, n in hits.items()}


def acceptance(level: str, prompts: int, seed: int) -> dict[str, float]:
    """Share of fresh prompts (half per phrasing split) whose exact scenes the judge accepts, per renderer."""
    world = level_world(level)
    detect = detect_objects_v2 if level == "free" else detect_objects
    g = torch.Generator().manual_seed(seed + 1)
    hits, total = dict.fromkeys(RENDERERS, 0), 0
    for split in SPLITS:
        for p in sample_eval_prompts_v2(prompts // 2, g, world, split):
            scene = level_scene_for_prompt(p, g, world, allow_held_out=True)
            total += 1
            for name, draw in RENDERERS.items():
                hits[name] += judge_prompt(p, detect(draw(scene, world), world))
    return {name: n / total for name, n in hits.items()}


def edit_check(level: str, per_type: int, seed: int) -> dict[str, dict[str, float]]:
    """Per renderer, the shares of fresh edits (``per_type`` per type and phrasing split) whose rendered target
    scores edit ok / preserved and whose untouched source scores edit ok / preserved."""
    world = level_world(level)
    g = torch.Generator().manual_seed(seed + 2)
    keys = ("target_edit_ok", "target_preserved", "source_edit_ok", "source_preserved")
    hits, total = {name: dict.fromkeys(keys, 0) for name in RENDERERS}, 0
    for split in SPLITS:
        for edit_type in EDIT_TYPES:
            for _ in range(per_type):
                edit = sample_edit(g, world, edit_type, split)
                total += 1
                for name, draw in RENDERERS.items():
                    for which, scene in (("target", edit.target), ("source", edit.source)):
                        verdict = score_edit(edit, detect_objects_v2(draw(scene, world), world))
                        hits[name][f"{which}_edit_ok"] += verdict.edit_ok
                        hits[name][f"{which}_preserved"] += verdict.preserved
    return {name: {k: v / total for k, v in h.items()} for name, h in hits.items()}


def _report_edits(levels: tuple[str, ...], per_type: int, seed: int) -> None:
    for level in levels:
        t = time.perf_counter()
        result = edit_check(level, per_type, seed)
        n = per_type * len(EDIT_TYPES) * len(SPLITS)
        logger.info("edits, level %s (seed %d, %d edits, %.0f s):", level, seed, n, time.perf_counter() - t)
        for name, r in result.items():
            logger.info(
                "  %s: target edit ok %.2f %%, preserved %.2f %%; untouched source edit ok %.2f %%, preserved %.2f %%",
                name,
                *(100 * r[k] for k in ("target_edit_ok", "target_preserved", "source_edit_ok", "source_preserved")),
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=2000, help="fresh scenes per level")
    p.add_argument("--prompts", type=int, default=1200, help="fresh prompts per level (half per phrasing split)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--level", choices=["grid", "free", "all"], default="all")
    p.add_argument("--edits", type=int, default=0, help="check the edit scorer instead: N edits per type and phrasing")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    levels = ("grid", "free") if args.level == "all" else (args.level,)
    if args.edits > 0:
        _report_edits(levels, args.edits, args.seed)
        return 0
    for level in levels:
        t = time.perf_counter()
        rec, acc = recovery(level, args.scenes, args.seed), acceptance(level, args.prompts, args.seed)
        logger.info("level %s (seed %d, %.0f s):", level, args.seed, time.perf_counter() - t)
        for name in RENDERERS:
            logger.info(
                "  %s: exact recovery %.2f %% of %d scenes, judge accepts %.2f %% of %d prompt scenes",
                name,
                100 * rec[name],
                args.scenes,
                100 * acc[name],
                args.prompts // 2 * 2,
            )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
