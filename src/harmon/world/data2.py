"""Training records of world v2: record ``i`` of a task is a pure function of (seed, i, options).

The tasks are those of :mod:`harmon.world.data` (text2image, caption, qa, text) and edits (:func:`edit_record_v2`,
records of :class:`harmon.data.Task` IMAGE_EDIT). Options:

    level       "grid" (today's world), "free" (:func:`harmon.world.free.free_world`) or "mixed": each record draws
                the free level with probability FREE_SHARE, else the grid level, so a model trained on it keeps
                the grid world's skills.
    phrasings   "canonical": today's templates (grid level only; the records are exactly
                :func:`harmon.world.data.shapes_record`'s); "varied": the grammar's seen split
                (:mod:`harmon.world.grammar`). Training never draws a held-out phrasing or a held-out pair.
    antialiased share of images drawn by the second, anti-aliasing renderer (:mod:`harmon.world.render2`), so a
                model does not learn one rasteriser's edges.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from harmon.prompts import (
    BRIEF_CAPTION_INSTRUCTIONS,
    DETAILED_CAPTION_INSTRUCTIONS,
    GENERATE_PREFIX,
    UNCONDITIONAL_PROMPT,
    chat,
)
from harmon.world.data import DESCRIBE_FRACTION, TASKS, chat_text, sample_tag, shapes_record
from harmon.world.edit_grammar import EDIT_TYPES
from harmon.world.edits import edit_type_probabilities, sample_edit
from harmon.world.free import level_scene_for_prompt, level_world, sample_level_scene
from harmon.world.language import phrase_description, sample_prompt_v2
from harmon.world.planning import PLAN_PREFIX, check_order, plan_turns
from harmon.world.prompts import describe_scene
from harmon.world.questions2 import sample_questions_v2
from harmon.world.render import render
from harmon.world.render2 import render2
from harmon.world.sampling import categorical, choice
from harmon.world.scene import Scene, WorldConfig

RECORD_LEVELS = ("grid", "free", "mixed")
PHRASINGS = ("canonical", "varied")
FREE_SHARE = 0.75  # "mixed": share of free-level records; the rest keep the grid world in view


def check_options(level: str, phrasings: str, antialiased: float = 0.0) -> None:
    """Raise ValueError naming a bad ``level`` / ``phrasings`` / ``antialiased`` option (or combination)."""
    if level not in RECORD_LEVELS:
        raise ValueError(f"level must be one of {RECORD_LEVELS}, got {level!r}")
    if phrasings not in PHRASINGS:
        raise ValueError(f"phrasings must be one of {PHRASINGS}, got {phrasings!r}")
    if phrasings == "canonical" and level != "grid":
        raise ValueError(f"canonical phrasings exist for the grid level only; level {level!r} needs phrasings 'varied'")
    if not 0.0 <= antialiased <= 1.0:
        raise ValueError(f"antialiased must be in [0, 1], got {antialiased}")
    if phrasings == "canonical" and antialiased > 0:
        raise ValueError("antialiased images come with phrasings 'varied'; canonical records are today's exactly")


VARIED_TASKS = ("text2image", "caption", "qa", "text", "plan")  # the tasks with records in the grammar's phrasings
EDIT_SALT = 17  # the edit records' stream, apart from the other v2 tasks' (salts 11 and up)


def _generator(seed: int, task: str, index: int) -> torch.Generator:
    salt = EDIT_SALT if task == "edit" else TASKS.index(task) + 11  # apart from the canonical records' (salts 1-4)
    return torch.Generator().manual_seed(((seed * 1_000_003 + index) * 16 + salt) % (2**63 - 1))


def _check_task(task: str, level: str, phrasings: str, antialiased: float, order: str) -> None:
    check_options(level, phrasings, antialiased)
    if task not in TASKS:
        raise ValueError(f"unknown shapes task {task!r}; known: {TASKS}")
    check_order(task, order)
    if phrasings != "canonical" and task not in VARIED_TASKS:
        raise ValueError(f"task {task!r} exists in canonical phrasings only; varied records draw {VARIED_TASKS}")
    if phrasings != "canonical" and task == "plan" and level != "grid":
        raise ValueError(f"plan records name grid quadrants: they need level 'grid', got {level!r}")


def record_v2(
    task: str,
    index: int,
    seed: int = 0,
    image_size: int = 64,
    level: str = "free",
    phrasings: str = "varied",
    antialiased: float = 0.0,
    max_turns: int = 6,
    tag_weights: Mapping[str, float] | None = None,
    order: str = "reading",
) -> dict[str, Any]:
    """Record ``index`` of ``task`` in the data layer's record format (see the module docstring for the options;
    ``tag_weights``: relative weights of the GenEval tags of text2image and plan prompts, None for uniform;
    ``order``: a plan's objects, :data:`harmon.world.planning.ORDERS`).

    A varied "plan" record asks for the layout of a prompt in the grammar's seen phrasings; its answer is the same
    placed description a canonical plan gives (the layout language has one wording), so it exists on the grid level
    only, whose quadrants the description names."""
    _check_task(task, level, phrasings, antialiased, order)
    if phrasings == "canonical":
        world = WorldConfig(image_size=image_size)
        return shapes_record(
            task, index, seed, world, max_turns, tag_weights, shape_questions=task == "qa", order=order
        )
    g = _generator(seed, task, index)
    if level == "mixed":
        level = "free" if float(torch.rand((), generator=g)) < FREE_SHARE else "grid"
    world = level_world(level, image_size)

    def draw(scene: Scene):
        use2 = antialiased > 0 and float(torch.rand((), generator=g)) < antialiased
        return render2(scene, world) if use2 else render(scene, world)

    if task == "text2image":
        scene, caption = _text2image(g, world, tag_weights)
        return {"kind": "text2image", "image": draw(scene), "caption": caption}
    if task == "text":
        return {"kind": "image2text", "image": None, "conversation": _text_turns(g, world)}
    if task == "plan":
        tag = sample_tag(g, tag_weights)
        prompt = sample_prompt_v2(g, tag, world)
        turns = plan_turns(prompt, lambda: level_scene_for_prompt(prompt, g, world), g, order)
        return {"kind": "image2text", "image": None, "conversation": turns}
    scene = sample_level_scene(g, world)
    if task == "caption":
        instruction = choice(g, DETAILED_CAPTION_INSTRUCTIONS + BRIEF_CAPTION_INSTRUCTIONS)
        turns = [
            {"role": "user", "content": "<image>\n" + instruction},
            {"role": "assistant", "content": describe_scene(scene)},
        ]
        return {"kind": "image2text", "image": draw(scene), "conversation": turns}
    questions = sample_questions_v2(scene, g, world)
    order = torch.randperm(len(questions), generator=g).tolist()[:max_turns]
    turns = []
    for k, qi in enumerate(order):
        turns.append({"role": "user", "content": ("<image>\n" if k == 0 else "") + questions[qi]["question"]})
        turns.append({"role": "assistant", "content": questions[qi]["answer"]})
    return {"kind": "image2text", "image": draw(scene), "conversation": turns}


def edit_record_v2(
    index: int,
    seed: int = 0,
    image_size: int = 64,
    level: str = "free",
    phrasings: str = "varied",
    antialiased: float = 0.0,
    edit_weights: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Edit record ``index``: ``{"kind": "image_edit", "source": PIL image, "instruction": str, "target": PIL
    image}``, the layout :class:`harmon.data.ImageConditionedProcessor` reads. The edit type is drawn from
    ``edit_weights`` (relative weights per :data:`harmon.world.edit_grammar.EDIT_TYPES`, None for uniform), the edit
    by :func:`harmon.world.edits.sample_edit` in seen phrasings without held-out pairs; one renderer draws both
    images (anti-aliased with probability ``antialiased``)."""
    check_options(level, phrasings, antialiased)
    if phrasings == "canonical":
        raise ValueError("edit records have no canonical phrasing; set phrasings 'varied'")
    probs = edit_type_probabilities(edit_weights)
    g = _generator(seed, "edit", index)
    if level == "mixed":
        level = "free" if float(torch.rand((), generator=g)) < FREE_SHARE else "grid"
    world = level_world(level, image_size)
    edit = sample_edit(g, world, EDIT_TYPES[categorical(g, probs)])
    draw = render2 if antialiased > 0 and float(torch.rand((), generator=g)) < antialiased else render
    source, target = draw(edit.source, world), draw(edit.target, world)
    return {"kind": "image_edit", "source": source, "instruction": edit.instruction, "target": target}


def _text2image(g: torch.Generator, world: WorldConfig, tag_weights: Mapping[str, float] | None) -> tuple[Scene, str]:
    """(scene, caption): a whole-scene description (DESCRIBE_FRACTION of the time) or a GenEval-category prompt."""
    if float(torch.rand((), generator=g)) < DESCRIBE_FRACTION:
        scene = sample_level_scene(g, world)
        return scene, phrase_description(scene, g)
    tag = sample_tag(g, tag_weights)
    prompt = sample_prompt_v2(g, tag, world)
    return level_scene_for_prompt(prompt, g, world), prompt["prompt"]


TEXT_PREFIX = "Describe a scene for: "


def _text_turns(g: torch.Generator, world: WorldConfig) -> list[dict[str, str]]:
    """Text without an image for the language model: a prompt and a description of a scene it asks for, or a
    question about an (unseen) scene and its answer."""
    if float(torch.rand((), generator=g)) < 0.5:
        prompt = sample_prompt_v2(g, None, world)
        drawn = level_scene_for_prompt(prompt, g, world)
        return [
            {"role": "user", "content": TEXT_PREFIX + prompt["prompt"]},
            {"role": "assistant", "content": describe_scene(drawn)},
        ]
    q = choice(g, sample_questions_v2(sample_level_scene(g, world), g, world))
    return [{"role": "user", "content": q["question"]}, {"role": "assistant", "content": q["answer"]}]


def texts_v2(record: dict[str, Any]) -> list[str]:
    """The phrased texts of a record (captions, questions, prompts of text records), without chat markup: what the
    held-out-phrasing guarantee is checked on."""
    if record["kind"] == "text2image":
        return [record["caption"]]
    if record["kind"] == "image_edit":
        return [record["instruction"]]
    out = []
    for turn in record["conversation"]:
        if turn["role"] == "user":
            out.append(turn["content"].removeprefix("<image>\n").removeprefix(TEXT_PREFIX).removeprefix(PLAN_PREFIX))
    return out


def corpus_v2(n: int, seed: int = 0, image_size: int = 64) -> Iterator[str]:
    """Every kind of text a world-v2 model reads or writes, for training its tokenizer: the chat prompts, then the
    texts of ``n`` records each of text2image, qa and text (mixed levels, seen phrasings)."""
    yield chat(UNCONDITIONAL_PROMPT)
    for instruction in DETAILED_CAPTION_INSTRUCTIONS + BRIEF_CAPTION_INSTRUCTIONS:
        yield chat("<image>\n" + instruction)
    for i in range(n):
        for task in ("text2image", "qa", "text"):
            rec = record_v2(task, i, seed, image_size, level="mixed")
            if rec["kind"] == "text2image":
                yield chat_text([{"role": "user", "content": GENERATE_PREFIX + rec["caption"]}])
            else:
                yield chat_text(rec["conversation"])
