"""Multiple-choice scorers: candidate likelihood, option-letter logits, and generate-and-parse.

Every scorer is called as ``scorer(model, batch) -> MCOutput`` with a `VideoReasoner`-like ``model`` (``encode_video``,
``build_inputs``, ``llm`` with ``tokenizer``) and a multiple-choice batch (data_modules/batch.py): ``video``,
``frame_mask``, ``prompt`` (the rendered prompt text holding one video placeholder, ending where the answer starts),
``options`` and optionally ``boxes``/``box_mask``/``qformer_input_ids``/``qformer_attention_mask``. Options may be
ragged (4 and 5 choices in one batch); missing or empty options score ``-inf``.

The video is encoded once per question; the likelihood scorer then scores all (question, option) pairs in ONE
batched LLM forward by repeating the visual tokens over the options.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
LETTERS = string.ascii_uppercase


@dataclass
class MCOutput:
    """Scores (B, O) (-inf where no option), predicted index (B,) (-1 if none could be parsed), generated text."""

    scores: torch.Tensor
    prediction: torch.Tensor
    text: list[str] | None = field(default=None)


def continuation_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over labelled positions of log p(label_t | tokens < t), and the number of such positions.

    logits (N, L, V) from a causal LM over the same sequence as labels (N, L); labels are -100 where not scored.
    Returns (N,) float32 sums and (N,) int64 counts.
    """
    target = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none")
    return -nll.sum(1), (target != IGNORE_INDEX).sum(1)


def pad_options(options: Sequence[Sequence[str]]) -> tuple[list[list[str]], torch.Tensor]:
    """Pad ragged option lists with "" to the widest row; mask (B, O) True where a non-empty option exists."""
    width = max(len(o) for o in options)
    padded = [list(o) + [""] * (width - len(o)) for o in options]
    mask = torch.tensor([[bool(str(x).strip()) for x in row] for row in padded], dtype=torch.bool)
    return padded, mask


def tokenize_pairs(
    tokenizer: Any, prompts: Sequence[str], targets: Sequence[str], *, append_eos: bool, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Tokenise prompt and target separately (as the collate functions do) and concatenate; labels on the target.

    The prompt gets the tokenizer's special tokens (BOS); the target none, plus EOS if ``append_eos``.
    Returns input_ids, attention_mask, labels, each (N, L), padded on ``padding_side``.
    """
    prompt_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    target_ids = tokenizer(list(targets), add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if append_eos else []
    if append_eos and tokenizer.eos_token_id is None:
        raise ValueError("append_eos=True but the tokenizer has no eos_token; set append_eos=False")
    seqs, labs = [], []
    for p, t in zip(prompt_ids, target_ids):
        seqs.append(p + t + eos)
        labs.append([IGNORE_INDEX] * len(p) + t + eos)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    labels = torch.full((len(seqs), length), IGNORE_INDEX, dtype=torch.long)
    for i, (s, lab) in enumerate(zip(seqs, labs)):
        sl = slice(0, len(s)) if padding_side == "right" else slice(length - len(s), length)
        ids[i, sl], mask[i, sl], labels[i, sl] = torch.tensor(s), 1, torch.tensor(lab)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def encode_video(model: Any, batch: dict, *, device: torch.device | None = None) -> torch.Tensor:
    """Visual tokens (B, Q, D_llm) of a batch through ``model.encode_video`` (question text to the Q-Former if given)."""
    device = device or next(model.parameters()).device

    def get(key: str) -> torch.Tensor | None:
        value = batch.get(key)
        return value.to(device) if isinstance(value, torch.Tensor) else None

    return model.encode_video(
        get("video"), get("frame_mask"), boxes=get("boxes"), box_mask=get("box_mask"),
        text_ids=get("qformer_input_ids"), text_mask=get("qformer_attention_mask"),
    )


def _logits(model: Any, video_tokens: torch.Tensor, enc: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """LM logits (N, L', V) and labels (N, L') after the placeholder is expanded into the visual tokens."""
    device = video_tokens.device
    embeds, mask, labels = model.build_inputs(
        video_tokens, enc["input_ids"].to(device), enc["attention_mask"].to(device), enc["labels"].to(device)
    )
    return model.llm(embeds, mask).logits, labels


class LikelihoodScorer:
    """Score each option by the LM log-likelihood of its tokens after the prompt; pick the highest.

    ``length_normalize`` divides by the number of option tokens (mean log-prob), which removes the bias towards short
    options; ``append_eos`` also scores the end of the answer (so "red" is not rewarded as a prefix of "red ball").
    ``chunk_size`` caps the (question, option) rows per forward to bound memory on big models (None = all at once).
    """

    def __init__(self, length_normalize: bool = True, append_eos: bool = True, chunk_size: int | None = None) -> None:
        self.length_normalize = length_normalize
        self.append_eos = append_eos
        self.chunk_size = chunk_size

    @torch.no_grad()
    def __call__(self, model: Any, batch: dict) -> MCOutput:
        options, valid = pad_options(batch["options"])
        B, O = valid.shape
        video_tokens = encode_video(model, batch)  # (B, Q, D)
        prompts = [p for p in batch["prompt"] for _ in range(O)]
        targets = [o if o.strip() else "?" for row in options for o in row]  # placeholders are masked below
        enc = tokenize_pairs(model.llm.tokenizer, prompts, targets, append_eos=self.append_eos)
        tokens = video_tokens.repeat_interleave(O, dim=0)  # (B*O, Q, D)
        step = self.chunk_size or B * O
        sums, counts = [], []
        for s in range(0, B * O, step):
            chunk = {k: v[s : s + step] for k, v in enc.items()}
            logits, labels = _logits(model, tokens[s : s + step], chunk)
            total, n = continuation_logprobs(logits, labels)
            sums.append(total)
            counts.append(n)
        total, n = torch.cat(sums).view(B, O), torch.cat(counts).view(B, O)
        scores = total / n.clamp_min(1) if self.length_normalize else total
        scores = scores.cpu().masked_fill(~valid, float("-inf"))
        return MCOutput(scores=scores, prediction=scores.argmax(1))


class LetterScorer:
    """Score each option by the logit of its letter as the first answer token (prompt lists options as letters).

    ``letter_format`` renders the target the model was trained to emit for option i (e.g. "{letter}" or "({letter})");
    its first token is the one scored. One forward over the prompts, no option text needed.
    """

    def __init__(self, letter_format: str = "{letter}") -> None:
        self.letter_format = letter_format

    def letter_token_ids(self, tokenizer: Any, n: int) -> list[int]:
        ids = [tokenizer(self.letter_format.format(letter=LETTERS[i]), add_special_tokens=False)["input_ids"]
               for i in range(n)]
        first = [x[0] for x in ids if x]
        if len(first) != n or len(set(first)) != n:
            raise ValueError(f"letter_format {self.letter_format!r} does not give a distinct first token per letter "
                             f"with this tokenizer: {ids}; use a format whose letters tokenise separately")
        return first

    @torch.no_grad()
    def __call__(self, model: Any, batch: dict) -> MCOutput:
        _, valid = pad_options(batch["options"])
        B, O = valid.shape
        tokenizer = model.llm.tokenizer
        letter_ids = torch.tensor(self.letter_token_ids(tokenizer, O))
        video_tokens = encode_video(model, batch)
        # A one-token dummy target marks where the answer starts: its label position is the first answer token.
        enc = tokenize_pairs(tokenizer, batch["prompt"], [self.letter_format.format(letter="A")] * B, append_eos=False)
        logits, labels = _logits(model, video_tokens, enc)
        # Logits that predict the first answer token sit one position before its label.
        pos = (labels != IGNORE_INDEX).float().argmax(1) - 1  # (B,)
        logp = logits[torch.arange(B, device=logits.device), pos].float().log_softmax(-1).cpu()  # (B, V)
        scores = logp[:, letter_ids].masked_fill(~valid, float("-inf"))
        return MCOutput(scores=scores, prediction=scores.argmax(1))


_LETTER_RE = re.compile(r"^\W*\(?([A-Z])\)?(?:[\s.:)\],]|$)")


def parse_choice(text: str, options: Sequence[str]) -> int:
    """Index of the option a free-form answer names, or -1.

    Accepted, in order: a leading letter ("B", "(B)", "B. ...", "Answer: B"), the exact option text (normalised),
    then the option sharing the most words with the answer (ties and no overlap give -1).
    """
    from vrp.evaluation.metrics import normalize_answer

    valid = [i for i, o in enumerate(options) if str(o).strip()]
    stripped = re.sub(r"^\s*(answer|option)\s*[:\-]?\s*", "", text.strip(), flags=re.IGNORECASE)
    m = _LETTER_RE.match(stripped)
    if m and LETTERS.index(m.group(1)) in valid:
        return LETTERS.index(m.group(1))
    norm = normalize_answer(text)
    for i in valid:
        if normalize_answer(options[i]) == norm:
            return i
    words = set(norm.split())
    overlap = [(len(words & set(normalize_answer(options[i]).split())), i) for i in valid]
    best = max((c for c, _ in overlap), default=0)
    winners = [i for c, i in overlap if c == best]
    return winners[0] if best > 0 and len(winners) == 1 else -1


class GenerateScorer:
    """Generate a free-form answer after the prompt and parse it to an option (letter or text); also for open QA."""

    def __init__(self, max_new_tokens: int = 16) -> None:
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def generate(self, model: Any, batch: dict) -> list[str]:
        """Greedy answers for ``batch["prompt"]`` (B strings), prompts left-padded so generation continues each row."""
        tokenizer = model.llm.tokenizer
        device = next(model.parameters()).device
        enc = tokenize_pairs(tokenizer, batch["prompt"], [""] * len(batch["prompt"]), append_eos=False,
                             padding_side="left")
        gen_batch = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "labels")}
        gen_batch["input_ids"], gen_batch["attention_mask"] = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        return model.generate(gen_batch, max_new_tokens=self.max_new_tokens)

    def __call__(self, model: Any, batch: dict) -> MCOutput:
        options, valid = pad_options(batch["options"])
        text = self.generate(model, batch)
        pred = torch.tensor([parse_choice(t, o) for t, o in zip(text, options)], dtype=torch.long)
        scores = torch.zeros(valid.shape).masked_fill(~valid, float("-inf"))
        hit = pred >= 0
        scores[hit.nonzero().squeeze(1), pred[hit]] = 1.0
        return MCOutput(scores=scores, prediction=pred, text=list(text))
