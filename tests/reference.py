"""The straightforward generation sampler the fast paths are tested against, and the production path beside it.

The reference runs every row through the prompt at every step (no K/V cache), every row through the MAR encoder,
and samples the diffusion head with ``DiffLoss.sample``: the model as the paper draws it, nothing reused. Its
image-conditioned prompts are built the straightforward way too (:func:`reference_image_prompts`).
"""

from __future__ import annotations

import torch

from harmon import accel
from harmon.images import prepare_for_understanding
from harmon.mar import mask_by_order, next_mask_len
from harmon.model import Harmon
from harmon.sampling import SamplingSettings, generate_tokens, sample_tokens, step_scales


def reference_tokens(
    model: Harmon,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    grid: tuple[int, int],
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
    canvas: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``generate_tokens`` the straightforward way: (R, T) prompt ids or (R, T, H) embeddings -> (R', L, C) tokens
    (R' = R / settings.groups); ``canvas``: the decoder's background rows (editing)."""

    def encode(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model.forward_mae_encoder(tokens, mask, grid, attention_mask, input_ids=input_ids)  # (R, 64+V, D)

    head = model.mar.diffloss.sample
    return sample_tokens(model, encode, input_ids.shape[0], grid, settings, generator, head, canvas=canvas)


def production_tokens(
    model: Harmon,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    grid: tuple[int, int],
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``generate_tokens`` with every strategy ``HarmonPipeline.generate`` applies (harmon.accel)."""
    strategies = accel.generation_strategies(model, guidance=settings.groups > 1, groups=settings.groups)
    with accel.packed_linears(model):
        return generate_tokens(model, input_ids, attention_mask, grid, settings, generator=generator, **strategies)


def reference_features(model: Harmon, image, size: int) -> torch.Tensor:
    """An image's understanding features as spec §10 lists the steps: pad to a gray square and resize, VAE mode x
    scale, MAR encoder with nothing masked, proj_in, the buffers moved last. (1, L+64, H)."""
    tokens = model.encode_images(prepare_for_understanding(image, size))  # (1, L, C)
    grid = (size // model.config.token_px,) * 2
    x_enc = model.mar.forward_encoder(tokens, torch.zeros(tokens.shape[:2], dtype=torch.bool), grid)  # (1, 64+L, D)
    z = model.proj_in(x_enc)
    nb = model.buffer_size
    return torch.cat([z[:, nb:], z[:, :nb]], dim=1)


def reference_image_prompts(pipe, texts: list[str], images: list, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt strings through the tokenizer in one call each (``<image>`` read as the image token), every image
    token expanded to the L+64 positions of the next image's features and filled with them (rows without the token
    take none): right-padded embeddings (R, T, H) and the mask (R, T)."""
    model, image_id = pipe.model, pipe.image_token_id
    features = [reference_features(model, im, size) for im in images]
    n_feat = features[0].shape[1]
    rows, masks = [], []
    for text in texts:
        ids = pipe.tokenizer(text, add_special_tokens=False).input_ids
        expanded = [t for i in ids for t in ([i] * n_feat if i == image_id else [i])]
        slots = torch.tensor(expanded) == image_id
        embeds = model.embed_text(torch.tensor([expanded]).masked_fill(slots, 0))  # (1, N, H)
        if slots.any():
            embeds = embeds.masked_scatter(slots[None, :, None], torch.cat(features, dim=1))
        rows.append(embeds[0])
        masks.append(torch.ones(len(expanded), dtype=torch.bool))
    width = max(len(m) for m in masks)
    out = torch.zeros(len(rows), width, rows[0].shape[-1], dtype=rows[0].dtype)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (row, m) in enumerate(zip(rows, masks)):
        out[i, : len(m)], mask[i, : len(m)] = row, m
    return out, mask


def reference_condition_cache_tokens(
    model: Harmon,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    grid: tuple[int, int],
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """LazyMAR's condition cache the straightforward way: every row through the whole network at every step (plain
    random order and cosine schedule); on the steps between refreshes (every cond_refresh-th step and the last) each
    guidance group's decoder output is then replaced by the conditional one minus that group's residual
    (conditional - group) at the last refresh."""
    groups, rows = settings.groups, input_ids.shape[0]
    n, seq_len = rows // groups, grid[0] * grid[1]
    orders = torch.cat([model.sample_orders(n, seq_len, generator)] * groups)
    tokens = torch.zeros(rows, seq_len, model.config.mar.token_dim)
    mask, masked = torch.ones(rows, seq_len, dtype=torch.bool), seq_len
    for step in range(settings.num_iter):
        x = model.forward_mae_encoder(tokens, mask, grid, attention_mask, input_ids=input_ids)
        z = model.mar.forward_decoder(x, mask, grid)  # (R, L, Dd)
        n_next = next_mask_len(step, settings.num_iter, seq_len, masked)
        last = step == settings.num_iter - 1 or n_next >= masked
        if step % settings.cond_refresh == 0 or last:
            residual = [z[:n] - z[g * n : (g + 1) * n] for g in range(1, groups)]
        else:
            z = torch.cat([z[:n]] + [z[:n] - r for r in residual])
        mask_next = torch.zeros_like(mask) if last else mask_by_order(n_next, orders)
        scales = step_scales(settings, seq_len, n_next)
        new = model.mar.diffloss.sample(
            z[mask & ~mask_next],
            temperature=settings.temperature,
            cfg=scales[0] if groups == 2 else scales,
            generator=generator,
            num_steps=settings.num_sampling_steps,
        )
        tokens[:n][(mask & ~mask_next)[:n]] = new
        tokens[n:] = torch.cat([tokens[:n]] * (groups - 1))
        mask, masked = mask_next, n_next
        if last:
            break
    return tokens[:n]
