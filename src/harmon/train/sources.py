"""From SourceConfig entries to the data layer: datasets, processors and the MixtureLoader."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harmon.config import HarmonConfig
from harmon.data import (
    Image2TextProcessor,
    JsonlManifest,
    LlavaConversations,
    MixtureLoader,
    OfficialLayout,
    SourceSpec,
    Text2ImageProcessor,
    WebDatasetShards,
)
from harmon.data.records import derive_seed
from harmon.prompts import BRIEF_CAPTION_INSTRUCTIONS, DETAILED_CAPTION_INSTRUCTIONS
from harmon.train.config import SourceConfig, TrainConfig

# Formats that an application adds (``import harmon.world`` registers "shapes"): builder(src, cfg) -> dataset.
FORMATS: dict[str, Callable[[SourceConfig, TrainConfig], Any]] = {}


def register_format(name: str, builder: Callable[[SourceConfig, TrainConfig], Any]) -> None:
    """Make ``builder(src, cfg)`` build the dataset of every source whose ``format`` is ``name``."""
    FORMATS[name] = builder


def caption_conversation(record: dict, instruction: str) -> dict:
    """A text2image record (image + caption) as a captioning conversation."""
    return {
        "kind": "image2text",
        "image": record["image"],
        "conversation": [
            {"role": "user", "content": "<image>\n" + instruction},
            {"role": "assistant", "content": record["caption"]},
        ],
    }


class CaptionView:
    """Serve image-caption pairs of another source as captioning conversations (map-style or streamed)."""

    def __init__(self, dataset: Any, seed: int = 0, brief: bool = False) -> None:
        self.dataset, self.seed = dataset, seed
        self.instructions = BRIEF_CAPTION_INSTRUCTIONS if brief else DETAILED_CAPTION_INSTRUCTIONS
        if hasattr(dataset, "open_stream"):
            self.open_stream = self._open_stream

    def _pick(self, *key) -> str:
        return self.instructions[derive_seed(self.seed, "caption", *key) % len(self.instructions)]

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def unbounded(self) -> bool:
        return getattr(self.dataset, "unbounded", False)

    def record(self, i: int) -> dict:
        return caption_conversation(self.dataset.record(i), self._pick(i))

    def _open_stream(self, slot: int, num_slots: int, position=(0, 0)):
        return _CaptionStream(self.dataset.open_stream(slot, num_slots, position), self)


class _CaptionStream:
    def __init__(self, stream, view: CaptionView) -> None:
        self.stream, self.view = stream, view

    @property
    def position(self):
        return self.stream.position

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        record = next(self.stream)
        return caption_conversation(record, self.view._pick(*self.stream.position))


def build_dataset(src: SourceConfig, cfg: TrainConfig) -> Any:
    if src.format in FORMATS:
        return FORMATS[src.format](src, cfg)
    o = dict(src.options)
    kind = "text2image" if "text2image" in src.name else "image2text"
    as_caption = bool(o.pop("as_caption", False))
    if src.format == "official":
        ds = OfficialLayout(
            src.path,
            src.image_folder or ".",
            cap_folder=o.get("cap_folder"),
            cap_key=o.get("cap_key", "caption"),
            kind="text2image" if as_caption else kind,
            instructions=o.get("instructions", "detailed"),
            seed=cfg.seed,
        )
    elif src.format == "jsonl":
        ds = JsonlManifest(src.path, image_root=src.image_folder, kind=o.get("kind", None if as_caption else kind))
    elif src.format == "llava":
        # A mixed LLaVA file is read as two sources: with_image=True (default) and with_image=False (text-only).
        ds = LlavaConversations(src.path, image_folder=src.image_folder, with_image=bool(o.get("with_image", True)))
    elif src.format == "webdataset":
        ds = WebDatasetShards(src.path, seed=cfg.seed)
    else:  # validated earlier; a registered format whose package was not imported lands here
        raise ValueError(f"unknown format {src.format!r}; registered: {sorted(FORMATS)}")
    return CaptionView(ds, cfg.seed, brief=o.get("instructions") == "brief") if as_caption else ds


def build_processor(src: SourceConfig, cfg: TrainConfig, tokenizer, model_config: HarmonConfig):
    if "text2image" in src.name:
        return Text2ImageProcessor(
            tokenizer,
            cfg.image_size,
            max_length=cfg.max_text_length,
            cfg_drop_prob=float(src.options.get("cfg_drop_prob", 0.1)),
            crop=src.options.get("crop", "random"),
        )
    grid = cfg.image_size // model_config.token_px
    image_tokens = grid * grid + model_config.mar.buffer_size
    text_only = src.options.get("task") == "text" or src.options.get("with_image") is False
    require = not text_only  # a micro-batch is all-image or all-text
    return Image2TextProcessor(
        tokenizer,
        cfg.image_size,
        image_tokens,
        max_text_length=int(src.options.get("max_text_length", max(cfg.max_text_length, 128))),
        pad_to_square=bool(src.options.get("pad_to_square", True)),
        require_image=require,
    )


def build_mixture(
    cfg: TrainConfig, tokenizer, model_config: HarmonConfig, rank: int = 0, world_size: int = 1, start_step: int = 0
) -> MixtureLoader:
    specs = [
        SourceSpec(
            src.name,
            build_dataset(src, cfg),
            build_processor(src, cfg, tokenizer, model_config),
            batch_size=src.batch_size,
            weight=src.loss_weight,
        )
        for src in cfg.data
    ]
    return MixtureLoader(
        specs,
        seed=cfg.seed,
        rank=rank,
        world_size=world_size,
        accum_steps=cfg.accum_steps,
        num_workers=cfg.num_workers,
        start_step=start_step,
    )
