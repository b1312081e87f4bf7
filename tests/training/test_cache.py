"""Feature cache: tokens written once, read back by key; training from the cache equals training from pixels."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from tiny import ToyData
from vrp.training.cache import FeatureCache, write_cache


def _module(root, cache=None):
    from vrp.models import CausalLM, HFVisionEncoder, MLPConnector, VideoReasoner
    from vrp.training.stage2 import InstructionTuning

    torch.manual_seed(0)
    model = VideoReasoner(HFVisionEncoder(str(root / "vit")), partial(MLPConnector, output_dim=32),
                          CausalLM(str(root / "llm"), lora_rank=4, lora_dropout=0.0), llm_mode="lora")
    return InstructionTuning(model, feature_cache=cache)


def test_cache_roundtrip_and_same_loss_as_pixels(tiny_root, tmp_path):
    data = ToyData(str(tiny_root / "tokenizer"), num_samples=8, batch_size=4)
    pixels = _module(tiny_root)
    n = write_cache(pixels.model.vision, data.train_dataloader(), tmp_path / "cache", shard_size=3,
                    dtype=torch.float32)
    assert n == 8 and len(list((tmp_path / "cache").glob("shard-*.safetensors"))) == 3
    cache = FeatureCache(tmp_path / "cache")
    batch = next(iter(data.train_dataloader()))
    visual, mask = cache.get(batch["keys"])
    with torch.no_grad():
        torch.testing.assert_close(visual, pixels.model.vision(batch["video"]))
    cached = _module(tiny_root, str(tmp_path / "cache"))
    cached.model.load_state_dict(pixels.model.state_dict())
    no_video = {k: v for k, v in batch.items() if k != "video"}  # proves the pixels are not needed
    with torch.no_grad():
        from vrp.training import steps

        a = steps.lm_loss(pixels.model, pixels.encode(batch), batch)
        b = steps.lm_loss(cached.model, cached.encode(no_video), no_video)
    torch.testing.assert_close(a, b)
    with pytest.raises(KeyError, match="not in the feature cache"):
        cache.get(["nope"])
