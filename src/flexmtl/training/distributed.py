"""Multi-process data-parallel training with PyTorch's own engine (torchrun + DDP).

``torchrun --nproc_per_node=N -m flexmtl run ...`` starts N processes (ranks); each one runs
the same experiment, and the trainer wraps its training forward in
:class:`~torch.nn.parallel.DistributedDataParallel`. The rules that make N ranks train
like one process with the same (global) batch -- up to rounding, when dropout and
augmentation are off:

* **Sharding** -- every rank draws the same global batch of each task (the sampler has its
  own seed) and keeps its contiguous piece of it (:func:`shard`). Each rank's loss is its
  piece's mean loss weighted by ``N x piece size / batch size``; DDP averages the gradients
  over ranks, which gives the gradient of the global batch's mean loss for any piece sizes.
* **Randomness** -- dropout and augmentation draw from a stream per rank (rank ``r`` reseeds
  from ``(seed, r)``, :func:`seed_rank`). Draws that must agree across ranks -- the one
  Gumbel-Matrix allocation sample per (task, batch) -- come from a stream shared by all
  ranks (:class:`SharedStream`): a copy of rank 0's generator when training starts, i.e.
  the stream a single process would have drawn them from.
* **Files** -- rank 0 alone writes logs, checkpoints, results and plots, and alone reads
  them back (decisions such as "resume from last.pt" are broadcast), so nodes need no
  shared file system. Evaluation runs on rank 0 only.

Outside torchrun (``WORLD_SIZE`` unset or 1) every function here is a no-op and the world
is one process.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from flexmtl.errors import ConfigError, FlexMTLError
from flexmtl.sharing import shared_random_modules
from flexmtl.training.rng import seed_everything

T = TypeVar("T")

#: modules whose training forward draws randomness that must be equal on every rank

#: how long a rank waits for the others (rank 0 evaluates and tests while they wait)
TIMEOUT = timedelta(hours=1)


def launched_world_size() -> int:
    """Number of processes torchrun started (``WORLD_SIZE``; 1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes files and logs."""
    return rank() == 0


def check_device_name(name: str) -> str:
    """``name`` if it names a device (``cpu``, ``cuda``, ``cuda:N``, ``auto``, or another
    torch device type); a :class:`ConfigError` otherwise. Whether it exists is
    :func:`resolve_device`'s question."""
    if name != "auto":
        try:
            torch.device(name)
        except (RuntimeError, TypeError):
            raise ConfigError(
                f"device must be cpu, cuda, cuda:N or auto, got {name!r}") from None
    return name


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` (``cuda:LOCAL_RANK`` under torchrun) or ``auto`` (cuda if present)."""
    if check_device_name(name) == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available here; use device=cpu")
        if launched_world_size() > 1:  # one GPU per process
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def setup(device: torch.device) -> None:
    """Join torchrun's process group once (gloo for cpu, nccl for cuda); no-op otherwise."""
    if launched_world_size() <= 1:
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # also for object collectives over nccl
    if is_initialized():  # e.g. by the user's own script
        return
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run one process")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    atexit.register(cleanup)


def cleanup(wait: bool = False) -> None:
    """Leave the process group (registered to run at exit by :func:`setup`).

    ``wait``: first wait until every rank gets here, so that no rank tears its connections
    down while another still uses them (gloo can then abort the process at exit).
    """
    if is_initialized():
        if wait and world_size() > 1:
            dist.barrier()
        # DDP wrappers left in reference cycles hold gloo work objects; freed at interpreter
        # shutdown they can abort the process, so they go while the process group lives
        gc.collect()
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (picklable; keep tensors on the cpu)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place; returns it."""
    if world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` on rank 0 only (e.g. to read or write files); every rank returns its
    result, or raises when it failed (other ranks raise a FlexMTLError with its message)."""
    if world_size() == 1:
        return fn(*args, **kwargs)
    result, error = None, None
    if is_main():
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # re-raised below, after the other ranks heard of it
            error = exc
    message = None if error is None else f"{type(error).__name__}: {error}"
    result, message = broadcast_object((result, message))
    if error is not None:
        raise error
    if message is not None:
        raise FlexMTLError(f"rank 0 failed ({message})")
    return cast(T, result)  # rank 0's return value: set, since no rank raised


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous piece of a global batch (pieces differ in size by <= 1)."""
    if world_size() == 1:
        return batch
    return batch.tensor_split(world_size())[rank()]


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """A seed for ``rank``'s own stream, well mixed so that no two (seed, rank) collide."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1)


def seed_rank(seed: int, step: int = 0) -> None:
    """Give this rank its own Python/NumPy/torch streams (dropout, augmentation)."""
    seed_everything(rank_seed(seed, rank(), step))


def generator_state(device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


def set_generator_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


class SharedStream:
    """A random stream equal on every rank, for draws that must agree across ranks.

    While attached (:meth:`attached`), every module of
    :func:`flexmtl.sharing.shared_random_modules` (the Gumbel-Matrix allocations: one
    sample per (task, batch), Sec. III-B) draws its training samples from this stream's
    :attr:`generator`; everything else (dropout, augmentation)
    keeps the rank's own stream. The stream starts as rank 0's default generator state at
    construction, so N ranks draw exactly the allocation samples one process would have
    drawn.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.generator = torch.Generator(device)
        self.generator.set_state(broadcast_object(generator_state(device)))

    @property
    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    @state.setter
    def state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def state_dict(self) -> dict:
        return {"device": self.device.type, "state": self.state}

    def load_state_dict(self, state: dict) -> bool:
        """Load a saved stream; False (and unchanged) when it was saved on another device type."""
        if state.get("device") != self.device.type:
            return False
        self.state = state["state"]
        return True

    @contextlib.contextmanager
    def attached(self, model: nn.Module) -> Iterator[None]:
        modules = shared_random_modules(model)
        for m in modules:
            m.generator = self.generator
        try:
            yield
        finally:
            for m in modules:
                m.generator = None


def wrap(module: nn.Module, device: torch.device, find_unused_parameters: bool = True
         ) -> nn.Module:
    """``module`` in DistributedDataParallel when there are several ranks.

    ``find_unused_parameters``: when a step may leave parameters without a gradient (a
    round-robin step trains one task, so the other tasks' encoders and heads get none, and
    a fixed allocation skips components), DDP then leaves their gradients None on every
    rank, as one process would, and the optimiser skips them. It costs a pass over the
    autograd graph each step, and DDP warns when it finds nothing.
    """
    if world_size() == 1:
        return module
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters)
