"""``harmon serve`` as programs meet it: the official ``openai`` client, raw HTTP with bad input, 50 requests at
once, and a client that leaves mid-stream. One server process on a free loopback port (tests/conftest.py)."""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image
from serve_helpers import data_uri, eval_image, get, open_stream, post

from harmon.pipeline import HarmonPipeline
from harmon.shipped import shipped_model_path

pytestmark = pytest.mark.skipif(shipped_model_path() is None, reason="this checkout carries no shipped model")
MODEL = "harmon-shapes-tiny"
GOLDEN = json.loads((Path(__file__).parent / "golden" / "golden.json").read_text())["describe"]


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_models_health_and_page(server):
    assert get(server.url + "/v1/models")["data"][0]["id"] == MODEL
    assert get(server.url + f"/v1/models/{MODEL}")["id"] == MODEL
    assert get(server.url + "/health")["status"] == "ok"
    info = get(server.url + "/api/info")
    assert info["limits"]["max_queue"] == 8 and info["defaults"]["image_size"] == 64
    import urllib.request

    with urllib.request.urlopen(server.url + "/", timeout=10) as r:
        page = r.read().decode()
    assert "/static/app.js" in page and "http" not in page.replace("http-equiv", "")  # nothing from other hosts


def test_the_openai_client_draws_images_and_streams_an_answer(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    prompt = "a red circle to the left of a blue square"
    result = client.images.generate(
        model=MODEL, prompt=prompt, n=2, size="64x64", response_format="b64_json", extra_body={"seed": 7}
    )
    pipe = HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu")
    expected = pipe.generate(prompt, num_images_per_prompt=2, generator=torch.Generator().manual_seed(7))
    assert [base64.b64decode(d.b64_json) for d in result.data] == [png(im) for im in expected]  # = harmon generate

    case = GOLDEN[3]
    content = [
        {"type": "image_url", "image_url": {"url": data_uri(eval_image(3))}},
        {"type": "text", "text": case["question"]},
    ]
    messages = [{"role": "user", "content": content}]
    stream = client.chat.completions.create(model=MODEL, messages=messages, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) >= 2 and "".join(pieces) == case["answer"]  # = describe, in pieces
    reply = client.chat.completions.create(model=MODEL, messages=messages)
    assert reply.choices[0].message.content == case["answer"] and reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens >= 2


def test_an_image_stream_reports_every_masked_autoregressive_step(server):
    conn, response = open_stream(server, "/v1/images/generations", {"prompt": "two green triangles", "stream": True})
    events = [line[6:] for line in response.read().decode().splitlines() if line.startswith("data: ")]
    conn.close()
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    steps = [(e["step"], e["total"]) for e in parsed if e["type"] == "image_generation.progress"]
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert Image.open(io.BytesIO(base64.b64decode(parsed[-1]["b64_json"]))).size == (64, 64)


def big_png(side: int) -> str:
    return "data:image/png;base64," + base64.b64encode(png(Image.new("RGB", (side, side), "white"))).decode()


def chat_with(url: str, text: str = "What is it?") -> dict:
    return {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}],
            }
        ]
    }


BAD = [
    ("images", b"x" * 300_000, "application/json", 413, "--max-body-bytes"),
    ("chat", chat_with(big_png(1024)), None, 413, "--max-image-pixels"),
    ("chat", chat_with("data:image/png;base64,iVBORw0KGgo%%%"), None, 400, "broken base64"),
    ("chat", chat_with("data:image/png;base64,aGVsbG8="), None, 400, "not an image"),
    ("chat", chat_with("https://example.com/a.png"), None, 400, "fetches nothing"),
    ("images", {"prompt": "a red circle"}, "text/plain", 415, "Content-Type must be application/json"),
    ("images", b"{not json", "application/json", 400, "not valid JSON"),
    ("images", {"prompt": "a red circle", "n": -1}, None, 400, "n must be an integer in [1, 4]"),
    ("images", {"prompt": "a red circle", "model": "dall-e-3"}, None, 404, "'dall-e-3' does not exist"),
    ("images", {"prompt": "x" * 5000}, None, 400, "--max-prompt-chars"),
    ("images", {"prompt": "red " * 900}, None, 400, "exceed the model's context"),
    ("images", {"prompt": "a red circle", "size": "80x80"}, None, 400, "multiple of 32"),
    ("images", {"prompt": "a red circle", "num_iter": 1000}, None, 400, "num_iter must be"),
    ("images", {"prompt": "a red circle", "response_format": "url"}, None, 400, "b64_json"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, None, 400, "max_tokens"),
    ("chat", {"messages": [{"role": "tool", "content": "hi"}]}, None, 400, "role must be one of"),
    ("chat", {"messages": [{"role": "user", "content": "word " * 700}]}, None, 400, "exceed the model's context"),
]


@pytest.mark.parametrize("route,body,ctype,status,phrase", BAD, ids=[b[-1][:24] for b in BAD])
def test_bad_input_gets_a_4xx_that_names_the_problem(server, route, body, ctype, status, phrase):
    path = "/v1/images/generations" if route == "images" else "/v1/chat/completions"
    got, _, answer = post(server.url + path, body, ctype or "application/json")
    assert got == status, answer
    assert phrase in answer["error"]["message"] and answer["error"]["type"] == "invalid_request_error"


def test_unknown_routes_and_methods_answer_json(server):
    assert post(server.url + "/v1/embeddings", {})[0] == 404
    status, _, answer = post(server.url + "/v1/models", {})
    assert status == 405 and "POST /v1/models" in answer["error"]["message"]


def burst(server, count: int) -> list[tuple[int, dict, object]]:
    """``count`` requests at once (image generations and chats alternating), each on its own connection."""
    image = data_uri(eval_image(0))

    def one(i: int):
        if i % 2:
            return post(server.url + "/v1/chat/completions", chat_with(image), timeout=60)
        return post(server.url + "/v1/images/generations", {"prompt": "a purple square", "preset": "lean"}, timeout=60)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_fifty_requests_at_once_are_answered_or_refused_and_memory_returns(server):
    burst(server, 50)  # the first burst fills the allocator's pools; the second must not grow the process
    before = server.rss()
    answers = burst(server, 50)
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 8 and statuses.count(429) >= 1, statuses
    for status, headers, body in answers:
        if status == 429:
            assert int(headers["Retry-After"]) >= 1 and "busy" in body["error"]["message"]
        else:
            assert body.get("data") or body.get("choices")
    deadline = time.monotonic() + 10  # the worker counts a batch off just after its answers are sent
    while (health := get(server.url + "/health"))["queue"]["pending"]:
        assert time.monotonic() < deadline, health
        time.sleep(0.05)
    assert health["requests"]["refused"] >= 1
    assert server.rss() - before < 32 * 2**20, (before, server.rss())


def test_a_client_that_leaves_mid_stream_stops_the_work(server):
    before = get(server.url + "/health")["requests"].get("stopped", 0)
    heavy = {"prompt": "a red circle", "stream": True, "n": 4, "size": "128x128", "num_iter": 16}
    conn, response = open_stream(server, "/v1/images/generations", {**heavy, "num_sampling_steps": 250})
    assert response.status == 200
    while not response.readline().startswith(b"data: "):
        pass
    conn.sock.close()  # gone after the first step
    conn.close()
    deadline = time.monotonic() + 20
    while get(server.url + "/health")["requests"].get("stopped", 0) == before:
        assert time.monotonic() < deadline, "the abandoned generation was not stopped"
        time.sleep(0.05)
    conn, response = open_stream(server, "/v1/chat/completions", {**chat_with(data_uri(eval_image(1))), "stream": True})
    response.readline()
    conn.sock.close()  # a chat stream left after its first line: the server goes on serving
    conn.close()
    assert get(server.url + "/health")["status"] == "ok"
    assert post(server.url + "/v1/images/generations", {"prompt": "a red circle", "preset": "lean"})[0] == 200
