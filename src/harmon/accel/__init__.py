"""Speed strategies applied from outside to the plain model (the pipeline applies them; the model never imports them).

- :mod:`harmon.accel.head`: the fast diffusion-head sampler (modulations precomputed for many steps, packed layers,
  optionally ``torch.compile``), a drop-in for ``DiffLoss.sample``.
- :mod:`harmon.accel.dedupe`: the prompt run once per distinct prompt, the MAR encoder once per guided image.
- :mod:`harmon.accel.linear`: oneDNN-packed Linear layers on CPU float32 (and the diffusion head's in bfloat16 where
  the CPU has bf16 matmuls).
- :mod:`harmon.accel.quant`: weight-only int8 Linear layers and token embedding (``quantize_model``).
- :mod:`harmon.accel.compile`: ``torch.compile`` with frozen weights, recompiled when the weights change.

Every strategy except int8 gives the straightforward path's numbers up to float rounding; ``tests/reference.py`` holds
the straightforward sampler the tests compare against.
"""

from __future__ import annotations

import functools

from harmon.accel.dedupe import deduplicated_prompt_cache, encode_halves_once
from harmon.accel.head import fast_head_sampler, sample_fast
from harmon.accel.linear import packed_linears, plain_linears
from harmon.accel.quant import is_quantized, quantize_model, quantize_pipeline
from harmon.model import Harmon
from harmon.sampling import Strategies

__all__ = [
    "deduplicated_prompt_cache",
    "encode_halves_once",
    "fast_head_sampler",
    "generation_strategies",
    "is_quantized",
    "packed_linears",
    "plain_linears",
    "quantize_model",
    "quantize_pipeline",
    "sample_fast",
]


def generation_strategies(model: Harmon, guidance: bool, compile: bool = False, groups: int = 2) -> Strategies:
    """Every strategy of ``harmon.sampling.generate_tokens`` for ``model``: the fast head sampler (compiled MLP with
    ``compile``), the deduplicated prompt cache and, with ``guidance`` (a batch of ``groups`` row groups, 2 for
    [conditional; unconditional]), the MAR encoder once per image. Run it inside :func:`packed_linears` on CPU
    float32."""
    strategies = Strategies(
        sample_head=fast_head_sampler(model.mar.diffloss, compile=compile),
        prompt_cache=functools.partial(deduplicated_prompt_cache, model),
    )
    if guidance:
        strategies["encode_image"] = functools.partial(encode_halves_once, model, groups=groups)
    return strategies
