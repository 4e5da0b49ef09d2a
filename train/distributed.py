"""Data-parallel training over several processes (torch.distributed, started by torchrun).

    torchrun --nproc_per_node 2 -m train speech --out runs/speech --threads 1         # 2 CPU processes
    torchrun --nproc_per_node 4 -m train speech --out runs/speech --device cuda       # 4 GPUs
    torchrun --nnodes 2 --node_rank R --master_addr HOST --master_port 29500 \\
        --nproc_per_node 4 -m train speech --out /shared/runs/speech --device cuda    # 2 machines

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; ``process_group`` joins
the group they describe (gloo on CPU, nccl on CUDA). Without them it does nothing, and every
helper here answers as rank 0 of 1 without communicating, so ``python -m train ...`` runs in one
process as before.

A global batch is shared like this: every rank draws the same global batch (the same seed), keeps
the clips at positions rank, rank + world, ... (``shard``), and multiplies each loss term, a mean
over its clips or frames, by ``world * local count / global count`` (``mean_scales``). DDP
averages the gradients over the ranks, so the step follows the gradient of the mean over the whole
global batch, as one process would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from tinymm.errors import UsageError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _torchrun_layout() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's environment; None when it is not set."""
    present = [name for name in TORCHRUN_VARIABLES if name in os.environ]
    if not present:
        return None
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise UsageError(f"the environment sets {present} but not {missing}; start the processes with torchrun "
                         f"(torchrun --nproc_per_node N -m train ...), or unset {present} for one process")
    try:
        rank, world, local_rank = (int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError as e:
        raise UsageError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers ({e}); "
                         "start the processes with torchrun") from e
    if not 0 <= rank < world:
        raise UsageError(f"RANK={rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={world}); "
                         "start the processes with torchrun")
    return rank, world, local_rank


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """Join torchrun's process group for the block and yield this rank's device.

    ``device`` is where training runs ("cpu", or "cuda": then rank r of a machine uses GPU
    LOCAL_RANK); the backend follows it: gloo on CPU, nccl on CUDA. Ranks other than 0 log only
    warnings, so the log is rank 0's. Without torchrun's variables, yields ``device`` and does nothing.
    """
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but torch sees no CUDA GPU; use --device cpu or a CUDA build of torch")
    layout = _torchrun_layout()
    if layout is None:
        yield device
        return
    rank, world, local_rank = layout
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} GPUs; "
                             f"pass --nproc_per_node {torch.cuda.device_count()} or fewer")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    root = logging.getLogger()
    level = root.level
    if rank != 0:
        root.setLevel(max(level, logging.WARNING))
    try:
        yield device
    finally:
        root.setLevel(level)
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """Processes in the group (1 without one)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0, the only rank that writes checkpoints, metrics and results."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the others: rank 0 writes files (data, tokenizer,
    features) that the others then find and read instead of writing them too."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def shard(batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's clips of a global batch: those at positions rank, rank + world, ... (batches are
    sorted by length, so every rank gets clips of similar lengths). Empty when the batch has no
    position ``rank``. (N,) -> (ceil((N - rank) / world),)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside 0..{world - 1}")
    return batch[rank::world]


def mean_scale(local_count: float, global_count: float, world: int) -> float:
    """Factor on a rank's mean over ``local_count`` items such that DDP's average of the ranks'
    gradients is the gradient of the mean over all ``global_count`` items; 0 when there are none."""
    return world * local_count / global_count if global_count > 0 else 0.0


def _comm_device() -> torch.device:
    """Where collective tensors live: nccl reduces CUDA tensors only."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _all_reduce_sum(values: Mapping[str, float]) -> dict[str, float]:
    tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=_comm_device())
    dist.all_reduce(tensor)
    return dict(zip(values, tensor.tolist()))


def mean_scales(counts: Mapping[str, float]) -> dict[str, float]:
    """``mean_scale`` for each of this rank's counts (clips, frames, ...), summed over the ranks in
    one all-reduce; exactly 1.0 each in one process."""
    if world_size() == 1:
        return {name: 1.0 for name in counts}
    totals = _all_reduce_sum(counts)
    return {name: mean_scale(counts[name], totals[name], world_size()) for name in counts}


def mean_over_ranks(values: Mapping[str, float]) -> dict[str, float]:
    """The ranks' average of each value (every rank gets it); the values themselves in one process.
    Losses scaled by ``mean_scales`` average to the loss of the global batch."""
    if world_size() == 1:
        return dict(values)
    return {name: total / world_size() for name, total in _all_reduce_sum(values).items()}


def broadcast_from_main(value: float) -> float:
    """Rank 0's ``value``, on every rank."""
    if world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


class MainClock:
    """Rank 0's monotonic clock as of the last ``tick()``, the same number on every rank.

    A TimeBudget reading it stops every rank on the same step, and the learning rate that follows
    the budget stays the same on every rank. Every rank must tick at the same points.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.tick()

    def tick(self) -> float:
        """Read rank 0's clock (one small broadcast) and return it."""
        self.now = broadcast_from_main(time.monotonic())
        return self.now

    def __call__(self) -> float:
        return self.now


def data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel inside a process group (it all-reduces the
    gradients during backward); ``module`` itself otherwise."""
    if not dist.is_initialized():
        return module
    device_ids = [device] if device.type == "cuda" else None
    # No buffer sync before each forward: the speech model's only buffer is a fixed position table.
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, forward_sync_buffers=False)
