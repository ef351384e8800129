"""The server's queue, batching, timeouts and cancellation, timed with a stand-in pipeline whose steps take as long
as the test says (no model): what the shipped model finishes too fast to show."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from types import SimpleNamespace

import pytest
from PIL import Image

from harmon.config import GenerationDefaults
from harmon.serve.limits import ServeLimits
from harmon.serve.requests import GenerationRequest
from harmon.serve.worker import Job, QueueFull, Worker

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


class SlowStream:
    """A chat answer of ``count`` pieces, one every ``seconds``."""

    def __init__(self, seconds: float, count: int, log: list) -> None:
        self.seconds, self.count, self.log = seconds, count, log
        self.prompt_tokens, self.completion_tokens, self.finish_reason = 5, 0, None

    def __iter__(self):
        for _ in range(self.count):
            time.sleep(self.seconds)
            self.completion_tokens += 1
            yield "word "
        self.finish_reason = "length"

    def close(self) -> None:
        self.log.append("closed")


class StandIn:
    """The part of HarmonPipeline the server uses; each masked-autoregressive step takes ``seconds``."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.config = SimpleNamespace(token_px=32, generation=GenerationDefaults(image_size=64, num_iter=4))
        self.calls: list[list[str]] = []
        self.log: list[str] = []

    def generation_settings(self, **settings):
        return SimpleNamespace(num_iter=settings.get("num_iter", 4), num_sampling_steps="100"), 64

    def generate(self, prompts, generator, callback, **settings):
        self.calls.append(list(prompts))
        for step in range(4):
            time.sleep(self.seconds)
            callback(step + 1, 4)
        return [Image.new("RGB", (64, 64), "white") for _ in prompts]

    def chat(self, messages, stream, **settings):
        return SlowStream(self.seconds, 40, self.log)


def job(prompt: str = "a", n: int = 1, seed: int | None = None, seconds: float = 30, **settings) -> Job:
    events: list = []
    made = Job(GenerationRequest(prompt, n, seed, settings), events.append, time.monotonic() + seconds)
    made.events = events  # type: ignore[attr-defined]
    return made


def wait_for(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_unseeded_requests_with_equal_settings_share_a_batch_and_seeded_ones_run_alone():
    pipe = StandIn()
    worker = Worker(pipe, ServeLimits(max_batch=4))
    jobs = [job("a", 2), job("b", seed=1), job("c"), job("d", num_iter=2), job("e"), job("f")]
    for j in jobs:
        worker.submit(j)
    worker.start()
    wait_for(lambda: all(j.finished for j in jobs))
    worker.close()
    assert pipe.calls == [["a", "a", "c", "e"], ["b"], ["d"], ["f"]]  # at most 4 images a batch
    assert [len([e for e in j.events if e[0] == "image"]) for j in jobs] == [2, 1, 1, 1, 1, 1]
    assert worker.stats["batches"] == 4 and worker.stats["done"] == 6


def test_a_full_queue_refuses_with_a_retry_time_and_a_cancelled_job_leaves_it():
    worker = Worker(StandIn(), ServeLimits(max_queue=2))
    first, second = job(), job()
    worker.submit(first)
    worker.submit(second)
    with pytest.raises(QueueFull) as full:
        worker.submit(job())
    assert full.value.retry_after >= 1 and worker.stats["refused"] == 1
    worker.cancel(first, "cancelled")
    assert worker.pending == 1
    worker.submit(job())  # room again


def test_work_past_its_deadline_stops_at_the_next_step():
    worker = Worker(StandIn(seconds=0.1), ServeLimits()).start()
    late = job(seconds=0.15)
    worker.submit(late)
    wait_for(lambda: worker.stats["stopped"] == 1)
    worker.close()
    assert [e[0] for e in late.events] == ["progress"]  # one step, then nothing: no image, no "done"


@contextlib.contextmanager
def serving(pipe, **limits):
    """The app over ``pipe`` on a free loopback port, in a thread of this process."""
    import uvicorn

    from harmon.serve import create_app

    app = create_app(pipe, ServeLimits(**limits), "stand-in")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app.state.worker
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_a_request_over_its_time_gets_504_and_its_work_stops():
    from serve_helpers import post

    with serving(StandIn(seconds=0.2), timeout=0.3) as (url, worker):
        status, _, answer = post(url + "/v1/images/generations", {"prompt": "a red circle"})
        assert status == 504 and "0.3 s (--timeout)" in answer["error"]["message"]
        wait_for(lambda: worker.stats["stopped"] == 1)
        assert worker.stats["timed_out"] == 1


def send(url: str, path: str, body: dict) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=30)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    return conn


def test_a_chat_client_that_leaves_mid_stream_stops_the_answer():
    pipe = StandIn(seconds=0.05)
    with serving(pipe) as (url, worker):
        conn = send(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True})
        response = conn.getresponse()
        lines = [response.readline() for _ in range(4)]  # the role chunk and the first piece
        assert b'"word "' in b"".join(lines)
        conn.sock.close()
        conn.close()
        wait_for(lambda: worker.stats["stopped"] == 1, seconds=5)  # long before the 40 pieces (2 s) were written
        assert worker.stats["cancelled"] == 1 and pipe.log == ["closed"]


def test_a_client_that_leaves_before_its_images_are_ready_stops_the_work():
    with serving(StandIn(seconds=0.2)) as (url, worker):
        conn = send(url, "/v1/images/generations", {"prompt": "a red circle"})  # no stream: one answer at the end
        wait_for(lambda: worker.stats["batches"] == 1)
        conn.sock.close()
        conn.close()
        wait_for(lambda: worker.stats["stopped"] == 1, seconds=5)
        assert worker.stats["cancelled"] == 1 and worker.stats.get("done", 0) == 0


def test_a_busy_server_answers_429_with_retry_after():
    from serve_helpers import post

    with serving(StandIn(seconds=0.3), max_queue=1) as (url, worker):
        slow = threading.Thread(target=post, args=(url + "/v1/images/generations", {"prompt": "a"}))
        slow.start()
        wait_for(lambda: worker.pending == 1)
        status, headers, answer = post(url + "/v1/images/generations", {"prompt": "b"})
        slow.join()
        assert status == 429 and int(headers["Retry-After"]) >= 1
        assert "busy" in answer["error"]["message"] and answer["error"]["code"] == "rate_limit_exceeded"
