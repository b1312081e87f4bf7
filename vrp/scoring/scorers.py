"""Multiple-choice scorers: candidate likelihood, option-letter logits, and generate-and-parse.

Every scorer is called as ``scorer(model, batch) -> MCOutput`` with a `VideoReasoner`-like ``model`` (``video_tokens``,
``build_inputs``, ``llm`` with ``tokenizer``) and a multiple-choice batch (data_modules/batch.py): ``video``,
``frame_mask``, ``prompt`` (the user turn as the collator keeps it: placeholder stripped, no chat template),
``options`` and optionally ``boxes``/``box_mask``/``qformer_input_ids``/``qformer_attention_mask``. Options may be
ragged (4 and 5 choices in one batch); missing or empty options score ``-inf``.

The video is encoded once per question; the likelihood scorer then scores all (question, option) pairs in ONE
batched LLM forward by repeating the visual tokens over the options.
"""

from __future__ import annotations

import copy
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from data_modules.collate import encode_turns
from vrp.models.constants import IGNORE_INDEX

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


def greedy_match(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) bool: every labelled token is the argmax of the logits before it (what greedy decoding would emit)."""
    target = labels[:, 1:]
    hit = (logits[:, :-1].argmax(-1) == target) | (target == IGNORE_INDEX)
    return hit.all(1)


def pad_options(options: Sequence[Sequence[str]]) -> tuple[list[list[str]], torch.Tensor]:
    """Pad ragged option lists with "" to the widest row; mask (B, O) True where a non-empty option exists."""
    width = max(len(o) for o in options)
    padded = [list(o) + [""] * (width - len(o)) for o in options]
    mask = torch.tensor([[bool(str(x).strip()) for x in row] for row in padded], dtype=torch.bool)
    return padded, mask


def encode_candidates(
    tokenizer: Any,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    score_end_of_turn: bool = True,
    use_chat_template: bool = True,
    system_prompt: str | None = None,
    padding_side: str = "right",
    visual: bool = True,
) -> dict[str, torch.Tensor]:
    """Tokenise (prompt, answer) pairs exactly as training collation does (`data_modules.collate.encode_turns`:
    placeholder in front when the prompt has none, chat template, labels on the answer and its end-of-turn text).

    ``score_end_of_turn=False`` keeps labels on the answer's own tokens only. ``use_chat_template``/``system_prompt``
    must match the datamodule's collator; ``visual=False`` encodes text-only pairs (no placeholder). Returns
    input_ids, attention_mask, labels, each (N, L).
    """
    if not use_chat_template and tokenizer.chat_template is not None:
        tokenizer = copy.copy(tokenizer)  # shares the backend; only this copy loses its template
        tokenizer.chat_template = None
    seqs, labs = [], []
    for prompt, target in zip(prompts, targets):
        ids, labels = encode_turns(tokenizer, [(prompt, target)], system_prompt=system_prompt, visual=visual)
        if not score_end_of_turn:
            start = next(i for i, x in enumerate(labels) if x != IGNORE_INDEX)
            n = len(tokenizer(target, add_special_tokens=False)["input_ids"])
            labels = labels[: start + n] + [IGNORE_INDEX] * (len(labels) - start - n)
        seqs.append(ids)
        labs.append(labels)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    length = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    labels = torch.full((len(seqs), length), IGNORE_INDEX, dtype=torch.long)
    for i, (x, lab) in enumerate(zip(seqs, labs)):
        sl = slice(0, len(x)) if padding_side == "right" else slice(length - len(x), length)
        ids[i, sl], mask[i, sl], labels[i, sl] = torch.tensor(x), 1, torch.tensor(lab)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def prompt_only(enc: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut right-padded pairs from `encode_candidates` before their answer and re-pad on the left (for generate)."""
    starts = (enc["labels"] != IGNORE_INDEX).float().argmax(1).tolist()  # first answer token of each row
    length = max(starts)
    ids = enc["input_ids"].new_zeros(len(starts), length)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(starts):
        ids[i, length - s :], mask[i, length - s :] = enc["input_ids"][i, :s], 1
    return {"input_ids": ids, "attention_mask": mask}


def _logits(model: Any, video_tokens: torch.Tensor, enc: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """LM logits (N, L', V) and labels (N, L') after the placeholder is expanded into the visual tokens."""
    device = video_tokens.device
    embeds, mask, labels = model.build_inputs(
        video_tokens, enc["input_ids"].to(device), enc["attention_mask"].to(device), enc["labels"].to(device)
    )
    return model.llm(embeds, mask).logits, labels


class _Prompting:
    """How prompts are rendered; must match the datamodule's collator (chat template on/off, system prompt)."""

    def __init__(self, use_chat_template: bool = True, system_prompt: str | None = None) -> None:
        self.use_chat_template, self.system_prompt = use_chat_template, system_prompt

    def encode(self, tokenizer: Any, prompts: Sequence[str], targets: Sequence[str], **kw: Any) -> dict:
        return encode_candidates(
            tokenizer,
            prompts,
            targets,
            use_chat_template=self.use_chat_template,
            system_prompt=self.system_prompt,
            **kw,
        )


class LikelihoodScorer(_Prompting):
    """Score each option by the LM log-likelihood of its answer tokens after the prompt; pick the highest.

    ``target_format`` renders option i the way training rendered answers (``{text}``, ``{letter}``, or e.g.
    ``({letter}) {text}``). ``length_normalize`` divides by the number of scored tokens (mean log-prob), which removes
    the bias towards short options; ``score_end_of_turn`` also scores the end-of-answer tokens (so "red" is not
    rewarded as a prefix of "red ball"). ``chunk_size`` caps the (question, option) rows per LLM forward to bound
    memory on big models (None = all options of the batch in one forward).
    """

    def __init__(
        self,
        length_normalize: bool = True,
        score_end_of_turn: bool = True,
        target_format: str = "{text}",
        chunk_size: int | None = None,
        use_chat_template: bool = True,
        system_prompt: str | None = None,
    ) -> None:
        super().__init__(use_chat_template, system_prompt)
        self.length_normalize, self.score_end_of_turn = length_normalize, score_end_of_turn
        self.target_format, self.chunk_size = target_format, chunk_size

    @torch.no_grad()
    def pair_logprobs(
        self,
        model: Any,
        video_tokens: torch.Tensor,
        prompts: Sequence[str],
        targets: Sequence[str],
        *,
        visual: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Summed log-probability (N,), scored-token count (N,) and greedy flag (N,) of each target after its prompt,
        row i seeing ``video_tokens[i]`` (N, Q, D), in forwards of ``chunk_size`` rows (the lmms-eval adapter's
        ``loglikelihood`` is this too)."""
        enc = self.encode(
            model.llm.tokenizer, prompts, targets, score_end_of_turn=self.score_end_of_turn, visual=visual
        )
        N = len(prompts)
        step = self.chunk_size or N
        sums, counts, greedy = [], [], []
        for s in range(0, N, step):
            logits, labels = _logits(model, video_tokens[s : s + step], {k: v[s : s + step] for k, v in enc.items()})
            total, n = continuation_logprobs(logits, labels)
            sums.append(total)
            counts.append(n)
            greedy.append(greedy_match(logits, labels))
        return torch.cat(sums), torch.cat(counts), torch.cat(greedy)

    @torch.no_grad()
    def __call__(self, model: Any, batch: dict) -> MCOutput:
        options, valid = pad_options(batch["options"])
        B, O = valid.shape
        video_tokens = model.video_tokens(batch)  # (B, Q, D) once per question
        prompts = [p for p in batch["prompt"] for _ in range(O)]
        targets = [
            self.target_format.format(letter=LETTERS[i], text=o if o.strip() else "?")  # "?" rows masked
            for row in options
            for i, o in enumerate(row)
        ]
        total, n, _ = self.pair_logprobs(model, video_tokens.repeat_interleave(O, dim=0), prompts, targets)
        total, n = total.view(B, O), n.view(B, O)
        scores = total / n.clamp_min(1) if self.length_normalize else total
        scores = scores.cpu().masked_fill(~valid, float("-inf"))
        return MCOutput(scores=scores, prediction=scores.argmax(1))


class LetterScorer(_Prompting):
    """Score each option by the log-probability of its letter as the first answer token; one forward, prompts only.

    For prompts that list the options as letters (``MultipleChoice(target="letter")``). ``letter_format`` renders
    the answer the model was trained to emit for option i (``{letter}`` or ``({letter})``); its first token is scored.
    """

    def __init__(
        self, letter_format: str = "{letter}", use_chat_template: bool = True, system_prompt: str | None = None
    ) -> None:
        super().__init__(use_chat_template, system_prompt)
        self.letter_format = letter_format

    def letter_token_ids(self, tokenizer: Any, n: int) -> list[int]:
        ids = [
            tokenizer(self.letter_format.format(letter=LETTERS[i]), add_special_tokens=False)["input_ids"]
            for i in range(n)
        ]
        first = [x[0] for x in ids if x]
        if len(first) != n or len(set(first)) != n:
            raise ValueError(
                f"letter_format {self.letter_format!r} does not give a distinct first token per letter "
                f"with this tokenizer: {ids}; use a format whose letters tokenise separately"
            )
        return first

    @torch.no_grad()
    def __call__(self, model: Any, batch: dict) -> MCOutput:
        _, valid = pad_options(batch["options"])
        B, O = valid.shape
        tokenizer = model.llm.tokenizer
        letter_ids = torch.tensor(self.letter_token_ids(tokenizer, O))
        video_tokens = model.video_tokens(batch)
        enc = self.encode(tokenizer, batch["prompt"], [self.letter_format.format(letter="A")] * B)
        logits, labels = _logits(model, video_tokens, enc)
        # The logits that predict the first answer token sit one position before its label.
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
    from vrp.scoring.metrics import normalize_answer

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


class GenerateScorer(_Prompting):
    """Generate a free-form answer after the prompt (greedy) and parse it to an option (letter or text).

    ``generate(model, batch)`` alone serves open-ended questions (no ``options`` needed).
    """

    def __init__(
        self, max_new_tokens: int = 16, use_chat_template: bool = True, system_prompt: str | None = None
    ) -> None:
        super().__init__(use_chat_template, system_prompt)
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def generate(self, model: Any, batch: dict) -> list[str]:
        """Answers to ``batch["prompt"]`` (B strings); prompts are rendered as in training, left-padded."""
        device = next(model.parameters()).device
        if "video" not in batch:
            raise KeyError("generation needs decoded 'video' in the batch (not cached visual tokens)")
        enc = prompt_only(self.encode(model.llm.tokenizer, batch["prompt"], ["x"] * len(batch["prompt"])))
        gen_batch = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "labels")}
        gen_batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in gen_batch.items()}
        gen_batch["input_ids"], gen_batch["attention_mask"] = (
            enc["input_ids"].to(device),
            enc["attention_mask"].to(device),
        )
        return model.generate(gen_batch, max_new_tokens=self.max_new_tokens)

    def __call__(self, model: Any, batch: dict) -> MCOutput:
        options, valid = pad_options(batch["options"])
        text = self.generate(model, batch)
        pred = torch.tensor([parse_choice(t, o) for t, o in zip(text, options)], dtype=torch.long)
        scores = torch.zeros(valid.shape).masked_fill(~valid, float("-inf"))
        hit = pred >= 0
        scores[hit.nonzero().squeeze(1), pred[hit]] = 1.0
        return MCOutput(scores=scores, prediction=pred, text=list(text))
