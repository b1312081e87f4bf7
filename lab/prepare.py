"""`python -m lab prepare`: the embedded default's tiny backbones, randomly initialised ONCE and saved to a folder
that configs load by path, then trained by stage 0.

`python -m lab prepare --tokenizer data/synthetic/tokenizer --out artifacts/embedded` writes
  <out>/vit/   a tiny HF ViT (save_pretrained + preprocessor_config.json)
  <out>/llm/   a tiny Llama (save_pretrained) with the synthetic tokenizer
so stage 1, stage 2, export and inference rebuild identical frozen weights by path, exactly as with a real
checkpoint. Deterministic from `seed`; re-running with existing output is a no-op unless `overwrite`.
`--vit-steps N` (with `--data`, the synthetic root) then runs stage 0 on the ViT (`lab.stage0`): per-patch
colour and shape supervision on TRAIN frames, saved over <out>/vit with a <out>/vit/stage0.json report; skipped when
that report exists. `--llm-steps N` does the same for the LLM: next-token training on `--llm-scenes` scenes of
knowledge documents (`--llm-corpus knowledge`: scenes of a seed stream of their own, never a benchmark clip, told in
statements) or their control (`--llm-corpus control`: the same sentences shuffled across scenes), saved over
<out>/llm with <out>/llm/stage0.json. `--detector-steps N` trains the
object stage's detector (`vrp.models.detection.CenterNet`) on TRAIN frames with their boxes as labels and saves it
to <out>/detector (config.json, model.safetensors, stage0.json); the simulator's boxes are read here and in no later
stage.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lab.stage0 import CORPORA, llm_stage0, pretrain_detector, pretrain_vit
from vrp.models.constants import VIDEO_TOKEN

VIT = {
    "model_type": "vit",
    "image_size": 128,
    "patch_size": 16,
    "hidden_size": 192,
    "num_hidden_layers": 4,
    "num_attention_heads": 3,
    "intermediate_size": 768,
}
LLM = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}


def save_random_backbones(
    tokenizer: str,
    out: str | Path,
    *,
    seed: int = 0,
    vit: dict | None = None,
    llm: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Build and save the tiny ViT and Llama; returns `out`."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    if (out / "vit" / "config.json").is_file() and (out / "llm" / "config.json").is_file() and not overwrite:
        return out
    for sub in (
        "vit",
        "llm",
        "detector",
        "dynamics",
    ):  # random weights again: a stage-0 report of the old ones would skip stage 0
        (out / sub / "stage0.json").unlink(missing_ok=True)
    if not (Path(tokenizer) / "tokenizer_config.json").is_file() and not (Path(tokenizer) / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer at {tokenizer}; generate the synthetic data first (make data)")
    torch.manual_seed(seed)
    vit_model = AutoModel.from_config(AutoConfig.for_model(**(vit or VIT)), add_pooling_layer=False)
    vit_model.save_pretrained(out / "vit")
    (out / "vit" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size": (vit or VIT)["image_size"]})
    )
    tok = AutoTokenizer.from_pretrained(tokenizer)
    if VIDEO_TOKEN not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN]})
    ids = {
        "vocab_size": len(tok),
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    torch.manual_seed(seed + 1)
    llm_model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**ids, **(llm or LLM)}))
    llm_model.save_pretrained(out / "llm")
    tok.save_pretrained(out / "llm")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m lab prepare", description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", default="data/synthetic/tokenizer")
    p.add_argument("--out", default="artifacts/embedded")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--data", default="data/synthetic", help="synthetic root whose train split stage 0 reads")
    p.add_argument(
        "--vit-steps",
        type=int,
        default=None,
        help="stage-0 ViT pretraining steps (0: keep it random, recorded; default: leave stage 0 alone)",
    )
    p.add_argument(
        "--llm-steps",
        type=int,
        default=None,
        help="stage-0 LLM text pretraining steps (0: keep it random, recorded; default: leave it alone)",
    )
    p.add_argument(
        "--llm-corpus",
        choices=CORPORA,
        default="knowledge",
        help="what stage 0 of the LLM reads: knowledge documents of its own scenes, or the control (the same "
        "sentences shuffled across scenes)",
    )
    p.add_argument("--llm-scenes", type=int, default=4000, help="scenes of the LLM's stage-0 corpus")
    p.add_argument(
        "--detector-steps",
        type=int,
        default=None,
        help="stage-0 detector training steps on train frames (default: leave it alone)",
    )
    a = p.parse_args(argv)
    out = save_random_backbones(a.tokenizer, a.out, seed=a.seed, overwrite=a.overwrite)
    print(f"embedded backbones at {out}")
    if _stage0_due(out / "vit", "ViT", "--vit-steps", a.vit_steps):
        report = pretrain_vit(out / "vit", a.data, steps=a.vit_steps, seed=a.seed)
        print(
            f"stage 0: ViT pretrained on {report['frames']} train frames in {report['seconds']} s; loss "
            f"{report['loss_start']} -> {report['loss_end']}, patch colour+shape accuracy {report['patch_accuracy']}"
        )
    llm = {"corpus": a.llm_corpus, "scenes": a.llm_scenes}
    if _stage0_due(out / "llm", "LLM", "--llm-steps", a.llm_steps, llm):
        report = llm_stage0(
            out / "llm", a.data, corpus=a.llm_corpus, scenes=a.llm_scenes, steps=a.llm_steps, seed=a.seed
        )
        probe = ", ".join(f"{k} {v['prefers_true']}" for k, v in report["probe"].items())
        print(
            f"stage 0: LLM pretrained on {report['documents']} {a.llm_corpus} documents of {a.llm_scenes} scenes in "
            f"{report['seconds']} s; loss {report['loss_start']} -> {report['loss_end']}, held-out loss "
            f"{report['held_out_loss_start']} -> {report['held_out_loss']}; probe (true preferred): {probe}"
        )
    if a.detector_steps is not None and a.detector_steps < 1:
        raise SystemExit("lab prepare: --detector-steps must be >= 1 (an untrained detector finds nothing)")
    if _stage0_due(out / "detector", "detector", "--detector-steps", a.detector_steps):
        report = pretrain_detector(out / "detector", a.data, steps=a.detector_steps, seed=a.seed)
        print(
            f"stage 0: detector trained on {report['frames']} train frames in {report['seconds']} s; loss "
            f"{report['loss_start']} -> {report['loss_end']}, held-out train frames: precision "
            f"{report['held_out_precision']}, recall {report['held_out_recall']} (IoU >= 0.5), mean IoU "
            f"{report['held_out_mean_iou']}"
        )


def _stage0_due(folder: Path, name: str, flag: str, steps: int | None, settings: dict | None = None) -> bool:
    """Whether stage 0 should train the model in ``folder`` for ``steps`` now: not when no steps are asked for or
    its report says it already ran them; a report of other steps, or of a trained model with other ``settings``
    (report keys, e.g. the LLM's corpus), is an error (the weights would be trained twice).
    Zero steps records the random model, so that a later run does not train on top of it."""
    report_path = folder / "stage0.json"
    if steps is None:
        return False
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        done = report.get("steps")
        other = {k: report.get(k) for k, v in (settings or {}).items() if done and report.get(k) != v}
        if done != steps or other:
            held = ", ".join(f"{k} {v}" for k, v in other.items()) or f"{done} steps, not {flag} {steps}"
            raise SystemExit(
                f"lab prepare: {folder} holds a {name} from stage 0 with {held}; add --overwrite to rebuild the backbones"
            )
        return False
    if steps == 0:
        report_path.write_text(json.dumps({"steps": 0}))
        return False
    return True
