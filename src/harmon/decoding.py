"""Text decoding for understanding (spec §10): greedy or nucleus sampling after a prefix of embeddings, with a KV
cache, one token id at a time for streaming. Every random draw comes from the ``torch.Generator`` passed in."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from harmon import rng
from harmon.model import Harmon, output_cache
from harmon.validate import check_number


def _apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Divide positive / multiply negative logits of already generated tokens (the common convention)."""
    picked = logits.gather(-1, seen)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.scatter(-1, seen, picked)


@torch.no_grad()
def check_decoding_settings(max_new_tokens: int, temperature: float, top_p: float, repetition_penalty: float) -> None:
    """Text decoding settings in range, each named (NaN fails every check)."""
    check_number("max_new_tokens", max_new_tokens, low=1, integer=True)
    check_number("temperature", temperature, low=0.0)
    if not 0.0 < check_number("top_p", top_p) <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    check_number("repetition_penalty", repetition_penalty, above=0)


def decode_text(
    model: Harmon,
    inputs_embeds: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Autoregressive decoding after a prefix of embeddings (one sequence), with a KV cache.

    Greedy by default; with ``do_sample`` draws from softmax(logits / temperature), nucleus ``top_p``, using
    ``generator``. Stops at ``eos_token_id`` (included in the result) or after ``max_new_tokens``.
    """
    check_decoding_settings(max_new_tokens, temperature, top_p, repetition_penalty)
    return list(
        iter_decode(
            model,
            inputs_embeds,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            generator=generator,
        )
    )


@torch.no_grad()
def iter_decode(
    model: Harmon,
    inputs_embeds: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    generator: torch.Generator | None = None,
    cache: Any = None,
) -> Iterator[int]:
    """:func:`decode_text` one token id at a time, each yielded as soon as it is chosen (for streaming).

    Args:
        inputs_embeds: (1, N, H_llm) the positions to run before the first new token.
        cache: a transformers cache already holding the K/V of the positions before ``inputs_embeds`` (the
            reused prefix of a conversation), extended in place: when the iterator stops it holds those positions,
            ``inputs_embeds`` and every id fed back (all yielded ids but the last). None starts an empty one.
    Settings are checked at the first ``next``; closing the iterator early stops the work.
    """
    check_decoding_settings(max_new_tokens, temperature, top_p, repetition_penalty)
    llm = model.llm
    prefix = {} if cache is None else {"cache": cache}
    out = llm(inputs_embeds=inputs_embeds, use_cache=True, logits_to_keep=1, **prefix)
    cache = output_cache(out)
    logits = out.logits[:, -1].float()  # (1, V)
    generated: list[int] = []
    for _ in range(max_new_tokens):
        if repetition_penalty != 1.0 and generated:
            seen = torch.tensor([generated], device=logits.device)
            logits = _apply_repetition_penalty(logits, seen, repetition_penalty)
        if do_sample and temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            if top_p < 1.0:
                sorted_p, idx = probs.sort(dim=-1, descending=True)
                drop = sorted_p.cumsum(-1) - sorted_p > top_p
                sorted_p = sorted_p.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
            next_id = int(rng.multinomial(probs, generator))
        else:
            next_id = int(logits.argmax(dim=-1))
        generated.append(next_id)
        yield next_id
        if next_id == eos_token_id or len(generated) == max_new_tokens:
            return
        ids = torch.tensor([[next_id]], device=inputs_embeds.device)
        out = llm(input_ids=ids, cache=cache, use_cache=True)
        cache = output_cache(out)
        logits = out.logits[:, -1].float()


def left_padded(rows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """LLM inputs of rows (N_i, H) of any lengths, left-padded: ``inputs_embeds`` (B, N, H), ``attention_mask``
    (B, N) with the padding masked out, ``position_ids`` (B, N) counted from each row's first real position."""
    width = max(r.shape[0] for r in rows)
    embeds = rows[0].new_zeros(len(rows), width, rows[0].shape[-1])
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=rows[0].device)
    for i, r in enumerate(rows):
        embeds[i, width - r.shape[0] :] = r
        mask[i, width - r.shape[0] :] = 1
    return {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}


@torch.no_grad()
def decode_greedy_batch(
    model: Harmon,
    rows: list[torch.Tensor],
    *,
    max_new_tokens: int,
    eos_token_id: int,
    repetition_penalty: float = 1.0,
) -> list[list[int]]:
    """Greedy decoding of several prompts at once: what :func:`decode_text` gives each row alone, up to float rounding.

    Args:
        rows: one (N_i, H_llm) embedded prompt per row, of any lengths. They run left-padded, the padding masked
            out and each row's positions counted from its first real position, so a row sees what it sees alone.
    Returns: each row's token ids, its ``eos_token_id`` included when reached.
    """
    check_decoding_settings(max_new_tokens, 0.0, 1.0, repetition_penalty)
    if not rows:
        return []
    batch = left_padded(rows)
    mask, positions = batch["attention_mask"], batch["position_ids"]
    out = model.llm(**batch, use_cache=True, logits_to_keep=1)
    generated = torch.empty(len(rows), 0, dtype=torch.long, device=mask.device)
    done = torch.zeros(len(rows), dtype=torch.bool, device=mask.device)
    for _ in range(max_new_tokens):
        logits = out.logits[:, -1].float()  # (B, V)
        if repetition_penalty != 1.0 and generated.shape[1]:
            logits = _apply_repetition_penalty(logits, generated, repetition_penalty)
        next_ids = logits.argmax(dim=-1).masked_fill(done, eos_token_id)  # finished rows idle on end-of-turn
        generated = torch.cat([generated, next_ids[:, None]], dim=1)
        done |= next_ids == eos_token_id
        if bool(done.all()) or generated.shape[1] == max_new_tokens:
            break
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        positions = positions[:, -1:] + 1
        step = {"attention_mask": mask, "position_ids": positions, "cache": output_cache(out), "use_cache": True}
        out = model.llm(input_ids=next_ids[:, None], **step)
    return [row[: row.index(eos_token_id) + 1] if eos_token_id in row else row for row in generated.tolist()]
