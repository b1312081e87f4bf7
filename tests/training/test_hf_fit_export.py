"""A tiny random checkpoint of each released family fine-tunes with `vrp fit` (LoRA / full / frozen LLM), exports
with `vrp export --format hf`, and the exported folder answers through transformers with the trained model's
logits."""

from __future__ import annotations

import hf_tiny
import pytest
import torch
import yaml
from tiny_assets import ToyData, toy_config
from transformers import AutoProcessor

from vrp.cli import cli
from vrp.tools import export

FRAMES = {"instructblip_video": 4, "llava_next_video": 2, "llava_onevision": 2}
LLM_MODE = {"instructblip_video": "lora", "llava_next_video": "full", "llava_onevision": "frozen"}
FUSION = {"instructblip_video": "InstructBlipVideoFusion", "llava_next_video": "LlavaVideoConnector"}
PROJECTOR = {f"fusion.linear_{i}.{k}" for i in (1, 2) for k in ("weight", "bias")}


def expected_trainable(family: str, names: set[str]) -> set[str]:
    """The exact trainable set: vision frozen, the fusion (the family's projector) trained, the LLM per its mode."""
    if family == "instructblip_video":  # all of the Q-Former, its queries and the projection; LoRA on q/v
        lora = {
            f"llm.model.base_model.model.model.layers.{i}.self_attn.{p}_proj.lora_{ab}.default.weight"
            for i in range(2)
            for p in "qv"
            for ab in "AB"
        }
        return {n for n in names if n.startswith("fusion.")} | lora
    if family == "llava_next_video":  # the projector (the newline is a buffer) and the whole LLM
        return PROJECTOR | {n for n in names if n.startswith("llm.")}
    return PROJECTOR | {"fusion.image_newline"}  # OneVision with a frozen LLM


@pytest.mark.parametrize("family", hf_tiny.FAMILIES)
def test_fit_export_answer(family, tmp_path):
    folder = str(hf_tiny.build(family, tmp_path / family))
    config = toy_config(tmp_path, tmp_path / "run")
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["init_args"]["model"]["init_args"] = {
        "vision": {"class_path": "vrp.models.HFVisionEncoder", "init_args": {"model_name_or_path": folder}},
        "fusion": {
            "class_path": f"vrp.models.{FUSION.get(family, 'LlavaVideoConnector')}",
            "init_args": {"model_name_or_path": folder, "num_frames": FRAMES[family]},
        },
        "llm": {"class_path": "vrp.models.CausalLM", "init_args": {"model_name_or_path": folder, "lora_rank": 4}},
        "projection": "none",
        "llm_mode": LLM_MODE[family],
        "use_qformer_text": family == "instructblip_video",
    }
    cfg["data"]["init_args"] |= {"tokenizer": folder, "num_frames": FRAMES[family]}
    config.write_text(yaml.safe_dump(cfg))
    run = cli(["fit", "--config", str(config)])
    model = run.model.model.eval()
    names = {n for n, _ in model.named_parameters()}
    assert model.trainable_parameter_names() == expected_trainable(family, names)

    out = tmp_path / "hf"
    export.main(["--ckpt", str(tmp_path / "run" / "ckpt" / "last.ckpt"), "--out", str(out), "--format", "hf"])
    hf = hf_tiny_class(family).from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    frames = [list(torch.randint(0, 256, (FRAMES[family], 32, 32, 3), dtype=torch.uint8).numpy())]
    if family == "instructblip_video":
        inputs = processor(images=frames, text="what colour is it ?", return_tensors="pt")
    else:
        conversation = [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what colour is it ?"}]}
        ]
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
        inputs = processor(videos=frames, text=prompt, return_tensors="pt")
    with torch.no_grad():
        ids = hf.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    answer = processor.batch_decode(ids[:, -3:], skip_special_tokens=True)
    assert isinstance(answer[0], str) and ids.shape[1] >= 3

    batch = next(iter(ToyData(folder, num_samples=2, num_frames=FRAMES[family]).train_dataloader()))
    with torch.no_grad():  # the exported model computes what the trained one does
        ours = model(batch).logits
        hf_batch = {"input_ids": hf_ids(family, batch["input_ids"], model), "attention_mask": None}
        hf_batch["attention_mask"] = torch.ones_like(hf_batch["input_ids"])
        key = "pixel_values" if family == "instructblip_video" else "pixel_values_videos"
        hf_batch[key] = batch["video"]
        if family == "instructblip_video":
            hf_batch |= {k: batch[k] for k in ("qformer_input_ids", "qformer_attention_mask")}
        theirs = hf(**hf_batch).logits
    assert float((ours - theirs).abs().max()) <= 1e-4


def hf_tiny_class(family: str):
    import transformers

    prefix = {"instructblip_video": "InstructBlipVideo", "llava_next_video": "LlavaNextVideo"}.get(
        family, "LlavaOnevision"
    )
    return getattr(transformers, f"{prefix}ForConditionalGeneration")


def hf_ids(family: str, input_ids: torch.Tensor, model) -> torch.Tensor:
    """vrp's prompt with its one placeholder expanded to the Q video tokens transformers' model expects."""
    Q = model.num_video_tokens
    rows = []
    for row in input_ids.tolist():
        i = row.index(model.llm.video_token_id)
        rows.append(row[:i] + [model.llm.video_token_id] * Q + row[i + 1 :])
    return torch.tensor(rows)
