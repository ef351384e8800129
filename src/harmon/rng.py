"""Random draws through one ``torch.Generator`` wherever the data lives.

A generator is tied to a device; drawing happens there (CPU for a default ``torch.Generator()``) and the result
moves to the data's device, so a CPU-seeded run gives the same numbers on CPU, CUDA or MPS.
"""

from __future__ import annotations

import torch


def _source(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device | str | None:
    return generator.device if generator is not None else device


def randn(shape, generator: torch.Generator | None = None, device=None, dtype: torch.dtype = torch.float32):
    return torch.randn(shape, generator=generator, device=_source(generator, device), dtype=dtype).to(device)


def rand(shape, generator: torch.Generator | None = None, device=None, dtype: torch.dtype = torch.float32):
    return torch.rand(shape, generator=generator, device=_source(generator, device), dtype=dtype).to(device)


def randint(low: int, high: int, shape, generator: torch.Generator | None = None, device=None):
    return torch.randint(low, high, shape, generator=generator, device=_source(generator, device)).to(device)


def randperm(n: int, generator: torch.Generator | None = None, device=None):
    return torch.randperm(n, generator=generator, device=_source(generator, device)).to(device)


def multinomial(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    src = _source(generator, probs.device)
    return torch.multinomial(probs.to(src), 1, generator=generator).to(probs.device)
