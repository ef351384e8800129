"""``harmon serve`` on the shipped model: time to the first streamed token, tokens/s, and images/s for 1 and for 8
concurrent generation requests with and without batching.

    python benchmarks/serve.py                      # about a minute; one JSON line per result, the machine first
    python benchmarks/serve.py --threads 2 --requests 48 --out serve.jsonl

Each server is a ``harmon serve`` child process on a free loopback port (every request goes to 127.0.0.1).
Chat: ``--chats`` streamed chat completions one after the other (an image of the shipped evaluation set and
"Describe the image."); time to first token is from sending the request to the first content chunk, and the decode
rate is the tokens after the first over the time after it. The model's own decoding rate, without HTTP, is measured
in this process on 200 tokens with the end-of-turn token ignored. Images: ``--requests`` unseeded generation
requests (n = 1, the model's settings) sent by 1 client, then by 8 clients at once, against a server with
``--max-batch 1`` (one request at a time) and one with ``--max-batch 8`` (concurrent requests with equal settings
drawn as one batch), both running, in ``--rounds`` interleaved rounds.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def machine() -> dict:
    """The CPU these figures come from (harmon.cpuinfo: model, cores, vector flags, threads, torch)."""
    from harmon.cpuinfo import cpu_info

    return {"bench": "machine", **cpu_info()}


def start(threads: int, *flags: str) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "harmon.cli", "serve", "--port", str(port), "--max-queue", "64", *flags]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            request(port, "GET", "/health", None)
            return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("harmon serve did not start within 120 s")


def request(port: int, method: str, path: str, body: dict | None) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, json.dumps(body) if body else None, {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {data}")
        return data
    finally:
        conn.close()


def streamed_chat(port: int, image_url: str) -> dict:
    """One streamed chat completion: seconds to the first content chunk, the tokens and the seconds after it."""
    content = [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": "Describe the image."}]
    body = {
        "messages": [{"role": "user", "content": content}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    sent = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    first, tokens = None, 0
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        elif chunk["choices"][0]["delta"].get("content") and first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    conn.close()
    return {"ttft_s": first - sent, "tokens": tokens, "after_first_s": end - first}


def bench_chat(port: int, count: int) -> dict:
    from harmon.shipped import shipped_model_path

    images = sorted((shipped_model_path().parent / "eval" / "shapes_pope" / "images").glob("*.png"))
    urls = ["data:image/png;base64," + base64.b64encode(p.read_bytes()).decode() for p in images[: count + 2]]
    streamed_chat(port, urls[-1])  # warm-up
    runs = [streamed_chat(port, url) for url in urls[:count]]
    later = sum(r["tokens"] - 1 for r in runs) / sum(r["after_first_s"] for r in runs)
    return {
        "bench": "chat_over_http",
        "chats": count,
        "ttft_ms_median": round(1000 * statistics.median(r["ttft_s"] for r in runs), 2),
        "ttft_ms_max": round(1000 * max(r["ttft_s"] for r in runs), 2),
        "tokens_per_answer_mean": round(statistics.mean(r["tokens"] for r in runs), 2),
        "decode_tokens_per_s_after_first": round(later, 1),
    }


def bench_decoding(tokens: int = 200) -> dict:
    """The model's decoding rate in this process, without HTTP: ``tokens`` tokens, end of turn ignored."""
    import torch

    from harmon.chat import embed, render
    from harmon.decoding import iter_decode
    from harmon.pipeline import HarmonPipeline
    from harmon.shipped import shipped_model_path

    pipe = HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu")
    image = sorted((shipped_model_path().parent / "eval" / "shapes_pope" / "images").glob("*.png"))[0]
    prompt = render(
        pipe, [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Hi"}]}]
    )
    rates = []
    with torch.no_grad():
        for _ in range(3):
            inputs = embed(pipe, prompt.items)
            start = time.perf_counter()
            count = sum(1 for _ in iter_decode(pipe.model, inputs, max_new_tokens=tokens, eos_token_id=-1))
            rates.append(count / (time.perf_counter() - start))
    return {"bench": "decode_in_process", "tokens": tokens, "tokens_per_s_best_of_3": round(max(rates), 1)}


def bench_images(port: int, clients: int, count: int) -> float:
    """Images/s of ``count`` unseeded one-image requests sent by ``clients`` clients at once."""
    body = {"prompt": "a red circle to the left of a blue square", "n": 1}
    request(port, "POST", "/v1/images/generations", body)  # warm-up
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda _: request(port, "POST", "/v1/images/generations", body), range(count)))
    return count / (time.perf_counter() - start)


def bench_batching(threads: int, count: int, rounds: int) -> list[dict]:
    """Images/s of 1 and 8 clients against a server without batching and one with, both running, measured in
    interleaved rounds (a shared machine's speed drifts): the best and the median round of each."""
    servers = {batch: start(threads, "--max-batch", str(batch)) for batch in (1, 8)}
    rates: dict[tuple[int, int], list[float]] = {(b, c): [] for b in servers for c in (1, 8)}
    try:
        for _ in range(rounds):
            for batch, clients in rates:
                rates[batch, clients].append(bench_images(servers[batch][1], clients, count))
        batches = {b: request(port, "GET", "/health", None)["requests"]["batches"] for b, (_, port) in servers.items()}
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    return [
        {
            "bench": "images_over_http",
            "max_batch": batch,
            "clients": clients,
            "threads": threads,
            "requests": count,
            "rounds": rounds,
            "images_per_s_best": round(max(got), 2),
            "images_per_s_median": round(statistics.median(got), 2),
            "model_batches_all_rounds": batches[batch],
        }
        for (batch, clients), got in rates.items()
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # one thread: the shipped model's matrices are too small for a second one to pay on a shared 2-core machine
    p.add_argument("--threads", type=int, default=1, help="torch threads of each server process and of this one")
    p.add_argument("--chats", type=int, default=20)
    p.add_argument("--requests", type=int, default=48, help="generation requests per measurement")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the image measurements")
    p.add_argument("--out", help="append the JSON lines here too")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    results = [{**machine(), "load_average": os.getloadavg()}, bench_decoding()]
    proc, port = start(args.threads)
    try:
        results.append({**bench_chat(port, args.chats), "threads": args.threads})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    results += bench_batching(args.threads, args.requests, args.rounds)
    cpu = {k: v for k, v in machine().items() if k != "bench"}
    for res in results:
        line = json.dumps({**res, **cpu, "threads": args.threads})
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
