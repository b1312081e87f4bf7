"""Stage 1: video-text alignment pretraining (BLIP-2 style) of the fusion module and projection.

Losses, each weighted and switched off by a zero weight:
- ITC: contrastive between the Q-Former's query outputs and its text encoder's [0] token, features all-gathered
  across ranks, learnable temperature;
- ITM: binary matching on the joint query+text pass, with one hard negative text per video and one hard negative
  video per text drawn from the contrastive similarities;
- LM: captioning loss through the (frozen) LLM with the projected queries at the video placeholder.
The vision encoder runs once per batch; all losses reuse its tokens.
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from vrp.models.contracts import FusionInput, Text, TextFusion, Tracks, tracks_for
from vrp.training import batches, checkpoint, datamodule_handoff
from vrp.training.losses import (
    contrastive_loss,
    lm_loss,
    matching_loss,
    sample_hard_negatives,
)
from vrp.training.optim import adamw_cosine_from_hparams
from vrp.training.strategies import configure_fsdp2


class AlignmentHeads(nn.Module):
    """Stage-1-only heads: video/text projections to the contrastive space, the temperature and the ITM classifier."""

    def __init__(self, video_dim: int, text_dim: int, embed_dim: int, temperature: float) -> None:
        super().__init__()
        self.video_proj = nn.Linear(video_dim, embed_dim)
        self.text_proj = nn.Linear(text_dim, embed_dim)
        self.itm = nn.Linear(text_dim, 2)
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1.0 / temperature)))  # (1,): FSDP2 shards dim 0


class AlignmentPretraining(L.LightningModule):
    """Stage-1 LightningModule around a `VideoReasoner` (stage-1 default: fusion + projection trainable)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        itc_weight: float = 1.0,
        itm_weight: float = 1.0,
        lm_weight: float = 1.0,
        embed_dim: int = 256,
        temperature: float = 0.07,
        max_logit_scale: float = 4.6052,  # log(100), as CLIP
        gather_features: bool = True,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])  # its config: the CLI records it (vrp.cli.VRPCLI)
        self.model = model
        weights = (itc_weight, itm_weight, lm_weight)
        if min(weights) < 0 or sum(weights) == 0:
            raise ValueError("loss weights must be >= 0 and at least one of itc/itm/lm_weight > 0")
        fusion = model.fusion
        if (itc_weight > 0 or itm_weight > 0) and not (isinstance(fusion, TextFusion) and fusion.supports_text):
            raise ValueError(
                f"itc_weight/itm_weight > 0 need a fusion with a text encoder (a Q-Former); "
                f"{type(fusion).__name__} has supports_text=False: set itc_weight: 0 and itm_weight: 0"
            )
        self.heads = None
        if itc_weight > 0 or itm_weight > 0:
            self.heads = AlignmentHeads(fusion.output_dim, fusion.hidden_size, embed_dim, temperature)
        self.strict_loading = False  # checkpoints hold only trainable weights; see on_load_checkpoint

    # ---- losses -------------------------------------------------------------------------------------------------
    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        hp = self.hparams
        model = self.model
        visual = model.visual_tokens(batch)  # (B, T, N, D), once for ITC, ITM and LM
        queries = model.fuse({**batch, "visual": visual}, with_text=False)  # (B, Q, Dq): queries never read the caption
        out: dict[str, torch.Tensor] = {}
        if hp.lm_weight > 0:
            out["lm"] = lm_loss(model, model.projection(queries), batch)
        if self.heads is None:
            return out
        if "qformer_input_ids" not in batch:
            raise KeyError("ITC/ITM need the caption as 'qformer_input_ids' in the batch (stage-1 datamodule)")
        ids, tmask = batch["qformer_input_ids"], batch.get("qformer_attention_mask")
        if tmask is None:
            tmask = torch.ones_like(ids)
        B = ids.shape[0]
        with torch.no_grad():
            self.heads.logit_scale.clamp_(0, hp.max_logit_scale)
        if hp.itc_weight > 0:
            v = F.normalize(self.heads.video_proj(queries), dim=-1)  # (B, Q, E)
            t = F.normalize(self.heads.text_proj(model.fusion.encode_text(Text(ids, tmask))[:, 0]), dim=-1)  # (B, E)
            out["itc"], sim = contrastive_loss(v, t, self.heads.logit_scale, gather=hp.gather_features)
        else:
            sim = torch.zeros(B, B, device=ids.device)  # uniform negatives
        if hp.itm_weight > 0:
            neg_text = sample_hard_negatives(sim)  # (B,) text index for each video
            neg_video = sample_hard_negatives(sim.t())  # (B,) video index for each text

            def videos(x: torch.Tensor | None) -> torch.Tensor | None:  # (B, ...) -> (3B, ...)
                return None if x is None else torch.cat([x, x, x[neg_video]])

            boxes, box_mask = batch.get("boxes"), batch.get("box_mask")
            tracks = None if boxes is None else Tracks(videos(boxes), videos(box_mask))
            joint = model.fusion.forward_with_text(
                FusionInput(
                    videos(visual),  # (3B, T, N, D)
                    videos(batch["frame_mask"]),
                    tracks_for(model.fusion, tracks),
                    Text(torch.cat([ids, ids[neg_text], ids]), torch.cat([tmask, tmask[neg_text], tmask])),
                )
            )  # (3B, Q + L, H)
            logits = self.heads.itm(joint[:, : model.fusion.num_output_tokens].mean(1))  # (3B, 2)
            out["itm"] = matching_loss(logits, B)
        return out

    def _total(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        hp = self.hparams
        weights = {"itc": hp.itc_weight, "itm": hp.itm_weight, "lm": hp.lm_weight}
        return sum(weights[k] * v for k, v in parts.items())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        parts = self.losses(batch)
        loss = self._total(parts)
        bs = batches.batch_size(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for k, v in parts.items():
            self.log(f"train/{k}", v, prog_bar=True, batch_size=bs)
        if self.heads is not None:
            self.log("train/temperature", 1.0 / self.heads.logit_scale.detach().exp().squeeze(), batch_size=bs)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if not batches.has_samples(batch):
            return
        parts = self.losses(batch)
        bs = batches.batch_size(batch)
        self.log("val/loss", self._total(parts), prog_bar=True, sync_dist=True, batch_size=bs)
        for k, v in parts.items():
            self.log(f"val/{k}", v, sync_dist=True, batch_size=bs)

    # ---- plumbing -----------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule_handoff.configure_datamodule(self)

    def configure_model(self) -> None:
        configure_fsdp2(self, [self.heads] if self.heads is not None else [])

    def on_train_epoch_end(self) -> None:
        datamodule_handoff.log_skips(self)

    def configure_optimizers(self) -> dict:
        return adamw_cosine_from_hparams(self)

    def on_save_checkpoint(self, ckpt: dict) -> None:
        checkpoint.drop_frozen(ckpt, self)

    def on_load_checkpoint(self, ckpt: dict) -> None:
        checkpoint.check_trainable_keys(ckpt, self)
