"""The one training loop behind every recipe, from one CPU process to many GPUs under torchrun."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from harmon.atomic import write_text_atomic
from harmon.config import CONFIGS, TOKENIZER_SIZED, HarmonConfig
from harmon.images import image_grid
from harmon.loading import (
    load_harmon_weights,
    load_llm_weights,
    load_official,
    load_pretrained,
    load_vae_weights,
    model_from_state_dict,
    read_vae_config,
    save_pretrained,
    without_tied_head,
)
from harmon.model import Harmon
from harmon.tokenizer import load_tokenizer
from harmon.train import hooks, parallel
from harmon.train.checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint, write_json_atomic
from harmon.train.config import TrainConfig, deep_merge, resume_differences
from harmon.train.optim import EMA, build_optimizer, build_scheduler, select_trainable

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- model building
def build_model(cfg: TrainConfig) -> tuple[Harmon, Any]:
    """Model (fp32, CPU) and tokenizer as the config's ModelInit says: loaded through harmon.loading, or a preset."""
    init = cfg.model
    if init.pretrained:
        model, tok = load_pretrained(init.pretrained, device="cpu", dtype=torch.float32)
    elif init.official_checkpoint:
        model, tok = load_official(
            init.official_checkpoint, init.official_vae, init.llm_folder, device="cpu", dtype=torch.float32
        )
    else:
        return _preset_model(cfg)
    if init.overrides or init.reinit:
        merged = HarmonConfig.from_dict(deep_merge(model.config.to_dict(), init.overrides))
        if init.reinit:
            model = _reinitialised(model, merged, tuple(init.reinit), cfg.seed, init.pretrained or "official")
        elif merged.to_dict() != model.config.to_dict():
            model = model_from_state_dict(merged, model.state_dict(), "loaded model")
    return _rescaled(model, init.rescale), tok


@torch.no_grad()
def _rescaled(model: Harmon, scales: dict[str, float]) -> Harmon:
    """``model`` with every parameter named ``prefix*`` multiplied by ``scales[prefix]`` (a prefix that names no
    parameter is an error, as in reinit)."""
    params = dict(model.named_parameters())
    unused = [p for p in scales if not any(n.startswith(p) for n in params)]
    if unused:
        raise ValueError(f"model init: rescale prefixes {unused} match no parameter of the model")
    for prefix, factor in scales.items():
        for name, param in params.items():
            if name.startswith(prefix):
                param.mul_(float(factor))
    if scales:
        logger.info("model init: rescaled %s", scales)
    return model


def _preset_model(cfg: TrainConfig) -> tuple[Harmon, Any]:
    """A seeded fresh model of ``cfg.model.preset``, optionally with a Qwen folder's LLM and a trained VAE."""
    init = cfg.model
    tok_path = init.tokenizer or init.llm_folder
    if not tok_path:
        raise ValueError("a preset model needs model.tokenizer (or model.llm_folder) for its tokenizer")
    tok = load_tokenizer(tok_path)
    if init.preset not in CONFIGS:
        raise ValueError(f"unknown preset {init.preset!r}; known: {sorted(CONFIGS)}")
    small = init.preset in TOKENIZER_SIZED  # vocabulary sized to the trained tokenizer
    config = CONFIGS[init.preset](**({"vocab_size": _round_vocab(len(tok))} if small else {}))
    if int(config.llm["vocab_size"]) < len(tok):
        raise ValueError(f"tokenizer has {len(tok)} tokens but the {init.preset} LLM only {config.llm['vocab_size']}")
    vae_config = read_vae_config(init.vae_weights) if init.vae_weights else None
    if vae_config is not None:  # a trained small VAE records its shape and scale
        config = config.replace(vae=vae_config)
    if init.overrides:
        config = HarmonConfig.from_dict(deep_merge(config.to_dict(), init.overrides))
    torch.manual_seed(cfg.seed)  # the LLM's own init draws from the global RNG
    model = Harmon(config)
    model.initialize_weights(torch.Generator().manual_seed(cfg.seed))
    if init.llm_weights:
        load_llm_weights(model, init.llm_folder)
    if init.vae_weights:
        load_vae_weights(model.vae, init.vae_weights)
    return model, tok


def _reinitialised(model: Harmon, config: HarmonConfig, prefixes: tuple[str, ...], seed: int, source: str) -> Harmon:
    """A model of ``config`` holding ``model``'s weights, except parameters named ``prefixes*``: seeded fresh init.

    Every other parameter must match by name and shape (listed by name otherwise); a prefix that names nothing is
    an error, so a typo cannot silently train the old module.
    """
    torch.manual_seed(seed)  # the LLM's own init draws from the global RNG
    fresh = Harmon(config)
    fresh.initialize_weights(torch.Generator().manual_seed(seed))
    names = list(fresh.state_dict())
    unused = [p for p in prefixes if not any(n.startswith(p) for n in names)]
    if unused:
        raise ValueError(f"model init: reinit prefixes {unused} match no parameter of the model")
    kept = {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}
    load_harmon_weights(fresh, kept, source, include_vae=True, skip=prefixes)
    logger.info("model init: %s start fresh (seed %d); everything else loaded from %s", list(prefixes), seed, source)
    return fresh


def _round_vocab(n: int) -> int:
    return int(math.ceil(n / 64) * 64)  # padded to a multiple of 64 for efficient matmuls


# ---------------------------------------------------------------------------------------------- helpers
def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _sum_counts(dicts: list[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for d in dicts:
        for source, reasons in d.items():
            for reason, n in reasons.items():
                out.setdefault(source, {})[reason] = out.get(source, {}).get(reason, 0) + n
    return out


def _mean_over_ranks(value: float) -> float:
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def save_grid(images: list, path: Path, columns: int | None = None) -> None:
    """Tile PIL images into one PNG (one row unless ``columns`` is given)."""
    if not images:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, columns or len(images)).save(path)


# ---------------------------------------------------------------------------------------------- the trainer
class Trainer:
    """Builds everything from a TrainConfig and runs it. ``run()`` returns the list of logged metric dicts."""

    def __init__(self, cfg: TrainConfig, device: str | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.info = parallel.init_distributed(device)
        self.out = Path(cfg.output_dir)
        self.ckpt_root = self.out / "checkpoints"
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        model, self.tokenizer = build_model(cfg)
        cfg.check_fits(model.config)
        self.trainable = select_trainable(model, cfg.train_modules)
        model.to(self.info.device)
        model.reset_rotary_buffers()
        parallel.apply_activation_checkpointing(model, cfg.grad_checkpointing)
        self.model = model
        self.module = parallel.wrap_model(model, cfg.parallel, self.info, mixed_bf16=False)
        self.optimizer = build_optimizer(self.module, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.max_steps, cfg.optim)
        self.ema = EMA(self.module, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
        self.loss_weights = {s.name: s.loss_weight for s in cfg.data}
        self.metrics_path = self.out / "metrics.jsonl"
        self._tb = None

    # -------------------------------------------------------------------------------------- data
    def build_loader(self, start_step: int):
        from harmon.train.sources import build_mixture

        return build_mixture(
            self.cfg,
            self.tokenizer,
            self.model.config,
            rank=self.info.rank,
            world_size=self.info.world_size,
            start_step=start_step,
        )

    # -------------------------------------------------------------------------------------- state
    def _extra(self, step: int, loader) -> dict[str, Any]:
        """Trainer state beside the tensors: the data position of every rank (streamed slots merged)."""
        state = loader.state_dict()
        if dist.is_initialized():
            states: list[dict] = [None] * dist.get_world_size()  # type: ignore[list-item]
            dist.all_gather_object(states, state)
            for other in states:
                for name, slots in other["positions"].items():
                    state["positions"].setdefault(name, {}).update(slots)
            state["skipped"] = _sum_counts([s["skipped"] for s in states])
        return {"step": step, "data": state, "config_name": self.cfg.name, "config": self.cfg.to_dict()}

    def check_resumable(self, path: Path) -> None:
        """Refuse a checkpoint written under other settings (see ``TrainConfig.resume_override``)."""
        saved = json.loads((path / "extra.json").read_text()).get("config") if (path / "extra.json").is_file() else None
        current = json.loads(json.dumps(self.cfg.to_dict()))  # as the checkpoint stored it (lists, not tuples)
        diff = resume_differences(saved, current) if saved is not None else []
        if diff and not self.cfg.resume_override:
            raise ValueError(
                f"checkpoint {path} was written under other settings: {'; '.join(diff)}. Resume with the same "
                "config, or pass --set resume_override=true to continue with the new one"
            )

    def resume(self, resume: str | None) -> tuple[int, dict | None]:
        if not resume or resume == "none":
            return 0, None
        path = latest_checkpoint(self.ckpt_root) if resume == "auto" else Path(resume)
        if path is None:
            logger.info("no checkpoint under %s: starting fresh", self.ckpt_root)
            return 0, None
        self.check_resumable(path)
        extra = load_checkpoint(
            path, self.module, self.optimizer, self.scheduler, self.ema.shadow if self.ema else None
        )
        if self.info.is_main and self.metrics_path.is_file():  # the steps after the checkpoint are logged again
            lines = self.metrics_path.read_text().splitlines(keepends=True)
            keep = [line for line in lines if json.loads(line).get("step", 0) <= extra["step"]]
            write_text_atomic(self.metrics_path, "".join(keep))
        if self.info.is_main:
            logger.info("resumed from %s at step %d", path, extra["step"])
        return int(extra["step"]), extra

    # -------------------------------------------------------------------------------------- one step
    def train_step(self, step: int, loader, batches) -> dict[str, float]:
        cfg = self.cfg
        self.module.train()
        totals: dict[str, float] = {}
        autocast = (
            torch.autocast(self.info.device.type, dtype=torch.bfloat16)
            if cfg.precision == "bf16"
            else contextlib.nullcontext()
        )
        for micro in range(cfg.accum_steps):
            batch = _to_device(next(batches), self.info.device)
            seed = loader.batch_seed(step, micro)
            torch.manual_seed(seed)  # dropout in the MAR blocks draws from the global RNG
            generator = torch.Generator().manual_seed(seed)
            last = micro == cfg.accum_steps - 1
            sync = self._sync_context(last)
            with sync, autocast:
                losses = self.module(batch, generator=generator)
                loss = sum(self.loss_weights[name[5:]] * value for name, value in losses.items())
                (loss / cfg.accum_steps).backward()
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + float(value.detach()) / cfg.accum_steps
            totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) / cfg.accum_steps
        grad_norm = None
        if cfg.optim.grad_clip > 0:
            params = [p for p in self.module.parameters() if p.requires_grad]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.module)
        out = {k: _mean_over_ranks(v) for k, v in totals.items()}
        if grad_norm is not None:
            out["grad_norm"] = float(grad_norm)
        return out

    def _sync_context(self, last: bool):
        if last:
            return contextlib.nullcontext()
        if isinstance(self.module, torch.nn.parallel.DistributedDataParallel):
            return self.module.no_sync()
        if hasattr(self.module, "set_requires_gradient_sync"):  # FSDP2
            return _fsdp_no_sync(self.module)
        return contextlib.nullcontext()

    # -------------------------------------------------------------------------------------- the loop
    def run(self, resume: str | None = "auto", stop_at: int | None = None) -> list[dict[str, Any]]:
        """Train from the start or a checkpoint to ``max_steps`` (or pause after ``stop_at`` with a checkpoint)."""
        cfg = self.cfg
        start, extra = self.resume(resume)
        loader = self.build_loader(start)  # a missing data file is refused before anything is written
        if self.info.is_main:  # written once the config suits the checkpoint it resumes and its data can be read
            cfg.save(self.out / "config.json")  # the resolved config, next to the checkpoints
        if extra is not None and "data" in extra:
            loader.load_state_dict(extra["data"])
        batches = iter(loader)
        history: list[dict[str, Any]] = []
        samples_per_step = sum(s.batch_size for s in cfg.data) * cfg.accum_steps * self.info.world_size
        bar = None
        if self.info.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.max_steps, initial=start, desc=cfg.name, dynamic_ncols=True, disable=None)
        t_last, steps_since = time.perf_counter(), 0
        end = cfg.max_steps if stop_at is None else min(stop_at, cfg.max_steps)
        for step in range(start, end):
            metrics = self.train_step(step, loader, batches)
            steps_since += 1
            done = step + 1
            metrics.update(step=done, lr=self.scheduler.get_last_lr()[0])
            if done % cfg.log_every == 0 or done == cfg.max_steps:
                now = time.perf_counter()
                metrics["samples_per_s"] = samples_per_step * steps_since / max(now - t_last, 1e-9)
                t_last, steps_since = now, 0
                skipped = {k: v for k, v in getattr(loader, "skipped", {}).items() if v}
                if skipped:
                    metrics["skipped"] = skipped
            history.append(metrics)
            if self.info.is_main:
                self._log(metrics)
                self._report(metrics, bar)
            if cfg.save_every and done % cfg.save_every == 0 and done < end:
                self.save(done, loader)
            if cfg.sample_every and done % cfg.sample_every == 0:
                self.sample(done)
            if cfg.eval_every and cfg.eval and done % cfg.eval_every == 0:
                self.evaluate(done)
        if bar is not None:
            bar.close()
        self.save(end, loader)
        if cfg.export and end == cfg.max_steps:
            self.export(self.out / "final")
        return history

    def _report(self, metrics: dict[str, Any], bar) -> None:
        """Progress for a person: the bar on a terminal; elsewhere (a log file, a job scheduler) a log line at each
        logged step, since tqdm stays silent when stderr is not a terminal."""
        if bar is not None and not bar.disable:
            bar.update(1)
            sps = {"sps": f"{metrics['samples_per_s']:.1f}"} if "samples_per_s" in metrics else {}
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", **sps)
        elif "samples_per_s" in metrics:
            logger.info(
                "step %d/%d  loss %.4f  lr %.3g  %.1f samples/s",
                metrics["step"],
                self.cfg.max_steps,
                metrics["loss"],
                metrics["lr"],
                metrics["samples_per_s"],
            )

    def _log(self, metrics: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.cfg.tensorboard:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tb"))
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, metrics["step"])

    def save(self, step: int, loader) -> Path:
        return save_checkpoint(
            self.ckpt_root,
            step,
            self.module,
            self.optimizer,
            self.scheduler,
            self._extra(step, loader),
            self.ema.state_dict() if self.ema else None,
            keep=self.cfg.keep_checkpoints,
        )

    # -------------------------------------------------------------------------------------- sampling / eval / export
    def sample(self, step: int) -> None:
        images = hooks.sample_images(parallel.unwrap(self.module), self.tokenizer, self.cfg)
        if self.info.is_main:
            save_grid(images, self.out / "samples" / f"step_{step:07d}.png")
        self.module.train()

    def evaluate(self, step: int) -> None:
        result = hooks.run_eval(self.cfg.eval, parallel.unwrap(self.module), self.tokenizer, self.cfg)
        self.module.train()
        if self.info.is_main:
            self._log({"step": step, **{f"eval/{k}": v for k, v in result.items()}})

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight as a plain CPU tensor (gathered under FSDP), with EMA values where EMA is on."""
        sd = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.ema is not None:
            for name, value in self.ema.shadow.items():
                full = value.full_tensor() if hasattr(value, "full_tensor") else value
                sd[name] = full.to("cpu", sd[name].dtype)
        return without_tied_head(sd, self.model)  # one tensor under two names; the embedding (EMA'd) is the one

    def export(self, path: Path) -> None:
        """Write the model in the from_pretrained format (collective under FSDP; rank 0 writes)."""
        sd = self.full_state_dict()
        if self.info.is_main:
            save_pretrained(model_from_state_dict(self.model.config, sd, "trained model"), self.tokenizer, path)
            write_json_atomic(
                path / "training.json",
                {
                    "recipe": self.cfg.name,
                    "steps": self.cfg.max_steps,
                    "world_size": self.info.world_size,
                    "device": str(self.info.device),
                },
            )
        if dist.is_initialized():
            dist.barrier()


@contextlib.contextmanager
def _fsdp_no_sync(module):
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)
