"""Image-conditioned generation: prompts with image slots, edit's guidance, the loss, and the `harmon edit` command."""

import pytest
import torch
from helpers import tiny_pipeline
from PIL import Image
from reference import reference_image_prompts, reference_tokens

from harmon import cli
from harmon.conditioning import padded_rows
from harmon.prompts import IMAGE_PLACEHOLDER
from harmon.sampling import SamplingSettings, generate_tokens

FAST = dict(num_iter=3, num_sampling_steps="4", image_size=64)
CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def gen(seed):
    return torch.Generator().manual_seed(seed)


def red_square():
    im = Image.new("RGB", (80, 64), (255, 255, 255))
    im.paste((200, 30, 30), (20, 16, 52, 48))
    return im


def latents(tokens, grid=(4, 4)):
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)


def test_embedded_prompts_sample_exactly_what_their_ids_sample(pipe):
    """The sampler given a prompt's embeddings (the image-conditioned route, padded with the pad embedding) draws
    bit for bit the tokens it draws from the ids: one loop, two ways in."""
    ids, mask = pipe.pad_prompts([pipe.encode_prompt(CHAT.format(t)) for t in ("Generate an image: a dot", "x")])
    rows = [pipe.model.embed_text(ids[i : i + 1, : int(mask[i].sum())]) for i in range(2)]
    embeds, emask = padded_rows(pipe.model, rows, pipe.tokenizer.pad_token_id)
    assert torch.equal(emask, mask) and torch.equal(embeds, pipe.model.embed_text(ids))
    settings = SamplingSettings(num_iter=3, guidance_scale=2.0, num_sampling_steps="4")
    a = generate_tokens(pipe.model, ids, mask, (4, 4), settings, generator=gen(0))
    b = generate_tokens(pipe.model, embeds, emask, (4, 4), settings, generator=gen(0))
    assert torch.equal(a, b)


@pytest.mark.parametrize("scales,rows", [((1.0, None), 1), ((2.5, None), 2), ((2.5, 1.5), 3), ((1.0, 1.5), 3)], ids=str)
def test_edit_equals_the_straightforward_reference(pipe, monkeypatch, scales, rows):
    """edit = the production sampler after "<image>\\nEdit the image: ..." (plus the image-only and the plain
    unconditional rows its guidance needs) = the every-row reference on prompts built from whole strings."""
    text_scale, image_scale = scales
    seen = []
    real = pipe.model.prompt_cache
    monkeypatch.setattr(pipe.model, "prompt_cache", lambda p, m: seen.append(p.shape[0]) or real(p, m))
    got = pipe.edit(
        red_square(),
        "make the square blue",
        guidance_scale=text_scale,
        image_guidance_scale=image_scale,
        num_images_per_prompt=2,
        generator=gen(3),
        output_type="latent",
        **FAST,
    )
    assert seen == [rows]  # each distinct prompt row runs once, its K/V copied to the two images
    texts = [
        CHAT.format("<image>\nEdit the image: make the square blue"),
        CHAT.format("<image>\nGenerate an image."),
        CHAT.format("Generate an image."),
    ][:rows]
    prompts, mask = reference_image_prompts(pipe, [t for t in texts for _ in range(2)], [red_square()], 64)
    settings = SamplingSettings(
        num_iter=3, guidance_scale=text_scale, num_sampling_steps="4", image_guidance_scale=image_scale
    )
    assert settings.groups == rows or (rows == 1 and settings.groups == 1)
    want = reference_tokens(pipe.model, prompts, mask, (4, 4), settings, generator=gen(3))
    torch.testing.assert_close(got, latents(want), atol=1e-4, rtol=1e-4)


def test_generate_with_images_fills_marks_in_order_or_puts_images_first():
    """In float64: at guidance 3 the float32 rounding of cached vs. uncached prompts moves a few tokens by 1e-3."""
    pipe = tiny_pipeline().to(dtype=torch.float64)
    first, second = red_square(), Image.new("RGB", (64, 64), (20, 40, 220))
    got = pipe.generate(
        ["a <image> beside a <image>", "two shapes"],
        images=[first, second],
        understanding_image_size=32,
        generator=gen(1),
        output_type="latent",
        **FAST,
    )
    texts = [
        CHAT.format("Generate an image: a <image> beside a <image>"),
        CHAT.format("<image>\n<image>\nGenerate an image: two shapes"),
    ]
    texts += [CHAT.format("Generate an image.")] * 2
    prompts, mask = reference_image_prompts(pipe, texts, [first, second], 32)
    settings = SamplingSettings(
        num_iter=3, guidance_scale=pipe.config.generation.guidance_scale, num_sampling_steps="4"
    )
    want = reference_tokens(pipe.model, prompts, mask, (4, 4), settings, generator=gen(1))
    torch.testing.assert_close(got, latents(want), atol=1e-9, rtol=1e-9)


def test_typed_marks_are_slots_only_with_images_and_other_control_tokens_stay_text(pipe):
    typed = "a <image> dot<|im_end|>"
    plain = pipe.generate(typed, generator=gen(0), output_type="latent", **FAST)
    ids = pipe.encode_prompt(CHAT.format("Generate an image: \ue000"), typed)
    assert pipe.image_token_id not in ids  # without images the mark is text, as before
    from harmon.conditioning import generation_ids

    seq = generation_ids(pipe.tokenizer, [typed], [red_square()], "<image>")[0]
    assert seq.count(pipe.image_token_id) == 1
    im_end = pipe.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert seq.count(im_end) == ids.count(im_end) == 1  # the template's, never the typed one
    assert plain.shape == (1, 16, 4, 4)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(image_guidance_scale=0.5), ValueError, "image_guidance_scale"),
        (dict(understanding_image_size=20), ValueError, "understanding_image_size"),
        (dict(instruction="  "), ValueError, "instruction"),
        (dict(num_images_per_prompt=0), ValueError, "num_images_per_prompt"),
    ],
)
def test_edit_names_bad_arguments(pipe, kwargs, error, match):
    args = {"instruction": "make it blue", **kwargs}
    with pytest.raises(error, match=match):
        pipe.edit(red_square(), args.pop("instruction"), **args, **FAST)


def test_generate_with_images_names_bad_arguments(pipe):
    with pytest.raises(TypeError, match="images must be a list"):
        pipe.generate("x", images=red_square(), **FAST)
    with pytest.raises(ValueError, match="images is empty"):
        pipe.generate("x", images=[], **FAST)
    with pytest.raises(ValueError, match="holds 1 <image> marks for 2 images"):
        pipe.generate("a <image>", images=[red_square(), red_square()], **FAST)
    with pytest.raises(ValueError, match="context"):
        pipe.generate("x", images=[red_square()] * 20, **FAST)  # 20 x 80 image tokens > 512 positions


def test_guidance_over_three_groups_is_instructpix2pix_and_two_groups_unchanged(pipe):
    net = pipe.model.mar.diffloss.net
    c = net.in_channels
    out = torch.randn(6, 2 * c)
    e_full, e_image, e_none = out[:, :c].chunk(3)
    guided = net.guide(out, (2.5, 1.5))
    want = e_none + 1.5 * (e_image - e_none) + 2.5 * (e_full - e_image)
    torch.testing.assert_close(guided[:2, :c], want, rtol=0, atol=1e-6)
    assert torch.equal(guided[:, c:], out[:, c:])  # each group keeps its own variance
    two = torch.randn(4, 2 * c)
    e_c, e_u = two[:, :c].chunk(2)
    assert torch.equal(net.guide(two, 3.0)[:2, :c], e_u + 3.0 * (e_c - e_u))


def test_conditioned_loss_fills_slots_and_reduces_to_text_to_image_without_them(pipe):
    """Rows whose condition was dropped (no slots) give exactly the text-to-image loss; rows with slots train the
    encoder through the condition; a wrong slot count is named."""
    model = pipe.model  # eval mode: no dropout, so two calls draw the same numbers from the generator
    try:
        pixels, cond = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
        text = pipe.encode_prompt(CHAT.format("Generate an image."))
        ids = torch.tensor([text, text])
        mask = torch.ones_like(ids, dtype=torch.bool)
        plain = model.text_to_image_loss(pixels, ids, mask, generator=gen(0))
        assert torch.equal(model.image_conditioned_loss(pixels, cond, ids, mask, generator=gen(0)), plain)
        n_slots = 4 + model.buffer_size  # 32 px: 2 x 2 tokens
        row = text[:3] + [IMAGE_PLACEHOLDER] * n_slots + text[3:]
        ids = torch.tensor([row, text + [0] * n_slots])
        mask = torch.tensor([[True] * len(row), [True] * len(text) + [False] * n_slots])
        model.zero_grad()
        model.image_conditioned_loss(pixels, cond, ids, mask, generator=gen(0)).backward()
        assert model.proj_in[0].weight.grad.abs().sum() > 0
        with pytest.raises(ValueError, match=r"needs 17 image slots, got \[12\]"):
            model.image_conditioned_loss(pixels, torch.rand(2, 3, 48, 48), ids, mask, generator=gen(0))
    finally:
        model.zero_grad()


def test_cli_edit_writes_the_image_and_names_bad_input_first(pipe, tmp_path, capsys):
    pipe.save_pretrained(tmp_path / "m")
    source = tmp_path / "in.png"
    red_square().save(source)
    base = ["edit", str(source), "make it blue", "--model", str(tmp_path / "m"), "--num-iter", "2"]
    out = tmp_path / "out" / "edited.png"
    assert cli.main([*base, "-o", str(out), "--diffusion-steps", "3", "--image-guidance-scale", "1.5"]) == 0
    assert Image.open(out).size == (64, 64) and str(out) in capsys.readouterr().out
    assert cli.main([*base, "-o", str(tmp_path / "edited.txt")]) == 2
    assert "use an image extension" in capsys.readouterr().err
    assert cli.main(["edit", str(tmp_path / "none.png"), "x", "--model", str(tmp_path / "nowhere")]) == 2
    assert "image file not found" in capsys.readouterr().err  # named before the (missing) model is read
