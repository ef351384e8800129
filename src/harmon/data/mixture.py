"""The multi-source loader the trainer iterates: fixed per-source batch sizes in every micro-batch.

Layout. An optimizer step s has G = world_size x accum_steps micro-batches, numbered globally
g = rank x accum_steps + a. Each map-style source reads an endless index stream (epoch e is
``randperm(N)`` from (seed, name, e)); micro-batch g of step s takes stream positions [(s G + g) b, (s G + g + 1) b)
for its batch size b. Sample p is processed with a generator seeded from (seed, name, p), so a micro-batch is a
pure function of (seed, step, g): one process with accum 2 yields exactly what two ranks with accum 1 yield, and
worker count, restarts and resumption change nothing.

Bad samples. A position whose record raises ``BadSample`` is replaced by index
``derive_seed(seed, name, "spare", p, k) % N`` for tries k = 1, 2, ... (so replacement is layout-independent too);
after ``max_tries`` failures in a row a RuntimeError names the source. Skips are counted in ``loader.skipped``
({source: {reason: count}}) and each (source, reason) is logged once as a warning.

Streamed sources (``WebDatasetShards``) give up the global guarantee: there are world_size x max(1, num_workers)
slots; micro-batch number k = s x accum_steps + a of this rank reads slot rank x W + k mod W (W = max(1,
num_workers)), which in a DataLoader is always the same worker. Bad streamed samples are skipped by reading on.
Their per-slot positions are part of ``state_dict`` (keyed by global slot, so the dicts of all ranks can be
merged), and resumption is exact only with the same world_size and num_workers.
"""

from __future__ import annotations

import copy
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from harmon.data.conditioned import collate_conditioned
from harmon.data.processing import collate_image2text, collate_text2image
from harmon.data.records import BadSample, derive_seed
from harmon.data.tasks import Task, parse_task

logger = logging.getLogger(__name__)


@dataclass
class SourceSpec:
    """One source of the mixture.

    Args:
        name: batch key and a free label; the model names the loss ``loss_<name>``, the loader seeds by it.
        task: what the source teaches (:class:`Task`); every collated batch carries it under "task", and the model
            picks the loss by it.
        dataset: a map-style source (``__len__``, ``record(i)``) or a streamed one (``open_stream``); its records
            must have the layout of ``task`` (``task.record_kind``).
        processor: ``processor(record, generator) -> sample dict`` (Text2ImageProcessor, Image2TextProcessor,
            ImageConditionedProcessor).
        batch_size: samples of this source in every micro-batch (the fixed ratio, e.g. 1 : 3 : 16).
        weight: loss weight, for the trainer; the loader does not use it.
        pad_id: id for right-padding; None takes ``processor.pad_id``.
    """

    name: str
    task: Task
    dataset: Any
    processor: Callable[[dict, torch.Generator | None], dict]
    batch_size: int
    weight: float = 1.0
    pad_id: int | None = None

    def __post_init__(self) -> None:
        self.task = parse_task(self.task, f"source {self.name!r}")
        kind = getattr(self.dataset, "kind", None)
        if kind is not None and kind != self.task.record_kind:
            raise ValueError(
                f"source {self.name!r}: task {self.task.value} reads {self.task.record_kind} records, "
                f"the dataset holds {kind} records"
            )
        if self.batch_size < 1:
            raise ValueError(f"source {self.name!r}: batch_size must be positive, got {self.batch_size}")
        if self.weight < 0:
            raise ValueError(f"source {self.name!r}: weight must be non-negative, got {self.weight}")
        if self.pad_id is None:
            self.pad_id = getattr(self.processor, "pad_id", None)
            if self.pad_id is None:
                raise ValueError(f"source {self.name!r}: give pad_id (the processor has no pad_id)")
        if not self.streamed and not hasattr(self.dataset, "record"):
            raise TypeError(f"source {self.name!r}: dataset needs record(i) and __len__, or open_stream")

    @property
    def streamed(self) -> bool:
        return hasattr(self.dataset, "open_stream")

    def collate(self, samples: list[dict]) -> dict:
        """The samples as one batch, tagged with the source's task."""
        if self.task.image_conditioned:
            fn = collate_conditioned
        else:
            fn = collate_text2image if self.task is Task.TEXT_TO_IMAGE else collate_image2text
        return {"task": self.task, **fn(samples, self.pad_id)}


class _MicroKey(NamedTuple):
    step: int
    micro: int
    generation: int  # changes at every (re)start of iteration; workers reopen their streams then
    restart: dict  # {source: {slot: (pass, consumed)}} positions of streamed sources at that (re)start


def _keys(step: int, micro: int, accum_steps: int, generation: int, restart: dict) -> Iterator[_MicroKey]:
    while True:
        yield _MicroKey(step, micro, generation, restart)
        micro += 1
        if micro == accum_steps:
            step, micro = step + 1, 0


class _MicroBatches(Dataset):
    """Builds one micro-batch {source: collated batch} from a key; runs in the main process or in a worker."""

    def __init__(
        self,
        sources: list[SourceSpec],
        seed: int,
        rank: int,
        world_size: int,
        accum_steps: int,
        slots_per_rank: int,
        max_tries: int,
    ) -> None:
        self.sources, self.seed, self.rank, self.world_size = sources, seed, rank, world_size
        self.accum_steps, self.slots_per_rank, self.max_tries = accum_steps, slots_per_rank, max_tries
        self._perms: dict[str, OrderedDict[int, torch.Tensor]] = {s.name: OrderedDict() for s in sources}
        self._streams: dict[tuple[str, int], tuple[int, Any]] = {}

    def __getitem__(self, key: _MicroKey) -> dict:
        return self.build(key)

    def build(self, key: _MicroKey) -> dict:
        g = self.rank * self.accum_steps + key.micro  # global micro-batch index within the step
        n_global = self.world_size * self.accum_steps
        skipped: list[tuple[str, str, str]] = []
        positions: dict[str, tuple[int, tuple[int, int]]] = {}
        batch = {}
        for spec in self.sources:
            if spec.streamed:
                samples, slot, pos = self._from_stream(spec, key, skipped)
                positions[spec.name] = (slot, pos)
            else:
                first = (key.step * n_global + g) * spec.batch_size
                samples = [self._indexed(spec, first + j, skipped) for j in range(spec.batch_size)]
            batch[spec.name] = spec.collate(samples)
        return {"step": key.step, "micro": key.micro, "batch": batch, "skipped": skipped, "positions": positions}

    # ---- map-style sources
    def _permutation(self, spec: SourceSpec, epoch: int) -> torch.Tensor:
        cache = self._perms[spec.name]
        if epoch not in cache:
            n = len(spec.dataset)
            g = torch.Generator().manual_seed(derive_seed(self.seed, spec.name, "epoch", epoch))
            cache[epoch] = torch.randperm(n, generator=g, dtype=torch.int32 if n < 2**31 else torch.int64)
            while len(cache) > 2:  # a batch straddles at most two epochs
                cache.popitem(last=False)
        return cache[epoch]

    def _index(self, spec: SourceSpec, position: int, attempt: int) -> int:
        unbounded = getattr(spec.dataset, "unbounded", False)
        if attempt:
            spare = derive_seed(self.seed, spec.name, "spare", position, attempt)
            return spare % (2**62 if unbounded else len(spec.dataset))
        if unbounded:
            return position
        n = len(spec.dataset)
        return int(self._permutation(spec, position // n)[position % n])

    def _indexed(self, spec: SourceSpec, position: int, skipped: list) -> dict:
        err = None
        for attempt in range(self.max_tries):
            index = self._index(spec, position, attempt)
            try:
                record = spec.dataset.record(index)
                generator = torch.Generator().manual_seed(derive_seed(self.seed, spec.name, position, attempt))
                return spec.processor(record, generator)
            except BadSample as e:
                skipped.append((spec.name, e.reason, f"index {index}: {e.detail}"))
                err = e
        raise RuntimeError(
            f"source {spec.name!r}: {self.max_tries} bad samples in a row at stream position {position} (last: {err})"
        )

    # ---- streamed sources
    def _from_stream(self, spec: SourceSpec, key: _MicroKey, skipped: list) -> tuple[list[dict], int, tuple]:
        k = key.step * self.accum_steps + key.micro  # this rank's micro-batch number
        slot = self.rank * self.slots_per_rank + k % self.slots_per_rank
        cached = self._streams.get((spec.name, slot))
        if cached is None or cached[0] != key.generation:
            position = key.restart.get(spec.name, {}).get(slot, (0, 0))
            stream = spec.dataset.open_stream(slot, self.world_size * self.slots_per_rank, position)
            self._streams[(spec.name, slot)] = (key.generation, stream)
        stream = self._streams[(spec.name, slot)][1]
        samples, fails = [], 0
        while len(samples) < spec.batch_size:
            try:
                record = next(stream)
                generator = torch.Generator().manual_seed(
                    derive_seed(self.seed, spec.name, "slot", slot, *stream.position)
                )
                samples.append(spec.processor(record, generator))
                fails = 0
            except BadSample as e:
                skipped.append((spec.name, e.reason, f"slot {slot} at {stream.position}: {e.detail}"))
                fails += 1
                if fails >= self.max_tries:
                    raise RuntimeError(
                        f"source {spec.name!r}: {self.max_tries} bad samples in a row in slot {slot} (last: {e})"
                    ) from e
        return samples, slot, stream.position


class _KeySampler(Sampler):
    """Endless micro-batch keys from wherever the loader stands when a DataLoader iteration starts."""

    def __init__(self) -> None:
        self.start: tuple[int, int, int, dict] = (0, 0, 0, {})
        self.accum_steps = 1

    def __iter__(self) -> Iterator[_MicroKey]:
        return _keys(*self.start[:2], self.accum_steps, *self.start[2:])


def _identity(x):
    return x


class MixtureLoader:
    """Iterate to get, for each optimizer step and each of its ``accum_steps`` micro-batches, {source: batch}.

    Every source contributes exactly its ``batch_size`` samples to every micro-batch. See the module docstring
    for the global layout (DDP-equivalence), the replacement of bad samples and streamed sources.

    Args:
        sources: the specs; names must be unique.
        seed: seeds permutations, per-sample processing and ``batch_seed``.
        rank, world_size, accum_steps: this process's place in the global batch.
        num_workers: DataLoader worker processes (0 = build in this process); results do not depend on it for
            map-style sources.
        start_step: first optimizer step to produce (or use ``load_state_dict``).
        max_tries: bad samples in a row before giving up on a position.
        prefetch_factor: micro-batches each worker prepares ahead.

    Iterating again (or after ``load_state_dict``) continues from the next micro-batch not yet handed out;
    micro-batches prefetched by workers but not handed out are rebuilt, never lost.
    """

    def __init__(
        self,
        sources: Sequence[SourceSpec],
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        accum_steps: int = 1,
        num_workers: int = 0,
        start_step: int = 0,
        max_tries: int = 64,
        prefetch_factor: int = 2,
    ) -> None:
        self.sources = list(sources)
        names = [s.name for s in self.sources]
        if not self.sources or len(set(names)) != len(names):
            raise ValueError(f"sources must be non-empty with unique names, got {names}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        if accum_steps < 1 or num_workers < 0 or start_step < 0 or max_tries < 1:
            raise ValueError(
                f"bad accum_steps {accum_steps}, num_workers {num_workers}, start_step {start_step} "
                f"or max_tries {max_tries}"
            )
        self.seed, self.rank, self.world_size, self.accum_steps = seed, rank, world_size, accum_steps
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
        self.slots_per_rank = max(1, num_workers)
        self._builder = _MicroBatches(self.sources, seed, rank, world_size, accum_steps, self.slots_per_rank, max_tries)
        self._step, self._micro = start_step, 0
        self._positions: dict[str, dict[int, tuple[int, int]]] = {s.name: {} for s in self.sources if s.streamed}
        self.skipped: dict[str, dict[str, int]] = {s.name: {} for s in self.sources}
        self._warned: set[tuple[str, str]] = set()
        self._generation = 0
        self._sampler = _KeySampler()
        self._sampler.accum_steps = accum_steps
        self._dataloader: DataLoader | None = None

    @property
    def position(self) -> tuple[int, int]:
        """(step, micro) of the next micro-batch to be handed out."""
        return self._step, self._micro

    def batch_seed(self, step: int, micro: int) -> int:
        """Seed of the model's loss generator for (step, micro) of this rank, tied to the global micro-batch."""
        return derive_seed(self.seed, "batch", step, self.rank * self.accum_steps + micro)

    def __iter__(self) -> Iterator[dict[str, dict]]:
        self._generation += 1
        restart = {name: dict(slots) for name, slots in self._positions.items()}
        if self.num_workers == 0:
            results = map(
                self._builder.build, _keys(self._step, self._micro, self.accum_steps, self._generation, restart)
            )
        else:
            self._sampler.start = (self._step, self._micro, self._generation, restart)
            results = iter(self._get_dataloader())
        for out in results:
            yield self._accept(out)

    def _get_dataloader(self) -> DataLoader:
        if self._dataloader is None:
            # Rust tokenizers warn (and may deadlock) when used in forked workers after use in the parent.
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            self._dataloader = DataLoader(
                self._builder,
                batch_size=None,
                sampler=self._sampler,
                collate_fn=_identity,
                num_workers=self.num_workers,
                persistent_workers=True,
                prefetch_factor=self.prefetch_factor,
                generator=torch.Generator().manual_seed(self.seed),
            )  # keeps the global RNG untouched
        return self._dataloader

    def _accept(self, out: dict) -> dict[str, dict]:
        if (out["step"], out["micro"]) != (self._step, self._micro):
            raise RuntimeError(f"got micro-batch {(out['step'], out['micro'])}, expected {(self._step, self._micro)}")
        for name, reason, detail in out["skipped"]:
            counts = self.skipped[name]
            counts[reason] = counts.get(reason, 0) + 1
            if (name, reason) not in self._warned:
                self._warned.add((name, reason))
                logger.warning(
                    "source %s: skipping bad samples (%s), e.g. %s; counted in loader.skipped", name, reason, detail
                )
        for name, (slot, pos) in out["positions"].items():
            self._positions[name][slot] = pos
        self._micro += 1
        if self._micro == self.accum_steps:
            self._step, self._micro = self._step + 1, 0
        return out["batch"]

    def state_dict(self) -> dict:
        """{"step", "micro": the next micro-batch, "positions", "skipped", "slots": total stream slots}.

        "positions" = {streamed source: {global slot: [pass, consumed]}} holds this rank's slots only, and
        "skipped" this rank's counts: to resume every rank, save each rank's dict, or merge the "positions" of all
        ranks (their slots are disjoint) and load the merged dict everywhere.
        """
        return {
            "step": self._step,
            "micro": self._micro,
            "positions": {
                name: {str(slot): list(pos) for slot, pos in slots.items()} for name, slots in self._positions.items()
            },
            "skipped": copy.deepcopy(self.skipped),
            "slots": self.world_size * self.slots_per_rank,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state`` was taken (call before iterating)."""
        step, micro = int(state["step"]), int(state.get("micro", 0))
        if step < 0 or not 0 <= micro < self.accum_steps:
            raise ValueError(f"cannot resume at step {step}, micro {micro} with accum_steps {self.accum_steps}")
        self._step, self._micro = step, micro
        saved = state.get("positions", {})
        same_layout = state.get("slots") == self.world_size * self.slots_per_rank
        own = range(self.rank * self.slots_per_rank, (self.rank + 1) * self.slots_per_rank)
        for name in self._positions:
            slots = {int(k): (int(v[0]), int(v[1])) for k, v in saved.get(name, {}).items()}
            if not slots or same_layout:  # keep only this rank's slots, so state dicts of ranks merge cleanly
                self._positions[name] = {s: pos for s, pos in slots.items() if s in own}
            else:
                next_pass = max(p for p, _ in slots.values()) + 1
                logger.warning(
                    "source %s: saved for %s stream slots, now %d; restarting its shards at pass %d",
                    name,
                    state.get("slots"),
                    self.world_size * self.slots_per_rank,
                    next_pass,
                )
                self._positions[name] = dict.fromkeys(own, (next_pass, 0))
        self.skipped = {s.name: dict(state.get("skipped", {}).get(s.name, {})) for s in self.sources}

    def close(self) -> None:
        """Stop the worker processes (they otherwise live as long as the loader)."""
        if self._dataloader is not None:
            iterator = getattr(self._dataloader, "_iterator", None)
            if iterator is not None:
                iterator._shutdown_workers()
            self._dataloader = None
