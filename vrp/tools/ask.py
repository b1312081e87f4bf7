"""`vrp ask VIDEO "question" [--options "a|b|c|d"] [--checkpoint DIR] [--boxes FILE]`: answer a question about any
video file.

The clip is decoded, sampled and normalised by the same data code as training (`ClipLoader`, `Collator`) with the
model's own image size and mean/std. With ``--options`` the answer is the option of highest (length-normalised)
likelihood, printed with the per-option scores; without, the model generates a free-form answer. ``--boxes`` gives
per-frame object boxes (the ``boxes.json`` layout of `data_modules.sources.boxes`, keyed by the video's file stem)
to a model with object tokens, e.g. your own detector's; without them the model's object stage (detector + tracker)
finds the objects, or, for a model without one, its object tokens fall back to slot attention. A bad video,
question or checkpoint ends with a one-line ``error: ...`` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch
from torch import nn

from vrp.evaluation.inference import DEFAULT_CHECKPOINT, AskError, answer, load_model, make_batch
from vrp.models.contracts import TrackReader
from vrp.models.llm import SequenceTooLong


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vrp ask", description="Answer a question about a video file.")
    p.add_argument("video", help="path of a video file (any format PyAV/FFmpeg decodes)")
    p.add_argument("question")
    p.add_argument("--options", help='multiple-choice options separated by "|", e.g. "red|blue|green"')
    p.add_argument(
        "--checkpoint", default=DEFAULT_CHECKPOINT, help=f"exported model folder (default {DEFAULT_CHECKPOINT})"
    )
    p.add_argument("--boxes", help="per-frame object boxes for the video (boxes.json layout, keyed by its file stem)")
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    return p


def main(argv: list[str] | None = None, *, loader: Callable[[str], nn.Module] = load_model) -> None:
    """Prints the answer on stdout (option scores on stderr); on a user error exits with status 2."""
    args = parser().parse_args(argv)
    try:
        if not args.question.strip():
            raise AskError("the question is empty")
        options = None
        if args.options is not None:
            options = [o.strip() for o in args.options.split("|")]
            if len(options) < 2 or not all(options):
                raise AskError(f'--options needs at least two non-empty options separated by "|", got {args.options!r}')
        model = loader(args.checkpoint).eval()
        batch = make_batch(model, args.video, args.question, options, num_frames=args.num_frames, boxes=args.boxes)
        reads_tracks = isinstance(model.fusion, TrackReader)
        if args.boxes is None and reads_tracks and model.fusion.requires_tracks and model.objects is None:
            raise AskError(
                f"this model ({type(model.fusion).__name__}) reads object tracks and has no object stage: give "
                "per-frame boxes with --boxes FILE (boxes.json layout, e.g. a detector + tracker's output)"
            )
        if args.boxes is None and model.objects is not None and not batch["box_mask"].any():
            print(
                f"note: the object stage found no object in {args.video}; the answer rests on the frames alone",
                file=sys.stderr,
            )
        elif args.boxes is None and reads_tracks and model.objects is None:
            print(
                "note: this model has object tokens but no --boxes were given; they come from slot attention",
                file=sys.stderr,
            )
        try:
            with torch.no_grad():
                text, scores = answer(model, batch, max_new_tokens=args.max_new_tokens)
        except SequenceTooLong as e:
            raise AskError(f"the question does not fit: {e}") from e
    except AskError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(text)
    if scores is not None:
        for opt, s in zip(options, scores):
            print(f"  {s:8.3f}  {opt}", file=sys.stderr)


if __name__ == "__main__":
    main()
