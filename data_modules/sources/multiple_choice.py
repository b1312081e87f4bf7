"""Multiple-choice QA in NExT-QA layout (``video,question,answer,a0..a4,qid,type``) rendered to prompts."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Literal

from data_modules.skips import SkipCounter
from data_modules.sources.boxes import BoxTable
from data_modules.sources.record import Record, resolve

LETTERS = "ABCDEFGHIJ"
DEFAULT_TEMPLATE = "<video>\n{question}\nOptions:\n{options}\nAnswer with the option's letter."


def _options(row: dict, columns: list[str], answer: int) -> tuple[list[str], int]:
    """The non-blank options of a row and the answer's index among them. ``answer`` indexes the ``aN`` columns, so
    a blank column before the answer moves it down by one (``a0=red, a1='', a2=green, answer=2`` -> green, 1)."""
    texts = [(row.get(c) or "").strip() for c in columns]
    if not 0 <= answer < len(texts) or not texts[answer]:
        raise ValueError(f"answer {answer} does not name a non-blank option among {columns}")
    options = [t for t in texts if t]
    if len(options) < 2:
        raise ValueError(f"{len(options)} non-blank option(s); a multiple-choice row needs at least 2")
    return options, answer - sum(1 for t in texts[:answer] if not t)


class MultipleChoice:
    """NExT-QA-layout CSV. ``answer`` is the correct option's index among the ``aN`` columns; blank columns are
    dropped (fewer options) and the answer index is renumbered so it still names the same option text; other
    columns (NExT-QA's ``frame_count``, ``width``, ``height``) are ignored.

    ``template`` gets ``{question}`` and ``{options}`` (one ``option_format`` line per option, with ``{letter}`` and
    ``{text}``); the target is the letter, the option text, or ``"(A) text"`` (``target="letter_text"``).
    ``video_path`` maps the ``video`` column to a file relative to ``video_root`` (default: the CSV's folder).
    ``video_map``: a JSON file ``{"<video id>": "<folder>/<video id>"}`` (NExT-QA's ``map_vid_vidorID.json``) whose
    value replaces the id in ``video_path``; a row whose id it lacks is skipped and counted (``missing_file``).
    NExT-QA as released: ``video_root: .../NExTVideo, video_map: .../map_vid_vidorID.json, video_path: "{video}.mp4"``.
    """

    def __init__(
        self,
        path: str,
        *,
        video_root: str | None = None,
        video_path: str = "videos/{video}.mp4",
        video_map: str | None = None,
        template: str = DEFAULT_TEMPLATE,
        option_format: str = "({letter}) {text}",
        target: Literal["letter", "text", "letter_text"] = "letter",
        boxes: str | None = None,
    ) -> None:
        self.path, self.video_root, self.video_path, self.video_map = path, video_root, video_path, video_map
        self.template, self.option_format, self.target = template, option_format, target
        self.boxes = boxes

    def load_map(self) -> dict[str, str] | None:
        """The video-id map, or None without ``video_map``."""
        if self.video_map is None:
            return None
        path = Path(self.video_map)
        if not path.is_file():
            raise FileNotFoundError(
                f"video map {path} does not exist; set MultipleChoice's `video_map` to the "
                "dataset's map file (NExT-QA: map_vid_vidorID.json) or null"
            )
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
            raise ValueError(f'{path}: expected an object {{"<video id>": "<folder>/<video id>"}}')
        return {str(k): v for k, v in raw.items()}

    def render(self, question: str, options: list[str]) -> str:
        lines = "\n".join(self.option_format.format(letter=LETTERS[i], text=o) for i, o in enumerate(options))
        return self.template.format(question=question, options=lines)

    def answer_text(self, options: list[str], index: int) -> str:
        letter, text = LETTERS[index], options[index]
        return {"letter": letter, "text": text, "letter_text": f"({letter}) {text}"}[self.target]

    def load(self, skips: SkipCounter) -> list[Record]:
        path = Path(self.path)
        if not path.is_file():
            raise FileNotFoundError(f"multiple-choice CSV {path} does not exist; check MultipleChoice's `path`")
        root = self.video_root if self.video_root is not None else path.parent
        table = BoxTable(self.boxes) if self.boxes else None
        video_map = self.load_map()
        records = []
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"video", "question", "answer", "a0", "a1"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{path}: missing columns {sorted(missing)}; expected video,question,answer,a0..a4")
            option_cols = [c for c in (f"a{i}" for i in range(len(LETTERS))) if c in reader.fieldnames]
            for row in reader:
                where = f"{path}:{reader.line_num}"
                try:
                    if None in row:
                        raise ValueError(f"more fields than the header's {len(reader.fieldnames)}")
                    options, index = _options(row, option_cols, int(row["answer"]))
                    question = row["question"].strip()
                    if not question:
                        raise ValueError("empty question")
                except (ValueError, TypeError, AttributeError) as e:
                    skips.skip(where, "malformed", str(e))
                    continue
                video_id = row["video"].strip()
                if video_map is not None and video_id not in video_map:
                    skips.skip(where, "missing_file", f"video id {video_id!r} is not in the video map {self.video_map}")
                    continue
                key = f"{video_id}_{row.get('qid') or reader.line_num}"
                video = resolve(self.video_path.format(video=video_map[video_id] if video_map else video_id), root)
                records.append(
                    Record(
                        key,
                        video,
                        [(self.render(question, options), self.answer_text(options, index))],
                        qformer_text=question,
                        question_type=row.get("type") or None,
                        options=options,
                        answer_index=index,
                        boxes=table,
                    )
                )
        return records
