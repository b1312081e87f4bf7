"""Track fusion: one token per (object, frame), mixed by joint spatiotemporal self-attention (Aloe / SlotFormer style).

The k-th box of every frame is the same object (the object stage's track ids), so each token carries *which* object
it is (identity embedding), *when* (time embedding), *where and how it moves* (an embedding of its box and the
box's motion at the frame's S box rows) and *what it looks like*: RoIAlign of the box over the frozen encoder's
patch grid (``appearance="roi"``: pixels and unlabelled boxes only), or, for the **state oracle**, an embedding of
the object's attributes (``appearance="oracle"``: the tracks' multi-hot ``attributes`` from the simulator; no pixels), or
nothing (``appearance="none"``: boxes only). With ``relations=True`` each token also gets a message from the other
objects of its frame, weighted by a learned score of the two boxes' gaps (`RelationMessages`). A pre-norm transformer
attends over all K x T tokens at once, so an object's token at frame t can read every other object at every frame.

Output: the ``max_objects x T`` tokens, frame-major, padding objects zeroed; the reasoner projects them to the LLM.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from vrp.models.contracts import FusionInput, TokenLayout, check_input
from vrp.models.objects import interpolate_embeddings, roi_features

Appearance = Literal["roi", "oracle", "none"]
BOX_FEATURES = 12  # xyxy, centre, size, centre motion from the previous and to the next row
POSITION_FEATURES = 8  # the first 8 of them, xyxy, centre and size: the box features without its motion


def centre_motion(boxes: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, R, K, 4) xyxy, (B, R, K) mask -> centres (B, R, K, 2) and the centre motion into and out of each row
    (B, R, K, 2) each, 0 where the row or its neighbour is absent (and into the first / out of the last row)."""
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    step = (centre[:, 1:] - centre[:, :-1]) * (mask[:, 1:] & mask[:, :-1])[..., None]  # (B, R-1, K, 2)
    zero = torch.zeros_like(centre[:, :1])
    return centre, torch.cat([zero, step], dim=1), torch.cat([step, zero], dim=1)


def box_features(boxes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, R, K, 4) xyxy, (B, R, K) mask -> (B, R, K, 12): xyxy, centre, size, centre motion (prev, next); 0 where
    a box or its neighbour is absent."""
    centre, prev, nxt = centre_motion(boxes, mask)
    size = boxes[..., 2:] - boxes[..., :2]
    feats = torch.cat([boxes, centre, size, prev * 10, nxt * 10], dim=-1)  # motion is ~0.01-0.1 per row: rescale
    return feats * mask[..., None]


GAP_CLIP = 0.5  # gaps between boxes (frame units) are clipped at this: beyond it nothing is close


def box_gaps(boxes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, R, K, 4) xyxy, (B, R, K) mask -> (B, R, K, K): the gap between every two boxes of a row (Chebyshev, < 0
    where they overlap), clipped at ``GAP_CLIP``, which a box also gets to itself and to an absent box."""
    K = boxes.shape[2]
    centre, half = (boxes[..., :2] + boxes[..., 2:]) / 2, (boxes[..., 2:] - boxes[..., :2]) / 2  # (B, R, K, 2)
    offset = (centre[:, :, None] - centre[:, :, :, None]).abs()  # (B, R, K, K, 2)
    gap = (offset - half[:, :, None] - half[:, :, :, None]).amax(-1)  # (B, R, K, K)
    valid = mask[:, :, :, None] & mask[:, :, None] & ~torch.eye(K, dtype=torch.bool, device=boxes.device)
    return gap.clamp(max=GAP_CLIP).masked_fill(~valid, GAP_CLIP)


class RelationMessages(nn.Module):
    """Interaction-network messages between the objects of a frame: each (object, frame) token reads the other
    objects' tokens of its frame through a softmax over them and "nobody", scored from the two boxes' gaps and the
    gaps' change at the frame's S box rows. Scores start as a locality prior (``-gap / locality``: the nearer box
    weighs more) plus a learned MLP of the gaps (zero at the start); scale, MLP and the "nobody" logit are learned."""

    def __init__(self, hidden_size: int, box_substeps: int, locality: float = 0.05):
        super().__init__()
        self.box_substeps = box_substeps
        self.score = nn.Sequential(nn.Linear(2 * box_substeps, 32), nn.GELU(), nn.Linear(32, 1))
        nn.init.zeros_(self.score[-1].weight)
        nn.init.zeros_(self.score[-1].bias)
        self.log_sharpness = nn.Parameter(torch.tensor(math.log(1 / locality)))
        self.nobody = nn.Parameter(torch.zeros(()))
        self.value = nn.Linear(hidden_size, hidden_size)

    def forward(self, rows: torch.Tensor, row_mask: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Box rows (B, T * S, K, 4), mask (B, T * S, K), tokens (B, T, K, H) -> messages (B, T, K, H)."""
        B, TS, K, _ = rows.shape
        S, T = self.box_substeps, TS // self.box_substeps
        gap = box_gaps(rows, row_mask)  # (B, T * S, K, K)
        rate = torch.cat([torch.zeros_like(gap[:, :1]), gap.diff(dim=1)], dim=1) * 10  # closing in: < 0
        feats = torch.stack([gap / GAP_CLIP, rate], -1).view(B, T, S, K, K, 2).permute(0, 1, 3, 4, 2, 5)
        nearest = gap.view(B, T, S, K, K).amin(2)  # (B, T, K, K)
        logits = self.score(feats.reshape(B, T, K, K, 2 * S))[..., 0] - nearest * self.log_sharpness.exp()
        present = row_mask.view(B, T, S, K).any(2)  # (B, T, K)
        valid = present[:, :, None, :] & ~torch.eye(K, dtype=torch.bool, device=rows.device)  # (B, T, K, K)
        logits = torch.cat([logits.masked_fill(~valid, float("-inf")), self.nobody.expand(B, T, K, 1)], -1)
        weights = logits.softmax(-1)[..., :K]  # (B, T, K, K): the "nobody" column dropped
        return torch.einsum("btkj,btjh->btkh", weights, self.value(tokens))


class TrackFusion(nn.Module):
    """Fusion over object tracks; built by the reasoner from the encoder's `vrp.models.contracts.TokenLayout`.

    Contract: a `vrp.models.contracts.TrackReader` that requires tracks: ``forward(FusionInput(visual (B, T, N, D),
    frame_mask (B, T), tracks=Tracks(boxes (B, T * S, K, 4), mask (B, T * S, K), attributes (B, K, V) = None)))
    -> (B, max_objects * T, hidden_size)``, S = ``box_substeps`` (row ``t * S`` is frame t's box); K <=
    ``max_objects``; ``attributes`` only with ``appearance="oracle"`` (V = ``num_attributes``). Options:
    ``appearance``, ``identity_embed``, ``time_embed``, ``motion`` (the motion part of the box features),
    ``box_substeps`` and ``relations`` (`RelationMessages` added to each token).
    """

    supports_text = False
    requires_tracks = True  # no tracks, no tokens: there is no fallback for missing boxes

    def __init__(
        self,
        layout: TokenLayout,
        *,
        appearance: Appearance = "roi",
        max_objects: int = 5,
        num_frames: int = 8,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        intermediate_size: int = 256,
        roi_size: int = 2,
        num_attributes: int = 10,
        identity_embed: bool = True,
        time_embed: bool = True,
        motion: bool = True,
        box_substeps: int = 1,
        relations: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if appearance not in ("roi", "oracle", "none"):
            raise ValueError(f"appearance must be 'roi', 'oracle' or 'none', got {appearance!r}")
        if box_substeps < 1:
            raise ValueError(f"box_substeps must be >= 1, got {box_substeps}")
        self.layout, self.roi_size = layout, roi_size
        self.appearance, self.max_objects, self.motion = appearance, max_objects, motion
        self.num_frames, self.box_substeps = num_frames, box_substeps
        self.hidden_size = self.output_dim = hidden_size
        self.num_output_tokens = max_objects * num_frames
        if appearance == "roi":
            self.visual_norm = nn.LayerNorm(layout.width)
            self.appearance_proj = nn.Linear(layout.width * roi_size * roi_size, hidden_size)
        elif appearance == "oracle":
            self.attribute_embed = nn.Linear(num_attributes, hidden_size)
        self.box_embed = nn.Sequential(
            nn.Linear(box_substeps * BOX_FEATURES, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
        )
        self.relations = RelationMessages(hidden_size, box_substeps) if relations else None
        self.identity = nn.Parameter(torch.randn(max_objects, hidden_size) * 0.02) if identity_embed else None
        self.time = nn.Parameter(torch.randn(num_frames, hidden_size) * 0.02) if time_embed else None
        layer = nn.TransformerEncoderLayer(
            hidden_size,
            num_heads,
            intermediate_size,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_size)

    def embed_boxes(self, rows: torch.Tensor, row_mask: torch.Tensor) -> torch.Tensor:
        """Box rows (B, T * S, K, 4), mask (B, T * S, K) -> one embedding per (frame, object) (B, T, K, H) of the
        frame's S rows' box features."""
        B, TS, K, _ = rows.shape
        S = self.box_substeps
        feats = box_features(rows, row_mask)
        if not self.motion:
            feats = torch.cat([feats[..., :POSITION_FEATURES], torch.zeros_like(feats[..., POSITION_FEATURES:])], -1)
        return self.box_embed(feats.view(B, TS // S, S, K, -1).transpose(2, 3).reshape(B, TS // S, K, -1))

    def tokens(self, inputs: FusionInput) -> tuple[torch.Tensor, torch.Tensor]:
        """Input tokens (B, T, K, H) before attention and their keep-mask (B, T, K), K = ``max_objects``."""
        check_input(self, inputs)
        visual, frame_mask, tracks = inputs.visual, inputs.frame_mask, inputs.tracks
        B, T = visual.shape[:2]
        boxes, box_mask, box_attributes = tracks.boxes, tracks.mask, tracks.attributes
        K, S = boxes.shape[2], self.box_substeps
        if boxes.shape[:2] != (B, T * S) or boxes.shape[-1] != 4 or K > self.max_objects:
            raise ValueError(
                f"boxes must be (B={B}, T*box_substeps={T}*{S}, K<={self.max_objects}, 4); got {tuple(boxes.shape)} "
                "(the datamodule's box_substeps must equal the fusion's)"
            )
        rows = torch.ones(B, T * S, K, dtype=torch.bool, device=visual.device) if box_mask is None else box_mask.bool()
        if frame_mask is not None:
            rows = rows & frame_mask.bool().repeat_interleave(S, dim=1)[:, :, None]
        boxes = boxes.masked_fill(~rows[..., None], 0.0)  # absent boxes may hold NaN or junk
        x = self.embed_boxes(boxes, rows)  # (B, T, K, H)
        mask = rows[:, ::S]  # the sampled frames' tokens (B, T, K)
        app = torch.zeros_like(x)
        if self.appearance == "roi":
            patches = self.visual_norm(self.layout.patches(visual))
            rois = roi_features(patches, self.layout.grid, boxes[:, ::S] * mask[..., None], self.roi_size)
            app = self.appearance_proj(rois)
        elif self.appearance == "oracle":
            V = self.attribute_embed.in_features
            if box_attributes is None or box_attributes.shape != (B, K, V):
                got = None if box_attributes is None else tuple(box_attributes.shape)
                raise ValueError(
                    f"appearance='oracle' needs box_attributes (B={B}, K={K}, V={V}); got {got} "
                    "(set the datamodule's box_attributes to the attribute words)"
                )
            app = self.attribute_embed(box_attributes.to(x.dtype))[:, None].expand_as(x)  # the same in every frame
        x = x + app
        if self.relations is not None:
            x = x + self.relations(boxes, rows, x)
        pad = self.max_objects - K
        if pad:
            x = torch.cat([x, x.new_zeros(*x.shape[:2], pad, x.shape[-1])], dim=2)
            mask = torch.cat([mask, mask.new_zeros(*mask.shape[:2], pad)], dim=2)
        if self.identity is not None:
            x = x + self.identity[None, None]
        if self.time is not None:
            x = x + interpolate_embeddings(self.time, T)[None, :, None]  # clips of other lengths: interpolated
        return x, mask

    def forward(self, inputs: FusionInput) -> torch.Tensor:
        """-> (B, max_objects * T, H) frame-major track tokens; absent objects' tokens are zero."""
        x, mask = self.tokens(inputs)  # (B, T, K, H)
        B, T, K, H = x.shape
        flat, mask = x.reshape(B, T * K, H), mask.reshape(B, T * K)
        keep = mask | ~mask.any(1, keepdim=True)  # a clip without any box still attends (to zeros) instead of NaN
        out = self.norm(self.encoder(flat, src_key_padding_mask=~keep))  # (B, T * K, H)
        return out * mask[..., None]
