"""Training-free accelerations of the sampler: two-stage sampling (GtR) and LazyMAR's condition cache."""

import itertools
from dataclasses import replace

import pytest
import torch
from helpers import tiny_pipeline
from reference import production_tokens, reference_condition_cache_tokens

from harmon.mar import checkerboard, structure_first_orders
from harmon.sampling import SamplingSettings, preset_settings, step_plan


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def test_two_stage_plan_reveals_the_structure_half_then_the_rest():
    after = [a for a, _ in step_plan(16, 6, detail_steps=1, structure=8)]
    assert len(after) == 6 and after[-2:] == [8, 0]
    assert all(a > b for a, b in itertools.pairwise(after))  # every step reveals something
    after = [a for a, _ in step_plan(16, 6, detail_steps=2, structure=8)]
    assert after[-3] == 8 and 0 < after[-2] < 8 and after[-1] == 0
    assert step_plan(1, 4, detail_steps=1, structure=1) == step_plan(1, 4)  # a 1x1 grid has no detail half
    with pytest.raises(ValueError, match="below num_iter"):
        SamplingSettings(num_iter=2, detail_steps=2)
    with pytest.raises(ValueError, match="cond_refresh"):
        SamplingSettings(cond_refresh=0)


def test_structure_first_orders_end_with_the_checkerboard():
    grid = (4, 5)
    structure = checkerboard(grid)
    assert int(structure.sum()) == 10 and bool(structure[0]) and not bool(structure[1]) and bool(structure[5 + 1])
    orders = structure_first_orders(3, grid, gen(0))
    for row in orders:
        assert sorted(row.tolist()) == list(range(20))
        assert structure[row[10:]].all() and not structure[row[:10]].any()
    assert torch.equal(orders, structure_first_orders(3, grid, gen(0)))
    assert not torch.equal(orders, structure_first_orders(3, grid, gen(1)))


def test_two_stage_generation_draws_the_checkerboard_before_the_rest(pipe, monkeypatch):
    """The decoder's mask before the last step of a GtR run is exactly the detail half: the structure half was
    drawn first, over the earlier steps, and the detail half is drawn in one step."""
    masks = []
    real = pipe.model.mar.forward_decoder
    monkeypatch.setattr(
        pipe.model.mar, "forward_decoder", lambda x, m, g, *a, **kw: masks.append(m.clone()) or real(x, m, g, *a, **kw)
    )
    kw = dict(num_iter=4, image_size=64, num_sampling_steps="3", output_type="latent")
    pipe.generate("a red circle", detail_steps=1, generator=gen(0), **kw)
    detail = ~checkerboard((4, 4))
    assert len(masks) == 4 and all(torch.equal(m, detail.expand_as(m)) for m in masks[-1:])
    assert all((m | ~detail).all() and not m.all() for m in masks[1:-1])  # only structure cells revealed so far
    again = pipe.generate("a red circle", detail_steps=1, generator=gen(0), **kw)
    assert torch.equal(again, pipe.generate("a red circle", detail_steps=1, generator=gen(0), **kw))


@pytest.mark.parametrize("image_guidance", [None, 1.5])
def test_condition_cache_equals_its_straightforward_reference(pipe, monkeypatch, image_guidance):
    """With a condition cache the production sampler runs the guidance rows through the network on every second
    step only (one row instead of two or three on the others); its tokens equal those of the reference that runs
    every row every step and then substitutes the cached residual, and differ from the uncached sampler's."""
    texts = [
        "<|im_start|>user\nGenerate an image: a red circle<|im_end|>\n",
        "<|im_start|>user\nGenerate an image.<|im_end|>\n",
        "<|im_start|>user\n<|im_end|>\n",
    ]
    settings = SamplingSettings(
        num_iter=6, guidance_scale=3.0, num_sampling_steps="4", cond_refresh=2, image_guidance_scale=image_guidance
    )
    batch = pipe.tokenizer(texts[: settings.groups], return_tensors="pt", padding=True)
    ids, mask = batch.input_ids, batch.attention_mask.bool()
    rows = []
    real = pipe.model.mar.forward_decoder
    monkeypatch.setattr(
        pipe.model.mar, "forward_decoder", lambda x, m, g, *a, **kw: rows.append(x.shape[0]) or real(x, m, g, *a, **kw)
    )
    cached = production_tokens(pipe.model, ids, mask, (4, 4), settings, generator=gen(0))
    assert rows == [settings.groups, 1] * 2 + [settings.groups] * 2  # the last step runs every row
    want = reference_condition_cache_tokens(pipe.model, ids, mask, (4, 4), settings, generator=gen(0))
    torch.testing.assert_close(cached, want, atol=1e-3, rtol=1e-3)  # rows batched differently
    plain = production_tokens(pipe.model, ids, mask, (4, 4), replace(settings, cond_refresh=None), gen(0))
    assert not torch.allclose(cached, plain, atol=1e-3)


def test_condition_cache_changes_nothing_without_guidance_or_at_refresh_1(pipe):
    kw = dict(num_iter=4, image_size=64, num_sampling_steps="3", output_type="latent")
    plain = pipe.generate("a red circle", generator=gen(2), **kw)
    assert torch.equal(plain, pipe.generate("a red circle", cond_refresh=1, generator=gen(2), **kw))
    unguided = pipe.generate("a red circle", guidance_scale=1.0, generator=gen(2), **kw)
    same = pipe.generate("a red circle", guidance_scale=1.0, cond_refresh=3, generator=gen(2), **kw)
    assert torch.equal(unguided, same)


def test_gtr_and_lazy_presets():
    assert preset_settings("gtr", 64, "100") == {"num_iter": 24, "detail_steps": 1}
    assert preset_settings("lazy", 64, "100") == {"cond_refresh": 2}
    assert preset_settings("gtr-lazy", 8, "100") == {"num_iter": 3, "detail_steps": 1, "cond_refresh": 2}
