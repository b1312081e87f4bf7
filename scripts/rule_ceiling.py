"""How much of the answer is in the boxes a model gets? Crude hand-written rules over the sampled frames' boxes.

    python scripts/rule_ceiling.py --config experiments/embedded/finetune.yaml [--config overlay.yaml] [--split test]

Reads each question's boxes through the config's datamodule (the same T sampled frames, S box rows each, that the
fusion reads) and answers the templates a few lines of geometry can answer, knowing which box is which object (the
boxes file's object names: a diagnostic oracle, never a model input):
- ``count``: the number of tracked boxes; ``fastest``: the largest mean displacement between box rows;
- ``first_hit`` / ``last_hit`` / ``why_turn``: the object's first (last) turn — a change of direction or speed between
  consecutive box rows — and the nearest wall or box around it;
- ``first_wall``: the earliest turn of any object whose nearest thing is a wall;
- ``next_wall``: the object whose last motion reaches a frame edge soonest;
- ``next_hit``: the object's first contact ahead if everything keeps its last motion (`contact_times`).
The rest (why_faster / why_slower, counterfactual, shape, colour) are left out. Prints the accuracy per
template beside chance: a lower bound on what the sampled boxes hold, to set against what a model learns from them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vrp.models.tracks import contact_times, has_previous  # noqa: E402

NUMBERS = ("zero", "one", "two", "three", "four", "five")
TURN_COS = 0.9  # a direction change: the cosine between consecutive displacements falls below this
TURN_SPEED = 0.3  # or a speed change of more than this fraction
RULES = (
    "count",
    "fastest",
    "first_hit",
    "last_hit",
    "why_turn",
    "first_wall",
    "next_wall",
    "next_hit",
)  # templates answered


def turns(centre: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """centre (R, K, 2), mask (R, K) -> per object, the rows where its motion changes (direction or speed)."""
    step = centre[1:] - centre[:-1]  # (R-1, K, 2)
    out: list[list[int]] = []
    for k in range(centre.shape[1]):
        rows = []
        for r in range(step.shape[0] - 1):
            if not bool(mask[r : r + 3, k].all()):
                continue
            a, b = step[r, k], step[r + 1, k]
            if max(float(a.norm()), float(b.norm())) < 1e-6:
                continue  # standing still is no turn
            cos = float(a @ b) / (float(a.norm() * b.norm()) + 1e-9)
            if cos < TURN_COS or abs(float(b.norm() - a.norm())) > TURN_SPEED * max(float(a.norm()), 1e-3):
                rows.append(r + 1)
        out.append(rows)
    return out


def nearest(boxes: torch.Tensor, mask: torch.Tensor, k: int, row: int) -> int | str:
    """The wall ("wall") or object index nearest to object ``k`` over rows ``row - 1 .. row + 1`` (box gaps)."""
    best, partner = float("inf"), None
    for r in range(max(row - 1, 0), min(row + 2, boxes.shape[0])):
        b = boxes[r, k]
        wall = float(torch.cat([b[:2], 1 - b[2:]]).min())
        if wall < best:
            best, partner = wall, "wall"
        for j in range(boxes.shape[1]):
            if j != k and bool(mask[r, j]):
                o = boxes[r, j]
                gap = float(torch.maximum(o[:2] - b[2:], b[:2] - o[2:]).max())
                if gap < best:
                    best, partner = gap, j
    return partner


def subject(question: str, names: list[str]) -> int | None:
    """The index of the object a question names ("... the red circle ..."), None if it names none."""
    return next((k for k, n in enumerate(names) if f"the {n} " in question), None)


def answer(template: str, question: str, names: list[str], boxes: torch.Tensor, mask: torch.Tensor) -> str | None:
    """The rule's answer text for one question (None: a template not in ``RULES``, or the rule finds nothing)."""
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2  # (R, K, 2)
    if template == "count":
        return NUMBERS[int(mask.any(0).sum())]
    if template == "fastest":
        moved = (centre[1:] - centre[:-1]).norm(dim=-1) * (mask[1:] & mask[:-1])
        return names[int(moved.mean(0).argmax())]
    ev = turns(centre, mask)
    if template == "first_wall":
        hits = [(r, k) for k in range(len(names)) for r in ev[k] if nearest(boxes, mask, k, r) == "wall"]
        return names[min(hits)[1]] if hits else None
    if template == "next_hit":  # the first contact ahead from the last row with a known motion (`contact_times`)
        x = subject(question, names)
        seen = has_previous(mask[None])[0, :, x].nonzero().flatten() if x is not None else []
        if not len(seen):
            return None
        times = contact_times(boxes[None], mask[None])[0, int(seen[-1]), x]  # (K + 1,)
        if not bool(times.isfinite().any()):
            return None
        partner = int(times.argmin())
        return "a wall" if partner == len(names) else names[partner]
    if template == "next_wall":
        soonest = None
        for k in range(len(names)):
            seen = mask[:, k].nonzero().flatten()  # the rows past the last frame may be masked
            if len(seen) < 2:
                continue
            v, b = centre[seen[-1], k] - centre[seen[-2], k], boxes[seen[-1], k]
            for d in (0, 1):
                if abs(float(v[d])) > 1e-6:
                    t = float((1 - b[2 + d]) / v[d]) if v[d] > 0 else float(b[d] / -v[d])
                    if soonest is None or t < soonest[0]:
                        soonest = (t, k)
        return names[soonest[1]] if soonest else None
    if template in ("first_hit", "last_hit", "why_turn"):
        x = subject(question, names)
        if x is None or not ev[x]:
            return None
        partner = nearest(boxes, mask, x, ev[x][-1] if template == "last_hit" else ev[x][0])
        if template == "why_turn":
            return "it hit a wall" if partner == "wall" else f"it hit the {names[partner]}"
        return "a wall" if partner == "wall" else names[partner]
    return None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", required=True)
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    a = p.parse_args(argv)

    from vrp.tools.lightning_cli import VRPCLI

    args = [x for c in a.config for x in ("--config", c)] + [
        "--trainer.logger=false",
        "--model.init_args.init_from=null",
        "--data.init_args.tracks=null",  # the rules name objects by the simulator's boxes file: ground-truth tracks
        "--data.init_args.synthetic_boxes=true",
    ]
    sys.argv = sys.argv[:1]
    cli = VRPCLI(args=args, run=False)
    dm, model = cli.datamodule, cli.model.model
    dm.configure_preprocess(model.vision.image_size, tuple(model.vision.mean), tuple(model.vision.std))
    dm.configure_box_substeps(model.fusion.box_substeps)
    dm.setup("fit" if a.split == "train" else "test" if a.split == "test" else "validate")
    root = Path(dm.synthetic_root) / a.split
    template = {str(i["id"]): i["template"] for i in json.loads((root / "instructions.json").read_text())}
    names = {k: v["objects"] for k, v in json.loads((root / "boxes.json").read_text()).items()}
    loader = dm.clip_loader(train=False)
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    chance: dict[str, float] = defaultdict(float)
    for rec in dm.records[a.split]:
        t = template.get(rec.key)
        if rec.options is None or t not in RULES:
            continue  # no rule for this template: its clip is not even read
        s = loader(rec)
        text = answer(t, " ".join(u for u, _ in rec.turns), names[rec.video_key], s["boxes"], s["box_mask"])
        hits[t][0] += int(text in rec.options and rec.options.index(text) == rec.answer_index)
        hits[t][1] += 1
        chance[t] += 1 / len(rec.options)
    print(f"rules over the {a.split} split's sampled boxes ({dm.num_frames} frames x {model.fusion.box_substeps} rows)")
    print(f"{'template':12s} {'n':>5s} {'rules %':>8s} {'chance %':>9s}")
    for t in sorted(hits):
        right, n = hits[t]
        print(f"{t:12s} {n:5d} {100 * right / n:8.1f} {100 * chance[t] / n:9.1f}")


if __name__ == "__main__":
    main()
