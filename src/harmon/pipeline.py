"""HarmonPipeline: what users call. Wires the model, the tokenizer, prompt templates and the sampling loops."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from harmon import accel
from harmon.chat import ChatStream, PromptCache, answer_batch, plan_layouts
from harmon.chat import chat as run_chat
from harmon.chat import embed as embed_chat
from harmon.chat import render as render_chat
from harmon.conditioning import ImageInput, conditioned_batch, edit_inputs, embed_with_images, generation_ids
from harmon.config import HarmonConfig
from harmon.images import tokens_as
from harmon.layout_edit import DIRECT_ONLY, as_image, edit_by_layout, layout_route
from harmon.loading import as_dtype, load_official, load_pretrained, resolve_device, save_pretrained
from harmon.model import Harmon
from harmon.prompts import IM_END, generation_prompt, unconditional_prompt, understanding_prompt
from harmon.sampling import (
    SETTING_KEYWORDS,
    Canvas,
    SamplingSettings,
    StepCallback,
    generate_tokens,
    settings_from_defaults,
)
from harmon.tokenizer import USER_TEXT, encode_template
from harmon.vae import VAEConfig
from harmon.validate import check_flag, check_number, check_prompts, check_text

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
        self.chat_cache = PromptCache()  # the last conversation's K/V, reused by the next turn of :meth:`chat`

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_official(
        cls,
        checkpoint: str | Path,
        vae: str | Path,
        llm: str | Path,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        vae_config: VAEConfig | None = None,
    ) -> HarmonPipeline:
        """Load released Harmon weights: ``checkpoint`` harmon_0.5b.pth / harmon_1.5b.pth (flat state dict with llm.,
        mar., proj_in., proj_out.); ``vae`` kl16.ckpt (its "model" entry); ``llm`` a local Qwen2.5-Instruct folder,
        config.json and tokenizer files (no weights; its generation_config.json, if any, gives describe's repetition
        penalty, as in the original); ``vae_config`` default KL-16; ``dtype`` as in :meth:`from_pretrained`."""
        return cls(*load_official(checkpoint, vae, llm, device, dtype, vae_config))

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None
    ) -> HarmonPipeline:
        """Load our own format: config.json + model.safetensors + tokenizer files. ``dtype`` "auto": bf16 where the
        hardware multiplies it natively, else fp32 (:func:`harmon.cpuinfo.choose_dtype`); None: bf16 on CUDA only."""
        return cls(*load_pretrained(path, device, dtype))

    def quantize(self, mode: str | None = "int8") -> HarmonPipeline:
        """Weight-only int8 for the LLM, its tied embedding / LM head and the MAR blocks, in place (see
        :mod:`harmon.accel.quant`; activations keep the model's dtype); None leaves the model as it is."""
        return accel.quantize_pipeline(self, mode)

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write config.json, model.safetensors (tied head stored once) and the tokenizer files."""
        save_pretrained(self.model, self.tokenizer, path, dtype)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None) -> HarmonPipeline:
        """Move and cast the model; a device or dtype it cannot run in is refused by name, as when loading."""
        device = None if device is None else resolve_device(device, self.model.dtype)[0]
        self.model.to(device=device, dtype=None if dtype is None else as_dtype(dtype))
        self.model.reset_rotary_buffers()
        self.chat_cache.clear()
        return self

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ------------------------------------------------------------------ text helpers
    def encode_prompt(self, template: str, user_text: str = "") -> list[int]:
        """Ids of a prompt template (:mod:`harmon.prompts`) filled with the user's text, which is never read as
        control tokens."""
        return encode_template(self.tokenizer, template, user_text, self.config.image_token)

    def pad_prompts(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids (N, T) of prompts from :meth:`encode_prompt` and their attention mask, as :meth:`draw`
        takes them."""
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
                f"{what} is too long: {parts} = {total} tokens exceed the model's context of {limit} "
                "(llm.max_position_embeddings); shorten it or use a smaller image size"
            )

    def image_tokens(self, image_size: object, name: str = "image_size") -> int:
        """The LLM positions an image of ``image_size`` takes (its tokens and the buffers); a size that is not a
        positive multiple of the token size is refused by name. Nothing is built, so a size that the context
        check refuses costs nothing."""
        px = self.config.token_px
        check_number(name, image_size, low=px, integer=True)
        if image_size % px:
            raise ValueError(f"{name} {image_size} is not a multiple of {px} px (the VAE stride x MAR patch size)")
        tokens = self.config.image_positions(image_size)
        limit = self.context_length
        if limit is not None and tokens >= limit:
            largest = px * math.isqrt(max(limit - 1 - self.config.mar.buffer_size, 0))
            raise ValueError(
                f"{name} {image_size} takes {tokens} image tokens, beyond the model's context of {limit} "
                f"(llm.max_position_embeddings); the largest size that fits is {largest}"
            )
        return tokens

    # ------------------------------------------------------------------ generation
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
        detail_steps: int | None = None,
        cond_refresh: int | None = None,
        token_refresh: int | None = None,
        token_ratio: float | None = None,
        preset: str | None = None,
        plan: bool = False,
        generator: torch.Generator | None = None,
        compile: bool = False,
        output_type: str = "pil",
        callback: StepCallback | None = None,
    ) -> list[Image.Image] | torch.Tensor:
        """Draw images for one prompt or several.

        Settings left as None take the model's recorded defaults (``config.generation``), adjusted by ``preset``
        ("brisk", "lean", "gtr", ...: see :data:`harmon.sampling.PRESETS`) when one is named; explicit settings win.
        ``detail_steps`` (two-stage GtR sampling), ``cond_refresh`` (LazyMAR's condition cache) and
        ``token_refresh`` / ``token_ratio`` (LazyMAR's token cache): see :class:`harmon.sampling.SamplingSettings`;
        None (their default) runs the official sampler. Returns a list of PIL images (prompt-major), or with
        ``output_type="latent"`` the scaled VAE latents (N, C, h, w), or with ``"pt"`` pixels (N, 3, H, W).
        ``compile``: the diffusion head's MLP through ``torch.compile`` (:mod:`harmon.accel.head`), the same images
        up to float rounding. ``callback(step, total)``: called after each masked-autoregressive step (progress;
        raising stops the call); the images do not depend on it. ``plan``: draw from the layout the model writes
        first (:meth:`plan`), text prompts only. ``images`` (PIL images or paths; None: text only, the released
        path): their understanding features (:mod:`harmon.conditioning`, at ``understanding_image_size``) fill the
        prompts' ``<image>`` marks in order, or come first, one per line, in a prompt without marks; guidance then
        contrasts with the plain unconditional prompt.
        """
        draw = {"generator": generator, "compile": compile, "output_type": output_type, "callback": callback}
        prompts = check_prompts(prompt, num_images_per_prompt, **draw)
        settings, size = self.generation_settings(**{k: v for k, v in locals().items() if k in SETTING_KEYWORDS})
        n_image, guided = self.image_tokens(size), settings.guidance_scale != 1.0
        if check_flag("plan", plan) and images is not None:
            raise ValueError("plan applies to text prompts; a prompt with images is drawn directly")
        prompts = plan_layouts(self, prompts) if plan else prompts
        if images is not None:
            seqs = generation_ids(self.tokenizer, prompts, images, self.config.image_token)
            seqs += [self.encode_prompt(unconditional_prompt())] * (len(seqs) if guided else 0)
            batch = conditioned_batch(self, seqs, images, understanding_image_size, n_image)
            return self.draw(*batch, size, settings, repeat=num_images_per_prompt, **draw)
        seqs = [self.encode_prompt(generation_prompt(USER_TEXT), p.strip()) for p in prompts]
        longest = max(range(len(seqs)), key=lambda i: len(seqs[i]))
        self.check_context(len(seqs[longest]), n_image, 0, f"prompt {longest}" if len(seqs) > 1 else "prompt")
        uncond = [self.encode_prompt(unconditional_prompt())] * (len(seqs) if guided else 0)
        input_ids, mask = self.pad_prompts(seqs + uncond)
        return self.draw(input_ids, mask, size, settings, repeat=num_images_per_prompt, **draw)

    def draw(
        self,
        prompt: torch.Tensor,
        mask: torch.Tensor,
        image_size: int,
        settings: SamplingSettings,
        *,
        generator: torch.Generator | None = None,
        compile: bool = False,
        output_type: str = "pil",
        callback: StepCallback | None = None,
        repeat: int = 1,
        canvas: Canvas | None = None,
    ) -> list[Image.Image] | torch.Tensor:
        """Sample a prompt batch ((R, T) ids or (R, T, H) embeddings, ``settings.groups`` row groups of distinct
        prompts, each row ``repeat`` times) and return the images as ``output_type`` says: the step under
        :meth:`generate` and :meth:`edit` for prompts built another way (ids from :meth:`encode_prompt`, image
        slots filled by :func:`harmon.conditioning.conditioned_batch`). ``canvas``: the decoder's canvas per prompt
        row (:func:`harmon.sampling.sample_tokens`), repeated with the rows."""
        grid = self.model.grid_for(image_size)
        if repeat > 1:
            prompt, mask = prompt.repeat_interleave(repeat, dim=0), mask.repeat_interleave(repeat, dim=0)
            if canvas is not None:
                canvas = tuple(t.repeat_interleave(repeat, dim=0) for t in canvas)
        groups = settings.groups
        strategies = accel.generation_strategies(self.model, guidance=groups > 1, compile=compile, groups=groups)
        # CPU float32: weights packed once per call; in bf16 the diffusion head's (harmon.accel.linear), once per
        # call rather than once per masked-autoregressive step
        head = self.model.mar.diffloss
        with accel.packed_linears(self.model), accel.packed_linears(head, bf16=True):
            tokens = generate_tokens(
                self.model,
                prompt,
                mask,
                grid,
                settings,
                generator=generator,
                callback=callback,
                canvas=canvas,
                **strategies,
            )  # (N, L, C)
        return tokens_as(self.model, tokens, grid, output_type)

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
        detail_steps: int | None = None,
        cond_refresh: int | None = None,
        token_refresh: int | None = None,
        token_ratio: float | None = None,
        preset: str | None = None,
        plan: bool | None = None,
        strength: float | None = None,
        checks: int | None = None,
        compile: bool = False,
        output_type: str = "pil",
        callback: StepCallback | None = None,
    ) -> list[Image.Image] | torch.Tensor:
        """Edit ``image`` as ``instruction`` says. ``plan`` True: the layout route (:mod:`harmon.layout_edit`: read
        the layout, rewrite it, redraw the changed places from their source tokens at SDEdit ``strength``, each image
        the best of ``checks`` draws read back); None: that route when the model records one
        (``config.generation.edit_layout_request``), else the direct route (a model trained by the ``edit``
        recipe): generation after "<image>\nEdit the image: {instruction}", the slot holding the image's
        understanding features at ``understanding_image_size``, as ``describe`` sees it. Guidance (InstructPix2Pix,
        arXiv 2211.09800, eq. 3): ``guidance_scale`` s_T from the image without the instruction towards it;
        ``image_guidance_scale`` s_I from the plain unconditional prompt towards the image
        (1, the default, drops that branch). Other settings as :meth:`generate`.
        """
        image = as_image(image)
        check_text(instruction, "instruction")
        draw = {"generator": generator, "compile": compile, "output_type": output_type, "callback": callback}
        check_prompts(instruction, num_images_per_prompt, **draw)  # the other checks of generate
        settings, size = self.generation_settings(**{k: v for k, v in locals().items() if k in SETTING_KEYWORDS})
        own = {"strength": strength, "checks": checks}
        if layout_route(self, plan, own, {k: v for k, v in locals().items() if k in DIRECT_ONLY}):
            kw = own | {"num_images": num_images_per_prompt, "generator": generator}
            return edit_by_layout(self, image, instruction, settings, size, output_type=output_type, **kw)
        if image_guidance_scale is not None and check_number("image_guidance_scale", image_guidance_scale) != 1.0:
            settings = replace(settings, image_guidance_scale=image_guidance_scale)  # checked there
        prompt, mask, canvas = edit_inputs(self, image, instruction, settings.groups, size, understanding_image_size)
        return self.draw(prompt, mask, size, settings, repeat=num_images_per_prompt, canvas=canvas, **draw)

    def plan(self, prompt: str | Sequence[str], *, max_new_tokens: int | None = None) -> str | list[str]:
        """The layout the model writes for ``prompt`` (one string, or a list for a list), which ``generate(...,
        plan=True)`` draws from: greedy answers to ``config.generation.plan_request`` + the prompt, their clauses in
        the order of ``config.generation.plan_places`` when the model records one (:func:`harmon.chat.ordered_plan`).
        ValueError when the model records no plan request (it was not trained to plan)."""
        prompts = check_prompts(prompt, 1)
        plans = plan_layouts(self, prompts, max_new_tokens=max_new_tokens)
        return plans[0] if isinstance(prompt, str) else plans

    def generation_settings(self, **settings: Any) -> tuple[SamplingSettings, int]:
        """The sampling settings and image size :meth:`generate` runs with for these keyword arguments (its
        settings: :func:`harmon.sampling.settings_from_defaults` names them) over the model's defaults."""
        return settings_from_defaults(self.config.generation, **settings)

    # ------------------------------------------------------------------ understanding
    def understanding_inputs(
        self, image: Image.Image | str | Path, question: str, image_size: int | None = None, new_tokens: int = 0
    ) -> torch.Tensor:
        """Prompt embeddings with the image slots filled by the shared encoder: (1, N, H_llm), as :meth:`describe`
        feeds the LLM (the same one-turn conversation, rendered by :mod:`harmon.chat`). ``new_tokens``: the
        answer's length the context must also hold."""
        prompt = render_chat(self, [self._question_turn(image, question)], image_size)
        self.check_context(prompt.text_tokens, prompt.image_positions, new_tokens, "question")
        return embed_chat(self, prompt.items)

    @staticmethod
    def _question_turn(image: Image.Image | str | Path, question: str) -> dict[str, Any]:
        """The user turn of :meth:`describe`: the image, then the question."""
        check_text(question, "question")
        if not isinstance(image, (Image.Image, str, Path)):
            raise TypeError(f"expected a PIL image or a path, got {type(image).__name__}")
        if isinstance(image, str) and not image.strip():  # Path("") would name the current folder
            raise ValueError("image path is empty")
        return {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": question.strip()}],
        }

    def prompt_embeddings(self, question: str, z_enc: torch.Tensor) -> torch.Tensor:
        """The understanding prompt of ``question`` embedded, with the image slots filled by ``z_enc``
        (1, L+64, H_llm; buffers last): (1, N, H_llm)."""
        ids = self.encode_prompt(understanding_prompt(USER_TEXT, self.config.image_token), question)
        return embed_with_images(self.model, ids, self.image_token_id, [z_enc])  # typed marks stay text: one slot

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        max_new_tokens: int | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        repetition_penalty: float | None = None,
        generator: torch.Generator | None = None,
        image_size: int | None = None,
        stream: bool = False,
        reuse_cache: bool = True,
    ) -> str | ChatStream:
        """The assistant's next answer in a conversation about any number of images (see :mod:`harmon.chat`).

        ``messages``: ``[{"role": "system" | "user" | "assistant", "content": str | [part, ...]}, ...]``, the last
        the user's; a part is ``{"type": "text", "text": str}`` or ``{"type": "image", "image": PIL image | path}``.
        Decoding as :meth:`describe`. ``stream``: return a :class:`harmon.chat.ChatStream`, an iterator of text
        pieces as the model writes them, ending at the end of the turn. ``reuse_cache``: run only the positions
        after the prefix this conversation shares with the previous call's (:attr:`chat_cache`); False runs the
        whole prompt and leaves the cache alone.
        """
        return run_chat(
            self,
            messages,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            generator=generator,
            image_size=image_size,
            stream=stream,
            cache=self.chat_cache if reuse_cache else None,
        )

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

        A one-turn :meth:`chat` (the image, then the question) that neither uses nor fills the prompt cache, so
        an answer never depends on earlier calls. ``repetition_penalty`` None takes the model's
        (``config.generation.repetition_penalty``: for official weights the Qwen folder's generation_config.json
        value, which the original applies to its greedy answers).
        """
        turn = self._question_turn(image_or_path, question)
        return run_chat(
            self,
            [turn],
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            generator=generator,
            image_size=image_size,
            name="question",
        )

    def describe_many(
        self,
        images: Sequence[Image.Image | str | Path],
        questions: Sequence[str],
        *,
        batch_size: int = 32,
        **settings: Any,
    ) -> list[str]:
        """Greedy answers to ``questions[i]`` about ``images[i]``, ``batch_size`` at a time: each what :meth:`describe`
        answers alone, up to float rounding. ``settings``: max_new_tokens, repetition_penalty, image_size."""
        if isinstance(images, (str, Path, Image.Image)) or isinstance(questions, str):  # a str would split to letters
            raise TypeError("describe_many takes a list of images and a list of questions; for one, call describe")
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images for {len(questions)} questions")
        turns = [[self._question_turn(image, q)] for image, q in zip(images, questions)]
        return answer_batch(self, turns, batch_size=batch_size, **settings)

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        n = sum(p.numel() for p in self.model.parameters())
        return f"HarmonPipeline({n / 1e6:.1f}M params, device={self.device}, dtype={self.model.dtype})"
