"""GradCAM++ on the shared MAR encoder: which image tokens drive a score for a concept ("circle", "red square").

The activations are the MAR encoder's output rows of the image tokens (all tokens visible, as in understanding),
A (L, D). GradCAM++ (Chattopadhay et al., 2018) weights each channel by sum_pos alpha * relu(dS/dA), with
alpha = g^2 / (2 g^2 + sum_pos(A) g^3) for g = dS/dA (the exp-score form, using the first three derivatives of
exp(S), which reduce to powers of g); the map is relu(sum_c w_c A_c) over positions, reshaped to the token grid,
upsampled to the image (nearest by default: one value per token) and overlaid as a heat map.

The score S is one of two:
  * a :class:`ConceptProbe`: logistic regression of "the concept is in the image" on the mean-pooled encoder output,
    fitted on labelled images with the whole model frozen. This is the setting of the paper's preliminary study of
    the MAR encoder (linear probes on its frozen features, and the features' response to visual concepts); the map
    shows which tokens carry the concept in the encoder's own features. On the shapes world the probe's training
    images are drawn from the world (:meth:`ConceptProbe.for_world`); otherwise the caller gives images with and
    without the concept (:meth:`ConceptProbe.fit`).
  * the LLM's answer: the log-odds of "Yes" over "No" at the first answer position of "Is there a <concept> in the
    image?", i.e. which tokens drive what the model says.

:func:`localisation` measures how much of a map's heat falls inside the boxes of the asked objects over random
shapes-world scenes (``harmon analyze localisation``). On the shipped model the probe's GradCAM++ puts about twice the
boxes' share of the image inside them; the answer's GradCAM++ stays near that share, though the model answers those
questions right and integrated gradients of the same answer localise (over 2.5x). The encoder keeps its rows local
(:func:`encoder_locality`: each output row depends on its own input token several times more than on any other), so
mixing is not the cause. GradCAM++ pools one weight per channel from the answer's gradient, and on this model those
weights do not pick out the asked object's row; a probe's gradient is the same for every row, so its map is each
row's own evidence for the concept.

:func:`integrated_gradients` answers the same question at the encoder's INPUT, the VAE latent tokens: it integrates
the score's gradient along the straight path from a plain-background image's tokens to the image's own (Sundararajan
et al., 2017) and keeps each token's positive share.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from harmon.images import load_image, prepare_for_understanding
from harmon.pipeline import HarmonPipeline


def _answer_ids(pipe: HarmonPipeline, word: str) -> int:
    ids = pipe.tokenizer(word, add_special_tokens=False).input_ids
    return ids[0]


class ConceptProbe:
    """Logistic regression of "``concept`` is in the image" on the mean-pooled MAR encoder output (all tokens
    visible), with standardised features; the model stays frozen.

    ``logit(rows)`` is differentiable in the encoder rows, so GradCAM++ and integrated gradients can explain it.
    ``accuracy`` is measured on the held-out share of the fitting images (None when nothing was held out).
    """

    def __init__(
        self,
        concept: str,
        weight: torch.Tensor,
        bias: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        image_size: int,
        accuracy: float | None,
        n_train: int,
    ) -> None:
        self.concept, self.image_size, self.accuracy, self.n_train = concept, image_size, accuracy, n_train
        self.weight, self.bias, self.mean, self.std = weight, bias, mean, std

    def __repr__(self) -> str:
        acc = "n/a" if self.accuracy is None else f"{self.accuracy:.3f}"
        return f"ConceptProbe({self.concept!r}, {self.n_train} training images, held-out accuracy {acc})"

    def logit(self, rows: torch.Tensor) -> torch.Tensor:
        """(L, D) image-token rows of the encoder output -> scalar logit of the concept being present."""
        x = (rows.float().mean(dim=0) - self.mean.to(rows.device)) / self.std.to(rows.device)
        return x @ self.weight.to(rows.device) + self.bias.to(rows.device)

    def save(self, path: str | Path) -> None:
        """Write the probe to a .safetensors file (atomically): tensors plus concept, input size and accuracy."""
        import json

        from harmon.loading import save_safetensors

        meta = {
            "format": "harmon-concept-probe",
            "concept": self.concept,
            "image_size": str(self.image_size),
            "accuracy": json.dumps(self.accuracy),
            "n_train": str(self.n_train),
        }
        save_safetensors(
            {"weight": self.weight, "bias": self.bias.reshape(1), "mean": self.mean, "std": self.std},
            path,
            metadata=meta,
        )

    @classmethod
    def load(cls, path: str | Path) -> ConceptProbe:
        """Read a probe written by :meth:`save`; a file of another kind is refused by name."""
        import json

        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"probe file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        except Exception as err:  # safetensors raises its own error types for a file that is not safetensors
            raise ValueError(f"cannot read probe {path}: {err}") from err
        missing = [k for k in ("weight", "bias", "mean", "std") if k not in tensors]
        if meta.get("format") != "harmon-concept-probe" or missing:
            raise ValueError(
                f"{path} is not a concept probe written by ConceptProbe.save"
                + (f" (missing tensors: {', '.join(missing)})" if missing else "")
            )
        return cls(
            meta["concept"],
            tensors["weight"],
            tensors["bias"].reshape(()),
            tensors["mean"],
            tensors["std"],
            int(meta["image_size"]),
            json.loads(meta["accuracy"]),
            int(meta["n_train"]),
        )

    @classmethod
    def fit(
        cls,
        pipe: HarmonPipeline,
        images: Sequence[Image.Image | str | Path],
        labels: Sequence[bool | int],
        concept: str,
        image_size: int | None = None,
        held_out: float = 0.25,
        weight_decay: float = 1e-3,
        generator: torch.Generator | None = None,
    ) -> ConceptProbe:
        """Fit on ``images`` (PIL images or paths) with ``labels`` (1 = the concept is in the image).

        A random ``held_out`` share (drawn through ``generator``) is kept back to measure the accuracy.
        """
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if not 0.0 <= held_out < 1.0:
            raise ValueError(f"held_out must be in [0, 1), got {held_out}")
        y = torch.tensor([float(bool(v)) for v in labels])
        size = image_size or pipe.config.generation.understanding_image_size
        order = torch.randperm(len(y), generator=generator or torch.Generator().manual_seed(0))
        n_test = math.floor(len(y) * held_out)
        train, test = order[n_test:], order[:n_test]
        positives = int(y[train].sum())
        if positives < 2 or len(train) - positives < 2:
            raise ValueError(
                f"the probe for {concept!r} needs at least 2 training images with the concept and 2 "
                f"without, got {positives} with and {len(train) - positives} without"
            )
        x = _pooled_encoder_features(pipe, images, size)
        mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
        x = (x - mean) / std
        w = torch.zeros(x.shape[1], requires_grad=True)
        b = torch.zeros((), requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=100, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(x[train] @ w + b, y[train]) + weight_decay * w.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        w, b = w.detach(), b.detach()
        accuracy = float((((x[test] @ w + b) > 0).float() == y[test]).float().mean()) if n_test else None
        return cls(concept, w, b, mean, std, size, accuracy, len(train))

    @classmethod
    def for_world(
        cls, pipe: HarmonPipeline, concept: str, scenes: int = 2000, seed: int = 1, world: Any = None
    ) -> ConceptProbe:
        """Fit on ``scenes`` random shapes-world scenes (seed ``seed``) labelled exactly by
        :func:`world_concept_labels`; a quarter is held out for the accuracy."""
        from harmon.world import WorldConfig, render, sample_scene

        size = pipe.config.generation.understanding_image_size
        world = world or WorldConfig(image_size=size)
        g = torch.Generator().manual_seed(seed)
        drawn = [sample_scene(g, world) for _ in range(scenes)]
        labels = world_concept_labels(concept, drawn, world)
        return cls.fit(
            pipe,
            [render(s, world) for s in drawn],
            labels,
            concept,
            image_size=size,
            generator=torch.Generator().manual_seed(seed),
        )


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


@torch.no_grad()
def _pooled_encoder_features(
    pipe: HarmonPipeline, images: Sequence[Image.Image | str | Path], size: int, batch_size: int = 64
) -> torch.Tensor:
    """(N, D) mean over the image-token rows of the MAR encoder output, all tokens visible."""
    nb, out = pipe.model.buffer_size, []
    for i in range(0, len(images), batch_size):
        rows = _encoder_output(pipe, _image_tokens(pipe, images[i : i + batch_size], size), size)[:, nb:]
        out.append(rows.float().mean(dim=1).cpu())
    return torch.cat(out)


def _score_fn(
    pipe: HarmonPipeline, concept: str, question: str | None, probe: ConceptProbe | None, size: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The scalar being explained, as a function of the encoder output (1, buffers + L, D)."""
    nb = pipe.model.buffer_size
    if probe is None:
        q = question or f"Is there a {concept} in the image?"
        return lambda x_enc: _yes_no_score(pipe, q, x_enc)
    if question is not None:
        raise ValueError("a question is asked of the LLM; a probe's score has none (drop one of them)")
    if probe.concept.strip().lower() != concept.strip().lower():
        raise ValueError(f"the probe was fitted for {probe.concept!r}, not {concept!r}")
    if probe.image_size != size:
        raise ValueError(f"the probe was fitted on {probe.image_size} px inputs, not {size} px")
    return lambda x_enc: probe.logit(x_enc[0, nb:])


def gradcam_plus_plus(
    pipe: HarmonPipeline,
    image: Image.Image | str | Path,
    concept: str,
    question: str | None = None,
    image_size: int | None = None,
    upsample: str = "nearest",
    probe: ConceptProbe | None = None,
) -> np.ndarray:
    """Heat map (H, W) in [0, 1] over the image pixels for ``concept`` (e.g. "circle").

    ``probe``: explain this :class:`ConceptProbe`'s logit; without one, the LLM's "Yes"/"No" log-odds to
    ``question`` (default "Is there a <concept> in the image?").

    ``upsample``: "nearest" (default) paints each token's value over its own pixels (16 x 16 at MAR patch size 1),
    so the map shows exactly which tokens drive the answer; "bilinear" gives the smooth look of the paper's figures
    (at coarse grids it spreads a token's heat over its neighbours).
    """
    _check_upsample(upsample)
    model = pipe.model
    size = image_size or pipe.config.generation.understanding_image_size
    grid = model.grid_for(size)
    if isinstance(image, (str, Path)):
        image = load_image(image)
    score = _score_fn(pipe, concept, question, probe, size)
    tokens = _image_tokens(pipe, [image], size)  # (1, L, C)
    nb = model.buffer_size
    with torch.enable_grad():
        x_enc = _encoder_output(pipe, tokens, size)  # (1, 64+L, D)
        x_enc.retain_grad()
        score(x_enc).backward()
    acts = x_enc.detach()[0, nb:].float()  # (L, D) image-token activations
    grads = x_enc.grad[0, nb:].float()  # (L, D)
    g2, g3 = grads.pow(2), grads.pow(3)
    denom = 2 * g2 + acts.sum(dim=0, keepdim=True) * g3
    alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
    weights = (alpha * F.relu(grads)).sum(dim=0)  # (D,)
    cam = F.relu((acts * weights).sum(dim=1))  # (L,)
    return _to_image_frame(cam, grid, size, image, upsample)


def integrated_gradients(
    pipe: HarmonPipeline,
    image: Image.Image | str | Path,
    concept: str,
    question: str | None = None,
    image_size: int | None = None,
    upsample: str = "nearest",
    steps: int = 16,
    baseline_color: tuple[int, int, int] = (255, 255, 255),
    probe: ConceptProbe | None = None,
) -> np.ndarray:
    """Heat map (H, W) in [0, 1]: each image token's positive integrated-gradients attribution (see
    :func:`token_attributions`), upsampled to the caller's image."""
    _check_upsample(upsample)
    if isinstance(image, (str, Path)):
        image = load_image(image)
    size = image_size or pipe.config.generation.understanding_image_size
    attribution, _ = token_attributions(pipe, image, concept, question, size, steps, baseline_color, probe)
    return _to_image_frame(F.relu(attribution), pipe.model.grid_for(size), size, image, upsample)


def token_attributions(
    pipe: HarmonPipeline,
    image: Image.Image,
    concept: str,
    question: str | None = None,
    image_size: int | None = None,
    steps: int = 16,
    baseline_color: tuple[int, int, int] = (255, 255, 255),
    probe: ConceptProbe | None = None,
) -> tuple[torch.Tensor, float]:
    """Integrated gradients of the score (the "Yes"/"No" log-odds, or ``probe``'s logit) with respect to the latent
    tokens, summed over channels.

    The path runs straight from the tokens of a plain ``baseline_color`` image (the shapes world's white background
    by default) to the image's own, with ``steps`` midpoint Riemann steps.
    Returns:
        (L,) attribution per token, and score(image) - score(baseline), which the attributions sum to as steps grow.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    size = image_size or pipe.config.generation.understanding_image_size
    explained = _score_fn(pipe, concept, question, probe, size)
    tokens = _image_tokens(pipe, [image], size).float()  # (1, L, C)
    plain = Image.new("RGB", image.size, tuple(int(v) for v in baseline_color))
    base = _image_tokens(pipe, [plain], size).float()

    def score(x: torch.Tensor) -> torch.Tensor:
        return explained(_encoder_output(pipe, x, size))

    total = torch.zeros_like(tokens)
    for k in range(steps):
        x = (base + (tokens - base) * (k + 0.5) / steps).requires_grad_(True)
        with torch.enable_grad():
            score(x).backward()
        total += x.grad
    with torch.no_grad():
        delta = float(score(tokens) - score(base))
    return ((tokens - base) * total / steps).sum(dim=-1)[0], delta


def _check_upsample(upsample: str) -> None:
    if upsample not in ("nearest", "bilinear"):
        raise ValueError(f"upsample must be 'nearest' or 'bilinear', got {upsample!r}")


def _all_visible(tokens: torch.Tensor) -> torch.Tensor:
    return torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)


def _image_tokens(pipe: HarmonPipeline, images: Sequence[Image.Image | str | Path], size: int) -> torch.Tensor:
    """Images (PIL or paths) prepared as for understanding -> latent tokens (B, L, C) (no grad: the VAE is fixed)."""
    px = torch.cat([prepare_for_understanding(im, size) for im in images]).to(pipe.device)
    return pipe.model.encode_images(px)


def _encoder_output(pipe: HarmonPipeline, tokens: torch.Tensor, size: int) -> torch.Tensor:
    """The MAR encoder over ``tokens`` with all of them visible, as in understanding: (B, buffers + L, D)."""
    return pipe.model.mar.forward_encoder(tokens, _all_visible(tokens), pipe.model.grid_for(size))


def _yes_no_score(pipe: HarmonPipeline, question: str, x_enc: torch.Tensor) -> torch.Tensor:
    """Log-odds of "Yes" over "No" at the first answer position, from the MAR encoder output (buffers first)."""
    embeds = pipe.prompt_embeddings(question, pipe.model.visual_to_llm(x_enc))  # what describe() feeds the LLM
    logits = pipe.model.llm(inputs_embeds=embeds).logits[0, -1].float()
    return logits[_answer_ids(pipe, "Yes")] - logits[_answer_ids(pipe, "No")]


def _to_image_frame(
    cam: torch.Tensor, grid: tuple[int, int], size: int, image: Image.Image, upsample: str
) -> np.ndarray:
    """Per-token values (L,) -> a map over the caller's image, normalised to a maximum of 1."""
    cam = cam.reshape(1, 1, *grid)
    kw = {"align_corners": False} if upsample == "bilinear" else {}
    cam = F.interpolate(cam, size=(size, size), mode=upsample, **kw)[0, 0]
    cam = cam / cam.max() if cam.max() > 0 else cam
    # Back to the caller's image frame: undo the square padding and resizing.
    w, h = image.size
    side = max(w, h)
    cam = F.interpolate(cam[None, None], size=(side, side), mode=upsample, **kw)[0, 0]
    left, top = (side - w) // 2, (side - h) // 2
    return cam[top : top + h, left : left + w].cpu().numpy()


def overlay(image: Image.Image, cam: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend a jet-like colour map of ``cam`` (H, W in [0, 1]) over the image."""
    image = image.convert("RGB")
    c = np.clip(cam, 0, 1)
    heat = np.stack(
        [
            np.clip(1.5 - np.abs(4 * c - 3), 0, 1),
            np.clip(1.5 - np.abs(4 * c - 2), 0, 1),
            np.clip(1.5 - np.abs(4 * c - 1), 0, 1),
        ],
        axis=-1,
    )  # blue -> cyan -> yellow -> red
    base = np.asarray(image, dtype=np.float32) / 255.0
    out = (1 - alpha) * base + alpha * heat
    return Image.fromarray((np.clip(out, 0, 1) * 255).astype(np.uint8), "RGB")


def heat_inside(cam: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> float:
    """Share of the total heat that falls inside the union of ``boxes`` (x0, y0, x1, y1)."""
    inside = np.zeros_like(cam, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        inside[y0:y1, x0:x1] = True
    total = float(cam.sum())
    return float(cam[inside].sum()) / total if total > 0 else 0.0


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
    from harmon.world import WorldConfig, render, sample_scene

    if method not in ("gradcam++", "integrated-gradients"):
        raise ValueError(f"method must be 'gradcam++' or 'integrated-gradients', got {method!r}")
    if target not in ("probe", "answer"):
        raise ValueError(f"target must be 'probe' or 'answer', got {target!r}")
    t0 = time.perf_counter()
    size = pipe.config.generation.understanding_image_size
    world = WorldConfig(image_size=size)
    probes = dict(probes or {})
    if target == "probe":
        for shape in world.shapes:
            if shape not in probes:
                probes[shape] = ConceptProbe.for_world(pipe, shape, scenes=probe_scenes, seed=probe_seed, world=world)
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
                said_yes.append(_answer_log_odds(pipe, image, f"Is there a {shape} in the image?") > 0)
    result: dict[str, Any] = {
        "method": method,
        "target": target,
        "scenes": scenes,
        "seed": seed,
        "cases": len(inside),
        "heat_inside": float(np.mean(inside)),
        "boxes_share": float(np.mean(chance)),
        "above_share": float(np.mean(np.asarray(inside) > np.asarray(chance))),
        "seconds": round(time.perf_counter() - t0, 1),
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
    if target == "probe":
        result["probe_accuracy"] = {k: v.accuracy for k, v in sorted(probes.items())}
        result["probe_scenes"], result["probe_seed"] = probe_scenes, probe_seed
    else:
        result["answered_yes"] = float(np.mean(said_yes))
    return result


@torch.no_grad()
def _answer_log_odds(pipe: HarmonPipeline, image: Image.Image, question: str) -> float:
    size = pipe.config.generation.understanding_image_size
    return float(_yes_no_score(pipe, question, _encoder_output(pipe, _image_tokens(pipe, [image], size), size)))


def encoder_locality(pipe: HarmonPipeline, scenes: int = 20, seed: int = 0) -> dict[str, Any]:
    """How local the MAR encoder's output rows stay (all tokens visible), over random shapes-world scenes.

    ``jacobian`` (L, L): the mean Frobenius norm of d(output row i) / d(input token j); ``own_vs_other``: the mean
    diagonal entry over the mean off-diagonal one (1 would mean a row depends on any token as much as on its own).
    """
    from harmon.world import WorldConfig, render, sample_scene

    size = pipe.config.generation.understanding_image_size
    nb = pipe.model.buffer_size
    world = WorldConfig(image_size=size)
    g = torch.Generator().manual_seed(seed)
    total = None
    for _ in range(scenes):
        image = render(sample_scene(g, world), world)
        tokens = _image_tokens(pipe, [image], size).float()

        def rows(t: torch.Tensor) -> torch.Tensor:
            return _encoder_output(pipe, t, size)[0, nb:].float()

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
    from harmon.world import WorldConfig, WorldObject, render
    from harmon.world.scene import Scene

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
