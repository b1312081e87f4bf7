"""The Q-Former fusions (FrameQFormerFusion = temporal "per_frame", JointQFormerFusion = "joint"): shapes for every
option, gradients, frame-count changes, padding frames, text joined or not."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from tiny_assets import TINY_QFORMER

from vrp.models.contracts import FusionInput, Text, TokenLayout, Tracks
from vrp.models.qformer import QFormer, QFormerConfig
from vrp.models.qformer_fusion import FrameQFormerFusion, JointQFormerFusion, QFormerOptions

D, GRID, PREFIX, T = 16, (2, 2), 1, 3
N = PREFIX + GRID[0] * GRID[1]
LAYOUT = TokenLayout(D, GRID, PREFIX)


TINY = replace(TINY_QFORMER, num_query_tokens=4, num_layers=2, num_frames=T, num_slots=2, slot_iters=2)


def fusion(temporal: str = "per_frame", **options) -> FrameQFormerFusion | JointQFormerFusion:
    """A tiny fusion of either architecture, ``options`` replacing some of TINY's."""
    torch.manual_seed(0)
    if temporal == "per_frame":
        return FrameQFormerFusion(
            LAYOUT, qformer=replace(TINY, **options), video_num_query_tokens=3, video_num_layers=1
        ).eval()
    return JointQFormerFusion(LAYOUT, qformer=replace(TINY, **options)).eval()


def inputs(B=2, frames=T, K=2):
    g = torch.Generator().manual_seed(1)
    visual = torch.randn(B, frames, N, D, generator=g)
    xy = torch.rand(B, frames, K, 2, generator=g) * 0.5
    boxes = torch.cat([xy, xy + 0.3], dim=-1)
    return visual, torch.ones(B, frames, dtype=torch.bool), boxes


def tracks(boxes: torch.Tensor | None) -> Tracks | None:
    return None if boxes is None else Tracks(boxes)


OPTIONS = [
    dict(temporal=t, objects=o, vocab_size=v) for t in ("per_frame", "joint") for o in (False, True) for v in (0, 20)
]


@pytest.mark.parametrize("kw", OPTIONS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_shapes_and_gradients(kw):
    f = fusion(**kw).train()
    visual, mask, boxes = inputs()
    text = Text(torch.randint(1, 20, (2, 5)), torch.ones(2, 5, dtype=torch.long)) if kw["vocab_size"] else None
    for b in [None, boxes] if kw["objects"] else [None]:
        out = f(FusionInput(visual.requires_grad_(), mask, tracks(b), text))
        assert out.shape == (2, f.num_output_tokens, f.output_dim)
        assert f.num_output_tokens == (3 if kw["temporal"] == "per_frame" else 4)
        f.zero_grad()
        out.square().mean().backward()
        assert visual.grad is not None and visual.grad.abs().sum() > 0
        unused = {
            "word_embeddings",
            "position_embeddings",
            "text_ffn",
            "slots." if b is not None else "roi_proj",
            "box_embed",
        }
        for name, p in f.named_parameters():
            if any(u in name for u in unused) or name.endswith("kv.bias") or "cross_attn.kv.bias" in name:
                continue  # key biases cancel in softmax; unused branches of this call
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        visual.grad = None


def test_text_joined_changes_queries_and_stage1_api():
    f = fusion(vocab_size=20)
    visual, mask, _ = inputs()
    ids, tmask = torch.randint(1, 20, (2, 5)), torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad():
        plain = f(FusionInput(visual, mask))
        joined = f(FusionInput(visual, mask, text=Text(ids, tmask)))
        both = f.forward_with_text(FusionInput(visual, mask, text=Text(ids, tmask)))
        causal = f.forward_with_text(FusionInput(visual, mask, text=Text(ids, tmask)), text_causal=True)
        text = f.encode_text(Text(ids, tmask))
    assert not torch.allclose(plain, joined)
    torch.testing.assert_close(both[:, :3], joined)
    assert both.shape == (2, 3 + 5, 16) and text.shape == (2, 5, 16)
    # causal text: queries do not see the text, so they equal the text-free queries
    torch.testing.assert_close(causal[:, :3], plain)
    # changing a later text token does not change earlier text outputs under the causal mask
    ids2 = ids.clone()
    ids2[:, -1] = (ids[:, -1] % 19) + 1
    with torch.no_grad():
        causal2 = f.forward_with_text(FusionInput(visual, mask, text=Text(ids2, tmask)), text_causal=True)
    torch.testing.assert_close(causal2[:, :-1], causal[:, :-1])
    with pytest.raises(ValueError, match="does not read text"):
        fusion()(FusionInput(visual, mask, text=Text(ids)))


@pytest.mark.parametrize("temporal", ["per_frame", "joint"])
def test_other_frame_count_at_inference(temporal):
    f = fusion(temporal=temporal, objects=True)
    for frames in (1, 5):
        visual, mask, boxes = inputs(frames=frames)
        with torch.no_grad():
            assert f(FusionInput(visual, mask, Tracks(boxes))).shape == (2, f.num_output_tokens, 16)


@pytest.mark.parametrize(
    "kw",
    [
        dict(temporal="per_frame"),
        dict(temporal="joint"),
        dict(temporal="per_frame", objects=True),
        dict(temporal="joint", objects=True),
    ],
    ids=str,
)
def test_padding_frames_do_not_influence_output(kw):
    f = fusion(**kw)
    visual, mask, boxes = inputs()
    mask[0, 2:] = False  # first video has 2 real frames
    other = visual.clone()
    other[0, 2:] = torch.randn_like(other[0, 2:]) * 10
    other_boxes = boxes.clone()
    other_boxes[0, 2:] = torch.rand_like(other_boxes[0, 2:])
    for b, ob in [(None, None), (boxes, other_boxes)] if kw.get("objects") else [(None, None)]:
        with torch.no_grad():
            a, c = f(FusionInput(visual, mask, tracks(b))), f(FusionInput(other, mask, tracks(ob)))
        torch.testing.assert_close(a, c, atol=1e-6, rtol=0)
    with torch.no_grad():  # but a real frame does change it (not by a constant: visual_norm would remove that)
        other[0, 0] += torch.randn_like(other[0, 0])
        assert not torch.allclose(f(FusionInput(visual, mask)), f(FusionInput(other, mask)))


def test_masked_boxes_do_not_influence_output():
    f = fusion(objects=True, temporal="joint")
    visual, mask, boxes = inputs()
    box_mask = torch.ones(boxes.shape[:3], dtype=torch.bool)
    box_mask[:, :, 1] = False
    junk = boxes.clone()
    junk[:, :, 1] = float("nan")
    with torch.no_grad():
        torch.testing.assert_close(
            f(FusionInput(visual, mask, Tracks(boxes, box_mask))), f(FusionInput(visual, mask, Tracks(junk, box_mask)))
        )


def test_bad_inputs_are_clear_errors():
    f = fusion()
    visual, mask, _ = inputs()
    with pytest.raises(ValueError, match="tokens per frame"):
        f(FusionInput(visual[:, :, :-1], mask))
    with pytest.raises(ValueError, match="no real frame"):
        f(FusionInput(visual, torch.zeros_like(mask)))


def test_factory_call_matches_reasoner_contract():
    from functools import partial

    make = partial(
        FrameQFormerFusion,
        qformer=replace(TINY_QFORMER, num_query_tokens=4),
        video_num_query_tokens=2,
        video_num_layers=1,
    )
    f = make(LAYOUT)
    assert (f.output_dim, f.num_output_tokens, f.hidden_size, f.supports_text) == (16, 2, 16, False)


def test_qformer_core_cross_attention_freq_and_dropout_train_mode():
    sizes = QFormerConfig(
        num_query_tokens=2,
        hidden_size=8,
        num_layers=4,
        num_heads=2,
        intermediate_size=16,
        cross_attention_freq=2,
        dropout=0.1,
        attention_dropout=0.1,
    )
    q = QFormer(8, sizes)
    assert [layer.cross_attn is not None for layer in q.layers] == [True, False, True, False]
    out = q(torch.randn(3, 5, 8))
    assert out.shape == (3, 2, 8) and torch.isfinite(out).all()


def _cross_attention(hidden=32, width=24, heads=2, seed=0):
    from vrp.models.qformer import CrossAttention

    torch.manual_seed(seed)
    m = CrossAttention(hidden, width, heads, eps=1e-12, dropout=0.0, attention_dropout=0.0)
    with torch.no_grad():  # non-zero biases and LayerNorm so that dropping / moving the K and V biases is tested
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def _run(m, path, x, memory, mask):
    m.zero_grad()
    x, memory = x.clone().requires_grad_(), memory.clone().requires_grad_()
    y = getattr(m, path)(x, memory, mask)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return y, x.grad, memory.grad, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("masked", [False, True])
def test_folded_cross_attention_equals_ordinary(masked):
    """The K/V folding is exact algebra: outputs and every gradient match the plain path (float64: to ~1e-12)."""
    m = _cross_attention().double()
    g = torch.Generator().manual_seed(2)
    x, memory = torch.randn(3, 4, 32, generator=g).double(), torch.randn(3, 12, 24, generator=g).double() * 2
    keep = torch.rand(3, 12, generator=g) > 0.4
    keep[:, 0] = True
    mask = keep[:, None, None, :] if masked else None
    assert m.fold_memory(4, 12) and not m.fold_memory(16, 12)
    ref, fold = _run(m, "_attend", x, memory, mask), _run(m, "_attend_folded", x, memory, mask)
    for a, b in zip(ref[:3], fold[:3]):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-10)
    assert fold[3].keys() == {"q.weight", "q.bias", "kv.weight", "kv.bias"}
    for name, grad in ref[3].items():
        torch.testing.assert_close(fold[3][name], grad, atol=1e-12, rtol=1e-10, msg=name)
    torch.testing.assert_close(fold[3]["kv.bias"][:32], torch.zeros(32, dtype=torch.float64))  # key bias cancels
    if masked:  # masked memory tokens get no gradient
        assert (fold[2][~keep] == 0).all()
    with torch.no_grad():  # and through the whole block (proj, residual, LayerNorm), in fp32 as well
        torch.testing.assert_close(
            m.float()(x.float(), memory.float(), mask),
            m.norm(m.proj(m._attend(x.float(), memory.float(), mask)) + x.float()),
            atol=1e-5,
            rtol=0,
        )


def test_folded_cross_attention_with_attention_dropout_scales_value_bias_by_row_sums():
    m = _cross_attention(seed=3).train()
    m.attention_dropout = 0.5
    x, memory = torch.randn(2, 4, 32), torch.randn(2, 12, 24)
    torch.manual_seed(7)
    y = m._attend_folded(x, memory, None)
    torch.manual_seed(7)  # same dropout draw, applied to explicitly formed keys and values
    k, v = m.kv(memory).view(2, 12, 2, 2, 16).permute(2, 0, 3, 1, 4)
    q = m.q(x).view(2, 4, 2, 16).transpose(1, 2)
    attn = F.dropout((q @ k.transpose(-1, -2) / 4).softmax(-1), 0.5)
    torch.testing.assert_close(y, (attn @ v).transpose(1, 2).reshape(2, 4, 32), atol=1e-5, rtol=0)


def test_folded_path_matches_transformers_blip2():
    """A config where the folding is chosen (heads * queries < hidden, long memory) against Blip2QFormerModel."""
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    from vrp.models.interop import load_blip2_qformer

    torch.manual_seed(5)
    hf = Blip2QFormerModel(
        Blip2QFormerConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            cross_attention_frequency=1,
            encoder_hidden_size=24,
        )
    ).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.3)
    tokens = torch.randn(1, 4, 32)
    sizes = QFormerConfig(
        num_query_tokens=4, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, cross_attention_freq=1
    )
    ours = QFormer(24, sizes).eval()
    load_blip2_qformer(ours, {"query_tokens": tokens, **{f"qformer.{k}": v for k, v in hf.state_dict().items()}})
    assert all(layer.cross_attn.fold_memory(4, 20) for layer in ours.layers)
    memory, keep = torch.randn(2, 20, 24), torch.ones(2, 20, dtype=torch.bool)
    keep[1, 13:] = False
    with torch.no_grad():
        ref = hf(
            query_embeds=tokens.expand(2, -1, -1), encoder_hidden_states=memory, encoder_attention_mask=keep.long()
        ).last_hidden_state
        torch.testing.assert_close(ours(memory, keep), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("temporal", ["per_frame", "joint"])
def test_small_random_fusion_tells_videos_apart(temporal):
    """The embedded Q-Former's sizes (the objects_off ablation, init_std 0.1) must give different videos different
    outputs at init; with BERT's 0.02 at this width the outputs were equal to 1e-4, and stage-1 contrastive learning
    never started."""
    config = yaml.safe_load((Path(__file__).parents[2] / "experiments/ablations/objects_off.yaml").read_text())
    args = config["model"]["init_args"]["model"]["init_args"]["fusion"]["init_args"]
    options = QFormerOptions(**args["qformer"])
    assert options.init_std == 0.1
    torch.manual_seed(0)
    if temporal == "per_frame":
        video = {k: v for k, v in args.items() if k.startswith("video_")}
        fusion = FrameQFormerFusion(TokenLayout(192, (8, 8), 1), qformer=options, **video)
    else:
        fusion = JointQFormerFusion(TokenLayout(192, (8, 8), 1), qformer=options)
    visual = torch.nn.functional.layer_norm(torch.randn(4, 8, 65, 192), (192,))
    with torch.no_grad():
        out = fusion(FusionInput(visual))
    assert out.std(0).mean() > 0.02 * out.std()
