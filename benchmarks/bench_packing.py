"""Stage-2 training steps, padded vs packed (`packing: {max_tokens: N}`), side by side in one run.

    python benchmarks/bench_packing.py [--steps 2] [--device cpu|cuda] [--threads 2] [--dtype fp32|bf16]
                                       [--case embedded,mix] [--llm-layers 2] [--full]

Each case times the same batches (the same samples) both ways, the stage-2 step of `InstructionTuning` (forward,
backward, AdamW): tokens/s (the LLM's real tokens, visual ones included), samples/s, peak memory, the padding
fraction of the LLM token slots, and the loss of the first batch both ways (equal: the same tokens, positions and
attention). Cases:

(a) ``embedded``: the embedded default's model (experiments/embedded/finetune.yaml: tiny ViT, track fusion, tiny
    Llama; random init, no stage-1 checkpoint needed) on its own data: data/synthetic/train/instructions.json through
    the real collator (random pixels and boxes: only the lengths matter), rows of 128 tokens.
(b) ``mix``: a SigLIP-shaped vision tower (width 768, 12 heads, patch 16; 2 layers at 112 px here) and a
    Qwen2-0.5B-shaped LLM (hidden 896, 14 query / 2 KV heads, MLP 4864; ``--llm-layers`` layers, 8k vocabulary here),
    random weights, LoRA on the LLM, 64 visual tokens per clip (4 x 4 x 4 pooled), on a length mix shaped like
    instruction data (text tokens, seeded): 50% multiple choice (prompt 30-80, answer 1-3), 30% captions (prompt
    10-20, caption 80-250), 20% multi-turn conversations (3-5 turns of question 10-30 + answer 20-80); batch 8,
    rows of 1024 tokens.
Prints one line per (case, mode) and the packed/padded ratio of tokens/s.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import time
from functools import partial
from pathlib import Path

import torch
from bench_train import matmul_peak  # the measured matmul FLOP/s, the MFU denominator

ROOT = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # process high-water mark (grows only)


def time_steps(
    module, batches: list[dict], device: torch.device, steps: int, dtype: torch.dtype, peak: float | None = None
) -> dict:
    """Median seconds of ``steps`` training steps over ``batches`` (round robin), after one warm-up step each;
    with ``peak``, the MFU of the step's FLOPs (counted by torch's FlopCounterMode, padding included)."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    state = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step(batch: dict) -> float:
        with autocast:
            loss = module.losses(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    first = step(batches[0])
    for b in batches[1:]:
        step(b)
    flops = None
    if peak:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step(batches[0])
        flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps):
        b = batches[i % len(batches)]
        _sync(device)
        t = time.perf_counter()
        step(b)
        _sync(device)
        times.append(time.perf_counter() - t)
    with torch.no_grad():  # leave the weights as they were, so the other mode starts from the same ones
        for n, p in module.named_parameters():
            if n in state:
                p.copy_(state[n])
    dt = statistics.median(times)
    mfu = flops / dt / peak if flops is not None else None
    return {"step_s": dt, "loss": first, "peak": _peak_bytes(device), "mfu": mfu}


def counts(batch: dict, Q: int) -> tuple[int, int, int]:
    """(samples, real LLM tokens, LLM token slots computed) of a batch."""
    from vrp.training.batches import token_counts

    real, slots = token_counts(batch, Q)
    return len(batch["keys"]), real, slots


def compare(name: str, module, padded: list[dict], packed: list[dict], device, args, dtype) -> None:
    Q = module.model.num_video_tokens
    rows = {}
    for mode, batches in (("padded", padded), ("packed", packed)):
        batches = [_to(b, device) for b in batches]
        r = time_steps(module, batches, device, args.steps, dtype, args.peak)
        per = [counts(b, Q) for b in batches]
        n, real, slots = (sum(c[i] for c in per) / len(per) for i in range(3))
        rows[mode] = r | {"samples/s": n / r["step_s"], "tokens/s": real / r["step_s"], "padding": 1 - real / slots}
        print(
            f"{name:9s} {mode}: {rows[mode]['tokens/s']:8.0f} tokens/s | {rows[mode]['samples/s']:6.2f} samples/s | "
            f"{r['step_s']:.3f} s/step | padding {100 * rows[mode]['padding']:4.1f}% | "
            f"peak {r['peak'] / 2**30:.2f} GiB | loss {r['loss']:.6f}"
            + (f" | MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else ""),
            flush=True,
        )
    a, b = rows["padded"], rows["packed"]
    print(
        f"{name:9s} ratio packed/padded: {b['tokens/s'] / a['tokens/s']:.2f}x tokens/s, "
        f"{b['samples/s'] / a['samples/s']:.2f}x samples/s; padding {100 * a['padding']:.1f}% -> "
        f"{100 * b['padding']:.1f}%; loss difference {abs(a['loss'] - b['loss']):.1e}",
        flush=True,
    )


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# --- (a) the embedded default on its own data ----------------------------------------------------------------------
def embedded_case(args, device, dtype) -> None:
    from data_modules.collate import Collator
    from data_modules.packing import Packing
    from data_modules.skips import SkipCounter
    from data_modules.sources import LlavaInstructions
    from vrp.tools.lightning_cli import VRPCLI

    cfg = ROOT / "experiments" / "embedded" / "finetune.yaml"
    cli = VRPCLI(args=["--config", str(cfg), "--trainer.logger=false", "--model.init_args.init_from=null"], run=False)
    module, dm = cli.model, cli.datamodule
    module.to(device).train()
    fusion = module.model.fusion
    Q, T, S, K = fusion.num_output_tokens, dm.num_frames, fusion.box_substeps, fusion.max_objects
    records = LlavaInstructions(str(ROOT / "data" / "synthetic" / "train" / "instructions.json")).load(SkipCounter())
    random.Random(0).shuffle(records)
    g = torch.Generator().manual_seed(0)
    size = module.model.vision.image_size
    tok = str(ROOT / "data" / "synthetic" / "tokenizer")
    plain, packing = Collator(tok), Collator(tok, packing=Packing(args.embedded_max_tokens))
    for c in (plain, packing):
        c.configure_visual_tokens(Q)
    padded, packed = [], []
    B = dm.batch_size
    for i in range(args.batches):
        samples = []
        for rec in records[i * B : (i + 1) * B]:
            corner = torch.rand(T * S, K, 2, generator=g) * 0.6
            samples.append(
                {
                    "key": rec.key,
                    "video": torch.randn(T, 3, size, size, generator=g),
                    "frame_mask": torch.ones(T, dtype=torch.bool),
                    "boxes": torch.cat([corner, corner + 0.3], -1),
                    "box_mask": torch.ones(T * S, K, dtype=torch.bool),
                    "turns": rec.turns,
                    "qformer_text": rec.qformer_text,
                }
            )
        padded.append(plain(samples))
        packed.append(packing(samples))
    compare("embedded", module, padded, packed, device, args, dtype)


# --- (b) a real architecture's shape on an instruction-like length mix --------------------------------------------
MIX = {"mc": 0.5, "caption": 0.3, "multi_turn": 0.2}


def mix_sample(rng: random.Random) -> list[tuple[int, int]]:
    """(prompt tokens, answer tokens) per turn of one sample drawn from `MIX`."""
    kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
    if kind == "mc":
        return [(rng.randint(30, 80), rng.randint(1, 3))]
    if kind == "caption":
        return [(rng.randint(10, 20), rng.randint(80, 250))]
    return [(rng.randint(10, 30), rng.randint(20, 80)) for _ in range(rng.randint(3, 5))]


def mix_batch(turns: list[list[tuple[int, int]]], video_id: int, vocab: int, Q: int, max_tokens, g) -> dict:
    """A batch of token ids following the collator's layout (one placeholder first, labels on the answers,
    right padding) with ``seq_lengths`` and, given ``max_tokens``, the packing plan."""
    from data_modules.packing import first_fit

    ids, labels = [], []
    for sample in turns:
        i, lab = [video_id], [-100]
        for p, a in sample:
            text = torch.randint(10, vocab, (p + a,), generator=g).tolist()
            i += text
            lab += [-100] * p + text[p:]
        ids.append(i)
        labels.append(lab)
    L = max(len(i) for i in ids)
    batch = {
        "input_ids": torch.tensor([i + [0] * (L - len(i)) for i in ids]),
        "attention_mask": torch.tensor([[1] * len(i) + [0] * (L - len(i)) for i in ids]),
        "labels": torch.tensor([lab + [-100] * (L - len(lab)) for lab in labels]),
        "keys": [f"mix{k}" for k in range(len(ids))],
        "seq_lengths": torch.tensor([len(i) + Q - 1 for i in ids]),
    }
    if max_tokens:
        plan = first_fit(batch["seq_lengths"].tolist(), max_tokens)
        batch |= {"pack_row": torch.tensor(plan.row), "pack_offset": torch.tensor(plan.offset)}
        batch["pack_shape"] = (plan.rows, plan.width)
    return batch


def real_shape_module(
    layers: int, llm_mode: str, image_size: int, vocab: int, attn: str | None = None, vision_layers: int = 2
):
    """SigLIP-shaped vision tower + Qwen2-0.5B-shaped LLM (random weights) in `InstructionTuning`."""
    from vrp.models import CausalLM, HFVisionEncoder, MLPConnector, VideoReasoner
    from vrp.training.stage2 import InstructionTuning

    vision = HFVisionEncoder(
        config={
            "model_type": "siglip_vision_model",
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": vision_layers,
            "num_attention_heads": 12,
            "image_size": image_size,
            "patch_size": 16,
        }
    )
    llm = CausalLM(
        config={
            "model_type": "qwen2",
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": layers,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "rope_theta": 1_000_000.0,
            "tie_word_embeddings": True,
            "vocab_size": vocab,
        },
        tokenizer=str(ROOT / "data" / "synthetic" / "tokenizer"),
        lora_rank=16,
        lora_alpha=32,
        lora_dropout=0.0,
        lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        attn_implementation=attn,
    )
    connector = partial(MLPConnector, temporal_bins=4, spatial_size=(4, 4))
    model = VideoReasoner(vision, connector, llm, llm_mode=llm_mode)
    return InstructionTuning(model, warmup_steps=0)


def mix_case(args, device, dtype) -> None:
    torch.manual_seed(0)
    vocab = args.vocab
    mode = "full" if args.full else "lora"
    module = real_shape_module(args.llm_layers, mode, args.image_size, vocab, args.attn, args.vision_layers)
    module.to(device).train()
    Q, T, size = module.model.num_video_tokens, 4, module.model.vision.image_size
    rng, g = random.Random(0), torch.Generator().manual_seed(0)
    video_id = module.model.llm.video_token_id
    padded, packed = [], []
    for _ in range(args.batches):
        turns = [mix_sample(rng) for _ in range(8)]
        state = g.get_state()
        video = {"video": torch.randn(8, T, 3, size, size, generator=g), "frame_mask": torch.ones(8, T, dtype=bool)}
        g.set_state(state)
        padded.append(mix_batch(turns, video_id, vocab, Q, None, g) | video)
        g.set_state(state)
        packed.append(mix_batch(turns, video_id, vocab, Q, args.mix_max_tokens, g) | video)
    compare("mix", module, padded, packed, device, args, dtype)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--batches", type=int, default=1)
    p.add_argument("--case", default="embedded,mix")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--llm-layers", type=int, default=2)
    p.add_argument("--full", action="store_true", help="(b): train the whole LLM instead of LoRA adapters")
    p.add_argument("--vision-layers", type=int, default=2, help="(b): SigLIP-base has 12")
    p.add_argument("--image-size", type=int, default=112, help="(b): SigLIP-base takes 224")
    p.add_argument("--vocab", type=int, default=8192, help="(b): Qwen2 has 151936")
    p.add_argument("--attn", default=None, help="(b): the LLM's attn_implementation (sdpa, flash_attention_2, ...)")
    p.add_argument("--mfu", action="store_true", help="count one step's FLOPs and print MFU against a measured peak")
    p.add_argument("--embedded-max-tokens", type=int, default=128)
    p.add_argument("--mix-max-tokens", type=int, default=1024)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU x{args.threads} threads"
    args.peak = matmul_peak(device, dtype) if args.mfu else None
    if args.peak:
        name += f", measured {args.dtype} matmul peak {args.peak / 1e9:.0f} GFLOP/s"
    print(
        f"device: {name}; {args.dtype}; median of {args.steps} steps over {args.batches} batches per mode; "
        f"peak memory: {'CUDA max allocated' if device.type == 'cuda' else 'process max RSS (only grows)'}; "
        + json.dumps({"mix": MIX}),
        flush=True,
    )
    for case in args.case.split(","):
        {"embedded": embedded_case, "mix": mix_case}[case](args, device, dtype)


if __name__ == "__main__":
    main()
