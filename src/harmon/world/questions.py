"""Understanding questions about shapes-world scenes, with exact answers.

Each question is a dict ``{"question", "answer", "type"}`` plus ``"split"`` for existence questions:

    existence  "Is there a red circle in the image?"  -> "Yes" / "No"  (POPE split random/popular/adversarial)
               "Is there a circle in the image?"      -> "Yes" / "No"  (split "shape": POPE's own template, a bare
                                                                        object word; training only when asked for)
    counting   "How many circles are there?" / "How many objects are there?" -> digits, e.g. "2" ("0" allowed)
    color      "What color is the square?"   (only when exactly one square)  -> colour name, e.g. "Red"
    position   "Is the red circle to the left of the blue square?"            -> "Yes" / "No"
    describe   "Describe the image."                                          -> describe_scene(scene)
    where      "Where is the red circle?" -> "Top left"; "What is in the top left?" -> "A red circle" / "Nothing"
               (training only, the ``where`` task of :mod:`harmon.world.data`: :func:`where_questions`)

Answer formats: "Yes"/"No", digit strings for counts, capitalised colour names; the scorer
(:func:`harmon.world.scoring.answer_correct`) also accepts number words and any casing.

Existence negatives follow POPE. Objects are (colour, shape) pairs:
  * random: an absent pair drawn uniformly;
  * popular: the absent pairs most frequent in training scenes (highest P(pair present));
  * adversarial: the absent pairs that most co-occur with the present ones (highest sum over present pairs i of
    P(i and j both present)).
Both statistics are exact, computed analytically by :func:`harmon.world.sampling.pair_statistics` over
``sample_scene``'s training distribution. Because later objects tend to reuse an earlier colour or shape, the
adversarial negatives are near-misses that share a colour or a shape with a present object. Positives are
present pairs; every split is balanced 50/50 yes/no.

Position questions use GenEval's relation rule (:func:`harmon.eval.metrics.relation`) and are asked only when
both objects are the only ones of their (colour, shape) and exactly one relation holds between them; the "No"
question asks the opposite relation, so no answer depends on a borderline case.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from harmon.eval.metrics import relation
from harmon.world.prompts import OPPOSITE, RELATION_TEXT, describe_scene
from harmon.world.sampling import choice, pair_statistics, sample_scene
from harmon.world.scene import Scene, WorldConfig, WorldObject, noun_phrase, plural
from harmon.world.scoring import POPE_SPLITS

Question = dict[str, Any]
EVAL_KINDS: tuple[tuple[str, str | None], ...] = (
    *(("existence", split) for split in POPE_SPLITS),
    ("counting", None),
    ("color", None),
    ("position", None),
    ("describe", None),
)


def _yes_no(flag: bool) -> str:
    return "Yes" if flag else "No"


def _shuffled(items: list[Any], generator: torch.Generator) -> list[Any]:
    order = torch.randperm(len(items), generator=generator).tolist()
    return [items[i] for i in order]


def positive_pairs(scene: Scene, generator: torch.Generator, k: int) -> list[tuple[str, str]]:
    """Up to ``k`` distinct (colour, shape) pairs present in ``scene``, in random order."""
    return _shuffled(list(dict.fromkeys(scene.pairs)), generator)[:k]


def negative_pairs(
    scene: Scene,
    generator: torch.Generator,
    config: WorldConfig,
    split: str,
    k: int,
    allow_held_out: bool = False,
) -> list[tuple[str, str]]:
    """Up to ``k`` absent (colour, shape) pairs chosen by POPE's ``split`` rule (see the module docstring).

    popular / adversarial take the top-ranked absent pairs; ties are broken at random through ``generator``.
    Held-out pairs are candidates only when ``allow_held_out`` (they then rank last for popular / adversarial).
    """
    if split not in POPE_SPLITS:
        raise ValueError(f"unknown POPE split {split!r}; expected one of {POPE_SPLITS}")
    present = set(scene.pairs)
    absent = [p for p in config.pairs(allow_held_out) if p not in present]
    absent = _shuffled(absent, generator)  # random order = random tie-break
    if split == "random":
        return absent[:k]
    stats = pair_statistics(config)
    index = {p: i for i, p in enumerate(stats.pairs)}
    if split == "popular":
        score = {p: stats.frequency[index[p]] if p in index else -1.0 for p in absent}
    else:
        rows = [index[p] for p in present if p in index]
        cooc = stats.cooccurrence[rows].sum(0) if rows else np.zeros(len(stats.pairs))
        score = {p: cooc[index[p]] if p in index else -1.0 for p in absent}
    return sorted(absent, key=lambda p: -score[p])[:k]  # stable sort keeps the random tie order


def existence_question(pair: tuple[str, str], present: bool, split: str) -> Question:
    """ "Is there a <colour> <shape> in the image?" with its Yes/No answer."""
    color, shape = pair
    return {
        "question": f"Is there {noun_phrase(shape, color)} in the image?",
        "answer": _yes_no(present),
        "type": "existence",
        "split": split,
    }


def shape_existence_question(shape: str, present: bool) -> Question:
    """ "Is there a <shape> in the image?" (no colour: POPE's own template) with its Yes/No answer."""
    return {
        "question": f"Is there {noun_phrase(shape)} in the image?",
        "answer": _yes_no(present),
        "type": "existence",
        "split": "shape",
    }


def shape_existence_pair(scene: Scene, generator: torch.Generator, config: WorldConfig) -> list[Question]:
    """A "Yes" question about a present shape and, when some shape is absent, a "No" question about an absent one."""
    present = sorted({o.shape for o in scene.objects})
    absent = [s for s in config.shapes if s not in present]
    out = [shape_existence_question(choice(generator, present), True)]
    if absent:
        out.append(shape_existence_question(choice(generator, absent), False))
    return out


def counting_question(scene: Scene, generator: torch.Generator, config: WorldConfig) -> Question:
    """ "How many <shapes> are there?" (a uniformly drawn shape, possibly absent) or "How many objects are there?"."""
    target = choice(generator, [*config.shapes, None])
    if target is None:
        return {"question": "How many objects are there?", "answer": str(len(scene.objects)), "type": "counting"}
    return {
        "question": f"How many {plural(target)} are there?",
        "answer": str(scene.count(shape=target)),
        "type": "counting",
    }


def color_question(scene: Scene, generator: torch.Generator, config: WorldConfig) -> Question | None:
    """ "What color is the <shape>?" for a shape present exactly once; None when no shape is."""
    unique = [s for s in config.shapes if scene.count(shape=s) == 1]
    if not unique:
        return None
    shape = choice(generator, unique)
    color = next(o.color for o in scene.objects if o.shape == shape)
    return {"question": f"What color is the {shape}?", "answer": color.capitalize(), "type": "color"}


def position_question(scene: Scene, generator: torch.Generator, positive: bool | None = None) -> Question | None:
    """ "Is the <a> <relation> the <b>?" for two uniquely named objects with exactly one GenEval relation.

    ``positive`` True asks the relation that holds ("Yes"), False its opposite ("No"), None a fair coin.
    Returns None when no pair of objects qualifies.
    """
    unique = scene.unique_objects
    candidates = []
    for a in unique:
        for b in unique:
            rels = relation(a, b) if a is not b else set()
            if len(rels) == 1:
                candidates.append((a, b, next(iter(rels))))
    if not candidates:
        return None
    a, b, rel = choice(generator, candidates)
    if positive is None:
        positive = bool(torch.randint(0, 2, (1,), generator=generator).item())
    asked = rel if positive else OPPOSITE[rel]
    return {
        "question": f"Is the {a.color} {a.shape} {RELATION_TEXT[asked]} the {b.color} {b.shape}?",
        "answer": _yes_no(positive),
        "type": "position",
    }


# "Where" questions: the places of a grid scene's cells, by its box centre against the image's middle lines
PLACES = ("top left", "top right", "bottom left", "bottom right")


def place_of(obj: WorldObject, image_size: int) -> str | None:
    """The quadrant of ``obj``'s box centre (one of :data:`PLACES`); None within n/16 of a middle line."""
    h, margin = image_size / 2, image_size / 16
    cx, cy = (obj.bbox[0] + obj.bbox[2]) / 2, (obj.bbox[1] + obj.bbox[3]) / 2
    if abs(cx - h) < margin or abs(cy - h) < margin:
        return None
    return f"{'top' if cy < h else 'bottom'} {'left' if cx < h else 'right'}"


def where_questions(scene: Scene) -> list[Question]:
    """Grounding in both directions: "Where is the <colour> <shape>?" -> "Top left" for each object that is the
    only one of its colour and shape and clearly in a quadrant, and "What is in the <place>?" -> "A red circle" or
    "Nothing" for each quadrant holding at most one object, all clear of the middle lines."""
    unique = scene.unique_objects
    places = [place_of(o, scene.image_size) for o in scene.objects]
    out = [
        {"question": f"Where is the {o.color} {o.shape}?", "answer": place.capitalize(), "type": "where"}
        for o, place in zip(scene.objects, places)
        if place is not None and any(o is u for u in unique)
    ]
    if None in places:
        return out
    for place in PLACES:
        held = [o for o, at in zip(scene.objects, places) if at == place]
        if len(held) <= 1:
            answer = noun_phrase(held[0].shape, held[0].color).capitalize() if held else "Nothing"
            out.append({"question": f"What is in the {place}?", "answer": answer, "type": "where"})
    return out


REASONED_SUFFIX = " Say where each is first."  # marks a position question answered with both places first


def reasoned(question: Question, scene: Scene) -> Question | None:
    """A position question of :func:`position_question` to be answered with both objects' places before the
    verdict: "Is the red circle to the left of the blue square? Say where each is first." -> "The red circle is top
    left, the blue square is top right: yes" (no full stop before the verdict, so POPE's rule reads it). None when
    an object is not clearly in a quadrant."""
    named = re.fullmatch(r"Is the (\w+) (\w+) .+ the (\w+) (\w+)\?", question["question"])
    if question["type"] != "position" or named is None:
        raise ValueError(f"not a position question: {question['question']!r}")
    objs = [
        next(o for o in scene.objects if (o.color, o.shape) == pair) for pair in (named.group(1, 2), named.group(3, 4))
    ]
    places = [place_of(o, scene.image_size) for o in objs]
    if None in places:
        return None
    said = ", ".join(f"the {o.color} {o.shape} is {p}" for o, p in zip(objs, places))
    return {
        "question": question["question"] + REASONED_SUFFIX,
        "answer": f"{said[0].upper()}{said[1:]}: {question['answer'].lower()}",
        "type": "position",
    }


def describe_question(scene: Scene) -> Question:
    """ "Describe the image." answered by the canonical :func:`describe_scene`."""
    return {"question": "Describe the image.", "answer": describe_scene(scene), "type": "describe"}


def sample_questions(
    scene: Scene,
    generator: torch.Generator,
    config: WorldConfig | None = None,
    num_per_split: int = 1,
    allow_held_out: bool = False,
    shape_questions: bool = False,
) -> list[Question]:
    """Questions about one scene (for training): for each POPE split, ``k = min(num_per_split, #present pairs)``
    positives and ``k`` negatives; then one counting, one color (if some shape is unique), one position (if some
    pair qualifies) and one describe question; with ``shape_questions``, then :func:`shape_existence_pair` (drawn
    last, so the other questions are those drawn without it)."""
    config = config or WorldConfig()
    questions: list[Question] = []
    for split in POPE_SPLITS:
        positives = positive_pairs(scene, generator, num_per_split)
        negatives = negative_pairs(scene, generator, config, split, len(positives), allow_held_out)
        questions += [existence_question(p, True, split) for p in positives[: len(negatives)]]
        questions += [existence_question(p, False, split) for p in negatives]
    questions.append(counting_question(scene, generator, config))
    for q in (color_question(scene, generator, config), position_question(scene, generator)):
        if q is not None:
            questions.append(q)
    questions.append(describe_question(scene))
    if shape_questions:
        questions += shape_existence_pair(scene, generator, config)
    return questions


def sample_shape_existence_items(
    n: int, generator: torch.Generator, config: WorldConfig | None = None, max_scene_attempts: int = 100
) -> list[tuple[Scene, Question]]:
    """``n`` (scene, bare-shape existence question) items, one fresh scene each, answers alternating Yes/No (item i
    is "Yes" when i is even). A "No" item redraws its scene until some shape is absent from it (a world whose every
    scene holds every shape raises instead of looping)."""
    config = config or WorldConfig()
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    items: list[tuple[Scene, Question]] = []
    for i in range(n):
        for _ in range(max_scene_attempts):
            scene = sample_scene(generator, config)
            present = sorted({o.shape for o in scene.objects})
            pool = present if i % 2 == 0 else [s for s in config.shapes if s not in present]
            if pool:
                items.append((scene, shape_existence_question(choice(generator, pool), i % 2 == 0)))
                break
        else:
            raise RuntimeError(f"no scene in {max_scene_attempts} draws lacks a shape to ask a 'No' question about")
    return items


def sample_eval_questions(
    n: int,
    generator: torch.Generator,
    config: WorldConfig | None = None,
    allow_held_out: bool = False,
    max_scene_attempts: int = 100,
) -> list[tuple[Scene, Question]]:
    """``n`` (scene, question) items, one fresh scene each, balanced over seven kinds: existence x {random,
    popular, adversarial}, counting, color, position, describe (item i has kind ``EVAL_KINDS[i % 7]``). Within
    each existence split and within position, answers alternate Yes/No (exactly 50/50 when ``n`` is a multiple
    of 14). Scenes are redrawn when a question kind does not apply (e.g. a position question needs two objects).
    """
    config = config or WorldConfig()
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    items: list[tuple[Scene, Question]] = []
    for i in range(n):
        kind, split = EVAL_KINDS[i % len(EVAL_KINDS)]
        positive = (i // len(EVAL_KINDS)) % 2 == 0
        for _ in range(max_scene_attempts):
            scene = sample_scene(generator, config, allow_held_out=allow_held_out)
            question: Question | None
            if kind == "existence":
                picks = (
                    positive_pairs(scene, generator, 1)
                    if positive
                    else negative_pairs(scene, generator, config, split, 1, allow_held_out)
                )
                question = existence_question(picks[0], positive, split) if picks else None
            elif kind == "counting":
                question = counting_question(scene, generator, config)
            elif kind == "color":
                question = color_question(scene, generator, config)
            elif kind == "position":
                question = position_question(scene, generator, positive)
            else:
                question = describe_question(scene)
            if question is not None:
                items.append((scene, question))
                break
        else:
            raise RuntimeError(f"no scene in {max_scene_attempts} draws admits a {kind} question")
    return items
