"""Several processes (``torchrun`` / ``accelerate launch``): who is the main process, how
many there are, and the model inside DDP's wrapper.

One process trains alone unless launched by one of those; then the Trainer (through
accelerate) sets up the process group from the environment they export, and this module
only reads it. The main process writes the run folder; the others train and stop.
"""

from __future__ import annotations

import os


def world_size() -> int:
    """How many processes this run has (``WORLD_SIZE``, set by the launchers; else 1)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 for a run of one process)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_wrapped(model) -> bool:
    """Whether ``model`` is inside DDP: its forward must then be called through the
    wrapper, which arms the gradient all-reduce (calling a submodule directly skips it,
    and the processes' weights drift apart silently)."""
    from torch.nn.parallel import DistributedDataParallel

    return isinstance(model, DistributedDataParallel)


def unwrap(model):
    """The model inside DDP (or the model itself)."""
    if not is_wrapped(model):
        return model
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def init_process_group() -> None:
    """Join the launcher's process group when no Trainer did (prediction), from the
    environment torchrun / accelerate launch export: NCCL on GPUs, gloo on CPUs."""
    import torch

    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank() % torch.cuda.device_count())
        torch.distributed.init_process_group(backend=backend)


def barrier() -> None:
    """Wait for every process (nothing to wait for in a run of one)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
