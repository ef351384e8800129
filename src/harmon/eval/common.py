"""Pieces shared by the field-format runners (GenEval, POPE, MME, multiple choice).

* reading records: JSON lines, a JSON list, or a TSV with a header row (MMBench / VLMEvalKit style), with errors
  that name the file and the line;
* resolving an ``image`` field that holds a path (absolute, or under one of several folders) or a base64-encoded
  image (MMBench's TSVs embed their images that way);
* atomic writes (temp file + rename): an interrupted run never leaves a truncated file under its final name.
  Temp files are hidden (``.<name>.<random>.tmp``, :mod:`harmon.atomic`) so that no reader's pattern (GenEval's
  ``\\d+\\.png``) takes one for a result;
* the rank and world size of a torchrun launch, read from the environment (no process group needed).
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from harmon.atomic import write_bytes_atomic, write_text_atomic
from harmon.validate import read_text

Record = dict[str, Any]


class FormatError(ValueError):
    """A record file that does not follow its format; the message names the file and the line."""


def where(path: str | Path, line: int | str | None) -> str:
    """``file:line`` for messages (``line`` may be "item 3" for a JSON list)."""
    return f"{path}:{line}" if line is not None else str(path)


# ---- reading ------------------------------------------------------------------------------------------------


def read_jsonl(path: str | Path) -> list[Record]:
    """Records of a JSON-lines file (one object per line; blank lines are skipped).

    Each record gets ``"_line"`` (1-based line number) for later error messages.
    Raises FileNotFoundError, or FormatError naming ``path:line`` for a line that is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    records = []
    for n, line in enumerate(read_text(path, "JSON-lines file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise FormatError(f"{where(path, n)}: not valid JSON ({err.msg} at column {err.colno})") from err
        if not isinstance(obj, dict):
            raise FormatError(f"{where(path, n)}: expected a JSON object, got {type(obj).__name__}")
        records.append({**obj, "_line": n})
    return records


def read_tsv(path: str | Path) -> list[Record]:
    """Rows of a tab-separated file with a header row, as dicts of strings (``"_line"`` = 1-based line).

    Fields may be long (base64 images); quoting follows the csv module's defaults (Excel-style double quotes).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # MMBench rows carry whole images
    with io.StringIO(read_text(path, "TSV file"), newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        try:
            header = next(reader)
        except StopIteration:
            raise FormatError(f"{where(path, 1)}: empty file, expected a header row") from None
        header = [h.strip() for h in header]
        records = []
        for row in reader:
            n = reader.line_num
            if not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise FormatError(f"{where(path, n)}: {len(row)} fields, but the header has {len(header)}")
            records.append({**dict(zip(header, row)), "_line": n})
    return records


def read_records(path: str | Path) -> list[Record]:
    """Records of ``path``: a TSV (``.tsv``), a JSON list, a JSON object holding the list under "questions"
    (SEED-Bench's layout), or JSON lines (anything else)."""
    path = Path(path)
    if path.suffix.lower() == ".tsv":
        return read_tsv(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    text = read_text(path, "question file")
    head = text.lstrip()[:1]
    items = None
    if head == "[":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise FormatError(f"{where(path, err.lineno)}: not valid JSON ({err.msg})") from err
    elif head == "{":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # JSON lines
        if isinstance(whole, dict) and isinstance(whole.get("questions"), list):
            items = whole["questions"]
    if items is not None:
        out = []
        for i, obj in enumerate(items):
            if not isinstance(obj, dict):
                raise FormatError(f"{path}: item {i} of the JSON list is a {type(obj).__name__}, not an object")
            out.append({**obj, "_line": f"item {i}"})
        return out
    return read_jsonl(path)


def field(
    record: Record, names: str | Sequence[str], path: str | Path, *, required: bool = True, default: Any = None
) -> Any:
    """The first of ``names`` present (and not empty) in ``record``; FormatError naming the line when required."""
    names = (names,) if isinstance(names, str) else tuple(names)
    for name in names:
        value = record.get(name)
        if value is not None and not (isinstance(value, str) and value.strip() in ("", "nan")):
            return value
    if required:
        alternatives = " or ".join(repr(n) for n in names)
        raise FormatError(f"{where(path, record.get('_line'))}: missing field {alternatives}")
    return default


def yes_no(value: Any, record: Record, path: str | Path) -> str:
    """A gold yes/no label ("Yes", "no", " YES ") as "yes" / "no"; FormatError naming the line otherwise."""
    label = str(value).strip().lower()
    if label not in ("yes", "no"):
        raise FormatError(f"{where(path, record.get('_line'))}: label must be yes or no, got {value!r}")
    return label


# ---- images -------------------------------------------------------------------------------------------------


def find_image(ref: str, roots: Iterable[str | Path]) -> Path | None:
    """``ref`` as an existing file: absolute, or relative to the first root that holds it; None when none does."""
    p = Path(ref)
    if p.is_absolute():
        return p if p.is_file() else None
    for root in roots:
        if root is not None and (Path(root) / p).is_file():
            return Path(root) / p
    return None


def decode_base64_image(data: str) -> Image.Image | None:
    """A PIL image from a base64 string (optionally a ``data:image/...;base64,`` URI); None if it is not one."""
    if data.startswith("data:") and "," in data:
        data = data.split(",", 1)[1]
    if len(data) < 32:  # shorter than any image file; a name or an index, not base64
        return None
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError):
        return None


def load_image_field(ref: str, roots: Iterable[str | Path], where_: str) -> Image.Image | Path:
    """Resolve an ``image`` field: a file path (returned as a Path) or base64 image data (a PIL image).

    Raises FileNotFoundError naming ``where_`` (file:line) and the folders searched.
    """
    roots = [r for r in roots if r is not None]
    found = find_image(ref, roots)
    if found is not None:
        return found
    image = decode_base64_image(ref.strip())
    if image is not None:
        return image
    shown = ref if len(ref) <= 80 else ref[:77] + "..."
    raise FileNotFoundError(
        f"{where_}: image {shown!r} is neither a file under {[str(r) for r in roots]} nor base64 image data"
    )


_BASE64_HEAD = re.compile(r"(data:image/[\w.+-]+;base64,)?[A-Za-z0-9+/]{32,}")


def check_images(items: Iterable[Record]) -> None:
    """Fail early (before a model loads) when an item's ``image`` is neither an existing file nor base64 data.

    Items carry ``image``, ``roots`` and ``where``; base64 data is recognised by its first characters only.
    """
    for it in items:
        ref = it["image"]
        if find_image(ref, [r for r in it["roots"] if r is not None]) is None and not _BASE64_HEAD.match(ref[:100]):
            searched = [str(r) for r in it["roots"] if r is not None]
            raise FileNotFoundError(f"{it['where']}: image {ref!r} not found under {searched}")


def image_to_base64(image: Image.Image) -> str:
    """PNG bytes of ``image``, base64-encoded (the form MMBench's TSVs store)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ---- atomic writing -----------------------------------------------------------------------------------------


def save_image_atomic(image: Image.Image, path: str | Path) -> Path:
    """Save ``image`` as PNG under ``path`` atomically (the file either is complete or does not exist)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return write_bytes_atomic(path, buf.getvalue())


def write_jsonl_atomic(path: str | Path, records: Iterable[Record]) -> Path:
    return write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


# ---- distributed launch -------------------------------------------------------------------------------------


def rank_and_world() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) from torchrun's environment; (0, 1) when absent."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as err:
        raise ValueError(f"RANK / WORLD_SIZE must be integers: {err}") from err
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= RANK < WORLD_SIZE, got RANK={rank}, WORLD_SIZE={world}")
    return rank, world


def clean_answer(text: str) -> str:
    """A model answer on one line (tabs and newlines become spaces), for line-based result files."""
    return " ".join(text.split())


def answer_all(
    pipe: Any, items: Sequence[Record], prompt: Callable[[Record], str], label: str, max_new_tokens: int | None = None
) -> list[str]:
    """Greedy answers of ``pipe`` to every item: its image with the question ``prompt(item)``, 20 items at a time
    (``pipe.describe_many``); progress every 100."""
    log = logging.getLogger(f"harmon.eval.{label}")
    answers: list[str] = []
    for start in range(0, len(items), 20):
        chunk = items[start : start + 20]
        images = [load_image_field(item["image"], item["roots"], item["where"]) for item in chunk]
        answers += pipe.describe_many(images, [prompt(item) for item in chunk], max_new_tokens=max_new_tokens)
        if len(answers) % 100 == 0 or len(answers) == len(items):
            log.info("%s: %d/%d answered", label, len(answers), len(items))
    return answers
