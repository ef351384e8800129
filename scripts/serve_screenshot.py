"""Write docs/serve.png: the page of ``harmon serve`` on the shipped model after one generation and one chat turn.

    python scripts/serve_screenshot.py [--out docs/serve.png]

Starts ``harmon serve`` on a free loopback port, drives the page in headless Chromium (Debian's ``chromium``, through
Playwright) as tests/test_serve_page.py does, and saves the screenshot.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def serve() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "harmon.cli", "serve", "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "/health", timeout=1).close()
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("harmon serve did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "serve.png"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from harmon.shipped import shipped_model_path

    image = shipped_model_path().parent / "eval" / "shapes_pope" / "images" / "shapes_00003.png"
    proc, url = serve()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
            page = browser.new_page(viewport={"width": 1100, "height": 640})
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']")
            page.fill("#prompt", "a red circle to the left of a blue square")
            page.fill("#seed", "0")
            page.fill("#n", "2")
            page.click("#generate")
            page.wait_for_function("document.querySelector('#gen-status').textContent.startsWith('done')")
            page.set_input_files("#chat-image", str(image))
            page.wait_for_selector("#attached img")
            page.fill("#chat-text", "Describe the image.")
            page.click("#send")
            page.wait_for_selector(".msg.assistant[data-done='1']")
            page.screenshot(path=args.out)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
