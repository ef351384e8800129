"""Plan, then draw from the pipeline: ``generate(..., plan=True)``, ``pipe.plan`` and ``harmon generate --plan``
draw from the layout the model writes when its config records a plan request, and refuse by name otherwise."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import tiny_pipeline
from PIL import Image

from harmon import cli
from harmon.chat import answer_batch
from harmon.config import GenerationDefaults
from harmon.pipeline import HarmonPipeline

FAST = dict(num_iter=2, num_sampling_steps="3", image_size=64)
REQUEST = "Plan the layout: "


def _planner() -> HarmonPipeline:
    pipe = tiny_pipeline(seed=1)
    config = pipe.config.replace(generation=replace(pipe.config.generation, plan_request=REQUEST, max_new_tokens=12))
    pipe.model.config = pipe.config = config
    return pipe


def test_a_model_without_a_plan_request_is_refused_by_name(tmp_path, capsys):
    pipe = tiny_pipeline()
    for call in (lambda: pipe.plan("a red circle"), lambda: pipe.generate("a red circle", plan=True, **FAST)):
        with pytest.raises(ValueError, match="writes no layout plans"):
            call()
    pipe.save_pretrained(tmp_path / "m")
    rc = cli.main(["generate", "a red circle", "--plan", "--model", str(tmp_path / "m"), "-o", str(tmp_path / "x.png")])
    assert rc != 0 and "writes no layout plans" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(ValueError, match="plan_request must be a non-empty request"):
        GenerationDefaults(plan_request="  ")


def test_plans_are_the_models_greedy_answers_to_its_request():
    pipe = _planner()
    prompts = ["a red circle", "two blue squares"]
    written = answer_batch(pipe, [[{"role": "user", "content": REQUEST + p}] for p in prompts])
    plans = pipe.plan(prompts)
    assert plans == [w or p for w, p in zip(written, prompts)] and pipe.plan(prompts[0]) == plans[0]


def test_generate_with_plan_draws_what_was_planned(monkeypatch):
    import harmon.chat as chat

    pipe = _planner()
    layouts = {REQUEST + "a red circle": "a red circle in the top left", REQUEST + "two squares": "a blue square"}
    monkeypatch.setattr(
        chat, "answer_batch", lambda pipe, conversations, **kw: [layouts[c[0]["content"]] for c in conversations]
    )
    prompts = ["a red circle", "two squares"]
    a = pipe.generate(prompts, plan=True, generator=torch.Generator().manual_seed(4), output_type="pt", **FAST)
    b = pipe.generate(
        ["a red circle in the top left", "a blue square"],
        generator=torch.Generator().manual_seed(4),
        output_type="pt",
        **FAST,
    )
    c = pipe.generate(prompts, generator=torch.Generator().manual_seed(4), output_type="pt", **FAST)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="plan applies to text prompts"):
        pipe.generate("<image> bluer", images=[Image.new("RGB", (64, 64))], plan=True, **FAST)
    with pytest.raises(TypeError, match="plan must be True or False"):
        pipe.generate("a red circle", plan="yes", **FAST)


def test_an_empty_plan_draws_the_prompt_itself(monkeypatch, caplog):
    import harmon.chat as chat

    pipe = _planner()
    monkeypatch.setattr(chat, "answer_batch", lambda pipe, conversations, **kw: ["", "a red circle in the top left"])
    assert pipe.plan(["two squares", "a red circle"]) == ["two squares", "a red circle in the top left"]
    assert "planned nothing for prompt 0" in caplog.text


def test_the_plan_request_is_saved_and_the_cli_shows_each_plan(tmp_path, capsys):
    pipe = _planner()
    pipe.save_pretrained(tmp_path / "m")
    loaded = HarmonPipeline.from_pretrained(tmp_path / "m", device="cpu")
    assert loaded.config.generation.plan_request == REQUEST
    out = tmp_path / "img.png"
    rc = cli.main(
        ["generate", "a red circle", "--plan", "--model", str(tmp_path / "m"), "-o", str(out), "--num-iter", "2"]
        + ["--diffusion-steps", "3", "--device", "cpu"]
    )
    assert rc == 0 and Image.open(out).size == (64, 64)
    assert f"plan for 'a red circle': {loaded.plan('a red circle')}" in capsys.readouterr().err


PLACES = ("top left", "top right", "bottom left", "bottom right")


def test_plans_are_drawn_in_the_order_of_the_models_places(monkeypatch, tmp_path):
    """With ``plan_places`` recorded, a plan's clauses are drawn in that order; a plan that does not name one
    distinct place per clause is drawn as written."""
    import harmon.chat as chat
    from harmon.chat import ordered_plan

    written = "a blue square in the bottom right, a green disc in the top right and a red circle in the top left"
    reading = "a red circle in the top left, a green disc in the top right and a blue square in the bottom right"
    assert ordered_plan(written, PLACES) == reading and ordered_plan(reading, PLACES) == reading
    assert ordered_plan("A Red Circle in the Top Left", PLACES) == "A Red Circle in the Top Left"
    for as_written in (
        "a red circle in the top left and a blue square in the top left",  # one place twice
        "a blue square in the bottom right and a red circle",  # a clause without a place
        "a red circle in the middle and a blue square in the top left",  # a place the model does not know
        "two squares",
    ):
        assert ordered_plan(as_written, PLACES) == as_written

    pipe = _planner()
    generation = replace(pipe.config.generation, plan_places=PLACES)
    pipe.model.config = pipe.config = pipe.config.replace(generation=generation)
    monkeypatch.setattr(chat, "answer_batch", lambda pipe, conversations, **kw: [written, "two squares"])
    assert pipe.plan(["three shapes", "two squares"]) == [reading, "two squares"]
    pipe.save_pretrained(tmp_path / "m")
    assert HarmonPipeline.from_pretrained(tmp_path / "m", device="cpu").config.generation.plan_places == PLACES
    for bad, match in (
        (dict(plan_places=PLACES), "needs a plan_request"),
        (dict(plan_request=REQUEST, plan_places=()), "needs a plan_request and at least one place"),
        (dict(plan_request=REQUEST, plan_places=("left", "left")), "distinct, non-empty places"),
    ):
        with pytest.raises(ValueError, match=match):
            GenerationDefaults(**bad)
