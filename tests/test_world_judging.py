"""Tests of the shapes world's judge, prompts, questions and answer scoring, against ground truth."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import pytest
import torch
from PIL import Image
from world_helpers import CONFIG, gen

from harmon.world import (
    POPE_SPLITS,
    TAGS,
    DetectedObject,
    Scene,
    WorldConfig,
    WorldObject,
    caption_scene,
    check_scene,
    describe_scene,
    detect_objects,
    explain_prompt,
    format_tables,
    judge_prompt,
    negative_pairs,
    pair_statistics,
    parse_color,
    parse_count,
    parse_description,
    parse_prompt,
    pope_answer,
    relation,
    render,
    sample_eval_prompts,
    sample_eval_questions,
    sample_prompt,
    sample_questions,
    sample_scene,
    scene_for_prompt,
    score_answers,
    score_generation,
)
from harmon.world.scene import boxes_separated

# ---- GenEval relation rule and judge ------------------------------------------------------------------------


def test_relation_rule():
    box = lambda cx, cy, s=10: (cx - s // 2, cy - s // 2, cx + s // 2, cy + s // 2)  # noqa: E731
    assert relation(box(10, 32), box(50, 32)) == {"left of"}
    assert relation(box(50, 32), box(10, 32)) == {"right of"}
    assert relation(box(32, 10), box(32, 50)) == {"above"}
    assert relation(box(32, 50), box(32, 10)) == {"below"}
    assert relation(box(30, 30), box(31, 30)) == set()  # |offset| 1 < 0.1 * (10 + 10): too close
    assert relation(box(10, 10), box(50, 50)) == {"left of", "above"}  # diagonal: both
    assert relation(box(10, 30), box(50, 45)) == {"left of"}  # mostly horizontal
    # sizes matter: offset 6 minus 0.1 * (40 + 20) = 0 -> nothing
    assert relation((0, 0, 40, 40), (16, 10, 36, 30)) == set()
    wo = WorldObject("circle", "red", box(10, 32))
    assert relation(wo, box(50, 32)) == {"left of"}


def test_judge_accepts_scenes_built_for_prompts():
    g = gen(6)
    prompts = [sample_prompt(g, TAGS[i % 6]) for i in range(360)]
    ok = Counter()
    for p in prompts:
        scene = scene_for_prompt(p, g)
        assert judge_prompt(p, scene.objects)  # by construction
        ok[p["tag"]] += judge_prompt(p, detect_objects(render(scene)))
        assert len(scene.objects) == sum(e["count"] for e in p["include"])  # no extra objects
    assert sum(ok.values()) / len(prompts) >= 0.99
    assert all(ok[tag] / 60 >= 0.95 for tag in TAGS)


def _mirror(scene: Scene, axis: str) -> Scene:
    n = scene.image_size
    objs = []
    for o in scene.objects:
        x0, y0, x1, y1 = o.bbox
        objs.append(dataclasses.replace(o, bbox=(n - x1, y0, n - x0, y1) if axis == "x" else (x0, n - y1, x1, n - y0)))
    return Scene(tuple(objs), n)


def _add_object(scene: Scene, shape: str, color: str, g: torch.Generator) -> Scene | None:
    side = CONFIG.min_size_px
    for _ in range(300):
        x0, y0 = (int(v) for v in torch.randint(1, CONFIG.image_size - side - 1, (2,), generator=g))
        box = (x0, y0, x0 + side, y0 + side)
        if all(boxes_separated(box, o.bbox, CONFIG.gap_px) for o in scene.objects):
            return Scene((*scene.objects, WorldObject(shape, color, box)), scene.image_size)
    return None


def _corruptions(prompt: dict, scene: Scene, g: torch.Generator) -> list[tuple[str, Scene]]:
    out = []
    objs = list(scene.objects)
    drop = int(torch.randint(0, len(objs), (1,), generator=g))
    out.append(("missing", Scene(tuple(objs[:drop] + objs[drop + 1 :]), scene.image_size)))
    for e in prompt["include"]:
        if "color" in e:
            i = next(k for k, o in enumerate(objs) if o.shape == e["class"] and o.color == e["color"])
            others = [c for c in CONFIG.color_names if c != e["color"]]
            new = dataclasses.replace(objs[i], color=others[int(torch.randint(0, len(others), (1,), generator=g))])
            out.append(("wrong colour", Scene(tuple(objs[:i] + [new] + objs[i + 1 :]), scene.image_size)))
            extra_color = others[int(torch.randint(0, len(others), (1,), generator=g))]
            stray = _add_object(scene, e["class"], extra_color, g)  # a same-shape object of another colour
            if stray is not None:
                out.append(("stray colour", stray))
            break
    if prompt["tag"] == "counting":
        e = prompt["include"][0]
        extra = _add_object(scene, e["class"], objs[0].color, g)
        if extra is not None:
            out.append(("count + 1", extra))
    if prompt["tag"] == "position":
        rel = prompt["include"][1]["position"][0]
        out.append(("swapped", _mirror(scene, "x" if rel in ("left of", "right of") else "y")))
    return out


def test_judge_rejects_wrong_scenes():
    g = gen(7)
    wrong = Counter()
    total = Counter()
    for i in range(240):
        p = sample_prompt(g, TAGS[i % 6])
        scene = scene_for_prompt(p, g)
        for kind, bad in _corruptions(p, scene, g):
            check_scene(bad, CONFIG)
            total[kind] += 1
            wrong[kind] += not judge_prompt(p, detect_objects(render(bad)))
    assert set(total) == {"missing", "wrong colour", "stray colour", "count + 1", "swapped"}
    assert sum(wrong.values()) / sum(total.values()) >= 0.99, (wrong, total)
    assert all(wrong[k] / total[k] >= 0.97 for k in total), (wrong, total)


def test_judge_rules_by_hand():
    def obj(shape, color, cx, cy, s=12):
        return WorldObject(shape, color, (cx - s // 2, cy - s // 2, cx + s // 2, cy + s // 2))

    p = parse_prompt("a red circle to the left of a blue square")
    assert p["tag"] == "position" and p["include"][1]["position"] == ["left of", 0]
    assert judge_prompt(p, [obj("circle", "red", 10, 30), obj("square", "blue", 50, 30)])
    assert not judge_prompt(p, [obj("circle", "red", 50, 30), obj("square", "blue", 10, 30)])
    # a second (blue) circle on the wrong side: strict worst case over detector rankings fails it
    ok, reasons = explain_prompt(
        p, [obj("circle", "red", 10, 30), obj("square", "blue", 30, 30), obj("circle", "blue", 50, 30)]
    )
    assert not ok and reasons
    counting = parse_prompt("three squares")
    three = [obj("square", "red", 10 + 18 * k, 30) for k in range(3)]
    assert judge_prompt(counting, three)
    assert not judge_prompt(counting, three[:2])
    assert not judge_prompt(counting, three + [obj("square", "green", 30, 55)])
    assert judge_prompt(counting, three + [DetectedObject("unknown", "red", (0, 50, 10, 60), (5, 55), 100)])
    same = parse_prompt("a red circle and a blue circle")
    assert judge_prompt(same, [obj("circle", "red", 10, 30), obj("circle", "blue", 50, 30)])
    assert not judge_prompt(same, [obj("circle", "red", 10, 30), obj("circle", "red", 50, 30)])


def test_score_generation_and_tables():
    g = gen(8)
    prompts = sample_eval_prompts(60, g)
    assert Counter(p["tag"] for p in prompts) == dict.fromkeys(TAGS, 10)
    assert any(p["held_out"] for p in prompts)
    images = [render(scene_for_prompt(p, g, allow_held_out=True)) for p in prompts]
    scores = score_generation(prompts, images)
    assert scores["overall"] == 1.0 and scores["held_out"] == 1.0 and scores["seen"] == 1.0
    blank = [Image.new("RGB", (64, 64), CONFIG.background)] * len(prompts)
    assert score_generation(prompts, blank)["overall"] == 0.0
    table = format_tables(scores)
    assert "color_attr" in table and "held-out" in table


# ---- prompts ------------------------------------------------------------------------------------------------


def test_parse_prompt_round_trips():
    g = gen(9)
    prompts = [sample_prompt(g) for _ in range(300)] + sample_eval_prompts(120, g)
    for p in prompts:
        assert parse_prompt(p["prompt"]) == p
    assert {p["tag"] for p in prompts} == set(TAGS)
    variants = {
        "A photo of a red circle left of a blue square.": "a red circle to the left of a blue square",
        "an orange   triangle": "an orange triangle",
        "a orange triangle": "an orange triangle",
        "3 squares": "three squares",
        "a square above a circle": "a square above a circle",
    }
    for text, canonical in variants.items():
        a, b = parse_prompt(text), parse_prompt(canonical)
        assert {k: v for k, v in a.items() if k != "prompt"} == {k: v for k, v in b.items() if k != "prompt"}
    for bad in ("a red star", "a circle and a circle", "a red circle and a red circle", "one circle", "circles", ""):
        with pytest.raises(ValueError, match="not in the shapes-world grammar"):
            parse_prompt(bad)
    assert parse_prompt("a blue triangle")["held_out"] and not parse_prompt("a blue square")["held_out"]


def test_scene_for_prompt_rules():
    g = gen(10)
    with pytest.raises(ValueError, match="held-out"):
        scene_for_prompt(parse_prompt("a blue triangle"), g)
    assert scene_for_prompt(parse_prompt("a blue triangle"), g, allow_held_out=True).pairs == [("blue", "triangle")]
    for _ in range(200):  # uncoloured objects never get a held-out colour
        scene = scene_for_prompt(parse_prompt("four triangles"), g)
        assert scene.count(shape="triangle") == 4 and ("blue", "triangle") not in scene.pairs


def test_describe_and_captions():
    scene = Scene(
        (
            WorldObject("square", "blue", (40, 10, 54, 24)),
            WorldObject("circle", "red", (5, 30, 19, 44)),
            WorldObject("triangle", "orange", (22, 40, 36, 54)),
        ),
        64,
    )
    assert describe_scene(scene) == "a red circle, an orange triangle and a blue square"
    assert sorted(parse_description(describe_scene(scene))) == sorted(scene.pairs)
    g = gen(11)
    tags = Counter()
    for _ in range(200):
        scene = sample_scene(g)
        caption = caption_scene(scene, g)
        meta = parse_prompt(caption)
        tags[meta["tag"]] += 1
        assert judge_prompt(meta, scene.objects), (caption, scene)
    assert set(tags) == set(TAGS)


# ---- questions and answers ----------------------------------------------------------------------------------


def _check_answer(scene: Scene, q: dict) -> None:
    if q["type"] == "existence":
        color, shape = parse_color(q["question"]), next(s for s in CONFIG.shapes if s in q["question"])
        assert q["answer"] == ("Yes" if scene.count(shape, color) else "No")
    elif q["type"] == "counting":
        shape = next((s for s in CONFIG.shapes if s in q["question"]), None)
        assert int(q["answer"]) == scene.count(shape=shape)
    elif q["type"] == "color":
        shape = next(s for s in CONFIG.shapes if s in q["question"])
        assert scene.count(shape=shape) == 1 and scene.count(shape, q["answer"].lower()) == 1
    elif q["type"] == "position":
        a, rel, b = re.fullmatch(r"Is the (\w+ \w+) (.+) the (\w+ \w+)\?", q["question"]).groups()
        (obj_a,), (obj_b,) = ([o for o in scene.objects if f"{o.color} {o.shape}" == name] for name in (a, b))
        rels = relation(obj_a, obj_b)
        assert len(rels) == 1  # unambiguous
        assert (rel.removeprefix("to the ") in rels) == (q["answer"] == "Yes")
    else:
        assert q["answer"] == describe_scene(scene)


def test_questions_are_true_and_balanced():
    g = gen(12)
    for _ in range(100):
        scene = sample_scene(g)
        for q in sample_questions(scene, g, num_per_split=2):
            _check_answer(scene, q)
    items = sample_eval_questions(140, g)
    for scene, q in items:
        _check_answer(scene, q)
    kinds = Counter((q["type"], q.get("split")) for _, q in items)
    assert len(kinds) == 7 and set(kinds.values()) == {20}
    for split in POPE_SPLITS:
        answers = Counter(q["answer"] for _, q in items if q.get("split") == split)
        assert answers == {"Yes": 10, "No": 10}
    assert Counter(q["answer"] for _, q in items if q["type"] == "position") == {"Yes": 10, "No": 10}


def test_bare_shape_questions_are_true_balanced_and_leave_the_rest_unchanged():
    from harmon.world.data import shapes_record
    from harmon.world.questions import sample_shape_existence_items

    g = gen(21)
    seen = Counter()
    for _ in range(100):
        scene = sample_scene(g)
        state = g.get_state()
        plain = sample_questions(scene, g)
        g.set_state(state)
        both = sample_questions(scene, g, shape_questions=True)
        assert both[: len(plain)] == plain  # drawn last: the other questions do not move
        extra = both[len(plain) :]
        assert 1 <= len(extra) <= 2 and all(q["split"] == "shape" and "color" not in q for q in extra)
        for q in extra:
            assert parse_color(q["question"]) is None
            _check_answer(scene, q)
            seen[q["answer"]] += 1
    assert seen["Yes"] == 100 and seen["No"] >= 50
    texts = [t["content"] for i in range(40) for t in shapes_record("qa", i)["conversation"]]
    assert not any(re.fullmatch(r"(<image>\n)?Is there an? (circle|square|triangle) in the image\?", t) for t in texts)
    texts = [t["content"] for i in range(40) for t in shapes_record("qa", i, shape_questions=True)["conversation"]]
    assert any(re.fullmatch(r"(<image>\n)?Is there an? (circle|square|triangle) in the image\?", t) for t in texts)
    items = sample_shape_existence_items(40, gen(22))
    assert [q["answer"] for _, q in items] == ["Yes", "No"] * 20
    for scene, q in items:
        _check_answer(scene, q)
    assert items == sample_shape_existence_items(40, gen(22))
    one_shape = WorldConfig(shapes=("circle",), held_out=(), shape_weights=(1.0,))  # no shape is ever absent
    with pytest.raises(RuntimeError, match="no scene in 5 draws lacks a shape"):
        sample_shape_existence_items(2, gen(23), one_shape, max_scene_attempts=5)


def test_pope_all_row_counts_only_the_pope_splits():
    from harmon.world.questions import existence_question, shape_existence_question

    items = [
        existence_question(("red", "circle"), True, "random"),
        shape_existence_question("square", False),
        shape_existence_question("circle", True),
    ]
    s = score_answers(items, ["Yes", "Yes", "Yes"])
    assert s["pope"]["all"]["count"] == 1 and s["pope"]["all"]["accuracy"] == 1.0
    assert s["pope"]["shape"]["count"] == 2 and s["pope"]["shape"]["accuracy"] == 0.5


def test_pope_negative_rules():
    stats = pair_statistics(CONFIG)
    freq = dict(zip(stats.pairs, stats.frequency))
    g = gen(13)
    shares = 0
    for _ in range(200):
        scene = sample_scene(g)
        present = set(scene.pairs)
        pop = negative_pairs(scene, g, CONFIG, "popular", 3)
        absent = [p for p in stats.pairs if p not in present]
        assert [freq[p] for p in pop] == sorted((freq[p] for p in absent), reverse=True)[:3]
        adv = negative_pairs(scene, g, CONFIG, "adversarial", 1)[0]
        assert adv not in present
        shares += any(adv[0] == c or adv[1] == s for c, s in present)
        assert not set(negative_pairs(scene, g, CONFIG, "random", 5)) & present
    assert shares / 200 >= 0.95  # adversarial negatives are near misses (shared colour or shape)


def test_score_answers():
    items = sample_eval_questions(140, gen(14))
    gold = [q["answer"] for _, q in items]
    s = score_answers(items, gold)
    assert s["overall"] == 1.0
    for split in POPE_SPLITS:
        assert s["pope"][split]["accuracy"] == 1.0 and s["pope"][split]["f1"] == 1.0
        assert s["pope"][split]["yes_ratio"] == 0.5
    yes = score_answers(items, ["Yes"] * len(items))
    for split in (*POPE_SPLITS, "all"):
        m = yes["pope"][split]
        assert m["yes_ratio"] == 1.0 and m["precision"] == 0.5 and m["recall"] == 1.0
        assert abs(m["f1"] - 2 / 3) < 1e-9 and m["accuracy"] == 0.5
    words = ["zero", "one", "two", "three", "four"]
    verbose = [
        f"There are {words[int(a)]}."
        if q["type"] == "counting"
        else f"The square is {a.lower()}."
        if q["type"] == "color"
        else f"{a}, it is."
        if a in ("Yes", "No")
        else f"I see {a}."
        for (_, q), a in zip(items, gold)
    ]
    assert score_answers(items, verbose)["overall"] == 1.0
    text = format_tables([s, yes])
    assert "adversarial" in text and "yes %" in text


def test_answer_parsers():
    assert pope_answer("No, there is not.") == "no"
    assert pope_answer("Yes.") == "yes"
    assert pope_answer("There is no circle.") == "no"
    assert pope_answer("I think so") == "yes"
    assert pope_answer("NOT really") == "no"
    assert pope_answer("Yes. There is no other circle.") == "yes"  # only the first sentence counts
    assert pope_answer("Nothing to say, nonetheless") == "yes"  # whole words only
    assert parse_count("There are 3 circles") == 3
    assert parse_count("two, maybe 3") == 2
    assert parse_count("None.") == 0
    assert parse_count("many") is None
    assert parse_color("It is Orange.") == "orange"
    assert parse_color("reddish") is None
    assert parse_description("two red circles and a blue square") == [("red", "circle")] * 2 + [("blue", "square")]


def test_text2image_tag_weights_shift_the_prompt_mix():
    from harmon.world.data import DESCRIBE_FRACTION, shapes_record, tag_probabilities

    def tag_of(caption):
        try:
            return parse_prompt(caption)["tag"]
        except ValueError:  # a whole-scene description outside the prompt grammar
            return "scene"

    def tags(weights, n=400):
        return Counter(tag_of(shapes_record("text2image", i, seed=3, tag_weights=weights)["caption"]) for i in range(n))

    only = tags({"position": 1.0})
    # prompt-style captions are all position prompts except the whole-scene share, whose true captions may be any tag
    assert only["position"] > 0.6 * 400
    assert sum(v for k, v in only.items() if k != "position") < (DESCRIBE_FRACTION + 0.06) * 400
    skewed, uniform = tags({"position": 4.0, "single_object": 1.0}), tags(None)
    assert skewed["position"] > 2.5 * skewed["single_object"]
    assert uniform["position"] < 1.6 * uniform["single_object"]  # the default mix stays uniform over the tags
    # same (seed, index, weights) -> same record
    a = shapes_record("text2image", 7, seed=3, tag_weights={"color_attr": 1})
    b = shapes_record("text2image", 7, seed=3, tag_weights={"color_attr": 1})
    assert a["caption"] == b["caption"] and a["image"].tobytes() == b["image"].tobytes()
    assert tag_probabilities({"colors": 1, "counting": 3})[TAGS.index("counting")] == pytest.approx(0.75)
    for bad in ({"positions": 1.0}, {"position": -1.0}, {"position": 0.0}, {"position": float("nan")}):
        with pytest.raises(ValueError, match="tag"):
            tag_probabilities(bad)
