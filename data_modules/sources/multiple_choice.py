"""Multiple-choice QA in NExT-QA layout (``video,question,answer,a0..a4,qid,type``) rendered to prompts."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

from data_modules.sources.boxes import BoxTable
from data_modules.skips import SkipCounter
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
    dropped (fewer options) and the answer index is renumbered so it still names the same option text.

    ``template`` gets ``{question}`` and ``{options}`` (one ``option_format`` line per option, with ``{letter}`` and
    ``{text}``); the target is the letter, the option text, or ``"(A) text"`` (``target="letter_text"``).
    ``video_path`` maps the ``video`` column to a file relative to ``video_root`` (default: the CSV's folder).
    """

    def __init__(self, path: str, *, video_root: str | None = None, video_path: str = "videos/{video}.mp4",
                 template: str = DEFAULT_TEMPLATE, option_format: str = "({letter}) {text}",
                 target: Literal["letter", "text", "letter_text"] = "letter", boxes: str | None = None) -> None:
        self.path, self.video_root, self.video_path = path, video_root, video_path
        self.template, self.option_format, self.target = template, option_format, target
        self.boxes = boxes

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
                key = f"{row['video']}_{row.get('qid') or reader.line_num}"
                video = resolve(self.video_path.format(video=row["video"]), root)
                records.append(Record(key, video, [(self.render(question, options), self.answer_text(options, index))],
                                      qformer_text=question, question_type=row.get("type") or None,
                                      options=options, answer_index=index, boxes=table))
        return records
