"""Exact, strict scorers for the shapes world: GenEval's metadata judge on detected objects, and POPE-style
scoring of free-text answers.

Judging (:func:`judge_prompt`): GenEval's rules on GenEval metadata, with GenEval's position rule
(:func:`harmon.eval.metrics.relation`). GenEval keeps the ``count`` most confident detections of a class; our
detector (:mod:`harmon.world.detection`) has no meaningful confidence, so the judge takes the worst case over every
ranking GenEval could have used. For GenEval's prompts (distinct classes) that means: a coloured requirement
fails if ANY detected object of its class has another colour, and a position requirement must hold between
EVERY detected object of the class and every object of the group it refers to. Strict, never lenient.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from harmon.eval.metrics import binary_metrics, pct, pope_answer, relation, table
from harmon.world.detection import UNKNOWN, DetectorConfig, detect_objects
from harmon.world.scene import NUMBER_WORDS, BBox, Scene, WorldConfig

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
POPE_SPLITS = ("random", "popular", "adversarial")
QUESTION_TYPES = ("existence", "counting", "color", "position", "describe")


class Boxed(Protocol):
    """Anything with a shape, a colour and a box: WorldObject and DetectedObject both qualify."""

    shape: str
    color: str
    bbox: BBox


# ---- GenEval judge ------------------------------------------------------------------------------------------


def explain_prompt(prompt: dict[str, Any], detections: Sequence[Boxed]) -> tuple[bool, list[str]]:
    """GenEval's judgement of ``detections`` against ``prompt`` metadata, with the reasons for failure.

    Rules (GenEval, worst case over detector rankings; see the module docstring):
      * include {class, count}: at least ``count`` detected objects of ``class`` (shape "unknown" matches nothing);
      * + color: every detected object of the class must carry a colour that the prompt asks for that class
        (so a stray blue circle fails "a red circle"), and at least ``count`` of them carry this ``color``;
      * + position [rel, j]: ``rel`` in relation(a, b) for every object a of this entry's group and every
        object b of entry j's group; fails when entry j itself failed;
      * exclude {class, count}: fewer than ``count`` detected objects of ``class`` (and colour, if given).
    Same-class entries are told apart by colour; their counts must fit disjointly.
    """
    objs = [d for d in detections if d.shape != UNKNOWN]
    include = list(prompt.get("include", []))
    reasons: list[str] = []
    groups = [_include_group(req, include, objs, reasons) for req in include]
    reasons += _shared_class_reasons(include, objs)
    reasons += _position_reasons(include, groups)
    reasons += _exclude_reasons(prompt.get("exclude", []), objs)
    return not reasons, reasons


def _include_group(
    req: dict[str, Any], include: list[dict[str, Any]], objs: list[Boxed], reasons: list[str]
) -> list[Boxed] | None:
    """The detected objects that satisfy one include entry, or None (with the reason appended) when too few do."""
    cls, n, color = req["class"], int(req["count"]), req.get("color")
    of_class = [o for o in objs if o.shape == cls]
    if len(of_class) < n:
        reasons.append(f"expected {cls}>={n}, found {len(of_class)}")
        return None
    if color is None:
        return of_class
    asked = {r.get("color") for r in include if r["class"] == cls}
    stray = [o.color for o in of_class if o.color not in asked] if None not in asked else []
    matching = [o for o in of_class if o.color == color]
    if stray:
        reasons.append(f"expected {color} {cls}, found {cls}s coloured {sorted(set(stray))}")
        return None
    if len(matching) < n:
        reasons.append(f"expected {color} {cls}>={n}, found {len(matching)}")
        return None
    return matching


def _shared_class_reasons(include: list[dict[str, Any]], objs: list[Boxed]) -> list[str]:
    """Entries of one class are told apart by colour; together they need disjoint objects."""
    reasons = []
    for cls in dict.fromkeys(r["class"] for r in include):
        reqs = [r for r in include if r["class"] == cls]
        if len(reqs) < 2:
            continue
        need, have = sum(int(r["count"]) for r in reqs), sum(o.shape == cls for o in objs)
        if have < need:
            reasons.append(f"expected {need} distinct {cls}s in total, found {have}")
        for color in dict.fromkeys(r.get("color") for r in reqs if r.get("color") is not None):
            need = sum(int(r["count"]) for r in reqs if r.get("color") == color)
            have = sum(o.shape == cls and o.color == color for o in objs)
            if have < need:
                reasons.append(f"expected {need} distinct {color} {cls}s in total, found {have}")
    return reasons


def _position_reasons(include: list[dict[str, Any]], groups: list[list[Boxed] | None]) -> list[str]:
    """Every object of a positioned entry's group must stand in the asked relation to every object of its target's."""
    reasons = []
    for i, req in enumerate(include):
        if "position" not in req or groups[i] is None:
            continue
        rel, j = req["position"][0], int(req["position"][1])
        if not 0 <= j < len(groups) or groups[j] is None:
            reasons.append(f"no target for {req['class']} to be {rel}")
            continue
        for a in groups[i]:  # type: ignore[union-attr]
            for b in groups[j]:  # type: ignore[union-attr]
                if a is not b and rel not in relation(a, b):
                    reasons.append(f"expected {req['class']} {rel} target, found {sorted(relation(a, b))}")
    return reasons


def _exclude_reasons(exclude: list[dict[str, Any]], objs: list[Boxed]) -> list[str]:
    reasons = []
    for req in exclude:
        cls, n, color = req["class"], int(req["count"]), req.get("color")
        have = sum(o.shape == cls and (color is None or o.color == color) for o in objs)
        if have >= n:
            reasons.append(f"expected {cls}<{n}, found {have}")
    return reasons


def judge_prompt(prompt: dict[str, Any], detections: Sequence[Boxed]) -> bool:
    """True iff ``detections`` (detector output, or a scene's WorldObjects) satisfy GenEval ``prompt`` metadata."""
    return explain_prompt(prompt, detections)[0]


def score_generation(
    prompts: Sequence[dict[str, Any]],
    images: Sequence[Image.Image | np.ndarray | torch.Tensor],
    config: WorldConfig | None = None,
    detector: DetectorConfig | None = None,
) -> dict[str, Any]:
    """Score generated ``images`` against their ``prompts`` (same length, aligned).

    Returns a dict with ``accuracy`` {tag: fraction correct}, ``count`` {tag: n}, ``overall`` (mean of the
    per-tag accuracies over the tags present, GenEval's overall score), ``held_out`` / ``seen`` (accuracy over
    prompts flagged / not flagged ``held_out``; None when there are none), and ``correct`` (one bool per prompt).
    """
    if len(prompts) != len(images):
        raise ValueError(f"got {len(prompts)} prompts but {len(images)} images")
    correct = [judge_prompt(p, detect_objects(img, config, detector)) for p, img in zip(prompts, images)]
    accuracy, count = {}, {}
    for tag in TAGS:
        hits = [c for p, c in zip(prompts, correct) if p["tag"] == tag]
        if hits:
            accuracy[tag], count[tag] = sum(hits) / len(hits), len(hits)
    held = [c for p, c in zip(prompts, correct) if p.get("held_out")]
    seen = [c for p, c in zip(prompts, correct) if not p.get("held_out")]
    return {
        "kind": "generation",
        "accuracy": accuracy,
        "count": count,
        "overall": sum(accuracy.values()) / len(accuracy) if accuracy else float("nan"),
        "held_out": sum(held) / len(held) if held else None,
        "held_out_count": len(held),
        "seen": sum(seen) / len(seen) if seen else None,
        "correct": correct,
    }


# ---- answer parsing -----------------------------------------------------------------------------------------


# ---- answer parsing -----------------------------------------------------------------------------------------


_COUNT_WORDS = {w: i for i, w in enumerate(NUMBER_WORDS)} | {"none": 0}
_COUNT_RE = re.compile(r"\b(\d+|" + "|".join(_COUNT_WORDS) + r")\b")


def parse_count(text: str) -> int | None:
    """The first number in ``text``, as a digit string or a number word zero..ten ("none" = 0); None if absent."""
    m = _COUNT_RE.search(text.lower())
    if m is None:
        return None
    token = m.group(1)
    return int(token) if token.isdigit() else _COUNT_WORDS[token]


def parse_color(text: str, config: WorldConfig | None = None) -> str | None:
    """The first palette colour name in ``text`` (whole word, case-insensitive); None if absent."""
    config = config or WorldConfig()
    m = re.search(r"\b(" + "|".join(config.color_names) + r")\b", text.lower())
    return m.group(1) if m else None


def parse_description(text: str, config: WorldConfig | None = None) -> list[tuple[str, str]]:
    """The objects named in a description, as (colour, shape) pairs with multiplicity, in text order.

    Recognises "<a|an|one..ten|digits> <colour> <shape>[s]"; e.g. "a red circle and two blue squares".
    """
    config = config or WorldConfig()
    pattern = re.compile(
        r"\b(an|a|\d+|"
        + "|".join(NUMBER_WORDS)
        + r")\s+("
        + "|".join(config.color_names)
        + r")\s+("
        + "|".join(config.shapes)
        + r")(s?)\b"
    )
    found: list[tuple[str, str]] = []
    for m in pattern.finditer(text.lower()):
        det, color, shape, _ = m.groups()
        n = 1 if det in ("a", "an") else (int(det) if det.isdigit() else NUMBER_WORDS.index(det))
        found.extend([(color, shape)] * n)
    return found


# ---- understanding scores -----------------------------------------------------------------------------------


def answer_correct(question: dict[str, Any], answer: str, config: WorldConfig | None = None) -> bool:
    """Whether free-text ``answer`` is right for ``question`` (a dict from :mod:`harmon.world.questions`).

    existence / position: POPE's yes/no rule; counting: :func:`parse_count` equals the gold number; color:
    :func:`parse_color` equals the gold colour; describe: the multiset of (colour, shape) pairs named by the answer
    equals the gold description's.
    """
    qtype, gold = question["type"], question["answer"]
    if qtype in ("existence", "position"):
        return pope_answer(answer) == gold.lower()
    if qtype == "counting":
        return parse_count(answer) == parse_count(gold)
    if qtype == "color":
        return parse_color(answer, config) == gold.lower()
    if qtype == "describe":
        return sorted(parse_description(answer, config)) == sorted(parse_description(gold, config))
    raise ValueError(f"unknown question type {qtype!r}")


def score_answers(
    items: Sequence[dict[str, Any] | tuple[Scene, dict[str, Any]]],
    answers: Sequence[str],
    config: WorldConfig | None = None,
) -> dict[str, Any]:
    """Score free-text ``answers`` to questions ``items`` (question dicts or (scene, question) pairs).

    Returns a dict with ``pope`` {split: {accuracy, precision, recall, f1, yes_ratio, count}} for each POPE split
    present plus "all", ``accuracy`` {question type: fraction correct}, ``count`` {type: n}, ``overall`` (mean of
    the per-type accuracies) and ``correct`` (one bool per item).
    """
    if len(items) != len(answers):
        raise ValueError(f"got {len(items)} questions but {len(answers)} answers")
    questions = [it[1] if isinstance(it, tuple) else it for it in items]
    correct = [answer_correct(q, a, config) for q, a in zip(questions, answers)]
    pope: dict[str, dict[str, float]] = {}
    existence = [(q, a) for q, a in zip(questions, answers) if q["type"] == "existence"]
    for split in (*POPE_SPLITS, "shape", "all"):  # "all": the three POPE splits; "shape": bare-shape questions
        chosen = [
            (q, a)
            for q, a in existence
            if q.get("split") == split or (split == "all" and q.get("split") in POPE_SPLITS)
        ]
        if chosen:
            pope[split] = binary_metrics([q["answer"].lower() for q, _ in chosen], [pope_answer(a) for _, a in chosen])
    accuracy, count = {}, {}
    for qtype in QUESTION_TYPES:
        hits = [c for q, c in zip(questions, correct) if q["type"] == qtype]
        if hits:
            accuracy[qtype], count[qtype] = sum(hits) / len(hits), len(hits)
    return {
        "kind": "understanding",
        "pope": pope,
        "accuracy": accuracy,
        "count": count,
        "overall": sum(accuracy.values()) / len(accuracy) if accuracy else float("nan"),
        "correct": correct,
    }


def format_tables(scores: dict[str, Any] | Sequence[dict[str, Any]]) -> str:
    """Markdown tables for the dicts returned by :func:`score_generation` and/or :func:`score_answers`."""
    if isinstance(scores, dict):
        scores = [scores]
    parts = []
    for s in scores:
        if s.get("kind") == "generation":
            rows = [[tag, pct(s["accuracy"][tag]), str(s["count"][tag])] for tag in TAGS if tag in s["accuracy"]]
            rows.append(["overall (mean of tags)", pct(s["overall"]), str(sum(s["count"].values()))])
            rows.append(["held-out pairs", pct(s["held_out"]), str(s["held_out_count"])])
            rows.append(["seen pairs", pct(s["seen"]), str(len(s["correct"]) - s["held_out_count"])])
            parts.append("Generation (GenEval rules, %)\n" + table(["tag", "accuracy", "n"], rows))
        elif s.get("kind") == "understanding":
            rows = [
                [split, *(pct(m[k]) for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")), str(m["count"])]
                for split, m in s["pope"].items()
            ]
            if rows:
                header = ["POPE split", "accuracy", "precision", "recall", "F1", "yes %", "n"]
                parts.append("Existence (POPE, %)\n" + table(header, rows))
            rows = [[t, pct(s["accuracy"][t]), str(s["count"][t])] for t in QUESTION_TYPES if t in s["accuracy"]]
            rows.append(["overall (mean of types)", pct(s["overall"]), str(len(s["correct"]))])
            parts.append("Understanding (%)\n" + table(["question type", "accuracy", "n"], rows))
        else:
            raise ValueError(f"not a score dict from score_generation/score_answers: keys {sorted(s)}")
    return "\n\n".join(parts)
