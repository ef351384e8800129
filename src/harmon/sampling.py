"""The masked-autoregressive sampling loop of image generation (spec §9), its settings, schedules and presets.

Text decoding for understanding (§10) is :mod:`harmon.decoding`.

The model provides one-step predictions; these functions own the loops and schedules. Every random choice
(orders, diffusion noise, token sampling) is drawn from the one ``torch.Generator`` passed in.

The loops run the model's own straightforward methods unless given others: :func:`generate_tokens` takes the
diffusion-head sampler, the prompt-cache builder and the image encoder as arguments (:class:`Strategies`), so that
faster equivalents (:mod:`harmon.accel`) are applied from outside the model.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypedDict

import torch

from harmon.config import GenerationDefaults, check_sampling_settings
from harmon.diffloss import Guidance
from harmon.mar import checkerboard, mask_by_order, next_mask_len, structure_first_orders
from harmon.model import Harmon
from harmon.presets import FIXED_PRESET_SETTINGS, PRESETS, preset_settings
from harmon.tokencache import TokenCache
from harmon.validate import check_number

__all__ = [  # the presets live in harmon.presets; they are named here too, beside the settings they scale
    "FIXED_PRESET_SETTINGS",
    "PRESETS",
    "SamplingSettings",
    "generate_tokens",
    "preset_settings",
    "sample_tokens",
    "settings_from_defaults",
]


@dataclass(frozen=True)
class SamplingSettings:
    """Settings of one generation call."""

    num_iter: int = 64
    guidance_scale: float = 3.0
    cfg_schedule: str = "constant"
    temperature: float = 1.0
    num_sampling_steps: str | None = None  # respacing string for the diffusion head; None = model default
    x0_clip: float | None = None  # clamp the diffusion head's predicted clean token (None = official: no clamp)
    # Annealed diffusion steps: the first MAR step samples with num_sampling_steps, the last with this many, linear
    # in between (few tokens are known early, so early tokens get the most careful sampling). None = constant.
    diffusion_steps_final: int | None = None
    # Three-group guidance (editing): rows [image and text; image only; unconditional], ε = ε_∅ + s_I·(ε_I − ε_∅) +
    # s_T·(ε_IT − ε_I) with s_T = guidance_scale and s_I this (InstructPix2Pix eq. 3). None = the usual two groups.
    image_guidance_scale: float | None = None
    # Generation then reconstruction (GtR, arXiv 2510.17171): the first num_iter - detail_steps steps reveal a
    # checkerboard half of the grid (the structure), the last detail_steps steps the other half, each token of
    # which has its four neighbours known. None = the plain cosine schedule over a random order.
    detail_steps: int | None = None
    # Condition cache (LazyMAR, arXiv 2503.12450): the guidance branches run the network on every cond_refresh-th
    # step and the last only; on the steps between, each branch's decoder output is the conditional one minus the
    # residual (conditional - branch) of the last full step, which changes little from step to step. None = every
    # step.
    cond_refresh: int | None = None
    # Token cache (LazyMAR, arXiv 2503.12450; harmon.tokencache): every token through every layer on every
    # token_refresh-th step; on the steps between, only the token_ratio of tokens whose first-layer features moved
    # most (and those revealed since, and the cells the step draws) run the deeper layers, the others reuse their
    # cached features. None = off.
    token_refresh: int | None = None
    token_ratio: float | None = None  # None with token_refresh: TOKEN_RATIO

    def __post_init__(self) -> None:
        if self.diffusion_steps_final is not None:
            if self.diffusion_steps_final < 1:
                raise ValueError(f"diffusion_steps_final must be >= 1, got {self.diffusion_steps_final}")
            if not str(self.num_sampling_steps or "").isdigit():
                raise ValueError(
                    "annealed diffusion steps need num_sampling_steps as one number (e.g. '100'), "
                    f"got {self.num_sampling_steps!r}"
                )
        check_sampling_settings(self.num_iter, self.guidance_scale, self.cfg_schedule, self.temperature, self.x0_clip)
        if self.image_guidance_scale is not None:
            check_number("image_guidance_scale", self.image_guidance_scale, low=1.0)
        if self.detail_steps is not None:
            check_number("detail_steps", self.detail_steps, low=1, integer=True)
            if self.detail_steps >= self.num_iter:
                raise ValueError(f"detail_steps ({self.detail_steps}) must be below num_iter ({self.num_iter})")
        if self.cond_refresh is not None:
            check_number("cond_refresh", self.cond_refresh, low=1, integer=True)
        if self.token_refresh is not None:
            check_number("token_refresh", self.token_refresh, low=1, integer=True)
        if self.token_ratio is not None:
            if self.token_refresh is None:
                raise ValueError("token_ratio needs token_refresh (the token cache is off without it)")
            check_number("token_ratio", self.token_ratio, above=0.0, high=1.0)

    @property
    def scales(self) -> tuple[float, ...]:
        """The guidance scales, one per row group but the last: () without guidance, (s,) for [conditional;
        unconditional], (s_T, s_I) for the three groups of image guidance."""
        if self.image_guidance_scale is not None:
            return (self.guidance_scale, self.image_guidance_scale)
        return () if self.guidance_scale == 1.0 else (self.guidance_scale,)

    @property
    def groups(self) -> int:
        """Row groups a generation batch holds under these settings (1, 2 or 3)."""
        return len(self.scales) + 1

    @property
    def caches_condition(self) -> bool:
        """Whether some steps run the conditional rows only (:attr:`cond_refresh` above 1, with guidance)."""
        return (self.cond_refresh or 1) > 1 and self.groups > 1


TOKEN_RATIO = 0.25  # token cache: share of tokens recomputed on the steps between refreshes, when not given


def mask_schedule(seq_len: int, num_iter: int) -> list[int]:
    """Number of tokens revealed at each step, in integers, exactly as :func:`generate_tokens` does it.

    The last step reveals the rest. When fewer tokens than steps remain, the loop stops early once every token is
    known (the official code would run steps that predict nothing), so the list can be shorter than num_iter.
    """
    before = [seq_len] + [after for after, _ in step_plan(seq_len, num_iter)]
    return [a - b for a, b in itertools.pairwise(before)]


def step_plan(
    seq_len: int, num_iter: int, detail_steps: int | None = None, structure: int = 0
) -> list[tuple[int, int]]:
    """Each step that runs as (tokens still unknown after it, the count the guidance schedule reads).

    Plain: the cosine schedule over ``seq_len`` tokens (spec §9.2 step 4). The guidance count is the schedule's
    value, which on the last step stays at least 1 although that step reveals everything.
    With ``detail_steps`` (GtR): the cosine schedule over the ``structure`` tokens in num_iter - detail_steps steps,
    the others unknown, then over the remaining ``seq_len - structure`` in detail_steps steps.
    """
    if detail_steps is None or structure in (0, seq_len):
        return _cosine_plan(seq_len, num_iter)
    detail = seq_len - structure
    first = [(detail + after, detail + after) for after, _ in _cosine_plan(structure, num_iter - detail_steps)]
    return first + _cosine_plan(detail, detail_steps)


def _cosine_plan(seq_len: int, num_iter: int) -> list[tuple[int, int]]:
    plan, masked = [], seq_len
    for step in range(num_iter):
        n_next = next_mask_len(step, num_iter, seq_len, masked)
        last = step == num_iter - 1 or n_next >= masked
        plan.append((0 if last else n_next, n_next))
        if last:
            break
        masked = n_next
    return plan


def diffusion_steps(settings: SamplingSettings, step: int, total: int) -> str | None:
    """Respacing string of MAR step ``step`` (0-based) out of ``total`` steps that run."""
    if settings.diffusion_steps_final is None:
        return settings.num_sampling_steps
    start, end = int(settings.num_sampling_steps), settings.diffusion_steps_final  # type: ignore[arg-type]
    frac = step / (total - 1) if total > 1 else 0.0
    return str(max(1, round(start + (end - start) * frac)))


def settings_from_defaults(
    d: GenerationDefaults,
    *,
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
) -> tuple[SamplingSettings, int]:
    """The settings and image size of a generation call: the arguments given, the model's defaults ``d`` for
    those left None, both scaled by ``preset`` when one is named (explicit settings still win)."""
    # the settings without a model default: None unless given or named by the preset
    no_default = dict(
        diffusion_steps_final=diffusion_steps_final,
        detail_steps=detail_steps,
        cond_refresh=cond_refresh,
        token_refresh=token_refresh,
        token_ratio=token_ratio,
    )
    if preset is not None:
        picked = preset_settings(
            preset,
            d.num_iter if num_iter is None else num_iter,
            d.num_sampling_steps if num_sampling_steps is None else str(num_sampling_steps),
            scale_iter=num_iter is None,
            scale_steps=num_sampling_steps is None,
        )
        d = replace(d, **{k: v for k, v in picked.items() if k in ("num_iter", "num_sampling_steps")})
        no_default = {k: picked.get(k) if v is None else v for k, v in no_default.items()}
    settings = SamplingSettings(
        num_iter=d.num_iter if num_iter is None else num_iter,
        guidance_scale=d.guidance_scale if guidance_scale is None else guidance_scale,
        cfg_schedule=d.cfg_schedule if cfg_schedule is None else cfg_schedule,
        temperature=d.temperature if temperature is None else temperature,
        num_sampling_steps=str(num_sampling_steps if num_sampling_steps is not None else d.num_sampling_steps),
        x0_clip=d.x0_clip if x0_clip is None else x0_clip,
        **no_default,  # type: ignore[arg-type]
    )
    return settings, d.image_size if image_size is None else image_size


# the settings keywords of generate and edit, as settings_from_defaults names them
SETTING_KEYWORDS = tuple(inspect.signature(settings_from_defaults).parameters)[1:]


def step_guidance(settings: SamplingSettings, seq_len: int, n_next: int, scale: float | None = None) -> float:
    """Guidance scale of one step: constant, or linear in the fraction of revealed tokens (spec §9.2 step 8).

    ``scale``: the scale to schedule (default ``settings.guidance_scale``)."""
    scale = settings.guidance_scale if scale is None else scale
    if settings.cfg_schedule == "linear":
        return 1.0 + (scale - 1.0) * (seq_len - n_next) / seq_len
    return scale


def step_scales(settings: SamplingSettings, seq_len: int, n_next: int) -> tuple[float, ...]:
    """Every guidance scale of one step (:attr:`SamplingSettings.scales`), each on the settings' schedule."""
    return tuple(step_guidance(settings, seq_len, n_next, s) for s in settings.scales)


class HeadSampler(Protocol):
    """A diffusion-head sampler with ``DiffLoss.sample``'s arguments: z (N, D) -> tokens (N or N/G, C) float32."""

    def __call__(
        self,
        z: torch.Tensor,
        temperature: float = 1.0,
        cfg: Guidance = 1.0,
        generator: torch.Generator | None = None,
        num_steps: str | None = None,
        x0_clip: float | None = None,
    ) -> torch.Tensor: ...


# (prompt: (B, T) ids or (B, T, H) embeddings, text_mask (B, T)) -> a transformers cache holding the prompt's K/V,
# as ``Harmon.prompt_cache``
PromptCacheBuilder = Callable[[torch.Tensor, torch.Tensor], Any]
# (tokens (B, L, C), mask (B, L), grid) -> (x_enc, z_enc), as ``Harmon.extract_visual_feature``
ImageEncoder = Callable[[torch.Tensor, torch.Tensor, tuple[int, int]], tuple[torch.Tensor, torch.Tensor]]
# (tokens (B, L, C), mask (B, L)[, conditional_only]) -> the decoder's input (B, 64+V, D_enc): MAR encoder and LLM
# after the prompt (see :func:`sample_tokens`)
StepEncoder = Callable[..., torch.Tensor]
# the decoder's canvas: (R, buffer + L, D_enc) features and the (R,) bool rows that take them (editing)
Canvas = tuple[torch.Tensor, torch.Tensor]
# (step, total) after each masked-autoregressive step, 1-based: progress reports and cancellation
StepCallback = Callable[[int, int], None]


class Strategies(TypedDict, total=False):
    """How :func:`generate_tokens` runs the model's pieces; a piece left out runs the model's own method."""

    sample_head: HeadSampler  # default: model.mar.diffloss.sample
    prompt_cache: PromptCacheBuilder  # default: model.prompt_cache
    encode_image: ImageEncoder  # default: model.extract_visual_feature


@torch.no_grad()
def generate_tokens(
    model: Harmon,
    prompt: torch.Tensor,
    attention_mask: torch.Tensor,
    grid: tuple[int, int],
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
    *,
    sample_head: HeadSampler | None = None,
    prompt_cache: PromptCacheBuilder | None = None,
    encode_image: ImageEncoder | None = None,
    callback: StepCallback | None = None,
    canvas: Canvas | None = None,
) -> torch.Tensor:
    """Sample latent tokens by masked autoregression (spec §9.2), the prompt's K/V computed once.

    Args:
        prompt: (R, T) right-padded prompt ids, or (R, T, H) their embeddings (image-conditioned prompts, whose
            image slots hold understanding features: :mod:`harmon.conditioning`). The rows form
            ``settings.groups`` equal groups: the conditional prompts first, then each guidance branch's (with
            plain guidance R/2 conditional rows, then R/2 unconditional ones).
        attention_mask: (R, T) True on the prompt's real positions.
        grid: (h, w) token grid, L = h*w.
        sample_head, prompt_cache, encode_image: the pieces of :class:`Strategies`; None runs the model's own.
        callback, canvas: see :func:`sample_tokens`.
    Returns:
        (R', L, C) tokens in the model dtype, R' = R / settings.groups.
    """
    build_cache = prompt_cache or model.prompt_cache
    cache = build_cache(prompt, attention_mask)
    encode_image = encode_image or model.extract_visual_feature
    n_img = prompt.shape[0] // settings.groups
    # the conditional rows' own cache, for the steps of a condition cache that run those rows only
    cond_cache = build_cache(prompt[:n_img], attention_mask[:n_img]) if settings.caches_condition else None
    tc = None
    if settings.token_refresh is not None:
        tc = TokenCache(model, settings.token_refresh, settings.token_ratio or TOKEN_RATIO, grid[0] * grid[1])

    def encode(tokens: torch.Tensor, mask: torch.Tensor, conditional_only: bool = False) -> torch.Tensor:
        rows_mask = attention_mask[:n_img] if conditional_only else attention_mask
        kv = cond_cache if conditional_only else cache
        if tc is not None:  # every row group holds the same image: the encoder runs on the first
            tc.begin_step()
            x_enc, z_enc = model.extract_visual_feature(tokens[:n_img], mask[:n_img], grid, tc.encoder(mask[:n_img]))
            x_enc, z_enc = (torch.cat([t] * (tokens.shape[0] // n_img)) for t in (x_enc, z_enc))
            return model.refine_with_llm(x_enc, z_enc, rows_mask, cache=kv, run_llm=tc.llm(mask))
        if conditional_only:
            x_enc, z_enc = model.extract_visual_feature(tokens, mask, grid)
        else:
            x_enc, z_enc = encode_image(tokens, mask, grid)  # (R, 64+V, D_enc), (R, V+64, H)
        return model.refine_with_llm(x_enc, z_enc, rows_mask, cache=kv)  # (R, 64+V, D_enc)

    head = sample_head or model.mar.diffloss.sample
    decode = None
    if tc is not None:

        def decode(x_enc, mask, grid, *canvas, predict=None):
            return model.decode(x_enc, mask, grid, *canvas, run_blocks=tc.decoder(predict))

    return sample_tokens(model, encode, prompt.shape[0], grid, settings, generator, head, callback, canvas, decode)


@torch.no_grad()
def sample_tokens(
    model: Harmon,
    encode: StepEncoder,
    rows: int,
    grid: tuple[int, int],
    settings: SamplingSettings,
    generator: torch.Generator | None,
    sample_head: HeadSampler,
    callback: StepCallback | None = None,
    canvas: Canvas | None = None,
    decode: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """The masked-autoregressive loop (spec §9.2) given the step's encoder (MAR encoder and LLM after the prompt).

    Args:
        encode: (R, L, C) tokens and (R, L) mask -> the decoder's input (R, 64+V, D_enc); under a condition cache
            also ``encode(tokens, mask, True)`` on the conditional rows only, which it runs under their own prompts.
        rows: R, the prompt rows: ``settings.groups`` groups, the conditional one first. Every group holds the same
            image tokens; only the first group's are drawn, under the guidance of all.
        sample_head: draws the tokens of the positions revealed at a step (``DiffLoss.sample``'s arguments).
        callback: ``callback(step, total)`` after each step (1-based, of the steps that run); it draws nothing, and an
            exception it raises stops the loop (how a server cancels the work of a request whose client left).
        canvas: the decoder's canvas (:data:`Canvas`, editing); rows it leaves out keep the mask token.
        decode: ``model.decode``'s arguments and ``predict``, the (R, L) bool cells the step draws (default: plain).
    Returns:
        (R', L, C) tokens in the model dtype, R' = R / settings.groups.
    """
    decode = decode or (lambda x_enc, mask, grid, *canvas, predict=None: model.decode(x_enc, mask, grid, *canvas))
    groups = settings.groups
    if rows % groups:
        raise ValueError(f"with guidance the batch must hold {groups} equal groups of rows, got {rows} rows")
    n_img, seq_len = rows // groups, grid[0] * grid[1]
    orders, plan = _orders_and_plan(model, n_img, grid, settings, generator)  # (n, L), steps
    orders = torch.cat([orders] * groups)  # (R, L): every guidance group follows the conditional one
    tokens = torch.zeros(rows, seq_len, model.config.mar.token_dim, device=model.device, dtype=model.dtype)  # (R, L, C)
    mask = torch.ones(rows, seq_len, dtype=torch.bool, device=model.device)  # (R, L), True = unknown
    refresh = settings.cond_refresh if settings.caches_condition else 1
    residual = None  # (R - n, L, Dd): conditional decoder output minus each branch's, at the last full step
    for step, (n_after, n_sched) in enumerate(plan):
        mask_next = torch.zeros_like(mask) if (last := n_after == 0) else mask_by_order(n_after, orders)
        to_predict = mask & ~mask_next  # (R, L)
        if step % refresh == 0 or last:  # the last step, which draws the most tokens, runs every row
            z = decode(encode(tokens, mask), mask, grid, *(canvas or ()), predict=to_predict)  # (R, L, Dd)
            if refresh > 1:
                residual = torch.cat([z[:n_img]] * (groups - 1)) - z[n_img:]
        else:  # the conditional rows only, the others from the cached residual
            con = (canvas[0][:n_img], canvas[1][:n_img]) if canvas else ()
            x = encode(tokens[:n_img], mask[:n_img], True)
            z_cond = decode(x, mask[:n_img], grid, *con, predict=to_predict[:n_img])
            z = torch.cat([z_cond, torch.cat([z_cond] * (groups - 1)) - residual])
        scales = step_scales(settings, seq_len, n_sched)
        new = _draw_tokens(sample_head, z[to_predict], settings, scales, step, len(plan), generator)
        first = tokens[:n_img]  # (n, L, C), a view: the conditional rows
        first[to_predict[:n_img]] = new.to(tokens.dtype)
        for g in range(1, groups):
            tokens[g * n_img : (g + 1) * n_img] = first  # every group holds the same image
        mask = mask_next
        if callback is not None:
            callback(step + 1, len(plan))
    return tokens[:n_img]


def _orders_and_plan(
    model: Harmon, n_img: int, grid: tuple[int, int], settings: SamplingSettings, generator: torch.Generator | None
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The (n, L) orders of the images and the step plan (:func:`step_plan`): random orders and the cosine
    schedule, or with ``settings.detail_steps`` the structure half first (GtR)."""
    seq_len = grid[0] * grid[1]
    if settings.detail_steps is None:
        return model.sample_orders(n_img, seq_len, generator), step_plan(seq_len, settings.num_iter)
    orders = structure_first_orders(n_img, grid, generator, model.device)
    structure = int(checkerboard(grid).sum())
    return orders, step_plan(seq_len, settings.num_iter, settings.detail_steps, structure)


def _draw_tokens(
    sample_head: HeadSampler,
    z_sel: torch.Tensor,
    settings: SamplingSettings,
    scales: tuple[float, ...],
    step: int,
    total: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The tokens of one step's revealed positions from their decoder outputs z_sel (R·k, Dd), the conditional
    group first, under this step's guidance ``scales``. When every scale is 1 only the conditional rows are
    sampled. Returns (n·k, C) float32."""
    groups = len(scales) + 1
    cfg: Guidance = 1.0
    if all(s == 1.0 for s in scales):
        z_sel = z_sel[: z_sel.shape[0] // groups]  # (n·k, Dd)
    else:
        cfg = scales[0] if groups == 2 else scales
    return sample_head(
        z_sel,
        temperature=settings.temperature,
        cfg=cfg,
        generator=generator,
        num_steps=diffusion_steps(settings, step, total),
        x0_clip=settings.x0_clip,
    )
