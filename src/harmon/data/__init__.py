"""Training data: sources of records, processors that turn records into tensors, and the mixture loader.

Typical wiring (one text-to-image and one image-to-text source, 4 + 1 samples per micro-batch)::

    t2i = SourceSpec("captions", Task.TEXT_TO_IMAGE, JsonlManifest("captions.jsonl"), Text2ImageProcessor(tok, 256),
                     batch_size=4)
    i2t = SourceSpec("qa", Task.IMAGE_TO_TEXT, LlavaConversations("llava.json", with_image=True),
                     Image2TextProcessor(tok, 256, image_tokens=256 + 64), batch_size=1)
    loader = MixtureLoader([t2i, i2t], seed=0, rank=rank, world_size=world, accum_steps=2, num_workers=4)
    for batch in loader:  # {"captions": {"task": Task.TEXT_TO_IMAGE, ...}, "qa": {...}}, one micro-batch
        step, micro = ...  # counted by the trainer (loader.position is the next one)
        losses = model(batch, generator=torch.Generator().manual_seed(loader.batch_seed(step, micro)))

The tensor-side modules (formats, shards, processing, mixture) load on first use, so ``Task`` and the records
helpers can be imported without torch (the model imports ``Task``; processing imports the model's constants).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from harmon.data.records import (
    IMAGE_TOKEN,
    BadSample,
    caption_conversation,
    derive_seed,
    normalise_conversation,
)
from harmon.data.tasks import Task

if TYPE_CHECKING:
    from harmon.data.conditioned import ImageConditionedProcessor, collate_conditioned
    from harmon.data.formats import CaptionView, JsonlManifest, LlavaConversations, OfficialLayout, ProceduralSource
    from harmon.data.mixture import MixtureLoader, SourceSpec
    from harmon.data.processing import (
        Image2TextProcessor,
        Text2ImageProcessor,
        check_image,
        collate_image2text,
        collate_text2image,
        open_image,
        pad_right,
    )
    from harmon.data.shards import ShardStream, WebDatasetEdits, WebDatasetShards, expand_braces, list_shards

_LAZY = {
    "harmon.data.conditioned": ("ImageConditionedProcessor", "collate_conditioned"),
    "harmon.data.formats": ("CaptionView", "JsonlManifest", "LlavaConversations", "OfficialLayout", "ProceduralSource"),
    "harmon.data.mixture": ("MixtureLoader", "SourceSpec"),
    "harmon.data.processing": (
        "Image2TextProcessor",
        "Text2ImageProcessor",
        "check_image",
        "collate_image2text",
        "collate_text2image",
        "open_image",
        "pad_right",
    ),
    "harmon.data.shards": ("ShardStream", "WebDatasetEdits", "WebDatasetShards", "expand_braces", "list_shards"),
}
_HOME = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'harmon.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)


__all__ = [
    "IMAGE_TOKEN",
    "BadSample",
    "CaptionView",
    "Image2TextProcessor",
    "ImageConditionedProcessor",
    "JsonlManifest",
    "LlavaConversations",
    "MixtureLoader",
    "OfficialLayout",
    "ProceduralSource",
    "ShardStream",
    "SourceSpec",
    "Task",
    "Text2ImageProcessor",
    "WebDatasetEdits",
    "WebDatasetShards",
    "caption_conversation",
    "check_image",
    "collate_conditioned",
    "collate_image2text",
    "collate_text2image",
    "derive_seed",
    "expand_braces",
    "list_shards",
    "normalise_conversation",
    "open_image",
    "pad_right",
]
