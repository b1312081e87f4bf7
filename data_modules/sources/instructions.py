"""Instruction data: LLaVA-style conversations and VideoChat2-IT QA lists, as JSON arrays or JSONL.

Both read video items, image items (LLaVA-OneVision / LLaVA-Video mixtures: ``"image"`` instead of ``"video"``, read
as clips of the datamodule's ``image_frames`` real frames) and text-only items (neither key), which ``text_only``
either skips (``"skip"``, counted in the per-modality log line) or trains without visual tokens (``"train"``).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Literal

from data_modules.batch import VIDEO_TOKEN
from data_modules.skips import SkipCounter
from data_modules.sources.boxes import BoxTable
from data_modules.sources.record import Record, resolve, strip_placeholder

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"  # LLaVA's placeholder in image items; read as the one visual placeholder
TextOnly = Literal["skip", "train"]


def _items(path: Path, skips: SkipCounter):
    """Yield (location, item) from a JSON array or a JSONL file; bad JSON lines are skipped and counted."""
    if not path.is_file():
        raise FileNotFoundError(f"instruction file {path} does not exist; check the source's `path`")
    if path.suffix in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8") as f:
            for line, text in enumerate(f, 1):
                if text.strip():
                    try:
                        yield f"{path}:{line}", json.loads(text)
                    except json.JSONDecodeError as e:
                        skips.skip(f"{path}:{line}", "malformed", f"invalid JSON: {e}")
        return
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of items (or use .jsonl with one item per line)")
    for i, item in enumerate(data):
        yield f"{path}[{i}]", item


def visual_of(item: dict) -> tuple[str | None, Literal["video", "image", "text"]]:
    """(path, modality) of an item: its ``"video"``, its ``"image"``, or neither (text-only)."""
    if "video" in item and "image" in item:
        raise ValueError("an item has both 'video' and 'image'; give one")
    for modality in ("video", "image"):
        if modality in item:
            value = item[modality]
            if not isinstance(value, str) or not value:
                raise ValueError(f"{modality!r} must be one path, got {value!r} (several per item are not supported)")
            return value, modality
    return None, "text"


def check_placeholders(turns: list[tuple[str, str]], modality: str) -> None:
    """A text-only item may not hold the visual placeholder (nothing would fill it); others at most one."""
    count = sum(str(u).count(VIDEO_TOKEN) for u, _ in turns)
    if count > (modality != "text"):
        raise ValueError(
            f"{count} {VIDEO_TOKEN}/{IMAGE_TOKEN} placeholders in a {modality} item (at most {int(modality != 'text')})"
        )


class _ModalityLog:
    """Counts a source's items per modality and logs them once, with the text-only items skipped by policy."""

    def __init__(self, path: Path, text_only: TextOnly) -> None:
        if text_only not in ("skip", "train"):
            raise ValueError(f"text_only must be 'skip' or 'train', got {text_only!r}")
        self.path, self.text_only, self.counts = path, text_only, Counter()

    def keep(self, modality: str) -> bool:
        """Count one item; False for a text-only item under ``text_only="skip"``."""
        self.counts[modality] += 1
        return modality != "text" or self.text_only == "train"

    def report(self) -> None:
        text = self.counts["text"]
        log.info(
            "%s: %d video, %d image, %d text-only items%s",
            self.path,
            self.counts["video"],
            self.counts["image"],
            text,
            f" ({text} skipped: text_only='skip')" if text and self.text_only == "skip" else "",
        )


class _InstructionFile:
    """What both instruction formats share: their options and the reading of their file. ``parse(item, where)`` (a
    format's own) reads one item into a `Record` whose ``video`` is the item's path as written, raising on a
    malformed item; `load` skips and counts those and the items with an empty answer, keeps text-only items as
    ``text_only`` says, resolves paths against ``video_root`` (default: the file's folder) and attaches ``boxes``."""

    def __init__(
        self, path: str, *, video_root: str | None = None, boxes: str | None = None, text_only: TextOnly = "skip"
    ) -> None:
        self.path, self.video_root, self.boxes, self.text_only = path, video_root, boxes, text_only

    @staticmethod
    def parse(item: dict, where: str) -> Record:
        raise NotImplementedError

    def load(self, skips: SkipCounter) -> list[Record]:
        path = Path(self.path)
        root = self.video_root if self.video_root is not None else path.parent
        table = BoxTable(self.boxes) if self.boxes else None
        modalities = _ModalityLog(path, self.text_only)
        records = []
        for where, item in _items(path, skips):
            try:
                record = self.parse(item, where)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                skips.skip(where, "malformed", f"{type(e).__name__}: {e}")
                continue
            if any(not str(a).strip() for _, a in record.turns):
                skips.skip(where, "empty_text", "an answer is empty")
                continue
            if modalities.keep(record.modality):
                records.append(replace(record, video=resolve(record.video, root) if record.video else "", boxes=table))
        modalities.report()
        return records


class LlavaInstructions(_InstructionFile):
    """LLaVA-style ``{"id", "video" | "image", "conversations": [{"from": "human", "value": "<video>\\n..."},
    {"from": "gpt", "value": "..."}, ...]}`` (``<image>`` in image items stands for the same placeholder); optional
    ``"type"`` becomes the question type, and optional ``"options"`` + ``"answer_index"`` make the item scorable as
    multiple choice too. Paths are relative to ``video_root`` (default: the file's folder)."""

    @staticmethod
    def parse(item: dict, where: str) -> Record:
        conv = item["conversations"]
        roles = [m["from"] for m in conv]
        if (
            not conv
            or len(conv) % 2
            or roles[0::2] != ["human"] * (len(conv) // 2)
            or roles[1::2] != ["gpt"] * (len(conv) // 2)
        ):
            raise ValueError(f"conversations must alternate human/gpt, got {roles}")
        turns = [
            (conv[i]["value"].replace(IMAGE_TOKEN, VIDEO_TOKEN), conv[i + 1]["value"]) for i in range(0, len(conv), 2)
        ]
        visual, modality = visual_of(item)
        check_placeholders(turns, modality)
        key = str(item.get("id", Path(visual).stem if visual else where))
        options, index = item.get("options"), item.get("answer_index")
        if options is not None and not (
            isinstance(options, list) and len(options) >= 2 and isinstance(index, int) and 0 <= index < len(options)
        ):
            raise ValueError(
                f"options must be a list of >= 2 with an answer_index into it, got {options!r} / {index!r}"
            )
        return Record(
            key,
            visual or "",
            turns,
            qformer_text=strip_placeholder(turns[0][0]),
            question_type=item.get("type"),
            options=options,
            answer_index=index if options is not None else None,
            modality=modality,
        )


def _window(item: dict) -> tuple[float | None, float | None]:
    """VideoChat2-IT's ``start``/``end`` (seconds) as a window, both or neither."""
    if "start" not in item and "end" not in item:
        return None, None
    if "start" not in item or "end" not in item:
        raise ValueError("'start' and 'end' come together (seconds of the video); this item has only one")
    start, end = float(item["start"]), float(item["end"])
    if not 0 <= start < end:
        raise ValueError(f"the window needs 0 <= start < end, got start={start}, end={end}")
    return start, end


class VideoChat2Instructions(_InstructionFile):
    """VideoChat2-IT ``{"video" | "image", "QA": [{"i": instruction, "q": question, "a": answer}, ...],
    "start"?, "end"?}``, one multi-turn record per item, read as VideoChat2's own loader reads it: the FIRST QA
    item's non-empty ``i`` is the conversation's system prompt (once; later items' ``i`` are not used), each ``q``
    is a user turn (an empty ``q``, as in caption data, leaves the user turn to the video alone) and ``a`` the
    reply; the Q-Former reads the instruction followed by the first question. ``start``/``end`` (seconds) make the
    clip that window of the video, and the record's key names the window (``<video stem>@<start>-<end>``)."""

    @staticmethod
    def parse(item: dict, where: str) -> Record:
        qa = item["QA"]
        if not qa:
            raise ValueError("empty QA list")
        turns = [(str(x["q"]).replace(IMAGE_TOKEN, VIDEO_TOKEN), x["a"]) for x in qa]
        instruction = str(qa[0].get("i") or "").strip()
        visual, modality = visual_of(item)
        check_placeholders(turns, modality)
        start, end = _window(item)
        key = str(item.get("id", Path(visual).stem if visual else where))
        if start is not None:
            key = f"{key}@{start:g}-{end:g}"
        return Record(
            key,
            visual or "",
            turns,
            qformer_text=" ".join(t for t in (instruction, strip_placeholder(turns[0][0])) if t),
            modality=modality,
            start_sec=start,
            end_sec=end,
            system=instruction or None,
        )
