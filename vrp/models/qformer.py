"""Q-Former fusion: learned queries that read visual (and object) tokens through cross-attention.

`QFormer` is the BERT-style, post-LayerNorm core of BLIP-2 / InstructBLIP, laid out so that their Hugging Face
weights load exactly (see `vrp.models.interop`), sized by a `QFormerConfig`. `vrp.models.qformer_fusion` builds the
two video fusion modules on it (`FrameQFormerFusion`, `JointQFormerFusion`).

Speed: fused QKV projection, SDPA for self-attention, no per-call mask building when nothing is masked, and
cross-attention that never projects a long memory to keys and values (see `CrossAttention`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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

    def __init__(
        self,
        hidden_size: int,
        memory_width: int,
        num_heads: int,
        *,
        eps: float,
        dropout: float,
        attention_dropout: float,
    ):
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

    def __init__(
        self,
        hidden_size: int,
        memory_width: int,
        num_heads: int,
        intermediate_size: int,
        *,
        cross_attention: bool,
        text: bool,
        eps: float,
        dropout: float,
        attention_dropout: float,
    ):
        super().__init__()
        self.self_attn = SelfAttention(
            hidden_size, num_heads, eps=eps, dropout=dropout, attention_dropout=attention_dropout
        )
        self.cross_attn = (
            CrossAttention(
                hidden_size, memory_width, num_heads, eps=eps, dropout=dropout, attention_dropout=attention_dropout
            )
            if cross_attention
            else None
        )
        self.ffn = FeedForward(hidden_size, intermediate_size, eps=eps, dropout=dropout)
        self.text_ffn = FeedForward(hidden_size, intermediate_size, eps=eps, dropout=dropout) if text else None

    def forward(
        self,
        x: torch.Tensor,
        num_queries: int,
        self_mask: torch.Tensor | None,
        memory: torch.Tensor | None,
        memory_mask: torch.Tensor | None,
    ) -> torch.Tensor:
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


@dataclass(frozen=True)
class QFormerConfig:
    """A `QFormer`'s sizes, regularisation and init; the defaults are BLIP-2's.

    Cross-attention to the memory sits in layers 0, f, 2f, ... (f = ``cross_attention_freq``), as in BLIP-2.
    ``vocab_size=0`` builds no text embeddings and no text FFNs (BLIP-2 for generation); > 0 enables text input of
    up to ``max_text_len`` tokens. ``init_std``: see `_init_weights`.
    """

    num_query_tokens: int = 32
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    cross_attention_freq: int = 2
    vocab_size: int = 0
    max_text_len: int = 512
    pad_token_id: int = 0
    layer_norm_eps: float = 1e-12
    dropout: float = 0.0
    attention_dropout: float = 0.0
    init_std: float = 0.02


class QFormer(nn.Module):
    """BLIP-2 Q-Former: ``num_query_tokens`` learned queries, optionally joined by text tokens (InstructBLIP), that
    cross-attend to a memory of ``memory_width``-wide tokens; sized by ``config``."""

    def __init__(self, memory_width: int, config: QFormerConfig = QFormerConfig()):
        super().__init__()
        c = config
        if c.hidden_size % c.num_heads:
            raise ValueError(f"hidden_size={c.hidden_size} must be divisible by num_heads={c.num_heads}")
        self.memory_width, self.hidden_size, self.num_query_tokens = memory_width, c.hidden_size, c.num_query_tokens
        self.query_tokens = nn.Parameter(torch.randn(1, c.num_query_tokens, c.hidden_size) * c.init_std)
        self.supports_text = c.vocab_size > 0
        if self.supports_text:
            self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
            self.position_embeddings = nn.Embedding(c.max_text_len, c.hidden_size)
        self.embed_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.embed_dropout = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(
            QFormerLayer(
                c.hidden_size,
                memory_width,
                c.num_heads,
                c.intermediate_size,
                cross_attention=i % c.cross_attention_freq == 0,
                text=self.supports_text,
                eps=c.layer_norm_eps,
                dropout=c.dropout,
                attention_dropout=c.attention_dropout,
            )
            for i in range(c.num_layers)
        )
        self.apply(lambda m: _init_weights(m, c.init_std))

    def embed_text(self, text_ids: torch.Tensor) -> torch.Tensor:
        if not self.supports_text:
            raise ValueError("this Q-Former was built without text (vocab_size=0); set vocab_size to use text_ids")
        L = text_ids.shape[1]
        if L > self.position_embeddings.num_embeddings:
            raise ValueError(f"text of {L} tokens exceeds max_text_len={self.position_embeddings.num_embeddings}")
        pos = torch.arange(L, device=text_ids.device)
        return self.word_embeddings(text_ids) + self.position_embeddings(pos)  # (B, L, H)

    def forward(
        self,
        memory: torch.Tensor | None,
        memory_mask: torch.Tensor | None = None,
        *,
        text_ids: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        text_causal: bool = False,
        queries: bool = True,
    ) -> torch.Tensor:
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
