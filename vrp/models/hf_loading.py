"""Loading Hugging Face weights without the noise a user cannot act on.

`from_pretrained` prints a load report ("MISSING: those params were newly initialized ...") and a "Loading weights"
progress bar for every model. `quiet_from_pretrained` loads without both and returns the missing weights instead;
`report_missing` then names, in one line, only those the built model really uses (weights it drops, such as a ViT's
unused pooler, are no one's concern). Download progress bars (a hub name, not a local folder) stay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

log = logging.getLogger(__name__)


@contextmanager
def _quiet(local: bool):
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if local and bars:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if local and bars:
            hf_logging.enable_progress_bar()


def quiet_from_pretrained(load: Callable[..., Any], source: str, **kwargs) -> tuple[Any, list[str]]:
    """``load(source, output_loading_info=True, **kwargs)`` (e.g. ``AutoModel.from_pretrained``) without the load
    report and the weight-loading bar; returns (model, names of the weights the checkpoint lacked)."""
    with _quiet(local=Path(source).is_dir()):
        model, info = load(source, output_loading_info=True, **kwargs)
    return model, sorted(info.get("missing_keys") or [])


def report_missing(model: nn.Module, missing: Iterable[str], what: str) -> list[str]:
    """Warn in one line about the ``missing`` weights that ``model`` (as built, e.g. after dropping a pooler) still
    has, i.e. uses; returns them."""
    own = set(model.state_dict())
    used = sorted(k for k in missing if k in own)
    if used:
        shown = ", ".join(used[:5]) + (f", ... ({len(used)} in all)" if len(used) > 5 else "")
        log.warning(
            "%s: %d weights the model uses are not in the checkpoint and start random: %s; train them, or check "
            "that the checkpoint matches the model type",
            what,
            len(used),
            shown,
        )
    return used
