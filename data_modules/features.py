"""Frozen-feature store keyed per VIDEO: the frozen vision encoder runs once per clip, and training reads its tokens
instead of decoding, so a step costs fusion + LLM only (many questions share one video's entry).

    <root>/meta.json                  {"vision": <encoder config>, "num_frames", "sampling", "tokens", "width", "videos"}
    <root>/<video key>.safetensors    visual (T, N, D) float16, frame_mask (T,), timestamps (T,) seconds, fps ()

Written by `vrp cache` (`vrp.training.cache`); read by the datamodules' `feature_cache: <root>` through
`ClipLoader(features=...)`. One deterministic view per clip (the eval sampling, no crop): the usual trade-off.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


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
        self, key: str, visual: torch.Tensor, frame_mask: torch.Tensor, timestamps: torch.Tensor, fps: float
    ) -> None:
        """Store one clip's (T, N, D) tokens (as float16), written atomically."""
        tmp = self.root / f".{key}.tmp"
        save_file(
            {
                "visual": visual.detach().to("cpu", torch.float16).contiguous(),
                "frame_mask": frame_mask.bool().contiguous(),
                "timestamps": timestamps.float().contiguous(),
                "fps": torch.tensor(float(fps)),
            },
            str(tmp),
        )
        tmp.replace(self._path(key))
        self._keys = None

    def finish(self, **meta) -> None:
        self.meta = {**meta, "videos": sum(1 for _ in self.root.glob("*.safetensors"))}
        (self.root / "meta.json").write_text(json.dumps(self.meta, indent=1))

    def read(self, key: str) -> dict[str, torch.Tensor]:
        path = self._path(key)
        if not path.is_file():
            raise KeyError(
                f"video {key!r} is not in the feature cache {self.root}; rebuild it with `vrp cache` for "
                "every split the run reads"
            )
        return load_file(str(path))
