"""What a data source teaches: the typed ``Task`` that picks the loss of its batches.

Every training source declares one task. The loader puts it into each collated batch (``batch["task"]``) and
``Harmon.forward`` dispatches on it, so a source's name is a free label (it names the loss metric and seeds the
source's sampling, nothing more).

Records come in three layouts (see :mod:`harmon.data.records`): a *caption record* (``kind`` "text2image": an image
and its caption), a *conversation record* (``kind`` "image2text": turns with an optional image) and an *edit record*
(``kind`` "image_edit": source image, instruction, target image). A task reads one layout: ``Task.record_kind``
names it.
"""

from __future__ import annotations

from enum import Enum


class Task(str, Enum):
    """The training objective of a data source; the values are what configs and ``--set`` spell."""

    TEXT_TO_IMAGE = "text2image"  # caption -> image: the masked-autoregressive diffusion loss
    IMAGE_TO_TEXT = "image2text"  # image + question -> answer: cross-entropy on the answer; every sample has an image
    TEXT_ONLY = "text_only"  # conversations without an image: the same cross-entropy, no pixels in the batch
    IMAGE_EDIT = "image_edit"  # source image + instruction -> target image: the text-to-image loss on the target
    # image + a reconstruction template -> the same image (RecA): the text-to-image loss, read from caption records
    RECONSTRUCTION = "reconstruction"

    def __str__(self) -> str:
        return self.value

    @property
    def record_kind(self) -> str:
        """The record layout this task reads: "text2image" (caption records; reconstruction uses only their
        image), "image2text" (conversations) or "image_edit" (edit records)."""
        if self in (Task.TEXT_TO_IMAGE, Task.RECONSTRUCTION):
            return "text2image"
        if self in (Task.IMAGE_TO_TEXT, Task.TEXT_ONLY):
            return "image2text"
        return "image_edit"

    @property
    def image_conditioned(self) -> bool:
        """Whether the task's prompt holds an image (the understanding features of a condition image)."""
        return self in (Task.IMAGE_EDIT, Task.RECONSTRUCTION)


SUPPORTED_TASKS: tuple[Task, ...] = tuple(Task)


def parse_task(value: Task | str | None, where: str) -> Task:
    """``value`` as a Task; a missing or unknown value raises a ValueError that names ``where`` (e.g. "source
    'captions'") and the allowed values."""
    allowed = ", ".join(t.value for t in SUPPORTED_TASKS)
    if value is None or value == "":
        raise ValueError(f"{where}: set a task (one of {allowed})")
    try:
        return Task(value)
    except ValueError:
        raise ValueError(f"{where}: unknown task {value!r} (one of {allowed})") from None
