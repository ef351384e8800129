"""A `harmon serve` process on a free loopback port for the server's tests, and small HTTP helpers.

Every request goes to 127.0.0.1 only, with a timeout.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
# small enough that the bad-input tests cross each limit with small requests
TEST_LIMITS = ("--max-body-bytes", "262144", "--max-image-pixels", "262144", "--max-queue", "8", "--timeout", "60")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss(self) -> int:
        """The server process's resident memory in bytes (Linux)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)


def start_server(log: Path, *flags: str) -> Server:
    """``harmon serve`` on the shipped model in a child process, once /health answers (within 90 s)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "harmon.cli", "serve", "--port", str(port), *TEST_LIMITS, *flags]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(proc, port)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"harmon serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            get(server.url + "/health", timeout=1)
            return server
        except OSError:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"harmon serve did not answer within 90 s: {log.read_text()[-2000:]}")


def get(url: str, timeout: float = 30) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def post(url: str, body: bytes | dict, content_type: str = "application/json", timeout: float = 60):
    """(status, headers (case-blind), parsed JSON or raw bytes) of a POST; HTTP errors are returned, not raised."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, headers, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as err:
        status, headers, raw = err.code, err.headers, err.read()
    try:
        return status, headers, json.loads(raw)
    except ValueError:
        return status, headers, raw


def open_stream(server: Server, path: str, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """A POST whose server-sent events are read line by line from the returned response."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    return conn, conn.getresponse()


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def eval_image(index: int = 0) -> Path:
    from harmon.shipped import shipped_model_path

    return sorted((shipped_model_path().parent / "eval" / "shapes_pope" / "images").glob("*.png"))[index]
