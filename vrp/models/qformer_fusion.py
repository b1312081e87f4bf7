"""Video fusion with Q-Formers: two architectures, two classes, both `vrp.models.contracts.TextFusion`s.

- `FrameQFormerFusion` (Video-LLaMA): frames are folded into the batch for a BLIP-2-style frame Q-Former
  (`frame_qformer`, loadable from BLIP-2); its (T*Q) outputs get learned temporal embeddings and a small video
  Q-Former (`qformer`) reads them.
- `JointQFormerFusion`: one Q-Former (`qformer`) reads all frames' tokens with factorised spatial + temporal
  embeddings.

Both are built by the reasoner from the encoder's `vrp.models.contracts.TokenLayout` and configured by one typed
argument, ``qformer: QFormerOptions`` (a nested mapping in YAML: ``init_args: {qformer: {num_query_tokens: 8, ...}}``;
the frame Q-Former's also ``video_num_query_tokens`` and ``video_num_layers`` beside it), and share their parts
as components: the BLIP-2 Q-Former core (`vrp.models.qformer.QFormer`), the vision LayerNorm and per-frame object tokens
(`frame_parts`; `vrp.models.objects.ObjectTokens`, ``objects=True``: RoIAlign of given boxes, else slot attention),
the frame checks of `frame_inputs`; neither subclasses the other, and the three methods that only read the memory a
class builds (``forward``, ``forward_with_text``, ``encode_text``) are written once, as functions both assign. With
``objects=True`` a fusion is a `vrp.models.contracts.TrackReader` (one box row per frame; tracks optional).
State-dict keys are those of the former ``QFormerFusion(temporal="per_frame" | "joint")``. Temporal embeddings are learned for ``num_frames`` and linearly interpolated for other T;
padding frames (frame_mask False) are masked out of every memory (and skipped by the frame Q-Former). Text
(``vocab_size > 0``) joins the queries of `qformer`, the one whose outputs leave the module (InstructBLIP).
``init_std`` is the weight init (0.02 as BERT/BLIP-2; tiny random Q-Formers want ~0.1, see `qformer._init_weights`).
``init_from_pretrained``: a BLIP-2 / InstructBLIP ``save_pretrained`` folder whose Q-Former, query tokens and vision
post-LayerNorm load into `vision_qformer` (the Q-Former that reads the vision tokens) and `visual_norm`
(`vrp.models.interop.load_blip2_fusion`); the sizes given must be the checkpoint's (the defaults are BLIP-2's).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from vrp.models.contracts import FusionInput, Text, TokenLayout, Tracks, check_input
from vrp.models.interop import load_blip2_fusion
from vrp.models.objects import ObjectTokens, interpolate_embeddings
from vrp.models.qformer import QFormer, QFormerConfig


@dataclass(frozen=True)
class QFormerOptions(QFormerConfig):
    """The options both Q-Former fusions take as their ``qformer`` argument (a nested mapping under ``init_args`` in
    YAML): the `QFormerConfig` of the Q-Former whose outputs leave the fusion (BLIP-2's sizes, text up to 64 tokens
    by default), and the fusion's own options around it."""

    max_text_len: int = 64
    num_frames: int = 8
    visual_norm: bool = True
    objects: bool = False
    num_slots: int = 4
    slot_iters: int = 3
    roi_size: int = 2
    init_from_pretrained: str | None = None

    def frame_parts(self, layout: TokenLayout) -> tuple[nn.Module, ObjectTokens | None]:
        """The per-frame components both fusions own: the LayerNorm on the vision tokens (BLIP-2's ln_vision) and,
        with ``objects``, the object tokens."""
        norm = nn.LayerNorm(layout.width) if self.visual_norm else nn.Identity()
        if not self.objects:
            return norm, None
        objects = ObjectTokens(
            layout,
            num_slots=self.num_slots,
            slot_iters=self.slot_iters,
            roi_size=self.roi_size,
            num_frames=self.num_frames,
        )
        return norm, objects


def frame_inputs(inputs: FusionInput, layout: TokenLayout) -> torch.Tensor:
    """The (B, T) bool frame mask of ``inputs.visual`` (B, T, N, D) (all real when None), after checking N against
    the layout and that every clip has a real frame."""
    layout.patches(inputs.visual)
    frame_mask = inputs.frames()
    if not bool(frame_mask.any(-1).all()):
        raise ValueError("frame_mask has a video with no real frame")
    return frame_mask


def with_objects(
    objects: ObjectTokens | None, x: torch.Tensor, frame_mask: torch.Tensor, tracks: Tracks | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame tokens (B, T, N, D) [+ object tokens (B, T, K, D)] and their keep-mask (B, T, N [+ K])."""
    B, T, N, _ = x.shape
    keep = frame_mask[:, :, None].expand(B, T, N)
    if objects is None:
        return x, keep
    boxes, box_mask = (None, None) if tracks is None else (tracks.boxes, tracks.mask)
    obj, obj_mask = objects(x, boxes, box_mask)  # (B, T, K, D), (B, T, K)
    return torch.cat([x, obj], dim=2), torch.cat([keep, obj_mask & frame_mask[:, :, None]], dim=2)


def declare_tracks(fusion: FrameQFormerFusion | JointQFormerFusion, objects: bool) -> None:
    """With object tokens the fusion reads tracks (`vrp.models.contracts.TrackReader`): one box row per frame, and
    slot attention when there are none; without them it declares nothing about tracks."""
    if objects:
        fusion.box_substeps, fusion.requires_tracks = 1, False


# The three methods both fusions share, written once and assigned in each class (no base class): they read the
# memory each class builds (`memory`) with its `qformer`.


def read_queries(self: FrameQFormerFusion | JointQFormerFusion, inputs: FusionInput) -> torch.Tensor:
    """-> (B, Q, output_dim); the text (B, L), if given, joins the queries."""
    check_input(self, inputs)
    memory, keep = self.memory(inputs)
    ids, mask = (None, None) if inputs.text is None else (inputs.text.ids, inputs.text.mask)
    return self.qformer(memory, keep, text_ids=ids, text_mask=mask)[:, : self.num_output_tokens]


def read_queries_with_text(
    self: FrameQFormerFusion | JointQFormerFusion, inputs: FusionInput, *, text_causal: bool = False
) -> torch.Tensor:
    """Queries and ``inputs.text`` jointly (stage-1 matching; `text_causal` for grounded captioning) -> (B, Q + L, H)."""
    memory, keep = self.memory(inputs)
    return self.qformer(memory, keep, text_ids=inputs.text.ids, text_mask=inputs.text.mask, text_causal=text_causal)


def text_features(self: FrameQFormerFusion | JointQFormerFusion, text: Text) -> torch.Tensor:
    """Unimodal text features (B, L, H) from `qformer`; [:, 0] is the text feature."""
    return self.qformer.encode_text(text.ids, text.mask)


class FrameQFormerFusion(nn.Module):
    """Per-frame Q-Former, temporal embeddings, video Q-Former (Video-LLaMA); -> (B, video_num_query_tokens, hidden)."""

    def __init__(
        self,
        layout: TokenLayout,
        *,
        qformer: QFormerOptions = QFormerOptions(),
        video_num_query_tokens: int = 32,
        video_num_layers: int = 2,
    ):
        super().__init__()
        o = qformer
        self.layout = layout
        self.hidden_size = self.output_dim = o.hidden_size
        self.supports_text = o.vocab_size > 0
        declare_tracks(self, o.objects)
        self.visual_norm, self.objects = o.frame_parts(layout)
        self.frame_qformer = QFormer(layout.width, replace(o, vocab_size=0, max_text_len=512))
        self.temporal_embed = nn.Parameter(torch.randn(o.num_frames, o.hidden_size) * o.init_std)
        video = replace(o, num_query_tokens=video_num_query_tokens, num_layers=video_num_layers, cross_attention_freq=1)
        self.qformer = QFormer(o.hidden_size, video)
        self.num_output_tokens = video_num_query_tokens
        if o.init_from_pretrained:
            load_blip2_fusion(self, o.init_from_pretrained)

    @property
    def vision_qformer(self) -> QFormer:
        """The Q-Former that cross-attends to the vision tokens (BLIP-2 weights load here)."""
        return self.frame_qformer

    def memory(self, inputs: FusionInput) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory `qformer` cross-attends to: the frame Q-Former's outputs of every frame (B, T*Q, H), keep-mask."""
        frame_mask = frame_inputs(inputs, self.layout)
        B, T = frame_mask.shape
        x, keep = with_objects(self.objects, self.visual_norm(inputs.visual), frame_mask, inputs.tracks)
        real = frame_mask.flatten()  # (B*T,): the frame Q-Former runs on real frames only
        frames = self.frame_qformer(x.flatten(0, 1)[real], keep.flatten(0, 1)[real])  # (R, Q, H)
        out = frames.new_zeros(B * T, *frames.shape[1:]).index_put((real.nonzero()[:, 0],), frames)
        out = out.view(B, T, -1, self.hidden_size) + interpolate_embeddings(self.temporal_embed, T)[None, :, None]
        return out.flatten(1, 2), frame_mask[:, :, None].expand(B, T, out.shape[2]).flatten(1, 2)

    forward, forward_with_text, encode_text = read_queries, read_queries_with_text, text_features


class JointQFormerFusion(nn.Module):
    """One Q-Former over all frames' tokens with factorised space + time embeddings; -> (B, num_query_tokens, hidden)."""

    def __init__(self, layout: TokenLayout, *, qformer: QFormerOptions = QFormerOptions()):
        super().__init__()
        o = qformer
        self.layout = layout
        self.visual_norm, self.objects = o.frame_parts(layout)
        self.spatial_embed = nn.Parameter(torch.randn(layout.tokens_per_frame, layout.width) * o.init_std)
        self.temporal_embed = nn.Parameter(torch.randn(o.num_frames, layout.width) * o.init_std)
        self.qformer = QFormer(layout.width, o)
        self.hidden_size = self.output_dim = o.hidden_size
        self.num_output_tokens, self.supports_text = o.num_query_tokens, o.vocab_size > 0
        declare_tracks(self, o.objects)
        if o.init_from_pretrained:
            load_blip2_fusion(self, o.init_from_pretrained)

    def memory(self, inputs: FusionInput) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory `qformer` cross-attends to: every frame's tokens (B, T*(N [+ K]), D), frame-major, keep-mask."""
        frame_mask = frame_inputs(inputs, self.layout)
        T = frame_mask.shape[1]
        x = (
            self.visual_norm(inputs.visual)
            + self.spatial_embed
            + interpolate_embeddings(self.temporal_embed, T)[None, :, None]
        )
        x, keep = with_objects(self.objects, x, frame_mask, inputs.tracks)
        return x.flatten(1, 2), keep.flatten(1, 2)

    @property
    def vision_qformer(self) -> QFormer:
        """The Q-Former that cross-attends to the vision tokens (BLIP-2 weights load here: it reads them directly)."""
        return self.qformer

    forward, forward_with_text, encode_text = read_queries, read_queries_with_text, text_features
