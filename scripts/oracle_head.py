"""Can a diffusion head of a given size draw correct shapes-world tokens when its condition is an ORACLE?

Trains a fresh DiffLoss head whose per-token condition is an embedding of the token's true content (colour, shape,
which quarter of the object, or background) plus the object's box, on VAE latents of rendered scenes; then samples
every token of fresh scenes from the oracle conditions, decodes them and reports the token MSE and the share of
scenes whose objects the exact detector recovers. It isolates the diffusion head and sampler from the MAR
transformer: if an oracle-conditioned head cannot draw the scenes, no amount of MAR training will.

    python scripts/oracle_head.py --vae-model runs/shapes/stage2/final --prediction epsilon --x0-clip 3
    python scripts/oracle_head.py --vae-model runs/shapes/stage2/final --prediction v

It compares predictions (``--prediction``) and clipping (``--x0-clip``) on the head alone. Whatever error remains
with the best of them is what the oracle omits (a token's latent also depends on neighbouring objects), which the
MAR model, seeing the drawn tokens, has to supply.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from harmon.accel import sample_fast
from harmon.diffloss import DiffLoss, DiffLossConfig
from harmon.pipeline import HarmonPipeline
from harmon.world import WorldConfig
from harmon.world.render import render_array
from harmon.world.sampling import sample_scene
from harmon.world.stage0 import reconstruction_quality


def oracle_batch(n: int, seed: int, world: WorldConfig):
    """n scenes as pixels (n, 3, 64, 64), oracle labels (n, 16) and object boxes (n, 16, 4) per token."""
    colors = [c for c, _ in world.colors]
    shapes = list(world.shapes)
    cell = world.image_size // world.grid_cells
    side = 2 * world.grid_cells  # tokens per side (stride 16 at 64 px)
    xs, labels, boxes = [], np.zeros((n, side * side), np.int64), np.zeros((n, side * side, 4), np.float32)
    for i in range(n):
        scene = sample_scene(torch.Generator().manual_seed(seed * 1_000_003 + i), world, allow_held_out=True)
        xs.append(render_array(scene, world))
        for o in scene.objects:
            cx, cy = o.center
            row, col = int(cy // cell), int(cx // cell)
            for qr in range(2):
                for qc in range(2):
                    t = (row * 2 + qr) * side + col * 2 + qc
                    labels[i, t] = 1 + ((colors.index(o.color) * len(shapes) + shapes.index(o.shape)) * 4 + qr * 2 + qc)
                    boxes[i, t] = np.array(o.bbox) / world.image_size
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, torch.from_numpy(labels), torch.from_numpy(boxes)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vae-model", required=True, help="a shapes-world model folder (its VAE encodes the scenes)")
    p.add_argument("--prediction", choices=["epsilon", "v"], default="v")
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=2048, help="tokens per step")
    p.add_argument("--x0-clip", type=float, default=None)
    p.add_argument("--sampling-steps", default="100")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


class OracleHead(torch.nn.Module):
    """A fresh DiffLoss head and the oracle condition: embedding of the token's content plus its object's box."""

    def __init__(self, args: argparse.Namespace, world: WorldConfig, token_dim: int, z_dim: int = 128) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(1 + len(world.colors) * len(world.shapes) * 4, z_dim)
        self.box_proj = torch.nn.Linear(4, z_dim)
        config = DiffLossConfig(
            z_channels=z_dim, width=args.width, depth=args.depth, target_channels=token_dim, prediction=args.prediction
        )
        self.head = DiffLoss(config)
        self.head.net.initialize_weights(generator=torch.Generator().manual_seed(args.seed))

    def condition(self, labels: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """labels (N,), boxes (N, 4) -> conditions (N, z_dim)."""
        return self.emb(labels) + self.box_proj(boxes)


def train(oracle: OracleHead, tokens: torch.Tensor, lab: torch.Tensor, box: torch.Tensor, args) -> float:
    """Train the head and the condition on (tokens, oracle labels, boxes) with a cosine schedule; the final loss."""
    opt = torch.optim.AdamW(oracle.parameters(), lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed + 5)
    labels, boxes = lab.reshape(-1), box.reshape(-1, 4)
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = 1e-3 * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        idx = torch.randint(0, len(tokens), (args.batch,), generator=g)
        loss = oracle.head(tokens[idx], oracle.condition(labels[idx], boxes[idx]), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss)


def main() -> None:
    args = parse_args()
    model = HarmonPipeline.from_pretrained(args.vae_model, device="cpu", dtype=torch.float32).model
    world = WorldConfig()
    x, lab, box = oracle_batch(4000, args.seed + 1, world)
    with torch.no_grad():
        tokens = torch.cat([model.encode_images(x[i : i + 500]) for i in range(0, len(x), 500)]).reshape(-1, 16)
    torch.manual_seed(args.seed)
    oracle = OracleHead(args, world, tokens.shape[1])
    start = time.perf_counter()
    final_loss = train(oracle, tokens, lab, box, args)
    train_s = time.perf_counter() - start

    xt, labt, boxt = oracle_batch(200, args.seed + 2, world)
    with torch.no_grad():
        truth = model.encode_images(xt)
        z = oracle.condition(labt.reshape(-1), boxt.reshape(-1, 4))
        drawn = sample_fast(
            oracle.head,
            z,
            generator=torch.Generator().manual_seed(args.seed + 3),
            num_steps=args.sampling_steps,
            x0_clip=args.x0_clip,
        ).reshape(truth.shape)
        quality = reconstruction_quality(xt, model.decode_tokens(drawn, (4, 4)), world)
    result = {
        "prediction": args.prediction,
        "width": args.width,
        "depth": args.depth,
        "steps": args.steps,
        "x0_clip": args.x0_clip,
        "final_loss": round(final_loss, 4),
        "token_mse": round(float(((drawn - truth) ** 2).mean()), 4),
        "scenes_recovered": quality["exact_objects"],
        "mae_0_255": round(quality["mae_0_255"], 1),
        "train_seconds": round(train_s),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
