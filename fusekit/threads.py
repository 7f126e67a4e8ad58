"""How many threads fusekit computes with: one rule for torch and onnxruntime alike.

The default is the number of cores this process may run on (its CPU affinity, which container
limits and ``taskset`` narrow; ``os.cpu_count()`` where the platform has no affinity), divided
by the number of processes a distributed launcher started on this node (``LOCAL_WORLD_SIZE``,
which torchrun sets), and at least 1. ``OMP_NUM_THREADS``, when set, is an explicit choice and
is taken as it is (torchrun also sets it to 1 for a multi-process run unless it is set already).

Why a rule at all: torch's own default is one OpenMP thread per core for every process, so
processes sharing a machine spin against each other (a fuse epoch measured 67-158 s with
torch's default against 5-9 s with one thread on a busy 2-core machine).

:func:`apply_threads` sets the count for this process: torch's intra-op threads (and its
inter-op threads while torch still allows that), and the count onnxruntime sessions get from
:func:`fusekit.onnxio.sessions.session` when they are not given one. Floor 1: no torch at import.
"""
from __future__ import annotations

import os
import sys

from fusekit.errors import FusekitError

OWNER = "apply_threads()"

# The count apply_threads chose for this process, once it was called.
_applied: int | None = None


def available_cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _positive_env(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        # OpenMP reads "4,2" as 4 threads at the outer level: the first number is the one that counts.
        value = int(text.split(",")[0])
    except ValueError:
        value = 0
    if value < 1:
        raise FusekitError(f"the environment variable {name}={text!r} is not a positive whole number; "
                           f"set it to one or unset it")
    return value


def local_processes() -> int:
    """Processes of a distributed run on this node (``LOCAL_WORLD_SIZE``; 1 outside one)."""
    return _positive_env("LOCAL_WORLD_SIZE") or 1


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set, else the available cores divided among the local processes."""
    explicit = _positive_env("OMP_NUM_THREADS")
    if explicit is not None:
        return explicit
    return max(1, available_cores() // local_processes())


def thread_count(threads: int | None = None) -> int:
    """``threads`` checked, or (None) the count applied for this process, else the default."""
    if threads is None:
        return _applied if _applied is not None else default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise FusekitError(f"{{threads}} must be a whole number of at least 1, got {threads!r}", owner=OWNER)
    return threads


def apply_threads(threads: int | None = None, *, torch: bool | None = None) -> int:
    """Use ``threads`` (None: :func:`thread_count`'s choice) for this process; returns the count.

    ``torch``: True sets torch's thread counts (importing torch), None sets them only when torch
    is already imported (decompose, eval and predict never load it), False leaves torch alone.
    Later onnxruntime sessions opened without a count use this one.
    """
    global _applied
    n = thread_count(threads)
    _applied = n
    if torch or (torch is None and "torch" in sys.modules):
        import torch as _torch

        if _torch.get_num_threads() != n:
            _torch.set_num_threads(n)
        try:
            # Allowed only once, before any inter-op parallel work; afterwards torch keeps its pool.
            _torch.set_num_interop_threads(n)
        except RuntimeError:
            pass
    return n


def current_threads() -> int:
    """The count this process computes with: the applied one, else the default (for run records)."""
    return thread_count(None)
