"""The tiny shapes-world model that ships inside the package, held to the acceptance bars its issues set.

Issue #4 (the shapes world and the shipped model): the weights fit in 25 MB and load by default, so `harmon generate`
and `harmon describe` work offline; GenEval-rule overall >= 0.6 with all six categories and the held-out pairs
reported; POPE F1 >= 0.85 on each split; counting accuracy >= 0.75; measured with >= 500 fresh prompts and >= 1,500
questions at a fixed seed. Issue #6: a GradCAM++ map for "circle" puts most of its heat inside the circles' boxes of a
test scene, and over random scenes the asked shape's boxes hold clearly more heat than a flat map gives them.

The quick tests check the same bars on smaller fresh samples; the extended one measures them at the issue's size.
Findings about the model beyond these bars live in docs/RESULTS.md with the commands that measure them.
"""

import json

import pytest
import torch

from harmon import cli
from harmon.pipeline import HarmonPipeline
from harmon.shipped import SHIPPED_DIR, shipped_model_path

pytestmark = pytest.mark.skipif(shipped_model_path() is None, reason="this checkout carries no shipped model")

GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
POPE_SPLITS = ("random", "popular", "adversarial")


@pytest.fixture
def pipe() -> HarmonPipeline:
    """A fresh load per test (about 0.1 s), so no test sees another's caches or hooks."""
    return HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu")


def assert_generation_bar(scores: dict) -> None:
    """Issue #4: overall >= 0.6 as the mean of the six GenEval categories, each reported, held-out pairs reported."""
    assert set(scores["accuracy"]) == set(GENEVAL_TAGS), scores["accuracy"]
    assert scores["overall"] == pytest.approx(sum(scores["accuracy"].values()) / len(GENEVAL_TAGS))
    assert scores["held_out_count"] > 0 and 0.0 <= scores["held_out"] <= 1.0, scores
    assert scores["overall"] >= 0.6, scores["accuracy"]


def assert_understanding_bars(scores: dict) -> None:
    """Issue #4: POPE F1 >= 0.85 on random, popular and adversarial; counting accuracy >= 0.75."""
    f1 = {split: scores["pope"][split]["f1"] for split in POPE_SPLITS}
    assert min(f1.values()) >= 0.85, f1
    assert scores["accuracy"]["counting"] >= 0.75, scores["accuracy"]


def test_shipped_files_are_small_and_complete():
    size = (SHIPPED_DIR / "model.safetensors").stat().st_size
    assert size <= 25 * 2**20, f"shipped weights are {size / 2**20:.1f} MiB (limit 25)"
    config = json.loads((SHIPPED_DIR / "config.json").read_text())
    assert config["generation"]["image_size"] == 64  # tuned sampling defaults are recorded with the model
    assert (SHIPPED_DIR / "pipeline.json").is_file()  # where and how long it trained


def test_shipped_model_generates_and_answers(pipe):
    image = pipe.generate("a red circle", generator=torch.Generator().manual_seed(0))[0]
    assert image.size == (64, 64)
    answer = pipe.describe(image, "How many circles are there?")
    assert isinstance(answer, str) and answer


@pytest.mark.parametrize("phrasing, bar", [("canonical", 0.9), ("seen", 0.85), ("held_out", 0.8)])
def test_shipped_model_writes_layouts_that_satisfy_fresh_prompts(pipe, phrasing, bar):
    """Its plan stage: asked for a prompt's layout, it writes a placed description that holds for the prompt (the
    world's exact check), for nearly every fresh prompt of seen pairs, relations and bindings included, in the
    prompt templates, the grammar's seen wordings and its held-out wordings (never trained on)."""
    from harmon.world.language import sample_eval_prompts_v2
    from harmon.world.planning import scene_from_placed
    from harmon.world.prompts import sample_eval_prompts
    from harmon.world.scene import WorldConfig
    from harmon.world.scoring import judge_prompt

    world, g = WorldConfig(), torch.Generator().manual_seed(2027)
    if phrasing == "canonical":
        metas = sample_eval_prompts(60, g, world)
    else:
        metas = sample_eval_prompts_v2(60, g, world, phrasing)
    metas = [m for m in metas if not m["held_out"]]
    stated = [scene_from_placed(plan, world) for plan in pipe.plan([m["prompt"] for m in metas])]
    holds = [s is not None and judge_prompt(m, s.objects) for m, s in zip(metas, stated)]
    assert sum(holds) >= bar * len(metas), [m["prompt"] for m, h in zip(metas, holds) if not h]
    assert any(m["tag"] == "position" for m in metas) and any(m["tag"] == "color_attr" for m in metas)


def test_cli_defaults_to_the_shipped_model(tmp_path, capsys):
    out = tmp_path / "out.png"
    assert cli.main(["generate", "a red circle to the left of a blue square", "-o", str(out)]) == 0
    assert cli.main(["describe", str(out), "How many circles are there?"]) == 0
    assert capsys.readouterr().out.strip()


def test_shipped_model_edits_offline_through_its_layout(pipe, tmp_path, capsys):
    """Issue #24, `harmon edit` offline on the shipped model: it edits through its layout route (reads the scene's
    layout, names what the instruction changes, redraws those places). On fresh grid edits of every type, seen
    phrasings, its edits stay above floors set under the measured figures (`harmon eval shapes-edit --level grid`:
    docs/RESULTS.md, "Editing through the layout"; the issue's bars, 0.80 per type and 0.90 preserved, are not met),
    far above the untouched source's 0 % edit ok."""
    from harmon.world.evaluate_edits import evaluate_edits, pipeline_edit_fn
    from harmon.world.free import level_world
    from harmon.world.render import render
    from harmon.world.scene import Scene, WorldObject

    assert pipe.config.generation.edit_layout_request is not None
    result = evaluate_edits(pipeline_edit_fn(pipe), 64, n=6, seed=2027, splits=("seen",), level="grid")
    overall = result["splits"]["seen"]["overall"]
    assert overall["edit_ok"] >= 0.25 and overall["preserved"] >= 0.35, result["splits"]["seen"]["types"]
    scene = Scene((WorldObject("circle", "red", (4, 4, 28, 28)), WorldObject("square", "blue", (36, 36, 60, 60))), 64)
    source, out = tmp_path / "scene.png", tmp_path / "edited.png"
    render(scene, level_world("grid", 64)).save(source)
    assert cli.main(["edit", str(source), "make the red circle green", "-o", str(out)]) == 0
    assert out.name in capsys.readouterr().out and out.stat().st_size > 0


def test_generation_bar_on_a_quick_sample(quick_eval_seed0):
    assert_generation_bar(quick_eval_seed0[0])  # 96 prompts, 16 per category


def test_understanding_bars_on_a_quick_sample(pipe, quick_eval_seed0):
    """The POPE bar also holds for POPE's own template, "Is there a <shape> in the image?" (no colour, half "No")."""
    from harmon.world.evaluate import shape_existence_scores

    assert_understanding_bars(quick_eval_seed0[1])  # 280 questions, 40 per POPE split
    bare = shape_existence_scores(pipe, 48, seed=0)
    assert bare["f1"] >= 0.85, bare


@pytest.mark.slow
@pytest.mark.extended
def test_acceptance_bars_at_the_issue_size(eval_shapes_seed0):
    """`harmon eval shapes --seed 0`: 504 fresh prompts and 1,512 questions, the issue's size. The quick tests score
    its first 96 prompts and 280 questions, and tests/test_golden.py checks those item for item against this run."""
    _, result = eval_shapes_seed0
    assert len(result["generation"]["correct"]) >= 500 and len(result["understanding"]["correct"]) >= 1500
    assert_generation_bar(result["generation"])
    assert_understanding_bars(result["understanding"])


@pytest.mark.slow
def test_gradcam_of_the_concept_probe_falls_on_the_asked_shape(pipe):
    """Issue #6. GradCAM++ of a linear "circle" probe on the frozen MAR encoder puts more than half of its heat inside
    the circles' boxes of the test scene. Over 30 random scenes, with probes fitted on other scenes, the heat inside
    the asked shape's boxes is over 1.5x their share of the image, which is what a map blind to the image scores."""
    from harmon.analyze.gradcam import gradcam_plus_plus, heat_inside
    from harmon.world.analyses.localisation import demo_scene, localisation, world_probes

    probes = world_probes(pipe, ("circle", "square", "triangle"))
    assert all(p.accuracy > 0.95 for p in probes.values()), probes
    objects, image = demo_scene(64)
    circles = [o.bbox for o in objects if o.shape == "circle"]
    assert heat_inside(gradcam_plus_plus(pipe, image, "circle", probe=probes["circle"]), circles) > 0.5
    r = localisation(pipe, "gradcam++", "probe", scenes=30, seed=0, probes=probes)
    assert r["ratio"] > 1.5, r
