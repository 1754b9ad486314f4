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

from mllm.accelerator import pin_deepspeed_accelerator

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


#: DeepSpeed's name for its CPU shared-memory all-reduce op (``ShareMemCommBuilder.NAME``).
_DEEPSPEED_SHM_OP = "deepspeed_shm_comm"


def skip_deepspeed_shm_op() -> None:
    """On the CPU accelerator, mark DeepSpeed's shared-memory all-reduce op as not buildable
    here, in DeepSpeed's own table of buildable ops (``deepspeed.ops.__compatible_ops__``).

    DeepSpeed's communication backend builds that op whenever the accelerator is the CPU: a C++
    extension compiled on first use (about 30 s on 2 cores, then cached), after which every rank
    prints ``DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully`` with a bare
    ``print`` (no logger, no verbosity switch). Only ``inference_all_reduce`` (DeepSpeed's
    tensor-parallel inference) uses the op; training collectives go through ``torch.distributed``
    (gloo) either way. With the op not buildable, DeepSpeed's ``build_shm_op`` returns None, its
    fallback for machines that cannot build it: nothing is compiled or printed, and other op
    builders still report what they have to say.

    Call it after ``pin_deepspeed_accelerator`` and before ``deepspeed.init_distributed``. Other
    accelerators never build the op, so the table is left unread there: its first read probes
    every op (compiler checks).
    """
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return
    import deepspeed.ops

    compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
    if isinstance(compatible, dict):
        compatible[_DEEPSPEED_SHM_OP] = False


def quiet_progress_bars(is_main: bool) -> None:
    """Progress bars from rank 0 only: every other rank turns transformers' and the Hugging Face
    hub's bars off (``transformers.utils.logging.disable_progress_bar``, which also calls
    ``huggingface_hub.utils.disable_progress_bars``).

    All ranks load the same weights, so N ranks drew N copies of each bar, interleaved. Rank 0
    keeps the hub's download bars: a first download of a 7B model takes minutes and its bar is
    the only sign of progress. transformers' "Loading weights" bar is off on every rank; rank 0
    logs one line per component instead (``mllm.models.assembly.logged_load``).
    """
    if not is_main:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def init_distributed() -> Runtime:
    """Join (or create) the process group and pick this rank's device and thread count (logged).

    Progress bars come from rank 0 only (``quiet_progress_bars``), and DeepSpeed builds no op
    that training does not use (``skip_deepspeed_shm_op``).
    """
    pin_deepspeed_accelerator()
    skip_deepspeed_shm_op()
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
    quiet_progress_bars(runtime.is_main)
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
