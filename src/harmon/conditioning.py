"""Prompts that hold images: the understanding features of given images in the ``<image>`` slots of a prompt.

``describe`` reads such a prompt (spec §10); image-conditioned generation (``generate(prompt, images=...)``,
``edit``) runs the sampler after one. An image is prepared as for understanding (RGB, padded to a gray square,
resized to the understanding size), encoded by the VAE, and passed whole (every token visible) through the MAR
encoder and proj_in: its (L + 64) features, buffers last, replace its slot. The rest of the prompt is text, encoded
with :func:`harmon.tokenizer.encode_template`, so typed control tokens stay text.

Batches of such prompts are right-padded embeddings (R, T, H) with a mask (R, T); padded positions hold the pad
token's embedding, so a prompt without images gives exactly the embeddings of its ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from harmon.canvas import source_canvas
from harmon.images import load_image, prepare_for_understanding
from harmon.model import Harmon
from harmon.prompts import (
    GENERATE_PREFIX,
    edit_prompt,
    generation_prompt,
    image_only_prompt,
    image_prompt,
    unconditional_prompt,
)
from harmon.tokenizer import USER_TEXT, encode_template

if TYPE_CHECKING:
    from harmon.pipeline import HarmonPipeline

ImageInput = Image.Image | str | Path


def image_features(model: Harmon, image: ImageInput, size: int) -> torch.Tensor:
    """The understanding features of one image at ``size`` pixels: (1, L+64, H_llm), buffers last (spec §10)."""
    return pixel_features(model, prepare_for_understanding(image, size))


def edit_canvas(
    model: Harmon,
    image: ImageInput,
    size: int,
    prompt: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The decoder canvas of an edit's source drawn at ``size`` pixels (``config.edit_canvas``): the image prepared
    as for understanding at that size, read whole, (R, buffer + L, D_enc), buffers first; R = 1, or with the rows'
    ``prompt`` (R, T, H) and ``text_mask`` (R, T) one row each, refined by the LLM after them (:mod:`harmon.canvas`)."""
    pixels = prepare_for_understanding(image, size).to(model.device)
    if prompt is not None:
        pixels = pixels.expand(prompt.shape[0], -1, -1, -1)
    return source_canvas(model, pixels, (size, size), prompt, text_mask)


def pixel_features(model: Harmon, pixels: torch.Tensor) -> torch.Tensor:
    """The understanding features of prepared pixels (B, 3, S, S) in [-1, 1]: every token visible through the MAR
    encoder and proj_in, (B, L+64, H_llm), buffers last."""
    tokens = model.encode_images(pixels.to(model.device))  # (B, L, C)
    _, z_enc = model.extract_visual_feature(tokens, None, model.grid_for(pixels.shape[-1]))  # (B, L+64, H)
    return z_enc


def embed_with_images(
    model: Harmon, ids: Sequence[int], image_token_id: int, features: Sequence[torch.Tensor]
) -> torch.Tensor:
    """The prompt ``ids`` embedded, its k-th ``image_token_id`` replaced by ``features[k]`` (1, L_k+64, H):
    (1, N, H) with N = len(ids) − slots + Σ (L_k + 64). Raises ValueError when slots and images disagree."""
    slots = [i for i, t in enumerate(ids) if t == image_token_id]
    if len(slots) != len(features):
        raise ValueError(f"the prompt has {len(slots)} image slots for {len(features)} images")
    device = model.device
    parts, start = [], 0
    for slot, feature in zip(slots, features):
        parts += [model.embed_text(_ids(ids[start:slot], device)), feature.to(model.dtype)]
        start = slot + 1
    parts.append(model.embed_text(_ids(ids[start:], device)))
    return torch.cat(parts, dim=1)  # (1, N, H)


def _ids(ids: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor([list(ids)], dtype=torch.long, device=device)  # (1, n), n may be 0


def padded_rows(model: Harmon, rows: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt embeddings (1, N_i, H) as one right-padded batch: embeddings (R, T, H), padded with the embedding of
    ``pad_id``, and the attention mask (R, T) bool."""
    width = max(r.shape[1] for r in rows)
    pad = model.embed_text(torch.tensor([[pad_id]], device=model.device))  # (1, 1, H)
    out = pad.expand(len(rows), width, -1).clone()  # (R, T, H)
    mask = torch.zeros(len(rows), width, dtype=torch.bool, device=model.device)
    for i, row in enumerate(rows):
        out[i, : row.shape[1]] = row[0]
        mask[i, : row.shape[1]] = True
    return out, mask


def generation_ids(
    tokenizer, prompts: Sequence[str], images: Sequence[ImageInput], image_token: str
) -> list[list[int]]:
    """The ids of image-conditioned generation prompts: "Generate an image: {prompt}" whose ``image_token`` marks
    become the slots of ``images`` in order, or, without marks, the images first, one per line. The prompt's other
    control tokens stay text. Raises TypeError / ValueError naming a bad images list or a mark count."""
    if isinstance(images, (str, Path, Image.Image)) or not isinstance(images, Sequence):
        raise TypeError(f"images must be a list of images or paths, got {type(images).__name__}")
    if not images:
        raise ValueError("images is empty (leave it out for text-only generation)")
    seqs = []
    for i, text in enumerate(p.strip() for p in prompts):
        marks = text.count(image_token)
        if marks and marks != len(images):
            what = f"prompt {i}" if len(prompts) > 1 else "prompt"
            raise ValueError(f"{what} holds {marks} {image_token} marks for {len(images)} images")
        if marks:
            template = generation_prompt(USER_TEXT)
        else:
            template = image_prompt(GENERATE_PREFIX + USER_TEXT, len(images), image_token)
        seqs.append(encode_template(tokenizer, template, text, image_token, image_slots=True))
    return seqs


def conditioned_batch(
    pipe: HarmonPipeline,
    seqs: list[list[int]],
    images: Sequence[ImageInput],
    understanding_image_size: int | None,
    n_image: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt ids whose image slots take the features of ``images`` (each row holds all of them or none) as a
    padded batch of embeddings (R, T, H) and mask (R, T) for ``pipe``'s model; ``n_image``: the positions of the
    image to draw. The context is checked before any image is encoded."""
    size = pipe.config.generation.understanding_image_size
    size = size if understanding_image_size is None else understanding_image_size
    per_image = pipe.image_tokens(size, "understanding_image_size")
    slot_id = pipe.image_token_id
    for seq in seqs:
        slots = seq.count(slot_id)
        pipe.check_context(len(seq) - slots, n_image + slots * per_image, 0, "prompt with its images")
    features = [image_features(pipe.model, im, size) for im in images]  # each (1, L_c+64, H)
    rows = [embed_with_images(pipe.model, seq, slot_id, features if slot_id in seq else []) for seq in seqs]
    return padded_rows(pipe.model, rows, pipe.tokenizer.pad_token_id)


def edit_inputs(
    pipe: HarmonPipeline,
    image: ImageInput,
    instruction: str,
    groups: int,
    size: int,
    understanding_image_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """The prompt rows of an edit drawn at ``size`` pixels, one per guidance group: "<image>\nEdit the image:
    {instruction}", the image alone, the plain unconditional prompt (the first ``groups``), as padded embeddings
    (R, T, H) and mask (R, T); and, with ``config.edit_canvas``, the decoder's canvas: the source for the first two
    rows (read through the LLM after each row's own prompt with ``edit_canvas_llm``), the mask token for the third.
    """
    if isinstance(image, (str, Path)):
        image = load_image(image)  # once: the prompt's slot and the canvas both read it
    mark = pipe.config.image_token
    branches = [
        pipe.encode_prompt(edit_prompt(USER_TEXT, mark), instruction.strip()),
        pipe.encode_prompt(image_only_prompt(1, mark)),
        pipe.encode_prompt(unconditional_prompt()),
    ][:groups]
    prompt, mask = conditioned_batch(pipe, branches, [image], understanding_image_size, pipe.image_tokens(size))
    if not pipe.config.edit_canvas:
        return prompt, mask, None
    refine = (prompt, mask) if pipe.config.edit_canvas_llm else ()
    x_con = edit_canvas(pipe.model, image, size, *refine).expand(groups, -1, -1)
    return prompt, mask, (x_con, torch.tensor([True, True, False][:groups], device=x_con.device))
