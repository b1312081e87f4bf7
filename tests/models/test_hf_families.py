"""Released video-LLM families (InstructBLIP-Video, LLaVA-NeXT-Video, LLaVA-OneVision): a tiny random checkpoint
of each becomes a vrp model with transformers' logits and greedy answer, exports back to a folder transformers loads
with the family's class and processor, and round-trips to identical tensors."""

from __future__ import annotations

from functools import partial

import hf_tiny
import pytest
import torch
from tiny_assets import TINY_VIT
from transformers import AutoProcessor

from data_modules.transforms import VideoTransform
from vrp.models import (
    CausalLM,
    HFVisionEncoder,
    InstructBlipVideoFusion,
    LlavaVideoConnector,
    MLPConnector,
    PoolOptions,
    VideoReasoner,
)
from vrp.models.families.export import NoHFTwin, export_hf

FRAMES = {"instructblip_video": 4, "llava_next_video": 2, "llava_onevision": 2}  # the InstructBLIP processor: 4
PROMPT = "what colour is it ?"
MAX_DIFF: dict[str, float] = {}


def hf_class(family: str):
    import transformers

    name = {
        "instructblip_video": "InstructBlipVideoForConditionalGeneration",
        "llava_next_video": "LlavaNextVideoForConditionalGeneration",
        "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    }[family]
    return getattr(transformers, name)


@pytest.fixture(scope="module", params=hf_tiny.FAMILIES)
def family(request, tmp_path_factory):
    name = request.param
    return name, hf_tiny.build(name, tmp_path_factory.mktemp(name))


def vrp_model(family: str, folder, **modes) -> VideoReasoner:
    fusion = InstructBlipVideoFusion if family == "instructblip_video" else LlavaVideoConnector
    return VideoReasoner(
        HFVisionEncoder(str(folder)),
        partial(fusion, model_name_or_path=str(folder), num_frames=FRAMES[family]),
        CausalLM(str(folder), lora_rank=4, lora_dropout=0.0),
        projection="none",
        use_qformer_text=family == "instructblip_video",
        **modes,
    )


def inputs(family: str, folder, model: VideoReasoner):
    """The same frames and prompt for both: the HF processor's inputs and vrp's batch (one placeholder)."""
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (2, FRAMES[family], 32, 32, 3), dtype=torch.uint8, generator=g)
    processor = AutoProcessor.from_pretrained(folder)
    videos = [list(v.numpy()) for v in frames]
    if family == "instructblip_video":
        hf = processor(images=videos, text=[PROMPT, PROMPT], return_tensors="pt")
        pixels = hf["pixel_values"]
    else:
        hf = processor(videos=videos, text=[f"<video> {PROMPT}"] * 2, return_tensors="pt")
        pixels = hf["pixel_values_videos"]
    tok = model.llm.tokenizer
    prompt = tok([PROMPT] * 2, return_tensors="pt")["input_ids"]  # (2, L): <s> what colour is it ?
    video = torch.full((2, 1), model.llm.video_token_id)
    # InstructBLIP's processor puts the video tokens before <s>, LLaVA's where the text has <video>
    ids = (
        torch.cat([video, prompt], 1)
        if family == "instructblip_video"
        else torch.cat([prompt[:, :1], video, prompt[:, 1:]], 1)
    )
    batch = {"video": pixels, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if family == "instructblip_video":
        batch |= {"qformer_input_ids": hf["qformer_input_ids"], "qformer_attention_mask": hf["qformer_attention_mask"]}
    return frames, dict(hf), batch


def compare(family: str, hf_model, model: VideoReasoner, hf_inputs: dict, batch: dict) -> float:
    """Max |logit difference| over the whole sequence, after checking that the sequences align and the greedy
    answers agree."""
    model.eval()
    with torch.no_grad():
        ours = model(batch).logits
        theirs = hf_model(**hf_inputs).logits
        assert ours.shape == theirs.shape
        embeds, mask, _ = model.build_inputs(model.video_tokens(batch), batch["input_ids"], batch["attention_mask"])
        ours_ids = model.llm.generate(embeds, mask, max_new_tokens=4, min_new_tokens=4)
        theirs_ids = hf_model.generate(**hf_inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)[:, -4:]
    assert torch.equal(ours_ids, theirs_ids)
    return float((ours - theirs).abs().max())


def test_hf_to_vrp_parity(family):
    name, folder = family
    model = vrp_model(name, folder)
    hf_model = hf_class(name).from_pretrained(folder).eval()
    _, hf_inputs, batch = inputs(name, folder, model)
    diff = compare(name, hf_model, model, hf_inputs, batch)
    MAX_DIFF[f"{name} hf->vrp"] = diff
    print(f"{name}: HF -> vrp max |logit diff| {diff:.2e}")
    assert diff <= 1e-4


def test_vrp_to_hf_parity_and_roundtrip(family, tmp_path):
    name, folder = family
    model = vrp_model(name, folder)
    export_hf(model, tmp_path / "same")  # HF -> vrp -> HF: identical tensors
    cls = hf_class(name)
    original, back = cls.from_pretrained(folder).state_dict(), cls.from_pretrained(tmp_path / "same").state_dict()
    assert original.keys() == back.keys()
    assert all(torch.equal(original[k], back[k]) for k in original)
    assert type(AutoProcessor.from_pretrained(tmp_path / "same")) is type(AutoProcessor.from_pretrained(folder))

    model = vrp_model(name, folder, llm_mode="lora")  # a "trained" model: fusion and LoRA moved
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    out = export_hf(model, tmp_path / "trained")
    _, hf_inputs, batch = inputs(name, out, model)
    diff = compare(name, cls.from_pretrained(out).eval(), model, hf_inputs, batch)
    print(f"{name}: vrp -> HF max |logit diff| {diff:.2e}")
    assert diff <= 1e-4


def test_processor_pixels_equal_vrp_data_path(family):
    """At the encoder's own size the processor's resize is the identity: its pixels are vrp's eval transform's."""
    name, folder = family
    vision = HFVisionEncoder(str(folder))
    model = vrp_model(name, folder)
    frames, hf_inputs, batch = inputs(name, folder, model)
    transform = VideoTransform(vision.image_size, vision.mean, vision.std)
    ours = torch.stack([transform(v.permute(0, 3, 1, 2))[0] for v in frames])
    torch.testing.assert_close(ours, batch["video"], atol=1e-5, rtol=0)


def test_export_refuses_a_model_without_twin(family, tmp_path):
    name, folder = family
    model = VideoReasoner(
        HFVisionEncoder(config=TINY_VIT),
        partial(MLPConnector, pool=PoolOptions(temporal_bins=1, spatial_size=(1, 1)), output_dim=32),
        CausalLM(str(folder)),
    )
    with pytest.raises(NoHFTwin, match="MLPConnector"):
        export_hf(model, tmp_path / "x")
