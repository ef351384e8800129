"""World v2 in training and evaluation: records and their options, the held-out guarantee, the stage-0 masks, the v2
recipes and pipeline, and the level x phrasing x pair report."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_pipeline, tiny_tokenizer

from harmon import cli
from harmon.data import Task
from harmon.train.config import SourceConfig, TrainConfig
from harmon.train.trainer import Trainer
from harmon.world.data import shapes_record
from harmon.world.data2 import VARIED_TASKS, record_v2, texts_v2
from harmon.world.evaluate2 import evaluate_levels, format_levels
from harmon.world.free import free_world
from harmon.world.grammar import is_held_out_phrasing
from harmon.world.layout_edits import EDIT_LAYOUT_REQUEST
from harmon.world.recipes import toy
from harmon.world.recipes_v2 import RECIPES_V2
from harmon.world.render import shape_mask
from harmon.world.sources import build_shapes_dataset
from harmon.world.stage0 import render_batch_with_masks


def _source(task: Task, **options) -> SourceConfig:
    return SourceConfig("s", "shapes", task=task, batch_size=2, format_options=options)


def test_default_options_give_todays_records_and_v2_options_draw_v2_records():
    cfg = TrainConfig(name="t", output_dir="unused", seed=3, image_size=64)
    today = build_shapes_dataset(_source(Task.TEXT_TO_IMAGE), cfg).record(5)
    assert today["caption"] == shapes_record("text2image", 5, seed=3)["caption"]
    free = build_shapes_dataset(_source(Task.IMAGE_TO_TEXT, kind="qa", level="free", phrasings="varied"), cfg).record(5)
    assert free["conversation"] == record_v2("qa", 5, seed=3, level="free")["conversation"]
    assert free["image"].size == (64, 64)
    for options, match in (
        ({"level": "free"}, "canonical phrasings exist for the grid level only"),
        ({"level": "outer"}, "level must be one of"),
        ({"phrasings": "varied", "antialiased": 2.0}, "antialiased must be in"),
        ({"phrasings": "varied", "shape_questions": True, "kind": "qa"}, "shape_questions"),
    ):
        with pytest.raises(ValueError, match=match):
            build_shapes_dataset(_source(Task.IMAGE_TO_TEXT, **options), cfg)


def test_training_text_never_uses_a_held_out_phrasing():
    """The data-level guarantee: no caption, question or prompt of any v2 training record is held-out phrasing."""

    def level(task: str) -> str:
        return "grid" if task == "plan" else "mixed"  # plans name the grid's quadrants

    texts = [
        t for task in VARIED_TASKS for i in range(100) for t in texts_v2(record_v2(task, i, seed=1, level=level(task)))
    ]
    assert len(texts) > 900
    assert not [t for t in texts if is_held_out_phrasing(t)]
    assert any("that is" in t for t in texts) and any(ch.isdigit() for t in texts for ch in t)


def test_stage0_masks_cover_exactly_the_objects():
    x, mask = render_batch_with_masks(range(6), seed=0, world_config=free_world())
    assert x.shape == (6, 3, 64, 64) and mask.shape == (6, 1, 64, 64)
    from harmon.world.free import sample_level_scene

    for i in range(6):
        scene = sample_level_scene(torch.Generator().manual_seed(i), free_world())
        area = sum(int(shape_mask(o.shape, o.width, o.height).sum()) for o in scene.objects)
        assert int(mask[i].sum()) <= area  # a palette colour never equals the background, so nearly all pixels
        assert int(mask[i].sum()) >= 0.97 * area


@pytest.mark.parametrize("name", sorted(RECIPES_V2))
def test_v2_recipes_validate_on_v2_data(name):
    cfg = RECIPES_V2[name]()
    cfg.validate()
    assert all(s.format_options["phrasings"] == "varied" for s in cfg.data)
    # the LLM stage sets the stride-8 VAE's MAR (patch 2); later stages inherit it from the previous export
    assert cfg.model.overrides.get("mar", {}).get("patch_size") == (2 if name == "shapes_v2_lm" else None)


def test_v2_model_reads_stride8_latents_as_4x4_tokens_of_64_dims():
    from harmon.config import HarmonConfig
    from harmon.model import Harmon
    from harmon.train.config import deep_merge
    from harmon.world.recipes import harmon_shapes
    from harmon.world.recipes_v2 import SHAPES_V2_VAE, STRIDE8_MAR
    from harmon.world.stage0 import shapes_vae_config

    vae = shapes_vae_config(64, SHAPES_V2_VAE["stride"])
    config = HarmonConfig.from_dict(deep_merge(harmon_shapes().replace(vae=vae).to_dict(), STRIDE8_MAR))
    model = Harmon(config)
    pixels = torch.zeros(1, 3, 64, 64)
    assert model.grid_for(64) == (4, 4) and model.encode_images(pixels).shape == (1, 16, 64)


def test_v2_stage2_runs_at_toy_size(tmp_path):
    tok = tmp_path / "tok"
    tiny_tokenizer().save_pretrained(str(tok))
    cfg = toy(RECIPES_V2["shapes_v2_stage2"](), str(tok), str(tmp_path / "run"))
    history = Trainer(cfg, device="cpu").run(resume="none")
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)


@pytest.fixture
def trained_configs(monkeypatch) -> list:
    """The TrainConfig of every stage the pipeline trains, recorded instead of trained."""
    seen = []

    class Recorder:
        def __init__(self, cfg, device):
            seen.append(cfg)

        def run(self, resume):
            return []

    monkeypatch.setattr("harmon.train.trainer.Trainer", Recorder)
    return seen


def test_pipeline_v2_runs_the_v2_recipes_under_its_root(tmp_path, trained_configs):
    from harmon.world import pipeline

    seen = trained_configs
    world = pipeline.WORLDS["v2"]
    names = [n for n, _, _ in pipeline.stages(tmp_path, "cpu", [], world)]
    assert names == ["tokenizer", "vae", "lm", "stage1", "stage2", "stage3", "decoder"]
    assert [n for n, _, _ in pipeline.stages(tmp_path, "cpu", [], world, edit=True)][-1] == "edit"
    for stage in ("stage1", "stage2", "edit"):
        pipeline.run_recipe(f"shapes_v2_{stage}", tmp_path, "cpu", ["max_steps=3"], world)
    assert [c.output_dir for c in seen] == [str(tmp_path / s) for s in ("stage1", "stage2", "edit")]
    assert seen[0].model.pretrained == str(tmp_path / "lm" / "final") and seen[1].max_steps == 3
    assert seen[2].model.pretrained == str(tmp_path / "decoder" / "final")
    assert seen[2].data[0].task is Task.IMAGE_EDIT and seen[2].data[0].format_options["level"] == "mixed"
    assert pipeline.build_parser().parse_args(["--world", "v2"]).world == "v2"


def test_level_report_prints_every_level_phrasing_and_chance(monkeypatch, tmp_path, capsys):
    pipe = tiny_pipeline()
    monkeypatch.setattr("harmon.cli.eval.load_pipeline", lambda args: pipe)
    out = tmp_path / "r.json"
    flags = ["--prompts", "6", "--questions", "7", "--num-iter", "2", "--diffusion-steps", "2", "--json", str(out)]
    assert cli.main(["eval", "shapes", "--level", "free", *flags]) == 0
    printed = capsys.readouterr().out
    for title in ("Generation, level free", "Binding, level free", "Understanding, level free"):
        assert title in printed
    assert "held-out phrasing" in printed and "held-out pairs" in printed and "| chance |" in printed
    result = json.loads(out.read_text())
    chance = result["levels"]["free"]["seen"]["generation"]["binding"]["position"]["chance"]
    assert 0.2 < chance < 0.4 and f"| {100 * chance:.1f}" in printed
    again = evaluate_levels(pipe, ("free",), 6, 0, seed=0, splits=("seen",), num_iter=2, num_sampling_steps="2")
    assert again["levels"]["free"]["seen"]["generation"] == result["levels"]["free"]["seen"]["generation"]
    assert "Understanding" not in format_levels(again)
    from harmon.world import hooks

    monkeypatch.setattr(hooks, "evaluate_levels", lambda *args, **kwargs: result)  # the trainer's quick eval
    quick = hooks.shapes_v2_quick(pipe, TrainConfig(name="q", output_dir="unused", image_size=64))
    assert {"free/geneval_overall", "free/pope_f1/random", "free/position_bound"} <= set(quick)


def test_relation_probe_runs_and_reports_its_four_measurements():
    from harmon.world import WorldConfig, sample_prompt
    from harmon.world.analyses import relations, scorer_check

    pipe = tiny_pipeline()
    world = WorldConfig()
    g = torch.Generator().manual_seed(0)
    prompts = [sample_prompt(g, "position", config=world) for _ in range(18)]
    result = {
        "sensitivity": relations.sensitivity(pipe, prompts[:6], world, 0),
        "content": relations.content_probes(pipe, prompts, world, 12, probe_steps=5),
        "placement": relations.placement_probe(pipe, prompts, world, 12, 0, probe_steps=20),
    }
    assert set(result["sensitivity"]) == {"relation", "colour", "shape", "two outcomes"}
    assert all(0.0 <= v <= 1.0 for v in result["placement"].values())
    assert "(c) may the reference object go" in relations.format_report(result)
    result["drawn"] = drawn = relations.drawn_placement(pipe, prompts[:3], world, 0, samples=2, chunk=5)
    seq = pipe.model.grid_for(world.image_size)
    assert drawn["draws"] == 3 * (seq[0] * seq[1] - 1) * 2  # every other token of every prompt, twice
    labels = relations._placements(pipe, prompts[:3], world, 0)[3]
    assert drawn["relation-holding tokens among the others (blind placement)"] == pytest.approx(
        sum(labels) / len(labels)
    )
    assert all(0.0 <= v <= 1.0 for k, v in drawn.items() if k != "draws" and v == v)
    assert "(d) what the generator draws" in relations.format_report(result)
    assert scorer_check.recovery("free", 4, 0) == {"render": 1.0, "render2": 1.0}


def test_pipeline_v1_ends_with_the_plan_and_edit_stages_and_ships_the_last(tmp_path, monkeypatch, trained_configs):
    from harmon.world import pipeline

    seen = trained_configs
    v1, v2 = pipeline.WORLDS["v1"], pipeline.WORLDS["v2"]
    names = [n for n, _, _ in pipeline.stages(tmp_path, "cpu", ["phrasing:max_steps=4"], v1)]
    later = ["phrasing", "place", "plan_varied", "edit_layout", "edit_text"]
    assert names == ["tokenizer", "vae", "lm", "stage1", "stage2", "stage3", "decoder", *later]
    assert [n for n, _, _ in pipeline.stages(tmp_path, "cpu", [], v1, edit=True)][-2:] == ["edit_text", "edit"]
    runs = {n: run for n, _, run in pipeline.stages(tmp_path, "cpu", ["phrasing:max_steps=4", "place:max_steps=3"], v1)}
    for stage in later:
        runs[stage]()
    assert seen[0].output_dir == str(tmp_path / "phrasing") and seen[0].max_steps == 4
    assert seen[0].model.pretrained == str(tmp_path / "decoder" / "final")  # it continues the decoder stage's model
    assert seen[1].max_steps == 3 and seen[2].max_steps == 2500  # each stage takes its own overrides only
    assert seen[3].max_steps == 2000 and seen[3].max_text_length == 224
    assert seen[4].max_steps == 1000 and seen[4].data[-1].batch_size == 160
    assert [c.model.pretrained for c in seen[1:]] == [str(tmp_path / s / "final") for s in later[:-1]]
    assert pipeline.shipped_stage(v1, None, edit=False) == "edit_text"
    assert pipeline.shipped_stage(v1, "plan_varied", edit=False) == "plan_varied"
    assert pipeline.shipped_stage(v1, "place", edit=False) == "place"
    assert pipeline.shipped_stage(v1, "phrasing", edit=False) == "phrasing"
    assert pipeline.shipped_stage(v1, "decoder", edit=False) == "decoder"  # the model before the phrasing stage
    assert pipeline.shipped_stage(v1, None, edit=True) == "edit"
    assert pipeline.shipped_stage(v2, None, edit=False) == "decoder"  # world v2 has no phrasing stage
    with pytest.raises(SystemExit):  # world v2 has no phrasing stage to stop after
        pipeline.main(["--world", "v2", "--root", str(tmp_path / "v2"), "--until", "phrasing"])
    assert not (tmp_path / "v2").exists()
    shipped = []
    monkeypatch.setattr(pipeline, "run_stages", lambda *args, **kwargs: None)
    monkeypatch.setattr(pipeline, "ship", lambda root, target, defaults, stage: shipped.append((defaults, stage)))
    pipeline.main(["--root", str(tmp_path), "--ship"])  # the one command of the docs records the shipped defaults
    pipeline.main(["--root", str(tmp_path), "--ship", "--until", "decoder", "--default", "guidance_scale=2"])
    sampling = {"num_iter": 8, "num_sampling_steps": "100", "guidance_scale": 3.0}
    places = ["top left", "top right", "bottom left", "bottom right"]
    plans = {"plan_request": "Plan the layout: ", "plan_places": places}
    route = {"layout_request": "Describe the layout.", "edit_layout_request": EDIT_LAYOUT_REQUEST, "edit_checks": 4}
    assert shipped[0] == ({**sampling, **plans, **route}, "edit_text")
    assert shipped[1] == ({**sampling, "guidance_scale": 2}, "decoder")  # not taught to plan: no plan request
