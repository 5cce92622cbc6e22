"""Data parallelism under ``torchrun``: NCCL on GPUs, gloo on CPUs, a no-op in a single process.

Every process computes the loss of its own rows of the same global batch; DistributedDataParallel
averages the gradients, so one process and N processes take the same optimizer steps.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def no_sync_unless(self, model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on all but the last micro-batch of a step."""
        if self.world_size > 1 and not sync:
            return model.no_sync()
        return contextlib.nullcontext()


def distributed_context() -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistributedContext()
    rank = int(os.environ["RANK"])
    use_cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return DistributedContext(rank, world_size, device)


def all_reduce_mean(value: float, context: DistributedContext) -> float:
    if context.world_size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / context.world_size


def main_process_value(value: int, context: DistributedContext) -> int:
    """Rank 0's ``value`` on every rank (a decision each rank could take differently, such as one made by
    timing on cores that the ranks share, is taken once for all)."""
    if context.world_size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=context.device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())
