"""Run stage 2 on the toy data for a few steps, single-process or FSDP2-sharded over CPU processes (gloo), and save
the full trainable state to --out. Launched by test_strategies.py; Lightning re-launches this script per rank."""

from __future__ import annotations

import argparse
from dataclasses import replace
from functools import partial
from pathlib import Path

import lightning as L
import torch
from tiny_assets import QUIET_TRAINER, TINY_QFORMER, ToyData

from vrp.training.callbacks import StepLossLog
from vrp.training.strategies import close_process_group


def build(root: Path, fusion: str):
    from vrp.models import CausalLM, HFVisionEncoder, MLPConnector, VideoReasoner
    from vrp.training.stage2 import InstructionTuning

    L.seed_everything(0)
    vision = HFVisionEncoder(str(root / "vit"))
    llm = CausalLM(str(root / "llm"), lora_rank=4, lora_dropout=0.0)
    if fusion == "qformer":
        from vrp.models import FrameQFormerFusion

        factory = partial(FrameQFormerFusion, qformer=replace(TINY_QFORMER, num_query_tokens=4, num_layers=2))
    else:
        factory = partial(MLPConnector, output_dim=32)
    model = VideoReasoner(vision, factory, llm, llm_mode="lora")
    return InstructionTuning(model, lr=1e-2, warmup_steps=1)


class _Keys(L.Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with open(f"{self.path}.keys{trainer.global_rank}", "a") as f:
            f.write(" ".join(batch["keys"]) + "\n")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--fusion", default="mlp")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    root = Path(a.root)
    module = build(root, a.fusion)
    if a.out.endswith(".pt"):
        torch.save(
            {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}, a.out[:-3] + ".init"
        )
    dm = ToyData(str(root / "tokenizer"), num_samples=a.batch * a.devices * a.steps, batch_size=a.batch)
    strategy = "auto"
    if a.devices > 1:
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(data_parallel_size=a.devices, tensor_parallel_size=1)
    trainer = L.Trainer(
        **QUIET_TRAINER,
        devices=a.devices,
        strategy=strategy,
        max_steps=a.steps,
        limit_val_batches=0,
        use_distributed_sampler=False,
        callbacks=[StepLossLog(a.out + ".losses.jsonl"), _Keys(a.out)],
    )
    trainer.fit(module, dm)
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    state = {n: p.detach() for n, p in module.named_parameters() if n in names}
    state = {n: (v.full_tensor() if hasattr(v, "full_tensor") else v).cpu().clone() for n, v in state.items()}
    if trainer.is_global_zero:
        torch.save(state, a.out)
    close_process_group()


if __name__ == "__main__":
    main()
