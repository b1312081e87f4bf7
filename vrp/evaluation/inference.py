"""Answering a question about one video with an exported model: `load_model` (an exported folder, one-line errors),
`clip_loader` (the model's evaluation-time clip reading), `make_batch` (a one-sample batch by the training data path)
and `answer`. `vrp ask` (`vrp.tools.ask`), the lmms-eval adapter (`vrp.evaluation.lmms`) and the report read a
model and its clips through here.
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch import nn

from vrp.models.contracts import box_substeps
from vrp.models.io import CheckpointError, error_in_chain, export_info, load_exported
from vrp.models.paths import ModelPathError

DEFAULT_CHECKPOINT = "artifacts/embedded/finetune"


class AskError(Exception):
    """A user-facing problem (bad file, bad checkpoint, bad arguments): printed as one line."""


def load_model(checkpoint: str) -> nn.Module:
    """A `VideoReasoner` from an exported model folder (`vrp export`; read by `vrp.models.io.load_exported`)."""
    path = Path(checkpoint)
    if not path.exists():
        raise AskError(
            f"checkpoint {checkpoint} does not exist; train with `make finetune` and export it "
            "with `vrp export`, or pass --checkpoint DIR"
        )
    try:
        if export_info(path).get("stage") == 1:
            print(
                f"warning: {checkpoint} was exported from a stage-1 (video-text alignment) checkpoint; it was never "
                "instruction-tuned, so its answers mean little: export a stage-2 checkpoint (make finetune)",
                file=sys.stderr,
            )
        return load_exported(str(path))
    except Exception as e:  # any failure to read a user-given folder is reported in one line
        cause = error_in_chain(e, (CheckpointError, ModelPathError)) or e
        raise AskError(f"checkpoint {checkpoint} could not be loaded: {type(cause).__name__}: {cause}") from e


def clip_loader(model: nn.Module, *, num_frames: int = 8, image_frames: int = 1):
    """The evaluation-time `ClipLoader` of ``model``: its vision encoder's size and mean/std, uniform sampling, its
    object stage for a video without boxes; a partly damaged user file is answered anyway (``damaged="keep"``)."""
    from data_modules.datasets import ClipLoader
    from data_modules.transforms import VideoTransform

    vision = model.vision
    return ClipLoader(
        VideoTransform(vision.image_size, tuple(vision.mean), tuple(vision.std), train=False),
        num_frames=num_frames,
        sampling="uniform",
        image_frames=image_frames,
        box_substeps=box_substeps(model.fusion),
        damaged="keep",
        objects=model.objects,
    )


def make_batch(
    model: nn.Module,
    video: str,
    question: str,
    options: list[str] | None,
    *,
    num_frames: int = 8,
    boxes: str | None = None,
) -> dict:
    """A one-sample batch built by the training data path (decode, sample, transform, tokenise)."""
    from data_modules.collate import Collator
    from data_modules.datasets import BadSample
    from data_modules.sources.boxes import BoxTable
    from data_modules.sources.record import Record

    if not Path(video).is_file():
        raise AskError(f"video {video} does not exist")
    table = None
    if boxes is not None:
        try:
            table = BoxTable(boxes)
        except (OSError, ValueError) as e:
            raise AskError(f"boxes file {boxes}: {e}") from e
    loader = clip_loader(model, num_frames=num_frames)
    rec = Record(
        key=Path(video).stem,
        video=str(video),
        turns=[(question, options[0] if options else "")],
        qformer_text=question,
        options=options,
        answer_index=0 if options else None,
        boxes=table,
    )
    try:
        sample = loader(rec)
    except BadSample as e:
        raise AskError(e.detail or f"cannot read video {video}: {e.reason}") from e
    return Collator(model.llm.tokenizer)([sample])


def answer(model: nn.Module, batch: dict, *, max_new_tokens: int = 32) -> tuple[str, list[float] | None]:
    """The model's answer and, for multiple choice, the per-option scores (mean log-prob per answer token)."""
    from vrp.scoring.scorers import GenerateScorer, LikelihoodScorer

    if batch.get("options"):
        out = LikelihoodScorer()(model, batch)
        return batch["options"][0][int(out.prediction[0])], out.scores[0].tolist()
    return GenerateScorer(max_new_tokens=max_new_tokens).generate(model, batch)[0], None
