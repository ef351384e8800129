"""LazyMAR's token cache (arXiv 2503.12450): reuse, across masked-autoregressive steps, the per-layer features of the
tokens that changed least.

Between two steps of generation most tokens' features hardly move: a step reveals a few tokens, and every other
token sees them only through attention. The cache keeps, for each of the three stacks a step runs (the MAR encoder,
the LLM after the prompt, the MAR decoder), every layer's keys and values and every token's first-layer and last
output, by token identity (a buffer slot or a grid cell). Every ``refresh``-th step (the first included) runs every
token through every layer and refills it. On the steps between, each stack's first layer runs on every token; the
``ratio`` of tokens whose first-layer output moved most since it was cached (lowest cosine similarity; tokens without
cached features, the newly revealed ones, always) run the remaining layers, attending to the cached keys and values
of the others, whose outputs are reused.

Training-free and approximate, like the condition cache; off unless a generation asks for it
(``SamplingSettings.token_refresh``). With ``refresh`` 1 (or ``ratio`` 1) every token runs every layer and the
result equals the plain path up to float rounding (tests/test_token_cache.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from harmon.model import Harmon

__all__ = ["TokenCache", "image_slots"]


def image_slots(mask: torch.Tensor, buffers: int, buffers_first: bool) -> torch.Tensor:
    """(B, nb + V) slot ids of the tokens a stack reads for a (B, L) mask (True = unknown): buffer k is slot k, grid
    cell c slot nb + c; visible cells in raster order, the buffers before them (MAR encoder) or after (LLM)."""
    b, seq = mask.shape
    cells = torch.arange(seq, device=mask.device).expand(b, seq)[~mask].view(b, -1) + buffers  # (B, V)
    buf = torch.arange(buffers, device=mask.device).expand(b, buffers)
    return torch.cat([buf, cells] if buffers_first else [cells, buf], dim=1)


@dataclass
class _Store:
    """One stack's cached features by slot: per layer (rows, slots, width) keys and values, the (rows, slots, D)
    first-layer and last-layer outputs, and which (rows, slots) hold features."""

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    first: torch.Tensor | None = None
    last: torch.Tensor | None = None
    known: torch.Tensor | None = None


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t (B, S, W) at idx (B, N) -> (B, N, W)."""
    return t.gather(1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))


def _put(t: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> None:
    """t (B, S, W)[b, idx[b, n]] = src[b, n] in place."""
    t.scatter_(1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]), src)


class _Layers:
    """One stack as the cache runs it: ``qkv(i, h)`` -> (q, k, v) of layer i for rows h (B, S, D), flat heads;
    ``attend(i, q, k, v, rows)`` -> attention output (B, S, D) of queries at sequence positions ``rows`` (B, S) over
    all N keys; ``post(i, h, o)`` -> the layer's output; ``final(h)`` -> the stack's output."""

    depth: int

    def qkv(self, i: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...
    def attend(self, i: int, q, k, v, rows: torch.Tensor) -> torch.Tensor: ...
    def post(self, i: int, h: torch.Tensor, o: torch.Tensor) -> torch.Tensor: ...
    def final(self, h: torch.Tensor) -> torch.Tensor:
        return h


class _MARBlocks(_Layers):
    """The MAR encoder's or decoder's blocks (:class:`harmon.mar.Block`: bidirectional attention)."""

    def __init__(self, blocks: nn.ModuleList) -> None:
        self.blocks, self.depth = blocks, len(blocks)

    def qkv(self, i, h):
        return self.blocks[i].attn.qkv(self.blocks[i].norm1(h)).chunk(3, dim=-1)

    def attend(self, i, q, k, v, rows):
        heads = self.blocks[i].attn.num_heads
        q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))  # (B, heads, n, d)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)

    def post(self, i, h, o):
        block = self.blocks[i]
        h = h + block.attn.proj(o)
        return h + block.mlp(block.norm2(h))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x (B, heads, n, d) at (B, n, d) cos / sin (Qwen2's rotate-half layout)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)


class _LLMLayers(_Layers):
    """The LLM's decoder layers over the image tokens after a cached prompt: causal among the image tokens, every
    real prompt position visible. Keys are cached before the rotary embedding and rotated at their positions of the
    step (a step that reveals a token shifts the positions of the tokens after it)."""

    def __init__(self, llm, cache, text_mask: torch.Tensor, positions: torch.Tensor) -> None:
        self.llm, self.cache, self.depth = llm, cache, len(llm.layers)
        cfg = llm.config
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.text_mask = text_mask.bool()  # (B, T)
        probe = torch.zeros(1, dtype=llm.norm.weight.dtype, device=positions.device)
        self.cos, self.sin = llm.rotary_emb(probe, positions)  # (B, N, d)

    def qkv(self, i, h):
        attn = self.llm.layers[i].self_attn
        a = self.llm.layers[i].input_layernorm(h)
        return attn.q_proj(a), attn.k_proj(a), attn.v_proj(a)

    def attend(self, i, q, k, v, rows):
        n = k.shape[1]
        q = q.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, H, S, d)
        k, v = (t.unflatten(-1, (self.kv_heads, -1)).transpose(1, 2) for t in (k, v))  # (B, Hkv, N, d)
        pick = rows.unsqueeze(-1).expand(-1, -1, self.cos.shape[-1])
        q = _rotate(q, self.cos.gather(1, pick), self.sin.gather(1, pick))
        k = _rotate(k, self.cos, self.sin)
        layer = self.cache.layers[i]
        k = torch.cat([layer.keys.to(k.dtype), k], dim=2).repeat_interleave(self.heads // self.kv_heads, dim=1)
        v = torch.cat([layer.values.to(v.dtype), v], dim=2).repeat_interleave(self.heads // self.kv_heads, dim=1)
        causal = torch.arange(n, device=rows.device).view(1, 1, n) <= rows.unsqueeze(-1)  # (B, S, N)
        allowed = torch.cat([self.text_mask.unsqueeze(1).expand(-1, rows.shape[1], -1), causal], dim=2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.unsqueeze(1))
        return o.transpose(1, 2).flatten(2)

    def post(self, i, h, o):
        layer = self.llm.layers[i]
        h = h + layer.self_attn.o_proj(o)
        return h + layer.mlp(layer.post_attention_layernorm(h))

    def final(self, h):
        return self.llm.norm(h)


class TokenCache:
    """The token cache of one generation call (module docstring): ``begin_step()`` before each step, then the
    step's stacks through :meth:`encoder`, :meth:`llm` and :meth:`decoder`."""

    def __init__(self, model: Harmon, refresh: int, ratio: float, seq_len: int) -> None:
        if refresh < 1 or not 0.0 < ratio <= 1.0:
            raise ValueError(f"token cache needs refresh >= 1 and 0 < ratio <= 1, got {refresh}, {ratio}")
        self.model, self.refresh, self.ratio, self.seq_len = model, refresh, ratio, seq_len
        self.stores: dict[str, _Store] = {}
        self.step, self.full = -1, True

    def begin_step(self) -> None:
        self.step += 1
        self.full = self.step % self.refresh == 0

    def encoder(self, mask: torch.Tensor) -> Callable[[nn.ModuleList, torch.Tensor], torch.Tensor]:
        """A block runner for ``MAR.forward_encoder`` on rows with this (B, L) mask."""
        slots = image_slots(mask, self.model.buffer_size, buffers_first=True)
        return lambda blocks, x: self._run("encoder", _MARBlocks(blocks), x, slots)

    def decoder(self, predict: torch.Tensor | None = None) -> Callable[[nn.ModuleList, torch.Tensor], torch.Tensor]:
        """A block runner for ``MAR.forward_decoder`` (every slot, in order); ``predict`` (B, L) bool: the cells the
        step draws, whose conditions always run every layer."""

        def run(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
            slots = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
            force = None
            if predict is not None:
                force = torch.cat([predict.new_zeros(x.shape[0], self.model.buffer_size), predict], dim=1)
            return self._run("decoder", _MARBlocks(blocks), x, slots, force)

        return run

    def llm(self, mask: torch.Tensor) -> Callable[..., torch.Tensor]:
        """An LLM runner for ``Harmon.refine_with_llm`` on rows with this (B, L) mask."""
        slots = image_slots(mask, self.model.buffer_size, buffers_first=False)

        def run(z_enc, positions, full_mask, cache) -> torch.Tensor:
            layers = _LLMLayers(self.model.llm.model, cache, full_mask[:, : -z_enc.shape[1]], positions)
            return self._run("llm", layers, z_enc, slots)

        return run

    def _store(self, name: str, x: torch.Tensor, widths: list[int], slots: int) -> _Store:
        """The stack's store, made at the first call (its rows: the most any call of the generation has)."""
        if name not in self.stores:
            rows, d = x.shape[0], x.shape[-1]
            zeros = lambda w: x.new_zeros(rows, slots, w)  # noqa: E731
            self.stores[name] = _Store(
                keys=[zeros(w) for w in widths],
                values=[zeros(w) for w in widths],
                first=zeros(d),
                last=zeros(d),
                known=torch.zeros(rows, slots, dtype=torch.bool, device=x.device),
            )
        return self.stores[name]

    def _run(
        self, name: str, layers: _Layers, x: torch.Tensor, slots: torch.Tensor, force: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, N, D) through the stack, tokens identified by ``slots`` (B, N); B may be the store's first rows
        (the conditional rows of a condition-cache step). ``force`` (B, N) bool: tokens that run every layer."""
        b, n = slots.shape
        q, k, v = layers.qkv(0, x)
        store = self._store(name, x, [k.shape[-1]] * layers.depth, self.model.buffer_size + self.seq_len)
        keys, values = [t[:b] for t in store.keys], [t[:b] for t in store.values]
        first, last, known = store.first[:b], store.last[:b], store.known[:b]
        everyone = torch.arange(n, device=x.device).expand(b, n)
        h = layers.post(0, x, layers.attend(0, q, k, v, everyone))  # the first layer runs on every token
        _put(keys[0], slots, k)
        _put(values[0], slots, v)
        rows = everyone
        if not self.full:
            must = ~known.gather(1, slots)  # (B, N): no cached features, or forced
            if force is not None:
                must |= force
            sim = F.cosine_similarity(h.float(), _gather(first, slots).float(), dim=-1).masked_fill(must, -2.0)
            count = max(math.ceil(self.ratio * n), int(must.sum(1).max()))
            rows = sim.topk(count, dim=1, largest=False).indices.sort(dim=1).values  # (B, S): sequence positions
        _put(first, slots, h)
        h = h.gather(1, rows.unsqueeze(-1).expand(-1, -1, h.shape[-1]))  # (B, S, D)
        picked = slots.gather(1, rows)  # (B, S) their slots
        for i in range(1, layers.depth):
            q, k_new, v_new = layers.qkv(i, h)
            _put(keys[i], picked, k_new)
            _put(values[i], picked, v_new)
            h = layers.post(i, h, layers.attend(i, q, _gather(keys[i], slots), _gather(values[i], slots), rows))
        _put(last, picked, h)
        known.scatter_(1, slots, True)
        return layers.final(_gather(last, slots))
