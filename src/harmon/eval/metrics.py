"""Scoring rules that belong to the benchmarks themselves, not to any dataset: POPE's yes/no rule and binary
metrics, GenEval's relative-position rule, and the Markdown tables every runner prints.

The eval runners (:mod:`harmon.eval.pope`, :mod:`~harmon.eval.mme`, ...) and the shapes world's exact scorers
(:mod:`harmon.world.scoring`) both use them from here, so the two can never disagree on a rule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Protocol

BBox = tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels, x1/y1 exclusive
RELATIONS = ("left of", "right of", "above", "below")  # GenEval's relative positions
POSITION_THRESHOLD = 0.1  # GenEval's factor on object sizes in the relation rule


class HasBox(Protocol):
    """Anything with a bounding box (a detection, a scene object)."""

    bbox: BBox


# ---- POPE ---------------------------------------------------------------------------------------------------


def pope_answer(text: str) -> str:
    """POPE's yes/no rule: keep the text before the first "."; it is "no" if it contains the word "no" or
    "not" (whole words, case-insensitive), else "yes"."""
    first = text.split(".")[0]
    words = re.findall(r"[a-z0-9']+", first.lower())
    return "no" if ("no" in words or "not" in words) else "yes"


def binary_metrics(gold: Sequence[str], pred: Sequence[str]) -> dict[str, float]:
    """POPE's metrics with "yes" as the positive class: accuracy, precision, recall, F1, yes-ratio and count.

    ``gold`` holds "yes"/"no"; ``pred`` may also hold anything else (e.g. MME's "other"), which counts as wrong
    and as neither a yes nor a no. Precision (recall) is 0 when nothing is predicted (labelled) "yes".
    """
    if len(gold) != len(pred):
        raise ValueError(f"got {len(gold)} labels but {len(pred)} predictions")
    if not gold:
        raise ValueError("no questions to score")
    bad = sorted({g for g in gold if g not in ("yes", "no")})
    if bad:
        raise ValueError(f"gold labels must be 'yes' or 'no', got {bad}")
    tp = sum(g == "yes" and p == "yes" for g, p in zip(gold, pred))
    fp = sum(g == "no" and p == "yes" for g, p in zip(gold, pred))
    fn = sum(g == "yes" and p == "no" for g, p in zip(gold, pred))
    n = len(gold)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": sum(g == p for g, p in zip(gold, pred)) / n,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": sum(p == "yes" for p in pred) / n,
        "count": n,
    }


# ---- GenEval ------------------------------------------------------------------------------------------------


def box_of(obj: HasBox | Sequence[float]) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) as floats, from an object with ``bbox`` or a raw box."""
    box = obj.bbox if hasattr(obj, "bbox") else obj  # type: ignore[union-attr]
    return tuple(float(v) for v in box)  # type: ignore[return-value]


def relation(obj_a: HasBox | Sequence[float], obj_b: HasBox | Sequence[float]) -> set[str]:
    """GenEval's relative position of A with respect to B, factoring in object sizes.

    offset = centre_a - centre_b; per axis, revised = max(|offset| - 0.1 (size_a + size_b), 0) * sign(offset),
    with size the box width on x and height on y. If every |revised| < 1e-3 there is no relation; otherwise
    (dx, dy) = revised / ||offset|| and dx < -0.5 -> "left of", dx > 0.5 -> "right of", dy < -0.5 -> "above",
    dy > 0.5 -> "below" (image y grows downward). Accepts objects with ``bbox`` or raw (x0, y0, x1, y1) boxes.
    """
    ax0, ay0, ax1, ay1 = box_of(obj_a)
    bx0, by0, bx1, by1 = box_of(obj_b)
    offset = (((ax0 + ax1) - (bx0 + bx1)) / 2, ((ay0 + ay1) - (by0 + by1)) / 2)
    sizes = ((ax1 - ax0) + (bx1 - bx0), (ay1 - ay0) + (by1 - by0))
    revised = [
        max(abs(o) - POSITION_THRESHOLD * s, 0.0) * math.copysign(1.0, o) if o else 0.0 for o, s in zip(offset, sizes)
    ]
    if all(abs(r) < 1e-3 for r in revised):
        return set()
    norm = math.hypot(*offset)
    dx, dy = revised[0] / norm, revised[1] / norm
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


# ---- tables -------------------------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table with columns padded to their widest cell."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *map(line, rows)])


def pct(x: float | None) -> str:
    """A share as a percentage with one decimal; "-" for None."""
    return "-" if x is None else f"{100 * x:.1f}"
