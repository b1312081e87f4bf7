"""The packing plan (first-fit into rows of at most N tokens) and the per-sample token budget: the frame cap spreads
a clip's frames over its window, a sample over ``max_tokens`` is skipped (counted, with its key) or truncated.
Token-budget batches (``packing.rows``): within their rows, every sample once per epoch, deterministic from the seed,
resumed exactly, as many batches on every rank."""

from __future__ import annotations

import logging

import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from data_modules.batching import BatchedDataset, TokenBudgetSampler
from data_modules.collate import Collator
from data_modules.datamodules import InstructionDataModule, VideoTextDataModule
from data_modules.datasets import ClipLoader
from data_modules.packing import Packing, TokenBudget, first_fit, next_fit
from data_modules.skips import SkipCounter
from data_modules.sources import WebDatasetSource
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


# --- token-budget batches (packing.rows) ---------------------------------------------------------------------------
def _mix_lengths(n: int = 300, seed: int = 0) -> list[int]:
    """LLM lengths like an instruction mix (Q = 16): short answers, captions, chats, and a few over one row."""
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([20, 60, 150])[torch.randint(0, 3, (n,), generator=g)]
    lengths = (16 + base + torch.randint(0, 40, (n,), generator=g)).tolist()
    return [240 if i % 97 == 5 else n for i, n in enumerate(lengths)]  # 240 > max_tokens: a row of its own


def _sampler(lengths, **kw) -> TokenBudgetSampler:
    return TokenBudgetSampler(lengths, **({"max_tokens": 200, "rows": 3, "seed": 7} | kw))


def test_budget_batches_fit_their_rows_and_cover_every_sample_once():
    lengths = _mix_lengths()
    sampler = _sampler(lengths)
    counts = set()
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        counts.add(len(batches))
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # each sample once
        for b in batches:
            plan = next_fit([lengths[i] for i in b], 200)  # how the collator lays the batch out
            assert plan.rows <= 3
            assert plan.width <= 200 or len(b) == 1 or max(lengths[i] for i in b) > 200  # only an oversize one over
        fill = sum(lengths) / (len(batches) * 3 * 200)
        assert fill > 0.9 and len(batches) < len(lengths) / 4  # more samples than rows per batch, rows nearly full
    assert len(counts) == 1  # as many batches every epoch (Lightning counts them once)


def test_budget_batches_are_deterministic_from_the_seed():
    lengths = _mix_lengths()
    a, b, c = _sampler(lengths), _sampler(lengths), _sampler(lengths, seed=8)
    assert list(a) == list(b) and list(a) != list(c)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) and list(a) != list(c)  # a new shuffle each epoch, the same on every run
    unshuffled = _sampler(lengths, shuffle=False)
    assert list(unshuffled) == list(_sampler(lengths, shuffle=False, seed=99))


def test_budget_sampler_resumes_where_it_stopped():
    lengths = _mix_lengths()
    first = _sampler(lengths)
    first.set_epoch(2)
    it = iter(first)
    seen = [next(it) for _ in range(5)]
    state = first.state_dict()
    assert state == {"epoch": 2, "yielded": 5}
    resumed = _sampler(lengths)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # Lightning sets the epoch before iterating
    assert seen + list(resumed) == list(first.batches())
    resumed.load_state_dict({"epoch": 1, "yielded": 5})  # saved in a finished epoch: the next one starts whole
    assert list(resumed) == first.batches()


def test_budget_batches_give_every_rank_as_many_batches():
    lengths = _mix_lengths(301)
    every = _sampler(lengths).all_batches()
    ranks = [_sampler(lengths, num_replicas=4, rank=r) for r in range(4)]
    per_rank = [r.batches() for r in ranks]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(every) // 4
    dealt = [b for rank in per_rank for b in rank]
    assert sorted(map(tuple, dealt)) == sorted(map(tuple, every[: 4 * len(per_rank[0])]))  # the tail is dropped
    assert len(every) % 4 == len(every) - len(dealt) < 4


def _cheap(batch: list[int]) -> list[int]:
    return batch


def test_budget_loader_resumes_exactly_with_workers():
    """The stateful loader with 2 workers saves the sampler's position: a new loader continues with the same batches."""
    lengths = _mix_lengths()

    def loader() -> StatefulDataLoader:
        data = BatchedDataset(list(range(len(lengths))))
        return StatefulDataLoader(data, sampler=_sampler(lengths), batch_size=None, num_workers=2, collate_fn=_cheap)

    full = list(loader())
    cut = loader()
    it = iter(cut)
    head = [next(it) for _ in range(4)]
    state = cut.state_dict()
    del it
    again = loader()
    again.load_state_dict(state)
    assert head + list(again) == full


def _records(assets, n: int = 12) -> list[Record]:
    words = "red blue green a square moves right".split()
    return [
        Record(
            key=f"r{i}",
            video=str(assets / "videos" / f"clip{i % 12:02d}.mp4"),
            turns=[
                ("What colour is it?" if i == 3 else "<video>\nWhat colour is it?", " ".join(words[: 1 + 5 * i % 7]))
            ],
            modality="text" if i == 3 else "video",  # a text-only one: no visual tokens
        )
        for i in range(n)
    ]


def test_llm_length_counts_what_the_collator_makes(assets):
    collator = Collator(str(assets / "tokenizer"), budget=TokenBudget(max_tokens=30, overflow="truncate"))
    with pytest.raises(RuntimeError, match="configure_visual_tokens"):
        collator.llm_length(_records(assets)[0])
    collator.configure_visual_tokens(6)
    records = _records(assets)
    samples = [_sample(r.key, "x") | {"turns": r.turns, "modality": r.modality} for r in records]
    batch = collator(samples)
    assert "skipped" not in batch and max(batch["seq_lengths"]) == 30  # some cut to the budget
    assert [collator.llm_length(r) for r in records] == batch["seq_lengths"].tolist()


class _Records:
    def __init__(self, records: list[Record]) -> None:
        self.records = records

    def load(self, skips: SkipCounter) -> list[Record]:
        return self.records


def test_datamodule_builds_budget_batches_and_refuses_streams(assets):
    dm = InstructionDataModule(
        train=_Records(_records(assets)),
        val=_Records(_records(assets)),
        test=_Records(_records(assets)),
        tokenizer=str(assets / "tokenizer"),
        num_frames=2,
        num_workers=0,
        packing=Packing(48, rows=2),
    )
    dm.configure_visual_tokens(6)
    dm.configure_preprocess(16, (0.5,) * 3, (0.5,) * 3)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, TokenBudgetSampler)
    batches = list(loader)
    assert sorted(k for b in batches for k in b["keys"]) == sorted(r.key for r in _records(assets))
    assert all(b["pack_shape"][0] <= 2 and b["pack_shape"][1] <= 48 for b in batches)
    assert max(len(b["keys"]) for b in batches) > 2  # more samples than rows: short ones share
    assert next(iter(dm.val_dataloader()))["keys"] == [f"r{i}" for i in range(8)]  # evaluation: batch_size
    with pytest.raises(ValueError, match="packing.rows must be >= 1"):
        Packing(48, rows=0)
    stage1 = VideoTextDataModule(
        train=WebDatasetSource(sorted(str(p) for p in (assets / "shards").glob("*.tar"))),
        tokenizer=str(assets / "tokenizer"),
        packing=Packing(48, rows=2),
    )
    with pytest.raises(ValueError, match="packing.rows .* set packing.rows: null"):
        stage1.train_dataloader()
