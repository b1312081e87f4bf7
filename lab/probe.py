"""Fast learning probe: what can a stage-2 config learn, and how fast? Trains on frozen-encoder features held in memory.

    python -m lab probe --config experiments/embedded/finetune.yaml [--config overlay.yaml ...]
                        [--steps 1500] [--eval-every 500] [--eval-questions 600] [--templates count,color]
                        [--types descriptive] [--blind] [--no-init]

It builds the stage module and datamodule from the same YAMLs as `vrp fit` (overlays apply), reads every train and
test video's frozen-encoder tokens ONCE (from the config's feature cache when it has one, as `vrp fit` does; else by
decoding with the eval view, uniform frames and no crop, and running the encoder; `--decode` forces that), and then
trains the module's trainable parts (fusion, projection, LLM per its modes) on those features with the module's own
loss, optimiser settings and scorer. A step costs only fusion + LLM, so a run of the stage-2 length takes minutes
where `vrp fit` takes half an hour on two CPU cores. Every `--eval-every` steps it prints accuracy per question template
on a fixed sample of TRAIN and TEST questions: train near test near chance means the model has not learnt the template
yet (training length or capacity); train far above test means overfitting.

Not a replacement for `vrp fit`: one deterministic view per clip (no sampling jitter), no checkpoints, no validation,
one process. `--no-init` skips the stage-1 initialisation; `--blind` zeroes the visual features and drops the boxes
(text-only control, for fusions that run without boxes; with track fusion use the blind baseline's overlay,
`--config experiments/baselines/blind.yaml`).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

from lab.loop import train_steps


def _videos(records, loader, vision) -> dict[str, dict]:
    """video_key -> {visual (T, N, D), frame_mask, boxes, box_mask}: each video read from the feature cache, or
    decoded and encoded, once."""
    out: dict[str, dict] = {}
    for rec in records:
        if rec.video_key in out:
            continue
        s = loader(rec)
        if "visual" in s:  # from the feature cache
            visual = s["visual"]
        else:
            with torch.no_grad():
                visual = vision(s["video"][None])[0]  # (T, N, D)
        out[rec.video_key] = {
            "visual": visual,
            "frame_mask": s["frame_mask"],
            "boxes": s["boxes"],
            "box_mask": s["box_mask"],
            "box_attributes": s.get("box_attributes"),
        }
    return out


def start_from_stage1(module) -> None:
    """Load the stage module's `init_from` (a stage-1 checkpoint), if it names one, as a fresh `vrp fit` does in
    `setup("fit")`, which the lab's tools never call; say what was loaded."""
    if module.hparams.init_from:
        loaded, fresh = module.init_from_stage1()
        print(
            f"stage 1: {len(loaded)} tensors from {module.hparams.init_from}, {len(fresh)} kept their own", flush=True
        )


def _batch(records, feats, collator, blind: bool) -> dict:
    samples = []
    for rec in records:
        f = feats[rec.video_key]
        visual = torch.zeros_like(f["visual"]) if blind else f["visual"]
        boxes, box_mask = (None, None) if blind else (f["boxes"], f["box_mask"])  # boxes carry motion: drop them too
        samples.append(
            {
                "key": rec.key,
                "video": visual,
                "frame_mask": f["frame_mask"],
                "boxes": boxes,
                "box_mask": box_mask,
                "box_attributes": None if blind else f["box_attributes"],
                "turns": rec.turns,
                "qformer_text": rec.qformer_text,
                "question_type": rec.question_type,
                "options": rec.options,
                "answer_index": rec.answer_index,
            }
        )
    batch = collator(samples)
    batch["visual"] = batch.pop("video")  # the stage module and scorers read cached encoder tokens from "visual"
    return batch


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m lab probe", description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", required=True)
    p.add_argument("--steps", type=int, default=None, help="default: the config's trainer.max_steps")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-questions", type=int, default=600, help="questions sampled from each of train and test")
    p.add_argument("--types", default="", help="comma-separated question types to train and test on")
    p.add_argument("--templates", default="", help="comma-separated synthetic templates to train and test on")
    p.add_argument(
        "--train-videos", type=int, default=0, help="train on the questions of the first N train videos only"
    )
    p.add_argument("--blind", action="store_true", help="zero the visual features (text-only control)")
    p.add_argument("--no-init", action="store_true", help="do not load the stage-1 checkpoint")
    p.add_argument("--decode", action="store_true", help="decode and encode every video even if a feature cache is set")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    from vrp.evaluation.results import accuracy_table
    from vrp.models.contracts import TrackReader, box_substeps
    from vrp.scoring.per_question import rows_from_batch
    from vrp.tools.lightning_cli import VRPCLI
    from vrp.training.optim import adamw_cosine

    args = [x for c in a.config for x in ("--config", c)] + ["--trainer.logger=false"]
    if a.decode:  # decode and encode each video here (the same view as the feature cache: eval sampling, no crop)
        args.append("--data.init_args.feature_cache=null")
    if a.no_init:
        args.append("--model.init_args.init_from=null")
    sys.argv = sys.argv[:1]  # the CLI gets its arguments from `args` only (it warns when both are set)
    cli = VRPCLI(args=args, run=False)
    module, dm = cli.model, cli.datamodule
    model = module.model
    if a.blind and isinstance(model.fusion, TrackReader) and model.fusion.requires_tracks:
        raise SystemExit(
            f"--blind drops the boxes, which {type(model.fusion).__name__} needs; for a blind row use "
            "--config experiments/baselines/blind.yaml instead"
        )
    start_from_stage1(module)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    vision = model.vision.eval()
    dm.configure_preprocess(vision.image_size, tuple(vision.mean), tuple(vision.std))
    dm.configure_box_substeps(box_substeps(model.fusion))
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    templates = {t for t in a.templates.split(",") if t}
    types = {t for t in a.types.split(",") if t}
    by_template = _load_templates(dm)

    def keep(rec) -> bool:
        return (not types or rec.question_type in types) and (not templates or by_template.get(rec.key) in templates)

    train = [r for r in dm.records["train"] if keep(r)]
    if a.train_videos:  # a data-size what-if: the same steps on fewer clips
        first = list(dict.fromkeys(r.video_key for r in train))[: a.train_videos]
        train = [r for r in train if r.video_key in set(first)]
    test = [r for r in dm.records["test"] if keep(r)]
    if not train or not test:
        raise SystemExit(f"no questions left after --types {a.types!r} --templates {a.templates!r}")
    t0 = time.time()
    loader = dm.clip_loader(train=False)
    feats = _videos(train + test, loader, vision)
    print(
        f"{len(train)} train / {len(test)} test questions; {len(feats)} videos read in {time.time() - t0:.0f} s",
        flush=True,
    )

    total = a.steps or int(cli.config.trainer.max_steps)
    hp = module.hparams
    opt = adamw_cosine(
        module,
        lr=hp.lr,
        weight_decay=hp.weight_decay,
        betas=tuple(hp.betas),
        warmup_steps=hp.warmup_steps,
        total_steps=total,
        min_lr_ratio=hp.min_lr_ratio,
    )
    optimizer, scheduler = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    params = [q for q in module.parameters() if q.requires_grad]
    collator = dm.collator()
    scored = [r for r in train if r.options is not None]  # a mixture may hold captions: only questions are scored
    samples = {
        "train": rng.sample(scored, min(a.eval_questions, len(scored))),
        "test": rng.sample(test, min(a.eval_questions, len(test))),
    }

    def evaluate(recs) -> dict[str, float]:
        """Accuracy (%) per "[type]", "[all]" and per template, from the same rows and table as `vrp test`."""
        model.eval()
        rows = []
        with torch.no_grad():
            for i in range(0, len(recs), 32):
                batch = _batch(recs[i : i + 32], feats, collator, a.blind)
                rows += rows_from_batch(batch, module.scorer(model, batch))
        model.train()
        vision.eval()
        per_type = accuracy_table(rows)["accuracy"]
        per_template = accuracy_table([{**r, "type": by_template.get(r["key"], "?")} for r in rows])["accuracy"]
        acc = {("[all]" if t == "overall" else f"[{t}]"): v for t, v in per_type.items()}
        acc.update({t: v for t, v in per_template.items() if t != "overall"})
        return {k: round(acc[k], 1) for k in sorted(acc)}

    def log(step: int, loss: float) -> None:
        print(f"step {step}  loss {loss:.3f}  {time.time() - t0:.0f} s", flush=True)
        for split in ("train", "test"):
            print(f"  {split}: " + "  ".join(f"{k} {v}" for k, v in evaluate(samples[split]).items()), flush=True)

    def loss_of(idx: list[int]) -> torch.Tensor:
        return module.losses(_batch([train[i] for i in idx], feats, collator, a.blind))["loss"]

    t0 = time.time()
    train_steps(
        loss_of,
        len(train),
        params,
        optimizer,
        scheduler,
        steps=total,
        batch_size=dm.batch_size,
        rng=rng,
        log_every=a.eval_every,
        log=log,
    )


def _load_templates(dm) -> dict[str, str]:
    """Record key -> synthetic template name, from each split's instructions file (its ids are also the mc.csv keys,
    ``<video>_<qid>``), where the data has them."""
    import json

    out: dict[str, str] = {}
    for split in ("train", "val", "test"):
        path = Path(dm.root) / split / "instructions.json"
        if path.is_file():
            out.update(
                {str(item["id"]): item["template"] for item in json.loads(path.read_text()) if "template" in item}
            )
    return out
