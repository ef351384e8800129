"""Gaussian diffusion of the DiffLoss head: cosine schedule, IDDPM respacing, ε-prediction with a learned-range
variance, the DDPM ancestral sampler and the hybrid (MSE + VLB) training loss.

Equation numbers refer to
  [DDPM]  Ho, Jain, Abbeel 2020, "Denoising Diffusion Probabilistic Models" (arXiv 2006.11239);
  [IDDPM] Nichol, Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models" (arXiv 2102.09672).

Conventions (reference §7): schedule tables are computed in float64 on the CPU and used as float32 copies on the
device of the data; the chain state (x_t, noise, means) is float32 whatever dtype the network runs in. Indices
``t`` address the (possibly respaced) chain; the network always sees the *original* timestep ``timestep_map[t]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from harmon import rng
from harmon.validate import check_number

__all__ = [
    "GaussianDiffusion",
    "approx_standard_normal_cdf",
    "cosine_alpha_bar",
    "cosine_betas",
    "discretized_gaussian_log_likelihood",
    "normal_kl",
    "respaced_betas",
    "space_timesteps",
]

# Host-side schedule tables always live on the CPU, even when a module is built under `with torch.device("meta")`.
_CPU = torch.device("cpu")

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# What the first C output channels of the network predict: the noise ε (the official MAR/Harmon head), or
# v = sqrt(ᾱ) ε − sqrt(1 − ᾱ) x_0 (Salimans & Ho 2022, arXiv 2202.00512 §4). With ε-prediction, x̂_0 carries the
# ε error times sqrt(1/ᾱ_t − 1) (up to ~2e4 at the end of the cosine chain), which a small head cannot make
# precise enough for the respaced sampler; with v-prediction the x̂_0 error stays of the order of the v error.
PREDICTIONS = ("epsilon", "v")


# ---------------------------------------- Schedule math (pure functions) --------------------------------------


def cosine_alpha_bar(s: float) -> float:
    """ᾱ(s) = cos²(((s + 0.008) / 1.008) · π/2), s ∈ [0, 1] the fraction of the chain ([IDDPM] eq. 17, offset 0.008)."""
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def cosine_betas(num_steps: int = 1000, max_beta: float = 0.999) -> torch.Tensor:
    """β_i = min(1 − ᾱ((i+1)/T) / ᾱ(i/T), max_beta), i = 0..T−1 ([IDDPM] §3.2, below eq. 17).

    Computed in Python floats (float64); the cap 0.999 avoids the singularity of ᾱ at the end of the chain.

    Returns:
        (T,) float64 CPU tensor.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta!r}")
    betas = [
        min(1.0 - cosine_alpha_bar((i + 1) / num_steps) / cosine_alpha_bar(i / num_steps), max_beta)
        for i in range(num_steps)
    ]
    return torch.tensor(betas, dtype=torch.float64, device=_CPU)


def space_timesteps(num_train_steps: int, sections: str | Sequence[int]) -> list[int]:
    """The IDDPM respacing rule ([IDDPM] §4): which original timesteps a shortened sampling chain keeps.

    The range 0..T−1 is split into len(sections) contiguous parts of (almost) equal size (the first T mod n
    parts get one extra step). In a part of size S with count k, the kept offsets are the Python-rounded
    running sums 0, d, 2d, … of the fractional stride d = (S−1)/(k−1) (d = 1 when k = 1), so both ends of every
    part are kept. "100" over 1000 steps keeps 0, 10, 20, 30, 40, 50, 61, 71, …, 989, 999; "30,20,10" keeps 30
    steps in the first third, 20 in the second and 10 in the last ("annealed": dense early, sparse late).

    Args:
        num_train_steps: T, length of the original chain.
        sections: comma-separated counts ("100", "30,20,10") or a sequence of ints.

    Returns:
        Sorted list of the kept original timesteps.
    """
    if not isinstance(num_train_steps, int) or num_train_steps < 1:
        raise ValueError(f"num_train_steps must be a positive int, got {num_train_steps!r}")
    if isinstance(sections, str):
        try:
            counts = [int(part) for part in sections.split(",")]
        except ValueError:
            raise ValueError(
                f"timestep respacing must be comma-separated integers such as '100' or '30,20,10', got {sections!r}"
            ) from None
    else:
        counts = list(sections)
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
            raise ValueError(f"timestep respacing counts must be ints, got {sections!r}")
    if not counts:
        raise ValueError(f"timestep respacing needs at least one section, got {sections!r}")
    if any(c < 0 for c in counts) or sum(counts) < 1:
        raise ValueError(f"timestep respacing counts must be >= 0 with a positive total, got {sections!r}")

    base, extra = divmod(num_train_steps, len(counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = base + (1 if i < extra else 0)
        if count > size:
            raise ValueError(
                f"timestep respacing {sections!r}: section {i} asks for {count} steps but holds only {size} "
                f"of the {num_train_steps} training steps"
            )
        stride = (size - 1) / (count - 1) if count > 1 else 1.0
        # Running sum (not i·stride) so that ties round exactly as the IDDPM rule does.
        offset = 0.0
        for _ in range(count):
            kept.append(start + round(offset))
            offset += stride
        start += size
    return sorted(set(kept))


def respaced_betas(betas: torch.Tensor, use_timesteps: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Betas of the chain that visits only ``use_timesteps``: β'_j = 1 − ᾱ_{t_j} / ᾱ_{t_{j−1}}, ᾱ_{t_{−1}} = 1
    ([IDDPM] §4), so that the respaced chain has ᾱ'_j = ᾱ_{t_j}.

    Args:
        betas: (T,) float64 betas of the original chain.
        use_timesteps: kept original timesteps (any order, no duplicates), each in 0..T−1.

    Returns:
        new_betas: (K,) float64; timestep_map: (K,) int64, timestep_map[j] = t_j (sorted).
    """
    if betas.dim() != 1 or betas.dtype != torch.float64:
        raise ValueError(f"betas must be a 1-D float64 tensor, got shape {tuple(betas.shape)} dtype {betas.dtype}")
    kept = sorted({int(t) for t in use_timesteps})
    if len(kept) != len(use_timesteps) or not kept:
        raise ValueError(f"use_timesteps must be non-empty and without duplicates, got {list(use_timesteps)!r}")
    if kept[0] < 0 or kept[-1] >= betas.shape[0]:
        raise ValueError(f"use_timesteps must lie in 0..{betas.shape[0] - 1}, got {kept[0]}..{kept[-1]}")
    alphas_cumprod = torch.cumprod(1.0 - betas.detach().to(_CPU), dim=0).tolist()
    new_betas = []
    last = 1.0
    for t in kept:
        new_betas.append(1.0 - alphas_cumprod[t] / last)
        last = alphas_cumprod[t]
    return (
        torch.tensor(new_betas, dtype=torch.float64, device=_CPU),
        torch.tensor(kept, dtype=torch.long, device=_CPU),
    )


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) in nats
    = ½(−1 + logvar2 − logvar1 + e^(logvar1 − logvar2) + (mean1 − mean2)² e^(−logvar2)) ([DDPM] eq. 5 terms)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x) ≈ ½(1 + tanh(sqrt(2/π)(x + 0.044715 x³))) (the tanh approximation used by the [DDPM] decoder L_0)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Elementwise log-probability of x under a Gaussian discretised into bins of half-width 1/255, with
    open-ended edge bins for x < −0.999 and x > 0.999 ([DDPM] eq. 13, the L_0 decoder; an image-space heuristic
    applied unchanged to latents). Probabilities are floored at 1e-12 before the log, as in the original.

    Args:
        x: target values; means, log_scales: Gaussian mean and log standard deviation, broadcastable to x.
    """
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dim but the batch dim: (N, ...) -> (N,)."""
    return x.mean(dim=tuple(range(1, x.dim())))


# ---------------------------------------- The diffusion process -----------------------------------------------


class GaussianDiffusion:
    """A (possibly respaced) Gaussian diffusion with ε-prediction and learned-range variance, no x̂_0 clipping.

    Args:
        betas: (K,) float64 betas of the chain (see ``cosine_betas`` / ``respaced_betas``).
        timestep_map: (K,) int64, the original timestep of each chain index; identity when omitted.
    """

    # float32 copies of these float64 tables are gathered per timestep (the original gathers float64 then casts:
    # the same numbers).
    _TABLES = (
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "log_betas",
    )

    def __init__(
        self, betas: torch.Tensor, timestep_map: torch.Tensor | None = None, prediction: str = "epsilon"
    ) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.prediction = prediction
        if betas.dim() != 1 or betas.dtype != torch.float64:
            raise ValueError(f"betas must be a 1-D float64 tensor, got shape {tuple(betas.shape)} dtype {betas.dtype}")
        betas = betas.detach().to(_CPU)
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"betas must lie in (0, 1), got range [{betas.min().item()}, {betas.max().item()}]")
        num_steps = betas.shape[0]
        if timestep_map is None:
            timestep_map = torch.arange(num_steps, dtype=torch.long, device=_CPU)
        if timestep_map.shape != (num_steps,):
            raise ValueError(f"timestep_map must have shape ({num_steps},), got {tuple(timestep_map.shape)}")
        self.betas = betas
        self.timestep_map = timestep_map.detach().to(device=_CPU, dtype=torch.long)
        self.num_timesteps = num_steps

        # float64 tables ([DDPM] eqs. 4, 6, 7; [IDDPM] eq. 10-11). ᾱ_{−1} = 1.
        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])
        ac, ac_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        self.sqrt_alphas_cumprod = torch.sqrt(ac)
        self.sqrt_one_minus_alphas_cumprod = torch.sqrt(1.0 - ac)
        self.sqrt_recip_alphas_cumprod = torch.sqrt(1.0 / ac)
        self.sqrt_recipm1_alphas_cumprod = torch.sqrt(1.0 / ac - 1.0)
        # β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) ([DDPM] eq. 7); β̃_0 = 0, so its log uses β̃_1 instead.
        self.posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
        if num_steps > 1:
            self.posterior_log_variance_clipped = torch.log(
                torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
            )
        else:
            # A one-step chain has no β̃_1; the table is never read for a loss there, but keep it finite.
            self.posterior_log_variance_clipped = torch.log(betas.clone())
        # μ̃_t = c1_t x_0 + c2_t x_t ([DDPM] eq. 7).
        self.posterior_mean_coef1 = betas * torch.sqrt(ac_prev) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - ac_prev) * torch.sqrt(alphas) / (1.0 - ac)
        self.log_betas = torch.log(betas)

        self._f32 = {name: getattr(self, name).to(torch.float32) for name in self._TABLES}
        self._device_cache: dict[tuple[torch.device, str], torch.Tensor] = {}

    @classmethod
    def cosine(
        cls, num_train_steps: int = 1000, sections: str | Sequence[int] | None = None, prediction: str = "epsilon"
    ) -> GaussianDiffusion:
        """The cosine-schedule chain of ``num_train_steps`` respaced to ``sections`` (all steps when None).

        Like the original, the full chain also goes through ``respaced_betas`` (β'_t = 1 − ᾱ_t/ᾱ_{t−1}), which
        differs from the raw cosine betas only in float64 rounding.
        """
        betas = cosine_betas(num_train_steps)
        kept = space_timesteps(num_train_steps, [num_train_steps] if sections is None else sections)
        return cls(*respaced_betas(betas, kept), prediction=prediction)

    # ------------------------------------------------------------------------------------------------------
    def _table(self, name: str, device: torch.device) -> torch.Tensor:
        """float32 (or int64 for the timestep map) copy of a table on ``device``, cached per device; float64
        tensors never leave the CPU (MPS has no float64)."""
        key = (torch.device(device), name)
        table = self._device_cache.get(key)
        if table is None:
            source = self.timestep_map if name == "timestep_map" else self._f32[name]
            table = source.to(device)
            self._device_cache[key] = table
        return table

    def _gather(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """table[t] as float32, shaped (N, 1, ..., 1) to broadcast against an ndim-dim (N, C, ...) tensor."""
        values = self._table(name, t.device)[t]  # (N,)
        return values.view(-1, *([1] * (ndim - 1)))

    def original_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Map chain indices (N,) to the original timesteps the network was trained on (N,) int64."""
        return self._table("timestep_map", t.device)[t]

    def epsilon_from_output(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's first C channels as ε̂.

        Unchanged for ε-prediction; ε̂ = sqrt(ᾱ_t) v̂ + sqrt(1 − ᾱ_t) x_t for v-prediction."""
        if self.prediction == "epsilon":
            return out
        nd = x_t.dim()
        return (
            self._gather("sqrt_alphas_cumprod", t, nd) * out
            + self._gather("sqrt_one_minus_alphas_cumprod", t, nd) * x_t
        )

    # ------------------------------------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε ([DDPM] eq. 4).

        Args:
            x0, noise: (N, C, ...); t: (N,) chain indices.
        Returns:
            (N, C, ...) float32.
        """
        x0, noise = x0.float(), noise.float()
        return (
            self._gather("sqrt_alphas_cumprod", t, x0.dim()) * x0
            + self._gather("sqrt_one_minus_alphas_cumprod", t, x0.dim()) * noise
        )

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_{t−1} | x_t, x_0) = N(c1_t x_0 + c2_t x_t, β̃_t) ([DDPM] eqs. 6-7).

        Returns:
            mean (N, C, ...), variance and clipped log-variance broadcast to (N, 1, ..., 1), all float32.
        """
        nd = x_t.dim()
        mean = self._gather("posterior_mean_coef1", t, nd) * x0 + self._gather("posterior_mean_coef2", t, nd) * x_t
        return mean, self._gather("posterior_variance", t, nd), self._gather("posterior_log_variance_clipped", t, nd)

    def p_mean_variance(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, x0_clip: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p(x_{t−1} | x_t) from the network output (ε̂, v).

        log σ²_t = f log β_t + (1 − f) log β̃_t (clipped), f = (v + 1)/2, v unclamped ([IDDPM] eq. 15);
        x̂_0 = sqrt(1/ᾱ_t) x_t − sqrt(1/ᾱ_t − 1) ε̂ ([DDPM] eq. 4 solved for x_0; no clipping);
        mean = c1_t x̂_0 + c2_t x_t ([DDPM] eq. 7 with x̂_0, equivalent to eq. 11).

        Args:
            model_output: (N, 2C, ...) = [ε̂, v] along dim 1, any float dtype (computed on in float32).
            x_t: (N, C, ...) float32; t: (N,) chain indices.
            x0_clip: None (the official behaviour) or a bound c: x̂_0 is clamped to [-c, c] before the mean,
                which keeps a respaced chain stable when ε̂ is imprecise at large t (where 1/sqrt(ᾱ_t) ~ 2e4).
        Returns:
            (mean, log_variance, pred_x0), each (N, C, ...) float32.
        """
        channels = x_t.shape[1]
        if model_output.shape[1] != 2 * channels:
            raise ValueError(
                f"model_output must carry 2×{channels} channels (ε̂ and v), got shape {tuple(model_output.shape)}"
            )
        eps, v = model_output.float().split(channels, dim=1)
        nd = x_t.dim()
        eps = self.epsilon_from_output(eps, x_t, t)
        min_log = self._gather("posterior_log_variance_clipped", t, nd)
        max_log = self._gather("log_betas", t, nd)
        frac = (v + 1) / 2
        log_variance = frac * max_log + (1 - frac) * min_log
        pred_x0 = (
            self._gather("sqrt_recip_alphas_cumprod", t, nd) * x_t
            - self._gather("sqrt_recipm1_alphas_cumprod", t, nd) * eps
        )
        if x0_clip is not None:
            pred_x0 = pred_x0.clamp(-x0_clip, x0_clip)
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, t)
        return mean, log_variance, pred_x0

    # ------------------------------------------------------------------------------------------------------
    def training_losses(
        self, model_output_fn: ModelFn, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Hybrid loss L_simple + L_vlb per row ([IDDPM] eq. 16, λ = 1 and no 1/1000 rescale).

        mse = mean_c (ε − ε̂)²; vb (bits) uses ε̂ *detached* and v live, so it only trains the variance head:
        KL(q(x_{t−1}|x_t,x_0) ‖ p(x_{t−1}|x_t)) for t > 0 and the discretised-Gaussian NLL of x_0 for t = 0
        ([DDPM] eq. 5), each averaged over channels and divided by ln 2.

        Args:
            model_output_fn: (x_t (N, C, ...) float32, original timesteps (N,) int64) -> (N, 2C, ...).
            x0, noise: (N, C, ...); t: (N,) chain indices.
        Returns:
            dict of (N,) float32 tensors: loss, mse, vb.
        """
        x0 = x0.float()
        noise = noise.float()
        x_t = self.q_sample(x0, t, noise)  # (N, C, ...)
        model_output = model_output_fn(x_t, self.original_timesteps(t)).float()  # (N, 2C, ...)
        pred, v = model_output.split(x0.shape[1], dim=1)
        if self.prediction == "epsilon":
            target = noise
        else:  # v = sqrt(ᾱ_t) ε − sqrt(1 − ᾱ_t) x_0
            target = (
                self._gather("sqrt_alphas_cumprod", t, x0.dim()) * noise
                - self._gather("sqrt_one_minus_alphas_cumprod", t, x0.dim()) * x0
            )

        frozen = torch.cat([pred.detach(), v], dim=1)  # p_mean_variance converts v̂ to ε̂ itself
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        mean, log_var, _ = self.p_mean_variance(frozen, x_t, t)
        kl = _mean_flat(normal_kl(true_mean, true_log_var, mean, log_var)) / math.log(2.0)
        nll = -_mean_flat(discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl)

        mse = _mean_flat((target - pred) ** 2)
        return {"loss": mse + vb, "mse": mse, "vb": vb}

    # ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def p_sample_loop(
        self,
        model_fn: ModelFn,
        noise: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        x0_clip: float | None = None,
        start: int | None = None,
    ) -> torch.Tensor:
        """Ancestral sampling ([DDPM] Algorithm 2) from x_{K−1} = ``noise`` down to x_0.

        For j = K−1 … 0: (ε̂, v) = model_fn(x, timestep_map[j]); x ← mean + [j ≠ 0]·exp(½ log σ²)·n·temperature,
        n ~ N(0, I) from ``generator``. Temperature scales only the per-step noise. No noise is drawn at j = 0.

        Args:
            model_fn: (x (N, C, ...) float32, original timesteps (N,) int64) -> (N, 2C, ...) in any float dtype.
            noise: (N, C, ...) initial state; the chain runs in float32 on its device.
            generator: source of the per-step noise (on the device of ``noise``).
            start: the chain index ``noise`` stands at (default K − 1); SDEdit starts lower, from a noised token.
        Returns x_0, (N, C, ...) float32.
        """
        x = noise.float()
        n = x.shape[0]
        device = x.device
        timestep_map = self._table("timestep_map", device)
        last = self.num_timesteps - 1
        first = last if start is None else check_number("start", start, low=0, high=last, integer=True)
        for j in range(first, -1, -1):
            t = torch.full((n,), j, dtype=torch.long, device=device)  # chain index, (N,)
            model_output = model_fn(x, timestep_map[t])  # (N, 2C, ...)
            mean, log_var, _ = self.p_mean_variance(model_output, x, t, x0_clip=x0_clip)
            if j > 0:
                step_noise = rng.randn(x.shape, generator, device=device)
                x = mean + torch.exp(0.5 * log_var) * step_noise * temperature
            else:
                x = mean
        return x
