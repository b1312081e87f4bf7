"""Packed batches (`data_modules.packing`): the stage-1 losses (contrastive, matching, captioning) and the stage-2
loss, and their gradients, equal the unpacked batch's within 1e-5 in fp32; rows never mix samples. Token-budget
batches (`packing.rows`) give the loss of the same samples padded; the contrastive all-gather takes ranks holding
different numbers of samples."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import pytest
import torch
import torch.distributed as dist
from test_stage1 import QFORMER, VIDEO_QFORMER

from data_modules.batching import TokenBudgetSampler
from data_modules.collate import Collator
from data_modules.packing import Packing
from vrp.models import CausalLM, FrameQFormerFusion, HFVisionEncoder, MLPConnector, PoolOptions, VideoReasoner
from vrp.models.reasoner import pack_sequences
from vrp.training.losses import gather_with_grad, lm_loss
from vrp.training.stage1 import AlignmentPretraining

T = 2
WORDS = "what colour is it ? red green blue yellow a video of shapes moving".split()


def _samples(n: int = 7) -> list[dict]:
    """Lengths mixed like instruction data: one-word answers, long captions, a multi-turn chat, a text-only turn."""
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (40,), generator=g)]
        if i % 3 == 0:  # short multiple-choice style answer
            turns = [("<video>\nwhat colour is it ?", words[0])]
        elif i % 3 == 1:  # long caption
            turns = [("<video>\na video of", " ".join(words[: 10 + 3 * i]))]
        else:  # multi-turn conversation
            turns = [("<video>\nwhat colour is it ?", words[0]), (" ".join(words[1:6]), " ".join(words[6:14]))]
        out.append(
            {
                "key": f"s{i}",
                "video": torch.randn(T, 3, 32, 32, generator=g),
                "frame_mask": torch.tensor([True, i % 2 == 0]),
                "turns": turns,
                "qformer_text": " ".join(words[: 3 + i]),
                "modality": "video",
            }
        )
    out[3] = {**out[3], "modality": "text", "turns": [("what colour is it ?", "red green")]}  # no visual tokens
    return out


def _batches(root, Q: int, max_tokens: int, side: str = "right") -> tuple[dict, dict]:
    plain = Collator(str(root / "tokenizer"), padding_side=side)
    packed = Collator(str(root / "tokenizer"), padding_side=side, packing=Packing(max_tokens))
    for c in (plain, packed):
        c.configure_visual_tokens(Q)
    samples = _samples()
    return plain(samples), packed(samples)


def _reasoner(root, fusion, llm_mode: str, attn: str | None = None) -> VideoReasoner:
    torch.manual_seed(0)
    return VideoReasoner(
        HFVisionEncoder(str(root / "vit")),
        fusion,
        CausalLM(str(root / "llm"), attn_implementation=attn, lora_dropout=0.0),
        llm_mode=llm_mode,
    )


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("llm_mode", "attn", "side"), [("lora", "sdpa", "right"), ("full", "eager", "left")])
def test_stage2_loss_and_gradients_equal_unpacked(tiny_root, llm_mode, attn, side):
    fusion = partial(MLPConnector, output_dim=32, pool=PoolOptions(temporal_bins=2, spatial_size=(2, 1)))
    model = _reasoner(tiny_root, fusion, llm_mode, attn).train()
    Q = model.num_video_tokens
    plain, packed = _batches(tiny_root, Q, max_tokens=64, side=side)
    rows, width = packed["pack_shape"]
    assert rows < len(packed["keys"]) / 2 and width <= 64  # several samples share rows
    padded_slots = len(plain["keys"]) * (plain["input_ids"].shape[1] + Q - 1)
    assert packed["seq_lengths"].sum() <= rows * width < padded_slots
    results = []
    for batch in (plain, packed):
        model.zero_grad()
        loss = lm_loss(model, model.video_tokens(batch), batch)
        loss.backward()
        results.append((loss.detach(), _grads(model)))
    (a, ga), (b, gb) = results
    assert torch.allclose(a, b, atol=1e-5, rtol=0), (a, b)
    assert ga.keys() == gb.keys() and ga
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=1e-5, rtol=1e-4), name


def test_stage1_losses_equal_unpacked(tiny_root):
    fusion = partial(FrameQFormerFusion, qformer=replace(QFORMER, objects=False, dropout=0.0), **VIDEO_QFORMER)
    module = AlignmentPretraining(_reasoner(tiny_root, fusion, "frozen"), embed_dim=16).train()
    plain, packed = _batches(tiny_root, module.model.num_video_tokens, max_tokens=64)
    assert packed["pack_shape"][0] < len(packed["keys"]) / 2
    parts = []
    for batch in (plain, packed):
        torch.manual_seed(5)  # the matching loss draws its hard negatives
        parts.append({k: v.detach() for k, v in module.losses(batch).items()})
    assert set(parts[0]) == {"itc", "itm", "lm"} == set(parts[1])
    for k in parts[0]:
        assert torch.allclose(parts[0][k], parts[1][k], atol=1e-5, rtol=0), (k, parts[0][k], parts[1][k])


def test_pack_sequences_keeps_samples_apart():
    """Two right-padded samples and one left-padded into rows: tokens, positions and labels land where planned."""
    embeds = torch.arange(3 * 5, dtype=torch.float32).view(3, 5, 1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 1, 1]])
    labels = torch.arange(15).view(3, 5) + 100
    row, offset = torch.tensor([0, 0, 1]), torch.tensor([0, 3, 0])
    packed, pos, lab = pack_sequences(embeds, mask, labels, row, offset, (2, 6))
    assert packed[..., 0].tolist() == [[0, 1, 2, 5, 6, 0], [11, 12, 13, 14, 0, 0]]
    assert pos.tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    assert lab.tolist() == [[-100, 101, 102, -100, 106, -100], [-100, 112, 113, 114, -100, -100]]


def test_token_budget_batches_give_the_unpacked_loss(tiny_root):
    """Each batch the token-budget sampler makes (`packing.rows`), laid out in its rows, gives the loss and gradients
    of the same samples padded: the budget changes which samples share a step, not what a step computes."""
    fusion = partial(MLPConnector, output_dim=32, pool=PoolOptions(temporal_bins=2, spatial_size=(2, 1)))
    model = _reasoner(tiny_root, fusion, "lora", "sdpa").train()
    Q = model.num_video_tokens
    plain = Collator(str(tiny_root / "tokenizer"))
    budget = Collator(str(tiny_root / "tokenizer"), packing=Packing(64, rows=2))
    for c in (plain, budget):
        c.configure_visual_tokens(Q)
    samples = _samples(12)
    lengths = plain(samples)["seq_lengths"].tolist()
    batches = list(TokenBudgetSampler(lengths, max_tokens=64, rows=2, seed=0))
    assert sorted(i for b in batches for i in b) == list(range(12)) and max(len(b) for b in batches) > 2
    for indices in batches:
        chosen = [samples[i] for i in indices]
        results = []
        for batch in (plain(chosen), budget(chosen)):
            model.zero_grad()
            loss = lm_loss(model, model.video_tokens(batch), batch)
            loss.backward()
            results.append((loss.detach(), _grads(model)))
        assert budget(chosen)["pack_shape"][0] <= 2
        (a, ga), (b, gb) = results
        assert torch.allclose(a, b, atol=1e-5, rtol=0), (indices, a, b)
        for name in ga:
            assert torch.allclose(ga[name], gb[name], atol=1e-5, rtol=1e-4), name


def _gather_worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        sizes = [2, 3]  # token-budget batches: the ranks hold different numbers of samples
        full, weight = torch.arange(20.0).view(5, 4), torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
        start = sum(sizes[:rank])
        local = full[start : start + sizes[rank]].clone().requires_grad_()
        gathered, offset = gather_with_grad(local)
        (gathered * weight).sum().backward()
        torch.save({"gathered": gathered.detach(), "offset": offset, "grad": local.grad, "start": start}, out)
    finally:
        dist.destroy_process_group()


def _spawned(rank: int, world: int, init: str, folder: str) -> None:
    _gather_worker(rank, world, init, f"{folder}/rank{rank}.pt")


def test_contrastive_gather_takes_ranks_with_different_batch_sizes(tmp_path):
    """Stage 1's all-gather (ITC) over 2 gloo processes holding 2 and 3 samples: every row once, this rank's offset,
    and each rank's gradient the sum of both ranks' (the same as equal batches)."""
    world = 2
    torch.multiprocessing.spawn(_spawned, args=(world, f"file://{tmp_path}/store", str(tmp_path)), nprocs=world)
    weight = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(got["gathered"], torch.arange(20.0).view(5, 4)) and got["offset"] == got["start"]
        rows = slice(got["start"], got["start"] + got["grad"].shape[0])
        assert torch.allclose(got["grad"], world * weight[rows])
