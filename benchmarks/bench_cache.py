"""Stage-2 training samples/s with and without the frozen-feature cache, ViT-B/16-sized VFM, on this device.

    python benchmarks/bench_cache.py [--batch 4] [--frames 8] [--steps 3] [--threads 2]

Random-init ViT-B/16 (224 px, 12 layers, width 768) from a config, a small Q-Former-free MLP connector and the
embedded default's tiny Llama (`lab.prepare.LLM`); the clips' tokens are written to a temp `FeatureStore` (one file per video) and read back per
step (disk read included). Video decoding is excluded from the pixel path too (the same clips feed both), so the
ratio is a lower bound of what the cache saves in `vrp fit`, where it also skips decoding.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from data_modules.features import FeatureStore
    from lab.prepare import LLM
    from lab.synthetic.tokenizer import build_tokenizer
    from vrp.models import CausalLM, HFVisionEncoder, MLPConnector, VideoReasoner
    from vrp.training.losses import lm_loss
    from vrp.training.stage2 import InstructionTuning

    tmp = Path(tempfile.mkdtemp(prefix="vrp_bench_cache_"))
    tok = tmp / "tok"
    build_tokenizer(["a video of shapes moving"], tok, vocab_size=300)
    vit = {
        "model_type": "vit",
        "image_size": 224,
        "patch_size": 16,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    }
    model = VideoReasoner(
        HFVisionEncoder(config=vit),
        partial(MLPConnector, output_dim=256),
        CausalLM(config=LLM, tokenizer=str(tok)),
        llm_mode="lora",
    )
    B, T = a.batch, a.frames
    ids = torch.tensor([[1, 4] + [5] * 30] * B)
    labels = ids.clone()
    labels[:, :16] = -100
    batch = {
        "video": torch.randn(B, T, 3, 224, 224),
        "frame_mask": torch.ones(B, T, dtype=torch.bool),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "keys": [f"clip_{i}" for i in range(B)],
    }
    store = FeatureStore(tmp / "cache", create=True)
    with torch.no_grad():
        for key, visual in zip(batch["keys"], model.vision(batch["video"])):
            store.write(key, visual, torch.ones(T, dtype=torch.bool), torch.arange(T) / 8.0, 8.0)
    store.finish(vision={})
    results = {}
    module = InstructionTuning(model)
    opt = torch.optim.AdamW([q for q in module.parameters() if q.requires_grad], lr=1e-4)
    for name in ("pixels", "cache"):
        times = []
        for i in range(a.steps + 1):
            t = time.perf_counter()
            feed = (
                batch
                if name == "pixels"
                else {  # what the datamodule collates from the store
                    **{k: v for k, v in batch.items() if k != "video"},
                    "visual": torch.stack([store.read(k)["visual"] for k in batch["keys"]]),
                }
            )
            lm_loss(module.model, module.encode(feed), feed).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i:  # first step is warm-up
                times.append(time.perf_counter() - t)
        results[name] = B / statistics.median(times)
    print(f"stage-2 step, ViT-B/16 VFM, batch {B} x {T} frames, {a.threads} threads, median of {a.steps}")
    print("| path | samples/s |\n|---|---|")
    for k, v in results.items():
        print(f"| {k} | {v:.2f} |")
    print(f"speed-up with the cache: {results['cache'] / results['pixels']:.1f}x")


if __name__ == "__main__":
    main()
