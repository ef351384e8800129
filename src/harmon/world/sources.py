"""The training data format "shapes": procedural shapes-world records, drawn on the fly from (seed, index).

A source of this format needs no path; its ``format_options`` are :class:`ShapesOptions`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from harmon.data import ProceduralSource
from harmon.data.tasks import Task
from harmon.train.config import SourceConfig, TrainConfig
from harmon.train.formats import format_options
from harmon.world.data import shapes_record
from harmon.world.data2 import check_options, edit_record_v2, record_v2
from harmon.world.edits import edit_type_probabilities
from harmon.world.planning import orders_for
from harmon.world.scene import WorldConfig

IMAGE2TEXT_KINDS = ("qa", "caption", "where", "reasoned", "layout")
TEXT2IMAGE_KINDS = ("placed",)  # text2image sources: placed descriptions instead of GenEval prompts
TEXT_KINDS = (
    "plan",
    "layout_edit",
    "layout_edit_named",
)  # text-only sources: layout plans instead of the world's sentences
KINDS = {Task.IMAGE_TO_TEXT: IMAGE2TEXT_KINDS, Task.TEXT_TO_IMAGE: TEXT2IMAGE_KINDS, Task.TEXT_ONLY: TEXT_KINDS}
CANONICAL_KINDS = ("where", "reasoned", "placed", "layout", "layout_edit", "layout_edit_named")
GRID_KINDS = (*CANONICAL_KINDS, "plan")  # kinds whose texts name the grid's quadrants; plans also in varied phrasings


@dataclass
class ShapesOptions:
    """format_options of the shapes world's endless procedural source."""

    # image2text: "qa" (questions about the scene, default), "caption" (descriptions) or "where" (grounding
    # questions: where a named object is, what a quadrant holds) or "reasoned" (position questions answered with both
    # places first); the last two on the grid level in canonical phrasings. text2image: "placed" (every object with
    # its quadrant, harmon.world.planning; grid, canonical); text only: "plan" (a prompt's layout written as places;
    # grid level, the prompt in canonical or varied phrasings). None: the task's usual records.
    kind: str | None = None
    seed: int | None = None  # seed of the world's records; None: the run's seed
    length: int | None = None  # records in the source; None: unbounded (the stream position is the record index)
    world_image_size: int | None = None  # size the scenes are drawn at; None: the run's image_size
    tag_weights: dict[str, float] | None = None  # text2image: relative weights of the GenEval prompt tags
    shape_questions: bool = False  # qa: also ask bare-shape existence questions ("Is there a circle ...?")
    # placed and plan: the order their placed descriptions list objects in (harmon.world.planning.ORDERS):
    # "reading", "any" or, plan only, "prompt"
    order: str = "reading"
    # World v2 (harmon.world.data2): "grid", "free" or "mixed" scenes; "canonical" (today's templates, grid only)
    # or "varied" (the grammar's seen phrasings, bare-shape questions always asked); the share of images drawn by
    # the anti-aliasing renderer. The defaults give today's records exactly.
    level: str = "grid"
    phrasings: str = "canonical"
    antialiased: float = 0.0
    # image_edit sources (harmon.world.data2.edit_record_v2; need phrasings "varied"): relative weights of the edit
    # types, e.g. {"recolor": 2, "move": 1}; None draws the six types uniformly.
    edit_weights: dict[str, float] | None = None

    def validate(self, src: SourceConfig) -> None:
        if self.kind is not None and self.kind not in KINDS.get(src.task, ()):
            known = {task.value: kinds for task, kinds in KINDS.items()}
            raise ValueError(f"kind {self.kind!r} is not one of a {src.task.value} source's kinds; known: {known}")
        if self.kind in CANONICAL_KINDS and not self.canonical:
            raise ValueError(
                f"kind {self.kind!r} asks about grid scenes in canonical phrasing: set level 'grid' and phrasings "
                "'canonical'"
            )
        if self.kind in GRID_KINDS and self.level != "grid":
            raise ValueError(f"kind {self.kind!r} names the grid's quadrants: set level 'grid', got {self.level!r}")
        if self.tag_weights is not None and not (
            self.world_task(src.record_task) in ("text2image", "plan") and isinstance(self.tag_weights, dict)
        ):
            raise ValueError(
                f"tag_weights is a {{tag: weight}} dict for text2image and plan records, got {self.tag_weights!r}"
            )
        orders = orders_for(self.world_task(src.record_task))
        if self.order not in orders:
            raise ValueError(
                f"order {self.order!r} does not apply to this source; it takes {orders} (placed: reading or any; "
                "plan: also prompt; others: reading)"
            )
        if self.shape_questions and self.world_task(src.task) != "qa":
            raise ValueError("shape_questions applies to qa sources only")
        if self.length is not None and self.length < 1:
            raise ValueError(f"length must be >= 1 or None, got {self.length}")
        check_options(self.level, self.phrasings, float(self.antialiased))
        if self.world_task(src.task) == "edit":
            if self.phrasings == "canonical":
                raise ValueError("edit records have no canonical phrasing; set phrasings 'varied'")
            edit_type_probabilities(self.edit_weights)
        elif self.edit_weights is not None:
            raise ValueError("edit_weights applies to image_edit sources only")
        if self.shape_questions and self.phrasings != "canonical":
            raise ValueError("shape_questions is for canonical phrasings; varied qa always asks bare-shape questions")

    @property
    def canonical(self) -> bool:
        """Whether the source draws today's records (grid level, canonical phrasings)."""
        return self.level == "grid" and self.phrasings == "canonical"

    def world_task(self, task: Task) -> str:
        """The world's record task (harmon.world.data.TASKS, or "edit") for a source's task."""
        if task is Task.IMAGE_EDIT:
            return "edit"
        usual = {Task.TEXT_TO_IMAGE: "text2image", Task.TEXT_ONLY: "text"}.get(task, "qa")
        return self.kind or usual


def build_shapes_dataset(src: SourceConfig, cfg: TrainConfig) -> ProceduralSource:
    """The dataset of one "shapes" source (registered by :mod:`harmon.world` under the format name "shapes")."""
    options = format_options(src)
    task = options.world_task(src.record_task)
    seed = cfg.seed if options.seed is None else int(options.seed)
    size = cfg.image_size if options.world_image_size is None else options.world_image_size
    if task == "edit":
        fn = functools.partial(
            edit_record_v2,
            seed=seed,
            image_size=size,
            level=options.level,
            phrasings=options.phrasings,
            antialiased=float(options.antialiased),
            edit_weights=options.edit_weights,
        )
        return ProceduralSource(fn, length=options.length, kind=src.record_task.record_kind)
    if not options.canonical:
        fn = functools.partial(
            record_v2,
            task,
            seed=seed,
            image_size=size,
            level=options.level,
            phrasings=options.phrasings,
            antialiased=float(options.antialiased),
            tag_weights=options.tag_weights,
            order=options.order,
        )
        return ProceduralSource(fn, length=options.length, kind=src.record_task.record_kind)
    fn = functools.partial(
        shapes_record,
        task,
        seed=seed,
        config=WorldConfig(image_size=size),
        tag_weights=options.tag_weights,
        shape_questions=bool(options.shape_questions),
        order=options.order,
    )
    return ProceduralSource(fn, length=options.length, kind=src.record_task.record_kind)
