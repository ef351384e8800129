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

from harmon.images import tensor_to_pil
from harmon.loading import save_safetensors
from harmon.vae import AutoencoderKL, VAEConfig, vae_loss
from harmon.world.detect2 import detect_objects_v2
from harmon.world.detection import DetectorConfig, classify_pixels, detect_objects
from harmon.world.free import level_world, sample_level_scene
from harmon.world.render import render_array, shape_mask
from harmon.world.scene import Scene, WorldConfig

logger = logging.getLogger(__name__)


def shapes_vae_config(image_size: int = 64, stride: int = 16) -> VAEConfig:
    """Stride 16 and 16 latent channels like KL-16, at ~0.7 M parameters.

    Narrow at full resolution (8 channels at 64 and 32 px), where GroupNorm, swish and 3x3 convs dominate the CPU
    cost, and wide at the low levels (32 / 64 channels at 8 / 4 px), where width is nearly free. This is ~3x
    cheaper per step than ch=16, ch_mult=(1, 2, 2, 4, 4).

    ``stride`` 8 drops the first level (8 x 8 latents at 64 px): world v2's free layouts, whose objects sit anywhere
    against the 16 px cells of a stride-16 latent, read back far more often (docs/world-v2.md).
    """
    if stride not in (8, 16):
        raise ValueError(f"stride must be 8 or 16, got {stride}")
    return VAEConfig(
        ch=8,
        ch_mult=(1, 1, 2, 4, 8) if stride == 16 else (1, 2, 4, 8),
        num_res_blocks=1,
        attn_resolutions=(),
        resolution=image_size,
        norm_groups=4,
        z_channels=16,
        embed_dim=16,
        scale_factor=1.0,
    )


def off_palette_color(generator: torch.Generator, world_config) -> tuple[int, int, int]:
    """A random RGB colour that the scorer's detector reads as no colour of the world (neither a palette colour
    nor a blend of one with the background): objects painted with it are no (colour, shape) pair at all."""
    detector = DetectorConfig()
    while True:
        rgb = torch.randint(0, 256, (3,), generator=generator).tolist()
        if classify_pixels(np.array([[rgb]], dtype=np.uint8), world_config, detector)[0, 0] == -1:
            return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


def render_batch(
    indices: range | list[int], seed: int, world_config, allow_held_out: bool = False, generic_fraction: float = 0.0
) -> torch.Tensor:
    """Scenes number ``i`` of the world (seeded by (seed, i)) as pixels (B, 3, H, W) in [-1, 1].

    With ``generic_fraction`` > 0, that share of the scenes has every object painted in its own
    :func:`off_palette_color` instead of its palette colour: shapes in colours the world does not name, which
    teach a VAE that shape and colour vary independently without ever showing it a held-out (colour, shape) pair
    as the scorer reads one. With 0 the scenes (and the random draws) are exactly the world's. Worlds with varied
    backgrounds draw each scene's background after its objects (:func:`harmon.world.free.sample_level_scene`).
    """
    return render_batch_with_masks(indices, seed, world_config, allow_held_out, generic_fraction)[0]


def render_batch_with_masks(
    indices: range | list[int], seed: int, world_config, allow_held_out: bool = False, generic_fraction: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`render_batch` and its object masks (B, 1, H, W) in {0, 1}: pixels where a scene differs from its own
    background drawn without objects."""
    arrays, masks = [], []
    for i in indices:
        g = torch.Generator().manual_seed(seed * 1_000_003 + int(i))
        scene = sample_level_scene(g, world_config, allow_held_out=allow_held_out)
        array = render_array(scene, world_config)
        if generic_fraction > 0 and float(torch.rand((), generator=g)) < generic_fraction:
            for obj in scene.objects:
                x0, y0, x1, y1 = obj.bbox
                array[y0:y1, x0:x1][shape_mask(obj.shape, x1 - x0, y1 - y0)] = off_palette_color(g, world_config)
        empty = render_array(Scene(objects=(), image_size=scene.image_size, background=scene.background), world_config)
        arrays.append(array)
        masks.append((array != empty).any(-1))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().contiguous()  # NCHW: fast GroupNorm
    mask = torch.from_numpy(np.stack(masks))[:, None].float()  # (B, 1, H, W)
    return x / 127.5 - 1.0, mask


def _training_batch(
    indices: range, seed: int, world: WorldConfig, generic_fraction: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(pixels, object masks) of a training batch; the masks are None on a plain background, where the loss finds
    the objects itself (so the grid world trains exactly as before)."""
    if world.backgrounds != "varied":
        return render_batch(indices, seed, world, generic_fraction=generic_fraction), None
    return render_batch_with_masks(indices, seed, world, generic_fraction=generic_fraction)


def object_weighted_loss(
    rec: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    kl_weight: float,
    object_weight: float,
    background: tuple[int, int, int],
    mask: torch.Tensor | None = None,
) -> dict:
    """``vae_loss`` with the reconstruction term re-weighted: pixels of objects count ``1 + object_weight`` times
    a background pixel (normalised by the mean weight, so the scale matches ``vae_loss``). Objects cover a small
    share of a scene; without the weight the plain white background dominates the loss. Object pixels are those
    of ``mask`` (B, 1, H, W) when given, else those that differ from the plain ``background``."""
    terms = vae_loss(rec, x, mean, logvar, kl_weight=kl_weight)
    if object_weight <= 0:
        return terms
    if mask is None:
        bg = torch.tensor(background, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) / 127.5 - 1.0
        mask = ((x - bg).abs().sum(1, keepdim=True) > 0.01).to(x.dtype)  # (B, 1, H, W)
    weight = 1.0 + object_weight * mask.to(device=x.device, dtype=x.dtype)  # (B, 1, H, W)
    diff = rec - x
    rec_term = ((diff.abs() + diff.pow(2)) * weight).mean() / weight.mean()
    return {"loss": rec_term + kl_weight * terms["kl"], "rec": rec_term, "kl": terms["kl"]}


def train_shapes_vae(
    out_dir: str | Path,
    steps: int = 8000,
    batch_size: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
    image_size: int = 64,
    kl_weight: float = 1e-6,
    log_every: int = 200,
    device: str = "cpu",
    object_weight: float = 4.0,
    warmup_frac: float = 0.05,
    latent_noise: float = 0.0,
    eval_scenes: int = 256,
    generic_fraction: float = 0.0,
    level: str = "grid",
    stride: int = 16,
) -> Path:
    """Train the small VAE on rendered scenes and save ``vae.safetensors`` + ``vae_config.json``.

    Defaults: batch 8 (on CPU more small steps beat fewer large ones at equal wall time), one-cycle LR peaking at
    ``lr`` after ``warmup_frac`` of the steps, object pixels weighted ``1 + object_weight`` in the L1 + MSE loss.
    ``latent_noise`` > 0 decodes ``z + latent_noise * std(mean) * N(0, 1)`` (std over the batch, not
    back-propagated): the decoder must draw the scene from latents perturbed by that fraction of their spread, so the
    encoder keeps what matters (colour, shape) further apart than that. In unit-variance (scaled) latents this is
    noise of std ``latent_noise``, the scale of a diffusion head's sampling error (see :func:`noise_robustness`).
    Reports the mean absolute reconstruction error, the per-scene exact-recovery rate of the object detector, and
    that rate under latent noise, on ``eval_scenes`` scenes that training never drew. ``generic_fraction`` of the
    training scenes have their objects painted in colours outside the world's palette (:func:`render_batch`); the
    evaluation scenes are always the world's own. ``level``: the world's level ("grid" or "free",
    :func:`harmon.world.free.level_world`) its scenes come from; ``stride``: see :func:`shapes_vae_config`.
    """
    if latent_noise < 0:
        raise ValueError(f"latent_noise must be >= 0, got {latent_noise}")
    if not 0.0 <= generic_fraction <= 1.0:
        raise ValueError(f"generic_fraction must be in [0, 1], got {generic_fraction}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world, cfg = level_world(level, image_size), shapes_vae_config(image_size, stride)
    torch.manual_seed(seed)
    vae = AutoencoderKL(cfg).to(device)
    settings = {"steps": steps, "batch_size": batch_size, "lr": lr, "object_weight": object_weight}
    settings |= {"latent_noise": latent_noise, "generic_fraction": generic_fraction}
    log, seconds = _train_vae(vae, world, seed, device, settings, warmup_frac, kl_weight, log_every)
    vae.eval()
    scale, quality = _measure_vae(vae, world, seed, eval_scenes, device)
    cfg = replace(cfg, scale_factor=round(scale, 5))
    save_safetensors(vae.state_dict(), out / "vae.safetensors")
    (out / "vae_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    summary = {"log": log, "quality": quality, "train_seconds": seconds, **settings, "scale_factor": cfg.scale_factor}
    (out / "vae_log.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("vae done: scale %.4f, %s", scale, quality)
    return out


def _train_vae(
    vae: AutoencoderKL,
    world: WorldConfig,
    seed: int,
    device: str,
    settings: dict,
    warmup_frac: float,
    kl_weight: float,
    log_every: int,
) -> tuple[list[dict], float]:
    """The training loop of :func:`train_shapes_vae` (``settings``: its steps, batch size, lr, object weight,
    latent noise and generic fraction) over scenes 0, 1, ... in batches; returns (log, seconds)."""
    steps, batch_size, lr = settings["steps"], settings["batch_size"], settings["lr"]
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=warmup_frac)
    gen = torch.Generator().manual_seed(seed + 1)
    log = []
    t0 = time.perf_counter()
    for step in range(steps):
        x, mask = _training_batch(
            range(step * batch_size, (step + 1) * batch_size), seed, world, settings["generic_fraction"]
        )
        x = x.to(device)
        mean, logvar = vae.encode(x)
        z = vae.sample_posterior(mean, logvar, gen)
        if settings["latent_noise"] > 0:
            noise = torch.randn(z.shape, generator=gen).to(device)
            z = z + settings["latent_noise"] * mean.detach().std() * noise
        rec = vae.decode(z)
        terms = object_weighted_loss(rec, x, mean, logvar, kl_weight, settings["object_weight"], world.background, mask)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            entry = {
                "step": step + 1,
                **{k: float(v.detach()) for k, v in terms.items()},
                "s": time.perf_counter() - t0,
            }
            log.append(entry)
            logger.info("vae %s", entry)
    return log, time.perf_counter() - t0


def _measure_vae(
    vae: AutoencoderKL, world: WorldConfig, seed: int, eval_scenes: int, device: str
) -> tuple[float, dict]:
    """(latent scale, reconstruction quality) of a trained VAE on ``eval_scenes`` scenes training never drew.

    The scale is 1 / std of the latents, so diffusion sees unit-variance tokens (KL-16 records 0.2325).
    """
    with torch.no_grad():
        x = render_batch(range(10_000_000, 10_000_000 + eval_scenes), seed, world).to(device)
        mean, _ = vae.encode(x)
        scale = float(1.0 / mean.float().std())
        rec = vae.decode(mean)
    quality = reconstruction_quality(x, rec, world)
    quality["under_latent_noise"] = noise_robustness(
        vae, x, world, scale, generator=torch.Generator().manual_seed(seed)
    )
    return scale, quality


def finetune_vae_decoder(
    vae: AutoencoderKL,
    steps: int = 3000,
    batch_size: int = 8,
    lr: float = 1e-3,
    max_noise: float = 0.4,
    seed: int = 0,
    image_size: int = 64,
    object_weight: float = 4.0,
    device: str = "cpu",
    log_every: int = 500,
    eval_scenes: int = 256,
    level: str = "grid",
) -> dict:
    """Teach a trained VAE's decoder to draw clean scenes from imprecise latents; the encoder is left untouched.

    Each training scene is encoded (posterior mean, frozen encoder) and decoded from ``mean + sigma / scale * N(0,
    1)`` with ``sigma ~ U[0, max_noise]`` per scene, i.e. Gaussian noise of std ``sigma`` in the unit-variance
    latents the generator models (``scale`` = the VAE's ``scale_factor``). The loss is the object-weighted L1 + MSE
    of stage 0 against the clean scene. Only ``decoder.*`` and ``post_quant_conv.*`` train, so the latent space,
    and everything the encoder feeds (image understanding, the generator's training targets), stays exactly as it
    was: a model trained on this VAE's latents can take the new decoder without retraining.

    Returns a summary: the training log and, on ``eval_scenes`` unseen scenes of ``level``, exact recovery when
    clean and under latent noise (:func:`noise_robustness`) before and after.
    """
    if max_noise < 0:
        raise ValueError(f"max_noise must be >= 0, got {max_noise}")
    world = level_world(level, image_size)
    vae = vae.to(device)
    scale = float(vae.config.scale_factor)
    x_eval = render_batch(range(20_000_000, 20_000_000 + eval_scenes), seed, world).to(device)
    vae.eval()
    before = _decoder_quality(vae, x_eval, world, scale, seed)
    for n, p in vae.named_parameters():
        p.requires_grad_(n.startswith(("decoder.", "post_quant_conv.")))
    settings = {"steps": steps, "batch_size": batch_size, "lr": lr, "max_noise": max_noise}
    log, seconds = _train_decoder(vae, world, scale, seed, device, settings, object_weight, log_every)
    for p in vae.parameters():
        p.requires_grad_(False)
    vae.eval()
    after = _decoder_quality(vae, x_eval, world, scale, seed)
    return {"log": log, "before": before, "after": after, "train_seconds": seconds, **settings}


def _decoder_quality(vae: AutoencoderKL, x_eval: torch.Tensor, world: WorldConfig, scale: float, seed: int) -> dict:
    """Exact recovery of ``x_eval`` when clean and under latent noise (:func:`noise_robustness`)."""
    with torch.no_grad():
        out = reconstruction_quality(x_eval, vae.decode(vae.encode(x_eval)[0]), world)
    out["under_latent_noise"] = noise_robustness(
        vae, x_eval, world, scale, generator=torch.Generator().manual_seed(seed)
    )
    return out


def _train_decoder(
    vae: AutoencoderKL,
    world: WorldConfig,
    scale: float,
    seed: int,
    device: str,
    settings: dict,
    object_weight: float,
    log_every: int,
) -> tuple[list[dict], float]:
    """The training loop of :func:`finetune_vae_decoder` (``settings``: its steps, batch size, lr and max noise) over
    the trainable (decoder) parameters; returns (log, seconds)."""
    steps, batch_size, lr, max_noise = settings["steps"], settings["batch_size"], settings["lr"], settings["max_noise"]
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed + 2)
    log = []
    t0 = time.perf_counter()
    vae.decoder.train()
    vae.post_quant_conv.train()
    for step in range(steps):
        # scenes 30M+ are not the ones stage 0 trained on (0..steps*batch) nor the evaluation scenes
        x, mask = _training_batch(
            range(30_000_000 + step * batch_size, 30_000_000 + (step + 1) * batch_size), seed, world
        )
        x = x.to(device)
        with torch.no_grad():
            mean, logvar = vae.encode(x)
        sigma = torch.rand(x.shape[0], 1, 1, 1, generator=gen) * max_noise / scale
        z = mean + sigma.to(device) * torch.randn(mean.shape, generator=gen).to(device)
        rec = vae.decode(z)
        terms = object_weighted_loss(rec, x, mean, logvar, 0.0, object_weight, world.background, mask)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            entry = {"step": step + 1, "rec": float(terms["rec"].detach()), "s": time.perf_counter() - t0}
            log.append(entry)
            logger.info("vae decoder %s", entry)
    return log, time.perf_counter() - t0


def reconstruction_quality(x: torch.Tensor, rec: torch.Tensor, world) -> dict[str, float]:
    """Mean absolute pixel error (0-255) and the share of scenes whose objects the detector recovers exactly."""
    mae = float((rec.clamp(-1, 1) - x).abs().mean() * 127.5)
    ok = 0
    detect = detect_objects_v2 if world.backgrounds == "varied" else detect_objects
    for a, b in zip(tensor_to_pil(x), tensor_to_pil(rec)):
        want = sorted((o.shape, o.color) for o in detect(a, world))
        got = sorted((o.shape, o.color) for o in detect(b, world))
        ok += want == got
    return {"mae_0_255": mae, "exact_objects": ok / len(x)}


@torch.no_grad()
def noise_robustness(
    vae: AutoencoderKL,
    x: torch.Tensor,
    world,
    scale: float,
    sigmas=(0.1, 0.2, 0.3, 0.5),
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Share of scenes the detector still recovers exactly when Gaussian noise of std ``sigma`` is added to the
    unit-variance latents (``mean * scale``) before decoding: how precisely a generator must draw tokens.

    Measured on a VAE trained without latent noise: 0.99 / 0.96 / 0.79 at 0.1 / 0.2 / 0.3 (300 scenes); its
    colours lie along one latent direction, in hue order, so neighbouring colours swap first.
    """
    mean, _ = vae.encode(x)
    out = {}
    for sigma in sigmas:
        noise = torch.randn(mean.shape, generator=generator).to(mean.device)
        noisy = vae.decode(mean + (sigma / scale) * noise)
        out[str(sigma)] = reconstruction_quality(x, noisy, world)["exact_objects"]
    return out
