"""A vrp model back to a released family's own folder: config, safetensors, processor, tokenizer, chat template,
generation config, that transformers loads with the family's class (``from_pretrained``) and ``AutoProcessor``.

Which vrp shapes have a twin (the reasoner's ``projection: none`` in all three):
  HFVisionEncoder(InstructBLIP-Video vision model) + InstructBlipVideoFusion + CausalLM -> InstructBlipVideoForConditionalGeneration
  HFVisionEncoder(CLIP) + LlavaVideoConnector(llava_next_video) + CausalLM              -> LlavaNextVideoForConditionalGeneration
  HFVisionEncoder(SigLIP) + LlavaVideoConnector(llava_onevision) + CausalLM             -> LlavaOnevisionForConditionalGeneration
Anything else (a track fusion, a Q-Former fusion of vrp's own, an open_clip encoder, a linear projection) is
refused with a one-line `NoHFTwin` naming the part. LoRA adapters are merged into the exported weights.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from vrp.models.families import local_folder
from vrp.models.families.instructblip_video import InstructBlipVideoFusion
from vrp.models.families.llava import LlavaVideoConnector
from vrp.models.io import CheckpointError


class NoHFTwin(CheckpointError):
    """The model has a part no Hugging Face video-LLM class holds."""


def _hf_class(fusion: nn.Module):
    from transformers import (
        InstructBlipVideoForConditionalGeneration,
        LlavaNextVideoForConditionalGeneration,
        LlavaOnevisionForConditionalGeneration,
    )

    if isinstance(fusion, InstructBlipVideoFusion):
        return InstructBlipVideoForConditionalGeneration
    if isinstance(fusion, LlavaVideoConnector):
        return LlavaOnevisionForConditionalGeneration if fusion.onevision else LlavaNextVideoForConditionalGeneration
    raise NoHFTwin(
        f"the fusion {type(fusion).__name__} has no Hugging Face twin: only InstructBlipVideoFusion and "
        "LlavaVideoConnector export with --format hf"
    )


def hf_parts(model: nn.Module):
    """(the family's class, its config, its state dict under transformers 5.x keys) for ``model`` (a `VideoReasoner`
    built from a family; LoRA merged into a copy, the trained model keeps its adapters)."""
    from vrp.models.vision import HFVisionEncoder

    fusion, vision, llm = model.fusion, model.vision, model.llm
    cls = _hf_class(fusion)
    if not isinstance(model.projection, nn.Identity):
        raise NoHFTwin(f"the linear projection after {type(fusion).__name__} has no twin: build with projection: none")
    cfg = copy.deepcopy(fusion.hf_config)
    tower = cfg.vision_config.model_type
    if not isinstance(vision, HFVisionEncoder) or vision.backbone.config.model_type != tower:
        kind = type(vision.backbone).__name__ if isinstance(vision, HFVisionEncoder) else type(vision).__name__
        raise NoHFTwin(f"the vision encoder {kind} is not the family's vision tower ({tower})")
    expected_layer = cfg.vision_feature_layer if isinstance(fusion, LlavaVideoConnector) else None
    if vision.feature_layer != expected_layer:
        raise NoHFTwin(f"the vision encoder reads layer {vision.feature_layer}, the family reads {expected_layer}")
    lm = llm.model
    if hasattr(lm, "peft_config"):
        lm = copy.deepcopy(lm).merge_and_unload()
    cfg.vision_config = copy.deepcopy(vision.backbone.config)
    cfg.text_config = copy.deepcopy(lm.config)
    if isinstance(fusion, InstructBlipVideoFusion):
        cfg.video_token_index = llm.video_token_id
        state = {f"vision_model.{k}": v for k, v in vision.backbone.state_dict().items()}
        state |= {f"language_model.{k}": v for k, v in lm.state_dict().items()}
    else:
        cfg.video_token_id = llm.video_token_id
        state = {f"model.vision_tower.{k}": v for k, v in vision.backbone.state_dict().items()}
        state |= {f"model.language_model.{k}": v for k, v in lm.get_decoder().state_dict().items()}
        state |= {f"lm_head.{k}": v for k, v in lm.get_output_embeddings().state_dict().items()}
    state |= fusion.hf_state_dict()
    dtype = next(lm.parameters()).dtype
    return cls, cfg, {k: v.detach().to(dtype) for k, v in state.items()}, lm.generation_config


def export_hf(model: nn.Module, out: str | Path) -> Path:
    """Write ``model`` (a `VideoReasoner` built from a family folder) as that family's folder at ``out``."""
    from transformers import AutoProcessor

    cls, cfg, state, generation = hf_parts(model)
    source = model.fusion.source
    if source is None:
        raise NoHFTwin(
            f"the {type(model.fusion).__name__} was built from a config, not a released folder: no processor"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):  # no random init of a 7B model: every saved tensor is assigned below
        hf = cls(cfg)
    hf.load_state_dict(state, strict=True, assign=True)
    hf.generation_config = copy.deepcopy(generation)
    hf.save_pretrained(out)
    processor = AutoProcessor.from_pretrained(str(local_folder(source)))
    processor.tokenizer = model.llm.tokenizer  # the tokenizer the LLM's embeddings match
    processor.save_pretrained(out)
    return out
