"""Instruction data: LLaVA-style conversations and VideoChat2-IT QA lists, as JSON arrays or JSONL."""

from __future__ import annotations

import json
from pathlib import Path

from data_modules.sources.boxes import BoxTable
from data_modules.skips import SkipCounter
from data_modules.sources.record import Record, resolve, strip_placeholder


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


class LlavaInstructions:
    """LLaVA-style ``{"id", "video", "conversations": [{"from": "human", "value": "<video>\\n..."},
    {"from": "gpt", "value": "..."}, ...]}``; optional ``"type"`` becomes the question type, and optional
    ``"options"`` + ``"answer_index"`` make the item scorable as multiple choice too.
    Video paths are relative to ``video_root`` (default: the file's folder)."""

    def __init__(self, path: str, *, video_root: str | None = None, boxes: str | None = None) -> None:
        self.path, self.video_root, self.boxes = path, video_root, boxes

    def load(self, skips: SkipCounter) -> list[Record]:
        path = Path(self.path)
        root = self.video_root if self.video_root is not None else path.parent
        table = BoxTable(self.boxes) if self.boxes else None
        records = []
        for where, item in _items(path, skips):
            try:
                conv = item["conversations"]
                roles = [m["from"] for m in conv]
                if not conv or len(conv) % 2 or roles[0::2] != ["human"] * (len(conv) // 2) or \
                        roles[1::2] != ["gpt"] * (len(conv) // 2):
                    raise ValueError(f"conversations must alternate human/gpt, got {roles}")
                turns = [(conv[i]["value"], conv[i + 1]["value"]) for i in range(0, len(conv), 2)]
                key, video = str(item.get("id", Path(item["video"]).stem)), item["video"]
                options, index = item.get("options"), item.get("answer_index")
                if options is not None and not (isinstance(options, list) and len(options) >= 2
                                                and isinstance(index, int) and 0 <= index < len(options)):
                    raise ValueError(f"options must be a list of >= 2 with an answer_index into it, got "
                                     f"{options!r} / {index!r}")
            except (KeyError, TypeError, ValueError) as e:
                skips.skip(where, "malformed", f"{type(e).__name__}: {e}")
                continue
            if any(not str(a).strip() for _, a in turns):
                skips.skip(where, "empty_text", "an answer is empty")
                continue
            records.append(Record(key, resolve(video, root), turns, qformer_text=strip_placeholder(turns[0][0]),
                                  question_type=item.get("type"), options=options,
                                  answer_index=index if options is not None else None, boxes=table))
        return records


class VideoChat2Instructions:
    """VideoChat2-IT style ``{"video", "QA": [{"i": instruction, "q": question, "a": answer}, ...]}``: one
    multi-turn record per video; the instruction ``i`` (may be empty) leads its question."""

    def __init__(self, path: str, *, video_root: str | None = None, boxes: str | None = None) -> None:
        self.path, self.video_root, self.boxes = path, video_root, boxes

    def load(self, skips: SkipCounter) -> list[Record]:
        path = Path(self.path)
        root = self.video_root if self.video_root is not None else path.parent
        table = BoxTable(self.boxes) if self.boxes else None
        records = []
        for where, item in _items(path, skips):
            try:
                video, qa = item["video"], item["QA"]
                turns = [("\n".join(t for t in (x.get("i", ""), x["q"]) if t), x["a"]) for x in qa]
                if not turns:
                    raise ValueError("empty QA list")
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                skips.skip(where, "malformed", f"{type(e).__name__}: {e}")
                continue
            if any(not str(a).strip() for _, a in turns):
                skips.skip(where, "empty_text", "an answer is empty")
                continue
            key = str(item.get("id", Path(video).stem))
            records.append(Record(key, resolve(video, root), turns, qformer_text=strip_placeholder(turns[0][0]),
                                  boxes=table))
        return records
