"""Caption manifests of local video files: CSV (WebVid columns mapped by config, or a generic ``video,caption``)
and JSONL with the same keys."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from data_modules.sources.boxes import BoxTable
from data_modules.skips import SkipCounter
from data_modules.sources.record import Record, resolve

DEFAULT_CAPTION_PROMPT = "<video>\nDescribe what happens in the video."


class CaptionManifest:
    """Rows of (video path, caption). WebVid: ``video_column="contentUrl", caption_column="name",
    key_column="videoid"``. Paths are relative to ``video_root`` (default: the manifest's folder).

    A malformed row (missing column, empty caption, bad JSON) is skipped, counted and logged with its line number.
    """

    def __init__(self, path: str, *, video_root: str | None = None, video_column: str = "video",
                 caption_column: str = "caption", key_column: str | None = None,
                 prompt: str = DEFAULT_CAPTION_PROMPT, boxes: str | None = None) -> None:
        self.path, self.video_root = path, video_root
        self.video_column, self.caption_column, self.key_column = video_column, caption_column, key_column
        self.prompt, self.boxes = prompt, boxes

    def load(self, skips: SkipCounter) -> list[Record]:
        path = Path(self.path)
        if not path.is_file():
            raise FileNotFoundError(f"caption manifest {path} does not exist; check the `path` of CaptionManifest")
        root = self.video_root if self.video_root is not None else path.parent
        table = BoxTable(self.boxes) if self.boxes else None
        records = []
        for line, row in _rows(path, skips):
            where = f"{path}:{line}"
            video, caption = row.get(self.video_column), row.get(self.caption_column)
            if not video:
                skips.skip(where, "malformed", f"no value in column {self.video_column!r} (columns: {list(row)})")
                continue
            if not caption or not str(caption).strip():
                skips.skip(where, "empty_text", f"empty caption column {self.caption_column!r}")
                continue
            key = str(row.get(self.key_column) or "") if self.key_column else ""
            key = key or Path(str(video)).stem
            caption = str(caption).strip()
            records.append(Record(key, resolve(str(video), root), [(self.prompt, caption)], qformer_text=caption,
                                  boxes=table))
        return records


def _rows(path: Path, skips: SkipCounter):
    """Yield (line number, row dict) from a CSV (header row) or JSONL file."""
    if path.suffix in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8") as f:
            for line, text in enumerate(f, 1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as e:
                    skips.skip(f"{path}:{line}", "malformed", f"invalid JSON: {e}")
                    continue
                if not isinstance(row, dict):
                    skips.skip(f"{path}:{line}", "malformed", "a JSONL line must be an object")
                    continue
                yield line, row
        return
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for row in reader:
            if None in row or any(v is None for v in row.values()):  # more or fewer fields than the header
                skips.skip(f"{path}:{reader.line_num}", "malformed", f"expected {len(reader.fieldnames)} fields")
                continue
            yield reader.line_num, row
