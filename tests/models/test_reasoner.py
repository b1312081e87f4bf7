from functools import partial

import pytest
import torch
from tiny_assets import TINY_LLM, TINY_VIT

from vrp.models import (
    CausalLM,
    HFVisionEncoder,
    MLPConnector,
    PoolOptions,
    VideoReasoner,
)
from vrp.models.contracts import TokenLayout
from vrp.models.tracks import TrackFusion

T, SIZE = 2, 32


def build(
    tokenizer_dir, seed=0, fusion=partial(MLPConnector, pool=PoolOptions(temporal_bins=2, spatial_size=(1, 2))), **modes
):
    torch.manual_seed(seed)
    vision = HFVisionEncoder(config={**TINY_VIT, "image_size": SIZE})
    llm = CausalLM(config={**TINY_LLM, "hidden_size": 64}, tokenizer=str(tokenizer_dir), lora_rank=4)  # != vision width
    return VideoReasoner(vision, fusion, llm, **modes)


def make_batch(model, prompts, answers, right_pad=True):
    tok = model.llm.tokenizer
    rows, labels = [], []
    for p, a in zip(prompts, answers):
        p_ids = tok(p).input_ids
        a_ids = tok(a, add_special_tokens=False).input_ids + [tok.eos_token_id]
        rows.append(p_ids + a_ids)
        labels.append([-100] * len(p_ids) + a_ids)
    L = max(map(len, rows))
    pad = lambda r, v: r + [v] * (L - len(r)) if right_pad else [v] * (L - len(r)) + r  # noqa: E731
    torch.manual_seed(1)
    return {
        "video": torch.randn(len(rows), T, 3, SIZE, SIZE),
        "frame_mask": torch.ones(len(rows), T, dtype=torch.bool),
        "input_ids": torch.tensor([pad(r, tok.pad_token_id) for r in rows]),
        "attention_mask": torch.tensor([pad([1] * len(r), 0) for r in rows]),
        "labels": torch.tensor([pad(r, -100) for r in labels]),
    }


@pytest.fixture(scope="module")
def stage1(tokenizer_dir):
    return build(tokenizer_dir)


def test_fusion_is_built_from_the_vision_encoder(stage1):
    assert stage1.fusion.pool.layout == TokenLayout(stage1.vision.width, stage1.vision.grid, 1)
    assert stage1.projection.in_features == stage1.fusion.output_dim == 32
    assert stage1.projection.out_features == stage1.llm.hidden_size == 64
    video = torch.randn(2, T, 3, SIZE, SIZE)
    assert stage1.encode_video(video, torch.ones(2, T, dtype=torch.bool)).shape == (2, 4, 64)


def test_tracks_reach_a_track_reader_only(tokenizer_dir):
    """The batch's boxes are never handed to a fusion that reads no tracks (nor is its object stage kept), and a
    track fusion given no boxes is an error, not a silent run without them."""
    stage = object()  # the object stage is only kept or dropped here
    plain = build(tokenizer_dir, objects=stage)
    boxes = torch.tensor([0.1, 0.1, 0.5, 0.5]).expand(2, T, 2, 4)
    batch = {"video": torch.randn(2, T, 3, SIZE, SIZE), "frame_mask": torch.ones(2, T, dtype=torch.bool)}
    seen = []
    plain.fusion.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    plain.fuse(batch | {"boxes": boxes})
    assert seen[0].tracks is None and plain.objects is None
    tracks = partial(
        TrackFusion, max_objects=2, num_frames=T, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32
    )
    reader = build(tokenizer_dir, fusion=tracks, objects=stage)
    assert reader.objects is stage
    assert reader.fuse(batch | {"boxes": boxes}).shape == (2, reader.num_video_tokens, 16)
    with pytest.raises(ValueError, match="TrackFusion needs per-frame object boxes and got no tracks"):
        reader.fuse(batch)


def test_build_inputs_puts_visual_tokens_at_the_placeholder(stage1):
    v = stage1.llm.video_token_id
    ids = torch.tensor([[1, v, 6, 7, 0], [0, 1, 8, v, 9]])
    mask = (ids != 0).long()
    labels = torch.tensor([[-100, -100, -100, 7, -100], [-100, -100, -100, -100, 9]])
    vid = torch.randn(2, 4, 64)
    embeds, new_mask, new_labels = stage1.build_inputs(vid, ids, mask, labels)
    assert embeds.shape == (2, 8, 64)
    text = stage1.llm.embed(ids)
    torch.testing.assert_close(embeds[0, 1:5], vid[0])
    torch.testing.assert_close(embeds[0, [0, 5, 6, 7]], text[0, [0, 2, 3, 4]])
    torch.testing.assert_close(embeds[1, 3:7], vid[1])
    torch.testing.assert_close(embeds[1, [0, 1, 2, 7]], text[1, [0, 1, 2, 4]])
    assert new_mask.tolist() == [[1, 1, 1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1, 1, 1]]
    assert new_labels.tolist() == [[-100] * 6 + [7, -100], [-100] * 7 + [9]]


def test_text_only_row_gets_no_visual_tokens(stage1):
    """A row without placeholder (text-only sample) in a batch with video rows: its loss and logits are the LLM's on
    its text alone, whatever its row of visual tokens holds."""
    v = stage1.llm.video_token_id
    ids = torch.tensor([[1, v, 6, 7, 0], [1, 8, 9, 6, 7]])
    mask = (ids != 0).long()
    labels = torch.tensor([[-100, -100, -100, 7, -100], [-100, -100, 9, 6, 7]])
    embeds, new_mask, new_labels = stage1.build_inputs(torch.randn(2, 4, 64), ids, mask, labels)
    assert new_mask[1].tolist() == [1] * 5 + [0] * 3 and new_labels[1].tolist() == [-100, -100, 9, 6, 7] + [-100] * 3
    torch.testing.assert_close(embeds[1, :5], stage1.llm.embed(ids)[1])
    with torch.no_grad():
        got = stage1.llm(embeds[1:], new_mask[1:]).logits[0, :5]
        alone = stage1.llm(stage1.llm.embed(ids[1:]), mask[1:]).logits[0]
    torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-5)


def test_each_row_holds_at_most_one_placeholder(stage1):
    v = stage1.llm.video_token_id
    with pytest.raises(ValueError, match=r"\(1, 2\)"):
        stage1.build_inputs(torch.randn(2, 4, 64), torch.tensor([[v, 6], [v, v]]), torch.ones(2, 2, dtype=torch.long))


def test_stage1_default_trains_fusion_and_projection_only(stage1):
    names = stage1.trainable_parameter_names()
    expected = {n for n, _ in stage1.named_parameters() if n.startswith(("fusion.", "projection."))}
    assert names == expected and expected
    batch = make_batch(stage1, ["<video> what colour ?"], ["red"])
    stage1.train()
    stage1(batch).loss.backward()
    assert {n for n, p in stage1.named_parameters() if p.grad is not None} == names
    stage1.zero_grad(set_to_none=True)


def test_stage2_default_adds_lora_adapters(tokenizer_dir):
    model = build(tokenizer_dir, llm_mode="lora")
    names = model.trainable_parameter_names()
    lora = {n for n in names if n.startswith("llm.")}
    assert lora and all("lora_" in n for n in lora)
    assert names - lora == {n for n, _ in model.named_parameters() if n.startswith(("fusion.", "projection."))}
    model.train()
    model(make_batch(model, ["<video> what shape ?"], ["circle"])).loss.backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == names


def test_full_modes_and_frozen_fusion(tokenizer_dir):
    model = build(tokenizer_dir, vision_mode="full", fusion_mode="frozen", llm_mode="full")
    names = model.trainable_parameter_names()
    assert not any(n.startswith("fusion.") for n in names)
    assert any(n.startswith("vision.") for n in names) and any(n.startswith("llm.") for n in names)
    with pytest.raises(ValueError, match="llm_mode"):
        build(tokenizer_dir, llm_mode="half")
    with pytest.raises(ValueError, match="does not read text"):
        build(tokenizer_dir, use_qformer_text=True)


def test_trainable_state_round_trip(tokenizer_dir):
    a = build(tokenizer_dir, llm_mode="lora")
    with torch.no_grad():
        for p in a.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    state = a.state_dict_trainable()
    assert set(state) == a.trainable_parameter_names()
    b = build(tokenizer_dir, llm_mode="lora")  # same seed: same frozen weights
    batch = make_batch(a, ["<video> what colour ?"], ["red"])
    a.eval(), b.eval()
    assert not torch.allclose(a(batch).logits, b(batch).logits)
    b.load_trainable(state)
    torch.testing.assert_close(a(batch).logits, b(batch).logits)
    with pytest.raises(KeyError, match="missing"):
        b.load_trainable({k: v for k, v in list(state.items())[1:]})


def test_overfits_one_batch_and_generates_the_answer(tokenizer_dir):
    model = build(tokenizer_dir, llm_mode="full")
    batch = make_batch(model, ["<video> what colour is it ?", "<video> what shape ?"], ["red circle", "blue square"])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    model.train()
    first = model(batch).loss.item()
    for _ in range(40):
        loss = model(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
    model.eval()
    prompts = make_batch(model, ["<video> what colour is it ?", "<video> what shape ?"], ["", ""], right_pad=True)
    keep = prompts["labels"] == -100  # drop the eos target: prompt only, right-padded (generate re-pads left)
    ids = [r[k].tolist() for r, k in zip(prompts["input_ids"], keep & (prompts["attention_mask"] == 1))]
    L = max(map(len, ids))
    prompts["input_ids"] = torch.tensor([r + [0] * (L - len(r)) for r in ids])
    prompts["attention_mask"] = torch.tensor([[1] * len(r) + [0] * (L - len(r)) for r in ids])
    assert model.generate(prompts, max_new_tokens=4) == ["red circle", "blue square"]
