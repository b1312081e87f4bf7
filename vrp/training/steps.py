"""Pieces both stage modules compose: visual tokens (pixels or cache), video tokens for the LLM, LM loss, and the
hand-off of preprocessing from the vision encoder to the datamodule."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn


def visual_tokens(model: nn.Module, batch: dict) -> torch.Tensor:
    """(B, T, N, D) tokens of the vision encoder: from `batch["visual"]` when the batch comes from the feature cache,
    else by running `model.vision` on `batch["video"]` (without autograd when the encoder is frozen)."""
    if "visual" in batch:
        return batch["visual"].to(dtype=next(model.fusion.parameters()).dtype)
    if "video" not in batch:
        raise KeyError(f"batch has neither 'video' nor cached 'visual' tokens (keys: {sorted(batch)})")
    vision = model.vision
    if any(p.requires_grad for p in vision.parameters()):
        return vision(batch["video"])
    with torch.no_grad():
        return vision(batch["video"])


def fuse(model: nn.Module, visual: torch.Tensor, batch: dict, *, with_text: bool) -> torch.Tensor:
    """(B, Q, Dq) fusion output; the Q-Former also reads `qformer_input_ids` when `with_text` (instruction-aware)."""
    text = {}
    if with_text:
        if "qformer_input_ids" not in batch:
            raise KeyError("use_qformer_text=True but the batch has no 'qformer_input_ids'; enable it in the datamodule")
        text = {"text_ids": batch["qformer_input_ids"], "text_mask": batch.get("qformer_attention_mask")}
    return model.fusion(visual, batch["frame_mask"], boxes=batch.get("boxes"), box_mask=batch.get("box_mask"), **text)


def uses_qformer_text(model: nn.Module) -> bool:
    return bool(getattr(model, "use_qformer_text", False)) and bool(getattr(model.fusion, "supports_text", False))


def lm_loss(model: nn.Module, video_tokens: torch.Tensor, batch: dict) -> torch.Tensor:
    """Causal-LM loss on `batch["labels"]` with the visual tokens (B, Q, D_llm) spliced in at the placeholder."""
    embeds, mask, labels = model.build_inputs(video_tokens, batch["input_ids"], batch["attention_mask"], batch["labels"])
    return model.llm(embeds, mask, labels=labels).loss


def configure_datamodule(trainer: L.Trainer | None, model: nn.Module) -> None:
    """Give the datamodule the vision encoder's input size and normalisation (kept out of the YAML)."""
    dm = getattr(trainer, "datamodule", None) if trainer is not None else None
    if dm is not None and hasattr(dm, "configure_preprocess"):
        vision = model.vision
        dm.configure_preprocess(vision.image_size, tuple(vision.mean), tuple(vision.std))


def log_skips(module: L.LightningModule) -> None:
    """Log the datamodule's bad-sample counters (if it exposes `skip_counts()`) as `data/skipped_<reason>`."""
    dm = getattr(module.trainer, "datamodule", None)
    counts: Any = dm.skip_counts() if dm is not None and hasattr(dm, "skip_counts") else None
    if counts:
        for reason, n in counts.items():
            module.log(f"data/skipped_{reason}", float(n), rank_zero_only=True)


def has_samples(batch: dict) -> bool:
    """False for an evaluation batch whose every sample was skipped (it holds only ``keys`` and ``skipped``)."""
    return "input_ids" in batch


def batch_size(batch: dict) -> int:
    for key in ("input_ids", "video", "visual"):
        if key in batch:
            return int(batch[key].shape[0])
    return 1


def open_cache(path: str | None, model_config: Any) -> Any:
    """The `FeatureCache` at `path` (None: no cache); fails when it was built with another vision encoder."""
    if not path:
        return None
    from vrp.training.cache import FeatureCache, vision_meta

    cache = FeatureCache(path)
    ours, theirs = vision_meta(model_config if isinstance(model_config, dict) else None), cache.info.get("vision")
    if ours and theirs and ours != theirs:
        raise ValueError(f"feature cache {path} was built with vision {theirs}, but the model uses {ours}; "
                         "rebuild it with `vrp cache`")
    return cache


def with_cache(cache: Any, batch: dict) -> dict:
    """`batch` plus cached `visual`/`frame_mask` when every key of the batch is in the cache."""
    if cache is None or "keys" not in batch or not cache.covers(list(batch["keys"])):
        return batch
    visual, mask = cache.get(list(batch["keys"]))
    device = batch["input_ids"].device
    return {**batch, "visual": visual.to(device), "frame_mask": mask.to(device)}
