"""`propose` (one function per template family) writes what it wrote as one 140-line function: candidates of 150
random scenes and a small generation's mc.csv / instructions.json are byte-identical to those recorded before the
split (md5 of the files; sha256 of the candidates as JSON)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from lab.synthetic import generate
from lab.synthetic.questions import propose
from lab.synthetic.simulator import random_scene, simulate
from lab.synthetic.writer import HORIZON

CANDIDATES_SHA256 = "2e837069fe7e170f31039f26517596f2bd2d5ba8031eb1615b6e08b091008677"
MC_CSV_MD5 = "5442ec9f5ddcd96a9f2ca50663d7f5e9"  # train/mc.csv of generate(videos=40, seed=3, size=32, frames 16-20)
INSTRUCTIONS_MD5 = "e128b8d683afbfec415b8429d7564201"  # train/instructions.json of the same


def test_candidates_of_150_scenes_are_unchanged():
    out = []
    for i in range(150):
        rng = np.random.default_rng(i)
        scene = random_scene(rng, size=64, num_objects=int(rng.integers(2, 6)))
        observed = int(rng.integers(16, 33))
        out.append([dataclasses.asdict(c) for c in propose(scene, simulate(scene, observed + HORIZON), observed, rng)])
    assert sum(len(c) for c in out) > 1000
    assert hashlib.sha256(json.dumps(out).encode()).hexdigest() == CANDIDATES_SHA256


def test_a_small_generation_is_byte_identical(tmp_path):
    generate(tmp_path, videos=40, seed=3, size=32, min_frames=16, max_frames=20, workers=1)
    assert hashlib.md5((tmp_path / "train" / "mc.csv").read_bytes()).hexdigest() == MC_CSV_MD5
    assert hashlib.md5((tmp_path / "train" / "instructions.json").read_bytes()).hexdigest() == INSTRUCTIONS_MD5
