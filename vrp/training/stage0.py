"""Stage 0 of the embedded default: make the tiny backbones (small) foundation models before stages 1-2.

Offline, no pretrained VFM or LLM can be downloaded, so `vrp prepare` pretrains the randomly initialised ones on the
TRAIN scenes only; validation and test scenes are never read. Each result is saved in Hugging Face format over the
random model (`<out>/vit`, `<out>/llm`) with a `stage0.json` report, then loaded by path like any real checkpoint.

- ViT (`--vit-steps N`): supervised per patch with what the simulator drew there, the colour and the shape of the
  object covering the patch centre (or background), from the training split's `boxes.json` object names; it stays
  frozen afterwards. Stages 1-2 never see a label.
- LLM (`--llm-steps N`): next-token prediction on text about the simulated world, written from the training
  scenes' annotations (`text_corpus`): every caption of a clip (its objects and the events in order), then each of
  its questions with the answer sentence. It learns the world's vocabulary and how events are told and asked
  about; which events happen in a clip it can only learn from the video in stages 1-2.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

BACKGROUND = 0  # class 0 of both heads; colours / shapes are 1-based in the vocabularies below


def _train(
    name: str,
    params: list[nn.Parameter],
    loss_of,
    n: int,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    rng: random.Random,
    log_every: int,
    start: float,
) -> list[float]:
    """The stage-0 loop: AdamW with a one-cycle schedule over ``steps`` batches of indices into ``n`` examples (each
    epoch a new permutation), ``loss_of(indices) -> loss``, gradients clipped at 1; returns the loss per step."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    order: list[int] = []
    losses: list[float] = []
    for step in range(1, steps + 1):
        while len(order) < batch_size:
            order += rng.sample(range(n), n)
        loss = loss_of([order.pop() for _ in range(batch_size)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == steps:
            recent = losses[-log_every:]
            print(
                f"stage 0 ({name}): step {step}/{steps}  loss {sum(recent) / len(recent):.3f}  "
                f"{time.time() - start:.0f} s",
                flush=True,
            )
    return losses


def loss_ends(losses: list[float]) -> dict:
    """The stage-0 report's mean loss over the first and the last 20 steps."""
    return {
        "loss_start": round(sum(losses[:20]) / len(losses[:20]), 3),
        "loss_end": round(sum(losses[-20:]) / len(losses[-20:]), 3),
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
    from data_modules.synthetic.simulator import COLORS, SHAPES
    from vrp.models.vision import HFVisionEncoder

    torch.manual_seed(seed)
    rng = random.Random(seed)
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
    losses = _train(
        "ViT",
        params,
        loss_of,
        len(images),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        rng=rng,
        log_every=log_every,
        start=start,
    )
    encoder.eval()
    with torch.no_grad():  # colour + shape both right, on the object patches of the first 256 training frames
        idx = torch.arange(min(256, len(images)))
        tokens = encoder(images[idx][:, None])[:, 0, P:]
        obj = shape[idx] > 0
        hit = (heads["shape"](tokens).argmax(-1) == shape[idx]) & (heads["colour"](tokens).argmax(-1) == colour[idx])
        acc = float(hit[obj].float().mean()) if obj.any() else float("nan")
    encoder.backbone.save_pretrained(str(vit_dir))  # over the random ViT: configs keep loading it by path
    report = {
        "steps": steps,
        **loss_ends(losses),
        "patch_accuracy": round(acc, 3),
        "frames": len(images),
        "seconds": round(time.time() - start, 1),
    }
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
    of them) are kept out of training and give the report's precision, recall (IoU >= 0.5) and mean IoU. Returns the report, also written to
    ``out_dir/stage0.json``."""
    from vrp.models.detection import CenterNet
    from vrp.scoring.detection import TrackScore, score_tracks

    torch.manual_seed(seed)
    rng = random.Random(seed)
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
    losses = _train(
        "detector",
        list(net.parameters()),
        loss_of,
        len(train_frames),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        rng=rng,
        log_every=log_every,
        start=start,
    )
    net.eval()
    score = TrackScore()
    for chunk in range(0, held, 64):
        images = frames[-held:][chunk : chunk + 64].float() / 255
        for det, truth in zip(net.detect(images), boxes[-held:][chunk : chunk + 64]):
            score.add(score_tracks(det.boxes[None], truth[None]))  # one frame: precision, recall, IoU
    net.save_pretrained(out_dir)
    summary = score.summary()
    report = {
        "steps": steps,
        **loss_ends(losses),
        "held_out_precision": summary["precision"],
        "held_out_recall": summary["recall"],
        "held_out_mean_iou": summary["mean_iou"],
        "frames": len(train_frames),
        "seconds": round(time.time() - start, 1),
    }
    (Path(out_dir) / "stage0.json").write_text(json.dumps(report, indent=1))
    return report


def text_corpus(data_root: str | Path) -> list[str]:
    """Documents about the TRAIN clips: per clip, its captions (every form the WebDataset shards hold), and the same
    captions followed by one of its questions, "Question: ... Answer: ..." with the free-text answer sentence."""
    import tarfile

    from data_modules.sources.record import strip_placeholder

    root = Path(data_root) / "train"
    captions: dict[str, list[str]] = {}
    for shard in sorted((root / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    captions[meta["key"]] = list(meta.get("captions") or [meta["caption"]])
    if not captions:
        raise FileNotFoundError(f"no WebDataset shards with captions under {root / 'shards'}; run `make data`")
    qa: dict[str, list[str]] = {}
    for item in json.loads((root / "instructions.json").read_text()):
        key = Path(item["video"]).stem
        question = strip_placeholder(item["conversations"][0]["value"])
        qa.setdefault(key, []).append(f"Question: {question} Answer: {item['answer_sentence']}")
    return [" ".join(captions[k] + extra) for k in sorted(captions) for extra in [[], *([q] for q in qa.get(k, []))]]


def pretrain_llm(
    llm_dir: str | Path,
    data_root: str | Path,
    *,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    max_length: int = 160,
    seed: int = 0,
    held_out: float = 0.05,
    log_every: int = 100,
) -> dict:
    """Train the causal LM saved at ``llm_dir`` on `text_corpus` (next-token loss) and save it back in place;
    returns {"steps", "loss_start", "loss_end", "held_out_loss_start", "held_out_loss", "documents", "seconds"}. ``held_out``: the share of
    training documents kept out of training to report the loss on."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    rng = random.Random(seed)
    start = time.time()
    tok = AutoTokenizer.from_pretrained(str(llm_dir))
    model = AutoModelForCausalLM.from_pretrained(str(llm_dir))
    docs = text_corpus(data_root)
    rng.shuffle(docs)
    n_eval = max(1, int(len(docs) * held_out))
    eval_docs, train_docs = docs[:n_eval], docs[n_eval:]

    def batch(texts: list[str]) -> dict:
        enc = tok(
            [tok.bos_token + t + tok.eos_token for t in texts],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            add_special_tokens=False,
        )
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        return {**enc, "labels": labels}

    def held_out_loss() -> float:
        model.eval()
        with torch.no_grad():
            held = [model(**batch(eval_docs[i : i + batch_size])).loss.item() for i in range(0, n_eval, batch_size)]
        model.train()
        return round(sum(held) / len(held), 3)

    before = held_out_loss()
    model.train()
    losses = _train(
        "LLM",
        list(model.parameters()),
        lambda idx: model(**batch([train_docs[i] for i in idx])).loss,
        len(train_docs),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        rng=rng,
        log_every=log_every,
        start=start,
    )
    after = held_out_loss()
    model.save_pretrained(str(llm_dir))  # over the random LLM: configs keep loading it by path
    report = {
        "steps": steps,
        **loss_ends(losses),
        "held_out_loss_start": before,
        "held_out_loss": after,
        "documents": len(train_docs),
        "seconds": round(time.time() - start, 1),
    }
    (Path(llm_dir) / "stage0.json").write_text(json.dumps(report, indent=1))
    return report
