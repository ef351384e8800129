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
"no" when it contains the word "no" or "not", else "yes" (:func:`harmon.world.pope_answer`). Metrics per split
(and over all questions when there are several splits): accuracy, precision, recall, F1 with "yes" as the positive
class, and the ratio of "yes" answers.

Answers file (``--answers-out FILE``): JSON lines in the answer format of POPE / LLaVA's ``model_vqa``::

    {"question_id": 1, "prompt": "Is there a snowboard in the image?", "text": "<model answer>",
     "model_id": "harmon", "image": "...", "category": "random", "label": "yes", "pred": "no"}

Shipped shapes-world files (:func:`write_shapes_pope`): ``harmon/assets/eval/shapes_pope/{random,popular,
adversarial}.json`` with 50 rendered 64 px scenes in ``shapes_pope/images/`` shared by the three splits (as
POPE's 500 COCO images are); per split and image one present object ("yes") and one absent object chosen by
the split's rule ("no"): 100 questions per split, exactly half "yes".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from harmon.eval.common import (
    ASSETS_DIR,
    FormatError,
    answer_all,
    binary_metrics,
    field,
    pct,
    read_records,
    save_image_atomic,
    table,
    where,
    write_jsonl_atomic,
    yes_no,
)
from harmon.pipeline import HarmonPipeline
from harmon.world import pope_answer

logger = logging.getLogger(__name__)

SHAPES_POPE = ASSETS_DIR / "shapes_pope"
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
    """The answers in POPE's answer format (JSON lines; see the module docstring)."""
    rows = [
        {
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


def write_shapes_pope(outdir: str | Path = SHAPES_POPE, n_images: int = 50, seed: int = 0, config=None) -> Path:
    """Write the shapes world's POPE splits in POPE's format (see the module docstring) under ``outdir``."""
    from harmon.world import (
        POPE_SPLITS,
        WorldConfig,
        existence_question,
        negative_pairs,
        positive_pairs,
        render,
        sample_scene,
    )

    config = config or WorldConfig()
    outdir = Path(outdir)
    g = torch.Generator().manual_seed(seed)
    scenes = [sample_scene(g, config) for _ in range(n_images)]
    names = [f"shapes_{i:05d}.png" for i in range(n_images)]
    for scene, name in zip(scenes, names):
        save_image_atomic(render(scene, config), outdir / "images" / name)
    for split in POPE_SPLITS:
        rows = []
        for scene, name in zip(scenes, names):
            pos = positive_pairs(scene, g, 1)
            neg = negative_pairs(scene, g, config, split, 1)
            for pair, present in ((pos[0], True), (neg[0], False)):
                q = existence_question(pair, present, split)
                rows.append(
                    {"question_id": len(rows) + 1, "image": name, "text": q["question"], "label": q["answer"].lower()}
                )
        write_jsonl_atomic(outdir / f"{split}.json", rows)
    return outdir


def shipped_question_files() -> list[Path]:
    from harmon.world import POPE_SPLITS

    return [SHAPES_POPE / f"{split}.json" for split in POPE_SPLITS]


def results_json(scores: dict[str, Any]) -> str:
    return json.dumps({"kind": "pope", "splits": scores}, indent=2) + "\n"
