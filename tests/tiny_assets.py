"""Tiny assets that tests in every folder share: word-level tokenizers, tiny backbone sizes and saved backbones, a
toy datamodule whose batches follow data_modules/batch.py (random pixels, fixed-length prompts, answers that depend
on the video), and tiny stage configs built from the shipped embedded YAMLs by vrp's own parser."""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import asdict
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from data_modules.video import write_video
from vrp.models.qformer_fusion import QFormerOptions

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "experiments" / "embedded"  # the shipped stage configs: pretrain.yaml, finetune.yaml
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<video>"]
WORDS = "what colour is it ? red green blue yellow a video of shapes moving".split()
ANSWERS = ["red", "green", "blue", "yellow"]
TINY_VIT = {
    "model_type": "vit",
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
TINY_LLM = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}
TINY_QFORMER = QFormerOptions(
    num_query_tokens=2, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, num_frames=2
)
# The settings that keep a test's Trainer quiet and on the CPU: no logger, checkpoints, progress bar or summary.
QUIET_TRAINER = dict(
    accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
)


def word_tokenizer(
    words: list[str] = WORDS,
    specials: list[str] = SPECIALS,
    *,
    bos: bool = True,
    punctuation: bool = False,
    extra_special_tokens: list[str] | dict[str, str] | None = None,
    chat_template: str | None = None,
):
    """A word-level fast tokenizer built offline: ids 0.. are ``specials`` then ``words`` (other words are <unk>),
    <s> prepended to every encoding (``bos``, like Llama's), split at whitespace and, with ``punctuation``, before and
    after punctuation. ``extra_special_tokens``: the special tokens beyond <pad> <s> </s> <unk>, as a list or named
    (``{"video_token": "<video>"}`` gives ``tokenizer.video_token``); by default the other ``specials``; with ``[]``
    those are plain words. Every test tokenizer is one of these (the data-module tests train the project's own)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate([*specials, *words])}, unk_token="<unk>"))
    split = pre_tokenizers.WhitespaceSplit()
    tok.pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.Punctuation()]) if punctuation else split
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    if extra_special_tokens is None:
        extra_special_tokens = [t for t in specials if t not in ("<pad>", "<s>", "</s>", "<unk>")]
    if isinstance(extra_special_tokens, dict):
        extra = {"extra_special_tokens": extra_special_tokens}
    else:
        extra = {"additional_special_tokens": extra_special_tokens} if extra_special_tokens else {}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>", **extra
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def build_backbones(root: Path) -> Path:
    """root/tokenizer, root/vit, root/llm (the embedded `prepare` path with tiny configs)."""
    from lab.prepare import save_random_backbones

    if not (root / "llm" / "config.json").is_file():
        word_tokenizer().save_pretrained(root / "tokenizer")
        save_random_backbones(str(root / "tokenizer"), root, seed=0, vit=TINY_VIT, llm=TINY_LLM)
    return root


class _Toy(Dataset):
    def __init__(
        self,
        tokenizer,
        n: int,
        frames: int,
        size: int,
        seed: int,
        with_options: bool,
        nan_samples: tuple[int, ...] = (),
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, len(ANSWERS), (n,), generator=g)
        # the answer is visible: a colour-coded mean brightness per channel plus noise
        base = torch.eye(4, 3)[self.labels]  # (n, 3)
        self.video = base[:, None, :, None, None] + 0.3 * torch.randn(n, frames, 3, size, size, generator=g)
        self.video[list(nan_samples)] = float("nan")  # damaged samples: their loss and gradients are NaN
        prompt = tokenizer("<video> what colour is it ?")["input_ids"]
        self.rows = [
            (prompt, tokenizer(ANSWERS[int(y)], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
            for y in self.labels
        ]
        self.with_options = with_options

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        p, a = self.rows[i]
        item = {
            "video": self.video[i],
            "input_ids": torch.tensor(p + a),
            "labels": torch.tensor([-100] * len(p) + a),
            "key": f"toy_{i:04d}",
        }
        if self.with_options:
            item["answer_index"] = int(self.labels[i])
        return item


def _collate(items: list[dict], boxes: bool = False) -> dict:
    ids = torch.stack([x["input_ids"] for x in items])
    batch = {
        "video": torch.stack([x["video"] for x in items]),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.stack([x["labels"] for x in items]),
        "keys": [x["key"] for x in items],
        "qformer_input_ids": ids[:, 2:],
        "qformer_attention_mask": torch.ones_like(ids[:, 2:]),
    }
    batch["frame_mask"] = torch.ones(batch["video"].shape[:2], dtype=torch.bool)
    if boxes:  # two objects per frame, one of them absent in the last frame
        B, T = batch["frame_mask"].shape
        corner = torch.linspace(0.0, 0.4, B * T * 2).view(B, T, 2, 1).expand(B, T, 2, 2)
        batch["boxes"] = torch.cat([corner, corner + 0.5], dim=-1)
        batch["box_mask"] = torch.ones(B, T, 2, dtype=torch.bool)
        batch["box_mask"][:, -1, 1] = False
    if "answer_index" in items[0]:
        batch["answer_index"] = torch.tensor([x["answer_index"] for x in items])
        batch["options"] = [list(ANSWERS) for _ in items]
        batch["prompt"] = ["<video> what colour is it ?"] * len(items)
        batch["question_type"] = ["descriptive" if x["answer_index"] < 2 else "temporal" for x in items]
    return batch


class ToyData(L.LightningDataModule):
    """Map-style toy data; `shuffle=True` draws a seeded permutation per epoch."""

    def __init__(
        self,
        tokenizer: str,
        num_samples: int = 32,
        num_frames: int = 2,
        batch_size: int = 4,
        shuffle: bool = False,
        seed: int = 0,
        nan_samples: tuple[int, ...] = (),
        boxes: bool = False,
    ) -> None:
        super().__init__()
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(tokenizer)
        self.num_samples, self.num_frames, self.batch_size, self.shuffle, self.seed = (
            num_samples,
            num_frames,
            batch_size,
            shuffle,
            seed,
        )
        self.nan_samples = tuple(nan_samples)
        self.boxes = boxes
        self.image_size = 32

    def configure_preprocess(self, image_size: int, mean, std) -> None:
        self.image_size = image_size

    def _loader(self, seed: int, with_options: bool, shuffle: bool, nan_samples: tuple[int, ...] = ()) -> DataLoader:
        ds = _Toy(self.tok, self.num_samples, self.num_frames, self.image_size, seed, with_options, nan_samples)
        if self.trainer is not None and self.trainer.world_size > 1:  # rank r reads samples r, r + W, ...
            sampler = DistributedSampler(
                ds, self.trainer.world_size, self.trainer.global_rank, shuffle=shuffle, seed=self.seed
            )
            return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, collate_fn=self._collate)
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            collate_fn=self._collate,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
        )

    def _collate(self, items: list[dict]) -> dict:
        return _collate(items, self.boxes)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.seed, False, self.shuffle, self.nan_samples)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.seed + 1, False, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.seed + 2, True, False)


def stage_config(run: Path, backbones: Path, data: dict, *overlays: dict, stage: str = "finetune") -> Path:
    """experiments/embedded/<stage>.yaml at tiny size, resolved by vrp's own parser into ``run``/config.yaml: the
    backbones saved under ``backbones`` (vit, llm, detector), the shipped fusion at tiny sizes, the datamodule
    overlay ``data`` (`synthetic_data` or `toy_data`), two steps, no validation, CSV logs and checkpoints (ckpt/) under
    ``run``; then each of ``overlays`` on top, as later ``--config`` files. A shipped YAML that stops resolving fails
    here, in every test that builds its config this way."""
    from vrp.tools.lightning_cli import cli

    model = {
        "vision": {"init_args": {"model_name_or_path": str(backbones / "vit")}},
        "fusion": {
            "init_args": {"num_frames": 2, "hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}
        },
        "objects": {"init_args": {"detector": {"init_args": {"path": str(backbones / "detector")}}}},
        "llm": {"init_args": {"model_name_or_path": str(backbones / "llm"), "lora_rank": 4}},
    }
    tiny = {
        "trainer": {
            "accelerator": "cpu",  # the same numbers on every machine
            "max_steps": 2,
            "val_check_interval": None,
            "limit_val_batches": 0,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(run),
            "logger": [
                {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(run), "name": "csv", "version": ""},
                }
            ],
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(run / "ckpt"), "save_last": True, "save_top_k": 0},
                }
            ],
        },
        "model": {"init_args": {"lr": 1e-3, "warmup_steps": 1, "model": {"init_args": model}}},
        "data": data,
    }
    if stage == "finetune":  # stage 2 from scratch, without the blind baseline of data/synthetic
        tiny["model"]["init_args"]["init_from"] = None
        tiny["results"] = {"blind_baseline": None}
    run.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = ["--config", str(EMBEDDED / f"{stage}.yaml")]
        for i, overlay in enumerate((tiny, *overlays)):
            (Path(tmp) / f"{i}.yaml").write_text(yaml.safe_dump(overlay))
            args += ["--config", str(Path(tmp) / f"{i}.yaml")]
        resolved = io.StringIO()
        with contextlib.redirect_stdout(resolved), contextlib.suppress(SystemExit):
            cli([*args, "--print_config"], run=False)
    if not resolved.getvalue():
        raise ValueError(
            f"{EMBEDDED / stage}.yaml with the tiny overlays does not resolve (the parser names the cause on stderr)"
        )
    (run / "config.yaml").write_text(resolved.getvalue())
    return run / "config.yaml"


def synthetic_data(root: Path, boxes: bool = False) -> dict:
    """The datamodule overlay for a set that `lab.synthetic.generate` wrote to ``root``: decoded in the main process
    (no feature cache, no workers), 2 frames, batches of 4, with the simulator's boxes (``boxes``) or none (no
    tracks)."""
    return {
        "init_args": {
            "root": str(root),
            "ground_truth_boxes": boxes,
            "tracks": None,
            "feature_cache": None,
            "num_frames": 2,
            "batch_size": 4,
            "num_workers": 0,
        }
    }


def toy_data(backbones: Path, num_samples: int = 8) -> dict:
    """The datamodule overlay for `ToyData` with the tokenizer saved under ``backbones``: 2 frames, batches of 4."""
    return {
        "class_path": f"{__name__}.ToyData",
        "init_args": {
            "tokenizer": str(backbones / "tokenizer"),
            "num_samples": num_samples,
            "num_frames": 2,
            "batch_size": 4,
        },
    }


def toy_config(backbones: Path, run: Path, *overlays: dict) -> Path:
    """`stage_config` of stage 2 on `ToyData` (8 samples) with an MLP connector, no object stage and the full LLM."""
    toy = reasoner(
        {"fusion": {"class_path": "vrp.models.MLPConnector", "init_args": {"output_dim": 32}}, "objects": None}
    )
    return stage_config(run, backbones, toy_data(backbones), toy, *overlays)


def reasoner(changes: dict) -> dict:
    """The overlay that sets ``changes`` in the stage module's `VideoReasoner` (model.init_args.model.init_args)."""
    return {"model": {"init_args": {"model": {"init_args": changes}}}}


def frame_qformer(qformer: QFormerOptions = TINY_QFORMER) -> dict:
    """A per-frame Q-Former fusion with ``qformer``'s options and a one-layer video Q-Former of 4 queries."""
    return {
        "class_path": "vrp.models.FrameQFormerFusion",
        "init_args": {"qformer": asdict(qformer), "video_num_query_tokens": 4, "video_num_layers": 1},
    }


def mc_source(path: Path, boxes: Path | None = None) -> dict:
    """A `MultipleChoice` source over the mc.csv at ``path`` as `vrp test` reads it: the question after the video
    placeholder, the options scored as text, with the boxes (simulator's or tracks) of ``boxes``."""
    return {
        "class_path": "data_modules.sources.MultipleChoice",
        "init_args": {
            "path": str(path),
            "template": "<video>\n{question}",
            "target": "text",
            "boxes": None if boxes is None else str(boxes),
        },
    }


def llava_turn(question: str, answer: str) -> list[dict]:
    """One exchange as the ``conversations`` of a LLaVA instruction item."""
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def mc_data(folder, missing: str) -> dict:
    """An InstructionDataModule config over a 4-question mc.csv whose video `missing` does not exist."""
    folder.mkdir(parents=True)
    rows = []
    for i in range(4):
        if f"clip{i}" != missing:
            write_video(folder / f"clip{i}.mp4", np.full((4, 32, 32, 3), 60 * i, np.uint8), fps=4)
        rows.append(f"clip{i},what colour is it ?,{i % 2},red,green,q{i},descriptive")
    (folder / "mc.csv").write_text("video,question,answer,a0,a1,qid,type\n" + "\n".join(rows) + "\n")
    source = {
        "class_path": "data_modules.sources.MultipleChoice",
        "init_args": {"path": str(folder / "mc.csv"), "video_path": "{video}.mp4", "target": "text"},
    }
    return {
        "class_path": "data_modules.datamodules.InstructionDataModule",
        "init_args": {
            "train": source,
            "val": source,
            "test": source,
            "tokenizer": None,
            "num_frames": 2,
            "batch_size": 4,
            "eval_batch_size": 2,
            "num_workers": 0,
        },
    }


def run_main(argv: list[str]) -> int:
    """`vrp.cli.main(argv)`'s exit status (0, or the code of the SystemExit it raised)."""
    from vrp.cli import main

    try:
        main(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return 0
