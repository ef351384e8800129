"""Weight-only int8 for the LLM and the MAR blocks: half the bytes of bf16 weights, activations unchanged.

Each quantized Linear keeps its weight as int8 with one scale per output row (symmetric: w ~= q * scale, q in [-127,
127]). A few rows of bf16 activations (decoding, the diffusion head at batch 1) go through PyTorch's own CPU kernel for
int8 weights (``torch._weight_int8pack_mm``), which reads a quarter of the bytes of an fp32 weight; everything else
dequantizes the weight to the activations' dtype for the call and uses the ordinary GEMM. Measured on an AVX-512 BF16
CPU (``benchmarks/precision.py``): the kernel beats bf16 up to about 16 rows and loses beyond, and its fp32-activation
path is some 40x slower than an fp32 GEMM, so fp32 activations never take it. The tied token embedding and LM head share
one int8 table: its rows are both the embedding vectors and the head's output rows, so per-row scales serve both.

:func:`quantize_model` swaps, in place: every ``nn.Linear`` of the LLM's decoder layers and of the MAR encoder and
decoder blocks, and the tied embedding / LM head. The diffusion head (small, re-read every diffusion step), the
projections between MAR and LLM and the VAE stay in the model's dtype. A quantized model is for inference: it cannot
be trained, and ``save_pretrained`` refuses it (its weights no longer have the released names and dtypes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "KERNEL_MAX_ROWS",
    "QUANTIZE_MODES",
    "Int8Embedding",
    "Int8Linear",
    "block_linears",
    "is_quantized",
    "quantize_model",
    "quantize_pipeline",
    "weight_bytes",
]

logger = logging.getLogger(__name__)

QUANTIZE_MODES = ("int8",)
# The kernel reads bf16 activations in blocks of 16 along the inner dimension and crashes (torch 2.13, AVX-512) on
# other widths.
_BF16_BLOCK = 16
# Most activation rows that go through the kernel; above it the dequantized weight and a GEMM are faster.
KERNEL_MAX_ROWS = 16
# Output rows dequantized at once: a tied LM head (150k rows) would otherwise need a whole float copy per call.
DEQUANTIZE_ROWS = 8192


def quantize_rows(weight: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: weight (N, K) float -> (q (N, K) int8, scale (N,) in the weight's dtype). Rows are
    rounded in fp32 whatever the weight's dtype, ``chunk`` rows at a time, so that a large table (the token
    embedding) never has a whole fp32 copy."""
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)  # (N, K)
    scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)  # (N,)
    for start in range(0, weight.shape[0], chunk):
        w = weight[start : start + chunk].detach().float()  # (n, K)
        s = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127.0  # (n,)
        q[start : start + chunk] = torch.round(w / s[:, None]).clamp_(-127, 127)
        scale[start : start + chunk] = s
    return q, scale.to(weight.dtype)


def int8_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (..., K) float times the int8 weight q (N, K) with row scales (N,): (..., N) in x's dtype."""
    flat = x.reshape(-1, x.shape[-1])  # (M, K)
    kernel_ok = (
        x.device.type == "cpu"
        and hasattr(torch, "_weight_int8pack_mm")
        and x.dtype == torch.bfloat16
        and x.shape[-1] % _BF16_BLOCK == 0
        and flat.shape[0] <= KERNEL_MAX_ROWS
    )
    if kernel_ok:
        out = torch._weight_int8pack_mm(flat.contiguous(), q, scale.to(x.dtype))  # (M, N)
    elif q.shape[0] <= DEQUANTIZE_ROWS:
        out = F.linear(flat, q.to(x.dtype)) * scale.to(x.dtype)  # (M, N), the weight dequantized for this call
    else:  # a tall table (the LM head): dequantize a block of output rows at a time
        out = flat.new_empty(flat.shape[0], q.shape[0])  # (M, N)
        for start in range(0, q.shape[0], DEQUANTIZE_ROWS):
            rows = slice(start, start + DEQUANTIZE_ROWS)
            out[:, rows] = F.linear(flat, q[rows].to(x.dtype)) * scale[rows].to(x.dtype)
    return out.reshape(*x.shape[:-1], q.shape[0])


class Int8Linear(nn.Module):
    """``nn.Linear`` with an int8 weight (out, in), per-output-row scales and the original bias (float)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = q.shape[1], q.shape[0]
        self.register_buffer("weight_int8", q)
        self.register_buffer("scale", scale)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> Int8Linear:
        q, scale = quantize_rows(layer.weight)
        return cls(q, scale, layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        out = int8_matmul(x, self.weight_int8, self.scale)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


class Int8Embedding(nn.Module):
    """A token embedding (V, D) as int8 rows with per-row scales; :meth:`head` is the tied LM head on the same table."""

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        q, scale = quantize_rows(embedding.weight)
        self.register_buffer("weight_int8", q)  # (V, D)
        self.register_buffer("scale", scale)  # (V,), in the model's dtype (follows module.to)
        self.padding_idx = embedding.padding_idx

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (...) -> (..., D)
        return self.weight_int8[ids].to(self.scale.dtype) * self.scale[ids].unsqueeze(-1)

    def head(self) -> TiedInt8Head:
        return TiedInt8Head(self)


class TiedInt8Head(nn.Module):
    """The LM head tied to an :class:`Int8Embedding`: logits = hidden @ table.T, with no table of its own (the
    embedding is held outside the module tree, so its buffers are stored, moved and counted once)."""

    def __init__(self, embedding: Int8Embedding) -> None:
        super().__init__()
        self.tied = [embedding]  # a list hides it from nn.Module's registration

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., V)
        table = self.tied[0]
        return int8_matmul(hidden, table.weight_int8, table.scale)


def block_linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) of every Linear in the LLM's decoder layers and the MAR encoder/decoder blocks."""
    roots = [model.llm.model.layers, model.mar.encoder_blocks, model.mar.decoder_blocks]
    found = []
    for root in roots:
        for parent in root.modules():
            for name, child in parent.named_children():
                if isinstance(child, nn.Linear):
                    found.append((parent, name, child))
    return found


def weight_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``module``, each tensor counted once (tied weights once)."""
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (Int8Linear, Int8Embedding)) for m in model.modules())


@torch.no_grad()
def quantize_model(
    model: nn.Module, mode: str = "int8", before_each: Callable[[nn.Module], None] | None = None
) -> dict[str, int]:
    """Swap the Harmon ``model``'s block Linear layers and tied embedding / LM head for int8 ones, in place (see
    the module docstring). Returns {"layers": n swapped, "bytes_before", "bytes_after"} for the whole model.

    Each layer's float weight is freed as soon as its int8 copy exists. ``before_each(layer)`` is called with each
    float layer just before it is quantized: a loader can fill the weights there, one layer at a time, so that the
    float model never exists whole (``benchmarks/memory.py`` measures that peak).
    """
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize {mode!r}: use one of {', '.join(QUANTIZE_MODES)}")
    if is_quantized(model):
        raise ValueError("the model is already quantized")
    before = weight_bytes(model)
    llm = model.llm
    if llm.config.tie_word_embeddings:  # first: the largest table, quantized while little else is in memory
        if before_each is not None:
            before_each(llm.model.embed_tokens)
        table = Int8Embedding(llm.model.embed_tokens)
        llm.model.embed_tokens, llm.lm_head = table, table.head()
    layers = block_linears(model)
    for parent, name, layer in layers:
        if before_each is not None:
            before_each(layer)
        setattr(parent, name, Int8Linear.from_linear(layer))
        layer.weight = None  # free the float weight now, not when the loop ends
    after = weight_bytes(model)
    logger.info("int8: %d layers, weights %.1f MB -> %.1f MB", len(layers), before / 1e6, after / 1e6)
    return {"layers": len(layers), "bytes_before": before, "bytes_after": after}


def quantize_pipeline(pipe: Any, mode: str | None = "int8") -> Any:
    """``HarmonPipeline.quantize``: :func:`quantize_model` on ``pipe.model`` (None: nothing), dropping the chat's
    cached K/V (computed with the float weights). Returns ``pipe``."""
    if mode is not None:
        quantize_model(pipe.model, mode)
        pipe.chat_cache.clear()
    return pipe
