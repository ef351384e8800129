"""Grounding questions of the grid world ("Where is the red circle?", "What is in the top left?"): answers exact
from the scene, asked only where unambiguous, and a training source of their own."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch

from harmon.data.tasks import Task
from harmon.train.config import SourceConfig
from harmon.train.formats import format_options
from harmon.world.data import shapes_record
from harmon.world.detection import detect_objects
from harmon.world.questions import PLACES, place_of, where_questions
from harmon.world.recipes import RECIPES
from harmon.world.recipes_studies import STUDY_RECIPES
from harmon.world.render import render
from harmon.world.sampling import sample_scene
from harmon.world.scene import Scene, WorldConfig, WorldObject
from harmon.world.sources import ShapesOptions


def test_answers_read_back_from_the_rendered_scene():
    """Each answer, checked against the scorer's own detections of the rendered image (not the scene's records)."""
    config, g = WorldConfig(), torch.Generator().manual_seed(11)
    asked = {"where": 0, "what": 0, "nothing": 0}
    for _ in range(60):
        scene = sample_scene(g, config)
        found = detect_objects(render(scene, config), config)
        by_place: dict[str, list] = {p: [] for p in PLACES}
        for d in found:
            x, y = d.center
            by_place[f"{'top' if y < 32 else 'bottom'} {'left' if x < 32 else 'right'}"].append(d)
        for q in where_questions(scene):
            assert q["type"] == "where"
            if q["question"].startswith("Where is the "):
                colour, shape = q["question"][len("Where is the ") : -1].split()
                hits = [p for p, ds in by_place.items() for d in ds if (d.color, d.shape) == (colour, shape)]
                assert hits == [q["answer"].lower()], q
                asked["where"] += 1
            else:
                place = q["question"][len("What is in the ") : -1]
                held = by_place[place]
                if q["answer"] == "Nothing":
                    assert held == [], q
                    asked["nothing"] += 1
                else:
                    assert len(held) == 1 and q["answer"].lower() in (
                        f"a {held[0].color} {held[0].shape}",
                        f"an {held[0].color} {held[0].shape}",
                    ), q
                    asked["what"] += 1
    assert min(asked.values()) > 20, asked


def test_ambiguous_objects_and_places_are_never_asked():
    twins = Scene(
        objects=(
            WorldObject("circle", "red", (4, 4, 28, 28)),
            WorldObject("circle", "red", (36, 36, 60, 60)),
            WorldObject("square", "blue", (36, 4, 60, 28)),
        ),
        image_size=64,
    )
    texts = {q["question"]: q["answer"] for q in where_questions(twins)}
    assert "Where is the red circle?" not in texts and texts["Where is the blue square?"] == "Top right"
    assert texts["What is in the bottom left?"] == "Nothing" and texts["What is in the top left?"] == "A red circle"
    # an object astride a middle line has no place: no question names it, and no quadrant is asked about
    astride = dataclasses.replace(twins, objects=(WorldObject("square", "green", (20, 10, 44, 30)),))
    assert place_of(astride.objects[0], 64) is None and where_questions(astride) == []


def test_where_records_and_their_source():
    r = shapes_record("where", 3, seed=5)
    assert r == shapes_record("where", 3, seed=5) and r["kind"] == "image2text"
    turns = r["conversation"]
    assert turns[0]["content"].startswith("<image>\n") and len(turns) % 2 == 0 and len(turns) <= 12
    src = SourceConfig("w", "shapes", task=Task.IMAGE_TO_TEXT, format_options={"kind": "where"})
    format_options(src).validate(src)
    for bad in ({"kind": "where", "level": "free", "phrasings": "varied"}, {"kind": "where", "phrasings": "varied"}):
        src = SourceConfig("w", "shapes", task=Task.IMAGE_TO_TEXT, format_options=bad)
        with pytest.raises(ValueError, match="kind 'where'"):
            ShapesOptions(**bad).validate(src)


def test_shapes_where_is_the_phrasing_mix_plus_grounding_from_the_shipped_model():
    base, study = RECIPES["shapes_phrasing"](), STUDY_RECIPES["shapes_where"]()
    assert study.data[: len(base.data)] == base.data and study.output_dir.endswith("/where")
    assert [(s.name, s.batch_size, format_options(s).kind) for s in study.data[len(base.data) :]] == [
        ("image2text_where", 8, "where")
    ]
    assert study.model.pretrained.endswith("phrasing/final") and study.max_steps == 1500


def test_grounding_scores_right_and_wrong_answers_and_normalises_only_form(monkeypatch):
    from harmon.world.analyses import grounding

    assert grounding.normalised(" An orange circle. ") == "orange circle" == grounding.normalised("orange circle")
    assert grounding.normalised("Top left") == "top left" != grounding.normalised("top right")
    gold: list[str] = []  # every question's gold answer, in the order the study asks them
    where, position = grounding.where_questions, grounding.position_question

    def recorded(fn):
        def wrapped(*args):
            out = fn(*args)
            gold.extend(q["answer"] for q in (out if isinstance(out, list) else [out] if out else []))
            return out

        return wrapped

    monkeypatch.setattr(grounding, "where_questions", recorded(where))
    monkeypatch.setattr(grounding, "position_question", recorded(position))
    monkeypatch.setattr(grounding, "reasoned", recorded(grounding.reasoned))

    class Pipe:
        def __init__(self, answer):
            self.answer = answer

        def describe_many(self, images, questions, **settings):
            assert len(images) == len(questions) == len(gold)
            return [self.answer(i, g) for i, g in enumerate(gold)]

    right = grounding.grounding_scores(Pipe(lambda i, g: g.lower() + "."), 20, seed=3)
    gold.clear()

    def wrong_answer(i, g):  # yes for no and back; a places-first answer keeps its places, flips its verdict
        if g in ("Yes", "No"):
            return "No" if g == "Yes" else "Yes"
        if g.endswith((": yes", ": no")):
            head, verdict = g.rsplit(": ", 1)
            return f"{head}: {'no' if verdict == 'yes' else 'yes'}"
        return "Purple"

    wrong = grounding.grounding_scores(Pipe(wrong_answer), 20, seed=3)
    for kind in grounding.KINDS:
        assert right["kinds"][kind]["accuracy"] == 1.0 and wrong["kinds"][kind]["accuracy"] == 0.0, kind
        assert right["kinds"][kind]["n"] > 5
    assert "| where is | 100.0% |" in grounding.format_grounding(right)


def test_reasoned_position_answers_state_both_places_then_the_verdict():
    from harmon.eval.metrics import pope_answer
    from harmon.world.questions import position_question, reasoned

    g = torch.Generator().manual_seed(2)
    seen = Counter()
    for _ in range(40):
        scene = sample_scene(g, WorldConfig())
        q = position_question(scene, g)
        if q is None:
            continue
        r = reasoned(q, scene)
        assert r["question"] == q["question"] + " Say where each is first."
        head, verdict = r["answer"].rsplit(": ", 1)
        assert verdict == q["answer"].lower() == pope_answer(r["answer"])
        a, b = head.split(", the ")
        for said in (a.removeprefix("The "), b):
            colour, shape, _, *place = said.split()
            obj = next(o for o in scene.objects if (o.color, o.shape) == (colour, shape))
            assert " ".join(place) == place_of(obj, 64)
        seen[verdict] += 1
    assert min(seen.values()) > 5
    with pytest.raises(ValueError, match="not a position question"):
        reasoned({"question": "How many circles are there?", "answer": "2", "type": "counting"}, scene)
    with pytest.raises(ValueError, match="no scene of this world config held a position question"):
        shapes_record("reasoned", 0, config=WorldConfig(max_objects=1))
    record = shapes_record("reasoned", 0)["conversation"]
    assert record[0]["content"].endswith("Say where each is first.") and record[1]["content"].endswith(("yes", "no"))
