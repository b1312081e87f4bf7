"""Simple connectors with the fusion interface, for ablations against the Q-Former.

Each takes the encoder's `vrp.models.contracts.TokenLayout` first (the reasoner's fusion factory supplies it) and maps
visual tokens (B, T, N, D) with ``frame_mask`` (B, T) to (B, Q, output_dim) behind the `vrp.models.contracts.Fusion`
contract; none reads text or tracks (`vrp.models.contracts.check_input` refuses them). The pooling connectors
compose one `TokenPool` each (none subclasses another), configured by their one typed argument ``pool: PoolOptions``
(``temporal_bins``, ``spatial_size``; a nested mapping in YAML: ``init_args: {pool: {temporal_bins: 4, spatial_size:
[2, 2]}}``). ``Q`` never depends on the number of frames: the pooling connectors average real frames into
``temporal_bins`` ordered bins and patches into a ``spatial_size`` grid.

- ``PoolingConnector``: parameter-free spatial/temporal average pooling (spatial: ``spatial_size=(1, 1)``;
  temporal: ``temporal_bins=1``, ``spatial_size=grid``). With the reasoner's projection it is the LLaVA-1 linear one.
- ``LinearConnector``: pooling + one linear layer.
- ``MLPConnector``: pooling + 2-layer GELU MLP (LLaVA-1.5).
- ``PerceiverResampler``: learned latents cross-attending to all tokens of all real frames (Flamingo).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vrp.models.contracts import FusionInput, TokenLayout, check_input


def pool_tokens(
    patches: torch.Tensor,
    frame_mask: torch.Tensor,
    grid: tuple[int, int],
    temporal_bins: int,
    spatial_size: tuple[int, int],
) -> torch.Tensor:
    """Patch tokens (B, T, gh * gw, D) -> (B, temporal_bins * sh * sw, D): averaged over real frames and space."""
    B, T, _, D = patches.shape
    gh, gw = grid
    patches = patches.reshape(B * T, gh, gw, D).permute(0, 3, 1, 2)  # (B*T, D, gh, gw)
    patches = F.adaptive_avg_pool2d(patches, spatial_size)  # (B*T, D, sh, sw)
    patches = patches.flatten(2).transpose(1, 2).unflatten(0, (B, T))  # (B, T, S, D)
    # Adaptive temporal bins over the real frames of each clip: bin s covers real-frame ranks [floor(s*n/K), ceil((s+1)*n/K)).
    mask = frame_mask.to(torch.bool)
    rank = mask.long().cumsum(1) - 1  # (B, T)
    n = mask.sum(1, keepdim=True).clamp(min=1)  # (B, 1)
    s = torch.arange(temporal_bins, device=patches.device)
    start = (s[None] * n) // temporal_bins  # (B, K)
    end = -((-(s[None] + 1) * n) // temporal_bins)  # ceil
    weight = (rank[:, None] >= start[..., None]) & (rank[:, None] < end[..., None]) & mask[:, None]  # (B, K, T)
    weight = weight.to(patches.dtype)
    weight = weight / weight.sum(-1, keepdim=True).clamp(min=1)
    pooled = torch.einsum("bkt,btsd->bksd", weight, patches)  # (B, K, S, D)
    return pooled.flatten(1, 2)


@dataclass(frozen=True)
class PoolOptions:
    """How the pooling connectors pool (their ``pool`` argument): real frames averaged into ``temporal_bins``
    ordered bins, patches into a ``spatial_size`` grid; ``temporal_bins * prod(spatial_size)`` tokens."""

    temporal_bins: int = 4
    spatial_size: tuple[int, int] = (2, 2)


class TokenPool(nn.Module):
    """The pooling step the pooling connectors compose (no parameters): `pool_tokens` with fixed layout and bins."""

    def __init__(self, layout: TokenLayout, options: PoolOptions):
        super().__init__()
        self.layout = layout
        self.temporal_bins, self.spatial_size = options.temporal_bins, tuple(options.spatial_size)
        self.num_tokens = self.temporal_bins * self.spatial_size[0] * self.spatial_size[1]

    def forward(self, inputs: FusionInput) -> torch.Tensor:
        patches = self.layout.patches(inputs.visual)
        return pool_tokens(
            patches, inputs.frames(), self.layout.grid, self.temporal_bins, self.spatial_size
        )  # (B, Q, D)


class PoolingConnector(nn.Module):
    """Average pooling to ``temporal_bins * prod(spatial_size)`` tokens of the encoder's width; no parameters."""

    supports_text = False

    def __init__(self, layout: TokenLayout, *, pool: PoolOptions = PoolOptions()):
        super().__init__()
        self.pool = TokenPool(layout, pool)
        self.num_output_tokens, self.output_dim, self.hidden_size = self.pool.num_tokens, layout.width, layout.width

    def forward(self, inputs: FusionInput) -> torch.Tensor:
        check_input(self, inputs)
        return self.pool(inputs)


class LinearConnector(nn.Module):
    """Pooled tokens through one linear layer to ``output_dim`` (default: the encoder's width)."""

    supports_text = False

    def __init__(self, layout: TokenLayout, *, pool: PoolOptions = PoolOptions(), output_dim: int | None = None):
        super().__init__()
        self.pool = TokenPool(layout, pool)
        self.num_output_tokens, self.output_dim = self.pool.num_tokens, output_dim or layout.width
        self.hidden_size = self.output_dim
        self.proj = nn.Linear(layout.width, self.output_dim)

    def forward(self, inputs: FusionInput) -> torch.Tensor:
        check_input(self, inputs)
        return self.proj(self.pool(inputs))  # (B, Q, output_dim)


class MLPConnector(nn.Module):
    """Pooled tokens through Linear -> GELU -> Linear (LLaVA-1.5's projector); widths default to the encoder's."""

    supports_text = False

    def __init__(
        self,
        layout: TokenLayout,
        *,
        pool: PoolOptions = PoolOptions(),
        hidden_dim: int | None = None,
        output_dim: int | None = None,
    ):
        super().__init__()
        self.pool = TokenPool(layout, pool)
        width = layout.width
        hidden_dim, self.output_dim = hidden_dim or width, output_dim or width
        self.num_output_tokens, self.hidden_size = self.pool.num_tokens, self.output_dim
        self.mlp = nn.Sequential(nn.Linear(width, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, self.output_dim))

    def forward(self, inputs: FusionInput) -> torch.Tensor:
        check_input(self, inputs)
        return self.mlp(self.pool(inputs))  # (B, Q, output_dim)


class PerceiverLayer(nn.Module):
    """Latents attend to [tokens; latents] (Flamingo), then a feed-forward; pre-norm residuals."""

    def __init__(self, dim: int, num_heads: int, ff_mult: int):
        super().__init__()
        self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.ff = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim)
        )

    def forward(self, latents: torch.Tensor, media: torch.Tensor, media_mask: torch.Tensor) -> torch.Tensor:
        q = self.norm_latents(latents)  # (B, Q, D)
        kv = torch.cat([self.norm_media(media), q], dim=1)  # (B, M + Q, D)
        keep = torch.cat([media_mask, media_mask.new_ones(q.shape[:2])], dim=1)  # (B, M + Q)
        latents = latents + self.attn(q, kv, kv, key_padding_mask=~keep, need_weights=False)[0]
        return latents + self.ff(latents)


class PerceiverResampler(nn.Module):
    """``num_latents`` learned queries resample all tokens of all real frames (frame embeddings mark time)."""

    supports_text = False

    def __init__(
        self,
        layout: TokenLayout,
        *,
        num_latents: int = 32,
        depth: int = 2,
        num_heads: int = 8,
        ff_mult: int = 4,
        max_frames: int = 64,
        output_dim: int | None = None,
    ):
        super().__init__()
        vision_width = layout.width
        if vision_width % num_heads:
            raise ValueError(f"the encoder's width {vision_width} is not divisible by num_heads={num_heads}")
        self.max_frames, self.num_output_tokens = max_frames, num_latents
        self.output_dim = self.hidden_size = output_dim or vision_width
        self.latents = nn.Parameter(torch.randn(num_latents, vision_width) * 0.02)
        self.frame_embed = nn.Parameter(torch.zeros(max_frames, vision_width))
        self.layers = nn.ModuleList(PerceiverLayer(vision_width, num_heads, ff_mult) for _ in range(depth))
        self.norm = nn.LayerNorm(vision_width)
        self.proj = nn.Linear(vision_width, self.output_dim) if self.output_dim != vision_width else nn.Identity()

    def forward(self, inputs: FusionInput) -> torch.Tensor:
        check_input(self, inputs)
        visual = inputs.visual
        B, T, N, D = visual.shape
        if T > self.max_frames:
            raise ValueError(f"{T} frames exceed max_frames={self.max_frames}; raise max_frames in the config")
        media = (visual + self.frame_embed[:T, None]).reshape(B, T * N, D)  # (B, T*N, D)
        media_mask = inputs.frames()[:, :, None].expand(B, T, N).reshape(B, T * N)
        latents = self.latents.expand(B, -1, -1)  # (B, Q, D)
        for layer in self.layers:
            latents = layer(latents, media, media_mask)
        return self.proj(self.norm(latents))  # (B, Q, output_dim)
