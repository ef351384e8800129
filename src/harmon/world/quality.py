"""An FID-style distance for the shapes world that needs no download: the world's own feature network.

Inception-v3 was trained on photographs; the world's flat-coloured 64 px scenes are far from its training data,
and its weights are a download. The world has a network trained on its own images already: the VAE encoder of
the shipped model (stage 0, :mod:`harmon.world.stage0`). Its posterior mean, scaled as the generator sees it
(about unit variance) and flattened from (16, 4, 4) at 64 px to 256 features, encodes which colours sit where and
in what shape: what a person looking at the scenes judges.

The distance compares the images a model drew for the eval prompts with fresh renders of scenes that satisfy the
same prompts (:func:`harmon.world.scene_for_prompt`), so the reference is what the prompts describe, drawn
exactly. Fréchet distance and KID are :mod:`harmon.eval.fid`'s; the feature network is always the shipped
model's encoder, whatever model is scored, so numbers of different models are comparable. Like FID, the Fréchet
distance is biased upwards for small sets: compare runs of the same size (KID has no such bias).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from harmon.eval.fid import frechet_distance, kernel_distance
from harmon.loading import load_checked, read_weights
from harmon.vae import AutoencoderKL, VAEConfig
from harmon.world.prompts import scene_for_prompt
from harmon.world.render import render
from harmon.world.scene import WorldConfig

REFERENCE_SEED_OFFSET = 4  # eval shapes draws prompts, samples, questions, shape items from seed + 0..3


class WorldFeatures:
    """The shipped model's VAE encoder as a feature network: RGB images -> posterior means, flattened (N, D)."""

    def __init__(self, model_dir: str | Path | None = None) -> None:
        from harmon.shipped import shipped_model_path

        folder = Path(model_dir) if model_dir is not None else shipped_model_path()
        if folder is None:
            raise ValueError("the world distance needs the shipped model's VAE, and this copy of harmon has none")
        config = VAEConfig.from_dict(json.loads((folder / "config.json").read_text())["vae"])
        weights = read_weights(folder / "model.safetensors")
        self.vae = AutoencoderKL(config)
        load_checked(self.vae, {k[4:]: v for k, v in weights.items() if k.startswith("vae.")}, f"{folder} (vae)")
        self.vae.eval().requires_grad_(False)
        self.size = config.resolution

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """Features (N, embed_dim * h * w) float32; images of another size are resized to the VAE's resolution."""
        out = []
        for start in range(0, len(images), batch_size):
            chunk = [im.convert("RGB") for im in images[start : start + batch_size]]
            chunk = [
                im if im.size == (self.size, self.size) else im.resize((self.size,) * 2, Image.BICUBIC) for im in chunk
            ]
            x = torch.from_numpy(np.stack([np.asarray(im) for im in chunk])).permute(0, 3, 1, 2)  # (B, 3, H, W) uint8
            z = self.vae.encode_latents(x.float() / 127.5 - 1.0)  # (B, embed_dim, H/16, W/16), posterior mean
            out.append(z.flatten(1).numpy())  # (B, D)
        return np.concatenate(out, axis=0)


def reference_renders(prompts: Sequence[dict[str, Any]], seed: int, world: WorldConfig) -> list[Image.Image]:
    """One fresh render per prompt of a scene that satisfies it (held-out pairs allowed), from its own generator."""
    g = torch.Generator().manual_seed(seed)
    return [render(scene_for_prompt(p, g, world, allow_held_out=True), world) for p in prompts]


def world_distance(
    images: Sequence[Image.Image],
    prompts: Sequence[dict[str, Any]],
    seed: int = 0,
    world: WorldConfig | None = None,
    features: WorldFeatures | None = None,
) -> dict[str, Any]:
    """Fréchet distance and KID between ``images`` (drawn for ``prompts``) and renders of the same prompts.

    Args:
        images: one generated image per prompt (any size; scored at the VAE's resolution).
        prompts: the eval prompt dicts the images were drawn for (:func:`harmon.world.sample_eval_prompts`).
        seed: the eval seed; the renders draw from ``seed + 4``.
        world: the world the prompts come from (default: the standard world at the images' size).
    Returns:
        {"fd", "kd", "kd_std", "n", "feature_dim"}.
    """
    if len(images) != len(prompts) or len(images) < 2:
        raise ValueError(f"need one image per prompt and at least 2 of each, got {len(images)} and {len(prompts)}")
    world = world or WorldConfig(image_size=images[0].width)
    features = features or WorldFeatures()
    f_gen = features(images).astype(np.float64)  # (N, D)
    f_ref = features(reference_renders(prompts, seed + REFERENCE_SEED_OFFSET, world)).astype(np.float64)
    fd = frechet_distance(f_gen.mean(0), np.cov(f_gen, rowvar=False), f_ref.mean(0), np.cov(f_ref, rowvar=False))
    kd, kd_std = kernel_distance(f_gen, f_ref, seed=seed)
    return {"fd": fd, "kd": kd, "kd_std": kd_std, "n": len(images), "feature_dim": f_gen.shape[1]}


def format_world_distance(d: dict[str, Any]) -> str:
    """The one line ``harmon eval shapes --fid`` prints."""
    return (
        f"World distance (shipped VAE encoder features, {d['feature_dim']}-d; generated vs renders of the same "
        f"prompts, n {d['n']}): FD {d['fd']:.2f}, KD x 1e3 {1e3 * d['kd']:.2f} ± {1e3 * d['kd_std']:.2f}"
    )
