"""Study recipes of the grid world: runs that start from the shipped model (or its phrasing stage) to measure one
question each, not stages of the pipeline that builds it (docs/RESULTS.md names each one's section)."""

from __future__ import annotations

import dataclasses

from harmon.data.tasks import Task
from harmon.train.config import ModelInit, SourceConfig, TrainConfig
from harmon.world.recipes import ROOT, STAGE2_QA_TEXT_LENGTH, T2I_TAG_WEIGHTS, shapes_phrasing, t2i_source


def shapes_phrasing_free() -> TrainConfig:
    """A study, not a pipeline stage: the phrasing stage with free-level questions (8) and descriptions (4) per step
    added, to see how much of free layouts four tokens per image can learn (docs/RESULTS.md, "Phrasing")."""
    cfg = shapes_phrasing()
    free = [
        dataclasses.replace(
            src, name=src.name.replace("varied", "free"), format_options={**src.format_options, "level": "free"}
        )
        for src in cfg.data
        if src.name in ("image2text_qa_varied", "image2text_caption_varied")
    ]
    return dataclasses.replace(
        cfg, name="shapes_phrasing_free", output_dir=f"{ROOT}/phrasing_free", data=[*cfg.data, *free]
    )


WHERE_STEPS = 1500


def shapes_where() -> TrainConfig:
    """A study, not a pipeline stage: the phrasing stage's mix continued from the shipped model with grounding
    questions added (8 conversations per step of "Where is the red circle?" / "What is in the top left?",
    :func:`harmon.world.questions.where_questions`): does a direct signal for finding a named object's place lift
    the position questions and bindings that sit at chance (docs/RESULTS.md, "Grounding")."""
    cfg = shapes_phrasing()
    where = SourceConfig(
        "image2text_where",
        "shapes",
        task=Task.IMAGE_TO_TEXT,
        batch_size=8,
        max_text_length=STAGE2_QA_TEXT_LENGTH,
        format_options={"kind": "where"},
    )
    return dataclasses.replace(
        cfg,
        name="shapes_where",
        output_dir=f"{ROOT}/where",
        model=ModelInit(preset=None, pretrained=f"{ROOT}/phrasing/final"),
        data=[*cfg.data, where],
        max_steps=WHERE_STEPS,
    )


PLAN_STEPS = 2500
# The position tables that tell a cell still to draw where it is: enlarged at load and trained 30 times faster, so
# a cell's place survives the decoder's first attention (docs/RESULTS.md, "Plan, then draw")
PLACE_TABLES = {"mar.decoder_pos_embed_learned": 20.0, "mar.diffusion_pos_embed_learned": 10.0}
PLACE_LR_SCALE = {**dict.fromkeys(PLACE_TABLES, 30.0), "mar.mask_token": 30.0}


def shapes_plan() -> TrainConfig:
    """A study, not a pipeline stage: plan, then draw (:mod:`harmon.world.planning`). The phrasing stage's mix
    continued from the shipped model with placed descriptions to draw (32 per step: every object with its quadrant)
    and layouts to write (16 text-only plans: "Plan the layout: <prompt>" -> a placed description), the cells'
    position tables enlarged (:data:`PLACE_TABLES`), lr 1e-3: can the generator put objects at named places, and
    does a layout the LLM writes first lift position and colour attribution (docs/RESULTS.md, "Plan, then draw")."""
    cfg = shapes_phrasing()
    placed = t2i_source(32, "text2image_placed", kind="placed")
    placed.format_options.pop("tag_weights")
    plan = SourceConfig(
        "text_plan",
        "shapes",
        task=Task.TEXT_ONLY,
        batch_size=16,
        format_options={"kind": "plan", "tag_weights": dict(T2I_TAG_WEIGHTS)},
    )
    return dataclasses.replace(
        cfg,
        name="shapes_plan",
        output_dir=f"{ROOT}/plan",
        model=ModelInit(preset=None, pretrained=f"{ROOT}/phrasing/final", rescale=dict(PLACE_TABLES)),
        data=[*cfg.data, placed, plan],
        optim=dataclasses.replace(cfg.optim, lr=1e-3, lr_scale=dict(PLACE_LR_SCALE)),
        max_steps=PLAN_STEPS,
    )


STUDY_RECIPES = {
    "shapes_phrasing_free": shapes_phrasing_free,
    "shapes_where": shapes_where,
    "shapes_plan": shapes_plan,
}
