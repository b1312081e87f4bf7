"""Frozen-feature store keyed per VIDEO: the frozen vision encoder runs once per clip, and training reads its tokens
instead of decoding, so a step costs fusion + LLM only (many questions share one video's entry).

    <root>/meta.json                  {"vision": <encoder config>, "num_frames", "sampling", "tokens", "width", "videos"}
    <root>/<video key>.safetensors    visual (T, N, D) float16, frame_mask (T,), timestamps (T,) seconds, fps ();
                                      metadata: the video file it was computed from (path, size, mtime_ns)

Written by `vrp cache` (`vrp.tools.cache`); read by the datamodules' `feature_cache: <root>` through
`ClipLoader(features=...)`. One deterministic view per clip (the eval sampling, no crop): the usual trade-off.

Entries are keyed by file name, so each is tied to the file it was computed from: a reader that gives the video's
path (`read(key, source=...)`, `check`) gets `FeatureCacheMismatch` when that file is another one (another size or
modification time: another generated set whose clips share the names, a regenerated set) or when the entry records
no file, never another video's features. A damaged entry (truncated, empty) is a counted `BadSample` naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from data_modules.skips import BadSample


class FeatureCacheMismatch(ValueError):
    """A cache entry that was not computed from the video file the run reads; the message says what to run."""


def source_identity(path: str | os.PathLike) -> dict[str, str]:
    """What ties an entry to its video file: absolute path (shown), size and modification time (compared)."""
    st = os.stat(path)
    return {"source": str(Path(path).resolve()), "size": str(st.st_size), "mtime_ns": str(st.st_mtime_ns)}


def _identity_or_skip(path: str | os.PathLike) -> dict[str, str]:
    try:
        return source_identity(path)
    except FileNotFoundError as e:
        raise BadSample(str(path), "missing_file", "the video file of this feature cache entry does not exist") from e


def _same_file(recorded: dict[str, str], current: dict[str, str]) -> bool:
    if recorded.get("size") != current["size"] or "mtime_ns" not in recorded:
        return False
    a, b = int(recorded["mtime_ns"]), int(current["mtime_ns"])
    if a % 10**9 == 0 or b % 10**9 == 0:  # a copy to a file system that keeps whole seconds
        return a // 10**9 == b // 10**9
    return a == b


def _describe(identity: dict[str, str]) -> str:
    return f"{identity['source']} ({identity['size']} bytes, mtime_ns {identity['mtime_ns']})"


class FeatureStore:
    """Per-video encoder tokens on disk. ``write`` one clip, ``finish`` the index; ``read(key)`` -> dict."""

    def __init__(self, root: str | os.PathLike, *, create: bool = False) -> None:
        self.root = Path(root)
        self.meta: dict = {}
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not (self.root / "meta.json").is_file():
            raise FileNotFoundError(
                f"feature cache {self.root}: no meta.json; build it with `vrp cache --config "
                "STAGE.yaml --out DIR` (or set feature_cache: null)"
            )
        else:
            self.meta = json.loads((self.root / "meta.json").read_text())
        self._keys: set[str] | None = None

    def _path(self, key: str) -> Path:
        if "/" in key or key.startswith("."):
            raise ValueError(f"feature cache {self.root}: video key {key!r} cannot name a file")
        return self.root / f"{key}.safetensors"

    def __contains__(self, key: str) -> bool:
        if self._keys is None:
            self._keys = {p.name[: -len(".safetensors")] for p in self.root.glob("*.safetensors")}
        return key in self._keys

    def write(
        self,
        key: str,
        visual: torch.Tensor,
        frame_mask: torch.Tensor,
        timestamps: torch.Tensor,
        fps: float,
        source: str | os.PathLike | None = None,
    ) -> None:
        """Store one clip's (T, N, D) tokens (as float16), written atomically, tied to the video file ``source``
        they were computed from (`source_identity`)."""
        tmp = self.root / f".{key}.tmp"
        save_file(
            {
                "visual": visual.detach().to("cpu", torch.float16).contiguous(),
                "frame_mask": frame_mask.bool().contiguous(),
                "timestamps": timestamps.float().contiguous(),
                "fps": torch.tensor(float(fps)),
            },
            str(tmp),
            metadata=source_identity(source) if source is not None else None,
        )
        tmp.replace(self._path(key))
        self._keys = None

    def finish(self, **meta) -> None:
        self.meta = {**meta, "videos": sum(1 for _ in self.root.glob("*.safetensors"))}
        (self.root / "meta.json").write_text(json.dumps(self.meta, indent=1))

    def read(self, key: str, source: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
        """The entry of ``key``; with ``source`` (the video file the run reads) `FeatureCacheMismatch` unless the
        entry was computed from that file. KeyError when there is no entry, `BadSample` when it is damaged."""
        path = self._path(key)
        if not path.is_file():
            raise KeyError(
                f"video {key!r} is not in the feature cache {self.root}; rebuild it with `vrp cache` for "
                "every split the run reads"
            )
        current = _identity_or_skip(source) if source is not None else None
        try:
            with safe_open(str(path), "pt") as f:
                if current is not None:
                    problem = self._mismatch(key, f.metadata() or {}, current)
                    if problem:
                        raise FeatureCacheMismatch(f"{problem}; {self.rebuild_hint()}")
                return {name: f.get_tensor(name) for name in f.keys()}
        except (SafetensorError, OSError) as e:
            raise BadSample(str(path), "decode_error", self.damaged(path, e)) from e

    def check(self, key: str, source: str | os.PathLike) -> str | None:
        """Why the entry of ``key`` cannot serve the video file ``source`` (missing, damaged, computed from another
        file), or None when it can."""
        path = self._path(key)
        if not path.is_file():
            return f"no entry {path.name}"
        current = source_identity(source)
        try:
            with safe_open(str(path), "pt") as f:
                return self._mismatch(key, f.metadata() or {}, current)
        except (SafetensorError, OSError) as e:
            return self.damaged(path, e)

    def _mismatch(self, key: str, recorded: dict[str, str], current: dict[str, str]) -> str | None:
        if "source" not in recorded:
            return (
                f"feature cache {self.root}: entry {key!r} records no video file (written before entries were "
                f"tied to their file), so it cannot be checked against {current['source']}"
            )
        if _same_file(recorded, current):
            return None
        return (
            f"feature cache {self.root}: entry {key!r} was computed from {_describe(recorded)}, not from "
            f"{_describe(current)}"
        )

    def damaged(self, path: Path, error: Exception) -> str:
        return (
            f"feature cache entry {path} is damaged ({type(error).__name__}: {error}); re-run `vrp cache` with --out "
            f"{self.root}, which re-encodes damaged entries"
        )

    def rebuild_hint(self) -> str:
        return (
            f"cache the videos this run reads with `vrp cache --config STAGE.yaml --out DIR [the run's --data "
            f"overrides]` (DIR={self.root} re-encodes the entries that differ; another folder keeps this one for its "
            "own data) and set feature_cache: DIR, or set feature_cache: null to decode"
        )

    def verify(self, keys_and_sources: Iterable[tuple[str, str | os.PathLike]]) -> None:
        """`FeatureCacheMismatch` (one line: the first problem and how many videos have one) when an entry was
        computed from another file than the one given; missing and damaged entries are left to `read` (counted
        skips)."""
        problems, n = [], 0
        for key, source in dict(keys_and_sources).items():
            n += 1
            path = self._path(key)
            if not path.is_file() or not os.path.isfile(source):
                continue
            try:
                with safe_open(str(path), "pt") as f:
                    recorded = f.metadata() or {}
            except (SafetensorError, OSError):
                continue
            problem = self._mismatch(key, recorded, source_identity(source))
            if problem:
                problems.append(problem)
        if problems:
            more = f" (and {len(problems) - 1} more of the {n} videos)" if len(problems) > 1 else ""
            raise FeatureCacheMismatch(f"{problems[0]}{more}; {self.rebuild_hint()}")
