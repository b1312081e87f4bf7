"""Q-Former fusion: learned queries that read visual (and object) tokens through cross-attention.

`QFormer` is the BERT-style, post-LayerNorm core of BLIP-2 / InstructBLIP, laid out so that their Hugging Face
weights load exactly (see `vrp.models.interop`). `QFormerFusion` turns it into a video fusion module with two
spatiotemporal options and optional object tokens (`vrp.models.objects`).

Speed: fused QKV projection, SDPA for self-attention, no per-call mask building when nothing is masked, and
cross-attention that never projects a long memory to keys and values (see `CrossAttention`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vrp.models.objects import ObjectTokens, interpolate_embeddings

def _key_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, M) bool keep-mask -> (B, 1, 1, M) SDPA mask, or None when nothing is masked."""
    if mask is None or bool(mask.all()):
        return None
    if not bool(mask.any(-1).all()):
        raise ValueError("every row must keep at least one key/memory token; got a row with all tokens masked")
    return mask[:, None, None, :]


class SelfAttention(nn.Module):
    """BERT self-attention block: fused QKV, SDPA, output projection, residual, post-LayerNorm."""

    def __init__(self, hidden_size: int, num_heads: int, *, eps: float, dropout: float, attention_dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.attention_dropout = attention_dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, L, H = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, H // self.num_heads).permute(2, 0, 3, 1, 4)  # (B, h, L, d)
        p = self.attention_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, L, H)
        return self.norm(self.dropout(self.proj(y)) + x)


class CrossAttention(nn.Module):
    """BERT cross-attention block from queries (B, Q, H) to a memory (B, M, Dv), residual, post-LayerNorm.

    When heads x queries < hidden size and the memory is long (BLIP-2: 12 x 32 = 384 < 768, 257 tokens), the keys and
    values of the memory are never formed: the key projection is folded into the queries,
    q_h k_h^T = (q_h Wk_h^T) M^T + const, whose key-bias term is constant along the key axis and cancels in the
    softmax, and the value projection is applied after attention, a_h (M Wv_h^T + bv_h) = (a_h M) Wv_h^T + bv_h
    (rows of a_h sum to 1; with attention dropout the bias is scaled by the row sums). This is exact algebra and
    about halves the multiply-adds against the memory, forward and backward; `fold_memory` picks the cheaper form.
    """

    def __init__(self, hidden_size: int, memory_width: int, num_heads: int, *, eps: float, dropout: float,
                 attention_dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(hidden_size, hidden_size)
        self.kv = nn.Linear(memory_width, 2 * hidden_size)  # rows: keys then values
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.attention_dropout = attention_dropout

    def fold_memory(self, num_queries: int, memory_len: int) -> bool:
        """True when folding K/V into the queries costs fewer multiply-adds against the memory than projecting it."""
        H = self.q.out_features
        return self.num_heads * num_queries * memory_len + num_queries * H < H * memory_len

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        fold = self.fold_memory(x.shape[1], memory.shape[1])
        y = self._attend_folded(x, memory, mask) if fold else self._attend(x, memory, mask)  # (B, Q, H)
        return self.norm(self.dropout(self.proj(y)) + x)

    def _attend(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, Q, H = x.shape
        h, d = self.num_heads, H // self.num_heads
        q = self.q(x).view(B, Q, h, d).transpose(1, 2)  # (B, h, Q, d)
        k, v = self.kv(memory).view(B, -1, 2, h, d).permute(2, 0, 3, 1, 4)  # (B, h, M, d)
        p = self.attention_dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p).transpose(1, 2).reshape(B, Q, H)

    def _attend_folded(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, Q, H = x.shape
        M, W = memory.shape[1:]
        h, d = self.num_heads, H // self.num_heads
        w_k, w_v = self.kv.weight.view(2, h, d, W).unbind(0)  # (h, d, W)
        q = (self.q(x) * d**-0.5).view(B * Q, h, d).transpose(0, 1)  # (h, B*Q, d)
        qk = torch.bmm(q, w_k).view(h, B, Q, W).transpose(0, 1).reshape(B, h * Q, W)  # queries in memory space
        scores = torch.bmm(qk, memory.transpose(1, 2)).view(B, h, Q, M)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        attn = scores.softmax(-1)
        if self.training and self.attention_dropout > 0:
            attn = F.dropout(attn, self.attention_dropout)
        read = torch.bmm(attn.view(B, h * Q, M), memory)  # (B, h*Q, W): attention-weighted memory per head
        read = read.view(B, h, Q, W).transpose(0, 1).reshape(h, B * Q, W)
        y = torch.bmm(read, w_v.transpose(1, 2)).view(h, B, Q, d).permute(1, 2, 0, 3)  # (B, Q, h, d)
        b_v = self.kv.bias[H:].view(h, d)
        if self.training and self.attention_dropout > 0:  # dropped rows no longer sum to 1
            y = y + attn.sum(-1).transpose(1, 2)[..., None] * b_v
        else:
            y = y + b_v
        return y.reshape(B, Q, H)


class FeedForward(nn.Module):
    """BERT feed-forward block with residual and post-LayerNorm."""

    def __init__(self, hidden_size: int, intermediate_size: int, *, eps: float, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.dropout(self.fc2(F.gelu(self.fc1(x)))) + x)


class QFormerLayer(nn.Module):
    """Self-attention over queries (+ text), cross-attention of the queries only, separate query/text FFNs."""

    def __init__(self, hidden_size: int, memory_width: int, num_heads: int, intermediate_size: int, *,
                 cross_attention: bool, text: bool, eps: float, dropout: float, attention_dropout: float):
        super().__init__()
        self.self_attn = SelfAttention(hidden_size, num_heads, eps=eps, dropout=dropout,
                                       attention_dropout=attention_dropout)
        self.cross_attn = (CrossAttention(hidden_size, memory_width, num_heads, eps=eps, dropout=dropout,
                                          attention_dropout=attention_dropout)
                           if cross_attention else None)
        self.ffn = FeedForward(hidden_size, intermediate_size, eps=eps, dropout=dropout)
        self.text_ffn = FeedForward(hidden_size, intermediate_size, eps=eps, dropout=dropout) if text else None

    def forward(self, x: torch.Tensor, num_queries: int, self_mask: torch.Tensor | None,
                memory: torch.Tensor | None, memory_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.self_attn(x, self_mask)  # (B, Q + L, H)
        q, t = x[:, :num_queries], x[:, num_queries:]
        if num_queries and self.cross_attn is not None:
            q = self.cross_attn(q, memory, memory_mask)
        out = [self.ffn(q)] if num_queries else []
        if t.shape[1]:
            if self.text_ffn is None:
                raise ValueError("this Q-Former was built without text (vocab_size=0) and cannot take text tokens")
            out.append(self.text_ffn(t))
        return torch.cat(out, dim=1) if len(out) > 1 else out[0]


def _init_weights(m: nn.Module, std: float) -> None:
    """BERT init (std 0.02 at BLIP-2 size). Small randomly initialised Q-Formers want a larger std: with 0.02 at
    hidden 128 the cross-attention adds so little to the learned queries that every video gives the same output."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=std)
    if isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)


class QFormer(nn.Module):
    """BLIP-2 Q-Former: `num_query_tokens` learned queries, optionally joined by text tokens (InstructBLIP).

    Cross-attention to the memory sits in layers 0, f, 2f, ... (f = `cross_attention_freq`), as in BLIP-2.
    `vocab_size=0` builds no text embeddings and no text FFNs (BLIP-2 for generation); > 0 enables text input.
    """

    def __init__(self, memory_width: int, *, num_query_tokens: int = 32, hidden_size: int = 768,
                 num_layers: int = 12, num_heads: int = 12, intermediate_size: int = 3072,
                 cross_attention_freq: int = 2, vocab_size: int = 0, max_text_len: int = 512,
                 pad_token_id: int = 0, layer_norm_eps: float = 1e-12, dropout: float = 0.0,
                 attention_dropout: float = 0.0, init_std: float = 0.02):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
        self.memory_width, self.hidden_size, self.num_query_tokens = memory_width, hidden_size, num_query_tokens
        self.query_tokens = nn.Parameter(torch.randn(1, num_query_tokens, hidden_size) * init_std)
        self.supports_text = vocab_size > 0
        if self.supports_text:
            self.word_embeddings = nn.Embedding(vocab_size, hidden_size, padding_idx=pad_token_id)
            self.position_embeddings = nn.Embedding(max_text_len, hidden_size)
        self.embed_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.embed_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            QFormerLayer(hidden_size, memory_width, num_heads, intermediate_size,
                         cross_attention=i % cross_attention_freq == 0, text=self.supports_text, eps=layer_norm_eps,
                         dropout=dropout, attention_dropout=attention_dropout)
            for i in range(num_layers))
        self.apply(lambda m: _init_weights(m, init_std))

    def embed_text(self, text_ids: torch.Tensor) -> torch.Tensor:
        if not self.supports_text:
            raise ValueError("this Q-Former was built without text (vocab_size=0); set vocab_size to use text_ids")
        L = text_ids.shape[1]
        if L > self.position_embeddings.num_embeddings:
            raise ValueError(f"text of {L} tokens exceeds max_text_len={self.position_embeddings.num_embeddings}")
        pos = torch.arange(L, device=text_ids.device)
        return self.word_embeddings(text_ids) + self.position_embeddings(pos)  # (B, L, H)

    def forward(self, memory: torch.Tensor | None, memory_mask: torch.Tensor | None = None, *,
                text_ids: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                text_causal: bool = False, queries: bool = True) -> torch.Tensor:
        """memory (B, M, Dv), memory_mask (B, M) bool True = keep, text (B, L) -> (B, Q + L, H) (Q = 0 if not queries).

        `text_causal` lets text attend only to the queries and earlier text (BLIP-2 image-grounded generation).
        """
        B = memory.shape[0] if memory is not None else text_ids.shape[0]
        parts = [self.query_tokens.expand(B, -1, -1)] if queries else []
        if text_ids is not None:
            parts.append(self.embed_text(text_ids))
        x = self.embed_dropout(self.embed_norm(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]))
        Q = self.num_query_tokens if queries else 0
        self_mask = self._self_mask(B, Q, text_ids, text_mask, text_causal, x.device)
        mem_mask = _key_mask(memory_mask)
        if Q and memory is None:
            raise ValueError("queries need a memory to cross-attend to")
        for layer in self.layers:
            x = layer(x, Q, self_mask, memory, mem_mask)
        return x

    def _self_mask(self, B: int, Q: int, text_ids, text_mask, causal: bool, device) -> torch.Tensor | None:
        L = 0 if text_ids is None else text_ids.shape[1]
        keep = torch.ones(B, Q + L, dtype=torch.bool, device=device)
        if text_mask is not None:
            keep[:, Q:] = text_mask.bool()
        if not causal:
            return _key_mask(keep)
        allowed = torch.ones(Q + L, Q + L, dtype=torch.bool, device=device)
        allowed[:Q, Q:] = False  # queries do not read the text they caption
        allowed[Q:, Q:] = torch.tril(allowed[Q:, Q:])
        return allowed[None, None] & keep[:, None, None, :]

    def encode_text(self, text_ids: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unimodal text encoder (no queries, no cross-attention): (B, L) -> (B, L, H); [:, 0] is the text feature."""
        return self.forward(None, text_ids=text_ids, text_mask=text_mask, queries=False)


class QFormerFusion(nn.Module):
    """Video fusion with Q-Formers; built by the reasoner as `fusion(vision_width, grid, num_prefix_tokens)`.

    temporal="per_frame" (Video-LLaMA): frames are folded into the batch for a BLIP-2-style frame Q-Former
    (`frame_qformer`, loadable from BLIP-2), its (T*Q) outputs get learned temporal embeddings and a small video
    Q-Former (`qformer`) reads them. temporal="joint": one Q-Former (`qformer`) reads all frames' tokens with factorised
    spatial + temporal embeddings. Temporal embeddings are learned for `num_frames` and linearly interpolated for other T.
    Padding frames (frame_mask False) are masked out of every memory and skipped by the frame Q-Former.
    `objects=True` adds per-frame object tokens (`vrp.models.objects.ObjectTokens`) to the cross-attention memory.
    Text (`vocab_size > 0`) joins the queries of `qformer`, the one whose outputs leave the module (InstructBLIP).
    `init_std` is the weight init (0.02 as BERT/BLIP-2; tiny random Q-Formers want ~0.1, see `_init_weights`).
    """

    def __init__(self, vision_width: int, grid: tuple[int, int], num_prefix_tokens: int, *,
                 temporal: Literal["per_frame", "joint"] = "per_frame", num_query_tokens: int = 32,
                 hidden_size: int = 768, num_layers: int = 12, num_heads: int = 12, intermediate_size: int = 3072,
                 cross_attention_freq: int = 2, num_frames: int = 8, video_num_query_tokens: int = 32,
                 video_num_layers: int = 2, vocab_size: int = 0, max_text_len: int = 64, pad_token_id: int = 0,
                 visual_norm: bool = True, objects: bool = False, num_slots: int = 4, slot_iters: int = 3,
                 roi_size: int = 2, dropout: float = 0.0, attention_dropout: float = 0.0,
                 layer_norm_eps: float = 1e-12, init_std: float = 0.02):
        super().__init__()
        if temporal not in ("per_frame", "joint"):
            raise ValueError(f"temporal must be 'per_frame' or 'joint', got {temporal!r}")
        self.temporal, self.grid, self.num_prefix_tokens = temporal, tuple(grid), num_prefix_tokens
        self.hidden_size = self.output_dim = hidden_size
        self.supports_text = vocab_size > 0
        self.needs_boxes, self.reads_boxes = False, objects  # object tokens: RoIAlign of boxes, else slot attention
        self.visual_norm = nn.LayerNorm(vision_width) if visual_norm else nn.Identity()
        self.objects = (ObjectTokens(vision_width, grid, num_prefix_tokens, num_slots=num_slots, slot_iters=slot_iters,
                                     roi_size=roi_size, num_frames=num_frames) if objects else None)
        common = dict(hidden_size=hidden_size, num_heads=num_heads, intermediate_size=intermediate_size,
                      layer_norm_eps=layer_norm_eps, dropout=dropout, attention_dropout=attention_dropout,
                      init_std=init_std)
        text = dict(vocab_size=vocab_size, max_text_len=max_text_len, pad_token_id=pad_token_id)
        if temporal == "per_frame":
            self.frame_qformer = QFormer(vision_width, num_query_tokens=num_query_tokens, num_layers=num_layers,
                                         cross_attention_freq=cross_attention_freq, **common)
            self.temporal_embed = nn.Parameter(torch.randn(num_frames, hidden_size) * init_std)
            self.qformer = QFormer(hidden_size, num_query_tokens=video_num_query_tokens, num_layers=video_num_layers,
                                   cross_attention_freq=1, **common, **text)
        else:
            self.spatial_embed = nn.Parameter(torch.randn(num_prefix_tokens + grid[0] * grid[1], vision_width) * init_std)
            self.temporal_embed = nn.Parameter(torch.randn(num_frames, vision_width) * init_std)
            self.qformer = QFormer(vision_width, num_query_tokens=num_query_tokens, num_layers=num_layers,
                                   cross_attention_freq=cross_attention_freq, **common, **text)
        self.num_output_tokens = self.qformer.num_query_tokens

    def memory(self, visual: torch.Tensor, frame_mask: torch.Tensor | None = None, boxes: torch.Tensor | None = None,
               box_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory `qformer` cross-attends to: (B, M, W) and its keep-mask (B, M)."""
        B, T, N, D = visual.shape
        if N != self.num_prefix_tokens + self.grid[0] * self.grid[1]:
            raise ValueError(f"visual has {N} tokens per frame; this fusion was built for {self.num_prefix_tokens} "
                             f"prefix + {self.grid[0]}x{self.grid[1]} patch tokens")
        frame_mask = (torch.ones(B, T, dtype=torch.bool, device=visual.device) if frame_mask is None
                      else frame_mask.bool())
        if not bool(frame_mask.any(-1).all()):
            raise ValueError("frame_mask has a video with no real frame")
        x = self.visual_norm(visual)  # (B, T, N, D)
        keep = frame_mask[:, :, None].expand(B, T, N)  # (B, T, N)
        if self.temporal == "joint":
            x = x + self.spatial_embed + interpolate_embeddings(self.temporal_embed, T)[None, :, None]
        if self.objects is not None:
            obj, obj_mask = self.objects(x, boxes, box_mask)  # (B, T, K, D), (B, T, K)
            x = torch.cat([x, obj], dim=2)
            keep = torch.cat([keep, obj_mask & frame_mask[:, :, None]], dim=2)
        if self.temporal == "joint":
            return x.flatten(1, 2), keep.flatten(1, 2)
        # Per frame: run the frame Q-Former on real frames only, then add temporal embeddings.
        real = frame_mask.flatten()  # (B*T,)
        frames = self.frame_qformer(x.flatten(0, 1)[real], keep.flatten(0, 1)[real])  # (R, Q, H)
        out = frames.new_zeros(B * T, *frames.shape[1:]).index_put((real.nonzero()[:, 0],), frames)
        out = out.view(B, T, -1, self.hidden_size) + interpolate_embeddings(self.temporal_embed, T)[None, :, None]
        return out.flatten(1, 2), frame_mask[:, :, None].expand(B, T, out.shape[2]).flatten(1, 2)

    def forward(self, visual: torch.Tensor, frame_mask: torch.Tensor | None = None, *,
                boxes: torch.Tensor | None = None, box_mask: torch.Tensor | None = None,
                box_attributes: torch.Tensor | None = None, text_ids: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """visual (B, T, N, D), frame_mask (B, T) -> (B, Q, output_dim); text (B, L) joins the queries if given
        (``box_attributes``, read only by the state oracle, is ignored)."""
        if text_ids is not None and not self.supports_text:
            raise ValueError("text_ids given to a fusion built without text; set vocab_size > 0 or pass no text")
        memory, keep = self.memory(visual, frame_mask, boxes, box_mask)
        return self.qformer(memory, keep, text_ids=text_ids, text_mask=text_mask)[:, : self.num_output_tokens]

    def forward_with_text(self, visual: torch.Tensor, frame_mask: torch.Tensor | None, text_ids: torch.Tensor,
                          text_mask: torch.Tensor | None = None, *, boxes: torch.Tensor | None = None,
                          box_mask: torch.Tensor | None = None, text_causal: bool = False) -> torch.Tensor:
        """Queries and text jointly (stage-1 matching; `text_causal` for grounded captioning) -> (B, Q + L, H)."""
        memory, keep = self.memory(visual, frame_mask, boxes, box_mask)
        return self.qformer(memory, keep, text_ids=text_ids, text_mask=text_mask, text_causal=text_causal)

    def encode_text(self, text_ids: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unimodal text features (B, L, H) from `qformer`; [:, 0] is the text feature."""
        return self.qformer.encode_text(text_ids, text_mask)
