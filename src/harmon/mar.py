"""MAR encoder/decoder as Harmon uses it (spec §4).

One module holds both ViTs, the learned position tables, the buffer vector and the per-token diffusion head,
under the official parameter names (prefix ``mar.`` in Harmon checkpoints). The encoder sees 64 buffer rows plus
the visible latent tokens; the decoder puts mask tokens back at the unknown positions and produces one condition
vector per image token for the diffusion head.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from harmon import rng
from harmon.diffloss import DiffLoss, DiffLossConfig
from harmon.validate import check_fields

# (blocks, x (B, N, D)) -> x after the blocks: how a stack's blocks run (default: one after the other)
BlockRunner = Callable[[nn.ModuleList, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MARConfig:
    """Sizes of the MAR part. Defaults are MAR-Base as in Harmon-0.5B (spec §2)."""

    token_dim: int = 16  # VAE latent channels x patch_size**2 (patch 1 on the 16-channel KL-16 latent)
    # Latent positions per token side (spec §8, general patchify rule): Harmon uses 1 (one token per 16 px). 2 makes
    # one 4 x 16 = 64-dim token of each 2 x 2 block of latents (32 px), so the diffusion head draws the block at once.
    patch_size: int = 1
    encoder_dim: int = 768  # MAR-Base width; MAR-Huge uses 1280
    encoder_depth: int = 12
    encoder_heads: int = 12  # head dim 64
    decoder_dim: int = 768  # Harmon keeps decoder width = encoder width
    decoder_depth: int = 12
    decoder_heads: int = 12
    mlp_ratio: float = 4.0  # ViT MLP hidden = 4 x width
    buffer_size: int = 64  # "fake_latent" rows prepended to every encoder input
    grid_size: int = 16  # the learned tables hold grid_size**2 image rows (256 px / stride 16)
    attn_dropout: float = 0.1  # training only
    proj_dropout: float = 0.1  # training only
    mask_ratio_min: float = 0.7  # truncated-normal mask ratio lower bound for text-to-image training
    # How the training mask ratio is drawn: "truncnorm" (official: N(1, 0.25) truncated to [min, 1], mostly
    # near-fully masked) or "uniform" (U[min, 1]: every number of visible tokens is trained about equally often,
    # which a 16-token grid needs so that the generator learns to use the tokens it has already drawn).
    mask_ratio_dist: str = "truncnorm"
    diffusion_batch_mul: int = 4  # each token row is replicated 4x for the diffusion loss
    class_num: int = 1000  # unused class embedding kept only so official checkpoints load strictly (0 = none)
    grad_checkpointing: bool = False  # checkpoint ViT blocks during training (set by the trainer)
    # From-scratch init std of the decoder's learned tables (mask token, decoder and diffusion position tables).
    # 0.02 is the official init: a masked row then starts nearly position-blind (its input is ~2 % of a unit-norm
    # row), and a small decoder takes thousands of steps to learn which neighbours to read (docs/world-v2.md).
    # Only a from-scratch init reads it; loaded weights are unaffected.
    decoder_table_std: float = 0.02
    diffloss: DiffLossConfig = field(default_factory=DiffLossConfig)

    def __post_init__(self) -> None:
        if isinstance(self.diffloss, dict):
            object.__setattr__(self, "diffloss", DiffLossConfig.from_dict(self.diffloss))
        check_fields(self)
        for name in (
            "token_dim",
            "patch_size",
            "encoder_dim",
            "encoder_depth",
            "encoder_heads",
            "decoder_dim",
            "decoder_depth",
            "decoder_heads",
            "grid_size",
            "diffusion_batch_mul",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"MARConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.encoder_dim % self.encoder_heads:
            raise ValueError(f"encoder_dim {self.encoder_dim} is not divisible by encoder_heads {self.encoder_heads}")
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(f"decoder_dim {self.decoder_dim} is not divisible by decoder_heads {self.decoder_heads}")
        if not (math.isfinite(self.decoder_table_std) and self.decoder_table_std > 0):
            raise ValueError(
                f"MARConfig.decoder_table_std must be a positive finite number, got {self.decoder_table_std!r}"
            )
        if self.buffer_size < 0 or self.class_num < 0:
            raise ValueError("buffer_size and class_num must be >= 0")
        if not 0.0 <= self.mask_ratio_min <= 1.0:
            raise ValueError(f"mask_ratio_min must lie in [0, 1], got {self.mask_ratio_min}")
        if self.mask_ratio_dist not in ("truncnorm", "uniform"):
            raise ValueError(f"mask_ratio_dist must be 'truncnorm' or 'uniform', got {self.mask_ratio_dist!r}")
        if self.diffloss.z_channels != self.decoder_dim:
            raise ValueError(
                f"diffloss.z_channels ({self.diffloss.z_channels}) must equal decoder_dim ({self.decoder_dim})"
            )
        if self.diffloss.target_channels != self.token_dim:
            raise ValueError(
                f"diffloss.target_channels ({self.diffloss.target_channels}) must equal token_dim ({self.token_dim})"
            )

    @property
    def seq_len(self) -> int:
        return self.grid_size**2

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["diffloss"] = self.diffloss.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MARConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown MARConfig fields: {sorted(unknown)}")
        return cls(**d)


def mar_base(**overrides: Any) -> MARConfig:
    """MAR-Base as in Harmon-0.5B: width 768, 12+12 blocks, DiffLoss MLP 1024 x 6."""
    return MARConfig(**{"diffloss": DiffLossConfig(z_channels=768, width=1024, depth=6), **overrides})


def mar_huge(**overrides: Any) -> MARConfig:
    """MAR-Huge as in Harmon-1.5B: width 1280, 20+20 blocks, 16 heads, DiffLoss MLP 1536 x 12."""
    base = dict(
        encoder_dim=1280,
        encoder_depth=20,
        encoder_heads=16,
        decoder_dim=1280,
        decoder_depth=20,
        decoder_heads=16,
        diffloss=DiffLossConfig(z_channels=1280, width=1536, depth=12),
    )
    return MARConfig(**{**base, **overrides})


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm layout: qkv, proj)."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = rearrange(x, "b h n d -> b n (h d)")  # (B, N, D)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) GELU, as timm's default
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm ViT block (spec §4.1): LayerNorm eps 1e-6, no LayerScale, no drop-path."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn_drop, proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def resize_grid_table(table: torch.Tensor, src_grid: int, h: int, w: int) -> torch.Tensor:
    """Resize a row-major (src_grid**2, D) position table to (h*w, D) by bilinear interpolation (spec §4.3).

    align_corners=False, no antialias; returned unchanged when (h, w) equals the built grid.
    """
    if (h, w) == (src_grid, src_grid):
        return table
    grid = rearrange(table, "(gh gw) d -> 1 d gh gw", gh=src_grid)
    grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
    return rearrange(grid, "1 d h w -> (h w) d")


def resize_pos_embed(table: torch.Tensor, buffer_size: int, src_grid: int, h: int, w: int) -> torch.Tensor:
    """(1, buffer + src_grid**2, D) -> (1, buffer + h*w, D); the buffer rows are kept as they are."""
    buf, img = table[0, :buffer_size], table[0, buffer_size:]
    return torch.cat([buf, resize_grid_table(img, src_grid, h, w)], dim=0).unsqueeze(0)


class MAR(nn.Module):
    """MAR encoder + decoder + diffusion head, with the official parameter names (spec §4.2)."""

    def __init__(self, config: MARConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        n_tab = c.buffer_size + c.seq_len
        # Registration order follows the official state dict.
        self.fake_latent = nn.Parameter(torch.zeros(1, c.encoder_dim))
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, n_tab, c.encoder_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_dim))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, n_tab, c.decoder_dim))
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, c.seq_len, c.decoder_dim))
        self.class_emb = nn.Embedding(c.class_num, c.encoder_dim) if c.class_num else None
        self.z_proj = nn.Linear(c.token_dim, c.encoder_dim)
        self.z_proj_ln = nn.LayerNorm(c.encoder_dim, eps=1e-6)
        self.encoder_blocks = nn.ModuleList(
            Block(c.encoder_dim, c.encoder_heads, c.mlp_ratio, c.attn_dropout, c.proj_dropout)
            for _ in range(c.encoder_depth)
        )
        self.encoder_norm = nn.LayerNorm(c.encoder_dim, eps=1e-6)
        self.decoder_embed = nn.Linear(c.encoder_dim, c.decoder_dim)
        self.decoder_blocks = nn.ModuleList(
            Block(c.decoder_dim, c.decoder_heads, c.mlp_ratio, c.attn_dropout, c.proj_dropout)
            for _ in range(c.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(c.decoder_dim, eps=1e-6)
        self.diffloss = DiffLoss(c.diffloss)
        self.grad_checkpointing = c.grad_checkpointing

    # ------------------------------------------------------------------ init
    def initialize_weights(self, generator: torch.Generator | None = None) -> None:
        """From-scratch init (spec §4.2): xavier-uniform Linear weights, zero biases, N(0, 0.02^2) tables (the
        decoder's at ``config.decoder_table_std``)."""
        dec = self.config.decoder_table_std
        for p, std in (
            (self.fake_latent, 0.02),
            (self.encoder_pos_embed_learned, 0.02),
            (self.mask_token, dec),
            (self.decoder_pos_embed_learned, dec),
            (self.diffusion_pos_embed_learned, dec),
        ):
            with torch.no_grad():
                p.copy_(rng.randn(p.shape, generator, device=p.device) * std)
        if self.class_emb is not None:
            w = self.class_emb.weight
            with torch.no_grad():
                w.copy_(rng.randn(w.shape, generator, device=w.device) * 0.02)
        for name, m in self.named_modules():
            if name.startswith("diffloss"):
                continue
            if isinstance(m, nn.Linear):
                _xavier_uniform_(m.weight, generator)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.diffloss.net.initialize_weights(generator=generator)

    # ------------------------------------------------------------------ tables
    def encoder_pos_embed(self, h: int, w: int) -> torch.Tensor:
        """(1, buffer + h*w, D_enc)"""
        return resize_pos_embed(self.encoder_pos_embed_learned, self.config.buffer_size, self.config.grid_size, h, w)

    def decoder_pos_embed(self, h: int, w: int) -> torch.Tensor:
        """(1, buffer + h*w, D_dec)"""
        return resize_pos_embed(self.decoder_pos_embed_learned, self.config.buffer_size, self.config.grid_size, h, w)

    def diffusion_pos_embed(self, h: int, w: int) -> torch.Tensor:
        """(1, h*w, D_dec)"""
        return resize_grid_table(self.diffusion_pos_embed_learned[0], self.config.grid_size, h, w).unsqueeze(0)

    def _run_blocks(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    # ------------------------------------------------------------------ forward pieces
    def forward_encoder(
        self, tokens: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int], run_blocks: BlockRunner | None = None
    ) -> torch.Tensor:
        """Encode buffers + visible tokens (spec §4.4); ``run_blocks(blocks, x)`` runs the blocks in place of
        :meth:`_run_blocks` (a token cache, :mod:`harmon.tokencache`).

        Args:
            tokens: (B, L, token_dim) latent tokens in raster order, L = h*w.
            mask: (B, L) bool, True = unknown (dropped). Every row must keep the same number V of visible tokens.
            grid: (h, w) of the token grid.
        Returns:
            (B, buffer + V, D_enc), buffers first.
        """
        b, seq, _ = tokens.shape
        h, w = grid
        if seq != h * w:
            raise ValueError(f"tokens hold {seq} positions but grid {h}x{w} needs {h * w}")
        mask = mask.bool()
        n_visible = (~mask).sum(dim=1)
        if b and not bool((n_visible == n_visible[0]).all()):
            raise ValueError(f"every row must keep the same number of visible tokens, got {n_visible.tolist()}")
        nb = self.config.buffer_size
        x = self.embed_tokens(tokens, grid)  # (B, 64+L, D)
        keep = torch.cat([mask.new_ones(b, nb), ~mask], dim=1)  # (B, 64+L)
        x = x[keep].reshape(b, -1, x.shape[-1])  # (B, 64+V, D), order preserved
        x = (run_blocks or self._run_blocks)(self.encoder_blocks, x)
        return self.encoder_norm(x)

    def embed_tokens(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The encoder's input rows of every position: buffers then tokens (B, L, token_dim), each projected, with
        its place, normed: (B, buffer + L, D_enc)."""
        x = self.z_proj(tokens.to(self.z_proj.weight.dtype))  # (B, L, D)
        buffers = self.fake_latent.to(x.dtype).unsqueeze(0).expand(x.shape[0], self.config.buffer_size, -1)
        return self.z_proj_ln(torch.cat([buffers, x], dim=1) + self.encoder_pos_embed(*grid))

    def forward_decoder(
        self,
        x_enc: torch.Tensor,
        mask: torch.Tensor,
        grid: tuple[int, int],
        x_con: torch.Tensor | None = None,
        x_con_rows: torch.Tensor | None = None,
        run_blocks: BlockRunner | None = None,
    ) -> torch.Tensor:
        """Decode to one diffusion condition per image token (spec §4.5).

        Args:
            x_enc: (B, buffer + V, D_enc), in Harmon already refined by the LLM.
            mask: (B, L) bool, True = unknown.
            grid: (h, w).
            x_con: optional (B, buffer + L, D_enc) background embedded in place of the mask token.
            x_con_rows: optional (B,) bool with ``x_con``: the rows that take it; the others keep the mask token.
            run_blocks: runs the blocks in place of :meth:`_run_blocks`, as in :meth:`forward_encoder`.
        Returns:
            (B, L, D_dec).
        """
        b = x_enc.shape[0]
        h, w = grid
        nb = self.config.buffer_size
        x = self.decoder_embed(x_enc)  # (B, 64+V, Dd)
        keep = torch.cat([mask.new_ones(b, nb, dtype=torch.bool), ~mask.bool()], dim=1)  # (B, 64+L)
        canvas = self.mask_token.to(x.dtype).expand(b, keep.shape[1], -1).clone()  # (B, 64+L, Dd)
        if x_con is not None:
            if x_con.shape[:2] != canvas.shape[:2]:
                b_, n_ = canvas.shape[:2]
                raise ValueError(f"x_con must be (B, buffer + L, D) = ({b_}, {n_}, D), got {tuple(x_con.shape)}")
            background = self.decoder_embed(x_con).to(x.dtype)
            canvas = background if x_con_rows is None else torch.where(x_con_rows.view(b, 1, 1), background, canvas)
        canvas[keep] = x.reshape(-1, x.shape[-1])
        x = canvas + self.decoder_pos_embed(h, w)
        x = (run_blocks or self._run_blocks)(self.decoder_blocks, x)
        x = self.decoder_norm(x)
        return x[:, nb:] + self.diffusion_pos_embed(h, w)  # (B, L, Dd)

    def forward_loss(
        self, z: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Diffusion loss over masked tokens, rows replicated ``diffusion_batch_mul`` times (spec §11.2).

        Args:
            z: (B, L, D_dec) decoder output; target: (B, L, token_dim); mask: (B, L) bool, True = counts.
        """
        mul = self.config.diffusion_batch_mul
        z = rearrange(z, "b l d -> (b l) d").repeat(mul, 1)
        target = rearrange(target, "b l c -> (b l) c").repeat(mul, 1)
        mask = rearrange(mask.float(), "b l -> (b l)").repeat(mul)
        return self.diffloss(target, z, mask, generator=generator)


def _xavier_uniform_(weight: torch.Tensor, generator: torch.Generator | None) -> None:
    fan_out, fan_in = weight.shape
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        weight.copy_(rng.rand(weight.shape, generator, device=weight.device) * 2 * bound - bound)


def truncated_normal_mask_ratio(
    min_ratio: float, std: float = 0.25, mean: float = 1.0, generator: torch.Generator | None = None
) -> float:
    """One mask ratio ~ N(mean, std) truncated to [min_ratio, 1] (spec §4.6), by inverse-CDF sampling.

    Same distribution as scipy's ``truncnorm(a=(min-1)/std, b=0, loc=1, scale=std)``; drawn from ``generator``.
    """
    a = torch.tensor((min_ratio - mean) / std, dtype=torch.float64)
    b = torch.tensor((1.0 - mean) / std, dtype=torch.float64)
    lo, hi = torch.special.ndtr(a), torch.special.ndtr(b)
    u = lo + (hi - lo) * rng.rand((), generator, dtype=torch.float64)
    ratio = mean + std * float(torch.special.ndtri(u))
    return min(max(ratio, min_ratio), 1.0)


def uniform_mask_ratio(min_ratio: float, generator: torch.Generator | None = None) -> float:
    """One mask ratio ~ U[min_ratio, 1], drawn from ``generator``."""
    return min_ratio + (1.0 - min_ratio) * float(rng.rand((), generator, dtype=torch.float64))


def mask_by_order(num_masked: int, orders: torch.Tensor) -> torch.Tensor:
    """Mask the first ``num_masked`` positions of each row's order (spec §9.2 step 5).

    Args:
        orders: (B, L) permutations of 0..L-1.
    Returns:
        (B, L) bool, True = still unknown.
    """
    mask = torch.zeros(orders.shape, dtype=torch.bool, device=orders.device)
    return mask.scatter(1, orders[:, :num_masked], True)


def next_mask_len(step: int, num_iter: int, seq_len: int, num_masked_now: int) -> int:
    """Cosine schedule of unknown tokens after ``step`` (spec §9.2 step 4), counted in integers.

    n = floor(L * cos(pi/2 * (step+1)/num_iter)), clamped to [1, num_masked_now - 1] so every step reveals at
    least one token; the last step reveals everything that is left regardless.
    """
    n = math.floor(seq_len * math.cos(math.pi / 2.0 * (step + 1) / num_iter))
    return max(1, min(num_masked_now - 1, n))


def checkerboard(grid: tuple[int, int], device: torch.device | str | None = None) -> torch.Tensor:
    """(L,) bool over the token grid, True on the structure half of GtR: the cells with (row + column) even."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    return ((rows + cols) % 2 == 0).flatten().to(device)


def structure_first_orders(
    batch: int, grid: tuple[int, int], generator: torch.Generator | None, device: torch.device | str | None = None
) -> torch.Tensor:
    """(B, L) orders for GtR: each row a random order of the detail cells, then of the structure cells. The
    cells at the start of an order stay unknown longest (:func:`harmon.mar.mask_by_order`), so the structure cells
    are revealed first."""
    structure = checkerboard(grid, device)
    cells = torch.arange(structure.numel(), device=device)
    parts = (cells[~structure], cells[structure])
    return torch.stack(
        [torch.cat([p[rng.randperm(p.numel(), generator, device=device)] for p in parts]) for _ in range(batch)]
    )
