"""What the CPU offers, and the dtype that is fastest on it: one place for benchmarks and ``dtype="auto"``.

``cpu_info()`` reads the model name and the vector flags once (``/proc/cpuinfo`` on Linux; elsewhere torch's own
checks), so every benchmark line can say which machine measured it. ``choose_dtype(device)`` turns that into the
dtype ``dtype="auto"`` loads a model in, with the reason in words: bfloat16 where the hardware multiplies it
natively (AVX-512 BF16 or AMX on x86, a CUDA card with bf16 support), float32 everywhere else, because a CPU without
those instructions emulates bf16 matmuls at a small fraction of its fp32 speed.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["BF16_FLAGS", "choose_dtype", "cpu_info", "cpu_line", "has_bf16_matmul"]

# /proc/cpuinfo flags that give bf16 matrix products in hardware (AVX-512 BF16 dot products, AMX tiles)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# flags worth naming in a benchmark line: the vector widths the GEMM kernels pick between
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def _torch_flags() -> set[str]:
    """The flags torch can answer for itself (where /proc/cpuinfo is missing: macOS, Windows)."""
    cpu = getattr(torch, "cpu", None)
    checks = {
        "avx2": "_is_avx2_supported",
        "avx512f": "_is_avx512_supported",
        "avx512_vnni": "_is_vnni_supported",
        "avx512_bf16": "_is_avx512_bf16_supported",
        "amx_tile": "_is_amx_tile_supported",
    }
    return {flag for flag, name in checks.items() if cpu is not None and getattr(cpu, name, lambda: False)()}


@functools.lru_cache(maxsize=1)
def _read_cpu() -> tuple[str, frozenset[str]]:
    """(model name, every flag of the first processor) from /proc/cpuinfo, else platform and torch."""
    model, flags = "", set()
    path = Path("/proc/cpuinfo")
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return model or platform.processor() or platform.machine(), frozenset(flags or _torch_flags())


def cpu_info() -> dict[str, Any]:
    """The CPU figures come from: model, architecture, cores, the GEMM-relevant flags it reports, torch's vector
    capability, torch threads and version. A JSON-ready dict."""
    model, flags = _read_cpu()
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
    return {
        "cpu": model,
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "cpu_flags": [f for f in REPORTED_FLAGS if f in flags],
        "torch_capability": capability,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def cpu_line(info: dict[str, Any] | None = None) -> str:
    """``cpu_info()`` in one line for a table caption: 'AMD EPYC (x86_64, 2 cores; avx2 avx512f ...), 1 thread'."""
    info = info or cpu_info()
    threads = f"{info['threads']} thread" + ("s" if info["threads"] != 1 else "")
    flags = " ".join(info["cpu_flags"]) or "no AVX2"
    return f"{info['cpu']} ({info['arch']}, {info['cores']} cores; {flags}), {threads}, torch {info['torch']}"


def has_bf16_matmul(flags: frozenset[str] | set[str] | None = None) -> bool:
    """Whether the CPU multiplies bf16 in hardware (any of :data:`BF16_FLAGS`); ``flags`` default: this CPU's."""
    flags = _read_cpu()[1] if flags is None else flags
    return any(f in flags for f in BF16_FLAGS)


def choose_dtype(device: torch.device | str, flags: frozenset[str] | set[str] | None = None) -> tuple[torch.dtype, str]:
    """The dtype ``dtype="auto"`` picks on ``device``, and why (one sentence).

    CPU: bfloat16 with AVX-512 BF16 or AMX (``flags``, default this CPU's), else float32. CUDA: bfloat16 where the
    card supports it, else float32. MPS and anything else: float32 (no measured gain from bf16 there).
    """
    device = torch.device(device)
    if device.type == "cpu":
        flags = _read_cpu()[1] if flags is None else flags
        found = [f for f in BF16_FLAGS if f in flags]
        if found:
            return torch.bfloat16, f"bf16: the CPU multiplies bf16 in hardware ({', '.join(found)})"
        return torch.float32, "fp32: the CPU has no bf16 matmul instructions (no avx512_bf16 or amx_bf16)"
    if device.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16, "bf16: the CUDA device supports bf16"
        return torch.float32, "fp32: the CUDA device lacks bf16 support"
    return torch.float32, f"fp32: no bf16 speed-up is established on {device.type}"
