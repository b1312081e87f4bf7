"""The LLaVA video connectors (LLaVA-NeXT-Video, LLaVA-OneVision) as one vrp fusion, and their parts' HF keys.

Computation per frame, on the vision tower's tokens at the family's ``vision_feature_layer`` (the encoder's job,
`HFVisionEncoder.feature_layer`), as transformers' ``get_video_features``:
  select   ``vision_feature_select_strategy``: "default" drops the CLS token, "full" keeps every token
  NeXT     pool the gh x gw grid (``spatial_pool_mode`` average / max, ``spatial_pool_stride``), then the projector
  OneVision  the projector, then bilinear resize of the grid to ceil(gh / 2) x ceil(gw / 2)
  projector  ``linear_1`` -> ``projector_hidden_act`` -> ``linear_2``
Frames in order -> (B, T*P, D_llm); OneVision appends its ``image_newline`` token once, after the last frame.
NeXT-Video's ``image_newline`` (read only for images) is kept as a buffer so that it exports unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vrp.models.contracts import FusionInput, check_input
from vrp.models.families import LLAVA_TYPES, FamilyConnector, frame_tokens, read_part


class LlavaVideoConnector(FamilyConnector):
    """LLaVA-NeXT-Video / LLaVA-OneVision video connector: (B, T, N, D) -> (B, T*P (+1), D_llm).

    ``model_name_or_path``: a `LlavaNextVideoForConditionalGeneration` / `LlavaOnevisionForConditionalGeneration`
    folder or Hub name (projector and newline load); ``config``: such a config as a dict (random weights).
    ``num_frames`` fixes T, the token count the LLM sees (None: 8).
    """

    model_types = LLAVA_TYPES
    default_num_frames = 8
    supports_text = False

    def build(self, cfg) -> None:
        layout = self.layout
        self.onevision = cfg.model_type == "llava_onevision"
        self.drop_cls = cfg.vision_feature_select_strategy == "default"
        if layout.num_prefix_tokens != int(self.drop_cls):
            raise ValueError(
                f"vision_feature_select_strategy={cfg.vision_feature_select_strategy!r} needs {int(self.drop_cls)} "
                f"prefix token(s) before the patch grid; the encoder has {layout.num_prefix_tokens}"
            )
        if cfg.vision_config.hidden_size != layout.width:
            raise ValueError(f"the projector reads {cfg.vision_config.hidden_size}-wide tokens, not {layout.width}")
        gh, gw = layout.grid
        if self.onevision:
            self.pooled = (math.ceil(gh / 2), math.ceil(gw / 2))
        else:
            if cfg.spatial_pool_mode not in ("average", "max"):
                raise ValueError(f"spatial_pool_mode={cfg.spatial_pool_mode!r} is not supported (average, max)")
            pool = nn.AvgPool2d if cfg.spatial_pool_mode == "average" else nn.MaxPool2d
            self.pool = pool(cfg.spatial_pool_stride, cfg.spatial_pool_stride)
            self.pooled = (gh // cfg.spatial_pool_stride, gw // cfg.spatial_pool_stride)
        from transformers.activations import get_activation

        width = cfg.text_config.hidden_size
        bias = cfg.multimodal_projector_bias
        self.linear_1 = nn.Linear(layout.width, width, bias=bias)
        self.act = get_activation(cfg.projector_hidden_act)
        self.linear_2 = nn.Linear(width, width, bias=bias)
        newline = torch.randn(width) / math.sqrt(width)
        if self.onevision:
            self.image_newline = nn.Parameter(newline)
        else:
            self.register_buffer("image_newline", newline)
        self.output_dim = self.hidden_size = width
        self.num_output_tokens = self.num_frames * self.pooled[0] * self.pooled[1] + int(self.onevision)

    def load(self, source: str) -> None:
        renames = [
            ("model.multi_modal_projector.", ""),
            ("multi_modal_projector.", ""),
            ("model.image_newline", "image_newline"),
            ("image_newline", "image_newline"),
        ]
        self.load_state_dict(read_part(source, renames), strict=True)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))

    def forward(self, inputs: FusionInput) -> torch.Tensor:
        """visual (B, T, N, D) -> (B, T*P (+1), D_llm); padding frames are encoded like real ones (transformers)."""
        check_input(self, inputs)
        visual = frame_tokens(inputs, self.layout, self.num_frames)
        B, T = visual.shape[:2]
        x = visual.flatten(0, 1)[:, self.layout.num_prefix_tokens :]  # (B*T, gh*gw, D)
        x = x.unflatten(1, self.layout.grid).permute(0, 3, 1, 2)  # (B*T, D, gh, gw)
        if self.onevision:
            x = self.project(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B*T, D_llm, gh, gw)
            x = F.interpolate(x, size=self.pooled, mode="bilinear").flatten(2).transpose(1, 2)  # (B*T, P, D_llm)
        else:
            x = self.project(self.pool(x).flatten(2).transpose(1, 2))  # (B*T, P, D_llm)
        x = x.reshape(B, T * x.shape[1], -1)  # (B, T*P, D_llm)
        if self.onevision:
            x = torch.cat([x, self.image_newline.to(x.dtype).expand(B, 1, -1)], dim=1)  # (B, T*P + 1, D_llm)
        return x

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Projector and newline under the transformers 5.x keys of the family's ``...ForConditionalGeneration``."""
        return {
            "model.image_newline": self.image_newline,
            **{f"model.multi_modal_projector.{k}": v for k, v in self.state_dict().items() if k.startswith("linear_")},
        }
