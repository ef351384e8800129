"""LazyMAR's token cache (harmon.tokencache): exact when every token runs, and on the steps between refreshes only
the chosen tokens run the deeper layers while the others keep their cached outputs."""

import math

import pytest
import torch
from helpers import tiny_pipeline

from harmon import tokencache
from harmon.mar import Block
from harmon.sampling import SamplingSettings, preset_settings
from harmon.tokencache import TokenCache, image_slots

KW = dict(num_iter=6, image_size=64, num_sampling_steps="4", output_type="latent")
PROMPTS = ["a red circle", "two blue squares"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.mark.parametrize(
    "cache",
    [{"token_refresh": 1}, {"token_refresh": 3, "token_ratio": 1.0}, {"token_refresh": 1, "cond_refresh": 2}],
)
def test_with_every_token_running_the_cache_equals_the_plain_sampler(pipe, cache):
    """Refresh 1 or ratio 1 runs every token through every layer of the cache's own layer loops (the LLM's included,
    with its rotary positions, causal mask and prompt cache) on several images with different orders."""
    plain_kw = {"cond_refresh": cache["cond_refresh"]} if "cond_refresh" in cache else {}
    want = pipe.generate(PROMPTS, num_images_per_prompt=2, generator=gen(), **KW, **plain_kw)
    got = pipe.generate(PROMPTS, num_images_per_prompt=2, generator=gen(), **KW, **cache)
    torch.testing.assert_close(got, want, atol=1e-4 * float(want.abs().max()), rtol=1e-4)


def test_between_refreshes_only_the_chosen_tokens_run_the_deeper_layers(pipe, monkeypatch):
    calls = []  # per stack run: (stack, tokens, [tokens run by each deeper layer])
    run, qkv = TokenCache._run, {cls: cls.qkv for cls in (tokencache._MARBlocks, tokencache._LLMLayers)}

    def spy_run(self, name, layers, x, slots, force=None):
        calls.append((name, x.shape[1], []))
        return run(self, name, layers, x, slots, force)

    def spy_qkv(cls):
        return lambda self, i, h: (i and calls[-1][2].append(h.shape[1])) or qkv[cls](self, i, h)

    monkeypatch.setattr(TokenCache, "_run", spy_run)
    for cls in qkv:
        monkeypatch.setattr(cls, "qkv", spy_qkv(cls))
    a = pipe.generate("a red circle", generator=gen(1), token_refresh=3, token_ratio=0.25, **KW)
    assert [c[0] for c in calls] == ["encoder", "llm", "decoder"] * KW["num_iter"]
    for step in range(KW["num_iter"]):
        for name, n, deeper in calls[3 * step : 3 * step + 3]:
            if step % 3 == 0:  # a refresh: every token through every layer
                assert deeper and all(k == n for k in deeper), (step, name)
            else:  # a quarter, at least the tokens revealed at the step before (and the drawn cells)
                assert all(math.ceil(0.25 * n) <= k < n for k in deeper), (step, name, n, deeper)
    calls.clear()
    assert torch.equal(a, pipe.generate("a red circle", generator=gen(1), token_refresh=3, token_ratio=0.25, **KW))
    assert not torch.allclose(a, pipe.generate("a red circle", generator=gen(1), **KW))  # an approximation


def test_tokens_left_out_keep_their_cached_outputs():
    """A stack of MAR blocks run once in full, then lazily with one token's input changed: that token is the one
    that moved most, so with room for one it alone is recomputed; every other output is its cached one exactly."""
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList([Block(16, 2, 2.0, 0.0, 0.0) for _ in range(3)]).eval()

    class Model:  # what TokenCache reads of the model
        buffer_size = 2

    tc = TokenCache(Model(), refresh=2, ratio=0.2, seq_len=3)
    slots = torch.arange(5).expand(2, 5)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        tc.begin_step()
        first = tc._run("s", tokencache._MARBlocks(blocks), x, slots)
        want = x
        for block in blocks:
            want = block(want)
        torch.testing.assert_close(first, want)
        moved = x.clone()
        moved[:, 3] += 5.0
        tc.begin_step()
        second = tc._run("s", tokencache._MARBlocks(blocks), moved, slots)
        keep = [0, 1, 2, 4]
        assert torch.equal(second[:, keep], first[:, keep])
        assert not torch.allclose(second[:, 3], first[:, 3])
        tc.begin_step()  # a refresh
        refreshed = tc._run("s", tokencache._MARBlocks(blocks), moved, slots)
        forced = torch.zeros(2, 5, dtype=torch.bool)
        forced[:, 0] = True  # a token that must run (a cell the step draws) takes the one place
        moved[:, 3] += 5.0
        tc.begin_step()
        third = tc._run("s", tokencache._MARBlocks(blocks), moved, slots, forced)
        assert torch.equal(third[:, 1:], refreshed[:, 1:])  # token 3 moved again but was not recomputed


def test_image_slots_name_buffers_and_cells():
    mask = torch.tensor([[True, False, True, False], [False, True, True, False]])
    assert image_slots(mask, 2, buffers_first=True).tolist() == [[0, 1, 3, 5], [0, 1, 2, 5]]
    assert image_slots(mask, 2, buffers_first=False).tolist() == [[3, 5, 0, 1], [2, 5, 0, 1]]


def test_token_cache_settings_are_checked_and_the_preset_names_them():
    with pytest.raises(ValueError, match="token_refresh"):
        SamplingSettings(token_ratio=0.5)
    with pytest.raises(ValueError, match="token_ratio"):
        SamplingSettings(token_refresh=2, token_ratio=0.0)
    with pytest.raises(ValueError, match="token_ratio"):
        SamplingSettings(token_refresh=2, token_ratio=1.5)
    with pytest.raises(ValueError, match="token_refresh"):
        SamplingSettings(token_refresh=0)
    assert preset_settings("lazy-tokens", 64, "100") == {"cond_refresh": 2, "token_refresh": 2, "token_ratio": 0.25}
