"""Progress lines for runs without a terminal (nohup, SLURM, CI): step, loss, samples/s, ETA every N steps."""

from __future__ import annotations

import json
import re
import sys
from functools import partial

import lightning as L
import pytest
import torch
from tiny_assets import QUIET_TRAINER, ToyData

from vrp.training.callbacks import ProgressLog, StepLossLog


class _Ticker(L.Callback):
    """A fake clock: one second passes per training batch, whatever the machine does."""

    def __init__(self) -> None:
        self.now = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.now += 1.0


def _fit(root, tmp_path, progress: ProgressLog, *, max_steps: int = 6, accumulate: int = 1) -> None:
    from vrp.models import CausalLM, HFVisionEncoder, MLPConnector, VideoReasoner
    from vrp.training.stage2 import InstructionTuning

    torch.manual_seed(0)
    model = VideoReasoner(
        HFVisionEncoder(str(root / "vit")),
        partial(MLPConnector, output_dim=32),
        CausalLM(str(root / "llm")),
        llm_mode="frozen",
    )
    ticker = _Ticker()
    progress.clock = lambda: ticker.now
    trainer = L.Trainer(
        **QUIET_TRAINER,
        max_steps=max_steps,
        limit_val_batches=0,
        accumulate_grad_batches=accumulate,
        default_root_dir=str(tmp_path),
        callbacks=[ticker, progress, StepLossLog(str(tmp_path / "losses.jsonl"))],
    )
    trainer.fit(
        InstructionTuning(model, warmup_steps=1),
        datamodule=ToyData(str(root / "tokenizer"), num_samples=16, batch_size=4),
    )


LINE = re.compile(
    r"^\[train\] step (\d+)/6 \(([\d.]+)%\) epoch (\d+) \| loss ([\d.]+) \| ([\d.]+) samples/s \| "
    r"([\d.]+) samples/step \| (\d+) tokens/s \| padding ([\d.]+)% \| ([\d.]+) s/step \| elapsed (\S+) \| ETA (\S+)$"
)


def test_prints_step_loss_rate_and_eta_every_n_steps(tiny_root, tmp_path, capsys):
    _fit(tiny_root, tmp_path, ProgressLog(every_n_steps=2))  # capsys: stdout is not a terminal
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[train]")]
    got = [LINE.match(line).groups() for line in lines]
    assert [g[0] for g in got] == ["2", "4", "6"] and [g[1] for g in got] == ["33.3", "66.7", "100.0"]
    assert [g[2] for g in got] == ["0", "0", "1"]  # 16 samples / batch 4 = 4 steps per epoch
    assert {g[4] for g in got} == {"4.0"} and {g[8] for g in got} == {"1.00"}  # batch 4, one (fake) second a step
    assert {g[5] for g in got} == {"4.0"}  # samples per optimizer step
    # toy batches: 4 unpadded rows of 7 text tokens, the placeholder becoming the connector's Q visual tokens
    assert {g[7] for g in got} == {"0.0"} and len({g[6] for g in got}) == 1 and int(got[0][6]) > 4 * 7
    assert [g[9] for g in got] == ["0:00:02", "0:00:04", "0:00:06"] and [g[10] for g in got] == [
        "0:00:04",
        "0:00:02",
        "0:00:00",
    ]
    losses = [json.loads(x)["loss"] for x in (tmp_path / "losses.jsonl").read_text().splitlines()]
    means = [sum(losses[i : i + 2]) / 2 for i in (0, 2, 4)]  # each line: the mean loss of its two steps
    assert [float(g[3]) for g in got] == pytest.approx(means, abs=1e-4)


def test_counts_optimizer_steps_under_gradient_accumulation(tiny_root, tmp_path, capsys):
    _fit(tiny_root, tmp_path, ProgressLog(every_n_steps=3), max_steps=6, accumulate=2)
    got = [LINE.match(line).groups() for line in capsys.readouterr().out.splitlines() if line.startswith("[train]")]
    assert [g[0] for g in got] == ["3", "6"] and {g[4] for g in got} == {"4.0"} and {g[8] for g in got} == {"2.00"}
    assert {g[5] for g in got} == {"8.0"}  # two batches of 4 per optimizer step


def test_silent_on_a_terminal_unless_always(tiny_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    _fit(tiny_root, tmp_path, ProgressLog(every_n_steps=2), max_steps=2)
    assert "[train]" not in capsys.readouterr().out
    _fit(tiny_root, tmp_path, ProgressLog(every_n_steps=2, when="always"), max_steps=2)
    assert capsys.readouterr().out.count("[train] step 2/2") == 1
    with pytest.raises(ValueError, match="when must be"):
        ProgressLog(when="sometimes")
