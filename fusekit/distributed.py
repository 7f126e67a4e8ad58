"""Data-parallel runs started by torchrun: who this process is, its process group, and agreement.

torchrun (or ``python -m torch.distributed.run``) starts one process per share of the machine
and tells each its place through the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). :func:`launch` reads them. Outside
torchrun, or with a world of one process, a run is plain: rank 0 of 1, no process group, and
every helper here returns at once without importing torch.distributed.

:func:`start` opens the process group once per process and closes it at exit (:func:`stop`):
gloo, and on a machine with CUDA gloo for CPU tensors (the agreements below) and NCCL for CUDA
tensors (DDP's gradients), in one group (``cpu:gloo,cuda:nccl``). While a group is open:

* :func:`agreement` runs a block on every rank and then tells every rank whether any rank
  failed in it: all ranks raise the first failing rank's error, so one failure ends the whole
  run at a known point instead of leaving the other ranks waiting in a collective. Only rank 0
  prints such a shared error (:func:`reports`); the others exit quietly with the same code.
* A failure outside an agreement (inside a training step, say) ends that rank. The ranks that
  wait for it in a collective see its connection close and raise :func:`peer_lost`'s one-line
  FusekitError (gloo says so at once; a peer that hangs instead is given up after
  ``FUSEKIT_DIST_TIMEOUT`` seconds, default 900), and torchrun stops what is left with SIGTERM,
  which :func:`start` turns into ``SystemExit``: every rank unwinds as on any other error, so
  temporary outputs and locks are cleaned up.

Floor 1: no torch at import.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Iterator

from fusekit.errors import FusekitError

TIMEOUT_ENV = "FUSEKIT_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 900.0
_SHARED = "_fusekit_every_rank"  # set on an error that every rank raised through an agreement


@dataclass(frozen=True)
class Launch:
    """This process's place in a run: ``rank`` of ``world`` processes, ``local_rank`` of
    ``local_world`` on this node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes outputs and prints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise FusekitError(f"the environment variable {name}={text!r} is not a whole number; start the run "
                           "with torchrun, which sets it") from None


def launch() -> Launch:
    """This process's place, from the environment torchrun sets (rank 0 of 1 outside torchrun)."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1 or "RANK" not in os.environ:
        return Launch()
    return Launch(_env_int("RANK", 0), world, _env_int("LOCAL_RANK", 0), _env_int("LOCAL_WORLD_SIZE", world))


def rank() -> int:
    """This process's rank (0 outside torchrun)."""
    return launch().rank


def world() -> int:
    """The number of processes of this run (1 outside torchrun)."""
    return launch().world


def is_main() -> bool:
    """Whether this process writes outputs and prints (rank 0; always outside torchrun)."""
    return launch().is_main


def active() -> bool:
    """Whether a process group of more than one process is open in this process."""
    return _backend is not None


_backend: str | None = None


def _timeout() -> datetime.timedelta:
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise FusekitError(f"the environment variable {TIMEOUT_ENV}={text!r} is not a positive number of seconds; "
                           "set it to one or unset it")
    return datetime.timedelta(seconds=seconds)


def backend() -> str:
    """The process group's backend on this machine: gloo, plus NCCL for CUDA tensors when there is a GPU."""
    import torch

    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def _stop_on_sigterm() -> None:
    # torchrun ends the other ranks of a failed run with SIGTERM; Python's default would die without
    # running the cleanups (temporary directories, locks), so it becomes an ordinary exit.
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def terminated(signum, frame):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, terminated)


def start() -> Launch:
    """Open this process's group when torchrun started it (idempotent); returns its place.
    Outside torchrun nothing happens."""
    global _backend
    place = launch()
    if place.world == 1 or _backend is not None:
        return place
    import torch
    import torch.distributed as dist

    chosen = backend()
    if "nccl" in chosen:
        torch.cuda.set_device(place.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(chosen, timeout=_timeout())
        atexit.register(stop)
    _backend = chosen
    _stop_on_sigterm()
    return place


def stop() -> None:
    """Close the process group this module opened (nothing when none is open)."""
    global _backend
    if _backend is None:
        return
    import torch.distributed as dist

    with contextlib.suppress(Exception):  # a peer that is already gone must not turn exit into an error
        if dist.is_initialized():
            dist.destroy_process_group()
    _backend = None


def device_for(device):
    """The torch device of this rank: ``cuda`` without an index becomes this node's GPU
    ``cuda:LOCAL_RANK`` in a multi-process run; anything else is returned as it is."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and device.index is None and launch().world > 1:
        return torch.device("cuda", launch().local_rank)
    return device


def barrier() -> None:
    """Wait until every rank arrives (nothing outside a group)."""
    if active():
        import torch.distributed as dist

        with _collective():
            dist.barrier()


def all_reduce(tensor, op: str = "sum"):
    """``tensor`` reduced over the ranks in place (``sum``, ``max`` or ``mean``) and returned;
    unchanged outside a group."""
    if not active():
        return tensor
    import torch.distributed as dist

    moved = tensor.detach().to("cpu", copy=True)  # gloo reduces CPU tensors (see start)
    with _collective():
        dist.all_reduce(moved, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    if op == "mean":
        moved /= launch().world
    tensor.copy_(moved)
    return tensor


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` on every rank (small picklable values made by this run: scores,
    flags); ``value`` itself outside a group."""
    if not active():
        return value
    import torch.distributed as dist

    box = [value]
    with _collective():
        dist.broadcast_object_list(box, src=src, device="cpu")
    return box[0]


def broadcast_bytes(data: bytes | None, src: int = 0) -> bytes:
    """Rank ``src``'s bytes on every rank (a checkpoint read by rank 0 on a node the others may
    not see); sent as a tensor, so the receivers decode it themselves (``torch.load`` with
    ``weights_only=True``), never by unpickling."""
    if not active():
        return data or b""
    import torch
    import torch.distributed as dist

    payload = bytes(data or b"") if rank() == src else b""
    size = torch.tensor([len(payload)], dtype=torch.int64)
    with _collective():
        dist.broadcast(size, src=src)
    if not int(size.item()):
        return b""
    buffer = (torch.frombuffer(bytearray(payload), dtype=torch.uint8) if rank() == src
              else torch.empty(int(size.item()), dtype=torch.uint8))
    with _collective():
        dist.broadcast(buffer, src=src)
    return buffer.numpy().tobytes()


# How gloo and NCCL say that a peer went away (they raise plain RuntimeErrors, told apart by text).
_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out", "timed out",
         "NCCL communicator was aborted")


def peer_lost(exc: BaseException) -> FusekitError | None:
    """The one-line error of a collective that failed because another rank ended or hung; None for
    any other exception (or outside a group)."""
    if not active() or not isinstance(exc, RuntimeError):
        return None
    text = str(exc)
    if type(exc).__name__ != "DistBackendError" and not any(mark in text for mark in _LOST):
        return None
    return FusekitError("another process of this distributed run ended or stopped answering; its own message "
                        "(above) says why, and this run wrote no output")


@contextlib.contextmanager
def _collective() -> Iterator[None]:
    try:
        yield
    except RuntimeError as exc:
        lost = peer_lost(exc)
        if lost is None:
            raise
        raise lost from None


def _summary(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


@contextlib.contextmanager
def agreement(step: str) -> Iterator[None]:
    """Run the block on every rank, then raise on every rank if it failed on any.

    The rank that failed raises its own error; the others raise a copy of it (a FusekitError),
    or one FusekitError naming the failed rank and ``step`` for any other exception. Outside
    torchrun the block runs as it is; under it the group is opened first (:func:`start`). Every
    rank must enter the same agreements in the same order.
    """
    if start().world == 1:
        yield
        return
    import torch.distributed as dist

    failure: BaseException | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - every failure must reach the other ranks
        failure = exc
    mine = None if failure is None else (_summary(failure), failure if isinstance(failure, FusekitError) else None)
    gathered: list = [None] * launch().world
    with _collective():
        dist.all_gather_object(gathered, mine)
    failed = [(r, item) for r, item in enumerate(gathered) if item is not None]
    if not failed:
        return
    if failure is not None:
        error = failure
    else:
        first, (summary, shared) = failed[0]
        error = shared if shared is not None else FusekitError(
            f"process {first} of this distributed run failed while {step} ({summary}); see its messages above")
    setattr(error, _SHARED, True)
    raise error


def shared(error: BaseException) -> BaseException:
    """Mark ``error`` as raised by every rank alike (so only rank 0 prints it); returns it."""
    if active():
        setattr(error, _SHARED, True)
    return error


def reports(error: BaseException) -> bool:
    """Whether this process prints ``error``: rank 0 always, another rank only an error of its own
    (one that no agreement shared with rank 0)."""
    return is_main() or not getattr(error, _SHARED, False)

