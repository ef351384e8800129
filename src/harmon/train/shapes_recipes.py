"""Recipes of the shipped shapes-world model: stage 0 (language model on the world's text), I, II and III.

Run in order by ``scripts/train_shapes.sh`` (stage 0 also trains the VAE and the tokenizer, see
harmon.train.stage0). Every stage reads the previous stage's export.
"""

from __future__ import annotations

from harmon.train.config import ModelInit, OptimConfig, SourceConfig, TrainConfig

ROOT = "runs/shapes"
SHAPES_PRESET = "shapes"
# Sampling for the grids and quick evals during training: one token per MAR step (16 tokens), and x0 clipped to
# +-3 (latents have unit variance) so a still-undertrained diffusion head cannot blow up the respaced sampler.
SAMPLE_SETTINGS = {"num_iter": 16, "x0_clip": 3.0, "num_sampling_steps": "100"}


def shapes_lm() -> TrainConfig:
    """Stage 0: the small Qwen2 LLM learns the world's language (text only), VAE and tokenizer from stage 0."""
    return TrainConfig(
        name="shapes_lm", output_dir=f"{ROOT}/lm",
        model=ModelInit(preset=SHAPES_PRESET, tokenizer=f"{ROOT}/tokenizer",
                        vae_weights=f"{ROOT}/stage0_vae/vae.safetensors"),
        data=[SourceConfig("image2text_text", "shapes", batch_size=64, options={"task": "text"})],
        image_size=64, train_modules=("llm.",), max_steps=1500, optim=OptimConfig(lr=2e-3, warmup_ratio=0.02),
        log_every=50, save_every=500)


def shapes_stage1() -> TrainConfig:
    """Stage I: LLM frozen; MAR + projections learn text-to-image and captioning."""
    return TrainConfig(
        name="shapes_stage1", output_dir=f"{ROOT}/stage1", model=ModelInit(preset=None, pretrained=f"{ROOT}/lm/final"),
        data=[SourceConfig("text2image", "shapes", batch_size=32, options={"task": "text2image"}),
              SourceConfig("image2text_caption", "shapes", batch_size=8, options={"task": "caption"})],
        image_size=64, train_modules=("mar.", "proj_in.", "proj_out."), max_steps=2000,
        optim=OptimConfig(lr=1e-3, warmup_ratio=0.02), log_every=50, save_every=500, sample_every=1000,
        sample_settings=dict(SAMPLE_SETTINGS), eval="shapes", eval_every=1000)


def shapes_stage2() -> TrainConfig:
    """Stage II: everything trains; text-to-image + QA + captioning."""
    return TrainConfig(
        name="shapes_stage2", output_dir=f"{ROOT}/stage2",
        model=ModelInit(preset=None, pretrained=f"{ROOT}/stage1/final"),
        data=[SourceConfig("text2image", "shapes", batch_size=32, options={"task": "text2image"}),
              SourceConfig("image2text_qa", "shapes", batch_size=8, options={"task": "qa", "max_text_length": 256}),
              SourceConfig("image2text_caption", "shapes", batch_size=4, options={"task": "caption"})],
        image_size=64, train_modules=("llm.", "mar.", "proj_in.", "proj_out."), max_steps=6500,
        optim=OptimConfig(lr=7e-4, warmup_ratio=0.02), log_every=50, save_every=500, sample_every=1500,
        sample_settings=dict(SAMPLE_SETTINGS), eval="shapes", eval_every=1500)


def shapes_stage3() -> TrainConfig:
    """Stage III: a short high-quality pass at a lower learning rate with an EMA of the weights."""
    return TrainConfig(
        name="shapes_stage3", output_dir=f"{ROOT}/stage3",
        model=ModelInit(preset=None, pretrained=f"{ROOT}/stage2/final"),
        data=[SourceConfig("text2image", "shapes", batch_size=32, options={"task": "text2image"}),
              SourceConfig("image2text_qa", "shapes", batch_size=8, options={"task": "qa", "max_text_length": 256})],
        image_size=64, train_modules=("llm.", "mar.", "proj_in.", "proj_out."), max_steps=1000,
        optim=OptimConfig(lr=1e-4, warmup_ratio=0.0, ema_decay=0.995), log_every=50, save_every=500,
        sample_settings=dict(SAMPLE_SETTINGS), eval="shapes", eval_every=1000)


RECIPES = {"shapes_lm": shapes_lm, "shapes_stage1": shapes_stage1, "shapes_stage2": shapes_stage2,
           "shapes_stage3": shapes_stage3}
