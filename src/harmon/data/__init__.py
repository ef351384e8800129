"""Training data: sources of records, processors that turn records into tensors, and the mixture loader.

Typical wiring (one text2image and one image2text source, 4 + 1 samples per micro-batch)::

    t2i = SourceSpec("text2image", JsonlManifest("captions.jsonl"), Text2ImageProcessor(tok, 256), batch_size=4)
    i2t = SourceSpec("image2text", LlavaConversations("llava.json", with_image=True),
                     Image2TextProcessor(tok, 256, image_tokens=256 + 64), batch_size=1)
    loader = MixtureLoader([t2i, i2t], seed=0, rank=rank, world_size=world, accum_steps=2, num_workers=4)
    for batch in loader:  # {"text2image": {...}, "image2text": {...}}, one micro-batch
        step, micro = ...  # counted by the trainer (loader.position is the next one)
        losses = model(batch, generator=torch.Generator().manual_seed(loader.batch_seed(step, micro)))
"""

from harmon.data.formats import (
    JsonlManifest,
    LlavaConversations,
    OfficialLayout,
    ProceduralSource,
    ShardStream,
    WebDatasetShards,
    expand_braces,
    list_shards,
)
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
from harmon.data.records import (
    IMAGE_TOKEN,
    BadSample,
    caption_conversation,
    derive_seed,
    normalise_conversation,
)

__all__ = [
    "IMAGE_TOKEN",
    "BadSample",
    "Image2TextProcessor",
    "JsonlManifest",
    "LlavaConversations",
    "MixtureLoader",
    "OfficialLayout",
    "ProceduralSource",
    "ShardStream",
    "SourceSpec",
    "Text2ImageProcessor",
    "WebDatasetShards",
    "caption_conversation",
    "check_image",
    "collate_image2text",
    "collate_text2image",
    "derive_seed",
    "expand_braces",
    "list_shards",
    "normalise_conversation",
    "open_image",
    "pad_right",
]
