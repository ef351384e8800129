"""Skip repeated rows in generation: the prompt once per distinct prompt, the MAR encoder once per guided image.

A generation batch repeats itself. Several images of one prompt share it, and with classifier-free guidance every
unconditional row holds the same prompt; and under guidance both halves of the batch hold the same image tokens and
mask (the same image under two prompts). These strategies compute each distinct row once and copy the result, for
``harmon.sampling.generate_tokens(prompt_cache=..., encode_image=...)``. The numbers equal those of running every
row up to float rounding (a matmul over fewer rows may sum in another order).
"""

from __future__ import annotations

import torch

from harmon.model import Harmon

__all__ = ["deduplicated_prompt_cache", "encode_halves_once"]


def deduplicated_prompt_cache(model: Harmon, input_ids: torch.Tensor, text_mask: torch.Tensor):
    """``model.prompt_cache`` run on each distinct (ids, mask) row once, its K/V copied to the rows that repeat it.

    Args: input_ids, text_mask: (B, T) right-padded prompts. Returns: a transformers cache of B rows, T positions.
    """
    # on the CPU: a few hundred ids, and torch.unique(dim=...) is not implemented on every device (MPS)
    keys = torch.cat([input_ids, text_mask.long()], dim=1).cpu()  # (B, 2T)
    distinct, inverse = torch.unique(keys, dim=0, return_inverse=True)  # (B', 2T), (B,)
    if distinct.shape[0] < keys.shape[0]:
        t = input_ids.shape[1]
        distinct = distinct.to(input_ids.device)
        cache = model.prompt_cache(distinct[:, :t], distinct[:, t:].bool())  # B' rows
        if hasattr(cache, "batch_select_indices"):  # else (an old transformers) run every row below
            cache.batch_select_indices(inverse.to(input_ids.device))  # B rows
            return cache
    return model.prompt_cache(input_ids, text_mask)


def encode_halves_once(
    model: Harmon, tokens: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.extract_visual_feature`` of a batch whose second half repeats the first (classifier-free guidance):
    the MAR encoder runs on the first half and its output serves both.

    Args: tokens (B, L, C), mask (B, L) with B even; grid (h, w).
    Returns: x_enc (B, 64+V, D_enc), z_enc (B, V+64, H_llm), as ``extract_visual_feature``.
    """
    if tokens.shape[0] % 2:
        raise ValueError(f"encode_halves_once needs an even batch, got {tokens.shape[0]} rows")
    half = tokens.shape[0] // 2
    x_enc, z_enc = (torch.cat([t, t]) for t in model.extract_visual_feature(tokens[:half], mask[:half], grid))
    return x_enc, z_enc
