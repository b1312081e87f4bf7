"""What the stage modules hand the datamodule and check of it when they are set up: the vision encoder's preprocessing,
the fusion's box rows and the model's object stage, the video-token and feature-cache checks (`vision_meta`), and
the logging of its skipped samples. What a batch says about itself is `vrp.training.batches`; video -> tokens is the
model's own path (`VideoReasoner.fuse` / `video_tokens`)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import lightning as L
from torch import nn

from data_modules.collate import Collator
from data_modules.features import FeatureStore
from data_modules.sources.boxes import ObjectTracker
from vrp.models.constants import VIDEO_TOKEN
from vrp.models.contracts import box_substeps


# What the stage modules ask of a datamodule, one capability each (both of `data_modules.datamodules` have all
# six; a datamodule without one is used as it is, unless the fusion needs box rows it cannot supply).
@runtime_checkable
class TakesPreprocess(Protocol):
    def configure_preprocess(
        self, image_size: int, mean: tuple[float, float, float], std: tuple[float, float, float]
    ) -> None: ...


@runtime_checkable
class TakesBoxSubsteps(Protocol):
    def configure_box_substeps(self, box_substeps: int) -> None: ...


@runtime_checkable
class TakesObjectStage(Protocol):
    def configure_object_stage(self, objects: ObjectTracker | None) -> None: ...


@runtime_checkable
class TakesVisualTokens(Protocol):
    def configure_visual_tokens(self, num_video_tokens: int) -> None: ...


@runtime_checkable
class ReadsFeatures(Protocol):
    def features(self) -> FeatureStore | None: ...


@runtime_checkable
class CountsSkips(Protocol):
    def skip_counts(self) -> dict[str, int]: ...


@runtime_checkable
class Collates(Protocol):
    def collator(self) -> Collator: ...


def vision_meta(config: dict | None) -> dict:
    """The part of a VideoReasoner config that identifies the frozen features (vision encoder class + args), which a
    feature cache records (`vrp cache`) and a run reading it must match."""
    return dict((config or {}).get("init_args", {}).get("vision") or {})


def configure_datamodule(module: L.LightningModule) -> None:
    """Give the datamodule the vision encoder's input size and normalisation, the fusion's box rows per frame and
    the model's object stage (kept out of the YAML: the model owns them), and check that its
    collator's video placeholder is the LLM's and that a feature cache it reads was built with this vision encoder."""
    dm = module.trainer.datamodule  # called from setup(), when the trainer is attached
    if isinstance(dm, Collates):
        check_video_token(dm.collator(), module.model.llm)
    vision = module.model.vision
    if isinstance(dm, TakesPreprocess):
        dm.configure_preprocess(vision.image_size, tuple(vision.mean), tuple(vision.std))
    substeps = box_substeps(module.model.fusion)
    if isinstance(dm, TakesBoxSubsteps):
        dm.configure_box_substeps(substeps)
    elif substeps != 1:
        raise ValueError(
            f"the fusion reads {substeps} box rows per frame (box_substeps), but the datamodule "
            f"{type(dm).__name__} has no configure_box_substeps to supply them; use one of data_modules.datamodules "
            "or set the fusion's box_substeps to 1"
        )
    if isinstance(dm, TakesObjectStage):
        dm.configure_object_stage(module.model.objects)
    if isinstance(dm, TakesVisualTokens):  # packing and the token budget count each sample's visual tokens
        dm.configure_visual_tokens(module.model.num_video_tokens)
    store = dm.features() if isinstance(dm, ReadsFeatures) else None
    if store is not None:
        ours, theirs = vision_meta(module.hparams.get("model")), store.meta.get("vision")
        if ours and theirs and ours != theirs:
            raise ValueError(
                f"feature cache {store.root} was built with vision {theirs}, but the model uses {ours}; "
                "rebuild it with `vrp cache`"
            )


def check_video_token(collator: Collator, llm: nn.Module) -> None:
    """The collator's tokenizer and the LLM's must give the video placeholder the same id, else the reasoner finds no
    placeholder (or the wrong token) in the batch and the visual tokens never reach the LLM."""
    if collator.video_token_id != llm.video_token_id:
        raise ValueError(
            f"the data's tokenizer gives {VIDEO_TOKEN} the id {collator.video_token_id}, the LLM's "
            f"tokenizer {llm.video_token_id}: give the datamodule the LLM's tokenizer (data.init_args."
            "tokenizer), or save the LLM with the data's tokenizer"
        )


def log_skips(module: L.LightningModule) -> None:
    """Log the datamodule's bad-sample counters (if it exposes `skip_counts()`) as `data/skipped_<reason>`."""
    dm = module.trainer.datamodule
    counts = dm.skip_counts() if isinstance(dm, CountsSkips) else None
    if counts:
        for reason, n in counts.items():
            module.log(f"data/skipped_{reason}", float(n), rank_zero_only=True)
