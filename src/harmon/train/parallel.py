"""Parallelism applied from outside the model: process groups, DDP or FSDP2, activation checkpointing."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from harmon.model import Harmon


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Read torchrun's environment; start a process group (nccl on CUDA, gloo on CPU) when there are several ranks."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def shutdown_distributed(exit_code: int = 0) -> None:
    """Tear down and leave at once: gloo ranks sometimes abort inside interpreter shutdown after the work is done
    (environment notes), so a distributed run ends with ``os._exit``."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)


def blocks_of(model: Harmon) -> list[nn.Module]:
    """The repeated blocks that are sharded / checkpointed one by one."""
    return [
        *model.llm.model.layers,
        *model.mar.encoder_blocks,
        *model.mar.decoder_blocks,
        *model.mar.diffloss.net.res_blocks,
    ]


def wrap_model(model: Harmon, mode: str, info: DistInfo, mixed_bf16: bool = False) -> nn.Module:
    """Return the module the trainer calls: ``model`` itself, a DDP wrapper, or ``model`` sharded with FSDP2.

    mode: none | ddp | fsdp | auto (ddp when several processes).
    """
    if mode == "auto":
        mode = "ddp" if info.distributed else "none"
    if mode == "none" or not info.distributed:
        return model
    if mode == "ddp":
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        # Unused parameters are possible (e.g. a batch whose every token is masked leaves z_proj without gradient).
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)
    if mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(info.device.type, (info.world_size,))
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_bf16 else None
        kwargs = {"mesh": mesh, **({"mp_policy": mp} if mp else {})}
        for block in blocks_of(model):
            if any(p.requires_grad for p in block.parameters()):
                fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
        return model
    raise ValueError(f"unknown parallel mode {mode!r}")


def unwrap(module: nn.Module) -> Harmon:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def apply_activation_checkpointing(model: Harmon, enabled: bool) -> None:
    """Recompute LLM layers, MAR blocks and diffusion res-blocks in backward (outputs are unchanged)."""
    model.set_gradient_checkpointing(enabled)
