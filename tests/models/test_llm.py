import pytest
import torch
from tiny_assets import TINY_LLM

from vrp.models.llm import CausalLM


@pytest.fixture(scope="module")
def llm(tokenizer_dir):
    torch.manual_seed(0)
    return CausalLM(config={**TINY_LLM, "hidden_size": 64}, tokenizer=str(tokenizer_dir))


def test_tiny_llama_from_config_takes_vocab_from_tokenizer(llm):
    tok = llm.tokenizer
    assert llm.hidden_size == 64
    assert llm.model.config.vocab_size == len(tok)
    assert llm.video_token_id == tok.convert_tokens_to_ids("<video>")
    assert llm.model.config.pad_token_id == tok.pad_token_id
    assert llm.embed(torch.tensor([[1, 2, 3]])).shape == (1, 3, 64)


def test_missing_video_token_is_added_and_embeddings_resized(tmp_path, make_tokenizer):
    tok_dir = make_tokenizer(tmp_path, video_token=False)
    llm = CausalLM(config=TINY_LLM, tokenizer=str(tok_dir), dtype="float32")
    assert llm.tokenizer.convert_tokens_to_ids("<video>") == llm.video_token_id == len(llm.tokenizer) - 1
    assert llm.model.get_input_embeddings().num_embeddings >= len(llm.tokenizer)
    assert llm.tokenizer("<video> what", add_special_tokens=False).input_ids[0] == llm.video_token_id


def test_config_route_needs_tokenizer_and_model_type(tokenizer_dir):
    with pytest.raises(ValueError, match="tokenizer"):
        CausalLM(config=TINY_LLM)
    with pytest.raises(ValueError, match="model_type"):
        CausalLM(config={"hidden_size": 32}, tokenizer=str(tokenizer_dir))


def test_left_padding_gives_the_same_logits_as_no_padding(llm):
    ids = torch.tensor([[1, 6, 7, 8, 9]])
    ref = llm(llm.embed(ids), torch.ones_like(ids)).logits
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids], 1)
    mask = (padded != 0).long()
    out = llm(llm.embed(padded), mask).logits[:, 2:]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_loss_uses_labels(llm):
    ids = torch.tensor([[1, 6, 7, 8, 9]])
    labels = ids.clone()
    labels[:, :3] = -100
    out = llm(llm.embed(ids), torch.ones_like(ids), labels=labels)
    logits = out.logits[0, 2:4]
    expected = torch.nn.functional.cross_entropy(logits, ids[0, 3:5])
    torch.testing.assert_close(out.loss, expected)


def test_generate_returns_only_new_tokens(llm):
    ids = torch.tensor([[0, 1, 6, 7], [1, 8, 9, 10]])
    mask = (ids != 0).long()
    new = llm.generate(llm.embed(ids), mask, max_new_tokens=3)
    assert new.shape[0] == 2 and new.shape[1] <= 3
    single = llm.generate(llm.embed(ids[:1, 1:]), mask[:1, 1:], max_new_tokens=3)
    assert new[0, : single.shape[1]].tolist() == single[0].tolist()  # left padding does not change the answer


def test_lora_trains_only_adapters_on_target_modules(tokenizer_dir):
    llm = CausalLM(
        config=TINY_LLM,
        tokenizer=str(tokenizer_dir),
        lora_rank=4,
        lora_target_modules=["q_proj", "o_proj"],
    )
    llm.freeze()
    llm.enable_lora()
    trainable = {n for n, p in llm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n in trainable} == {"q_proj", "o_proj"}
    with pytest.raises(RuntimeError, match="already"):
        llm.enable_lora()


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_hf_causal_lm_round_trip_by_path(tmp_path, tokenizer_dir, model_type):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = AutoConfig.for_model(
        model_type,
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    ref = AutoModelForCausalLM.from_config(cfg).eval()
    ref.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    llm = CausalLM(str(tmp_path)).eval()
    assert llm.hidden_size == 32 and llm.video_token_id == tok.convert_tokens_to_ids("<video>")
    ids = torch.tensor([[1, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(llm(llm.embed(ids), torch.ones_like(ids)).logits, ref(input_ids=ids).logits)
    assert llm.tokenizer.chat_template  # chat template comes from the checkpoint
