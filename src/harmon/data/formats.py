"""Data sources: on-disk formats read into records (see :mod:`harmon.data.records`).

Map-style sources have ``__len__`` and ``record(i)``; ``record`` is cheap (it reads at most a small JSON file, never
the image) and raises ``BadSample`` for a malformed entry. ``WebDatasetShards`` is streamed instead: it hands out
``ShardStream`` iterators, one per (rank, worker) slot.
"""

from __future__ import annotations

import functools
import glob
import json
import posixpath
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from harmon.data.records import (
    MALFORMED,
    MISSING_FILE,
    SEVERAL_IMAGES,
    UNREADABLE_SHARD,
    BadSample,
    caption_conversation,
    derive_seed,
    normalise_conversation,
)
from harmon.prompts import BRIEF_CAPTION_INSTRUCTIONS, DETAILED_CAPTION_INSTRUCTIONS

KINDS = ("text2image", "image2text")


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
    """One JSON object per line: {"image", "caption"} or {"image" (optional), "conversations" | "conversation"}.

    Args:
        path: the manifest. image_root: root of relative image paths (default: the manifest's folder).
        kind: "text2image" or "image2text"; None infers it from the first line (a "caption" line -> text2image,
            a conversation line -> image2text). As image2text, caption lines become captioning conversations with
            an instruction drawn from ``instructions`` by (seed, index), as in :class:`OfficialLayout`.

    Only line offsets are kept in memory; a line is parsed when its record is asked for.
    """

    def __init__(
        self,
        path: str | Path,
        image_root: str | Path | None = None,
        kind: str | None = None,
        instructions: str | Sequence[str] = "detailed",
        seed: int = 0,
    ) -> None:
        self.path = Path(path)
        self.image_root = Path(image_root) if image_root is not None else self.path.parent
        self.instructions = _instruction_list(instructions)
        self.seed = seed
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
        image = _image_path(self.image_root, obj.get("image"))
        turns = obj.get("conversations", obj.get("conversation"))
        caption = obj.get("caption")
        if self.kind == "text2image":
            if image is None or not isinstance(caption, str):
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
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{000..009}`` (zero-padded numeric ranges) and ``{a,b}`` alternatives, as WebDataset URLs use them."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[: m.start()], pattern[m.end() :]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
        choices = [str(n).zfill(width) for n in range(int(lo), int(hi) + 1)]
    else:
        choices = body.split(",")
    return [head + c + rest for c in choices for rest in expand_braces(tail)]


def list_shards(urls: str | Sequence[str]) -> list[str]:
    """Local shard paths from a list or a glob / brace pattern; raises FileNotFoundError naming what is missing."""
    patterns = [urls] if isinstance(urls, str) else list(urls)
    shards: list[str] = []
    for pattern in patterns:
        for p in expand_braces(str(pattern)):
            if any(c in p for c in "*?["):
                found = sorted(glob.glob(p))
                if not found:
                    raise FileNotFoundError(f"no shard matches {p}")
                shards.extend(found)
            elif Path(p).is_file():
                shards.append(p)
            else:
                raise FileNotFoundError(f"shard not found: {p}")
    if not shards:
        raise ValueError(f"no shards in {urls!r}")
    return list(dict.fromkeys(shards))  # drop repeats, keep order


def _sample_groups(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, tarfile.TarInfo]]]:
    """Consecutive files with the same key (path up to the first dot of the basename) form one sample."""
    key, members = None, {}
    for info in tar:
        if not info.isfile():
            continue
        folder, base = posixpath.split(info.name)
        if "." not in base:
            continue
        stem, ext = base.split(".", 1)
        k = posixpath.join(folder, stem)
        if k != key:
            if members:
                yield key, members
            key, members = k, {}
        members[ext.lower()] = info
    if members:
        yield key, members


class WebDatasetShards:
    """Streamed text2image records from local WebDataset ``.tar`` shards (read with :mod:`tarfile`).

    A sample is the group of consecutive files sharing a key (``000123.jpg`` + ``000123.txt``); the image is the
    first of ``image_keys`` present (kept as encoded bytes, decoded by the processor), the caption the first of
    ``caption_keys`` (a ``.json`` holds it under "caption" or "text").

    Splitting: passes over the shards are numbered; pass p reads the shards in an order shuffled from (seed, p).
    There are ``num_slots`` = world_size x workers slots. With at least as many shards as slots, slot i reads the
    shards at positions i, i + num_slots, ... of that order (round robin); with fewer, every slot reads every shard
    and keeps the samples whose running index within the pass is i modulo num_slots. Either way one pass hands
    every sample to exactly one slot. A slot's position is (pass, samples consumed in that pass), which
    :meth:`open_stream` resumes from. There is no shuffle inside shards.
    """

    kind = "text2image"

    def __init__(
        self,
        urls: str | Sequence[str],
        image_keys: Sequence[str] = ("jpg", "jpeg", "png", "webp"),
        caption_keys: Sequence[str] = ("txt", "caption", "json"),
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        self.shards = list_shards(urls)
        self.image_keys = tuple(k.lower() for k in image_keys)
        self.caption_keys = tuple(k.lower() for k in caption_keys)
        self.seed = seed
        self.shuffle = shuffle

    def shard_order(self, pass_index: int) -> list[int]:
        """Indices into ``self.shards`` in the reading order of pass ``pass_index``."""
        if not self.shuffle:
            return list(range(len(self.shards)))
        g = torch.Generator().manual_seed(derive_seed(self.seed, "shards", pass_index))
        return torch.randperm(len(self.shards), generator=g).tolist()

    def open_stream(self, slot: int, num_slots: int, position: tuple[int, int] = (0, 0)) -> ShardStream:
        """An endless iterator of this slot's records, starting at ``position`` = (pass, consumed)."""
        if not 0 <= slot < num_slots:
            raise ValueError(f"slot {slot} outside range({num_slots})")
        return ShardStream(self, slot, num_slots, position)

    def iter_pass(self, pass_index: int, slot: int = 0, num_slots: int = 1) -> Iterator[dict]:
        """One pass of one slot's records, bad samples left out (for inspection and evaluation)."""
        for item in self._pass_items(pass_index, slot, num_slots):
            try:
                yield item()
            except BadSample:
                continue

    # The items of one pass are thunks: a skipped item (resume) is never read, only walked past.
    def _pass_items(self, pass_index: int, slot: int, num_slots: int) -> Iterator[Callable[[], dict]]:
        order = self.shard_order(pass_index)
        by_shard = len(order) >= num_slots
        shards = order[slot::num_slots] if by_shard else order
        j = 0  # running sample index within the pass, over the shards this slot reads
        for s in shards:
            path = self.shards[s]
            try:
                with tarfile.open(path, "r:*") as tar:
                    for key, members in _sample_groups(tar):
                        if by_shard or j % num_slots == slot:
                            yield functools.partial(self._make_record, tar, path, key, members)
                        j += 1
            except (tarfile.TarError, OSError) as err:  # unreadable or truncated shard: one bad item, then go on
                if by_shard or j % num_slots == slot:
                    yield _raiser(BadSample(UNREADABLE_SHARD, f"{path}: {err}"))
                j += 1

    def _make_record(self, tar: tarfile.TarFile, path: str, key: str, members: dict) -> dict:
        image_ext = next((k for k in self.image_keys if k in members), None)
        caption_ext = next((k for k in self.caption_keys if k in members), None)
        if image_ext is None or caption_ext is None:
            raise BadSample(MALFORMED, f"{path}:{key} has files {sorted(members)}, needs an image and a caption")
        try:
            image = tar.extractfile(members[image_ext]).read()
            raw = tar.extractfile(members[caption_ext]).read()
        except (tarfile.TarError, OSError) as err:
            raise BadSample(UNREADABLE_SHARD, f"{path}:{key}: {err}") from err
        try:
            if caption_ext == "json":
                meta = json.loads(raw)
                caption = meta.get("caption", meta.get("text")) if isinstance(meta, dict) else None
            else:
                caption = raw.decode("utf-8")
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BadSample(MALFORMED, f"{path}:{key}.{caption_ext}: {err}") from err
        if not isinstance(caption, str):
            raise BadSample(MALFORMED, f"{path}:{key}.{caption_ext} holds no caption")
        return {"kind": "text2image", "image": image, "caption": caption.strip(), "key": f"{Path(path).name}/{key}"}


def _raiser(err: BadSample) -> Callable[[], dict]:
    def fail() -> dict:
        raise err

    return fail


class ShardStream:
    """An endless iterator of one slot's records; ``position`` = (pass, samples consumed in that pass).

    ``next()`` raises ``BadSample`` for a bad sample (the stream stays usable and has moved past it). After the
    last sample of pass p the position is (p, n); the next call moves on to pass p + 1.
    """

    def __init__(self, source: WebDatasetShards, slot: int, num_slots: int, position: tuple[int, int]) -> None:
        self.source, self.slot, self.num_slots = source, slot, num_slots
        self.pass_index, self.consumed = int(position[0]), int(position[1])
        self._items = self._generate()

    @property
    def position(self) -> tuple[int, int]:
        return self.pass_index, self.consumed

    def __iter__(self) -> ShardStream:
        return self

    def __next__(self) -> dict:
        return next(self._items)()

    def _generate(self) -> Iterator[Callable[[], dict]]:
        p, skip = self.pass_index, self.consumed
        while True:
            n = 0
            for item in self.source._pass_items(p, self.slot, self.num_slots):
                n += 1
                if n <= skip:
                    continue
                self.pass_index, self.consumed = p, n
                yield item
            if n == 0:
                raise RuntimeError(
                    f"slot {self.slot} of {self.num_slots} gets no sample in pass {p} of "
                    f"{len(self.source.shards)} shards"
                )
            p, skip = p + 1, 0
