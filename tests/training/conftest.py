"""Fixtures for training tests: tiny saved backbones + tokenizer shared by the session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from tiny import build_backbones  # noqa: E402


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return build_backbones(tmp_path_factory.mktemp("tiny_backbones"))
