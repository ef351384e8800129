import dataclasses
import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_model

from harmon.config import harmon_0_5b, harmon_1_5b
from harmon.data.tasks import Task
from harmon.loading import CheckpointError, infer_mar_config, load_harmon_weights
from harmon.mar import mar_base, mar_huge, mask_by_order
from harmon.model import IGNORE_INDEX, IMAGE_PLACEHOLDER, Harmon, truncated_normal_mask_ratio, uniform_mask_ratio

# Every parameter name and shape of the official checkpoints (a copy of shared/reference's manifest).
MANIFEST = Path(__file__).resolve().parent / "data" / "official-state-dict-keys.json"


def manifest():
    return json.loads(MANIFEST.read_text())


def meta_model(config):
    with torch.device("meta"):
        return Harmon(config)


@pytest.mark.parametrize("name,factory", [("harmon_0.5b", harmon_0_5b), ("harmon_1.5b", harmon_1_5b)])
def test_official_layout_names_and_shapes(name, factory):
    ref = manifest()[name]
    model = meta_model(factory())
    ours = {k: list(v.shape) for k, v in model.state_dict().items() if not k.startswith("vae.")}
    assert sorted(set(ref) - set(ours)) == [] and sorted(set(ours) - set(ref)) == []
    assert ours == ref
    assert list(ours) == list(ref)  # same registration order, too
    vae = {k[4:]: list(v.shape) for k, v in model.state_dict().items() if k.startswith("vae.")}
    assert vae == manifest()["kl16_vae"]


@pytest.mark.parametrize(
    "name,factory,mar", [("harmon_0.5b", harmon_0_5b, mar_base()), ("harmon_1.5b", harmon_1_5b, mar_huge())]
)
@pytest.mark.parametrize("with_head", [True, False])
def test_official_layout_loads_strictly(name, factory, mar, with_head):
    ref = manifest()[name]
    sd = {k: torch.empty(shape, device="meta") for k, shape in ref.items()}
    if not with_head:
        sd.pop("llm.lm_head.weight")
    assert infer_mar_config(sd) == mar
    model = meta_model(factory())
    load_harmon_weights(model, sd, name, include_vae=False)
    assert model.llm.lm_head.weight is model.llm.model.embed_tokens.weight


def test_checkpoint_errors_list_keys_by_name():
    model = tiny_model()
    sd = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("vae.")}
    sd.pop("mar.mask_token")
    sd["mar.extra_thing"] = torch.zeros(1)
    sd["proj_in.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError) as info:
        load_harmon_weights(tiny_model(), sd, "bad.pth", include_vae=False)
    msg = str(info.value)
    assert "mar.mask_token" in msg and "mar.extra_thing" in msg and "proj_in.0.weight" in msg
    assert info.value.missing == ["mar.mask_token"] and info.value.unexpected == ["mar.extra_thing"]


def test_parameter_counts_match_spec():
    for factory, total in ((harmon_0_5b, 704_942_880), (harmon_1_5b, 2_494_774_048)):
        model = meta_model(factory())
        n = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("vae."))
        assert n == total


def test_truncated_normal_ratio_range_and_mean():
    g = torch.Generator().manual_seed(0)
    r = torch.tensor([truncated_normal_mask_ratio(0.7, generator=g) for _ in range(4000)])
    assert r.min() >= 0.7 and r.max() <= 1.0
    assert abs(r.mean().item() - 0.867) < 0.01  # E[X] of N(1, .25) truncated to [0.7, 1]


def test_uniform_ratio_range_and_mean():
    g = torch.Generator().manual_seed(0)
    r = torch.tensor([uniform_mask_ratio(0.25, generator=g) for _ in range(4000)])
    assert r.min() >= 0.25 and r.max() <= 1.0
    assert abs(r.mean().item() - 0.625) < 0.01
    assert abs((r < 0.5).float().mean().item() - 1 / 3) < 0.03  # flat, unlike the truncated normal


def test_uniform_mask_trains_every_visible_count(monkeypatch):
    """With mask_ratio_dist="uniform" the loss sees few-masked batches too; at least one token is always masked."""
    import harmon.model as hm

    base_mar = tiny_model().config.mar
    model = tiny_model(mar=dataclasses.replace(base_mar, mask_ratio_dist="uniform", mask_ratio_min=0.0)).train()
    seen = []
    real = hm.mask_by_order
    monkeypatch.setattr(hm, "mask_by_order", lambda n, orders: seen.append(n) or real(n, orders))
    pixels, ids, mask = _t2i_batch()
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        with torch.no_grad():
            model.text_to_image_loss(pixels, ids, mask, generator=g)
    seq = model.config.mar.seq_len
    assert min(seen) >= 1 and max(seen) <= seq
    assert sum(n <= seq // 2 for n in seen) >= 10  # the truncated normal at 1.0 almost never masks half or less
    with pytest.raises(ValueError, match="mask_ratio_dist"):
        dataclasses.replace(base_mar, mask_ratio_dist="beta")


def test_buffers_go_last_for_the_llm_and_first_for_the_decoder():
    model = tiny_model()
    tokens = torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(0))
    mask = mask_by_order(6, torch.randperm(16, generator=torch.Generator().manual_seed(1))[None])
    x_enc, z_enc = model.extract_visual_feature(tokens, mask, (4, 4))
    nb = model.buffer_size
    torch.testing.assert_close(z_enc[:, -nb:], model.proj_in(x_enc[:, :nb]))
    torch.testing.assert_close(z_enc[:, :-nb], model.proj_in(x_enc[:, nb:]))


def test_prompt_cache_equals_uncached_forward_with_padding():
    model = tiny_model()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 100, (2, 7), generator=g)
    text_mask = torch.ones(2, 7, dtype=torch.bool)
    text_mask[1, 4:] = False  # right padding on row 1
    tokens = torch.randn(2, 16, 16, generator=g)
    mask = mask_by_order(9, torch.stack([torch.randperm(16, generator=g) for _ in range(2)]))
    ref = model.forward_mae_encoder(tokens, mask, (4, 4), text_mask, input_ids=ids)
    cache = model.prompt_cache(ids, text_mask)
    for _ in range(3):  # the cache is restored to the prompt after each call
        out = model.forward_mae_encoder(tokens, mask, (4, 4), text_mask, cache=cache)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        assert cache.get_seq_length() == 7


def _t2i_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    ids = torch.randint(5, 100, (2, 6), generator=g)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 5] = False
    return pixels, ids, mask


def test_text_to_image_loss_reaches_every_trainable_part():
    model = tiny_model().train()
    pixels, ids, mask = _t2i_batch()
    loss = model.text_to_image_loss(pixels, ids, mask, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    for part in (
        model.mar.encoder_blocks[0].attn.qkv,
        model.proj_in[0],
        model.proj_out[2],
        model.mar.decoder_embed,
        model.mar.diffloss.net.input_proj,
        model.llm.model.layers[0].mlp.up_proj,
    ):
        assert part.weight.grad is not None and part.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.vae.parameters())


def _loss_and_grads(model, checkpointing):
    model.set_gradient_checkpointing(checkpointing)
    model.zero_grad()
    pixels, ids, mask = _t2i_batch()
    torch.manual_seed(0)  # dropout inside the MAR blocks draws from the global RNG
    loss = model.text_to_image_loss(pixels, ids, mask, generator=torch.Generator().manual_seed(0))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_changes_nothing():
    model = tiny_model().train()
    loss_a, grads_a = _loss_and_grads(model, False)
    loss_b, grads_b = _loss_and_grads(model, True)
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-5, msg=name)


def _i2t_batch(model):
    n_img = model.config.mar.seq_len + model.buffer_size
    g = torch.Generator().manual_seed(5)
    prefix = torch.randint(5, 100, (2, 3), generator=g)
    answer = torch.randint(5, 100, (2, 4), generator=g)
    ids = torch.cat([prefix, torch.full((2, n_img), IMAGE_PLACEHOLDER), answer], dim=1)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, -4:] = answer
    pixels = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    return pixels, ids, labels, torch.ones_like(ids, dtype=torch.bool)


def test_image_to_text_loss_scales_visual_gradients():
    grads = {}
    for scale in (1.0, 0.1):
        model = tiny_model()
        model.config = model.config.replace(grad_scale=scale)
        model.eval()  # no dropout: the two runs must be identical apart from the scale
        pixels, ids, labels, mask = _i2t_batch(model)
        loss = model.image_to_text_loss(pixels, ids, labels, mask)
        loss.backward()
        grads[scale] = (loss.detach(), model.mar.z_proj.weight.grad.clone(), model.llm.lm_head.weight.grad.clone())
    torch.testing.assert_close(grads[1.0][0], grads[0.1][0])
    torch.testing.assert_close(grads[0.1][1], grads[1.0][1] * 0.1, atol=1e-8, rtol=1e-4)
    torch.testing.assert_close(grads[0.1][2], grads[1.0][2])  # text side untouched by the scaling


def test_image_to_text_loss_ignores_unsupervised_positions():
    model = tiny_model()
    pixels, ids, labels, mask = _i2t_batch(model)
    base = model.image_to_text_loss(pixels, ids, labels, mask)
    ids2 = ids.clone()
    ids2[:, -1] = 7  # the last token is never an input to a supervised prediction
    assert torch.allclose(base, model.image_to_text_loss(pixels, ids2, labels, mask))
    labels2 = labels.clone()
    labels2[:, -1] = IGNORE_INDEX
    assert not torch.allclose(base, model.image_to_text_loss(pixels, ids, labels2, mask))


def test_image_to_text_without_images_keeps_visual_params_in_graph():
    model = tiny_model()
    ids = torch.randint(5, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    loss = model.image_to_text_loss(None, ids, labels, torch.ones_like(ids, dtype=torch.bool))
    loss.backward()
    assert model.mar.z_proj.weight.grad is not None


def test_image_to_text_slot_count_is_checked():
    model = tiny_model()
    pixels, ids, labels, mask = _i2t_batch(model)
    ids = ids.clone()
    ids[0, 3] = 9  # one image slot fewer in row 0
    with pytest.raises(ValueError, match="image slots"):
        model.image_to_text_loss(pixels, ids, labels, mask)


def test_forward_dispatches_by_task():
    """The batch's task picks the loss; the source name only labels it."""
    model = tiny_model()
    pixels, ids, mask = _t2i_batch()
    i2t_pixels, i2t_ids, labels, i2t_mask = _i2t_batch(model)
    g = torch.Generator().manual_seed(0)
    out = model(
        {
            "pictures": dict(task=Task.TEXT_TO_IMAGE, pixels=pixels, input_ids=ids, attention_mask=mask),
            "questions": dict(
                task=Task.IMAGE_TO_TEXT, pixels=i2t_pixels, input_ids=i2t_ids, labels=labels, attention_mask=i2t_mask
            ),
        },
        generator=g,
    )
    assert set(out) == {"loss_pictures", "loss_questions"}
    assert torch.equal(out["loss_questions"], model.image_to_text_loss(i2t_pixels, i2t_ids, labels, i2t_mask))
    text_ids, text_labels = ids[:, :6], ids[:, :6].clone()
    text = dict(task="text_only", pixels=None, input_ids=text_ids, labels=text_labels, attention_mask=mask[:, :6])
    assert torch.equal(
        model({"chat": text})["loss_chat"], model.image_to_text_loss(None, text_ids, text_labels, mask[:, :6])
    )
    with pytest.raises(ValueError, match="has task None; the model trains text2image, image2text, text_only"):
        model({"text2image": dict(pixels=pixels, input_ids=ids, attention_mask=mask)})
    with pytest.raises(ValueError, match="a text_only batch has pixels"):
        model({"chat": {**text, "pixels": pixels}})


def test_patch_size_two_tokens_cover_2x2_latent_blocks():
    """MAR patch size 2 (spec §8 patchify rule): a 64 px image is 2x2 tokens of 4 x 16 = 64 dims, each token the
    2x2 block of latents under its 32 px quadrant (channel outermost, then row, then column); decode inverts it,
    and both losses and sampling run on the coarser grid."""
    base = tiny_model()
    mar = dataclasses.replace(
        base.config.mar,
        patch_size=2,
        token_dim=64,
        grid_size=2,
        diffloss=dataclasses.replace(base.config.mar.diffloss, target_channels=64),
    )
    model = tiny_model(mar=mar)
    assert model.grid_for(64) == (2, 2)
    with pytest.raises(ValueError, match="32"):
        model.grid_for(48)
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tokens = model.encode_images(pixels)
    latents = model.vae.encode_latents(pixels)  # (2, 16, 4, 4)
    assert tokens.shape == (2, 4, 64)
    # token 1 = top-right quadrant: latents rows 0-1, columns 2-3; entry c*4 + 2*r + q is latent (c, r, 2 + q)
    # (up to float rounding: on CPU the model runs the VAE on channels-last input; a misplaced entry is off by ~1e-2)
    torch.testing.assert_close(tokens[:, 1].reshape(2, 16, 2, 2), latents[:, :, 0:2, 2:4], rtol=0, atol=1e-6)
    torch.testing.assert_close(
        model.decode_tokens(tokens, (2, 2)), model.vae.decode_latents(latents), rtol=1e-4, atol=1e-4
    )
    ids = torch.tensor([[5, 6, 7, 8]] * 2)
    loss = model.text_to_image_loss(pixels, ids, torch.ones_like(ids), generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="patch_size"):
        tiny_model(
            mar=dataclasses.replace(mar, token_dim=16, diffloss=dataclasses.replace(mar.diffloss, target_channels=16))
        )
