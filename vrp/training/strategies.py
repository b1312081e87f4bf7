"""Distributed strategy helpers, all chosen from config.

- single device / DDP: Lightning's own (`strategy: auto | ddp`).
- FSDP (GPU): Lightning's `FSDPStrategy` with `auto_wrap_policy` / `activation_checkpointing_policy` set to
  `BlockWrapPolicy`, which wraps every transformer block (vision blocks, Q-Former layers, LLM decoder layers).
- FSDP2: Lightning's `ModelParallelStrategy(data_parallel_size=N, tensor_parallel_size=1)`; the stage modules'
  `configure_model` calls `configure_fsdp2`, which applies `fully_shard` per block and then per component. Runs on
  CPU with gloo as well as on GPUs with NCCL.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vrp.models.contracts import TextFusion
from vrp.models.vision import block_stacks


def blocks(module: nn.Module) -> list[nn.Module]:
    """Transformer blocks of `module` (the FSDP units): the children of its outermost block stacks
    (`vrp.models.vision.block_stacks`)."""
    found: list[nn.Module] = []
    inside: set[int] = set()
    for stack in block_stacks(module):
        if id(stack) not in inside:
            found.extend(stack)
            inside.update(id(x) for x in stack.modules())
    return found


class BlockWrapPolicy:
    """FSDP1 auto-wrap / activation-checkpointing policy: wrap exactly the modules `blocks()` finds.

    Marks are computed lazily from the root module passed on the first call (FSDP calls the policy on the root first).
    """

    def __init__(self) -> None:
        self._ids: set[int] | None = None

    def __call__(self, module: nn.Module, recurse: bool, nonwrapped_numel: int = 0) -> bool:
        if self._ids is None:
            self._ids = {id(b) for b in blocks(module)}
        return True if recurse else id(module) in self._ids


def _fsdp_methods(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Methods other than forward that the training/eval code calls on sharded components."""
    text = ("encode_text", "forward_with_text") if isinstance(model.fusion, TextFusion) else ()
    return {"fusion": text, "llm": ("embed", "generate")}


def configure_fsdp2(module: Any, extra: list[nn.Module], *, reshard_after_forward: bool = True) -> None:
    """Apply FSDP2 `fully_shard` when the strategy provides a device mesh (ModelParallelStrategy); else do nothing.

    Each transformer block is its own shard group, then each reasoner component (vision, fusion, projection, llm)
    and each extra module (stage heads) is a group, so no parameter is left unsharded (ModelParallelStrategy does no
    gradient all-reduce of its own). Mixed precision follows the trainer's `precision` ("bf16-mixed" -> bf16
    params/fp32 reduce is done by `MixedPrecisionPolicy` here, since ModelParallelStrategy leaves it to the user).
    """
    mesh = module.device_mesh
    if mesh is None:
        return
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    dp_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
    if "tensor_parallel" in (mesh.mesh_dim_names or ()) and mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            "FSDP2 here is data-parallel only: set ModelParallelStrategy(tensor_parallel_size=1, "
            "data_parallel_size=<num devices>)"
        )
    precision = str(module.trainer.precision)  # a device mesh means ModelParallelStrategy: the trainer is attached
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if "bf16" in precision else None
    kwargs = {"mesh": dp_mesh, "reshard_after_forward": reshard_after_forward}
    if mp is not None:
        kwargs["mp_policy"] = mp
    model = module.model
    for name in ("vision", "fusion", "projection", "llm"):
        component = getattr(model, name)
        for block in blocks(component):
            fully_shard(block, **kwargs)
        fully_shard(component, **kwargs)
        for method in _fsdp_methods(model).get(name, ()):
            register_fsdp_forward_method(component, method)
    for m in extra:
        fully_shard(m, **kwargs)


def close_process_group() -> None:
    """Destroy the default process group, if any, once a run has finished. Left to interpreter exit, gloo's worker
    threads are destroyed while still joinable and the process aborts ("terminate called without an active
    exception", exit 134) on some runs -- after the work is done, but the run reports failure."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
