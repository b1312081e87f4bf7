"""Weight interop: our Q-Former reproduces Hugging Face BLIP-2 / InstructBLIP / BERT outputs after loading."""

from dataclasses import replace

import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2QFormerConfig,
    Blip2QFormerModel,
    InstructBlipQFormerConfig,
    InstructBlipQFormerModel,
)

from vrp.models.contracts import TokenLayout
from vrp.models.interop import (
    init_qformer_from_bert,
    load_blip2_fusion,
    load_blip2_qformer,
    qformer_from_blip2,
)
from vrp.models.qformer import QFormer, QFormerConfig
from vrp.models.qformer_fusion import FrameQFormerFusion, JointQFormerFusion, QFormerOptions

TINY = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=64,
    vocab_size=50,
    max_position_embeddings=16,
    cross_attention_frequency=2,
    encoder_hidden_size=24,
)


def _ours(text: bool) -> QFormer:
    sizes = QFormerConfig(
        num_query_tokens=8,
        hidden_size=32,
        num_layers=3,
        num_heads=4,
        intermediate_size=64,
        vocab_size=50 if text else 0,
        max_text_len=16,
    )
    return QFormer(24, sizes).eval()


def _randomise(model: torch.nn.Module) -> None:
    # Default init leaves LayerNorms at identity and biases at zero; random values make the parity test meaningful.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)


def _masks():
    mem_mask = torch.ones(2, 10, dtype=torch.long)
    mem_mask[1, 6:] = 0
    text_mask = torch.ones(2, 5, dtype=torch.long)
    text_mask[0, 3:] = 0
    return mem_mask, text_mask


def _pair(model_cls, config_cls, *, seed: int, text: bool):
    """A randomised transformers Q-Former of the TINY sizes, our Q-Former loaded from it, and the query tokens."""
    torch.manual_seed(seed)
    hf = model_cls(config_cls(**TINY)).eval()
    _randomise(hf)
    query_tokens = torch.randn(1, 8, 32)
    ours = _ours(text=text)
    load_blip2_qformer(ours, {"query_tokens": query_tokens, **{f"qformer.{k}": v for k, v in hf.state_dict().items()}})
    return hf, ours, query_tokens


def test_blip2_qformer_parity_without_text():
    hf, ours, query_tokens = _pair(Blip2QFormerModel, Blip2QFormerConfig, seed=0, text=False)
    memory = torch.randn(2, 10, 24)
    mem_mask, _ = _masks()
    with torch.no_grad():
        ref = hf(
            query_embeds=query_tokens.expand(2, -1, -1), encoder_hidden_states=memory, encoder_attention_mask=mem_mask
        ).last_hidden_state
        out = ours(memory, mem_mask.bool())
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_blip2_qformer_parity_with_text():
    torch.manual_seed(1)
    hf = Blip2QFormerModel(Blip2QFormerConfig(**TINY, use_qformer_text_input=True)).eval()
    _randomise(hf)
    words, positions = torch.nn.Embedding(50, 32), torch.nn.Embedding(16, 32)
    sd = {f"qformer.{k}": v for k, v in hf.state_dict().items()}
    sd |= {
        "query_tokens": torch.randn(1, 8, 32),
        "embeddings.word_embeddings.weight": words.weight.data,
        "embeddings.position_embeddings.weight": positions.weight.data,
    }
    ours = _ours(text=True)
    load_blip2_qformer(ours, sd)
    memory, ids = torch.randn(2, 10, 24), torch.randint(1, 50, (2, 5))
    _, text_mask = _masks()
    with torch.no_grad():
        embeds = torch.cat([sd["query_tokens"].expand(2, -1, -1), words(ids) + positions(torch.arange(5))], 1)
        # (transformers 5.x Blip2QFormerModel mis-shapes encoder_attention_mask with text; InstructBLIP test covers it)
        ref = hf(
            query_embeds=embeds,
            query_length=8,
            encoder_hidden_states=memory,
            attention_mask=torch.cat([torch.ones(2, 8, dtype=torch.long), text_mask], 1),
        ).last_hidden_state
        out = ours(memory, text_ids=ids, text_mask=text_mask)
        text_only_ref = hf(
            query_embeds=words(ids) + positions(torch.arange(5)), query_length=0, attention_mask=text_mask
        ).last_hidden_state
        text_only = ours.encode_text(ids, text_mask)
    real = torch.cat([torch.ones(2, 8, dtype=torch.bool), text_mask.bool()], 1)  # padded text rows are arbitrary
    torch.testing.assert_close(out[real], ref[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(text_only[text_mask.bool()], text_only_ref[text_mask.bool()], atol=1e-5, rtol=0)


def test_instructblip_qformer_parity_with_masks():
    hf, ours, query_tokens = _pair(InstructBlipQFormerModel, InstructBlipQFormerConfig, seed=2, text=True)
    memory, ids = torch.randn(2, 10, 24), torch.randint(1, 50, (2, 5))
    mem_mask, text_mask = _masks()
    with torch.no_grad():
        ref = hf(
            input_ids=ids,
            query_embeds=query_tokens.expand(2, -1, -1),
            attention_mask=torch.cat([torch.ones(2, 8, dtype=torch.long), text_mask], 1),
            encoder_hidden_states=memory,
            encoder_attention_mask=mem_mask,
        ).last_hidden_state
        out = ours(memory, mem_mask.bool(), text_ids=ids, text_mask=text_mask)
    torch.testing.assert_close(out[:, :8], ref[:, :8], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, 8:][text_mask.bool()], ref[:, 8:][text_mask.bool()], atol=1e-5, rtol=0)


def _tiny_blip2(tmp_path):
    cfg = Blip2Config(
        vision_config=dict(
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=1,
            num_attention_heads=4,
            image_size=32,
            patch_size=16,
        ),
        qformer_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
        text_config=dict(
            model_type="llama",
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        ),
        num_query_tokens=8,
    )
    torch.manual_seed(3)
    model = Blip2ForConditionalGeneration(cfg).eval()
    _randomise(model.qformer)
    with torch.no_grad():
        model.query_tokens.normal_()
        model.vision_model.post_layernorm.weight.normal_()
    model.save_pretrained(tmp_path / "blip2")
    return model, tmp_path / "blip2"


def test_blip2_checkpoint_folder_roundtrip(tmp_path):
    model, path = _tiny_blip2(tmp_path)
    ours = qformer_from_blip2(path).eval()
    assert not ours.supports_text and ours.num_query_tokens == 8 and len(ours.layers) == 2
    projection = torch.nn.Linear(32, 16)
    load_blip2_qformer(ours, path, projection=projection)
    memory = torch.randn(2, 5, 24)
    with torch.no_grad():
        ref = model.qformer(query_embeds=model.query_tokens.expand(2, -1, -1), encoder_hidden_states=memory)
        torch.testing.assert_close(ours(memory), ref.last_hidden_state, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            projection(ours(memory)), model.language_projection(ref.last_hidden_state), atol=1e-5, rtol=0
        )


def test_blip2_loads_into_per_frame_fusion(tmp_path):
    model, path = _tiny_blip2(tmp_path)
    fusion = FrameQFormerFusion(
        TokenLayout(24, (2, 2), 1),
        qformer=QFormerOptions(num_query_tokens=8, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64),
        video_num_query_tokens=4,
        video_num_layers=1,
    ).eval()
    loaded = load_blip2_fusion(fusion, path)
    assert "vision_model.post_layernorm.weight" in loaded
    torch.testing.assert_close(fusion.visual_norm.weight, model.vision_model.post_layernorm.weight)
    torch.testing.assert_close(fusion.frame_qformer.query_tokens, model.query_tokens)
    with pytest.raises(KeyError, match="text"):  # a generation checkpoint has no text weights for a text Q-Former
        load_blip2_qformer(
            QFormer(
                24,
                QFormerConfig(
                    num_query_tokens=8, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, vocab_size=50
                ),
            ),
            path,
        )
    with pytest.raises(KeyError, match="num_layers=2"):
        load_blip2_qformer(_ours(text=False), path)


@pytest.mark.parametrize("cls", [FrameQFormerFusion, JointQFormerFusion])
def test_either_fusion_starts_from_a_blip2_folder_by_path(tmp_path, cls):
    """`init_from_pretrained: <folder>` (as a YAML gives it) loads the BLIP-2 Q-Former into the Q-Former that reads
    the vision tokens, and BLIP-2's ln_vision into visual_norm."""
    model, path = _tiny_blip2(tmp_path)
    options = QFormerOptions(
        num_query_tokens=8,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        init_from_pretrained=str(path),
    )
    extra = dict(video_num_query_tokens=4, video_num_layers=1) if cls is FrameQFormerFusion else {}
    fusion = cls(TokenLayout(24, (2, 2), 1), qformer=options, **extra).eval()
    assert fusion.vision_qformer is (fusion.frame_qformer if cls is FrameQFormerFusion else fusion.qformer)
    torch.testing.assert_close(fusion.vision_qformer.query_tokens, model.query_tokens)
    torch.testing.assert_close(fusion.visual_norm.weight, model.vision_model.post_layernorm.weight)
    memory = torch.randn(2, 5, 24)
    with torch.no_grad():
        ref = model.qformer(query_embeds=model.query_tokens.expand(2, -1, -1), encoder_hidden_states=memory)
        torch.testing.assert_close(fusion.vision_qformer(memory), ref.last_hidden_state, atol=1e-5, rtol=0)
    fresh = cls(TokenLayout(24, (2, 2), 1), qformer=replace(options, init_from_pretrained=None), **extra)
    assert not torch.equal(fresh.vision_qformer.query_tokens, fusion.vision_qformer.query_tokens)
    with pytest.raises(KeyError, match="num_layers=2"):  # sizes that are not the checkpoint's fail by name
        cls(TokenLayout(24, (2, 2), 1), qformer=replace(options, num_layers=1), **extra)


def test_init_from_bert_matches_bert_text_encoder(tmp_path):
    torch.manual_seed(4)
    bert = BertModel(BertConfig(**TINY), add_pooling_layer=False).eval()  # the Q-Former's sizes (BERT ignores the rest)
    _randomise(bert)
    with torch.no_grad():
        bert.embeddings.token_type_embeddings.weight.zero_()  # the Q-Former has no token types
    bert.save_pretrained(tmp_path / "bert")
    ours = _ours(text=True)
    loaded = init_qformer_from_bert(ours, tmp_path / "bert")
    assert not any("cross_attn" in k for k in loaded) and "query_tokens" not in loaded
    ids = torch.randint(1, 50, (2, 5))
    _, text_mask = _masks()
    with torch.no_grad():
        ref = bert(input_ids=ids, attention_mask=text_mask).last_hidden_state
        out = ours.encode_text(ids, text_mask)
    torch.testing.assert_close(out[text_mask.bool()], ref[text_mask.bool()], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.layers[1].text_ffn.fc1.weight, ours.layers[1].ffn.fc1.weight)


def test_mismatched_checkpoint_is_a_clear_error():
    hf = Blip2QFormerModel(Blip2QFormerConfig(**{**TINY, "hidden_size": 16, "intermediate_size": 32}))
    with pytest.raises(ValueError, match="checkpoint shape"):
        load_blip2_qformer(_ours(text=False), {f"qformer.{k}": v for k, v in hf.state_dict().items()})
