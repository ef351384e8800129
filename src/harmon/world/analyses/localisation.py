"""Where concept maps of the shared encoder fall on shapes-world scenes (``harmon analyze localisation``).

:func:`localisation` measures how much of a map's heat (:mod:`harmon.analyze.gradcam`) falls inside the boxes of the
asked objects over random shapes-world scenes. On the shipped model the probe's GradCAM++ puts about twice the
boxes' share of the image inside them; the answer's GradCAM++ stays near that share, though the model answers those
questions right and integrated gradients of the same answer localise (over 2.5x). The encoder keeps its rows local
(:func:`encoder_locality`: each output row depends on its own input token several times more than on any other), so
mixing is not the cause. GradCAM++ pools one weight per channel from the answer's gradient, and on this model those
weights do not pick out the asked object's row; a probe's gradient is the same for every row, so its map is each
row's own evidence for the concept.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from harmon.analyze.gradcam import (
    ConceptProbe,
    answer_log_odds,
    encoder_output,
    gradcam_plus_plus,
    heat_inside,
    image_tokens,
    integrated_gradients,
    overlay,
    pooled_encoder_features,
)
from harmon.pipeline import HarmonPipeline
from harmon.world.render import render
from harmon.world.sampling import sample_scene
from harmon.world.scene import Scene, WorldConfig, WorldObject


def world_probe(
    pipe: HarmonPipeline, concept: str, scenes: int = 2000, seed: int = 1, world: WorldConfig | None = None
) -> ConceptProbe:
    """A :class:`ConceptProbe` fitted on ``scenes`` random shapes-world scenes (seed ``seed``) labelled exactly by
    :func:`world_concept_labels`; a quarter is held out for the accuracy."""
    return world_probes(pipe, [concept], scenes, seed, world)[concept]


def world_probes(
    pipe: HarmonPipeline,
    concepts: Sequence[str],
    scenes: int = 2000,
    seed: int = 1,
    world: WorldConfig | None = None,
) -> dict[str, ConceptProbe]:
    """:func:`world_probe` of each concept, the scenes drawn, rendered and read by the encoder once for all (not at
    all when there is no concept: callers pass the probes they still lack)."""
    if not concepts:
        return {}
    size = pipe.config.generation.understanding_image_size
    world = world or WorldConfig(image_size=size)
    g = torch.Generator().manual_seed(seed)
    drawn = [sample_scene(g, world) for _ in range(scenes)]
    images = [render(s, world) for s in drawn]
    features = pooled_encoder_features(pipe, images, size)
    return {
        concept: ConceptProbe.fit(
            pipe,
            images,
            world_concept_labels(concept, drawn, world),
            concept,
            image_size=size,
            generator=torch.Generator().manual_seed(seed),
            features=features,
        )
        for concept in concepts
    }


def world_concept_labels(concept: str, scenes: Sequence[Any], world: Any) -> list[bool]:
    """Whether each shapes-world scene holds an object matching ``concept``: a shape, a colour or both
    ("circle", "circles", "red", "red circle")."""
    shapes, colors, unknown = [], [], []
    for word in concept.lower().split():
        if word in world.shapes or (word.endswith("s") and word[:-1] in world.shapes):
            shapes.append(word if word in world.shapes else word[:-1])
        elif word in world.color_names:
            colors.append(word)
        else:
            unknown.append(word)
    if unknown or not (shapes or colors) or len(shapes) > 1 or len(colors) > 1:
        raise ValueError(
            f"{concept!r} is not a shapes-world concept: give a shape ({', '.join(world.shapes)}), a "
            f"colour ({', '.join(world.color_names)}) or a colour and a shape"
        )
    shape, color = (shapes or [None])[0], (colors or [None])[0]
    return [
        any((shape is None or o.shape == shape) and (color is None or o.color == color) for o in s.objects)
        for s in scenes
    ]


def localisation(
    pipe: HarmonPipeline,
    method: str = "gradcam++",
    target: str = "probe",
    scenes: int = 30,
    seed: int = 0,
    probe_scenes: int = 2000,
    probe_seed: int = 1,
    probes: dict[str, ConceptProbe] | None = None,
) -> dict[str, Any]:
    """How much heat a map puts on the asked shape, over ``scenes`` random shapes-world scenes (seed ``seed``).

    For every (scene, shape present) case the concept is the bare shape ("circle"), and the share of the map's heat
    inside the boxes of that shape's objects is set beside the boxes' share of the image (what a flat map scores).
    ``method``: "gradcam++" or "integrated-gradients"; ``target``: "probe" (a :class:`ConceptProbe` per shape, fitted
    on ``probe_scenes`` scenes of seed ``probe_seed``, or taken from ``probes``) or "answer" (the LLM's "Yes"/"No" to
    "Is there a <shape> in the image?"). Returns the means, their ratio, the share of cases above their boxes' share,
    the probes' held-out accuracies and, for "answer", how often the model's answer was "Yes" (every asked shape is
    present, so that is its accuracy on these questions).
    """
    if method not in ("gradcam++", "integrated-gradients"):
        raise ValueError(f"method must be 'gradcam++' or 'integrated-gradients', got {method!r}")
    if target not in ("probe", "answer"):
        raise ValueError(f"target must be 'probe' or 'answer', got {target!r}")
    t0 = time.perf_counter()
    world = WorldConfig(image_size=pipe.config.generation.understanding_image_size)
    probes = dict(probes or {})
    if target == "probe":
        missing = [shape for shape in world.shapes if shape not in probes]
        probes.update(world_probes(pipe, missing, scenes=probe_scenes, seed=probe_seed, world=world))
    cases = _heat_cases(pipe, method, target, probes, world, scenes, seed)
    result = _summary(cases, method, target, scenes, seed, time.perf_counter() - t0)
    if target == "probe":
        result["probe_accuracy"] = {k: v.accuracy for k, v in sorted(probes.items())}
        result["probe_scenes"], result["probe_seed"] = probe_scenes, probe_seed
    else:
        result["answered_yes"] = float(np.mean(cases["said_yes"]))
    return result


def _heat_cases(
    pipe: HarmonPipeline,
    method: str,
    target: str,
    probes: dict[str, ConceptProbe],
    world: WorldConfig,
    scenes: int,
    seed: int,
) -> dict[str, list]:
    """Per (scene, shape present) case: the heat inside the shape's boxes, the boxes' share of the image, the shape,
    and (target "answer") whether the model answered "Yes"."""
    size = world.image_size
    explain = gradcam_plus_plus if method == "gradcam++" else integrated_gradients
    g = torch.Generator().manual_seed(seed)
    inside, chance, said_yes, asked = [], [], [], []
    for _ in range(scenes):
        scene = sample_scene(g, world)
        image = render(scene, world)
        for shape in sorted({o.shape for o in scene.objects}):
            boxes = [o.bbox for o in scene.objects if o.shape == shape]
            probe = probes[shape] if target == "probe" else None
            inside.append(heat_inside(explain(pipe, image, shape, probe=probe), boxes))
            chance.append(sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes) / float(size * size))
            asked.append(shape)
            if target == "answer":
                said_yes.append(answer_log_odds(pipe, image, f"Is there a {shape} in the image?") > 0)
    return {"inside": inside, "chance": chance, "said_yes": said_yes, "asked": asked}


def _summary(cases: dict[str, list], method: str, target: str, scenes: int, seed: int, seconds: float) -> dict:
    inside, chance, asked = cases["inside"], cases["chance"], cases["asked"]
    result: dict[str, Any] = {
        "method": method,
        "target": target,
        "scenes": scenes,
        "seed": seed,
        "cases": len(inside),
        "heat_inside": float(np.mean(inside)),
        "boxes_share": float(np.mean(chance)),
        "above_share": float(np.mean(np.asarray(inside) > np.asarray(chance))),
        "seconds": round(seconds, 1),
    }
    result["ratio"] = result["heat_inside"] / result["boxes_share"]
    result["by_shape"] = {
        shape: {
            "cases": sum(a == shape for a in asked),
            "heat_inside": float(np.mean([h for h, a in zip(inside, asked) if a == shape])),
            "boxes_share": float(np.mean([c for c, a in zip(chance, asked) if a == shape])),
        }
        for shape in sorted(set(asked))
    }
    return result


def encoder_locality(pipe: HarmonPipeline, scenes: int = 20, seed: int = 0) -> dict[str, Any]:
    """How local the MAR encoder's output rows stay (all tokens visible), over random shapes-world scenes.

    ``jacobian`` (L, L): the mean Frobenius norm of d(output row i) / d(input token j); ``own_vs_other``: the mean
    diagonal entry over the mean off-diagonal one (1 would mean a row depends on any token as much as on its own).
    """
    size = pipe.config.generation.understanding_image_size
    nb = pipe.model.buffer_size
    world = WorldConfig(image_size=size)
    g = torch.Generator().manual_seed(seed)
    total = None
    for _ in range(scenes):
        image = render(sample_scene(g, world), world)
        tokens = image_tokens(pipe, [image], size).float()

        def rows(t: torch.Tensor) -> torch.Tensor:
            return encoder_output(pipe, t, size)[0, nb:].float()

        jac = torch.autograd.functional.jacobian(rows, tokens)[:, :, 0]  # (L, D, L, C)
        norms = jac.pow(2).sum(dim=(1, 3)).sqrt().cpu()
        total = norms if total is None else total + norms
    mean = total / scenes
    n = mean.shape[0]
    off = (mean.sum() - mean.diagonal().sum()) / max(n * n - n, 1)
    return {
        "jacobian": mean.tolist(),
        "own_vs_other": float(mean.diagonal().mean() / off) if n > 1 else float("inf"),
        "scenes": scenes,
        "seed": seed,
    }


def format_localisation_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`localisation` results."""
    lines = [
        "| method | explains | heat inside | x boxes' share | cases above it | by shape |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        shapes = ", ".join(f"{k} {v['heat_inside']:.2f}" for k, v in r["by_shape"].items())
        explains = "concept probe" if r["target"] == "probe" else "LLM answer"
        lines.append(
            f"| {r['method']} | {explains} | {r['heat_inside']:.3f} | {r['ratio']:.2f} | "
            f"{r['above_share']:.0%} | {shapes} |"
        )
    return "\n".join(lines)


def demo_scene(size: int = 64) -> tuple[list[Any], Image.Image]:
    """A fixed test scene: red and blue circles on one diagonal, a green square and an orange triangle on the other
    (one object per grid cell). Returns (objects, rendered image)."""
    k = size / 64
    boxes = {"red": (3, 3, 29, 29), "blue": (35, 35, 61, 61), "green": (36, 4, 60, 28), "orange": (4, 36, 28, 60)}
    shapes = {"red": "circle", "blue": "circle", "green": "square", "orange": "triangle"}
    objects = [WorldObject(shapes[c], c, tuple(round(v * k) for v in b)) for c, b in boxes.items()]
    return objects, render(Scene(objects=tuple(objects), image_size=size), WorldConfig(image_size=size))


def demo_figure(pipe: HarmonPipeline, probes: dict[str, ConceptProbe], scale: int = 3) -> Image.Image:
    """The demo scene, then one GradCAM++ overlay per shape: the concept probe's (top row) and the LLM answer's
    (bottom row)."""
    size = pipe.config.generation.understanding_image_size
    _, image = demo_scene(size)
    tiles = [
        [image] + [overlay(image, gradcam_plus_plus(pipe, image, s, probe=probes[s])) for s in probes],
        [image] + [overlay(image, gradcam_plus_plus(pipe, image, s)) for s in probes],
    ]
    side, gap = size * scale, 4
    sheet = Image.new("RGB", (len(tiles[0]) * (side + gap) - gap, 2 * (side + gap) - gap), (255, 255, 255))
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            sheet.paste(tile.resize((side, side), Image.Resampling.NEAREST), (c * (side + gap), r * (side + gap)))
    return sheet
