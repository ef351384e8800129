"""KL-16 VAE: the frozen LDM-style AutoencoderKL that Harmon (via MAR) uses to turn pixels into latent tokens.

Reference: harmon-architecture.md §8 (architecture) and §12.2 (`kl16.ckpt`). Submodule names follow the official
state dict exactly (`encoder.*`, `decoder.*`, `quant_conv`, `post_quant_conv`), so the released weights load with
`load_state_dict(sd, strict=True)` and no renaming.

Data flow (default config, 256x256 input):
    pixels (B, 3, 256, 256) in [-1, 1]
      -> encoder -> quant_conv -> mean, logvar (B, 16, 16, 16)
      -> mode (or sample) x scale_factor -> latents (B, 16, 16, 16)   # what MAR sees
    latents / scale_factor -> post_quant_conv -> decoder -> pixels (B, 3, 256, 256)

Deliberate differences from the official code: `decode_latents` never divides the caller's tensor in place
(§14 item 9), nothing is printed at construction (§14 item 24), and random sampling takes a `torch.Generator`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from harmon import rng
from harmon.validate import check_fields

__all__ = [
    "AttnBlock",
    "AutoencoderKL",
    "Decoder",
    "Downsample",
    "Encoder",
    "ResnetBlock",
    "Upsample",
    "VAEConfig",
    "vae_loss",
]

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # official posterior clamp: keeps exp(logvar) finite in fp32
NORM_EPS = 1e-6  # LDM GroupNorm epsilon (not PyTorch's 1e-5 default)


@dataclass(frozen=True)
class VAEConfig:
    """Hyper-parameters of the KL VAE. Defaults are the released MAR/Harmon `kl16.ckpt` model."""

    in_channels: int = 3  # RGB input
    out_channels: int = 3  # RGB reconstruction
    ch: int = 128  # base width; level i has ch * ch_mult[i] channels
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # 5 levels -> 4 downsamples -> stride 16 ("KL-16")
    num_res_blocks: int = 2  # res-blocks per encoder level (the decoder uses one more per level)
    attn_resolutions: tuple[int, ...] = (16,)  # encoder levels whose built resolution is listed get attention
    resolution: int = 256  # built resolution: only decides attention placement; any multiple of stride runs
    z_channels: int = 16  # encoder output is 2 * z_channels (mean and log-variance)
    embed_dim: int = 16  # latent channels after quant_conv: the token dim MAR sees
    dropout: float = 0.0  # inside res-blocks; 0 in the released model
    norm_groups: int = 32  # GroupNorm groups; every level width must be divisible by it
    scale_factor: float = 0.2325  # latents are multiplied by this so MAR sees roughly unit variance

    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON) but store tuples so the config stays hashable and immutable.
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        check_fields(self)
        for name in (
            "in_channels",
            "out_channels",
            "ch",
            "num_res_blocks",
            "resolution",
            "z_channels",
            "embed_dim",
            "norm_groups",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"VAEConfig.{name} must be a positive int, got {value!r}")
        if len(self.ch_mult) == 0 or any(not isinstance(m, int) or m < 1 for m in self.ch_mult):
            raise ValueError(f"VAEConfig.ch_mult must be a non-empty tuple of positive ints, got {self.ch_mult!r}")
        for m in self.ch_mult:
            if (self.ch * m) % self.norm_groups != 0:
                raise ValueError(
                    f"level width ch * mult = {self.ch} * {m} = {self.ch * m} is not divisible by "
                    f"norm_groups = {self.norm_groups}"
                )
        if self.resolution % self.stride != 0:
            raise ValueError(f"VAEConfig.resolution = {self.resolution} is not a multiple of stride {self.stride}")
        level_resolutions = self.level_resolutions
        for r in self.attn_resolutions:
            if r not in level_resolutions:
                raise ValueError(
                    f"attn_resolutions entry {r!r} matches no encoder level; level resolutions for "
                    f"resolution {self.resolution} are {level_resolutions}"
                )
        if not (0.0 <= self.dropout < 1.0):
            raise ValueError(f"VAEConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not (math.isfinite(self.scale_factor) and self.scale_factor > 0):
            raise ValueError(f"VAEConfig.scale_factor must be a positive finite number, got {self.scale_factor!r}")

    @property
    def stride(self) -> int:
        """Spatial down-sampling factor of the encoder: one halving after every level but the last."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def level_resolutions(self) -> tuple[int, ...]:
        """Resolution of each encoder level when the model is run at the built `resolution`."""
        return tuple(self.resolution // 2**i for i in range(len(self.ch_mult)))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable); tuples become lists in JSON and come back as tuples via from_dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VAEConfig:
        """Inverse of `to_dict`; unknown keys raise ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown VAEConfig keys: {unknown}")
        return cls(**d)


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=NORM_EPS, affine=True)


class ResnetBlock(nn.Module):
    """GN -> swish -> conv3x3 -> GN -> swish -> dropout -> conv3x3, plus a shortcut (1x1 `nin_shortcut` only when
    the width changes). No timestep input: the VAE is unconditional, so there is no `temb_proj`."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, norm_groups: int = 32) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = _group_norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = _group_norm(out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.nin_shortcut: nn.Conv2d | None = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, H, W) -> (B, C_out, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)  # (B, C_out, H, W)
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with 1x1-conv projections and a residual add."""

    def __init__(self, channels: int, norm_groups: int = 32) -> None:
        super().__init__()
        self.norm = _group_norm(channels, norm_groups)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        _, c, height, width = x.shape
        h = self.norm(x)
        # One head whose dim is the full channel count, hence the c^-0.5 scale.
        q, k, v = (rearrange(proj(h), "b c h w -> b 1 (h w) c") for proj in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v, scale=c**-0.5)  # (B, 1, H*W, C)
        h = rearrange(h, "b 1 (h w) c -> b c h w", h=height, w=width)  # (B, C, H, W)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Halve H and W: zero-pad right and bottom by one, then a 3x3 stride-2 conv without padding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) with even H, W -> (B, C, H/2, W/2)."""
        x = F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0)  # (B, C, H+1, W+1): (left, right, top, bottom)
        return self.conv(x)  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour x2, then a 3x3 conv (padding 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, 2H, 2W)."""
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
        return self.conv(x)


class _MidBlock(nn.Module):
    """res-block -> attention -> res-block at the lowest resolution (names `block_1`, `attn_1`, `block_2`)."""

    def __init__(self, channels: int, dropout: float, norm_groups: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, norm_groups)
        self.attn_1 = AttnBlock(channels, norm_groups)
        self.block_2 = ResnetBlock(channels, channels, dropout, norm_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One encoder (`down.i`) or decoder (`up.i`) level: res-blocks, optional attention after each, and an
    optional resampler registered as `downsample` or `upsample`."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()  # empty where the level has no attention (then it adds no state-dict keys)


class Encoder(nn.Module):
    """pixels (B, in_channels, H, W) -> moments (B, 2*z_channels, H/stride, W/stride)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, kernel_size=3, stride=1, padding=1)
        self.down = nn.ModuleList()
        block_in = cfg.ch
        for i, (width, level_res) in enumerate(zip(widths, cfg.level_resolutions)):
            level = _Level()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(block_in, width, cfg.dropout, cfg.norm_groups))
                block_in = width
                if level_res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(width, cfg.norm_groups))
            if i != len(widths) - 1:
                level.downsample = Downsample(width)
            self.down.append(level)
        self.mid = _MidBlock(block_in, cfg.dropout, cfg.norm_groups)
        self.norm_out = _group_norm(block_in, cfg.norm_groups)
        self.conv_out = nn.Conv2d(block_in, 2 * cfg.z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, ch, H, W)
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(h)  # (B, ch*ch_mult[i], H_i, W_i)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)  # (B, ch*ch_mult[i], H_i/2, W_i/2)
        h = self.mid(h)  # (B, ch*ch_mult[-1], H/stride, W/stride)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 2*z_channels, H/stride, W/stride)


class Decoder(nn.Module):
    """z (B, z_channels, h, w) -> pixels (B, out_channels, h*stride, w*stride). No attention in the up levels
    (only in `mid`), matching the official keys; `up` is indexed by level, and `up[-1]` runs first."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        block_in = widths[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = _MidBlock(block_in, cfg.dropout, cfg.norm_groups)
        levels: list[_Level] = []
        for i in reversed(range(len(widths))):
            level = _Level()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, widths[i], cfg.dropout, cfg.norm_groups))
                block_in = widths[i]
            if i != 0:
                level.upsample = Upsample(block_in)
            levels.append(level)
        self.up = nn.ModuleList(reversed(levels))  # up[i] is level i, as in the official state dict
        self.norm_out = _group_norm(block_in, cfg.norm_groups)
        self.conv_out = nn.Conv2d(block_in, cfg.out_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)  # (B, ch*ch_mult[-1], h, w)
        h = self.mid(h)
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)  # (B, ch*ch_mult[i], H_i, W_i)
            if hasattr(level, "upsample"):
                h = level.upsample(h)  # (B, ch*ch_mult[i], 2*H_i, 2*W_i)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, out_channels, h*stride, w*stride); no output activation


class AutoencoderKL(nn.Module):
    """KL-regularised autoencoder. Harmon uses it frozen: `encode_latents` for images in, `decode_latents` out."""

    def __init__(self, cfg: VAEConfig | None = None) -> None:
        super().__init__()
        self.config = cfg if cfg is not None else VAEConfig()
        c = self.config
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quant_conv = nn.Conv2d(2 * c.z_channels, 2 * c.embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(c.embed_dim, c.z_channels, kernel_size=1)

    @property
    def stride(self) -> int:
        return self.config.stride

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        if pixels.ndim != 4:
            raise ValueError(f"pixels must be (B, C, H, W), got shape {tuple(pixels.shape)}")
        _, c, height, width = pixels.shape
        if c != self.config.in_channels:
            raise ValueError(f"pixels have {c} channels, expected in_channels = {self.config.in_channels}")
        if height % self.stride != 0 or width % self.stride != 0:
            raise ValueError(f"image size {height}x{width} (HxW) is not a multiple of the VAE stride {self.stride}")

    def _check_latents(self, z: torch.Tensor) -> None:
        if z.ndim != 4 or z.shape[1] != self.config.embed_dim:
            raise ValueError(
                f"latents must be (B, embed_dim={self.config.embed_dim}, h, w), got shape {tuple(z.shape)}"
            )

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters of q(z | x).

        Args:
            pixels: (B, in_channels, H, W), values in [-1, 1]; H and W multiples of `stride`.
        Returns:
            mean, logvar: each (B, embed_dim, H/stride, W/stride); logvar clamped to [-30, 20].
        """
        self._check_pixels(pixels)
        moments = self.quant_conv(self.encoder(pixels))  # (B, 2*embed_dim, H/stride, W/stride)
        mean, logvar = moments.chunk(2, dim=1)  # each (B, embed_dim, H/stride, W/stride)
        return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    @staticmethod
    def sample_posterior(
        mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) drawn from `generator` (global RNG if None).

        Args:
            mean, logvar: (B, embed_dim, h, w).
        Returns:
            z: (B, embed_dim, h, w), unscaled.
        """
        eps = rng.randn(mean.shape, generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decode unscaled latents.

        Args:
            z: (B, embed_dim, h, w), posterior space (not multiplied by scale_factor).
        Returns:
            pixels: (B, out_channels, h*stride, w*stride), approximately in [-1, 1].
        """
        self._check_latents(z)
        z = self.post_quant_conv(z)  # (B, z_channels, h, w)
        return self.decoder(z)  # (B, out_channels, h*stride, w*stride)

    def encode_latents(
        self, pixels: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Pixels -> the scaled latents MAR works with (Harmon uses the posterior mode, §8).

        Args:
            pixels: (B, in_channels, H, W) in [-1, 1].
            sample: if True, draw z from the posterior (older Harmon revision) instead of taking the mean.
            generator: RNG for the sample; ignored when sample is False.
        Returns:
            latents: (B, embed_dim, H/stride, W/stride) = z * scale_factor.
        """
        mean, logvar = self.encode(pixels)
        z = self.sample_posterior(mean, logvar, generator) if sample else mean
        return z * self.config.scale_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> pixels. The caller's tensor is left untouched (the official code divides in place).

        Args:
            latents: (B, embed_dim, h, w), as returned by `encode_latents`.
        Returns:
            pixels: (B, out_channels, h*stride, w*stride), approximately in [-1, 1].
        """
        return self.decode(latents / self.config.scale_factor)  # out-of-place division

    def forward(
        self, pixels: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: encode, sample the posterior, decode (no scale_factor involved).

        Args:
            pixels: (B, in_channels, H, W) in [-1, 1].
            generator: RNG for the posterior sample.
        Returns:
            reconstruction (B, out_channels, H, W), mean and logvar (B, embed_dim, H/stride, W/stride).
        """
        mean, logvar = self.encode(pixels)
        z = self.sample_posterior(mean, logvar, generator)  # (B, embed_dim, H/stride, W/stride)
        return self.decode(z), mean, logvar


def vae_loss(
    reconstruction: torch.Tensor,
    pixels: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    kl_weight: float = 1e-6,
) -> dict[str, torch.Tensor]:
    """Loss for training a small VAE from scratch (no perceptual or adversarial term; the released KL-16 model
    was trained with LPIPS + a GAN, which this library does not reproduce).

    rec = mean |x_hat - x| + mean (x_hat - x)^2: L1 for sharpness plus MSE for a smooth gradient near zero.
    kl  = mean over all latent elements of KL(N(mean, exp(logvar)) || N(0, 1))
        = 0.5 * (mean^2 + exp(logvar) - 1 - logvar), averaged (not summed, unlike LDM), so kl_weight does not
          depend on latent size.
    loss = rec + kl_weight * kl.

    Args:
        reconstruction, pixels: (B, C, H, W).
        mean, logvar: (B, embed_dim, h, w).
    Returns:
        dict with scalar tensors 'loss', 'rec', 'kl'.
    """
    if reconstruction.shape != pixels.shape:
        raise ValueError(f"reconstruction shape {tuple(reconstruction.shape)} != pixels shape {tuple(pixels.shape)}")
    diff = reconstruction - pixels
    rec = diff.abs().mean() + diff.pow(2).mean()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    return {"loss": rec + kl_weight * kl, "rec": rec, "kl": kl}
