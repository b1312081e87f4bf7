"""Where a pretrained model comes from: a local folder/file, or a Hugging Face Hub id. A name that can only be a
local path but does not exist fails here with one line, instead of as a malformed Hub id deep inside transformers.
`model_source` is the one check of a Hugging Face part's ``model_name_or_path`` / ``config`` pair."""

from __future__ import annotations

import os
import re

HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")  # "name" or "namespace/name"


class ModelPathError(FileNotFoundError):
    """A model path in the config does not exist."""


def pretrained_source(name_or_path: str, what: str) -> str:
    """`name_or_path` unchanged when it exists locally or can be a Hub id; else `ModelPathError` naming `what`
    (e.g. ``"LLM model_name_or_path"``). Absolute, ``./``, ``../`` and ``~`` paths and names with two or more ``/``
    are local paths by form."""
    path = os.path.expanduser(name_or_path)
    if os.path.exists(path) or ":" in name_or_path:  # present, or a scheme such as open_clip's "hf-hub:org/name"
        return path
    if name_or_path.startswith(("/", "./", "../", "~")) or not HUB_ID.match(name_or_path):
        raise ModelPathError(
            f"{what} {name_or_path!r} does not exist (a local path: check it, or create it first, "
            "e.g. `make prepare` for the embedded default's artifacts/embedded)"
        )
    return name_or_path


def model_source(model_name_or_path: str | None, config: dict | None, what: str) -> str | None:
    """Exactly one of ``model_name_or_path`` (returned as `pretrained_source` gives it) or ``config`` (a dict for
    ``AutoConfig.for_model``, which needs ``model_type``; None is returned); ``what`` names the part in errors."""
    if (model_name_or_path is None) == (config is None):
        raise ValueError(f"{what}: give exactly one of model_name_or_path or config")
    if config is None:
        return pretrained_source(model_name_or_path, f"{what} model_name_or_path")
    if "model_type" not in config:
        raise ValueError(
            f"{what} config needs a 'model_type' key (the transformers model type, e.g. 'llama', 'vit'), "
            f"got keys {sorted(config)}"
        )
    return None
