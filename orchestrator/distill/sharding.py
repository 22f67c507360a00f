"""FSDP2 for the student (`train.strategy: fsdp`): every decoder layer, then the rest of the
model, sharded over the data-parallel workers with `torch.distributed.fsdp.fully_shard`, so that
each worker holds 1/N of the student's weights, gradients and optimizer state.

Ray Train's `prepare_model(parallel_strategy="fsdp")` wraps in the older FSDP1 and refuses CPUs,
so the student is sharded here, by hand (as torchtune does), on a device mesh of the worker's own
device type: NCCL on GPUs, gloo on CPUs. The frozen teacher stays whole on every worker: it has
no gradients or optimizer state (its weights only, a quarter of the student's training state per
parameter in fp32 AdamW), and sharding it would add an all-gather per layer per micro-batch.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from orchestrator.anatomy import decoder_layers

# FSDP and DTensor are imported where a student is sharded, not here: importing them costs
# seconds in every process that trains (and a command that refuses bad input must answer fast);
# until they are imported, no model can be sharded and no tensor can be a DTensor.


def shard_student(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` on `device`, sharded in place over every process of the default group."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model.to(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in decoder_layers(model):
        # each layer gathered for its forward and backward only (what saves the memory)
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    # the root (embeddings, final norm, head) stays gathered between forward and backward: the
    # losses apply the head to the final hidden states after the forward (`speech_head`)
    fully_shard(model, mesh=mesh, reshard_after_forward=False)
    return model


def is_sharded(model: nn.Module) -> bool:
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


def _is_dtensor(t) -> bool:
    tensor = sys.modules.get("torch.distributed.tensor")
    return tensor is not None and isinstance(t, tensor.DTensor)


def mesh_group(model: nn.Module):
    """The process group a sharded model's gradients are reduced over."""
    return next(p for p in model.parameters() if _is_dtensor(p)).device_mesh.get_group()


@contextlib.contextmanager
def gradient_sync(model: nn.Module, on: bool) -> Iterator[None]:
    """Gradients reduced over the workers in this block (`on`) or kept on this worker until a
    later backward (gradient accumulation): DDP's `no_sync`, FSDP2's `set_requires_gradient_sync`."""
    if is_sharded(model):
        model.set_requires_gradient_sync(on)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    elif not on and hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[nn.Module]:
    """A sharded model with every weight gathered for the block, and no collective inside it: each
    worker can then decode its own rollouts, as many steps as it needs (a sharded forward would
    all-gather per layer, and workers taking different numbers of steps would wait on each other
    forever). Costs the student's weights once more per worker (not its gradients or optimizer
    state). Anything else passes through."""
    if not is_sharded(model):
        yield model
        return
    parts = [m for m in model.modules() if is_sharded(m)]
    for m in parts:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)  # stay gathered between forwards
    try:
        yield model
    finally:
        for m in parts:
            m.reshard()
            # back to `shard_student`'s policy: layers gathered per use, the root until backward
            m.set_reshard_after_forward(m is not model, recurse=False)


def full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight of a sharded model whole, on every worker (a collective: every worker calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def total_norm(norm: torch.Tensor) -> float:
    """`clip_grad_norm_`'s result as a number (a DTensor for a sharded model)."""
    return float(norm.full_tensor() if _is_dtensor(norm) else norm)
