"""The decoder canvas of an edit (``config.edit_canvas``): its source image, read whole, laid where the MAR decoder
would otherwise put the mask token (spec §4.5's ``x_con``).

Three readings of the source: its tokens as the MAR encoder embeds them before its blocks
(``config.edit_canvas_tokens``: each cell holds its own token, which the edit keeps or changes), the encoder's
features, or (``config.edit_canvas_llm``) the features the decoder sees for a fully drawn image,
``x_enc + proj_out(LLM)``, with the LLM run after the row's own prompt: refined by an LLM that has read the
instruction and the source, token by token in place, which is where an edit has to act.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from harmon.model import Harmon


def source_canvas(
    model: Harmon,
    pixels: torch.Tensor,
    size: tuple[int, int],
    prompt: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """The canvas of sources ``pixels`` (B, 3, S, S) in [-1, 1] for an image drawn at ``size`` (h, w): resized to
    it and read whole, (B, buffer + L, D_enc), buffers first. With ``prompt`` ((B, T) ids or (B, T, H) embeddings)
    and its ``text_mask`` (B, T): refined by the LLM after the prompt, as the decoder reads a drawn image.
    ``tokens``: the VAE's tokens (B, L, C) of ``pixels`` already at ``size``, when the caller has them."""
    if tokens is None:
        if pixels.shape[-2:] != torch.Size(size):
            pixels = F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)
        tokens = model.encode_images(pixels)  # (B, L, C)
    grid = model.grid_for(size)
    if model.config.edit_canvas_tokens:
        return model.mar.embed_tokens(tokens, grid)
    visible = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    if prompt is None:
        return model.mar.forward_encoder(tokens, visible, grid)
    return model.forward_mae_encoder(tokens, visible, grid, text_mask, input_ids=prompt)
