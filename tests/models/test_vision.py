import re

import pytest
import torch
from tiny_assets import TINY_VIT

from vrp.models.vision import HFVisionEncoder, OpenClipVisionEncoder, transformer_blocks


def test_tiny_vit_shapes_and_attributes():
    enc = HFVisionEncoder(config=TINY_VIT)  # 32x32 images, 8x8 patches, width 32
    assert (enc.width, enc.grid, enc.num_prefix_tokens, enc.image_size) == (32, (4, 4), 1, 32)
    assert len(enc.mean) == len(enc.std) == 3
    out = enc(torch.randn(2, 3, 3, 32, 32))
    assert out.shape == (2, 3, 17, 32)


def test_frozen_by_default_and_stays_eval():
    enc = HFVisionEncoder(config=TINY_VIT)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert enc.training and not enc.backbone.training
    assert not enc(torch.randn(1, 2, 3, 32, 32)).requires_grad


def test_chunked_encoding_matches_single_pass():
    torch.manual_seed(0)
    enc = HFVisionEncoder(config=TINY_VIT, chunk_size=64)
    video = torch.randn(2, 3, 3, 32, 32)
    full = enc(video)
    enc.chunk_size = 2
    torch.testing.assert_close(enc(video), full)


def test_unfreeze_last_block_trains_only_that_block():
    enc = HFVisionEncoder(
        config={**TINY_VIT, "num_hidden_layers": 3}, unfreeze_last_blocks=1, gradient_checkpointing=True
    )
    blocks = transformer_blocks(enc.backbone)
    assert len(blocks) == 3
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {
        f"backbone.{n}" for n, p in enc.backbone.named_parameters() if any(p is q for q in blocks[2].parameters())
    }
    enc.train()
    assert blocks[2].training and not blocks[0].training and not enc.backbone.training
    enc(torch.randn(1, 2, 3, 32, 32)).sum().backward()
    with_grad = {n for n, p in enc.named_parameters() if p.grad is not None}
    assert with_grad == trainable


def test_unfreeze_all_and_bad_block_count():
    enc = HFVisionEncoder(config=TINY_VIT)
    enc.unfreeze()
    enc(torch.randn(1, 1, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in enc.parameters())  # pooler removed: every weight is in the graph
    with pytest.raises(ValueError, match="unfreeze_last_blocks=5"):
        HFVisionEncoder(config={**TINY_VIT, "num_hidden_layers": 2}, unfreeze_last_blocks=5)


def test_config_needs_model_type():
    with pytest.raises(ValueError, match="model_type"):
        HFVisionEncoder(config={"hidden_size": 32})


def test_image_size_override_interpolates_positions():
    enc = HFVisionEncoder(config=TINY_VIT, image_size=48)
    assert enc.grid == (6, 6)
    assert enc(torch.randn(1, 2, 3, 48, 48)).shape == (1, 2, 37, 32)


def test_bfloat16_backbone_returns_input_dtype():
    enc = HFVisionEncoder(config=TINY_VIT, dtype="bfloat16")
    assert next(enc.backbone.parameters()).dtype == torch.bfloat16
    assert enc(torch.randn(1, 2, 3, 32, 32)).dtype == torch.float32


def _hf_models():
    from transformers import (
        CLIPConfig,
        CLIPModel,
        Dinov2Config,
        Dinov2Model,
        SiglipVisionConfig,
        SiglipVisionModel,
        ViTConfig,
        ViTModel,
    )

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32)
    yield "vit", lambda: ViTModel(ViTConfig(patch_size=8, **small)), 1
    yield "dinov2", lambda: Dinov2Model(Dinov2Config(patch_size=8, **small)), 1
    yield "siglip", lambda: SiglipVisionModel(SiglipVisionConfig(patch_size=8, **small)), 0
    yield (
        "clip",
        lambda: CLIPModel(
            CLIPConfig(
                vision_config=dict(patch_size=8, **small),
                text_config=dict(
                    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99
                ),
                projection_dim=16,
            )
        ),
        1,
    )


@pytest.mark.parametrize("name,build,prefix", [pytest.param(*m, id=m[0]) for m in _hf_models()])
def test_hf_round_trip_matches_last_hidden_state(tmp_path, name, build, prefix):
    torch.manual_seed(0)
    ref = build().eval()
    ref.save_pretrained(tmp_path)
    enc = HFVisionEncoder(str(tmp_path))
    assert (enc.grid, enc.num_prefix_tokens, enc.width) == ((4, 4), prefix, 32)
    video = torch.randn(2, 2, 3, 32, 32)
    tower = ref.vision_model if name == "clip" else ref
    with torch.no_grad():
        expected = tower(pixel_values=video.flatten(0, 1)).last_hidden_state
    torch.testing.assert_close(enc(video), expected.unflatten(0, (2, 2)))


TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 50, "width": 16, "heads": 2, "layers": 1},
}


def test_open_clip_round_trip_by_checkpoint_path(tmp_path):
    import open_clip

    OpenClipVisionEncoder("vrp-test-tiny-clip", model_config=TINY_CLIP)  # registers the architecture
    torch.manual_seed(0)
    ref = open_clip.create_model("vrp-test-tiny-clip").eval()
    torch.save(ref.state_dict(), tmp_path / "tiny.pt")
    enc = OpenClipVisionEncoder("vrp-test-tiny-clip", pretrained=str(tmp_path / "tiny.pt"))
    assert (enc.width, enc.grid, enc.num_prefix_tokens, enc.image_size) == (32, (4, 4), 1, 32)
    assert enc.mean == tuple(open_clip.OPENAI_DATASET_MEAN)
    video = torch.randn(1, 3, 3, 32, 32)
    tokens = enc(video)
    assert tokens.shape == (1, 3, 17, 32)
    ref.visual.output_tokens = True
    with torch.no_grad():
        _, patch_tokens = ref.visual(video[0])  # (T, gh*gw, D) after the final norm
    torch.testing.assert_close(tokens[0, :, 1:], patch_tokens)
    assert not any(p.requires_grad for p in enc.parameters())


def test_loading_says_nothing_of_unused_weights_and_names_used_missing_ones(tmp_path, capfd, caplog):
    """A saved ViT without its pooler (which the encoder drops) loads silently: no Hugging Face load report, no
    weight-loading bar. A weight the model uses that the file lacks is named in one warning line."""
    from safetensors.torch import load_file, save_file
    from transformers import ViTConfig, ViTModel

    vit = ViTModel(ViTConfig(**{k: v for k, v in TINY_VIT.items() if k != "model_type"}))
    vit.save_pretrained(tmp_path / "vit")
    weights = load_file(tmp_path / "vit" / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("pooler.")}, tmp_path / "vit" / "model.safetensors")
    capfd.readouterr()
    HFVisionEncoder(model_name_or_path=str(tmp_path / "vit"))
    out, err = capfd.readouterr()
    assert out + err == "" and not caplog.records

    used = "encoder.layer.0.attention.attention.query.weight"
    save_file({k: v for k, v in weights.items() if k != used}, tmp_path / "vit" / "model.safetensors")
    HFVisionEncoder(model_name_or_path=str(tmp_path / "vit"))
    assert "LOAD REPORT" not in capfd.readouterr().err
    (message,) = [r.getMessage() for r in caplog.records]
    assert re.fullmatch(
        f"vision model {re.escape(str(tmp_path / 'vit'))}: 1 weights the model uses are not in the checkpoint and "
        r"start random: \S+\.0\.\S+\.weight; train them, or check that the checkpoint matches the model type",
        message,
    ), message
