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
EVERYTHING = ("llm.", "mar.", "proj_in.", "proj_out.")
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


RECIPES: dict[str, Callable[..., TrainConfig]] = {
    "stage1": stage1,
    "stage2": stage2,
    "stage3": stage3,
    "finetune_decoder": finetune_decoder,
}


def get_recipe(name: str) -> TrainConfig:
    """A fresh TrainConfig of the generic recipe ``name`` (an application's recipes live in its own table)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]()
