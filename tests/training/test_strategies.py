"""FSDP2 (ModelParallelStrategy + fully_shard per block) on 2 CPU processes with gloo matches a single process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from tiny_assets import ROOT

from vrp.training.strategies import BlockWrapPolicy, blocks

SCRIPT = Path(__file__).parent / "fsdp2_run.py"


def _run(tmp: Path, root: Path, devices: int, batch: int, fusion: str) -> dict:
    out = tmp / f"state_{devices}.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--root",
        str(root),
        "--devices",
        str(devices),
        "--batch",
        str(batch),
        "--steps",
        "3",
        "--fusion",
        fusion,
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out, weights_only=True)


def test_fsdp2_two_cpu_processes_match_single_process(tiny_root, tmp_path):
    single = _run(tmp_path, tiny_root, devices=1, batch=8, fusion="mlp")
    init = torch.load(tmp_path / "state_1.init", weights_only=True)
    sharded = _run(tmp_path, tiny_root, devices=2, batch=4, fusion="mlp")
    assert set(single) == set(sharded) and any("lora_" in k for k in single)
    for name in single:
        assert not torch.equal(single[name], init[name]), f"{name} did not train"
        torch.testing.assert_close(sharded[name], single[name], rtol=1e-4, atol=1e-5, msg=name)


def test_blocks_and_wrap_policy_find_transformer_layers(tiny_root):
    from vrp.models import CausalLM, HFVisionEncoder

    llm = CausalLM(str(tiny_root / "llm"))
    vit = HFVisionEncoder(str(tiny_root / "vit"))
    llm_blocks, vit_blocks = blocks(llm), blocks(vit)
    assert [type(b).__name__ for b in llm_blocks] == ["LlamaDecoderLayer"] * 2
    assert [type(b).__name__ for b in vit_blocks] == ["ViTLayer"]
    policy = BlockWrapPolicy()
    assert policy(llm, recurse=True)  # first call marks the blocks of the root
    assert policy(llm_blocks[0], recurse=False) and not policy(llm.model.lm_head, recurse=False)


def test_vrp_closes_the_process_group_when_a_distributed_run_ends(tiny_root, tmp_path):
    """A process group left open at exit aborted 1 in 8 FSDP2 runs on gloo (exit 134) after the work was done."""
    from tiny_assets import toy_config

    from vrp.cli import main

    config = toy_config(tiny_root, tmp_path / "run")
    main(["fit", "--config", str(config), "--trainer.strategy=ddp", "--trainer.devices=1"])
    assert (tmp_path / "run" / "ckpt" / "last.ckpt").is_file()
    assert not torch.distributed.is_initialized()
