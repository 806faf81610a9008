"""Running one command on many processes with PyTorch's own launcher (``torchrun``).

``torchrun --nproc-per-node K -m ancer_cli certify ...`` starts K processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set. Each process takes its share of the inputs on its own
device; every input is seeded from ``(seed, index)``, so the union of the shares equals a
single-process run. Rank 0 merges and finishes. Backend: ``nccl`` on CUDA, ``gloo`` on CPU.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from ancer_cli.errors import AncerError
from ancer_cli.runtime import resolve_device

T = TypeVar("T")

# a rank that finishes early waits for the slowest one: allow long runs
_TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Ranks:
    """This process's place among ``world_size`` processes (1 and 0 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every ``world_size``-th, starting at ``rank``."""
        return list(items[self.rank :: self.world_size])

    def all_ok(self, ok: bool) -> bool:
        """True when every rank reports ``ok`` (a collective: every rank must call it)."""
        if not self.distributed:
            return ok
        flag = torch.tensor([0 if ok else 1], dtype=torch.int64, device=_collective_device())
        dist.all_reduce(flag)
        return int(flag.item()) == 0


SINGLE = Ranks()


def ranks_from_env() -> Ranks:
    """The ranks torchrun describes in the environment (a single process otherwise)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as error:
        raise AncerError(f"RANK/WORLD_SIZE/LOCAL_RANK are not integers ({error})") from error
    if world < 1 or not 0 <= rank < world:
        raise AncerError(f"RANK={rank} and WORLD_SIZE={world} are inconsistent")
    return Ranks(rank, world, local)


def start(ranks: Ranks, device: torch.device) -> None:
    """Join the process group (``nccl`` for CUDA devices, ``gloo`` otherwise)."""
    if ranks.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL's tensors and streams go to this rank's GPU
        dist.init_process_group(backend=backend, timeout=_TIMEOUT)


def _collective_device() -> torch.device:
    """Where the small tensors of a collective live: this rank's GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def stop(ranks: Ranks) -> None:
    """Leave the process group once every rank is done (rank 0 finishes last: it merges), so no
    rank closes its connections while a peer may still be reading from them."""
    if ranks.distributed and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def rank_device(ranks: Ranks, device: torch.device) -> torch.device:
    """Each rank on its own GPU (``cuda:LOCAL_RANK``) when running on CUDA."""
    if ranks.distributed and device.type == "cuda":
        return torch.device("cuda", ranks.local_rank)
    return device


def total(ranks: Ranks, value: int) -> int:
    """Sum of ``value`` over all ranks (a collective)."""
    if not ranks.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(tensor)
    return int(tensor.item())


def broadcast_int(ranks: Ranks, value: int) -> int:
    """Rank 0's ``value`` on every rank (a collective; ``value`` must fit in int64)."""
    if not ranks.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=_collective_device())
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def collective(ranks: Ranks, work: Callable[[], T]) -> T:
    """Run ``work`` on every rank and agree on the outcome before anyone goes on.

    If any rank fails, every rank raises (the failing one its own error, the others an
    :class:`AncerError` pointing at it), so no rank waits forever for a dead peer.
    """
    try:
        result = work()
    except BaseException:
        ranks.all_ok(False)
        raise
    if not ranks.all_ok(True):
        raise AncerError(
            f"rank {ranks.rank}: another rank failed (its error is printed above); "
            "fix it and rerun with --resume"
        )
    return result


@dataclass(frozen=True)
class Session:
    """Where this process runs: its place among the ranks and its device."""

    ranks: Ranks
    device: torch.device


@contextlib.contextmanager
def session(device: str) -> Iterator[Session]:
    """The process group of a command, from joining to leaving.

    Reads the ranks torchrun set (a single process otherwise), resolves ``device`` (``auto``,
    ``cpu``, ``cuda``, ``cuda:K``; each rank of a CUDA run on ``cuda:LOCAL_RANK``), joins the
    group, and on exit -- success or error -- waits for every rank and leaves it.
    """
    ranks = ranks_from_env()
    chosen = rank_device(ranks, resolve_device(device))
    start(ranks, chosen)
    try:
        yield Session(ranks, chosen)
    finally:
        stop(ranks)
