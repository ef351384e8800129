"""Typed training configuration. Recipes (harmon.train.recipes) are functions that return a TrainConfig."""

from __future__ import annotations

import ast
import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harmon.config import CONFIGS, HarmonConfig
from harmon.data.tasks import Task, parse_task
from harmon.train.formats import check_format
from harmon.validate import check_fields, check_number

_TASK_VALUES = {t.value for t in Task}


def deep_merge(base: dict, update: dict) -> dict:
    """``base`` with ``update`` applied key by key, nested dicts merged (neither input is modified; leaves of
    ``update`` are shared, not copied)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass
class ModelInit:
    """Where the model to train comes from (exactly one of preset / pretrained / official)."""

    preset: str | None = "tiny"  # a named size of harmon.config.CONFIGS, randomly initialised
    pretrained: str | None = None  # a folder in our format (save_pretrained / a previous stage's export)
    official_checkpoint: str | None = None  # harmon_*.pth (with official_vae and llm_folder)
    official_vae: str | None = None  # kl16.ckpt
    llm_folder: str | None = None  # Qwen2.5 folder: tokenizer (+ config for official); weights for `llm_weights`
    llm_weights: bool = False  # with a preset: load the LLM weights from llm_folder (e.g. Qwen2.5-0.5B-Instruct)
    vae_weights: str | None = None  # with a preset: a VAE state dict to load (kl16.ckpt or a trained tiny VAE)
    tokenizer: str | None = None  # tokenizer folder for a preset (default: llm_folder)
    overrides: dict[str, Any] = field(default_factory=dict)  # HarmonConfig fields to replace (e.g. generation)
    # Parameter-name prefixes of a pretrained / official model that start fresh (seeded init) instead of loading,
    # so `overrides` may change their shapes: e.g. ["mar.diffloss."] with a wider mar.diffloss.width.
    reinit: list[str] = field(default_factory=list)
    # Parameter-name prefixes of a pretrained / official model whose loaded values are multiplied by a factor before
    # training, a study of scale: e.g. {"mar.decoder_pos_embed_learned": 20} (docs/RESULTS.md, decoder broadcasts).
    rescale: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        chosen = [n for n in ("pretrained", "official_checkpoint") if getattr(self, n)]
        if len(chosen) > 1:
            raise ValueError(f"model init: choose one of pretrained / official_checkpoint, got {chosen}")
        if not chosen and not self.preset:
            raise ValueError("model init: set a preset, a pretrained folder or an official checkpoint")
        if not chosen and self.preset not in CONFIGS:
            raise ValueError(f"model.preset {self.preset!r} is not a known size; known: {', '.join(sorted(CONFIGS))}")
        if self.official_checkpoint and not (self.official_vae and self.llm_folder):
            raise ValueError("model init: official_checkpoint needs official_vae and llm_folder")
        if self.llm_weights and not self.llm_folder:
            raise ValueError("model init: llm_weights=True needs llm_folder")
        for prefix, factor in self.rescale.items():
            check_number(f"model.rescale[{prefix!r}]", factor)
        if (self.reinit or self.rescale) and not chosen:
            raise ValueError(
                "model init: reinit and rescale apply to a pretrained folder or an official checkpoint; a "
                "preset is initialised fresh already"
            )


CROPS = ("random", "center", "stretch")
INSTRUCTION_SETS = ("detailed", "brief")


@dataclass
class SourceConfig:
    """One training data source: where its records come from, what it teaches and how samples are made.

    ``name`` is a free label: the batch key, the loss metric ``loss_<name>`` and the seed of the source's sampling.
    ``task`` picks the loss. The generic fields below apply to every format; options that only one format
    understands go in ``format_options``, which the format's options dataclass validates (see
    ``harmon.train.formats.register_format``).
    """

    name: str
    format: str  # a registered format: official | jsonl | llava | webdataset (the shapes world adds shapes)
    path: str = ""  # data_info.json / manifest / LLaVA json / shard glob; unused for procedural formats
    task: Task | None = None  # text2image | image2text | text_only | image_edit | reconstruction; required
    image_folder: str | None = None
    batch_size: int = 1  # samples of this source in every micro-batch (the fixed mixture ratio)
    loss_weight: float = 1.0
    # image2text only: read the format's caption records (image + caption) and serve each as a captioning
    # conversation, an instruction from `instructions` answered by the caption (e.g. web pairs for captioning).
    captions_from_pairs: bool = False
    instructions: str = "detailed"  # captioning instruction set: detailed | brief
    # text2image, image_edit, reconstruction: probability that the prompt becomes the unconditional one (no image)
    cfg_drop_prob: float = 0.1
    # image_edit, reconstruction: probability that the text is dropped and the image kept (the "image without
    # instruction" guidance branch; harmon.data.conditioned)
    text_drop_prob: float = 0.0
    # image_edit, reconstruction: side in pixels of the condition image whose understanding features fill the prompt;
    # None: the run's image_size
    cond_image_size: int | None = None
    crop: str = "random"  # text2image (and image-conditioned without pad_to_square): random | center, or stretch
    # Most text tokens of a sample; None: the run's max_text_length, at least 128 for image2text and text_only
    # (whose samples are never cut: a longer one is skipped as a bad sample).
    max_text_length: int | None = None
    # image2text, image_edit, reconstruction: pad to a gray square (official understanding input) instead of `crop`
    pad_to_square: bool = True
    format_options: dict[str, Any] = field(default_factory=dict)  # options of this format only, validated by it

    def __post_init__(self) -> None:
        if isinstance(self.task, str) and self.task in _TASK_VALUES:  # config.json and --set spell tasks as strings
            self.task = Task(self.task)

    @property
    def record_task(self) -> Task:
        """The task whose records the format reads: text2image when captions_from_pairs turns them into captions,
        and for reconstruction, which reads caption records for their image."""
        if self.captions_from_pairs or self.task is Task.RECONSTRUCTION:
            return Task.TEXT_TO_IMAGE
        return self.task

    def validate(self) -> None:
        where = f"source {self.name!r}"
        self.task = parse_task(self.task, where)
        check_fields(self, where)
        if self.batch_size < 1:
            raise ValueError(f"{where}: batch_size must be >= 1, got {self.batch_size}")
        if self.captions_from_pairs and self.task is not Task.IMAGE_TO_TEXT:
            raise ValueError(f"{where}: captions_from_pairs makes image2text conversations, not {self.task.value}")
        if self.instructions not in INSTRUCTION_SETS:
            raise ValueError(f"{where}: instructions must be one of {INSTRUCTION_SETS}, got {self.instructions!r}")
        if not 0.0 <= self.cfg_drop_prob <= 1.0:
            raise ValueError(f"{where}: cfg_drop_prob must lie in [0, 1], got {self.cfg_drop_prob}")
        if not (self.text_drop_prob >= 0.0 and self.cfg_drop_prob + self.text_drop_prob <= 1.0):
            raise ValueError(f"{where}: text_drop_prob must be >= 0 with cfg_drop_prob + text_drop_prob <= 1")
        if self.cond_image_size is not None and (self.cond_image_size < 16 or self.cond_image_size % 16):
            raise ValueError(f"{where}: cond_image_size must be a positive multiple of 16, got {self.cond_image_size}")
        if not self.task.image_conditioned and (self.text_drop_prob or self.cond_image_size is not None):
            raise ValueError(f"{where}: text_drop_prob and cond_image_size apply to image_edit and reconstruction")
        if self.crop not in CROPS:
            raise ValueError(f"{where}: crop must be one of {CROPS}, got {self.crop!r}")
        if self.max_text_length is not None and self.max_text_length < 1:
            raise ValueError(f"{where}: max_text_length must be >= 1 or None, got {self.max_text_length}")
        check_number(f"{where}: loss_weight", self.loss_weight, low=0)  # a negative weight would ascend its loss

        check_format(self)


@dataclass
class OptimConfig:
    """AdamW with warm-up + cosine decay and clipping, as the official example (spec §11.5)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.02  # not applied to 1-D tensors, biases and the diffusion head
    warmup_ratio: float = 0.01  # linear warm-up over this fraction of max_steps
    warmup_start: float = 1e-5  # warm-up starts at lr * warmup_start
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm (0 = off)
    ema_decay: float = 0.0  # 0 = no EMA; e.g. 0.999 keeps an EMA of the trainable weights (exported if set)
    # Learning-rate multipliers by parameter-name prefix, e.g. {"llm.": 0.1}: the longest matching prefix wins,
    # unmatched parameters keep 1. Warm-up and cosine apply to every group alike.
    lr_scale: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        check_number("optim.lr", self.lr, above=0)
        check_number("optim.grad_clip", self.grad_clip, low=0)
        check_number("optim.weight_decay", self.weight_decay, low=0)
        if not (isinstance(self.betas, tuple) and len(self.betas) == 2):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas!r}")
        for i, beta in enumerate(self.betas):
            check_number(f"optim.betas[{i}]", beta, low=0)
            if not beta < 1:  # AdamW refuses it too, but only once the model is built
                raise ValueError(f"optim.betas[{i}] must lie in [0, 1), got {beta}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"optim.warmup_ratio must lie in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"optim.ema_decay must lie in [0, 1), got {self.ema_decay}")
        bad = {k: v for k, v in self.lr_scale.items() if not float(v) > 0}
        if bad:
            raise ValueError(f"optim.lr_scale multipliers must be > 0, got {bad}")


@dataclass
class TrainConfig:
    """A whole training run."""

    name: str = "run"
    output_dir: str = "runs/run"
    model: ModelInit = field(default_factory=ModelInit)
    data: list[SourceConfig] = field(default_factory=list)
    image_size: int = 256  # training resolution (pixels)
    max_text_length: int = 128  # text2image prompt tokens; image2text adds this to the image tokens
    train_modules: tuple[str, ...] = ("llm.", "mar.", "proj_in.", "proj_out.", "canvas_proj.")  # prefixes that train
    max_steps: int = 1000  # optimizer steps
    accum_steps: int = 1  # micro-batches per optimizer step (per process)
    optim: OptimConfig = field(default_factory=OptimConfig)
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    grad_checkpointing: bool = False
    parallel: str = "auto"  # auto (ddp when launched with several processes) | none | ddp | fsdp
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    save_every: int = 500  # checkpoint interval in steps (0 = only at the end)
    keep_checkpoints: int = 2  # most recent checkpoints kept on disk
    sample_every: int = 0  # PNG sample grid interval (0 = off)
    sample_prompts: tuple[str, ...] = ("a red circle", "a blue square to the left of a green triangle")
    sample_settings: dict[str, Any] = field(default_factory=dict)  # generate() overrides for the sample grids
    eval_every: int = 0  # quick-eval interval (0 = off)
    eval: str | None = None  # name of a quick eval in harmon.train.hooks.EVALS (e.g. "shapes")
    tensorboard: bool = False
    export: bool = True  # write the final model in the from_pretrained format to output_dir/final
    # Resume a checkpoint whose run had other settings (batch sizes, max_steps, ...). Off: such a resume is refused
    # with the differing fields named, since it would silently change the schedule and the data order.
    resume_override: bool = False

    def validate(self) -> None:
        if not self.data:
            raise ValueError("no data sources configured")
        if not isinstance(self.data, list) or not all(isinstance(s, SourceConfig) for s in self.data):
            raise ValueError(f"config.data must be a list of sources, got {self.data!r}")
        for s in self.data:
            s.validate()  # each names its source
        names = [s.name for s in self.data]
        if len(set(names)) != len(names):
            raise ValueError(f"data source names must be unique, got {names}")
        check_fields(self, "config")  # types first: a --set max_steps=ten is named, not a comparison error
        self.model.validate()
        self.optim.validate()
        if not str(self.output_dir).strip():  # empty would write checkpoints into the working directory
            raise ValueError("output_dir must name a folder, got an empty string")
        check_number("seed", self.seed, low=0, integer=True)
        if self.model.preset and not (self.model.pretrained or self.model.official_checkpoint):
            self.check_fits(CONFIGS[self.model.preset]())  # other models are checked once built
        if self.image_size < 16 or self.image_size % 16:
            raise ValueError(f"image_size must be a positive multiple of 16, got {self.image_size}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.parallel not in ("auto", "none", "ddp", "fsdp"):
            raise ValueError(f"parallel must be auto, none, ddp or fsdp, got {self.parallel!r}")
        for name in ("max_steps", "accum_steps", "max_text_length"):
            check_number(name, getattr(self, name), low=1, integer=True)
        for name in ("log_every", "keep_checkpoints"):  # a division by the one; no checkpoint to resume with the other
            check_number(name, getattr(self, name), low=1, integer=True)
        for name in ("num_workers", "save_every", "sample_every", "eval_every"):
            check_number(name, getattr(self, name), low=0, integer=True)

    def check_fits(self, model: HarmonConfig) -> None:
        """The training image size suits the model: whole tokens, and its tokens with their buffers within the LLM's
        context with room for text (samples longer than the context are skipped as bad samples)."""
        px = model.token_px
        if self.image_size % px:
            raise ValueError(f"image_size {self.image_size} is not a multiple of the model's token size {px} px")
        tokens = model.image_positions(self.image_size)
        context = model.llm.get("max_position_embeddings")
        if context is not None and tokens >= context:
            raise ValueError(
                f"image_size {self.image_size}: {tokens} image tokens leave no room for text in the model's context "
                f"of {context} (llm.max_position_embeddings)"
            )

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A config from its JSON form; unknown fields and sections of the wrong kind are refused by name."""
        d = dict(_known_fields(cls, d, "config"))
        d["model"] = ModelInit(**_known_fields(ModelInit, d.get("model", {}), "model"))
        optim = _known_fields(OptimConfig, d.get("optim", {}), "optim")
        betas = optim.get("betas", (0.9, 0.95))
        d["optim"] = OptimConfig(**{**optim, "betas": tuple(betas) if isinstance(betas, (list, tuple)) else betas})
        check_fields(d["optim"], "config.optim")
        check_fields(d["model"], "config.model")
        if not isinstance(d.get("data", []), list):
            raise ValueError(f"config.data must be a list of sources, got {d['data']!r}")
        d["data"] = [_source_from_dict(_known_fields(SourceConfig, s, "data source")) for s in d.get("data", [])]
        for key in ("train_modules", "sample_prompts"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def _known_fields(cls: type, d: Any, where: str) -> dict[str, Any]:
    """``d`` as a dict of ``cls``'s fields, or ValueError naming the unknown ones (``options`` gets its own hint
    from :func:`_source_from_dict`)."""
    if not isinstance(d, dict):
        raise TypeError(f"{where} must be a dict (a JSON object), got {type(d).__name__}: {d!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names - ({"options"} if cls is SourceConfig else set()))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {', '.join(sorted(names))}")
    return d


def _source_from_dict(d: dict[str, Any]) -> SourceConfig:
    names = {f.name for f in dataclasses.fields(SourceConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        hint = " (`options` is now task, the typed fields and format_options)" if "options" in unknown else ""
        raise ValueError(
            f"data source {d.get('name')!r}: unknown field(s) {unknown}{hint}; known: {', '.join(sorted(names))}"
        )
    return SourceConfig(**d)


# Fields a resumed run may change freely: they decide what is logged, kept or written, not what is computed.
RUN_NEUTRAL_FIELDS = frozenset(
    {
        "output_dir",
        "num_workers",
        "log_every",
        "save_every",
        "keep_checkpoints",
        "sample_every",
        "sample_prompts",
        "sample_settings",
        "eval_every",
        "eval",
        "tensorboard",
        "export",
        "resume_override",
    }
)


def resume_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields where ``current`` (a TrainConfig's ``to_dict``) differs from ``saved``, the
    run-length-neutral top-level fields aside."""
    out = []
    for key in sorted(set(saved) | set(current)):
        if not prefix and key in RUN_NEUTRAL_FIELDS:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):  # e.g. the data sources, by index
            a, b = dict(enumerate(a)), dict(enumerate(b))
        if isinstance(a, dict) and isinstance(b, dict):
            out += resume_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def parse_value(text: str) -> Any:
    """'3' -> 3, '1e-4' -> 1e-4, 'true' -> True, 'none' -> None, '[1,2]' -> [1, 2], otherwise the string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: TrainConfig, assignments: list[str]) -> TrainConfig:
    """Apply ``key=value`` strings with dotted keys (``optim.lr=3e-4``, ``data.0.path=/x``, ``model.preset=0.5b``).

    Unknown keys raise a ValueError naming them.
    """
    for item in assignments:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        value = parse_value(raw)
        parts = key.strip().split(".")
        obj: Any = config
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(obj, list):
                try:
                    idx = int(part)
                    if idx < 0:  # data.-1 would silently name the last source
                        raise IndexError
                    target = obj[idx]
                except (ValueError, IndexError):
                    raise ValueError(f"--set {key}: {part!r} is not a valid index (have {len(obj)})") from None
                if last:
                    obj[idx] = value
                else:
                    obj = target
            elif isinstance(obj, dict):
                if last:
                    obj[part] = value
                else:
                    obj = obj.setdefault(part, {})
            elif dataclasses.is_dataclass(obj):
                names = {f.name for f in dataclasses.fields(obj)}
                if part not in names:
                    raise ValueError(f"--set {key}: unknown field {part!r} (known: {', '.join(sorted(names))})")
                if last:
                    current = getattr(obj, part)
                    if isinstance(current, tuple) and isinstance(value, list):
                        value = tuple(value)
                    elif isinstance(current, tuple) and isinstance(value, str):
                        value = tuple(v for v in value.split(",") if v)
                    elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
                        try:
                            value = float(value)
                        except OverflowError:
                            raise ValueError(f"--set {key}: {value} is beyond a float's range") from None
                    setattr(obj, part, value)
                else:
                    obj = getattr(obj, part)
            else:
                raise ValueError(f"--set {key}: cannot descend into {type(obj).__name__}")
    return config
