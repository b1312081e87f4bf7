"""The contracts the model's parts meet through, declared once as `typing.Protocol`s.

A part conforms by having these attributes and methods; nothing inherits from a protocol, and code that needs a
property reads the declared attribute instead of probing with ``getattr``. ``tests/test_contracts.py`` runs
every implementation through its contract. The data-source contract (``load(skips) -> records``) lives with the data
code, in `data_modules.sources.record.MapSource`: the models never import data code.

- `VisionEncoder`: video (B, T, C, H, W), normalised with ``mean``/``std`` at ``image_size`` -> tokens (B, T, N, D)
  with D = ``width``, N = ``num_prefix_tokens`` + gh * gw for ``grid`` = (gh, gw).
- `TokenLayout`: what the encoder's tokens of one frame are (``width``, ``num_prefix_tokens``, ``grid``), the one
  argument a fusion is built from; `TokenLayout.patches` checks visual tokens against it and drops the prefix.
- `Fusion`: one `FusionInput` -> (B, ``num_output_tokens``, ``output_dim``); built by the reasoner as
  ``fusion(TokenLayout.of(vision))``. The input holds the visual tokens (B, T, N, D) and their
  ``frame_mask`` (B, T), and optionally the object `Tracks` and the instruction `Text`. ``supports_text``: reads
  ``inputs.text``. A fusion says nothing about tracks unless it reads them.
- `TrackReader`: a fusion that reads ``inputs.tracks``: ``box_substeps``, the box rows per frame it reads (tracks'
  ``boxes`` (B, T * S, K, 4)), and ``requires_tracks`` (no output without them). The reasoner hands tracks to a
  `TrackReader` only (`tracks_for`), and the datamodule gives ``box_substeps(fusion)`` rows per frame (1 for any
  other fusion). Every fusion calls `check_input` first: tracks handed to a fusion that reads none, a `TrackReader`
  that requires tracks given none, and text handed to a fusion without ``supports_text`` are errors.
- `TextFusion`: a fusion with a text encoder (a Q-Former), which stage 1's contrastive and matching losses need:
  ``encode_text`` (`Text` (B, L)) -> (B, L, ``hidden_size``) and ``forward_with_text`` (queries and text jointly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class TokenLayout:
    """A vision encoder's tokens per frame: ``num_prefix_tokens`` (CLS, registers) first, then a ``grid`` (gh, gw)
    of patch tokens in row-major order, each ``width`` wide. A fusion (and each part of it that reads the patch
    grid) is built from one."""

    width: int
    grid: tuple[int, int]
    num_prefix_tokens: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(self.grid))

    @classmethod
    def of(cls, encoder: VisionEncoder) -> TokenLayout:
        """The layout of ``encoder``'s tokens."""
        return cls(encoder.width, encoder.grid, encoder.num_prefix_tokens)

    @property
    def tokens_per_frame(self) -> int:
        """N: prefix + patch tokens."""
        return self.num_prefix_tokens + self.grid[0] * self.grid[1]

    def patches(self, visual: torch.Tensor) -> torch.Tensor:
        """The patch tokens (B, T, gh * gw, D) of visual tokens (B, T, N, D), after checking N against the layout."""
        N = visual.shape[2]
        if N != self.tokens_per_frame:
            raise ValueError(
                f"visual has {N} tokens per frame; this module was built for {self.num_prefix_tokens} prefix + "
                f"{self.grid[0]}x{self.grid[1]} grid patch tokens"
            )
        return visual[:, :, self.num_prefix_tokens :]


@dataclass(frozen=True)
class Tracks:
    """Object tracks: ``boxes`` (B, T * S, K, 4) xyxy in [0, 1], the k-th box of every row the same object; ``mask``
    (B, T * S, K) (all present when None); ``attributes`` (B, K, V), the state oracle's multi-hot attribute words."""

    boxes: torch.Tensor
    mask: torch.Tensor | None = None
    attributes: torch.Tensor | None = None


@dataclass(frozen=True)
class Text:
    """Instruction tokens ``ids`` (B, L) and their attention ``mask`` (B, L) (all real when None)."""

    ids: torch.Tensor
    mask: torch.Tensor | None = None


@dataclass(frozen=True)
class FusionInput:
    """What a fusion reads: ``visual`` (B, T, N, D) encoder tokens, ``frame_mask`` (B, T) (True: a real frame; all real
    when None), and optionally ``tracks`` (read by a `TrackReader` only) and ``text`` (by a ``supports_text`` fusion)."""

    visual: torch.Tensor
    frame_mask: torch.Tensor | None = None
    tracks: Tracks | None = None
    text: Text | None = None

    def frames(self) -> torch.Tensor:
        """The (B, T) bool frame mask (all True when ``frame_mask`` is None)."""
        if self.frame_mask is None:
            return torch.ones(self.visual.shape[:2], dtype=torch.bool, device=self.visual.device)
        return self.frame_mask.bool()


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

    def __call__(self, inputs: FusionInput) -> torch.Tensor: ...


@runtime_checkable
class TrackReader(Protocol):
    """A fusion that reads object tracks (declared by the fusion itself, e.g. in ``__init__`` when an option turns
    track reading on)."""

    box_substeps: int
    requires_tracks: bool


@runtime_checkable
class TextFusion(Fusion, Protocol):
    hidden_size: int

    def encode_text(self, text: Text) -> torch.Tensor: ...

    def forward_with_text(self, inputs: FusionInput, *, text_causal: bool = False) -> torch.Tensor: ...


def box_substeps(fusion: Fusion) -> int:
    """The box rows per frame the datamodule gives ``fusion``: its ``box_substeps`` if it reads tracks, else 1."""
    return fusion.box_substeps if isinstance(fusion, TrackReader) else 1


def tracks_for(fusion: Fusion, tracks: Tracks | None) -> Tracks | None:
    """The tracks ``fusion`` is handed: ``tracks`` for a `TrackReader`, None for any other fusion (it reads none)."""
    return tracks if isinstance(fusion, TrackReader) else None


def check_input(fusion: Fusion, inputs: FusionInput) -> None:
    """Every fusion calls this first, so that nothing it is handed is ignored silently: tracks are refused by a
    fusion that is no `TrackReader` and required by one that ``requires_tracks``; text is refused by a fusion
    without ``supports_text``."""
    name = type(fusion).__name__
    if isinstance(fusion, TrackReader):
        if inputs.tracks is None and fusion.requires_tracks:
            raise ValueError(
                f"{name} needs per-frame object boxes and got no tracks: give the datamodule tracks (the object "
                "stage's, or a detector's boxes in the boxes.json layout; `vrp ask --boxes`)"
            )
    elif inputs.tracks is not None:
        raise ValueError(f"{name} reads no object tracks but was handed some; pass tracks only to a TrackReader")
    if inputs.text is not None and not fusion.supports_text:
        raise ValueError(f"{name} does not read text but was handed some; set use_qformer_text: false")
