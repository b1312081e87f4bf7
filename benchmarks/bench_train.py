"""One training step of each stage on the embedded default: samples/s, tokens/s, peak memory and MFU.

    python benchmarks/bench_train.py [--steps 5] [--batch 16] [--device cpu|cuda] [--threads 2]

The model comes from experiments/embedded/{pretrain,finetune}.yaml (tiny backbones from artifacts/embedded; run
`python -m lab prepare` first). Batches are random tensors of the configured shapes, so only the model step is timed.
FLOPs are counted by torch.utils.flop_counter on one step; MFU = achieved FLOP/s / measured fp32 matmul peak
(or bf16 on CUDA).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(stage: str):
    from vrp.tools.lightning_cli import VRPCLI

    cfg = ROOT / "experiments" / "embedded" / f"{stage}.yaml"
    args = ["--config", str(cfg), "--trainer.logger=false"]
    if stage == "finetune":
        args.append("--model.init_args.init_from=null")
    cli = VRPCLI(args=args, run=False)
    return cli.model, cli.datamodule


def random_batch(module, dm, batch: int, text_len: int, device: torch.device) -> dict:
    model = module.model
    v = model.vision
    T = dm.num_frames
    ids = torch.randint(10, len(model.llm.tokenizer) - 1, (batch, text_len))
    ids[:, 1] = model.llm.video_token_id
    labels = ids.clone()
    labels[:, : text_len // 2] = -100
    out = {
        "video": torch.randn(batch, T, 3, v.image_size, v.image_size),
        "frame_mask": torch.ones(batch, T, dtype=torch.bool),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "qformer_input_ids": ids[:, 2:],
        "qformer_attention_mask": torch.ones_like(ids[:, 2:]),
    }
    return {k: x.to(device) for k, x in out.items()}


def bench(stage: str, args, device: torch.device, peak: float) -> dict:
    module, dm = build(stage)
    module.to(device).train()
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    batch = random_batch(module, dm, args.batch, args.text_len, device)
    losses = module.losses if hasattr(module, "losses") else None

    def step() -> None:
        if losses is not None:
            loss = sum(losses(batch).values())
        else:
            from vrp.training.losses import lm_loss

            loss = lm_loss(module.model, module.encode(batch), batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    dt = statistics.median(times)
    mem = (
        torch.cuda.max_memory_allocated()
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "stage": stage,
        "step_s": dt,
        "samples/s": args.batch / dt,
        "tokens/s": args.batch * args.text_len / dt,
        "GFLOP/step": flops / 1e9,
        "MFU": flops / dt / peak,
        "peak_mem_GiB": mem / 2**30,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--text-len", type=int, default=48)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, dtype)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU x{args.threads} threads"
    print(
        f"device: {name}; measured {dtype} matmul peak {peak / 1e9:.1f} GFLOP/s; batch {args.batch}, "
        f"{args.text_len} text tokens; median of {args.steps} steps (fp32 model)"
    )
    rows = [bench(s, args, device, peak) for s in ("pretrain", "finetune")]
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()
