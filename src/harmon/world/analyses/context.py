"""How much does the generator use what it already drew? Teacher-forced loss vs number of visible tokens.

A masked-autoregressive generator predicts the unknown tokens from the prompt and the tokens already drawn. If it
has learned to use them, the diffusion loss on the remaining tokens falls as more tokens are visible (predicting
the last quadrant of a half-drawn circle is easy). A flat or rising curve means every token is effectively drawn
on its own: the images cannot be coherent whatever the sampler does. This is the first thing to check when
samples look like scattered parts of shapes.
"""

from __future__ import annotations

from typing import Any

import torch

from harmon.data import Text2ImageProcessor
from harmon.data.processing import collate_text2image
from harmon.mar import mask_by_order
from harmon.world.data import shapes_record
from harmon.world.scene import WorldConfig


@torch.no_grad()
def context_curve(
    pipe,
    n_images: int = 64,
    visible: tuple[int, ...] | None = None,
    repeats: int = 3,
    seed: int = 0,
    image_size: int | None = None,
) -> dict[str, Any]:
    """Mean text-to-image loss on shapes-world pairs with exactly ``v`` tokens visible, for each ``v``.

    Returns {"visible": [...], "loss": [...], "shuffled_text_loss": float at 0 visible} — the last compares the
    loss with every prompt swapped for another image's prompt (how much the prompt is used).
    """
    model = pipe.model
    size = image_size or pipe.config.generation.image_size
    grid = model.grid_for(size)
    seq = grid[0] * grid[1]
    visible = visible if visible is not None else tuple(sorted({0, seq // 4, seq // 2, 3 * seq // 4, seq - 1}))
    proc = Text2ImageProcessor(pipe.tokenizer, size, cfg_drop_prob=0.0)
    world = WorldConfig(image_size=size)
    batch = collate_text2image(
        [proc(shapes_record("text2image", 900_000 + seed * 10_000 + i, config=world)) for i in range(n_images)],
        proc.pad_id,
    )
    was_training = model.training
    model.eval()
    tokens = model.encode_images(batch["pixels"].to(model.device))
    ids, am = batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device)

    def loss(v: int, ids: torch.Tensor, am: torch.Tensor) -> float:
        return teacher_forced_loss(model, tokens, ids, am, grid, v, [seed * 100 + r for r in range(repeats)])

    curve = [loss(v, ids, am) for v in visible]
    perm = torch.roll(torch.arange(n_images), 1)
    shuffled = loss(0, ids[perm], am[perm])
    model.train(was_training)
    return {"visible": list(visible), "loss": curve, "shuffled_text_loss": shuffled}


def teacher_forced_loss(
    model,
    tokens: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    grid: tuple[int, int],
    visible: int,
    seeds: list[int],
) -> float:
    """Mean text-to-image loss of ``tokens`` (B, L, C) with ``visible`` of them known, one draw per seed.

    Each seed draws the random orders (which tokens are visible), the timesteps and the noise, so calls with the same
    seeds and different prompts are paired: their difference is the prompts' doing alone.
    """
    seq = grid[0] * grid[1]
    total = 0.0
    for s in seeds:
        g = torch.Generator().manual_seed(s)
        mask = mask_by_order(seq - visible, model.sample_orders(tokens.shape[0], seq, g))
        x_enc = model.forward_mae_encoder(tokens, mask, grid, attention_mask, input_ids=input_ids)
        z = model.mar.forward_decoder(x_enc, mask, grid)
        total += float(model.mar.forward_loss(z, tokens, mask, generator=g))
    return total / len(seeds)
