"""Track fusion: shapes, gradients, padding objects, the oracle's labels, joint attention across time, its options."""

import pytest
import torch

from vrp.models.contracts import FusionInput, Text, TokenLayout, Tracks
from vrp.models.tracks import GAP_CLIP, RelationMessages, TrackFusion, box_features, box_gaps


def _inputs(B=2, T=3, K=2, D=8, grid=(4, 4)):
    torch.manual_seed(0)
    visual = torch.randn(B, T, 1 + grid[0] * grid[1], D)
    centre = torch.rand(B, 1, K, 2) * 0.5 + 0.25 + torch.arange(T)[None, :, None, None] * 0.02  # moving right/down
    boxes = torch.cat([centre - 0.1, centre + 0.1], dim=-1)  # (B, T, K, 4)
    return visual, boxes, torch.ones(B, T, K, dtype=torch.bool)


def _fusion(**kw):
    torch.manual_seed(0)
    args = dict(max_objects=3, num_frames=3, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    return TrackFusion(TokenLayout(8, (4, 4), 1), **(args | kw))


def test_box_features_motion_and_mask():
    boxes = torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.2, 0.1, 0.4, 0.3], [0.4, 0.1, 0.6, 0.3]])[None, :, None]  # (1,3,1,4)
    mask = torch.tensor([[True], [True], [False]])[None]
    f = box_features(boxes, mask)
    assert f.shape == (1, 3, 1, 12)
    torch.testing.assert_close(f[0, 1, 0, 8:10], torch.tensor([1.0, 0.0]))  # moved 0.1 right since frame 0 (x10)
    torch.testing.assert_close(f[0, 0, 0, 10:12], torch.tensor([1.0, 0.0]))  # moves 0.1 right into frame 1
    assert f[0, 1, 0, 10:].abs().sum() == 0  # the next box is absent: no motion out of frame 1
    assert f[0, 2].abs().sum() == 0  # absent box: all zero


@pytest.mark.parametrize("relations", [False, True])
@pytest.mark.parametrize("appearance", ["roi", "oracle", "none"])
def test_shapes_gradients_and_padding(appearance, relations):
    visual, boxes, mask = _inputs()
    visual.requires_grad_(True)
    fusion = _fusion(appearance=appearance, relations=relations)
    attrs = torch.eye(10)[torch.tensor([[0, 5], [3, 9]])] if appearance == "oracle" else None  # (2, 2, 10)
    out = fusion(FusionInput(visual, torch.ones(2, 3, dtype=torch.bool), Tracks(boxes, mask, attrs)))
    assert out.shape == (2, 3 * 3, 16) and fusion.num_output_tokens == 9 and fusion.output_dim == 16
    tokens = out.view(2, 3, 3, 16)
    assert tokens[:, :, 2].abs().sum() == 0  # the padding object (K=2 < max_objects=3) is zero
    assert tokens[:, :, :2].abs().sum(-1).gt(0).all()
    out.square().sum().backward()
    assert all(p.grad is not None for p in fusion.parameters() if p.requires_grad)
    assert (visual.grad is not None and visual.grad.abs().sum() > 0) == (appearance == "roi")  # only RoI reads pixels


def test_oracle_reads_attributes_not_pixels():
    visual, boxes, mask = _inputs()
    fusion = _fusion(appearance="oracle", num_attributes=4).eval()
    attrs = torch.tensor([[[1.0, 0, 1, 0], [0, 1, 0, 1]], [[1, 0, 0, 1], [0, 1, 1, 0]]])  # colour + shape words
    ref = fusion(FusionInput(visual, None, Tracks(boxes, mask, attrs)))
    torch.testing.assert_close(fusion(FusionInput(visual * 0 + 3, None, Tracks(boxes, mask, attrs))), ref)
    assert not torch.allclose(fusion(FusionInput(visual, None, Tracks(boxes, mask, attrs.flip(1)))), ref)
    with pytest.raises(ValueError, match="box_attributes"):
        fusion(FusionInput(visual, None, Tracks(boxes, mask)))


def test_joint_attention_reads_other_objects_and_frames():
    visual, boxes, mask = _inputs()
    fusion = _fusion(appearance="none").eval()
    ref = fusion(FusionInput(visual, None, Tracks(boxes, mask))).view(2, 3, 3, 16)
    moved = boxes.clone()
    moved[:, 2, 1] += 0.05  # object 1 at the last frame only
    out = fusion(FusionInput(visual, None, Tracks(moved, mask))).view(2, 3, 3, 16)
    assert not torch.allclose(out[:, 0, 0], ref[:, 0, 0])  # object 0 at frame 0 sees it


def test_switches_and_errors():
    visual, boxes, mask = _inputs()
    off = _fusion(identity_embed=False, time_embed=False, motion=False)
    assert off.identity is None and off.time is None
    assert off(FusionInput(visual, None, Tracks(boxes, mask))).shape == (2, 9, 16)
    # without motion features a static and a moving track look the same at the box level
    static = boxes[:, :1].expand_as(boxes)
    f = off.tokens(FusionInput(visual, None, Tracks(static, mask)))[0]
    assert f.shape == (2, 3, 3, 16)
    fusion = _fusion()
    with pytest.raises(ValueError, match="boxes"):
        fusion(FusionInput(visual))
    with pytest.raises(ValueError, match="K<=3"):
        fusion(FusionInput(visual, None, Tracks(torch.zeros(2, 3, 4, 4))))
    with pytest.raises(ValueError, match="text"):
        fusion(FusionInput(visual, None, Tracks(boxes), Text(torch.zeros(2, 3, dtype=torch.long))))
    with pytest.raises(ValueError, match="appearance"):
        _fusion(appearance="pixels")
    # more frames than the learned time table: interpolated
    visual5 = torch.randn(2, 5, 17, 8)
    boxes5 = torch.rand(2, 5, 2, 2) * 0.4
    boxes5 = torch.cat([boxes5, boxes5 + 0.2], dim=-1)
    assert fusion(FusionInput(visual5, None, Tracks(boxes5))).shape == (2, 15, 16)


def test_inference_matches_training_mode():
    """torch's inference fast path returned NaN for a float attention bias: eval + no_grad must equal train mode."""
    visual, boxes, mask = _inputs()
    mask[1, :, 1] = False
    fusion = _fusion(num_layers=2)
    train = fusion(FusionInput(visual, None, Tracks(boxes, mask)))
    fusion.eval()
    with torch.no_grad():
        infer = fusion(FusionInput(visual, None, Tracks(boxes, mask)))
    torch.testing.assert_close(infer, train)


def test_box_substeps_read_the_track_between_frames():
    visual, boxes, mask = _inputs(T=3)
    S = 4
    dense = boxes.repeat_interleave(S, dim=1).clone()  # (B, T*S, K, 4): still between frames ...
    fusion = _fusion(box_substeps=S).eval()
    ref = fusion(FusionInput(visual, None, Tracks(dense, mask.repeat_interleave(S, dim=1))))
    assert ref.shape == (2, 9, 16)
    moved = dense.clone()
    moved[:, 2] += 0.05  # ... a move between sampled frames 0 and 1 (sub-step 2 of frame 0) changes the tokens
    out = fusion(FusionInput(visual, None, Tracks(moved, mask.repeat_interleave(S, dim=1))))
    assert not torch.allclose(out, ref)
    x = fusion.tokens(FusionInput(visual, None, Tracks(moved, mask.repeat_interleave(S, dim=1))))[0]
    x_ref = fusion.tokens(FusionInput(visual, None, Tracks(dense, mask.repeat_interleave(S, dim=1))))[0]
    torch.testing.assert_close(x[:, 1:], x_ref[:, 1:])  # only frame 0's tokens read that row
    assert not torch.allclose(x[:, 0], x_ref[:, 0])
    with pytest.raises(ValueError, match="box_substeps"):
        fusion(FusionInput(visual, None, Tracks(boxes, mask)))  # one row per frame for a fusion that expects 4
    with pytest.raises(ValueError, match="box_substeps"):
        _fusion(box_substeps=0)


def test_box_gaps():
    boxes = torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.35, 0.1, 0.5, 0.3], [0.2, 0.2, 0.4, 0.4]])[None, None]  # (1,1,3,4)
    mask = torch.tensor([[[True, True, False]]])
    gap = box_gaps(boxes, mask)[0, 0]
    torch.testing.assert_close(gap[0, 1], torch.tensor(0.05))  # 0.05 apart along x, level along y
    torch.testing.assert_close(gap[1, 0], gap[0, 1])
    assert gap[0, 0] == GAP_CLIP and gap[0, 2] == GAP_CLIP  # itself, and an absent box: nothing is close
    overlap = box_gaps(boxes, torch.ones(1, 1, 3, dtype=torch.bool))[0, 0, 0, 2]
    assert overlap < 0  # overlapping boxes: a negative gap


def _three_boxes(S=2):
    """Two objects in contact (0 and 1) and one far away (2), S rows per frame, 2 frames: (1, 2*S, 3, 4)."""
    boxes = torch.tensor([[0.1, 0.1, 0.2, 0.2], [0.2, 0.1, 0.3, 0.2], [0.7, 0.7, 0.8, 0.8]])
    return boxes[None, None].expand(1, 2 * S, 3, 4).clone(), torch.ones(1, 2 * S, 3, dtype=torch.bool)


def test_relation_messages_start_local_and_read_only_their_frame():
    torch.manual_seed(0)
    rel = RelationMessages(hidden_size=4, box_substeps=2)
    boxes, mask = _three_boxes()
    tokens = torch.zeros(1, 2, 3, 4)
    tokens[:, :, 0, 0], tokens[:, :, 1, 1], tokens[:, :, 2, 2] = 1.0, 1.0, 1.0  # one direction per object
    with torch.no_grad():
        rel.value.weight.copy_(torch.eye(4))
        rel.value.bias.zero_()
    out = rel(boxes, mask, tokens)  # (1, 2, 3, 4)
    assert out.shape == (1, 2, 3, 4)
    # at the start the scores are the locality prior: object 0 hears its neighbour 1 far more than object 2
    assert out[0, 0, 0, 1] > 0.4 and out[0, 0, 0, 2] < 1e-3
    assert out[0, 0, 0, 0] == 0  # never itself
    # an absent object sends nothing
    gone = mask.clone()
    gone[:, :, 1] = False
    assert rel(boxes, gone, tokens)[0, :, 0, 1].abs().max() == 0
    # only the token's own frame: changing frame 1's tokens leaves frame 0's messages as they were
    later = tokens.clone()
    later[:, 1] += 1.0
    torch.testing.assert_close(rel(boxes, mask, later)[:, 0], out[:, 0])
    # the scores are learned: gradients reach the MLP's last layer, the sharpness and the "nobody" logit
    rel(boxes, mask, tokens).sum().backward()
    assert rel.score[-1].weight.grad.abs().sum() > 0 and rel.log_sharpness.grad != 0 and rel.nobody.grad != 0


def test_relation_messages_switch():
    assert _fusion().relations is None
    visual, boxes, mask = _inputs()
    fusion = _fusion(relations=True).eval()
    assert isinstance(fusion.relations, RelationMessages)
    ref = fusion(FusionInput(visual, None, Tracks(boxes, mask)))
    with torch.no_grad():
        fusion.relations.value.weight.zero_()
        fusion.relations.value.bias.zero_()
    assert not torch.allclose(fusion(FusionInput(visual, None, Tracks(boxes, mask))), ref)  # the messages count
