"""Small hand-made fixtures for the data-module tests: clips, tar shards in video2dataset layout, a tokenizer."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from data_modules.video import write_video
from lab.synthetic.tokenizer import build_tokenizer

N_CLIPS = 12


def _frames(i: int, n: int = 10, size: int = 32) -> np.ndarray:
    """(n, size, size, 3): a bright square whose position encodes the clip index."""
    f = np.zeros((n, size, size, 3), np.uint8)
    for t in range(n):
        x = (i * 2 + t) % (size - 8)
        f[t, 8:16, x : x + 8] = (255, 40 * (i % 6), 0)
    return f


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dm_assets")
    (root / "videos").mkdir()
    for i in range(N_CLIPS):
        write_video(root / "videos" / f"clip{i:02d}.mp4", _frames(i), fps=10)
    (root / "videos" / "broken.mp4").write_bytes(b"this is not a video")
    # 4 shards x 3 samples; shard 3's last sample has a corrupt mp4
    (root / "shards").mkdir()
    for s in range(4):
        with tarfile.open(root / "shards" / f"part-{s:04d}.tar", "w") as tar:
            for j in range(3):
                i = s * 3 + j
                key = f"clip{i:02d}"
                video = (root / "videos" / f"{key}.mp4").read_bytes() if i != N_CLIPS - 1 else b"\0" * 64
                meta = json.dumps({"key": key, "caption": f"a red square moves right number {i}"}).encode()
                for name, data in ((f"{key}.mp4", video), (f"{key}.json", meta)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    texts = [f"a red square moves right number {i}" for i in range(20)] + ["What colour is it? red blue A B C D E"]
    build_tokenizer(texts, root / "tokenizer", vocab_size=400)
    return root
