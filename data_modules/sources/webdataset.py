"""WebDataset tar shards of ``{key}.mp4`` + ``{key}.txt`` and/or ``{key}.json`` (as video2dataset writes WebVid,
InternVid, Panda-70M). Reading, brace expansion and ``pipe:``/URL opening come from the ``webdataset`` library;
splitting, shuffling and resumable state live in :class:`data_modules.datasets.StreamingDataset`."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import webdataset as wds

from data_modules.skips import BadSample, SkipCounter
from data_modules.sources.boxes import BoxTable
from data_modules.sources.manifest import DEFAULT_CAPTION_PROMPT
from data_modules.sources.record import Record

log = logging.getLogger(__name__)


class WebDatasetSource:
    """Caption shards. ``urls``: a brace pattern (``shards-{0000..0099}.tar``), ``pipe:aws s3 cp s3://... -`` commands,
    URLs, or a list of those. The caption is ``{key}.txt`` if present, else ``{key}.json[caption_field]``."""

    def __init__(
        self,
        urls: str | list[str],
        *,
        video_ext: str = "mp4",
        caption_field: str = "caption",
        prompt: str = DEFAULT_CAPTION_PROMPT,
        boxes: str | None = None,
    ) -> None:
        self.urls, self.video_ext, self.caption_field, self.prompt = urls, video_ext, caption_field, prompt
        self.boxes, self._table = boxes, None

    def shards(self) -> list[str]:
        urls = [self.urls] if isinstance(self.urls, str) else list(self.urls)
        shards = [s for u in urls for s in wds.shardlists.expand_urls(u)]
        if not shards:
            raise ValueError(f"WebDatasetSource: no shards in {self.urls!r}")
        return shards

    def records(self, shards: list[str], skips: SkipCounter) -> Iterator[Record | BadSample]:
        """Records of ``shards`` in file order; a bad sample comes out as a :class:`BadSample` in its place (so the
        caller's position count stays exact). A shard that cannot be read to its end (truncated, unreadable) is
        logged once with its error; the sample it cut short is one bad sample, and the samples past the break are
        gone (they cannot be counted)."""
        if self.boxes and self._table is None:
            self._table = BoxTable(self.boxes)
        for url in shards:
            errors: list[Exception] = []  # webdataset reports one break at several levels: keep them, log once

            def handler(exn: Exception, errors: list[Exception] = errors) -> bool:
                errors.append(exn)
                return True

            for sample in wds.tariterators.tarfile_samples(iter([{"url": url}]), handler=handler):
                item = self.parse(sample)
                if errors and isinstance(item, BadSample):  # the sample the break cut short
                    item = BadSample(item.key, "malformed", f"incomplete, the shard breaks off here ({item.detail})")
                yield item
            if errors:
                log.warning(
                    "shard %s could not be read to its end (%s: %s); samples past that point are lost",
                    url,
                    type(errors[0]).__name__,
                    errors[0],
                )

    def parse(self, sample: dict) -> Record | BadSample:
        key = f"{sample['__url__']}:{sample['__key__']}"
        if self.video_ext not in sample:
            return BadSample(key, "missing_file", f"no .{self.video_ext} member (has {sorted(sample)})")
        try:
            if "txt" in sample:
                caption = sample["txt"].decode("utf-8")
            elif "json" in sample:
                caption = json.loads(sample["json"]).get(self.caption_field, "")
            else:
                return BadSample(key, "empty_text", "no .txt or .json member")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
            return BadSample(key, "malformed", f"caption unreadable: {e}")
        caption = str(caption or "").strip()
        if not caption:
            return BadSample(key, "empty_text", "empty caption")
        return Record(
            sample["__key__"],
            sample[self.video_ext],
            [(self.prompt, caption)],
            qformer_text=caption,
            boxes=self._table,
            origin=sample["__url__"],
        )
