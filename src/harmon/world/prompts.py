"""Text-to-image prompts for the shapes world, in GenEval's six categories and GenEval's metadata schema.

A prompt is a plain dict (one line of a GenEval ``evaluation_metadata.jsonl``)::

    {"tag": "position",
     "include": [{"class": "square", "count": 1, "color": "blue"},
                 {"class": "circle", "count": 1, "color": "red", "position": ["left of", 0]}],
     "prompt": "a red circle to the left of a blue square",
     "held_out": False}

``include`` entries need at least ``count`` objects of ``class`` (with ``color`` if given; ``position`` is
[relation, index of the reference entry]); ``exclude`` entries (counting only) need fewer than ``count``;
``held_out`` is True when a coloured entry names a held-out (colour, shape) pair.

The grammar (lower case; :func:`parse_prompt` also accepts capitals, a trailing ".", a leading "a photo of",
GenEval's "left of" / "right of", and "a"/"an" either way)::

    single_object  a circle                                  include [circle]
    colors         a red circle                              include [red circle]
    counting       three squares        (two..four)          include [square x3], exclude [square x4]
    two_object     a circle and a triangle                   include [circle, triangle]
    color_attr     a red circle and a blue square            include [red circle, blue square]
    position       a red circle to the left of a blue square include [blue square, red circle @ left of 0]

Sampled prompts follow GenEval: multi-object prompts name two different shapes; position prompts (our choice,
one consistent style) always give both objects a colour, and GenEval's order (reference object first).
Relations are "to the left of", "to the right of", "above", "below".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from harmon.eval.metrics import RELATIONS
from harmon.prompts import join_phrases
from harmon.world.sampling import choice, place_objects, randint
from harmon.world.scene import NUMBER_WORDS, Scene, WorldConfig, WorldObject, noun_phrase, plural
from harmon.world.scoring import TAGS, judge_prompt

PromptMeta = dict[str, Any]

RELATION_TEXT = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
MAX_COUNT_WORD = 10  # parse_prompt accepts counts up to "ten"; the world itself holds at most max_objects


def _entry(
    shape: str, count: int = 1, color: str | None = None, position: tuple[str, int] | None = None
) -> dict[str, Any]:
    entry: dict[str, Any] = {"class": shape, "count": count}
    if color is not None:
        entry["color"] = color
    if position is not None:
        entry["position"] = [position[0], position[1]]
    return entry


def _np(entry: dict[str, Any]) -> str:
    return noun_phrase(entry["class"], entry.get("color"))


def format_prompt(tag: str, include: list[dict[str, Any]]) -> str:
    """Canonical prompt text for GenEval metadata of one of the six tags."""
    if tag in ("single_object", "colors"):
        return _np(include[0])
    if tag == "counting":
        e = include[0]
        words = f"{e['color']} {plural(e['class'])}" if e.get("color") else plural(e["class"])
        return f"{NUMBER_WORDS[e['count']]} {words}"
    if tag in ("two_object", "color_attr"):
        return f"{_np(include[0])} and {_np(include[1])}"
    if tag == "position":
        rel = include[1]["position"][0]
        return f"{_np(include[1])} {RELATION_TEXT[rel]} {_np(include[0])}"
    raise ValueError(f"unknown tag {tag!r}; expected one of {TAGS}")


def make_prompt(
    tag: str, include: list[dict[str, Any]], config: WorldConfig | None = None, text: str | None = None
) -> PromptMeta:
    """Assemble a prompt dict: adds the counting ``exclude``, the canonical text (unless ``text`` is given) and
    the ``held_out`` flag."""
    config = config or WorldConfig()
    meta: PromptMeta = {"tag": tag, "include": include}
    if tag == "counting":
        e = include[0]
        meta["exclude"] = [_entry(e["class"], e["count"] + 1, e.get("color"))]
    meta["prompt"] = format_prompt(tag, include) if text is None else text
    meta["held_out"] = any(config.is_held_out(e.get("color"), e["class"]) for e in include)
    return meta


# ---- sampling -----------------------------------------------------------------------------------------------


def sample_prompt(
    generator: torch.Generator,
    tag: str | None = None,
    allow_held_out: bool = False,
    config: WorldConfig | None = None,
) -> PromptMeta:
    """A random prompt of ``tag`` (uniform over the six tags when None).

    Shapes, colours, counts (2..min(4, max_objects)) and relations are uniform; colours of a shape are drawn from
    the pairs allowed for it, so with ``allow_held_out=False`` no held-out pair is ever named.
    """
    config = config or WorldConfig()
    tag = tag if tag is not None else choice(generator, TAGS)
    if tag not in TAGS:
        raise ValueError(f"unknown tag {tag!r}; expected one of {TAGS}")
    if tag in ("two_object", "color_attr", "position") and len(config.shapes) < 2:
        raise ValueError(f"tag {tag!r} needs at least two shapes")

    def color_for(shape: str) -> str:
        return choice(generator, config.colors_for(shape, allow_held_out))

    def two_shapes() -> tuple[str, str]:
        a = choice(generator, config.shapes)
        return a, choice(generator, [s for s in config.shapes if s != a])

    if tag == "single_object":
        include = [_entry(choice(generator, config.shapes))]
    elif tag == "colors":
        shape = choice(generator, config.shapes)
        include = [_entry(shape, color=color_for(shape))]
    elif tag == "counting":
        shape = choice(generator, config.shapes)
        include = [_entry(shape, count=randint(generator, 2, min(4, config.max_objects)))]
    elif tag == "two_object":
        a, b = two_shapes()
        include = [_entry(a), _entry(b)]
    elif tag == "color_attr":
        a, b = two_shapes()
        include = [_entry(a, color=color_for(a)), _entry(b, color=color_for(b))]
    else:  # position: "A rel B" -> include [B, A @ (rel, 0)], as GenEval writes it
        a, b = two_shapes()
        rel = choice(generator, RELATIONS)
        include = [_entry(b, color=color_for(b)), _entry(a, color=color_for(a), position=(rel, 0))]
    return make_prompt(tag, include, config)


def sample_eval_prompts(n: int, generator: torch.Generator, config: WorldConfig | None = None) -> list[PromptMeta]:
    """``n`` evaluation prompts balanced over the six tags (prompt i has tag ``TAGS[i % 6]``).

    Held-out pairs may appear; such prompts carry ``"held_out": True`` so their accuracy can be reported apart.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [sample_prompt(generator, TAGS[i % len(TAGS)], allow_held_out=True, config=config) for i in range(n)]


def scene_for_prompt(
    prompt: PromptMeta,
    generator: torch.Generator,
    config: WorldConfig | None = None,
    allow_held_out: bool = False,
) -> Scene:
    """A scene that satisfies ``prompt`` exactly, with no extra objects (a text-to-image training pair).

    Uncoloured objects get a random colour among those allowed for their shape. Placement is re-drawn until
    :func:`harmon.world.scoring.judge_prompt` accepts the scene's own objects (positions included).

    Raises:
        ValueError: the prompt names a held-out pair while ``allow_held_out`` is False, needs more than
            ``max_objects`` objects, or cannot be satisfied within ``config.max_attempts`` attempts.
    """
    config = config or WorldConfig()
    objects = objects_for_prompt(prompt, generator, config, allow_held_out, judge_prompt)
    return Scene(objects=tuple(objects), image_size=config.image_size)


def objects_for_prompt(
    prompt: PromptMeta,
    generator: torch.Generator,
    config: WorldConfig,
    allow_held_out: bool,
    holds: Callable[[PromptMeta, list[WorldObject]], bool],
) -> list[WorldObject]:
    """Objects placed by the world's sampler that satisfy ``prompt`` as ``holds`` judges it, drawn again until they
    do (at most ``config.max_attempts`` times); the shared core of every level's ``scene_for_prompt``.

    Raises:
        ValueError: the prompt names an object outside the world or a held-out pair while ``allow_held_out`` is
            False, needs more objects than the world holds, or no draw satisfies it.
    """
    include = prompt.get("include", [])
    for e in include:
        if e["class"] not in config.shapes or (e.get("color") is not None and e["color"] not in config.palette):
            raise ValueError(f"prompt {prompt.get('prompt')!r} names an object outside the world: {e}")
        if not allow_held_out and config.is_held_out(e.get("color"), e["class"]):
            raise ValueError(f"prompt {prompt.get('prompt')!r} names held-out pair {(e['color'], e['class'])}")
    total = sum(int(e["count"]) for e in include)
    if not 1 <= total <= config.max_objects:
        raise ValueError(
            f"prompt {prompt.get('prompt')!r} needs {total} objects; the world holds 1..{config.max_objects}"
        )
    for _ in range(config.max_attempts):
        content = [
            (e.get("color") or choice(generator, config.colors_for(e["class"], allow_held_out)), e["class"])
            for e in include
            for _ in range(int(e["count"]))
        ]
        objects = place_objects(content, generator, config)
        if objects is not None and holds(prompt, objects):
            return objects
    raise ValueError(f"could not build a scene for prompt {prompt.get('prompt')!r} in {config.max_attempts} attempts")


# ---- parsing ------------------------------------------------------------------------------------------------


def _normalise(text: str) -> str:
    t = " ".join(text.strip().lower().split())
    t = t.rstrip(".").strip()
    for prefix in ("a photo of ", "an image of ", "a picture of "):
        if t.startswith(prefix):
            t = t[len(prefix) :]
            break
    return t


def parse_prompt(text: str, config: WorldConfig | None = None) -> PromptMeta:
    """GenEval metadata for a prompt in the grammar of this module (see the module docstring).

    The returned ``prompt`` field is ``text`` stripped of surrounding whitespace; for every sampled prompt,
    ``parse_prompt(p["prompt"]) == p``.

    Raises:
        ValueError: naming ``text``, when it is outside the grammar, names an unknown colour or shape, or names
            two objects that cannot be told apart ("a circle and a circle": write "two circles").
    """
    config = config or WorldConfig()
    t = _normalise(text)
    colors = "|".join(config.color_names)
    shapes = "|".join(config.shapes)
    np_re = rf"(?:an|a) (?:({colors}) )?({shapes})"
    counts = {w: i for i, w in enumerate(NUMBER_WORDS) if 2 <= i <= MAX_COUNT_WORD}
    counts |= {str(i): i for i in range(2, MAX_COUNT_WORD + 1)}
    count_re = rf"({'|'.join(counts)}) (?:({colors}) )?({'|'.join(plural(s) for s in config.shapes)})"
    rel_re = "to the left of|to the right of|left of|right of|above|below"

    def fail(why: str) -> ValueError:
        return ValueError(f"prompt {text!r} is not in the shapes-world grammar: {why}")

    def distinct(a: dict[str, Any], b: dict[str, Any]) -> None:
        if a["class"] == b["class"] and (a.get("color") is None or b.get("color") is None or a["color"] == b["color"]):
            raise fail("two objects of the same shape must have two different colours")

    if m := re.fullmatch(np_re, t):
        color, shape = m.groups()
        return make_prompt("colors" if color else "single_object", [_entry(shape, color=color)], config, text.strip())
    if m := re.fullmatch(count_re, t):
        word, color, shapes_word = m.groups()
        shape = shapes_word[:-1]
        return make_prompt("counting", [_entry(shape, counts[word], color)], config, text.strip())
    if m := re.fullmatch(rf"{np_re} and {np_re}", t):
        ca, sa, cb, sb = m.groups()
        a, b = _entry(sa, color=ca), _entry(sb, color=cb)
        distinct(a, b)
        tag = "two_object" if ca is None and cb is None else "color_attr"
        return make_prompt(tag, [a, b], config, text.strip())
    if m := re.fullmatch(rf"{np_re} ({rel_re}) {np_re}", t):
        ca, sa, rel_text, cb, sb = m.groups()
        rel = rel_text.removeprefix("to the ")
        ref, obj = _entry(sb, color=cb), _entry(sa, color=ca, position=(rel, 0))
        distinct(ref, obj)
        return make_prompt("position", [ref, obj], config, text.strip())
    raise fail(
        "expected 'a [colour] shape', '<two..ten> shapes', 'a [colour] shape and a [colour] shape' or "
        f"'a [colour] shape <relation> a [colour] shape' with colours {config.color_names} and shapes {config.shapes}"
    )


# ---- descriptions and captions ------------------------------------------------------------------------------


def _left_to_right(objects: tuple[WorldObject, ...] | list[WorldObject]) -> list[WorldObject]:
    return sorted(objects, key=lambda o: (o.center[0], o.center[1]))


def describe_scene(scene: Scene) -> str:
    """Canonical full description: every object, left to right (ties top to bottom),
    e.g. "a red circle, a blue square and a green triangle"."""
    return join_phrases([noun_phrase(o.shape, o.color) for o in _left_to_right(scene.objects)])


def true_captions(scene: Scene, config: WorldConfig | None = None) -> dict[str, list[PromptMeta]]:
    """Every prompt of the grammar (in the sampled styles) that :func:`judge_prompt` accepts on ``scene``'s own
    objects, grouped by tag. Held-out pairs are named only if the scene contains them."""
    config = config or WorldConfig()
    objs = list(scene.objects)
    present = [s for s in config.shapes if scene.count(shape=s)]
    # a shape can carry a colour in a caption only if all its objects share that colour (strict judge)
    sole_color: dict[str, str] = {}
    for s in present:
        colors_of_s = {o.color for o in objs if o.shape == s}
        if len(colors_of_s) == 1:
            sole_color[s] = colors_of_s.pop()
    cands: dict[str, list[PromptMeta]] = {tag: [] for tag in TAGS}
    for s in present:
        cands["single_object"].append(make_prompt("single_object", [_entry(s)], config))
        if s in sole_color:
            cands["colors"].append(make_prompt("colors", [_entry(s, color=sole_color[s])], config))
        if 2 <= scene.count(shape=s) <= min(4, config.max_objects):
            cands["counting"].append(make_prompt("counting", [_entry(s, scene.count(shape=s))], config))
    for a in present:
        for b in present:
            if a == b:
                continue
            cands["two_object"].append(make_prompt("two_object", [_entry(a), _entry(b)], config))
            if a in sole_color and b in sole_color:
                ea, eb = _entry(a, color=sole_color[a]), _entry(b, color=sole_color[b])
                cands["color_attr"].append(make_prompt("color_attr", [ea, eb], config))
                for rel in RELATIONS:
                    obj = _entry(a, color=sole_color[a], position=(rel, 0))
                    cands["position"].append(make_prompt("position", [eb, obj], config))
    return {tag: [p for p in ps if judge_prompt(p, objs)] for tag, ps in cands.items()}


def caption_scene(scene: Scene, generator: torch.Generator, config: WorldConfig | None = None) -> str:
    """One random TRUE prompt-style caption of ``scene`` (for captioning training): a tag is drawn uniformly
    among the tags with at least one true caption, then a caption uniformly within it."""
    cands = true_captions(scene, config)
    tags = [tag for tag in TAGS if cands[tag]]
    if not tags:
        raise ValueError("scene has no objects to caption")
    return choice(generator, cands[choice(generator, tags)])["prompt"]
