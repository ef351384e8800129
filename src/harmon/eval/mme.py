"""``harmon eval mme``: MME-style yes/no evaluation (two questions per image, per sub-task).

Layouts read by ``--data``:

1. A record file: JSON lines (or a JSON list), or a TSV with a header (VLMEvalKit's ``MME.tsv``). Fields::

       {"subtask": "existence", "image": "existence/000000006040.jpg",
        "question": "Is there a train in this image? Please answer yes or no.", "answer": "Yes"}

   ``subtask`` may be called ``category``, ``question`` ``text``, ``answer`` ``label``. ``image`` is a path
   (absolute, under ``--images``, or next to the file) or base64 image data; a short all-digit ``image`` refers to
   the row with that ``index`` (VLMEvalKit stores an image once). ``image_path``, when present, names the image
   in the answers files.
2. A folder of ``<subtask>.txt`` files (MME's ``eval_tool`` layout), one question per line:
   ``image<TAB>question<TAB>answer`` (a 4th column, a previous prediction, is ignored). Images are looked up as
   ``IMAGES/<subtask>/<image>``, ``IMAGES/<subtask>/images/<image>``, then ``IMAGES/<image>``.
3. The released benchmark folder (``MME_Benchmark_release_version``): one folder per sub-task holding, for
   every image, ``<stem>.txt`` with the image's question lines ``question<TAB>answer``, either next to the images
   or in ``questions_answers_YN/`` with the images in ``images/``.

Scoring follows MME's ``calculation.py``: the answer, lower-cased and stripped, is "yes"/"no" when it is exactly
that, else "yes" when "yes" occurs in its first 4 characters, else "no" when "no" does, else "other" (always
wrong). Per sub-task: accuracy over questions, accuracy+ over images (all questions of the image right; MME has
exactly two, one "yes" and one "no"), score = (accuracy + accuracy+) x 100, at most 200. We group questions by
(sub-task, image), where MME's script pairs consecutive lines; the same thing for files ordered as MME's are.
Perception = the sum of the scores of the perception sub-tasks present: existence, count, position, color,
posters, celebrity, scene, landmark, artwork, OCR (at most 2000); cognition = commonsense_reasoning,
numerical_calculation, text_translation, code_reasoning (at most 800). Other sub-task names are scored but
summed into neither.

Answers (``--answers-out DIR``): MME's ``eval_tool`` results layout, ``DIR/<subtask>.txt`` with lines
``image<TAB>question<TAB>answer<TAB>prediction`` (newlines and tabs in answers become spaces), which MME's own
``calculation.py --results_dir DIR`` reads.

The shapes world ships its own file in layout 1 (:func:`harmon.world.assets.write_shapes_mme`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harmon.eval.common import (
    FormatError,
    answer_all,
    clean_answer,
    field,
    read_records,
    where,
    write_text_atomic,
)
from harmon.eval.metrics import binary_metrics, table
from harmon.pipeline import HarmonPipeline

logger = logging.getLogger(__name__)

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

Item = dict[str, Any]


def mme_answer(text: str) -> str:
    """MME's answer parsing: "yes", "no" or "other" (see the module docstring)."""
    t = text.strip().lower()
    if t in ("yes", "no"):
        return t
    if "yes" in t[:4]:
        return "yes"
    if "no" in t[:4]:
        return "no"
    return "other"


# ---- reading ------------------------------------------------------------------------------------------------


def _item(subtask: str, image: str, roots: list, name: str, key: str, question: str, answer: str, where_: str) -> Item:
    label = answer.strip().lower()
    if label not in ("yes", "no"):
        raise FormatError(f"{where_}: answer must be Yes or No, got {answer!r}")
    return {
        "subtask": subtask,
        "image": image,
        "roots": roots,
        "image_name": name,
        "key": (subtask, key),
        "question": question.strip(),
        "answer": answer.strip(),
        "label": label,
        "where": where_,
    }


def _read_record_file(path: Path, images: Path | None) -> list[Item]:
    records = read_records(path)
    by_index = {str(r.get("index")): r for r in records if r.get("index") not in (None, "")}
    items = []
    for r in records:
        ref = str(field(r, "image", path))
        if ref.isdigit() and len(ref) < 16 and ref in by_index and by_index[ref] is not r:
            ref = str(field(by_index[ref], "image", path))  # VLMEvalKit: the image lives in the row `ref`
        image_path = field(r, "image_path", path, required=False)
        name = (
            Path(str(image_path)).name
            if image_path
            else (Path(ref).name if len(ref) < 1024 else f"{r.get('index', r['_line'])}.png")
        )
        key = str(image_path) if image_path else ref
        answer = field(r, ("answer", "label"), path)
        items.append(
            _item(
                str(field(r, ("subtask", "category"), path)),
                ref,
                [images, path.parent],
                name,
                key,
                str(field(r, ("question", "text"), path)),
                str(answer),
                where(path, r["_line"]),
            )
        )
    return items


def _split_line(line: str, n: int, where_: str) -> list[str]:
    parts = line.rstrip("\r\n").split("\t")
    if len(parts) < n:
        raise FormatError(f"{where_}: expected {n} tab-separated fields, got {len(parts)}")
    return parts


def _read_eval_tool(folder: Path, images: Path | None) -> list[Item]:
    items = []
    base = images or folder
    for txt in sorted(folder.glob("*.txt")):
        subtask = txt.stem
        for n, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            name, question, answer = _split_line(line, 3, where(txt, n))[:3]
            roots = [base / subtask, base / subtask / "images", base]
            items.append(_item(subtask, name, roots, name, name, question, answer, where(txt, n)))
    return items


def _read_release(folder: Path, images: Path | None) -> list[Item]:
    items = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        qa_dir = sub / "questions_answers_YN" if (sub / "questions_answers_YN").is_dir() else sub
        img_dir = sub / "images" if (sub / "images").is_dir() else sub
        if images is not None:
            img_dir = images / img_dir.relative_to(folder)
        for txt in sorted(qa_dir.glob("*.txt")):
            image = next(
                (img_dir / (txt.stem + s) for s in IMAGE_SUFFIXES if (img_dir / (txt.stem + s)).is_file()), None
            )
            if image is None:
                raise FileNotFoundError(f"{txt}: no image {txt.stem}.* in {img_dir}")
            for n, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    question, answer = _split_line(line, 2, where(txt, n))[:2]
                    items.append(
                        _item(sub.name, str(image), [], image.name, image.name, question, answer, where(txt, n))
                    )
    return items


def read_mme(data: str | Path, images: str | Path | None = None, limit: int | None = None) -> list[Item]:
    """Questions of an MME-style ``data`` file or folder (layouts 1-3 of the module docstring).

    ``limit`` keeps the questions of the first ``limit`` images of each sub-task.
    """
    data = Path(data)
    images = Path(images) if images is not None else None
    if data.is_dir():
        items = _read_eval_tool(data, images) if any(data.glob("*.txt")) else _read_release(data, images)
    elif data.is_file():
        items = _read_record_file(data, images)
    else:
        raise FileNotFoundError(f"no such file or folder: {data}")
    if not items:
        raise FormatError(f"{data}: no questions found")
    if limit is not None:
        keep: dict[str, list] = {}
        for it in items:
            keys = keep.setdefault(it["subtask"], [])
            if it["key"] not in keys and len(keys) < limit:
                keys.append(it["key"])
        items = [it for it in items if it["key"] in keep[it["subtask"]]]
    return items


# ---- answering and scoring ----------------------------------------------------------------------------------


def answer_mme(pipe: HarmonPipeline, items: Sequence[Item], max_new_tokens: int | None = None) -> list[str]:
    """Greedy answers of ``pipe`` to every question."""
    return answer_all(pipe, items, lambda it: it["question"], "mme", max_new_tokens)


def score_mme(items: Sequence[Item], answers: Sequence[str]) -> dict[str, Any]:
    """MME's scores (see the module docstring).

    Returns {"subtasks": {name: {accuracy, accuracy_plus, score, questions, images, yes_ratio}},
    "perception": sum or None, "cognition": sum or None, "total": perception + cognition}.
    """
    if len(items) != len(answers):
        raise ValueError(f"got {len(items)} questions but {len(answers)} answers")
    preds = [mme_answer(a) for a in answers]
    subtasks: dict[str, Any] = {}
    for name in dict.fromkeys(it["subtask"] for it in items):
        chosen = [(it, p) for it, p in zip(items, preds) if it["subtask"] == name]
        correct = [it["label"] == p for it, p in chosen]
        per_image: dict[Any, bool] = {}
        for (it, _), ok in zip(chosen, correct):
            per_image[it["key"]] = per_image.get(it["key"], True) and ok
        acc = sum(correct) / len(correct)
        acc_plus = sum(per_image.values()) / len(per_image)
        binary = binary_metrics([it["label"] for it, _ in chosen], [p for _, p in chosen])
        subtasks[name] = {
            "accuracy": acc,
            "accuracy_plus": acc_plus,
            "score": 100 * (acc + acc_plus),
            "questions": len(correct),
            "images": len(per_image),
            "yes_ratio": binary["yes_ratio"],
        }

    def total(names: tuple[str, ...]) -> float | None:
        present = [subtasks[n]["score"] for n in names if n in subtasks]
        return sum(present) if present else None

    perception, cognition = total(PERCEPTION), total(COGNITION)
    return {
        "kind": "mme",
        "subtasks": subtasks,
        "perception": perception,
        "cognition": cognition,
        "total": (perception or 0.0) + (cognition or 0.0),
    }


def format_mme(scores: dict[str, Any]) -> str:
    rows = [
        [
            name,
            f"{100 * s['accuracy']:.1f}",
            f"{100 * s['accuracy_plus']:.1f}",
            f"{s['score']:.1f}",
            str(s["questions"]),
            str(s["images"]),
        ]
        for name, s in scores["subtasks"].items()
    ]
    for group in ("perception", "cognition"):
        if scores[group] is not None:
            rows.append([f"{group} (sum)", "", "", f"{scores[group]:.1f}", "", ""])
    return "MME\n" + table(["sub-task", "acc %", "acc+ %", "score", "questions", "images"], rows)


def write_mme_answers(outdir: str | Path, items: Sequence[Item], answers: Sequence[str]) -> Path:
    """Write ``outdir/<subtask>.txt`` in MME's eval_tool results layout (see the module docstring)."""
    outdir = Path(outdir)
    lines: dict[str, list[str]] = {}
    for it, a in zip(items, answers):
        cols = [it["image_name"], clean_answer(it["question"]), it["answer"], clean_answer(a)]
        lines.setdefault(it["subtask"], []).append("\t".join(cols) + "\n")
    for subtask, rows in lines.items():
        write_text_atomic(outdir / f"{subtask}.txt", "".join(rows))
    return outdir
