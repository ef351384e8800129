"""Edits in the shapes world: the sampler's targets, the phrasing splits, the exact scorer on ground truth, the edit
records of the "shapes" format, and ``harmon eval shapes-edit``."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from data_helpers import take
from helpers import tiny_tokenizer

from harmon import cli
from harmon.config import harmon_tiny
from harmon.data import Task
from harmon.train.config import SourceConfig, TrainConfig
from harmon.train.sources import build_mixture
from harmon.world.data2 import edit_record_v2, texts_v2
from harmon.world.detect2 import detect_objects_v2
from harmon.world.edit_grammar import EDIT_TYPES, PLACES, is_held_out_edit_phrasing
from harmon.world.edit_scoring import score_edit
from harmon.world.edits import box_in_place, in_place, place_margin_px, place_offset, sample_edit
from harmon.world.evaluate_edits import evaluate_edits, target_edit_fn
from harmon.world.free import level_world
from harmon.world.grammar import is_held_out_phrasing
from harmon.world.render import render
from harmon.world.render2 import render2
from harmon.world.scene import Scene, WorldObject, check_scene


def _edits(level: str, split: str, per_type: int, seed: int = 0):
    g, world = torch.Generator().manual_seed(seed), level_world(level)
    return world, [sample_edit(g, world, t, split) for t in EDIT_TYPES for _ in range(per_type)]


@pytest.mark.parametrize("level", ["free", "grid"])
def test_targets_change_only_what_the_instruction_names(level):
    for split in ("seen", "held_out"):
        world, edits = _edits(level, split, 12, seed=len(split))
        for e in edits:
            check_scene(e.source, world), check_scene(e.target, world)
            assert e.target.background == e.source.background
            assert not any(world.is_held_out(*o.pair) for o in e.source.objects + e.target.objects)
            kept_src = [o for i, o in enumerate(e.source.objects) if i not in e.source_index]
            kept_tgt = [o for i, o in enumerate(e.target.objects) if i not in e.target_index]
            assert kept_src == kept_tgt, e  # every other object identical: colour, shape, box
            for i in e.source_index:  # named objects are the only ones of their colour and shape
                assert e.source.pairs.count(e.source.objects[i].pair) == 1
            if e.edit_type in ("add", "move"):
                new = e.target.objects[e.target_index[0]]
                assert place_offset(e.place, new.center, 64) >= place_margin_px(64)
            if e.edit_type == "move":
                old = e.source.objects[e.source_index[0]]
                assert place_offset(e.place, old.center, 64) <= -place_margin_px(64)
                assert (old.color, old.shape, old.width) == (new.color, new.shape, new.width)
            # the phrasing splits: held-out texts are recognised, seen ones are not (nor by the grammar's recogniser)
            assert is_held_out_edit_phrasing(e.instruction) == (split == "held_out"), e.instruction
            assert split == "held_out" or not is_held_out_phrasing(e.instruction), e.instruction


def test_places_are_open_regions_of_the_centre():
    assert in_place("top left", (31.5, 10), 64) and not in_place("top left", (32, 10), 64)
    assert in_place("bottom", (5, 40), 64) and not in_place("right", (20, 40), 64)
    assert in_place("center", (36, 28), 64) and not in_place("center", (41, 32), 64)
    with pytest.raises(ValueError, match="unknown edit type"):
        sample_edit(torch.Generator(), level_world("free"), "rotate")


@pytest.mark.parametrize("level, per_type", [("free", 15), ("grid", 5)])
def test_rendered_targets_score_right_and_sources_score_undone(level, per_type):
    """Ground truth of both renderers: the target does the edit and keeps the rest; the untouched source keeps
    everything and does not do the edit."""
    for split in ("seen", "held_out"):
        world, edits = _edits(level, split, per_type, seed=11)
        for e in edits:
            for draw in (render, render2):
                done = score_edit(e, detect_objects_v2(draw(e.target, world), world))
                undone = score_edit(e, detect_objects_v2(draw(e.source, world), world))
                assert done.edit_ok and done.preserved, (e, draw)
                assert not undone.edit_ok and undone.preserved, (e, draw)


def test_scorer_catches_extra_changed_and_leftover_objects():
    world, edits = _edits("free", "seen", 6, seed=3)
    for e in edits:
        kept = [i for i in range(len(e.target.objects)) if i not in e.target_index]
        if not kept:
            continue
        objs = list(e.target.objects)
        k = kept[0]
        changed = dataclasses.replace(objs[k], color="red" if objs[k].color != "red" else "blue")
        wrong = Scene(tuple(objs[:k] + [changed] + objs[k + 1 :]), 64, e.target.background)
        verdict = score_edit(e, detect_objects_v2(render(wrong, world), world))
        assert verdict.edit_ok and not verdict.preserved, e
    move = next(e for e in edits if e.edit_type == "move")  # moved, but a copy stayed behind: not moved
    both = Scene(move.target.objects + (move.source.objects[move.source_index[0]],), 64, move.target.background)
    assert not score_edit(move, detect_objects_v2(render(both, world), world)).edit_ok
    g = torch.Generator().manual_seed(0)
    for e in edits:  # the edit done, and one more object away from all others: not preserved
        boxes = [box_in_place(g, world, p, 12, list(e.source.objects + e.target.objects)) for p in PLACES]
        box = next((b for b in boxes if b is not None), None)
        if box is None:
            continue
        color, shape = next(p for p in world.pairs() if p not in e.source.pairs + e.target.pairs)
        extra = Scene(e.target.objects + (WorldObject(shape, color, box),), 64, e.target.background)
        verdict = score_edit(e, detect_objects_v2(render(extra, world), world))
        assert verdict.edit_ok and not verdict.preserved, e


def test_evaluation_path_scores_rendered_targets_exactly():
    world = level_world("free")
    for antialiased in (False, True):
        result = evaluate_edits(target_edit_fn(world, antialiased), 64, n=3, seed=5)
        for split in ("seen", "held_out"):
            overall = result["splits"][split]["overall"]
            assert overall["count"] == 18 and overall["edit_ok"] == overall["preserved"] == overall["correct"] == 1.0


def _edit_source(**options) -> SourceConfig:
    options = {"level": "free", "phrasings": "varied", **options}
    task = Task.IMAGE_EDIT
    return SourceConfig("edits", "shapes", task=task, batch_size=2, cond_image_size=32, format_options=options)


def test_edit_records_build_a_training_batch():
    record = edit_record_v2(4, seed=2, level="mixed", antialiased=0.5, edit_weights={"move": 1, "add": 0})
    assert set(record) == {"kind", "source", "instruction", "target"} and record["kind"] == "image_edit"
    assert record["source"].size == record["target"].size == (64, 64) and record["source"] != record["target"]
    assert record["instruction"].startswith(("move", "put", "shift", "place"))
    texts = [t for i in range(60) for t in texts_v2(edit_record_v2(i, seed=1, level="mixed"))]
    assert not [t for t in texts if is_held_out_edit_phrasing(t) or is_held_out_phrasing(t)]
    cfg = TrainConfig(name="t", output_dir="unused", seed=1, image_size=64, data=[_edit_source()])
    tok = tiny_tokenizer()
    model_config = harmon_tiny(vocab_size=len(tok))
    batch = take(build_mixture(cfg, tok, model_config), 1)[0]["edits"]
    assert batch["pixels"].shape == (2, 3, 64, 64) and batch["cond_pixels"].shape == (2, 3, 32, 32)
    for options, match in (
        ({"phrasings": "canonical", "level": "grid"}, "no canonical phrasing"),
        ({"edit_weights": {"rotate": 1}}, "unknown edit type"),
        ({"edit_weights": {"move": 0}}, "not all 0"),
    ):
        with pytest.raises(ValueError, match=match):
            _edit_source(**options).validate()
    qa = SourceConfig("qa", "shapes", task=Task.IMAGE_TO_TEXT, format_options={"edit_weights": {"move": 1}})
    with pytest.raises(ValueError, match="edit_weights applies to image_edit sources only"):
        qa.validate()


def test_eval_shapes_edit_runs_on_the_shipped_model(tmp_path, capsys):
    out = tmp_path / "edits.json"
    flags = ["--edits", "1", "--route", "direct", "--num-iter", "2", "--diffusion-steps", "2", "--json", str(out)]
    assert cli.main(["eval", "shapes-edit", *flags]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(EDIT_TYPES) + 1 and "held-out phrasing: edit ok" in rows[0]
    result = json.loads(out.read_text())
    for split in ("seen", "held_out"):
        types = result["splits"][split]["types"]
        assert list(types) == list(EDIT_TYPES) and all(t["count"] == 1 for t in types.values())
        rates = [r[m] for r in [*types.values(), result["splits"][split]["overall"]] for m in ("edit_ok", "preserved")]
        assert all(0.0 <= r <= 1.0 for r in rates)
    assert cli.main(["eval", "shapes-edit", "--edits", "0"]) == 2
    layout = ["eval", "shapes-edit", "--edits", "1", "--level", "grid", "--phrasing", "seen", "--diffusion-steps", "2"]
    assert cli.main(layout) == 0  # the shipped model's own route (the default where a model records it)
    assert cli.main([*layout, "--num-iter", "2"]) == 2  # a setting the layout route does not take, refused
