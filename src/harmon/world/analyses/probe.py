"""Linear probes on frozen features of the shapes world (the paper's linear-probing finding, at small scale).

Features of the same scenes:
    encoder_mean   MAR encoder output, all tokens visible, image tokens mean-pooled       (D)
    encoder_tokens the same rows concatenated in raster order                           (L*D)
    vae            VAE latents (scaled), flattened                                      (L*16)
    pixels         the rendered image, flattened and scaled to [-1, 1]                  (H*W*3)
Tasks (scene level, from the exact annotations): count (1-4), shape and colour of the largest object, and
whether one object lies left or right of the other in two-object scenes of two different shapes (the referent is
the object whose shape comes first in the world's shape list, e.g. the circle of a circle-and-square scene;
scenes without a horizontal relation or with two objects of one shape are left out). The referent is named by
something visible: a label defined by placement order, as before, cannot be read from any image, and every
feature, pixels included, sat at chance on it.
A probe is multinomial logistic regression (standardised features, L2, full-batch L-BFGS); each seed draws its
own scenes; reported: test accuracy mean and std over seeds.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from harmon.eval.metrics import relation
from harmon.images import pil_to_tensor
from harmon.world.render import render
from harmon.world.sampling import sample_scene
from harmon.world.scene import WorldConfig

FEATURES = ("encoder_mean", "encoder_tokens", "vae", "pixels")
TASKS = ("count", "shape", "color", "position")


def _scenes(n: int, seed: int, world, two_objects: bool = False):
    g = torch.Generator().manual_seed(seed)
    return [sample_scene(g, world, num_objects=2 if two_objects else None) for _ in range(n)]


def _labels(scenes, task: str, world) -> np.ndarray:
    out = []
    for s in scenes:
        largest = max(s.objects, key=lambda o: (o.bbox[2] - o.bbox[0]) * (o.bbox[3] - o.bbox[1]))
        if task == "count":
            out.append(len(s.objects) - 1)
        elif task == "shape":
            out.append(world.shapes.index(largest.shape))
        elif task == "color":
            out.append(world.color_names.index(largest.color))
        elif task == "position":
            a, b = sorted(s.objects, key=lambda o: world.shapes.index(o.shape))
            rel = relation(a, b) if a.shape != b.shape else set()
            out.append(0 if "left of" in rel else 1 if "right of" in rel else -1)
    return np.asarray(out)


@torch.no_grad()
def features(pipe, images: list, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """All four feature kinds for a list of PIL images of the model's understanding size."""
    model = pipe.model
    out: dict[str, list[torch.Tensor]] = {k: [] for k in FEATURES}
    nb = model.buffer_size
    for i in range(0, len(images), batch_size):
        px = torch.stack([pil_to_tensor(im) for im in images[i : i + batch_size]]).to(pipe.device)
        grid = model.grid_for(px.shape[-1])
        tokens = model.encode_images(px)  # (B, L, C)
        mask = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        enc = model.mar.forward_encoder(tokens, mask, grid)[:, nb:].float()  # (B, L, D)
        out["encoder_mean"].append(enc.mean(dim=1).cpu())
        out["encoder_tokens"].append(enc.flatten(1).cpu())
        out["vae"].append(tokens.float().flatten(1).cpu())
        out["pixels"].append(px.float().flatten(1).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def fit_linear_probe(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    weight_decay: float = 1e-3,
    steps: int = 100,
) -> float:
    """Test accuracy of L2-regularised multinomial logistic regression fitted with L-BFGS."""
    mu, sd = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
    n_cls = int(max(y_train.max(), y_test.max())) + 1
    w = torch.zeros(x_train.shape[1], n_cls, requires_grad=True)
    b = torch.zeros(n_cls, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x_train @ w + b, y_train) + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((x_test @ w + b).argmax(1) == y_test).float().mean())


def run_probes(
    pipe, n_train: int = 1000, n_test: int = 500, seeds: tuple[int, ...] = (0, 1, 2), world=None
) -> dict[str, Any]:
    """Accuracy table {task: {feature: (mean, std)}} over ``seeds``."""
    world = world or WorldConfig(image_size=pipe.config.generation.understanding_image_size)
    acc: dict[str, dict[str, list[float]]] = {t: {f: [] for f in FEATURES} for t in TASKS}
    t0 = time.perf_counter()
    for seed in seeds:
        for task in TASKS:
            scenes = _scenes(n_train + n_test, 10_000 * seed + TASKS.index(task), world, two_objects=task == "position")
            y = _labels(scenes, task, world)
            keep = y >= 0
            feats = features(pipe, [render(s, world) for s, k in zip(scenes, keep) if k])
            y = torch.as_tensor(y[keep])
            n_tr = math.floor(len(y) * n_train / (n_train + n_test))
            for name, x in feats.items():
                acc[task][name].append(fit_linear_probe(x[:n_tr], y[:n_tr], x[n_tr:], y[n_tr:]))
    table = {t: {f: (float(np.mean(v)), float(np.std(v))) for f, v in d.items()} for t, d in acc.items()}
    return {
        "accuracy": table,
        "seeds": list(seeds),
        "n_train": n_train,
        "n_test": n_test,
        "seconds": time.perf_counter() - t0,
    }


def format_probe_table(result: dict[str, Any]) -> str:
    header = "| task | " + " | ".join(FEATURES) + " |\n|---|" + "---|" * len(FEATURES)
    rows = [
        f"| {task} | "
        + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in (result["accuracy"][task][f] for f in FEATURES))
        + " |"
        for task in TASKS
    ]
    return "\n".join([header, *rows])
