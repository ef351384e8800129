"""World v2: the free level's rules, the second renderer, the v2 scorer, and the grammar's held-out phrasings."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
from world_helpers import gen

from harmon.eval.metrics import relation
from harmon.world import Scene, WorldConfig, WorldObject, check_scene, render_array, sample_scene
from harmon.world.detect2 import MIXED, detect_objects_v2
from harmon.world.evaluate2 import binding_outcomes
from harmon.world.free import (
    clear_relations,
    free_world,
    level_scene_for_prompt,
    level_world,
    sample_level_scene,
)
from harmon.world.grammar import HELD_OUT, SEEN, SHAPE_WORDS, SPLITS, is_held_out_phrasing
from harmon.world.language import phrase_description, sample_eval_prompts_v2
from harmon.world.questions2 import sample_eval_questions_v2
from harmon.world.render2 import render2_array
from harmon.world.scene import Background
from harmon.world.scoring import answer_correct, judge_prompt, parse_description

FREE = free_world()


def test_free_level_scenes_keep_the_stated_rules():
    scenes = [sample_level_scene(gen(1), FREE)] + [sample_level_scene(g, FREE) for g in [gen(2)] for _ in range(299)]
    sizes = [o.width for s in scenes for o in s.objects]
    assert min(sizes) >= 10 and max(sizes) <= 30 and min(sizes) <= 11 and max(sizes) >= 29
    assert set(Counter(len(s.objects) for s in scenes)) == {1, 2, 3, 4, 5}
    for s in scenes:
        check_scene(s, FREE)  # in bounds, boxes >= 3 px apart
        assert all(o.width == o.height for o in s.objects)
    kinds = Counter(
        "white" if s.background is None else "tint" if s.background.start == s.background.end else "grad"
        for s in scenes
    )
    assert all(kinds[k] > 40 for k in ("white", "tint", "grad"))
    assert all(min(s.background.start + s.background.end) >= 205 for s in scenes if s.background is not None)
    again = sample_level_scene(gen(1), FREE)
    assert again == scenes[0] and Scene.from_dict(again.to_dict()) == again


def test_grid_level_is_todays_world_draw_for_draw():
    assert level_world("grid") == WorldConfig()
    for seed in range(5):
        assert sample_level_scene(gen(seed), level_world("grid")) == sample_scene(gen(seed))
    with pytest.raises(ValueError, match="unknown world level"):
        level_world("wild")
    star = {"tag": "single_object", "include": [{"class": "star", "count": 1}], "prompt": "a star"}
    with pytest.raises(ValueError, match="outside the world"):
        level_scene_for_prompt(star, gen(0), FREE)
    blue_triangle = {"tag": "colors", "include": [{"class": "triangle", "count": 1, "color": "blue"}], "prompt": "x"}
    with pytest.raises(ValueError, match="held-out pair"):
        level_scene_for_prompt(blue_triangle, gen(0), FREE)


def test_a_background_gradient_reaches_its_colours_at_the_corners():
    bg = Background(start=(210, 220, 230), end=(250, 240, 205), angle=45.0)
    scene = Scene(objects=(), image_size=64, background=bg)
    for image in (render_array(scene, FREE), render2_array(scene, FREE)):
        assert np.abs(image[0, 0].astype(int) - bg.start).max() <= 1
        assert np.abs(image[-1, -1].astype(int) - bg.end).max() <= 1


def _read(scene: Scene, renderer) -> tuple[list, list]:
    found = detect_objects_v2(renderer(scene, FREE), FREE)
    return sorted((d.color, d.shape) for d in found), [d.bbox for d in found]


@pytest.mark.parametrize("renderer", [render_array, render2_array], ids=["render", "render2"])
def test_the_scorer_reads_ground_truth_of_both_renderers(renderer):
    """>= 99 % of fresh free-level scenes read exactly (every object, colour and shape; boxes within 1 px)."""
    g, exact, n = gen(2024), 0, 100
    for _ in range(n):
        scene = sample_level_scene(g, FREE, allow_held_out=True)
        pairs, boxes = _read(scene, renderer)
        near = all(any(max(abs(a - b) for a, b in zip(box, o.bbox)) <= 1 for o in scene.objects) for box in boxes)
        exact += pairs == sorted(o.pair for o in scene.objects) and len(boxes) == len(scene.objects) and near
    assert exact / n >= 0.99


def test_small_near_and_two_coloured_objects():
    bg = Background(start=(230, 215, 250), end=(250, 250, 210), angle=120.0)
    small = (
        WorldObject("triangle", "orange", (2, 2, 12, 12)),
        WorldObject("circle", "yellow", (15, 2, 25, 12)),  # 3 px from the triangle
        WorldObject("square", "red", (28, 2, 38, 12)),
        WorldObject("circle", "purple", (2, 15, 12, 25)),
    )
    scene = Scene(objects=small, image_size=64, background=bg)
    for renderer in (render_array, render2_array):
        assert _read(scene, renderer)[0] == sorted(o.pair for o in small)
    image = render_array(
        Scene(objects=(WorldObject("square", "red", (20, 20, 44, 44)),), image_size=64, background=bg), FREE
    )
    image[20:32, 20:44] = (20, 60, 230)  # top half blue
    (found,) = detect_objects_v2(image, FREE)
    assert (found.shape, found.color) == ("square", MIXED)  # one object in a wrong colour, not two objects
    assert not judge_prompt({"include": [{"class": "square", "count": 1, "color": "red"}]}, [found])
    assert judge_prompt({"include": [{"class": "square", "count": 1}]}, [found])


def test_shapes_outside_the_world_are_unknown():
    image = np.full((64, 64, 3), 240, dtype=np.uint8)
    image[10:20, 5:35] = (200, 10, 10)  # a 3:1 rectangle
    yy, xx = np.mgrid[0:64, 0:64]
    image[((xx - 45) / 12.0) ** 2 + ((yy - 45) / 6.0) ** 2 <= 1] = (20, 150, 40)  # an ellipse
    assert sorted(d.shape for d in detect_objects_v2(image, FREE)) == ["unknown", "unknown"]


def test_clear_relations_need_a_margin_and_agree_with_geneval():
    a = (10, 20, 20, 30)
    assert clear_relations(a, (40, 20, 50, 30), 2) == {"left of"} == relation(a, (40, 20, 50, 30))
    border = next(x for x in range(20, 40) if "left of" in relation(a, (x, 30, x + 10, 40)))
    assert "left of" not in clear_relations(a, (border, 30, border + 10, 40), 2)  # holds, but not by 2 px
    assert clear_relations(a, (border + 3, 30, border + 13, 40), 2) <= relation(a, (border + 3, 30, border + 13, 40))


@pytest.mark.parametrize("split", SPLITS)
def test_prompt_scenes_pass_the_judge_on_both_renderers(split):
    prompts = sample_eval_prompts_v2(36, gen(7), FREE, split)
    assert all(is_held_out_phrasing(p["prompt"]) == (split == "held_out") for p in prompts)
    for p in prompts:
        scene = level_scene_for_prompt(p, gen(len(p["prompt"])), FREE, allow_held_out=True)
        for renderer in (render_array, render2_array):
            found = detect_objects_v2(renderer(scene, FREE), FREE)
            assert judge_prompt(p, found), (p["prompt"], found)
            if p["tag"] in ("position", "color_attr") and binding_outcomes(p, found) is not None:
                assert binding_outcomes(p, found) == (True, False)


def test_v2_questions_are_true_and_balanced():
    items = sample_eval_questions_v2(70, gen(3), FREE, "seen")
    assert all(answer_correct(q, q["answer"], FREE) for _, q in items)
    assert Counter(q["type"] for _, q in items) == {
        "existence": 30,
        "counting": 10,
        "color": 10,
        "position": 10,
        "describe": 10,
    }
    assert Counter(q["answer"] for _, q in items if q["type"] == "position") == {"Yes": 5, "No": 5}
    for scene, q in items:
        if q["type"] == "describe":
            assert sorted(parse_description(q["answer"])) == sorted(scene.pairs)
        if q["type"] == "counting" and "objects" in q["question"]:
            assert int(q["answer"]) == len(scene.objects)
    held = sample_eval_questions_v2(28, gen(3), FREE, "held_out")
    assert all(is_held_out_phrasing(q["question"]) for _, q in held)
    assert {q["held_out_pair"] for _, q in items} == {True, False}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", re.sub(r"\{[a-z_]+\}", " ", text.lower())))


def test_held_out_phrasings_recombine_seen_words_and_seen_ones_are_never_flagged():
    seen_words = set().union(*(_words(o) for options in SEEN.values() for o in options))
    seen_words |= set().union(*(_words(w) for words in SHAPE_WORDS.values() for w in words))
    for slot, options in HELD_OUT.items():
        for option in options:
            assert _words(option) <= seen_words, (slot, option)
    g = gen(5)
    for _ in range(60):
        scene = sample_level_scene(g, FREE)
        assert not is_held_out_phrasing(phrase_description(scene, g, "seen"))
        assert is_held_out_phrasing(phrase_description(scene, g, "held_out"))
