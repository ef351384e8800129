import math

import pytest
import torch

from harmon import rng
from harmon.diffloss import DiffLossConfig
from harmon.mar import MAR, MARConfig, mask_by_order, next_mask_len, resize_grid_table, resize_pos_embed
from harmon.sampling import SamplingSettings, mask_schedule, step_guidance


def small_mar(**kw) -> MAR:
    cfg = MARConfig(
        encoder_dim=32,
        encoder_depth=1,
        encoder_heads=2,
        decoder_dim=32,
        decoder_depth=1,
        decoder_heads=2,
        buffer_size=4,
        grid_size=4,
        class_num=0,
        diffloss=DiffLossConfig(z_channels=32, width=32, depth=1),
        **kw,
    )
    mar = MAR(cfg)
    mar.initialize_weights(torch.Generator().manual_seed(0))
    return mar.eval()


def test_mask_schedule_256_tokens_64_steps():
    counts = mask_schedule(256, 64)
    assert sum(counts) == 256 and len(counts) == 64 and min(counts) >= 1
    # Hand derivation: floor(256 cos(pi/2 (s+1)/64)) drops by less than one token a step early on, so the
    # "at least one token" clamp binds at steps 1..10 (step 0 drops from 256 to 255 by itself).
    masked, clamped = 256, []
    for s in range(63):
        raw = math.floor(256 * math.cos(math.pi / 2 * (s + 1) / 64))
        n = max(1, min(masked - 1, raw))
        if n != raw:
            clamped.append(s)
        masked = n
    assert clamped == list(range(1, 11))
    assert counts[:11] == [1] * 11 and counts[11] >= 1
    assert counts[-1] == 256 - sum(counts[:-1])


def test_mask_schedule_1024_tokens_is_the_plain_cosine_difference():
    counts = mask_schedule(1024, 64)
    prev, expected = 1024, []
    for s in range(64):
        n = math.floor(1024 * math.cos(math.pi / 2 * (s + 1) / 64)) if s < 63 else 0
        expected.append(prev - n)
        prev = n
    assert counts == expected
    assert counts[:6] == [1, 1, 1, 2, 3, 4]
    assert sum(counts) == 1024


def test_mask_schedule_more_steps_than_tokens_never_predicts_nothing():
    for seq_len, steps in [(1024, 100), (1024, 256), (16, 8), (16, 40)]:
        counts = mask_schedule(seq_len, steps)
        assert sum(counts) == seq_len
        assert all(c >= 1 for c in counts) and len(counts) <= steps


def test_next_mask_len_clamps():
    assert next_mask_len(0, 64, 256, 256) == 255
    assert next_mask_len(63, 64, 256, 5) == 1
    assert next_mask_len(10, 64, 256, 3) == 2


def test_mask_by_order_masks_first_entries_of_order():
    orders = torch.tensor([[3, 0, 2, 1], [1, 2, 3, 0]])
    m = mask_by_order(2, orders)
    assert m.tolist() == [[True, False, False, True], [False, True, True, False]]


def test_linear_cfg_schedule():
    s = SamplingSettings(guidance_scale=3.0, cfg_schedule="linear")
    assert step_guidance(s, 256, 256) == 1.0
    assert step_guidance(s, 256, 0) == 3.0
    assert step_guidance(s, 256, 128) == pytest.approx(2.0)
    assert step_guidance(SamplingSettings(guidance_scale=3.0), 256, 100) == 3.0


def test_resize_bilinear_matches_hand_values():
    # 2x2 grid of scalars -> 4x4, align_corners=False: sample positions -0.25 (clamped), 0.25, 0.75, 1.25 (clamped)
    table = torch.tensor([[0.0], [4.0], [8.0], [12.0]])  # rows (0,0)=0 (0,1)=4 (1,0)=8 (1,1)=12
    out = resize_grid_table(table, 2, 4, 4).reshape(4, 4)
    w = [0.0, 0.25, 0.75, 1.0]  # fraction towards the second source entry
    expected = torch.tensor([[8 * wy + 4 * wx for wx in w] for wy in w])
    torch.testing.assert_close(out, expected)
    assert resize_grid_table(table, 2, 2, 2) is table


def test_resize_pos_embed_keeps_buffer_rows():
    table = torch.randn(1, 4 + 16, 8, generator=torch.Generator().manual_seed(0))
    out = resize_pos_embed(table, 4, 4, 6, 6)
    assert out.shape == (1, 4 + 36, 8)
    torch.testing.assert_close(out[:, :4], table[:, :4])
    out_ns = resize_pos_embed(table, 4, 4, 2, 8)  # non-square grids are supported
    assert out_ns.shape == (1, 4 + 16, 8)


def test_encoder_drops_masked_rows_and_keeps_buffers_first():
    mar = small_mar()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(2, 16, 16, generator=g)
    mask = mask_by_order(10, torch.stack([torch.randperm(16, generator=g) for _ in range(2)]))
    out = mar.forward_encoder(tokens, mask, (4, 4))
    assert out.shape == (2, 4 + 6, 32)
    # Hand path: embed, add table, LN, gather visible rows in raster order, blocks, norm.
    x = mar.z_proj(tokens)
    x = torch.cat([mar.fake_latent.expand(2, 4, -1), x], 1) + mar.encoder_pos_embed_learned
    x = mar.z_proj_ln(x)
    rows = [torch.cat([x[b, :4], x[b, 4:][~mask[b]]]) for b in range(2)]
    ref = mar.encoder_norm(mar.encoder_blocks[0](torch.stack(rows)))
    torch.testing.assert_close(out, ref)


def test_encoder_rejects_unequal_visible_counts():
    mar = small_mar()
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 0] = True
    with pytest.raises(ValueError, match="same number of visible"):
        mar.forward_encoder(torch.zeros(2, 16, 16), mask, (4, 4))


def test_decoder_places_rows_and_mask_tokens():
    mar = small_mar()
    g = torch.Generator().manual_seed(2)
    mask = mask_by_order(5, torch.randperm(16, generator=g)[None])
    x_enc = torch.randn(1, 4 + 11, 32, generator=g)
    out = mar.forward_decoder(x_enc, mask, (4, 4))
    assert out.shape == (1, 16, 32)
    emb = mar.decoder_embed(x_enc)
    canvas = mar.mask_token.expand(1, 20, 32).clone()
    canvas[0, :4] = emb[0, :4]
    canvas[0, 4:][~mask[0]] = emb[0, 4:]
    ref = mar.decoder_norm(mar.decoder_blocks[0](canvas + mar.decoder_pos_embed_learned))[:, 4:]
    ref = ref + mar.diffusion_pos_embed_learned
    torch.testing.assert_close(out, ref)


def test_other_resolution_runs_through_resized_tables():
    mar = small_mar()
    tokens = torch.randn(1, 36, 16)
    mask = torch.zeros(1, 36, dtype=torch.bool)
    enc = mar.forward_encoder(tokens, mask, (6, 6))
    assert mar.forward_decoder(enc, mask, (6, 6)).shape == (1, 36, 32)


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="encoder_dim"):
        MARConfig(encoder_dim=30, encoder_heads=4, diffloss=DiffLossConfig(z_channels=768))
    with pytest.raises(ValueError, match="z_channels"):
        MARConfig(decoder_dim=64, decoder_heads=4)
    roundtrip = MARConfig.from_dict(MARConfig().to_dict())
    assert roundtrip == MARConfig()


def test_decoder_table_std_scales_only_the_decoder_tables():
    """The default draws the official init bit for bit; a larger std scales the mask token and the decoder and
    diffusion position tables by the same draws, and leaves every other parameter alone."""
    base, wide = small_mar(), small_mar(decoder_table_std=1.0)
    scaled = {"mask_token", "decoder_pos_embed_learned", "diffusion_pos_embed_learned"}
    wide_params = dict(wide.named_parameters())
    for name, p in base.named_parameters():
        expected = p * 50.0 if name in scaled else p
        assert torch.allclose(wide_params[name], expected, rtol=1e-6, atol=0), name
    g = torch.Generator().manual_seed(0)  # small_mar's seed: the tables are the first draws, each at std 0.02
    tables = ("fake_latent", "encoder_pos_embed_learned", "mask_token", "decoder_pos_embed_learned")
    tables += ("diffusion_pos_embed_learned",)
    for name in tables:
        p = getattr(base, name)
        assert torch.equal(p, rng.randn(p.shape, g) * 0.02), name
    with pytest.raises(ValueError, match="decoder_table_std"):
        MARConfig(decoder_table_std=0.0)
