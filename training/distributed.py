"""DistributedDataParallel support: the same training command runs alone or under
``torchrun --nproc_per_node=N``; rank 0 validates and writes every output.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")


_CONTEXT = Context()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str | None = None) -> Context:
    """Join the process group that torchrun describes in the environment (or stay single-process)."""
    global _CONTEXT
    from napari_medseg.device import resolve_device

    if not launched_by_torchrun():
        _CONTEXT = Context(device=resolve_device(device))
        return _CONTEXT
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    requested = resolve_device(device)
    if requested.type == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    _CONTEXT = Context(dist.get_rank(), dist.get_world_size(), local_rank, dev)
    return _CONTEXT


def current() -> Context:
    return _CONTEXT


def cleanup() -> None:
    global _CONTEXT
    if _CONTEXT.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _CONTEXT = Context()


def wrap(module: torch.nn.Module, context: Context) -> torch.nn.Module:
    """``module`` inside DistributedDataParallel when several ranks train, unchanged otherwise."""
    if context.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [context.local_rank] if context.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, output_device=ids[0] if ids else None,
                                   find_unused_parameters=getattr(module, "has_unused_parameters", False))


def barrier(context: Context) -> None:
    if context.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _reduce(value: float, context: Context, op) -> float:
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor, op=op)
    return float(tensor.item())


def mean_float(value: float, context: Context) -> float:
    if context.world == 1:
        return value
    import torch.distributed as dist

    return _reduce(value, context, dist.ReduceOp.SUM) / context.world


def any_true(flag: bool, context: Context) -> bool:
    """True on every rank when it is true on any (ranks must stop on the same step)."""
    if context.world == 1:
        return flag
    import torch.distributed as dist

    return _reduce(float(flag), context, dist.ReduceOp.MAX) > 0


def broadcast_float(value: float | None, context: Context) -> float | None:
    """Rank 0's value (None travels as NaN) on every rank."""
    if context.world == 1:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([float("nan") if value is None else value], dtype=torch.float64, device=context.device)
    dist.broadcast(tensor, src=0)
    result = float(tensor.item())
    return None if result != result else result
