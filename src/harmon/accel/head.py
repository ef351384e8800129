"""The fast diffusion-head sampler: ``DiffLoss.sample``'s chain, noise and guidance with a cheaper network evaluation.

``DiffLoss.sample`` embeds the condition and the timestep and computes every adaLN modulation at every one of the
K diffusion steps. Here:

- the conditions are embedded once per call, the K timesteps once per call;
- the modulations, which depend on y = time_embed(t) + cond_embed(z) and never on x_t, are computed for many steps
  in one (S·N)-row matmul per layer (:class:`StepModulations`). They hold most of the head's weights (3W² of every
  5W² block), which a matmul of the N rows of one step would re-read from memory at every step;
- on CPU (float32, and bfloat16 where the CPU has bf16 matmul instructions: at a step's few rows packing pays most)
  the layers run with weights packed once per call (:mod:`harmon.accel.linear`);
- optionally the MLP given its modulations runs through ``torch.compile`` (:mod:`harmon.accel.compile`).

The numbers equal ``DiffLoss.sample``'s up to float rounding (tests compare them); the random draws are the same.
"""

from __future__ import annotations

import functools

import torch

from harmon.accel.compile import FrozenCompiled, compiled
from harmon.accel.linear import packed_linears, plain_linears
from harmon.diffloss import DiffLoss, Guidance, SimpleMLPAdaLN
from harmon.diffusion import GaussianDiffusion
from harmon.sampling import HeadSampler

__all__ = [
    "MODULATION_CHUNK_ELEMENTS",
    "StepModulations",
    "compiled_mlp",
    "fast_head_sampler",
    "forward_modulated",
    "modulation_width",
    "modulations",
    "sample_fast",
]

# Largest number of modulation values (rows × steps × modulation width) precomputed at once: 2^24 float32 = 64 MiB.
# The 0.5B head at 8 rows (4 tokens under guidance) fits all 100 steps in one chunk.
MODULATION_CHUNK_ELEMENTS = 1 << 24


def modulation_width(net: SimpleMLPAdaLN) -> int:
    """Sum of the widths of all modulations of ``net``, (3·depth + 2)·W."""
    return sum(layer.out_features for layer in net.modulation_layers())


def modulations(net: SimpleMLPAdaLN, y: torch.Tensor) -> list[torch.Tensor]:
    """Every adaLN modulation of ``net`` for embedded conditions y (..., W): one (..., 3W) tensor per residual block,
    then the final layer's (..., 2W)."""
    return [block.adaLN_modulation(y) for block in net.res_blocks] + [net.final_layer.adaLN_modulation(y)]


def forward_modulated(net: SimpleMLPAdaLN, x: torch.Tensor, mods: list[torch.Tensor]) -> torch.Tensor:
    """``net`` given precomputed ``modulations(net, y)`` (each with N rows): x (N, C) -> (N, 2C).

    The arithmetic of ``SimpleMLPAdaLN.forward`` after its modulations."""
    h = net.input_proj(x.to(net.input_proj.weight.dtype))  # (N, W)
    for block, mod in zip(net.res_blocks, mods[:-1]):
        h = block.forward_modulated(h, mod)  # (N, W)
    return net.final_layer.forward_modulated(h, mods[-1])  # (N, 2C)


class StepModulations:
    """The adaLN modulations of every sampling step, computed ahead in chunks of steps.

    Each call returns the modulations of the next step of the chain j = K−1, …, 0, the order in which
    ``GaussianDiffusion.p_sample_loop`` evaluates it.
    """

    def __init__(self, net: SimpleMLPAdaLN, diffusion: GaussianDiffusion, c_emb: torch.Tensor) -> None:
        self.net = net
        self.c_emb = c_emb  # (N, W)
        timesteps = diffusion.timestep_map.to(c_emb.device)  # (K,) original timesteps of chain j
        self.t_emb = net.time_embed(timesteps)  # (K, W), once per call
        per_step = c_emb.shape[0] * modulation_width(net)
        self.chunk = max(1, MODULATION_CHUNK_ELEMENTS // per_step)
        self.next_j = self.t_emb.shape[0] - 1
        self.mods: list[torch.Tensor] = []
        self.index = 0

    def __call__(self) -> list[torch.Tensor]:
        if self.next_j < 0:
            raise RuntimeError("the sampling chain asked for more steps than it has")
        if self.index == (self.mods[0].shape[0] if self.mods else 0):
            low = max(0, self.next_j - self.chunk + 1)
            t_emb = self.t_emb[low : self.next_j + 1].flip(0)  # (S, W), chain order j, j−1, …
            self.mods = modulations(self.net, t_emb[:, None, :] + self.c_emb[None])  # each (S, N, ·)
            self.index = 0
        step = [m[self.index] for m in self.mods]  # each (N, ·)
        self.index += 1
        self.next_j -= 1
        return step


def compiled_mlp(head: DiffLoss) -> FrozenCompiled:
    """``forward_modulated`` of ``head.net`` compiled with dynamic row counts and the weights frozen in, with
    inductor's C++ GEMM template on CPU; cached on ``head`` and compiled again when its weights changed since."""
    net = head.net
    return compiled(head, "mlp", net, functools.partial(forward_modulated, net), gemm="CPP", dynamic=True)


@torch.no_grad()
def sample_fast(
    head: DiffLoss,
    z: torch.Tensor,
    temperature: float = 1.0,
    cfg: Guidance = 1.0,
    generator: torch.Generator | None = None,
    num_steps: str | None = None,
    x0_clip: float | None = None,
    compile: bool = False,
) -> torch.Tensor:
    """``head.sample`` (same arguments, same shapes, the same tokens up to float rounding), faster.

    ``compile``: run the MLP through ``torch.compile`` (:func:`compiled_mlp`). The first call compiles (tens of
    seconds on a small CPU, and it needs a C++ compiler there); later calls reuse it, for any number of rows, until
    the weights change.
    """
    net = head.net
    diffusion = head.sampling_diffusion(num_steps)
    c_emb = net.cond_embed(z.to(net.input_proj.weight.dtype))  # (N, W), once per call
    next_mods = StepModulations(net, diffusion, c_emb)
    mlp = compiled_mlp(head) if compile else functools.partial(forward_modulated, net)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return mlp(x, next_mods())  # (rows, 2C): the modulations of this step, precomputed

    # compiled: inductor packs the weights its own way, so the layers must be plain when it traces them. The
    # compiled MLP unpacks them itself on every call; unpacking here, once per call of sample, leaves it nothing to
    # undo (restoring an outer context's packed layers on every evaluation is not free).
    with plain_linears(net) if compile else packed_linears(net, bf16=True):
        return head.sample_with(denoise, z, temperature, cfg, generator, num_steps, x0_clip)


def fast_head_sampler(head: DiffLoss, compile: bool = False) -> HeadSampler:
    """:func:`sample_fast` bound to ``head``: a drop-in for ``head.sample`` (``generate_tokens(sample_head=...)``)."""
    return functools.partial(sample_fast, head, compile=compile)
