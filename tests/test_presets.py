"""Speed presets and annealed diffusion steps (the fast paths whose quality benchmarks/README.md measures)."""

import pytest
import torch
from helpers import tiny_pipeline

from harmon.sampling import SamplingSettings, diffusion_steps, mask_schedule, preset_settings


def test_annealed_steps_fall_linearly_from_first_to_last_step():
    s = SamplingSettings(num_iter=5, num_sampling_steps="100", diffusion_steps_final=20)
    assert [diffusion_steps(s, k, 5) for k in range(5)] == ["100", "80", "60", "40", "20"]
    assert diffusion_steps(s, 0, 1) == "100"
    constant = SamplingSettings(num_iter=5, num_sampling_steps="50,20")
    assert diffusion_steps(constant, 3, 5) == "50,20"
    with pytest.raises(ValueError, match="one number"):
        SamplingSettings(num_sampling_steps="50,20", diffusion_steps_final=10)
    with pytest.raises(ValueError, match=">= 1"):
        SamplingSettings(num_sampling_steps="50", diffusion_steps_final=0)


def test_presets_scale_the_model_defaults():
    assert preset_settings("full", 64, "100") == {}
    assert preset_settings("fast", 64, "100") == {"num_iter": 32, "diffusion_steps_final": 25}
    assert preset_settings("faster", 16, "100") == {
        "num_iter": 4,
        "num_sampling_steps": "50",
        "diffusion_steps_final": 5,
    }
    assert preset_settings("lean", 16, "100") == {"num_sampling_steps": "8"}  # every MAR step, 8 % of the steps
    assert preset_settings("lean", 64, "100", scale_steps=False) == {}  # an explicit step count wins
    assert preset_settings("leaner", 16, "100") == {"num_iter": 12, "num_sampling_steps": "8"}
    with pytest.raises(ValueError, match="unknown preset"):
        preset_settings("ludicrous", 64, "100")


def test_annealing_to_the_same_count_is_the_constant_sampler():
    pipe = tiny_pipeline()
    kw = dict(num_iter=3, image_size=64, output_type="latent")
    a = pipe.generate("a red circle", num_sampling_steps="8", generator=torch.Generator().manual_seed(3), **kw)
    b = pipe.generate(
        "a red circle",
        num_sampling_steps="8",
        diffusion_steps_final=8,
        generator=torch.Generator().manual_seed(3),
        **kw,
    )
    c = pipe.generate(
        "a red circle",
        num_sampling_steps="8",
        diffusion_steps_final=2,
        generator=torch.Generator().manual_seed(3),
        **kw,
    )
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_generate_with_a_preset_uses_fewer_steps(monkeypatch):
    import harmon.pipeline as pipeline_module

    seen = []
    real = pipeline_module.generate_tokens

    def spy(model, ids, mask, grid, settings, **kw):
        seen.append(settings)
        return real(model, ids, mask, grid, settings, **kw)

    monkeypatch.setattr(pipeline_module, "generate_tokens", spy)
    pipe = tiny_pipeline()
    pipe.generate("a red circle", preset="fast", image_size=64, num_sampling_steps="8")
    pipe.generate("a red circle", preset="faster", image_size=64, num_iter=3)
    d = pipe.config.generation
    assert seen[0].num_iter == max(1, round(d.num_iter / 2)) and seen[0].diffusion_steps_final == 2
    assert seen[1].num_iter == 3  # explicit settings win over the preset
    assert len(mask_schedule(16, seen[1].num_iter)) <= 3


def test_cli_offers_every_preset(capsys):
    from harmon import cli
    from harmon.sampling import PRESETS

    for sub in (["generate", "--help"], ["eval", "shapes", "--help"]):
        assert cli.main(sub) == 0
        assert "{" + ",".join(PRESETS) + "}" in capsys.readouterr().out.replace(" ", "").replace("\n", "")
