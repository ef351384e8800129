"""Plan, then draw (harmon.world.planning): placed descriptions exact from the scene, their parser strict, the
"placed" and "plan" records and sources, and the study's scoring on gold and wrong drawers and planners."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from harmon.data.tasks import Task
from harmon.train.config import SourceConfig
from harmon.train.formats import format_options
from harmon.world.data import shapes_record
from harmon.world.data2 import record_v2
from harmon.world.detection import detect_objects
from harmon.world.planning import (
    PLAN_PREFIX,
    parse_placed,
    placed_description,
    placed_matches,
    plan_request,
    prompt_order,
    scene_from_placed,
)
from harmon.world.prompts import parse_prompt, scene_for_prompt
from harmon.world.recipes import RECIPES
from harmon.world.recipes_studies import STUDY_RECIPES
from harmon.world.render import render
from harmon.world.scene import Scene, WorldConfig, WorldObject
from harmon.world.scoring import judge_prompt
from harmon.world.sources import ShapesOptions

WORLD = WorldConfig()


def _scene(*objects: tuple[str, str, tuple[int, int, int, int]]) -> Scene:
    return Scene(objects=tuple(WorldObject(shape, color, box) for color, shape, box in objects), image_size=64)


def test_placed_description_reads_the_quadrants_in_reading_order():
    scene = _scene(("blue", "square", (36, 36, 60, 60)), ("orange", "circle", (4, 6, 26, 28)))
    said = placed_description(scene)
    assert said == "an orange circle in the top left and a blue square in the bottom right"
    assert parse_placed(said) == [("orange", "circle", "top left"), ("blue", "square", "bottom right")]
    assert placed_matches(said, scene.objects, 64) and placed_description(scene_from_placed(said)) == said
    # a moved, a recoloured, a missing or an extra object each breaks the match
    moved = _scene(("blue", "square", (36, 4, 60, 28)), ("orange", "circle", (4, 6, 26, 28)))
    recoloured = _scene(("green", "square", (36, 36, 60, 60)), ("orange", "circle", (4, 6, 26, 28)))
    extra = _scene(*[(o.color, o.shape, o.bbox) for o in scene.objects], ("red", "circle", (36, 4, 60, 28)))
    for other in (moved, recoloured, _scene(("blue", "square", (36, 36, 60, 60))), extra):
        assert not placed_matches(said, other.objects, 64)
    # no description when two objects share a quadrant or one sits astride a middle line
    assert placed_description(_scene(("red", "circle", (2, 2, 14, 14)), ("blue", "square", (16, 16, 28, 28)))) is None
    assert placed_description(_scene(("red", "circle", (20, 4, 44, 28)))) is None


@pytest.mark.parametrize(
    "text",
    [
        "a red circle",  # no place
        "a red circle in the middle",
        "a pink circle in the top left",  # not a world colour
        "a red circle in the top left and a blue square in the top left",  # a place twice
        "a red circle in the top left, then a blue square",
        "",
    ],
)
def test_parse_placed_refuses_what_is_not_a_placed_description(text):
    assert parse_placed(text) is None and scene_from_placed(text) is None
    with pytest.raises(ValueError, match="not a placed description"):
        placed_matches(text, [], 64)


def test_placed_records_draw_what_their_caption_states():
    """Checked on the detector's reading of the rendered image, not on the record's own scene."""
    sizes = set()
    for i in range(40):
        r = shapes_record("placed", i, seed=2)
        assert r["kind"] == "text2image" and r == shapes_record("placed", i, seed=2)
        assert placed_matches(r["caption"], detect_objects(r["image"], WORLD), 64), r["caption"]
        sizes.add(len(parse_placed(r["caption"])))
    assert sizes == {1, 2, 3, 4}


def test_plan_records_answer_with_a_layout_that_satisfies_the_prompt():
    tags = set()
    for i in range(60):
        r = shapes_record("plan", i, seed=1, tag_weights={"position": 1.0, "color_attr": 1.0, "counting": 1.0})
        (user, assistant) = r["conversation"]
        assert r["image"] is None and user["content"].startswith(PLAN_PREFIX)
        prompt = parse_prompt(user["content"][len(PLAN_PREFIX) :])
        stated = scene_from_placed(assistant["content"])
        assert stated is not None and judge_prompt(prompt, stated.objects), (user, assistant)
        tags.add(prompt["tag"])
    assert tags == {"position", "color_attr", "counting"}


def test_placed_descriptions_in_a_given_order_state_the_same_layout():
    scene = _scene(("blue", "square", (36, 36, 60, 60)), ("orange", "circle", (4, 6, 26, 28)))
    said = placed_description(scene, scene.objects)
    assert said == "a blue square in the bottom right and an orange circle in the top left"
    assert placed_matches(said, scene.objects, 64)
    with pytest.raises(ValueError, match="reordered"):
        placed_description(scene, scene.objects[:1])
    # "any": the same layout as the reading order, listed in every order across records; the default is unchanged
    orders = set()
    for i in range(30):
        reading, shuffled = shapes_record("placed", i, seed=4), shapes_record("placed", i, seed=4, order="any")
        assert shuffled["image"] == reading["image"]
        assert sorted(parse_placed(shuffled["caption"])) == sorted(parse_placed(reading["caption"]))
        orders.add(shuffled["caption"] == reading["caption"])
    assert orders == {True, False}
    for task, order in (("qa", "any"), ("placed", "prompt"), ("plan", "sideways")):
        with pytest.raises(ValueError, match=f"order '{order}' does not apply to {task}"):
            shapes_record(task, 0, order=order)


def test_plans_in_prompt_order_name_the_objects_as_the_prompt_does():
    """Each object's phrase comes where the prompt names it; one entry's objects in reading order."""
    for i in range(60):
        r = shapes_record("plan", i, seed=3, order="prompt", tag_weights={"position": 1, "color_attr": 1})
        prompt_text = r["conversation"][0]["content"][len(PLAN_PREFIX) :]
        prompt, plan = parse_prompt(prompt_text), r["conversation"][1]["content"]
        stated = scene_from_placed(plan)
        assert stated is not None and judge_prompt(prompt, stated.objects)
        words = [f"{c} {s}" if any(e.get("color") for e in prompt["include"]) else s for c, s, _ in parse_placed(plan)]
        at = [prompt_text.index(w) for w in words]
        assert at == sorted(at), (prompt_text, plan)
    prompt = parse_prompt("a blue square to the right of a red circle")
    scene = _scene(("red", "circle", (4, 4, 26, 26)), ("blue", "square", (36, 4, 60, 28)))
    assert [o.color for o in prompt_order(prompt, scene)] == ["blue", "red"]
    with pytest.raises(ValueError, match="not the ones"):
        prompt_order(prompt, _scene(("red", "circle", (4, 4, 26, 26))))


def test_varied_plans_ask_in_the_grammar_and_answer_in_the_layout_language():
    """A varied plan record's prompt is in the grammar's seen phrasings; its plan states a scene that satisfies the
    prompt's metadata, names the objects in the prompt's order, and is what a canonical plan would say."""
    from harmon.world.free import level_scene_for_prompt
    from harmon.world.grammar import is_held_out_phrasing
    from harmon.world.language import sample_prompt_v2
    from harmon.world.planning import plan_turns

    weights = {"position": 2, "color_attr": 2, "counting": 1, "two_object": 1}
    records = [record_v2("plan", i, seed=4, level="grid", order="prompt", tag_weights=weights) for i in range(40)]
    prompts = [r["conversation"][0]["content"].removeprefix(PLAN_PREFIX) for r in records]
    assert all(r["conversation"][0]["content"].startswith(PLAN_PREFIX) for r in records)
    assert not any(is_held_out_phrasing(p) for p in prompts)

    def canonical(text: str) -> bool:
        try:
            return parse_prompt(text) is not None
        except ValueError:
            return False

    assert sum(not canonical(p) for p in prompts) > 20  # mostly wordings the canonical parser cannot read
    for i in range(80):
        g = torch.Generator().manual_seed(i)
        prompt = sample_prompt_v2(g, ("position", "color_attr", "counting")[i % 3], WORLD)
        plan = plan_turns(prompt, lambda p=prompt, g=g: level_scene_for_prompt(p, g, WORLD), g, "prompt")[1]["content"]
        stated = scene_from_placed(plan)
        assert stated is not None and judge_prompt(prompt, stated.objects), (prompt["prompt"], plan)
        if prompt["tag"] == "position":  # "A left of B": A, the entry carrying the relation, is named first
            first, named = parse_placed(plan)[0], prompt["include"][1]
            assert first[1] == named["class"] and named.get("color") in (None, first[0]), (prompt["prompt"], plan)
    with pytest.raises(ValueError, match="need level 'grid'"):
        record_v2("plan", 0, level="free")
    with pytest.raises(ValueError, match="order 'sideways'"):
        record_v2("plan", 0, level="grid", order="sideways")


def test_plan_and_placed_sources_and_their_refusals():
    ok = [
        SourceConfig("p", "shapes", task=Task.TEXT_TO_IMAGE, format_options={"kind": "placed"}),
        SourceConfig(
            "q", "shapes", task=Task.TEXT_ONLY, format_options={"kind": "plan", "tag_weights": {"position": 1}}
        ),
        SourceConfig("o", "shapes", task=Task.TEXT_ONLY, format_options={"kind": "plan", "order": "prompt"}),
        SourceConfig("v", "shapes", task=Task.TEXT_ONLY, format_options={"kind": "plan", "phrasings": "varied"}),
    ]
    for src in ok:
        format_options(src).validate(src)
    bad = [
        (Task.TEXT_TO_IMAGE, {"kind": "plan"}, "not one of a text2image source's kinds"),
        (Task.IMAGE_TO_TEXT, {"kind": "placed"}, "not one of a image2text source's kinds"),
        (Task.TEXT_ONLY, {"kind": "plan", "level": "free", "phrasings": "varied"}, "kind 'plan' names the grid"),
        (Task.TEXT_TO_IMAGE, {"kind": "placed", "phrasings": "varied"}, "kind 'placed' asks about grid scenes"),
        (Task.TEXT_TO_IMAGE, {"kind": "placed", "tag_weights": {"position": 1}}, "tag_weights"),
        (Task.IMAGE_TO_TEXT, {"kind": "qa", "order": "any"}, "order 'any' does not apply to this source"),
        (Task.TEXT_TO_IMAGE, {"kind": "placed", "order": "prompt"}, "order 'prompt' does not apply"),
        (Task.TEXT_ONLY, {"kind": "plan", "order": "sideways"}, "order 'sideways' does not apply"),
    ]
    for task, options, match in bad:
        src = SourceConfig("b", "shapes", task=task, format_options=options)
        with pytest.raises(ValueError, match=match):
            ShapesOptions(**options).validate(src)
    with pytest.raises(ValueError, match="canonical phrasings only"):
        record_v2("placed", 0, level="grid", phrasings="varied")


def test_shapes_plan_is_the_phrasing_mix_plus_placed_drawings_and_plans():
    base, study = RECIPES["shapes_phrasing"](), STUDY_RECIPES["shapes_plan"]()
    assert study.data[: len(base.data)] == base.data and study.output_dir.endswith("/plan")
    assert [(s.name, s.batch_size, s.task, format_options(s).kind) for s in study.data[len(base.data) :]] == [
        ("text2image_placed", 32, Task.TEXT_TO_IMAGE, "placed"),
        ("text_plan", 16, Task.TEXT_ONLY, "plan"),
    ]
    assert study.optim.lr == 1e-3 and study.max_steps == 2500
    # the cells' position tables enlarged and trained faster, each a parameter of the model
    assert study.model.rescale == {"mar.decoder_pos_embed_learned": 20.0, "mar.diffusion_pos_embed_learned": 10.0}
    assert set(study.optim.lr_scale) == {*study.model.rescale, "mar.mask_token"}
    from harmon.model import Harmon
    from harmon.world.recipes import harmon_shapes

    names = {n for n, _ in Harmon(harmon_shapes()).named_parameters()}
    assert set(study.optim.lr_scale) <= names


class _Drawer:
    """A stand-in pipeline that draws a scene for each text: the placed description's own scene, or a scene that
    satisfies the GenEval prompt; ``swap`` mirrors every drawing left to right (every place wrong)."""

    def __init__(self, swap: bool = False):
        self.swap = swap
        self.config = SimpleNamespace(generation=SimpleNamespace(plan_places=None))

    def generate(self, texts, generator=None):
        out = []
        for text in texts:
            scene = scene_from_placed(text) or scene_for_prompt(parse_prompt(text), generator, WORLD)
            if self.swap:
                flipped = tuple(
                    WorldObject(o.shape, o.color, (64 - o.bbox[2], o.bbox[1], 64 - o.bbox[0], o.bbox[3]))
                    for o in scene.objects
                )
                scene = Scene(objects=flipped, image_size=64)
            out.append(render(scene, WORLD))
        return out


def test_planning_study_scores_gold_and_wrong_drawers_and_planners(monkeypatch):
    from harmon.world.analyses import planning

    def gold_plans(pipe, conversations, **settings):
        g = torch.Generator().manual_seed(0)
        prompts = [parse_prompt(c[0]["content"][len(PLAN_PREFIX) :]) for c in conversations]
        return [placed_description(scene_for_prompt(p, g, WORLD)) or "" for p in prompts]

    monkeypatch.setattr(planning, "answer_batch", gold_plans)
    gold = {
        "placed": planning.placed_scores(_Drawer(), 12, 0, WORLD),
        "plans": planning.plan_scores(_Drawer(), 24, 0, WORLD),
    }
    assert gold["placed"]["exact"] == gold["placed"]["objects_at_place"] == 1.0
    shuffled = planning.placed_scores(_Drawer(), 12, 0, WORLD, order="any")
    assert shuffled["exact"] == 1.0 and shuffled["examples"] != gold["placed"]["examples"]
    for way in planning.WAYS:
        assert gold["plans"]["ways"][way]["overall"] == 1.0, way
    assert gold["plans"]["plans_parse"] == gold["plans"]["plans_hold"] == 1.0
    assert set(gold["plans"]["plans_hold_tags"].values()) == {1.0}
    assert "| world's plan | 100.0 |" in planning.format_planning(gold)

    monkeypatch.setattr(
        planning, "answer_batch", lambda pipe, conversations, **s: ["a red circle"] * len(conversations)
    )
    swapped = {
        "placed": planning.placed_scores(_Drawer(swap=True), 12, 0, WORLD),
        "plans": planning.plan_scores(_Drawer(swap=True), 24, 0, WORLD),
    }
    assert swapped["placed"]["exact"] < 0.5 and swapped["plans"]["plans_parse"] == 0.0
    assert set(swapped["plans"]["plans_hold_tags"].values()) == {0.0}
    ways = swapped["plans"]["ways"]
    assert ways["direct"]["tags"]["position"] < 1.0 and ways["world's plan"]["tags"]["single_object"] == 1.0
    assert plan_request("a red circle") == PLAN_PREFIX + "a red circle"


def test_planning_study_reads_prompts_in_the_grammars_wordings(monkeypatch):
    """(b) on the grammar's seen and held-out wordings: a gold planner and drawer score 100 %, a wrong planner 0."""
    from harmon.world.analyses import planning
    from harmon.world.free import level_scene_for_prompt
    from harmon.world.grammar import is_held_out_phrasing
    from harmon.world.language import sample_eval_prompts_v2
    from harmon.world.questions import PLACES

    metas: dict[str, dict] = {}

    def sampler(n, generator, world, split):
        out = sample_eval_prompts_v2(n, generator, world, split)
        metas.update((m["prompt"], m) for m in out)
        return out

    drawn: list[str] = []

    class Drawer:
        config = SimpleNamespace(generation=SimpleNamespace(plan_places=PLACES))

        def generate(self, texts, generator=None):
            drawn.extend(texts)

            def scene(text: str) -> Scene:  # a text it cannot read: an empty canvas
                if text in metas:
                    return level_scene_for_prompt(metas[text], generator, WORLD)
                return scene_from_placed(text) or Scene(objects=(), image_size=64)

            return [render(scene(t), WORLD) for t in texts]

    g = torch.Generator().manual_seed(0)

    def gold_plans(pipe, conversations, **settings):  # in the prompt's order, as the shipped model writes them
        asked = [metas[c[0]["content"].removeprefix(PLAN_PREFIX)] for c in conversations]
        scenes = [(m, level_scene_for_prompt(m, g, WORLD)) for m in asked]
        return [placed_description(scene, prompt_order(m, scene)) or "" for m, scene in scenes]

    monkeypatch.setattr(planning, "sample_eval_prompts_v2", sampler)
    monkeypatch.setattr(planning, "answer_batch", gold_plans)
    for split in ("seen", "held_out"):
        result = planning.plan_scores(Drawer(), 24, 0, WORLD, split)
        assert result["phrasing"] == split and result["plans_hold"] == 1.0
        assert all(result["ways"][way]["overall"] == 1.0 for way in planning.WAYS)
        prompts = [p for p, _ in result["examples"]]
        assert all(is_held_out_phrasing(p) == (split == "held_out") for p in prompts)
    assert "seen pairs, held-out wordings" in planning.format_planning({"plans": result})
    placed = [t for t in drawn if parse_placed(t) is not None]  # plans reach the drawer in reading order
    assert len(placed) > 24 and all(placed_description(scene_from_placed(t)) == t for t in placed)
    monkeypatch.setattr(planning, "answer_batch", lambda pipe, c, **s: ["a red circle in the middle"] * len(c))
    assert planning.plan_scores(Drawer(), 24, 0, WORLD, "seen")["plans_hold"] == 0.0
    with pytest.raises(ValueError, match="phrasing must be one of"):
        planning.plan_scores(Drawer(), 24, 0, WORLD, "varied")


def test_layout_probes_read_each_quadrant_on_the_shipped_model():
    from harmon.pipeline import HarmonPipeline
    from harmon.shipped import shipped_model_path
    from harmon.world.analyses import planning
    from harmon.world.questions import PLACES

    pipe = HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu", dtype=torch.float32)
    result = planning.layout_probes(pipe, 30, 0, WORLD, probe_steps=5)
    assert list(result["places"]) == list(PLACES) and result["n"] == 30
    for row in result["places"].values():
        assert list(row) == ["chance", "llm (buffers)", "condition at this cell", "condition at the next cell"]
        assert all(0.0 <= v <= 1.0 for v in row.values())
    assert 0.0 < result["cells' spread"] < 1.0
    ways = {way: {"tags": dict.fromkeys(planning.TAGS, 0.5), "overall": 0.5} for way in planning.WAYS}
    plans = {"n": 6, "ways": ways, "plans_parse": 1.0, "plans_hold": 1.0}
    placed = {"n": 2, "exact": 0.5, "objects_at_place": 0.5}
    text = planning.format_planning({"placed": placed, "plans": plans, "probes": result})
    assert "| top left | " in text and "cells' spread over their norm" in text
    with pytest.raises(ValueError, match="2 x 2 token grid"):
        planning.layout_probes(pipe, 30, 0, WorldConfig(image_size=128))


def test_the_plan_stages_draw_at_places_then_plan_then_plan_in_the_prompts_order():
    """place: placed drawings beside the recipes' prompts, the tables enlarged; plan_mix: from place, the
    shapes_plan mix, nothing enlarged twice; plan_order: the same with plans in the prompt's order."""
    from harmon.world.recipes_plan import PLAN_RECIPES

    place, mix, order = (PLAN_RECIPES[f"shapes_{n}"]() for n in ("place", "plan_mix", "plan_order"))
    study = STUDY_RECIPES["shapes_plan"]()
    assert [(s.name, s.batch_size, format_options(s).order) for s in place.data] == [
        ("text2image", 16, "reading"),
        ("text2image_placed", 32, "reading"),
    ]
    assert place.model.pretrained.endswith("phrasing/final") and place.model.rescale == study.model.rescale
    assert place.optim == study.optim and place.max_steps == 3000
    assert mix.model.pretrained.endswith("place/final") and mix.model.rescale == {} and mix.max_steps == 1500
    assert mix.data == study.data and mix.optim == study.optim
    assert order.model.pretrained.endswith("plan_mix/final") and order.model.rescale == {}
    assert [format_options(s).order for s in order.data] == ["reading"] * 5 + ["any", "prompt"]
    assert order.optim == mix.optim and order.max_steps == 1500


def test_plan_varied_is_plan_mix_with_plans_in_the_prompts_order_and_in_the_grammars_wordings():
    from harmon.world.recipes_plan import PLAN_RECIPES

    mix, varied = PLAN_RECIPES["shapes_plan_mix"](), PLAN_RECIPES["shapes_plan_varied"]()
    assert [(s.name, s.batch_size) for s in varied.data[: len(mix.data)]] == [(s.name, s.batch_size) for s in mix.data]
    assert [format_options(s).order for s in varied.data] == ["reading"] * 6 + ["prompt"] * 2
    assert varied.model.pretrained.endswith("place/final") and varied.model.rescale == {}
    extra = varied.data[len(mix.data) :]
    assert [(s.name, s.batch_size, s.task) for s in extra] == [("text_plan_varied", 16, Task.TEXT_ONLY)]
    opts = format_options(extra[0])
    assert (opts.kind, opts.level, opts.phrasings, opts.order) == ("plan", "grid", "varied", "prompt")
    assert varied.seed != mix.seed and varied.optim == mix.optim and varied.max_steps == 2500
    varied.validate()
