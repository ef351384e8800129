"""Samples of the image-conditioned tasks (image_edit, reconstruction): record -> tensors, and their collate function.

The prompt of such a sample holds an image: the ``<image>`` slot of :func:`harmon.prompts.image_prompt` becomes
``image_tokens`` IMAGE_PLACEHOLDER ids, which the model fills with the understanding features of the condition
image (:meth:`harmon.model.Harmon.image_conditioned_loss`); the target is drawn with the text-to-image loss.

- image_edit: the source image and "Edit the image: {instruction}" -> the target image.
- reconstruction (RecA, arXiv 2509.07295): the image and a template drawn from
  :data:`harmon.prompts.RECONSTRUCTION_TEMPLATES` -> the same image.

Classifier-free guidance. One uniform draw u per sample (the first draw of its generator): u < cfg_drop_prob drops
everything (the plain unconditional prompt "Generate an image.", no image, the branch text-to-image guidance uses);
u < cfg_drop_prob + text_drop_prob drops the text and keeps the image (:func:`harmon.prompts.image_only_prompt`,
the "image without instruction" branch of editing's guidance, and what RecA's public code trains when it drops its
template); otherwise the full prompt. The image alone is never dropped: no guidance branch uses text without image.
"""

from __future__ import annotations

import torch
from PIL import Image

from harmon import rng
from harmon.data.processing import _pad_id, check_image, open_image, pad_right
from harmon.data.records import MALFORMED, TEXT_TOO_LONG, BadSample
from harmon.data.tasks import Task
from harmon.images import expand_to_square, pil_to_tensor, to_rgb
from harmon.prompts import (
    IMAGE_PLACEHOLDER,
    RECONSTRUCTION_TEMPLATES,
    edit_prompt,
    image_only_prompt,
    image_prompt,
    unconditional_prompt,
)
from harmon.tokenizer import USER_TEXT, encode_template


class ImageConditionedProcessor:
    """An image_edit or reconstruction record -> {"pixels": (3, S, S) the target, "cond_pixels": (3, S_c, S_c) the
    condition image, "input_ids": (T,) long with ``image_tokens`` IMAGE_PLACEHOLDER slots, or none when dropped}.

    Both images get the same geometry: padded to a gray square (``pad_to_square``, as understanding and
    :meth:`HarmonPipeline.edit` prepare a source image) or one square box (``crop``: "random", "center") or a stretch,
    then resized (bicubic): the target to ``image_size``, the condition to ``cond_image_size``. A target of another
    size than its source is first resized to the source's size.

    Args:
        tokenizer: a tokenizer with the ChatML special tokens and ``image_token``.
        task: Task.IMAGE_EDIT or Task.RECONSTRUCTION.
        image_tokens: slots of one condition image: (cond_image_size / token size)² + buffers.
        max_length: most prompt tokens besides the image slots; a longer prompt is a bad sample (never cut).
        cfg_drop_prob, text_drop_prob: the guidance drops of the module docstring.
        templates: reconstruction prompts, one drawn per sample from its generator.
    """

    def __init__(
        self,
        tokenizer,
        task: Task,
        image_size: int,
        cond_image_size: int,
        image_tokens: int,
        max_length: int = 128,
        cfg_drop_prob: float = 0.1,
        text_drop_prob: float = 0.0,
        crop: str = "random",
        pad_to_square: bool = False,
        min_side: int = 8,
        max_aspect: float = 10.0,
        templates: tuple[str, ...] = RECONSTRUCTION_TEMPLATES,
        image_token: str = "<image>",
    ) -> None:
        if not Task(task).image_conditioned:
            raise ValueError(f"task {task} has no condition image")
        if min(image_size, cond_image_size, image_tokens, max_length) < 1:
            raise ValueError("image_size, cond_image_size, image_tokens and max_length must be positive")
        if not (cfg_drop_prob >= 0.0 and text_drop_prob >= 0.0 and cfg_drop_prob + text_drop_prob <= 1.0):
            raise ValueError(f"drop probabilities {cfg_drop_prob} + {text_drop_prob} must be >= 0 and sum to <= 1")
        if crop not in ("random", "center", "stretch"):
            raise ValueError(f"crop must be 'random', 'center' or 'stretch', got {crop!r}")
        if not templates:
            raise ValueError("templates is empty")
        self.tokenizer, self.task, self.image_token = tokenizer, Task(task), image_token
        self.image_size, self.cond_image_size, self.image_tokens = image_size, cond_image_size, image_tokens
        self.max_length, self.cfg_drop_prob, self.text_drop_prob = max_length, cfg_drop_prob, text_drop_prob
        self.crop, self.pad_to_square, self.templates = crop, pad_to_square, tuple(templates)
        self.min_side, self.max_aspect = min_side, max_aspect
        self.pad_id = _pad_id(tokenizer)
        self.image_id = tokenizer.convert_tokens_to_ids(image_token)

    def prompt_ids(self, record: dict, generator: torch.Generator | None) -> list[int]:
        """The sample's prompt ids after the guidance drop, each image slot expanded to ``image_tokens``
        placeholders. Draws the drop first, then (reconstruction) the template."""
        u = float(rng.rand((), generator))
        if u < self.cfg_drop_prob:
            return encode_template(self.tokenizer, unconditional_prompt())
        if u < self.cfg_drop_prob + self.text_drop_prob:
            ids = encode_template(self.tokenizer, image_only_prompt(1, self.image_token), "", self.image_token)
        elif self.task is Task.RECONSTRUCTION:
            template = self.templates[int(rng.randint(0, len(self.templates), (1,), generator))]
            ids = encode_template(self.tokenizer, image_prompt(template, 1, self.image_token), "", self.image_token)
        else:
            instruction = record.get("instruction")
            if not isinstance(instruction, str) or not instruction.strip():
                raise BadSample(MALFORMED, "empty or missing instruction")
            template = edit_prompt(USER_TEXT, self.image_token)
            ids = encode_template(self.tokenizer, template, instruction.strip(), self.image_token)
        if len(ids) - 1 > self.max_length:
            raise BadSample(TEXT_TOO_LONG, f"{len(ids) - 1} prompt tokens > {self.max_length}")
        slot = ids.index(self.image_id)  # the template's one slot; typed text never adds one
        return ids[:slot] + [IMAGE_PLACEHOLDER] * self.image_tokens + ids[slot + 1 :]

    def _squares(self, images: list[Image.Image], generator: torch.Generator | None) -> list[Image.Image]:
        """The images (the first one's size) under one shared square geometry (see the class docstring)."""
        images = [to_rgb(im) for im in images]
        size = images[0].size
        images = [im if im.size == size else im.resize(size, Image.Resampling.BICUBIC) for im in images]
        if self.pad_to_square:
            return [expand_to_square(im) for im in images]
        if self.crop == "stretch":
            return images
        w, h = size
        side = min(w, h)
        if self.crop == "random":
            left = int(rng.randint(0, w - side + 1, (1,), generator))
            top = int(rng.randint(0, h - side + 1, (1,), generator))
        else:
            left, top = (w - side) // 2, (h - side) // 2
        return [im.crop((left, top, left + side, top + side)) for im in images]

    def __call__(self, record: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        kind = self.task.record_kind
        if not isinstance(record, dict):
            raise BadSample(MALFORMED, f"record is a {type(record).__name__}")
        if record.get("kind", kind) != kind:  # a wiring error, not bad data
            raise ValueError(f"a {self.task.value} processor got a {record.get('kind')!r} record")
        ids = self.prompt_ids(record, generator)  # text first: cheaper than decoding the images
        keys = ("image",) if self.task is Task.RECONSTRUCTION else ("source", "target")
        images = [open_image(record.get(k)) for k in keys]
        for im in images:
            check_image(im, self.min_side, self.max_aspect)
        squares = self._squares(images, generator)
        cond, target = squares[0], squares[-1]
        return {
            "pixels": pil_to_tensor(target.resize((self.image_size,) * 2, Image.Resampling.BICUBIC)),  # (3, S, S)
            "cond_pixels": pil_to_tensor(cond.resize((self.cond_image_size,) * 2, Image.Resampling.BICUBIC)),
            "input_ids": torch.tensor(ids, dtype=torch.long),  # (T,)
        }


def collate_conditioned(samples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """-> {"pixels": (B, 3, S, S), "cond_pixels": (B, 3, S_c, S_c), "input_ids": (B, T) right-padded with pad_id,
    "attention_mask": (B, T) bool}."""
    ids = [s["input_ids"] for s in samples]
    lengths = torch.tensor([len(s) for s in ids])
    return {
        "pixels": torch.stack([s["pixels"] for s in samples]),
        "cond_pixels": torch.stack([s["cond_pixels"] for s in samples]),
        "input_ids": pad_right(ids, pad_id),
        "attention_mask": torch.arange(int(lengths.max()))[None, :] < lengths[:, None],
    }
