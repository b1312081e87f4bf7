"""The two LightningDataModules: ``VideoTextDataModule`` (stage 1) and ``InstructionDataModule`` (stage 2).

Both take the same parameters, declared once (``_ClipDataModule.__init__``), so a YAML key means the same in either
stage; they differ in the splits they load and in the sources a left-out split defaults to. Sources are passed as
objects (``class_path``/``init_args`` in YAML); any left out is read from ``root``, a folder in vrp's default layout
(``<root>/<split>/shards/*.tar``, ``captions.csv``, ``instructions.json``, ``mc.csv``, ``boxes.json``, and
``<root>/tokenizer``): ``make data`` writes the synthetic benchmark that way, and a user's own data laid out the same
way is read by pointing ``root`` at it. A missing ``root`` is an error naming it; nothing here generates data.

Preprocessing comes from the vision backbone: the LightningModule calls ``configure_preprocess(image_size, mean,
std)`` from its ``setup()`` (it owns the encoder). Loaders are built lazily in ``*_dataloader()``, after every
``setup`` hook, so the values it sets are the ones used; 224 and the CLIP mean/std apply only if nobody calls it.

Resuming: loaders are ``torchdata`` ``StatefulDataLoader``s, whose state Lightning saves in the checkpoint and
restores, so a resumed run continues mid-epoch (map-style: the sampler position; streaming: each worker's position,
see ``StreamingDataset``). The datamodule's own ``state_dict`` keeps the skip counters.
Bad samples: ``skip_counts()`` returns cumulative counts (``{"good", "skipped", "skipped/<reason>", "rows"}``) to
log. ``max_bad_fraction`` bounds the bad share of the rows sources read and, apart, of the samples decoded or
streamed, each once ``bad_fraction_min_samples`` items have been read. ``damaged_clips``: a clip some of whose
packets fail to decode is skipped (``decode_error``, the default) or kept with its readable frames.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import ClassVar, Literal

import lightning as L
import torch
from torch.utils.data import DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from data_modules.batching import BatchedDataset, TokenBudgetSampler
from data_modules.collate import Collator
from data_modules.datasets import ClipLoader, MapDataset, StreamingDataset
from data_modules.features import FeatureStore
from data_modules.packing import Packing, TokenBudget
from data_modules.skips import SkipCounter
from data_modules.sources import CaptionManifest, LlavaInstructions, MapSource, MultipleChoice, WebDatasetSource
from data_modules.sources.boxes import ObjectTracker
from data_modules.transforms import VideoTransform
from vrp.models.constants import CLIP_MEAN, CLIP_STD

log = logging.getLogger(__name__)

Sampling = Literal["uniform", "segment", "fps"]
Split = Literal["train", "val", "test", "predict"]
DEFAULT_MC_TEMPLATE = "<video>\n{question}"  # the prompt of the default layout's mc.csv questions


class _ClipDataModule(L.LightningDataModule):
    """The parameters and machinery both stages share; a subclass names the splits it loads (``splits``) and the
    source a left-out split defaults to (``default_source``)."""

    splits: ClassVar[tuple[Split, ...]]

    def __init__(
        self,
        train: WebDatasetSource | MapSource | None = None,
        val: WebDatasetSource | MapSource | None = None,
        test: MapSource | None = None,
        predict: MapSource | None = None,
        *,
        tokenizer: str | None = None,
        qformer_tokenizer: str | None = None,
        num_frames: int = 8,
        train_sampling: Sampling = "segment",
        eval_sampling: Sampling = "uniform",
        sample_fps: float | None = None,
        decode_short_side: int | None = None,
        crop_scale: tuple[float, float] = (0.6, 1.0),
        hflip: bool = False,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        shuffle_buffer: int = 256,
        seed: int = 0,
        max_bad_fraction: float = 0.05,
        bad_fraction_min_samples: int = 100,
        damaged_clips: Literal["skip", "keep"] = "skip",
        padding_side: Literal["left", "right"] = "right",
        max_length: int | None = None,
        root: str = "data/synthetic",
        ground_truth_boxes: bool = False,
        tracks: str | None = None,
        image_frames: int = 1,
        box_attributes: list[str] | None = None,
        feature_cache: str | None = None,
        packing: Packing | None = None,
        token_budget: TokenBudget | None = None,
    ) -> None:
        """``train`` / ``val`` / ``test`` / ``predict``: the sources of each split the datamodule loads (``splits``);
        one left out is read from ``root`` (vrp's default layout, see the module's docstring), as is the tokenizer
        when ``tokenizer`` is null. ``train`` and ``val`` may be streamed WebDataset shards (``shuffle_buffer``: the
        train stream's shuffle buffer). ``tracks``: a `vrp track` folder whose ``<split>.json`` holds the object
        stage's tracks of each default split; ``ground_truth_boxes``: read ``<root>/<split>/boxes.json`` instead,
        annotated boxes (an oracle's input, never a model's); with neither, the model's object stage tracks each
        video as it is read. ``box_attributes``: the state oracle's attribute words (e.g. the synthetic colours and
        shapes); samples then carry each box's multi-hot attributes from the boxes file's object names. Only the
        oracle reads them: leave it null for a model, which sees pixels and unlabelled boxes only.
        ``image_frames``: how many real frames an image item becomes (1: a one-frame clip; up to ``num_frames``: the
        image repeated). ``feature_cache``: a `vrp cache` folder; every split then reads the frozen encoder's tokens
        per video instead of decoding. ``packing``: ``{max_tokens: N}`` packs each batch's LLM sequences into rows of
        at most N tokens (padding-free, the same losses); ``{max_tokens: N, rows: R}`` also fills each training batch
        to R rows of N tokens instead of ``batch_size`` samples (a map-style train source: `data_modules.batching`);
        ``token_budget``: per-sample bounds (`data_modules.packing`, docs/packing.md). All off by default."""
        super().__init__()
        given = {"train": train, "val": val, "test": test, "predict": predict}
        unused = [name for name, source in given.items() if source is not None and name not in self.splits]
        if unused:
            raise ValueError(
                f"{type(self).__name__} loads the {' / '.join(self.splits)} splits only, not {' / '.join(unused)}: "
                "remove that source (InstructionDataModule, stage 2, loads train / val / test / predict)"
            )
        if tracks is not None and ground_truth_boxes:
            raise ValueError(
                "set either tracks (an object stage's tracks, `vrp track`) or ground_truth_boxes (annotated boxes: "
                "oracle rows only), not both"
            )
        self.train_source, self.val_source, self.test_source, self.predict_source = train, val, test, predict
        self.root = Path(root)
        self.tokenizer, self.qformer_tokenizer = tokenizer, qformer_tokenizer
        self.num_frames, self.train_sampling, self.eval_sampling = num_frames, train_sampling, eval_sampling
        self.sample_fps, self.decode_short_side, self.crop_scale, self.hflip = (
            sample_fps,
            decode_short_side,
            tuple(crop_scale),
            hflip,
        )
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size or batch_size, num_workers
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.padding_side, self.max_length = padding_side, max_length
        self.tracks = None if tracks is None else Path(tracks)
        self.ground_truth_boxes = ground_truth_boxes
        self.box_attributes = list(box_attributes) if box_attributes else None
        self.objects: ObjectTracker | None = None
        self.image_frames = image_frames
        self.skips = SkipCounter(max_bad_fraction, bad_fraction_min_samples)
        self.damaged_clips = damaged_clips
        self.image_size, self.mean, self.std = 224, CLIP_MEAN, CLIP_STD
        self.records: dict[str, list] = {}
        self._collator: Collator | None = None
        self.box_substeps = 1
        self.feature_cache = feature_cache
        self._features: FeatureStore | None = None
        self.packing, self.token_budget = packing, token_budget
        self.visual_tokens: int | None = None
        self._lengths: tuple[list, list[int]] | None = None  # (train records, their LLM lengths): packing.rows

    # --- configuration from the model -------------------------------------------------------------------------
    def configure_preprocess(
        self, image_size: int, mean: tuple[float, float, float], std: tuple[float, float, float]
    ) -> None:
        """Frame size and normalisation of the vision backbone; call before the dataloaders are built."""
        self.image_size, self.mean, self.std = int(image_size), tuple(mean), tuple(std)

    def configure_box_substeps(self, box_substeps: int) -> None:
        """The box rows per sampled frame the fusion reads (S: ``boxes`` (B, T * S, K, 4), the tracks between the
        sampled frames); call before the dataloaders are built."""
        if box_substeps < 1:
            raise ValueError(f"box_substeps must be >= 1, got {box_substeps}")
        self.box_substeps = int(box_substeps)

    def configure_object_stage(self, objects: ObjectTracker | None) -> None:
        """The model's object stage: it tracks the objects of each video that no boxes file covers, as the video is
        read; call before the dataloaders are built."""
        self.objects = objects

    def skip_counts(self) -> dict[str, int]:
        return self.skips.totals()

    def state_dict(self) -> dict:
        return {"skips": self.skips.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.skips.load_state_dict(state["skips"])

    # --- the default layout under root -----------------------------------------------------------------------
    def _under_root(self, *parts: str) -> Path:
        """A path of the default layout under ``root``, for a source or the tokenizer the config leaves out."""
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"data folder {self.root} (root: the sources and tokenizer the config leaves out are read from it) "
                "does not exist: `make data` generates the synthetic benchmark into data/synthetic; or set root to "
                "a folder in the same layout, or give every source and the tokenizer"
            )
        return self.root.joinpath(*parts)

    def _boxes(self, split: str) -> str | None:
        """The boxes file of a default split: the object stage's tracks from ``tracks``, the annotated boxes with
        ``ground_truth_boxes`` (oracle rows), else None (the model's object stage runs as each video is read)."""
        if self.tracks is not None:
            path = self.tracks / f"{split}.json"
            if not path.is_file():
                raise FileNotFoundError(
                    f"no tracks for the {split} split at {path}; write them with `vrp track --config <stage yaml> "
                    f"--out {self.tracks}` (make tracks), or set tracks: null"
                )
            return str(path)
        return str(self._under_root(split, "boxes.json")) if self.ground_truth_boxes else None

    def _tokenizer_path(self) -> str:
        return self.tokenizer or str(self._under_root("tokenizer"))

    def default_source(self, split: Split) -> WebDatasetSource | MapSource:
        """The source of a split the config leaves out, read from ``root``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Fill in the left-out sources, then load the records of the splits ``stage`` reads (a streamed source has
        none: it is read as the loader runs)."""
        for split in self.splits:
            if getattr(self, f"{split}_source") is None:
                setattr(self, f"{split}_source", self.default_source(split))
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        for split in wanted.get(stage, ("train", "val", "test")):
            if split in self.splits and split not in self.records:
                self._load_records(split, getattr(self, f"{split}_source"))

    # --- loaders -----------------------------------------------------------------------------------------------
    def collator(self) -> Collator:
        if self._collator is None:
            self._collator = Collator(
                self._tokenizer_path(),
                qformer_tokenizer=self.qformer_tokenizer,
                padding_side=self.padding_side,
                max_length=self.max_length,
                packing=self.packing,
                budget=self.token_budget,
                skips=self.skips,
            )
            if self.visual_tokens is not None:
                self._collator.configure_visual_tokens(self.visual_tokens)
        return self._collator

    # --- packing and the token budget (data_modules.packing) ----------------------------------------------------
    def configure_visual_tokens(self, num_video_tokens: int) -> None:
        """The visual tokens (Q) the model gives each sample for ``num_frames`` frames (so Q / ``num_frames`` per
        frame for the budget's frame cap); the stage modules call it from ``setup()``."""
        self.visual_tokens = int(num_video_tokens)
        if self.token_budget is not None and self._budget_frames() < 1:
            raise ValueError(
                f"token_budget.max_visual_tokens={self.token_budget.max_visual_tokens} is less than one frame's "
                f"{num_video_tokens / self.num_frames:g} visual tokens (the model gives {num_video_tokens} for "
                f"{self.num_frames} frames): no sample fits"
            )
        if self._collator is not None:
            self._collator.configure_visual_tokens(self.visual_tokens)

    def _budget_frames(self) -> int | None:
        """The budget's cap on real frames per clip (None: no cap)."""
        if self.token_budget is None or self.visual_tokens is None:
            return None
        return self.token_budget.max_frames(self.num_frames, self.visual_tokens / self.num_frames)

    def _dist(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def clip_loader(self, train: bool) -> ClipLoader:
        transform = VideoTransform(
            self.image_size, self.mean, self.std, train=train, scale=self.crop_scale, hflip=self.hflip
        )
        sampling = self.train_sampling if train else self.eval_sampling
        return ClipLoader(
            transform,
            num_frames=self.num_frames,
            sampling=sampling,
            fps=self.sample_fps if sampling == "fps" else None,
            short_side=self.decode_short_side,
            box_attributes=self.box_attributes,
            box_substeps=self.box_substeps,
            features=self.features(),
            objects=self.objects,
            image_frames=self.image_frames,
            damaged=self.damaged_clips,
            max_frames=self._budget_frames(),
        )

    def features(self) -> FeatureStore | None:
        """The `feature_cache` store (None: decode clips)."""
        if self.feature_cache is None:
            return None
        if self._features is None:
            store = FeatureStore(self.feature_cache)
            if store.meta.get("num_frames") not in (None, self.num_frames):
                raise ValueError(
                    f"feature cache {self.feature_cache} holds {store.meta['num_frames']} frames per clip "
                    f"but num_frames={self.num_frames}; rebuild it (vrp cache) or set feature_cache: null"
                )
            self._features = store
        return self._features

    def _budget_sampler(self, records: list, rank: int, world: int) -> TokenBudgetSampler:
        """Token-budget batches over the training records (``packing.rows``, `data_modules.batching`); their LLM
        lengths are counted from the text (no video read), once per records list."""
        if self._lengths is None or self._lengths[0] is not records:
            collator = self.collator()
            self._lengths = (records, [collator.llm_length(r) for r in records])
        return TokenBudgetSampler(
            self._lengths[1],
            max_tokens=self.packing.max_tokens,
            rows=self.packing.rows,
            num_replicas=world,
            rank=rank,
            seed=self.seed,
        )

    def _fills_budget(self, train: bool) -> bool:
        """Whether this loader makes token-budget batches (training, with ``packing.rows``)."""
        return train and self.packing is not None and self.packing.rows is not None

    def _loader(self, source, records: list | None, train: bool) -> StatefulDataLoader:
        rank, world = self._dist()
        common = dict(num_workers=self.num_workers, collate_fn=self.collator(), persistent_workers=False)
        if self._fills_budget(train) and isinstance(source, WebDatasetSource):
            raise ValueError(
                "packing.rows (token-budget batches) plans each epoch from every sample's length, which a streamed "
                "WebDatasetSource does not know before reading its shards: give a map-style train source (e.g. "
                "CaptionManifest) or set packing.rows: null (each batch of batch_size samples is still packed)"
            )
        common["batch_size"] = self.batch_size if train else self.eval_batch_size
        if isinstance(source, WebDatasetSource):
            ds = StreamingDataset(
                source,
                self.clip_loader(train),
                self.skips,
                shuffle=train,
                shuffle_buffer=self.shuffle_buffer,
                seed=self.seed,
                rank=rank,
                world_size=world,
            )
            return StatefulDataLoader(ds, **common)
        loader = self.clip_loader(train)
        if loader.features is not None:  # entries computed from other files than these: one line, before any worker
            loader.features.verify((r.video_key, r.video) for r in records if r.modality == "video")
        ds = MapDataset(records, loader, self.skips, replace_bad=train)
        generator = torch.Generator().manual_seed(self.seed)
        if self._fills_budget(train):  # the sampler yields whole batches: batch_size=None
            sampler = self._budget_sampler(records, rank, world)
            common["batch_size"] = None
            return StatefulDataLoader(BatchedDataset(ds), sampler=sampler, generator=generator, **common)
        if world > 1:
            sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=train, seed=self.seed)
            return StatefulDataLoader(ds, sampler=sampler, drop_last=train, **common)
        return StatefulDataLoader(ds, shuffle=train, generator=generator, drop_last=False, **common)

    def _load_records(self, name: str, source) -> None:
        if source is not None and not isinstance(source, WebDatasetSource):
            self.records[name] = self.skips.load(source, f"the {name} source {type(source).__name__}")
            if not self.records[name]:
                raise ValueError(
                    f"{name} source {type(source).__name__}({getattr(source, 'path', '')}) has no "
                    "usable records; check the file and the skip log"
                )
            per = Counter(r.modality for r in self.records[name])
            log.info(
                "%s: %d records from %s (%s)",
                name,
                len(self.records[name]),
                type(source).__name__,
                ", ".join(f"{m} {per[m]}" for m in ("video", "image", "text") if per[m]),
            )

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.train_source, self.records.get("train"), train=True)

    def val_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.val_source, self.records.get("val"), train=False)


class VideoTextDataModule(_ClipDataModule):
    """Stage 1 (video-text alignment): caption pairs from WebDataset shards or caption manifests; loads ``train``
    and ``val`` (a ``test`` or ``predict`` source is refused).

    Defaults (``train``/``val`` left out): ``<root>/train/shards/*.tar`` and the WebVid-style ``<root>/val/
    captions.csv``. Each batch's prompt is the source's fixed caption prompt with the ``<video>`` placeholder; labels
    cover the caption; ``qformer_input_ids`` hold the caption.
    """

    splits = ("train", "val")

    def default_source(self, split: Split) -> WebDatasetSource | MapSource:
        if split == "train":
            shards = sorted(str(p) for p in self._under_root("train", "shards").glob("*.tar"))
            return WebDatasetSource(shards, boxes=self._boxes("train"))
        return CaptionManifest(
            str(self._under_root(split, "captions.csv")),
            video_column="contentUrl",
            caption_column="name",
            key_column="videoid",
            boxes=self._boxes(split),
        )


class InstructionDataModule(_ClipDataModule):
    """Stage 2 (instruction tuning) and evaluation: LLaVA / VideoChat2 instructions and NExT-QA-layout
    multiple choice, or a weighted ``Mixture`` of them; loads ``train``, ``val``, ``test`` and ``predict``.

    Defaults: train = ``<root>/train/instructions.json``; val / test = ``<root>/val|test/mc.csv``; predict (what
    `vrp predict` answers) = the test source (multiple-choice batches carry ``options``, ``answer_index``,
    ``prompt`` and ``question_type``). The loaded records are logged per modality (video / image / text).
    """

    splits = ("train", "val", "test", "predict")

    def default_source(self, split: Split) -> MapSource:
        if split == "train":
            return LlavaInstructions(str(self._under_root("train", "instructions.json")), boxes=self._boxes("train"))
        if split == "predict":
            return self.test_source
        # The default instructions ask the bare question and answer with the option text, so evaluation asks the
        # same way and scores each option's text (a prompt that lists the options would differ from training).
        return MultipleChoice(
            str(self._under_root(split, "mc.csv")),
            template=DEFAULT_MC_TEMPLATE,
            target="text",
            boxes=self._boxes(split),
        )

    def test_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.test_source, self.records.get("test"), train=False)

    def predict_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.predict_source, self.records.get("predict"), train=False)
