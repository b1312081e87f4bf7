"""Losses against hand computations; checkpoint policy (trainable-only, atomic, weights_only); LR schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vrp.training.checkpoint import AtomicCheckpointIO, check_trainable_keys, drop_frozen
from vrp.training.losses import contrastive_loss, matching_loss, sample_hard_negatives, video_text_similarity
from vrp.training.optim import cosine_with_warmup


def test_contrastive_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    v = F.normalize(torch.randn(3, 2, 4, generator=g), dim=-1)
    t = F.normalize(torch.randn(3, 4, generator=g), dim=-1)
    scale = torch.tensor([math.log(10.0)])
    loss, sim = contrastive_loss(v, t, scale)
    ref = torch.tensor([[max(float(v[i, q] @ t[j]) for q in range(2)) for j in range(3)] for i in range(3)])
    torch.testing.assert_close(sim, ref)
    expect = 0.5 * (F.cross_entropy(10 * ref, torch.arange(3)) + F.cross_entropy(10 * ref.t(), torch.arange(3)))
    torch.testing.assert_close(loss, expect)
    # aligned features give a lower loss than shuffled ones
    aligned = F.normalize(torch.randn(4, 1, 8, generator=g), dim=-1)
    good, _ = contrastive_loss(aligned, aligned[:, 0], scale)
    bad, _ = contrastive_loss(aligned, aligned[[1, 2, 3, 0], 0], scale)
    assert good < bad


def test_hard_negatives_never_pick_the_positive_and_prefer_similar():
    sim = torch.tensor([[1.0, 0.9, -1.0], [0.2, 1.0, 0.1], [-1.0, 0.95, 1.0]]) * 20
    picks = torch.stack([sample_hard_negatives(sim, torch.Generator().manual_seed(s)) for s in range(50)])
    assert (picks != torch.arange(3)).all()
    assert (picks[:, 0] == 1).float().mean() > 0.9 and (picks[:, 2] == 1).float().mean() > 0.9
    with pytest.raises(ValueError, match="at least 2"):
        sample_hard_negatives(torch.ones(1, 1))


def test_matching_loss_labels_positives_first():
    logits = torch.tensor([[-5.0, 5.0], [5.0, -5.0], [5.0, -5.0]])
    assert matching_loss(logits, num_positive=1) < 1e-3
    assert matching_loss(logits, num_positive=3) > 5


def test_similarity_shape():
    assert video_text_similarity(torch.randn(2, 5, 3), torch.randn(4, 3)).shape == (2, 4)


def test_cosine_with_warmup():
    f = [cosine_with_warmup(s, 10, 110, 0.1) for s in range(120)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[60] == pytest.approx(0.1 + 0.9 * 0.5) and f[110] == pytest.approx(0.1) and f[119] == pytest.approx(0.1)


class _Mod(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(4, 4).requires_grad_(False)
        self.head = nn.Linear(4, 2)


def test_checkpoint_holds_only_trainable_weights_and_loads_weights_only(tmp_path):
    m = _Mod()
    ckpt = {"state_dict": m.state_dict(), "global_step": 3}
    drop_frozen(ckpt, m)
    assert set(ckpt["state_dict"]) == {"head.weight", "head.bias"}
    io = AtomicCheckpointIO()
    path = tmp_path / "sub" / "last.ckpt"
    io.save_checkpoint(ckpt, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temp file left behind
    loaded = io.load_checkpoint(path)
    check_trainable_keys(loaded, m)
    torch.testing.assert_close(loaded["state_dict"]["head.weight"], m.head.weight)
    torch.save({"state_dict": {}, "evil": _Mod()}, tmp_path / "pickled.ckpt")
    with pytest.raises(Exception, match="holds Python objects other than tensors"):
        io.load_checkpoint(tmp_path / "pickled.ckpt")
    with pytest.raises(RuntimeError, match="missing"):
        check_trainable_keys({"state_dict": {"head.weight": m.head.weight}}, m)


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_full_disk_while_checkpointing_ends_in_one_line_and_keeps_the_previous(
    tiny_root, tmp_path, monkeypatch, capsys
):
    """`vrp fit` whose checkpoint write hits ENOSPC (the temporary file is /dev/full): exit status 2, one line naming
    the file, the free space and what to do; the previous last.ckpt is intact and no temporary file is left."""
    import os
    import tempfile

    from tiny_assets import run_main, toy_config

    from vrp.training import checkpoint

    config = toy_config(tiny_root, tmp_path / "run")
    assert run_main(["fit", "--config", str(config), "--trainer.max_steps=1"]) == 0
    last = tmp_path / "run" / "ckpt" / "last.ckpt"
    before = last.read_bytes()

    mkstemp = tempfile.mkstemp

    def full_disk(*args, **kwargs):
        fd, name = mkstemp(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", full_disk)
    capsys.readouterr()
    assert run_main(["fit", "--config", str(config), "--ckpt_path", "last", "--trainer.max_steps=2"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: checkpoint {last} could not be written: No space left on device (")
    assert line.endswith(
        "the previous last.ckpt, if any, is intact. Free space there (or set the checkpoint dirpath to another "
        "disk), then resume with --ckpt_path last"
    )
    assert last.read_bytes() == before and sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
