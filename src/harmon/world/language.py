"""Prompts, descriptions and questions of world v2: GenEval metadata and exact answers as before, phrased by the
grammar of :mod:`harmon.world.grammar` in its ``seen`` or ``held_out`` split.

Differences from the canonical sampler (:mod:`harmon.world.prompts`, :mod:`harmon.world.questions`), which stays
as it is for the ``grid`` level's canonical data:
    * counts run from 2 to the world's ``max_objects`` (5 in the free level), and half the counting prompts and a
      third of the counting questions name a colour ("two red squares", "How many red squares are there?");
    * half the position prompts name colours, half do not (GenEval's own position prompts do not);
    * relations the world asserts hold clearly (:func:`harmon.world.free.clear_relations`);
    * every prompt and question records its ``phrasing`` split.
"""

from __future__ import annotations

from typing import Any

import torch

from harmon.eval.metrics import RELATIONS, relation
from harmon.prompts import join_phrases
from harmon.world.free import clear_relations, relation_margin_px
from harmon.world.grammar import (
    Phraser,
    count_phrase,
    object_phrase,
    relation_phrase,
    sentence,
)
from harmon.world.prompts import OPPOSITE, PromptMeta, describe_scene, make_prompt
from harmon.world.sampling import choice, randint
from harmon.world.scene import Scene, WorldConfig
from harmon.world.scoring import TAGS

Question = dict[str, Any]


def _entry(shape: str, count: int = 1, color: str | None = None, position: tuple[str, int] | None = None) -> dict:
    entry: dict[str, Any] = {"class": shape, "count": count}
    if color is not None:
        entry["color"] = color
    if position is not None:
        entry["position"] = [position[0], position[1]]
    return entry


def _framed(ph: Phraser, x: str) -> str:
    return ph.pick("frame").format(x=x)


def phrase_prompt(tag: str, include: list[dict[str, Any]], generator: torch.Generator, split: str = "seen") -> str:
    """Text for GenEval metadata ``include`` of ``tag`` in the grammar's ``split``."""
    slots = [("frame", "frame")]
    if tag == "colors":
        slots.append(("a", "object"))
    elif tag == "counting" and include[0].get("color"):
        slots.append(("count", "colored_count"))
    elif tag in ("color_attr", "position"):
        slots += [(k, "object") for k, e in zip("ba", include) if e.get("color")]
        if tag == "position":
            slots.append(("relation", include[1]["position"][0]))
    ph = Phraser(generator, split, slots)
    if tag in ("single_object", "colors"):
        return _framed(ph, object_phrase(ph, include[0]["class"], include[0].get("color"), "a"))
    if tag == "counting":
        e = include[0]
        return _framed(ph, count_phrase(ph, e["class"], e["count"], e.get("color"), "count"))
    if tag in ("two_object", "color_attr"):
        a, b = (object_phrase(ph, e["class"], e.get("color"), k) for k, e in zip("ab", include))
        return _framed(ph, ph.pick("pair").format(a=a, b=b))
    if tag == "position":
        ref, obj = include
        a = object_phrase(ph, obj["class"], obj.get("color"), "a")
        b = object_phrase(ph, ref["class"], ref.get("color"), "b")
        return _framed(ph, f"{a} {relation_phrase(ph, obj['position'][0])} {b}")
    raise ValueError(f"unknown tag {tag!r}; expected one of {TAGS}")


def _include_for(tag: str, generator: torch.Generator, config: WorldConfig, allow_held_out: bool) -> list[dict]:
    def color_for(shape: str) -> str:
        return choice(generator, config.colors_for(shape, allow_held_out))

    def two_shapes() -> tuple[str, str]:
        a = choice(generator, config.shapes)
        return a, choice(generator, [s for s in config.shapes if s != a])

    def coin() -> bool:
        return bool(randint(generator, 0, 1))

    if tag in ("single_object", "colors"):
        shape = choice(generator, config.shapes)
        return [_entry(shape, color=color_for(shape) if tag == "colors" else None)]
    if tag == "counting":
        shape = choice(generator, config.shapes)
        n = randint(generator, 2, config.max_objects)
        return [_entry(shape, count=n, color=color_for(shape) if coin() else None)]
    a, b = two_shapes()
    if tag == "two_object":
        return [_entry(a), _entry(b)]
    if tag == "color_attr":
        return [_entry(a, color=color_for(a)), _entry(b, color=color_for(b))]
    colored = coin()  # position: "A rel B" -> include [B, A @ (rel, 0)], as GenEval writes it
    rel = choice(generator, RELATIONS)
    ca, cb = (color_for(a), color_for(b)) if colored else (None, None)
    return [_entry(b, color=cb), _entry(a, color=ca, position=(rel, 0))]


def sample_prompt_v2(
    generator: torch.Generator,
    tag: str | None = None,
    config: WorldConfig | None = None,
    split: str = "seen",
    allow_held_out: bool = False,
) -> PromptMeta:
    """A random prompt of ``tag`` (uniform over the six tags when None), phrased in ``split``; the metadata is
    GenEval's (:func:`harmon.world.prompts.make_prompt`) plus ``phrasing``."""
    config = config or WorldConfig()
    tag = tag if tag is not None else choice(generator, TAGS)
    if tag not in TAGS:
        raise ValueError(f"unknown tag {tag!r}; expected one of {TAGS}")
    include = _include_for(tag, generator, config, allow_held_out)
    meta = make_prompt(tag, include, config, text=phrase_prompt(tag, include, generator, split))
    meta["phrasing"] = split
    return meta


def sample_eval_prompts_v2(
    n: int, generator: torch.Generator, config: WorldConfig | None = None, split: str = "seen"
) -> list[PromptMeta]:
    """``n`` evaluation prompts balanced over the six tags (prompt i has tag ``TAGS[i % 6]``), held-out pairs
    allowed (flagged ``held_out``), phrased in ``split``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [sample_prompt_v2(generator, TAGS[i % len(TAGS)], config, split, allow_held_out=True) for i in range(n)]


def phrase_description(scene: Scene, generator: torch.Generator, split: str = "seen") -> str:
    """A varied description of the whole scene for text-to-image training: the (colour, shape) groups in random
    order, each as an object or a count phrase ("two red blocks"), in a random frame."""
    groups: dict[tuple[str, str], int] = {}
    for o in scene.objects:
        groups[o.pair] = groups.get(o.pair, 0) + 1
    pairs = list(groups)
    order = torch.randperm(len(pairs), generator=generator).tolist()
    keyed = [(f"o{i}", pairs[j]) for i, j in enumerate(order)]
    slots = [("frame", "frame")] + [(k, "object" if groups[p] == 1 else "colored_count") for k, p in keyed]
    ph = Phraser(generator, split, slots)
    items = [
        object_phrase(ph, shape, color, k)
        if groups[(color, shape)] == 1
        else count_phrase(ph, shape, groups[(color, shape)], color, k)
        for k, (color, shape) in keyed
    ]
    return _framed(ph, join_phrases(items))


# ---- questions ------------------------------------------------------------------------------------------------


def existence_question_v2(
    shape: str, color: str | None, present: bool, split_name: str, generator: torch.Generator, phrasing: str
) -> Question:
    """ "Is there / Does the image contain / Can you see ... <object>?" with its Yes/No answer; ``split_name`` is the
    POPE split (or "shape" for a bare shape)."""
    ph = Phraser(generator, phrasing, [("q", "existence")] + ([("o", "object")] if color else []))
    text = ph.pick("existence", "q").format(o=object_phrase(ph, shape, color, "o"))
    out = {"question": text, "answer": "Yes" if present else "No", "type": "existence", "split": split_name}
    return out | ({"pair": [color, shape]} if color else {})


def counting_question_v2(scene: Scene, generator: torch.Generator, config: WorldConfig, phrasing: str) -> Question:
    """ "How many <shapes|coloured shapes|objects> ...?" about a target drawn uniformly (shape, possibly absent; a
    third of the shape targets carry a colour); the answer is digits."""
    ph = Phraser(generator, phrasing, [("q", "counting")])
    shape = choice(generator, [*config.shapes, None])
    color = choice(generator, config.color_names) if shape is not None and randint(generator, 0, 2) == 0 else None
    if shape is None:
        target, n = choice(generator, ("objects", "shapes")), len(scene.objects)
    else:
        words = ph.shape(shape, plural=True)
        target, n = (f"{color} {words}" if color else words), scene.count(shape=shape, color=color)
    return {"question": ph.pick("counting", "q").format(p=target), "answer": str(n), "type": "counting"}


def color_question_v2(scene: Scene, generator: torch.Generator, config: WorldConfig, phrasing: str) -> Question | None:
    """ "What colour is the <shape>?" for a shape present exactly once (None when none is); answer e.g. "Red"."""
    unique = [s for s in config.shapes if scene.count(shape=s) == 1]
    if not unique:
        return None
    shape = choice(generator, unique)
    color = next(o.color for o in scene.objects if o.shape == shape)
    ph = Phraser(generator, phrasing, [("q", "color")])
    return {"question": ph.pick("color", "q").format(s=ph.shape(shape)), "answer": color.capitalize(), "type": "color"}


def position_candidates(scene: Scene, config: WorldConfig) -> list[tuple[Any, Any, str]]:
    """(a, b, relation) for uniquely named objects a, b with exactly one relation, which holds clearly."""
    unique = scene.unique_objects
    margin, out = relation_margin_px(config), []
    for a in unique:
        for b in unique:
            if a is not b:
                rels = relation(a, b)
                if len(rels) == 1 and clear_relations(a.bbox, b.bbox, margin) == rels:
                    out.append((a, b, next(iter(rels))))
    return out


def position_question_v2(
    scene: Scene, generator: torch.Generator, config: WorldConfig, phrasing: str, positive: bool | None = None
) -> Question | None:
    """ "Is the <a> <relation> the <b>?": the relation that holds ("Yes") or its opposite ("No"); None when no pair
    of objects qualifies (:func:`position_candidates`)."""
    candidates = position_candidates(scene, config)
    if not candidates:
        return None
    a, b, rel = choice(generator, candidates)
    if positive is None:
        positive = bool(randint(generator, 0, 1))
    asked = rel if positive else OPPOSITE[rel]
    ph = Phraser(generator, phrasing, [("q", "position"), ("relation", asked)])
    name_a, name_b = f"{a.color} {ph.shape(a.shape)}", f"{b.color} {ph.shape(b.shape)}"
    text = ph.pick("position", "q").format(a=name_a, rel=relation_phrase(ph, asked), b=name_b)
    return {"question": text, "answer": "Yes" if positive else "No", "type": "position"}


def describe_question_v2(scene: Scene, generator: torch.Generator, phrasing: str) -> Question:
    """ "Describe the image." and its variants, answered by the canonical :func:`describe_scene`."""
    ph = Phraser(generator, phrasing, [("q", "describe")])
    return {"question": ph.pick("describe", "q"), "answer": describe_scene(scene), "type": "describe"}


def capitalised(question: Question) -> Question:
    """``question`` with its text starting in a capital (grammar options may start with an article)."""
    return {**question, "question": sentence(question["question"])}
