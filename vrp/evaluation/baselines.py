"""Baselines trained and evaluated in the same harness as the model, chosen by config overlay.

- `BlindFusion`: no visual information at all; Q learned tokens that ignore the video (the LLM still gets the same
  prompt layout, so the only difference to the model is what the video adds).
- `MiddleFrame`: wraps any fusion and feeds it only the middle real frame of each clip (what motion adds).
- The linear / MLP connectors of `vrp.models.connectors` are the third baseline (what the Q-Former adds).

Each takes the encoder's `vrp.models.contracts.TokenLayout` first, like every fusion module (the reasoner builds it),
and meets the `vrp.models.contracts.Fusion` contract; `MiddleFrame` reads tracks (and text) exactly when the fusion it
wraps does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from vrp.models.contracts import Fusion, FusionInput, TextFusion, TokenLayout, TrackReader, check_input


class BlindFusion(nn.Module):
    """``num_output_tokens`` learned tokens of width ``output_dim``, independent of the input (a soft prompt)."""

    supports_text = False

    def __init__(self, layout: TokenLayout, *, num_output_tokens: int = 4, output_dim: int = 128) -> None:
        super().__init__()
        self.num_output_tokens, self.output_dim, self.hidden_size = num_output_tokens, output_dim, output_dim
        self.tokens = nn.Parameter(torch.randn(num_output_tokens, output_dim) * 0.02)

    def forward(self, inputs: FusionInput) -> torch.Tensor:
        check_input(self, inputs)
        return self.tokens.expand(inputs.visual.shape[0], -1, -1)  # (B, Q, output_dim)


class MiddleFrame(nn.Module):
    """Runs ``fusion`` (a factory like the reasoner's) on the middle real frame only: (B, T, N, D) -> (B, 1, N, D)."""

    def __init__(self, layout: TokenLayout, *, fusion: Callable[[TokenLayout], nn.Module]) -> None:
        super().__init__()
        self.inner = fusion(layout)
        if not isinstance(self.inner, Fusion):
            raise TypeError(
                f"MiddleFrame wraps a fusion (vrp.models.contracts.Fusion); got {type(self.inner).__name__}"
            )
        self.output_dim, self.num_output_tokens = self.inner.output_dim, self.inner.num_output_tokens
        self.hidden_size = self.inner.hidden_size if isinstance(self.inner, TextFusion) else self.output_dim
        self.supports_text = self.inner.supports_text
        if isinstance(self.inner, TrackReader):  # a track reader exactly when the wrapped fusion is one
            self.box_substeps, self.requires_tracks = self.inner.box_substeps, self.inner.requires_tracks

    @staticmethod
    def middle_index(frame_mask: torch.Tensor) -> torch.Tensor:
        """Index (B,) of the middle real frame of each clip (real frames come first; padding follows)."""
        return (frame_mask.long().sum(1) - 1).clamp_min(0) // 2

    def forward(self, inputs: FusionInput) -> torch.Tensor:
        check_input(self, inputs)
        B = inputs.visual.shape[0]
        idx = self.middle_index(inputs.frames())
        rows = torch.arange(B, device=inputs.visual.device)
        tracks = inputs.tracks
        if tracks is not None:  # the middle frame's box rows (B, S, K, 4)

            def rows_of(x: torch.Tensor | None) -> torch.Tensor | None:
                return None if x is None else x.unflatten(1, (-1, self.box_substeps))[rows, idx]

            tracks = dataclasses.replace(tracks, boxes=rows_of(tracks.boxes), mask=rows_of(tracks.mask))
        mask = torch.ones(B, 1, dtype=torch.bool, device=inputs.visual.device)
        return self.inner(FusionInput(inputs.visual[rows, idx].unsqueeze(1), mask, tracks, inputs.text))
