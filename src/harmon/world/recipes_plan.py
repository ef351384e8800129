"""The plan-then-draw stages after the phrasing stage (:mod:`harmon.world.planning`; docs/RESULTS.md, "Plan, then
draw"). The shipped model's pipeline runs ``place`` then ``plan_varied``; ``plan_mix`` and ``plan_order`` made the
model shipped before it, and stay as recipes for the studies that compare with them. Each starts from the stage
before it:

    place       placed drawings (32 per step: every object with its quadrant, in reading order) beside 16 of the
                recipes' own prompts, the cells' position tables enlarged (PLACE_TABLES) and trained 30 times
                faster: the generator learns to put an object at a named quadrant
    plan_mix    the phrasing stage's whole mix with placed drawings (32) and layout plans (16 text-only: "Plan the
                layout: <prompt>" -> a placed description): the LLM learns to write a prompt's layout, and the rest
                of the model keeps what it knew
    plan_order  the same mix with placed descriptions listed in any order and plans that name the objects in the
                prompt's own order, so that a plan copies the prompt's phrases in turn instead of reordering them
                (reordered, the small LLM swapped colours between objects)
    plan_varied from ``place`` instead of the two stages above: plan_mix's mix with plans in the prompt's order,
                and as many again asked in the world grammar's seen phrasings (plans taught on the prompt templates
                alone are wrong for most reworded prompts); placed drawings stay in reading order, the order
                ``generate(..., plan=True)`` hands a plan to the drawer in (config ``plan_places``), so the writer
                copies the prompt's order and the drawer reads the order it places best from

    edit_layout from ``plan_varied``: its mix with layouts read from images ("Describe the layout.") and the
                changes edit instructions make to layouts (text only), the two text steps of ``pipe.edit``'s
                layout route (:mod:`harmon.world.layout_edits`, :mod:`harmon.layout_edit`)

Listed in any order from the start, placed drawings are not learned in the place stage's length (docs/RESULTS.md).
"""

from __future__ import annotations

import dataclasses

from harmon.train.config import ModelInit, TrainConfig
from harmon.world.recipes import ROOT
from harmon.world.recipes_studies import shapes_plan

PLACE_STEPS = 3000
PLAN_MIX_STEPS = 1500
PLAN_ORDER_STEPS = 1500
PLAN_VARIED_STEPS = 2500
PLAN_VARIED_BATCH = 16
PLAN_VARIED_SEED = 5  # records the place stage did not draw (it ran on seed 0's streams)
EDIT_LAYOUT_STEPS = 2000
EDIT_LAYOUT_SEED = 7  # records the earlier stages did not draw
EDIT_LAYOUT_BATCHES = {"image2text_layout": 24, "text_layout_edit": 24}
# Stage edit_text (and the study edit_named after it): the rewrite's records outnumber the mix's others
EDIT_TEXT_BATCHES = {"image2text_layout": 48, "text_layout_edit": 160}
EDIT_TEXT_STEPS = 1000
EDIT_TEXT_SEED = 9
EDIT_NAMED_SEED = 11
EDIT_LAYOUT_TEXT_LENGTH = 224  # the longest rewrite (a swap of two objects of a four-object layout): 179 tokens
PLACE_BATCHES = {"text2image": 16, "text2image_placed": 32}  # the place stage's sources, samples per step
ORDERS = {"text2image_placed": "any", "text_plan": "prompt"}  # plan_order's harmon.world.planning.ORDERS


def shapes_place() -> TrainConfig:
    """Stage ``place``: from the phrasing stage, placed drawings and the recipes' prompts, the tables enlarged."""
    cfg = shapes_plan()
    data = [dataclasses.replace(s, batch_size=PLACE_BATCHES[s.name]) for s in cfg.data if s.name in PLACE_BATCHES]
    return dataclasses.replace(cfg, name="shapes_place", output_dir=f"{ROOT}/place", data=data, max_steps=PLACE_STEPS)


def shapes_plan_mix() -> TrainConfig:
    """Stage ``plan_mix``: from ``place`` (its tables already enlarged), the phrasing mix with placed drawings and
    plans."""
    return dataclasses.replace(
        shapes_plan(),
        name="shapes_plan_mix",
        output_dir=f"{ROOT}/plan_mix",
        model=ModelInit(preset=None, pretrained=f"{ROOT}/place/final"),
        max_steps=PLAN_MIX_STEPS,
    )


def shapes_plan_order() -> TrainConfig:
    """Stage ``plan_order``: from ``plan_mix``, placed descriptions in any order and plans in the prompt's order."""
    cfg = shapes_plan_mix()
    data = [
        dataclasses.replace(s, format_options={**s.format_options, "order": ORDERS[s.name]}) if s.name in ORDERS else s
        for s in cfg.data
    ]
    return dataclasses.replace(
        cfg,
        name="shapes_plan_order",
        output_dir=f"{ROOT}/plan_order",
        model=ModelInit(preset=None, pretrained=f"{ROOT}/plan_mix/final"),
        data=data,
        max_steps=PLAN_ORDER_STEPS,
    )


def shapes_plan_varied() -> TrainConfig:
    """Stage ``plan_varied``: from ``place``, the ``plan_mix`` mix with its plans in the prompt's order and as many
    again asked in the grammar's seen phrasings (grid level), placed drawings in reading order."""
    cfg = shapes_plan_mix()
    data = [
        dataclasses.replace(s, format_options={**s.format_options, "order": "prompt"}) if s.name == "text_plan" else s
        for s in cfg.data
    ]
    plan = next(s for s in data if s.name == "text_plan")
    varied = dataclasses.replace(
        plan,
        name="text_plan_varied",
        batch_size=PLAN_VARIED_BATCH,
        format_options={**plan.format_options, "phrasings": "varied"},
    )
    return dataclasses.replace(
        cfg,
        name="shapes_plan_varied",
        output_dir=f"{ROOT}/plan_varied",
        data=[*data, varied],
        max_steps=PLAN_VARIED_STEPS,
        seed=PLAN_VARIED_SEED,
    )


def shapes_edit_layout() -> TrainConfig:
    """Stage ``edit_layout``: from ``plan_varied``, its mix with layouts read (image to text) and the changes edit
    instructions make to layouts (text only), grid level."""
    cfg = shapes_plan_varied()
    qa = next(s for s in cfg.data if s.name == "image2text_qa")
    plan = next(s for s in cfg.data if s.name == "text_plan")
    read = dataclasses.replace(
        qa,
        name="image2text_layout",
        batch_size=EDIT_LAYOUT_BATCHES["image2text_layout"],
        format_options={"kind": "layout"},
    )
    rewrite = dataclasses.replace(
        plan,
        name="text_layout_edit",
        batch_size=EDIT_LAYOUT_BATCHES["text_layout_edit"],
        format_options={"kind": "layout_edit"},
    )
    return dataclasses.replace(
        cfg,
        name="shapes_edit_layout",
        output_dir=f"{ROOT}/edit_layout",
        model=ModelInit(preset=None, pretrained=f"{ROOT}/plan_varied/final"),
        data=[*cfg.data, read, rewrite],
        max_steps=EDIT_LAYOUT_STEPS,
        seed=EDIT_LAYOUT_SEED,
        max_text_length=EDIT_LAYOUT_TEXT_LENGTH,
    )


def shapes_edit_text() -> TrainConfig:
    """Stage ``edit_text``: from ``edit_layout``, its mix with 48 layouts read and 160 layout changes per step."""
    cfg = shapes_edit_layout()
    data = [
        dataclasses.replace(s, batch_size=EDIT_TEXT_BATCHES[s.name]) if s.name in EDIT_TEXT_BATCHES else s
        for s in cfg.data
    ]
    return dataclasses.replace(
        cfg,
        name="shapes_edit_text",
        output_dir=f"{ROOT}/edit_text",
        model=ModelInit(preset=None, pretrained=f"{ROOT}/edit_layout/final"),
        data=data,
        max_steps=EDIT_TEXT_STEPS,
        seed=EDIT_TEXT_SEED,
    )


def shapes_edit_named() -> TrainConfig:
    """A study, not a stage: from ``edit_text``, the same mix with each layout change answered after the clauses of
    the objects its instruction names (``layout_edit_named``; docs/RESULTS.md, "Editing through the layout")."""
    cfg = shapes_edit_text()
    data = [
        dataclasses.replace(s, format_options={"kind": "layout_edit_named"}) if s.name == "text_layout_edit" else s
        for s in cfg.data
    ]
    return dataclasses.replace(
        cfg,
        name="shapes_edit_named",
        output_dir=f"{ROOT}/edit_named",
        model=ModelInit(preset=None, pretrained=f"{ROOT}/edit_text/final"),
        data=data,
        seed=EDIT_NAMED_SEED,
    )


PLAN_RECIPES = {
    "shapes_place": shapes_place,
    "shapes_plan_mix": shapes_plan_mix,
    "shapes_plan_order": shapes_plan_order,
    "shapes_plan_varied": shapes_plan_varied,
    "shapes_edit_layout": shapes_edit_layout,
    "shapes_edit_text": shapes_edit_text,
    "shapes_edit_named": shapes_edit_named,
}
