"""Request bodies of the OpenAI-shaped API, checked against the server's limits and turned into work for the model.

Every problem is an :class:`ApiError`: an HTTP status and a message that names the field (``messages[1].content[0]
.image_url``), sent as OpenAI's error JSON. Nothing here runs the model.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError

from harmon.serve.limits import ServeLimits
from harmon.validate import shown

ROLE_NAMES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# chat fields whose non-default values this server cannot honour: refused, not silently ignored
UNSUPPORTED_CHAT = ("tools", "functions", "stop", "logprobs", "response_format", "logit_bias")
# sampling penalties this server does not apply: any value but their default (0) would change nothing, silently
UNSUPPORTED_PENALTIES = ("frequency_penalty", "presence_penalty")


class ApiError(Exception):
    """A request the server refuses: ``status`` (4xx / 5xx), a message naming the problem, the field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}

    @property
    def kind(self) -> str:
        return "invalid_request_error" if self.status < 500 else "server_error"

    def body(self) -> dict[str, Any]:
        code = {404: "not_found", 413: "too_large", 415: "unsupported_media_type", 429: "rate_limit_exceeded"}
        error = {"message": self.message, "type": self.kind, "param": self.param, "code": code.get(self.status)}
        return {"error": error}


@dataclass(frozen=True)
class Served:
    """What the server serves: the model's name, its generation defaults and sizes, and the limits."""

    model_id: str
    limits: ServeLimits
    token_px: int  # image sizes are multiples of this
    default_size: int
    max_new_tokens: int  # the model's recorded answer length


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    n: int
    seed: int | None  # None: a fresh seed, and the request may share a batch
    settings: dict[str, Any] = field(default_factory=dict)  # HarmonPipeline.generate keywords the request set
    stream: bool = False

    @property
    def batch_key(self) -> tuple:
        """Requests with equal keys may run as one batch."""
        return tuple(sorted(self.settings.items()))


@dataclass
class ChatRequest:
    messages: list[dict[str, Any]]  # harmon.chat's shape, images as PIL images
    max_new_tokens: int
    temperature: float | None  # None or 0: greedy
    top_p: float
    seed: int | None
    stream: bool
    include_usage: bool


def _number(body: dict, name: str, low: float, high: float, integer: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    # an int is finite however many digits JSON gave it (math.isfinite would overflow converting it to a float)
    finite = ok and (isinstance(value, int) or math.isfinite(value))
    if isinstance(value, bool) or not finite or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ApiError(400, f"{name} must be {kind} in [{low}, {high}], got {shown(value)}", name)
    return value


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false, got {value!r}", name)
    return value


def check_model(body: dict, served: Served) -> None:
    model = body.get("model")
    if model is not None and model != served.model_id:
        raise ApiError(404, f"model {model!r} does not exist; this server serves {served.model_id!r}", "model")


def _text(value: Any, name: str, budget: list[int], empty_ok: bool = False) -> str:
    """``value`` as text, its characters taken from the request's budget ([characters left, limit])."""
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string, got {type(value).__name__}", name)
    if not empty_ok and not value.strip():
        raise ApiError(400, f"{name} is empty", name)
    budget[0] -= len(value)
    if budget[0] < 0:
        limit = f"the limit of {budget[1]} characters (--max-prompt-chars)"
        raise ApiError(400, f"{name}: the request's text is over {limit}", name)
    return value


def parse_size(value: Any, served: Served) -> int | None:
    """``size`` ("64x64", "auto" or absent) as one side in pixels; None keeps the model's."""
    if value is None or value == "auto":
        return None
    w, _, h = value.partition("x") if isinstance(value, str) else ("", "", "")
    if not (w.isdecimal() and h.isdecimal()) or w != h:  # isdigit also passes "²", which int() refuses
        raise ApiError(400, f"size must be 'NxN' (square) or 'auto', got {value!r}", "size")
    side, limit, px = int(w), served.limits.max_image_size, served.token_px
    if not 0 < side <= limit or side % px:
        raise ApiError(
            400, f"size must be a multiple of {px} px up to {limit}x{limit} (--max-image-size), got {value}", "size"
        )
    return side


def parse_generation(body: dict, served: Served, presets: tuple[str, ...]) -> GenerationRequest:
    """A ``POST /v1/images/generations`` body: prompt, n, size, response_format, stream, and our extras seed,
    guidance_scale, num_iter, num_sampling_steps, preset."""
    check_model(body, served)
    lim = served.limits
    prompt = _text(body.get("prompt"), "prompt", [lim.max_prompt_chars] * 2)
    n = _number(body, "n", 1, lim.max_n, integer=True)
    if body.get("response_format", "b64_json") not in ("b64_json", None):
        raise ApiError(400, "response_format must be 'b64_json': this server keeps no files to link", "response_format")
    settings: dict[str, Any] = {}
    size = parse_size(body.get("size"), served)
    if size is not None:
        settings["image_size"] = size
    for name, low, high, integer in (
        ("guidance_scale", 1.0, 100.0, False),
        ("num_iter", 1, lim.max_num_iter, True),
        ("num_sampling_steps", 1, lim.max_sampling_steps, True),
    ):
        value = _number(body, name, low, high, integer)
        if value is not None:
            settings[name] = value
    preset = body.get("preset")
    if preset is not None:
        if preset not in presets:
            raise ApiError(400, f"preset must be one of {', '.join(presets)}, got {preset!r}", "preset")
        settings["preset"] = preset
    seed = _number(body, "seed", 0, 2**63 - 1, integer=True)
    return GenerationRequest(prompt.strip(), n or 1, seed, settings, _flag(body, "stream"))


def decode_image(url: Any, where: str, limits: ServeLimits) -> Image.Image:
    """A ``data:image/...;base64,...`` URI as a decoded image; its size is checked from the header first."""
    if not isinstance(url, str) or not url.startswith("data:"):
        shown = repr(url[:40]) if isinstance(url, str) else type(url).__name__
        raise ApiError(400, f"{where} must be a data: URI (this server fetches nothing), got {shown}", where)
    header, comma, data = url[5:].partition(",")
    if not comma or not header.endswith(";base64") or not header.startswith("image/"):
        raise ApiError(400, f"{where} must be data:image/...;base64,<data>, got {url[:40]!r}", where)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ApiError(400, f"{where}: broken base64 ({err})", where) from None
    try:
        image = Image.open(io.BytesIO(raw))
        pixels = image.width * image.height
        if pixels > limits.max_image_pixels:
            raise ApiError(
                413,
                f"{where}: image of {image.width}x{image.height} = {pixels} pixels is over the limit of "
                f"{limits.max_image_pixels} (--max-image-pixels)",
                where,
            )
        image.load()
    except Image.DecompressionBombError as err:
        raise ApiError(413, f"{where}: {err}", where) from None
    except UnidentifiedImageError:  # its message names only an in-memory buffer
        raise ApiError(400, f"{where}: not an image in a format this server reads", where) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ApiError(400, f"{where}: not an image that can be read ({err})", where) from None
    return image


def _content(content: Any, where: str, served: Served, budget: list[int], images: list[int]) -> list[dict]:
    """One message's content as harmon.chat parts."""
    if isinstance(content, str):
        return [{"type": "text", "text": _text(content, where, budget, empty_ok=True)}]
    if not isinstance(content, list) or not content:
        raise ApiError(400, f"{where} must be a string or a non-empty list of parts", where)
    parts = []
    for j, part in enumerate(content):
        name = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": _text(part.get("text"), f"{name}.text", budget, empty_ok=True)})
        elif kind == "image_url":
            images[0] += 1
            if images[0] > served.limits.max_images:
                raise ApiError(400, f"{name}: more than {served.limits.max_images} images (--max-images)", name)
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            parts.append({"type": "image", "image": decode_image(url, f"{name}.image_url", served.limits)})
        else:
            raise ApiError(400, f"{name}.type must be 'text' or 'image_url', got {kind!r}", name)
    return parts


def parse_messages(messages: Any, served: Served) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", "messages")
    budget, images, out = [served.limits.max_prompt_chars] * 2, [0], []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or role not in ROLE_NAMES:  # a list or object as role is unhashable
            raise ApiError(400, f"{where}.role must be one of {', '.join(ROLE_NAMES)}, got {shown(role)}", where)
        parts = _content(message.get("content"), f"{where}.content", served, budget, images)
        if role != "assistant" and all(isinstance(p.get("text"), str) and not p["text"].strip() for p in parts):
            raise ApiError(400, f"{where}.content is empty: no text and no image", where)
        out.append({"role": ROLE_NAMES[role], "content": parts})
    if out[-1]["role"] != "user":
        raise ApiError(400, f"the last message must be the user's, got {out[-1]['role']!r}", "messages")
    return out


def _top_p(body: dict) -> float:
    value = _number(body, "top_p", 0.0, 1.0)
    if value == 0:
        raise ApiError(400, "top_p must be in (0, 1], got 0", "top_p")
    return 1.0 if value is None else value


def parse_chat(body: dict, served: Served) -> ChatRequest:
    """A ``POST /v1/chat/completions`` body. Greedy unless ``temperature`` > 0 is given."""
    check_model(body, served)
    for name in UNSUPPORTED_CHAT:
        if body.get(name) not in (None, [], {}, {"type": "text"}):  # the empty values clients send for "unset"
            raise ApiError(400, f"{name} is not supported by this server", name)
    for name in UNSUPPORTED_PENALTIES:
        if body.get(name) not in (None, 0):
            raise ApiError(400, f"{name} is not supported by this server (only 0, its default)", name)
    if body.get("n") not in (None, 1):
        raise ApiError(400, f"n must be 1 (one answer per request), got {body.get('n')!r}", "n")
    lim = served.limits
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if tokens is not None:
        tokens = _number({"max_tokens": tokens}, "max_tokens", 1, lim.max_new_tokens, integer=True)
    options = body.get("stream_options") or {}
    return ChatRequest(
        messages=parse_messages(body.get("messages"), served),
        max_new_tokens=tokens or min(served.max_new_tokens, lim.max_new_tokens),
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_top_p(body),
        seed=_number(body, "seed", 0, 2**63 - 1, integer=True),
        stream=_flag(body, "stream"),
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
    )
