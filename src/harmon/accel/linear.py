"""Packed-weight Linear layers for CPU float32 (and, where asked and the CPU multiplies it, bfloat16) inference.

A plain ``nn.Linear`` on CPU hands its weight to a GEMM that re-packs it into the kernel's blocked layout on every
call. With the few hundred rows of a generation step (or the few rows of a diffusion step) that re-packing and the
small-M kernels are a large share of the time. oneDNN can reorder a weight once into its blocked layout and multiply
many times against it (``benchmarks/generate.py --no-pack`` runs the plain layers for comparison).
``HarmonPipeline.generate``, the fast diffusion-head sampler (:mod:`harmon.accel.head`) and the LLM's decoding in
``chat`` / ``describe`` / ``describe_many`` use it; decoding runs one row per token, where packed weights gave
1.3-1.7x the tokens/s of plain ones on the 0.5B and 1.5B architectures, fp32 and bf16 (``benchmarks/generate.py
--understanding``), for a second copy of the LLM's weights while an answer is decoded.

``packed_linears(module)`` is a context: inside it every ``nn.Linear`` of ``module`` that is called with a CPU input
of its weight's dtype, and no gradient to record, runs through oneDNN with its weight reordered on its first call in the
context; on leaving, the layers are plain again and the packed copies are freed. Results equal the plain layer's
up to float rounding (a different summation order). Layers never called inside the context are never packed (a
tied LM head costs nothing during image generation). Where torch lacks the ops, the context does nothing.

Only layers with at least ``MIN_ELEMENTS`` weights (512 x 512) are packed: below that size oneDNN's fixed cost per
call, and the reorder itself, outweigh the re-packing they save.

bfloat16 layers are packed only when asked (``bf16=True``) and only on a CPU with bf16 matmul instructions
(:func:`harmon.cpuinfo.has_bf16_matmul`; elsewhere bf16 is emulated and left as it is). There the packed layer gives
the plain bf16 layer's output and is 1.3x faster at the few rows of a diffusion step and 2.1x for one decoded token,
but only 7-11 % faster at the hundreds of rows of image generation's LLM and MAR stacks (``benchmarks/precision.py``
times both), where a packed copy of their weights would cost half again bf16 generation's peak memory for a few per
cent of its time. So the fast diffusion-head sampler (about 70 MB of weights on the 0.5B architecture) and the
LLM's decoding ask for it, and image generation's stacks do not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from harmon.cpuinfo import has_bf16_matmul

__all__ = [
    "ENABLED",
    "MIN_ELEMENTS",
    "PackedForward",
    "available",
    "packable_dtypes",
    "packed_linears",
    "plain_linears",
]

# Global switch (tests and benchmarks compare both paths); the context is a no-op when False.
ENABLED = True
# Smallest weight (out x in elements) worth packing; smaller layers stay plain (see the module docstring).
MIN_ELEMENTS = 512 * 512


def available() -> bool:
    """Whether this torch build has oneDNN and the reorder / packed-linear ops."""
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


def packable_dtypes(bf16: bool = True) -> tuple[torch.dtype, ...]:
    """The weight dtypes packed on this CPU: float32, and, with ``bf16``, bfloat16 where the CPU multiplies it in
    hardware."""
    return (torch.float32, torch.bfloat16) if bf16 and has_bf16_matmul() else (torch.float32,)


class PackedForward:
    """Replacement ``forward`` of one Linear layer inside the context."""

    def __init__(self, layer: nn.Linear) -> None:
        self.layer = layer
        self.packed: torch.Tensor | None = None
        self.version = -1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        w = layer.weight
        if (
            x.device.type != "cpu"
            or x.dtype != w.dtype
            or w.dtype not in (torch.float32, torch.bfloat16)  # a layer cast after it was wrapped
            or w.device.type != "cpu"
            or (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))
            or x.dim() == 0
        ):
            return F.linear(x, w, layer.bias)
        if self.packed is None or self.version != w._version:  # weights changed in place: reorder again
            rows = max(1, x.numel() // x.shape[-1])
            self.packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), rows)
            self.version = w._version
        bias = layer.bias.detach() if layer.bias is not None else None
        flat = x.reshape(-1, x.shape[-1])
        if not flat.is_contiguous():
            flat = flat.contiguous()
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed, bias, "none", [], "")  # (rows, out)
        return out.reshape(*x.shape[:-1], out.shape[-1])


@contextlib.contextmanager
def packed_linears(module: nn.Module, min_elements: int | None = None, bf16: bool = False) -> Iterator[None]:
    """Run the ``nn.Linear`` layers of ``module`` with packed weights inside the block (see the module docstring).

    ``min_elements``: the smallest weight packed (default ``MIN_ELEMENTS``); smaller layers stay plain. ``bf16``:
    also pack bfloat16 layers, where the CPU has bf16 matmul instructions.
    Nested use is allowed: layers already packed by an outer context are left to it.
    """
    if not ENABLED or not available():
        yield
        return
    least = MIN_ELEMENTS if min_elements is None else min_elements
    dtypes = packable_dtypes(bf16)
    swapped: list[nn.Linear] = []
    for layer in module.modules():
        if (
            isinstance(layer, nn.Linear)
            and "forward" not in layer.__dict__
            and layer.weight.device.type == "cpu"
            and layer.weight.dtype in dtypes  # GPU, fp16 and emulated-bf16 layers are left as they are
            and layer.weight.numel() >= least
        ):
            layer.forward = PackedForward(layer)
            swapped.append(layer)
    try:
        yield
    finally:
        for layer in swapped:
            if isinstance(layer.__dict__.get("forward"), PackedForward):
                del layer.forward  # back to nn.Linear.forward; the packed copy goes with it


@contextlib.contextmanager
def plain_linears(module: nn.Module | Iterable[nn.Module]) -> Iterator[None]:
    """Inside the block, the ``nn.Linear`` layers of ``module`` run plain even where an outer ``packed_linears``
    context packed them (for code that must see plain layers, such as ``torch.compile``, which packs weights its
    own way); on leaving, the outer context's packed layers are restored.

    ``module`` may also be a list of its layers, collected once by a caller on a hot path, where walking the module
    tree on every entry would cost more than the layers' own work on a small model."""
    held: list[tuple[nn.Linear, PackedForward]] = []
    for layer in module.modules() if isinstance(module, nn.Module) else module:
        forward = layer.__dict__.get("forward")
        if isinstance(layer, nn.Linear) and isinstance(forward, PackedForward):
            held.append((layer, forward))
            del layer.forward
    try:
        yield
    finally:
        for layer, forward in held:
            layer.forward = forward
