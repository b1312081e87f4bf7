"""The contracts the model's parts meet through, declared once as `typing.Protocol`s.

A part conforms by having these attributes and methods; nothing inherits from a protocol, and code that needs a
property reads the declared attribute instead of probing with ``getattr``. ``tests/test_contracts.py`` runs
every implementation through its contract. The data-source contract (``load(skips) -> records``) lives with the data
code, in `data_modules.sources.record.MapSource`: the models never import data code.

- `VisionEncoder`: video (B, T, C, H, W), normalised with ``mean``/``std`` at ``image_size`` -> tokens (B, T, N, D)
  with D = ``width``, N = ``num_prefix_tokens`` + gh * gw for ``grid`` = (gh, gw).
- `Fusion`: tokens (B, T, N, D) + ``frame_mask`` (B, T) -> (B, ``num_output_tokens``, ``output_dim``); built by the
  reasoner as ``fusion(vision_width, grid, num_prefix_tokens)``. ``supports_text``: reads ``text_ids``;
  ``needs_boxes``: fails without ``boxes``; ``reads_boxes``: uses ``boxes`` when given; ``box_substeps``: the box
  rows per frame it reads (``boxes`` (B, T * S, K, 4); 1 for every fusion but a track fusion that asks for more).
- `TextFusion`: a fusion with a text encoder (a Q-Former), which stage 1's contrastive and matching losses need:
  ``encode_text`` (B, L) -> (B, L, ``hidden_size``) and ``forward_with_text`` (queries and text jointly).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class VisionEncoder(Protocol):
    width: int
    grid: tuple[int, int]
    num_prefix_tokens: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, video: torch.Tensor) -> torch.Tensor: ...

    def unfreeze(self) -> None:
        """Make every parameter trainable (the reasoner's ``vision_mode="full"``)."""


@runtime_checkable
class Fusion(Protocol):
    output_dim: int
    num_output_tokens: int
    supports_text: bool
    needs_boxes: bool
    reads_boxes: bool
    box_substeps: int

    def __call__(
        self,
        visual: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        *,
        boxes: torch.Tensor | None = None,
        box_mask: torch.Tensor | None = None,
        box_attributes: torch.Tensor | None = None,
        text_ids: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


@runtime_checkable
class TextFusion(Fusion, Protocol):
    hidden_size: int

    def encode_text(self, text_ids: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor: ...

    def forward_with_text(
        self,
        visual: torch.Tensor,
        frame_mask: torch.Tensor | None,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        *,
        boxes: torch.Tensor | None = None,
        box_mask: torch.Tensor | None = None,
        text_causal: bool = False,
    ) -> torch.Tensor: ...
