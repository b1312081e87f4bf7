"""Stage-2 training steps padded, packed within the batch (`packing: {max_tokens: N}`) and in token-budget batches
(`packing: {max_tokens: N, rows: R}`), side by side in one run.

    python benchmarks/bench_packing.py [--steps 8] [--batches 8] [--device cpu|cuda] [--threads 2]
                                       [--dtype fp32|bf16] [--case embedded,mix] [--llm-layers 2] [--full]

Each case builds one pool of samples. ``padded`` and ``packed`` take the same batches of ``batch_size`` consecutive
samples (the loader's default); ``budget`` takes the first batches `TokenBudgetSampler` makes over the pool (R rows of
N tokens each, the samples' lengths known from their text: data_modules/batching.py). Each mode runs one warm-up step,
then the modes take turns step by step (so a slow spell, e.g. another process on the cores, slows all of them alike)
through the stage-2 step of `InstructionTuning` (forward, backward, AdamW). Printed per mode: tokens/s (the LLM's real
tokens, visual ones included) and samples/s (medians over the timed steps of each step's count / its time), samples
per step, padding fraction of the LLM token slots, peak memory, and the ratios to ``padded``. Equal loss: before any
step, the loss of the same samples padded and packed (``packed``: its first batch; ``budget``: its first batch,
padded as one batch), forward only. Cases:

(a) ``embedded``: the embedded default's model (experiments/embedded/finetune.yaml: tiny ViT, track fusion, tiny
    Llama; random init, no stage-1 checkpoint needed) on its own data: data/synthetic/train/instructions.json through
    the real collator (random pixels and boxes: only the lengths matter); batch 16, rows of 128 tokens, budget 8 rows.
(b) ``mix``: a SigLIP-shaped vision tower (width 768, 12 heads, patch 16; 2 layers at 112 px here) and a
    Qwen2-0.5B-shaped LLM (hidden 896, 14 query / 2 KV heads, MLP 4864; ``--llm-layers`` layers, 8k vocabulary here),
    random weights, LoRA on the LLM, 64 visual tokens per clip (4 x 4 x 4 pooled), on a length mix shaped like
    instruction data (text tokens, seeded): 50% multiple choice (prompt 30-80, answer 1-3), 30% captions (prompt
    10-20, caption 80-250), 20% multi-turn conversations (3-5 turns of question 10-30 + answer 20-80); batch 8,
    rows of 1024 tokens, budget 2 rows (about as many samples per step as batch 8).
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
MODES = ("padded", "packed", "budget")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # process high-water mark (grows only)


class Stepper:
    """The stage-2 training step (forward, backward, AdamW) of ``module``; ``restore`` puts the starting weights back."""

    def __init__(self, module, device: torch.device, dtype: torch.dtype) -> None:
        self.module, self.device = module, device
        self.opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)
        self.start = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
        self.autocast = partial(torch.autocast, device.type, dtype=dtype, enabled=dtype != torch.float32)

    def __call__(self, batch: dict) -> float:
        """One step; its seconds."""
        _sync(self.device)
        t = time.perf_counter()
        with self.autocast():
            loss = self.module.losses(batch)["loss"]
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        _sync(self.device)
        return time.perf_counter() - t

    def flops(self, batch: dict) -> int:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self(batch)
        return counter.get_total_flops()

    def restore(self) -> None:
        with torch.no_grad():
            for n, p in self.module.named_parameters():
                if n in self.start:
                    p.copy_(self.start[n])


def time_modes(stepper: Stepper, modes: dict[str, list[dict]], steps: int, mfu: bool) -> dict[str, dict]:
    """Per mode: the seconds of ``steps`` steps (step i on batch i mod n), the modes taking turns step by step after
    one warm-up step each (its memory high-water mark: CUDA's per mode, the CPU process's only grows); with ``mfu``,
    the FLOPs of each batch (torch's FlopCounterMode, padding included)."""
    out = {}
    for mode, batches in modes.items():
        if stepper.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        stepper(batches[0])
        out[mode] = {"times": [], "peak": _peak_bytes(stepper.device)}
        out[mode]["flops"] = [stepper.flops(b) for b in batches] if mfu else None
    for i in range(steps):
        for mode, batches in modes.items():
            out[mode]["times"].append(stepper(batches[i % len(batches)]))
    stepper.restore()  # leave the weights as they were
    return out


def counts(batch: dict, Q: int) -> tuple[int, int, int]:
    """(samples, real LLM tokens, LLM token slots computed) of a batch."""
    from vrp.training.batches import token_counts

    real, slots = token_counts(batch, Q)
    return len(batch["keys"]), real, slots


def same_sample_losses(module, pairs: dict[str, tuple[dict, dict]], device, dtype) -> dict[str, tuple[float, float]]:
    """Per mode: (loss padded, loss of the mode) of the same samples, forward only from the starting weights (eval
    mode: no dropout)."""
    module.eval()
    out = {}
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        for mode, (padded, packed) in pairs.items():
            out[mode] = tuple(float(module.losses(_to(b, device))["loss"]) for b in (padded, packed))
    module.train()
    return out


def compare(name: str, module, modes: dict[str, list[dict]], pairs, device, args, dtype) -> None:
    """Time the modes side by side and print one line per mode, then the ratios to padded."""
    Q = module.model.num_video_tokens
    losses = same_sample_losses(module, pairs, device, dtype)
    modes = {m: [_to(b, device) for b in batches] for m, batches in modes.items()}
    timed = time_modes(Stepper(module, device, dtype), modes, args.steps, bool(args.peak))
    rows = {}
    for mode, batches in modes.items():
        times = timed[mode]["times"]
        per = [counts(batches[i % len(batches)], Q) for i in range(len(times))]  # (samples, real, slots) per step
        rows[mode] = {
            "tokens/s": statistics.median(c[1] / t for c, t in zip(per, times)),
            "samples/s": statistics.median(c[0] / t for c, t in zip(per, times)),
            "step_s": statistics.median(times),
            "samples/step": statistics.mean(c[0] for c in per),
            "padding": 1 - sum(c[1] for c in per) / sum(c[2] for c in per),
            "peak": timed[mode]["peak"],
        }
        flops = timed[mode]["flops"]
        mfu = ""
        if flops is not None:
            done = sum(flops[i % len(flops)] for i in range(len(times)))
            mfu = f" | MFU {100 * done / sum(times) / args.peak:.1f}%"
        r = rows[mode]
        print(
            f"{name:9s} {mode:6s}: {r['tokens/s']:8.0f} tokens/s | {r['samples/s']:6.2f} samples/s | "
            f"{r['samples/step']:5.1f} samples/step | {r['step_s']:.3f} s/step | padding {100 * r['padding']:4.1f}% | "
            f"peak {r['peak'] / 2**30:.2f} GiB{mfu}",
            flush=True,
        )
    a = rows["padded"]
    for mode in ("packed", "budget"):
        b, (loss_a, loss_b) = rows[mode], losses[mode]
        print(
            f"{name:9s} ratio {mode}/padded: {b['tokens/s'] / a['tokens/s']:.2f}x tokens/s, "
            f"{b['samples/s'] / a['samples/s']:.2f}x samples/s; padding {100 * a['padding']:.1f}% -> "
            f"{100 * b['padding']:.1f}%; loss on the same samples {loss_a:.6f} vs {loss_b:.6f} "
            f"(difference {abs(loss_a - loss_b):.1e})",
            flush=True,
        )


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def budget_batches(lengths: list[int], max_tokens: int, rows: int, n: int) -> list[list[int]]:
    """The first ``n`` batches `TokenBudgetSampler` makes over ``lengths`` (epoch 0, seed 0)."""
    from data_modules.batching import TokenBudgetSampler

    batches = TokenBudgetSampler(lengths, max_tokens=max_tokens, rows=rows, seed=0).batches()
    if len(batches) < n:
        raise ValueError(f"the pool makes {len(batches)} token-budget batches, fewer than --batches {n}")
    return batches[:n]


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
    pool = records[: args.pool]
    size = module.model.vision.image_size
    tok = str(ROOT / "data" / "synthetic" / "tokenizer")
    N = args.embedded_max_tokens
    plain, packing = Collator(tok), Collator(tok, packing=Packing(N))
    budget = Collator(tok, packing=Packing(N, rows=args.embedded_rows))
    for c in (plain, packing, budget):
        c.configure_visual_tokens(Q)

    def samples(indices: list[int]) -> list[dict]:
        out = []
        for k in indices:  # pixels and boxes seeded by the sample: the same sample is the same in every mode
            g = torch.Generator().manual_seed(k)
            corner = torch.rand(T * S, K, 2, generator=g) * 0.6
            out.append(
                {
                    "key": pool[k].key,
                    "video": torch.randn(T, 3, size, size, generator=g),
                    "frame_mask": torch.ones(T, dtype=torch.bool),
                    "boxes": torch.cat([corner, corner + 0.3], -1),
                    "box_mask": torch.ones(T * S, K, dtype=torch.bool),
                    "turns": pool[k].turns,
                    "qformer_text": pool[k].qformer_text,
                }
            )
        return out

    B = dm.batch_size
    fixed = [list(range(i * B, (i + 1) * B)) for i in range(args.batches)]
    chosen = budget_batches([budget.llm_length(r) for r in pool], N, args.embedded_rows, args.batches)
    modes = {
        "padded": [plain(samples(b)) for b in fixed],
        "packed": [packing(samples(b)) for b in fixed],
        "budget": [budget(samples(b)) for b in chosen],
    }
    pairs = {
        "packed": (modes["padded"][0], modes["packed"][0]),
        "budget": (plain(samples(chosen[0])), modes["budget"][0]),
    }
    compare("embedded", module, modes, pairs, device, args, dtype)


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


def mix_text(turns: list[tuple[int, int]], video_id: int, vocab: int, g: torch.Generator) -> tuple[list, list]:
    """Token ids and labels of one sample in the collator's layout: one placeholder first, labels on the answers."""
    ids, labels = [video_id], [-100]
    for p, a in turns:
        text = torch.randint(10, vocab, (p + a,), generator=g).tolist()
        ids += text
        labels += [-100] * p + text[p:]
    return ids, labels


def mix_batch(texts: list[tuple[list, list]], Q: int, packing=None) -> dict:
    """A right-padded batch of ``texts`` with ``seq_lengths`` and, given a `Packing`, the collator's plan (first-fit
    decreasing; next-fit in the given order for token-budget batches)."""
    from data_modules.packing import first_fit, next_fit

    L = max(len(i) for i, _ in texts)
    batch = {
        "input_ids": torch.tensor([i + [0] * (L - len(i)) for i, _ in texts]),
        "attention_mask": torch.tensor([[1] * len(i) + [0] * (L - len(i)) for i, _ in texts]),
        "labels": torch.tensor([lab + [-100] * (L - len(lab)) for _, lab in texts]),
        "keys": [f"mix{k}" for k in range(len(texts))],
        "seq_lengths": torch.tensor([len(i) + Q - 1 for i, _ in texts]),
    }
    if packing is not None:
        lay_out = first_fit if packing.rows is None else next_fit
        plan = lay_out(batch["seq_lengths"].tolist(), packing.max_tokens)
        batch |= {"pack_row": torch.tensor(plan.row), "pack_offset": torch.tensor(plan.offset)}
        batch["pack_shape"] = (plan.rows, plan.width)
    return batch


def real_shape_module(
    layers: int, llm_mode: str, image_size: int, vocab: int, attn: str | None = None, vision_layers: int = 2
):
    """SigLIP-shaped vision tower + Qwen2-0.5B-shaped LLM (random weights) in `InstructionTuning`."""
    from vrp.models import CausalLM, HFVisionEncoder, MLPConnector, PoolOptions, VideoReasoner
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
    connector = partial(MLPConnector, pool=PoolOptions(temporal_bins=4, spatial_size=(4, 4)))
    model = VideoReasoner(vision, connector, llm, llm_mode=llm_mode)
    return InstructionTuning(model, warmup_steps=0)


def mix_case(args, device, dtype) -> None:
    from data_modules.packing import Packing

    torch.manual_seed(0)
    vocab = args.vocab
    mode = "full" if args.full else "lora"
    module = real_shape_module(args.llm_layers, mode, args.image_size, vocab, args.attn, args.vision_layers)
    module.to(device).train()
    Q, T, size = module.model.num_video_tokens, 4, module.model.vision.image_size
    rng, g = random.Random(0), torch.Generator().manual_seed(0)
    video_id = module.model.llm.video_token_id
    texts = [mix_text(mix_sample(rng), video_id, vocab, g) for _ in range(args.pool)]
    N, R, B = args.mix_max_tokens, args.mix_rows, 8

    def batch(indices: list[int], packing=None) -> dict:
        videos = [torch.randn(T, 3, size, size, generator=torch.Generator().manual_seed(k)) for k in indices]
        pixels = {"video": torch.stack(videos), "frame_mask": torch.ones(len(indices), T, dtype=torch.bool)}
        return mix_batch([texts[k] for k in indices], Q, packing) | pixels

    fixed = [list(range(i * B, (i + 1) * B)) for i in range(args.batches)]
    chosen = budget_batches([len(i) + Q - 1 for i, _ in texts], N, R, args.batches)
    modes = {
        "padded": [batch(b) for b in fixed],
        "packed": [batch(b, Packing(N)) for b in fixed],
        "budget": [batch(b, Packing(N, rows=R)) for b in chosen],
    }
    pairs = {"packed": (modes["padded"][0], modes["packed"][0]), "budget": (batch(chosen[0]), modes["budget"][0])}
    compare("mix", module, modes, pairs, device, args, dtype)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8, help="timed steps per mode (after one warm-up step each)")
    p.add_argument("--batches", type=int, default=8, help="batches per mode (step i takes batch i mod n)")
    p.add_argument("--pool", type=int, default=512, help="samples each case draws its batches from")
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
    p.add_argument("--mfu", action="store_true", help="count each batch's FLOPs and print MFU against a measured peak")
    p.add_argument("--embedded-max-tokens", type=int, default=128)
    p.add_argument("--embedded-rows", type=int, default=8, help="(a): rows per token-budget batch")
    p.add_argument("--mix-max-tokens", type=int, default=1024)
    p.add_argument("--mix-rows", type=int, default=2, help="(b): rows per token-budget batch")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU x{args.threads} threads"
    args.peak = matmul_peak(device, dtype) if args.mfu else None
    if args.peak:
        name += f", measured {args.dtype} matmul peak {args.peak / 1e9:.0f} GFLOP/s"
    print(
        f"device: {name}; {args.dtype}; {args.steps} steps per mode over {args.batches} batches, modes in turn; "
        f"peak memory: {'CUDA max allocated' if device.type == 'cuda' else 'process max RSS (only grows)'}; "
        + json.dumps({"mix": MIX}),
        flush=True,
    )
    for case in args.case.split(","):
        {"embedded": embedded_case, "mix": mix_case}[case](args, device, dtype)


if __name__ == "__main__":
    main()
