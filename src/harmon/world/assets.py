"""The shapes world's evaluation files, shipped under ``harmon/assets/eval`` in the benchmarks' own formats, and
the writers that produce them (each shipped file is its writer's output with the defaults; a test checks it).

* POPE (:func:`write_shapes_pope`): ``shapes_pope/{random,popular,adversarial}.json`` with 50 rendered 64 px
  scenes in ``shapes_pope/images/`` shared by the three splits (as POPE's 500 COCO images are); per split and
  image one present object ("yes") and one absent object chosen by the split's rule ("no"): 100 questions per
  split, exactly half "yes".
* MME (:func:`write_shapes_mme`): ``shapes_mme/questions.jsonl`` (MME layout 1) with images in
  ``shapes_mme/images/``: sub-tasks existence, count, position, color; 15 images each, a "Yes" and a "No" question
  per image. The questions omit MME's "Please answer yes or no." suffix: the shapes-world model was trained on
  bare questions (:mod:`harmon.world.questions`), and the suffix is part of the data, not the runner.
* Multiple choice (:func:`write_shapes_mc`): ``shapes_mc.tsv``, MMBench's layout with base64 64 px images;
  categories color ("What color is the circle?", 4 colours), counting ("How many squares are there?", 4
  consecutive numbers in digits) and object ("Which object is in the image?", 3 objects, so column D is empty),
  20 each.
* GenEval (:func:`write_shapes_metadata`): ``shapes_geneval_metadata.jsonl``, 120 prompts balanced over the six
  tags.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from harmon.eval.common import image_to_base64, save_image_atomic, write_jsonl_atomic, write_text_atomic
from harmon.eval.multiple_choice import LETTERS
from harmon.world.prompts import sample_eval_prompts
from harmon.world.questions import (
    color_question,
    counting_question,
    existence_question,
    negative_pairs,
    position_question,
    positive_pairs,
)
from harmon.world.render import render
from harmon.world.sampling import choice, sample_scene
from harmon.world.scene import NUMBER_WORDS, WorldConfig, noun_phrase, plural
from harmon.world.scoring import POPE_SPLITS

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets" / "eval"
SHAPES_POPE = ASSETS_DIR / "shapes_pope"
SHAPES_MME = ASSETS_DIR / "shapes_mme"
SHAPES_MC = ASSETS_DIR / "shapes_mc.tsv"
SHAPES_METADATA = ASSETS_DIR / "shapes_geneval_metadata.jsonl"


def draw_until(draw: Callable[[], Any], what: str, tries: int = 100) -> Any:
    """The first non-None result of ``draw()`` within ``tries`` calls (a scene that admits the question)."""
    for _ in range(tries):
        got = draw()
        if got is not None:
            return got
    raise RuntimeError(f"no scene in {tries} draws admits a {what} question")


# ---- POPE ---------------------------------------------------------------------------------------------------


def write_shapes_pope(outdir: str | Path = SHAPES_POPE, n_images: int = 50, seed: int = 0, config=None) -> Path:
    """Write the shapes world's POPE splits in POPE's format (see the module docstring) under ``outdir``."""
    config = config or WorldConfig()
    outdir = Path(outdir)
    g = torch.Generator().manual_seed(seed)
    scenes = [sample_scene(g, config) for _ in range(n_images)]
    names = [f"shapes_{i:05d}.png" for i in range(n_images)]
    for scene, name in zip(scenes, names):
        save_image_atomic(render(scene, config), outdir / "images" / name)
    for split in POPE_SPLITS:
        rows = []
        for scene, name in zip(scenes, names):
            pos = positive_pairs(scene, g, 1)
            neg = negative_pairs(scene, g, config, split, 1)
            for pair, present in ((pos[0], True), (neg[0], False)):
                q = existence_question(pair, present, split)
                rows.append(
                    {"question_id": len(rows) + 1, "image": name, "text": q["question"], "label": q["answer"].lower()}
                )
        write_jsonl_atomic(outdir / f"{split}.json", rows)
    return outdir


def shipped_question_files() -> list[Path]:
    """The shipped POPE files, one per split."""
    return [SHAPES_POPE / f"{split}.json" for split in POPE_SPLITS]


# ---- MME ----------------------------------------------------------------------------------------------------


def _count_phrase(n: int, shape: str) -> str:
    return (
        f"Is there one {shape} in the image?"
        if n == 1
        else f"Are there {NUMBER_WORDS[n]} {plural(shape)} in the image?"
    )


def _pair_for(subtask: str, g: torch.Generator, config) -> tuple[Any, tuple[str, str]] | None:
    """(scene, (yes question, no question)) for one image of ``subtask``; None when the scene does not fit."""
    scene = sample_scene(g, config)
    if subtask == "existence":
        yes = existence_question(positive_pairs(scene, g, 1)[0], True, "random")["question"]
        no = existence_question(negative_pairs(scene, g, config, "random", 1)[0], False, "random")["question"]
        return scene, (yes, no)
    if subtask == "count":
        shape = choice(g, [s for s in config.shapes if scene.count(shape=s)])
        n = scene.count(shape=shape)
        wrong = n + 1 if n == 1 or bool(torch.randint(0, 2, (1,), generator=g).item()) else n - 1
        return scene, (_count_phrase(n, shape), _count_phrase(wrong, shape))
    if subtask == "position":
        state = g.get_state()
        yes_q = position_question(scene, g, positive=True)
        if yes_q is None:
            return None
        g.set_state(state)  # the same object pair, asked with the opposite relation
        return scene, (yes_q["question"], position_question(scene, g, positive=False)["question"])
    if subtask == "color":
        unique = [o for o in scene.objects if scene.count(shape=o.shape) == 1]
        if not unique:
            return None
        obj = choice(g, unique)
        wrong = choice(g, [c for c in config.color_names if c != obj.color])
        return scene, (
            f"Is there {noun_phrase(obj.shape, obj.color)} in the image?",
            f"Is there {noun_phrase(obj.shape, wrong)} in the image?",
        )
    raise ValueError(f"no shapes-world questions for sub-task {subtask!r}")


def write_shapes_mme(outdir: str | Path = SHAPES_MME, n_per_subtask: int = 15, seed: int = 0, config=None) -> Path:
    """Write the shapes world's MME-style file (layout 1) and its images under ``outdir``."""
    config = config or WorldConfig()
    outdir = Path(outdir)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for subtask in ("existence", "count", "position", "color"):
        for i in range(n_per_subtask):
            scene, (yes, no) = draw_until(lambda s=subtask: _pair_for(s, g, config), subtask)
            name = f"{subtask}_{i:03d}.png"
            save_image_atomic(render(scene, config), outdir / "images" / name)
            rows += [
                {"subtask": subtask, "image": f"images/{name}", "question": q, "answer": a}
                for q, a in ((yes, "Yes"), (no, "No"))
            ]
    write_jsonl_atomic(outdir / "questions.jsonl", rows)
    return outdir


# ---- multiple choice ----------------------------------------------------------------------------------------


def _shuffled(items: list, g: torch.Generator) -> list:
    return [items[i] for i in torch.randperm(len(items), generator=g).tolist()]


def _shapes_question(category: str, g: torch.Generator, config) -> tuple[Any, str, list[str], int] | None:
    """(scene, question, options, gold position) or None when the scene does not fit the category."""
    scene = sample_scene(g, config)
    if category == "color":
        q = color_question(scene, g, config)
        if q is None:
            return None
        gold = q["answer"]
        others = _shuffled([c.capitalize() for c in config.color_names if c.capitalize() != gold], g)[:3]
        return scene, q["question"], [gold, *others], 0
    if category == "counting":
        q = counting_question(scene, g, config)
        n = int(q["answer"])
        lo = max(0, min(n - 1, config.max_objects - 3))  # four consecutive numbers holding n
        return scene, q["question"], [str(k) for k in range(lo, lo + 4)], n - lo  # digits, as trained
    if category == "object":
        present = set(scene.pairs)
        gold = positive_pairs(scene, g, 1)[0]
        absent = _shuffled([p for p in config.pairs() if p not in present], g)[:2]
        phrase = [noun_phrase(s, c).split(" ", 1)[1] for c, s in (gold, *absent)]  # "red circle"
        return scene, "Which object is in the image?", phrase, 0
    raise ValueError(f"no shapes-world questions for category {category!r}")


def write_shapes_mc(path: str | Path = SHAPES_MC, n_per_category: int = 20, seed: int = 0, config=None) -> Path:
    """Write the shapes world's multiple-choice TSV (MMBench layout, base64 images; see the module docstring)."""
    config = config or WorldConfig()
    g = torch.Generator().manual_seed(seed)
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(header)
    index = 0
    for category in ("color", "counting", "object"):
        for _ in range(n_per_category):
            scene, question, options, gold = draw_until(lambda c=category: _shapes_question(c, g, config), category)
            if category != "counting":  # counting options stay in increasing order, as numbers are usually listed
                order = torch.randperm(len(options), generator=g).tolist()
                options, gold = [options[i] for i in order], order.index(gold)
            cells = options + [""] * (4 - len(options))
            writer.writerow(
                [
                    index,
                    question,
                    "",
                    *cells,
                    LETTERS[gold],
                    category,
                    image_to_base64(render(scene, config)),
                ]
            )
            index += 1
    return write_text_atomic(path, buf.getvalue())


# ---- GenEval ------------------------------------------------------------------------------------------------


def write_shapes_metadata(path: str | Path = SHAPES_METADATA, n: int = 120, seed: int = 0, config=None) -> Path:
    """Write ``n`` shapes-world prompts in GenEval's format (balanced over the six tags, fixed ``seed``).

    The shipped file is ``write_shapes_metadata()`` with the defaults.
    """
    prompts = sample_eval_prompts(n, torch.Generator().manual_seed(seed), config)
    return write_jsonl_atomic(path, prompts)
