"""Video fusion with Q-Formers: two architectures, two classes, both `vrp.models.contracts.TextFusion`s.

- `FrameQFormerFusion` (Video-LLaMA): frames are folded into the batch for a BLIP-2-style frame Q-Former
  (`frame_qformer`, loadable from BLIP-2); its (T*Q) outputs get learned temporal embeddings and a small video
  Q-Former (`qformer`) reads them.
- `JointQFormerFusion`: one Q-Former (`qformer`) reads all frames' tokens with factorised spatial + temporal
  embeddings.

Both are built by the reasoner as ``fusion(vision_width, grid, num_prefix_tokens)`` and share their parts as
components: the BLIP-2 Q-Former core (`vrp.models.qformer.QFormer`), the vision LayerNorm and per-frame object tokens
(`frame_parts`; `vrp.models.objects.ObjectTokens`, ``objects=True``: RoIAlign of given boxes, else slot attention),
the frame checks of `frame_inputs`; neither subclasses the other, and the three methods that only read the memory a
class builds (``forward``, ``forward_with_text``, ``encode_text``) are written once, as functions both assign.
State-dict keys are those of the former ``QFormerFusion(temporal="per_frame" | "joint")``. Temporal embeddings are learned for ``num_frames`` and linearly interpolated for other T;
padding frames (frame_mask False) are masked out of every memory (and skipped by the frame Q-Former). Text
(``vocab_size > 0``) joins the queries of `qformer`, the one whose outputs leave the module (InstructBLIP).
``init_std`` is the weight init (0.02 as BERT/BLIP-2; tiny random Q-Formers want ~0.1, see `qformer._init_weights`).
``init_from_pretrained``: a BLIP-2 / InstructBLIP ``save_pretrained`` folder whose Q-Former, query tokens and vision
post-LayerNorm load into `vision_qformer` (the Q-Former that reads the vision tokens) and `visual_norm`
(`vrp.models.interop.load_blip2_fusion`); the sizes given must be the checkpoint's (the defaults are BLIP-2's).
"""

from __future__ import annotations

import torch
from torch import nn

from vrp.models.interop import load_blip2_fusion
from vrp.models.objects import ObjectTokens, interpolate_embeddings
from vrp.models.qformer import QFormer


def frame_inputs(
    visual: torch.Tensor, frame_mask: torch.Tensor | None, grid: tuple[int, int], num_prefix_tokens: int
) -> torch.Tensor:
    """The (B, T) bool frame mask of ``visual`` (B, T, N, D) (all real when None), after checking N against the grid
    and that every clip has a real frame."""
    B, T, N, _ = visual.shape
    if N != num_prefix_tokens + grid[0] * grid[1]:
        raise ValueError(
            f"visual has {N} tokens per frame; this fusion was built for {num_prefix_tokens} "
            f"prefix + {grid[0]}x{grid[1]} patch tokens"
        )
    frame_mask = torch.ones(B, T, dtype=torch.bool, device=visual.device) if frame_mask is None else frame_mask.bool()
    if not bool(frame_mask.any(-1).all()):
        raise ValueError("frame_mask has a video with no real frame")
    return frame_mask


def with_objects(
    objects: ObjectTokens | None,
    x: torch.Tensor,
    frame_mask: torch.Tensor,
    boxes: torch.Tensor | None,
    box_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame tokens (B, T, N, D) [+ object tokens (B, T, K, D)] and their keep-mask (B, T, N [+ K])."""
    B, T, N, _ = x.shape
    keep = frame_mask[:, :, None].expand(B, T, N)
    if objects is None:
        return x, keep
    obj, obj_mask = objects(x, boxes, box_mask)  # (B, T, K, D), (B, T, K)
    return torch.cat([x, obj], dim=2), torch.cat([keep, obj_mask & frame_mask[:, :, None]], dim=2)


# The three methods both fusions share, written once and assigned in each class (no base class): they read the
# memory each class builds (`memory`) with its `qformer`.


def read_queries(
    self: FrameQFormerFusion | JointQFormerFusion,
    visual: torch.Tensor,
    frame_mask: torch.Tensor | None = None,
    *,
    boxes: torch.Tensor | None = None,
    box_mask: torch.Tensor | None = None,
    box_attributes: torch.Tensor | None = None,
    text_ids: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """visual (B, T, N, D), frame_mask (B, T) -> (B, Q, output_dim); text (B, L) joins the queries if given
    (``box_attributes``, read only by the state oracle, is ignored)."""
    if text_ids is not None and not self.supports_text:
        raise ValueError("text_ids given to a fusion built without text; set vocab_size > 0 or pass no text")
    memory, keep = self.memory(visual, frame_mask, boxes, box_mask)
    return self.qformer(memory, keep, text_ids=text_ids, text_mask=text_mask)[:, : self.num_output_tokens]


def read_queries_with_text(
    self: FrameQFormerFusion | JointQFormerFusion,
    visual: torch.Tensor,
    frame_mask: torch.Tensor | None,
    text_ids: torch.Tensor,
    text_mask: torch.Tensor | None = None,
    *,
    boxes: torch.Tensor | None = None,
    box_mask: torch.Tensor | None = None,
    text_causal: bool = False,
) -> torch.Tensor:
    """Queries and text jointly (stage-1 matching; `text_causal` for grounded captioning) -> (B, Q + L, H)."""
    memory, keep = self.memory(visual, frame_mask, boxes, box_mask)
    return self.qformer(memory, keep, text_ids=text_ids, text_mask=text_mask, text_causal=text_causal)


def text_features(
    self: FrameQFormerFusion | JointQFormerFusion, text_ids: torch.Tensor, text_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Unimodal text features (B, L, H) from `qformer`; [:, 0] is the text feature."""
    return self.qformer.encode_text(text_ids, text_mask)


def frame_parts(
    vision_width: int,
    grid: tuple[int, int],
    num_prefix_tokens: int,
    *,
    visual_norm: bool,
    objects: bool,
    num_slots: int,
    slot_iters: int,
    roi_size: int,
    num_frames: int,
) -> tuple[nn.Module, ObjectTokens | None]:
    """The per-frame components both fusions own: the LayerNorm on the vision tokens (BLIP-2's ln_vision) and, with
    ``objects``, the object tokens."""
    norm = nn.LayerNorm(vision_width) if visual_norm else nn.Identity()
    return norm, (
        ObjectTokens(
            vision_width,
            grid,
            num_prefix_tokens,
            num_slots=num_slots,
            slot_iters=slot_iters,
            roi_size=roi_size,
            num_frames=num_frames,
        )
        if objects
        else None
    )


class FrameQFormerFusion(nn.Module):
    """Per-frame Q-Former, temporal embeddings, video Q-Former (Video-LLaMA); -> (B, video_num_query_tokens, hidden)."""

    needs_boxes = False
    box_substeps = 1

    def __init__(
        self,
        vision_width: int,
        grid: tuple[int, int],
        num_prefix_tokens: int,
        *,
        num_query_tokens: int = 32,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        intermediate_size: int = 3072,
        cross_attention_freq: int = 2,
        num_frames: int = 8,
        video_num_query_tokens: int = 32,
        video_num_layers: int = 2,
        vocab_size: int = 0,
        max_text_len: int = 64,
        pad_token_id: int = 0,
        visual_norm: bool = True,
        objects: bool = False,
        num_slots: int = 4,
        slot_iters: int = 3,
        roi_size: int = 2,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        layer_norm_eps: float = 1e-12,
        init_std: float = 0.02,
        init_from_pretrained: str | None = None,
    ):
        super().__init__()
        self.grid, self.num_prefix_tokens = tuple(grid), num_prefix_tokens
        self.hidden_size = self.output_dim = hidden_size
        self.supports_text, self.reads_boxes = vocab_size > 0, objects
        self.visual_norm, self.objects = frame_parts(
            vision_width,
            grid,
            num_prefix_tokens,
            visual_norm=visual_norm,
            objects=objects,
            num_slots=num_slots,
            slot_iters=slot_iters,
            roi_size=roi_size,
            num_frames=num_frames,
        )
        sizes = dict(
            hidden_size=hidden_size,
            num_heads=num_heads,
            intermediate_size=intermediate_size,
            layer_norm_eps=layer_norm_eps,
            dropout=dropout,
            attention_dropout=attention_dropout,
            init_std=init_std,
        )
        self.frame_qformer = QFormer(
            vision_width,
            num_query_tokens=num_query_tokens,
            num_layers=num_layers,
            cross_attention_freq=cross_attention_freq,
            **sizes,
        )
        self.temporal_embed = nn.Parameter(torch.randn(num_frames, hidden_size) * init_std)
        self.qformer = QFormer(
            hidden_size,
            num_query_tokens=video_num_query_tokens,
            num_layers=video_num_layers,
            cross_attention_freq=1,
            vocab_size=vocab_size,
            max_text_len=max_text_len,
            pad_token_id=pad_token_id,
            **sizes,
        )
        self.num_output_tokens = video_num_query_tokens
        if init_from_pretrained:
            load_blip2_fusion(self, init_from_pretrained)

    @property
    def vision_qformer(self) -> QFormer:
        """The Q-Former that cross-attends to the vision tokens (BLIP-2 weights load here)."""
        return self.frame_qformer

    def memory(
        self,
        visual: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        box_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory `qformer` cross-attends to: the frame Q-Former's outputs of every frame (B, T*Q, H), keep-mask."""
        frame_mask = frame_inputs(visual, frame_mask, self.grid, self.num_prefix_tokens)
        B, T = frame_mask.shape
        x, keep = with_objects(self.objects, self.visual_norm(visual), frame_mask, boxes, box_mask)
        real = frame_mask.flatten()  # (B*T,): the frame Q-Former runs on real frames only
        frames = self.frame_qformer(x.flatten(0, 1)[real], keep.flatten(0, 1)[real])  # (R, Q, H)
        out = frames.new_zeros(B * T, *frames.shape[1:]).index_put((real.nonzero()[:, 0],), frames)
        out = out.view(B, T, -1, self.hidden_size) + interpolate_embeddings(self.temporal_embed, T)[None, :, None]
        return out.flatten(1, 2), frame_mask[:, :, None].expand(B, T, out.shape[2]).flatten(1, 2)

    forward, forward_with_text, encode_text = read_queries, read_queries_with_text, text_features


class JointQFormerFusion(nn.Module):
    """One Q-Former over all frames' tokens with factorised space + time embeddings; -> (B, num_query_tokens, hidden)."""

    needs_boxes = False
    box_substeps = 1

    def __init__(
        self,
        vision_width: int,
        grid: tuple[int, int],
        num_prefix_tokens: int,
        *,
        num_query_tokens: int = 32,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        intermediate_size: int = 3072,
        cross_attention_freq: int = 2,
        num_frames: int = 8,
        vocab_size: int = 0,
        max_text_len: int = 64,
        pad_token_id: int = 0,
        visual_norm: bool = True,
        objects: bool = False,
        num_slots: int = 4,
        slot_iters: int = 3,
        roi_size: int = 2,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        layer_norm_eps: float = 1e-12,
        init_std: float = 0.02,
        init_from_pretrained: str | None = None,
    ):
        super().__init__()
        self.grid, self.num_prefix_tokens = tuple(grid), num_prefix_tokens
        self.visual_norm, self.objects = frame_parts(
            vision_width,
            grid,
            num_prefix_tokens,
            visual_norm=visual_norm,
            objects=objects,
            num_slots=num_slots,
            slot_iters=slot_iters,
            roi_size=roi_size,
            num_frames=num_frames,
        )
        self.spatial_embed = nn.Parameter(torch.randn(num_prefix_tokens + grid[0] * grid[1], vision_width) * init_std)
        self.temporal_embed = nn.Parameter(torch.randn(num_frames, vision_width) * init_std)
        self.qformer = QFormer(
            vision_width,
            num_query_tokens=num_query_tokens,
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            intermediate_size=intermediate_size,
            cross_attention_freq=cross_attention_freq,
            vocab_size=vocab_size,
            max_text_len=max_text_len,
            pad_token_id=pad_token_id,
            layer_norm_eps=layer_norm_eps,
            dropout=dropout,
            attention_dropout=attention_dropout,
            init_std=init_std,
        )
        self.hidden_size = self.output_dim = hidden_size
        self.num_output_tokens, self.supports_text, self.reads_boxes = num_query_tokens, vocab_size > 0, objects
        if init_from_pretrained:
            load_blip2_fusion(self, init_from_pretrained)

    def memory(
        self,
        visual: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        box_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory `qformer` cross-attends to: every frame's tokens (B, T*(N [+ K]), D), frame-major, keep-mask."""
        frame_mask = frame_inputs(visual, frame_mask, self.grid, self.num_prefix_tokens)
        T = frame_mask.shape[1]
        x = (
            self.visual_norm(visual)
            + self.spatial_embed
            + interpolate_embeddings(self.temporal_embed, T)[None, :, None]
        )
        x, keep = with_objects(self.objects, x, frame_mask, boxes, box_mask)
        return x.flatten(1, 2), keep.flatten(1, 2)

    @property
    def vision_qformer(self) -> QFormer:
        """The Q-Former that cross-attends to the vision tokens (BLIP-2 weights load here: it reads them directly)."""
        return self.qformer

    forward, forward_with_text, encode_text = read_queries, read_queries_with_text, text_features
