"""Small pieces shared by the shapes-world tests: the default world, seeded generators, comparable object lists."""

from __future__ import annotations

import torch

from harmon.world import DetectedObject, Scene, WorldConfig

CONFIG = WorldConfig()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def truth(scene: Scene) -> list[tuple[str, str, tuple[int, ...]]]:
    """The scene's objects as sorted (colour, shape, box) triples, comparable with :func:`found`."""
    return sorted((o.color, o.shape, o.bbox) for o in scene.objects)


def found(detections: list[DetectedObject]) -> list[tuple[str, str, tuple[int, ...]]]:
    """Detected objects as sorted (colour, shape, box) triples, comparable with :func:`truth`."""
    return sorted((d.color, d.shape, d.bbox) for d in detections)
