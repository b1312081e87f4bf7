"""Track fusion: shapes, gradients, padding objects, the oracle's labels, joint attention across time, ablation switches."""

import pytest
import torch

from vrp.models.tracks import TrackFusion, box_features, kinematic_features


def _inputs(B=2, T=3, K=2, D=8, grid=(4, 4)):
    torch.manual_seed(0)
    visual = torch.randn(B, T, 1 + grid[0] * grid[1], D)
    centre = torch.rand(B, 1, K, 2) * 0.5 + 0.25 + torch.arange(T)[None, :, None, None] * 0.02  # moving right/down
    boxes = torch.cat([centre - 0.1, centre + 0.1], dim=-1)  # (B, T, K, 4)
    return visual, boxes, torch.ones(B, T, K, dtype=torch.bool)


def _fusion(**kw):
    torch.manual_seed(0)
    args = dict(max_objects=3, num_frames=3, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    return TrackFusion(8, (4, 4), 1, **(args | kw))


def test_box_features_motion_and_mask():
    boxes = torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.2, 0.1, 0.4, 0.3], [0.4, 0.1, 0.6, 0.3]])[None, :, None]  # (1,3,1,4)
    mask = torch.tensor([[True], [True], [False]])[None]
    f = box_features(boxes, mask)
    assert f.shape == (1, 3, 1, 12)
    torch.testing.assert_close(f[0, 1, 0, 8:10], torch.tensor([1.0, 0.0]))  # moved 0.1 right since frame 0 (x10)
    torch.testing.assert_close(f[0, 0, 0, 10:12], torch.tensor([1.0, 0.0]))  # moves 0.1 right into frame 1
    assert f[0, 1, 0, 10:].abs().sum() == 0  # the next box is absent: no motion out of frame 1
    assert f[0, 2].abs().sum() == 0  # absent box: all zero


def test_kinematic_features_by_hand():
    # object 0 moves right 0.1 per frame, then bounces back (frame 2 -> 3); object 1 sits still beside the right edge
    c0 = torch.tensor([[0.2, 0.5], [0.3, 0.5], [0.4, 0.5], [0.3, 0.5]])
    b0 = torch.cat([c0 - 0.1, c0 + 0.1], dim=-1)  # (4, 4): 0.2 wide
    b1 = torch.tensor([0.85, 0.45, 0.95, 0.55]).expand(4, 4)
    boxes = torch.stack([b0, b1], dim=1)[None]  # (1, 4, 2, 4)
    mask = torch.ones(1, 4, 2, dtype=torch.bool)
    f = kinematic_features(boxes, mask)
    assert f.shape == (1, 4, 2, 5)
    torch.testing.assert_close(f[0, :, 0, 0], torch.tensor([0.0, 1.0, 1.0, 1.0]))  # speed in (x10), none at frame 0
    torch.testing.assert_close(f[0, :, 0, 1], torch.tensor([1.0, 1.0, 1.0, 0.0]))  # speed out
    torch.testing.assert_close(f[0, :, 0, 2], torch.tensor([0.0, 0.0, 2.0, 0.0]))  # velocity change: the bounce only
    torch.testing.assert_close(f[0, 0, 1, 3], torch.tensor(0.1))  # object 1: 0.05 from the right edge, / GAP_CLIP
    torch.testing.assert_close(f[0, 2, 0, 4], torch.tensor(0.7))  # gap 0.85 - 0.5 = 0.35 to object 1, / GAP_CLIP
    assert f[0, :, 1, :3].abs().sum() == 0  # a still object: no speed, no turn
    mask[0, 3, 0] = False  # object 0 lost at the last frame: no turn measured at frame 2, nothing at frame 3
    f = kinematic_features(boxes, mask)
    assert f[0, 2, 0, 2] == 0 and f[0, 3, 0].abs().sum() == 0
    torch.testing.assert_close(f[0, 2, 1, 4], torch.tensor(0.7))
    torch.testing.assert_close(f[0, 3, 1, 4], torch.tensor(1.0))  # alone in the frame: nearest box is GAP_CLIP


def test_kinematics_switch_feeds_the_box_embedding():
    visual, boxes, mask = _inputs()
    fusion = _fusion(kinematics=True)
    assert fusion.box_embed[0].in_features == 12 + 5
    out = fusion(visual, None, boxes=boxes, box_mask=mask)
    out.square().sum().backward()
    assert fusion.box_embed[0].weight.grad[:, 12:].abs().sum() > 0  # the invariants reach the loss
    moved = boxes.clone()
    moved[:, 1:, 0, ::2] += 0.05  # object 0 speeds up: same first box, other speeds
    assert not torch.allclose(
        fusion.eval()(visual, None, boxes=moved, box_mask=mask), fusion(visual, None, boxes=boxes, box_mask=mask)
    )


@pytest.mark.parametrize("appearance", ["roi", "oracle", "none"])
def test_shapes_gradients_and_padding(appearance):
    visual, boxes, mask = _inputs()
    visual.requires_grad_(True)
    fusion = _fusion(appearance=appearance)
    attrs = torch.eye(10)[torch.tensor([[0, 5], [3, 9]])] if appearance == "oracle" else None  # (2, 2, 10)
    out = fusion(visual, torch.ones(2, 3, dtype=torch.bool), boxes=boxes, box_mask=mask, box_attributes=attrs)
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
    ref = fusion(visual, None, boxes=boxes, box_mask=mask, box_attributes=attrs)
    torch.testing.assert_close(fusion(visual * 0 + 3, None, boxes=boxes, box_mask=mask, box_attributes=attrs), ref)
    assert not torch.allclose(fusion(visual, None, boxes=boxes, box_mask=mask, box_attributes=attrs.flip(1)), ref)
    with pytest.raises(ValueError, match="box_attributes"):
        fusion(visual, None, boxes=boxes, box_mask=mask)


def test_joint_attention_reads_other_objects_and_frames():
    visual, boxes, mask = _inputs()
    fusion = _fusion(appearance="none").eval()
    ref = fusion(visual, None, boxes=boxes, box_mask=mask).view(2, 3, 3, 16)
    moved = boxes.clone()
    moved[:, 2, 1] += 0.05  # object 1 at the last frame only
    out = fusion(visual, None, boxes=moved, box_mask=mask).view(2, 3, 3, 16)
    assert not torch.allclose(out[:, 0, 0], ref[:, 0, 0])  # object 0 at frame 0 sees it


def test_switches_and_errors():
    visual, boxes, mask = _inputs()
    off = _fusion(identity_embed=False, time_embed=False, motion=False)
    assert off.identity is None and off.time is None
    assert off(visual, None, boxes=boxes, box_mask=mask).shape == (2, 9, 16)
    # without motion features a static and a moving track look the same at the box level
    static = boxes[:, :1].expand_as(boxes)
    f = off.tokens(visual, None, static, mask, None)[0]
    assert f.shape == (2, 3, 3, 16)
    fusion = _fusion()
    with pytest.raises(ValueError, match="boxes"):
        fusion(visual, None)
    with pytest.raises(ValueError, match="K<=3"):
        fusion(visual, None, boxes=torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="text"):
        fusion(visual, None, boxes=boxes, text_ids=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="appearance"):
        _fusion(appearance="pixels")
    # more frames than the learned time table: interpolated
    visual5 = torch.randn(2, 5, 17, 8)
    boxes5 = torch.rand(2, 5, 2, 2) * 0.4
    boxes5 = torch.cat([boxes5, boxes5 + 0.2], dim=-1)
    assert fusion(visual5, None, boxes=boxes5).shape == (2, 15, 16)


def test_pair_features_by_hand():
    from vrp.models.tracks import pair_features

    boxes = torch.tensor(
        [
            [[0.1, 0.1, 0.3, 0.3], [0.4, 0.1, 0.6, 0.3]],  # frame 0: 0.1 apart in x
            [[0.2, 0.1, 0.4, 0.3], [0.3, 0.1, 0.5, 0.3]],
        ]
    )[None]  # frame 1: overlapping by 0.1
    f = pair_features(boxes, num_frames=2)  # (1, 4, 4, 7), tokens (t0 k0, t0 k1, t1 k0, t1 k1)
    assert f.shape == (1, 4, 4, 7)
    torch.testing.assert_close(f[0, 0, 1], torch.tensor([0.3, 0.0, 0.3, 0.1, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(f[0, 2, 3], torch.tensor([0.1, 0.0, 0.1, -0.1, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(
        f[0, 0, 2], torch.tensor([0.1, 0.0, 0.1, -0.1, 1.0, 1.0, 0.0])
    )  # same object, next frame
    torch.testing.assert_close(f[0, 2, 0, 4], torch.tensor(-1.0))


def test_relation_bias_trains_and_keeps_padding_out():
    visual, boxes, mask = _inputs()
    fusion = _fusion(relation_bias=True)
    mask[1, :, 1] = False  # sample 1 has one object
    out = fusion(visual, torch.ones(2, 3, dtype=torch.bool), boxes=boxes, box_mask=mask)
    assert out.shape == (2, 9, 16) and torch.isfinite(out).all()
    out.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fusion.relation.parameters())
    junk = boxes.clone()
    junk[1, :, 1] = torch.tensor([0.0, 0.0, 0.9, 0.9])  # an absent box's coordinates must not matter
    again = fusion(visual, torch.ones(2, 3, dtype=torch.bool), boxes=junk, box_mask=mask)
    torch.testing.assert_close(again, out)


@pytest.mark.parametrize("relation_bias", [False, True])
def test_inference_matches_training_mode(relation_bias):
    """torch's inference fast path returned NaN for a float attention bias: eval + no_grad must equal train mode."""
    visual, boxes, mask = _inputs()
    mask[1, :, 1] = False
    fusion = _fusion(relation_bias=relation_bias, num_layers=2)
    train = fusion(visual, None, boxes=boxes, box_mask=mask)
    fusion.eval()
    with torch.no_grad():
        infer = fusion(visual, None, boxes=boxes, box_mask=mask)
    torch.testing.assert_close(infer, train)


def test_contact_features_by_hand():
    from vrp.models.tracks import GAP_CLIP, contact_features

    boxes = torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.35, 0.1, 0.55, 0.3], [0.0, 0.0, 0.0, 0.0]])[None, None]  # (1,1,3,4)
    mask = torch.tensor([[[True, True, False]]])
    c = contact_features(boxes, mask, slots=4)
    assert c.shape == (1, 1, 3, 8)
    torch.testing.assert_close(
        c[0, 0, 0, :4], torch.tensor([GAP_CLIP, 0.05, GAP_CLIP, GAP_CLIP]) / GAP_CLIP
    )  # itself, 0.05 apart, absent, none
    torch.testing.assert_close(c[0, 0, 1, 0], torch.tensor(0.05 / GAP_CLIP))  # symmetric
    torch.testing.assert_close(
        c[0, 0, 0, 4:], torch.tensor([0.1, 0.1, 0.5, 0.7]).clamp(max=GAP_CLIP) / GAP_CLIP
    )  # l, t, r, b
    assert c[0, 0, 2].abs().sum() == 0  # an absent box has no features
    overlap = contact_features(torch.tensor([[[[0.1, 0.1, 0.3, 0.3], [0.2, 0.1, 0.4, 0.3]]]]), mask[..., :2], slots=2)
    assert overlap[0, 0, 0, 1] < 0  # overlapping boxes: negative gap


def test_box_substeps_read_the_track_between_frames():
    visual, boxes, mask = _inputs(T=3)
    S = 4
    dense = boxes.repeat_interleave(S, dim=1).clone()  # (B, T*S, K, 4): still between frames ...
    fusion = _fusion(box_substeps=S, contacts=True).eval()
    ref = fusion(visual, None, boxes=dense, box_mask=mask.repeat_interleave(S, dim=1))
    assert ref.shape == (2, 9, 16)
    moved = dense.clone()
    moved[:, 2] += 0.05  # ... a move between sampled frames 0 and 1 (sub-step 2 of frame 0) changes the tokens
    out = fusion(visual, None, boxes=moved, box_mask=mask.repeat_interleave(S, dim=1))
    assert not torch.allclose(out, ref)
    x = fusion.tokens(visual, None, moved, mask.repeat_interleave(S, dim=1), None)[0]
    x_ref = fusion.tokens(visual, None, dense, mask.repeat_interleave(S, dim=1), None)[0]
    torch.testing.assert_close(x[:, 1:], x_ref[:, 1:])  # only frame 0's tokens read that row
    assert not torch.allclose(x[:, 0], x_ref[:, 0])
    with pytest.raises(ValueError, match="box_substeps"):
        fusion(visual, None, boxes=boxes, box_mask=mask)  # one row per frame for a fusion that expects 4
    with pytest.raises(ValueError, match="box_substeps"):
        _fusion(box_substeps=0)


def test_partner_messages_mix_only_real_partners():
    from vrp.models.tracks import PartnerMessages

    torch.manual_seed(0)
    S, T, K, H = 2, 3, 3, 16
    pm = PartnerMessages(H, S)
    _, boxes, mask = _inputs(B=1, T=T * S, K=K)
    mask[:, :, 2] = False  # object 2 is absent
    appearance = torch.randn(1, K, H, requires_grad=True)
    out = pm(boxes, mask, appearance)
    assert out.shape == (1, T, K, H)
    other = appearance.detach().clone()
    other[:, 2] += 5.0  # the absent object's appearance never reaches a message
    torch.testing.assert_close(pm(boxes, mask, other), out)
    other[:, 1] += 5.0  # a present partner's does
    assert not torch.allclose(pm(boxes, mask, other)[:, :, 0], out[:, :, 0])
    torch.testing.assert_close(
        pm(boxes, mask, other)[:, :, 1], pm(boxes, mask, appearance.detach())[:, :, 1]
    )  # not its own
    out.square().sum().backward()
    assert appearance.grad[0, :2].abs().sum() > 0 and all(p.grad is not None for p in pm.parameters())
    fusion = _fusion(box_substeps=S, partner_messages=True)
    visual = torch.randn(1, T, 17, 8)
    assert fusion(visual, None, boxes=boxes, box_mask=mask).shape == (1, 3 * T, 16)


def test_partner_messages_by_contact_rule():
    from vrp.models.tracks import PartnerMessages

    # two sampled frames of S=2 rows: red (0) moves right and touches blue (1) at row 2 (frame 1); green (2) sits by
    # the bottom edge; object 3 is absent in frame 1
    c = torch.tensor([[0.20, 0.3], [0.25, 0.3], [0.30, 0.3], [0.30, 0.3]])
    red = torch.cat([c - 0.1, c + 0.1], -1)
    blue = torch.tensor([0.40, 0.2, 0.60, 0.4]).expand(4, 4)
    green = torch.tensor([0.45, 0.85, 0.55, 0.99]).expand(4, 4)
    far = torch.tensor([0.05, 0.5, 0.15, 0.6]).expand(4, 4)
    boxes = torch.stack([red, blue, green, far], dim=1)[None]  # (1, 4, 4, 4)
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    mask[:, 2:, 3] = False
    H = 8
    pm = PartnerMessages(H, 2, contact_gap=0.02)
    assert not hasattr(pm, "score")  # nothing to learn in the pick
    with torch.no_grad():
        pm.out.weight.copy_(torch.eye(H)), pm.out.bias.zero_(), pm.wall.copy_(torch.full((H,), 7.0))
    appearance = torch.eye(4, H)[None]  # object k's appearance: unit vector k
    msg = pm(boxes, mask, appearance)  # (1, 2, 4, H)
    torch.testing.assert_close(msg[0, 0, 0], torch.zeros(H))  # frame 0: red touches nothing (gap 0.05)
    torch.testing.assert_close(msg[0, 1, 0], appearance[0, 1])  # frame 1: red touches blue
    torch.testing.assert_close(msg[0, 1, 1], appearance[0, 0])  # and blue red
    torch.testing.assert_close(msg[0, 0, 2], torch.full((H,), 7.0))  # green: the bottom edge (gap 0.01)
    torch.testing.assert_close(msg[0, 1, 3], torch.zeros(H))  # absent: no message, no wall
    torch.testing.assert_close(msg[0, 0, 3], torch.zeros(H))  # 0.05 from the left edge: no contact
    fusion = _fusion(box_substeps=2, partner_messages=True, contact_gap=0.02, max_objects=4, num_frames=2)
    out = fusion(torch.randn(1, 2, 17, 8), None, boxes=boxes, box_mask=mask)
    assert out.shape == (1, 8, 16)
    out.square().sum().backward()
    assert all(p.grad is not None for p in fusion.partners.parameters())


def test_contact_times_by_hand():
    from vrp.models.tracks import contact_times

    # radius 0.05 each. red moves right 0.05 per row toward blue (still, centre gap 0.4 -> touches after 6 rows);
    # green moves up 0.02 per row, 0.1 from the top edge (its box's top at 0.15 - 0.05: 5 rows); object 3 is absent
    # in row 1; at row 0 nothing has a known motion
    red = torch.tensor([[0.25, 0.5], [0.30, 0.5]])
    blue = torch.tensor([[0.70, 0.5], [0.70, 0.5]])
    green = torch.tensor([[0.30, 0.17], [0.30, 0.15]])
    lost = torch.tensor([[0.5, 0.8], [0.5, 0.8]])
    c = torch.stack([red, blue, green, lost], dim=1)  # (2, 4, 2)
    boxes = torch.cat([c - 0.05, c + 0.05], dim=-1)[None]  # (1, 2, 4, 4)
    mask = torch.ones(1, 2, 4, dtype=torch.bool)
    mask[0, 1, 3] = False
    t = contact_times(boxes, mask)
    assert t.shape == (1, 2, 4, 5) and t[0, 0].isinf().all()  # no motion known at the first row
    torch.testing.assert_close(t[0, 1, 0, 1], torch.tensor(6.0))  # red reaches blue: gap 0.3 at 0.05 per row
    torch.testing.assert_close(t[0, 1, 1, 0], torch.tensor(6.0))  # and blue sees red coming
    torch.testing.assert_close(t[0, 1, 0, 4], torch.tensor(0.65 / 0.05))  # red's right edge to the frame's
    torch.testing.assert_close(t[0, 1, 2, 4], torch.tensor(5.0))  # green: top edge 0.10 away at 0.02 per row
    assert t[0, 1, 0, 2].isinf() and t[0, 1, 2, 0].isinf()  # red and green move in parallel: never meet
    assert t[0, 1, 1, 4].isinf()  # blue stands still: no wall ahead
    assert t[0, 1, 3].isinf().all() and t[0, 1, :3, 3].isinf().all()  # the absent box: no times, no partner
    assert t[0, 1, 0, 0].isinf()  # not itself


def test_forecast_messages_by_hand():
    from vrp.models.tracks import ForecastMessages

    # two sampled frames of S=2 rows. red (0) moves right 0.05 per row toward blue (1), which stands still; green (2)
    # moves up toward the top edge; the last row of frame 1 is past the clip (absent) for every object
    red = torch.tensor([[0.10, 0.5], [0.15, 0.5], [0.20, 0.5], [0.0, 0.0]])
    blue = torch.tensor([[0.50, 0.5]] * 3 + [[0.0, 0.0]])
    green = torch.tensor([[0.30, 0.14], [0.30, 0.12], [0.30, 0.10], [0.0, 0.0]])
    c = torch.stack([red, blue, green], dim=1)
    boxes = torch.cat([c - 0.05, c + 0.05], dim=-1)[None]  # (1, 4, 3, 4)
    mask = torch.ones(1, 4, 3, dtype=torch.bool)
    mask[0, 3] = False
    H = 8
    fm = ForecastMessages(H, 2, horizon=1.5)  # 1.5 frames = 3 rows ahead
    with torch.no_grad():
        fm.out.weight.copy_(torch.eye(H)), fm.out.bias.zero_(), fm.wall.copy_(torch.full((H,), 7.0))
        fm.soon.weight.zero_(), fm.soon.bias.zero_()
    appearance = torch.eye(3, H)[None]
    msg = fm(boxes, mask, appearance)  # (1, 2, 3, H)
    # frame 1's last known row is row 2: red is 0.2 from blue at 0.05 per row (4 rows: beyond the horizon)
    torch.testing.assert_close(msg[0, 1, 0], torch.zeros(H))
    torch.testing.assert_close(msg[0, 1, 2], torch.full((H,), 7.0))  # green: top edge 0.05 away, 0.02 per row
    torch.testing.assert_close(msg[0, 0, 1], torch.zeros(H))  # blue stands still: nothing ahead
    fm2 = ForecastMessages(H, 2, horizon=3.0)  # 6 rows ahead: red's hit on blue is in sight, sooner than its wall
    fm2.load_state_dict(fm.state_dict())
    torch.testing.assert_close(fm2(boxes, mask, appearance)[0, 1, 0], appearance[0, 1])
    with torch.no_grad():
        fm2.soon.weight.copy_(torch.eye(H, 2))
    soon = fm2(boxes, mask, appearance)[0, 1, 0, :2] - appearance[0, 1, :2]  # (time to blue, to an edge) / horizon
    torch.testing.assert_close(soon, torch.tensor([4 / 6, 1.0]))  # the edge is 0.75 / 0.05 = 15 rows off: capped
    with pytest.raises(ValueError, match="forecast_horizon"):
        ForecastMessages(H, 2, horizon=0.0)
    fm3 = ForecastMessages(H, 2, horizon=1.5, order=True)  # + (first to an edge, first to touch anything)
    fm3.load_state_dict(fm.state_dict(), strict=False)
    with torch.no_grad():
        fm3.order.weight.copy_(torch.eye(H, 2)), fm3.order.bias.zero_()
    flags = (fm3(boxes, mask, appearance) - msg)[0, :, :, :2]  # (T, K, 2)
    # frame 1: green reaches the top edge in 2.5 rows, before red's right edge (15) and red meeting blue (4); blue
    # stands still but sees red coming (4 rows): green is first to an edge and first to anything
    torch.testing.assert_close(flags[1], torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]))
    torch.testing.assert_close(flags[0], flags[1])  # frame 0 (row 1): green's edge in 3.5 rows, red meets blue in 5
    still = mask.clone()
    still[0, 2:, 2] = False  # green's rows 2-3 absent: frame 1 has no forecast for it, so red and blue tie for first
    flags = (fm3(boxes, still, appearance) - fm(boxes, still, appearance))[0, 1, :, :2]
    torch.testing.assert_close(flags, torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]))  # red alone has an edge ahead
    with pytest.raises(ValueError, match="forecast_order needs"):
        _fusion(forecast_order=True)
    fusion = _fusion(box_substeps=2, forecast_horizon=2.0, num_frames=2)
    out = fusion(torch.randn(1, 2, 17, 8), None, boxes=boxes, box_mask=mask)
    assert out.shape == (1, 6, 16)
    out.square().sum().backward()
    assert all(p.grad is not None for p in fusion.forecasts.parameters())


@pytest.mark.parametrize("relation_bias", [False, True])
def test_masked_boxes_hide_what_they_predict(relation_bias):
    visual, boxes, mask = _inputs()
    fusion = _fusion(masked_boxes=True, relation_bias=relation_bias).eval()
    hide = torch.zeros(2, 3, 2, dtype=torch.bool)
    hide[0, 1, 0] = True  # object 0 at frame 1 of clip 0
    ref, keep, _ = fusion.encode_tracks(visual, None, boxes, mask, None, hide)
    assert ref.shape == (2, 9, 16) and keep.view(2, 3, 3)[:, :, :2].all()  # hidden tokens still attend
    moved = boxes.clone()
    moved[0, 1, 0] += 0.05  # the hidden box: nothing it feeds may change
    torch.testing.assert_close(fusion.encode_tracks(visual, None, moved, mask, None, hide)[0], ref)
    moved[0, 1, 1] += 0.05  # a visible box of the same frame: everything sees it
    assert not torch.allclose(fusion.encode_tracks(visual, None, moved, mask, None, hide)[0][0, 0], ref[0, 0])
    unhidden = fusion.encode_tracks(visual, None, boxes, mask, None)[0]
    assert not torch.allclose(unhidden[0], ref[0]) and torch.allclose(unhidden[1], ref[1])  # clip 1 hides nothing
    torch.testing.assert_close(fusion(visual, None, boxes=boxes, box_mask=mask), unhidden * keep[..., None])


def test_masked_box_loss_trains_its_head_and_is_reproducible():
    visual, boxes, mask = _inputs(B=4)
    fusion = _fusion(masked_boxes=True)
    assert fusion.masked_boxes and _fusion().box_head is None and _fusion().hidden_token is None
    loss = fusion.masked_box_loss(visual, None, boxes=boxes, box_mask=mask, generator=torch.Generator().manual_seed(1))
    again = fusion.masked_box_loss(visual, None, boxes=boxes, box_mask=mask, generator=torch.Generator().manual_seed(1))
    assert loss.ndim == 0 and loss > 0 and torch.equal(loss, again)
    loss.backward()
    assert fusion.box_head.weight.grad.abs().sum() > 0 and fusion.hidden_token.grad.abs().sum() > 0
    absent = fusion.masked_box_loss(visual, None, boxes=boxes, box_mask=torch.zeros_like(mask))
    assert absent == 0  # nothing present, nothing hidden: a zero that still backpropagates
    with pytest.raises(ValueError, match="masked_boxes=True"):
        _fusion().masked_box_loss(visual, None, boxes=boxes, box_mask=mask)
