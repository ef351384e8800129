"""Recipes of the shipped shapes-world model: stage 0 (language model on the world's text), I, II, III and phrasing.

Run in order by ``python -m harmon.world.pipeline`` (stage 0 also trains the VAE and the tokenizer, see
:mod:`harmon.world.stage0`). Every stage reads the previous stage's export. The values were chosen by measuring
the world's GenEval-rule and understanding scores (``harmon eval shapes``); the comments give the reason for each.
"""

from __future__ import annotations

import copy
import dataclasses

from harmon.config import GenerationDefaults, HarmonConfig, small_qwen2_config
from harmon.data.tasks import Task
from harmon.diffloss import DiffLossConfig
from harmon.mar import MARConfig
from harmon.train.config import ModelInit, OptimConfig, SourceConfig, TrainConfig, deep_merge
from harmon.train.recipes import EVERYTHING, MAR_AND_PROJECTIONS, MAR_DECODER
from harmon.world.stage0 import shapes_vae_config

ROOT = "runs/shapes"
SHAPES_PRESET = "shapes"
STAGE3_STEPS = 1800  # ~9 min at ~0.3 s per step on 2 CPU cores: the whole pipeline stays within 2 h
# Sampling for the grids and quick evals during training: one token per MAR step (16 steps cover any grid up to
# 4 x 4 tokens; the schedule skips steps that would draw nothing).
SAMPLE_SETTINGS = {"num_iter": 16, "num_sampling_steps": "100", "guidance_scale": 1.5}
# From stage I on, the diffusion head predicts v and the mask ratio is U[0, 1]; stage III sets them again, so it also
# converts a model trained with the official settings. With the official ε-prediction, the small head's x̂0 error at
# high noise is amplified by sqrt(1/ᾱ_t − 1) (up to ~2e4 on the cosine chain): the respaced sampler diverges without
# x0 clipping and, even clipped, an oracle-conditioned head recovers only ~9 % of scenes. v-prediction keeps x̂0
# errors of the order of the v error and weights the loss towards the high-noise steps that decide colour and shape;
# the uniform ratio trains every number of visible tokens (the truncated normal at 1.0 almost never shows more than
# 4 of 16). Measured from one stage-I export: GenEval-rule overall 0.056 -> 0.28 after 600 steps of it, whole
# single-coloured shapes instead of scattered colour blobs. Recipes take a deep copy: `--set` edits overrides in place.
V_UNIFORM = {
    "mar": {"diffloss": {"prediction": "v"}, "mask_ratio_dist": "uniform", "mask_ratio_min": 0.0},
    "generation": {"x0_clip": None},
}
# From stage I on, one MAR token is the 2 x 2 block of latents under a 32 px grid cell (MAR patch size 2: 2 x 2
# tokens of 64 dims at 64 px), so each object of the world is exactly one token and the diffusion head draws all of
# it, colour included, in one sample. With patch size 1 (4 x 4 tokens per image, four per object) the four tokens of
# an object agreed on a colour but often a neighbour of the asked one, and two-object prompts often got the same
# shape twice. The LLM stage's MAR was never trained, so stage I starts the MAR afresh at the new sizes.
PATCH2 = {
    "mar": {
        "patch_size": 2,
        "token_dim": 64,
        "grid_size": 2,
        "diffusion_batch_mul": 8,
        "diffloss": {"target_channels": 64, "width": 256},
    }
}


# Relative weights of the GenEval tags among the prompt-style text-to-image captions of stages I-III (the whole-scene
# captions keep their 30 %). With uniform tags, single and two objects sat near the ceiling (0.98 / 0.85) while
# binding failed: colour-attribution images often swapped or shared the two colours, and position images rarely put
# both objects in the asked relation. The weak tags get the examples the easy ones do not need; together with the
# longer stage II this raised GenEval-rule overall from 0.595 to 0.639 on seed 0 (colour attribution 0.29 -> 0.39).
T2I_TAG_WEIGHTS: dict = {
    "single_object": 0.5,
    "two_object": 0.5,
    "counting": 1.5,
    "colors": 1.0,
    "position": 2.0,
    "color_attr": 2.0,
}
STAGE2_STEPS = 6000  # 42 min at ~0.42 s per step on 2 CPU cores; the whole pipeline takes ~1.5 h
# Stage II's conversations also draw from a bare-shape existence pair ("Is there a circle in the image?": POPE's own
# template). A model that never saw a question without a colour answers those poorly (F1 44.3 % on 168 questions,
# half "No", "Yes" in 22.6 %); with this option, and nothing else changed, it scores 100 %.
STAGE2_QA_OPTIONS: dict = {"kind": "qa", "shape_questions": True}
STAGE2_QA_TEXT_LENGTH = 256


# Stage 0 VAE settings (keyword arguments of harmon.world.stage0.train_shapes_vae; `--set vae:KEY=VALUE` wins).
# The VAE decodes through latent noise of 0.5 of the latents' spread, which spreads the six colours apart in the
# latents. Without it, green sat 2.10 from blue and 2.26 from yellow in the 64-dim tokens while red was 3.3-10.8 from
# every colour (`harmon analyze words --attribute color`, distance table), and the generator learned colour along
# the red-purple axis only: one-object prompts for green, blue or yellow drew purple or blue (`harmon analyze drawn`:
# 48 % drawn as asked). With noise 0.5 the closest pair is 4.44 apart, 97 % are drawn as asked and GenEval-rule
# overall rises from 0.446 to 0.595.
SHAPES_VAE: dict = {"latent_noise": 0.5}
# Last stage: the VAE decoder alone learns to draw clean scenes from latents perturbed by Gaussian noise of std up to
# max_noise (unit-variance latents); the encoder, hence the latent space and everything trained on it, is untouched
# (keyword arguments of harmon.world.stage0.finetune_vae_decoder; `--set decoder:KEY=VALUE` wins). The generator's
# tokens land between the colour clusters often enough that a decoder trained on clean latents paints two-coloured
# objects the judge rejects; decoding the same generated latents (240 prompts) with the fine-tuned decoder raised
# GenEval-rule overall from 0.271 to 0.333 with max_noise 0.4 (0.317 with 0.8).
SHAPES_DECODER: dict = {"steps": 3000, "max_noise": 0.4}
# Stage III trains only the generation side: the MAR decoder side and proj_out. The MAR encoder, proj_in and the
# LLM (the whole understanding path) stay frozen, so every understanding answer of stage II is kept exactly.
GENERATION_SIDE = (*MAR_DECODER, "proj_out.", "canvas_proj.")


def harmon_shapes(vocab_size: int = 512) -> HarmonConfig:
    """The shapes-world model's base: a few million parameters, 64 px images as 4x4 tokens of 16 channels.

    The recipes below train the LLM on this config, then switch the MAR to patch size 2 from stage I on (2x2
    tokens of 64 dims): the shipped model's config records the result. Registered as the size "shapes".

    Sized so the whole recipe trains on a 2-core CPU in under two hours (~0.3 s per optimizer step).
    """
    llm = small_qwen2_config(vocab_size, hidden_size=128, intermediate_size=384, num_hidden_layers=3)
    mar = MARConfig(
        encoder_dim=128,
        encoder_depth=2,
        encoder_heads=4,
        decoder_dim=128,
        decoder_depth=2,
        decoder_heads=4,
        buffer_size=4,
        grid_size=4,
        class_num=0,
        attn_dropout=0.0,
        proj_dropout=0.0,
        mask_ratio_min=0.5,  # 16-token grids: train on more visible tokens than MAR-256 does
        diffloss=DiffLossConfig(z_channels=128, width=192, depth=3),
    )
    gen = GenerationDefaults(
        image_size=64,
        num_iter=8,
        guidance_scale=3.0,
        understanding_image_size=64,
        max_new_tokens=48,
        num_sampling_steps="50",
    )
    return HarmonConfig(llm=llm, mar=mar, vae=shapes_vae_config(64), generation=gen)


# ---- recipes ------------------------------------------------------------------------------------------------


def t2i_source(batch_size: int, name: str = "text2image", **options) -> SourceConfig:
    """The world's text-to-image source with the recipe's GenEval tag weights; ``options``: more format options."""
    return SourceConfig(
        name,
        "shapes",
        task=Task.TEXT_TO_IMAGE,
        batch_size=batch_size,
        format_options={"tag_weights": dict(T2I_TAG_WEIGHTS), **options},
    )


def _captions(batch_size: int, name: str = "image2text_caption", **options) -> SourceConfig:
    return SourceConfig(
        name,
        "shapes",
        task=Task.IMAGE_TO_TEXT,
        batch_size=batch_size,
        format_options={"kind": "caption", **options},
    )


def _qa(batch_size: int) -> SourceConfig:
    """Stage II's questions about scenes (bare-shape existence questions included)."""
    return SourceConfig(
        "image2text_qa",
        "shapes",
        task=Task.IMAGE_TO_TEXT,
        batch_size=batch_size,
        max_text_length=STAGE2_QA_TEXT_LENGTH,
        format_options=dict(STAGE2_QA_OPTIONS),
    )


def shapes_lm() -> TrainConfig:
    """Stage 0: the small Qwen2 LLM learns the world's language (text only), VAE and tokenizer from stage 0."""
    return TrainConfig(
        name="shapes_lm",
        output_dir=f"{ROOT}/lm",
        model=ModelInit(
            preset=SHAPES_PRESET, tokenizer=f"{ROOT}/tokenizer", vae_weights=f"{ROOT}/stage0_vae/vae.safetensors"
        ),
        data=[SourceConfig("image2text_text", "shapes", task=Task.TEXT_ONLY, batch_size=64)],
        image_size=64,
        train_modules=("llm.",),
        max_steps=1500,
        optim=OptimConfig(lr=2e-3, warmup_ratio=0.02),
        log_every=50,
        save_every=500,
    )


def _stage(stage: str, lr: float, **fields) -> TrainConfig:
    """One of stages I-III at the settings they share: 64 px, warm-up over 2 % of the steps, logs every 50 steps and
    checkpoints every 500, the world's sampling for grids and its quick eval; ``fields`` are the stage's own."""
    return TrainConfig(
        name=f"shapes_{stage}",
        output_dir=f"{ROOT}/{stage}",
        image_size=64,
        optim=OptimConfig(lr=lr, warmup_ratio=0.02),
        log_every=50,
        save_every=500,
        sample_settings=dict(SAMPLE_SETTINGS),
        eval="shapes",
        **fields,
    )


def shapes_stage1() -> TrainConfig:
    """Stage I: LLM frozen; MAR + projections learn text-to-image and captioning."""
    return _stage(
        "stage1",
        lr=1e-3,
        model=ModelInit(
            preset=None,
            pretrained=f"{ROOT}/lm/final",
            overrides=deep_merge(copy.deepcopy(V_UNIFORM), copy.deepcopy(PATCH2)),
            reinit=["mar."],
        ),
        data=[t2i_source(32), _captions(8)],
        train_modules=MAR_AND_PROJECTIONS,
        max_steps=2000,
        sample_every=1000,
        eval_every=1000,
    )


def shapes_stage2() -> TrainConfig:
    """Stage II: everything trains; text-to-image + QA + captioning."""
    return _stage(
        "stage2",
        lr=7e-4,
        model=ModelInit(preset=None, pretrained=f"{ROOT}/stage1/final"),
        data=[t2i_source(32), _qa(8), _captions(4)],
        train_modules=EVERYTHING,
        max_steps=STAGE2_STEPS,
        sample_every=2000,
        eval_every=2000,
    )


def shapes_stage3() -> TrainConfig:
    """Stage III: a short generation pass (v-prediction, uniform masks) on a frozen understanding path."""
    return _stage(
        "stage3",
        lr=5e-4,
        model=ModelInit(preset=None, pretrained=f"{ROOT}/stage2/final", overrides=copy.deepcopy(V_UNIFORM)),
        data=[t2i_source(32)],
        train_modules=GENERATION_SIDE,
        max_steps=STAGE3_STEPS,
        eval_every=0,
    )


# Stage IV: editing. Edits of grid-level scenes in the grammar's seen phrasings (harmon.world.edits: recolour,
# remove, add, move, swap colours, change shape) with the stage's own text-to-image pairs, so that generation is
# kept. The edit draws on its source (config.edit_canvas: the source's encoder features as the decoder's canvas and
# a zero-init skip to the diffusion conditions), and only the generation side trains, so understanding stays exactly
# the decoder stage's. Side by side with the same recipe without the canvas (docs/RESULTS.md, "Editing"), the
# canvas keeps 6x more scenes intact. The drops train the two guidance branches of HarmonPipeline.edit: 10 % the
# image without the instruction, 5 % the plain unconditional prompt.
EDIT_STEPS = 2500  # world v2's edit stage (recipes_v2)
SHAPES_EDIT_STEPS = 1500
# grid-level scenes in the grammar's seen phrasings: the data of stage IV and of the phrasing stage
GRID_VARIED: dict = {"level": "grid", "phrasings": "varied"}


def _edits() -> SourceConfig:
    return SourceConfig(
        "image_edit",
        "shapes",
        task=Task.IMAGE_EDIT,
        batch_size=32,
        cfg_drop_prob=0.05,
        text_drop_prob=0.1,
        format_options=dict(GRID_VARIED),
    )


def shapes_edit() -> TrainConfig:
    """Stage IV: the decoder stage's model learns to edit on its source's canvas; the understanding path is frozen."""
    return _stage(
        "edit",
        lr=1e-3,
        model=ModelInit(
            preset=None, pretrained=f"{ROOT}/decoder/final", overrides={"edit_canvas": True}, reinit=["canvas_proj."]
        ),
        data=[_edits(), t2i_source(16)],
        train_modules=GENERATION_SIDE,
        max_steps=SHAPES_EDIT_STEPS,
        eval_every=0,
    )


def shapes_edit_joint() -> TrainConfig:
    """A study, not a pipeline stage: editing from the phrasing stage's model on the source's token canvas
    (config.edit_canvas_tokens), every module but the VAE training, with the phrasing stage's questions and
    descriptions beside the edits so that understanding is kept (docs/RESULTS.md, "Editing")."""
    phrasing = {src.name: src for src in shapes_phrasing().data}
    keep = [phrasing[n] for n in ("image2text_qa", "image2text_qa_varied", "image2text_caption_varied")]
    return _stage(
        "edit_joint",
        lr=1e-3,
        model=ModelInit(
            preset=None,
            pretrained=f"{ROOT}/phrasing/final",
            overrides={"edit_canvas": True, "edit_canvas_tokens": True},
            reinit=["canvas_proj."],
        ),
        data=[_edits(), t2i_source(16), *keep],
        train_modules=EVERYTHING,
        max_steps=SHAPES_EDIT_STEPS,
        eval_every=0,
    )


# Phrasing, the last stage: after the decoder stage the model answers and draws only in the templates it was trained
# on (a reworded question or prompt about the very scenes it handles drops it to about half; docs/RESULTS.md,
# "Phrasing"). This stage keeps its
# grid world and adds the grammar's seen phrasings (harmon.world.grammar) beside the canonical ones, every module
# training, so that it learns the language and not the templates; held-out phrasings never appear and measure that.
# The canonical text-to-image source keeps stage II's 32 per step: with 16, canonical counting fell from 0.69 to 0.54.
PHRASING_STEPS = 3000


def shapes_phrasing() -> TrainConfig:
    """The decoder stage's model on its grid world in varied phrasings (half of each task) beside its templates."""
    qa_varied = SourceConfig(
        "image2text_qa_varied",
        "shapes",
        task=Task.IMAGE_TO_TEXT,
        batch_size=8,
        max_text_length=2 * STAGE2_QA_TEXT_LENGTH,  # the grammar's wordings take more of this tokenizer's tokens
        format_options={**GRID_VARIED, "kind": "qa"},
    )
    t2i_varied = t2i_source(16, "text2image_varied", **GRID_VARIED)
    captions_varied = _captions(4, "image2text_caption_varied", **GRID_VARIED)
    return _stage(
        "phrasing",
        lr=3e-4,
        model=ModelInit(preset=None, pretrained=f"{ROOT}/decoder/final"),
        data=[t2i_source(32), t2i_varied, _qa(4), qa_varied, captions_varied],
        train_modules=EVERYTHING,
        max_steps=PHRASING_STEPS,
        eval_every=0,
    )


# the study recipes that start from these stages: harmon.world.recipes_studies.STUDY_RECIPES
RECIPES = {
    "shapes_lm": shapes_lm,
    "shapes_stage1": shapes_stage1,
    "shapes_stage2": shapes_stage2,
    "shapes_stage3": shapes_stage3,
    "shapes_edit": shapes_edit,
    "shapes_edit_joint": shapes_edit_joint,
    "shapes_phrasing": shapes_phrasing,
}


def toy_source(src: SourceConfig) -> SourceConfig:
    """A shapes-world source of the same name, task and loss weight, at most 2 samples per micro-batch: LLaVA
    conversations become questions about scenes, other image2text sources scene descriptions."""
    if src.format == "shapes":
        return dataclasses.replace(src, batch_size=min(src.batch_size, 2), format_options=dict(src.format_options))
    options = {"kind": "qa" if src.format == "llava" else "caption"} if src.task is Task.IMAGE_TO_TEXT else {}
    return SourceConfig(
        src.name,
        "shapes",
        task=src.task,
        batch_size=min(src.batch_size, 2),
        loss_weight=src.loss_weight,
        format_options=options,
    )


def toy(cfg: TrainConfig, tokenizer: str, output_dir: str, steps: int = 2) -> TrainConfig:
    """The same recipe at toy size: tiny model, shapes-world data of the same kinds, 64 px, a few steps.

    What trains (train_modules), the mixture structure and the loss weights stay as the recipe says.
    """
    cfg.model = ModelInit(preset="tiny", tokenizer=tokenizer)
    cfg.data = [toy_source(s) for s in cfg.data]
    cfg.image_size, cfg.max_steps, cfg.output_dir, cfg.max_text_length = 64, steps, output_dir, 512
    cfg.precision, cfg.save_every, cfg.sample_every, cfg.log_every = "fp32", 0, 0, 1
    return cfg
