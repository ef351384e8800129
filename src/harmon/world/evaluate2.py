"""``harmon eval shapes --level grid|free|all``: world v2's report, level x phrasing x pair, with chance levels.

For each level and each phrasing split (seen, held-out) the report draws its own fresh prompts
(:func:`harmon.world.language.sample_eval_prompts_v2`) and questions
(:func:`harmon.world.questions2.sample_eval_questions_v2`); held-out pairs are flagged and reported apart. Images of
the grid level are read by the grid world's detector (:func:`harmon.world.detection.detect_objects`), those of the
free level by the background-estimating one (:func:`harmon.world.detect2.detect_objects_v2`); GenEval's rules judge
both.

Chance levels:
    position (generation)   how often the asked relation holds between two objects placed at random by the level's
                            own sampler (:func:`harmon.world.free.position_chance`): what a generator drawing the
                            right objects at random places scores, given they are drawn right;
    colour attribution      1/2: of the images showing both shapes in the two asked colours, a generator that
                            assigns the colours at random binds them right half of the time;
    position questions      1/2 (answers are balanced Yes/No);
    colour questions        the mean, over the questions, of 1 / (colours in the scene): naming a colour of the
                            image at random, the binding error a model makes when it sees colours but not which
                            object wears which.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from harmon.eval.metrics import binary_metrics, pct, pope_answer, table
from harmon.world.detect2 import detect_objects_v2
from harmon.world.detection import detect_objects
from harmon.world.free import LEVELS, level_world, position_chance
from harmon.world.grammar import SPLITS
from harmon.world.language import sample_eval_prompts_v2
from harmon.world.prompts import OPPOSITE
from harmon.world.questions2 import sample_eval_questions_v2
from harmon.world.render import render
from harmon.world.scene import WorldConfig
from harmon.world.scoring import POPE_SPLITS, QUESTION_TYPES, TAGS, answer_correct, judge_prompt

SPLIT_NAMES = {"seen": "seen phrasing", "held_out": "held-out phrasing"}


def _seed(seed: int, level: str, split: str, stream: int) -> torch.Generator:
    """A generator per (level, split, stream) apart from the default report's streams (seed + 0..3)."""
    offset = 100 * (1 + 2 * LEVELS.index(level) + SPLITS.index(split)) + stream
    return torch.Generator().manual_seed(seed + offset)


def detector_for(level: str):
    """The detector that reads images of ``level``."""
    return detect_objects_v2 if level == "free" else detect_objects


def binding_outcomes(prompt: dict[str, Any], detections) -> tuple[bool, bool] | None:
    """(asked binding holds, opposite binding holds) when the prompt's objects are drawn right up to the binding;
    None otherwise or for other tags. Position: the objects are drawn right (judge without the relation) and the
    asked / opposite relation holds. Colour attribution: both shapes are drawn in the two asked colours in some
    assignment, bound right / swapped (prompts naming one colour twice bind nothing: None)."""
    if prompt["tag"] == "position":
        plain = copy.deepcopy(prompt)
        rel = plain["include"][1].pop("position")
        if not judge_prompt(plain, detections):
            return None
        flipped = copy.deepcopy(prompt)
        flipped["include"][1]["position"][0] = OPPOSITE[rel[0]]
        return judge_prompt(prompt, detections), judge_prompt(flipped, detections)
    if prompt["tag"] == "color_attr":
        swapped = copy.deepcopy(prompt)
        a, b = swapped["include"]
        if a["color"] == b["color"]:
            return None  # one colour for both: nothing to bind
        a["color"], b["color"] = b["color"], a["color"]
        right, wrong = judge_prompt(prompt, detections), judge_prompt(swapped, detections)
        return (right, wrong) if right or wrong else None
    return None


def _rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def generation_split(pipe, level: str, split: str, n: int, seed: int, batch_size: int = 16, **settings) -> dict:
    """Generate one image per fresh prompt of ``level`` phrased in ``split`` and score them (GenEval rules)."""
    world = level_world(level, settings.get("image_size") or pipe.config.generation.image_size)
    prompts = sample_eval_prompts_v2(n, _seed(seed, level, split, 0), world, split)
    generator = _seed(seed, level, split, 1)
    detect = detector_for(level)
    correct, bindings = [], {"position": [], "color_attr": []}
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        images = pipe.generate([p["prompt"] for p in chunk], generator=generator, **settings)
        for p, image in zip(chunk, images):
            found = detect(image, world)
            correct.append(judge_prompt(p, found))
            outcome = binding_outcomes(p, found)
            if outcome is not None:
                bindings[p["tag"]].append(outcome)
    return score_generation_v2(prompts, correct, bindings, world)


def score_generation_v2(prompts: list[dict], correct: list[bool], bindings: dict, world: WorldConfig) -> dict:
    """Per-tag accuracy, overall (mean of tags), seen / held-out pairs, and the binding outcomes with chance."""
    accuracy = {t: _rate([c for p, c in zip(prompts, correct) if p["tag"] == t]) for t in TAGS}
    count = {t: sum(p["tag"] == t for p in prompts) for t in TAGS}
    present = [a for a in accuracy.values() if a is not None]
    held = [c for p, c in zip(prompts, correct) if p.get("held_out")]
    seen = [c for p, c in zip(prompts, correct) if not p.get("held_out")]
    binding = {
        tag: {"drawn": len(o), "right": _rate([r for r, _ in o]), "opposite": _rate([w for _, w in o])}
        for tag, o in bindings.items()
    }
    binding["position"]["chance"] = position_chance(world)
    binding["color_attr"]["chance"] = 0.5
    return {
        "accuracy": accuracy,
        "count": count,
        "overall": sum(present) / len(present) if present else None,
        "seen_pairs": _rate(seen),
        "seen_pairs_count": len(seen),
        "held_out_pairs": _rate(held),
        "held_out_pairs_count": len(held),
        "binding": binding,
    }


def understanding_split(pipe, level: str, split: str, n: int, seed: int, max_new_tokens: int = 48) -> dict:
    """Greedy answers to fresh questions of ``level`` phrased in ``split``, scored exactly."""
    world = level_world(level, pipe.config.generation.understanding_image_size)
    items = sample_eval_questions_v2(n, _seed(seed, level, split, 2), world, split)
    questions = [q["question"] for _, q in items]
    answers = pipe.describe_many([render(s, world) for s, _ in items], questions, max_new_tokens=max_new_tokens)
    return score_understanding_v2(items, answers, world)


def score_understanding_v2(items: list, answers: list[str], world: WorldConfig) -> dict:
    """Accuracy per question type, POPE metrics per split, seen / held-out pairs, and chance for position and colour."""
    questions = [q for _, q in items]
    correct = [answer_correct(q, a, world) for q, a in zip(questions, answers)]
    accuracy = {t: _rate([c for q, c in zip(questions, correct) if q["type"] == t]) for t in QUESTION_TYPES}
    count = {t: sum(q["type"] == t for q in questions) for t in QUESTION_TYPES}
    pope = {}
    for split in POPE_SPLITS:
        chosen = [(q, a) for q, a in zip(questions, answers) if q["type"] == "existence" and q.get("split") == split]
        if chosen:
            pope[split] = binary_metrics([q["answer"].lower() for q, _ in chosen], [pope_answer(a) for _, a in chosen])
    colors = [1 / len({o.color for o in s.objects}) for s, q in items if q["type"] == "color"]
    present = [a for a in accuracy.values() if a is not None]
    return {
        "accuracy": accuracy,
        "count": count,
        "pope": pope,
        "overall": sum(present) / len(present) if present else None,
        "seen_pairs": _rate([c for q, c in zip(questions, correct) if not q["held_out_pair"]]),
        "held_out_pairs": _rate([c for q, c in zip(questions, correct) if q["held_out_pair"]]),
        "held_out_pairs_count": sum(q["held_out_pair"] for q in questions),
        "chance": {"position": 0.5, "color": sum(colors) / len(colors) if colors else None},
    }


def evaluate_levels(
    pipe,
    levels: tuple[str, ...],
    n_prompts: int = 504,
    n_questions: int = 1512,
    seed: int = 0,
    splits: tuple[str, ...] = SPLITS,
    **settings: Any,
) -> dict[str, Any]:
    """The v2 report's numbers: ``{"levels": {level: {split: {"generation": ..., "understanding": ...}}}}``, for
    ``n_prompts`` prompts and ``n_questions`` questions of each (level, phrasing split)."""
    out: dict[str, Any] = {"seed": seed, "n_prompts": n_prompts, "n_questions": n_questions, "levels": {}}
    for level in levels:
        out["levels"][level] = {}
        for split in splits:
            entry: dict[str, Any] = {}
            if n_prompts:
                entry["generation"] = generation_split(pipe, level, split, n_prompts, seed, **settings)
            if n_questions:
                entry["understanding"] = understanding_split(pipe, level, split, n_questions, seed)
            out["levels"][level][split] = entry
    return out


def _cells(values: list[tuple[float | None, int]]) -> list[str]:
    return [c for v, n in values for c in (pct(v) if v is not None else "-", str(n))]


def _generation_tables(level: str, gens: list[dict], head: list[str]) -> list[str]:
    def chance(tag: str) -> str:
        return pct(gens[0]["binding"]["position"]["chance"]) if tag == "position" else "-"

    rows = [[t, *_cells([(g["accuracy"][t], g["count"][t]) for g in gens]), chance(t)] for t in TAGS]
    rows.append(["overall (mean of tags)", *_cells([(g["overall"], sum(g["count"].values())) for g in gens]), "-"])
    rows.append(["seen pairs", *_cells([(g["seen_pairs"], g["seen_pairs_count"]) for g in gens]), "-"])
    rows.append(["held-out pairs", *_cells([(g["held_out_pairs"], g["held_out_pairs_count"]) for g in gens]), "-"])
    out = [f"Generation, level {level} (GenEval rules, %)\n" + table(["tag", *head], rows)]
    rows = []
    for tag, name in (("position", "position"), ("color_attr", "colour attribution")):
        for key, what in (("right", "asked binding holds"), ("opposite", "opposite holds")):
            cells = _cells([(g["binding"][tag][key], g["binding"][tag]["drawn"]) for g in gens])
            rows.append([f"{name}: {what}", *cells, pct(gens[0]["binding"][tag]["chance"])])
    title = f"Binding, level {level} (images whose named objects are drawn right, %)\n"
    return [*out, title + table(["figure", *head], rows)]


def _understanding_table(level: str, unds: list[dict], head: list[str]) -> str:
    color_chance = unds[0]["chance"]["color"]
    chance = {"position": pct(0.5), "color": pct(color_chance) if color_chance is not None else "-"}
    rows = [[t, *_cells([(u["accuracy"][t], u["count"][t]) for u in unds]), chance.get(t, "-")] for t in QUESTION_TYPES]
    for split in POPE_SPLITS:
        metrics = [u["pope"].get(split, {}) for u in unds]
        rows.append([f"POPE F1, {split}", *_cells([(m.get("f1"), m.get("count", 0)) for m in metrics]), "-"])
    total = [sum(u["count"].values()) for u in unds]
    rows.append(["overall (mean of types)", *_cells([(u["overall"], n) for u, n in zip(unds, total)]), "-"])
    seen = [(u["seen_pairs"], n - u["held_out_pairs_count"]) for u, n in zip(unds, total)]
    rows.append(["seen pairs", *_cells(seen), "-"])
    rows.append(["held-out pairs", *_cells([(u["held_out_pairs"], u["held_out_pairs_count"]) for u in unds]), "-"])
    return f"Understanding, level {level} (%)\n" + table(["question type", *head], rows)


def format_level(level: str, result: dict[str, dict]) -> str:
    """Markdown tables of one level: generation, binding and understanding, one column pair per phrasing split."""
    splits = [s for s in SPLITS if s in result]
    head = [h for s in splits for h in (SPLIT_NAMES[s], "n")] + ["chance"]
    parts = []
    gens = [result[s].get("generation") for s in splits]
    if gens and all(gens):
        parts += _generation_tables(level, gens, head)
    unds = [result[s].get("understanding") for s in splits]
    if unds and all(unds):
        parts.append(_understanding_table(level, unds, head))
    return "\n\n".join(parts)


def format_levels(result: dict[str, Any]) -> str:
    """Every level's tables (:func:`format_level`)."""
    return "\n\n".join(format_level(level, r) for level, r in result["levels"].items())
