"""Several processes (``torchrun`` / ``accelerate launch``): who is the main process, how
many there are, and the model inside DDP's wrapper.

One process trains alone unless launched by one of those; then the Trainer (through
accelerate) sets up the process group from the environment they export, and this module
only reads it. The main process writes the run folder; the others train and stop.

Whoever set the group up, it is destroyed when the process exits (``leave_process_group``,
run by ``atexit``), while the interpreter is still whole: left to the interpreter's
teardown, a gloo worker thread can drop its last reference to a tensor after Python has
begun finalizing, and the process aborts (``terminate called without an active
exception``, SIGABRT) after its work is done (issue 32).
"""

from __future__ import annotations

import atexit
import os
import sys


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


def leave_process_group() -> None:
    """Destroy this process's process group, if it has one: the backend's threads are
    joined here (nothing to do in a run of one, or where the torch distributed package
    was never imported). No collective call: a process whose peers have already left,
    or failed, still leaves at once."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


# atexit runs before the interpreter finalizes (and after the other threads are joined),
# last-registered first: handlers registered after this import (trackers flushing, say)
# still see the group
atexit.register(leave_process_group)


def barrier() -> None:
    """Wait for every process (nothing to wait for in a run of one)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
