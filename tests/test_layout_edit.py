"""The layout route of ``pipe.edit`` (:mod:`harmon.layout_edit`): layouts parsed and compared, the places that
changed redrawn and every other place kept as the source's token exactly, SDEdit's start in the diffusion chain,
bad settings refused by name; and the world's records that teach the route's two text steps."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import tiny_pipeline

from harmon import layout_edit
from harmon.config import GenerationDefaults
from harmon.diffloss import DiffLoss, DiffLossConfig
from harmon.layout_edit import NAMED_MARK, LayoutError, edit_from_answers, layout_changes, parse_layout
from harmon.pipeline import HarmonPipeline
from harmon.shipped import shipped_model_path
from harmon.world.data import shapes_record
from harmon.world.edit_grammar import EDIT_TYPES, is_held_out_edit_phrasing
from harmon.world.edits import sample_edit
from harmon.world.free import level_world
from harmon.world.layout_edits import (
    EDIT_LAYOUT_REQUEST,
    HALVES,
    LAYOUT_REQUEST,
    layout_answer,
    layout_changes_answer,
)
from harmon.world.planning import placed_description
from harmon.world.questions import PLACES

REQUESTS = {"layout_request": LAYOUT_REQUEST, "edit_layout_request": EDIT_LAYOUT_REQUEST}


def test_layouts_parse_into_places_and_refuse_what_is_not_one():
    text = "a red circle in the top left and a blue square in the bottom right"
    assert parse_layout(text, PLACES) == {"top left": "a red circle", "bottom right": "a blue square"}
    assert parse_layout("nothing", PLACES) == {} and parse_layout("", PLACES) == {}
    assert parse_layout("a red circle somewhere", PLACES) is None
    assert parse_layout("a red circle in the top left, a disc in the top left", PLACES) is None
    assert parse_layout("nothing in the top left and a disc in the top right", PLACES) == {
        "top left": "nothing",
        "top right": "a disc",
    }


def test_the_rewrites_changes_make_the_layout_after():
    before = "a blue square in the bottom right and a red circle in the top left"
    moved = edit_from_answers(before, "nothing in the top left and a red circle in the top right", PLACES)
    assert moved.before == "a red circle in the top left and a blue square in the bottom right"  # places' order
    assert moved.after == "a red circle in the top right and a blue square in the bottom right"
    assert moved.changed == (0, 1) and moved.seeds == {1: 0}
    emptied = edit_from_answers("a red circle in the top left", "nothing in the top left", PLACES)
    assert emptied.after == "nothing" and emptied.changed == (0,) and emptied.seeds == {}
    unchanged = edit_from_answers(before, "a red circle in the top left", PLACES)
    assert unchanged.changed == () and unchanged.after == unchanged.before
    with pytest.raises(LayoutError, match="rewritten layout is not a layout"):
        edit_from_answers(before, "a green circle at the top", PLACES)
    with pytest.raises(LayoutError, match="states an empty place"):
        edit_from_answers("nothing in the top left", "a disc in the top left", PLACES)


@pytest.mark.parametrize(
    ("before", "after", "changed", "seeds"),
    [
        ({"top left": "a red circle"}, {"top left": "a blue circle"}, (0,), {0: 0}),  # recolour: seeded in place
        ({"top left": "a red circle"}, {"bottom right": "a red circle"}, (0, 3), {3: 0}),  # move: from where it was
        ({"top left": "a red circle"}, {"top left": "a red circle", "top right": "a disc"}, (1,), {}),  # add: noise
        ({"top left": "a red circle", "top right": "a disc"}, {"top left": "a red circle"}, (1,), {}),  # remove
        (
            {"top left": "a red circle", "top right": "a blue square"},
            {"top left": "a blue circle", "top right": "a red square"},
            (0, 1),
            {0: 0, 1: 1},
        ),  # swap
    ],
)
def test_changed_places_and_their_seeds(before, after, changed, seeds):
    assert layout_changes(before, after, PLACES) == (changed, seeds)


def test_the_chain_starts_where_sdedit_says_and_the_plain_sampler_is_unchanged():
    head = DiffLoss(DiffLossConfig(target_channels=4, z_channels=8, width=16, depth=1))
    head.initialize_weights(torch.Generator().manual_seed(0))
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    diffusion = head.sampling_diffusion("10")
    calls = []

    def counting(x, t):
        calls.append(int(t[0]))
        return head.net(x, t, z)

    noise = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    diffusion.p_sample_loop(counting, noise, generator=torch.Generator().manual_seed(3), start=3)
    assert len(calls) == 4  # chain indices 3, 2, 1, 0
    with pytest.raises(ValueError, match="start must be an integer in \\[0, 9\\]"):
        diffusion.p_sample_loop(counting, noise, start=10)
    plain = head.sample(z, generator=torch.Generator().manual_seed(4), num_steps="10")
    again = head.sample(z, generator=torch.Generator().manual_seed(4), num_steps="10", strength=1.0)
    assert torch.equal(plain, again)
    init = torch.zeros(3, 4)
    seeded = head.sample(z, generator=torch.Generator().manual_seed(4), num_steps="10", init=init, strength=0.3)
    assert seeded.shape == plain.shape and not torch.equal(seeded, plain)
    with pytest.raises(ValueError, match="strength must be in"):
        head.sample(z, num_steps="10", init=init, strength=0.0)
    with pytest.raises(ValueError, match="one token per sampled row"):
        head.sample(z, num_steps="10", init=torch.zeros(2, 4))


@pytest.fixture(scope="module")
def layout_pipe() -> HarmonPipeline:
    pipe = HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu")
    if pipe.config.generation.edit_layout_request is None:  # a model shipped before the route: give it the requests
        config = pipe.config.replace(generation=replace(pipe.config.generation, **REQUESTS))
        pipe.model.config = pipe.config = config
    return pipe


def _source(pipe):
    world = level_world("grid", pipe.config.generation.image_size)
    from harmon.world.render import render
    from harmon.world.scene import Scene, WorldObject

    objects = (WorldObject("circle", "red", (4, 4, 28, 28)), WorldObject("square", "blue", (36, 36, 60, 60)))
    return render(Scene(objects, world.image_size), world)


def test_the_route_redraws_only_the_changed_places(layout_pipe, monkeypatch):
    pipe = layout_pipe
    before = "a red circle in the top left and a blue square in the bottom right"
    monkeypatch.setattr(layout_edit, "read_and_rewrite", lambda *_: (before, "a green circle in the top left"))
    image = _source(pipe)
    size = pipe.config.generation.image_size
    source = layout_edit.source_tokens(pipe, image, size)  # (1, 4, C)
    out = pipe.edit(
        image, "make the red circle green", generator=torch.Generator().manual_seed(0), output_type="latent"
    )
    tokens = out.flatten(2).transpose(1, 2)  # (1, 4, C) in raster order
    assert torch.equal(tokens[0, 1:], source[0, 1:].to(tokens.dtype))  # kept exactly
    assert not torch.equal(tokens[0, 0], source[0, 0].to(tokens.dtype))  # redrawn
    again = pipe.edit(image, "x", generator=torch.Generator().manual_seed(0), output_type="latent")
    assert torch.equal(out, again)  # seeded: reproducible


def test_checks_keep_the_draw_read_as_planned_that_changes_least(layout_pipe, monkeypatch):
    pipe = layout_pipe
    before = "a red circle in the top left and a blue square in the bottom right"
    monkeypatch.setattr(layout_edit, "read_and_rewrite", lambda *_: (before, "a green circle in the top left"))
    draws, reads = [], []
    redraw = layout_edit.redraw

    def recorded(*args):
        draws.append(redraw(*args))
        return draws[-1]

    def read_back(answers):
        def read(pipe, image):
            reads.append(image)
            return answers[len(reads) - 1]

        return read

    def edit(checks=None):
        draws.clear(), reads.clear()
        g = torch.Generator().manual_seed(0)
        return pipe.edit(_source(pipe), "x", checks=checks, generator=g, output_type="latent").flatten(2).mT

    monkeypatch.setattr(layout_edit, "redraw", recorded)
    planned = "a green circle in the top left and a blue square in the bottom right"
    wrong = "a red circle in the top left and a blue square in the bottom right"  # one place of four off
    worse = "a red circle in the top left"  # two off
    monkeypatch.setattr(layout_edit, "read_layout", read_back([worse, planned, wrong]))
    assert torch.equal(edit(checks=3), draws[1]) and len(draws) == len(reads) == 3  # the one read as planned
    monkeypatch.setattr(layout_edit, "read_layout", read_back([worse, wrong, "not a layout"]))
    assert torch.equal(edit(checks=3), draws[1])  # none as planned: the closest
    monkeypatch.setattr(layout_edit, "read_layout", read_back([planned, wrong, planned, planned]))
    out = edit(checks=4)
    source = layout_edit.source_tokens(pipe, _source(pipe), pipe.config.generation.image_size)
    moved = [float((d[0, 0] - source[0, 0]).square().sum()) for d in draws]  # the seeded place: top left
    nearest = min((0, 2, 3), key=moved.__getitem__)
    assert torch.equal(out, draws[nearest])  # of those read as planned, the least change
    edit(checks=1)  # one draw, unread
    assert len(draws) == 1 and not reads
    monkeypatch.setattr(layout_edit, "read_layout", read_back([planned] * 8))
    edit()  # the model's own edit_checks
    assert len(draws) == len(reads) == pipe.config.generation.edit_checks


def test_bad_answers_and_settings_are_refused_by_name(layout_pipe, monkeypatch):
    pipe, image = layout_pipe, _source(layout_pipe)
    monkeypatch.setattr(layout_edit, "read_and_rewrite", lambda *_: ("a red circle in the middle", "x"))
    with pytest.raises(LayoutError, match="read layout is not a layout"):
        pipe.edit(image, "make it blue")
    with pytest.raises(ValueError, match="takes none of \\['num_iter'\\]"):
        pipe.edit(image, "make it blue", plan=True, num_iter=4)
    with pytest.raises(ValueError, match="strength applies only to the layout route"):
        pipe.edit(image, "make it blue", plan=False, strength=0.5)
    with pytest.raises(ValueError, match="strength must be in"):
        pipe.edit(image, "make it blue", strength=1.5)
    with pytest.raises(ValueError, match="checks applies only to the layout route"):
        pipe.edit(image, "make it blue", plan=False, checks=2)
    with pytest.raises(ValueError, match=r"generation\.edit_checks must be an integer in \[1, 32\]"):
        GenerationDefaults(edit_checks=0)
    plain = tiny_pipeline()
    with pytest.raises(ValueError, match="edit_layout_request is unset"):
        plain.edit(image, "make it blue", plan=True)
    with pytest.raises(ValueError, match="set together"):
        GenerationDefaults(layout_request="Describe the layout.")
    with pytest.raises(ValueError, match="needs the fields"):
        GenerationDefaults(layout_request="a", edit_layout_request="b", plan_request="p", plan_places=("x",))


def test_layout_records_teach_seen_phrasings_with_parseable_answers():
    for i in range(60):
        read = shapes_record("layout", i)["conversation"]
        assert read[0]["content"] == "<image>\n" + LAYOUT_REQUEST and parse_layout(read[1]["content"], PLACES)
        rewrite = shapes_record("layout_edit", i)
        assert rewrite["image"] is None
        request, answer = (t["content"] for t in rewrite["conversation"])
        layout, instruction = request.removeprefix("Layout: ").removesuffix(". What changes?").split(". Instruction: ")
        assert request == EDIT_LAYOUT_REQUEST.format(layout=layout, instruction=instruction)
        assert parse_layout(layout, PLACES) and parse_layout(answer, PLACES)  # the changes: at least one place
        assert not is_held_out_edit_phrasing(instruction)


def test_named_rewrites_restate_the_named_objects_and_route_the_same_changes():
    world, g = level_world("grid", 64), torch.Generator().manual_seed(1)
    seen = set()
    while len(seen) < 6:
        edit = sample_edit(g, world, EDIT_TYPES[len(seen)], "seen")
        before, plain = placed_description(edit.source), layout_changes_answer(edit)
        if before is None or plain is None:
            continue
        named = layout_changes_answer(edit, named=True)
        if edit.edit_type == "add":
            assert named == plain  # names no object of the source
        else:
            clauses, changes = named.split(NAMED_MARK)
            assert changes == plain
            stated = parse_layout(clauses, PLACES)
            assert len(stated) == len(edit.source_index)
            assert stated.items() <= parse_layout(before, PLACES).items()  # copied from the layout
        assert edit_from_answers(before, named, PLACES) == edit_from_answers(before, plain, PLACES)
        seen.add(edit.edit_type)
    record = shapes_record("layout_edit_named", 3)["conversation"]
    assert record[1]["content"].count(NAMED_MARK) <= 1 and record[0]["content"].startswith("Layout: ")


def test_an_object_sent_to_a_half_goes_to_its_first_free_quadrant():
    world, g = level_world("grid", 64), torch.Generator().manual_seed(0)
    checked = 0
    while checked < 20:
        edit = sample_edit(g, world, "add", "seen")
        if edit.place not in HALVES or layout_answer(edit) is None:
            continue
        before = parse_layout(placed_description(edit.source), PLACES)
        after = parse_layout(layout_answer(edit), PLACES)
        (added,) = set(after) - set(before)
        assert added == next(p for p in HALVES[edit.place] if p not in before)
        assert all(after[p] == before[p] for p in before)
        checked += 1
