"""Stage 0 of the embedded default: make the tiny backbones (small) foundation models before stages 1-2.

Offline, no pretrained VFM or LLM can be downloaded, so `python -m lab prepare` pretrains the randomly initialised
ones: the ViT and the detector on the TRAIN scenes only, the LLM on scenes of its own; validation and test scenes are
never read. Each result is saved in Hugging Face format over the random model (`<out>/vit`, `<out>/llm`) with a
`stage0.json` report, then loaded by path like any real checkpoint.

- ViT (`--vit-steps N`): supervised per patch with what the simulator drew there, the colour and the shape of the
  object covering the patch centre (or background), from the training split's `boxes.json` object names; it stays
  frozen afterwards. Stages 1-2 never see a label.
- LLM (`--llm-steps N`): next-token prediction on knowledge of the simulated world (`llm_stage0`): documents
  written by `lab.synthetic.knowledge` about scenes of a seed stream of their own (never a train,
  validation or test clip) that tell objects, motions, collisions and wall hits in order, their causes, what follows
  the state at the cut and what would have happened without an object, and ask no question; or, as a control, the
  same sentences shuffled across scenes. Held-out scenes of the stream give the held-out loss and a probe (does the
  LM prefer a true cause / next hit / counterfactual to a wrong one).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lab.loop import train_steps

BACKGROUND = 0  # class 0 of both heads; colours / shapes are 1-based in the vocabularies below


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How stage 0 trains one model: AdamW (weight decay 0.05) with a one-cycle schedule over ``steps`` batches of
    ``batch_size`` examples, shuffled by ``seed``, the mean loss printed every ``log_every`` steps."""

    steps: int
    batch_size: int
    lr: float
    seed: int
    log_every: int

    def train(
        self, name: str, params: list[nn.Parameter], loss_of: Callable[[list[int]], torch.Tensor], n: int, start: float
    ) -> list[float]:
        """The stage-0 loop over ``n`` examples, ``loss_of(indices) -> loss``; returns the loss per step."""
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.05)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=self.steps, pct_start=0.1)

        def log(step: int, loss: float) -> None:
            print(
                f"stage 0 ({name}): step {step}/{self.steps}  loss {loss:.3f}  {time.time() - start:.0f} s", flush=True
            )

        return train_steps(
            loss_of,
            n,
            params,
            opt,
            sched,
            steps=self.steps,
            batch_size=self.batch_size,
            rng=random.Random(self.seed),
            log_every=self.log_every,
            log=log,
        )

    def report(self, losses: list[float], measures: dict, start: float) -> dict:
        """The stage-0 report: the steps, the mean loss over the first and the last 20 steps, ``measures`` and the
        seconds since ``start``."""
        return {
            "steps": self.steps,
            "loss_start": round(sum(losses[:20]) / len(losses[:20]), 3),
            "loss_end": round(sum(losses[-20:]) / len(losses[-20:]), 3),
            **measures,
            "seconds": round(time.time() - start, 1),
        }


def patch_labels(
    boxes: torch.Tensor, names: list[str], grid: tuple[int, int], colours: list[str], shapes: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch (colour, shape) class ids of one frame: boxes (K, 4) xyxy in [0, 1] (NaN: absent), names K object
    names "colour shape" -> two (gh*gw,) long tensors, 0 where no box covers the patch centre; where boxes overlap
    the object whose centre is nearest wins."""
    gh, gw = grid
    ys, xs = torch.meshgrid((torch.arange(gh) + 0.5) / gh, (torch.arange(gw) + 0.5) / gw, indexing="ij")
    centres = torch.stack([xs.flatten(), ys.flatten()], dim=-1)  # (P, 2) as (x, y)
    colour = torch.zeros(gh * gw, dtype=torch.long)
    shape = torch.zeros(gh * gw, dtype=torch.long)
    best = torch.full((gh * gw,), float("inf"))
    for box, name in zip(boxes, names):
        if torch.isnan(box).any():
            continue
        c, s = name.split()[0], name.split()[-1]
        inside = ((centres >= box[:2]) & (centres <= box[2:])).all(-1)
        dist = (centres - (box[:2] + box[2:]) / 2).norm(dim=-1)
        win = inside & (dist < best)
        colour[win], shape[win], best[win] = colours.index(c) + 1, shapes.index(s) + 1, dist[win]
    return colour, shape


def training_frames(
    data_root: str | Path,
    image_size: int,
    frames_per_video: int,
    mean,
    std,
    grid,
    colours: list[str],
    shapes: list[str],
    max_videos: int | None = None,
):
    """(images (M, 3, S, S), colour (M, P), shape (M, P)) from the train split's videos and boxes."""
    from data_modules.sources.boxes import BoxTable
    from data_modules.transforms import VideoTransform
    from data_modules.video import read_video

    root = Path(data_root) / "train"
    table = BoxTable(str(root / "boxes.json"))
    transform = VideoTransform(image_size, tuple(mean), tuple(std), train=False)
    keys = sorted(table.table)[:max_videos]
    images, colour, shape = [], [], []
    for key in keys:
        clip = read_video(root / "videos" / f"{key}.mp4", frames_per_video, sampling="uniform")
        boxes, present = table.lookup(key, clip.timestamps, clip.fps)  # the sampled frames' rows (T, K, 4), (T, K)
        raw = boxes.masked_fill(~present[..., None], float("nan"))  # absent objects label no patch
        video, _, _ = transform(clip.frames, None, None)  # (T, 3, S, S)
        for t in range(video.shape[0]):
            if not clip.frame_mask[t]:
                continue
            c, s = patch_labels(raw[t], table.objects[key], grid, colours, shapes)
            images.append(video[t])
            colour.append(c)
            shape.append(s)
    return torch.stack(images), torch.stack(colour), torch.stack(shape)


def pretrain_vit(
    vit_dir: str | Path,
    data_root: str | Path,
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    frames_per_video: int = 2,
    seed: int = 0,
    max_videos: int | None = None,
    log_every: int = 100,
) -> dict:
    """Train the ViT saved at ``vit_dir`` on per-patch colour + shape classification of training frames and save it
    back in place (Hugging Face format); returns {"steps", "loss_start", "loss_end", "patch_accuracy", "seconds"}."""
    from lab.synthetic.simulator import COLORS, SHAPES
    from vrp.models.vision import HFVisionEncoder

    schedule = Schedule(steps, batch_size, lr, seed, log_every)
    torch.manual_seed(seed)
    encoder = HFVisionEncoder(str(vit_dir), frozen=False)
    colours, shapes = list(COLORS), list(SHAPES)
    start = time.time()
    images, colour, shape = training_frames(
        data_root,
        encoder.image_size,
        frames_per_video,
        encoder.mean,
        encoder.std,
        encoder.grid,
        colours,
        shapes,
        max_videos,
    )
    heads = nn.ModuleDict(
        {"colour": nn.Linear(encoder.width, len(colours) + 1), "shape": nn.Linear(encoder.width, len(shapes) + 1)}
    )
    params = [p for p in encoder.parameters() if p.requires_grad] + list(heads.parameters())
    P = encoder.num_prefix_tokens

    def loss_of(idx: list[int]) -> torch.Tensor:
        i = torch.tensor(idx)
        tokens = encoder(images[i][:, None])[:, 0, P:]  # (b, gh*gw, D)
        return F.cross_entropy(heads["colour"](tokens).flatten(0, 1), colour[i].flatten()) + F.cross_entropy(
            heads["shape"](tokens).flatten(0, 1), shape[i].flatten()
        )

    encoder.train()
    losses = schedule.train("ViT", params, loss_of, len(images), start)
    encoder.eval()
    with torch.no_grad():  # colour + shape both right, on the object patches of the first 256 training frames
        idx = torch.arange(min(256, len(images)))
        tokens = encoder(images[idx][:, None])[:, 0, P:]
        obj = shape[idx] > 0
        hit = (heads["shape"](tokens).argmax(-1) == shape[idx]) & (heads["colour"](tokens).argmax(-1) == colour[idx])
        acc = float(hit[obj].float().mean()) if obj.any() else float("nan")
    encoder.backbone.save_pretrained(str(vit_dir))  # over the random ViT: configs keep loading it by path
    report = schedule.report(losses, {"patch_accuracy": round(acc, 3), "frames": len(images)}, start)
    (Path(vit_dir) / "stage0.json").write_text(json.dumps(report, indent=1))
    return report


def detection_frames(
    data_root: str | Path, frames_per_video: int, max_videos: int | None = None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(frames (M, 3, H, W) uint8, boxes: one (N, 4) xyxy tensor per frame) from the train split's videos and their
    boxes file: the detector's labelled training set."""
    from data_modules.sources.boxes import BoxTable
    from data_modules.video import read_video

    root = Path(data_root) / "train"
    table = BoxTable(str(root / "boxes.json"))
    frames, boxes = [], []
    for key in sorted(table.table)[:max_videos]:
        clip = read_video(root / "videos" / f"{key}.mp4", frames_per_video, sampling="uniform")
        rows, present = table.lookup(key, clip.timestamps, clip.fps)  # (T, K, 4), (T, K)
        for t in range(len(rows)):
            if clip.frame_mask[t]:
                frames.append(clip.frames[t])
                boxes.append(rows[t][present[t]])
    return torch.stack(frames), boxes


def pretrain_detector(
    out_dir: str | Path,
    data_root: str | Path,
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    frames_per_video: int = 4,
    seed: int = 0,
    max_videos: int | None = None,
    held_out_videos: int = 100,
    log_every: int = 100,
) -> dict:
    """Train the embedded detector (`vrp.models.detection.CenterNet`) on TRAIN frames with their boxes as labels
    (random horizontal flips), then save it to ``out_dir``; the last ``held_out_videos`` train videos (at most half
    of them) are kept out of training and give the report's precision, recall (IoU >= 0.5) and mean IoU. Returns
    the report, also written to ``out_dir/stage0.json``."""
    from vrp.models.detection import CenterNet
    from vrp.scoring.detection import TrackScore, score_tracks

    schedule = Schedule(steps, batch_size, lr, seed, log_every)
    torch.manual_seed(seed)
    start = time.time()
    frames, boxes = detection_frames(data_root, frames_per_video, max_videos)
    held = min(held_out_videos, len(frames) // frames_per_video // 2) * frames_per_video
    if not held:
        raise ValueError(f"{data_root}: too few train videos for the detector's stage 0 (need at least 2)")
    train_frames, train_boxes = frames[:-held], boxes[:-held]
    net = CenterNet()

    def loss_of(idx: list[int]) -> torch.Tensor:
        flip = torch.rand(len(idx)) < 0.5
        images = train_frames[idx].float() / 255
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        targets = [
            torch.stack([1 - b[:, 2], b[:, 1], 1 - b[:, 0], b[:, 3]], dim=-1) if f else b
            for b, f in zip((train_boxes[i] for i in idx), flip.tolist())
        ]
        return net.loss(images, targets)

    net.train()
    losses = schedule.train("detector", list(net.parameters()), loss_of, len(train_frames), start)
    net.eval()
    score = TrackScore()
    for chunk in range(0, held, 64):
        images = frames[-held:][chunk : chunk + 64].float() / 255
        for det, truth in zip(net.detect(images), boxes[-held:][chunk : chunk + 64]):
            score.add(score_tracks(det.boxes[None], truth[None]))  # one frame: precision, recall, IoU
    net.save_pretrained(out_dir)
    summary = score.summary()
    measures = {f"held_out_{k}": summary[k] for k in ("precision", "recall", "mean_iou")}
    report = schedule.report(losses, {**measures, "frames": len(train_frames)}, start)
    (Path(out_dir) / "stage0.json").write_text(json.dumps(report, indent=1))
    return report


CORPORA = ("knowledge", "control")


def llm_stage0(
    llm_dir: str | Path,
    data_root: str | Path,
    *,
    corpus: str,
    scenes: int,
    steps: int,
    seed: int = 0,
    max_length: int = 160,
    log_every: int = 100,
) -> dict:
    """Stage 0 of the LLM: `pretrain_llm` on the knowledge documents of ``scenes`` scenes of the knowledge stream of
    ``seed`` (`lab.synthetic.knowledge`, drawn by the rules of ``data_root``'s meta.json when there is one),
    or on their control (the same sentences shuffled across scenes). Documents of further scenes of the stream,
    never trained on, give the held-out loss and the probe (`prefers_true`) whatever the corpus, so a knowledge and
    a control LLM are measured on the same text. Writes ``llm_dir/stage0.json`` and returns it."""
    from transformers import AutoTokenizer

    from lab.synthetic import knowledge as kn

    if corpus not in CORPORA:
        raise ValueError(f"unknown LLM corpus {corpus!r}; choose from {CORPORA}")
    if scenes < 2:
        raise ValueError(f"the LLM corpus needs at least 2 scenes, got {scenes}")
    start = time.time()
    tok = AutoTokenizer.from_pretrained(str(llm_dir))
    tokens = functools.lru_cache(maxsize=None)(lambda t: len(tok(t, add_special_tokens=False).input_ids))
    budget = kn.Budget(max_length - 2, tokens)  # room for bos and eos
    meta = Path(data_root) / "meta.json"
    world = kn.World.of(json.loads(meta.read_text())["config"]) if meta.is_file() else kn.World()
    held = max(4, min(100, scenes // 10))
    docs = kn.knowledge_corpus(seed, range(scenes), world, budget)
    train = docs if corpus == "knowledge" else kn.control_corpus(docs, seed)
    held_docs = kn.knowledge_corpus(seed, range(scenes, scenes + held), world, budget)
    corpus_seconds = round(time.time() - start, 1)
    print(f"stage 0 (LLM): {len(train)} {corpus} documents of {scenes} scenes in {corpus_seconds} s", flush=True)
    # a control document holds as many sentences as its knowledge document, not as many tokens: no cut, so that
    # both corpora train on every token
    longest = max(budget.size(d.sentences) for d in train)
    report = pretrain_llm(
        llm_dir,
        [d.text for d in train],
        [d.text for d in held_docs],
        steps=steps,
        max_length=max(max_length, longest + 2),
        seed=seed,
        log_every=log_every,
    )
    report = {
        "steps": steps,
        "corpus": corpus,
        "scenes": scenes,
        "held_out_scenes": held,
        "seed_stream": f"SeedSequence([{seed}, {kn.KNOWLEDGE_STREAM:#x}, i]): scenes i < {scenes} trained on, "
        f"{scenes} <= i < {scenes + held} held out",
        "world": dataclasses.asdict(world),
        "sentences": sum(len(d.sentences) for d in train),
        "held_out_documents": len(held_docs),
        **{k: v for k, v in report.items() if k != "steps"},
        "probe": prefers_true(llm_dir, kn.probe_items(held_docs, seed)),
        "corpus_seconds": corpus_seconds,
        "seconds": round(time.time() - start, 1),
    }
    (Path(llm_dir) / "stage0.json").write_text(json.dumps(report, indent=1))
    return report


def pretrain_llm(
    llm_dir: str | Path,
    documents: list[str],
    held_out: list[str],
    *,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    max_length: int = 160,
    seed: int = 0,
    log_every: int = 100,
) -> dict:
    """Train the causal LM saved at ``llm_dir`` on ``documents`` (next-token loss, each document between bos and
    eos, cut at ``max_length`` tokens) and save it back in place; ``held_out`` documents, never trained on, give the
    loss before and after. Returns {"steps", "loss_start", "loss_end", "held_out_loss_start", "held_out_loss",
    "documents", "max_length", "truncated" (documents longer than ``max_length``), "seconds"}."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not documents or not held_out:
        raise ValueError(
            f"stage 0 of the LLM needs documents and held-out documents, got {len(documents)} and {len(held_out)}"
        )
    schedule = Schedule(steps, batch_size, lr, seed, log_every)
    torch.manual_seed(seed)
    start = time.time()
    tok = AutoTokenizer.from_pretrained(str(llm_dir))
    model = AutoModelForCausalLM.from_pretrained(str(llm_dir))

    def batch(texts: list[str]) -> dict:
        enc = tok(
            [tok.bos_token + t + tok.eos_token for t in texts],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            add_special_tokens=False,
        )
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)  # (B, L)
        return {**enc, "labels": labels}

    def held_out_loss() -> float:
        model.eval()
        with torch.no_grad():
            held = [
                model(**batch(held_out[i : i + batch_size])).loss.item() for i in range(0, len(held_out), batch_size)
            ]
        model.train()
        return round(sum(held) / len(held), 3)

    before = held_out_loss()
    model.train()
    losses = schedule.train(
        "LLM",
        list(model.parameters()),
        lambda idx: model(**batch([documents[i] for i in idx])).loss,
        len(documents),
        start,
    )
    after = held_out_loss()
    model.save_pretrained(str(llm_dir))  # over the random LLM: configs keep loading it by path
    lengths = [len(ids) + 2 for ids in tok(documents, add_special_tokens=False)["input_ids"]]
    measures = {"held_out_loss_start": before, "held_out_loss": after, "documents": len(documents)}
    return schedule.report(
        losses, {**measures, "max_length": max_length, "truncated": sum(n > max_length for n in lengths)}, start
    )


def prefers_true(llm_dir: str | Path, items: list, batch_size: int = 16) -> dict:
    """The knowledge probe: per kind of item (`lab.synthetic.knowledge.ProbeItem`), the share of items whose
    true sentence the LM at ``llm_dir`` finds likelier after the context than the wrong one, and the item count."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(llm_dir))
    model = AutoModelForCausalLM.from_pretrained(str(llm_dir)).eval()
    texts = [f"{it.context} {s}" for it in items for s in (it.true, it.wrong)]
    scores = torch.cat(
        [sequence_logprob(model, tok, texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    )
    right = (scores[0::2] > scores[1::2]).tolist()  # (N,) true beats wrong
    out = {}
    for kind in dict.fromkeys(it.kind for it in items):
        mine = [r for r, it in zip(right, items) if it.kind == kind]
        out[kind] = {"prefers_true": round(sum(mine) / len(mine), 3), "items": len(mine)}
    return out


def sequence_logprob(model, tok, texts: list[str]) -> torch.Tensor:
    """(N,) log-likelihood of each text after bos under the causal LM (right padding)."""
    enc = tok([tok.bos_token + t for t in texts], padding=True, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = model(**enc).logits[:, :-1]  # (N, L-1, V)
    target = enc["input_ids"][:, 1:]  # (N, L-1)
    logp = logits.log_softmax(-1).gather(-1, target[..., None])[..., 0]  # (N, L-1)
    return (logp * enc["attention_mask"][:, 1:]).sum(-1)
