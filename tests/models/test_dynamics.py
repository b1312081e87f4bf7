"""The learned object dynamics (`vrp.models.dynamics`): shapes, gates, loss, roll-outs, freezing, its stage 0, and
the track fusion reading it."""

import json

import pytest
import torch

from vrp.models.dynamics import InteractionDynamics, InteractionMessages, frozen
from vrp.models.tracks import TrackFusion


def _tracks(B=2, R=6, K=2, step=0.02):
    """Boxes moving at constant velocity: object k starts at x = 0.2 + 0.4 k and moves right by ``step`` a row."""
    x = 0.2 + 0.4 * torch.arange(K)[None, None, :] + step * torch.arange(R)[None, :, None]  # (1, R, K)
    centre = torch.stack([x, torch.full_like(x, 0.5)], dim=-1).expand(B, R, K, 2)
    return torch.cat([centre - 0.05, centre + 0.05], dim=-1), torch.ones(B, R, K, dtype=torch.bool)


def test_shapes_gates_and_gradients():
    torch.manual_seed(0)
    model = InteractionDynamics(hidden_size=16)
    boxes, mask = _tracks()
    mask[1, :, 1] = False  # sample 1 has one object
    change, gates = model(boxes, mask)
    assert change.shape == (2, 6, 2, 2) and gates.shape == (2, 6, 2, 3)
    assert gates[:, 0].abs().sum() == 0  # no motion is known on the first row: no gate, no change
    assert gates[1, :, 1].abs().sum() == 0 and gates[1, :, 0, 1].abs().sum() == 0  # nothing from / to an absent box
    assert torch.all(gates[0, 1:, 0, 1] > 0) and torch.all(gates[0, 1:, :, 2] > 0)  # pairs and the environment
    assert torch.all(torch.diagonal(gates[..., :2], dim1=-2, dim2=-1) == 0)  # nothing acts on itself
    loss, parts = model.loss(boxes, mask)
    loss.backward()
    assert set(parts) == {"motion", "gates"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_loss_is_relative_to_the_change_of_motion():
    model = InteractionDynamics(hidden_size=8, gate_penalty=0.0)
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)  # predicts no change at all
    boxes, mask = _tracks(B=1, R=6, K=1)
    boxes[:, 4:, :, 0::2] -= 0.08  # the object turns back at row 3 -> 4 ...
    loss, parts = model.loss(boxes, mask)
    torch.testing.assert_close(loss, torch.tensor(1.0))  # ... and predicting constant motion scores exactly 1


def test_learns_a_bounce_from_motion_alone():
    """Two boxes meet head on and swap velocities; a few hundred steps on such scenes beat constant motion, and the
    gates fire at the hit, from the partner."""
    torch.manual_seed(0)
    R, B = 12, 64
    start = 0.3 + 0.1 * torch.rand(B)
    speed = 0.02 + 0.01 * torch.rand(B)
    xs = []
    for r in range(R):  # object 0 moves right from `start`, object 1 moves left toward it; they bounce when they touch
        a, b = start + speed * r, 0.8 - speed * r
        hit = (b - a) < 0.1
        a = torch.where(hit, start + speed * (2 * r0(start, speed) - r), a)
        b = torch.where(hit, 0.8 - speed * (2 * r0(start, speed) - r), b)
        xs.append(torch.stack([a, b], dim=-1))
    x = torch.stack(xs, dim=1)  # (B, R, 2)
    centre = torch.stack([x, torch.full_like(x, 0.5)], dim=-1)
    boxes, mask = torch.cat([centre - 0.05, centre + 0.05], dim=-1), torch.ones(B, R, 2, dtype=torch.bool)
    model = InteractionDynamics(hidden_size=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss, parts = model.loss(boxes, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert parts["motion"] < 0.5  # 1: constant motion
    _, gates = model.eval()(boxes, mask)
    turn = r0(start, speed)  # (B,) the row out of which the motion changes
    at_hit = gates[torch.arange(B), turn, 0, 1]
    away = gates[:, 2, 0, 1][turn > 4]
    assert at_hit.mean() > 2 * away.mean()


def r0(start: torch.Tensor, speed: torch.Tensor) -> torch.Tensor:
    """The last row before two boxes 0.1 wide, at ``start`` and 0.8 moving toward each other at ``speed``, touch."""
    return ((0.8 - start - 0.1) / (2 * speed)).floor().long()


def test_rollout_without_pushes_continues_the_motion():
    model = InteractionDynamics(hidden_size=8)
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    boxes, mask = _tracks(B=1, R=4, K=2)
    mask[0, 3, 1] = False  # object 1 was lost a row before the end
    future, gates, alive = model.rollout(boxes, mask, steps=3, recent=1)
    assert future.shape == (1, 3, 2, 4) and gates.shape == (1, 3, 2, 3)
    assert alive.tolist() == [[True, False]]
    expect = boxes[0, 3, 0] + 0.02 * torch.tensor([1.0, 0, 1, 0]) * torch.arange(1, 4)[:, None]  # (3, 4)
    torch.testing.assert_close(future[0, :, 0], expect)
    assert future[0, :, 1].abs().sum() == 0 and gates[0, :, 1].abs().sum() == 0
    _, _, alive = model.rollout(boxes, mask, steps=1, recent=2)
    assert alive.tolist() == [[True, True]]  # present within the last two rows


def test_save_load_and_frozen(tmp_path):
    torch.manual_seed(0)
    model = InteractionDynamics(hidden_size=8, gate_penalty=0.5)
    model.save_pretrained(tmp_path / "dyn")
    again = InteractionDynamics.from_pretrained(tmp_path / "dyn")
    boxes, mask = _tracks()
    torch.testing.assert_close(again(boxes, mask), model(boxes, mask))
    assert again.gate_penalty == 0.5
    keys = set(model.state_dict())
    fixed = frozen(again)
    assert list(fixed.parameters()) == [] and set(fixed.state_dict()) == keys
    torch.testing.assert_close(fixed(boxes, mask), model(boxes, mask))
    with pytest.raises(FileNotFoundError, match="dynamics-steps"):
        InteractionDynamics.from_pretrained(tmp_path / "missing")


def test_interaction_messages_by_hand():
    torch.manual_seed(0)
    msg = InteractionMessages(hidden_size=4, box_substeps=2)
    app = torch.randn(1, 2, 4)
    gates = torch.zeros(1, 4, 2, 3)  # (B, T*S, K, K+1): T = 2 frames of 2 rows
    gates[0, 1, 0, 1] = 1.0  # object 1 acts on object 0 at frame 0's second row
    gates[0, 2, 1, 2] = 0.5  # the environment acts on object 1 at frame 1
    out = msg(gates, app)
    assert out.shape == (1, 2, 2, 4)
    none = msg.out.bias + msg.strength.bias
    torch.testing.assert_close(out[0, 0, 0], msg.out(app[0, 1]) + msg.strength(torch.tensor([1.0, 0.0])))
    torch.testing.assert_close(out[0, 1, 1], msg.out(0.5 * msg.environment) + msg.strength(torch.tensor([0.0, 0.5])))
    torch.testing.assert_close(out[0, 1, 0], none)
    torch.testing.assert_close(out[0, 0, 1], none)


def _fusion(path, **kw):
    torch.manual_seed(0)
    args = dict(max_objects=3, num_frames=3, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    return TrackFusion(8, (4, 4), 1, box_substeps=2, dynamics=str(path), **(args | kw))


def test_track_fusion_reads_the_frozen_dynamics_and_its_rollout(tmp_path):
    InteractionDynamics(hidden_size=8).save_pretrained(tmp_path / "dyn")
    fusion = _fusion(tmp_path / "dyn", rollout_frames=2)
    assert fusion.num_output_tokens == 3 * (3 + 2)
    assert not any("dynamics" in n for n, _ in fusion.named_parameters())  # read, never trained
    fusion.requires_grad_(True)  # what the reasoner's fusion_mode "full" does: still nothing to train there
    assert not any("dynamics" in n for n, p in fusion.named_parameters() if p.requires_grad)
    visual = torch.randn(2, 3, 17, 8)
    boxes, mask = _tracks(B=2, R=6, K=2)
    mask[1, 4:, 1] = False  # object 1 of clip 1 is gone in the last frame: it is not rolled out
    out = fusion(visual, None, boxes=boxes, box_mask=mask)
    assert out.shape == (2, 15, 16)
    tokens = out.view(2, 5, 3, 16)
    assert tokens[:, :, 2].abs().sum() == 0  # the padding object
    assert tokens[1, 3:, 1].abs().sum() == 0 and tokens[0, 3:, 1].abs().sum() > 0  # rolled out only if present
    out.square().sum().backward()
    assert all(p.grad is not None for p in fusion.interactions.parameters())
    assert fusion.time.shape == (5, 16)  # one time embedding per future frame too
    with pytest.raises(ValueError, match="rollout_frames"):
        TrackFusion(8, (4, 4), 1, rollout_frames=2)


def test_stage0_dynamics_end_to_end(tmp_path):
    """`vrp prepare --dynamics-steps` trains on a tracks folder's train.json and saves a model that loads by path."""
    from vrp.tools.prepare import main as prepare
    from vrp.training.stage0 import track_windows

    boxes, _ = _tracks(B=1, R=20, K=2, step=0.01)
    entry = {"objects": ["a", "b"], "boxes": [[box.tolist() for box in frame] for frame in boxes[0]]}
    entry["boxes"][5][1] = None  # object b not found in one frame
    tracks = tmp_path / "tracks"
    tracks.mkdir()
    (tracks / "train.json").write_text(json.dumps({f"v{i}": entry for i in range(4)}))
    b, m, keys = track_windows(tracks / "train.json", rows=8, per_video=2)
    assert b.shape == (8, 8, 2, 4) and m.shape == (8, 8, 2) and sorted(set(keys)) == ["v0", "v1", "v2", "v3"]
    assert m[..., 0].all() and not m[..., 1].all()  # object b is missing around frame 5 in some windows

    import data_modules.synthetic.tokenizer as tokenizer_module

    tok = tmp_path / "tok"
    tokenizer_module.build_tokenizer(["a red cube hits a wall"] * 4, tok, vocab_size=300)
    out = tmp_path / "art"
    tiny = {"vit": {"model_type": "vit", "image_size": 32, "patch_size": 16, "hidden_size": 8, "num_hidden_layers": 1,
                    "num_attention_heads": 1, "intermediate_size": 8}}  # fmt: skip
    from vrp.tools.prepare import save_random_backbones

    save_random_backbones(str(tok), out, **tiny, llm={**_tiny_llm()})
    prepare(["--tokenizer", str(tok), "--out", str(out), "--dynamics-steps", "3", "--tracks", str(tracks)])
    report = json.loads((out / "dynamics" / "stage0.json").read_text())
    assert report["steps"] == 3 and report["videos"] == 3 and report["windows"] == 12
    model = InteractionDynamics.from_pretrained(out / "dynamics")
    assert isinstance(model, InteractionDynamics)
    with pytest.raises(SystemExit, match="--tracks"):
        prepare(["--tokenizer", str(tok), "--out", str(out), "--dynamics-steps", "3"])


def _tiny_llm() -> dict:
    return {
        "model_type": "llama",
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
    }
