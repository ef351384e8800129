"""How fast can the MAR backbone learn to continue a scene? (``python -m harmon.world.analyses.continuation``)

Fresh scenes of a level are read by a model's VAE into tokens. Two readers of a masked token from the others:

    ridge      per position, a ridge map from the other L - 1 tokens' latents to the token's: what a linear reader
               of the neighbours knows (fitted on the training scenes, R² on held-out ones);
    backbone   a fresh MAR encoder + decoder of the model's sizes (no LLM, no text) with a linear read-out of the
               decoder's output, trained by MSE to predict the masked tokens (1 to L masked, uniformly), once per
               init std of the decoder's learned tables (``MARConfig.decoder_table_std``); R² of a lone masked token
               on the held-out scenes along training;
    oracle     a fresh diffusion head of the model's sizes whose condition is the true token through a fixed random
               projection: R² of its samples (one per token, 50 sampling steps) along training.

The generator's diffusion head draws a token from the decoder's output, so it can continue an object only as well
as that output knows the token. Where the ridge reader explains most of a token and the backbone little, the
backbone is what learns slowly, not the information that is missing.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch
from torch import nn

from harmon.diffloss import DiffLoss
from harmon.mar import MAR, MARConfig, mask_by_order
from harmon.world.analyses.runner import load_for_analysis, report
from harmon.world.free import LEVELS, level_world, sample_level_scene
from harmon.world.render import render


@torch.no_grad()
def scene_tokens(pipe, level: str, n: int, seed: int, chunk: int = 256) -> torch.Tensor:
    """The VAE's tokens (n, L, C) of ``n`` fresh scenes of ``level`` drawn from ``seed``."""
    config = level_world(level, pipe.config.generation.image_size)
    g, out = torch.Generator().manual_seed(seed), []
    for start in range(0, n, chunk):
        arrays = [np.asarray(render(sample_level_scene(g, config), config)) for _ in range(min(chunk, n - start))]
        pixels = torch.from_numpy(np.stack(arrays).astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1
        out.append(pipe.model.encode_images(pixels.to(pipe.device, pipe.model.vae_dtype)).float().cpu())
    return torch.cat(out)


def r_squared(pred: torch.Tensor, truth: torch.Tensor, mean: torch.Tensor | None = None) -> float:
    """Share of the variance of ``truth`` (M, C) about ``mean`` (default its own mean over rows) that ``pred``
    (M, C) explains."""
    mean = truth.mean(0) if mean is None else mean
    return float(1 - ((pred - truth) ** 2).sum() / ((truth - mean) ** 2).sum())


def ridge_r2(train: torch.Tensor, test: torch.Tensor, alpha: float = 1.0) -> list[float]:
    """Per position p, R² on ``test`` (M, L, C) of a ridge map fitted on ``train`` (N, L, C) from the other L - 1
    tokens to token p."""
    length, r2 = train.shape[1], []
    for p in range(length):
        others = [q for q in range(length) if q != p]
        x, y = train[:, others].flatten(1).double(), train[:, p].double()
        xm, ym = x.mean(0), y.mean(0)
        xc = x - xm
        w = torch.linalg.solve(xc.T @ xc + alpha * torch.eye(x.shape[1], dtype=x.dtype), xc.T @ (y - ym))
        xt, yt = test[:, others].flatten(1).double(), test[:, p].double()
        pred = (xt - xm) @ w + ym
        r2.append(r_squared(pred, yt))
    return r2


def _lone_r2(mar: MAR, readout: nn.Linear, test: torch.Tensor, grid: tuple[int, int]) -> float:
    g = torch.Generator().manual_seed(5)
    orders = torch.stack([torch.randperm(test.shape[1], generator=g) for _ in range(test.shape[0])])
    mask = mask_by_order(1, orders)
    with torch.no_grad():
        pred = readout(mar.forward_decoder(mar.forward_encoder(test, mask, grid), mask, grid))[mask]
    return r_squared(pred, test[mask])


def backbone_curve(
    config: MARConfig,
    train: torch.Tensor,
    test: torch.Tensor,
    steps: int = 1500,
    batch: int = 64,
    lr: float = 1e-3,
    every: int = 300,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Train a fresh MAR encoder + decoder of ``config`` and a linear read-out to predict masked tokens of ``train``
    (N, L, C) by MSE; the lone masked token's R² on ``test`` every ``every`` steps and at the end. Dropout is off,
    so that every random draw comes from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    mar = MAR(dataclasses.replace(config, attn_dropout=0.0, proj_dropout=0.0))
    mar.initialize_weights(g)
    readout = nn.Linear(config.decoder_dim, config.token_dim)
    nn.init.xavier_uniform_(readout.weight, generator=g)
    nn.init.zeros_(readout.bias)
    params = [p for n, p in mar.named_parameters() if not n.startswith("diffloss.")] + list(readout.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    grid, length, curve = (config.grid_size, config.grid_size), train.shape[1], []
    for step in range(1, steps + 1):
        tokens = train[torch.randint(0, train.shape[0], (batch,), generator=g)]
        n_masked = int(torch.randint(1, length + 1, (), generator=g))
        mask = mask_by_order(n_masked, torch.stack([torch.randperm(length, generator=g) for _ in range(batch)]))
        pred = readout(mar.forward_decoder(mar.forward_encoder(tokens, mask, grid), mask, grid))
        loss = ((pred - tokens)[mask] ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            curve.append({"step": step, "lone_r2": _lone_r2(mar, readout, test, grid)})
    return curve


def oracle_head_curve(
    config: MARConfig, train: torch.Tensor, test: torch.Tensor, steps: int = 200, every: int = 100, seed: int = 0
) -> list[dict[str, float]]:
    """Train a fresh diffusion head of ``config`` on the tokens of ``train`` (N, L, C), 4,096 per step, with the token
    itself (through a fixed random projection) as the condition; R² of its samples of the ``test`` tokens."""
    g = torch.Generator().manual_seed(seed)
    head = DiffLoss(config.diffloss)
    head.initialize_weights(g)
    proj = torch.randn(config.token_dim, config.decoder_dim, generator=g) / config.token_dim**0.5
    rows, truth = train.flatten(0, 1), test.flatten(0, 1)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    curve = []
    for step in range(1, steps + 1):
        x = rows[torch.randint(0, rows.shape[0], (4096,), generator=g)]
        loss = head(x, x @ proj, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            with torch.no_grad():
                drawn = head.sample(truth @ proj, 1.0, 1.0, generator=torch.Generator().manual_seed(1), num_steps="50")
            curve.append({"step": step, "sample_r2": r_squared(drawn, truth)})
    return curve


def continuation_study(
    pipe,
    level: str = "free",
    scenes: int = 8192,
    test_scenes: int = 512,
    stds: tuple[float, ...] = (0.02, 1.0),
    steps: int = 1500,
    seed: int = 0,
    oracle_steps: int = 200,
) -> dict:
    """Ridge R² per position, the backbone's curve per decoder-table std and the oracle-conditioned head's curve, on
    fresh scenes of ``level``."""
    train = scene_tokens(pipe, level, scenes, seed)
    test = scene_tokens(pipe, level, test_scenes, seed + 1)
    ridge = ridge_r2(train, test)
    base = pipe.model.config.mar
    curves = {
        str(std): backbone_curve(dataclasses.replace(base, decoder_table_std=std), train, test, steps=steps, seed=seed)
        for std in stds
    }
    oracle = oracle_head_curve(base, train, test[:64], steps=oracle_steps, seed=seed) if oracle_steps else []
    return {
        "level": level,
        "scenes": scenes,
        "ridge_r2": ridge,
        "ridge_mean": float(np.mean(ridge)),
        "curves": curves,
        "oracle": oracle,
    }


def format_continuation(result: dict) -> str:
    lines = [
        f"Ridge map from the other tokens, R² on held-out scenes: mean {result['ridge_mean']:.3f} "
        f"(per position {min(result['ridge_r2']):.3f} to {max(result['ridge_r2']):.3f})",
        "",
        "| decoder table std | "
        + " | ".join(f"step {p['step']}" for p in next(iter(result["curves"].values())))
        + " |",
        "|---|" + "---|" * len(next(iter(result["curves"].values()))),
    ]
    for std, curve in result["curves"].items():
        lines.append(f"| {std} | " + " | ".join(f"{p['lone_r2']:.3f}" for p in curve) + " |")
    if result.get("oracle"):
        points = ", ".join(f"step {p['step']}: {p['sample_r2']:.3f}" for p in result["oracle"])
        lines += ["", f"Head with the true token as its condition, R² of its samples: {points}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a harmon model folder (its VAE reads the scenes, its MAR sizes)")
    p.add_argument("--level", choices=LEVELS, default="free")
    p.add_argument("--scenes", type=int, default=8192, help="training scenes")
    p.add_argument("--test-scenes", type=int, default=512)
    p.add_argument("--stds", type=float, nargs="+", default=[0.02, 1.0], help="decoder table init stds to train")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--oracle-steps", type=int, default=200, help="steps of the oracle-conditioned head (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write the result here")
    args = p.parse_args(argv)
    pipe = load_for_analysis(args.model, args.threads)
    result = continuation_study(
        pipe, args.level, args.scenes, args.test_scenes, tuple(args.stds), args.steps, args.seed, args.oracle_steps
    )
    report(format_continuation(result), result, args.json)


if __name__ == "__main__":
    main()
