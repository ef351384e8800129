"""From SourceConfig entries to the data layer: the format registry, datasets, processors and the MixtureLoader.

A *format* turns a :class:`SourceConfig` into a dataset of records. Formats register themselves::

    register_format("myformat", build, options=MyOptions, tasks=(Task.TEXT_TO_IMAGE,))

``build(src, cfg) -> dataset`` reads records of the layout ``src.record_task.record_kind`` (caption records when
``captions_from_pairs`` is set: :func:`build_dataset` then serves them as captioning conversations). ``options``
is a dataclass that ``src.format_options`` is validated into when the config is validated (unknown keys are refused
by name; an options class may define ``validate(self, src)``); the builder reads it with :func:`format_options`.
``tasks`` are the tasks the format's records can serve. The generic formats (official, jsonl, llava, webdataset)
register below.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harmon.config import HarmonConfig
from harmon.data.formats import CaptionView, JsonlManifest, LlavaConversations, OfficialLayout, ProceduralSource
from harmon.data.mixture import MixtureLoader, SourceSpec
from harmon.data.processing import Image2TextProcessor, Text2ImageProcessor
from harmon.data.shards import WebDatasetShards
from harmon.data.tasks import SUPPORTED_TASKS, Task
from harmon.train.config import SourceConfig, TrainConfig

Builder = Callable[[SourceConfig, TrainConfig], Any]


@dataclass(frozen=True)
class FormatInfo:
    """What a registered format declares besides its builder."""

    options: type | None  # dataclass of its format_options; None: the format takes none
    tasks: tuple[Task, ...]  # tasks its records serve (captions_from_pairs needs text2image among them)
    needs_path: bool  # False for procedural formats that read no file


FORMATS: dict[str, Builder] = {}
FORMAT_INFO: dict[str, FormatInfo] = {}


def register_format(
    name: str,
    builder: Builder,
    options: type | None = None,
    tasks: tuple[Task, ...] = SUPPORTED_TASKS,
    needs_path: bool = True,
) -> None:
    """Make ``format=name`` build its datasets with ``builder(src, cfg)`` (a later registration replaces one)."""
    if options is not None and not dataclasses.is_dataclass(options):
        raise TypeError(f"format {name}: options must be a dataclass, got {options!r}")
    FORMATS[name] = builder
    FORMAT_INFO[name] = FormatInfo(options, tuple(Task(t) for t in tasks), needs_path)


def format_options(src: SourceConfig) -> Any:
    """``src.format_options`` as an instance of its format's options dataclass (None for a format without any)."""
    where = f"source {src.name!r} (format {src.format})"
    info = FORMAT_INFO[src.format]
    given = dict(src.format_options or {})
    if info.options is None:
        if given:
            raise ValueError(f"{where}: the format takes no format_options, got {sorted(given)}")
        return None
    known = {f.name for f in dataclasses.fields(info.options)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"{where}: unknown format option(s) {unknown}; known: {', '.join(sorted(known))}")
    options = info.options(**given)
    if hasattr(options, "validate"):
        try:
            options.validate(src)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    return options


def check_format(src: SourceConfig) -> None:
    """The format-dependent checks of ``SourceConfig.validate`` (the task is parsed already)."""
    where = f"source {src.name!r}"
    if src.format not in FORMATS:
        raise ValueError(f"{where}: unknown format {src.format!r} (registered: {', '.join(sorted(FORMATS))})")
    info = FORMAT_INFO[src.format]
    if src.record_task not in info.tasks:
        served = ", ".join(t.value for t in info.tasks)
        hint = (
            "; for captioning from its pairs set captions_from_pairs=true" if Task.TEXT_TO_IMAGE in info.tasks else ""
        )
        raise ValueError(f"{where}: format {src.format} serves {served}, not {src.record_task.value}{hint}")
    if info.needs_path and not src.path:
        raise ValueError(f"{where}: format {src.format} needs a path (--set data.N.path=...)")
    format_options(src)


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class OfficialOptions:
    """format_options of the official layout (``data_info.json`` + per-image annotation JSONs)."""

    cap_folder: str | None = None  # root of the annotation paths (default: image_folder)
    cap_key: str = "caption"  # key of the caption inside an annotation JSON

    def validate(self, src: SourceConfig) -> None:
        if not isinstance(self.cap_key, str) or not self.cap_key:
            raise ValueError(f"cap_key must be a non-empty string, got {self.cap_key!r}")


def build_official(src: SourceConfig, cfg: TrainConfig) -> Any:
    options = format_options(src)
    return OfficialLayout(
        src.path,
        src.image_folder or ".",
        cap_folder=options.cap_folder,
        cap_key=options.cap_key,
        kind=src.record_task.record_kind,
        instructions=src.instructions,
        seed=cfg.seed,
    )


def build_jsonl(src: SourceConfig, cfg: TrainConfig) -> Any:
    return JsonlManifest(
        src.path, image_root=src.image_folder, kind=src.record_task.record_kind, instructions=src.instructions
    )


def build_llava(src: SourceConfig, cfg: TrainConfig) -> Any:
    """A mixed LLaVA file is read as two sources: image2text (entries with an image) and text_only (the others)."""
    return LlavaConversations(src.path, image_folder=src.image_folder, with_image=src.task is Task.IMAGE_TO_TEXT)


def build_webdataset(src: SourceConfig, cfg: TrainConfig) -> Any:
    return WebDatasetShards(src.path, seed=cfg.seed)


register_format("official", build_official, OfficialOptions, tasks=(Task.TEXT_TO_IMAGE, Task.IMAGE_TO_TEXT))
register_format("jsonl", build_jsonl)
register_format("llava", build_llava, tasks=(Task.IMAGE_TO_TEXT, Task.TEXT_ONLY))
register_format("webdataset", build_webdataset, tasks=(Task.TEXT_TO_IMAGE,))


# ---------------------------------------------------------------------------------------------------------------
def build_dataset(src: SourceConfig, cfg: TrainConfig) -> Any:
    """The dataset of ``src``: its format's records, as captioning conversations when captions_from_pairs."""
    dataset = FORMATS[src.format](src, cfg)
    return CaptionView(dataset, cfg.seed, src.instructions) if src.captions_from_pairs else dataset


def build_processor(src: SourceConfig, cfg: TrainConfig, tokenizer, model_config: HarmonConfig):
    """The record -> sample processor of ``src``'s task."""
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


# ---------------------------------------------------------------------------------------------------------------
# The shapes world's procedural format. It belongs to the world package (harmon.world.sources registers it there);
# it sits here until that package registers it itself, importing the world only when a dataset is built.
@dataclass
class ShapesOptions:
    """format_options of the shapes world's endless procedural source."""

    kind: str | None = None  # image2text: "qa" (questions about the scene, default) or "caption" (descriptions)
    seed: int | None = None  # seed of the world's records; None: the run's seed
    length: int | None = None  # records in the source; None: unbounded (the stream position is the record index)
    world_image_size: int | None = None  # size the scenes are drawn at; None: the run's image_size
    tag_weights: dict[str, float] | None = None  # text2image: relative weights of the GenEval prompt tags
    shape_questions: bool = False  # qa: also ask bare-shape existence questions ("Is there a circle ...?")

    def validate(self, src: SourceConfig) -> None:
        if self.kind is not None and (src.task is not Task.IMAGE_TO_TEXT or self.kind not in ("qa", "caption")):
            raise ValueError(f"kind {self.kind!r}: an image2text source draws 'qa' or 'caption'; other tasks set none")
        if self.tag_weights is not None and not (
            src.record_task is Task.TEXT_TO_IMAGE and isinstance(self.tag_weights, dict)
        ):
            raise ValueError(f"tag_weights is a {{tag: weight}} dict for text2image records, got {self.tag_weights!r}")
        if self.shape_questions and self.world_task(src.task) != "qa":
            raise ValueError("shape_questions applies to qa sources only")
        if self.length is not None and self.length < 1:
            raise ValueError(f"length must be >= 1 or None, got {self.length}")

    def world_task(self, task: Task) -> str:
        """The world's record task (harmon.world.data.TASKS) for a source's task."""
        if task is Task.TEXT_TO_IMAGE:
            return "text2image"
        return "text" if task is Task.TEXT_ONLY else self.kind or "qa"


def build_shapes(src: SourceConfig, cfg: TrainConfig) -> Any:
    from harmon.world.data import shapes_record
    from harmon.world.scene import WorldConfig

    options = format_options(src)
    world = WorldConfig(image_size=cfg.image_size if options.world_image_size is None else options.world_image_size)
    fn = functools.partial(
        shapes_record,
        options.world_task(src.record_task),
        seed=cfg.seed if options.seed is None else int(options.seed),
        config=world,
        tag_weights=options.tag_weights,
        shape_questions=bool(options.shape_questions),
    )
    return ProceduralSource(fn, length=options.length, kind=src.record_task.record_kind)


register_format("shapes", build_shapes, ShapesOptions, needs_path=False)
