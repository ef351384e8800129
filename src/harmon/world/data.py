"""Training records from the shapes world: record ``i`` of a task is a pure function of (seed, i).

Tasks:
    text2image  a prompt (GenEval categories, or a true caption of a random scene) and an image drawing it exactly
    caption     an image and its canonical description, asked with one of the caption instructions
    qa          an image and a multi-turn conversation of questions about it (POPE existence, counting, colour,
                position, description) with exact answers
    text        text only: the world's sentences without an image, for pre-training the language model (stage 0)
    where       an image and a conversation of grounding questions, where a named object is and what a named
                quadrant holds (:func:`harmon.world.questions.where_questions`)
    reasoned    an image and a position question answered with both objects' places before the verdict
                (:func:`harmon.world.questions.reasoned`)
    placed      text-to-image: a grid scene's placed description, every object with its quadrant
                (:func:`harmon.world.planning.placed_description`), and the scene drawn
    plan        text only: "Plan the layout: <prompt>" answered with the placed description of a scene that
                satisfies the prompt (:mod:`harmon.world.planning`)
    layout      an image and "Describe the layout.", answered with its placed description
                (:mod:`harmon.world.layout_edits`)
    layout_edit text only: a placed description and an edit's instruction, answered with the edited layout
                (:mod:`harmon.world.layout_edits`); layout_edit_named: the answer first restates the clauses of the
                objects the instruction names
Held-out (colour, shape) pairs never appear.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from harmon.prompts import BRIEF_CAPTION_INSTRUCTIONS, DETAILED_CAPTION_INSTRUCTIONS, GENERATE_PREFIX
from harmon.world.layout_edits import layout_edit_record, layout_record
from harmon.world.planning import check_order, first_placed, placed_description, plan_turns, shuffled
from harmon.world.prompts import caption_scene, describe_scene, sample_prompt, scene_for_prompt
from harmon.world.questions import position_question, reasoned, sample_questions, where_questions
from harmon.world.render import render
from harmon.world.sampling import categorical, choice, sample_scene
from harmon.world.scene import WorldConfig
from harmon.world.scoring import TAGS

TASKS = (
    "text2image",
    "caption",
    "qa",
    "text",
    "where",
    "reasoned",
    "placed",
    "plan",
    "layout",
    "layout_edit",
    "layout_edit_named",
)
REASONED_TRIES = 1000  # scenes drawn for one "reasoned" record (about 44 % of grid scenes qualify)
DESCRIBE_FRACTION = 0.3  # text2image captions that describe a whole random scene instead of one category prompt


def _generator(seed: int, task: str, index: int) -> torch.Generator:
    salt = TASKS.index(task) + 1
    return torch.Generator().manual_seed(((seed * 1_000_003 + index) * 8 + salt) % (2**63 - 1))


def _instruction(generator: torch.Generator) -> str:
    return choice(generator, DETAILED_CAPTION_INSTRUCTIONS + BRIEF_CAPTION_INSTRUCTIONS)


def sample_tag(g: torch.Generator, tag_weights: Mapping[str, float] | None) -> str | None:
    """A GenEval tag drawn from ``tag_weights`` (see :func:`tag_probabilities`), or None (uniform, left to the prompt
    sampler) when no weights are given."""
    return None if tag_weights is None else TAGS[categorical(g, tag_probabilities(tag_weights))]


def tag_probabilities(tag_weights: Mapping[str, float]) -> np.ndarray:
    """Normalised probabilities over :data:`TAGS` from relative weights (tags not named weigh 0).

    Raises:
        ValueError: an unknown tag, a negative or non-finite weight, or weights that sum to 0.
    """
    unknown = sorted(set(tag_weights) - set(TAGS))
    if unknown:
        raise ValueError(f"unknown prompt tags {unknown}; known: {TAGS}")
    w = np.array([float(tag_weights.get(t, 0.0)) for t in TAGS], dtype=np.float64)
    if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"tag weights must be finite, >= 0 and not all 0, got {dict(tag_weights)}")
    return w / w.sum()


def shapes_record(
    task: str,
    index: int,
    seed: int = 0,
    config: WorldConfig | None = None,
    max_turns: int = 6,
    tag_weights: Mapping[str, float] | None = None,
    shape_questions: bool = False,
    order: str = "reading",
) -> dict[str, Any]:
    """Record ``index`` of ``task`` (see the module docstring), in the data layer's record format.

    ``order`` (placed and plan; :data:`harmon.world.planning.ORDERS`): the order a placed description lists its
    objects in: "reading" (the default), "any" (drawn from the record's generator after the scene) or "prompt"
    (plan only: the order the prompt names them).

    ``shape_questions`` (qa only): the conversation's questions are drawn from a list that also holds a bare-shape
    existence pair ("Is there a circle in the image?", POPE's template; see
    :func:`harmon.world.questions.shape_existence_pair`).

    ``tag_weights`` (text2image and plan): relative weights of the GenEval tags of the prompt-style captions, e.g.
    ``{"position": 2, "color_attr": 2, ...}``; None draws the six tags uniformly. Whole-scene captions keep their
    share (``DESCRIBE_FRACTION``).
    """
    config = config or WorldConfig()
    check_order(task, order)
    g = _generator(seed, task, index)
    if task == "text2image":
        return _text2image_record(g, config, tag_weights)
    if task == "caption":
        return _caption_record(g, config)
    if task == "qa":
        return _qa_record(g, config, max_turns, shape_questions)
    if task == "text":
        return _text_record(g, config)
    if task == "where":
        return _where_record(g, config, max_turns)
    if task == "reasoned":
        return _reasoned_record(g, config)
    if task == "placed":
        scene, caption = first_placed(lambda: sample_scene(g, config))
        if order == "any":
            caption = placed_description(scene, shuffled(scene.objects, g))
        return {"kind": "text2image", "image": render(scene, config), "caption": caption}
    if task == "plan":
        return _plan_record(g, config, tag_weights, order)
    if task == "layout":
        return layout_record(g, config)
    if task in ("layout_edit", "layout_edit_named"):
        return layout_edit_record(g, config, named=task == "layout_edit_named")
    raise ValueError(f"unknown shapes task {task!r}; known: {TASKS}")


def _text2image_record(
    g: torch.Generator, config: WorldConfig, tag_weights: Mapping[str, float] | None
) -> dict[str, Any]:
    if float(torch.rand((), generator=g)) < DESCRIBE_FRACTION:
        scene = sample_scene(g, config)
        caption = describe_scene(scene) if float(torch.rand((), generator=g)) < 0.5 else caption_scene(scene, g, config)
    else:
        tag = sample_tag(g, tag_weights)
        prompt = sample_prompt(g, tag, config=config)
        scene = scene_for_prompt(prompt, g, config)
        caption = prompt["prompt"]
    return {"kind": "text2image", "image": render(scene, config), "caption": caption}


def _caption_record(g: torch.Generator, config: WorldConfig) -> dict[str, Any]:
    scene = sample_scene(g, config)
    return {
        "kind": "image2text",
        "image": render(scene, config),
        "conversation": [
            {"role": "user", "content": "<image>\n" + _instruction(g)},
            {"role": "assistant", "content": describe_scene(scene)},
        ],
    }


def _qa_record(g: torch.Generator, config: WorldConfig, max_turns: int, shape_questions: bool) -> dict[str, Any]:
    scene = sample_scene(g, config)
    questions = sample_questions(scene, g, config, shape_questions=shape_questions)
    return {"kind": "image2text", "image": render(scene, config), "conversation": _turns(questions, g, max_turns)}


def _turns(questions: list[dict[str, Any]], g: torch.Generator, max_turns: int) -> list[dict[str, str]]:
    """Up to ``max_turns`` of ``questions`` in an order drawn from ``g``, as a conversation about one image."""
    order = torch.randperm(len(questions), generator=g).tolist()[:max_turns]
    turns: list[dict[str, str]] = []
    for k, qi in enumerate(order):
        turns.append({"role": "user", "content": ("<image>\n" if k == 0 else "") + questions[qi]["question"]})
        turns.append({"role": "assistant", "content": questions[qi]["answer"]})
    return turns


def _where_record(g: torch.Generator, config: WorldConfig, max_turns: int) -> dict[str, Any]:
    scene = sample_scene(g, config)
    conversation = _turns(where_questions(scene), g, max_turns)
    return {"kind": "image2text", "image": render(scene, config), "conversation": conversation}


def _reasoned_record(g: torch.Generator, config: WorldConfig) -> dict[str, Any]:
    for _ in range(REASONED_TRIES):  # a scene with a position question whose objects are clear of the middle lines
        scene = sample_scene(g, config)
        q = position_question(scene, g)
        q = reasoned(q, scene) if q is not None else None
        if q is not None:
            break
    else:
        raise ValueError(f"no scene of this world config held a position question in {REASONED_TRIES} draws")
    turns = [{"role": "user", "content": "<image>\n" + q["question"]}, {"role": "assistant", "content": q["answer"]}]
    return {"kind": "image2text", "image": render(scene, config), "conversation": turns}


def _plan_record(
    g: torch.Generator, config: WorldConfig, tag_weights: Mapping[str, float] | None, order: str
) -> dict[str, Any]:
    tag = sample_tag(g, tag_weights)
    prompt = sample_prompt(g, tag, config=config)
    turns = plan_turns(prompt, lambda: scene_for_prompt(prompt, g, config), g, order)
    return {"kind": "image2text", "image": None, "conversation": turns}


def _text_record(g: torch.Generator, config: WorldConfig) -> dict[str, Any]:
    scene = sample_scene(g, config)
    if float(torch.rand((), generator=g)) < 0.5:
        prompt = sample_prompt(g, config=config)
        drawn = scene_for_prompt(prompt, g, config)  # a scene the prompt describes exactly
        turns = [
            {"role": "user", "content": "Describe a scene for: " + prompt["prompt"]},
            {"role": "assistant", "content": describe_scene(drawn)},
        ]
    else:
        q = choice(g, sample_questions(scene, g, config))
        turns = [{"role": "user", "content": q["question"]}, {"role": "assistant", "content": q["answer"]}]
    return {"kind": "image2text", "image": None, "conversation": turns}


def corpus(n: int, seed: int = 0, config: WorldConfig | None = None) -> Iterator[str]:
    """Every kind of text the model will read or write, for training its tokenizer."""
    from harmon.prompts import UNCONDITIONAL_PROMPT, chat

    yield chat(UNCONDITIONAL_PROMPT)
    for instruction in DETAILED_CAPTION_INSTRUCTIONS + BRIEF_CAPTION_INSTRUCTIONS:
        yield chat("<image>\n" + instruction)
    for i in range(n):
        for task in ("text2image", "qa"):
            rec = shapes_record_text(task, i, seed, config)
            yield rec


def shapes_record_text(task: str, index: int, seed: int = 0, config: WorldConfig | None = None) -> str:
    """The text of a record (no image rendering needed beyond what the record builds)."""
    rec = shapes_record(task, index, seed, config)
    if rec["kind"] == "text2image":
        return chat_text([{"role": "user", "content": GENERATE_PREFIX + rec["caption"]}])
    return chat_text(rec["conversation"])


def chat_text(turns: list[dict[str, str]]) -> str:
    return "".join(f"<|im_start|>{t['role']}\n{t['content']}<|im_end|>\n" for t in turns)
