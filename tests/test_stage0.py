"""Stage 0 smoke test: a few VAE steps write the checkpoint, a KL-16-shaped config and the log (not quality)."""

import json

import torch

from harmon.checkpoint import read_weights
from harmon.train.stage0 import render_batch, shapes_vae_config, train_shapes_vae
from harmon.vae import AutoencoderKL, VAEConfig
from harmon.world.scene import WorldConfig


def test_shapes_vae_config_is_kl16_shaped():
    cfg = shapes_vae_config(64)
    assert cfg.stride == 16 and cfg.embed_dim == 16 and cfg.z_channels == 16


def test_render_batch_range_and_shape():
    x = render_batch(range(3), seed=0, world_config=WorldConfig(image_size=64))
    assert x.shape == (3, 3, 64, 64)
    assert x.min() >= -1 and x.max() <= 1


def test_train_shapes_vae_writes_outputs(tmp_path):
    out = train_shapes_vae(tmp_path / "vae", steps=3, batch_size=2, log_every=1)
    cfg = VAEConfig.from_dict(json.loads((out / "vae_config.json").read_text()))
    assert cfg.stride == 16 and cfg.embed_dim == 16 and cfg.z_channels == 16
    assert cfg.scale_factor > 0
    log = json.loads((out / "vae_log.json").read_text())
    assert [e["step"] for e in log["log"]] == [1, 2, 3]
    assert {"mae_0_255", "exact_objects"} <= set(log["quality"])
    vae = AutoencoderKL(cfg)
    vae.load_state_dict(read_weights(out / "vae.safetensors"), strict=True)
    z = vae.encode_latents(torch.zeros(1, 3, 64, 64))
    assert z.shape == (1, 16, 4, 4)
