"""The Harmon model: VAE -> MAR encoder -> proj_in -> Qwen2 LLM -> proj_out (+ residual) -> MAR decoder -> DiffLoss.

Parameter names are the official ones (``llm.``, ``mar.``, ``proj_in.``, ``proj_out.``; the VAE under ``vae.`` with
the kl16 names), so released checkpoints load without renaming. The model returns losses and one-step
predictions; the sampling loops live in :mod:`harmon.sampling`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from harmon import rng
from harmon.canvas import source_canvas
from harmon.config import HarmonConfig
from harmon.data.tasks import SUPPORTED_TASKS, Task
from harmon.mar import MAR, mask_by_order, truncated_normal_mask_ratio, uniform_mask_ratio
from harmon.prompts import IGNORE_INDEX, IMAGE_PLACEHOLDER
from harmon.vae import AutoencoderKL


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; gradient multiplied by ``scale`` on the way back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    return _ScaleGrad.apply(x, scale)


def output_cache(out) -> Any:
    """The K/V cache of a transformers model output: ``.cache`` in transformers 5, ``.past_key_values`` before."""
    return out.past_key_values if getattr(out, "cache", None) is None else out.cache


def build_llm(llm_config: dict) -> Qwen2ForCausalLM:
    config = Qwen2Config(**llm_config)
    config._attn_implementation = "sdpa"
    return Qwen2ForCausalLM(config)


def _conv_layout(x: torch.Tensor) -> torch.Tensor:
    """The VAE's input in the memory layout its convolutions run fastest in: channels-last on CPU, where oneDNN's
    convolutions avoid reordering the input on every call; as it is elsewhere. Same values up to float rounding."""
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" and x.dim() == 4 else x


class Harmon(nn.Module):
    """The whole model. ``state_dict()`` minus ``vae.`` keys has exactly the official Harmon names."""

    def __init__(self, config: HarmonConfig) -> None:
        super().__init__()
        self.config = config
        hidden, d_enc = config.llm_hidden_size, config.mar.encoder_dim
        self.llm = build_llm(config.llm)
        self.mar = MAR(config.mar)
        self.proj_in = nn.Sequential(nn.Linear(d_enc, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.proj_out = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, d_enc))
        self.vae = AutoencoderKL(config.vae)
        self.vae.requires_grad_(False)
        # editing's skip from the source canvas to the diffusion conditions (zero at init: see :meth:`decode`)
        self.canvas_proj = nn.Linear(d_enc, config.mar.decoder_dim) if config.edit_canvas else None

    # ------------------------------------------------------------------ housekeeping
    def train(self, mode: bool = True) -> Harmon:
        super().train(mode)
        self.vae.eval()  # the VAE is frozen: never in training mode
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.mar.z_proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.mar.z_proj.weight.device

    @property
    def buffer_size(self) -> int:
        return self.config.mar.buffer_size

    def reset_rotary_buffers(self) -> None:
        """Recompute the LLM's rotary frequencies in fp32 on the model's device.

        They are non-persistent (never in checkpoints) and must not be rounded to bf16 by a dtype cast.
        """
        rotary = self.llm.model.rotary_emb
        with torch.device(self.device):
            self.llm.model.rotary_emb = type(rotary)(config=self.llm.config)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Checkpoint LLM layers, MAR blocks and DiffLoss res-blocks during training (outputs unchanged)."""
        new_api = hasattr(self.llm, "activation_checkpointing_enable")  # transformers >= 5.x names
        if enabled and new_api:
            self.llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif enabled:
            self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif new_api:
            self.llm.activation_checkpointing_disable()
        else:
            self.llm.gradient_checkpointing_disable()
        self.mar.grad_checkpointing = enabled
        self.mar.diffloss.net.grad_checkpointing = enabled

    def initialize_weights(self, generator: torch.Generator | None = None) -> None:
        """From-scratch init of the MAR part and projections (the LLM keeps its own init)."""
        self.mar.initialize_weights(generator)
        if self.canvas_proj is not None:
            nn.init.zeros_(self.canvas_proj.weight)
            nn.init.zeros_(self.canvas_proj.bias)
        for m in (*self.proj_in, *self.proj_out):
            if isinstance(m, nn.Linear):
                bound = math.sqrt(6.0 / (m.in_features + m.out_features))
                with torch.no_grad():
                    m.weight.copy_(rng.rand(m.weight.shape, generator, device=m.weight.device) * 2 * bound - bound)
                    m.bias.zero_()

    # ------------------------------------------------------------------ VAE <-> tokens
    def grid_for(self, image_size: int | tuple[int, int]) -> tuple[int, int]:
        """Token grid (rows, columns) of an image: one token per VAE stride x MAR patch size pixels."""
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        s = self.config.token_px
        if h % s or w % s or h <= 0 or w <= 0:
            raise ValueError(f"image size {h}x{w} is not a positive multiple of {s} (the VAE stride x MAR patch size)")
        return h // s, w // s

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1], (B, 3, H, W) -> latent tokens (B, h*w, C·p²) in raster order (posterior mode x scale).

        Patch size p > 1 concatenates each p x p block of latents, channel outermost, then the row and the column
        inside the block (spec §8)."""
        latents = self.vae.encode_latents(_conv_layout(pixels.to(self.vae_dtype)))  # (B, C, H/16, W/16)
        p = self.config.mar.patch_size
        return rearrange(latents, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p)

    def decode_tokens(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Latent tokens (B, h*w, C·p²) -> pixels (B, 3, H, W), approximately in [-1, 1]."""
        p = self.config.mar.patch_size
        latents = rearrange(tokens, "b (h w) (c p1 p2) -> b c (h p1) (w p2)", h=grid[0], w=grid[1], p1=p, p2=p)
        return self.vae.decode_latents(_conv_layout(latents.to(self.vae_dtype))).contiguous()

    @property
    def vae_dtype(self) -> torch.dtype:
        return self.vae.quant_conv.weight.dtype

    # ------------------------------------------------------------------ the shared encoder
    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(input_ids)

    def embed_prompt(self, prompt: torch.Tensor) -> torch.Tensor:
        """A prompt as the LLM reads it: (B, T) ids are embedded; (B, T, H) embeddings (a prompt whose image
        slots hold understanding features) are returned as they are."""
        return prompt if prompt.is_floating_point() else self.embed_text(prompt)

    def extract_visual_feature(
        self, tokens: torch.Tensor, mask: torch.Tensor | None, grid: tuple[int, int], run_blocks=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MAR encoder + proj_in (spec §5.1).

        Args:
            tokens: (B, L, C); mask: (B, L) bool (True = unknown) or None (all visible); grid: (h, w).
            run_blocks: the encoder's block runner (:data:`harmon.mar.BlockRunner`; default the plain one).
        Returns:
            x_enc (B, 64+V, D_enc) buffers first, and z_enc (B, V+64, H_llm) with the buffers moved LAST.
        """
        if mask is None:
            mask = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        x_enc = self.mar.forward_encoder(tokens, mask, grid, run_blocks=run_blocks)  # (B, 64+V, D)
        return x_enc, self.visual_to_llm(x_enc)

    def visual_to_llm(self, x_enc: torch.Tensor) -> torch.Tensor:
        """proj_in of the encoder output (B, 64+V, D_enc), buffers first -> (B, V+64, H_llm) with the buffers LAST,
        as the LLM reads them."""
        z_enc = self.proj_in(x_enc)  # (B, 64+V, H)
        nb = self.buffer_size
        return torch.cat([z_enc[:, nb:], z_enc[:, :nb]], dim=1)  # (B, V+64, H)

    def forward_mae_encoder(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        grid: tuple[int, int],
        text_mask: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        cache=None,
    ) -> torch.Tensor:
        """Encoder refined by the LLM after the text prompt (spec §5.2).

        Args:
            tokens: (B, L, C); mask: (B, L) bool; grid: (h, w).
            text_mask: (B, T) attention mask of the (right-padded) prompt.
            input_ids: (B, T) prompt ids, or (B, T, H) prompt embeddings (:meth:`embed_prompt`); required without
                ``cache``.
            cache: a transformers cache holding exactly the prompt's K/V; it is restored to that state on return.
        Returns:
            (B, 64+V, D_enc) = x_enc + proj_out(LLM output), buffers first (the decoder's input).
        """
        x_enc, z_enc = self.extract_visual_feature(tokens, mask, grid)
        return self.refine_with_llm(x_enc, z_enc, text_mask, input_ids=input_ids, cache=cache)

    def refine_with_llm(
        self,
        x_enc: torch.Tensor,
        z_enc: torch.Tensor,
        text_mask: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        cache=None,
        run_llm=None,
    ) -> torch.Tensor:
        """The LLM half of :meth:`forward_mae_encoder`, given ``extract_visual_feature``'s (x_enc, z_enc).

        Args:
            x_enc: (B, 64+V, D_enc) buffers first; z_enc: (B, V+64, H) buffers last.
            text_mask, input_ids, cache: as in :meth:`forward_mae_encoder`.
            run_llm: with ``cache``, ``run_llm(z_enc, positions (B, V+64), mask (B, T+V+64), cache)`` -> hidden
                states (B, V+64, H) in place of the LLM's forward, the cache left as it is (:mod:`harmon.tokencache`).
        Returns:
            (B, 64+V, D_enc) = x_enc + proj_out(LLM output), buffers first.
        """
        b, n_img = z_enc.shape[:2]
        full_mask = torch.cat([text_mask.bool(), text_mask.new_ones(b, n_img, dtype=torch.bool)], dim=1)
        positions = (full_mask.long().cumsum(dim=1) - 1).clamp(min=0)  # image tokens follow the real text
        if cache is None:
            if input_ids is None:
                raise ValueError("the LLM needs the prompt: pass input_ids or a prompt cache")
            inputs = torch.cat([self.embed_prompt(input_ids).to(z_enc.dtype), z_enc], dim=1)  # (B, T+V+64, H)
            hidden = self.llm.model(
                inputs_embeds=inputs, attention_mask=full_mask, position_ids=positions
            ).last_hidden_state
        else:
            if (held := cache.get_seq_length()) != text_mask.shape[1]:
                raise ValueError(f"cache holds {held} positions but the prompt mask has {text_mask.shape[1]}")
            if run_llm is not None:
                hidden = run_llm(z_enc, positions[:, -n_img:], full_mask, cache)
            else:
                kw = dict(attention_mask=full_mask, position_ids=positions[:, -n_img:], cache=cache, use_cache=True)
                hidden = self.llm.model(inputs_embeds=z_enc, **kw).last_hidden_state
                cache.crop(-n_img)  # keep only the prompt for the next step
        z_llm = hidden[:, -n_img:]  # (B, V+64, H)
        nb = self.buffer_size
        z_llm = torch.cat([z_llm[:, -nb:], z_llm[:, :-nb]], dim=1)  # buffers first again
        return x_enc + self.proj_out(z_llm)  # (B, 64+V, D_enc)

    def prompt_cache(self, prompt: torch.Tensor, text_mask: torch.Tensor):
        """Run the prompt once and return its K/V cache (spec §9.2 step 4, with mask and positions).

        Args: prompt: (B, T) right-padded ids or (B, T, H) embeddings (:meth:`embed_prompt`); text_mask: (B, T).
        Returns: a transformers cache of B rows, T positions.
        """
        positions = (text_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        out = self.llm.model(
            inputs_embeds=self.embed_prompt(prompt),
            attention_mask=text_mask.bool(),
            position_ids=positions,
            use_cache=True,
        )
        return output_cache(out)

    def decode(
        self, x_enc, mask, grid, x_con: torch.Tensor | None = None, x_con_rows=None, run_blocks=None
    ) -> torch.Tensor:
        """The diffusion conditions (B, L, Dd): :meth:`MAR.forward_decoder` (canvas ``x_con`` (B, buffer + L, D_enc)
        in the (B,) bool ``x_con_rows``, default all; blocks through ``run_blocks``) plus, with ``config.edit_canvas``,
        ``canvas_proj`` of each position's canvas feature: the decoder's blocks, trained on mask-token rows, bury the
        canvas under their own output; the skip hands the head the source token: an edit learns only the change."""
        z = self.mar.forward_decoder(x_enc, mask, grid, x_con, x_con_rows, run_blocks=run_blocks)
        if x_con is None or self.canvas_proj is None:
            return z
        skip = self.canvas_proj(x_con[:, self.buffer_size :])  # (B, L, Dd)
        rows = torch.ones(z.shape[0], dtype=torch.bool, device=z.device) if x_con_rows is None else x_con_rows
        return z + skip * rows.view(-1, 1, 1).to(skip.dtype)

    # ------------------------------------------------------------------ training losses
    def sample_orders(self, batch: int, seq_len: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, L) random permutations, one per row, drawn from ``generator``."""
        return torch.stack([rng.randperm(seq_len, generator, device=self.device) for _ in range(batch)])

    def text_to_image_loss(
        self,
        pixels: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        generator: torch.Generator | None = None,
        x_con: torch.Tensor | None = None,
        x_con_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Masked-token diffusion loss conditioned on the prompt (spec §11.2).

        Args:
            pixels: (B, 3, H, W) in [-1, 1]; input_ids, attention_mask: (B, T) right-padded chat prompts (or
                input_ids as (B, T, H) prompt embeddings, see :meth:`image_conditioned_loss`).
            generator: draws the orders, the batch's mask ratio, the timesteps and the noise.
            x_con, x_con_rows: the decoder's canvas, as :meth:`MAR.forward_decoder` takes them (editing).
        """
        grid = self.grid_for((pixels.shape[-2], pixels.shape[-1]))
        tokens = self.encode_images(pixels)  # (B, L, C)
        b, seq = tokens.shape[:2]
        mar = self.config.mar
        if mar.mask_ratio_dist == "uniform":
            ratio = uniform_mask_ratio(mar.mask_ratio_min, generator=generator)
        else:
            ratio = truncated_normal_mask_ratio(mar.mask_ratio_min, generator=generator)
        n_masked = max(1, math.ceil(seq * ratio))  # at least one token carries the loss
        mask = mask_by_order(n_masked, self.sample_orders(b, seq, generator))  # (B, L) True = unknown
        x_enc = self.forward_mae_encoder(tokens, mask, grid, attention_mask, input_ids=input_ids)
        z = self.decode(x_enc, mask, grid, x_con, x_con_rows)  # (B, L, Dd)
        return self.mar.forward_loss(z, tokens, mask, generator=generator)

    def image_conditioned_loss(
        self,
        pixels: torch.Tensor,
        cond_pixels: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        generator: torch.Generator | None = None,
        image_token_id: int = IMAGE_PLACEHOLDER,
        canvas: bool = False,
    ) -> torch.Tensor:
        """The text-to-image loss on ``pixels`` with a prompt that holds an image: its slots take the understanding
        features of ``cond_pixels`` (all tokens visible, as in §10), the rest is text (editing, RecA). With
        ``canvas`` the condition read at the target's grid is also the decoder's canvas in the rows that keep their
        condition (``config.edit_canvas``; with ``edit_canvas_llm`` refined by the LLM after the row's prompt:
        :func:`harmon.canvas.source_canvas`).

        Args:
            pixels: (B, 3, H, W) targets in [-1, 1]; cond_pixels: (B, 3, S, S) the condition images, any multiple of
                the token size (the features' resolution).
            input_ids: (B, T) prompts; a row holds exactly (S/p)² + 64 ``image_token_id`` slots, or none when its
                condition was dropped for classifier-free guidance (its features are then left out).
            attention_mask: (B, T). generator: as in :meth:`text_to_image_loss`.
        The gradient into the condition's features is scaled by ``config.grad_scale``, as for understanding (RecA's
        public code does the same). The features of every row are computed, dropped or not, so that every process
        of a sharded run calls the encoder alike whatever its drops.
        """
        slots = input_ids == image_token_id
        embeds = self.embed_text(input_ids.masked_fill(slots, 0))  # (B, T, H)
        grid = self.grid_for((cond_pixels.shape[-2], cond_pixels.shape[-1]))
        cond_tokens = self.encode_images(cond_pixels)
        x_cond, z_cond = self.extract_visual_feature(cond_tokens, None, grid)  # (B, 64+L_c, D), (B, L_c+64, H)
        z_cond = scale_grad(z_cond, self.config.grad_scale)
        rows = slots.any(dim=1)  # (B,) rows that keep their condition
        per_row = slots[rows].sum(dim=1)
        if not bool((per_row == z_cond.shape[1]).all()):
            raise ValueError(f"each conditioned row needs {z_cond.shape[1]} image slots, got {per_row.tolist()}")
        embeds = embeds.masked_scatter(slots.unsqueeze(-1), z_cond[rows].to(embeds.dtype))
        x_con = None
        if canvas:  # the source at the target's grid, refined by the LLM after this row's prompt with edit_canvas_llm
            same = cond_pixels.shape[-2:] == pixels.shape[-2:]
            if same and not (self.config.edit_canvas_llm or self.config.edit_canvas_tokens):
                x_con = x_cond  # the condition's own encoder features: what source_canvas would compute again
            else:
                refine = (embeds, attention_mask) if self.config.edit_canvas_llm else ()
                known = cond_tokens if same else None
                x_con = source_canvas(self, cond_pixels, pixels.shape[-2:], *refine, tokens=known)
            x_con = scale_grad(x_con, self.config.grad_scale)
        loss = self.text_to_image_loss(pixels, embeds, attention_mask, generator, x_con, rows if canvas else None)
        # every condition dropped: keep the encoder in the graph, as image_to_text_loss does without images
        return loss if bool(rows.any()) else loss + 0.0 * z_cond.mean()

    def image_to_text_loss(
        self,
        pixels: torch.Tensor | None,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor,
        image_token_id: int = IMAGE_PLACEHOLDER,
    ) -> torch.Tensor:
        """Cross-entropy on answer tokens with image slots filled by the shared encoder (spec §11.3).

        Args:
            pixels: (B, 3, H, W) in [-1, 1], or None for a text-only batch.
            input_ids: (B, N) with exactly L+64 ``image_token_id`` slots per row when pixels are given.
            labels: (B, N) with IGNORE_INDEX on unsupervised positions; attention_mask: (B, N).
        """
        slots = input_ids == image_token_id
        embeds = self.embed_text(input_ids.masked_fill(slots, 0))  # (B, N, H)
        if pixels is not None:
            grid = self.grid_for((pixels.shape[-2], pixels.shape[-1]))
            _, z_enc = self.extract_visual_feature(self.encode_images(pixels), None, grid)  # (B, L+64, H)
            z_enc = scale_grad(z_enc, self.config.grad_scale)
            per_row = slots.sum(dim=1)
            if not bool((per_row == z_enc.shape[1]).all()):
                raise ValueError(f"each row needs {z_enc.shape[1]} image slots, got {per_row.tolist()}")
            embeds = embeds.masked_scatter(slots.unsqueeze(-1), z_enc.to(embeds.dtype))
            dummy = None
        else:
            # Keep every visual parameter in the graph so distributed gradient reduction stays consistent.
            s = self.config.token_px * self.config.mar.grid_size
            zeros = torch.zeros(1, self.config.mar.seq_len, self.config.mar.token_dim, device=self.device)
            _, z_dummy = self.extract_visual_feature(zeros, None, self.grid_for(s))
            dummy = z_dummy.mean() * 0.0
        hidden = self.llm.model(inputs_embeds=embeds, attention_mask=attention_mask.bool()).last_hidden_state
        shifted = labels[:, 1:]
        keep = shifted != IGNORE_INDEX
        logits = self.llm.lm_head(hidden[:, :-1][keep])  # (n_supervised, vocab)
        loss = F.cross_entropy(logits.float(), shifted[keep])
        return loss if dummy is None else loss + dummy

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Losses ``{"loss_<source>": scalar}`` for a micro-batch ``{source name: sub-batch}``.

        Each sub-batch's "task" (:class:`~harmon.data.tasks.Task`) picks its loss: TEXT_TO_IMAGE takes "pixels"
        (B, 3, H, W), "input_ids" and "attention_mask" (B, T); IMAGE_TO_TEXT takes "pixels", "input_ids", "labels"
        and "attention_mask" (B, N); TEXT_ONLY the same without pixels; IMAGE_EDIT and RECONSTRUCTION take "pixels"
        (targets), "cond_pixels" (B, 3, S, S), "input_ids" and "attention_mask" (:meth:`image_conditioned_loss`).
        """
        losses = {}
        for name, sub in batch.items():
            task = sub.get("task")
            if task == Task.TEXT_TO_IMAGE:
                losses[f"loss_{name}"] = self.text_to_image_loss(
                    sub["pixels"], sub["input_ids"], sub["attention_mask"], generator=generator
                )
            elif task in (Task.IMAGE_EDIT, Task.RECONSTRUCTION):
                # a reconstruction never takes the canvas: RecA redraws from the understanding features alone
                canvas = task == Task.IMAGE_EDIT and self.config.edit_canvas
                losses[f"loss_{name}"] = self.image_conditioned_loss(
                    sub["pixels"], sub["cond_pixels"], sub["input_ids"], sub["attention_mask"], generator, canvas=canvas
                )
            elif task in (Task.IMAGE_TO_TEXT, Task.TEXT_ONLY):
                pixels = sub.get("pixels")
                if (pixels is None) != (task == Task.TEXT_ONLY):
                    raise ValueError(
                        f"batch source {name!r}: a {task} batch {'has' if pixels is not None else 'lacks'} pixels"
                    )
                losses[f"loss_{name}"] = self.image_to_text_loss(
                    pixels, sub["input_ids"], sub["labels"], sub["attention_mask"]
                )
            else:
                trained = ", ".join(t.value for t in SUPPORTED_TASKS)
                raise ValueError(f"batch source {name!r} has task {task!r}; the model trains {trained}")
        return losses
