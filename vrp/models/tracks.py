"""Track fusion: one token per (object, frame), mixed by joint spatiotemporal self-attention (Aloe / SlotFormer style).

The k-th box of every frame is the same object (a tracker's ids, or the simulator's object order), so each token
carries *which* object it is (identity embedding), *when* (time embedding), *where and how it moves* (box and
box-motion embedding) and *what it looks like*: RoIAlign of the box over the frozen encoder's patch grid
(``appearance="roi"``, the default: pixels and unlabelled boxes only), or, for the **state oracle**, an embedding of
the object's attributes (``appearance="oracle"``: multi-hot ``box_attributes`` from the simulator, e.g. its colour
and shape words; no pixels), or nothing
(``appearance="none"``: boxes only). A pre-norm transformer attends over all K x T tokens at once, so an object's
token at frame t can read every other object at every frame: collisions, causes and what follows are relations
between tracks, which a per-frame Q-Former has to compress away before it sees time.

With ``relation_bias=True`` every attention logit between two tokens also gets a learned per-head bias computed
from the pair's boxes (centre offset, distance, the gap between the boxes, time offset, same object / same frame):
"which object is touching me now" becomes one attention hop instead of a comparison the layers must learn to compute
from absolute coordinates (the relative-position bias of T5 / Swin, over boxes; the pairwise relations of
interaction networks).

With ``box_substeps=S`` > 1 the boxes come at S times per sampled frame (a tracker's boxes between the sampled
frames; the training layer hands S to the datamodule) and each (object, frame) token embeds the box features of all
S: pixels stay at T frames, but motion, turns and contacts are seen at the video's own rate instead of every 2-4
source frames. With ``contacts=True`` each box row also carries its gaps to the other tracked objects (one value per
slot) and to the four frame edges, and with ``partner_messages=True`` each token gets the appearance of what it
touches (`PartnerMessages`), so "what touches me now" is in the token itself. With ``kinematics=True`` each row also
carries the invariants events are made of (`kinematic_features`: speeds, the change of velocity, the nearest edge
and box gaps), which the raw features hold only as coordinates and displacement vectors. With ``forecast_horizon=h``
each token also gets what its object will hit next if everything keeps its motion (`ForecastMessages`): the events
a predictive question asks about come after the clip, where no contact shows them.

With ``masked_boxes=True`` the fusion also carries masked box modelling (`TrackFusion.masked_box_loss`, the
self-supervised objective of Aloe / SlotFormer over boxes): spans of an object's tokens are hidden and their boxes
predicted from the other objects and frames; the stages add it to their loss with ``masked_box_weight``.

Output: the ``max_objects x T`` tokens, frame-major, padding objects zeroed; the reasoner projects them to the LLM.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vrp.models.objects import interpolate_embeddings, roi_features

Appearance = Literal["roi", "oracle", "none"]
BOX_FEATURES = 12  # xyxy, centre, size, centre motion from the previous and to the next frame
POSITION_FEATURES = 8  # the first 8 of them, xyxy, centre and size: the box features without its motion
KINEMATIC_FEATURES = 5  # speed in and out, velocity change, nearest-edge gap, nearest-box gap
PAIR_FEATURES = 7  # centre offset (2), distance, box gap, time offset, same object, same frame
GAP_CLIP = 0.5  # gaps between boxes (frame units) are clipped to [-GAP_CLIP, GAP_CLIP]: beyond it nothing is close


def centre_motion(boxes: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T, K, 4) xyxy, (B, T, K) mask -> centres (B, T, K, 2) and the centre motion into and out of each row
    (B, T, K, 2) each, 0 where the row or its neighbour is absent (and into the first / out of the last row)."""
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    step = (centre[:, 1:] - centre[:, :-1]) * (mask[:, 1:] & mask[:, :-1])[..., None]  # (B, T-1, K, 2)
    zero = torch.zeros_like(centre[:, :1])
    return centre, torch.cat([zero, step], dim=1), torch.cat([step, zero], dim=1)


def has_previous(mask: torch.Tensor) -> torch.Tensor:
    """(B, R, K) mask -> (B, R, K): the box and the one a row before are both present (the motion into the row is
    known); False on the first row."""
    return torch.cat([torch.zeros_like(mask[:, :1]), mask[:, 1:] & mask[:, :-1]], dim=1)


def box_features(boxes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, K, 4) xyxy, (B, T, K) mask -> (B, T, K, 12): xyxy, centre, size, centre motion (prev, next); 0 where
    a box or its neighbour is absent."""
    centre, prev, nxt = centre_motion(boxes, mask)
    size = boxes[..., 2:] - boxes[..., :2]
    feats = torch.cat([boxes, centre, size, prev * 10, nxt * 10], dim=-1)  # motion is ~0.01-0.1 per frame: rescale
    return feats * mask[..., None]


def kinematic_features(boxes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, K, 4) xyxy, (B, T, K) mask -> (B, T, K, 5): the motion invariants events are made of, which
    `box_features` holds only as raw coordinates and displacement vectors: speed into and out of the row, the change
    of velocity across it (large at a bounce or a hit), the gap to the nearest frame edge and to the nearest other
    box (< 0: overlapping). Norms and minima are what "fastest", "hit first" and "why did it turn" compare; a
    layer would have to discover them from the vectors. 0 where the box is absent."""
    _, prev, nxt = centre_motion(boxes, mask)
    has_prev = has_previous(mask)
    has_next = torch.cat([has_prev[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
    turn = (nxt - prev).norm(dim=-1) * (has_prev & has_next)  # no turn is measured at a track's ends
    wall = wall_gaps(boxes).amin(-1).clamp(-GAP_CLIP, GAP_CLIP) / GAP_CLIP
    near = box_gaps(boxes, mask).amin(-1).clamp(-GAP_CLIP, GAP_CLIP) / GAP_CLIP
    feats = torch.stack([prev.norm(dim=-1) * 10, nxt.norm(dim=-1) * 10, turn * 10, wall, near], dim=-1)
    return feats * mask[..., None]


def box_gaps(boxes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, K, 4) xyxy, (B, T, K) mask -> (B, T, K, K): the gap between every two boxes of a frame (Chebyshev:
    < 0 when they overlap), ``GAP_CLIP`` between a box and itself or an absent box."""
    K = boxes.shape[2]
    centre, half = (boxes[..., :2] + boxes[..., 2:]) / 2, (boxes[..., 2:] - boxes[..., :2]) / 2  # (B, T, K, 2)
    offset = (centre[:, :, None] - centre[:, :, :, None]).abs()  # (B, T, K, K, 2)
    gap = (offset - half[:, :, None] - half[:, :, :, None]).amax(-1)  # (B, T, K, K)
    valid = mask[:, :, :, None] & mask[:, :, None] & ~torch.eye(K, dtype=torch.bool, device=boxes.device)
    return gap.masked_fill(~valid, GAP_CLIP)


def wall_gaps(boxes: torch.Tensor) -> torch.Tensor:
    """(B, T, K, 4) xyxy -> (B, T, K, 4): the gaps to the left, top, right and bottom frame edges."""
    return torch.cat([boxes[..., :2], 1 - boxes[..., 2:]], dim=-1)


def contact_features(boxes: torch.Tensor, mask: torch.Tensor, slots: int) -> torch.Tensor:
    """(B, T, K, 4) xyxy, (B, T, K) mask -> (B, T, K, slots + 4): the gap from each box to the box of every slot
    (< 0: overlapping; ``GAP_CLIP`` for itself, absent boxes and slots past K) and to the left, top, right and bottom frame
    edges, each clipped to [-GAP_CLIP, GAP_CLIP] and scaled by 1 / GAP_CLIP; 0 where the box is absent."""
    B, T, K, _ = boxes.shape
    gap = torch.cat([box_gaps(boxes, mask), boxes.new_full((B, T, K, slots - K), GAP_CLIP)], dim=-1)  # (B, T, K, slots)
    feats = torch.cat([gap, wall_gaps(boxes)], dim=-1).clamp(-GAP_CLIP, GAP_CLIP) / GAP_CLIP
    return feats * mask[..., None]


def mix_partners(weights: torch.Tensor, appearance: torch.Tensor, wall: torch.Tensor) -> torch.Tensor:
    """weights (B, T, K, K + 1) over the other objects and the wall, appearance (B, K, H), wall (H,) -> (B, T, K, H):
    each token's partners' appearance (the wall's vector for the last column), weighted."""
    values = torch.cat([appearance, wall.expand(appearance.shape[0], 1, -1)], dim=1)  # (B, K+1, H)
    return torch.einsum("btkj,bjh->btkh", weights, values)


class PartnerMessages(nn.Module):
    """For every (object, frame) token, who it is in contact with, as a message: a softmax over the other objects,
    the nearest frame edge and "nobody", scored from the gaps (and their rate of change) at each of the frame's S box
    rows, mixes the other objects' appearance (and a learned wall vector) into one vector. "What did X hit" becomes
    a read of X's own tokens instead of a search over every other track (the messages of interaction networks, with
    the partner picked by contact)."""

    def __init__(self, hidden_size: int, box_substeps: int, contact_gap: float | None = None):
        """``contact_gap``: pick the partner by rule instead — the box or frame edge nearest to the token's box at any
        of the frame's S rows, when that gap is below ``contact_gap`` (in frame units), else nobody: a contact
        detector over the tracker's boxes, so the message is right from the first step rather than learnt through
        the answers it serves. None: the learned soft pick."""
        super().__init__()
        self.box_substeps, self.contact_gap = box_substeps, contact_gap
        if contact_gap is None:
            self.score = nn.Sequential(nn.Linear(2 * box_substeps, 32), nn.GELU(), nn.Linear(32, 1))
            self.nobody = nn.Parameter(torch.zeros(()))  # the logit of "in contact with nothing"
        self.wall = nn.Parameter(torch.randn(hidden_size) * 0.02)
        self.out = nn.Linear(hidden_size, hidden_size)

    def forward(self, boxes: torch.Tensor, mask: torch.Tensor, appearance: torch.Tensor) -> torch.Tensor:
        """boxes (B, T*S, K, 4), mask (B, T*S, K), per-object appearance (B, K, H) -> messages (B, T, K, H)."""
        B, TS, K, _ = boxes.shape
        S = self.box_substeps
        T = TS // S
        gaps = torch.cat([box_gaps(boxes, mask), wall_gaps(boxes).amin(-1, keepdim=True)], dim=-1)  # (B, TS, K, K+1)
        gaps = gaps.clamp(-GAP_CLIP, GAP_CLIP) / GAP_CLIP
        frame_mask = mask.view(B, T, S, K).any(2)  # (B, T, K)
        partner = frame_mask[:, :, None, :] & ~torch.eye(K, dtype=torch.bool, device=boxes.device)  # (B, T, K, K)
        valid = torch.cat([partner, torch.ones_like(partner[..., :1])], dim=-1)  # every box may touch a wall
        if self.contact_gap is not None:  # the rule: the nearest thing within contact_gap at any of the S rows
            rows = gaps.masked_fill(~mask[..., None], GAP_CLIP).view(B, T, S, K, K + 1).amin(2)  # (B, T, K, K+1)
            rows = rows.masked_fill(~valid, float("inf"))
            nearest_gap, partner = rows.min(-1)  # (B, T, K)
            partner = torch.where(nearest_gap * GAP_CLIP < self.contact_gap, partner, K + 1)  # K + 1: nobody
            w = F.one_hot(partner, K + 2).to(appearance.dtype)
        else:
            rate = torch.cat([torch.zeros_like(gaps[:, :1]), gaps.diff(dim=1)], dim=1) * 10  # closing in: < 0
            feats = torch.stack([gaps, rate], dim=-1).view(B, T, S, K, K + 1, 2)
            feats = feats.permute(0, 1, 3, 4, 2, 5).reshape(B, T, K, K + 1, 2 * S)
            logits = self.score(feats)[..., 0].masked_fill(~valid, float("-inf"))  # (B, T, K, K+1)
            logits = torch.cat([logits, self.nobody.expand(B, T, K, 1)], dim=-1)  # (B, T, K, K+2)
            w = logits.softmax(-1)
        return self.out(mix_partners(w[..., : K + 1], appearance, self.wall))


def contact_times(boxes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, R, K, 4) xyxy box rows, (B, R, K) mask -> (B, R, K, K + 1): in rows from each row, when each box would
    first touch every other box and the nearest frame edge if all kept the motion that brought them to this row
    (constant velocity, the displacement from the previous row). Boxes are taken as discs of their larger half-side:
    a box test would call every diagonal near miss a hit. ``inf`` where there is no such contact ahead: moving apart
    or missing, already overlapping, standing still, itself, or a box (or its previous row) absent."""
    B, R, K, _ = boxes.shape
    centre, vel, _ = centre_motion(boxes, mask)  # (B, R, K, 2) each: vel is the motion into the row
    moving = has_previous(mask)  # (B, R, K)
    radius = (boxes[..., 2:] - boxes[..., :2]).amax(-1) / 2  # (B, R, K)
    c = centre[:, :, None] - centre[:, :, :, None]  # (B, R, K, K, 2): j's centre minus k's
    v = vel[:, :, None] - vel[:, :, :, None]
    reach = radius[:, :, None] + radius[:, :, :, None]  # (B, R, K, K)
    a, b = (v * v).sum(-1), 2 * (c * v).sum(-1)
    cc = (c * c).sum(-1) - reach**2
    disc = b * b - 4 * a * cc
    t = (-b - disc.clamp(min=0).sqrt()) / (2 * a).clamp(min=1e-12)
    hit = (cc > 0) & (b < 0) & (disc >= 0) & (a > 1e-12)  # apart now, closing in, and the paths meet
    pair = moving[:, :, :, None] & mask[:, :, None] & ~torch.eye(K, dtype=torch.bool, device=boxes.device)
    t = t.masked_fill(~(hit & pair), float("inf"))
    edge = wall_gaps(boxes)  # (B, R, K, 4): left, top, right, bottom
    toward = torch.cat([-vel, vel], dim=-1)  # speed toward each edge
    wall = (edge.clamp(min=0) / toward.clamp(min=1e-12)).masked_fill(toward <= 1e-12, float("inf")).amin(-1)
    wall = wall.masked_fill(~moving, float("inf"))
    return torch.cat([t, wall[..., None]], dim=-1)


class ForecastMessages(nn.Module):
    """For every (object, frame) token, what it will hit next if everything keeps moving as it does: the box or
    frame edge whose contact comes first (`contact_times` from the frame's last box row with a known motion) within
    ``horizon`` sampled frames, as a message — that partner's appearance (or a learned wall vector), plus how soon
    it comes and how soon the token's own box reaches an edge. "What will X hit next" and "which object will hit a
    wall next" ask about events after the clip ends, which no contact in the clip shows; on the last frame's tokens
    this is a read instead of a roll-out the layers must learn (the forward model of interaction networks, by rule).

    With ``order=True`` each token also says whether its object comes *first* among the frame's objects: the soonest
    to reach a frame edge, and the soonest to touch anything (box or edge), over all forecast times (no horizon).
    "Which object will hit a wall next" is an argmin across tracks; without the flags the layers must learn to
    compare real-valued times between tokens from a few hundred such questions.

    Layers: ``out`` projects the partner's appearance; ``soon`` embeds how soon the two forecast events come (the time
    to the first contact and to the nearest frame edge, in horizons, 1 = not within the horizon); ``order``, with
    ``order=True``, embeds the two which-comes-first flags. Their names are the keys of trained checkpoints."""

    def __init__(self, hidden_size: int, box_substeps: int, horizon: float, order: bool = False):
        super().__init__()
        if horizon <= 0:
            raise ValueError(f"forecast_horizon must be > 0 sampled frames, got {horizon}")
        self.box_substeps, self.horizon = box_substeps, horizon
        self.wall = nn.Parameter(torch.randn(hidden_size) * 0.02)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.soon = nn.Linear(2, hidden_size)
        self.order = nn.Linear(2, hidden_size) if order else None

    def forward(self, boxes: torch.Tensor, mask: torch.Tensor, appearance: torch.Tensor) -> torch.Tensor:
        """boxes (B, T*S, K, 4), mask (B, T*S, K), per-object appearance (B, K, H) -> messages (B, T, K, H)."""
        B, TS, K, _ = boxes.shape
        S = self.box_substeps
        T = TS // S
        times = contact_times(boxes, mask).view(B, T, S, K, K + 1)
        known = has_previous(mask).view(B, T, S, K)
        last = S - 1 - known.flip(2).int().argmax(2)  # (B, T, K): the frame's last row with a known motion
        times = times.gather(2, last[:, :, None, :, None].expand(B, T, 1, K, K + 1))[:, :, 0]  # (B, T, K, K+1)
        times = times / (self.horizon * S)  # in horizons; inf where the frame has no row with a known motion
        first_contact, partner = times.min(-1)  # (B, T, K): the time to the first contact and what it touches
        partner = torch.where(first_contact < 1, partner, K + 1)  # K + 1: nothing within the horizon
        w = F.one_hot(partner, K + 2).to(appearance.dtype)[..., : K + 1]
        message = self.out(mix_partners(w, appearance, self.wall))
        to_edge = times[..., K]  # (B, T, K): the time to the nearest frame edge
        times_within = torch.stack([first_contact, to_edge], dim=-1).clamp(max=1).to(appearance.dtype)
        message = message + self.soon(times_within)
        if self.order is not None:
            forecast = torch.stack([to_edge, first_contact], dim=-1)  # (B, T, K, 2): to an edge, to anything
            comes_first = (forecast == forecast.amin(2, keepdim=True)) & forecast.isfinite()  # every object that ties
            message = message + self.order(comes_first.to(appearance.dtype))
        return message


def pair_features(boxes: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B, T, K, 4) xyxy (absent boxes zeroed) -> (B, T*K, T*K, 7) features of every frame-major token pair (p, q):
    q's centre minus p's (x, y), their distance, the gap between the boxes (< 0: overlapping), (t_q - t_p) / T,
    same object, same frame."""
    B, T, K, _ = boxes.shape
    flat = boxes.reshape(B, T * K, 4)
    centre, half = (flat[..., :2] + flat[..., 2:]) / 2, (flat[..., 2:] - flat[..., :2]) / 2  # (B, L, 2)
    offset = centre[:, None] - centre[:, :, None]  # (B, L, L, 2): q - p
    gap = (offset.abs() - half[:, None] - half[:, :, None]).amax(-1, keepdim=True)  # (B, L, L, 1)
    t = torch.arange(T, device=boxes.device).repeat_interleave(K)  # (L,)
    k = torch.arange(K, device=boxes.device).repeat(T)
    dt = ((t[None] - t[:, None]).to(boxes.dtype) / max(num_frames - 1, 1))[None, :, :, None].expand(B, -1, -1, 1)
    same_obj = (k[None] == k[:, None]).to(boxes.dtype)[None, :, :, None].expand(B, -1, -1, 1)
    same_frame = (t[None] == t[:, None]).to(boxes.dtype)[None, :, :, None].expand(B, -1, -1, 1)
    return torch.cat([offset, offset.norm(dim=-1, keepdim=True), gap, dt, same_obj, same_frame], dim=-1)


class BiasedBlock(nn.Module):
    """Pre-norm transformer block whose attention logits take an additive per-head bias (B, heads, L, L).
    (nn.TransformerEncoder accepts such a bias as a float ``mask``, but its inference fast path returns NaN for it.)"""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(hidden_size), nn.LayerNorm(hidden_size)
        self.qkv, self.out = nn.Linear(hidden_size, 3 * hidden_size), nn.Linear(hidden_size, hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, intermediate_size),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(intermediate_size, hidden_size),
        )

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, L, H = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, self.num_heads, H // self.num_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0)
        x = x + F.dropout(self.out(a.transpose(1, 2).reshape(B, L, H)), self.dropout, self.training)
        return x + F.dropout(self.mlp(self.norm2(x)), self.dropout, self.training)


class TrackFusion(nn.Module):
    """Fusion over object tracks; built by the reasoner as ``TrackFusion(vision_width, grid, num_prefix_tokens, ...)``.

    Contract: ``forward(visual (B, T, N, D), frame_mask (B, T), *, boxes (B, T * S, K, 4), box_mask (B, T * S, K),
    box_attributes (B, K, V) = None) -> (B, max_objects * T, hidden_size)``, S = ``box_substeps`` (row ``t * S``
    is frame t's box); boxes are required (K <= ``max_objects``), ``box_attributes`` only with
    ``appearance="oracle"`` (V = ``num_attributes``). Ablation switches: ``identity_embed``, ``time_embed``,
    ``motion`` (the motion part of the box features), ``box_substeps``, ``contacts`` (the gap features),
    ``partner_messages`` (`PartnerMessages`) and ``contact_gap`` (its partner picked by rule), ``relation_bias`` (the
    pair-wise attention bias), ``masked_boxes`` (masked box modelling), ``kinematics`` (`kinematic_features`),
    ``forecast_horizon`` (`ForecastMessages`; None: off) and ``forecast_order`` (its which-comes-first flags). The
    embedded default turns on ``box_substeps: 4``, ``partner_messages`` and ``contact_gap: 0.02`` (the contact
    messages), ``forecast_horizon: 4.0`` (the forecast messages) and ``forecast_order`` (their flags), and leaves
    ``contacts``, ``relation_bias``, ``masked_boxes`` and ``kinematics`` off (no better on the probe rows of
    docs/results.md).
    """

    supports_text = False
    needs_boxes = reads_boxes = True  # no tracks, no tokens: there is no fallback for missing boxes

    def __init__(
        self,
        vision_width: int,
        grid: tuple[int, int],
        num_prefix_tokens: int,
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
        contacts: bool = False,
        partner_messages: bool = False,
        contact_gap: float | None = None,
        relation_bias: bool = False,
        masked_boxes: bool = False,
        kinematics: bool = False,
        forecast_horizon: float | None = None,
        forecast_order: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if appearance not in ("roi", "oracle", "none"):
            raise ValueError(f"appearance must be 'roi', 'oracle' or 'none', got {appearance!r}")
        self.grid, self.num_prefix_tokens, self.roi_size = tuple(grid), num_prefix_tokens, roi_size
        self.appearance, self.max_objects, self.motion = appearance, max_objects, motion
        if box_substeps < 1:
            raise ValueError(f"box_substeps must be >= 1, got {box_substeps}")
        self.num_frames, self.num_heads = num_frames, num_heads
        self.box_substeps, self.contacts, self.kinematics = box_substeps, contacts, kinematics
        self.hidden_size = self.output_dim = hidden_size
        self.num_output_tokens = max_objects * num_frames
        if appearance == "roi":
            self.visual_norm = nn.LayerNorm(vision_width)
            self.appearance_proj = nn.Linear(vision_width * roi_size * roi_size, hidden_size)
        elif appearance == "oracle":
            self.attribute_embed = nn.Linear(num_attributes, hidden_size)
        per_row = BOX_FEATURES + (max_objects + 4 if contacts else 0) + (KINEMATIC_FEATURES if kinematics else 0)
        self.box_embed = nn.Sequential(
            nn.Linear(box_substeps * per_row, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
        )
        self.partners = PartnerMessages(hidden_size, box_substeps, contact_gap) if partner_messages else None
        if forecast_order and forecast_horizon is None:
            raise ValueError("forecast_order needs forecast messages: set forecast_horizon too")
        self.forecasts = (
            None
            if forecast_horizon is None
            else ForecastMessages(hidden_size, box_substeps, forecast_horizon, order=forecast_order)
        )
        self.identity = nn.Parameter(torch.randn(max_objects, hidden_size) * 0.02) if identity_embed else None
        self.time = nn.Parameter(torch.randn(num_frames, hidden_size) * 0.02) if time_embed else None
        if relation_bias:
            self.relation = nn.Sequential(
                nn.Linear(PAIR_FEATURES, hidden_size // 4), nn.GELU(), nn.Linear(hidden_size // 4, num_heads)
            )
            self.blocks = nn.ModuleList(
                BiasedBlock(hidden_size, num_heads, intermediate_size, dropout) for _ in range(num_layers)
            )
        else:
            self.relation = None
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
        self.masked_boxes = masked_boxes
        if masked_boxes:  # the self-supervised objective `masked_box_loss` (stage 2's `masked_box_weight`)
            self.hidden_token = nn.Parameter(torch.randn(hidden_size) * 0.02)
            self.box_head = nn.Linear(hidden_size, 4)
        else:
            self.hidden_token = self.box_head = None

    def tokens(
        self,
        visual: torch.Tensor,
        frame_mask: torch.Tensor | None,
        boxes: torch.Tensor | None,
        box_mask: torch.Tensor | None,
        box_attributes: torch.Tensor | None,
        hide: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input tokens (B, T, K, H) before attention, their keep-mask (B, T, K) and the sampled frames' boxes
        (B, T, K, 4), K = ``max_objects``. ``hide`` (B, T, K_in): tokens whose box and appearance are replaced by the
        learned ``hidden_token`` plus their object's mean appearance over its visible frames (identity and time
        stay), and whose box no neighbour's motion features read."""
        B, T, N, D = visual.shape
        if boxes is None:
            raise ValueError(
                "TrackFusion needs per-frame object boxes (B, T, K, 4): give the datamodule a boxes file "
                "(synthetic_boxes: true, or a detector's boxes in the boxes.json layout; `vrp ask --boxes`)"
            )
        K, S = boxes.shape[2], self.box_substeps
        if boxes.shape[:2] != (B, T * S) or boxes.shape[-1] != 4 or K > self.max_objects:
            raise ValueError(
                f"boxes must be (B={B}, T*box_substeps={T}*{S}, K<={self.max_objects}, 4); got {tuple(boxes.shape)} "
                "(the datamodule's box_substeps must equal the fusion's)"
            )
        mask = torch.ones(B, T * S, K, dtype=torch.bool, device=visual.device) if box_mask is None else box_mask.bool()
        if frame_mask is not None:
            mask = mask & frame_mask.bool().repeat_interleave(S, dim=1)[:, :, None]
        boxes = boxes.masked_fill(~mask[..., None], 0.0)  # absent boxes may hold NaN or junk
        present = mask
        if hide is not None:
            mask = mask & ~hide.bool().repeat_interleave(S, dim=1)  # what the features may read
        feats = box_features(boxes, mask)  # (B, T*S, K, 12): motion at the box rows' rate
        if not self.motion:
            feats = torch.cat(
                [feats[..., :POSITION_FEATURES], torch.zeros_like(feats[..., POSITION_FEATURES:])], dim=-1
            )
        if self.contacts:
            feats = torch.cat([feats, contact_features(boxes, mask, self.max_objects)], dim=-1)
        if self.kinematics:
            feats = torch.cat([feats, kinematic_features(boxes, mask)], dim=-1)
        feats = feats.view(B, T, S, K, -1).transpose(2, 3).reshape(B, T, K, -1)  # (B, T, K, S * per_row)
        x = self.box_embed(feats)  # (B, T, K, H)
        rows, row_mask = boxes, mask
        mask, visible = present[:, ::S], mask[:, ::S]  # the sampled frames' tokens (B, T, K): present, visible
        boxes = boxes[:, ::S] * visible[..., None]  # their boxes (B, T, K, 4); hidden ones zeroed
        app = torch.zeros_like(x)
        if self.appearance == "roi":
            if N != self.num_prefix_tokens + self.grid[0] * self.grid[1]:
                raise ValueError(
                    f"visual has {N} tokens per frame; this fusion was built for {self.num_prefix_tokens} "
                    f"prefix + {self.grid[0]}x{self.grid[1]} patch tokens"
                )
            patches = self.visual_norm(visual[:, :, self.num_prefix_tokens :])
            app = self.appearance_proj(roi_features(patches, self.grid, boxes, self.roi_size))
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
        m = visible[..., None].to(x.dtype)
        per_object = (app * m).sum(1) / m.sum(1).clamp(min=1)  # (B, K, H): each object's mean visible appearance
        if self.partners is not None:
            x = x + self.partners(rows, row_mask, per_object)
        if self.forecasts is not None:
            x = x + self.forecasts(rows, row_mask, per_object)
        if hide is not None:  # a hidden token keeps what its object looks like (elsewhere), not where it is
            x = torch.where(visible[..., None], x, (self.hidden_token + per_object[:, None]).to(x.dtype))
        pad = self.max_objects - K
        if pad:
            x = torch.cat([x, x.new_zeros(B, T, pad, x.shape[-1])], dim=2)
            mask = torch.cat([mask, mask.new_zeros(B, T, pad)], dim=2)
            boxes = torch.cat([boxes, boxes.new_zeros(B, T, pad, 4)], dim=2)
        if self.identity is not None:
            x = x + self.identity[None, None]
        if self.time is not None:
            x = x + interpolate_embeddings(self.time, T)[None, :, None]
        return x, mask, boxes

    def forward(
        self,
        visual: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        *,
        boxes: torch.Tensor | None = None,
        box_mask: torch.Tensor | None = None,
        box_attributes: torch.Tensor | None = None,
        text_ids: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """-> (B, max_objects * T, H) frame-major track tokens; absent objects' tokens are zero."""
        if text_ids is not None:
            raise ValueError("TrackFusion does not read text; set use_qformer_text: false")
        out, mask, _ = self.encode_tracks(visual, frame_mask, boxes, box_mask, box_attributes)
        return out * mask[..., None]

    def encode_tracks(
        self,
        visual: torch.Tensor,
        frame_mask: torch.Tensor | None,
        boxes: torch.Tensor | None,
        box_mask: torch.Tensor | None,
        box_attributes: torch.Tensor | None,
        hide: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> attended tokens (B, T*K, H) (padding objects not yet zeroed), keep-mask (B, T*K), the sampled frames'
        boxes (B, T, K, 4) (hidden ones zeroed), K = ``max_objects``; ``hide`` as in `tokens`."""
        x, mask, boxes = self.tokens(visual, frame_mask, boxes, box_mask, box_attributes, hide)  # (B, T, K, H)
        B, T, K, H = x.shape
        flat, mask = x.reshape(B, T * K, H), mask.reshape(B, T * K)
        keep = mask | ~mask.any(1, keepdim=True)  # a clip without any box still attends (to zeros) instead of NaN
        if self.relation is None:
            out = self.encoder(flat, src_key_padding_mask=~keep)  # (B, T*K, H)
        else:  # the pair bias, and -inf on padded keys
            bias = self.relation(pair_features(boxes, self.num_frames)).permute(0, 3, 1, 2)  # (B, heads, L, L)
            bias = bias.masked_fill(~keep[:, None, None, :], float("-inf"))
            out = flat
            for block in self.blocks:
                out = block(out, bias)
        return self.norm(out), mask, boxes

    def masked_box_loss(
        self,
        visual: torch.Tensor,
        frame_mask: torch.Tensor | None,
        *,
        boxes: torch.Tensor,
        box_mask: torch.Tensor | None = None,
        box_attributes: torch.Tensor | None = None,
        span: int = 3,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Masked track modelling (the self-supervised objective of Aloe / SlotFormer, over boxes): in each clip
        every object has a contiguous span of 1..``span`` sampled frames hidden with probability 1/2 (its box,
        its appearance there and its neighbours' motion toward it; the token keeps the object's mean appearance
        over its visible frames, so it knows *which* object it is, not *where*), and ``box_head`` predicts the hidden boxes from the
        other objects and frames: a bounce or a collision inside the span is what the tokens must model. Needs
        ``masked_boxes=True``. -> mean L1 over the hidden boxes' xyxy (x 10: boxes are in [0, 1]); 0 if none."""
        if self.box_head is None:
            raise ValueError("masked_box_loss needs a TrackFusion built with masked_boxes=True")
        B, T = visual.shape[:2]
        K, S = boxes.shape[2], self.box_substeps
        device = visual.device
        length = 1 + torch.randint(min(span, T), (B, K), generator=generator, device=device)  # (B, K)
        start = (torch.rand(B, K, generator=generator, device=device) * (T - length + 1)).long()
        t = torch.arange(T, device=device)[None, :, None]  # (1, T, 1)
        chosen = torch.rand(B, K, generator=generator, device=device) < 0.5
        hide = (t >= start[:, None]) & (t < (start + length)[:, None]) & chosen[:, None]  # (B, T, K)
        out, mask, _ = self.encode_tracks(visual, frame_mask, boxes, box_mask, box_attributes, hide)
        pad = self.max_objects - K
        hide = torch.cat([hide, hide.new_zeros(B, T, pad)], dim=2).reshape(B, T * self.max_objects) & mask
        if not hide.any():
            return out.sum() * 0.0
        pred = self.box_head(out[hide])  # (M, 4)
        target = torch.cat([boxes[:, ::S], boxes.new_zeros(B, T, pad, 4)], dim=2).reshape(B, -1, 4)[hide]
        return (pred - target).abs().mean() * 10
