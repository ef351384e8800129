"""``torch.compile`` of the sampler's hot pieces with their weights frozen in (``generate(compile=True)``).

One piece is compiled: the diffusion head's MLP given precomputed modulations (``forward_modulated`` in
:mod:`harmon.accel.head`), evaluated once per diffusion step of every masked-autoregressive step on a few rows,
where inductor's C++ GEMM template runs the small-row matmuls faster than oneDNN or MKL
(``benchmarks/generate.py --compile`` measures it). The MAR decoder's blocks run eager: compiled, they were no
faster inside whole generations.

On CPU the weights are frozen into the graph as constants, which is what lets inductor pack them once. A frozen
graph keeps the weights it was compiled with, and dynamo's guards see neither in-place weight changes nor a new
module that reuses a freed one's ``id``: :func:`compiled` therefore keys each compiled piece on its weights (tensor
addresses and version counters) and compiles again when they change, resetting torch's compile caches if another
graph could still hold stale weights. The numbers equal the eager path's up to float rounding (tests compare them).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import nn

from harmon.accel.linear import plain_linears

__all__ = ["FrozenCompiled", "compiled", "options_for"]

# (id(module), name) -> (weak reference to module, weights key) of every piece compiled in this process.
_REGISTRY: dict[tuple[int, str], tuple[weakref.ref, tuple]] = {}
# owner -> {name: compiled piece}; weak, so a dropped model takes its compiled pieces with it.
_PIECES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def weights_key(module: nn.Module) -> tuple:
    """What a frozen graph depends on: every parameter's and buffer's address, version, dtype, device and shape."""
    tensors = list(module.parameters()) + list(module.buffers())
    return tuple((t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape)) for t in tensors)


def options_for(device: torch.device, gemm: str) -> dict:
    """Inductor settings: on CPU weights frozen in and GEMMs from ``gemm`` ("CPP": inductor's C++ template, "ATEN":
    oneDNN/MKL; one backend only, so compiling does not benchmark alternatives); elsewhere inductor's defaults with
    frozen weights."""
    if device.type == "cpu":
        return {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": gemm}
    return {"freezing": True}


class FrozenCompiled:
    """``torch.compile(fn)`` over ``module``'s weights, valid while they stay the ones it was compiled with."""

    def __init__(self, module: nn.Module, name: str, fn: Callable, gemm: str, dynamic: bool | None) -> None:
        self.module = module
        self.key = weights_key(module)
        slot = (id(module), name)
        seen = _REGISTRY.get(slot)
        if seen is not None and (seen[0]() is not module or seen[1] != self.key):
            torch.compiler.reset()  # drop every graph that dynamo's guards would still accept with old weights
            _REGISTRY.clear()
        _REGISTRY[slot] = (weakref.ref(module), self.key)
        device = next(iter(module.parameters())).device
        self.options = options_for(device, gemm)
        self.fn = torch.compile(fn, dynamic=dynamic)
        self.linears = [m for m in module.modules() if isinstance(m, nn.Linear)]  # once: __call__ is a hot path

    def current(self) -> bool:
        return weights_key(self.module) == self.key

    def __call__(self, *args):
        import torch._inductor.config as inductor_config

        # The options are read when compiling, which happens on a call. Inductor packs weights its own way, so the
        # layers must be plain (even inside an outer packed_linears context) when dynamo traces them.
        with inductor_config.patch(self.options), plain_linears(self.linears):
            return self.fn(*args)


def compiled(
    owner: nn.Module, name: str, module: nn.Module, fn: Callable, gemm: str, dynamic: bool | None = None
) -> FrozenCompiled:
    """The compiled ``fn`` (a function of ``module``'s weights) cached on ``owner`` under ``name``, compiled again
    when the weights changed since."""
    cache = _PIECES.setdefault(owner, {})
    piece = cache.get(name)
    if piece is None or not piece.current():
        piece = cache[name] = FrozenCompiled(module, name, fn, gemm, dynamic)
    return piece
