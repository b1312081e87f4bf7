"""VideoReasoner: vision encoder -> fusion -> projection -> LLM, with a per-component trainable policy.

The fusion module is built here from a factory ``fusion(layout)`` (the encoder's `vrp.models.contracts.TokenLayout`)
so no width is written in YAML; the projection maps ``fusion.output_dim`` to the LLM hidden size
(``projection="none"``: the fusion ends in the LLM's width itself, as a released family's connector with its own
projector does, `vrp.models.families`). Each prompt holds exactly one video placeholder token, which
``build_inputs`` replaces by the Q projected visual tokens.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Literal

import torch
from torch import nn

from vrp.models.constants import IGNORE_INDEX
from vrp.models.contracts import (
    Fusion,
    FusionInput,
    Text,
    TokenLayout,
    TrackReader,
    Tracks,
    VisionEncoder,
    tracks_for,
)
from vrp.models.llm import CausalLM
from vrp.models.tracking import ObjectStage

Mode = Literal["frozen", "full"]


def pack_sequences(
    embeds: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor | None,
    row: torch.Tensor,
    offset: torch.Tensor,
    shape: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Move each sample's real tokens into packed rows, without a device sync.

    embeds (B, S, D), mask (B, S) (each row's real tokens contiguous, as `VideoReasoner.build_inputs` makes them),
    labels (B, S) or None; sample b goes to row ``row[b]`` from column ``offset[b]`` of an (R, W) = ``shape`` grid.
    Returns embeds (R, W, D) (zeros in the padding), position ids (R, W) (0, 1, ... per sample, and again from 0
    over a row's trailing padding, so the padding is a sequence of its own that no sample attends to) and labels
    (R, W) (-100 on padding and on every sample's first token, which in a padded row no earlier token predicts).
    """
    B, S, D = embeds.shape
    R, W = shape
    real = mask.bool()
    k = torch.arange(S, device=embeds.device)[None] - real.long().argmax(1, keepdim=True)  # (B, S) index in sample
    dest = torch.where(real, row[:, None] * W + offset[:, None] + k, R * W)  # (B, S); R * W: a slot thrown away
    src = torch.full((R * W + 1,), B * S, dtype=torch.long, device=embeds.device)  # B * S: the zero row
    src = src.scatter(0, dest.flatten(), torch.arange(B * S, device=embeds.device))[: R * W]  # (R*W,)
    filled = (src < B * S).view(R, W)
    packed = torch.cat([embeds.reshape(B * S, D), embeds.new_zeros(1, D)])[src].view(R, W, D)
    positions = torch.cat([k.flatten(), k.new_zeros(1)])[src].view(R, W)
    column = torch.arange(W, device=embeds.device)[None]
    positions = torch.where(filled, positions, column - filled.sum(1, keepdim=True))  # (R, W)
    if labels is not None:
        labels = torch.cat([labels.flatten(), labels.new_full((1,), IGNORE_INDEX)])[src].view(R, W)
        labels = labels.masked_fill(positions == 0, IGNORE_INDEX)
    return packed, positions, labels


class VideoReasoner(nn.Module):
    """Composes the four parts and sets which of them train.

    Modes: ``vision_mode`` "frozen" keeps the encoder's own policy (frozen, except the blocks its
    ``unfreeze_last_blocks`` opens), "full" trains all of it; ``fusion_mode``/``projection_mode`` "frozen" | "full";
    ``llm_mode`` "frozen" | "lora" (peft adapters only) | "full". Stage 1 default: fusion + projection train;
    stage 2: also ``llm_mode="lora"``. ``use_qformer_text`` feeds ``qformer_input_ids`` to a text-aware fusion.
    ``objects``: the object stage (`vrp.models.tracking.ObjectStage`, frozen) that gives a fusion reading boxes the
    tracks of a video no boxes file covers; the data layer runs it as it reads the video. Dropped when the fusion
    is no `vrp.models.contracts.TrackReader` (so an overlay that swaps in such a fusion needs not remove it).
    """

    def __init__(
        self,
        vision: nn.Module,
        fusion: Callable[[TokenLayout], nn.Module],
        llm: CausalLM,
        *,
        objects: ObjectStage | None = None,
        vision_mode: Mode = "frozen",
        fusion_mode: Mode = "full",
        projection_mode: Mode = "full",
        llm_mode: Literal["frozen", "lora", "full"] = "frozen",
        use_qformer_text: bool = False,
        projection: Literal["linear", "none"] = "linear",
    ):
        super().__init__()
        if not isinstance(vision, VisionEncoder):
            raise TypeError(f"{type(vision).__name__} is not a vision encoder (vrp.models.contracts.VisionEncoder)")
        self.vision = vision
        self.fusion = fusion(TokenLayout.of(vision))
        if not isinstance(self.fusion, Fusion):
            raise TypeError(f"{type(self.fusion).__name__} is not a fusion module (vrp.models.contracts.Fusion)")
        self.llm = llm
        self.objects = objects if isinstance(self.fusion, TrackReader) else None  # no track reader, no tracks
        if projection == "linear":
            self.projection = nn.Linear(self.fusion.output_dim, llm.hidden_size)
        elif projection == "none":
            if self.fusion.output_dim != llm.hidden_size:
                raise ValueError(
                    f"projection='none' needs the fusion's output_dim ({self.fusion.output_dim}) to be the LLM's "
                    f"hidden size ({llm.hidden_size})"
                )
            self.projection = nn.Identity()
        else:
            raise ValueError(f"projection must be 'linear' or 'none', got {projection!r}")
        if use_qformer_text and not self.fusion.supports_text:
            raise ValueError(f"use_qformer_text=True but {type(self.fusion).__name__} does not read text")
        self.use_qformer_text = use_qformer_text
        self.modes = {"vision": vision_mode, "fusion": fusion_mode, "projection": projection_mode, "llm": llm_mode}

        if vision_mode == "full":
            vision.unfreeze()
        elif vision_mode != "frozen":
            raise ValueError(f"vision_mode must be 'frozen' or 'full', got {vision_mode!r}")
        for name, module, mode in (
            ("fusion", self.fusion, fusion_mode),
            ("projection", self.projection, projection_mode),
        ):
            if mode not in ("frozen", "full"):
                raise ValueError(f"{name}_mode must be 'frozen' or 'full', got {mode!r}")
            module.requires_grad_(mode == "full")
        if llm_mode == "frozen":
            llm.freeze()
        elif llm_mode == "lora":
            llm.freeze()
            llm.enable_lora()
        elif llm_mode == "full":
            llm.unfreeze()
        else:
            raise ValueError(f"llm_mode must be 'frozen', 'lora' or 'full', got {llm_mode!r}")

    @property
    def num_video_tokens(self) -> int:
        return self.fusion.num_output_tokens

    def fuse(self, batch: Mapping, *, with_text: bool | None = None) -> torch.Tensor:
        """The one video -> fused-tokens path (B, Q, Dq), for both stages, the scorers, the feature cache and `ask`.

        Reads ``batch["visual"]`` (B, T, N, D) encoder tokens when present (feature cache, probe), else runs the vision
        encoder on ``batch["video"]`` (B, T, C, H, W) (without autograd when it is frozen). ``boxes``/``box_mask``
        (and ``box_attributes``, read only by a state-oracle fusion) go to the fusion as its `Tracks` when it is a
        `TrackReader` (any other fusion is handed none). The fusion reads ``qformer_input_ids`` as its `Text` when
        ``with_text`` (default: ``use_qformer_text``); stage-1 contrastive queries pass False. Tensors are moved to
        the model's device.
        """
        device = self.anchor().device

        def get(key: str) -> torch.Tensor | None:
            value = batch.get(key)
            return value.to(device) if isinstance(value, torch.Tensor) else None

        visual = self.visual_tokens(batch)  # (B, T, N, D)
        text = None
        if self.use_qformer_text if with_text is None else with_text:
            if batch.get("qformer_input_ids") is None:
                raise KeyError(
                    "the fusion reads the instruction (use_qformer_text) but the batch has no "
                    "'qformer_input_ids'; enable it in the datamodule"
                )
            text = Text(get("qformer_input_ids"), get("qformer_attention_mask"))
        boxes = get("boxes")
        tracks = None if boxes is None else Tracks(boxes, get("box_mask"), get("box_attributes"))
        return self.fusion(FusionInput(visual, get("frame_mask"), tracks_for(self.fusion, tracks), text))  # (B, Q, Dq)

    def visual_tokens(self, batch: Mapping) -> torch.Tensor:
        """Vision-encoder tokens (B, T, N, D): ``batch["visual"]`` when cached, else the encoder on ``batch["video"]``
        (without autograd when it is frozen)."""
        param = self.anchor()
        if batch.get("visual") is not None:
            return batch["visual"].to(param.device, param.dtype)
        if batch.get("video") is None:
            raise KeyError(f"batch has neither 'video' nor cached 'visual' tokens (keys: {sorted(batch)})")
        trains = any(p.requires_grad for p in self.vision.parameters())
        with torch.set_grad_enabled(trains and torch.is_grad_enabled()):
            return self.vision(batch["video"].to(param.device))

    def anchor(self) -> torch.Tensor:
        """The parameter whose device and dtype the visual tokens take: the projection's (the fusion's, else the
        LLM's, with ``projection="none"``)."""
        return next(itertools.chain(self.projection.parameters(), self.fusion.parameters(), self.llm.parameters()))

    def video_tokens(self, batch: Mapping) -> torch.Tensor:
        """Projected visual tokens (B, Q, D_llm), inserted at the video placeholder; see `fuse`."""
        return self.projection(self.fuse(batch))

    def encode_video(
        self,
        video: torch.Tensor,
        frame_mask: torch.Tensor,
        boxes: torch.Tensor | None = None,
        box_mask: torch.Tensor | None = None,
        text_ids: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """video (B, T, C, H, W) -> projected visual tokens (B, Q, D_llm): `video_tokens` with explicit arguments."""
        return self.video_tokens(
            {
                "video": video,
                "frame_mask": frame_mask,
                "boxes": boxes,
                "box_mask": box_mask,
                "qformer_input_ids": text_ids,
                "qformer_attention_mask": text_mask,
            }
        )

    def build_inputs(
        self,
        video_tokens: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
    ):
        """Replace each row's single video placeholder by its Q visual tokens -> sequences of length L + Q - 1.

        A row without a placeholder (a text-only sample) keeps its text and gets Q - 1 padding slots at its end
        (attention 0, label -100), so its row's visual tokens never reach the LLM."""
        B, L = input_ids.shape
        Q = video_tokens.shape[1]
        is_video = input_ids == self.llm.video_token_id
        counts = is_video.sum(1)
        if (counts > 1).any():
            bad = [(i, int(c)) for i, c in enumerate(counts.tolist()) if c > 1]
            raise ValueError(
                f"each row of input_ids may hold one video token (id {self.llm.video_token_id}); "
                f"(row, count) violating it: {bad}"
            )
        has_video = (counts == 1)[:, None]  # (B, 1)
        pos = torch.where(has_video, is_video.long().argmax(1, keepdim=True), L)  # (B, 1); text-only: after the text
        j = torch.arange(L + Q - 1, device=input_ids.device)[None]  # (1, L+Q-1)
        in_slots = (j >= pos) & (j < pos + Q)  # (B, L+Q-1)
        in_video, in_pad = in_slots & has_video, in_slots & ~has_video
        text_idx = torch.where(j < pos, j, j - Q + 1).clamp(0, L - 1)  # source text position for non-video slots
        video_idx = (j - pos).clamp(0, Q - 1)
        text_embeds = self.llm.embed(input_ids)  # (B, L, D)
        D = text_embeds.shape[-1]
        gathered_text = text_embeds.gather(1, text_idx[..., None].expand(B, -1, D))
        gathered_video = video_tokens.to(text_embeds.dtype).gather(1, video_idx[..., None].expand(B, -1, D))
        inputs_embeds = torch.where(in_video[..., None], gathered_video, gathered_text)  # (B, L+Q-1, D)
        inputs_embeds = inputs_embeds.masked_fill(in_pad[..., None], 0.0)
        mask = torch.where(in_video, torch.ones_like(text_idx), attention_mask.gather(1, text_idx))
        mask = mask.masked_fill(in_pad, 0)
        if labels is not None:
            labels = torch.where(in_slots, torch.full_like(text_idx, IGNORE_INDEX), labels.gather(1, text_idx))
        return inputs_embeds, mask.to(attention_mask.dtype), labels

    def forward(self, batch: Mapping):
        """LM loss on ``batch["labels"]`` (a transformers CausalLMOutput with ``loss`` and ``logits``; the logits are
        the packed rows' (R, W, V) when the batch carries a packing plan)."""
        return self.language_model(self.video_tokens(batch), batch)

    def language_model(self, video_tokens: torch.Tensor, batch: Mapping):
        """The LLM on the batch's text with ``video_tokens`` (B, Q, D_llm) at the placeholders: padded rows, or the
        packed rows of the batch's plan (``pack_row``/``pack_offset``/``pack_shape``, `data_modules.packing`), whose
        loss equals the padded batch's (the same tokens, positions and attention)."""
        embeds, mask, labels = self.build_inputs(
            video_tokens, batch["input_ids"], batch["attention_mask"], batch.get("labels")
        )
        if batch.get("pack_row") is None:
            return self.llm(embeds, mask, labels=labels)
        self.llm.check_length(mask)
        device = embeds.device
        embeds, positions, labels = pack_sequences(
            embeds, mask, labels, batch["pack_row"].to(device), batch["pack_offset"].to(device), batch["pack_shape"]
        )
        return self.llm.forward_packed(embeds, positions, labels)

    @torch.no_grad()
    def generate(self, batch: Mapping, max_new_tokens: int = 32, **gen) -> list[str]:
        """Greedy answers to the prompts in ``batch["input_ids"]`` (padding moved to the left if it is not)."""
        embeds, mask, _ = self.build_inputs(self.video_tokens(batch), batch["input_ids"], batch["attention_mask"])
        order = torch.sort(mask, dim=1, stable=True).indices  # padding (0) first, real tokens keep their order
        embeds = embeds.gather(1, order[..., None].expand_as(embeds))
        mask = mask.gather(1, order)
        ids = self.llm.generate(embeds, mask, max_new_tokens=max_new_tokens, **gen)
        return [s.strip() for s in self.llm.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def trainable_parameter_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def state_dict_trainable(self) -> dict[str, torch.Tensor]:
        """Only the trainable parameters (what a checkpoint needs to hold on top of the frozen backbones)."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable(self, state: Mapping[str, torch.Tensor], strict: bool = True) -> None:
        """Load a ``state_dict_trainable()``; with ``strict`` its keys must be exactly the trainable names."""
        names = self.trainable_parameter_names()
        unknown = set(state) - {n for n, _ in self.named_parameters()}
        missing = names - set(state)
        if unknown or (strict and missing):
            raise KeyError(
                f"trainable state does not match this model: unknown keys {sorted(unknown)[:5]}, "
                f"missing keys {sorted(missing)[:5]} (was it saved with the same components and modes?)"
            )
        self.load_state_dict(dict(state), strict=False)
