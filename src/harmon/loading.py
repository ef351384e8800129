"""Every way weights get into (and out of) a Harmon model, with strict checks that name each key that does not fit.

* Official releases: ``harmon_0.5b.pth`` / ``harmon_1.5b.pth`` (flat state dict; the MAR sizes are read off its
  shapes by :func:`infer_mar_config`), the ``kl16.ckpt`` VAE, and a Qwen2.5 folder for the LLM config, tokenizer
  and generation_config.json (its repetition penalty): :func:`load_official`.
* Our format: ``config.json`` + ``model.safetensors`` (tied LM head stored once) + tokenizer files:
  :func:`load_pretrained` / :func:`save_pretrained`.
* Pieces for training: a Qwen2.5 folder's LLM weights (:func:`load_llm_weights`), a VAE file
  (:func:`load_vae_weights`), a state dict under a (changed) config (:func:`model_from_state_dict`).

Pickles are read with ``weights_only=True``; every load is strict by name and shape (:class:`CheckpointError`).
Whole models loaded from files (:func:`load_official`, :func:`load_pretrained`) come back in eval mode, as
Hugging Face's ``from_pretrained`` returns them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from harmon.atomic import write_text_atomic
from harmon.config import GenerationDefaults, HarmonConfig
from harmon.cpuinfo import choose_dtype
from harmon.diffloss import DiffLossConfig
from harmon.hf_generation import read_generation_config
from harmon.mar import MARConfig
from harmon.model import Harmon
from harmon.tokenizer import load_tokenizer
from harmon.vae import VAEConfig
from harmon.validate import read_json_object
from harmon.weightfiles import read_vae_weights, read_weights, save_safetensors

logger = logging.getLogger(__name__)

FORMAT_NAME = "harmon"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
VAE_CONFIG_NAME = "vae_config.json"  # beside a trained small VAE's weights: its shape and latent scale
TIED_KEYS = ("llm.lm_head.weight",)  # the LM head shares the token-embedding tensor (tie_word_embeddings)
# Attention heads are not visible in weight shapes; these are the MAR sizes (width -> heads) of the releases.
MAR_HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 16}
# Keys of a Hugging Face LLM config.json that describe the file, not the network.
LLM_BOOKKEEPING = (
    "architectures",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "_name_or_path",
    "model_type",
    "use_cache",
)


# ---------------------------------------------------------------------------------------------- device and dtype
def default_device() -> torch.device:
    """CUDA when present, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA (the releases' training precision), float32 elsewhere (CPU bf16 matmuls are slow)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def resolve_device(
    device: torch.device | str | None, dtype: torch.dtype | str | None
) -> tuple[torch.device, torch.dtype]:
    """Fill a None device or dtype with :func:`default_device` / :func:`default_dtype`, and dtype "auto" with
    :func:`harmon.cpuinfo.choose_dtype` (its reason logged); a device this torch cannot use is refused by name
    before anything loads."""
    try:
        device = torch.device(device) if device is not None else default_device()
    except RuntimeError as err:  # torch's message lists the device types it knows
        raise ValueError(f"device {device!r}: {err}") from None
    if device.type == "meta":
        raise ValueError("device meta holds shapes, not weights: nothing can run there; use cpu, cuda or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: no CUDA device is available to this torch ({torch.__version__})")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device}: Apple MPS is not available to this torch ({torch.__version__})")
    if isinstance(dtype, str) and dtype == "auto":
        dtype, reason = choose_dtype(device)
        logger.info("dtype auto on %s: %s", device, reason)
        return device, dtype
    return device, as_dtype(dtype) if dtype is not None else default_dtype(device)


# dtype names a caller may pass instead of a torch.dtype
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
DTYPES.update({"fp16": torch.float16, "float16": torch.float16})


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A floating torch dtype, from a dtype or its name ("bf16", "float32", ...); anything else is refused."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)}, auto (where loading) or a torch.dtype")
        return DTYPES[dtype]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.bfloat16, got {dtype!r}")
    return dtype


# ---------------------------------------------------------------------------------------------- weight files
class CheckpointError(ValueError):
    """A weight file does not match the model: lists missing, unexpected and misshaped keys by name."""

    def __init__(self, source: str, missing=(), unexpected=(), mismatched=()) -> None:
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        parts = [f"checkpoint {source} does not match the model:"]
        if self.missing:
            parts.append(f"  missing keys ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"  unexpected keys ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        if self.mismatched:
            shown = ", ".join(f"{k} (checkpoint {tuple(a)} vs model {tuple(b)})" for k, a, b in self.mismatched)
            parts.append(f"  misshaped keys ({len(self.mismatched)}): {shown}")
        super().__init__("\n".join(parts))


# ---------------------------------------------------------------------------------------------- strict checks
def check_state_dict(
    expected: Mapping[str, torch.Size | tuple],
    found: Mapping[str, torch.Tensor],
    source: str,
    optional: tuple[str, ...] = (),
) -> None:
    """Raise CheckpointError unless ``found`` has exactly the names and shapes of ``expected``.

    Names in ``optional`` may be absent (e.g. a tied LM head).
    """
    missing = [k for k in expected if k not in found and k not in optional]
    unexpected = [k for k in found if k not in expected]
    mismatched = [
        (k, tuple(found[k].shape), tuple(expected[k]))
        for k in expected
        if k in found and tuple(found[k].shape) != tuple(expected[k])
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(source, missing, unexpected, mismatched)


def check_dtypes(own: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], source: str) -> None:
    """Floating-point weights come as floating point (an integer or boolean tensor would be copied in silently)."""
    wrong = [
        f"{k} ({v.dtype})" for k, v in found.items() if k in own and v.is_floating_point() != own[k].is_floating_point()
    ]
    if wrong:
        raise ValueError(f"{source}: tensors of the wrong dtype (floating point expected): {', '.join(wrong)}")


def load_checked(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``module`` after :func:`check_state_dict` against the module's own names and
    shapes, so a wrong file names its missing, unexpected and misshaped keys."""
    check_state_dict({k: v.shape for k, v in module.state_dict().items()}, state_dict, source)
    check_dtypes(module.state_dict(), state_dict, source)
    module.load_state_dict(state_dict, strict=True)


def without_tied_head(state_dict: dict[str, torch.Tensor], model: Harmon) -> dict[str, torch.Tensor]:
    """``state_dict`` without the LM head when ``model`` ties it to the token embedding (one tensor, two names)."""
    if model.llm.config.tie_word_embeddings:
        state_dict = {k: v for k, v in state_dict.items() if k not in TIED_KEYS}
    return state_dict


def _copy_checked(model: Harmon, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy already-checked tensors into ``model``; a tied head is dropped (the embedding is kept) and re-tied."""
    state_dict = dict(state_dict)
    if model.llm.config.tie_word_embeddings and TIED_KEYS[0] in state_dict:
        head = state_dict.pop(TIED_KEYS[0])
        embed = state_dict["llm.model.embed_tokens.weight"]
        if head.data_ptr() != embed.data_ptr() and not torch.equal(head, embed):
            logger.warning(
                "%s: llm.lm_head.weight differs from the token embedding; the model ties them and keeps the embedding",
                source,
            )
    with torch.no_grad():
        own = model.state_dict()
        check_dtypes(own, state_dict, source)
        for name, value in state_dict.items():
            own[name].copy_(value)
    model.llm.tie_weights()


# ---------------------------------------------------------------------------------------------- into a model
def build_empty_model(
    config: HarmonConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Harmon:
    """Build the module tree without spending time on random init (weights are uninitialised memory).

    Non-persistent buffers (the LLM's rotary frequencies) are recomputed; every parameter must then be loaded.
    """
    with torch.device("meta"):
        model = Harmon(config)
    # dtype first, on meta: memory is then allocated once, in the final dtype, and stays untouched (not resident)
    # until each weight is written; casting after to_empty would write a whole second copy at once.
    model = model.to(dtype).to_empty(device=device)
    model.reset_rotary_buffers()
    model.llm.tie_weights()
    return model


def load_harmon_weights(
    model: Harmon, state_dict: Mapping[str, torch.Tensor], source: str, include_vae: bool, skip: tuple[str, ...] = ()
) -> None:
    """Strictly load Harmon weights (official names). ``llm.lm_head.weight`` may be present or absent when tied.

    Parameters named ``skip*`` are neither expected nor loaded (they keep the model's own values).
    Raises CheckpointError listing missing, unexpected and misshaped keys by name.
    """
    skip = skip + (() if include_vae else ("vae.",))
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith(skip)}
    tied = bool(model.llm.config.tie_word_embeddings)
    check_state_dict(expected, state_dict, source, optional=TIED_KEYS if tied else ())
    _copy_checked(model, state_dict, source)


def load_llm_weights(model: Harmon, folder: str | Path) -> None:
    """Load a Hugging Face Qwen2 folder's weights (model.safetensors or sharded) into ``model.llm``, strictly.

    The folder's names lack the ``llm.`` prefix; its LM head may be absent (Qwen2.5-0.5B/1.5B tie it).
    """
    folder = Path(folder)
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no model*.safetensors in {folder}")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(read_weights(f))
    sd = {f"llm.{k}": v for k, v in sd.items()}
    expected = {k: v.shape for k, v in model.state_dict().items() if k.startswith("llm.")}
    check_state_dict(expected, sd, str(folder), optional=TIED_KEYS)
    _copy_checked(model, sd, str(folder))


def load_vae_weights(vae: torch.nn.Module, path: str | Path) -> None:
    """Strictly load a VAE file (kl16.ckpt, or a stage-0 vae.safetensors) into ``vae`` (e.g. ``model.vae``)."""
    load_checked(vae, read_vae_weights(path), str(path))


def read_vae_config(weights: str | Path) -> VAEConfig | None:
    """The :data:`VAE_CONFIG_NAME` beside a VAE weights file (a trained small VAE's shape and scale), if any."""
    path = Path(weights).with_name(VAE_CONFIG_NAME)
    if not path.is_file():
        return None
    try:
        return VAEConfig.from_dict(read_json_object(path, "VAE config"))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from None


def model_from_state_dict(
    config: HarmonConfig,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Harmon:
    """A model of ``config`` holding exactly ``state_dict`` (VAE included; a tied head may be absent), checked
    strictly: a changed config that keeps every shape, or gathered training weights before an export."""
    model = build_empty_model(config, device, dtype)
    load_harmon_weights(model, state_dict, source, include_vae=True)
    return model


# ---------------------------------------------------------------------------------------------- official releases
def infer_mar_config(sd: Mapping[str, torch.Tensor]) -> MARConfig:
    """Read the MAR sizes off an official checkpoint's shapes (MAR-Base, -Large, -Huge, the 1.5b-o file...)."""
    try:
        enc_dim, token_dim = sd["mar.z_proj.weight"].shape
        dec_dim = sd["mar.decoder_embed.weight"].shape[0]
        n_diff = sd["mar.diffusion_pos_embed_learned"].shape[1]
        n_tab = sd["mar.encoder_pos_embed_learned"].shape[1]
        width = sd["mar.diffloss.net.input_proj.weight"].shape[0]
    except KeyError as err:
        raise ValueError(f"not a Harmon checkpoint: key {err} is missing") from err
    grid = round(n_diff**0.5)

    def depth(prefix: str) -> int:
        return len({k.split(".")[2] for k in sd if k.startswith(prefix)})

    if enc_dim not in MAR_HEADS_BY_WIDTH or dec_dim not in MAR_HEADS_BY_WIDTH:
        raise ValueError(f"unknown MAR width {enc_dim}/{dec_dim}; known: {sorted(MAR_HEADS_BY_WIDTH)}")
    class_num = sd["mar.class_emb.weight"].shape[0] if "mar.class_emb.weight" in sd else 0
    diff_depth = len({k.split(".")[4] for k in sd if k.startswith("mar.diffloss.net.res_blocks.")})
    return MARConfig(
        token_dim=token_dim,
        encoder_dim=enc_dim,
        encoder_depth=depth("mar.encoder_blocks."),
        encoder_heads=MAR_HEADS_BY_WIDTH[enc_dim],
        decoder_dim=dec_dim,
        decoder_depth=depth("mar.decoder_blocks."),
        decoder_heads=MAR_HEADS_BY_WIDTH[dec_dim],
        buffer_size=n_tab - n_diff,
        grid_size=grid,
        class_num=class_num,
        diffloss=DiffLossConfig(target_channels=token_dim, z_channels=dec_dim, width=width, depth=diff_depth),
    )


def read_llm_config(folder: str | Path) -> dict[str, Any]:
    """A Qwen2.5 folder's config.json as the ``llm`` part of a HarmonConfig (file bookkeeping dropped)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in the LLM folder {folder}")
    return {k: v for k, v in read_json_object(path, "LLM config").items() if k not in LLM_BOOKKEEPING}


def load_official(
    checkpoint: str | Path,
    vae: str | Path,
    llm: str | Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    vae_config: VAEConfig | None = None,
) -> tuple[Harmon, Any]:
    """Released Harmon weights as (model in eval mode, tokenizer); see ``HarmonPipeline.from_official``."""
    device, dtype = resolve_device(device, dtype)
    llm_cfg = read_llm_config(llm)
    generation = GenerationDefaults(**read_generation_config(llm))  # what the original's from_pretrained merges
    sd = read_weights(checkpoint)
    config = HarmonConfig(llm=llm_cfg, mar=infer_mar_config(sd), vae=vae_config or VAEConfig(), generation=generation)
    model = build_empty_model(config, device, dtype)
    load_harmon_weights(model, sd, str(checkpoint), include_vae=False)
    load_vae_weights(model.vae, vae)
    return model.eval(), load_tokenizer(llm, config.image_token)


# ---------------------------------------------------------------------------------------------- our format
def read_config(path: str | Path) -> HarmonConfig:
    """The HarmonConfig of a saved model folder; refuses a folder that lacks the config or the weights."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{path} is not a saved harmon model (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    raw = read_json_object(path / CONFIG_NAME, "harmon config")
    if raw.pop("format", FORMAT_NAME) != FORMAT_NAME:
        raise ValueError(f"{path / CONFIG_NAME} is not a harmon config")
    version = raw.pop("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ValueError(f"{path / CONFIG_NAME}: format_version {version!r}; this harmon reads {FORMAT_VERSION}")
    try:
        return HarmonConfig.from_dict(raw)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path / CONFIG_NAME}: {err}") from None


def load_pretrained(
    path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None
) -> tuple[Harmon, Any]:
    """A model saved by :func:`save_pretrained` as (model in eval mode, tokenizer)."""
    path = Path(path)
    config = read_config(path)
    device, dtype = resolve_device(device, dtype)
    model = build_empty_model(config, device, dtype)
    load_harmon_weights(model, read_weights(path / WEIGHTS_NAME), str(path / WEIGHTS_NAME), include_vae=True)
    return model.eval(), load_tokenizer(path, config.image_token)


def save_pretrained(model: Harmon, tokenizer: Any, path: str | Path, dtype: torch.dtype | None = None) -> None:
    """Write config.json, model.safetensors (tied head stored once; floats cast to ``dtype`` if given) and the
    tokenizer files into the folder ``path``."""
    if any(t.dtype == torch.int8 for t in model.state_dict().values()):  # harmon.accel.quant's layers
        raise ValueError("a quantized model cannot be saved; save the float model and quantize after loading")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = without_tied_head(model.state_dict(), model)
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    save_safetensors(sd, path / WEIGHTS_NAME, metadata={"format": FORMAT_NAME})
    config = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **model.config.to_dict()}
    write_text_atomic(path / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(str(path))
