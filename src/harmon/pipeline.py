"""HarmonPipeline: what users call. Wires the model, the tokenizer, prompt templates and the sampling loops."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from harmon import accel
from harmon.conditioning import ImageInput, embed_with_images, generation_ids, image_features, padded_rows
from harmon.config import HarmonConfig
from harmon.images import tensor_to_pil
from harmon.loading import load_official, load_pretrained, save_pretrained
from harmon.model import Harmon
from harmon.prompts import (
    IM_END,
    edit_prompt,
    generation_prompt,
    image_only_prompt,
    unconditional_prompt,
    understanding_prompt,
)
from harmon.sampling import SamplingSettings, check_decoding_settings, decode_text, generate_tokens, preset_settings
from harmon.tokenizer import USER_TEXT, encode_template
from harmon.vae import VAEConfig
from harmon.validate import check_number, check_text

logger = logging.getLogger(__name__)


class HarmonPipeline:
    """Text-to-image generation and image understanding with one Harmon model.

    Build with :meth:`from_official` (released files), :meth:`from_pretrained` (our format) or from parts.
    """

    def __init__(self, model: Harmon, tokenizer) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config: HarmonConfig = model.config
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.config.image_token)
        self.eos_token_id = tokenizer.convert_tokens_to_ids(IM_END)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {self.config.image_token!r} token")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_official(
        cls,
        checkpoint: str | Path,
        vae: str | Path,
        llm: str | Path,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        vae_config: VAEConfig | None = None,
    ) -> HarmonPipeline:
        """Load released Harmon weights.

        Args:
            checkpoint: harmon_0.5b.pth / harmon_1.5b.pth (flat state dict with llm., mar., proj_in., proj_out.).
            vae: kl16.ckpt (its "model" entry is the VAE state dict).
            llm: a local Qwen2.5-Instruct folder: config.json and tokenizer files (its weights are not needed);
                its generation_config.json, if any, gives describe's repetition penalty, as in the original.
            vae_config: the VAE's shape; default KL-16 (embed_dim 16, ch_mult (1,1,2,2,4), scale 0.2325).
        """
        return cls(*load_official(checkpoint, vae, llm, device, dtype, vae_config))

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> HarmonPipeline:
        """Load our own format: config.json + model.safetensors + tokenizer files."""
        return cls(*load_pretrained(path, device, dtype))

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write config.json, model.safetensors (tied head stored once) and the tokenizer files."""
        save_pretrained(self.model, self.tokenizer, path, dtype)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> HarmonPipeline:
        self.model.to(device=device, dtype=dtype)
        self.model.reset_rotary_buffers()
        return self

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ------------------------------------------------------------------ text helpers
    def _encode(self, template: str, user_text: str = "", image_slots: bool = False) -> list[int]:
        """Ids of a prompt template filled with the user's text, which is never read as control tokens (but for
        the image marks it spells, with ``image_slots``)."""
        return encode_template(self.tokenizer, template, user_text, self.config.image_token, image_slots)

    def _padded(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids (N, T) and their attention mask."""
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.bool)
        for i, seq in enumerate(seqs):
            ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[i, : len(seq)] = True
        return ids.to(self.device), mask.to(self.device)

    @property
    def context_length(self) -> int | None:
        """Positions the LLM was built for (``llm.max_position_embeddings``); None when the config has none."""
        return self.config.llm.get("max_position_embeddings")

    def check_context(self, text_tokens: int, image_tokens: int, new_tokens: int, what: str) -> None:
        """Refuse a sequence longer than the LLM's context: beyond it answers and images are undefined, and
        the work is wasted. Raises ValueError naming the parts and the limit."""
        limit = self.context_length
        total = text_tokens + image_tokens + new_tokens
        if limit is not None and total > limit:
            parts = f"{text_tokens} text + {image_tokens} image tokens" + (f" + {new_tokens} new" if new_tokens else "")
            raise ValueError(
                f"{what}: {parts} = {total} tokens exceed the model's context of {limit} "
                "(llm.max_position_embeddings); shorten it or use a smaller image size"
            )

    def image_tokens(self, image_size: object, name: str = "image_size") -> tuple[tuple[int, int], int]:
        """The token grid of ``image_size`` and the LLM positions it takes (tokens + buffers); a size that is not
        a positive multiple of the token size is refused by name."""
        check_number(name, image_size, low=self.config.token_px, integer=True)
        try:
            grid = self.model.grid_for(image_size)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
        return grid, grid[0] * grid[1] + self.config.mar.buffer_size

    # ------------------------------------------------------------------ generation
    @staticmethod
    def _prompt_list(prompt: str | Sequence[str], num_images_per_prompt: int, output_type: str) -> list[str]:
        """The prompts of a ``generate`` call as a list, after checking its arguments."""
        if isinstance(prompt, (bytes, bytearray)):
            raise TypeError("prompt must be a string, got bytes (decode it first)")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("prompt list is empty")
        for i, p in enumerate(prompts):
            check_text(p, "prompt" if isinstance(prompt, str) else f"prompt {i}")
        check_number("num_images_per_prompt", num_images_per_prompt, low=1, integer=True)
        if output_type not in ("pil", "latent", "pt"):
            raise ValueError(f"output_type must be 'pil', 'latent' or 'pt', got {output_type!r}")
        return prompts

    @torch.no_grad()
    def generate(
        self,
        prompt: str | Sequence[str],
        *,
        images: Sequence[ImageInput] | None = None,
        understanding_image_size: int | None = None,
        num_images_per_prompt: int = 1,
        image_size: int | None = None,
        num_iter: int | None = None,
        guidance_scale: float | None = None,
        cfg_schedule: str | None = None,
        temperature: float | None = None,
        num_sampling_steps: str | int | None = None,
        x0_clip: float | None = None,
        diffusion_steps_final: int | None = None,
        preset: str | None = None,
        generator: torch.Generator | None = None,
        compile: bool = False,
        output_type: str = "pil",
    ) -> list[Image.Image] | torch.Tensor:
        """Draw images for one prompt or several.

        Settings left as None take the model's recorded defaults (``config.generation``), adjusted by ``preset``
        ("brisk", "lean", "fast", ...: see :data:`harmon.sampling.PRESETS`) when one is named; explicit settings win.
        Returns a list of PIL images (prompt-major: all images of prompt 0, then prompt 1...), or with
        ``output_type="latent"`` the scaled VAE latents (N, C, h, w), or with ``"pt"`` pixels (N, 3, H, W).
        ``compile``: run the diffusion head's MLP through ``torch.compile`` (see :mod:`harmon.accel.head`): the same
        images up to float rounding; the first call in a process pays the compilation, later calls are faster.

        ``images`` (PIL images or paths; None: text only, the released path unchanged): every prompt is conditioned
        on them. Their understanding features (:mod:`harmon.conditioning`, at ``understanding_image_size``, default
        the model's understanding size) fill the ``<image>`` marks of the prompt in order; a prompt without marks
        gets them first, one per line (``<image>\nGenerate an image: {prompt}``). Guidance contrasts that prompt with
        the plain unconditional one (no images): the images count as part of the condition.
        """
        prompts = self._prompt_list(prompt, num_images_per_prompt, output_type)
        settings, size = self.generation_settings(
            image_size=image_size,
            num_iter=num_iter,
            guidance_scale=guidance_scale,
            cfg_schedule=cfg_schedule,
            temperature=temperature,
            num_sampling_steps=num_sampling_steps,
            x0_clip=x0_clip,
            diffusion_steps_final=diffusion_steps_final,
            preset=preset,
        )
        grid, n_image = self.image_tokens(size)
        guided = settings.guidance_scale != 1.0
        if images is not None:
            seqs = generation_ids(self.tokenizer, prompts, images, self.config.image_token)
            seqs += [self._encode(unconditional_prompt())] * (len(seqs) if guided else 0)
            batch = self._embedded_batch(seqs, images, understanding_image_size, n_image)
            return self._draw(*batch, grid, settings, generator, compile, output_type, num_images_per_prompt)
        seqs = [self._encode(generation_prompt(USER_TEXT), p.strip()) for p in prompts]
        longest = max(range(len(seqs)), key=lambda i: len(seqs[i]))
        self.check_context(len(seqs[longest]), n_image, 0, f"prompt {longest}" if len(seqs) > 1 else "prompt")
        seqs = [seq for seq in seqs for _ in range(num_images_per_prompt)]
        input_ids, mask = self._padded(seqs + [self._encode(unconditional_prompt())] * len(seqs) if guided else seqs)
        return self._draw(input_ids, mask, grid, settings, generator, compile, output_type)

    def _draw(
        self,
        prompt: torch.Tensor,
        mask: torch.Tensor,
        grid: tuple[int, int],
        settings: SamplingSettings,
        generator: torch.Generator | None,
        compile: bool,
        output_type: str,
        repeat: int = 1,
    ) -> list[Image.Image] | torch.Tensor:
        """Sample a prompt batch ((R, T) ids or (R, T, H) embeddings, ``settings.groups`` row groups of distinct
        prompts, each row ``repeat`` times) and return the images as ``output_type`` says."""
        if repeat > 1:
            prompt, mask = prompt.repeat_interleave(repeat, dim=0), mask.repeat_interleave(repeat, dim=0)
        groups = settings.groups
        strategies = accel.generation_strategies(self.model, guidance=groups > 1, compile=compile, groups=groups)
        with accel.packed_linears(self.model):  # CPU float32: weights packed once per call
            tokens = generate_tokens(
                self.model, prompt, mask, grid, settings, generator=generator, **strategies
            )  # (N, L, C)
        if output_type == "latent":
            return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)
        pixels = self.model.decode_tokens(tokens, grid)  # (N, 3, H, W)
        return pixels if output_type == "pt" else tensor_to_pil(pixels)

    # ------------------------------------------------------------------ image-conditioned generation
    def _embedded_batch(
        self,
        seqs: list[list[int]],
        images: Sequence[ImageInput],
        understanding_image_size: int | None,
        n_image: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt ids whose image slots take the features of ``images`` (each row holds all of them or none) as a
        padded batch of embeddings (R, T, H) and mask (R, T); the context is checked before any image is encoded."""
        size = self.config.generation.understanding_image_size
        size = size if understanding_image_size is None else understanding_image_size
        _, per_image = self.image_tokens(size, "understanding_image_size")
        for seq in seqs:
            slots = seq.count(self.image_token_id)
            self.check_context(len(seq) - slots, n_image + slots * per_image, 0, "prompt with its images")
        features = [image_features(self.model, im, size) for im in images]  # each (1, L_c+64, H)
        rows = [
            embed_with_images(self.model, seq, self.image_token_id, features if self.image_token_id in seq else [])
            for seq in seqs
        ]
        return padded_rows(self.model, rows, self.tokenizer.pad_token_id)

    @torch.no_grad()
    def edit(
        self,
        image: ImageInput,
        instruction: str,
        *,
        image_guidance_scale: float | None = None,
        guidance_scale: float | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        understanding_image_size: int | None = None,
        image_size: int | None = None,
        num_iter: int | None = None,
        cfg_schedule: str | None = None,
        temperature: float | None = None,
        num_sampling_steps: str | int | None = None,
        x0_clip: float | None = None,
        diffusion_steps_final: int | None = None,
        preset: str | None = None,
        compile: bool = False,
        output_type: str = "pil",
    ) -> list[Image.Image] | torch.Tensor:
        """Edit ``image`` as ``instruction`` says: generation after the prompt "<image>\nEdit the image:
        {instruction}", whose slot holds the image's understanding features (padded to a gray square and resized to
        ``understanding_image_size``, as ``describe`` sees it). Needs a model trained to edit (the ``edit`` recipe).

        Guidance (InstructPix2Pix, arXiv 2211.09800, eq. 3): ``guidance_scale`` s_T (default the model's) pushes
        from the image without the instruction ("<image>\nGenerate an image.") towards the instruction;
        ``image_guidance_scale`` s_I pushes from the plain unconditional prompt towards the image. With s_I = 1 (the
        default) the unconditional branch drops out: two prompt rows per image instead of three, and the image-only
        branch alone anchors the result to the source. Whether s_I > 1 helps is for each model to show; the
        default runs the cheaper guidance. Other settings as :meth:`generate`.
        """
        check_text(instruction, "instruction")
        self._prompt_list(instruction, num_images_per_prompt, output_type)  # the other checks of generate
        settings, size = self.generation_settings(
            image_size=image_size,
            num_iter=num_iter,
            guidance_scale=guidance_scale,
            cfg_schedule=cfg_schedule,
            temperature=temperature,
            num_sampling_steps=num_sampling_steps,
            x0_clip=x0_clip,
            diffusion_steps_final=diffusion_steps_final,
            preset=preset,
        )
        if image_guidance_scale is not None and check_number("image_guidance_scale", image_guidance_scale) != 1.0:
            settings = replace(settings, image_guidance_scale=image_guidance_scale)  # checked there
        grid, n_image = self.image_tokens(size)
        mark = self.config.image_token
        branches = [
            self._encode(edit_prompt(USER_TEXT, mark), instruction.strip()),
            self._encode(image_only_prompt(1, mark)),
            self._encode(unconditional_prompt()),
        ][: settings.groups]
        batch = self._embedded_batch(branches, [image], understanding_image_size, n_image)
        return self._draw(*batch, grid, settings, generator, compile, output_type, num_images_per_prompt)

    def generation_settings(
        self,
        *,
        image_size: int | None = None,
        num_iter: int | None = None,
        guidance_scale: float | None = None,
        cfg_schedule: str | None = None,
        temperature: float | None = None,
        num_sampling_steps: str | int | None = None,
        x0_clip: float | None = None,
        diffusion_steps_final: int | None = None,
        preset: str | None = None,
    ) -> tuple[SamplingSettings, int]:
        """The sampling settings and image size :meth:`generate` runs with for these arguments (see there)."""
        d = self.config.generation
        if preset is not None:
            # the preset scales the settings in force (explicit ones, else the defaults); explicit ones still win
            picked = preset_settings(
                preset,
                d.num_iter if num_iter is None else num_iter,
                d.num_sampling_steps if num_sampling_steps is None else str(num_sampling_steps),
                scale_iter=num_iter is None,
                scale_steps=num_sampling_steps is None,
            )
            d = replace(d, **{k: v for k, v in picked.items() if k != "diffusion_steps_final"})
            if diffusion_steps_final is None:
                diffusion_steps_final = picked.get("diffusion_steps_final")  # type: ignore[assignment]
        settings = SamplingSettings(
            num_iter=d.num_iter if num_iter is None else num_iter,
            guidance_scale=d.guidance_scale if guidance_scale is None else guidance_scale,
            cfg_schedule=d.cfg_schedule if cfg_schedule is None else cfg_schedule,
            temperature=d.temperature if temperature is None else temperature,
            num_sampling_steps=str(num_sampling_steps if num_sampling_steps is not None else d.num_sampling_steps),
            x0_clip=d.x0_clip if x0_clip is None else x0_clip,
            diffusion_steps_final=diffusion_steps_final,
        )
        return settings, d.image_size if image_size is None else image_size

    # ------------------------------------------------------------------ understanding
    def understanding_inputs(
        self, image: ImageInput, question: str, image_size: int | None = None, new_tokens: int = 0
    ) -> torch.Tensor:
        """Prompt embeddings with the image slots filled by the shared encoder: (1, N, H_llm). ``new_tokens``:
        the answer's length the context must also hold."""
        check_text(question, "question")
        size = self.config.generation.understanding_image_size if image_size is None else image_size
        _, n_image = self.image_tokens(size)
        n_text = len(self._encode(understanding_prompt(USER_TEXT, self.config.image_token), question.strip())) - 1
        self.check_context(n_text, n_image, new_tokens, "question")
        z_enc = image_features(self.model, image, size)  # (1, L+64, H)
        return self.prompt_embeddings(question.strip(), z_enc)

    def prompt_embeddings(self, question: str, z_enc: torch.Tensor) -> torch.Tensor:
        """The understanding prompt of ``question`` embedded, with the image slots filled by ``z_enc``
        (1, L+64, H_llm; buffers last): (1, N, H_llm). The question cannot add a slot (typed marks stay text)."""
        ids = self._encode(understanding_prompt(USER_TEXT, self.config.image_token), question)
        return embed_with_images(self.model, ids, self.image_token_id, [z_enc])

    @torch.no_grad()
    def describe(
        self,
        image_or_path: Image.Image | str | Path,
        question: str = "Describe the image in detail.",
        *,
        max_new_tokens: int | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        repetition_penalty: float | None = None,
        generator: torch.Generator | None = None,
        image_size: int | None = None,
    ) -> str:
        """Answer ``question`` about an image (spec §10). Greedy unless ``do_sample``.

        ``repetition_penalty`` None takes the model's (``config.generation.repetition_penalty``: for official
        weights the Qwen folder's generation_config.json value, which the original applies to its greedy answers).
        """
        d = self.config.generation
        max_new_tokens = d.max_new_tokens if max_new_tokens is None else max_new_tokens
        penalty = d.repetition_penalty if repetition_penalty is None else repetition_penalty
        check_decoding_settings(max_new_tokens, temperature, top_p, penalty)  # before any work
        # Plain layers: packing (harmon.accel.linear) pays for many small calls, not for one large prefill.
        embeds = self.understanding_inputs(image_or_path, question, image_size, new_tokens=max_new_tokens)
        ids = decode_text(
            self.model,
            embeds,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_token_id,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            repetition_penalty=penalty,
            generator=generator,
        )
        if ids and ids[-1] == self.eos_token_id:
            ids = ids[:-1]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        n = sum(p.numel() for p in self.model.parameters())
        return f"HarmonPipeline({n / 1e6:.1f}M params, device={self.device}, dtype={self.model.dtype})"
