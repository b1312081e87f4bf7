"""What a batch says about itself: whether it holds any sample, how many, and how many of its LLM token slots are
real tokens (the padding fraction)."""

from __future__ import annotations


def has_samples(batch: dict) -> bool:
    """False for an evaluation batch whose every sample was skipped (it holds only ``keys`` and ``skipped``)."""
    return "input_ids" in batch


def token_counts(batch: dict, num_video_tokens: int) -> tuple[int, int]:
    """(real LLM tokens, LLM token slots computed) of a training batch: the slots are the packed rows' (R x W) with
    a packing plan, else the padded rows' (B x (L + Q - 1)); the padding fraction is 1 - real / slots. Real tokens
    come from ``seq_lengths`` when the collator gives them, else from the attention mask plus Q - 1 per sample."""
    if "input_ids" not in batch:
        return 0, 0
    B, L = batch["input_ids"].shape
    if batch.get("seq_lengths") is not None:
        real = int(batch["seq_lengths"].sum())
    else:
        real = int(batch["attention_mask"].sum()) + B * (num_video_tokens - 1)
    if batch.get("pack_shape") is not None:
        rows, width = batch["pack_shape"]
        return real, rows * width
    return real, B * (L + num_video_tokens - 1)


def batch_size(batch: dict) -> int:
    for key in ("input_ids", "video", "visual"):
        if key in batch:
            return int(batch[key].shape[0])
    return 1
