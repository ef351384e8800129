"""From SourceConfig entries to the data layer: datasets, processors and the MixtureLoader.

The formats a source may name live in :mod:`harmon.train.formats` (a registry that applications add to).
"""

from __future__ import annotations

from typing import Any

from harmon.config import HarmonConfig
from harmon.data.conditioned import ImageConditionedProcessor
from harmon.data.formats import CaptionView
from harmon.data.mixture import MixtureLoader, SourceSpec
from harmon.data.processing import Image2TextProcessor, Text2ImageProcessor
from harmon.data.tasks import Task
from harmon.train.config import SourceConfig, TrainConfig
from harmon.train.formats import FORMATS


def build_dataset(src: SourceConfig, cfg: TrainConfig) -> Any:
    """The dataset of ``src``: its format's records, as captioning conversations when captions_from_pairs."""
    dataset = FORMATS[src.format](src, cfg)
    return CaptionView(dataset, cfg.seed, src.instructions) if src.captions_from_pairs else dataset


def build_processor(src: SourceConfig, cfg: TrainConfig, tokenizer, model_config: HarmonConfig):
    """The record -> sample processor of ``src``'s task."""
    if src.task.image_conditioned:
        cond_size = cfg.image_size if src.cond_image_size is None else src.cond_image_size
        side = cond_size // model_config.token_px
        if cond_size % model_config.token_px:
            raise ValueError(
                f"source {src.name!r}: cond_image_size {cond_size} is not a multiple of the token size "
                f"{model_config.token_px} px"
            )
        return ImageConditionedProcessor(
            tokenizer,
            src.task,
            cfg.image_size,
            cond_size,
            image_tokens=side * side + model_config.mar.buffer_size,
            max_length=cfg.max_text_length if src.max_text_length is None else src.max_text_length,
            cfg_drop_prob=src.cfg_drop_prob,
            text_drop_prob=src.text_drop_prob,
            crop=src.crop,
            pad_to_square=src.pad_to_square,
            image_token=model_config.image_token,
        )
    if src.task is Task.TEXT_TO_IMAGE:
        return Text2ImageProcessor(
            tokenizer,
            cfg.image_size,
            max_length=cfg.max_text_length if src.max_text_length is None else src.max_text_length,
            cfg_drop_prob=src.cfg_drop_prob,
            crop=src.crop,
        )
    grid = cfg.image_size // model_config.token_px
    image_tokens = grid * grid + model_config.mar.buffer_size
    return Image2TextProcessor(
        tokenizer,
        cfg.image_size,
        image_tokens,
        max_text_length=max(cfg.max_text_length, 128) if src.max_text_length is None else src.max_text_length,
        pad_to_square=src.pad_to_square,
        require_image=src.task is Task.IMAGE_TO_TEXT,  # a micro-batch is all-image or all-text
    )


def build_mixture(
    cfg: TrainConfig, tokenizer, model_config: HarmonConfig, rank: int = 0, world_size: int = 1, start_step: int = 0
):
    """The MixtureLoader over every source of ``cfg`` (validated), for this rank."""
    specs = []
    for src in cfg.data:
        src.validate()
        dataset = build_dataset(src, cfg)
        processor = build_processor(src, cfg, tokenizer, model_config)
        specs.append(SourceSpec(src.name, src.task, dataset, processor, src.batch_size, weight=src.loss_weight))
    return MixtureLoader(
        specs,
        seed=cfg.seed,
        rank=rank,
        world_size=world_size,
        accum_steps=cfg.accum_steps,
        num_workers=cfg.num_workers,
        start_step=start_step,
    )
