"""``harmon eval pope``: POPE (object hallucination) in POPE's own file format.

Questions (``--questions a.json [b.json ...]``): JSON lines, one object per line, as POPE ships them
(``coco_pope_random.json`` ...)::

    {"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?",
     "label": "yes"}

``image`` is a file name under ``--images`` (or beside the file, or an absolute path); ``text`` may also be
called ``question``; ``label`` is yes/no in any case. The split of a question is its ``category`` field when
present (LLaVA's combined ``llava_pope_test.jsonl`` has one), else the file's stem (``coco_pope_random.json`` ->
"coco_pope_random", the shipped ``random.json`` -> "random"). A JSON list of the same objects is read too.

Answers: ``pipe.describe(image, text)``, greedy. Scoring is POPE's: keep the text before the first "."; it is
"no" when it contains the word "no" or "not", else "yes" (:func:`harmon.eval.metrics.pope_answer`). Metrics per split
(and over all questions when there are several splits): accuracy, precision, recall, F1 with "yes" as the positive
class, and the ratio of "yes" answers.

Answers file (``--answers-out FILE``): JSON lines that POPE's own ``evaluate.py`` (``question``, ``answer``) and
LLaVA's POPE scorer (``question_id``, ``prompt``, ``text``) both read::

    {"question": "Is there a snowboard in the image?", "answer": "<model answer>", "question_id": 1,
     "prompt": "Is there a snowboard in the image?", "text": "<model answer>", "model_id": "harmon",
     "image": "...", "category": "random", "label": "yes", "pred": "no"}

The shapes world ships its own files in this format (:func:`harmon.world.assets.write_shapes_pope`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harmon.eval.common import FormatError, answer_all, field, read_records, where, write_jsonl_atomic, yes_no
from harmon.eval.metrics import binary_metrics, pct, pope_answer, table
from harmon.pipeline import HarmonPipeline

logger = logging.getLogger(__name__)

METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def read_pope(path: str | Path, images: str | Path | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Questions of one POPE file (the first ``limit``) as {question_id, image, text, label, split, roots, where}.

    Images are looked up under ``images``, then beside the file.
    """
    path = Path(path)
    out = []
    records = read_records(path)
    for r in records[:limit] if limit is not None else records:
        out.append(
            {
                "question_id": field(r, "question_id", path),
                "image": str(field(r, "image", path)),
                "text": str(field(r, ("text", "question"), path)),
                "label": yes_no(field(r, ("label", "answer"), path), r, path),
                "split": str(field(r, "category", path, required=False, default=path.stem)),
                "roots": [images, path.parent],
                "where": where(path, r["_line"]),
            }
        )
    if not out:
        raise FormatError(f"{path}: no questions")
    return out


def answer_pope(
    pipe: HarmonPipeline, questions: Sequence[dict[str, Any]], max_new_tokens: int | None = None
) -> list[str]:
    """Greedy answers of ``pipe`` to ``questions``."""
    return answer_all(pipe, questions, lambda q: q["text"], "pope", max_new_tokens)


def score_pope(questions: Sequence[dict[str, Any]], answers: Sequence[str]) -> dict[str, dict[str, float]]:
    """POPE's metrics per split (first-sentence no/not rule), plus "all" when there are several splits.

    Returns {split: {accuracy, precision, recall, f1, yes_ratio, count}}.
    """
    if len(questions) != len(answers):
        raise ValueError(f"got {len(questions)} questions but {len(answers)} answers")
    preds = [pope_answer(a) for a in answers]
    splits = list(dict.fromkeys(q["split"] for q in questions))
    out = {}
    for split in splits:
        chosen = [(q["label"], p) for q, p in zip(questions, preds) if q["split"] == split]
        out[split] = binary_metrics([g for g, _ in chosen], [p for _, p in chosen])
    if len(splits) > 1:
        out["all"] = binary_metrics([q["label"] for q in questions], preds)
    return out


def format_pope(scores: dict[str, dict[str, float]]) -> str:
    rows = [[split, *(pct(m[k]) for k in METRICS), str(m["count"])] for split, m in scores.items()]
    return "POPE (%)\n" + table(["split", "accuracy", "precision", "recall", "F1", "yes %", "n"], rows)


def write_pope_answers(
    path: str | Path, questions: Sequence[dict[str, Any]], answers: Sequence[str], model_id: str = "harmon"
) -> Path:
    """The answers as JSON lines that both common scorers read: POPE's own ``evaluate.py`` (``question``,
    ``answer``) and LLaVA's POPE scorer (``question_id``, ``prompt``, ``text``)."""
    rows = [
        {
            "question": q["text"],
            "answer": a,
            "question_id": q["question_id"],
            "prompt": q["text"],
            "text": a,
            "model_id": model_id,
            "image": q["image"],
            "category": q["split"],
            "label": q["label"],
            "pred": pope_answer(a),
        }
        for q, a in zip(questions, answers)
    ]
    return write_jsonl_atomic(path, rows)
