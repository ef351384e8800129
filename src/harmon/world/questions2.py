"""Question sets of world v2: for training conversations and for balanced evaluation, in either phrasing split.

Kinds and answers are those of :mod:`harmon.world.questions` (POPE existence with random / popular / adversarial
negatives, counting, colour, position, description), phrased by :mod:`harmon.world.language`; bare-shape existence
questions ("Can you see a disc?") are part of every training set, and counting may name a colour.
"""

from __future__ import annotations

import torch

from harmon.world.free import sample_level_scene
from harmon.world.language import (
    Question,
    capitalised,
    color_question_v2,
    counting_question_v2,
    describe_question_v2,
    existence_question_v2,
    position_question_v2,
)
from harmon.world.questions import EVAL_KINDS, negative_pairs, positive_pairs
from harmon.world.sampling import choice
from harmon.world.scene import Scene, WorldConfig
from harmon.world.scoring import POPE_SPLITS


def shape_existence_v2(scene: Scene, generator: torch.Generator, config: WorldConfig, phrasing: str) -> list[Question]:
    """A "Yes" question about a present shape and, when some shape is absent, a "No" one, with no colour named."""
    present = sorted({o.shape for o in scene.objects})
    absent = [s for s in config.shapes if s not in present]
    out = [existence_question_v2(choice(generator, present), None, True, "shape", generator, phrasing)]
    if absent:
        out.append(existence_question_v2(choice(generator, absent), None, False, "shape", generator, phrasing))
    return out


def sample_questions_v2(
    scene: Scene, generator: torch.Generator, config: WorldConfig, phrasing: str = "seen", allow_held_out: bool = False
) -> list[Question]:
    """Questions about one scene for training: per POPE split one present and one absent (colour, shape) pair, a
    bare-shape pair, then one counting, one colour (if a shape is unique), one position (if a pair qualifies) and one
    describe question."""
    questions: list[Question] = []
    for split in POPE_SPLITS:
        positives = positive_pairs(scene, generator, 1)
        negatives = negative_pairs(scene, generator, config, split, len(positives), allow_held_out)
        for pair in positives[: len(negatives)]:
            questions.append(existence_question_v2(pair[1], pair[0], True, split, generator, phrasing))
        for pair in negatives:
            questions.append(existence_question_v2(pair[1], pair[0], False, split, generator, phrasing))
    questions += shape_existence_v2(scene, generator, config, phrasing)
    questions.append(counting_question_v2(scene, generator, config, phrasing))
    for q in (
        color_question_v2(scene, generator, config, phrasing),
        position_question_v2(scene, generator, config, phrasing),
    ):
        if q is not None:
            questions.append(q)
    questions.append(describe_question_v2(scene, generator, phrasing))
    return [capitalised(q) for q in questions]


def _eval_question(
    scene: Scene,
    kind: str,
    split: str | None,
    positive: bool,
    generator: torch.Generator,
    config: WorldConfig,
    phrasing: str,
) -> Question | None:
    if kind == "existence":
        assert split is not None
        picks = (
            positive_pairs(scene, generator, 1)
            if positive
            else negative_pairs(scene, generator, config, split, 1, True)
        )
        return existence_question_v2(picks[0][1], picks[0][0], positive, split, generator, phrasing) if picks else None
    if kind == "counting":
        return counting_question_v2(scene, generator, config, phrasing)
    if kind == "color":
        return color_question_v2(scene, generator, config, phrasing)
    if kind == "position":
        return position_question_v2(scene, generator, config, phrasing, positive)
    return describe_question_v2(scene, generator, phrasing)


def sample_eval_questions_v2(
    n: int,
    generator: torch.Generator,
    config: WorldConfig,
    phrasing: str = "seen",
    max_scene_attempts: int = 100,
) -> list[tuple[Scene, Question]]:
    """``n`` (scene, question) items over fresh scenes of ``config``'s level, balanced over the seven kinds of
    :data:`harmon.world.questions.EVAL_KINDS` (answers alternate Yes/No within each existence split and position).
    Scenes may hold held-out pairs; each question records ``phrasing`` and ``held_out_pair`` (its scene holds one, or
    it names one)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    items: list[tuple[Scene, Question]] = []
    for i in range(n):
        kind, split = EVAL_KINDS[i % len(EVAL_KINDS)]
        positive = (i // len(EVAL_KINDS)) % 2 == 0
        for _ in range(max_scene_attempts):
            scene = sample_level_scene(generator, config, allow_held_out=True)
            question = _eval_question(scene, kind, split, positive, generator, config, phrasing)
            if question is not None:
                named = [tuple(question["pair"])] if "pair" in question else []
                held = any(config.is_held_out(c, s) for c, s in [*scene.pairs, *named])
                items.append((scene, {**capitalised(question), "phrasing": phrasing, "held_out_pair": held}))
                break
        else:
            raise RuntimeError(f"no scene in {max_scene_attempts} draws admits a {kind} question")
    return items
