"""Data sources: on-disk formats read into records (see :mod:`harmon.data.records`).

Map-style sources have ``__len__`` and ``record(i)``; ``record`` is cheap (it reads at most a small JSON file, never
the image) and raises ``BadSample`` for a malformed entry. Streamed sources (``WebDatasetShards`` in
:mod:`harmon.data.shards`) hand out iterators instead. ``kind`` on a source is the layout of its records.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harmon.data.records import (
    MALFORMED,
    MISSING_FILE,
    SEVERAL_IMAGES,
    BadSample,
    caption_conversation,
    derive_seed,
    normalise_conversation,
)
from harmon.prompts import BRIEF_CAPTION_INSTRUCTIONS, DETAILED_CAPTION_INSTRUCTIONS

KINDS = ("text2image", "image2text", "image_edit")


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


def _instruction_list(instructions: str | Sequence[str]) -> tuple[str, ...]:
    if instructions == "detailed":
        return DETAILED_CAPTION_INSTRUCTIONS
    if instructions == "brief":
        return BRIEF_CAPTION_INSTRUCTIONS
    if isinstance(instructions, str) or not instructions or not all(isinstance(s, str) for s in instructions):
        raise ValueError(
            f"instructions must be 'detailed', 'brief' or a non-empty list of strings, got {instructions!r}"
        )
    return tuple(instructions)


def _pick_instruction(instructions: tuple[str, ...], seed: int, index: int) -> str:
    """The caption instruction of record ``index``: uniform over the list, fixed by (seed, index)."""
    return instructions[derive_seed(seed, "caption-instruction", index) % len(instructions)]


def _image_path(root: Path, value) -> Path | None:
    """An entry's image field -> an absolute-or-root-relative path (None when absent)."""
    if value is None:
        return None
    if isinstance(value, list):  # LLaVA-style multi-image entries
        if len(value) != 1:
            raise BadSample(SEVERAL_IMAGES, f"entry lists {len(value)} images")
        value = value[0]
    if not isinstance(value, str) or not value:
        raise BadSample(MALFORMED, f"image field is {value!r}")
    path = Path(value)
    return path if path.is_absolute() else root / path


def edit_record(obj: dict, root: Path, where: str) -> dict:
    """An edit record from {"source": path, "instruction": str, "target": path} (paths relative to ``root``)."""
    source, target = _image_path(root, obj.get("source")), _image_path(root, obj.get("target"))
    instruction = obj.get("instruction")
    if source is None or target is None or not isinstance(instruction, str) or not instruction.strip():
        raise BadSample(MALFORMED, f"{where} needs a source, a target and a non-empty instruction")
    return {"kind": "image_edit", "source": source, "instruction": instruction, "target": target}


# ---------------------------------------------------------------------------------------------------------------
class OfficialLayout:
    """The official Harmon layout (FINETUNE.md): ``data_info.json`` lists {"image", "annotation"} pairs.

    Args:
        data_info: a JSON file holding a list of {"image": relative image path, "annotation": relative path of a
            per-image JSON}, or a folder of such files (all ``*.json``, concatenated in name order).
        image_folder: root of the image paths. cap_folder: root of the annotation paths (default image_folder).
        cap_key: key of the caption inside an annotation JSON.
        kind: "text2image" (caption records) or "image2text" (captioning conversations: ``<image>\\n`` + an
            instruction drawn from ``instructions`` by (seed, index), answered by the caption).
        instructions: "detailed", "brief" or a list of instruction strings (image2text only).

    Annotation files must be real JSON (quirk 23: the single-quoted example in FINETUNE.md is rejected as a bad
    sample, not evaluated).
    """

    def __init__(
        self,
        data_info: str | Path,
        image_folder: str | Path,
        cap_folder: str | Path | None = None,
        cap_key: str = "caption",
        kind: str = "text2image",
        instructions: str | Sequence[str] = "detailed",
        seed: int = 0,
    ) -> None:
        self.kind = _check_kind(kind)
        self.image_folder = Path(image_folder)
        self.cap_folder = Path(cap_folder) if cap_folder is not None else self.image_folder
        self.cap_key = cap_key
        self.instructions = _instruction_list(instructions)
        self.seed = seed
        data_info = Path(data_info)
        files = sorted(data_info.glob("*.json")) if data_info.is_dir() else [data_info]
        if not files:
            raise FileNotFoundError(f"no *.json list in {data_info}")
        self.entries: list = []
        for f in files:
            items = json.loads(f.read_text(encoding="utf-8"))
            if not isinstance(items, list):
                raise ValueError(f"{f} must hold a JSON list of {{'image', 'annotation'}} entries")
            self.entries.extend(items)

    def __len__(self) -> int:
        return len(self.entries)

    def record(self, i: int) -> dict:
        entry = self.entries[i]
        if not isinstance(entry, dict) or not isinstance(entry.get("annotation"), str):
            raise BadSample(MALFORMED, f"data_info entry {i} is {entry!r:.200}")
        image = _image_path(self.image_folder, entry.get("image"))
        if image is None:
            raise BadSample(MALFORMED, f"data_info entry {i} has no image")
        ann_path = self.cap_folder / entry["annotation"]
        try:
            annotation = json.loads(ann_path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise BadSample(MISSING_FILE, str(ann_path)) from err
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BadSample(MALFORMED, f"{ann_path}: {err}") from err
        caption = annotation.get(self.cap_key) if isinstance(annotation, dict) else None
        if not isinstance(caption, str):
            raise BadSample(MALFORMED, f"{ann_path} has no string under {self.cap_key!r}")
        if self.kind == "text2image":
            return {"kind": "text2image", "image": image, "caption": caption}
        instruction = _pick_instruction(self.instructions, self.seed, i)
        return {"kind": "image2text", "image": image, "conversation": caption_conversation(caption, instruction)}


# ---------------------------------------------------------------------------------------------------------------
class JsonlManifest:
    """One JSON object per line: {"image", "caption"}, {"image" (optional), "conversations" | "conversation"} or
    an edit {"source", "instruction", "target"}.

    Args:
        path: the manifest. image_root: root of relative image paths (default: the manifest's folder).
        kind: "text2image", "image2text" or "image_edit"; None infers it from the first line (a "caption" line ->
            text2image, a conversation line -> image2text, a "source" + "target" line -> image_edit). As image2text,
            caption lines become captioning conversations with an instruction drawn from ``instructions`` by
            (seed, index), as in :class:`OfficialLayout`.
        captions: text2image lines need a caption; False accepts lines with only an image (reconstruction data,
            which uses the image alone).

    Only line offsets are kept in memory; a line is parsed when its record is asked for.
    """

    def __init__(
        self,
        path: str | Path,
        image_root: str | Path | None = None,
        kind: str | None = None,
        instructions: str | Sequence[str] = "detailed",
        seed: int = 0,
        captions: bool = True,
    ) -> None:
        self.path = Path(path)
        self.image_root = Path(image_root) if image_root is not None else self.path.parent
        self.instructions = _instruction_list(instructions)
        self.seed, self.captions = seed, captions
        offsets, pos = [], 0
        with open(self.path, "rb") as f:
            for line in f:
                if line.strip():
                    offsets.append(pos)
                pos += len(line)
        self._offsets = np.asarray(offsets, dtype=np.int64)
        if kind is None:
            if not offsets:
                raise ValueError(f"{self.path} is empty: cannot infer its kind")
            first = self._parse(0)
            kind = "image2text" if ("conversations" in first or "conversation" in first) else "text2image"
            kind = "image_edit" if "source" in first and "target" in first else kind
        self.kind = _check_kind(kind)

    def __len__(self) -> int:
        return len(self._offsets)

    def _parse(self, i: int) -> dict:
        with open(self.path, "rb") as f:
            f.seek(int(self._offsets[i]))
            line = f.readline()
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BadSample(MALFORMED, f"{self.path} line {i}: {err}") from err
        if not isinstance(obj, dict):
            raise BadSample(MALFORMED, f"{self.path} line {i} is not a JSON object")
        return obj

    def record(self, i: int) -> dict:
        obj = self._parse(i)
        if self.kind == "image_edit":
            return edit_record(obj, self.image_root, f"{self.path} line {i}")
        image = _image_path(self.image_root, obj.get("image"))
        turns = obj.get("conversations", obj.get("conversation"))
        caption = obj.get("caption")
        if self.kind == "text2image":
            if image is None or not (isinstance(caption, str) or (caption is None and not self.captions)):
                raise BadSample(MALFORMED, f"{self.path} line {i} lacks an image or a caption")
            return {"kind": "text2image", "image": image, "caption": caption}
        if turns is not None:
            conversation = normalise_conversation(turns, has_image=image is not None)
        elif isinstance(caption, str) and image is not None:
            conversation = caption_conversation(caption, _pick_instruction(self.instructions, self.seed, i))
        else:
            raise BadSample(MALFORMED, f"{self.path} line {i} has neither a conversation nor an image + caption")
        return {"kind": "image2text", "image": image, "conversation": conversation}


# ---------------------------------------------------------------------------------------------------------------
class LlavaConversations:
    """A LLaVA instruction-tuning JSON list: {"id", "image" (optional), "conversations": [{"from", "value"}, ...]}.

    ``<image>`` may sit anywhere in a human turn (added at the start of the first one when missing); conversations
    may be multi-turn; entries without "image" are text-only (pixels None after processing).

    Args:
        path: the JSON file. image_folder: root of the image paths (default: the JSON's folder).
        with_image: None keeps every entry; True keeps only entries with an image, False only text-only ones.
            A micro-batch must not mix the two (the model takes pixels for all rows or none), so a mixed file is
            usually read as two sources, ``with_image=True`` and ``with_image=False``.
    """

    def __init__(
        self, path: str | Path, image_folder: str | Path | None = None, with_image: bool | None = None
    ) -> None:
        self.path = Path(path)
        self.image_folder = Path(image_folder) if image_folder is not None else self.path.parent
        self.entries = json.loads(self.path.read_text(encoding="utf-8"))
        if not isinstance(self.entries, list):
            raise ValueError(f"{self.path} must hold a JSON list of LLaVA entries")
        if with_image is None:
            self._indices = None
        else:
            self._indices = np.asarray(
                [
                    i
                    for i, e in enumerate(self.entries)
                    if isinstance(e, dict) and (e.get("image") is not None) == with_image
                ],
                dtype=np.int64,
            )
        self.kind = "image2text"

    def __len__(self) -> int:
        return len(self.entries) if self._indices is None else len(self._indices)

    def record(self, i: int) -> dict:
        j = i if self._indices is None else int(self._indices[i])
        entry = self.entries[j]
        if not isinstance(entry, dict):
            raise BadSample(MALFORMED, f"{self.path} entry {j} is not an object")
        image = _image_path(self.image_folder, entry.get("image"))
        conversation = normalise_conversation(entry.get("conversations"), has_image=image is not None)
        return {"kind": "image2text", "image": image, "conversation": conversation}


# ---------------------------------------------------------------------------------------------------------------
class ProceduralSource:
    """Records computed from their index by ``fn(index) -> record`` (e.g. the synthetic shapes world).

    ``length=None`` makes the source unbounded: the loader then uses stream position p as the index directly
    (no epochs, no permutation), so ``fn`` must be deterministic in its index. ``kind`` fills a missing "kind".
    """

    def __init__(self, fn: Callable[[int], dict], length: int | None = None, kind: str = "text2image") -> None:
        if length is not None and length < 1:
            raise ValueError(f"length must be positive or None, got {length}")
        self.fn = fn
        self.length = length
        self.kind = _check_kind(kind)

    @property
    def unbounded(self) -> bool:
        return self.length is None

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("an unbounded ProceduralSource has no length")
        return self.length

    def record(self, i: int) -> dict:
        rec = self.fn(i)
        if not isinstance(rec, dict):
            raise TypeError(f"ProceduralSource fn returned a {type(rec).__name__}, not a record dict")
        rec = {"kind": self.kind, **rec}
        if rec["kind"] != self.kind:
            raise ValueError(f"ProceduralSource of kind {self.kind!r} got a {rec['kind']!r} record")
        return rec


# ---------------------------------------------------------------------------------------------------------------
class CaptionView:
    """Serve the caption records of another source (map-style or streamed) as captioning conversations.

    Record i (or the record at stream position p) is asked with an instruction drawn by (seed, i) (or (seed, p))
    from ``instructions`` ("detailed", "brief" or a list) and answered by its caption.
    """

    kind = "image2text"

    def __init__(self, dataset: Any, seed: int = 0, instructions: str | Sequence[str] = "detailed") -> None:
        self.dataset, self.seed = dataset, seed
        self.instructions = _instruction_list(instructions)
        if hasattr(dataset, "open_stream"):
            self.open_stream = self._open_stream

    def instruction(self, *key: int) -> str:
        return self.instructions[derive_seed(self.seed, "caption", *key) % len(self.instructions)]

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def unbounded(self) -> bool:
        return getattr(self.dataset, "unbounded", False)

    def as_conversation(self, record: dict, *key: int) -> dict:
        return {
            "kind": "image2text",
            "image": record["image"],
            "conversation": caption_conversation(record["caption"], self.instruction(*key)),
        }

    def record(self, i: int) -> dict:
        return self.as_conversation(self.dataset.record(i), i)

    def _open_stream(self, slot: int, num_slots: int, position: tuple[int, int] = (0, 0)) -> CaptionStream:
        return CaptionStream(self.dataset.open_stream(slot, num_slots, position), self)


class CaptionStream:
    """A stream of caption records served as conversations by a :class:`CaptionView`."""

    def __init__(self, stream, view: CaptionView) -> None:
        self.stream, self.view = stream, view

    @property
    def position(self) -> tuple[int, int]:
        return self.stream.position

    def __iter__(self) -> CaptionStream:
        return self

    def __next__(self) -> dict:
        record = next(self.stream)
        return self.view.as_conversation(record, *self.stream.position)
