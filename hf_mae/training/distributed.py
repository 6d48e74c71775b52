"""How the processes of a run share the model: the distributed type, sharding checks, per-process sizes, and
full (gathered) weights of a sharded model.

Under DDP every process holds the whole model; under FSDP2 (`accelerate config` with `distributed_type: FSDP`)
each holds a shard of every wrapped parameter (a DTensor) and of the optimizer state. Whatever reads the whole
model (a `save_pretrained` folder, the finiteness checks, the monitor, the pictures) goes through
`FullModel`, which gathers the weights from every process (a collective: every process calls it).

accelerate keeps FSDP only for GPU-like devices and silently runs an FSDP config on CPU processes as DDP.
The testing switch `HF_MAE_FSDP_ON_CPU=1` (with `ACCELERATE_USE_CPU=1` and an FSDP config) turns such a CPU
launch into accelerate's own FSDP2 path over gloo, so sharding is tested without GPUs. Any other FSDP launch
that ends up unsharded stops at start (`check_sharding`).
"""

from __future__ import annotations

import os
import resource

import torch

FSDP_ON_CPU_ENV = "HF_MAE_FSDP_ON_CPU"
_TRUE = ("1", "true", "yes")


class ShardingError(RuntimeError):
    """The launch asked for sharding (FSDP) but the processes would run unsharded; the message says how to fix it."""


def fsdp_requested() -> bool:
    """Whether the launch config asks for FSDP (`accelerate launch` exports ACCELERATE_USE_FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in _TRUE


def distributed_type_name(accelerator) -> str:
    """`FSDP`, `MULTI_GPU` (DDP on GPUs), `MULTI_CPU` (DDP on CPU processes), `NO` (one process), ..."""
    return str(accelerator.distributed_type).split(".")[-1]


def enable_fsdp_on_cpu(accelerator) -> bool:
    """The CPU testing switch: with HF_MAE_FSDP_ON_CPU=1 and an FSDP launch that accelerate turned into DDP on
    CPU processes, make accelerate's state FSDP (its own FSDP2 prepare, save_state and load_state then run
    sharded over gloo). Returns whether it did. Call once, right after building the Accelerator."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if os.environ.get(FSDP_ON_CPU_ENV) != "1" or not fsdp_requested():
        return False
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        return False
    # PartialState first: AcceleratorState re-copies the distributed type from it
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # reads the launch's FSDP_* variables
    return True


def check_sharding(accelerator) -> None:
    """Stop at start when the launch asks for FSDP but the processes run unsharded (accelerate falls back to DDP
    or to separate single processes without saying so)."""
    from accelerate.utils import DistributedType

    if not fsdp_requested() or accelerator.distributed_type == DistributedType.FSDP:
        return
    cpu = accelerator.device.type == "cpu"
    fix = ("on CPU processes (testing only) launch with ACCELERATE_USE_CPU=1 HF_MAE_FSDP_ON_CPU=1 accelerate launch "
           "--config_file scripts/configs/fsdp_cpu_2proc.yaml ..." if cpu else
           "check that the config's num_processes matches the GPUs and that they are visible")
    raise ShardingError(
        f"the launch config asks for FSDP (ACCELERATE_USE_FSDP=true) but the {accelerator.num_processes} "
        f"process(es) run as {distributed_type_name(accelerator)} on {accelerator.device.type}: nothing would be "
        f"sharded. To shard, {fix}; to run unsharded on purpose, use a DDP config (scripts/configs/multi_gpu.yaml, "
        "scripts/configs/cpu_2proc.yaml).")


def is_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


# --------------------------------------------------------------------------------------------------------
# What each process holds
# --------------------------------------------------------------------------------------------------------


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor; any other tensor as it is."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def parameters_this_process(model) -> int:
    return sum(local_part(p).numel() for p in model.parameters())


def optimizer_state_this_process(optimizer) -> tuple[int, int]:
    """(elements, bytes) of the optimizer's per-element state this process holds (Adam: exp_avg, exp_avg_sq; its
    0-d step counters are left out)."""
    tensors = [local_part(v) for state in optimizer.state.values() for v in state.values()
               if torch.is_tensor(v) and v.is_floating_point() and v.dim() > 0]
    return sum(t.numel() for t in tensors), sum(t.numel() * t.element_size() for t in tensors)


def per_process(accelerator, value: int) -> list[int]:
    """`value` of every process, by rank (a collective)."""
    gathered = accelerator.gather(torch.tensor([int(value)], dtype=torch.int64, device=accelerator.device))
    return [int(v) for v in gathered.tolist()]


def parameters_per_process(accelerator, model) -> list[int]:
    """The parameter elements each process holds: the whole count under DDP, about 1/N of it under FSDP."""
    return per_process(accelerator, parameters_this_process(model))


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def sharding_record(accelerator, model, optimizer) -> dict:
    """What each process holds after training steps (a collective): parameters, optimizer state, their bytes,
    peak resident memory. The run log's "sharding" record."""
    state_elements, state_bytes = optimizer_state_this_process(optimizer)
    param_bytes = sum(local_part(p).numel() * p.element_size() for p in model.parameters())
    rss = accelerator.gather(torch.tensor([peak_rss_mb()], dtype=torch.float64, device=accelerator.device))
    return {"event": "sharding", "distributed_type": distributed_type_name(accelerator),
            "parameters_per_process": parameters_per_process(accelerator, model),
            "optimizer_state_per_process": per_process(accelerator, state_elements),
            "state_bytes_per_process": per_process(accelerator, param_bytes + state_bytes),
            "peak_rss_mb_per_process": [round(v, 1) for v in rss.tolist()]}


# --------------------------------------------------------------------------------------------------------
# Full weights of a sharded model
# --------------------------------------------------------------------------------------------------------


def is_sharded(model) -> bool:
    return any(hasattr(p, "to_local") for p in model.parameters())


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's state dict with every shard gathered (a collective under FSDP: every process calls it, in
    the same order of names; each gets the full tensors)."""
    return {name: (value.full_tensor() if hasattr(value, "full_tensor") else value).detach()
            for name, value in model.state_dict().items()}


def unsharded_class(model) -> type:
    """The model's own class: FSDP2 swaps a sharded module's class for a subclass of FSDPModule and it."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


class FullModel:
    """An unsharded view of `model`: the model itself when it is not sharded; else a copy of its own class
    holding the weights gathered from every process, refreshed by each `get` (a collective under FSDP: every
    process calls it; `build=False` takes part in the gather without keeping a copy)."""

    def __init__(self, model):
        self.model, self.copy = model, None

    def get(self, build: bool = True):
        if not is_sharded(self.model):
            return self.model
        weights = full_state_dict(self.model)
        if not build:
            return None
        if self.copy is None:
            self.copy = unsharded_class(self.model)(self.model.config).to(next(iter(weights.values())).device)
        self.copy.load_state_dict(weights)
        self.copy.train(self.model.training)
        return self.copy


__all__ = ["FSDP_ON_CPU_ENV", "FullModel", "ShardingError", "check_sharding", "distributed_type_name",
           "enable_fsdp_on_cpu", "fsdp_requested", "full_state_dict", "is_fsdp", "is_sharded", "local_part",
           "optimizer_state_this_process", "parameters_per_process", "parameters_this_process", "peak_rss_mb",
           "per_process", "sharding_record", "unsharded_class"]
