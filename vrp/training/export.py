"""Export a trained model to a folder that inference loads without Lightning state (`vrp export`, `vrp.tools.export`;
read back by `vrp.models.io.load_exported`).

format "vrp" (the default):

<out>/model.yaml            the VideoReasoner config (class_path/init_args; frozen backbones by name/path)
<out>/trainable.safetensors  fusion + projection (+ LoRA adapters unless merged) weights
<out>/export.json           which module trained it (stage 1 or 2), its step and checkpoint
<out>/llm/                  with merge_lora: the LLM with LoRA merged (save_pretrained + tokenizer);
                            model.yaml then points at it with llm_mode frozen
format "hf": the family's own transformers folder (config, safetensors with LoRA merged, processor, tokenizer, chat
template, generation config) for a model built from a released InstructBLIP-Video / LLaVA-NeXT-Video / OneVision
folder (`vrp.models.families.export`); any other model is refused with one line naming the part.
"""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path

import yaml
from safetensors.torch import save_file

from vrp.models.io import CheckpointError, build_model, check_finite, read_checkpoint


def export(ckpt: str | Path, out: str | Path, *, merge_lora: bool = False, format: str = "vrp") -> Path:
    if format not in ("vrp", "hf"):
        raise ValueError(f"format must be 'vrp' or 'hf', got {format!r}")
    checkpoint = read_checkpoint(ckpt)
    config = checkpoint.get("hyper_parameters", {}).get("model")
    if not isinstance(config, dict) or "class_path" not in config:
        raise CheckpointError(
            f"checkpoint {ckpt} has no model config in hyper_parameters; export needs a checkpoint written by `vrp fit`"
        )
    model = build_model(config)
    check_finite(checkpoint.get("state_dict", {}), f"checkpoint {ckpt}")
    weights = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    model.load_trainable(weights, strict=True)
    if format == "hf":
        from vrp.models.families.export import export_hf

        return export_hf(model, out)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(config)
    if merge_lora and model.modes["llm"] == "lora":
        llm = model.llm
        llm.model = llm.model.merge_and_unload()
        llm.model.save_pretrained(out / "llm")
        llm.tokenizer.save_pretrained(out / "llm")
        args = config["init_args"]
        args["llm"]["init_args"].update(
            {"model_name_or_path": str((out / "llm").resolve()), "config": None, "tokenizer": None}
        )
        args["llm_mode"] = "frozen"
        weights = {k: v for k, v in weights.items() if not k.startswith("llm.")}
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out / "trainable.safetensors"))
    (out / "model.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    module = checkpoint["hyper_parameters"].get("_class_path")
    info = {
        "module": module,
        "stage": training_stage(module),
        "global_step": checkpoint.get("global_step"),
        "checkpoint": str(ckpt),
    }
    (out / "export.json").write_text(json.dumps(info, indent=1) + "\n")
    return out


def training_stage(class_path: str | None) -> int | None:
    """1 for a stage-1 (alignment) module, 2 for a stage-2 (instruction-tuned) one, None if unknown."""
    from vrp.training import AlignmentPretraining, InstructionTuning

    if not class_path or "." not in class_path:
        return None
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    return 1 if issubclass(cls, AlignmentPretraining) else 2 if issubclass(cls, InstructionTuning) else None
