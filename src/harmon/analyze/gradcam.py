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
    shows which tokens carry the concept in the encoder's own features. The caller gives images with and without
    the concept (:meth:`ConceptProbe.fit`); the shapes world draws and labels them itself
    (:func:`harmon.world.analyses.localisation.world_probe`).
  * the LLM's answer: the log-odds of "Yes" over "No" at the first answer position of "Is there a <concept> in the
    image?", i.e. which tokens drive what the model says.

:func:`integrated_gradients` answers the same question at the encoder's INPUT, the VAE latent tokens: it integrates
the score's gradient along the straight path from a plain-background image's tokens to the image's own (Sundararajan
et al., 2017) and keeps each token's positive share. :func:`heat_inside` measures how much of a map's heat falls in
given boxes (:mod:`harmon.world.analyses.localisation` uses it over random shapes-world scenes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

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
        features: torch.Tensor | None = None,
    ) -> ConceptProbe:
        """Fit on ``images`` (PIL images or paths) with ``labels`` (1 = the concept is in the image).

        A random ``held_out`` share (drawn through ``generator``) is kept back to measure the accuracy.
        ``features``: the images' :func:`pooled_encoder_features`, when several probes share the images.
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
        x = pooled_encoder_features(pipe, images, size) if features is None else features
        if x.shape[0] != len(y):
            raise ValueError(f"{x.shape[0]} feature rows for {len(y)} images")
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


@torch.no_grad()
def pooled_encoder_features(
    pipe: HarmonPipeline, images: Sequence[Image.Image | str | Path], size: int, batch_size: int = 64
) -> torch.Tensor:
    """(N, D) mean over the image-token rows of the MAR encoder output, all tokens visible."""
    nb, out = pipe.model.buffer_size, []
    for i in range(0, len(images), batch_size):
        rows = encoder_output(pipe, image_tokens(pipe, images[i : i + batch_size], size), size)[:, nb:]
        out.append(rows.float().mean(dim=1).cpu())
    return torch.cat(out)


def _score_fn(
    pipe: HarmonPipeline, concept: str, question: str | None, probe: ConceptProbe | None, size: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The scalar being explained, as a function of the encoder output (1, buffers + L, D)."""
    nb = pipe.model.buffer_size
    if probe is None:
        q = question or f"Is there a {concept} in the image?"
        return lambda x_enc: yes_no_score(pipe, q, x_enc)
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
    tokens = image_tokens(pipe, [image], size)  # (1, L, C)
    nb = model.buffer_size
    with torch.enable_grad():
        x_enc = encoder_output(pipe, tokens, size)  # (1, 64+L, D)
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
    tokens = image_tokens(pipe, [image], size).float()  # (1, L, C)
    plain = Image.new("RGB", image.size, tuple(int(v) for v in baseline_color))
    base = image_tokens(pipe, [plain], size).float()

    def score(x: torch.Tensor) -> torch.Tensor:
        return explained(encoder_output(pipe, x, size))

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


def image_tokens(pipe: HarmonPipeline, images: Sequence[Image.Image | str | Path], size: int) -> torch.Tensor:
    """Images (PIL or paths) prepared as for understanding -> latent tokens (B, L, C) (no grad: the VAE is fixed)."""
    px = torch.cat([prepare_for_understanding(im, size) for im in images]).to(pipe.device)
    return pipe.model.encode_images(px)


def encoder_output(pipe: HarmonPipeline, tokens: torch.Tensor, size: int) -> torch.Tensor:
    """The MAR encoder over ``tokens`` with all of them visible, as in understanding: (B, buffers + L, D)."""
    return pipe.model.mar.forward_encoder(tokens, _all_visible(tokens), pipe.model.grid_for(size))


def yes_no_score(pipe: HarmonPipeline, question: str, x_enc: torch.Tensor) -> torch.Tensor:
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


@torch.no_grad()
def answer_log_odds(pipe: HarmonPipeline, image: Image.Image, question: str) -> float:
    """The LLM's log-odds of "Yes" over "No" as the first answer to ``question`` about ``image``."""
    size = pipe.config.generation.understanding_image_size
    return float(yes_no_score(pipe, question, encoder_output(pipe, image_tokens(pipe, [image], size), size)))
