"""The page of ``harmon serve`` in a real browser: headless Chromium (Debian's, driven by Playwright) types a prompt,
generates, uploads an image, asks about it and reads the streamed answer; screenshots are taken and looked at.

Skipped on a machine without Chromium or Playwright, except in CI (``CI`` set), where .ci/run installs both and a
missing one fails.
"""

from __future__ import annotations

import base64
import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from serve_helpers import eval_image, post

from harmon.shipped import shipped_model_path

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shipped_model_path() is None, reason="this checkout carries no shipped model"),
]
# flags for a sandboxed root process on a machine with no network beyond loopback
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PROMPT = "a red circle to the left of a blue square"


def needed(what: str):
    """Fail in CI, skip elsewhere, when ``what`` is missing."""
    message = f"{what} is missing (.ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        needed("the playwright package")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        needed("Chromium")
    with sync_playwright() as p:
        running = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield running
        running.close()


def decoded_pixels(shot: bytes, size: int = 64) -> np.ndarray:
    """A screenshot of an image shown at a whole multiple of its size with pixelated scaling, sampled back at one
    screen pixel per image pixel (the centre of each block)."""
    image = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))
    scale = image.shape[0] / size
    centres = ((np.arange(size) + 0.5) * scale).astype(int)
    return image[np.ix_(centres, centres)]


def test_generate_and_chat_on_the_page(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready='1']")
    page.fill("#prompt", PROMPT)
    page.fill("#seed", "3")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#gen-status').textContent.startsWith('done')", timeout=60_000)
    assert page.eval_on_selector("#gen-progress", "bar => bar.value") == 1
    image = page.locator("#results img").first
    assert image.evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]") == [True, 64, 64]
    shown = decoded_pixels(image.screenshot(path=str(tmp_path / "generated.png")))
    status, _, answer = post(server.url + "/v1/images/generations", {"prompt": PROMPT, "seed": 3})
    drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["data"][0]["b64_json"]))).convert("RGB"))
    assert status == 200 and drawn.std() > 20  # a picture, not a blank
    assert np.abs(shown.astype(int) - drawn.astype(int)).mean() < 4  # the page shows the image the API draws

    page.evaluate(  # count the answer's updates: a streamed answer grows in several steps
        """() => { window.updates = 0; new MutationObserver(() => window.updates++)
        .observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true}); }"""
    )
    page.set_input_files("#chat-image", str(eval_image(3)))
    page.wait_for_selector("#attached img")
    page.fill("#chat-text", "Describe the image.")
    page.click("#send")
    page.wait_for_selector(".msg.assistant[data-done='1']", timeout=60_000)
    answer_text = page.inner_text(".msg.assistant")
    page.screenshot(path=str(tmp_path / "page.png"))
    assert page.evaluate("window.updates") >= 4  # the two bubbles, then at least two pieces of the answer
    question = {"type": "text", "text": "Describe the image."}
    image_part = {"type": "image_url", "image_url": {"url": page.eval_on_selector(".msg.user img", "i => i.src")}}
    _, _, reply = post(
        server.url + "/v1/chat/completions", {"messages": [{"role": "user", "content": [image_part, question]}]}
    )
    assert answer_text == reply["choices"][0]["message"]["content"] != ""

    shot = np.asarray(Image.open(tmp_path / "page.png").convert("RGB"))
    box = image.bounding_box()
    region = shot[int(box["y"]) : int(box["y"] + box["height"]), int(box["x"]) : int(box["x"] + box["width"])]
    assert region.std() > 20  # the full-page screenshot shows the decoded image, not an empty frame
