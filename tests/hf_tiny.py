"""Tiny random checkpoints of the three Hugging Face video-LLM families, saved offline with their processors.

`build(family, folder)` writes what ``save_pretrained`` writes for a released checkpoint (config, safetensors,
processor, tokenizer(s), chat template, generation config) with random weights: 32x32 frames, 8x8 patches, two
layers everywhere. Families: ``instructblip_video`` (ViT + Q-Former + Llama), ``llava_next_video`` (CLIP, feature
layer -2 without CLS, 2x2 average pooling, Llama), ``llava_onevision`` (SigLIP, last layer, bilinear pooling, a
newline token, Qwen2).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_assets import TINY_LLM, TINY_VIT, word_tokenizer

FAMILIES = ("instructblip_video", "llava_next_video", "llava_onevision")
WORDS = "what colour is it ? red green blue yellow a video of shapes moving USER: ASSISTANT:".split()
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<video>", "<image>"]
NAMED = {"video_token": "<video>", "image_token": "<image>"}
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
    "{% if c['type'] == 'video' %}<video> {% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% else %}ASSISTANT: {% for c in m['content'] %}{{ c['text'] }}{% endfor %}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
# the tiny ViT and Llama of every test, with two vision layers: LLaVA-NeXT-Video reads the second-to-last one
VISION = dict({k: v for k, v in TINY_VIT.items() if k != "model_type"}, num_hidden_layers=2)
TEXT = dict(
    {k: v for k, v in TINY_LLM.items() if k != "model_type"}, max_position_embeddings=256, tie_word_embeddings=False
)


def _randomise(model: torch.nn.Module, seed: int) -> None:
    # default init leaves norms at one and biases at zero: random values make parity meaningful
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def build(family: str, folder: Path, seed: int = 0) -> Path:
    """Save a tiny random `family` checkpoint with its processor to ``folder``."""
    from transformers import GenerationConfig

    # the LLaVA processors read the named video and image tokens; InstructBLIP-Video's adds its own
    tok = word_tokenizer(WORDS, SPECIALS, extra_special_tokens=[] if family == "instructblip_video" else NAMED)
    text = dict(
        TEXT,
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    video_id = tok.convert_tokens_to_ids("<video>")
    image_id = tok.convert_tokens_to_ids("<image>")
    if family == "instructblip_video":
        from transformers import (
            InstructBlipVideoConfig,
            InstructBlipVideoForConditionalGeneration,
            InstructBlipVideoProcessor,
            InstructBlipVideoVideoProcessor,
        )

        qtok = word_tokenizer(WORDS, ["[PAD]", "[CLS]", "[SEP]", "[UNK]"], bos=False, extra_special_tokens=[])
        qtok.pad_token, qtok.unk_token = "[PAD]", "[UNK]"
        config = InstructBlipVideoConfig(
            vision_config=VISION,
            qformer_config=dict(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                vocab_size=len(tok),  # >= the Q-Former tokenizer's: toy data feeds LLM ids to the Q-Former
                max_position_embeddings=32,
                cross_attention_frequency=1,
                encoder_hidden_size=32,
                pad_token_id=0,
            ),
            text_config=dict(text, model_type="llama"),
            num_query_tokens=4,
            video_token_index=video_id,
        )
        model = InstructBlipVideoForConditionalGeneration(config)
        video = InstructBlipVideoVideoProcessor(size={"height": 32, "width": 32})
        processor = InstructBlipVideoProcessor(video, tok, qtok, num_query_tokens=4)
    elif family in ("llava_next_video", "llava_onevision"):
        import transformers

        onevision = family == "llava_onevision"
        prefix, image_prefix = ("LlavaOnevision", "LlavaOnevision") if onevision else ("LlavaNextVideo", "LlavaNext")
        Config, Model, Processor, VideoProcessor = (
            getattr(transformers, f"{prefix}{part}")
            for part in ("Config", "ForConditionalGeneration", "Processor", "VideoProcessor")
        )
        ImageProcessor = getattr(transformers, f"{image_prefix}ImageProcessor")
        if onevision:
            vision = dict(VISION, model_type="siglip_vision_model")
            extra = dict(text_config=dict(text, model_type="qwen2"), vision_feature_layer=-1)
            extra |= dict(vision_feature_select_strategy="full", image_grid_pinpoints=[[32, 32]])
            size = {"height": 32, "width": 32}
        else:
            vision = dict(VISION, model_type="clip_vision_model", projection_dim=32)
            extra = dict(text_config=dict(text, model_type="llama"), vision_feature_layer=-2)
            extra |= dict(vision_feature_select_strategy="default", image_grid_pinpoints=[[32, 32]])
            extra |= dict(spatial_pool_stride=2, spatial_pool_mode="average")
            size = {"shortest_edge": 32}
        config = Config(vision_config=vision, video_token_index=video_id, image_token_index=image_id, **extra)
        model = Model(config)
        crop = {} if onevision else {"crop_size": {"height": 32, "width": 32}}
        video = VideoProcessor(size=size, **crop)
        image = ImageProcessor(size=size, **crop)
        if onevision:
            processor = Processor(image, tok, video, num_image_tokens=16, vision_feature_select_strategy="full")
        else:
            processor = Processor(video, image, tok, patch_size=8, vision_feature_select_strategy="default")
            processor.num_additional_image_tokens = 1
        processor.chat_template = CHAT_TEMPLATE
    else:
        raise ValueError(f"unknown family {family!r}; one of {FAMILIES}")
    _randomise(model, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
