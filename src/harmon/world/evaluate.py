"""``harmon eval shapes``: fresh prompts and questions from the shapes world, scored exactly.

Generation is judged with GenEval's rules on objects recovered from pixels; answers with POPE's rule and exact
counting / colour / position / description checks. Everything is drawn from one seed, so a table is reproducible
from the command that printed it.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from harmon.pipeline import HarmonPipeline


def generation_scores(
    pipe: HarmonPipeline, n_prompts: int, seed: int = 0, batch_size: int = 16, world=None, **settings: Any
) -> tuple[dict[str, Any], list, list]:
    """Generate one image for each of ``n_prompts`` balanced eval prompts and score them."""
    from harmon.world import WorldConfig, sample_eval_prompts, score_generation

    world = world or WorldConfig(image_size=settings.get("image_size") or pipe.config.generation.image_size)
    prompts = sample_eval_prompts(n_prompts, torch.Generator().manual_seed(seed), world)
    generator = torch.Generator().manual_seed(seed + 1)
    images = []
    for i in range(0, len(prompts), batch_size):
        chunk = [p["prompt"] for p in prompts[i : i + batch_size]]
        images += pipe.generate(chunk, generator=generator, **settings)
    return score_generation(prompts, images, world), prompts, images


def _answers(pipe: HarmonPipeline, items: list, world, max_new_tokens: int) -> list[str]:
    """Greedy answers to (scene, question) items, each scene rendered in ``world``."""
    from harmon.world import render

    return [pipe.describe(render(scene, world), q["question"], max_new_tokens=max_new_tokens) for scene, q in items]


def understanding_scores(
    pipe: HarmonPipeline, n_questions: int, seed: int = 0, world=None, max_new_tokens: int = 48
) -> tuple[dict[str, Any], list, list[str]]:
    """Answer ``n_questions`` balanced questions about fresh scenes (greedy) and score the answers."""
    from harmon.world import WorldConfig, sample_eval_questions, score_answers

    world = world or WorldConfig(image_size=pipe.config.generation.understanding_image_size)
    items = sample_eval_questions(n_questions, torch.Generator().manual_seed(seed + 2), world)
    answers = _answers(pipe, items, world, max_new_tokens)
    return score_answers(items, answers, world), items, answers


def shape_existence_scores(
    pipe: HarmonPipeline, n: int, seed: int = 0, world=None, max_new_tokens: int = 48
) -> dict[str, float]:
    """POPE metrics of "Is there a <shape> in the image?" (POPE's own template: no colour) over ``n`` fresh scenes,
    half of them without the asked shape. Its own generator (seed + 3): the other tables do not move with ``n``."""
    from harmon.world import WorldConfig, score_answers
    from harmon.world.questions import sample_shape_existence_items

    world = world or WorldConfig(image_size=pipe.config.generation.understanding_image_size)
    items = sample_shape_existence_items(n, torch.Generator().manual_seed(seed + 3), world)
    return score_answers(items, _answers(pipe, items, world, max_new_tokens), world)["pope"]["shape"]


def evaluate_shapes(
    pipe: HarmonPipeline,
    n_prompts: int = 504,
    n_questions: int = 1512,
    seed: int = 0,
    n_shape_questions: int = 0,
    **settings: Any,
) -> dict[str, Any]:
    """Both tables plus wall times. Defaults: >= 500 prompts and >= 1,500 questions, multiples of 6 and 14.
    ``n_shape_questions``: also :func:`shape_existence_scores` on that many items."""
    out: dict[str, Any] = {"seed": seed, "n_prompts": n_prompts, "n_questions": n_questions, "settings": settings}
    if n_prompts:
        t = time.perf_counter()
        out["generation"], _, _ = generation_scores(pipe, n_prompts, seed, **settings)
        out["generation_seconds"] = time.perf_counter() - t
    if n_questions:
        t = time.perf_counter()
        out["understanding"], _, _ = understanding_scores(pipe, n_questions, seed)
        out["understanding_seconds"] = time.perf_counter() - t
    if n_shape_questions:
        out["shape_existence"] = shape_existence_scores(pipe, n_shape_questions, seed)
        out["n_shape_questions"] = n_shape_questions
    return out
