"""Record -> training sample tensors, and the collate functions (spec §11.3, §11.4).

A processor is a callable ``processor(record, generator) -> dict``; every random choice (CFG drop, crop offset)
is drawn from ``generator``, which the loader seeds from (seed, source, stream position), so a sample does not
depend on which rank or worker builds it. Anything that makes a record unusable raises :class:`BadSample`.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from harmon import rng
from harmon.data.records import (
    EXTREME_ASPECT,
    IMAGE_TOKEN,
    IMAGE_TOO_SMALL,
    MALFORMED,
    MISSING_FILE,
    NO_IMAGE,
    SEVERAL_IMAGES,
    TEXT_TOO_LONG,
    UNEXPECTED_IMAGE,
    UNREADABLE_IMAGE,
    BadSample,
    normalise_conversation,
)
from harmon.images import center_crop_square, expand_to_square, load_image, pil_to_tensor, to_rgb
from harmon.prompts import (
    CHAT_TEMPLATE,
    GENERATE_PREFIX,
    IGNORE_INDEX,
    IM_END,
    IM_START,
    IMAGE_PLACEHOLDER,
    UNCONDITIONAL_PROMPT,
    chat,
)

_READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def open_image(image) -> Image.Image:
    """A record's image (path, PIL image or encoded bytes) -> PIL image; failures become ``BadSample``."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, Path)):
        try:
            return load_image(image)
        except FileNotFoundError as err:
            raise BadSample(MISSING_FILE, str(image)) from err
        except _READ_ERRORS as err:
            raise BadSample(UNREADABLE_IMAGE, str(err)) from err
    if isinstance(image, (bytes, bytearray, memoryview)):
        try:
            with Image.open(io.BytesIO(image)) as im:
                im.load()
                return ImageOps.exif_transpose(im)
        except _READ_ERRORS as err:
            raise BadSample(UNREADABLE_IMAGE, f"{len(image)} bytes: {err}") from err
    raise BadSample(MALFORMED, f"image field of type {type(image).__name__}")


def check_image(image: Image.Image, min_side: int, max_aspect: float = 10.0) -> None:
    """Reject a side below ``min_side`` and an aspect ratio outside the open interval (1/max_aspect, max_aspect)."""
    w, h = image.size
    if min(w, h) < min_side:
        raise BadSample(IMAGE_TOO_SMALL, f"{w}x{h} < {min_side} px")
    if not 1.0 / max_aspect < w / h < max_aspect:
        raise BadSample(EXTREME_ASPECT, f"{w}x{h}")


def random_square_crop(image: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
    """A square of side min(w, h) at a uniformly drawn offset."""
    w, h = image.size
    side = min(w, h)
    left = int(rng.randint(0, w - side + 1, (1,), generator).item())
    top = int(rng.randint(0, h - side + 1, (1,), generator).item())
    return image.crop((left, top, left + side, top + side))


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer has neither a pad nor an eos token")
    return int(pad)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def _check_kind(record, kind: str) -> None:
    if not isinstance(record, dict):
        raise BadSample(MALFORMED, f"record is a {type(record).__name__}")
    if record.get("kind", kind) != kind:  # a wiring error, not bad data
        raise ValueError(f"a {kind} processor got a {record.get('kind')!r} record")


# ---------------------------------------------------------------------------------------------------------------
class Text2ImageProcessor:
    """text2image record -> {"pixels": (3, S, S) in [-1, 1], "input_ids": (T,) long}.

    Args:
        tokenizer: a Hugging Face tokenizer with the ChatML special tokens.
        image_size: side S of the output (a multiple of the VAE stride).
        max_length: most prompt tokens; a longer caption is cut (from its end), the chat template never is
            (fixes quirk 10: training prompts always end like inference prompts).
        cfg_drop_prob: probability that the prompt becomes the unconditional one (classifier-free guidance).
        crop: "random" square crop of side min(w, h) (official default), "center", or "stretch" to a square.
        min_side: smallest accepted image side in pixels.
    """

    def __init__(
        self,
        tokenizer,
        image_size: int,
        max_length: int = 128,
        cfg_drop_prob: float = 0.1,
        crop: str = "random",
        min_side: int = 8,
        max_aspect: float = 10.0,
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if not 0.0 <= cfg_drop_prob <= 1.0:
            raise ValueError(f"cfg_drop_prob must lie in [0, 1], got {cfg_drop_prob}")
        if crop not in ("random", "center", "stretch"):
            raise ValueError(f"crop must be 'random', 'center' or 'stretch', got {crop!r}")
        self.tokenizer = tokenizer
        self.image_size, self.max_length, self.cfg_drop_prob, self.crop = image_size, max_length, cfg_drop_prob, crop
        self.min_side, self.max_aspect = min_side, max_aspect
        self.pad_id = _pad_id(tokenizer)
        self._tail = _encode(tokenizer, CHAT_TEMPLATE.split("{input}")[1])  # <|im_end|>\n<|im_start|>assistant\n
        shortest = max(
            len(_encode(tokenizer, chat(GENERATE_PREFIX + "x"))), len(_encode(tokenizer, chat(UNCONDITIONAL_PROMPT)))
        )
        if max_length < shortest:
            raise ValueError(f"max_length {max_length} cannot hold the chat template ({shortest} tokens)")

    def encode_prompt(self, text: str) -> list[int]:
        """The chat-wrapped prompt's ids, cut inside ``text`` (never in the template) to at most max_length."""
        ids = _encode(self.tokenizer, chat(text))
        if len(ids) <= self.max_length:
            return ids
        tail = self._tail
        if ids[-len(tail) :] != tail:  # the special tokens split the text, so the tail tokenises on its own
            raise AssertionError("the chat template tail did not tokenise on its own")
        return ids[: self.max_length - len(tail)] + tail

    def __call__(self, record: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        _check_kind(record, "text2image")
        caption = record.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            raise BadSample(MALFORMED, "empty or missing caption")
        image = open_image(record.get("image"))
        check_image(image, self.min_side, self.max_aspect)
        drop = bool(rng.rand((), generator) < self.cfg_drop_prob)  # first draw: the CFG drop
        image = to_rgb(image)
        if self.crop == "random":
            image = random_square_crop(image, generator)
        elif self.crop == "center":
            image = center_crop_square(image)
        image = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        text = UNCONDITIONAL_PROMPT if drop else GENERATE_PREFIX + caption.strip()
        return {
            "pixels": pil_to_tensor(image),  # (3, S, S)
            "input_ids": torch.tensor(self.encode_prompt(text), dtype=torch.long),
        }  # (T,)


# ---------------------------------------------------------------------------------------------------------------
class Image2TextProcessor:
    """image2text record -> {"pixels": (3, S, S) or None, "input_ids": (N,) long, "labels": (N,) long}.

    The conversation is rendered in ChatML without a system prompt (``<|im_start|>{role}\\n{content}<|im_end|>\\n``
    per turn). ``<image>`` becomes ``image_tokens`` copies of IMAGE_PLACEHOLDER; the text around it is tokenised in
    separate chunks, as at inference. Labels are the ids of every assistant content and its closing ``<|im_end|>``,
    IGNORE_INDEX elsewhere (user turns, the ``<|im_start|>assistant\\n`` headers, the ``\\n`` after ``<|im_end|>``).

    Args:
        image_tokens: placeholders per image = L + buffer tokens (e.g. 256 + 64 at 256 px).
        max_text_length: text budget; a sample longer than image_tokens + max_text_length raises BadSample (never
            truncated: that would cut supervised tokens or image slots; fixes quirk 18).
        pad_to_square: pad to a gray square (official default) or take a random square crop.
        min_side: smallest accepted image side (the official caption data used 80 px).
        require_image: True: text-only records are bad samples; False: records with an image are; None: both
            pass (the source must then be homogeneous, since a micro-batch cannot mix them).
    """

    def __init__(
        self,
        tokenizer,
        image_size: int,
        image_tokens: int,
        max_text_length: int = 512,
        pad_to_square: bool = True,
        min_side: int = 16,
        max_aspect: float = 10.0,
        require_image: bool | None = True,
    ) -> None:
        if image_size < 1 or image_tokens < 1 or max_text_length < 1:
            raise ValueError(
                f"image_size, image_tokens and max_text_length must be positive, got "
                f"{image_size}, {image_tokens}, {max_text_length}"
            )
        self.tokenizer = tokenizer
        self.image_size, self.image_tokens, self.max_text_length = image_size, image_tokens, max_text_length
        self.max_length = image_tokens + max_text_length
        self.pad_to_square, self.min_side, self.max_aspect = pad_to_square, min_side, max_aspect
        self.require_image = require_image
        self.pad_id = _pad_id(tokenizer)

    def encode_conversation(self, conversation: list[dict[str, str]]) -> tuple[list[int], list[int]]:
        """Turns -> (input_ids, labels), both of length N, placeholders included."""
        segments: list[tuple[str, bool]] = []  # (text, supervised)
        for turn in conversation:
            if turn["role"] == "user":
                segments.append((f"{IM_START}user\n{turn['content']}{IM_END}\n", False))
            else:
                segments += [(f"{IM_START}assistant\n", False), (turn["content"] + IM_END, True), ("\n", False)]
        merged: list[tuple[str, bool]] = []  # neighbouring unsupervised text is one chunk, as at inference
        for text, sup in segments:
            if merged and not sup and not merged[-1][1]:
                merged[-1] = (merged[-1][0] + text, False)
            else:
                merged.append((text, sup))
        ids: list[int] = []
        labels: list[int] = []
        for text, sup in merged:
            if sup:
                chunk = _encode(self.tokenizer, text)
                ids += chunk
                labels += chunk
                continue
            for k, part in enumerate(text.split(IMAGE_TOKEN)):
                if k:
                    ids += [IMAGE_PLACEHOLDER] * self.image_tokens
                ids += _encode(self.tokenizer, part) if part else []
            labels += [IGNORE_INDEX] * (len(ids) - len(labels))
        return ids, labels

    def __call__(self, record: dict, generator: torch.Generator | None = None) -> dict:
        _check_kind(record, "image2text")
        image = record.get("image")
        conversation = normalise_conversation(record.get("conversation"), has_image=image is not None)
        if image is None and self.require_image:
            raise BadSample(NO_IMAGE)
        if image is not None and self.require_image is False:
            raise BadSample(UNEXPECTED_IMAGE)
        n_marks = sum(t["content"].count(IMAGE_TOKEN) for t in conversation)
        if n_marks > 1:
            raise BadSample(SEVERAL_IMAGES, f"{n_marks} {IMAGE_TOKEN} marks")
        if image is None and n_marks:
            raise BadSample(MALFORMED, f"{IMAGE_TOKEN} in a conversation without an image")
        if any(t["role"] == "assistant" and IMAGE_TOKEN in t["content"] for t in conversation):
            raise BadSample(MALFORMED, f"{IMAGE_TOKEN} in an assistant turn")
        if not any(t["role"] == "assistant" for t in conversation):
            raise BadSample(MALFORMED, "no assistant turn to learn from")
        ids, labels = self.encode_conversation(conversation)  # text first: cheaper than decoding the image
        if len(ids) > self.max_length:
            raise BadSample(
                TEXT_TOO_LONG, f"{len(ids)} tokens > {self.image_tokens} image + {self.max_text_length} text"
            )
        pixels = None
        if image is not None:
            im = open_image(image)
            check_image(im, self.min_side, self.max_aspect)
            im = to_rgb(im)
            im = expand_to_square(im) if self.pad_to_square else random_square_crop(im, generator)
            im = im.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
            pixels = pil_to_tensor(im)  # (3, S, S)
        return {
            "pixels": pixels,
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }


# ---------------------------------------------------------------------------------------------------------------
def pad_right(seqs: list[torch.Tensor], value: int) -> torch.Tensor:
    """1-D tensors -> (B, T_max), right-padded with ``value``."""
    out = torch.full((len(seqs), max(len(s) for s in seqs)), value, dtype=seqs[0].dtype)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


def _mask(seqs: list[torch.Tensor]) -> torch.Tensor:
    lengths = torch.tensor([len(s) for s in seqs])
    return torch.arange(int(lengths.max()))[None, :] < lengths[:, None]  # (B, T) bool


def collate_text2image(samples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """-> {"pixels": (B, 3, S, S), "input_ids": (B, T) right-padded with pad_id, "attention_mask": (B, T) bool}."""
    ids = [s["input_ids"] for s in samples]
    return {
        "pixels": torch.stack([s["pixels"] for s in samples]),
        "input_ids": pad_right(ids, pad_id),
        "attention_mask": _mask(ids),
    }


def collate_image2text(samples: list[dict], pad_id: int) -> dict[str, torch.Tensor | None]:
    """-> {"pixels": (B, 3, S, S) or None, "input_ids", "labels" (IGNORE_INDEX-padded), "attention_mask"}, (B, N).

    A batch must be homogeneous: all samples with an image or all text-only (ValueError otherwise; a source is
    made homogeneous by its processor's ``require_image`` or by ``LlavaConversations(with_image=...)``).
    """
    with_pixels = [s["pixels"] is not None for s in samples]
    if any(with_pixels) and not all(with_pixels):
        raise ValueError(
            f"an image2text batch mixes {sum(with_pixels)} image samples with "
            f"{len(samples) - sum(with_pixels)} text-only ones"
        )
    ids = [s["input_ids"] for s in samples]
    return {
        "pixels": torch.stack([s["pixels"] for s in samples]) if all(with_pixels) else None,
        "input_ids": pad_right(ids, pad_id),
        "labels": pad_right([s["labels"] for s in samples], IGNORE_INDEX),
        "attention_mask": _mask(ids),
    }
