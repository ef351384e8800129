"""Training recipes: plain functions returning a TrainConfig (override any field with ``--set key=value``).

Paper stages (spec §11.6): I = LLM frozen, text-to-image + captioning at 256 px; II = everything trained, QA +
text-to-image + captioning at 256 px; III = everything, high-quality QA + curated images at 512 px with the data mix
1 : 3 : 16. The paper does not report per-stage learning rates, batch sizes or step counts in the text we could
read; the values below follow the official fine-tuning example (lr, betas, decay, clipping, warm-up) and are
starting points, not the paper's.

Data paths are placeholders under ``data_root``: point them at your data with ``--set data.N.path=...``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harmon.data.tasks import Task
from harmon.train.config import ModelInit, OptimConfig, SourceConfig, TrainConfig

T2I, I2T = Task.TEXT_TO_IMAGE, Task.IMAGE_TO_TEXT
MAR_AND_PROJECTIONS = ("mar.", "proj_in.", "proj_out.")
EVERYTHING = ("llm.", "mar.", "proj_in.", "proj_out.", "canvas_proj.")  # canvas_proj: editing models only
# "Only the MAR decoder" as for harmon_1.5b-o: the decoder, its tables and mask token, and the diffusion head it feeds.
MAR_DECODER = (
    "mar.decoder_embed.",
    "mar.mask_token",
    "mar.decoder_pos_embed_learned",
    "mar.decoder_blocks.",
    "mar.decoder_norm.",
    "mar.diffusion_pos_embed_learned",
    "mar.diffloss.",
)


def _pairs_t2i(data_root: str) -> SourceConfig:
    """Text-to-image on the image-text pair shards (stages I and II)."""
    return SourceConfig("text2image", "webdataset", f"{data_root}/pairs/*.tar", task=T2I, batch_size=32)


def _pairs_captions(data_root: str) -> SourceConfig:
    """Captioning on the same pair shards, the captions taken from the pairs (stages I and II)."""
    return SourceConfig(
        "image2text_caption",
        "webdataset",
        f"{data_root}/pairs/*.tar",
        task=I2T,
        batch_size=8,
        captions_from_pairs=True,
    )


def _qa(data_root: str, stem: str, batch_size: int) -> SourceConfig:
    """LLaVA-format question answering: ``{stem}.json`` with its images in ``{stem}_images``."""
    return SourceConfig(
        "image2text_qa",
        "llava",
        f"{data_root}/{stem}.json",
        task=I2T,
        image_folder=f"{data_root}/{stem}_images",
        batch_size=batch_size,
    )


def _recipe(name: str, lr: float, every: int, **fields: Any) -> TrainConfig:
    """A recipe at the settings all of these share: bf16 with gradient checkpointing, output under ``runs/name``,
    checkpoints and sample grids every ``every`` steps; ``fields`` are the recipe's own TrainConfig fields."""
    return TrainConfig(
        name=name,
        output_dir=f"runs/{name}",
        precision="bf16",
        grad_checkpointing=True,
        optim=OptimConfig(lr=lr),
        save_every=every,
        sample_every=every,
        **fields,
    )


def stage1(data_root: str = "data", llm: str = "Qwen2.5-0.5B-Instruct", vae: str = "kl16.ckpt") -> TrainConfig:
    """Stage I: the LLM (Qwen2.5 weights) frozen; MAR and projections learn text-to-image and captioning, 256 px."""
    return _recipe(
        "stage1",
        lr=1e-4,
        every=5000,
        model=ModelInit(preset="0.5b", llm_folder=llm, llm_weights=True, vae_weights=vae),
        data=[_pairs_t2i(data_root), _pairs_captions(data_root)],
        image_size=256,
        train_modules=MAR_AND_PROJECTIONS,
        max_steps=100_000,
    )


def stage2(data_root: str = "data", init: str = "runs/stage1/final") -> TrainConfig:
    """Stage II: everything trains; QA + text-to-image + captioning at 256 px, from stage I's export."""
    return _recipe(
        "stage2",
        lr=5e-5,
        every=5000,
        model=ModelInit(preset=None, pretrained=init),
        data=[_qa(data_root, "qa", batch_size=8), _pairs_t2i(data_root), _pairs_captions(data_root)],
        image_size=256,
        train_modules=EVERYTHING,
        max_steps=100_000,
    )


def stage3(data_root: str = "data", init: str = "runs/stage2/final") -> TrainConfig:
    """Stage III: high-quality QA : captioning : curated text-to-image = 1 : 3 : 16 per batch, 512 px."""
    curated = f"{data_root}/curated.jsonl"
    return _recipe(
        "stage3",
        lr=1e-5,
        every=2000,
        model=ModelInit(preset=None, pretrained=init),
        data=[
            _qa(data_root, "hq_qa", batch_size=1),
            SourceConfig("image2text_caption", "jsonl", curated, task=I2T, batch_size=3),
            SourceConfig("text2image", "jsonl", curated, task=T2I, batch_size=16),
        ],
        image_size=512,
        max_text_length=512,
        train_modules=EVERYTHING,
        max_steps=20_000,
    )


def finetune_decoder(
    data_root: str = "data",
    checkpoint: str = "harmon_1.5b.pth",
    vae: str = "kl16.ckpt",
    llm: str = "Qwen2.5-1.5B-Instruct",
) -> TrainConfig:
    """Only the MAR decoder side trains (as for the released harmon_1.5b-o), text-to-image at 512 px."""
    return _recipe(
        "finetune_decoder",
        lr=1e-5,
        every=1000,
        model=ModelInit(preset=None, official_checkpoint=checkpoint, official_vae=vae, llm_folder=llm),
        data=[SourceConfig("text2image", "jsonl", f"{data_root}/finetune.jsonl", task=T2I, batch_size=16)],
        image_size=512,
        train_modules=MAR_DECODER,
        max_steps=10_000,
    )


# ---- image-conditioned post-training -------------------------------------------------------------------------
# RecA (reconstruction alignment, arXiv 2509.07295) for Harmon. Each value names its source: [code] = the authors'
# public repository HorizonWind2004/reconstruction-alignment at commit b250aa1 (Harmon/configs/examples/reca.py,
# Harmon/configs/datasets/qwen2_5_1_5b/*.py, Harmon/src/models/harmon_dev.py, Harmon/src/datasets/text2image/),
# [paper] = the paper as issue 24 summarises it, [guide] = the repository's REPRODUCE_GUIDE.md, [ours] = our choice.
RECA_STEPS = 5000  # [paper] ~5k steps (27 A100-hours for 1.5B); [code] schedules 50,000 iterations (micro-batches)
RECA_BATCH = 48  # [code] samples per source per micro-batch for 1.5B ("96 for 0.5B")
# [guide] feed the understanding path the lowest resolution the model was trained to understand (higher resolution
# invites pixel copying; the paper's ablation prefers 224/256 px to 512); Harmon's stages I-II understand at 256 px.
# [code] itself feeds the 512 px image.
RECA_UNDERSTANDING_SIZE = 256


def reca(
    data_root: str = "data",
    checkpoint: str = "harmon_1.5b.pth",
    vae: str = "kl16.ckpt",
    llm: str = "Qwen2.5-1.5B-Instruct",
) -> TrainConfig:
    """RecA post-training of released weights: reconstruct unlabelled images from the model's own understanding
    features plus a template, mixed 1 : 1 with LLaVA understanding data so understanding is kept.

    Per optimizer step and GPU: 2 micro-batches of 48 reconstructions + 48 conversations ([code]: repeat [2, 2, 0]
    over single-source micro-batches, accumulation 4, the same samples). Reconstruction: images stretched to a square
    ([code] crop_image=False) at 512 px ([code]), the condition at 256 px ([guide], see RECA_UNDERSTANDING_SIZE),
    10 % of prompts with the template dropped and the image kept ([code] unconditional=0.1), templates drawn from
    our own list ([code] uses its own ~30). The gradient into the condition's features is scaled by 0.1 ([code]
    grad_scale; our model's config.grad_scale). Optimiser: AdamW lr 1e-5, betas (0.9, 0.95), weight decay 0.02,
    clipping 1.0, linear warm-up from 1e-5 x lr over 1 %, cosine to 0 (all [code]); bf16 and gradient checkpointing
    ([code]); everything trains ([code] freeze_llm=False); checkpoints every 1,000 steps ([code]). For Harmon-0.5B
    pass its files and set ``data.0.batch_size=96 data.1.batch_size=96`` ([code]).
    """
    recon = SourceConfig(
        "reconstruction",
        "webdataset",
        f"{data_root}/recon/*.tar",  # [code] Midjourney-v6 or BLIP3o-60k images; any unlabelled images will do
        task=Task.RECONSTRUCTION,
        batch_size=RECA_BATCH,
        cfg_drop_prob=0.0,
        text_drop_prob=0.1,
        cond_image_size=RECA_UNDERSTANDING_SIZE,
        crop="stretch",
        pad_to_square=False,
    )
    understanding = SourceConfig(
        "image2text_qa",
        "llava",
        f"{data_root}/llava_v1_5_mix665k.json",  # [code] LLaVA-Instruct mix665k
        task=I2T,
        image_folder=f"{data_root}/llava_images",
        batch_size=RECA_BATCH,
        max_text_length=2048 - 576,  # [code] max_length
        pad_to_square=False,  # [code] pad_image_to_square=False
    )
    return _recipe(
        "reca",
        lr=1e-5,
        every=1000,
        model=ModelInit(preset=None, official_checkpoint=checkpoint, official_vae=vae, llm_folder=llm),
        data=[recon, understanding],
        image_size=512,
        accum_steps=2,
        train_modules=EVERYTHING,
        max_steps=RECA_STEPS,
    )


def edit(
    data_root: str = "data",
    checkpoint: str = "harmon_1.5b.pth",
    vae: str = "kl16.ckpt",
    llm: str = "Qwen2.5-1.5B-Instruct",
) -> TrainConfig:
    """Fine-tuning on edit triples (source, instruction, target) from released weights, with text-to-image pairs
    so that plain generation is kept. Our choices throughout: the official fine-tuning example's optimiser (lr 1e-5,
    512 px, everything trains), the condition at the training size (preservation needs detail, unlike RecA's
    reconstruction), and InstructPix2Pix's drops (5 % instruction dropped, 5 % everything dropped), which train the
    two guidance branches of :meth:`harmon.pipeline.HarmonPipeline.edit`.
    """
    edits = SourceConfig(
        "image_edit",
        "jsonl",
        f"{data_root}/edits.jsonl",  # {"source", "instruction", "target"} per line; or webdataset src.jpg/tgt.jpg/txt
        task=Task.IMAGE_EDIT,
        batch_size=16,
        cfg_drop_prob=0.05,
        text_drop_prob=0.05,
    )
    pairs = SourceConfig("text2image", "jsonl", f"{data_root}/finetune.jsonl", task=T2I, batch_size=4)
    return _recipe(
        "edit",
        lr=1e-5,
        every=1000,
        model=ModelInit(preset=None, official_checkpoint=checkpoint, official_vae=vae, llm_folder=llm),
        data=[edits, pairs],
        image_size=512,
        train_modules=EVERYTHING,
        max_steps=10_000,
    )


RECIPES: dict[str, Callable[..., TrainConfig]] = {
    "stage1": stage1,
    "stage2": stage2,
    "stage3": stage3,
    "finetune_decoder": finetune_decoder,
    "reca": reca,
    "edit": edit,
}


def get_recipe(name: str) -> TrainConfig:
    """A fresh TrainConfig of the generic recipe ``name`` (an application's recipes live in its own table)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]()
