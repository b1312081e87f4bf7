"""Released video-LLM families in Hugging Face format, read part by part into vrp components.

A family folder (``save_pretrained`` of `InstructBlipVideoForConditionalGeneration`,
`LlavaNextVideoForConditionalGeneration` or `LlavaOnevisionForConditionalGeneration`, local or a Hub name) becomes a
`VideoReasoner` by giving the same folder to each part:

  vision  `HFVisionEncoder(model_name_or_path=folder)`   the vision tower (LLaVA: at the family's feature layer)
  fusion  `InstructBlipVideoFusion(model_name_or_path=folder)`  per-frame Q-Former reading the instruction + projection
          `LlavaVideoConnector(model_name_or_path=folder)`      feature selection, pooling, projector (+ newline)
  llm     `CausalLM(folder)`                              the language model and the folder's tokenizer
with the reasoner's ``projection: none`` (the family's projector is part of its fusion). Each part reads only its
tensors (`read_part`), from the key layout transformers < 5 wrote (``language_model.model.*``,
``vision_tower.vision_model.*``) or the 5.x one (``model.language_model.*``). `vrp.models.families.export` writes a
model back as the family's own folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from vrp.models.contracts import FusionInput, TokenLayout
from vrp.models.paths import model_source
from vrp.models.qformer_fusion import frame_inputs

FAMILY_TYPES = ("instructblipvideo", "llava_next_video", "llava_onevision")
LLAVA_TYPES = ("llava_next_video", "llava_onevision")


def local_folder(name_or_path: str | os.PathLike) -> Path:
    """A local folder for a folder path or a Hub name (downloaded once into the Hub cache)."""
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(name_or_path)))


def family_type(name_or_path: str | os.PathLike | None) -> str | None:
    """The family (a `FAMILY_TYPES` entry) of a folder or Hub name, or None for anything else (a plain model)."""
    if name_or_path is None:
        return None
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        cfg = path / "config.json"
        model_type = json.loads(cfg.read_text()).get("model_type") if cfg.is_file() else None
    else:
        from transformers import AutoConfig

        try:
            model_type = AutoConfig.from_pretrained(str(name_or_path)).model_type
        except (OSError, ValueError):
            return None
    return model_type if model_type in FAMILY_TYPES else None


def family_config(name_or_path: str | os.PathLike | None = None, config: dict | None = None, *, expect=FAMILY_TYPES):
    """The family's transformers config from a folder / Hub name or a config dict (with ``model_type``)."""
    from transformers import AutoConfig

    source = model_source(None if name_or_path is None else str(name_or_path), config, "family")
    cfg = AutoConfig.for_model(**config) if source is None else AutoConfig.from_pretrained(str(local_folder(source)))
    if cfg.model_type not in expect:
        raise ValueError(f"{name_or_path or 'config'} is a {cfg.model_type!r} model, not one of {list(expect)}")
    return cfg


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    raise FileNotFoundError(f"no model.safetensors (or model.safetensors.index.json) in {folder}")


def read_part(name_or_path: str | os.PathLike, renames: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """The tensors whose key starts with a ``renames`` source prefix, that prefix replaced by its target (the first
    matching pair wins); nothing else is read."""
    from safetensors import safe_open

    out = {}
    for file in _weight_files(local_folder(name_or_path)):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                for src, dst in renames:
                    if key.startswith(src):
                        out[dst + key[len(src) :]] = f.get_tensor(key)
                        break
    return out


def load_exactly(module: nn.Module, state: dict[str, torch.Tensor], what: str, *, tied: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``module``; every key must match (``tied`` keys may be missing: tied to another one).
    An optional ``vision_model.`` level (transformers < 5 wrote it, 5.x does not) is aligned first."""
    own = module.state_dict()
    has, wants = any(k.startswith("vision_model.") for k in state), any(k.startswith("vision_model.") for k in own)
    if has and not wants:
        state = {k.removeprefix("vision_model."): v for k, v in state.items()}
    elif wants and not has:
        state = {f"vision_model.{k}": v for k, v in state.items()}
    missing, unexpected = sorted(set(own) - set(state) - set(tied)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise KeyError(f"{what}: the checkpoint lacks {missing[:4]} and has unexpected {unexpected[:4]}")
    module.load_state_dict(state, strict=False)


def vision_tower(name_or_path: str | os.PathLike) -> nn.Module:
    """The family's vision tower with its weights (InstructBLIP-Video's vision model, LLaVA's CLIP / SigLIP)."""
    cfg = family_config(name_or_path)
    if cfg.model_type == "instructblipvideo":
        from transformers import InstructBlipVideoVisionModel

        module, renames = InstructBlipVideoVisionModel(cfg.vision_config), [("vision_model.", "")]
    else:
        from transformers import AutoModel

        module = AutoModel.from_config(cfg.vision_config)
        renames = [("model.vision_tower.", ""), ("vision_tower.", "")]
    load_exactly(module, read_part(name_or_path, renames), f"{name_or_path} vision tower")
    return module.eval()


def language_model(name_or_path: str | os.PathLike) -> nn.Module:
    """The family's language model as a transformers causal LM (``model.*`` + ``lm_head``) with its weights."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    cfg = family_config(name_or_path)
    model = AutoModelForCausalLM.from_config(cfg.text_config)
    if cfg.model_type == "instructblipvideo":
        renames = [("language_model.", "")]
    else:
        renames = [
            ("model.language_model.", "model."),
            ("language_model.model.", "model."),
            ("language_model.lm_head.", "lm_head."),
            ("lm_head.", "lm_head."),
        ]
    tied = ("lm_head.weight",) if cfg.text_config.tie_word_embeddings else ()
    load_exactly(model, read_part(name_or_path, renames), f"{name_or_path} language model", tied=tied)
    folder = local_folder(name_or_path)
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    return model


def feature_layer(name_or_path: str | os.PathLike) -> int | None:
    """The hidden-state index a LLaVA family reads from its vision tower (None: the last hidden state)."""
    cfg = family_config(name_or_path)
    if cfg.model_type not in LLAVA_TYPES:
        return None
    if not isinstance(cfg.vision_feature_layer, int):
        raise ValueError(
            f"{name_or_path}: vision_feature_layer={cfg.vision_feature_layer} (several layers) is not supported"
        )
    return cfg.vision_feature_layer


class FamilyConnector(nn.Module):
    """A released family's connector as a vrp fusion: (B, T, N, D) -> (B, T * tokens per frame (+ extra), D_llm).

    ``model_name_or_path``: a folder or Hub name of the family (its connector weights load); ``config``: the family's
    config as a dict (``model_type`` one of the subclass's ``model_types``), random weights; exactly one.
    ``num_frames`` fixes T, the token count the LLM sees (None: the family processor's default, ``default_num_frames``).
    A subclass builds its layers from the transformers config (`build`) and reads its tensors from the folder (`load`).
    """

    model_types: tuple[str, ...]
    default_num_frames: int
    supports_text: bool

    def __init__(
        self,
        layout: TokenLayout,
        *,
        model_name_or_path: str | None = None,
        config: dict | None = None,
        num_frames: int | None = None,
    ):
        super().__init__()
        self.hf_config = family_config(model_name_or_path, config, expect=self.model_types)
        self.source = model_name_or_path
        self.layout = layout
        self.num_frames = self.default_num_frames if num_frames is None else num_frames
        self.build(self.hf_config)
        if self.source is not None:
            self.load(self.source)

    def build(self, cfg) -> None:
        """Create the layers from the family's transformers config; set ``hidden_size``, ``output_dim`` and
        ``num_output_tokens``."""
        raise NotImplementedError

    def load(self, source: str) -> None:
        """Load the connector's tensors from the family folder / Hub name (`read_part`)."""
        raise NotImplementedError


def frame_tokens(inputs: FusionInput, layout: TokenLayout, num_frames: int) -> torch.Tensor:
    """A family connector's visual tokens (B, T, N, D), after the frame checks (`frame_inputs`) and that T is the
    ``num_frames`` it was built for (the token count the LLM sees)."""
    frame_inputs(inputs, layout)
    T = inputs.visual.shape[1]
    if T != num_frames:
        raise ValueError(f"{T} frames given; this fusion was built for num_frames={num_frames}")
    return inputs.visual
