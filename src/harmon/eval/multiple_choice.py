"""``harmon eval mc``: multiple-choice questions in MMBench / SEED-Bench / MMMU-style files.

Read (``--data FILE``): a TSV with a header (MMBench's and VLMEvalKit's ``.tsv``), JSON lines or a JSON list.
Columns::

    index     question id (an integer for MMBench; any string otherwise; default: the row number)
    question  the question text
    A, B, ... the options, one column per capital letter; empty cells are absent options (MMBench has 2-4)
    answer    the gold letter
    image     a path (absolute, under --images, or next to the file) or base64 image data (MMBench embeds its
              images); a short all-digit value refers to the row with that index (VLMEvalKit stores each image once)
    hint      optional context, put before the question
    category  optional; accuracy is also reported per category

SEED-Bench's layout is read as well: a JSON object whose "questions" list holds ``question_id`` (index),
``data_id`` (image), ``choice_a``..``choice_d`` (A..D), ``answer`` and ``question_type_id`` (category).

Prompt (LLaVA's MMBench prompt)::

    <hint>\\n<question>\\nA. <option A>\\nB. <option B>...\\n
    Answer with the option's letter from the given choices directly.

Letter extraction (:func:`extract_letter`), the first rule that fires wins; only letters of present options count:
  1. the whole answer is a letter, up to surrounding spaces, brackets, "*" and final "." / ":" ("B", "(b)", "C.");
  2. it starts with a letter followed by ")", "." or ":" ("A. red", "(A) red", "B) two", "C: three");
  3. a keyword then a capital letter: "answer", "option" or "choice", optionally "is" and ":" ("Answer: A",
     "The answer is (C)", "option D");
  4. exactly one distinct capital letter stands alone as a word ("I pick B"); an "A" followed by a lower-case
     word is the article, not a letter ("A red circle");
  5. the option texts: an answer equal to one option's text (case and outer punctuation ignored), else the one
     option whose text appears in it as whole words ("There are two circles" -> the option "two").
No rule firing, or several options in rule 5, is a wrong answer.

Circular evaluation (``--circular``, MMBench's CircularEval): a question with n options is asked n times, the
options rotated by 0..n-1 places (option at letter j moves to letter j-k); it counts as right only when every
rotation is answered right. When the file already carries MMBench's rotated copies (rows with index >= 1,000,000
are copies of row index % 1,000,000), those are used instead of rotating, and without ``--circular`` they are
skipped.

Answers (``--answers-out FILE``): JSON lines, one per asked question: index, rotation, category, prompt,
prediction (the model's text), pred (the extracted letter or null), answer (gold letter as asked), correct.

The shapes world ships its own file in MMBench's layout (:func:`harmon.world.assets.write_shapes_mc`).
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harmon.eval.common import FormatError, answer_all, field, read_records, where, write_jsonl_atomic
from harmon.eval.metrics import pct, table
from harmon.pipeline import HarmonPipeline

logger = logging.getLogger(__name__)

INSTRUCTION = "Answer with the option's letter from the given choices directly."
LETTERS = string.ascii_uppercase
COPY_OFFSET = 1_000_000  # MMBench: row index + k * 1e6 is rotation k of row index
SEED_ALIASES = {"choice_a": "A", "choice_b": "B", "choice_c": "C", "choice_d": "D"}

Question = dict[str, Any]


# ---- reading ------------------------------------------------------------------------------------------------


def _options(r: dict[str, Any]) -> list[tuple[str, str]]:
    """(letter, text) of the present options, in letter order."""
    cells = {k: v for k, v in r.items() if len(k) == 1 and k in LETTERS}
    cells.update({SEED_ALIASES[k]: v for k, v in r.items() if k in SEED_ALIASES})
    return [
        (k, str(cells[k]).strip())
        for k in sorted(cells)
        if cells[k] is not None and str(cells[k]).strip() not in ("", "nan")
    ]


def read_mc(path: str | Path, images: str | Path | None = None, limit: int | None = None) -> list[Question]:
    """Questions of an MMBench / SEED / MMMU-style file (the first ``limit`` base questions, with their copies)."""
    path = Path(path)
    records = read_records(path)
    by_index = {str(r.get("index")): r for r in records if r.get("index") not in (None, "")}
    out: list[Question] = []
    for n, r in enumerate(records):
        loc = where(path, r["_line"])
        index = str(field(r, ("index", "question_id"), path, required=False, default=n))
        options = _options(r)
        if len(options) < 2:
            raise FormatError(f"{loc}: needs at least two options (columns A, B, ...), got {len(options)}")
        letters = [k for k, _ in options]
        if letters != list(LETTERS[: len(letters)]):
            raise FormatError(f"{loc}: options must be consecutive from A, got {letters}")
        answer = str(field(r, "answer", path)).strip().upper()
        if answer not in letters:
            raise FormatError(f"{loc}: answer {answer!r} is not one of the options {letters}")
        ref = str(field(r, ("image", "data_id", "image_path"), path))
        if ref.isdigit() and len(ref) < 16 and ref in by_index and by_index[ref] is not r:
            ref = str(field(by_index[ref], "image", path))  # VLMEvalKit stores each image once
        out.append(
            {
                "index": index,
                "question": str(field(r, "question", path)).strip(),
                "hint": str(field(r, "hint", path, required=False, default="")).strip(),
                "options": [t for _, t in options],
                "answer": answer,
                "category": str(field(r, ("category", "question_type_id"), path, required=False, default="all")),
                "image": ref,
                "roots": [images, path.parent],
                "where": loc,
            }
        )
    if not out:
        raise FormatError(f"{path}: no questions")
    if limit is not None:
        keep = set(list(dict.fromkeys(group_of(q) for q in out if not is_copy(q)))[:limit])
        out = [q for q in out if group_of(q) in keep]
    return out


def is_copy(q: Question) -> bool:
    """True for MMBench's pre-rotated copies (integer index >= 1,000,000)."""
    return q["index"].isdigit() and int(q["index"]) >= COPY_OFFSET


def group_of(q: Question) -> str:
    return str(int(q["index"]) % COPY_OFFSET) if q["index"].isdigit() else q["index"]


# ---- asking -------------------------------------------------------------------------------------------------


def rotate(q: Question, k: int) -> Question:
    """``q`` with its options rotated by ``k``: the option at letter j moves to letter (j - k) mod n."""
    n = len(q["options"])
    k %= n
    options = q["options"][k:] + q["options"][:k]
    gold = (LETTERS.index(q["answer"]) - k) % n
    return {**q, "options": options, "answer": LETTERS[gold], "rotation": k}


def expand(questions: Sequence[Question], circular: bool) -> list[Question]:
    """The questions actually asked, each with ``group`` (the base question) and ``rotation``.

    Without ``circular``: every base question once (MMBench's copies skipped). With it: the file's copies when it
    has any, otherwise every rotation of every question.
    """
    has_copies = any(is_copy(q) for q in questions)
    asked = []
    for q in questions:
        base = {**q, "group": group_of(q), "rotation": 0}
        if not circular:
            if not is_copy(q):
                asked.append(base)
        elif has_copies:
            asked.append({**base, "rotation": int(q["index"]) // COPY_OFFSET if q["index"].isdigit() else 0})
        else:
            asked += [{**rotate(q, k), "group": group_of(q)} for k in range(len(q["options"]))]
    return asked


def build_prompt(q: Question) -> str:
    """Hint, question, "A. ..." lines and the instruction (LLaVA's MMBench prompt)."""
    lines = [q["hint"]] if q.get("hint") else []
    lines.append(q["question"])
    lines += [f"{LETTERS[j]}. {text}" for j, text in enumerate(q["options"])]
    lines.append(INSTRUCTION)
    return "\n".join(lines)


def answer_mc(pipe: HarmonPipeline, asked: Sequence[Question], max_new_tokens: int | None = None) -> list[str]:
    """Greedy answers of ``pipe`` to the prompts of ``asked``."""
    return answer_all(pipe, asked, build_prompt, "mc", max_new_tokens)


# ---- letter extraction and scoring --------------------------------------------------------------------------


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .,:;!?\"'()[]*")


def extract_letter(answer: str, options: Sequence[str]) -> str | None:
    """The option letter an answer picks, by the rules of the module docstring; None when none applies."""
    letters = LETTERS[: len(options)]
    text = answer.strip()
    bare = text.strip(" \t\n*()[]").rstrip(".:").strip(" *()[]")
    if len(bare) == 1 and bare.upper() in letters:  # rule 1
        return bare.upper()
    m = re.match(r"[\(\[]?([A-Z])(?:[\)\]]|[.:](?!\w))", text)  # rule 2
    if m and m.group(1) in letters:
        return m.group(1)
    m = re.search(r"(?i:answer|option|choice)\s*(?:(?i:is)\s*)?[:：]?\s*[\(\[]?([A-Z])(?![A-Za-z])", text)  # rule 3
    if m and m.group(1) in letters:
        return m.group(1)
    found = set()  # rule 4
    for m in re.finditer(r"(?<![A-Za-z])([A-Z])(?![A-Za-z'])", text):
        after = text[m.end() :].lstrip(" ")
        if m.group(1) == "A" and after[:1].islower():
            continue  # the article
        if m.group(1) in letters:
            found.add(m.group(1))
    if len(found) == 1:
        return found.pop()
    norm = _norm(text)  # rule 5
    exact = [L for L, o in zip(letters, options) if _norm(o) and _norm(o) == norm]
    if len(exact) == 1:
        return exact[0]
    inside = [
        L
        for L, o in zip(letters, options)
        if _norm(o) and re.search(r"(?<!\w)" + re.escape(_norm(o)) + r"(?!\w)", norm)
    ]
    return inside[0] if len(inside) == 1 else None


def score_mc(asked: Sequence[Question], answers: Sequence[str]) -> dict[str, Any]:
    """Accuracy over base questions (a question with several rotations is right only when all are).

    Returns {"accuracy", "count", "categories": {name: {"accuracy", "count"}}, "circular": bool,
    "asked", "preds": [letter or None per asked question], "correct": [bool per asked question]}.
    """
    if len(asked) != len(answers):
        raise ValueError(f"got {len(asked)} questions but {len(answers)} answers")
    preds = [extract_letter(a, q["options"]) for q, a in zip(asked, answers)]
    correct = [p == q["answer"] for q, p in zip(asked, preds)]
    groups: dict[str, list] = {}
    for q, ok in zip(asked, correct):
        g = groups.setdefault(q["group"], [q["category"], True])
        g[1] = g[1] and ok
    cats: dict[str, list[bool]] = {}
    for cat, ok in groups.values():
        cats.setdefault(cat, []).append(ok)
    hits = [ok for _, ok in groups.values()]
    return {
        "kind": "multiple_choice",
        "accuracy": sum(hits) / len(hits),
        "count": len(hits),
        "categories": {c: {"accuracy": sum(v) / len(v), "count": len(v)} for c, v in cats.items()},
        "circular": any(q["rotation"] for q in asked),
        "asked": len(asked),
        "preds": preds,
        "correct": correct,
    }


def format_mc(scores: dict[str, Any]) -> str:
    rows = [[c, pct(s["accuracy"]), str(s["count"])] for c, s in sorted(scores["categories"].items())]
    rows.append(["overall", pct(scores["accuracy"]), str(scores["count"])])
    title = "Multiple choice, circular (%)" if scores["circular"] else "Multiple choice (%)"
    return title + "\n" + table(["category", "accuracy", "n"], rows)


def write_mc_answers(
    path: str | Path, asked: Sequence[Question], answers: Sequence[str], scores: dict[str, Any]
) -> Path:
    rows = [
        {
            "index": q["index"],
            "rotation": q["rotation"],
            "category": q["category"],
            "prompt": build_prompt(q),
            "prediction": a,
            "pred": p,
            "answer": q["answer"],
            "correct": ok,
        }
        for q, a, p, ok in zip(asked, answers, scores["preds"], scores["correct"])
    ]
    return write_jsonl_atomic(path, rows)
