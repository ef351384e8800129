"""Editing on the source's canvas (``config.edit_canvas``): the MAR decoder's unknown positions start from the source
image's encoder features (spec §4.5's ``x_con``) in the edit loss and in ``edit``; off, everything is as before."""

import pytest
import torch
from helpers import tiny_model, tiny_tokenizer
from PIL import Image
from reference import reference_image_prompts, reference_tokens

from harmon.conditioning import edit_canvas
from harmon.config import HarmonConfig
from harmon.data.tasks import Task
from harmon.images import prepare_for_understanding
from harmon.pipeline import HarmonPipeline
from harmon.prompts import IMAGE_PLACEHOLDER
from harmon.sampling import SamplingSettings
from harmon.shipped import SHIPPED_DIR
from harmon.train.trainer import Trainer
from harmon.world.analyses.edit_locality import (
    auc,
    changed_tokens,
    format_locality,
    format_losses,
    locality_study,
    loss_study,
    token_losses,
    token_shift_study,
)
from harmon.world.edit_grammar import EDIT_TYPES
from harmon.world.edits import sample_edit
from harmon.world.free import level_world
from harmon.world.recipes import shapes_edit, shapes_edit_joint
from harmon.world.render import render

CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
FAST = dict(num_iter=3, num_sampling_steps="4", image_size=64)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def canvas_pipe(**config):
    model = tiny_model(edit_canvas=True, **config)
    with torch.no_grad():  # the skip starts at zero; give it weight so that the tests see it
        model.canvas_proj.weight.copy_(torch.randn(model.canvas_proj.weight.shape, generator=gen(9)) * 0.05)
    return HarmonPipeline(model, tiny_tokenizer())


@pytest.fixture(scope="module")
def pipe():
    return canvas_pipe()


@pytest.fixture(scope="module")
def llm_pipe():
    return canvas_pipe(edit_canvas_llm=True)


@pytest.fixture(scope="module")
def token_pipe():
    return canvas_pipe(edit_canvas_tokens=True)


def scene(colour):
    im = Image.new("RGB", (64, 64), (250, 250, 245))
    im.paste(colour, (8, 12, 30, 34))
    return im


def full_canvas(model, image, size=64):
    """The canvas as spec §4.4 reads a whole image: prepared pixels, VAE, MAR encoder with nothing masked."""
    tokens = model.encode_images(prepare_for_understanding(image, size))
    grid = (size // model.config.token_px,) * 2
    return model.mar.forward_encoder(tokens, torch.zeros(tokens.shape[:2], dtype=torch.bool), grid)  # (1, 64+L, D)


def test_decoder_canvas_rows_take_the_background_or_the_mask_token():
    mar = tiny_model().mar
    grid, nb = (4, 4), mar.config.buffer_size
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[:, :5] = False
    x_enc = torch.randn(2, nb + 5, mar.config.encoder_dim)
    x_con = torch.randn(2, nb + 16, mar.config.encoder_dim)
    with torch.no_grad():
        mixed = mar.forward_decoder(x_enc, mask, grid, x_con, torch.tensor([True, False]))
        on = mar.forward_decoder(x_enc, mask, grid, x_con)
        off = mar.forward_decoder(x_enc, mask, grid)
    torch.testing.assert_close(mixed[0], on[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[1], off[1], rtol=0, atol=1e-6)
    assert (on[0] - off[0]).abs().max() > 1e-3  # the background reaches the conditions
    with pytest.raises(ValueError, match=r"x_con must be \(B, buffer \+ L, D\) = \(2, 24, D\), got \(2, 19, 64\)"):
        mar.forward_decoder(x_enc, mask, grid, x_con[:, :19])


def test_the_skip_adds_each_position_s_canvas_in_its_rows_and_starts_at_zero(pipe):
    model = pipe.model
    grid, nb, d = (4, 4), model.buffer_size, model.config.mar.encoder_dim
    mask = torch.ones(2, 16, dtype=torch.bool)
    x_enc, x_con = torch.randn(2, nb, d), torch.randn(2, nb + 16, d)
    rows = torch.tensor([True, False])
    with torch.no_grad():
        z = model.decode(x_enc, mask, grid, x_con, rows)
        base = model.mar.forward_decoder(x_enc, mask, grid, x_con, rows)
        torch.testing.assert_close(z[0], base[0] + model.canvas_proj(x_con[0, nb:]), rtol=0, atol=1e-6)
        assert torch.equal(z[1], base[1])
        assert torch.equal(model.decode(x_enc, mask, grid), model.mar.forward_decoder(x_enc, mask, grid))
    fresh = tiny_model(edit_canvas=True)
    assert fresh.canvas_proj.weight.abs().sum() == 0 and fresh.canvas_proj.bias.abs().sum() == 0
    assert tiny_model().canvas_proj is None  # off: the official module list


def test_config_records_the_switch_and_older_configs_read_as_off():
    config = tiny_model(edit_canvas=True).config
    assert config.to_dict()["edit_canvas"] is True
    assert HarmonConfig.from_dict(config.to_dict()).edit_canvas is True
    assert config.to_dict()["edit_canvas_llm"] is False
    assert HarmonConfig.from_dict({**config.to_dict(), "edit_canvas_llm": True}).edit_canvas_llm is True
    older = config.to_dict()
    del older["edit_canvas"], older["edit_canvas_llm"]
    assert HarmonConfig.from_dict(older).edit_canvas is False
    with pytest.raises(ValueError, match="edit_canvas"):
        HarmonConfig.from_dict({**older, "edit_canvas": "yes"})
    with pytest.raises(ValueError, match="edit_canvas_llm refines the edit canvas: it needs edit_canvas true"):
        HarmonConfig.from_dict({**older, "edit_canvas_llm": True})
    assert config.to_dict()["edit_canvas_tokens"] is False
    assert HarmonConfig.from_dict({**config.to_dict(), "edit_canvas_tokens": True}).edit_canvas_tokens is True
    del older["edit_canvas_tokens"]
    assert HarmonConfig.from_dict({**older, "edit_canvas": True}).edit_canvas_tokens is False
    for bad in (
        {"edit_canvas_tokens": True},
        {"edit_canvas": True, "edit_canvas_llm": True, "edit_canvas_tokens": True},
    ):
        with pytest.raises(
            ValueError, match="edit_canvas_tokens is a reading of the edit canvas: it needs edit_canvas"
        ):
            HarmonConfig.from_dict({**older, **bad})


def test_the_token_canvas_holds_each_cell_s_own_embedded_token(pipe):
    """edit_canvas_tokens: the canvas of a source is its tokens as the MAR encoder embeds them before its blocks, so
    each cell's canvas row depends on that cell's token alone; the encoder itself is unchanged by the switch."""
    model = tiny_model(edit_canvas=True, edit_canvas_tokens=True)
    mar, nb = model.mar, model.buffer_size
    tokens = torch.randn(2, 16, mar.config.token_dim, generator=gen(5))
    with torch.no_grad():
        rows = mar.embed_tokens(tokens, (4, 4))  # (2, nb + 16, D)
        visible = torch.zeros(2, 16, dtype=torch.bool)
        # the encoder's own input rows: blocks that do nothing leave them as they enter, before the final norm
        enc = mar.forward_encoder(tokens, visible, (4, 4), run_blocks=lambda blocks, x: x)
        torch.testing.assert_close(mar.encoder_norm(rows), enc, rtol=0, atol=0)
        other = tokens.clone()
        other[:, 5] += 1.0
        moved = (mar.embed_tokens(other, (4, 4)) - rows).abs().amax(dim=(0, 2)) > 0  # (nb + 16,)
    assert moved.tolist() == [i == nb + 5 for i in range(nb + 16)]
    pixels = prepare_for_understanding(scene((200, 30, 30)), 64)
    with torch.no_grad():
        canvas = edit_canvas(model, scene((200, 30, 30)), 64)
        want = mar.embed_tokens(model.encode_images(pixels), (4, 4))
    torch.testing.assert_close(canvas, want, rtol=0, atol=0)


@pytest.mark.parametrize("reading", ["encoder", "llm", "tokens"])
@pytest.mark.parametrize("scales,rows", [((2.5, None), 2), ((2.5, 1.5), 3)], ids=str)
def test_edit_draws_on_the_source_canvas_as_the_reference_does(request, reading, scales, rows):
    """edit with the canvas = the straightforward loop whose instruction and image-only rows take the source's
    whole-image encoder features (or, refined, x_enc + proj_out(LLM) after each row's own prompt: the source read
    as a drawn image; or its tokens as the encoder embeds them) as the decoder's background, the plain unconditional
    row the mask token."""
    pipe = request.getfixturevalue({"encoder": "pipe", "llm": "llm_pipe", "tokens": "token_pipe"}[reading])
    text_scale, image_scale = scales
    source = scene((200, 30, 30))
    kw = dict(guidance_scale=text_scale, image_guidance_scale=image_scale, generator=gen(3), output_type="latent")
    got = pipe.edit(source, "make the square blue", num_images_per_prompt=2, **kw, **FAST)
    texts = [
        CHAT.format("<image>\nEdit the image: make the square blue"),
        CHAT.format("<image>\nGenerate an image."),
        CHAT.format("Generate an image."),
    ][:rows]
    prompts, mask = reference_image_prompts(pipe, [t for t in texts for _ in range(2)], [source], 64)
    settings = SamplingSettings(
        num_iter=3, guidance_scale=text_scale, num_sampling_steps="4", image_guidance_scale=image_scale
    )
    tokens = pipe.model.encode_images(prepare_for_understanding(source, 64)).expand(2 * rows, -1, -1)
    if reading == "llm":
        visible = torch.zeros(tokens.shape[:2], dtype=torch.bool)
        x_con = pipe.model.forward_mae_encoder(tokens, visible, (4, 4), mask, input_ids=prompts)
    elif reading == "tokens":
        x_con = pipe.model.mar.embed_tokens(tokens, (4, 4))
    else:
        x_con = full_canvas(pipe.model, source).expand(2 * rows, -1, -1)
    con_rows = torch.tensor([True, True, True, True, False, False][: 2 * rows])
    want = reference_tokens(pipe.model, prompts, mask, (4, 4), settings, gen(3), canvas=(x_con, con_rows))
    # packed and plain fp32 layers round apart; guidance at 2.5 x 1.5 amplifies it on the largest latents
    torch.testing.assert_close(got, want.transpose(1, 2).reshape(2, -1, 4, 4), atol=1e-4, rtol=1e-3)
    # the canvas is what the images depend on: another source with the same understanding prompt rows differs
    plain = reference_tokens(pipe.model, prompts, mask, (4, 4), settings, gen(3))
    assert (plain - want).abs().max() > 1e-3


def edit_batch(pipe, task, cond_size=64):
    text = pipe.encode_prompt(CHAT.format("Edit the image: make it blue"))
    n_slots = (cond_size // pipe.config.token_px) ** 2 + pipe.model.buffer_size
    kept = text[:3] + [IMAGE_PLACEHOLDER] * n_slots + text[3:]
    dropped = text + [0] * n_slots
    return {
        "task": task,
        "pixels": torch.rand(2, 3, 64, 64, generator=gen(1)) * 2 - 1,
        "cond_pixels": torch.rand(2, 3, cond_size, cond_size, generator=gen(2)) * 2 - 1,
        "input_ids": torch.tensor([kept, dropped]),
        "attention_mask": torch.tensor([[True] * len(kept), [True] * len(text) + [False] * n_slots]),
    }


@pytest.mark.parametrize("cond_size", [64, 32])
def test_only_edit_losses_take_the_canvas_and_only_in_rows_that_keep_their_source(
    pipe, llm_pipe, token_pipe, cond_size
):
    model = pipe.model
    off = tiny_model()  # the same weights (seed 0), the switch off
    for task in (Task.IMAGE_EDIT, Task.RECONSTRUCTION):
        batch = {"s": edit_batch(pipe, task, cond_size)}
        with torch.no_grad():
            a = model(batch, generator=gen(0))["loss_s"]
            b = off(batch, generator=gen(0))["loss_s"]
            c = llm_pipe.model(batch, generator=gen(0))["loss_s"]  # the same weights, the refined canvas
            d = token_pipe.model(batch, generator=gen(0))["loss_s"]  # the same weights, the token canvas
        edit = task == Task.IMAGE_EDIT
        assert edit == (not torch.equal(a, b)) == (not torch.equal(a, c)) == (not torch.equal(a, d)), task
        assert edit == (not torch.equal(b, d)), task
    # a batch whose every source was dropped for guidance trains exactly as without the switch
    batch = edit_batch(pipe, Task.IMAGE_EDIT, cond_size)
    text = pipe.encode_prompt(CHAT.format("Edit the image: make it blue"))
    batch["input_ids"] = torch.tensor([text, text])
    batch["attention_mask"] = torch.ones(2, len(text), dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(
            model({"s": batch}, generator=gen(0))["loss_s"], off({"s": batch}, generator=gen(0))["loss_s"]
        )


def two_steps_from_the_shipped_model(cfg, tmp_path):
    """``cfg`` run two steps from the shipped model at two samples per source: (the shipped weights, the export's
    pipeline, its weights), after checking that the export edits."""
    cfg.model.pretrained, cfg.output_dir = str(SHIPPED_DIR), str(tmp_path / "run")
    for src in cfg.data:
        src.batch_size = 2
    cfg.max_steps, cfg.save_every, cfg.sample_every, cfg.log_every = 2, 0, 0, 1
    Trainer(cfg, device="cpu").run(resume="none")
    before = HarmonPipeline.from_pretrained(SHIPPED_DIR).model.state_dict()
    pipe = HarmonPipeline.from_pretrained(tmp_path / "run" / "final")
    # the export keeps the shipped model's layout route: the direct route is what this recipe trains
    out = pipe.edit(scene((200, 30, 30)), "make the square blue", plan=False, num_iter=2, num_sampling_steps="2")
    assert out[0].size == (64, 64)
    return before, pipe, pipe.model.state_dict()


def test_shapes_edit_recipe_adds_the_skip_and_trains_only_the_generation_side(tmp_path):
    """Stage IV: the export edits on the canvas, its skip has trained from zero, and every weight of the
    understanding path is the shipped model's."""
    before, pipe, after = two_steps_from_the_shipped_model(shapes_edit(), tmp_path)
    assert pipe.config.edit_canvas and after["canvas_proj.weight"].abs().sum() > 0
    frozen = [k for k in before if k.startswith(("llm.", "proj_in.", "mar.encoder", "mar.z_proj", "mar.fake_latent"))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["proj_out.0.weight"], after["proj_out.0.weight"])


def test_shapes_edit_joint_recipe_edits_on_the_token_canvas_and_keeps_the_vae(tmp_path):
    """The joint editing study: the export edits on the token canvas, its skip has trained from zero, every module
    but the VAE trains, and questions and descriptions are in the mix so that understanding is kept."""
    cfg = shapes_edit_joint()
    assert cfg.model.pretrained.endswith("phrasing/final")  # after the last stage of the shipped chain
    assert {"image2text_qa", "image2text_qa_varied", "image2text_caption_varied"} <= {s.name for s in cfg.data}
    before, pipe, after = two_steps_from_the_shipped_model(cfg, tmp_path)
    assert pipe.config.edit_canvas and pipe.config.edit_canvas_tokens
    assert after["canvas_proj.weight"].abs().sum() > 0
    vae = [k for k in before if k.startswith("vae.")]
    assert vae and all(torch.equal(before[k], after[k]) for k in vae)
    for k in ("llm.model.layers.0.mlp.up_proj.weight", "proj_in.0.weight", "proj_out.0.weight"):
        assert not torch.equal(before[k], after[k]), k


def test_changed_tokens_are_the_cells_of_the_edited_objects():
    world = level_world("grid", 64)
    g = gen(4)
    for edit_type in EDIT_TYPES:
        edit = sample_edit(g, world, edit_type)
        want = torch.zeros(4, dtype=torch.bool)
        for scene, index in ((edit.source, edit.source_index), (edit.target, edit.target_index)):
            for i in index:
                x0, y0, x1, y1 = scene.objects[i].bbox
                want[int((y0 + y1) / 2 >= 32) * 2 + int((x0 + x1) / 2 >= 32)] = True
        assert torch.equal(changed_tokens(edit, (2, 2)), want), edit_type


def test_auc_counts_pairs_and_ties_half():
    assert auc(torch.tensor([3.0, 2.0, 1.0, 0.0]), torch.tensor([True, False, True, False])) == 0.75
    assert auc(torch.tensor([1.0, 1.0]), torch.tensor([True, False])) == 0.5
    assert auc(torch.tensor([1.0, 2.0]), torch.tensor([True, True])) is None


def test_locality_study_reports_every_edit_type(pipe):
    result = locality_study(pipe, "grid", per_type=2, seed=0)
    assert result["canvas"] is True and list(result["types"]) == list(EDIT_TYPES)
    for r in result["types"].values():
        assert r["auc"] is None or 0.0 <= r["auc"] <= 1.0
        assert 0.0 <= r["top_hit"] <= 1.0 and 0.0 < r["top_hit_chance"] <= 1.0
    assert "| recolor |" in format_locality(result)


def test_token_shift_is_each_cell_s_relative_move_from_source_to_target(pipe):
    result = token_shift_study(pipe, "grid", per_type=3, seed=4)
    assert list(result["types"]) == list(EDIT_TYPES)
    world, grid = level_world("grid", 64), pipe.model.grid_for(64)
    g = torch.Generator().manual_seed(4)
    for edit_type in EDIT_TYPES:  # the straightforward loop, cell by cell, over the same edits
        kept, changed = [], []
        for _ in range(3):
            edit = sample_edit(g, world, edit_type)
            flags = changed_tokens(edit, grid)
            with torch.no_grad():
                a, b = (
                    pipe.model.encode_images(prepare_for_understanding(render(s, world), 64))[0]
                    for s in (edit.source, edit.target)
                )
            for i in range(a.shape[0]):
                (changed if flags[i] else kept).append(float((b[i] - a[i]).norm() / a[i].norm()))
        r = result["types"][edit_type]
        assert r["kept"] == pytest.approx(sum(kept) / len(kept), rel=1e-4)
        assert r["kept_max"] == pytest.approx(max(kept), rel=1e-4)
        assert r["changed"] == pytest.approx(sum(changed) / len(changed), rel=1e-4)


def test_token_losses_are_each_token_s_own_paired_diffusion_loss(pipe):
    """token_losses = the head's training loss of each token alone, at the same drawn timesteps and noise."""
    head = pipe.model.mar.diffloss
    z = torch.randn(3, pipe.model.config.mar.decoder_dim, generator=gen(6))
    target = torch.randn(3, pipe.model.config.mar.token_dim, generator=gen(7))
    got = token_losses(pipe, z, target, draws=5, seed=2)
    g = torch.Generator().manual_seed(2)
    t = torch.randint(0, head.train_diffusion.num_timesteps, (5,), generator=g)
    noise = torch.randn(5, target.shape[-1], generator=g)
    with torch.no_grad():
        for i in range(3):
            c = z[i].expand(5, -1)
            one = head.train_diffusion.training_losses(
                lambda x, tt, c=c: head.net(x, tt, c), target[i].expand(5, -1), t, noise
            )
            torch.testing.assert_close(got[i], one["loss"].mean(), rtol=1e-5, atol=1e-6)


def test_loss_study_compares_changed_tokens_under_their_own_and_another_instruction(pipe):
    result = loss_study(pipe, "grid", per_type=2, seed=0)
    assert list(result["types"]) == list(EDIT_TYPES)
    for r in result["types"].values():
        assert set(r) == {"kept", "own", "other"} and all(v > 0 for v in r.values())
    assert result["types"]["recolor"]["own"] != result["types"]["recolor"]["other"]  # another instruction, other z
    assert "| recolor |" in format_losses(result)


def test_the_condition_cache_keeps_the_canvas_on_its_conditional_only_steps(pipe, monkeypatch):
    calls = []
    real = pipe.model.decode

    def spy(x_enc, mask, grid, *canvas):
        calls.append((x_enc.shape[0], canvas[0].shape[0] if canvas else None, canvas[1].tolist() if canvas else None))
        return real(x_enc, mask, grid, *canvas)

    monkeypatch.setattr(pipe.model, "decode", spy)
    pipe.edit(scene((30, 30, 200)), "make the square red", cond_refresh=2, generator=gen(0), **FAST)
    assert [c[0] for c in calls] == [2, 1, 2] and all(c[0] == c[1] for c in calls)  # every row has its canvas
    assert [c[2] for c in calls] == [[True, True], [True], [True, True]]
