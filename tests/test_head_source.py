"""The diffusion head's source input (``mar.diffloss.source_channels``): an edit's source token at each cell enters
the denoiser beside its noisy token, off by default."""

import dataclasses

import pytest
import torch
from helpers import tiny_model, tiny_tokenizer
from PIL import Image

from harmon.accel.head import sample_fast
from harmon.conditioning import edit_canvas
from harmon.config import HarmonConfig
from harmon.data.tasks import Task
from harmon.diffloss import DiffLoss, DiffLossConfig
from harmon.images import prepare_for_understanding
from harmon.pipeline import HarmonPipeline
from harmon.prompts import IMAGE_PLACEHOLDER

HEAD = dict(target_channels=4, z_channels=8, width=16, depth=2, num_sampling_steps="5")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def source_model(seed=0):
    """The tiny model with the token canvas and the head's source input, every weight non-zero."""
    base = tiny_model(seed)
    mar = base.config.mar
    config = dataclasses.replace(
        base.config,
        edit_canvas=True,
        edit_canvas_tokens=True,
        mar=dataclasses.replace(mar, diffloss=dataclasses.replace(mar.diffloss, source_channels=mar.token_dim)),
    )
    model = tiny_model(seed, **{k: getattr(config, k) for k in ("edit_canvas", "edit_canvas_tokens", "mar")})
    with torch.no_grad():
        model.canvas_proj.weight.copy_(torch.randn(model.canvas_proj.weight.shape, generator=gen(9)) * 0.05)
    return model


def test_config_takes_the_token_width_only_and_needs_the_token_canvas():
    assert DiffLossConfig().source_channels == 0
    for bad in (-1, 3, 1.0, True, "16"):
        with pytest.raises(ValueError, match="source_channels"):
            DiffLossConfig(target_channels=16, source_channels=bad)
    config = tiny_model().config.to_dict()
    config["mar"]["diffloss"]["source_channels"] = config["mar"]["token_dim"]
    with pytest.raises(ValueError, match="needs edit_canvas_tokens"):
        HarmonConfig.from_dict(config)
    config.update(edit_canvas=True, edit_canvas_tokens=True)
    assert HarmonConfig.from_dict(config).mar.diffloss.source_channels == config["mar"]["token_dim"]


def test_the_head_adds_the_projected_source_to_its_input_and_starts_as_the_official_head():
    torch.manual_seed(0)
    head = DiffLoss(DiffLossConfig(**HEAD, source_channels=4)).net
    plain = DiffLoss(DiffLossConfig(**HEAD)).net
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=gen(1)) * 0.3)
    assert set(dict(plain.named_parameters())) == set(dict(head.named_parameters())) - {"source_proj.weight"}
    plain.load_state_dict({k: v for k, v in head.state_dict().items() if k != "source_proj.weight"})
    x, t = torch.randn(6, 4, generator=gen(2)), torch.tensor([0, 5, 99, 400, 800, 999])
    c, src = torch.randn(6, 8, generator=gen(3)), torch.randn(6, 4, generator=gen(4))
    with torch.no_grad():
        got = head(x, t, torch.cat([c, src], 1))
        # the reference: the plain head whose input projection's output is shifted by W_s @ source
        hook = plain.input_proj.register_forward_hook(lambda m, i, out: out + src @ head.source_proj.weight.T)
        want = plain(x, t, c)
        hook.remove()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert (got - plain(x, t, c)).abs().max() > 1e-3  # the source matters
        zero_source = head(x, t, torch.cat([c, torch.zeros_like(src)], 1))
        torch.testing.assert_close(zero_source, plain(x, t, c), rtol=0, atol=0)  # no source: the plain head
        head.initialize_weights(gen(5))
        assert head.source_proj.weight.abs().sum() == 0  # from-scratch init ignores the source
    with pytest.raises(ValueError, match=r"conditions of 12 values per row \(8 \+ 4 source\), got 8"):
        head(x, t, c)


@pytest.mark.parametrize("cfg", [1.0, 3.0, (2.5, 1.5)], ids=str)
def test_the_fast_sampler_draws_what_the_straightforward_one_draws_with_sources(cfg):
    torch.manual_seed(0)
    head = DiffLoss(DiffLossConfig(**HEAD, source_channels=4)).eval()
    with torch.no_grad():
        for p in head.net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen(1)) * 0.3)
    rows = 3 * (1 if cfg == 1.0 else 2 if isinstance(cfg, float) else 3)
    z = torch.cat([torch.randn(rows, 8, generator=gen(6)), torch.randn(rows, 4, generator=gen(7))], 1)
    want = head.sample(z, cfg=cfg, generator=gen(8))
    got = sample_fast(head, z, cfg=cfg, generator=gen(8))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_conditions_end_with_each_cell_s_source_token_in_canvas_rows_only():
    model = source_model().eval()
    nb, n_src = model.buffer_size, model.config.mar.diffloss.source_channels
    image = Image.new("RGB", (64, 64), (250, 250, 245))
    image.paste((200, 30, 30), (8, 12, 30, 34))
    with torch.no_grad():
        tokens = model.encode_images(prepare_for_understanding(image, 64))  # (1, 16, C)
        canvas = edit_canvas(model, image, 64)  # (1, nb + 16, D_enc + C)
        torch.testing.assert_close(canvas[..., :-n_src], model.mar.embed_tokens(tokens, (4, 4)), rtol=0, atol=0)
        assert canvas[0, :nb, -n_src:].abs().sum() == 0
        torch.testing.assert_close(canvas[:, nb:, -n_src:], tokens, rtol=0, atol=0)
        x_con = canvas.expand(3, -1, -1)
        rows = torch.tensor([True, True, False])
        mask = torch.ones(3, 16, dtype=torch.bool)
        x_enc = model.mar.forward_encoder(torch.zeros(3, 16, n_src), mask, (4, 4))
        z = model.decode(x_enc, mask, (4, 4), x_con, rows)  # (3, 16, Dd + C)
        torch.testing.assert_close(z[:2, :, -n_src:], tokens.expand(2, -1, -1), rtol=0, atol=0)
        assert z[2, :, -n_src:].abs().sum() == 0
        # the first Dd channels are the conditions a model without the source input computes from the features
        plain = model.mar.forward_decoder(x_enc, mask, (4, 4), x_con[..., :-n_src], rows)
        skip = model.canvas_proj(x_con[:, nb:, :-n_src]) * rows.view(-1, 1, 1)
        torch.testing.assert_close(z[..., :-n_src], plain + skip, rtol=0, atol=0)
        no_canvas = model.decode(x_enc, mask, (4, 4))
        assert no_canvas.shape == z.shape and no_canvas[..., -n_src:].abs().sum() == 0


def test_edit_losses_use_the_source_and_text_to_image_ones_do_not():
    model = source_model().eval()
    off = source_model().eval()
    with torch.no_grad():
        off.mar.diffloss.net.source_proj.weight.zero_()
    pipe = HarmonPipeline(model, tiny_tokenizer())
    text = pipe.encode_prompt("<|im_start|>user\nEdit the image: make it blue<|im_end|>\n<|im_start|>assistant\n")
    slots = 16 + model.buffer_size
    ids = torch.tensor([text[:3] + [IMAGE_PLACEHOLDER] * slots + text[3:]] * 2)
    px = torch.rand(2, 3, 64, 64, generator=gen(1)) * 2 - 1
    edit = {"task": Task.IMAGE_EDIT, "pixels": px, "cond_pixels": px.flip(0), "input_ids": ids}
    edit["attention_mask"] = torch.ones_like(ids, dtype=torch.bool)
    t2i = {"task": Task.TEXT_TO_IMAGE, "pixels": px, "input_ids": ids[:, :3], "attention_mask": ids[:, :3] > -1}
    with torch.no_grad():
        a, b = model({"e": edit, "t": t2i}, generator=gen(0)), off({"e": edit, "t": t2i}, generator=gen(0))
    assert not torch.equal(a["loss_e"], b["loss_e"])
    assert torch.equal(a["loss_t"], b["loss_t"])
    out = pipe.edit(Image.new("RGB", (64, 64), (250, 250, 245)), "make it blue", num_iter=2, num_sampling_steps="3")
    assert out[0].size == (64, 64)
