"""Fixtures for training tests: tiny saved backbones + tokenizer shared by the session."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_assets import build_backbones


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return build_backbones(tmp_path_factory.mktemp("tiny_backbones"))
