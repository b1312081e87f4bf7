"""Caption manifests of local video files: CSV (WebVid columns mapped by config, or a generic ``video,caption``)
and JSONL with the same keys; ISO-8601 durations (WebVid's ``PT00H00M17S``) parsed where they filter clips."""

from __future__ import annotations

import csv
import json
import logging
import re
import string
from pathlib import Path

from data_modules.skips import SkipCounter
from data_modules.sources.boxes import BoxTable
from data_modules.sources.record import Record, resolve

log = logging.getLogger(__name__)

DEFAULT_CAPTION_PROMPT = "<video>\nDescribe what happens in the video."


_ISO_DURATION = re.compile(
    r"P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)


def parse_duration(value: str) -> float:
    """Seconds of an ISO-8601 duration as WebVid's CSVs write it (``PT00H00M17S``, ``PT1M2.5S``, ``P1DT2H``) or of a
    plain number of seconds (``17``, ``17.5``); ValueError otherwise."""
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    m = _ISO_DURATION.fullmatch(text.upper())
    if not m or text.upper() in ("P", "PT") or text.upper().endswith("T"):
        raise ValueError(f"{value!r} is not an ISO-8601 duration (PT#H#M#S) or a number of seconds")
    d, h, mi, sec = (float(m.group(g) or 0) for g in "dhms")
    return ((d * 24 + h) * 60 + mi) * 60 + sec


def _fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


class CaptionManifest:
    """Rows of (video path, caption). WebVid as its downloader leaves it: ``video_path: "{page_dir}/{videoid}.mp4"``
    (a template over the row's columns, in place of ``video_column``), ``caption_column: name``,
    ``key_column: videoid``, ``duration_column: duration`` (ISO-8601 ``PT00H00M17S``). Paths are relative to
    ``video_root`` (default: the manifest's folder).

    ``min_duration``/``max_duration`` (seconds, needs ``duration_column``) keep clips in that range; rows outside it
    are dropped by that filter (not bad data: logged with their count, not counted as skips). A malformed row
    (missing column, empty caption, unreadable duration, bad JSON) is skipped, counted and logged with its line number.
    """

    def __init__(
        self,
        path: str,
        *,
        video_root: str | None = None,
        video_column: str = "video",
        video_path: str | None = None,
        caption_column: str = "caption",
        key_column: str | None = None,
        duration_column: str | None = None,
        min_duration: float | None = None,
        max_duration: float | None = None,
        prompt: str = DEFAULT_CAPTION_PROMPT,
        boxes: str | None = None,
    ) -> None:
        if (min_duration is not None or max_duration is not None) and duration_column is None:
            raise ValueError("CaptionManifest: min_duration/max_duration need duration_column (e.g. 'duration')")
        self.path, self.video_root = path, video_root
        self.video_column, self.video_path, self.caption_column, self.key_column = (
            video_column,
            video_path,
            caption_column,
            key_column,
        )
        self.duration_column, self.min_duration, self.max_duration = duration_column, min_duration, max_duration
        self.prompt, self.boxes = prompt, boxes

    def video_of(self, row: dict) -> str:
        """The row's video path: ``video_path`` filled from its columns, else its ``video_column``; '' if empty."""
        if self.video_path is None:
            return str(row.get(self.video_column) or "")
        values = {name: str(row.get(name) or "").strip() for name in _fields(self.video_path)}
        empty = [name for name, v in values.items() if not v]
        if empty:
            raise ValueError(f"video_path {self.video_path!r} needs columns {empty}, empty in this row")
        return self.video_path.format(**values)

    def in_range(self, seconds: float) -> bool:
        return (self.min_duration is None or seconds >= self.min_duration) and (
            self.max_duration is None or seconds <= self.max_duration
        )

    def load(self, skips: SkipCounter) -> list[Record]:
        path = Path(self.path)
        if not path.is_file():
            raise FileNotFoundError(f"caption manifest {path} does not exist; check the `path` of CaptionManifest")
        root = self.video_root if self.video_root is not None else path.parent
        table = BoxTable(self.boxes) if self.boxes else None
        records, filtered = [], 0
        for line, row in _rows(path, skips):
            where = f"{path}:{line}"
            caption = row.get(self.caption_column)
            try:
                video = self.video_of(row)
                if not video:
                    raise ValueError(f"no value in column {self.video_column!r} (columns: {list(row)})")
                seconds = None
                if self.duration_column is not None:
                    seconds = parse_duration(row.get(self.duration_column) or "")
            except ValueError as e:
                skips.skip(where, "malformed", str(e))
                continue
            if not caption or not str(caption).strip():
                skips.skip(where, "empty_text", f"empty caption column {self.caption_column!r}")
                continue
            if seconds is not None and not self.in_range(seconds):
                filtered += 1
                continue
            key = str(row.get(self.key_column) or "") if self.key_column else ""
            key = key or Path(video).stem
            caption = str(caption).strip()
            records.append(
                Record(key, resolve(video, root), [(self.prompt, caption)], qformer_text=caption, boxes=table)
            )
        if filtered:
            log.info(
                "%s: %d rows outside the duration range [%s, %s] s left out",
                path,
                filtered,
                self.min_duration,
                self.max_duration,
            )
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
