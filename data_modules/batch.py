"""The batch contract: the one place that says what a collated batch holds.

Every collate function in `data_modules` returns a `Batch`; every LightningModule and scorer in `vrp` reads one.
Keys marked optional may be absent.

Shapes (B batch, T frames, C channels, H/W pixels, K boxes per frame, L text tokens, O options):

- ``video``            float32 (B, T, C, H, W)  normalised with the vision backbone's mean/std.
- ``frame_mask``       bool    (B, T)           True where the frame is real (False = padding of a short clip).
- ``boxes``            float32 (B, T*S, K, 4)   optional; xyxy in [0, 1] of the frame; S box rows per frame (row t*S is
                                                frame t's, the others a tracker's boxes up to frame t+1), S = the
                                                fusion's ``box_substeps`` (1 for every fusion but a track fusion).
- ``box_mask``         bool    (B, T*S, K)      optional; True where ``boxes`` holds a real box.
- ``box_attributes``   float32 (B, K, V)        optional, state oracle only; multi-hot attribute words of each box.
- ``input_ids``        int64   (B, L)           LLM tokens: prompt with exactly one video placeholder token, then target.
- ``attention_mask``   int64   (B, L)           1 for real tokens, 0 for padding (left or right, by config).
- ``labels``           int64   (B, L)           ``input_ids`` where the loss applies (answer/caption tokens), else -100.
- ``qformer_input_ids``/``qformer_attention_mask`` int64 (B, Lq)  optional; the text the Q-Former may read
                                                (the caption in stage 1, the question in stage 2).
- ``keys``             list[str]  (B,)          sample keys, for logging and skips.
- ``question_type``    list[str]  (B,)          optional; e.g. "descriptive", "CW" (NExT-QA codes).
- ``options``          list[list[str]] (B, O)   optional; multiple-choice candidates.
- ``answer_index``     int64   (B,)             optional; index of the correct option.
- ``prompt``/``target`` list[str] (B,)          optional; the untokenised prompt and answer text.
- ``seq_lengths``      int64   (B,)             optional; each sample's LLM tokens, its Q visual tokens included
                                                (set once the model gave the collator Q: `configure_visual_tokens`).
- ``pack_row``/``pack_offset`` int64 (B,)       optional, with ``packing``: the row and start column of each sample
                                                in the packed LLM rows (`data_modules.packing`).
- ``pack_shape``       tuple[int, int]          optional, with ``packing``: (rows, width) of the packed LLM rows.
- ``skipped``          list[dict]               optional, evaluation only: ``{"key", "reason"}`` of the batch's
                                                samples that could not be read; they are in no other field. A batch
                                                of only such samples holds just ``keys`` (empty) and ``skipped``.
"""

from __future__ import annotations

from typing import TypedDict

import torch

from vrp.models.constants import IGNORE_INDEX, VIDEO_TOKEN

__all__ = ["IGNORE_INDEX", "VIDEO_TOKEN", "Batch"]


class Batch(TypedDict, total=False):
    video: torch.Tensor
    frame_mask: torch.Tensor
    boxes: torch.Tensor
    box_mask: torch.Tensor
    box_attributes: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    qformer_input_ids: torch.Tensor
    qformer_attention_mask: torch.Tensor
    keys: list[str]
    question_type: list[str]
    options: list[list[str]]
    answer_index: torch.Tensor
    prompt: list[str]
    target: list[str]
    seq_lengths: torch.Tensor
    pack_row: torch.Tensor
    pack_offset: torch.Tensor
    pack_shape: tuple[int, int]
    skipped: list[dict]
