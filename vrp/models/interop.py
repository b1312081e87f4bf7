"""Weight interop: load `QFormer` from BLIP-2 / InstructBLIP checkpoints (Hugging Face format) or initialise it from BERT.

Hugging Face keys -> ours (per layer i):
  attention.attention.{query,key,value}      -> layers.i.self_attn.qkv (stacked)
  attention.output.{dense,LayerNorm}         -> layers.i.self_attn.{proj,norm}
  crossattention.attention.query             -> layers.i.cross_attn.q
  crossattention.attention.{key,value}       -> layers.i.cross_attn.kv (stacked)
  crossattention.output.{dense,LayerNorm}    -> layers.i.cross_attn.{proj,norm}
  intermediate_query.dense, output_query.*   -> layers.i.ffn.{fc1,fc2,norm}
  intermediate.dense, output.*               -> layers.i.text_ffn.{fc1,fc2,norm}   (text only)
BLIP-2 keeps the embedding LayerNorm at `qformer.layernorm` and text embeddings (ITM/retrieval models) at `embeddings.*`;
InstructBLIP keeps all three at `qformer.embeddings.*`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from vrp.models.io import check_loadable
from vrp.models.qformer import QFormer, QFormerConfig

StateDict = Mapping[str, torch.Tensor]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a `save_pretrained` folder (safetensors, sharded or not, or pytorch_model.bin) or one file."""
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_file():
        return load_file(p) if p.suffix == ".safetensors" else torch.load(p, map_location="cpu", weights_only=True)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (p / index).exists():
            shards = sorted(set(json.loads((p / index).read_text())["weight_map"].values()))
            out: dict[str, torch.Tensor] = {}
            for shard in shards:
                out.update(read_state_dict(p / shard))
            return out
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (p / name).exists():
            return read_state_dict(p / name)
    raise FileNotFoundError(
        f"no model.safetensors / pytorch_model.bin (or an index of shards) in {p}; "
        "pass a folder written by save_pretrained or a single weights file"
    )


def _strip(sd: StateDict, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _bert_layers(
    src: StateDict, num_layers: int, *, self_attn: str, cross: bool, text: bool
) -> dict[str, torch.Tensor]:
    """Map BERT-layout layer keys (`encoder.layer.i.*`) to ours; `self_attn` is 'attention' (Q-Former) or 'self' (BERT)."""
    out = {}
    for i in range(num_layers):
        s, d = f"encoder.layer.{i}.", f"layers.{i}."
        for kind in ("weight", "bias"):
            att = f"{s}attention.{self_attn}."
            out[f"{d}self_attn.qkv.{kind}"] = torch.cat([src[f"{att}{n}.{kind}"] for n in ("query", "key", "value")])
            out[f"{d}self_attn.proj.{kind}"] = src[f"{s}attention.output.dense.{kind}"]
            out[f"{d}self_attn.norm.{kind}"] = src[f"{s}attention.output.LayerNorm.{kind}"]
            if cross and f"{s}crossattention.attention.query.{kind}" in src:
                c = f"{s}crossattention."
                out[f"{d}cross_attn.q.{kind}"] = src[f"{c}attention.query.{kind}"]
                out[f"{d}cross_attn.kv.{kind}"] = torch.cat(
                    [src[f"{c}attention.key.{kind}"], src[f"{c}attention.value.{kind}"]]
                )
                out[f"{d}cross_attn.proj.{kind}"] = src[f"{c}output.dense.{kind}"]
                out[f"{d}cross_attn.norm.{kind}"] = src[f"{c}output.LayerNorm.{kind}"]
            for ours, (inter, outp) in (
                ("ffn", ("intermediate_query", "output_query")),
                ("text_ffn", ("intermediate", "output")),
            ):
                if ours == "text_ffn" and not text:
                    continue
                if f"{s}{inter}.dense.{kind}" not in src:
                    continue
                out[f"{d}{ours}.fc1.{kind}"] = src[f"{s}{inter}.dense.{kind}"]
                out[f"{d}{ours}.fc2.{kind}"] = src[f"{s}{outp}.dense.{kind}"]
                out[f"{d}{ours}.norm.{kind}"] = src[f"{s}{outp}.LayerNorm.{kind}"]
    return out


def blip2_to_qformer_state_dict(sd: StateDict, num_layers: int, *, text: bool) -> dict[str, torch.Tensor]:
    """Convert a BLIP-2 / InstructBLIP (or bare `Blip2QFormerModel`, keys without `qformer.`) state dict to ours."""
    qf = _strip(sd, "qformer.") if any(k.startswith("qformer.") for k in sd) else dict(sd)
    found = 1 + max((int(k.split(".")[2]) for k in qf if k.startswith("encoder.layer.")), default=-1)
    if found != num_layers:
        raise KeyError(
            f"checkpoint Q-Former has {found} layers, ours has {num_layers}; build it with num_layers={found}"
        )
    out = _bert_layers(qf, num_layers, self_attn="attention", cross=True, text=text)
    if "query_tokens" in sd:
        out["query_tokens"] = sd["query_tokens"]
    norm = "layernorm." if "layernorm.weight" in qf else "embeddings.layernorm."
    for kind in ("weight", "bias"):
        if f"{norm}{kind}" in qf:
            out[f"embed_norm.{kind}"] = qf[f"{norm}{kind}"]
    if text:
        emb = _strip(qf, "embeddings.") if "embeddings.word_embeddings.weight" in qf else _strip(sd, "embeddings.")
        for name in ("word_embeddings", "position_embeddings"):
            if f"{name}.weight" in emb:
                out[f"{name}.weight"] = emb[f"{name}.weight"]
    return out


def load_blip2_qformer(
    qformer: QFormer, source: str | os.PathLike | StateDict, *, projection: nn.Linear | None = None, strict: bool = True
) -> list[str]:
    """Load Q-Former, query tokens (and `language_projection` into `projection`) from BLIP-2 / InstructBLIP weights.

    `source`: a `save_pretrained` folder, a weights file or a state dict. With `strict`, every parameter of `qformer`
    must be found (text parameters too when the Q-Former supports text). Returns the loaded parameter names.
    """
    sd = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else source
    converted = blip2_to_qformer_state_dict(sd, len(qformer.layers), text=qformer.supports_text)
    own = qformer.state_dict()
    hint = (
        "build the Q-Former with the checkpoint's config (`qformer_from_blip2`) or its sizes, "
        "cross_attention_freq and vocab_size"
    )
    check_loadable(own, converted, "checkpoint", "Q-Former", hint)
    missing = sorted(set(own) - set(converted))
    if strict and missing:
        raise KeyError(
            f"checkpoint lacks {len(missing)} Q-Former parameters, e.g. {missing[:4]} "
            "(a BLIP-2 generation checkpoint has no text weights: build with vocab_size=0 or strict=False)"
        )
    qformer.load_state_dict(converted, strict=False)
    loaded = sorted(converted)
    if projection is not None:
        if "language_projection.weight" not in sd:
            raise KeyError("checkpoint has no language_projection.*; pass projection=None")
        projection.load_state_dict({"weight": sd["language_projection.weight"], "bias": sd["language_projection.bias"]})
        loaded += ["language_projection.weight", "language_projection.bias"]
    return loaded


def load_blip2_fusion(
    fusion: nn.Module,
    source: str | os.PathLike | StateDict,
    *,
    projection: nn.Linear | None = None,
    strict: bool = True,
) -> list[str]:
    """Load BLIP-2 / InstructBLIP weights into a Q-Former fusion (`vrp.models.qformer_fusion`): its
    ``vision_qformer`` (the frame Q-Former of `FrameQFormerFusion`, the Q-Former of `JointQFormerFusion`), plus the
    vision `post_layernorm` into ``fusion.visual_norm`` (BLIP-2's ln_vision) when both exist."""
    sd = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else source
    loaded = load_blip2_qformer(fusion.vision_qformer, sd, projection=projection, strict=strict)
    if isinstance(fusion.visual_norm, nn.LayerNorm) and "vision_model.post_layernorm.weight" in sd:
        fusion.visual_norm.load_state_dict(
            {"weight": sd["vision_model.post_layernorm.weight"], "bias": sd["vision_model.post_layernorm.bias"]}
        )
        loaded += ["vision_model.post_layernorm.weight", "vision_model.post_layernorm.bias"]
    return loaded


def qformer_config_from_hf(config: Mapping) -> tuple[int, QFormerConfig]:
    """The memory width and `QFormerConfig` of the Q-Former of a BLIP-2 / InstructBLIP `config.json` dict (or a bare
    Q-Former config)."""
    qc = config.get("qformer_config", config)
    instruct = "instructblip" in str(config.get("model_type", ""))
    text = instruct or bool(qc.get("use_qformer_text_input", False))
    return qc.get("encoder_hidden_size", 1408), QFormerConfig(
        num_query_tokens=config.get("num_query_tokens", 32),
        hidden_size=qc.get("hidden_size", 768),
        num_layers=qc.get("num_hidden_layers", 12),
        num_heads=qc.get("num_attention_heads", 12),
        intermediate_size=qc.get("intermediate_size", 3072),
        cross_attention_freq=qc.get("cross_attention_frequency", 2),
        vocab_size=qc.get("vocab_size", 30522) if text else 0,
        max_text_len=qc.get("max_position_embeddings", 512),
        pad_token_id=qc.get("pad_token_id", 0) or 0,
        layer_norm_eps=qc.get("layer_norm_eps", 1e-12),
    )


def qformer_from_blip2(
    path: str | os.PathLike, *, text: bool | None = None, dropout: float = 0.0, attention_dropout: float = 0.0
) -> QFormer:
    """Build a `QFormer` sized like the BLIP-2 / InstructBLIP checkpoint folder `path` and load its weights.

    `text=None` keeps text when the checkpoint has text weights; `dropout` and `attention_dropout` are the Q-Former's.
    """
    cfg_file = Path(path) / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file} not found: pass a folder written by save_pretrained")
    memory_width, config = qformer_config_from_hf(json.loads(cfg_file.read_text()))
    sd = read_state_dict(path)
    has_text = any(k.endswith("word_embeddings.weight") and "vision" not in k and "language_model" not in k for k in sd)
    if text is False or (text is None and not has_text):
        config = replace(config, vocab_size=0)
    elif not has_text:
        raise ValueError(f"{path} has no Q-Former text embeddings; use text=False")
    qformer = QFormer(memory_width, replace(config, dropout=dropout, attention_dropout=attention_dropout))
    load_blip2_qformer(qformer, sd)
    return qformer


def init_qformer_from_bert(qformer: QFormer, source: str | os.PathLike | StateDict) -> list[str]:
    """Initialise a Q-Former from a BERT checkpoint, as BLIP-2 does: self-attention and both FFNs (query and text)
    from BERT's layers, text embeddings from BERT's; cross-attention and query tokens keep their random init.
    BERT's token-type embeddings have no counterpart and are ignored. Returns the loaded parameter names."""
    sd = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else source
    bert = _strip(sd, "bert.") if any(k.startswith("bert.") for k in sd) else dict(sd)
    n = len(qformer.layers)
    if f"encoder.layer.{n - 1}.attention.self.query.weight" not in bert:
        raise KeyError(
            f"BERT checkpoint has fewer than {n} layers (or is not BERT): no "
            f"encoder.layer.{n - 1}.attention.self.query.weight"
        )
    # BERT has one FFN per layer (intermediate/output); it initialises both the query and the text FFN.
    src = dict(bert)
    for k, v in bert.items():
        if k.startswith("encoder.layer.") and (".intermediate." in k or ".output." in k and ".attention." not in k):
            src[k.replace(".intermediate.", ".intermediate_query.").replace(".output.", ".output_query.")] = v
    out = _bert_layers(src, n, self_attn="self", cross=False, text=qformer.supports_text)
    for kind in ("weight", "bias"):
        out[f"embed_norm.{kind}"] = bert[f"embeddings.LayerNorm.{kind}"]
    if qformer.supports_text:
        out["word_embeddings.weight"] = bert["embeddings.word_embeddings.weight"]
        pos = bert["embeddings.position_embeddings.weight"]
        out["position_embeddings.weight"] = pos[: qformer.position_embeddings.num_embeddings]
    hint = "match hidden_size/intermediate_size/vocab_size to the BERT config"
    check_loadable(qformer.state_dict(), out, "BERT", "Q-Former", hint)
    qformer.load_state_dict(out, strict=False)
    return sorted(out)


# Our per-layer name -> the InstructBLIP / BLIP-2 name, for the parts stored one to one (qkv and kv are stacked).
_LAYER_NAMES = {
    "self_attn.proj": "attention.output.dense",
    "self_attn.norm": "attention.output.LayerNorm",
    "cross_attn.q": "crossattention.attention.query",
    "cross_attn.proj": "crossattention.output.dense",
    "cross_attn.norm": "crossattention.output.LayerNorm",
    "ffn.fc1": "intermediate_query.dense",
    "ffn.fc2": "output_query.dense",
    "ffn.norm": "output_query.LayerNorm",
    "text_ffn.fc1": "intermediate.dense",
    "text_ffn.fc2": "output.dense",
    "text_ffn.norm": "output.LayerNorm",
}
_EMBED_NAMES = {
    "embed_norm": "embeddings.layernorm",
    "word_embeddings": "embeddings.word_embeddings",
    "position_embeddings": "embeddings.position_embeddings",
}


def qformer_to_instructblip_state_dict(qformer: QFormer) -> dict[str, torch.Tensor]:
    """The inverse of `blip2_to_qformer_state_dict` for InstructBLIP's layout: our Q-Former's weights under the keys
    of `InstructBlip(Video)QFormerModel` (``encoder.layer.i.*``, ``embeddings.*``) plus ``query_tokens``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in qformer.state_dict().items():
        if key == "query_tokens":
            out[key] = value
            continue
        head, _, kind = key.rpartition(".")
        if head in _EMBED_NAMES:
            out[f"{_EMBED_NAMES[head]}.{kind}"] = value
            continue
        _, i, part = head.split(".", 2)  # layers.<i>.<part>
        s = f"encoder.layer.{i}."
        if part == "self_attn.qkv":
            for name, chunk in zip(("query", "key", "value"), value.chunk(3)):
                out[f"{s}attention.attention.{name}.{kind}"] = chunk
        elif part == "cross_attn.kv":
            for name, chunk in zip(("key", "value"), value.chunk(2)):
                out[f"{s}crossattention.attention.{name}.{kind}"] = chunk
        else:
            out[f"{s}{_LAYER_NAMES[part]}.{kind}"] = value
    return out
