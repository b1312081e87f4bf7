"""Vision encoders: video (B, T, C, H, W) -> visual tokens (B, T, N, D), behind one interface.

Every encoder exposes ``width`` (D), ``image_size`` (the square input the data layer must produce), ``mean``/``std``
(its normalisation), ``grid`` (gh, gw patch grid) and ``num_prefix_tokens`` (CLS/register tokens, first in N).
Frozen by default: no grads and eval mode kept even when a parent calls ``.train()``. Frames are encoded in chunks
of ``chunk_size`` images to bound activation memory; the last ``unfreeze_last_blocks`` transformer blocks can be
made trainable; ``gradient_checkpointing`` only matters for trainable blocks.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from vrp.models.constants import CLIP_MEAN, CLIP_STD
from vrp.models.hf_loading import quiet_from_pretrained, report_missing
from vrp.models.paths import model_source, pretrained_source

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r} is not supported; use one of {sorted(DTYPES)}")
    return DTYPES[name]


def block_stacks(module: nn.Module) -> list[nn.ModuleList | nn.Sequential]:
    """The one transformer-block finder: every ModuleList/Sequential of ``module`` whose children share one type and
    hold parameters (ViT blocks, Q-Former layers, LLM decoder layers), in module order, nested ones included.
    `transformer_blocks` takes the longest (blocks to unfreeze); `vrp.training.strategies.blocks` the outermost
    ones' children (FSDP units)."""
    return [
        m
        for m in module.modules()
        if isinstance(m, (nn.ModuleList, nn.Sequential))
        and len(m) > 0
        and len({type(c) for c in m}) == 1
        and any(True for _ in m.parameters())
    ]


def transformer_blocks(module: nn.Module) -> nn.ModuleList | nn.Sequential:
    """The longest block stack (`block_stacks`): the transformer's blocks."""
    stacks = block_stacks(module)
    if not stacks:
        raise ValueError(f"found no transformer block list in {type(module).__name__}; cannot unfreeze blocks")
    return max(stacks, key=len)


class _FrozenBackbone(nn.Module):
    """Shared freezing, chunking and dtype logic; subclasses set ``backbone`` and implement ``_encode_images``."""

    backbone: nn.Module

    def _setup(self, *, frozen: bool, unfreeze_last_blocks: int, dtype: str, chunk_size: int) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        self.backbone.to(resolve_dtype(dtype))
        self.frozen = frozen
        self.unfreeze_last_blocks = unfreeze_last_blocks
        self._trainable_blocks: list[nn.Module] = []
        if frozen:
            self.backbone.requires_grad_(False)
            if unfreeze_last_blocks > 0:
                blocks = transformer_blocks(self.backbone)
                if unfreeze_last_blocks > len(blocks):
                    raise ValueError(
                        f"unfreeze_last_blocks={unfreeze_last_blocks} but the model has {len(blocks)} blocks"
                    )
                self._trainable_blocks = list(blocks)[-unfreeze_last_blocks:]
                for b in self._trainable_blocks:
                    b.requires_grad_(True)
            self.backbone.eval()

    def unfreeze(self) -> None:
        """Make every parameter trainable and let ``.train()`` reach the backbone (the reasoner's "full" mode)."""
        self.frozen = False
        self.backbone.requires_grad_(True)
        self.backbone.train(self.training)

    def train(self, mode: bool = True) -> "_FrozenBackbone":
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
            for b in self._trainable_blocks:
                b.train(mode)
        return self

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video (B, T, C, H, W) float, normalised with ``mean``/``std`` -> tokens (B, T, N, D) in video's dtype."""
        if video.ndim != 5:
            raise ValueError(f"video must be (B, T, C, H, W), got shape {tuple(video.shape)}")
        B, T = video.shape[:2]
        images = video.flatten(0, 1)  # (B*T, C, H, W)
        weight_dtype = next(self.backbone.parameters()).dtype
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.backbone.parameters())
        with torch.set_grad_enabled(needs_grad):
            chunks = [self._encode_images(c.to(weight_dtype)) for c in images.split(self.chunk_size)]
        tokens = torch.cat(chunks).to(video.dtype)  # (B*T, N, D)
        return tokens.unflatten(0, (B, T))

    def _encode_images(self, images: torch.Tensor) -> torch.Tensor:  # (b, C, H, W) -> (b, N, D)
        raise NotImplementedError


class HFVisionEncoder(_FrozenBackbone):
    """Any Hugging Face vision transformer (ViT, DINOv2, CLIP/SigLIP vision tower, ...) by name, path or config.

    Tokens are the model's ``last_hidden_state`` (prefix tokens first: CLS/registers; SigLIP has none).
    For a CLIP/SigLIP checkpoint or config only the vision tower is built. ``config`` is a dict for
    ``AutoConfig.for_model`` (it must hold ``model_type``) and builds a randomly initialised model. A released
    video-LLM folder (`vrp.models.families`: InstructBLIP-Video, LLaVA-NeXT-Video, LLaVA-OneVision) gives its vision
    tower. ``feature_layer`` reads that hidden state (``hidden_states[feature_layer]``, before any final norm)
    instead of ``last_hidden_state``; None: the family's ``vision_feature_layer`` for a LLaVA folder, else the last.
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        *,
        config: dict | None = None,
        image_size: int | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        frozen: bool = True,
        unfreeze_last_blocks: int = 0,
        dtype: str = "float32",
        chunk_size: int = 64,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        feature_layer: int | None = None,
    ):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        from vrp.models import families

        model_name_or_path = model_source(model_name_or_path, config, "vision")
        if config is not None:
            cfg = AutoConfig.for_model(**config)
            cfg = getattr(cfg, "vision_config", None) or cfg
            model = AutoModel.from_config(cfg, trust_remote_code=trust_remote_code)
        elif families.family_type(model_name_or_path):
            model_name_or_path = str(families.local_folder(model_name_or_path))
            model, missing = families.vision_tower(model_name_or_path), []  # loaded exactly: nothing missing
            cfg = model.config
            feature_layer = families.feature_layer(model_name_or_path) if feature_layer is None else feature_layer
        else:
            cfg = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
            cfg = getattr(cfg, "vision_config", None) or cfg  # CLIP / SigLIP: vision tower only
            model, missing = quiet_from_pretrained(
                AutoModel.from_pretrained, model_name_or_path, config=cfg, trust_remote_code=trust_remote_code
            )
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # ViT-style pooler is unused; dropping it keeps every trainable weight in the graph
        if model_name_or_path is not None:
            report_missing(model, missing, f"vision model {model_name_or_path}")
        self.backbone = model
        self.feature_layer = feature_layer
        native = cfg.image_size if isinstance(cfg.image_size, int) else cfg.image_size[0]
        self.image_size = image_size or native
        self._interpolate = self.image_size != native
        patch = cfg.patch_size if isinstance(cfg.patch_size, int) else cfg.patch_size[0]
        self.grid = (self.image_size // patch, self.image_size // patch)
        self.width = cfg.hidden_size
        default_mean, default_std = self._processor_stats(model_name_or_path, cfg.model_type)
        self.mean = tuple(mean or default_mean)
        self.std = tuple(std or default_std)
        if gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self._setup(frozen=frozen, unfreeze_last_blocks=unfreeze_last_blocks, dtype=dtype, chunk_size=chunk_size)
        with torch.no_grad():
            n = self._encode_images(
                torch.zeros(1, 3, self.image_size, self.image_size, dtype=next(model.parameters()).dtype)
            ).shape[1]
        self.num_prefix_tokens = n - self.grid[0] * self.grid[1]

    @staticmethod
    def _processor_stats(path: str | None, model_type: str) -> tuple[tuple, tuple]:
        """mean/std of the folder's video (else image) processor, else the model type's usual ones."""
        folder = Path(path) if path is not None else None
        for name, key in (
            ("video_preprocessor_config.json", None),
            ("processor_config.json", "video_processor"),
            ("preprocessor_config.json", None),
            ("processor_config.json", "image_processor"),
        ):
            if folder is not None and (folder / name).is_file():
                pre = json.loads((folder / name).read_text())
                pre = pre.get(key) or {} if key else pre
                if "image_mean" in pre and "image_std" in pre:
                    return tuple(pre["image_mean"]), tuple(pre["image_std"])
        if model_type.startswith("clip"):
            return CLIP_MEAN, CLIP_STD
        if model_type.startswith("siglip"):
            return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        return IMAGENET_MEAN, IMAGENET_STD

    def _encode_images(self, images: torch.Tensor) -> torch.Tensor:
        extra = {"interpolate_pos_encoding": True} if self._interpolate else {}
        if self.feature_layer is None:
            return self.backbone(pixel_values=images, **extra).last_hidden_state  # (b, N, D)
        out = self.backbone(pixel_values=images, output_hidden_states=True, **extra)
        return out.hidden_states[self.feature_layer]  # (b, N, D)


class OpenClipVisionEncoder(_FrozenBackbone):
    """The image tower of any open_clip model (ViT or timm trunk); tokens = final-norm output of the last block.

    ``model_name`` is an open_clip architecture (``ViT-B-16``), ``hf-hub:``/``local-dir:`` id, or a new name whose
    architecture ``model_config`` gives (an open_clip model-config dict with ``embed_dim``, ``vision_cfg``,
    ``text_cfg``). ``pretrained`` is a tag (``laion2b_s34b_b88k``) or a local checkpoint path; None = random init.
    """

    def __init__(
        self,
        model_name: str,
        pretrained: str | None = None,
        *,
        model_config: dict | None = None,
        image_size: int | None = None,
        frozen: bool = True,
        unfreeze_last_blocks: int = 0,
        dtype: str = "float32",
        chunk_size: int = 64,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        import open_clip

        if model_config is not None:
            cfg_dir = Path(tempfile.mkdtemp(prefix="vrp_open_clip_cfg_"))
            (cfg_dir / f"{model_name}.json").write_text(json.dumps(model_config))
            open_clip.add_model_config(cfg_dir)
        if pretrained is not None:
            pretrained = pretrained_source(pretrained, "open_clip pretrained")
        model = open_clip.create_model(
            model_name, pretrained=pretrained, force_image_size=image_size, require_pretrained=pretrained is not None
        )
        pre = open_clip.get_model_preprocess_cfg(model)
        visual = model.visual
        visual.prune_intermediate_layers(indices=1, prune_norm=False, prune_head=True)  # drop the unused projection
        self.backbone = visual
        size = pre.get("size", image_size)
        self.image_size = size if isinstance(size, int) else size[0]
        self.mean = tuple(pre.get("mean", CLIP_MEAN))
        self.std = tuple(pre.get("std", CLIP_STD))
        if gradient_checkpointing:
            visual.set_grad_checkpointing(True)
        self._setup(frozen=frozen, unfreeze_last_blocks=unfreeze_last_blocks, dtype=dtype, chunk_size=chunk_size)
        with torch.no_grad():
            probe = visual.forward_intermediates(
                torch.zeros(1, 3, self.image_size, self.image_size, dtype=next(visual.parameters()).dtype),
                indices=1,
                intermediates_only=True,
                output_fmt="NCHW",
                output_extra_tokens=True,
            )
        _, self.width, gh, gw = probe["image_intermediates"][-1].shape
        self.grid = (gh, gw)
        prefix = probe.get("image_intermediates_prefix")
        self.num_prefix_tokens = prefix[-1].shape[1] if prefix else 0

    def _encode_images(self, images: torch.Tensor) -> torch.Tensor:
        out = self.backbone.forward_intermediates(
            images,
            indices=1,
            normalize_intermediates=True,
            intermediates_only=True,
            output_fmt="NLC",
            output_extra_tokens=True,
        )
        patches = out["image_intermediates"][-1]  # (b, gh*gw, D)
        prefix = out.get("image_intermediates_prefix")
        return torch.cat([prefix[-1], patches], dim=1) if prefix else patches  # (b, P + gh*gw, D)
