"""InstructBLIP-Video's connector as a vrp fusion, and the way back to `InstructBlipVideoForConditionalGeneration`.

Computation (transformers' ``get_video_features``): every frame's vision tokens (B*T, N, D) (the vision model's
``last_hidden_state``, after its post-LayerNorm) are read by the Q-Former's queries together with the instruction
(``qformer_input_ids``, repeated per frame); the Q query outputs of each frame go through ``language_projection``,
frames in order -> (B, T*Q, D_llm). The released processor always samples 4 frames (``num_frames=4``) and puts the
T*Q video tokens before BOS; vrp puts its one ``<video>`` placeholder where the prompt has it.
"""

from __future__ import annotations

import torch
from torch import nn

from vrp.models.contracts import FusionInput, check_input
from vrp.models.families import FamilyConnector, frame_tokens, read_part
from vrp.models.interop import load_blip2_qformer, qformer_config_from_hf, qformer_to_instructblip_state_dict
from vrp.models.qformer import QFormer


class InstructBlipVideoFusion(FamilyConnector):
    """Per-frame Q-Former reading the instruction, then the language projection: (B, T, N, D) -> (B, T*Q, D_llm).

    ``model_name_or_path``: an `InstructBlipVideoForConditionalGeneration` folder or Hub name (its Q-Former, query
    tokens and language projection load); ``config``: its config as a dict (``model_type: instructblipvideo``),
    random weights; exactly one. ``num_frames`` fixes T (None: 4, the released processor's). Padding frames are encoded
    like real ones, as transformers does. Without ``inputs.text`` the queries read the frames alone.
    """

    model_types = ("instructblipvideo",)
    default_num_frames = 4
    supports_text = True

    def build(self, cfg) -> None:
        memory_width, qformer = qformer_config_from_hf(cfg.to_dict())
        if memory_width != self.layout.width:
            raise ValueError(
                f"the Q-Former reads {memory_width}-wide vision tokens, the encoder gives {self.layout.width}"
            )
        self.qformer = QFormer(memory_width, qformer)
        self.hidden_size = self.qformer.hidden_size
        self.output_dim = cfg.text_config.hidden_size
        self.language_projection = nn.Linear(self.hidden_size, self.output_dim)
        self.num_query_tokens = self.qformer.num_query_tokens
        self.num_output_tokens = self.num_frames * self.num_query_tokens

    def load(self, source: str) -> None:
        renames = [(p, p) for p in ("qformer.", "query_tokens", "language_projection.")]
        load_blip2_qformer(self.qformer, read_part(source, renames), projection=self.language_projection)

    def forward(self, inputs: FusionInput) -> torch.Tensor:
        """visual (B, T, N, D), instruction (B, L) -> (B, T*Q, D_llm)."""
        check_input(self, inputs)
        visual = frame_tokens(inputs, self.layout, self.num_frames)
        B, T = visual.shape[:2]
        text_ids = text_mask = None
        if inputs.text is not None:
            text_ids = inputs.text.ids
            text_mask = torch.ones_like(text_ids) if inputs.text.mask is None else inputs.text.mask
            text_ids, text_mask = text_ids.repeat_interleave(T, 0), text_mask.repeat_interleave(T, 0)  # (B*T, L)
        queries = self.qformer(visual.flatten(0, 1), None, text_ids=text_ids, text_mask=text_mask)  # (B*T, Q+L, H)
        out = self.language_projection(queries[:, : self.num_query_tokens])  # (B*T, Q, D_llm)
        return out.reshape(B, T * self.num_query_tokens, -1)

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Q-Former, query tokens and language projection under `InstructBlipVideoForConditionalGeneration`'s keys."""
        qformer = qformer_to_instructblip_state_dict(self.qformer)
        out = {("" if k == "query_tokens" else "qformer.") + k: v for k, v in qformer.items()}
        return out | {f"language_projection.{k}": v for k, v in self.language_projection.state_dict().items()}
