"""The stage modules' hooks into the datamodule and its batches: the hand-off of preprocessing from the vision encoder
to the datamodule, the video-token and feature-cache checks, skip logging, and what a batch says about itself
(`has_samples`, `batch_size`). Video -> tokens is the model's own path (`VideoReasoner.fuse` / `video_tokens`); the LM
loss is `vrp.training.losses.lm_loss`."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import lightning as L
from torch import nn

from data_modules.collate import Collator
from data_modules.features import FeatureStore
from data_modules.sources.boxes import ObjectTracker
from vrp.models.constants import VIDEO_TOKEN


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
    substeps = module.model.fusion.box_substeps
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
        from vrp.training.cache import vision_meta

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


def has_samples(batch: dict) -> bool:
    """False for an evaluation batch whose every sample was skipped (it holds only ``keys`` and ``skipped``)."""
    return "input_ids" in batch


def token_counts(batch: dict, num_video_tokens: int) -> tuple[int, int]:
    """(real LLM tokens, LLM token slots computed) of a training batch: the slots are the packed rows' (R x W) with
    a packing plan, else the padded rows' (B x (L + Q - 1)); the padding fraction is 1 - real / slots. Real tokens
    come from ``seq_lengths`` when the collator gives them, else from the attention mask plus Q - 1 per sample."""
    if "input_ids" not in batch:
        return 0, 0
    B, L = batch["input_ids"].shape
    if batch.get("seq_lengths") is not None:
        real = int(batch["seq_lengths"].sum())
    else:
        real = int(batch["attention_mask"].sum()) + B * (num_video_tokens - 1)
    if batch.get("pack_shape") is not None:
        rows, width = batch["pack_shape"]
        return real, rows * width
    return real, B * (L + num_video_tokens - 1)


def batch_size(batch: dict) -> int:
    for key in ("input_ids", "video", "visual"):
        if key in batch:
            return int(batch[key].shape[0])
    return 1
