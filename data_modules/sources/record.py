"""The record every source produces (one video and the conversation about it, before decoding), and the contract of
a map-style source (`MapSource`).

The source contract lives here, with the data code, rather than beside the model contracts in
`vrp.models.contracts`: the data layer depends on nothing in `vrp/` and the models import no data code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from data_modules.batch import VIDEO_TOKEN
from data_modules.skips import SkipCounter


@dataclass
class Record:
    """One sample before decoding.

    ``turns`` are (user, assistant) pairs; the first user turn holds the ``<video>`` placeholder (the collator adds
    one in front when the source text has none). Labels later cover the assistant texts only.
    ``modality``: ``"video"`` (``video`` is a clip), ``"image"`` (``video`` is an image file, read as a clip of
    ``image_frames`` real frames) or ``"text"`` (no visual input: no placeholder, no visual tokens).
    ``start_sec``/``end_sec`` restrict a clip to that window of the video (VideoChat2-IT ``start``/``end``).
    ``system`` is this conversation's system prompt (VideoChat2-IT's instruction ``i``), else the collator's.
    """

    key: str
    video: str | bytes  # a local path or the encoded file's bytes (from a tar shard)
    turns: list[tuple[str, str]]
    qformer_text: str = ""  # what the Q-Former may read: the caption (stage 1) or the question (stage 2)
    question_type: str | None = None
    options: list[str] | None = None
    answer_index: int | None = None
    boxes: object | None = None  # a BoxTable holding this video's per-frame boxes, if the source has one
    modality: Literal["video", "image", "text"] = "video"
    start_sec: float | None = None
    end_sec: float | None = None
    system: str | None = None
    origin: str = ""  # the shard (or file) the sample came from, when ``key`` alone does not say

    @property
    def where(self) -> str:
        """How logs and skips name the sample: ``<origin>:<key>``, or the key."""
        return f"{self.origin}:{self.key}" if self.origin else self.key

    @property
    def video_key(self) -> str:
        """The key of the video (not of the question): the file stem of a path, else ``key``."""
        return Path(self.video).stem if isinstance(self.video, str) else self.key


def resolve(path: str, root: str | os.PathLike | None) -> str:
    """A video path from a manifest, relative to ``root`` unless absolute or a URL."""
    if root is None or os.path.isabs(path) or "://" in path:
        return path
    return str(Path(root) / path)


def strip_placeholder(text: str) -> str:
    return text.replace(VIDEO_TOKEN, "").strip()


@runtime_checkable
class MapSource(Protocol):
    """A map-style source: reads its files on ``load`` (never before, so configs may name files that
    ``prepare_data`` has yet to generate) and returns every usable record, counting bad rows in ``skips``.

    Any class with this method is a source: the datamodules, `Mixture` and `HoldOutTypes` take it by this type, so a
    new format is one new class (LightningCLI builds it from its ``class_path``) and no list of classes to extend."""

    def load(self, skips: SkipCounter) -> list[Record]: ...
