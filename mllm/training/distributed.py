"""Process-group set-up shared by `deepspeed scripts/train.py` and plain `python scripts/train.py`.

A single process gets a one-member process group, so training has one code path.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pin_deepspeed_accelerator() -> None:
    """Tell DeepSpeed the device through its own switch (``DS_ACCELERATOR``), so that it does
    not guess and warn when it is imported: by us, or by accelerate inside transformers'
    ``save_pretrained``, which imports it whenever it is installed."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")


def init_distributed() -> Runtime:
    """Join (or create) the process group and pick this rank's device and thread count (logged)."""
    pin_deepspeed_accelerator()
    import deepspeed

    # Tokenizers' own threads and forked DataLoader workers do not mix; workers parallelise.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
        if "OMP_NUM_THREADS" not in os.environ:
            # Processes on one machine share its cores; oversubscription costs far more than it gains.
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    runtime = Runtime(dist.get_rank(), dist.get_world_size(), local_rank, device)
    if runtime.is_main:
        threads = torch.get_num_threads()
        per_process = (
            f", {threads} thread{'s' * (threads != 1)} each" if device.type == "cpu" else ""
        )
        processes = f"{runtime.world_size} process{'es' * (runtime.world_size != 1)}"
        logger.info("device: %s (%s), %s%s", device.type, backend, processes, per_process)
    return runtime


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few scalars over ranks (one collective for all of them)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    """The largest value of each of a few scalars over ranks (one collective)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()
