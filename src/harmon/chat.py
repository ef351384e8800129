"""Multi-turn chat about images: a conversation in the usual role/content shape -> the model's next answer, whole or
streamed piece by piece.

A conversation is rendered in the ChatML template the model was trained with, each image where its part stands:

    <|im_start|>user\\n<image>\\nHow many circles?<|im_end|>\\n<|im_start|>assistant\\n2<|im_end|>\\n
    <|im_start|>user\\nAnd squares?<|im_end|>\\n<|im_start|>assistant\\n

Every text (the user's, the assistant's, the system's) is encoded as plain text: text that spells a control token
(``<|im_end|>``, ``<image>``) stays those characters and never closes a turn or opens an image slot. The parts of
one message are joined by newlines, so one image and one question give exactly :meth:`HarmonPipeline.describe`'s
prompt. A :class:`PromptCache` keeps the K/V of the last conversation, and the next call whose prompt starts the
same way (the next turn) runs only the positions after the shared prefix.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from transformers import DynamicCache

from harmon.accel.linear import packed_linears
from harmon.conditioning import pixel_features
from harmon.decoding import check_decoding_settings, decode_greedy_batch, iter_decode
from harmon.images import load_image, prepare_for_understanding
from harmon.prompts import IM_END, IM_START, PHRASE_SEPARATOR, join_phrases
from harmon.tokenizer import USER_TEXT, encode_template
from harmon.validate import check_flag, check_generator, check_number, check_text

if TYPE_CHECKING:
    from harmon.pipeline import HarmonPipeline

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ImageSlot:
    """One image of a conversation, prepared for the encoder."""

    pixels: torch.Tensor  # (1, 3, S, S) in [-1, 1]
    key: str  # sha256 of the prepared pixels: equal images at equal sizes share it (the cache's identity)
    positions: int  # LLM positions it takes: image tokens + buffers


Item = int | ImageSlot  # a text token id, or an image that fills several positions


@dataclass
class ChatPrompt:
    """A conversation rendered for the model: token ids and images in order, and its size in positions."""

    items: list[Item]
    text_tokens: int
    image_positions: int

    @property
    def positions(self) -> int:
        return self.text_tokens + self.image_positions


def positions_of(items: Sequence[Item]) -> int:
    return sum(item.positions if isinstance(item, ImageSlot) else 1 for item in items)


class PromptCache:
    """The K/V cache of the last conversation and the items it holds (not thread-safe: one caller at a time).

    The next prompt that starts with the same items reuses those positions: the cache is cropped to the shared
    prefix and only the rest runs. Answers with a reused prefix equal a fresh run's up to float rounding.
    """

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.kv: DynamicCache | None = None
        self.reused = 0  # positions the last call took from the cache (for logs and tests)

    def clear(self) -> None:
        self.items, self.kv, self.reused = [], None, 0

    def take(self, items: Sequence[Item]) -> tuple[DynamicCache | None, int]:
        """The cache cropped to the longest prefix it shares with ``items`` (at least one item is left to run) and
        that prefix's length in items; (None, 0) when nothing is shared. The cache is handed over: call
        :meth:`keep` with what it holds afterwards."""
        kv, held = self.kv, self.items
        self.clear()
        shared = 0
        for a, b in zip(held, items[:-1]):
            if not _same(a, b):
                break
            shared += 1
        if kv is None or shared == 0:
            return None, 0
        self.reused = positions_of(items[:shared])
        extra = kv.get_seq_length() - self.reused
        if extra:
            kv.crop(-extra)  # a count to drop: what every transformers version's crop takes
        return kv, shared

    def keep(self, kv: DynamicCache, items: list[Item]) -> None:
        """Remember ``kv``, which holds exactly the positions of ``items``."""
        if kv.get_seq_length() != positions_of(items):
            raise RuntimeError(f"cache holds {kv.get_seq_length()} positions, the items {positions_of(items)}")
        self.items, self.kv = items, kv


def _same(a: Item, b: Item) -> bool:
    if isinstance(a, ImageSlot) or isinstance(b, ImageSlot):
        return isinstance(a, ImageSlot) and isinstance(b, ImageSlot) and a.key == b.key
    return a == b


# ---------------------------------------------------------------------------------------------- rendering
def _message_parts(message: Any, i: int) -> tuple[str, list[Any]]:
    """(role, parts) of one message, each part a str or a PIL image / image path; ValueError/TypeError naming it."""
    where = f"messages[{i}]"
    if not isinstance(message, Mapping):
        raise TypeError(f"{where} must be a dict with 'role' and 'content', got {type(message).__name__}")
    role = message.get("role")
    if role not in ROLES:
        raise ValueError(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}")
    content = message.get("content")
    if isinstance(content, str):
        return role, [check_text(content, f"{where}.content", allow_empty=role == "assistant")]
    if not isinstance(content, Sequence) or isinstance(content, (bytes, bytearray)) or not content:
        raise ValueError(f"{where}.content must be a string or a non-empty list of parts")
    parts: list[Any] = []
    for j, part in enumerate(content):
        name = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            parts.append(check_text(part.get("text"), f"{name}.text", allow_empty=True))
        elif kind == "image":
            image = part.get("image")
            if not isinstance(image, (Image.Image, str, Path)):
                raise TypeError(f"{name}.image must be a PIL image or a path, got {type(image).__name__}")
            if isinstance(image, str) and not image.strip():  # Path("") is the current folder
                raise ValueError(f"{name}.image is an empty path")
            parts.append(image if isinstance(image, Image.Image) else Path(image))
        else:
            raise ValueError(f"{name} must be {{'type': 'text', 'text': ...}} or {{'type': 'image', 'image': ...}}")
    if role != "assistant" and all(isinstance(p, str) and not p.strip() for p in parts):
        raise ValueError(f"{where}.content is empty: no text and no image")
    return role, parts


def render(pipe: HarmonPipeline, messages: Sequence[Mapping[str, Any]], image_size: int | None = None) -> ChatPrompt:
    """Render ``messages`` (see :meth:`HarmonPipeline.chat`) as the model's prompt, ending where the assistant's
    answer starts. Images are read and prepared here; nothing runs the model. ValueError names a bad message."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    size = pipe.config.generation.understanding_image_size if image_size is None else image_size
    n_image = pipe.image_tokens(size)
    template, texts, images = "", [], []
    for i, message in enumerate(messages):
        role, parts = _message_parts(message, i)
        pieces = []
        for part in parts:
            if isinstance(part, str):
                pieces.append(USER_TEXT)
                texts.append(part)
            else:
                pieces.append(pipe.config.image_token)
                images.append(_image_slot(part, size, n_image))
        template += f"{IM_START}{role}\n" + "\n".join(pieces) + f"{IM_END}\n"
    if messages[-1].get("role") != "user":
        raise ValueError(f"the last message must be the user's, got {messages[-1].get('role')!r}")
    ids = encode_template(pipe.tokenizer, template + f"{IM_START}assistant\n", texts, pipe.config.image_token)
    slots = iter(images)
    items: list[Item] = [next(slots) if t == pipe.image_token_id else t for t in ids]
    return ChatPrompt(items, len(ids) - len(images), n_image * len(images))


def _image_slot(image: Image.Image | Path, size: int, positions: int) -> ImageSlot:
    pixels = prepare_for_understanding(load_image(image) if isinstance(image, Path) else image, size)  # (1,3,S,S)
    digest = hashlib.sha256(pixels.numpy().tobytes()).hexdigest()
    return ImageSlot(pixels, f"{size}:{digest}", positions)


def embed(pipe: HarmonPipeline, items: Sequence[Item], features: Iterator[torch.Tensor] | None = None) -> torch.Tensor:
    """The LLM inputs of ``items``: text runs embedded, each image's slot filled by the shared encoder with its
    (L+64) features, buffers last: (1, positions_of(items), H_llm). ``features``: the images' features (1, L+64, H)
    in order, computed beforehand (by :func:`slot_features`); None computes them here."""
    model, dev = pipe.model, pipe.device
    parts, run = [], []
    for item in [*items, None]:
        if isinstance(item, int):
            run.append(item)
            continue
        if run:
            parts.append(model.embed_text(torch.tensor([run], device=dev)))  # (1, T, H)
            run = []
        if isinstance(item, ImageSlot):
            feature = pixel_features(model, item.pixels) if features is None else next(features)
            parts.append(feature.to(model.dtype))  # (1, L+64, H)
    return torch.cat(parts, dim=1)


def slot_features(pipe: HarmonPipeline, prompts: Sequence[ChatPrompt]) -> Iterator[torch.Tensor]:
    """The features of every image of ``prompts``, in order, read by the shared encoder in one batch per image size:
    (1, L+64, H) each, as :func:`embed` would compute them one by one (up to float rounding)."""
    slots = [item for prompt in prompts for item in prompt.items if isinstance(item, ImageSlot)]
    out: list[torch.Tensor | None] = [None] * len(slots)
    for size in {s.pixels.shape[-1] for s in slots}:
        index = [i for i, s in enumerate(slots) if s.pixels.shape[-1] == size]
        batch = pixel_features(pipe.model, torch.cat([slots[i].pixels for i in index]))  # (K, L+64, H)
        for k, i in enumerate(index):
            out[i] = batch[k : k + 1]
    return iter(out)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- answering
class ChatStream:
    """The answer as text pieces, yielded as the model writes them; ``"".join`` of them is the whole answer,
    stripped of surrounding whitespace, as :meth:`HarmonPipeline.describe` returns it.

    After the iteration ends: ``finish_reason`` is "stop" (end of turn) or "length" (``max_new_tokens`` reached),
    ``completion_tokens`` the tokens written and ``prompt_tokens`` the prompt's positions. ``close()`` (or dropping
    the iterator) stops the model at the next token.
    """

    def __init__(self, pipe: HarmonPipeline, prompt: ChatPrompt, ids: Iterator[int]) -> None:
        self.prompt_tokens = prompt.positions
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self._pieces = self._text(pipe, ids)

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()

    def _text(self, pipe: HarmonPipeline, ids: Iterator[int]) -> Iterator[str]:
        """Pieces of the decoded answer: a piece is held back while it ends in an incomplete character or in
        whitespace (which the finished answer drops)."""
        answer: list[int] = []
        sent = ""
        try:
            for token in ids:
                self.completion_tokens += 1
                if token == pipe.eos_token_id:
                    self.finish_reason = "stop"
                    break
                answer.append(token)
                text = pipe.tokenizer.decode(answer, skip_special_tokens=True).lstrip()
                if text.endswith("\ufffd"):
                    continue
                ready = text.rstrip()
                if ready.startswith(sent) and len(ready) > len(sent):
                    yield ready[len(sent) :]
                    sent = ready
            else:
                self.finish_reason = "length"
        finally:
            ids.close()  # type: ignore[attr-defined]
        final = pipe.tokenizer.decode(answer, skip_special_tokens=True).strip()
        if final.startswith(sent) and len(final) > len(sent):
            yield final[len(sent) :]
        elif not final.startswith(sent):
            logger.warning("streamed text %r is not a prefix of the decoded answer %r", sent, final)


@torch.no_grad()
def _decode(
    pipe: HarmonPipeline, prompt: ChatPrompt, cache: PromptCache | None, decoding: dict[str, Any]
) -> Iterator[int]:
    """The answer's token ids (end-of-turn included when reached), the reusable prefix taken from ``cache`` and
    the conversation's K/V left in it when the iteration stops, finished or not."""
    kv, shared = cache.take(prompt.items) if cache is not None else (None, 0)
    if cache is not None and kv is None:
        kv = DynamicCache(config=pipe.model.llm.config)
    if shared:
        logger.debug(
            "chat: %d of %d positions from the prompt cache", positions_of(prompt.items[:shared]), prompt.positions
        )
    fed: list[int] = []
    inputs = embed(pipe, prompt.items[shared:])  # (1, N_new, H)
    ids = iter_decode(pipe.model, inputs, eos_token_id=pipe.eos_token_id, cache=kv, **decoding)
    intact = False  # whether the cache holds what ``fed`` says (not after a failure inside the model)
    # one row per decoded token: packed weights pay most (harmon.accel.linear); packed while the answer streams
    with packed_linears(pipe.model.llm, bf16=True):
        try:
            for token in ids:
                yield token
                fed.append(token)
            intact = True
        except GeneratorExit:  # the caller stopped reading: the cache holds every token fed so far
            intact = True
            raise
        finally:
            ids.close()
            if cache is not None and kv is not None:
                done = kv.get_seq_length() - prompt.positions
                if intact and done >= 0:
                    cache.keep(kv, prompt.items + fed[:done])
                else:
                    cache.clear()


def _decoding_defaults(
    pipe: HarmonPipeline, max_new_tokens: int | None, repetition_penalty: float | None
) -> tuple[int, float]:
    """The answer's length limit and repetition penalty: those given, else the model's (``config.generation``)."""
    d = pipe.config.generation
    return (
        d.max_new_tokens if max_new_tokens is None else max_new_tokens,
        d.repetition_penalty if repetition_penalty is None else repetition_penalty,
    )


def chat(
    pipe: HarmonPipeline,
    messages: Sequence[Mapping[str, Any]],
    *,
    max_new_tokens: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    repetition_penalty: float | None = None,
    generator: torch.Generator | None = None,
    image_size: int | None = None,
    stream: bool = False,
    cache: PromptCache | None = None,
    name: str = "conversation",
) -> str | ChatStream:
    """The assistant's next answer to ``messages``: see :meth:`HarmonPipeline.chat`. ``cache``: the prompt cache to
    reuse and refill (None runs the whole prompt and keeps nothing). ``name``: what a too-long prompt is called."""
    max_new_tokens, penalty = _decoding_defaults(pipe, max_new_tokens, repetition_penalty)
    check_decoding_settings(max_new_tokens, temperature, top_p, penalty)  # before any work
    check_generator(generator)
    do_sample, stream = check_flag("do_sample", do_sample), check_flag("stream", stream)
    prompt = render(pipe, messages, image_size)
    pipe.check_context(prompt.text_tokens, prompt.image_positions, max_new_tokens, name)
    decoding = dict(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        repetition_penalty=penalty,
        generator=generator,
    )
    answer = ChatStream(pipe, prompt, _decode(pipe, prompt, cache, decoding))
    return answer if stream else "".join(answer)


@torch.no_grad()
def answer_batch(
    pipe: HarmonPipeline,
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    *,
    max_new_tokens: int | None = None,
    repetition_penalty: float | None = None,
    image_size: int | None = None,
    batch_size: int = 32,
) -> list[str]:
    """Greedy answers to many conversations, ``batch_size`` at a time through the encoder and the LLM: each what
    :func:`chat` answers it alone, up to float rounding. Every conversation is rendered and checked before any
    runs; ValueError names the first bad one."""
    max_new_tokens, penalty = _decoding_defaults(pipe, max_new_tokens, repetition_penalty)
    check_decoding_settings(max_new_tokens, 0.0, 1.0, penalty)
    check_number("batch_size", batch_size, low=1, integer=True)
    prompts = []
    for i, messages in enumerate(conversations):
        prompt = render(pipe, messages, image_size)
        pipe.check_context(prompt.text_tokens, prompt.image_positions, max_new_tokens, f"conversation {i}")
        prompts.append(prompt)
    answers = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        features = slot_features(pipe, chunk)
        rows = [embed(pipe, p.items, features)[0] for p in chunk]
        with packed_linears(pipe.model.llm, bf16=True):
            ids = decode_greedy_batch(
                pipe.model,
                rows,
                max_new_tokens=max_new_tokens,
                eos_token_id=pipe.eos_token_id,
                repetition_penalty=penalty,
            )
        eos = pipe.eos_token_id
        answers += [pipe.tokenizer.decode([t for t in a if t != eos], skip_special_tokens=True).strip() for a in ids]
    return answers


def plan_layouts(pipe: HarmonPipeline, prompts: Sequence[str], *, max_new_tokens: int | None = None) -> list[str]:
    """The layout the model writes for each prompt before drawing it: greedy answers to its recorded
    ``config.generation.plan_request`` + the prompt (see :meth:`HarmonPipeline.generate`'s ``plan``). A prompt
    whose plan comes back empty keeps its own text, with a warning.

    Raises:
        ValueError: the model records no plan request (it was not trained to plan).
    """
    request = pipe.config.generation.plan_request
    if request is None:
        raise ValueError(
            "this model writes no layout plans (config.generation.plan_request is unset: it was not trained to "
            "plan); draw the prompt directly"
        )
    conversations = [[{"role": "user", "content": request + p.strip()}] for p in prompts]
    plans = answer_batch(pipe, conversations, max_new_tokens=max_new_tokens)
    for i, (p, plan) in enumerate(zip(prompts, plans)):
        if not plan:
            logger.warning("the model planned nothing for prompt %d (%r): drawing the prompt itself", i, p)
            plans[i] = p.strip()
    places = pipe.config.generation.plan_places
    return [ordered_plan(plan, places) for plan in plans] if places else plans


def ordered_plan(plan: str, places: Sequence[str]) -> str:
    """``plan`` with its clauses in the order of ``places`` (a model's ``config.generation.plan_places``): the
    writer names objects in the prompt's order, the drawer reads a layout best in one fixed order. A plan is clauses
    joined by commas and a last " and ", each ending in "in the <place>"; one whose clauses do not each name one
    distinct place of ``places`` comes back as written."""
    clauses = [c.strip() for c in PHRASE_SEPARATOR.split(plan.strip())]
    at = []
    for clause in clauses:
        named = [k for k, place in enumerate(places) if clause.lower().endswith(f" in the {place.lower()}")]
        if len(named) != 1:
            return plan
        at.append(named[0])
    if len(set(at)) < len(at):
        return plan
    ordered = [c for _, c in sorted(zip(at, clauses))]
    return join_phrases(ordered)
