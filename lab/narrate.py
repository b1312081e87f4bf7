"""Narration probe: does a model tie the events of a clip to the right objects in language?

    python -m lab narrate --config experiments/embedded/finetune.yaml [--config overlay.yaml ...] [--pairs 400]

For each validation clip whose caption narrates events ("The blue circle hits a wall, then the blue circle and the
yellow square collide, ..."), a wrong twin of the caption is made by replacing one object of one event clause with
another object of the same clip (one that clause does not name), so the twin lists the same objects and differs
only in who took part in one event. The model scores both as the two options of a multiple-choice question after the
caption's own prompt, with the stage module's scorer; the printed figure is how often it prefers the true caption
(chance 50%) with its 95% interval. The weights are the config's `init_from` (a stage-1 checkpoint) over the
config's backbones, so it reads what stage 1 taught the fusion, through the LLM that stage 1 captioned with.
`--swap object` is the control: the twin recolours one object at every mention to a colour absent from the clip, so
it asks whether the model sees which objects are there at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import re
import sys

import torch

from lab.probe import _batch, _videos, start_from_stage1
from lab.synthetic.simulator import COLORS, SHAPES

NAME = re.compile(rf"\b(?:{'|'.join(COLORS)}) (?:{'|'.join(SHAPES)})\b")
CLAUSE = ", then "


def wrong_twin(caption: str, rng: random.Random) -> str | None:
    """The caption with one object of one event clause replaced by another object its first sentence lists and that
    clause does not name; None for a caption without an event naming an object."""
    head, sep, story = caption.partition(". ")
    names = sorted(set(NAME.findall(head)))
    clauses = story.split(CLAUSE)
    spots = [(c, m) for c, clause in enumerate(clauses) for m in NAME.finditer(clause)]
    rng.shuffle(spots)
    for c, m in spots:
        others = [n for n in names if n not in NAME.findall(clauses[c])]
        if others:
            clauses[c] = clauses[c][: m.start()] + rng.choice(others) + clauses[c][m.end() :]
            return head + sep + CLAUSE.join(clauses)
    return None


def recoloured_twin(caption: str, rng: random.Random) -> str | None:
    """The control: the caption with one object's colour, at every mention, replaced by a colour no object of the
    clip has (does the model see which objects are there?); None when the clip leaves no colour free."""
    names = sorted(set(NAME.findall(caption.partition(". ")[0])))
    free = [c for c in COLORS if c not in {n.split()[0] for n in names}]
    if not names or not free:
        return None
    name = rng.choice(names)
    return re.sub(rf"\b{name}\b", f"{rng.choice(free)} {name.split()[1]}", caption)


TWINS = {"event": wrong_twin, "object": recoloured_twin}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m lab narrate", description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", required=True, help="a stage-2 config (its init_from is read)")
    p.add_argument("--pairs", type=int, default=400, help="at most this many validation clips")
    p.add_argument("--swap", choices=sorted(TWINS), default="event", help="object: the recognition control")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    from data_modules.datamodules import VideoTextDataModule
    from vrp.models.contracts import box_substeps
    from vrp.scoring.per_question import rows_from_batch
    from vrp.tools.lightning_cli import VRPCLI

    sys.argv = sys.argv[:1]
    cli = VRPCLI(args=[x for c in a.config for x in ("--config", c)] + ["--trainer.logger=false"], run=False)
    module, dm = cli.model, cli.datamodule
    model = module.model
    start_from_stage1(module)
    vision = model.vision.eval()
    captions = VideoTextDataModule(
        root=str(dm.root),
        tracks=None if dm.tracks is None else str(dm.tracks),
        ground_truth_boxes=dm.ground_truth_boxes,
        feature_cache=dm.feature_cache,
        num_frames=dm.num_frames,
        num_workers=0,
    )
    captions.configure_preprocess(vision.image_size, tuple(vision.mean), tuple(vision.std))
    captions.configure_box_substeps(box_substeps(model.fusion))
    captions.setup("fit")

    rng = random.Random(a.seed)
    pairs = []
    for rec in captions.records["val"]:
        prompt, caption = rec.turns[0]
        twin = TWINS[a.swap](caption, rng)
        if twin is None:
            continue
        answer = rng.randrange(2)
        options = [caption, twin] if answer == 0 else [twin, caption]
        pairs.append(
            dataclasses.replace(
                rec, turns=[(prompt, "")], options=options, answer_index=answer, question_type="narration"
            )
        )
    pairs = pairs[: a.pairs]
    if not pairs:
        raise SystemExit(f"no validation caption has a wrong twin for --swap {a.swap}: nothing to score")
    feats = _videos(pairs, captions.clip_loader(train=False), vision)
    collator = dm.collator()  # the stage module's prompt format (the captions' datamodule reads the same tokenizer)
    model.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(pairs), 16):
            batch = _batch(pairs[i : i + 16], feats, collator, blind=False)
            right += sum(r["prediction"] == r["answer"] for r in rows_from_batch(batch, module.scorer(model, batch)))
    acc = right / len(pairs)
    half = 196.0 * math.sqrt(acc * (1 - acc) / len(pairs))
    print(
        f"narration ({a.swap} swapped): the true caption preferred in {100 * acc:.1f}% ± {half:.1f} of {len(pairs)} pairs (chance 50)"
    )


if __name__ == "__main__":
    main()
