"""Can the model's VAE carry each (colour, shape) pair at all? Round trips through the latent codec.

The generator can only draw what the VAE decoder can paint from some latent. The shapes world holds some (colour,
shape) pairs out of every training image, the VAE's included, to measure composition; if the VAE itself cannot
encode and decode a held-out pair, held-out prompts fail whatever the generator learned, and the held-out score
measures the codec rather than composition. This check renders one-object scenes of every pair (held-out ones
too), encodes them with the model's VAE (posterior mode, exactly the tokens the generator is trained on), decodes
them and reads the result with the scorer's detector.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from harmon.images import pil_to_tensor, tensor_to_pil
from harmon.loading import load_checked, read_weights
from harmon.vae import AutoencoderKL, VAEConfig
from harmon.world.detection import detect_objects
from harmon.world.render import render
from harmon.world.sampling import place_content
from harmon.world.scene import WorldConfig


class StandaloneVAE:
    """A stage-0 VAE folder (``vae.safetensors`` + ``vae_config.json``, as ``harmon.world.stage0`` writes it) in the
    shape :func:`codec_round_trip` reads, so a VAE can be checked before any generator is trained on it. The round
    trip runs on whole latent maps; grouping latents into MAR tokens does not change what is decoded."""

    def __init__(self, folder: str | Path, image_size: int = 64) -> None:
        folder = Path(folder)
        missing = [n for n in ("vae.safetensors", "vae_config.json") if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} is not a stage-0 VAE folder: missing {', '.join(missing)}")
        self.vae = AutoencoderKL(VAEConfig.from_dict(json.loads((folder / "vae_config.json").read_text())))
        load_checked(self.vae, read_weights(folder / "vae.safetensors"), str(folder / "vae.safetensors"))
        self.vae.eval()
        self.device = torch.device("cpu")
        self.config = SimpleNamespace(generation=SimpleNamespace(image_size=image_size))
        self.model = self

    def grid_for(self, size: int) -> tuple[int, int]:
        return (size // 16, size // 16)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vae.encode_latents(pixels)

    def decode_tokens(self, latents: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.vae.decode_latents(latents)


@torch.no_grad()
def codec_round_trip(
    pipe, scenes: int = 16, seed: int = 0, image_size: int | None = None, batch_size: int = 32
) -> dict[str, Any]:
    """Per (colour, shape) pair: the share of ``scenes`` one-object scenes that decode back to exactly that object.

    Returns ``pairs`` (one dict per pair: ``color``, ``shape``, ``held_out``, ``recovered`` (share), ``read_as``
    (what the detector read on the failures, as "colour shape" strings with counts; "nothing" when it found no
    object)), and the mean ``seen`` and ``held_out`` shares.
    """
    if scenes < 1:
        raise ValueError(f"scenes must be >= 1, got {scenes}")
    size = image_size or pipe.config.generation.image_size
    world = WorldConfig(image_size=size)
    model = pipe.model
    grid = model.grid_for(size)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for color, shape in world.pairs(allow_held_out=True):
        drawn = [place_content([(color, shape)], g, world) for _ in range(scenes)]
        recovered, read_as = 0, {}
        for i in range(0, scenes, batch_size):
            chunk = drawn[i : i + batch_size]
            pixels = torch.stack([pil_to_tensor(render(s, world)) for s in chunk]).to(pipe.device)
            back = tensor_to_pil(model.decode_tokens(model.encode_images(pixels), grid))
            for image in back:
                found = [(d.color, d.shape) for d in detect_objects(image, world)]
                if found == [(color, shape)]:
                    recovered += 1
                else:
                    key = ", ".join(f"{c} {s}" for c, s in found) or "nothing"
                    read_as[key] = read_as.get(key, 0) + 1
        rows.append(
            {
                "color": color,
                "shape": shape,
                "held_out": world.is_held_out(color, shape),
                "recovered": recovered / scenes,
                "read_as": dict(sorted(read_as.items(), key=lambda kv: -kv[1])),
            }
        )

    def mean(flag: bool) -> float | None:
        vals = [r["recovered"] for r in rows if r["held_out"] == flag]
        return sum(vals) / len(vals) if vals else None

    return {
        "pairs": rows,
        "seen": mean(False),
        "held_out": mean(True),
        "scenes": scenes,
        "seed": seed,
        "image_size": size,
    }


def format_codec_table(result: dict[str, Any]) -> str:
    """Markdown table of :func:`codec_round_trip`, held-out pairs marked."""
    lines = ["| pair | held out | recovered | read as, on failures |", "|---|---|---|---|"]
    for r in result["pairs"]:
        failures = "; ".join(f"{k} ×{v}" for k, v in r["read_as"].items()) or "-"
        lines.append(
            f"| {r['color']} {r['shape']} | {'yes' if r['held_out'] else ''} | {r['recovered']:.0%} | {failures} |"
        )
    held = "n/a" if result["held_out"] is None else f"{result['held_out']:.1%}"
    lines.append(
        f"\none-object scenes at {result['image_size']} px, {result['scenes']} per pair, seed "
        f"{result['seed']}: recovered exactly after encode -> decode: seen pairs {result['seen']:.1%}, "
        f"held-out pairs {held}"
    )
    return "\n".join(lines)
