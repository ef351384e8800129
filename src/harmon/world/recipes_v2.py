"""Recipes of the world-v2 model: the shipped model's stages, on world v2's data, over a stride-8 VAE.

``python -m harmon.world.pipeline --world v2`` runs them in order after stage 0 (tokenizer on v2 text, VAE on
free-level scenes). What differs from :mod:`harmon.world.recipes`, and why:

* data: every source draws "mixed" records (3/4 free level, 1/4 grid level) in the grammar's seen phrasings, a
  quarter of the images from the anti-aliasing renderer (:mod:`harmon.world.data2`); held-out phrasings and pairs
  never appear;
* the stage-0 VAE has stride 8 (8 x 8 latents at 64 px) and the MAR patch size 2: 16 tokens of 64 dims, so an
  object's place is one of 16, not one of 4 quadrants (the shipped model's one-token-per-object layout cannot
  express free positions). After 8,000 steps a stride-16 VAE read back 12.9 % of free scenes exactly, the
  stride-8 one 82.4 % (docs/world-v2.md);
* the quick eval during training is the free level's (``eval="shapes_v2"``).

Step counts are sized for the 3-hour, 2-core budget from measured seconds per step (docs/world-v2.md); each can be
changed with ``--set STAGE:max_steps=N``.
"""

from __future__ import annotations

import copy
import dataclasses

from harmon.data.tasks import Task
from harmon.train.config import ModelInit, OptimConfig, SourceConfig, TrainConfig
from harmon.train.recipes import EVERYTHING, MAR_AND_PROJECTIONS
from harmon.world.recipes import EDIT_STEPS, GENERATION_SIDE, SAMPLE_SETTINGS, SHAPES_PRESET, T2I_TAG_WEIGHTS, V_UNIFORM

ROOT = "runs/shapes_v2"
# format_options shared by every v2 source (harmon.world.sources.ShapesOptions)
V2_DATA: dict = {"level": "mixed", "phrasings": "varied", "antialiased": 0.25}
LM_STEPS, STAGE1_STEPS, STAGE2_STEPS, STAGE3_STEPS = 1500, 2500, 8000, 2000
QA_TEXT_LENGTH = 256  # six turns of v2 questions: at most ~145 tokens of the v2 tokenizer (400 records)
# Stage-0 VAE and final decoder stage (keyword arguments of harmon.world.stage0.train_shapes_vae /
# finetune_vae_decoder): today's settings on free-level scenes, whose tints, gradients and small objects the
# scorer's v2 detector reads.
SHAPES_V2_VAE: dict = {"latent_noise": 0.5, "level": "free", "stride": 8}
# The MAR over the stride-8 VAE's 8 x 8 latents: patch size 2, so 4 x 4 tokens of 64 dims (as many tokens as patch
# size 1 on stride-16 latents, each carrying 4x the detail); the diffusion head as the shipped model's for 64 dims.
# Set from the LLM stage on (the preset's model must match the VAE); stage I starts the MAR afresh at these sizes.
STRIDE8_MAR: dict = {
    "mar": {
        "patch_size": 2,
        "token_dim": 64,
        "grid_size": 4,
        "diffusion_batch_mul": 8,
        "diffloss": {"target_channels": 64, "width": 256},
    }
}
SHAPES_V2_DECODER: dict = {"steps": 3000, "max_noise": 0.4, "level": "free"}


def _source(name: str, task: Task, batch_size: int, **options) -> SourceConfig:
    return SourceConfig(name, "shapes", task=task, batch_size=batch_size, format_options={**V2_DATA, **options})


def _t2i(batch_size: int) -> SourceConfig:
    return _source("text2image", Task.TEXT_TO_IMAGE, batch_size, tag_weights=dict(T2I_TAG_WEIGHTS))


def _captions(batch_size: int) -> SourceConfig:
    return _source("image2text_caption", Task.IMAGE_TO_TEXT, batch_size, kind="caption")


def _qa(batch_size: int) -> SourceConfig:
    src = _source("image2text_qa", Task.IMAGE_TO_TEXT, batch_size, kind="qa")
    src.max_text_length = QA_TEXT_LENGTH
    return src


def shapes_v2_lm() -> TrainConfig:
    """Stage 0c: the small LLM on world v2's text (its tokenizer and VAE from stage 0)."""
    return TrainConfig(
        name="shapes_v2_lm",
        output_dir=f"{ROOT}/lm",
        model=ModelInit(
            preset=SHAPES_PRESET,
            tokenizer=f"{ROOT}/tokenizer",
            vae_weights=f"{ROOT}/stage0_vae/vae.safetensors",
            overrides=copy.deepcopy(STRIDE8_MAR),
        ),
        data=[_source("image2text_text", Task.TEXT_ONLY, 64)],
        image_size=64,
        train_modules=("llm.",),
        max_steps=LM_STEPS,
        optim=OptimConfig(lr=2e-3, warmup_ratio=0.02),
        log_every=50,
        save_every=500,
    )


def _stage(stage: str, lr: float, **fields) -> TrainConfig:
    return TrainConfig(
        name=f"shapes_v2_{stage}",
        output_dir=f"{ROOT}/{stage}",
        image_size=64,
        optim=OptimConfig(lr=lr, warmup_ratio=0.02),
        log_every=50,
        save_every=500,
        sample_settings=dict(SAMPLE_SETTINGS),
        eval="shapes_v2",
        **fields,
    )


def shapes_v2_stage1() -> TrainConfig:
    """Stage I: LLM frozen; a fresh MAR (patch size 2 over the stride-8 latents) + projections learn text-to-image
    and captioning."""
    return _stage(
        "stage1",
        lr=1e-3,
        model=ModelInit(
            preset=None, pretrained=f"{ROOT}/lm/final", overrides=copy.deepcopy(V_UNIFORM), reinit=["mar."]
        ),
        data=[_t2i(32), _captions(8)],
        train_modules=MAR_AND_PROJECTIONS,
        max_steps=STAGE1_STEPS,
        sample_every=1000,
        eval_every=1000,
    )


def shapes_v2_stage2() -> TrainConfig:
    """Stage II: everything trains; text-to-image + questions + captioning."""
    return _stage(
        "stage2",
        lr=7e-4,
        model=ModelInit(preset=None, pretrained=f"{ROOT}/stage1/final"),
        data=[_t2i(32), _qa(8), _captions(4)],
        train_modules=EVERYTHING,
        max_steps=STAGE2_STEPS,
        sample_every=2000,
        eval_every=2000,
    )


def shapes_v2_stage3() -> TrainConfig:
    """Stage III: the generation side only (MAR decoder, diffusion head, proj_out) on a frozen understanding path."""
    return _stage(
        "stage3",
        lr=5e-4,
        model=ModelInit(preset=None, pretrained=f"{ROOT}/stage2/final", overrides=copy.deepcopy(V_UNIFORM)),
        data=[_t2i(32)],
        train_modules=GENERATION_SIDE,
        max_steps=STAGE3_STEPS,
        eval_every=0,
    )


def shapes_v2_edit() -> TrainConfig:
    """Stage IV: editing of mixed-level scenes (the v2 data options), keeping text-to-image and questions;
    everything trains, without the source canvas of :func:`harmon.world.recipes.shapes_edit` (not measured on
    world v2)."""
    edits = dataclasses.replace(_source("image_edit", Task.IMAGE_EDIT, 16), cfg_drop_prob=0.05, text_drop_prob=0.1)
    return _stage(
        "edit",
        lr=3e-4,
        model=ModelInit(preset=None, pretrained=f"{ROOT}/decoder/final"),
        data=[edits, _t2i(16), _qa(8)],
        train_modules=EVERYTHING,
        max_steps=EDIT_STEPS,
        eval_every=0,
    )


RECIPES_V2 = {
    "shapes_v2_lm": shapes_v2_lm,
    "shapes_v2_stage1": shapes_v2_stage1,
    "shapes_v2_stage2": shapes_v2_stage2,
    "shapes_v2_stage3": shapes_v2_stage3,
    "shapes_v2_edit": shapes_v2_edit,
}
