"""The straightforward generation sampler the fast paths are tested against, and the production path beside it.

The reference runs every row through the prompt at every step (no K/V cache), every row through the MAR encoder,
and samples the diffusion head with ``DiffLoss.sample``: the model as the paper draws it, nothing reused.
"""

from __future__ import annotations

import torch

from harmon import accel
from harmon.model import Harmon
from harmon.sampling import SamplingSettings, generate_tokens, sample_tokens


def reference_tokens(
    model: Harmon,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    grid: tuple[int, int],
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``generate_tokens`` the straightforward way: (R, T) prompts -> (R', L, C) tokens (R' = R/2 with guidance)."""

    def encode(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model.forward_mae_encoder(tokens, mask, grid, attention_mask, input_ids=input_ids)  # (R, 64+V, D)

    head = model.mar.diffloss.sample
    return sample_tokens(model, encode, input_ids.shape[0], grid, settings, generator, head)


def production_tokens(
    model: Harmon,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    grid: tuple[int, int],
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``generate_tokens`` with every strategy ``HarmonPipeline.generate`` applies (harmon.accel)."""
    strategies = accel.generation_strategies(model, guidance=settings.guidance_scale != 1.0)
    with accel.packed_linears(model):
        return generate_tokens(model, input_ids, attention_mask, grid, settings, generator=generator, **strategies)
