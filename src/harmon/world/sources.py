"""The training data format "shapes": procedural shapes-world records, drawn on the fly from (seed, index).

A source of this format needs no path. Options (``SourceConfig.options``):
    task              text2image | caption | qa | text (default: text2image for a text2image source, else qa)
    seed              the records' seed (default: the run's seed)
    world_image_size  the size scenes are rendered at (default: the run's image_size)
    tag_weights       text2image: relative weights of the GenEval tags of prompt-style captions
    shape_questions   qa: also ask bare-shape existence questions ("Is there a circle in the image?")
    length            the number of records (default: unbounded)
"""

from __future__ import annotations

import functools

from harmon.data import ProceduralSource
from harmon.train.config import SourceConfig, TrainConfig
from harmon.world.data import shapes_record
from harmon.world.scene import WorldConfig


def build_shapes_dataset(src: SourceConfig, cfg: TrainConfig) -> ProceduralSource:
    """The dataset of one "shapes" source (registered with :func:`harmon.train.sources.register_format`)."""
    o = src.options
    kind = "text2image" if "text2image" in src.name else "image2text"
    task = o.get("task", "text2image" if kind == "text2image" else "qa")
    world = WorldConfig(image_size=o.get("world_image_size", cfg.image_size))
    fn = functools.partial(
        shapes_record,
        task,
        seed=int(o.get("seed", cfg.seed)),
        config=world,
        tag_weights=o.get("tag_weights"),
        shape_questions=bool(o.get("shape_questions", False)),
    )
    return ProceduralSource(fn, length=o.get("length"), kind=kind)
