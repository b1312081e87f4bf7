"""Scorers against hand-computed log-likelihoods on a tiny VideoReasoner; batched scoring equals one option at a
time; letter and generate-and-parse scorers."""

from __future__ import annotations

import math

import pytest
import torch

from data_modules.collate import encode_turns
from vrp.scoring.scorers import (
    GenerateScorer,
    LetterScorer,
    LikelihoodScorer,
    continuation_logprobs,
    encode_candidates,
    parse_choice,
    prompt_only,
)


def _batch(n_options=(4, 5)):
    torch.manual_seed(2)
    base = ["red", "blue ball", "small green cube", "yellow", "big red ball"]
    prompts = ["what colour is the ball ?", "what moves next ? answer :"]
    B = len(n_options)
    return {
        "video": torch.randn(B, 2, 3, 16, 16),
        "frame_mask": torch.ones(B, 2, dtype=torch.bool),
        "prompt": prompts[:B],
        "options": [base[:n] for n in n_options],
        "answer_index": torch.zeros(B, dtype=torch.long),
    }


def _next_logprobs(model, batch, b, prefix):
    """log p(. | prefix) for one unpadded sequence with the video tokens at its placeholder (no batching)."""
    video = model.encode_video(batch["video"][b : b + 1], batch["frame_mask"][b : b + 1])[0]  # (Q, D)
    embed = model.llm.model.get_input_embeddings()
    i = prefix.index(model.llm.video_token_id)
    e = torch.cat([embed(torch.tensor(prefix[:i])), video, embed(torch.tensor(prefix[i + 1 :]))])[None]
    return torch.log_softmax(model.llm.model(inputs_embeds=e).logits[0, -1].double(), -1)


def _hand_logprob(model, batch, b, prompt_ids, answer_ids):
    """Sum of log p(token | prefix), one prefix at a time."""
    return sum(
        _next_logprobs(model, batch, b, prompt_ids + answer_ids[:k])[tok].item() for k, tok in enumerate(answer_ids)
    )


def _split(tokenizer, prompt, answer):
    ids, labels = encode_turns(tokenizer, [(prompt, answer)])
    start = next(i for i, x in enumerate(labels) if x != -100)
    return ids[:start], ids[start:]


@pytest.fixture(scope="module")
def hand(reasoner):
    """Hand-computed (sum log-prob, token count) per (row, option) of `_batch()`."""
    batch, out = _batch(), {}
    with torch.no_grad():
        for b in range(2):
            for o, option in enumerate(batch["options"][b]):
                prompt_ids, answer_ids = _split(reasoner.llm.tokenizer, batch["prompt"][b], option)
                assert answer_ids[-1] == reasoner.llm.tokenizer.eos_token_id  # end of answer is scored
                out[b, o] = _hand_logprob(reasoner, batch, b, prompt_ids, answer_ids), len(answer_ids)
    return out


@torch.no_grad()
def test_likelihood_matches_hand_computed(reasoner, hand):
    batch = _batch()
    raw = LikelihoodScorer(length_normalize=False)(reasoner, batch)
    norm = LikelihoodScorer(length_normalize=True)(reasoner, batch)
    assert raw.scores.shape == (2, 5) and raw.scores[0, 4] == -math.inf  # the 4-option row is padded
    for (b, o), (total, n) in hand.items():
        assert raw.scores[b, o].item() == pytest.approx(total, abs=1e-4)
        assert norm.scores[b, o].item() == pytest.approx(total / n, abs=1e-4)
    assert torch.equal(norm.prediction, norm.scores.argmax(1))


@torch.no_grad()
def test_without_end_of_turn_scores_answer_tokens_only(reasoner):
    batch = _batch((2,))
    out = LikelihoodScorer(length_normalize=False, score_end_of_turn=False)(reasoner, batch)
    prompt_ids, answer_ids = _split(reasoner.llm.tokenizer, batch["prompt"][0], "blue ball")
    want = _hand_logprob(reasoner, batch, 0, prompt_ids, answer_ids[:-1])
    assert out.scores[0, 1].item() == pytest.approx(want, abs=1e-4)


@torch.no_grad()
def test_batched_equals_one_option_at_a_time(reasoner):
    batch = _batch()
    scorer = LikelihoodScorer(length_normalize=False)
    together = scorer(reasoner, batch).scores
    one_at_a_time = torch.full_like(together, -math.inf)
    for b in range(2):
        for o, option in enumerate(batch["options"][b]):
            single = {
                "video": batch["video"][b : b + 1],
                "frame_mask": batch["frame_mask"][b : b + 1],
                "prompt": [batch["prompt"][b]],
                "options": [[option]],
            }
            one_at_a_time[b, o] = scorer(reasoner, single).scores[0, 0]
    torch.testing.assert_close(together, one_at_a_time, atol=1e-4, rtol=0)
    chunked = LikelihoodScorer(length_normalize=False, chunk_size=3)(reasoner, batch).scores
    torch.testing.assert_close(chunked, together, atol=1e-4, rtol=0)


@torch.no_grad()
def test_letter_scorer_reads_first_answer_token(reasoner):
    batch = _batch()
    out = LetterScorer()(reasoner, batch)
    tok = reasoner.llm.tokenizer
    for b in range(2):
        prompt_ids, _ = _split(tok, batch["prompt"][b], "A")
        logp = _next_logprobs(reasoner, batch, b, prompt_ids)
        for o in range(len(batch["options"][b])):
            want = logp[tok.convert_tokens_to_ids("ABCDE"[o])].item()
            assert out.scores[b, o].item() == pytest.approx(want, abs=1e-4)
    assert out.scores[0, 4] == -math.inf


def test_letter_format_must_give_distinct_tokens(tokenizer):
    with pytest.raises(ValueError, match="distinct first token"):
        LetterScorer("answer {letter}").letter_token_ids(tokenizer, 3)


def test_continuation_logprobs_ignores_unlabelled():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = math.log(3.0)  # p(2 | first token) = 3/6
    total, n = continuation_logprobs(logits, torch.tensor([[-100, 2, -100]]))
    assert n.item() == 1 and total.item() == pytest.approx(math.log(0.5))


def test_encode_candidates_and_prompt_only(tokenizer):
    enc = encode_candidates(tokenizer, ["what ?", "the ball is"], ["red", "big red ball"])
    assert (enc["labels"] != -100).sum(1).tolist() == [2, 4]  # answer + eos
    assert enc["attention_mask"][0].sum() < enc["attention_mask"][1].sum()
    p = prompt_only(enc)
    assert p["attention_mask"][:, -1].all() and not p["attention_mask"][0, 0]
    assert tokenizer.decode(p["input_ids"][1][p["attention_mask"][1].bool()]).endswith("ASSISTANT :")


@pytest.mark.parametrize(
    "text,want",
    [
        ("B", 1),
        ("(C) small", 2),
        ("Answer: A.", 0),
        ("blue ball", 1),
        ("it is yellow", 3),
        ("", -1),
        ("E", -1),
        ("red", 0),
        ("ball", 1),
        ("small ball", -1),
    ],
)
def test_parse_choice(text, want):
    assert parse_choice(text, ["red", "blue ball", "small green cube", "yellow"]) == want


@torch.no_grad()
def test_generate_scorer_runs_the_model_and_parses(reasoner):
    batch = _batch()
    out = GenerateScorer(max_new_tokens=3)(reasoner, batch)
    assert len(out.text) == 2 and out.prediction.shape == (2,)
    for t, p, opts in zip(out.text, out.prediction.tolist(), batch["options"]):
        assert p == parse_choice(t, opts)
        assert out.scores[0, 4] == -math.inf and (p < 0 or out.scores[batch["options"].index(opts), p] == 1)
