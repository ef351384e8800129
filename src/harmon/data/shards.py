"""Streamed WebDataset shards: local ``.tar`` files read with :mod:`tarfile`, split over (rank, worker) slots.

``WebDatasetShards`` hands out ``ShardStream`` iterators, one per slot; see its docstring for the split.
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

import torch

from harmon.data.records import MALFORMED, UNREADABLE_SHARD, BadSample, derive_seed

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
        captions: bool = True,
    ) -> None:
        self.shards = list_shards(urls)
        self.image_keys = tuple(k.lower() for k in image_keys)
        self.caption_keys = tuple(k.lower() for k in caption_keys)
        self.seed = seed
        self.shuffle = shuffle
        self.captions = captions  # False: a sample may hold only an image (reconstruction data)

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
        if image_ext is None or (caption_ext is None and self.captions):
            raise BadSample(MALFORMED, f"{path}:{key} has files {sorted(members)}, needs an image and a caption")
        image = _read(tar, path, key, members[image_ext])
        caption = (
            None if caption_ext is None else _text(_read(tar, path, key, members[caption_ext]), path, key, caption_ext)
        )
        if caption is None and self.captions:
            raise BadSample(MALFORMED, f"{path}:{key}.{caption_ext} holds no caption")
        caption = caption.strip() if caption is not None else None
        return {"kind": "text2image", "image": image, "caption": caption, "key": f"{Path(path).name}/{key}"}


class WebDatasetEdits(WebDatasetShards):
    """Streamed image_edit records from WebDataset shards: each sample holds the source image (``src.jpg``, or
    another ``src.`` image extension), the target (``tgt.jpg``, ...) and the instruction (``txt``, or a ``json``
    with it under "instruction", "caption" or "text"). Splitting and resuming as :class:`WebDatasetShards`."""

    kind = "image_edit"

    def __init__(
        self,
        urls: str | Sequence[str],
        image_extensions: Sequence[str] = ("jpg", "jpeg", "png", "webp"),
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__(urls, image_keys=tuple(image_extensions), seed=seed, shuffle=shuffle)

    def _make_record(self, tar: tarfile.TarFile, path: str, key: str, members: dict) -> dict:
        found = {
            side: next((f"{side}.{ext}" for ext in self.image_keys if f"{side}.{ext}" in members), None)
            for side in ("src", "tgt")
        }
        text_ext = next((k for k in self.caption_keys if k in members), None)
        if found["src"] is None or found["tgt"] is None or text_ext is None:
            raise BadSample(MALFORMED, f"{path}:{key} has files {sorted(members)}, needs src.jpg, tgt.jpg and txt")
        instruction = _text(_read(tar, path, key, members[text_ext]), path, key, text_ext, "instruction")
        if instruction is None or not instruction.strip():
            raise BadSample(MALFORMED, f"{path}:{key}.{text_ext} holds no instruction")
        return {
            "kind": "image_edit",
            "source": _read(tar, path, key, members[found["src"]]),
            "instruction": instruction.strip(),
            "target": _read(tar, path, key, members[found["tgt"]]),
            "key": f"{Path(path).name}/{key}",
        }


def _read(tar: tarfile.TarFile, path: str, key: str, member: tarfile.TarInfo) -> bytes:
    """A member's bytes; a read failure is a bad sample."""
    try:
        return tar.extractfile(member).read()
    except (tarfile.TarError, OSError) as err:
        raise BadSample(UNREADABLE_SHARD, f"{path}:{key}: {err}") from err


def _text(raw: bytes, path: str, key: str, ext: str, *json_keys: str) -> str | None:
    """The text of a ``txt``-like member, or of a ``json`` member under the first of ``json_keys`` ("caption",
    "text") it has; None when a json holds none."""
    try:
        if ext != "json":
            return raw.decode("utf-8")
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadSample(MALFORMED, f"{path}:{key}.{ext}: {err}") from err
    keys = (*json_keys, "caption", "text")
    found = next((meta[k] for k in keys if isinstance(meta, dict) and k in meta), None)
    return found if isinstance(found, str) else None


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
