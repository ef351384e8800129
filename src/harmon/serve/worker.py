"""The model's one worker thread: a bounded queue of requests, run one batch at a time, stopped when abandoned.

Requests wait in a queue of at most ``max_queue`` (waiting and running together); one more is refused at once with
:class:`QueueFull`, which the server turns into 429 with ``Retry-After``. Concurrent generation requests without a
seed and with the same settings run as one batch of up to ``max_batch`` images (a seeded request runs alone, so
its images are the ones ``harmon generate --seed`` draws). A request whose client left or whose time ran out is
dropped from the queue, and work in progress for it stops at the next masked-autoregressive step or token.

Results travel as events through each job's ``emit`` (called on the worker thread):
``("progress", step, total)``, ``("image", png_bytes)``, ``("start", prompt_tokens)``, ``("piece", text)``,
``("done", info)`` or ``("error", status, message)``.
"""

from __future__ import annotations

import io
import logging
import math
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from harmon.serve.limits import ServeLimits
from harmon.serve.requests import ChatRequest, GenerationRequest

logger = logging.getLogger(__name__)

Event = tuple


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests; try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy; retry after {retry_after} s")
        self.retry_after = retry_after


class Stopped(Exception):
    """Every request of a running batch was abandoned: its work stops."""


@dataclass(eq=False)
class Job:
    request: GenerationRequest | ChatRequest
    emit: Callable[[Event], None]
    deadline: float  # time.monotonic() after which the request is abandoned
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: bool = False  # "done" or "error" was emitted

    def alive(self) -> bool:
        return not self.cancelled.is_set() and time.monotonic() < self.deadline

    def finish(self, event: Event) -> None:
        self.finished = True
        self.emit(event)


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class Worker:
    """Runs the jobs of one pipeline on one thread; see the module docstring."""

    def __init__(self, pipe, limits: ServeLimits) -> None:
        self.pipe, self.limits = pipe, limits
        self.stats: Counter[str] = Counter()  # done, failed, refused, cancelled, timed_out, stopped, batches
        self._waiting: deque[Job] = deque()
        self._running = 0
        self._cond = threading.Condition()
        self._closed = False
        self._seconds = 1.0  # running mean of a batch's seconds, for Retry-After
        self._thread = threading.Thread(target=self._loop, name="harmon-model", daemon=True)

    def start(self) -> Worker:
        self._thread.start()
        return self

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=self.limits.timeout)

    @property
    def pending(self) -> int:
        """Requests waiting or running."""
        with self._cond:
            return len(self._waiting) + self._running

    def submit(self, job: Job) -> None:
        """Queue ``job``; QueueFull when ``max_queue`` requests wait or run already."""
        with self._cond:
            if self._closed:
                raise QueueFull(1)
            load = len(self._waiting) + self._running
            if load >= self.limits.max_queue:
                self.stats["refused"] += 1
                raise QueueFull(max(1, math.ceil(self._seconds * load)))  # one worker drains the queue
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job, reason: str) -> None:
        """Abandon ``job`` ("cancelled": its client left; "timed_out"): out of the queue, or stopped when running."""
        if job.finished or job.cancelled.is_set():
            return
        job.cancelled.set()
        with self._cond:
            self.stats[reason] += 1
            if job in self._waiting:
                self._waiting.remove(job)

    def _count(self, key: str, n: int = 1) -> None:
        with self._cond:
            self.stats[key] += n

    def _take_batch(self) -> list[Job]:
        """The next job and, for an unseeded generation, the queued ones it can share a batch with (lock held)."""
        first = self._waiting.popleft()
        batch = [first]
        req = first.request
        if isinstance(req, GenerationRequest) and req.seed is None and self.limits.max_batch > 1:
            images = req.n
            for job in list(self._waiting):
                other = job.request
                fits = isinstance(other, GenerationRequest) and other.seed is None and other.batch_key == req.batch_key
                if fits and images + other.n <= self.limits.max_batch:
                    self._waiting.remove(job)
                    batch.append(job)
                    images += other.n
        return batch

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                batch = [job for job in self._take_batch() if job.alive()]
                self._running = len(batch)
            start = time.monotonic()
            try:
                if batch:
                    self._run(batch)
            finally:
                with self._cond:
                    self._running = 0
                    self._seconds = 0.8 * self._seconds + 0.2 * (time.monotonic() - start)

    def _run(self, batch: list[Job]) -> None:
        """Run one batch; every job ends with "done" or "error" unless it was abandoned."""
        self._count("batches")
        try:
            if isinstance(batch[0].request, ChatRequest):
                self._chat(batch[0])
            else:
                self._generate(batch)
            self._count("done", len(batch))
        except Stopped:
            self._count("stopped")
        except (ValueError, TypeError, OSError) as err:  # the request does not fit the model (its context, ...)
            self._fail(batch, 400, str(err))
        except Exception as err:  # a fault of ours: logged with its traceback, named to the client in one line
            logger.exception("request failed")
            self._fail(batch, 500, f"internal error: {type(err).__name__}: {err}")

    def _fail(self, batch: list[Job], status: int, message: str) -> None:
        self._count("failed", len(batch))
        for job in batch:
            if not job.finished:
                job.finish(("error", status, message))

    def _generate(self, batch: list[Job]) -> None:
        first: GenerationRequest = batch[0].request  # type: ignore[assignment]
        prompts = [job.request.prompt for job in batch for _ in range(job.request.n)]  # type: ignore[union-attr]
        seed = first.seed if first.seed is not None else secrets.randbits(63)

        def progress(step: int, total: int) -> None:
            alive = [job for job in batch if job.alive()]
            if not alive:
                raise Stopped
            for job in alive:
                job.emit(("progress", step, total))

        # prompts listed n times each with one image per prompt draw what one prompt with n images per prompt does
        images = self.pipe.generate(
            prompts, generator=torch.Generator().manual_seed(seed), callback=progress, **first.settings
        )
        start = 0
        for job in batch:
            n = job.request.n  # type: ignore[union-attr]
            if job.alive():
                for image in images[start : start + n]:
                    job.emit(("image", png_bytes(image)))
                job.finish(("done", {"seed": first.seed, "batch": len(prompts)}))
            start += n

    def _chat(self, job: Job) -> None:
        req: ChatRequest = job.request  # type: ignore[assignment]
        sample = bool(req.temperature)
        stream = self.pipe.chat(
            req.messages,
            stream=True,
            max_new_tokens=req.max_new_tokens,
            do_sample=sample,
            temperature=req.temperature if sample else 1.0,
            top_p=req.top_p,
            generator=torch.Generator().manual_seed(secrets.randbits(63) if req.seed is None else req.seed),
        )
        job.emit(("start", stream.prompt_tokens))
        try:
            for piece in stream:
                if not job.alive():
                    raise Stopped
                job.emit(("piece", piece))
        finally:
            stream.close()
        info: dict[str, Any] = {
            "finish_reason": stream.finish_reason,
            "prompt_tokens": stream.prompt_tokens,
            "completion_tokens": stream.completion_tokens,
        }
        job.finish(("done", info))
