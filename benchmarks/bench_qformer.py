"""Forward + backward time of our Q-Former vs `transformers.Blip2QFormerModel` at BLIP-2 size, same weights, fp32.

Both get the same random weights (loaded through `vrp.models.interop`), outputs and gradients (query tokens, first
cross-attention key/value weights) are checked to match, then the two are
timed interleaved (A, B, A, B, ...) so machine noise hits both alike; the median of `--repeats` runs is reported.
Memory: `--frames` frames x `--tokens` tokens of width `--memory-width`, folded into the batch as the per-frame
Q-Former sees them. The vision features are frozen (no gradient to the memory), as in training.

    python benchmarks/bench_qformer.py [--repeats 5] [--threads 2] [--frames 8] [--layers 12]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from vrp.models.interop import load_blip2_qformer
from vrp.models.qformer import QFormer, QFormerConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=257)
    ap.add_argument("--memory-width", type=int, default=1408)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--queries", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = Blip2QFormerConfig(
        hidden_size=768,
        num_hidden_layers=args.layers,
        num_attention_heads=12,
        intermediate_size=3072,
        cross_attention_frequency=2,
        encoder_hidden_size=args.memory_width,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    hf = Blip2QFormerModel(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases so that the parity check means something
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    query_tokens = torch.nn.Parameter(torch.randn(1, args.queries, 768) * 0.02)
    sizes = QFormerConfig(num_query_tokens=args.queries, num_layers=args.layers)  # BLIP-2's other sizes
    ours = QFormer(args.memory_width, sizes).eval()
    load_blip2_qformer(
        ours, {"query_tokens": query_tokens.data, **{f"qformer.{k}": v for k, v in hf.state_dict().items()}}
    )
    memory = torch.randn(args.frames, args.tokens, args.memory_width)

    def run_hf() -> torch.Tensor:
        return hf(query_embeds=query_tokens.expand(args.frames, -1, -1), encoder_hidden_states=memory).last_hidden_state

    with torch.no_grad():
        diff = (run_hf() - ours(memory)).abs().max().item()
    if diff > 1e-4:
        raise SystemExit(f"outputs differ by {diff:.2e}: the comparison would be meaningless")

    def step(fn) -> float:
        t = time.perf_counter()
        fn().square().mean().backward()
        return time.perf_counter() - t

    step(run_hf), step(lambda: ours(memory))  # warm-up, which also checks the gradients
    att = hf.encoder.layer[0].crossattention.attention
    grads = [
        (query_tokens.grad, ours.query_tokens.grad),
        (torch.cat([att.key.weight.grad, att.value.weight.grad]), ours.layers[0].cross_attn.kv.weight.grad),
        (att.value.bias.grad, ours.layers[0].cross_attn.kv.bias.grad[768:]),
    ]
    gdiff = max(((a - b).abs().max() / a.abs().max()).item() for a, b in grads)
    if gdiff > 1e-3:
        raise SystemExit(f"gradients differ by {gdiff:.2e} (relative): the comparison would be meaningless")
    times: dict[str, list[float]] = {"transformers": [], "vrp": []}
    for _ in range(args.repeats):
        times["transformers"].append(step(run_hf))
        times["vrp"].append(step(lambda: ours(memory)))
    med = {k: statistics.median(v) for k, v in times.items()}
    n_hf = sum(p.numel() for p in hf.parameters()) + query_tokens.numel()
    n_ours = sum(p.numel() for p in ours.parameters())
    print(
        f"Q-Former fwd+bwd, {args.layers} layers, hidden 768, {args.queries} queries, memory {args.frames}x"
        f"{args.tokens}x{args.memory_width}, {args.threads} threads, median of {args.repeats}"
    )
    print(
        f"  parameters: transformers {n_hf:,}  vrp {n_ours:,}   max |output diff| {diff:.1e}, "
        f"max relative gradient diff {gdiff:.1e}"
    )
    for k, v in med.items():
        print(f"  {k:13s} {v * 1000:8.1f} ms   (min {min(times[k]) * 1000:.1f}, max {max(times[k]) * 1000:.1f})")
    best = {k: min(v) for k, v in times.items()}
    print(
        f"  speed-up vrp vs transformers: {med['transformers'] / med['vrp']:.2f}x on medians, "
        f"{best['transformers'] / best['vrp']:.2f}x on best runs (less sensitive to a busy machine)"
    )


if __name__ == "__main__":
    main()
