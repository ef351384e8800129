"""``harmon eval shapes``: fresh prompts and questions from the shapes world, scored exactly.

Generation is judged with GenEval's rules on objects recovered from pixels; answers with POPE's rule and exact
counting / colour / position / description checks. Everything is drawn from one seed, so a table is reproducible
from the command that printed it.

``harmon eval geneval --score shapes`` (:func:`score_shapes`): every image of a GenEval output folder is judged with
the same exact scorer (:func:`harmon.world.detection.detect_objects` + GenEval's rules in
:func:`harmon.world.scoring.judge_prompt`); accuracy per tag, overall = mean of the tag accuracies (GenEval's
summary). ``results.jsonl`` holds one row per image in the columns of GenEval's ``evaluate_images.py`` (filename,
tag, prompt, correct, reason, metadata), so its ``summary_scores.py`` reads it too; ``results.json`` holds the
tables. Scoring needs every prompt complete, so a multi-process run skips it: rerun once in one process with
``--score shapes`` (nothing is regenerated).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from harmon.eval.common import FormatError, write_jsonl_atomic, write_text_atomic
from harmon.eval.geneval import LazyImages, read_outputs
from harmon.images import load_image
from harmon.pipeline import HarmonPipeline
from harmon.world.detection import detect_objects
from harmon.world.prompts import sample_eval_prompts
from harmon.world.quality import world_distance
from harmon.world.questions import sample_eval_questions, sample_shape_existence_items
from harmon.world.render import render
from harmon.world.scene import WorldConfig
from harmon.world.scoring import explain_prompt, score_answers, score_generation


def generation_scores(
    pipe: HarmonPipeline, n_prompts: int, seed: int = 0, batch_size: int = 16, world=None, **settings: Any
) -> tuple[dict[str, Any], list, list]:
    """Generate one image for each of ``n_prompts`` balanced eval prompts and score them."""
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
    images = [render(scene, world) for scene, _ in items]
    return pipe.describe_many(images, [q["question"] for _, q in items], max_new_tokens=max_new_tokens)


def understanding_scores(
    pipe: HarmonPipeline, n_questions: int, seed: int = 0, world=None, max_new_tokens: int = 48
) -> tuple[dict[str, Any], list, list[str]]:
    """Answer ``n_questions`` balanced questions about fresh scenes (greedy) and score the answers."""
    world = world or WorldConfig(image_size=pipe.config.generation.understanding_image_size)
    items = sample_eval_questions(n_questions, torch.Generator().manual_seed(seed + 2), world)
    answers = _answers(pipe, items, world, max_new_tokens)
    return score_answers(items, answers, world), items, answers


def shape_existence_scores(
    pipe: HarmonPipeline, n: int, seed: int = 0, world=None, max_new_tokens: int = 48
) -> dict[str, float]:
    """POPE metrics of "Is there a <shape> in the image?" (POPE's own template: no colour) over ``n`` fresh scenes,
    half of them without the asked shape. Its own generator (seed + 3): the other tables do not move with ``n``."""
    world = world or WorldConfig(image_size=pipe.config.generation.understanding_image_size)
    items = sample_shape_existence_items(n, torch.Generator().manual_seed(seed + 3), world)
    return score_answers(items, _answers(pipe, items, world, max_new_tokens), world)["pope"]["shape"]


def evaluate_shapes(
    pipe: HarmonPipeline,
    n_prompts: int = 504,
    n_questions: int = 1512,
    seed: int = 0,
    n_shape_questions: int = 0,
    world_fid: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """Both tables plus wall times. Defaults: >= 500 prompts and >= 1,500 questions, multiples of 6 and 14.
    ``n_shape_questions``: also :func:`shape_existence_scores` on that many items. ``world_fid``: also the world's
    distribution distance of the generated images (:func:`harmon.world.quality.world_distance`)."""
    out: dict[str, Any] = {"seed": seed, "n_prompts": n_prompts, "n_questions": n_questions, "settings": settings}
    if n_prompts:
        t = time.perf_counter()
        out["generation"], prompts, images = generation_scores(pipe, n_prompts, seed, **settings)
        out["generation_seconds"] = time.perf_counter() - t
        if world_fid:
            world = WorldConfig(image_size=settings.get("image_size") or pipe.config.generation.image_size)
            out["world_distance"] = world_distance(images, prompts, seed, world)
    if n_questions:
        t = time.perf_counter()
        out["understanding"], _, _ = understanding_scores(pipe, n_questions, seed)
        out["understanding_seconds"] = time.perf_counter() - t
    if n_shape_questions:
        out["shape_existence"] = shape_existence_scores(pipe, n_shape_questions, seed)
        out["n_shape_questions"] = n_shape_questions
    return out


def score_shapes(outdir: str | Path, n_samples: int | None = None, world=None) -> dict[str, Any]:
    """Score every sample under ``outdir`` with the shapes world's exact scorer; writes results.json(l).

    Args:
        n_samples: when given, every prompt folder must hold at least this many samples.
        world: a :class:`harmon.world.scene.WorldConfig`; default the standard world at the images' size.
    Returns:
        :func:`harmon.world.scoring.score_generation`'s dict (one entry per image) plus ``n_prompts``, ``n_images``.
    """
    outdir = Path(outdir)
    entries = read_outputs(outdir)
    if not entries:
        raise ValueError(f"{outdir}: no prompt folders (all-digit names) to score")
    metas, paths = [], []
    for folder, meta, files in entries:
        if "tag" not in meta:
            raise FormatError(f"{folder / 'metadata.jsonl'}: no 'tag'; scoring needs GenEval metadata")
        if n_samples is not None and len(files) < n_samples:
            raise ValueError(f"{folder}: {len(files)} of {n_samples} samples; finish the generation first")
        metas += [meta] * len(files)
        paths += files
    images = LazyImages(paths)  # one image in memory at a time
    world = world or WorldConfig(image_size=images[0].width)
    result = score_generation(metas, images, world)
    rows = []
    for meta, path, ok in zip(metas, paths, result["correct"]):
        reason = "" if ok else "\n".join(explain_prompt(meta, detect_objects(load_image(path), world))[1])
        rows.append(
            {
                "filename": str(path.relative_to(outdir)),
                "tag": meta["tag"],
                "prompt": meta["prompt"],
                "correct": ok,
                "reason": reason,
                "metadata": json.dumps(meta),
            }
        )
    result.update(n_prompts=len(entries), n_images=len(paths), scorer="shapes")
    write_jsonl_atomic(outdir / "results.jsonl", rows)
    summary = {k: v for k, v in result.items() if k != "correct"}
    write_text_atomic(outdir / "results.json", json.dumps({**summary, "images": rows}, indent=2) + "\n")
    return result
