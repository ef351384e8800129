"""Stage 0 smoke test: a few VAE steps write the checkpoint, a KL-16-shaped config and the log (not quality)."""

import json

import numpy as np
import pytest
import torch

from harmon.loading import read_weights
from harmon.vae import AutoencoderKL, VAEConfig
from harmon.world.scene import WorldConfig
from harmon.world.stage0 import render_batch, shapes_vae_config, train_shapes_vae


def test_shapes_vae_config_is_kl16_shaped():
    cfg = shapes_vae_config(64)
    assert cfg.stride == 16 and cfg.embed_dim == 16 and cfg.z_channels == 16


def test_render_batch_range_and_shape():
    x = render_batch(range(3), seed=0, world_config=WorldConfig(image_size=64))
    assert x.shape == (3, 3, 64, 64)
    assert x.min() >= -1 and x.max() <= 1


def test_train_shapes_vae_writes_outputs(tmp_path):
    out = train_shapes_vae(tmp_path / "vae", steps=3, batch_size=2, log_every=1, eval_scenes=4)
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


def test_latent_noise_is_validated_and_recorded(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="latent_noise"):
        train_shapes_vae(tmp_path / "bad", steps=1, latent_noise=-0.1)
    out = train_shapes_vae(tmp_path / "vae", steps=2, batch_size=2, log_every=1, latent_noise=0.25, eval_scenes=4)
    log = json.loads((out / "vae_log.json").read_text())
    assert log["latent_noise"] == 0.25
    assert set(log["quality"]["under_latent_noise"]) == {"0.1", "0.2", "0.3", "0.5"}


def test_latent_noise_changes_training(tmp_path):
    """Same seed, same data: only the decoded latents differ, so the trained weights must differ."""

    def weights(name: str, noise: float) -> dict:
        out = train_shapes_vae(tmp_path / name, steps=2, batch_size=2, latent_noise=noise, eval_scenes=2)
        return read_weights(out / "vae.safetensors")

    a, b, c = weights("a", 0.0), weights("b", 0.5), weights("c", 0.0)
    assert all(torch.equal(a[k], c[k]) for k in a)  # deterministic
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_noise_robustness_adds_sigma_in_unit_variance_latents():
    from harmon.world.stage0 import noise_robustness

    vae = AutoencoderKL(shapes_vae_config(64)).eval()
    x = render_batch(range(4), seed=0, world_config=WorldConfig(image_size=64))
    with torch.no_grad():
        mean, _ = vae.encode(x)
    seen = []
    decode = vae.decode

    def spy(z):
        seen.append(z.clone())
        return decode(z)

    vae.decode = spy
    scale = 2.0
    out = noise_robustness(
        vae, x, WorldConfig(image_size=64), scale, sigmas=(0.5,), generator=torch.Generator().manual_seed(0)
    )
    assert set(out) == {"0.5"} and 0.0 <= out["0.5"] <= 1.0
    noise = (seen[0] - mean) * scale  # back in unit-variance latents
    assert abs(float(noise.std()) - 0.5) < 0.05 and abs(float(noise.mean())) < 0.05


def test_pipeline_vae_stage_takes_recipe_defaults_and_overrides(tmp_path, monkeypatch):
    import functools

    import harmon.world.stage0 as stage0
    from harmon.world import pipeline as shapes_pipeline
    from harmon.world.recipes import SHAPES_VAE

    calls = []
    monkeypatch.setattr(
        stage0, "train_shapes_vae", functools.wraps(stage0.train_shapes_vae)(lambda out, **kw: calls.append(kw))
    )
    monkeypatch.setitem(SHAPES_VAE, "latent_noise", 0.125)
    shapes_pipeline._vae(tmp_path, "cpu", [])
    shapes_pipeline._vae(tmp_path, "cpu", ["latent_noise=0.25", "steps=5"])
    assert calls[0]["latent_noise"] == 0.125  # the recipe's settings reach the VAE stage
    assert calls[1]["latent_noise"] == 0.25 and calls[1]["steps"] == 5  # and --set vae:KEY=VALUE wins


def test_finetune_vae_decoder_trains_only_the_decoder():
    """The encoder side (and so every latent) must stay bit-identical; the decoder must change; results recorded."""
    import pytest

    from harmon.world.stage0 import finetune_vae_decoder

    torch.manual_seed(0)
    vae = AutoencoderKL(shapes_vae_config(64))
    vae.config = vae.config.__class__.from_dict({**vae.config.to_dict(), "scale_factor": 0.5})
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    x = render_batch(range(2), seed=0, world_config=WorldConfig(image_size=64))
    with torch.no_grad():
        z0 = vae.encode_latents(x)
    summary = finetune_vae_decoder(vae, steps=2, batch_size=2, log_every=1, eval_scenes=2)
    after = vae.state_dict()
    decoder_side = [k for k in after if k.startswith(("decoder.", "post_quant_conv."))]
    assert decoder_side and any(not torch.equal(before[k], after[k]) for k in decoder_side)
    assert all(torch.equal(before[k], after[k]) for k in after if k not in decoder_side)
    with torch.no_grad():
        assert torch.equal(vae.encode_latents(x), z0)
    assert not any(p.requires_grad for p in vae.parameters())
    assert [e["step"] for e in summary["log"]] == [1, 2]
    for when in ("before", "after"):
        assert {"exact_objects", "mae_0_255", "under_latent_noise"} <= set(summary[when])
    with pytest.raises(ValueError, match="max_noise"):
        finetune_vae_decoder(vae, steps=1, max_noise=-1.0)


def test_pipeline_decoder_stage_exports_the_model_with_the_new_decoder(tmp_path, monkeypatch):
    """The decoder stage reads stage III's export, applies the recipe (overridable) and writes a loadable model."""
    import functools

    import harmon.world.stage0 as stage0
    from harmon.config import harmon_tiny
    from harmon.model import Harmon
    from harmon.pipeline import HarmonPipeline
    from harmon.tokenizer import train_tokenizer
    from harmon.world import pipeline as shapes_pipeline

    tok = train_tokenizer(["Generate an image: a red circle"] * 4, vocab_size=300)
    model = Harmon(harmon_tiny(vocab_size=320))
    HarmonPipeline(model, tok).save_pretrained(tmp_path / "stage3" / "final")
    calls = []

    def fake(vae, **kw):
        calls.append(kw)
        with torch.no_grad():
            vae.decoder.conv_out.bias.add_(1.0)
        return {"log": []}

    monkeypatch.setattr(stage0, "finetune_vae_decoder", functools.wraps(stage0.finetune_vae_decoder)(fake))
    shapes_pipeline._decoder(tmp_path, "cpu", ["steps=7"])
    assert calls[0]["steps"] == 7 and calls[0]["max_noise"] == 0.4
    new = HarmonPipeline.from_pretrained(tmp_path / "decoder" / "final", device="cpu", dtype=torch.float32)
    delta = new.model.vae.decoder.conv_out.bias - model.vae.decoder.conv_out.bias
    assert torch.allclose(delta, torch.ones_like(delta))
    assert json.loads((tmp_path / "decoder" / "decoder_log.json").read_text())["source"] == "stage3"
    with pytest.raises(ValueError, match="unknown setting"):
        shapes_pipeline._decoder(tmp_path, "cpu", ["nope=1"])


def test_generic_scenes_paint_objects_in_colours_the_world_does_not_name():
    from harmon.world.detection import DetectorConfig, classify_pixels, detect_objects
    from harmon.world.render import render_array
    from harmon.world.sampling import sample_scene

    world = WorldConfig()
    plain = render_batch(range(6), 4, world)
    assert torch.equal(render_batch(range(6), 4, world, generic_fraction=0.0), plain)  # the world's own scenes
    generic = render_batch(range(6), 4, world, generic_fraction=1.0)
    assert torch.equal(render_batch(range(6), 4, world, generic_fraction=1.0), generic)  # seeded
    for i in range(6):
        scene = sample_scene(torch.Generator().manual_seed(4 * 1_000_003 + i), world)
        ref = render_array(scene, world)
        img = ((generic[i].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
        background = (ref == np.array(world.background, dtype=np.uint8)).all(-1)
        assert (img[background] == ref[background]).all()  # same layout: only the objects' colours change
        classes = classify_pixels(img, world, DetectorConfig())
        assert (classes[~background] == -1).all()  # no object pixel reads as a palette colour or a blend
        assert detect_objects(img, world) == []  # so no (colour, shape) pair, held-out or not, is shown
    with pytest.raises(ValueError, match="generic_fraction"):
        train_shapes_vae("/nonexistent", steps=1, generic_fraction=1.5)
