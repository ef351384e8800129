"""Tests for the KL-16 VAE (harmon-architecture.md §8, §12.2). Tiny configs on CPU; the official layout is
checked on the meta device so no 66 M-parameter allocation happens."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harmon.vae import (
    AttnBlock,
    AutoencoderKL,
    Downsample,
    ResnetBlock,
    Upsample,
    VAEConfig,
    vae_loss,
)

KEYS_JSON = Path(__file__).resolve().parent / "data" / "official-state-dict-keys.json"
OFFICIAL_PARAM_COUNT = 66_456_019

# Same depth as the official model (stride 16, attention at the lowest level), much narrower.
TINY = VAEConfig(ch=32, norm_groups=8, resolution=64, attn_resolutions=(4,))


@pytest.fixture(scope="module")
def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(TINY).eval()


def _official_shapes() -> dict[str, list[int]]:
    if not KEYS_JSON.exists():
        pytest.skip(f"{KEYS_JSON} not available")
    return json.loads(KEYS_JSON.read_text())["kl16_vae"]


# --------------------------------------------------------------------------------------------------- config


def test_config_defaults_and_stride():
    cfg = VAEConfig()
    assert cfg.stride == 16
    assert cfg.level_resolutions == (256, 128, 64, 32, 16)
    assert VAEConfig(ch_mult=(1, 2), attn_resolutions=()).stride == 2


def test_config_json_round_trip():
    cfg = VAEConfig(ch=32, ch_mult=(1, 2, 4), norm_groups=8, resolution=32, attn_resolutions=(8,))
    back = VAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert isinstance(back.ch_mult, tuple) and isinstance(back.attn_resolutions, tuple)
    hash(back)  # frozen and tuple-valued -> hashable


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(ch=30), "30"),  # 30 not divisible by 32 groups
        (dict(ch=16, ch_mult=(2, 3)), "48"),  # level 0 width 32 is fine, level 1 width 48 is not
        (dict(attn_resolutions=(15,)), "15"),
        (dict(resolution=200), "200"),
        (dict(dropout=1.5), "1.5"),
        (dict(scale_factor=0.0), "0.0"),
        (dict(ch_mult=()), "ch_mult"),
        (dict(z_channels=0), "z_channels"),
    ],
)
def test_config_validation_names_bad_value(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        VAEConfig(**kwargs)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="bogus"):
        VAEConfig.from_dict({"ch": 128, "bogus": 1})


# ------------------------------------------------------------------------------------------ official layout


def test_official_layout_matches_state_dict_keys():
    expected = _official_shapes()
    with torch.device("meta"):
        model = AutoencoderKL(VAEConfig())
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    assert not missing and not unexpected, f"missing: {missing}\nunexpected: {unexpected}"
    wrong = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
    assert not wrong, f"shape mismatches (ours, official): {wrong}"
    assert len(got) == 312
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAM_COUNT


def test_official_state_dict_loads_strictly():
    # A state dict with the official names/shapes (meta tensors) loads with strict=True, no renaming.
    expected = _official_shapes()
    official_sd = {k: torch.empty(shape, device="meta") for k, shape in expected.items()}
    with torch.device("meta"):
        model = AutoencoderKL(VAEConfig())
    report = model.load_state_dict(official_sd, strict=True, assign=True)
    assert not report.missing_keys and not report.unexpected_keys


# --------------------------------------------------------------------------------------------------- shapes


@torch.no_grad()
def test_encode_decode_shapes(tiny_vae):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    mean, logvar = tiny_vae.encode(x)
    assert mean.shape == logvar.shape == (2, 16, 4, 4)
    assert logvar.min() >= -30 and logvar.max() <= 20
    assert tiny_vae.decode_latents(tiny_vae.encode_latents(x)).shape == (2, 3, 64, 64)


@torch.no_grad()
def test_non_square_input(tiny_vae):
    x = torch.rand(1, 3, 64, 96) * 2 - 1
    latents = tiny_vae.encode_latents(x)
    assert latents.shape == (1, 16, 4, 6)
    assert tiny_vae.decode_latents(latents).shape == (1, 3, 64, 96)


@torch.no_grad()
def test_bad_input_sizes_raise(tiny_vae):
    with pytest.raises(ValueError, match="60x64"):
        tiny_vae.encode(torch.zeros(1, 3, 60, 64))
    with pytest.raises(ValueError, match="64x72"):
        tiny_vae.encode_latents(torch.zeros(1, 3, 64, 72))
    with pytest.raises(ValueError, match="4 channels"):
        tiny_vae.encode(torch.zeros(1, 4, 64, 64))
    with pytest.raises(ValueError, match="embed_dim"):
        tiny_vae.decode_latents(torch.zeros(1, 8, 4, 4))


# ---------------------------------------------------------------------------------------- latent interface


@torch.no_grad()
def test_decode_latents_does_not_mutate_input(tiny_vae):
    latents = torch.randn(1, 16, 4, 4)
    before = latents.clone()
    tiny_vae.decode_latents(latents)
    assert torch.equal(latents, before)


@torch.no_grad()
def test_decode_latents_divides_by_scale(tiny_vae):
    z = torch.randn(1, 16, 4, 4)
    torch.testing.assert_close(tiny_vae.decode_latents(z * TINY.scale_factor), tiny_vae.decode(z))


@torch.no_grad()
def test_encode_latents_mode_and_sample(tiny_vae):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    mean, _ = tiny_vae.encode(x)
    torch.testing.assert_close(tiny_vae.encode_latents(x), mean * TINY.scale_factor)
    a = tiny_vae.encode_latents(x, sample=True, generator=torch.Generator().manual_seed(7))
    b = tiny_vae.encode_latents(x, sample=True, generator=torch.Generator().manual_seed(7))
    c = tiny_vae.encode_latents(x, sample=True, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, mean * TINY.scale_factor)
    assert not torch.allclose(a, c)


def test_posterior_sample_formula():
    mean = torch.randn(2, 4, 3, 3)
    logvar = torch.randn(2, 4, 3, 3)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    z = AutoencoderKL.sample_posterior(mean, logvar, torch.Generator().manual_seed(3))
    torch.testing.assert_close(z, mean + torch.exp(0.5 * logvar) * eps)


# ------------------------------------------------------------------------------------ hand-derived blocks


@torch.no_grad()
def test_downsample_pads_only_right_and_bottom():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)  # x[i, j] = 4i + j
    down = Downsample(1)
    down.conv.bias.zero_()

    # Only the top-left tap: out[a, b] = padded[2a, 2b]. With right/bottom padding that is x[2a, 2b];
    # with symmetric padding it would be x[2a-1, 2b-1] (0 at a = b = 0).
    down.conv.weight.zero_()
    down.conv.weight[0, 0, 0, 0] = 1.0
    assert torch.equal(down(x), torch.tensor([[[[0.0, 2.0], [8.0, 10.0]]]]))

    # Only the bottom-right tap: out[a, b] = padded[2a+2, 2b+2], which is the zero pad for a = 1 or b = 1.
    down.conv.weight.zero_()
    down.conv.weight[0, 0, 2, 2] = 1.0
    assert torch.equal(down(x), torch.tensor([[[[10.0, 0.0], [0.0, 0.0]]]]))

    # All-ones kernel: out[a, b] = sum of x over rows 2a..2a+2, cols 2b..2b+2 clipped to the image.
    down.conv.weight.fill_(1.0)
    expected = torch.tensor(
        [[[[x[0, 0, 0:3, 0:3].sum(), x[0, 0, 0:3, 2:4].sum()], [x[0, 0, 2:4, 0:3].sum(), x[0, 0, 2:4, 2:4].sum()]]]]
    )
    assert torch.equal(down(x), expected)


@torch.no_grad()
def test_upsample_is_nearest_then_conv():
    up = Upsample(1)
    up.conv.weight.zero_()
    up.conv.weight[0, 0, 1, 1] = 1.0  # identity conv
    up.conv.bias.zero_()
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    expected = torch.tensor([[[[1.0, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]]])
    assert torch.equal(up(x), expected)


@torch.no_grad()
def test_attn_block_matches_hand_written_softmax_attention():
    torch.manual_seed(0)
    c, h, w = 16, 3, 5
    attn = AttnBlock(c, norm_groups=4)
    for p in attn.parameters():
        p.normal_(0, 0.3)
    x = torch.randn(2, c, h, w)

    hn = F.group_norm(x, 4, attn.norm.weight, attn.norm.bias, eps=1e-6)
    q = attn.q(hn).reshape(2, c, h * w)  # (B, C, N)
    k = attn.k(hn).reshape(2, c, h * w)
    v = attn.v(hn).reshape(2, c, h * w)
    weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / c**0.5, dim=-1)  # (B, N_query, N_key)
    out = torch.einsum("bij,bcj->bci", weights, v).reshape(2, c, h, w)
    expected = x + attn.proj_out(out)

    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_resnet_block_shortcut_only_when_channels_change():
    torch.manual_seed(0)
    same = ResnetBlock(16, 16, norm_groups=4)
    grow = ResnetBlock(16, 32, norm_groups=4)
    assert same.nin_shortcut is None and not any("nin_shortcut" in k for k in same.state_dict())
    assert isinstance(grow.nin_shortcut, torch.nn.Conv2d) and grow.nin_shortcut.kernel_size == (1, 1)

    # With the residual branch silenced, the block is exactly its shortcut.
    x = torch.randn(2, 16, 5, 5)
    for block in (same, grow):
        block.conv2.weight.zero_()
        block.conv2.bias.zero_()
    assert torch.equal(same(x), x)
    torch.testing.assert_close(grow(x), grow.nin_shortcut(x))


def test_norms_use_ldm_epsilon(tiny_vae):
    norms = [m for m in tiny_vae.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.eps == 1e-6 and m.num_groups == TINY.norm_groups for m in norms)


# ---------------------------------------------------------------------------------------------------- loss


def test_vae_loss_zero_at_perfect_reconstruction_and_prior():
    x = torch.randn(2, 3, 8, 8)
    zeros = torch.zeros(2, 4, 2, 2)
    out = vae_loss(x.clone(), x, zeros, zeros)
    assert set(out) == {"loss", "rec", "kl"}
    for value in out.values():
        assert value.ndim == 0 and value.item() == 0.0


def test_vae_loss_terms_by_hand():
    rec, x = torch.full((1, 1, 2, 2), 0.5), torch.zeros(1, 1, 2, 2)
    mean, logvar = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)
    out = vae_loss(rec, x, mean, logvar, kl_weight=0.1)
    torch.testing.assert_close(out["rec"], torch.tensor(0.5 + 0.25))  # L1 + MSE
    torch.testing.assert_close(out["kl"], torch.tensor(0.5))  # 0.5 * mean^2
    torch.testing.assert_close(out["loss"], torch.tensor(0.75 + 0.05))


def test_few_optimizer_steps_reduce_loss():
    # About 1 s on one CPU thread: a 2-level, 16-wide VAE on a 2x3x16x16 batch.
    torch.manual_seed(0)
    cfg = VAEConfig(
        ch=16,
        ch_mult=(1, 2),
        num_res_blocks=1,
        norm_groups=8,
        resolution=16,
        attn_resolutions=(8,),
        z_channels=4,
        embed_dim=4,
    )
    model = AutoencoderKL(cfg)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(15):
        rec, mean, logvar = model(x, generator=gen)
        loss = vae_loss(rec, x, mean, logvar)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses  # ~0.75 at this seed; 0.74-0.83 over seeds 0-4
