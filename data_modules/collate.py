"""Collation: stack clips, tokenise conversations with the LLM's tokenizer and chat template, mask labels.

Each prompt gets exactly ONE video placeholder token (where the source text has ``<video>``, else in front of the
first user turn); the model expands it to its Q visual tokens. A text-only sample (``modality == "text"``) gets
none, and the model gives it no visual tokens. A sample's own ``system`` prompt replaces the collator's. Labels cover the assistant texts (with the
end-of-turn text the chat template puts after them, so the model learns to stop) and nothing else.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from tokenizers import AddedToken
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from data_modules.batch import IGNORE_INDEX, VIDEO_TOKEN, Batch
from data_modules.packing import Packing, TokenBudget, first_fit, next_fit
from data_modules.skips import SkipCounter
from data_modules.sources.record import Record, strip_placeholder
from vrp.models.paths import pretrained_source

log = logging.getLogger(__name__)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """AutoTokenizer with the ``<video>`` special token added if missing (the model side adds it the same way, so
    ids agree) and a pad token (eos if the tokenizer has none)."""
    tok = AutoTokenizer.from_pretrained(pretrained_source(name_or_path, "tokenizer"))
    if VIDEO_TOKEN not in tok.get_vocab():
        tok.add_tokens([AddedToken(VIDEO_TOKEN, special=True, normalized=False)], special_tokens=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def encode_turns(
    tok: PreTrainedTokenizerBase, turns: list[tuple[str, str]], *, system_prompt: str | None = None, visual: bool = True
) -> tuple[list[int], list[int]]:
    """Token ids and labels of a conversation. Each segment (user prefix, assistant answer) is the text the chat
    template adds for it, tokenised on its own, so the label boundary is exact. ``visual=False`` (a text-only
    sample) keeps the conversation free of the placeholder."""
    count = sum(u.count(VIDEO_TOKEN) for u, _ in turns)
    if count > int(visual):
        raise ValueError(
            f"a prompt may hold one {VIDEO_TOKEN} placeholder, found {count}"
            if visual
            else f"a text-only conversation holds no {VIDEO_TOKEN} placeholder, found {count}"
        )
    if count == 0 and visual:
        turns = [(f"{VIDEO_TOKEN}\n{turns[0][0]}".rstrip("\n"), turns[0][1]), *turns[1:]]
    ids: list[int] = []
    labels: list[int] = []

    def add(text: str, train: bool) -> None:
        piece = tok(text, add_special_tokens=False)["input_ids"]
        ids.extend(piece)
        labels.extend(piece if train else [IGNORE_INDEX] * len(piece))

    if tok.chat_template is None:  # plain fallback: "USER: ...\nASSISTANT: ...</s>"
        add(tok.bos_token or "", False)
        if system_prompt:
            add(f"{system_prompt}\n", False)
        for user, answer in turns:
            add(f"USER: {user}\nASSISTANT: ", False)
            add(f"{answer}{tok.eos_token or ''}", True)
        return ids, labels
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    done = ""
    for user, answer in turns:
        messages.append({"role": "user", "content": user})
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        messages.append({"role": "assistant", "content": answer})
        full = tok.apply_chat_template(messages, tokenize=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise ValueError(
                "the tokenizer's chat template does not render conversations prefix-consistently; "
                "labels cannot be aligned (set use_chat_template=False)"
            )
        add(prompt[len(done) :], False)
        add(full[len(prompt) :], True)
        done = full
    return ids, labels


class Collator:
    """Samples (dicts from the datasets) -> :class:`~data_modules.batch.Batch`.

    ``max_length`` truncates the end of a sequence (never the placeholder: a prompt longer than that is an error).
    ``packing`` adds each batch's packing plan (``pack_row``, ``pack_offset``, ``pack_shape``) and ``budget`` bounds
    each sample's LLM tokens (`data_modules.packing`); both need the model's visual tokens per sample, which the
    stage modules give through `configure_visual_tokens` (then every batch also carries ``seq_lengths``).
    Samples over the budget are counted in ``skips`` (reason ``over_budget``) and listed under ``skipped``.
    """

    def __init__(
        self,
        tokenizer: str | PreTrainedTokenizerBase,
        *,
        qformer_tokenizer: str | PreTrainedTokenizerBase | None = None,
        padding_side: Literal["left", "right"] = "right",
        max_length: int | None = None,
        qformer_max_length: int = 64,
        use_chat_template: bool = True,
        system_prompt: str | None = None,
        packing: Packing | None = None,
        budget: TokenBudget | None = None,
        skips: SkipCounter | None = None,
    ) -> None:
        self.tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        if isinstance(qformer_tokenizer, str):
            qformer_tokenizer = load_tokenizer(qformer_tokenizer)
        self.qtok = qformer_tokenizer or self.tok
        if not use_chat_template:
            self.tok.chat_template = None
        self.padding_side, self.max_length, self.qformer_max_length = padding_side, max_length, qformer_max_length
        self.system_prompt = system_prompt
        self.video_token_id = self.tok.convert_tokens_to_ids(VIDEO_TOKEN)
        self.packing, self.budget, self.skips = packing, budget, skips
        self.visual_tokens: int | None = None  # Q, the visual tokens the model puts at each placeholder

    def configure_visual_tokens(self, num_video_tokens: int) -> None:
        """The visual tokens (Q) the model splices in at each sample's placeholder; call before batches are made."""
        if num_video_tokens < 1:
            raise ValueError(f"num_video_tokens must be >= 1, got {num_video_tokens}")
        self.visual_tokens = int(num_video_tokens)

    def _pad(self, rows: list[list[int]], value: int) -> torch.Tensor:
        L = max(len(r) for r in rows)
        pad = [[value] * (L - len(r)) for r in rows]
        return torch.tensor([p + r if self.padding_side == "left" else r + p for r, p in zip(rows, pad)])

    def __call__(self, samples: list[dict]) -> Batch:
        skipped = [{"key": s["key"], "reason": s["skipped"]} for s in samples if "skipped" in s]
        samples = [s for s in samples if "skipped" not in s]
        if not samples:
            return {"keys": [], "skipped": skipped}
        batch = self._collate(samples)
        skipped += batch.pop("skipped", [])
        if skipped:
            batch["skipped"] = skipped
        return batch

    def _encode(
        self, key: str, turns: list[tuple[str, str]], system: str | None, visual: bool
    ) -> tuple[list[int], list[int]]:
        """A sample's token ids and labels, cut to ``max_length``, holding its one placeholder if ``visual``."""
        i, lab = encode_turns(self.tok, turns, system_prompt=system or self.system_prompt, visual=visual)
        if self.max_length is not None:
            i, lab = i[: self.max_length], lab[: self.max_length]
        if i.count(self.video_token_id) != int(visual):
            raise ValueError(
                f"sample {key}: expected {int(visual)} {VIDEO_TOKEN} token after tokenisation "
                f"and max_length={self.max_length}, found {i.count(self.video_token_id)}"
            )
        return i, lab

    def llm_length(self, record: Record) -> int:
        """The LLM tokens (text + Q visual) ``record`` will have in a batch, from its text alone (no video read):
        what token-budget batches plan with. A sample that ``token_budget`` truncates counts at its limit."""
        if self.visual_tokens is None:
            raise RuntimeError(
                "token-budget batches (packing.rows) need the model's visual tokens per sample: the stage modules "
                "give it (configure_visual_tokens) from their setup(), before the train loader is built"
            )
        visual = record.modality != "text"
        ids, _ = self._encode(record.key, record.turns, record.system, visual)
        n = len(ids) + (self.visual_tokens - 1) * int(visual)
        limit = self.budget.max_tokens if self.budget is not None else None
        truncated = limit is not None and self.budget.overflow == "truncate"
        return min(n, limit) if truncated else n

    def _over_budget(self, key: str, ids: list[int], labels: list[int], extra: int):
        """(ids, labels) within ``budget.max_tokens`` (``extra``: the sample's visual tokens beyond its placeholder),
        cut at the end by the ``truncate`` policy; None (counted, logged with the key) for a sample that is skipped."""
        limit = self.budget.max_tokens if self.budget is not None else None
        if limit is None or len(ids) + extra <= limit:
            return ids, labels
        keep = limit - extra
        detail = f"{len(ids) + extra} LLM tokens (text and visual) > token_budget.max_tokens={limit}"
        prompt_ok = self.video_token_id not in ids or ids.index(self.video_token_id) < keep
        if self.budget.overflow == "truncate" and keep > 0 and prompt_ok:
            if any(t != IGNORE_INDEX for t in labels[:keep]):
                log.warning("truncating sample %s to %d tokens: %s", key, limit, detail)
                return ids[:keep], labels[:keep]
            detail += " (truncated, no answer token would be left)"
        if self.skips is not None:
            self.skips.skip(key, "over_budget", detail)
        else:
            log.warning("skipping sample %s: over_budget: %s", key, detail)
        return None

    def _collate(self, samples: list[dict]) -> Batch:
        ids, labels, kept, over = [], [], [], []
        Q = self.visual_tokens
        if Q is None and (self.packing is not None or self.budget is not None):
            raise RuntimeError(
                "packing / token_budget need the model's visual tokens per sample: the stage modules give it "
                "(Collator.configure_visual_tokens) from their setup()"
            )
        for s in samples:
            visual = s.get("modality", "video") != "text"
            i, lab = self._encode(s["key"], s["turns"], s.get("system"), visual)
            if Q is not None:
                fitted = self._over_budget(s["key"], i, lab, (Q - 1) * int(visual))
                if fitted is None:
                    over.append({"key": s["key"], "reason": "over_budget"})
                    continue
                i, lab = fitted
            ids.append(i)
            labels.append(lab)
            kept.append(s)
        samples = kept
        if not samples:
            return {"keys": [], "skipped": over}
        batch: Batch = {
            **_pixels_or_features(samples),  # video (B, T, C, H, W) or cached visual (B, T, N, D)
            "frame_mask": torch.stack([s["frame_mask"] for s in samples]),  # (B, T)
            "input_ids": self._pad(ids, self.tok.pad_token_id),
            "attention_mask": self._pad([[1] * len(i) for i in ids], 0),
            "labels": self._pad(labels, IGNORE_INDEX),
            "keys": [s["key"] for s in samples],
            "prompt": [strip_placeholder(s["turns"][-1][0]) for s in samples],
            "target": [s["turns"][-1][1] for s in samples],
        }
        q = self.qtok(
            [s["qformer_text"] for s in samples],
            padding=True,
            truncation=True,
            max_length=self.qformer_max_length,
            return_tensors="pt",
        )
        batch["qformer_input_ids"], batch["qformer_attention_mask"] = q["input_ids"], q["attention_mask"]
        if any(s.get("boxes") is not None for s in samples):
            T = next(s["boxes"].shape[0] for s in samples if s.get("boxes") is not None)  # frames x box substeps
            K = max([1] + [s["boxes"].shape[1] for s in samples if s.get("boxes") is not None])  # >= 1: masked if none
            boxes, mask = torch.zeros(len(samples), T, K, 4), torch.zeros(len(samples), T, K, dtype=torch.bool)
            for b, s in enumerate(samples):
                if s.get("boxes") is not None:
                    k = s["boxes"].shape[1]
                    boxes[b, :, :k], mask[b, :, :k] = s["boxes"], s["box_mask"]
            batch["boxes"], batch["box_mask"] = boxes, mask  # (B, T, K, 4), (B, T, K)
            if any(s.get("box_attributes") is not None for s in samples):  # state oracle only
                V = next(s["box_attributes"].shape[1] for s in samples if s.get("box_attributes") is not None)
                attributes = torch.zeros(len(samples), K, V)
                for b, s in enumerate(samples):
                    if s.get("box_attributes") is not None:
                        attributes[b, : len(s["box_attributes"])] = s["box_attributes"]
                batch["box_attributes"] = attributes  # (B, K, V)
        if any(s.get("question_type") is not None for s in samples):
            batch["question_type"] = [s.get("question_type") or "" for s in samples]
        if all(s.get("options") is not None for s in samples):
            batch["options"] = [s["options"] for s in samples]
            batch["answer_index"] = torch.tensor([s["answer_index"] for s in samples])
        if Q is not None:
            lengths = [len(i) + (Q - 1) * int(s.get("modality", "video") != "text") for i, s in zip(ids, samples)]
            batch["seq_lengths"] = torch.tensor(lengths)  # (B,) LLM tokens per sample, visual ones included
            if self.packing is not None:
                lay_out = first_fit if self.packing.rows is None else next_fit  # next_fit: the sampler's rows
                plan = lay_out(lengths, self.packing.max_tokens)
                batch["pack_row"], batch["pack_offset"] = torch.tensor(plan.row), torch.tensor(plan.offset)  # (B,)
                batch["pack_shape"] = (plan.rows, plan.width)
        if over:
            batch["skipped"] = over
        return batch


def _pixels_or_features(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack the clips' frames as ``video``, or their cached encoder tokens as ``visual`` (a feature-cache run)."""
    kinds = {"visual" if s.get("visual") is not None else "video" for s in samples}
    if len(kinds) != 1:
        raise ValueError("a batch mixes decoded clips and cached features; the feature cache must cover every video")
    kind = kinds.pop()
    return {kind: torch.stack([s[kind] for s in samples])}
