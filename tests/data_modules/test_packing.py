"""The packing plan (first-fit into rows of at most N tokens) and the per-sample token budget: the frame cap spreads
a clip's frames over its window, a sample over ``max_tokens`` is skipped (counted, with its key) or truncated."""

from __future__ import annotations

import logging

import pytest
import torch

from data_modules.collate import Collator
from data_modules.datamodules import InstructionDataModule
from data_modules.datasets import ClipLoader
from data_modules.packing import Packing, TokenBudget, first_fit
from data_modules.skips import SkipCounter
from data_modules.sources.record import Record
from data_modules.transforms import VideoTransform


def test_first_fit_fills_rows_without_overlap():
    lengths = [5, 30, 12, 40, 8, 3, 25, 70]
    plan = first_fit(lengths, 48)
    spans: dict[int, list[tuple[int, int]]] = {}
    for i, n in enumerate(lengths):
        spans.setdefault(plan.row[i], []).append((plan.offset[i], plan.offset[i] + n))
    for row in spans.values():
        row.sort()
        assert all(a[1] <= b[0] for a, b in zip(row, row[1:]))  # no two samples overlap
    assert plan.width == 70 and spans[plan.row[7]] == [(0, 70)]  # the oversize sample: a row of its own, whole
    assert all(end <= 48 for r, row in spans.items() if r != plan.row[7] for _, end in row)
    assert plan.rows == 4  # 70 | 40 8 | 30 12 5 | 25 3: longest first, each into the first row with room
    assert first_fit([], 8).rows == 0
    with pytest.raises(ValueError, match="max_tokens"):
        Packing(0)


def _sample(key: str, answer: str, question: str = "What colour is it?") -> dict:
    return {
        "key": key,
        "video": torch.zeros(2, 3, 8, 8),
        "frame_mask": torch.ones(2, dtype=torch.bool),
        "turns": [(f"<video>\n{question}", answer)],
        "qformer_text": question,
    }


def test_budget_skips_or_truncates_and_counts(assets, caplog):
    skips = SkipCounter(max_bad_fraction=1.0)
    long = " ".join(["red blue"] * 20)
    samples = [_sample("short", "red"), _sample("long", long), _sample("long_prompt", "red", question=long)]
    plain = Collator(str(assets / "tokenizer"))
    plain.configure_visual_tokens(6)
    lengths = plain(samples)["seq_lengths"].tolist()
    limit = lengths[0] + 4
    assert lengths[1] > limit and lengths[2] > limit

    skipping = Collator(str(assets / "tokenizer"), budget=TokenBudget(max_tokens=limit), skips=skips)
    skipping.configure_visual_tokens(6)
    with caplog.at_level(logging.WARNING):
        batch = skipping(samples)
    assert batch["keys"] == ["short"] and [s["key"] for s in batch["skipped"]] == ["long", "long_prompt"]
    assert skips.totals()["skipped/over_budget"] == 2 and "long_prompt" in caplog.text

    cutting = Collator(str(assets / "tokenizer"), budget=TokenBudget(max_tokens=limit, overflow="truncate"))
    cutting.configure_visual_tokens(6)
    batch = cutting(samples)  # the long answer is cut to fit; the prompt alone is over: skipped all the same
    assert batch["keys"] == ["short", "long"] and [s["key"] for s in batch["skipped"]] == ["long_prompt"]
    assert batch["seq_lengths"].tolist() == [lengths[0], limit] and (batch["labels"][1] != -100).any()

    packing = Collator(str(assets / "tokenizer"), packing=Packing(64))
    with pytest.raises(RuntimeError, match="configure_visual_tokens"):
        packing(samples)


def test_frame_cap_spreads_frames_over_the_window(assets):
    rec = Record(key="c", video=str(assets / "videos" / "clip00.mp4"), turns=[("<video>", "x")])  # 10 frames, 1 s
    for sampling, fps in (("uniform", None), ("fps", 10.0)):
        free = ClipLoader(VideoTransform(16), num_frames=8, sampling=sampling, fps=fps).read(rec)
        capped = ClipLoader(VideoTransform(16), num_frames=8, sampling=sampling, fps=fps, max_frames=3).read(rec)
        assert int(free.frame_mask.sum()) == 8 and capped.frame_mask.tolist() == [True] * 3 + [False] * 5
        assert capped.frames.shape == free.frames.shape
        times = capped.timestamps[:3]
        assert float(times[0]) < 0.2 and float(times[-1]) > 0.6  # over the whole second, not its first 0.3 s
    assert TokenBudget(max_visual_tokens=20).max_frames(8, 4.0) == 5 and TokenBudget().max_frames(8, 4.0) == 8


def test_datamodule_hands_the_budget_and_packing_to_loader_and_collator(assets):
    dm = InstructionDataModule(
        tokenizer=str(assets / "tokenizer"),
        num_frames=8,
        packing=Packing(256),
        token_budget=TokenBudget(max_visual_tokens=12),
    )
    dm.configure_visual_tokens(16)  # 2 visual tokens per frame: 6 frames fit
    assert dm.clip_loader(train=True).max_frames == 6 and dm.collator().visual_tokens == 16
    batch = dm.collator()([_sample("a", "red"), _sample("b", "blue red")])
    assert batch["pack_shape"] == (1, int(batch["seq_lengths"].sum())) and batch["pack_row"].tolist() == [0, 0]
    with pytest.raises(ValueError, match="no sample fits"):
        dm.configure_visual_tokens(200)
