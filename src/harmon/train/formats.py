"""The registry of training data formats, and the generic formats (official, jsonl, llava, webdataset).

A *format* turns a :class:`SourceConfig` into a dataset of records. Formats register themselves::

    register_format("myformat", build, options=MyOptions, tasks=(Task.TEXT_TO_IMAGE,))

``build(src, cfg) -> dataset`` reads records of the layout ``src.record_task.record_kind`` (caption records when
``captions_from_pairs`` is set: :func:`build_dataset` then serves them as captioning conversations). ``options``
is a dataclass that ``src.format_options`` is validated into when the config is validated (unknown keys are refused
by name; an options class may define ``validate(self, src)``); the builder reads it with :func:`format_options`.
``tasks`` are the tasks the format's records can serve (default: caption records and conversations). The generic
formats (official, jsonl, llava, webdataset) register below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harmon.data.formats import JsonlManifest, LlavaConversations, OfficialLayout
from harmon.data.shards import WebDatasetEdits, WebDatasetShards
from harmon.data.tasks import Task

# The record tasks a format serves unless it says otherwise: caption records and conversations. (Reconstruction
# reads caption records, so every format that serves text2image serves it too: SourceConfig.record_task.)
CAPTIONS_AND_CONVERSATIONS = (Task.TEXT_TO_IMAGE, Task.IMAGE_TO_TEXT, Task.TEXT_ONLY)

if TYPE_CHECKING:  # the configs validate against this registry, so it reads them as types only
    from harmon.train.config import SourceConfig, TrainConfig

Builder = Callable[["SourceConfig", "TrainConfig"], Any]


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
    tasks: tuple[Task, ...] = CAPTIONS_AND_CONVERSATIONS,
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
        src.path,
        image_root=src.image_folder,
        kind=src.record_task.record_kind,
        instructions=src.instructions,
        captions=src.task is not Task.RECONSTRUCTION,  # reconstruction lines may hold only an image
    )


def build_llava(src: SourceConfig, cfg: TrainConfig) -> Any:
    """A mixed LLaVA file is read as two sources: image2text (entries with an image) and text_only (the others)."""
    return LlavaConversations(src.path, image_folder=src.image_folder, with_image=src.task is Task.IMAGE_TO_TEXT)


def build_webdataset(src: SourceConfig, cfg: TrainConfig) -> Any:
    """Caption shards (``jpg`` + ``txt``), or edit shards (``src.jpg`` + ``tgt.jpg`` + ``txt``) for image_edit."""
    if src.task is Task.IMAGE_EDIT:
        return WebDatasetEdits(src.path, seed=cfg.seed)
    return WebDatasetShards(src.path, seed=cfg.seed, captions=src.task is not Task.RECONSTRUCTION)


register_format("official", build_official, OfficialOptions, tasks=(Task.TEXT_TO_IMAGE, Task.IMAGE_TO_TEXT))
register_format("jsonl", build_jsonl, tasks=(*CAPTIONS_AND_CONVERSATIONS, Task.IMAGE_EDIT))
register_format("llava", build_llava, tasks=(Task.IMAGE_TO_TEXT, Task.TEXT_ONLY))
register_format("webdataset", build_webdataset, tasks=(Task.TEXT_TO_IMAGE, Task.IMAGE_EDIT))
