"""What every data source yields: *records* (plain dicts), the ``BadSample`` error, and seed derivation.

A text2image record is ``{"kind": "text2image", "image": <path | PIL.Image | bytes>, "caption": str}``; an
image2text record is ``{"kind": "image2text", "image": <path | PIL.Image | bytes | None>, "conversation": [{"role":
"user" | "assistant", "content": str}, ...]}`` where the user turn holding the image contains the literal
``<image>``. An image_edit record is ``{"kind": "image_edit", "source": <image>, "instruction": str, "target":
<image>}``. ``bytes`` are an encoded image file (what a tar shard holds). Records may carry more keys (``"key"``
for streamed samples); processors ignore them.
"""

from __future__ import annotations

import hashlib

IMAGE_TOKEN = "<image>"  # the literal marking where the image goes in a conversation

# Reasons under which bad samples are counted (``MixtureLoader.skipped``); the detail goes to the message.
MISSING_FILE = "missing file"
UNREADABLE_IMAGE = "unreadable image"
UNREADABLE_SHARD = "unreadable shard"
IMAGE_TOO_SMALL = "image too small"
EXTREME_ASPECT = "extreme aspect ratio"
TEXT_TOO_LONG = "text too long"
MALFORMED = "malformed record"
NO_IMAGE = "text-only sample in an image source"
UNEXPECTED_IMAGE = "image in a text-only source"
SEVERAL_IMAGES = "more than one image"

_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}


class BadSample(Exception):
    """A record that cannot become a training sample; the loader skips it, replaces it and counts ``reason``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # picklable with both arguments (sent back from DataLoader workers)
        return type(self), (self.reason, self.detail)


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple of ints and strings, stable across processes and Python runs.

    Used for every per-sample, per-epoch and per-micro-batch generator, e.g. ``derive_seed(seed, name, position)``.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def normalise_conversation(turns, has_image: bool) -> list[dict[str, str]]:
    """Turns in ``{"role", "content"}`` or LLaVA ``{"from", "value"}`` form -> ``[{"role", "content"}, ...]``.

    Roles human/user -> "user", gpt/assistant -> "assistant"; any other role, an empty list or a non-string content
    raises ``BadSample(MALFORMED)``. When ``has_image`` and no turn contains ``<image>``, ``<image>\\n`` is put at the
    start of the first user turn.
    """
    if not isinstance(turns, list) or not turns:
        raise BadSample(MALFORMED, "conversation is not a non-empty list")
    out = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise BadSample(MALFORMED, f"conversation turn is a {type(turn).__name__}")
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if role not in _ROLES or not isinstance(content, str):
            raise BadSample(
                MALFORMED, f"conversation turn with role {role!r} and content of type {type(content).__name__}"
            )
        out.append({"role": _ROLES[role], "content": content})
    if has_image and not any(IMAGE_TOKEN in t["content"] for t in out):
        first_user = next((t for t in out if t["role"] == "user"), None)
        if first_user is None:
            raise BadSample(MALFORMED, "conversation has an image but no user turn")
        first_user["content"] = f"{IMAGE_TOKEN}\n{first_user['content']}"
    return out


def caption_conversation(caption: str, instruction: str) -> list[dict[str, str]]:
    """A captioning conversation: the user asks ``instruction`` about the image, the assistant answers ``caption``."""
    return [
        {"role": "user", "content": f"{IMAGE_TOKEN}\n{instruction}"},
        {"role": "assistant", "content": caption.strip()},
    ]
