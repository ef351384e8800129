"""DiffLoss: the per-token diffusion head of MAR/Harmon (reference §6-§7).

A small adaLN MLP (``SimpleMLPAdaLN``) predicts the noise ε̂ and a variance interpolation value v of one latent
token x_t, conditioned on the timestep and on the MAR decoder output z of that token. ``DiffLoss`` owns the
1000-step training diffusion and the respaced sampling diffusion. Parameter names match the official checkpoint
keys under ``mar.diffloss.``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from harmon import rng
from harmon.diffusion import PREDICTIONS, GaussianDiffusion, space_timesteps
from harmon.validate import check_fields

# A guidance setting: one scale for [conditional; unconditional] rows, or G − 1 scales for G row groups (DiffLoss.guide)
Guidance = float | tuple[float, ...]


def guidance_scales(cfg: Guidance) -> tuple[float, ...]:
    """The scales of a guidance setting as a tuple: one per group but the last."""
    return tuple(cfg) if isinstance(cfg, (tuple, list)) else (cfg,)


__all__ = ["DiffLoss", "DiffLossConfig", "SimpleMLPAdaLN", "timestep_embedding"]


@dataclass(frozen=True)
class DiffLossConfig:
    """Shape and schedule of the diffusion head. Defaults are Harmon-0.5B (1.5B: z 1280, width 1536, depth 12)."""

    target_channels: int = 16  # token dim = KL-16 VAE latent channels (patch size 1)
    z_channels: int = 768  # condition dim = MAR decoder width
    width: int = 1024  # MLP width of the denoiser
    depth: int = 6  # number of adaLN residual blocks
    num_train_steps: int = 1000  # length of the cosine training chain
    num_sampling_steps: str = "100"  # IDDPM respacing of the sampling chain ("100", "30,20,10", ...)
    grad_checkpointing: bool = False  # recompute res-blocks in backward to save activation memory
    prediction: str = "epsilon"  # "epsilon" (official) or "v" (see harmon.diffusion.PREDICTIONS)

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("target_channels", "z_channels", "width", "depth", "num_train_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DiffLossConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.num_sampling_steps, str):
            raise ValueError(
                f"DiffLossConfig.num_sampling_steps must be a respacing string such as '100', "
                f"got {self.num_sampling_steps!r}"
            )
        space_timesteps(self.num_train_steps, self.num_sampling_steps)  # raises ValueError naming the value
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"DiffLossConfig.prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if not isinstance(self.grad_checkpointing, bool):
            raise ValueError(f"DiffLossConfig.grad_checkpointing must be a bool, got {self.grad_checkpointing!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DiffLossConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DiffLossConfig keys: {unknown}")
        return cls(**data)


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos(t·f_k), sin(t·f_k)] (cos first), f_k = exp(−ln(max_period)·k/(dim/2)).

    Args:
        t: (N,) timesteps (integer or float).
    Returns:
        (N, dim) float32.
    """
    if dim % 2:
        raise ValueError(f"timestep embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]  # (N, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, dim)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class _TimestepEmbedder(nn.Module):
    """Sinusoid (256) -> Linear -> SiLU -> Linear (keys ``mlp.0``, ``mlp.2``)."""

    def __init__(self, width: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype)  # (N, 256)
        return self.mlp(t_freq)  # (N, W)


class _ResBlock(nn.Module):
    """x + gate · MLP(LN(x)·(1 + scale) + shift), (shift, scale, gate) from SiLU(y)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.forward_modulated(x, self.adaLN_modulation(y))

    def forward_modulated(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """The block given its modulation ``mod`` = adaLN_modulation(y), (N, 3W) = [shift, scale, gate].

        A separate method so that a sampler may compute the modulations ahead (:mod:`harmon.accel.head`)."""
        shift, scale, gate = mod.chunk(3, dim=-1)  # 3 × (N, W)
        h = _modulate(self.in_ln(x), shift, scale)
        return x + gate * self.mlp(h)  # (N, W)


class _FinalLayer(nn.Module):
    """Linear(LN(x)·(1 + scale) + shift) with a non-affine LN, (shift, scale) from SiLU(y)."""

    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.forward_modulated(x, self.adaLN_modulation(y))

    def forward_modulated(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """The layer given ``mod`` = adaLN_modulation(y), (N, 2W) = [shift, scale]."""
        shift, scale = mod.chunk(2, dim=-1)  # 2 × (N, W)
        return self.linear(_modulate(self.norm_final(x), shift, scale))  # (N, out)


class SimpleMLPAdaLN(nn.Module):
    """The DiffLoss denoiser (reference §6): (x_t, t, z) -> [ε̂, v].

    Args:
        in_channels: C, token channels.
        width: W, MLP width.
        out_channels: 2C (ε̂ and the learned-range variance value v).
        z_channels: D, condition dim.
        depth: number of residual blocks.
        grad_checkpointing: recompute residual blocks in backward while training.
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        out_channels: int,
        z_channels: int,
        depth: int,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.grad_checkpointing = grad_checkpointing
        self.time_embed = _TimestepEmbedder(width)
        self.cond_embed = nn.Linear(z_channels, width)
        self.input_proj = nn.Linear(in_channels, width)
        self.res_blocks = nn.ModuleList([_ResBlock(width) for _ in range(depth)])
        self.final_layer = _FinalLayer(width, out_channels)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self, generator: torch.Generator | None = None) -> None:
        """From-scratch init: xavier-uniform weights and zero biases for every Linear, then time-MLP weights
        N(0, 0.02²), every adaLN output Linear zero and the output Linear zero (so ε̂ = 0, v = 0 at start)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, generator=generator)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02, generator=generator)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02, generator=generator)
        for linear in self.modulation_layers():
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Args: x (N, C) noisy tokens; t (N,) original timesteps; c (N, D) conditions.
        Returns: (N, 2C) = [ε̂, v] in the weight dtype."""
        dtype = self.input_proj.weight.dtype
        y = self.time_embed(t) + self.cond_embed(c.to(dtype))  # (N, W)
        h = self.input_proj(x.to(dtype))  # (N, W)
        use_checkpoint = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.res_blocks:
            h = checkpoint(block, h, y, use_reentrant=False) if use_checkpoint else block(h, y)  # (N, W)
        return self.final_layer(h, y)  # (N, 2C)

    def modulation_layers(self) -> list[nn.Linear]:
        """The adaLN modulation Linear layers: one per residual block, then the final layer's."""
        return [block.adaLN_modulation[-1] for block in self.res_blocks] + [self.final_layer.adaLN_modulation[-1]]

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        """Classifier-free guidance (reference §6): rows [0, N/2) of c are conditional, [N/2, N) unconditional.

        Only the first half of x is used (duplicated). Both halves get the guided
        ε = ε_uncond + s·(ε_cond − ε_uncond); the variance channels are not guided, each half keeps its own v.

        Args: x (N, C); t (N,); c (N, D), N even. Returns: (N, 2C) in the weight dtype.
        """
        if x.shape[0] % 2:
            raise ValueError(f"forward_with_cfg needs an even batch [cond; uncond], got {x.shape[0]} rows")
        half = x[: x.shape[0] // 2]
        out = self.forward(torch.cat([half, half], dim=0), t, c)  # (N, 2C)
        return self.guide(out, cfg_scale)

    def guide(self, out: torch.Tensor, cfg_scale: Guidance) -> torch.Tensor:
        """Guided ε in every group of an output (N, 2C) of G row groups; each group keeps its own v.

        ``cfg_scale`` s: two groups [cond; uncond], ε = ε_1 + s·(ε_0 − ε_1). A tuple of G − 1 scales (s_0, …):
        ε = ε_{G−1} + Σ_k s_k·(ε_k − ε_{k+1}), applied from the last group up. With three groups [image and text;
        image only; unconditional] this is InstructPix2Pix's eq. 3 (arXiv 2211.09800), s_0 the text scale and s_1
        the image scale.
        """
        scales = guidance_scales(cfg_scale)
        groups = len(scales) + 1
        eps, v = out[:, : self.in_channels], out[:, self.in_channels :]
        chunks = eps.chunk(groups, dim=0)  # G × (N/G, C)
        eps_guided = chunks[-1]
        for k in reversed(range(groups - 1)):
            eps_guided = eps_guided + scales[k] * (chunks[k] - chunks[k + 1])
        return torch.cat([torch.cat([eps_guided] * groups, dim=0), v], dim=1)  # (N, 2C)


class DiffLoss(nn.Module):
    """The diffusion head: training loss on tokens and the token sampler (reference §7)."""

    def __init__(self, config: DiffLossConfig) -> None:
        super().__init__()
        self.config = config
        self.in_channels = config.target_channels
        self.net = SimpleMLPAdaLN(
            in_channels=config.target_channels,
            width=config.width,
            out_channels=2 * config.target_channels,  # ε̂ and the learned-range value v
            z_channels=config.z_channels,
            depth=config.depth,
            grad_checkpointing=config.grad_checkpointing,
        )
        self.train_diffusion = GaussianDiffusion.cosine(config.num_train_steps, prediction=config.prediction)
        # Respaced sampling chains, one per respacing string; schedule tables are not module state.
        self._sampling_diffusions: dict[str, GaussianDiffusion] = {}
        self.sampling_diffusion(config.num_sampling_steps)

    def initialize_weights(self, generator: torch.Generator | None = None) -> None:
        self.net.initialize_weights(generator)

    def sampling_diffusion(self, num_steps: str | None = None) -> GaussianDiffusion:
        """The cosine chain respaced to ``num_steps`` (default: config.num_sampling_steps), cached per string."""
        key = self.config.num_sampling_steps if num_steps is None else num_steps
        diffusion = self._sampling_diffusions.get(key)
        if diffusion is None:
            diffusion = GaussianDiffusion.cosine(self.config.num_train_steps, key, prediction=self.config.prediction)
            self._sampling_diffusions[key] = diffusion
        return diffusion

    def forward(
        self,
        target: torch.Tensor,
        z: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Masked mean of the per-token loss mse + vb.

        Args:
            target: (N, C) clean tokens x_0; z: (N, D) conditions; mask: (N,) weights (1 = counts) or None.
            generator: source of t ~ Uniform{0..T−1} and of the noise (drawn in that order).
        Returns:
            scalar float32 loss.
        """
        n = target.shape[0]
        t = rng.randint(0, self.train_diffusion.num_timesteps, (n,), generator, device=target.device)
        noise = rng.randn(target.shape, generator, device=target.device)
        terms = self.train_diffusion.training_losses(lambda x_t, ts: self.net(x_t, ts, z), target, t, noise)
        loss = terms["loss"]  # (N,)
        if mask is None:
            return loss.mean()
        mask = mask.to(loss.dtype)
        return (loss * mask).sum() / mask.sum()

    @torch.no_grad()
    def sample(
        self,
        z: torch.Tensor,
        temperature: float = 1.0,
        cfg: Guidance = 1.0,
        generator: torch.Generator | None = None,
        num_steps: str | None = None,
        x0_clip: float | None = None,
        init: torch.Tensor | None = None,
        strength: float = 1.0,
    ) -> torch.Tensor:
        """Sample one token per condition row: the network embeds the condition and the timestep at every step.

        With cfg ≠ 1, z holds 2K rows [conditional; unconditional] and only the conditional chain is propagated:
        each step evaluates the network on [x, x] with z, takes the guided ε̂ and the conditional half's own v,
        and steps the K conditional rows (reference §14 quirk 5: same distribution as the original, which also
        steps a discarded unconditional copy). With a tuple of G − 1 scales, z holds G groups of K rows and the
        chain is evaluated under each (:meth:`SimpleMLPAdaLN.guide`).

        Args:
            z: (N, D) conditions. temperature: scale of the per-step noise. cfg: guidance scale(s).
            generator: source of the initial and per-step noise (device of z).
            num_steps: respacing string overriding config.num_sampling_steps for this call.
            x0_clip: clamp the predicted clean token to [-x0_clip, x0_clip] at every step (None: no clipping, as
                the official sampler).
            init, strength: SDEdit (arXiv 2108.01073): with ``init`` (one (C,) token per sampled row) the chain
                starts from it noised to the chain step ``strength`` of the way up (0 < strength <= 1; 1 with
                ``init`` None is the plain sampler), so the sample keeps what the noise leaves of ``init``.
        Returns:
            (K, C) float32 tokens with cfg ≠ 1 (K = N / G), else (N, C).
        """

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.net(x, t.expand(x.shape[0]), z)  # (rows, 2C)

        return self.sample_with(denoise, z, temperature, cfg, generator, num_steps, x0_clip, init, strength)

    @torch.no_grad()
    def sample_with(
        self,
        denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        z: torch.Tensor,
        temperature: float = 1.0,
        cfg: Guidance = 1.0,
        generator: torch.Generator | None = None,
        num_steps: str | None = None,
        x0_clip: float | None = None,
        init: torch.Tensor | None = None,
        strength: float = 1.0,
    ) -> torch.Tensor:
        """:meth:`sample` with the network evaluated by ``denoise(x, t)``: x (rows, C) float32 states, t (rows,)
        original timesteps -> (rows, 2C), where rows = N (cfg = 1) or GK ([x; …; x] under the G·K conditions of z).

        The chain, the noise and the guidance are this method's; ``denoise`` only runs the network (a faster
        evaluation of the same network, such as :mod:`harmon.accel.head`'s, keeps every sampled number in step).
        """
        diffusion = self.sampling_diffusion(num_steps)
        if cfg == 1.0:
            shape = (z.shape[0], self.in_channels)  # (N, C)
            noise = rng.randn(shape, generator, device=z.device)
            model_fn = denoise
        else:
            groups = len(guidance_scales(cfg)) + 1
            if z.shape[0] % groups:
                raise ValueError(
                    f"sampling with cfg={cfg} needs {groups}K condition rows, one group per guidance branch, "
                    f"got {z.shape[0]}"
                )
            k = z.shape[0] // groups
            shape = (k, self.in_channels)  # (K, C): noise only for the conditional chain
            noise = rng.randn(shape, generator, device=z.device)

            def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                rows = torch.cat([x] * groups, dim=0)  # (GK, C): the conditional chain under every condition
                return self.net.guide(denoise(rows, torch.cat([t] * groups, dim=0)), cfg)[:k]  # (K, 2C)

        start = None
        if init is not None:
            if not 0.0 < strength <= 1.0:
                raise ValueError(f"strength must be in (0, 1], got {strength}")
            if init.shape != noise.shape:
                raise ValueError(
                    f"init must hold one token per sampled row, {tuple(noise.shape)}, got {tuple(init.shape)}"
                )
            start = max(0, round(strength * diffusion.num_timesteps) - 1)
            index = torch.full((noise.shape[0],), start, dtype=torch.long, device=noise.device)
            noise = diffusion.q_sample(init.to(noise.device), index, noise)
        return diffusion.p_sample_loop(
            model_fn, noise, temperature=temperature, generator=generator, x0_clip=x0_clip, start=start
        )
