"""Typed configuration of a whole Harmon model and the named sizes (spec §2, §3)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from harmon.diffloss import DiffLossConfig
from harmon.mar import MARConfig, mar_base, mar_huge
from harmon.vae import VAEConfig
from harmon.validate import check_fields, check_number, read_json_object

MAX_EDIT_CHECKS = 32  # draws per edited image the layout route may read back

# The LLM entries that shape the network: a config without them cannot be built as the file meant.
LLM_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
)
SECTIONS = ("llm", "mar", "vae", "generation")  # a saved config.json has every one; none falls back to a default


def qwen25_0_5b_config() -> dict[str, Any]:
    """Qwen2.5-0.5B-Instruct architecture (its public config.json values that shape the weights)."""
    return dict(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        hidden_act="silu",
        attention_dropout=0.0,
        use_sliding_window=False,
        bos_token_id=151643,
        eos_token_id=151645,
    )


def qwen25_1_5b_config() -> dict[str, Any]:
    """Qwen2.5-1.5B-Instruct architecture."""
    return {
        **qwen25_0_5b_config(),
        **dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12),
    }


def small_qwen2_config(
    vocab_size: int, hidden_size: int, intermediate_size: int, num_hidden_layers: int
) -> dict[str, Any]:
    """A small Qwen2 architecture for a model trained from scratch with its own tokenizer (4 heads, 2 KV heads)."""
    return dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        hidden_act="silu",
        attention_dropout=0.0,
        use_sliding_window=False,
    )


def check_sampling_settings(
    num_iter: int, guidance_scale: float, cfg_schedule: str, temperature: float, x0_clip: float | None = None
) -> None:
    """The checks shared by a model's recorded defaults and the settings of one generation call. NaN and infinity
    fail every range check here: a NaN guidance scale or an infinite temperature would draw garbage silently."""
    check_number("num_iter", num_iter, low=1, integer=True)
    check_number("guidance_scale", guidance_scale, low=1.0)
    if cfg_schedule not in ("constant", "linear"):
        raise ValueError(f"cfg_schedule must be 'constant' or 'linear', got {cfg_schedule!r}")
    check_number("temperature", temperature, low=0.0)
    if x0_clip is not None:
        check_number("x0_clip", x0_clip, above=0)  # None: no clipping


def check_llm_section(llm: dict[str, Any]) -> None:
    """The ``llm`` section names every size that shapes the network, as a positive integer."""
    missing = [k for k in LLM_REQUIRED if k not in llm]
    if missing:
        raise ValueError(f"config.llm lacks {', '.join(missing)} (a Qwen2 config.json has them)")
    for k in (*LLM_REQUIRED, "max_position_embeddings"):
        v = llm.get(k, 1)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"config.llm.{k} must be a positive integer, got {v!r}")
    if llm["hidden_size"] % llm["num_attention_heads"] or llm["num_attention_heads"] % llm["num_key_value_heads"]:
        raise ValueError(
            "config.llm: hidden_size must divide into num_attention_heads, and those into num_key_value_heads"
        )


@dataclass(frozen=True)
class GenerationDefaults:
    """Sampling settings a model ships with; ``generate`` uses them unless told otherwise."""

    image_size: int = 512  # pixels, the official scripts' default; any multiple of the VAE stride works
    num_iter: int = 64  # masked-autoregressive steps
    guidance_scale: float = 3.0  # classifier-free guidance, paper default
    cfg_schedule: str = "constant"  # "constant" | "linear"
    temperature: float = 1.0  # scales the per-step diffusion noise
    num_sampling_steps: str = "100"  # respacing of the 1000-step diffusion for sampling
    x0_clip: float | None = None  # clamp of the predicted clean token while sampling (None = official: none)
    understanding_image_size: int = 512  # pixels fed to the encoder for describe() (1024 + 64 image tokens)
    max_new_tokens: int = 256
    # describe()'s repetition penalty: official weights take it from the Qwen folder's generation_config.json,
    # which the original's from_pretrained merges into its greedy generate (1.0 = none, what files without it ran)
    repetition_penalty: float = 1.0
    # A model trained to write a prompt's layout before drawing it (the shapes world's plans) records the request
    # that asks for one, e.g. "Plan the layout: "; ``generate(..., plan=True)`` sends it + the prompt first and
    # draws from the answer. None: the model does not plan (released weights).
    plan_request: str | None = None
    # The places its plans name, in the order its drawer reads a layout best (the shapes world: the quadrants in
    # reading order). A plan whose clauses ("a red circle in the top left", joined by commas and a last "and") each
    # end in one distinct place is drawn with its clauses in this order; None: drawn as written.
    plan_places: tuple[str, ...] | None = None
    # A model trained to edit through its layout (harmon.layout_edit) records the question that reads an image's
    # layout and the request that rewrites one (with "{layout}" and "{instruction}" fields), and the SDEdit
    # strength of a redrawn cell seeded with a source token; its places are plan_places, one per token in raster
    # order. None: edits run the direct route only. ``edit_checks``: draws of the changed places per edited image,
    # each read back by the model; the first that reads as the edited layout is kept, else the one that agrees with
    # it at the most places (1: one draw, unread).
    layout_request: str | None = None
    edit_layout_request: str | None = None
    edit_strength: float = 0.8
    edit_checks: int = 1

    def __post_init__(self) -> None:
        check_fields(self, "generation")
        self._check_layout_route()
        if self.plan_request is not None and not self.plan_request.strip():
            raise ValueError("generation.plan_request must be a non-empty request or None, got an empty string")
        if self.plan_places is not None and (self.plan_request is None or not self.plan_places):
            raise ValueError("generation.plan_places needs a plan_request and at least one place")
        if self.plan_places is not None and (
            len(set(self.plan_places)) < len(self.plan_places) or not all(p.strip() for p in self.plan_places)
        ):
            raise ValueError(f"generation.plan_places must be distinct, non-empty places, got {self.plan_places}")
        check_sampling_settings(self.num_iter, self.guidance_scale, self.cfg_schedule, self.temperature, self.x0_clip)
        for name in ("image_size", "understanding_image_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"generation.{name} must be >= 1, got {getattr(self, name)}")
        check_number("generation.repetition_penalty", self.repetition_penalty, above=0)

    def _check_layout_route(self) -> None:
        if (self.layout_request is None) != (self.edit_layout_request is None):
            raise ValueError("generation.layout_request and edit_layout_request are set together or not at all")
        if self.edit_layout_request is not None:
            if not self.layout_request.strip() or not self.plan_places:
                raise ValueError("generation.layout_request must be non-empty, and the layout route needs plan_places")
            if "{layout}" not in self.edit_layout_request or "{instruction}" not in self.edit_layout_request:
                raise ValueError(
                    "generation.edit_layout_request needs the fields {layout} and {instruction}, got "
                    f"{self.edit_layout_request!r}"
                )
        if not 0.0 < self.edit_strength <= 1.0:
            raise ValueError(f"generation.edit_strength must be in (0, 1], got {self.edit_strength}")
        check_number("generation.edit_checks", self.edit_checks, low=1, high=MAX_EDIT_CHECKS, integer=True)


@dataclass(frozen=True)
class HarmonConfig:
    """Everything needed to build a Harmon model: LLM (a Qwen2 config dict), MAR, VAE, projections."""

    llm: dict[str, Any] = field(default_factory=qwen25_0_5b_config)  # passed to transformers.Qwen2Config
    mar: MARConfig = field(default_factory=mar_base)
    vae: VAEConfig = field(default_factory=VAEConfig)
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)
    grad_scale: float = 0.1  # gradient multiplier into visual features for the image-to-text loss (spec §11.3)
    image_token: str = "<image>"  # placeholder added to the tokenizer for understanding
    # Editing draws on its source: the MAR decoder's canvas at unknown positions holds the source image's encoder
    # features (spec §4.5's x_con) instead of the mask token, in training and in ``edit``. Off: the official path.
    edit_canvas: bool = False
    # With edit_canvas: the canvas is the source as the decoder reads a drawn image, x_enc + proj_out(LLM), the LLM
    # run after the row's prompt (instruction included), not the encoder's features alone (harmon.canvas).
    edit_canvas_llm: bool = False
    # With edit_canvas: the canvas is the source's tokens as the MAR encoder embeds them before its blocks (each
    # cell's own latent token and place), not the blocks' output, in which every cell has read the others: the skip
    # to the diffusion conditions then hands the head the very token to keep (InstructPix2Pix gives its denoiser the
    # source's latents for the same reason).
    edit_canvas_tokens: bool = False

    def __post_init__(self) -> None:
        for name, cls in (("mar", MARConfig), ("vae", VAEConfig), ("generation", GenerationDefaults)):
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, cls.from_dict(value) if hasattr(cls, "from_dict") else cls(**value))
        check_fields(self, "config")
        check_llm_section(self.llm)
        if self.edit_canvas_llm and not self.edit_canvas:
            raise ValueError("config.edit_canvas_llm refines the edit canvas: it needs edit_canvas true")
        if self.edit_canvas_tokens and (self.edit_canvas_llm or not self.edit_canvas):
            raise ValueError(
                "config.edit_canvas_tokens is a reading of the edit canvas: it needs edit_canvas true and "
                "edit_canvas_llm false"
            )
        if not self.image_token.strip():
            raise ValueError("config.image_token must be a non-empty token such as '<image>'")
        p = self.mar.patch_size
        if self.vae.embed_dim * p * p != self.mar.token_dim:
            raise ValueError(
                f"mar.token_dim ({self.mar.token_dim}) must equal vae.embed_dim ({self.vae.embed_dim}) x "
                f"mar.patch_size**2 ({p * p})"
            )
        self._check_image_sizes()

    def _check_image_sizes(self) -> None:
        """The recorded image sizes are whole tokens."""
        for name in ("image_size", "understanding_image_size"):
            size = getattr(self.generation, name)
            if size % self.token_px:
                raise ValueError(
                    f"generation.{name} {size} is not a multiple of the token size {self.token_px} px "
                    "(VAE stride x MAR patch size)"
                )

    def check_context(self) -> None:
        """The recorded image sizes, with their buffers, fit the LLM's context: a saved model whose defaults
        could never run is refused when read (a call with its own sizes is checked by the pipeline)."""
        context = self.llm.get("max_position_embeddings")
        for name in ("image_size", "understanding_image_size"):
            size = getattr(self.generation, name)
            tokens = self.image_positions(size)
            if context is not None and tokens >= context:
                raise ValueError(
                    f"generation.{name} {size} takes {tokens} image tokens, beyond the LLM's context of {context} "
                    "(llm.max_position_embeddings)"
                )

    def image_positions(self, size: int) -> int:
        """LLM positions a ``size`` x ``size`` image takes: one per token, plus the MAR buffers."""
        return (size // self.token_px) ** 2 + self.mar.buffer_size

    @property
    def token_px(self) -> int:
        """Side in pixels of the image patch one MAR token covers: VAE stride x MAR patch size."""
        return self.vae.stride * self.mar.patch_size

    @property
    def llm_hidden_size(self) -> int:
        return int(self.llm["hidden_size"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "llm": dict(self.llm),
            "mar": self.mar.to_dict(),
            "vae": self.vae.to_dict(),
            "generation": asdict(self.generation),
            "grad_scale": self.grad_scale,
            "image_token": self.image_token,
            "edit_canvas": self.edit_canvas,
            "edit_canvas_llm": self.edit_canvas_llm,
            "edit_canvas_tokens": self.edit_canvas_tokens,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HarmonConfig:
        """The inverse of :meth:`to_dict`. Every section must be present: a missing one would silently build
        another model (the 0.5B architecture, 512 px sampling) than the file describes."""
        if not isinstance(d, dict):
            raise TypeError(f"a harmon config is a dict (a JSON object), got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown HarmonConfig fields: {sorted(unknown)}")
        missing = [s for s in SECTIONS if s not in d]
        if missing:
            names = ", ".join(repr(m) for m in missing)
            raise ValueError(f"config has no {names} section (a saved model's config.json has {', '.join(SECTIONS)})")
        d = dict(d)
        if isinstance(d["generation"], dict):
            unknown = set(d["generation"]) - {f.name for f in fields(GenerationDefaults)}
            if unknown:
                raise ValueError(f"unknown generation fields: {sorted(unknown)}")
            d["generation"] = GenerationDefaults(**d["generation"])
        config = cls(**d)
        config.check_context()
        return config

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> HarmonConfig:
        try:
            return cls.from_dict(read_json_object(path, "harmon config"))
        except ValueError as err:
            raise ValueError(f"{path}: {err}" if str(path) not in str(err) else str(err)) from None

    def replace(self, **changes: Any) -> HarmonConfig:
        return replace(self, **changes)


def harmon_0_5b() -> HarmonConfig:
    """Harmon-0.5B: Qwen2.5-0.5B + MAR-Base (spec §2)."""
    return HarmonConfig(llm=qwen25_0_5b_config(), mar=mar_base())


def harmon_1_5b() -> HarmonConfig:
    """Harmon-1.5B: Qwen2.5-1.5B + MAR-Huge (spec §2)."""
    return HarmonConfig(llm=qwen25_1_5b_config(), mar=mar_huge())


def harmon_tiny(vocab_size: int = 512) -> HarmonConfig:
    """A few-MB Harmon for tests: same code paths, tiny widths, 64 px images (4x4 tokens)."""
    llm = small_qwen2_config(vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    mar = MARConfig(
        encoder_dim=64,
        encoder_depth=2,
        encoder_heads=4,
        decoder_dim=64,
        decoder_depth=2,
        decoder_heads=4,
        buffer_size=8,
        grid_size=4,
        class_num=0,
        diffloss=DiffLossConfig(z_channels=64, width=64, depth=2),
    )
    vae = VAEConfig(
        ch=16, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(4,), resolution=64, norm_groups=8
    )
    gen = GenerationDefaults(image_size=64, num_iter=8, understanding_image_size=64, max_new_tokens=32)
    return HarmonConfig(llm=llm, mar=mar, vae=vae, generation=gen)


CONFIGS: dict[str, Callable[..., HarmonConfig]] = {"0.5b": harmon_0_5b, "1.5b": harmon_1_5b, "tiny": harmon_tiny}
# Sizes whose LLM vocabulary is sized to a tokenizer trained with the model (``factory(vocab_size=...)``), not to
# a released LLM's fixed vocabulary.
TOKENIZER_SIZED: set[str] = {"tiny"}


def register_size(name: str, factory: Callable[..., HarmonConfig], tokenizer_sized: bool = False) -> None:
    """Add a named size to :data:`CONFIGS` (an application such as :mod:`harmon.world` registers its own).

    ``tokenizer_sized``: the trainer calls ``factory(vocab_size=...)`` with the trained tokenizer's size rounded up.
    """
    CONFIGS[name] = factory
    if tokenizer_sized:
        TOKENIZER_SIZED.add(name)
    else:
        TOKENIZER_SIZED.discard(name)
