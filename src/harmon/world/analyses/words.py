"""Does the generator bind each prompt word to what it draws? Teacher-forced loss under every candidate word.

For a colour, say green: render shapes-world scenes of one green object, then score the text-to-image loss of
those same images (nothing visible, the state of the first sampling step) under the prompts "a red <shape>",
"a green <shape>", "a blue <shape>", ... with the same masks, timesteps and noise for every prompt. A generator
that uses the word has its lowest loss under "green", and the gap to the other words says how strongly it tells
them apart. A word whose row is flat is not bound: the sampler can only draw that attribute from the prior, and no
sampling setting can fix it. Shapes work the same way ("a green circle" vs "a green square" on green circles).

This is the check that explains GenEval-rule colour failures: it reads the model's conditional distribution
directly instead of sampling it.
"""

from __future__ import annotations

from typing import Any

import torch

from harmon.data import Text2ImageProcessor
from harmon.data.processing import collate_text2image
from harmon.images import prepare_for_understanding
from harmon.world.analyses.context import teacher_forced_loss
from harmon.world.detection import detect_objects
from harmon.world.prompts import parse_prompt, scene_for_prompt
from harmon.world.render import render
from harmon.world.sampling import place_objects
from harmon.world.scene import Scene, WorldConfig, noun_phrase

ATTRIBUTES = ("color", "shape")


def _axes(world, attribute: str) -> tuple[list[str], list[str]]:
    """(the attribute's values, the other attribute's values) of ``world``; refuses an unknown attribute."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute must be one of {ATTRIBUTES}, got {attribute!r}")
    colors, shapes = list(world.color_names), list(world.shapes)
    return (colors, shapes) if attribute == "color" else (shapes, colors)


def _pair(attribute: str, word: str, other: str) -> tuple[str, str]:
    """(colour, shape) of a case whose ``attribute`` is ``word`` and whose other attribute is ``other``."""
    return (word, other) if attribute == "color" else (other, word)


@torch.no_grad()
def word_binding(
    pipe, attribute: str = "color", n_scenes: int = 24, repeats: int = 6, seed: int = 0, image_size: int | None = None
) -> dict[str, Any]:
    """Loss of each attribute word on images of each true value of that attribute, averaged over the other one.

    Returns a dict with ``words`` (the attribute's values), ``loss`` (true x word matrix, lists of floats; entry
    [i][j] is the mean loss of images whose true value is words[i] under a prompt naming words[j]), ``gap``
    (loss minus the diagonal: > 0 where the true word wins), ``bound`` (per true word, whether its own word has
    the lowest loss) and ``accuracy`` (share of (true value, other attribute) cases whose own word is lowest).
    Held-out (colour, shape) pairs are skipped as true values; every word is tried as a prompt.
    """
    size = image_size or pipe.config.generation.image_size
    world = WorldConfig(image_size=size)
    words, others = _axes(world, attribute)
    if n_scenes < 1 or repeats < 1:
        raise ValueError(f"n_scenes and repeats must be >= 1, got {n_scenes} and {repeats}")
    model = pipe.model
    seeds = [seed * 7919 + r for r in range(repeats)]
    proc = Text2ImageProcessor(pipe.tokenizer, size, cfg_drop_prob=0.0)
    was_training = model.training
    model.eval()
    sums = torch.zeros(len(words), len(words), dtype=torch.float64)
    counts = torch.zeros(len(words), dtype=torch.float64)
    wins = cases = 0
    for i, true in enumerate(words):
        for k, other in enumerate(others):
            color, shape = _pair(attribute, true, other)
            if world.is_held_out(color, shape):
                continue
            g = torch.Generator().manual_seed(seed * 1_000_003 + i * 1009 + k)
            meta = parse_prompt(noun_phrase(shape, color), world)
            images = [render(scene_for_prompt(meta, g, world), world) for _ in range(n_scenes)]
            row = _losses_per_word(model, proc, images, attribute, words, other, size, seeds)
            sums[i] += row
            counts[i] += 1
            cases += 1
            wins += int(int(row.argmin()) == i)
    model.train(was_training)
    loss = sums / counts.clamp(min=1)[:, None]
    gap = loss - loss.diagonal()[:, None]
    return {
        "attribute": attribute,
        "words": words,
        "loss": loss.tolist(),
        "gap": gap.tolist(),
        "bound": [bool(counts[i] > 0 and int(loss[i].argmin()) == i) for i in range(len(words))],
        "accuracy": wins / cases if cases else 0.0,
        "cases": cases,
        "n_scenes": n_scenes,
        "repeats": repeats,
        "seed": seed,
    }


def _losses_per_word(
    model, proc, images: list, attribute: str, words: list[str], other: str, size: int, seeds: list[int]
) -> torch.Tensor:
    """(len(words),) float64: the teacher-forced loss of ``images`` under the prompt naming each word (with
    ``other`` as the other attribute), the same masks, timesteps and noise for every word."""
    grid = model.grid_for(size)
    row = torch.zeros(len(words), dtype=torch.float64)
    tokens = None
    for j, word in enumerate(words):
        c, s = _pair(attribute, word, other)
        batch = collate_text2image(
            [proc({"kind": "text2image", "image": im, "caption": noun_phrase(s, c)}) for im in images], proc.pad_id
        )
        if tokens is None:  # the same images under every word: encode them once
            tokens = model.encode_images(batch["pixels"].to(model.device))
        ids, am = batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device)
        row[j] = teacher_forced_loss(model, tokens, ids, am, grid, 0, seeds)  # same draws for every word
    return row


@torch.no_grad()
def colour_latent_distances(pipe, n_scenes: int = 32, seed: int = 0, image_size: int | None = None) -> dict[str, Any]:
    """How far apart the VAE puts the world's colours: distances between colour means of object tokens.

    For each colour, ``n_scenes`` one-object scenes (random allowed shape, size and cell) are encoded; an object's
    vector is the mean of the latent tokens its box touches, in the unit-variance latents the generator models
    (the VAE's scale factor applied). Returns ``words``, ``distance`` (colour x colour, lists of floats) and
    ``closest`` (the nearest pair and its distance). A colour word's training signal grows with these distances:
    neighbours much closer than the rest are the ones a generator learns to tell apart last.
    """
    if n_scenes < 1:
        raise ValueError(f"n_scenes must be >= 1, got {n_scenes}")
    model = pipe.model
    size = image_size or pipe.config.generation.image_size
    gh, gw = model.grid_for(size)
    world = WorldConfig(image_size=size)
    g = torch.Generator().manual_seed(seed)
    means = []
    for color in world.color_names:
        shapes = world.shapes_for(color, allow_held_out=False)
        vectors = []
        for _ in range(n_scenes):
            shape = shapes[int(torch.randint(len(shapes), (), generator=g))]
            (obj,) = place_objects([(color, shape)], g, world)
            image = render(Scene(objects=(obj,), image_size=size), world)
            tokens = model.encode_images(prepare_for_understanding(image, size).to(model.device))[0].float()
            x0, y0, x1, y1 = obj.bbox
            th, tw = size // gh, size // gw
            rows = range(y0 // th, (y1 - 1) // th + 1)
            cols = range(x0 // tw, (x1 - 1) // tw + 1)
            vectors.append(tokens[[r * gw + c for r in rows for c in cols]].mean(dim=0))
        means.append(torch.stack(vectors).mean(dim=0))
    d = torch.cdist(torch.stack(means)[None], torch.stack(means)[None])[0]
    words = list(world.color_names)
    off = d.masked_fill(torch.eye(len(words), dtype=torch.bool), float("inf"))
    i, j = divmod(int(off.argmin()), len(words))
    return {
        "words": words,
        "distance": d.tolist(),
        "closest": [words[i], words[j], float(off[i, j])],
        "n_scenes": n_scenes,
        "seed": seed,
    }


def format_distance_table(result: dict[str, Any]) -> str:
    words = result["words"]
    lines = ["| colour | " + " | ".join(words) + " |", "|---" * (len(words) + 1) + "|"]
    lines += [f"| {w} | " + " | ".join(f"{x:.2f}" for x in result["distance"][i]) + " |" for i, w in enumerate(words)]
    a, b, dist = result["closest"]
    lines.append(
        f"\ndistance between colour means of object tokens (unit-variance latents; {result['n_scenes']} "
        f"scenes per colour, seed {result['seed']}); closest: {a}-{b} {dist:.2f}"
    )
    return "\n".join(lines)


def format_word_table(result: dict[str, Any]) -> str:
    """Markdown table of the loss gaps (word's loss minus the true word's; rows = true value)."""
    words = result["words"]
    lines = ["| true \\ prompt word | " + " | ".join(words) + " | bound |", "|---" * (len(words) + 2) + "|"]
    for i, w in enumerate(words):
        cells = " | ".join(f"{g:+.4f}" for g in result["gap"][i])
        lines.append(f"| {w} | {cells} | {'yes' if result['bound'][i] else 'no'} |")
    lines.append(
        f"\nloss gap = loss under the prompt word minus loss under the true word (> 0: the true word "
        f"wins); own word lowest in {result['accuracy']:.0%} of {result['cases']} cases "
        f"({result['n_scenes']} scenes x {result['repeats']} noise draws each, seed {result['seed']})"
    )
    return "\n".join(lines)


@torch.no_grad()
def drawn_attributes(
    pipe,
    attribute: str = "color",
    images: int = 16,
    seed: int = 0,
    preset: str | None = None,
    guidance_scale: float | None = None,
) -> dict[str, Any]:
    """What the generator actually draws for each attribute word: a confusion table, asked x drawn.

    For every allowed (colour, shape) pair, ``images`` images of the one-object prompt "a <colour> <shape>" are
    sampled (model defaults, adjusted by ``preset`` / ``guidance_scale``) and the scorer's detector reads what was
    drawn. Each image counts once in its asked word's row: under the drawn value of the attribute when it found
    exactly one object, else under "none" (nothing found) or "several" (more than one object); with
    ``attribute="shape"`` a single blob the detector cannot name counts under "unknown". :func:`word_binding`
    reads the same question from the model's losses; this table is what sampling makes of it (a word can be bound
    weakly and still be drawn as another value every time).

    Returns ``words``, ``columns`` (the words, then "none", "several" and for shapes "unknown"), ``counts`` (asked x
    column, ints), ``accuracy`` (per asked word: share drawn as asked) and ``overall`` (mean of those).
    """
    world = WorldConfig(image_size=pipe.config.generation.image_size)
    words, others = _axes(world, attribute)
    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    columns = [*words, "none", "several", *(["unknown"] if attribute == "shape" else [])]
    counts = [[0] * len(columns) for _ in words]
    g = torch.Generator().manual_seed(seed)
    for i, word in enumerate(words):
        for other in others:
            color, shape = _pair(attribute, word, other)
            if world.is_held_out(color, shape):
                continue
            drawn = pipe.generate(
                noun_phrase(shape, color),
                num_images_per_prompt=images,
                preset=preset,
                guidance_scale=guidance_scale,
                generator=g,
            )
            for image in drawn:
                counts[i][columns.index(_drawn_column(image, world, attribute))] += 1
    accuracy = [row[i] / max(1, sum(row)) for i, row in enumerate(counts)]
    return {
        "attribute": attribute,
        "words": words,
        "columns": columns,
        "counts": counts,
        "accuracy": accuracy,
        "overall": sum(accuracy) / len(accuracy),
        "images": images,
        "seed": seed,
        "preset": preset,
        "guidance_scale": guidance_scale,
    }


def _drawn_column(image, world: WorldConfig, attribute: str) -> str:
    """The confusion-table column an image counts under (see :func:`drawn_attributes`)."""
    found = detect_objects(image, world)
    if len(found) != 1:
        return "none" if not found else "several"
    return found[0].color if attribute == "color" else found[0].shape  # a palette colour, a world shape or "unknown"


def format_drawn_table(result: dict[str, Any]) -> str:
    """Markdown confusion table of :func:`drawn_attributes` (rows = asked word)."""
    cols = result["columns"]
    lines = ["| asked \\ drawn | " + " | ".join(cols) + " | right |", "|---" * (len(cols) + 2) + "|"]
    for i, w in enumerate(result["words"]):
        lines.append(
            f"| {w} | " + " | ".join(str(c) for c in result["counts"][i]) + f" | {result['accuracy'][i]:.0%} |"
        )
    settings = ", ".join(f"{k} {result[k]}" for k in ("preset", "guidance_scale") if result[k] is not None)
    lines.append(
        f"\none-object prompts, {result['images']} images per (colour, shape) pair, seed {result['seed']}"
        f"{'; ' + settings if settings else ' (model defaults)'}; drawn as asked: {result['overall']:.1%} "
        "(mean over words)"
    )
    return "\n".join(lines)
