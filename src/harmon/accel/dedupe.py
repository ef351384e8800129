"""Skip repeated rows in generation: the prompt once per distinct prompt, the MAR encoder once per guided image.

A generation batch repeats itself. Several images of one prompt share it, and with classifier-free guidance every
unconditional row holds the same prompt; and under guidance every row group of the batch holds the same image tokens
and mask (the same image under the prompt of each guidance branch). These strategies compute each distinct row once
and copy the result, for ``harmon.sampling.generate_tokens(prompt_cache=..., encode_image=...)``. The numbers equal
those of running every row up to float rounding (a matmul over fewer rows may sum in another order).
"""

from __future__ import annotations

import torch

from harmon.model import Harmon

__all__ = ["deduplicated_prompt_cache", "encode_halves_once"]


def deduplicated_prompt_cache(model: Harmon, prompt: torch.Tensor, text_mask: torch.Tensor):
    """``model.prompt_cache`` run on each distinct (prompt, mask) row once, its K/V copied to the rows that repeat it.

    Args: prompt: (B, T) right-padded ids, or (B, T, H) embeddings (rows compared bit for bit); text_mask: (B, T).
    Returns: a transformers cache of B rows, T positions.
    """
    # on the CPU: a few hundred ids, and torch.unique(dim=...) is not implemented on every device (MPS)
    keys = torch.cat([_row_keys(prompt), text_mask.long()], dim=1).cpu()  # (B, K)
    distinct, inverse = torch.unique(keys, dim=0, return_inverse=True)  # (B', K), (B,)
    if distinct.shape[0] < keys.shape[0]:
        rows = torch.arange(keys.shape[0])
        first = torch.full((distinct.shape[0],), keys.shape[0]).scatter_reduce(0, inverse, rows, "amin")  # (B',)
        first = first.to(prompt.device)
        cache = model.prompt_cache(prompt[first], text_mask[first])  # B' rows
        if hasattr(cache, "batch_select_indices"):  # else (an old transformers) run every row below
            cache.batch_select_indices(inverse.to(prompt.device))  # B rows
            return cache
    return model.prompt_cache(prompt, text_mask)


def _row_keys(prompt: torch.Tensor) -> torch.Tensor:
    """(B, K) integers equal exactly where the prompt rows are equal: the ids, or the embeddings' bit patterns."""
    if not prompt.is_floating_point():
        return prompt
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[prompt.element_size()]
    return prompt.reshape(prompt.shape[0], -1).contiguous().view(bits).long()


def encode_halves_once(
    model: Harmon, tokens: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int], groups: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.extract_visual_feature`` of a batch whose ``groups`` row groups repeat the first (guidance: the
    same image under the prompt of each branch): the MAR encoder runs on the first group and its output serves all.

    Args: tokens (B, L, C), mask (B, L) with B a multiple of groups; grid (h, w).
    Returns: x_enc (B, 64+V, D_enc), z_enc (B, V+64, H_llm), as ``extract_visual_feature``.
    """
    if tokens.shape[0] % groups:
        raise ValueError(f"encode_halves_once needs {groups} equal row groups, got {tokens.shape[0]} rows")
    n = tokens.shape[0] // groups
    x_enc, z_enc = (torch.cat([t] * groups) for t in model.extract_visual_feature(tokens[:n], mask[:n], grid))
    return x_enc, z_enc
