"""Scorers against hand-computed log-likelihoods on a tiny Llama; batched scoring equals one option at a time."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vrp.evaluation.scorers import (
    GenerateScorer, LetterScorer, LikelihoodScorer, continuation_logprobs, parse_choice, tokenize_pairs,
)

Q = 3  # visual tokens per video


class _LM(nn.Module):
    def __init__(self, model, tokenizer):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer

    def forward(self, inputs_embeds, attention_mask, labels=None):
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask)


class ReasonerLike(nn.Module):
    """The VideoReasoner surface the scorers use: a linear 'encoder' and placeholder expansion into Q tokens."""

    def __init__(self, model, tokenizer):
        super().__init__()
        self.llm = _LM(model, tokenizer)
        self.video_token_id = tokenizer.convert_tokens_to_ids("<video>")
        self.proj = nn.Linear(3, Q * model.config.hidden_size)

    def encode_video(self, video, frame_mask, boxes=None, box_mask=None, text_ids=None, text_mask=None):
        return self.proj(video.mean((1, 3, 4))).view(len(video), Q, -1)  # (B, Q, D)

    def build_inputs(self, video_tokens, input_ids, attention_mask, labels=None):
        embed = self.llm.model.get_input_embeddings()
        rows_e, rows_m, rows_l = [], [], []
        for b in range(len(input_ids)):
            i = int((input_ids[b] == self.video_token_id).nonzero())
            e = embed(input_ids[b])
            rows_e.append(torch.cat([e[:i], video_tokens[b], e[i + 1 :]]))
            rows_m.append(torch.cat([attention_mask[b, :i], attention_mask.new_ones(Q), attention_mask[b, i + 1 :]]))
            rows_l.append(torch.cat([labels[b, :i], labels.new_full((Q,), -100), labels[b, i + 1 :]]))
        return torch.stack(rows_e), torch.stack(rows_m), torch.stack(rows_l)


@pytest.fixture()
def model(tiny_llama, tokenizer):
    torch.manual_seed(1)
    return ReasonerLike(tiny_llama, tokenizer).eval()


def _batch(n_options=(4, 5)):
    torch.manual_seed(2)
    base = ["red", "blue ball", "small green cube", "yellow", "big red ball"]
    options = [base[:n] for n in n_options]
    prompts = ["user : <video> what colour is the ball ? assistant :", "<video> what moves next ? answer :"]
    B = len(n_options)
    return {"video": torch.randn(B, 2, 3, 4, 4), "frame_mask": torch.ones(B, 2, dtype=torch.bool),
            "prompt": prompts[:B], "options": options, "answer_index": torch.zeros(B, dtype=torch.long)}


def _hand_logprob(model, tokenizer, batch, b, text_ids, prompt_ids):
    """Sum of log p(token | prefix), one prefix at a time, no padding, no batching."""
    video = model.encode_video(batch["video"][b : b + 1], batch["frame_mask"][b : b + 1])
    embed = model.llm.model.get_input_embeddings()
    i = prompt_ids.index(model.video_token_id)
    total = 0.0
    for k, tok in enumerate(text_ids):
        prefix = prompt_ids + text_ids[:k]
        e = torch.cat([embed(torch.tensor(prefix[:i])), video[0], embed(torch.tensor(prefix[i + 1 :]))])[None]
        logits = model.llm.model(inputs_embeds=e).logits[0, -1]
        total += torch.log_softmax(logits.double(), -1)[tok].item()
    return total


@torch.no_grad()
@pytest.mark.parametrize("normalize", [False, True])
def test_likelihood_matches_hand_computed(model, tokenizer, normalize):
    batch = _batch()
    out = LikelihoodScorer(length_normalize=normalize, append_eos=True)(model, batch)
    assert out.scores.shape == (2, 5)
    assert out.scores[0, 4] == -math.inf  # the 4-option row is padded
    for b in range(2):
        prompt_ids = tokenizer(batch["prompt"][b])["input_ids"]
        for o, option in enumerate(batch["options"][b]):
            text_ids = tokenizer(option, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            want = _hand_logprob(model, tokenizer, batch, b, text_ids, prompt_ids)
            want = want / len(text_ids) if normalize else want
            assert out.scores[b, o].item() == pytest.approx(want, abs=1e-4)
    assert torch.equal(out.prediction, out.scores.argmax(1))


@torch.no_grad()
def test_batched_equals_one_option_at_a_time(model):
    batch = _batch()
    scorer = LikelihoodScorer(length_normalize=False)
    together = scorer(model, batch).scores
    chunked = LikelihoodScorer(length_normalize=False, chunk_size=1)(model, batch).scores
    for b in range(2):
        for o, option in enumerate(batch["options"][b]):
            single = {**{k: v[b : b + 1] for k, v in batch.items() if torch.is_tensor(v)},
                      "prompt": [batch["prompt"][b]], "options": [[option]]}
            assert scorer(model, single).scores[0, 0].item() == pytest.approx(together[b, o].item(), abs=1e-4)
    torch.testing.assert_close(chunked, together, atol=1e-4, rtol=0)


@torch.no_grad()
def test_letter_scorer_reads_next_token_logits(model, tokenizer):
    batch = _batch()
    out = LetterScorer()(model, batch)
    letters = tokenizer.convert_tokens_to_ids(list("ABCDE"))
    for b in range(2):
        prompt_ids = tokenizer(batch["prompt"][b])["input_ids"]
        for o in range(len(batch["options"][b])):
            want = _hand_logprob(model, tokenizer, batch, b, [letters[o]], prompt_ids)
            assert out.scores[b, o].item() == pytest.approx(want, abs=1e-4)
    assert out.scores[0, 4] == -math.inf


def test_letter_format_must_give_distinct_tokens(tokenizer):
    with pytest.raises(ValueError, match="distinct first token"):
        LetterScorer("answer {letter}").letter_token_ids(tokenizer, 3)


def test_continuation_logprobs_ignores_unlabelled():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = math.log(3.0)  # p(2) = 3/6
    labels = torch.tensor([[-100, 2, -100]])
    total, n = continuation_logprobs(logits, labels)
    assert n.item() == 1 and total.item() == pytest.approx(math.log(0.5))


def test_tokenize_pairs_labels_cover_target_only(tokenizer):
    enc = tokenize_pairs(tokenizer, ["<video> what ?", "<video> the ball is"], ["red", "big red ball"],
                         append_eos=True, padding_side="left")
    eos = tokenizer.eos_token_id
    assert enc["labels"][0].tolist()[-2:] == [tokenizer.convert_tokens_to_ids("red"), eos]
    assert (enc["labels"][1] != -100).sum() == 4 and enc["attention_mask"][0, 0] == 0


@pytest.mark.parametrize("text,want", [
    ("B", 1), ("(C) small", 2), ("Answer: A.", 0), ("blue ball", 1), ("it is yellow", 3), ("", -1), ("E", -1),
    ("red", 0), ("ball", 1), ("small ball", -1),
])
def test_parse_choice(text, want):
    assert parse_choice(text, ["red", "blue ball", "small green cube", "yellow"]) == want


def test_generate_scorer_parses_answers(model):
    class Fixed(GenerateScorer):
        def generate(self, model, batch):
            return ["B", "nonsense"]

    out = Fixed()(model, _batch())
    assert out.prediction.tolist() == [1, -1] and out.text == ["B", "nonsense"]
    assert out.scores[0].tolist()[:4] == [0, 1, 0, 0]
