"""The synthetic shapes world: scenes, GenEval-format prompts, POPE-style questions and exact scorers.

Used to train a tiny Harmon from scratch and to score its generation (GenEval rules) and understanding
(POPE, counting, colour, position, description) exactly, and edits (:mod:`harmon.world.edits`: source scene,
instruction, exact target; scored by :func:`harmon.world.edit_scoring.score_edit`).

    >>> import torch
    >>> from harmon.world import WorldConfig, sample_prompt, scene_for_prompt, render, detect_objects, judge_prompt
    >>> g = torch.Generator().manual_seed(0)
    >>> prompt = sample_prompt(g, "position")
    >>> image = render(scene_for_prompt(prompt, g))
    >>> judge_prompt(prompt, detect_objects(image))
    True

Importing this package also fills the tables generic code reads: the model size "shapes"
(:func:`harmon.config.register_size`), the training data format "shapes"
(:func:`harmon.train.sources.register_format`) and the trainer's quick eval "shapes"
and "shapes_v2" (:func:`harmon.train.hooks.register_eval`). Its training recipes are
:data:`harmon.world.recipes.RECIPES` and, for world v2 (:mod:`harmon.world.free`, :mod:`harmon.world.grammar`),
:data:`harmon.world.recipes_v2.RECIPES_V2`.
"""

from harmon.config import register_size
from harmon.data.tasks import Task
from harmon.eval.metrics import RELATIONS, pope_answer, relation
from harmon.train.formats import CAPTIONS_AND_CONVERSATIONS, register_format
from harmon.train.hooks import register_eval
from harmon.world.detect2 import DetectorV2Config, detect_objects_v2
from harmon.world.detection import DetectedObject, DetectorConfig, detect_objects
from harmon.world.edit_grammar import EDIT_TYPES, is_held_out_edit_phrasing
from harmon.world.edit_scoring import EditScore, score_edit
from harmon.world.edits import Edit, sample_edit
from harmon.world.free import LEVELS, free_world, level_scene_for_prompt, level_world, sample_level_scene
from harmon.world.grammar import is_held_out_phrasing
from harmon.world.hooks import shapes_quick, shapes_v2_quick
from harmon.world.language import sample_eval_prompts_v2, sample_prompt_v2
from harmon.world.prompts import (
    PromptMeta,
    caption_scene,
    describe_scene,
    format_prompt,
    make_prompt,
    parse_prompt,
    sample_eval_prompts,
    sample_prompt,
    scene_for_prompt,
    true_captions,
)
from harmon.world.questions import (
    Question,
    color_question,
    counting_question,
    describe_question,
    existence_question,
    negative_pairs,
    position_question,
    positive_pairs,
    sample_eval_questions,
    sample_questions,
)
from harmon.world.questions2 import sample_eval_questions_v2, sample_questions_v2
from harmon.world.recipes import harmon_shapes
from harmon.world.render import render, render_array, shape_mask
from harmon.world.render2 import render2, render2_array
from harmon.world.sampling import PairStatistics, pair_statistics, place_content, sample_scene
from harmon.world.scene import (
    DEFAULT_COLORS,
    SUPPORTED_SHAPES,
    Background,
    Scene,
    WorldConfig,
    WorldObject,
    check_scene,
)
from harmon.world.scoring import (
    POPE_SPLITS,
    QUESTION_TYPES,
    TAGS,
    answer_correct,
    explain_prompt,
    format_tables,
    judge_prompt,
    parse_color,
    parse_count,
    parse_description,
    score_answers,
    score_generation,
)
from harmon.world.sources import ShapesOptions, build_shapes_dataset

register_size("shapes", harmon_shapes, tokenizer_sized=True)
register_format(
    "shapes",
    build_shapes_dataset,
    ShapesOptions,
    tasks=(*CAPTIONS_AND_CONVERSATIONS, Task.IMAGE_EDIT),
    needs_path=False,
)
register_eval("shapes", shapes_quick)
register_eval("shapes_v2", shapes_v2_quick)

__all__ = [
    "DEFAULT_COLORS",
    "EDIT_TYPES",
    "LEVELS",
    "POPE_SPLITS",
    "QUESTION_TYPES",
    "RELATIONS",
    "SUPPORTED_SHAPES",
    "TAGS",
    "Background",
    "DetectedObject",
    "DetectorConfig",
    "DetectorV2Config",
    "Edit",
    "EditScore",
    "PairStatistics",
    "PromptMeta",
    "Question",
    "Scene",
    "WorldConfig",
    "WorldObject",
    "answer_correct",
    "caption_scene",
    "check_scene",
    "color_question",
    "counting_question",
    "describe_question",
    "describe_scene",
    "detect_objects",
    "detect_objects_v2",
    "existence_question",
    "explain_prompt",
    "format_prompt",
    "format_tables",
    "free_world",
    "is_held_out_edit_phrasing",
    "is_held_out_phrasing",
    "judge_prompt",
    "level_scene_for_prompt",
    "level_world",
    "make_prompt",
    "negative_pairs",
    "pair_statistics",
    "parse_color",
    "parse_count",
    "parse_description",
    "parse_prompt",
    "place_content",
    "pope_answer",
    "position_question",
    "positive_pairs",
    "relation",
    "render",
    "render2",
    "render2_array",
    "render_array",
    "sample_edit",
    "sample_eval_prompts",
    "sample_eval_prompts_v2",
    "sample_eval_questions",
    "sample_eval_questions_v2",
    "sample_level_scene",
    "sample_prompt",
    "sample_prompt_v2",
    "sample_questions",
    "sample_questions_v2",
    "sample_scene",
    "scene_for_prompt",
    "score_answers",
    "score_edit",
    "score_generation",
    "shape_mask",
    "true_captions",
]
