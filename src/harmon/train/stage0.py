"""Stage 0 of the shapes-world model: a small KL VAE trained on the world, and a tokenizer trained on its text.

The VAE is the same class as KL-16 (stride 16, 16 latent channels) in a small configuration. Its latent scale is
measured after training (1 / std of the latents) and recorded in its config, as the real KL-16 records 0.2325.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from harmon.checkpoint import save_safetensors
from harmon.vae import AutoencoderKL, VAEConfig, vae_loss

logger = logging.getLogger(__name__)


def shapes_vae_config(image_size: int = 64) -> VAEConfig:
    """Stride 16 and 16 latent channels like KL-16, at a few hundred thousand parameters."""
    return VAEConfig(ch=16, ch_mult=(1, 2, 2, 4, 4), num_res_blocks=1, attn_resolutions=(), resolution=image_size,
                     norm_groups=8, z_channels=16, embed_dim=16, scale_factor=1.0)


def render_batch(indices: range | list[int], seed: int, world_config, allow_held_out: bool = False) -> torch.Tensor:
    """Scenes number ``i`` of the world (seeded by (seed, i)) as pixels (B, 3, H, W) in [-1, 1]."""
    from harmon.world.scene import render_array, sample_scene

    arrays = []
    for i in indices:
        g = torch.Generator().manual_seed(seed * 1_000_003 + int(i))
        arrays.append(render_array(sample_scene(g, world_config, allow_held_out=allow_held_out), world_config))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def train_shapes_vae(out_dir: str | Path, steps: int = 3000, batch_size: int = 32, lr: float = 2e-3,
                     seed: int = 0, image_size: int = 64, kl_weight: float = 1e-6, log_every: int = 100,
                     device: str = "cpu") -> Path:
    """Train the small VAE on rendered scenes and save ``vae.safetensors`` + ``vae_config.json``.

    Reports the mean absolute reconstruction error and the per-scene exact-recovery rate of the object detector.
    """
    from harmon.world.scene import WorldConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = WorldConfig(image_size=image_size)
    cfg = shapes_vae_config(image_size)
    torch.manual_seed(seed)
    vae = AutoencoderKL(cfg).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed + 1)
    log = []
    t0 = time.perf_counter()
    for step in range(steps):
        x = render_batch(range(step * batch_size, (step + 1) * batch_size), seed, world).to(device)
        rec, mean, logvar = vae(x, generator=gen)
        terms = vae_loss(rec, x, mean, logvar, kl_weight=kl_weight)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            entry = {"step": step + 1, **{k: float(v) for k, v in terms.items()}, "s": time.perf_counter() - t0}
            log.append(entry)
            logger.info("vae %s", entry)
    vae.eval()
    # Latent scale: 1 / std over held-back scenes, so diffusion sees unit-variance tokens (KL-16 records 0.2325).
    with torch.no_grad():
        x = render_batch(range(10_000_000, 10_000_256), seed, world).to(device)
        mean, _ = vae.encode(x)
        scale = float(1.0 / mean.float().std())
        rec = vae.decode(mean)
    cfg = replace(cfg, scale_factor=round(scale, 5))
    quality = reconstruction_quality(x, rec, world)
    save_safetensors(vae.state_dict(), out / "vae.safetensors")
    (out / "vae_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    (out / "vae_log.json").write_text(json.dumps({"log": log, "quality": quality}, indent=2) + "\n")
    logger.info("vae done: scale %.4f, %s", scale, quality)
    return out


def reconstruction_quality(x: torch.Tensor, rec: torch.Tensor, world) -> dict[str, float]:
    """Mean absolute pixel error (0-255) and the share of scenes whose objects the detector recovers exactly."""
    from harmon.images import tensor_to_pil
    from harmon.world.scoring import detect_objects

    mae = float((rec.clamp(-1, 1) - x).abs().mean() * 127.5)
    ok = 0
    for a, b in zip(tensor_to_pil(x), tensor_to_pil(rec)):
        want = sorted((o.shape, o.color) for o in detect_objects(a, world))
        got = sorted((o.shape, o.color) for o in detect_objects(b, world))
        ok += want == got
    return {"mae_0_255": mae, "exact_objects": ok / len(x)}
