"""One run per output: an exclusive lock on a lock file beside the output.

A command that writes ``OUT`` (and, for fuse, its work directory ``.OUT.fusekit-run/``) holds
``fcntl.flock`` on ``.OUT.fusekit-lock`` for as long as it runs. The file records the holder
(pid, host, command, start time) so that a second run on the same output is refused with a
message naming the first. The kernel drops a flock when its process dies, so a lock file left by
a killed run is stale by construction: the next run takes it over. The lock is released (and its
file removed) on exit, on error and on Ctrl-C.

Within one process the lock is re-entrant (a command holding its output may call library
functions that lock the same output). Nothing here imports torch.

In a run started by torchrun only rank 0 writes outputs, so only rank 0 takes the lock; the
other ranks learn through an agreement (fusekit/distributed.py) whether it got it, and a refused
lock ends every rank with rank 0's message.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from fusekit import distributed
from fusekit.errors import FusekitError

LOCK_SUFFIX = ".fusekit-lock"

# Resolved lock path -> (open descriptor, depth): the locks this process holds.
_HELD: dict[str, list] = {}


def lock_path(output: Path | str) -> Path:
    """The lock file of ``output``: ``.<name>.fusekit-lock`` beside it."""
    output = Path(os.path.abspath(output))
    return output.parent / f".{output.name}{LOCK_SUFFIX}"


class OutputBusy(FusekitError):
    """Another live run holds the output."""


def _read_holder(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _holder_text(path: Path) -> str:
    # The holder writes its record just after it took the lock: a run refused in that instant
    # waits a moment for it rather than saying "another run".
    holder = _read_holder(path)
    for _ in range(40):
        if "pid" in holder:
            break
        time.sleep(0.05)
        holder = _read_holder(path)
    if "pid" not in holder:
        return "another fusekit run"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    command = " ".join(map(str, holder.get("command") or [])) or "?"
    return f"fusekit run pid {holder['pid']} on {holder.get('host', '?')} ({command}), running since {since}"


def _acquire(path: Path, output: Path) -> int:
    """An open descriptor of ``path`` holding its exclusive flock; OutputBusy when another process has it."""
    from fusekit.io import write_error

    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_error(exc, output) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise write_error(exc, output) from None
            raise OutputBusy(f"{output} is in use by {_holder_text(path)}; wait for it to finish or choose another "
                             "output") from None
        # The holder before us may have removed the file after we opened it: then our lock is on a
        # name nobody else sees, and we start again with the file now at that path.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def output_lock(output: Path | str, command: list[str] | None = None, *, owner: str | None = None,
                argument: str = "out_dir") -> Iterator[Path]:
    """Hold the lock of ``output`` for the body; yields the lock file's path.

    OutputBusy (a FusekitError naming the holder's pid, host, command and start time) when a live
    run holds it; a lock file of a dead process is taken over. An output below a file is refused
    first (the message names ``owner``'s ``argument``).
    """
    output = Path(os.path.abspath(output))
    path = lock_path(output)
    key = str(path)
    if key in _HELD:  # this process holds it already
        _HELD[key][1] += 1
        try:
            yield path
        finally:
            _HELD[key][1] -= 1
        return
    from fusekit.io import OUTPUT_OWNER, check_output_paths, write_error

    check_output_paths(output, owner=owner or OUTPUT_OWNER, argument=argument)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, output) from None
    fd = _acquire(path, output)
    _HELD[key] = [fd, 1]
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                  "command": list(command) if command else ["fusekit", *sys.argv[1:]]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
    except OSError:
        pass  # a full disk leaves the file empty; the lock itself holds regardless
    try:
        yield path
    finally:
        del _HELD[key]
        # Remove the name first, then drop the lock: a waiting process re-checks the name (see _acquire).
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def holds_output(argument: str) -> Callable:
    """Decorator: the function holds the lock of its ``argument`` (an output path) while it runs."""

    def wrap(func: Callable) -> Callable:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def locked(*args: Any, **kwargs: Any) -> Any:
            output = signature.bind(*args, **kwargs).arguments.get(argument)
            if output is None:
                return func(*args, **kwargs)
            if distributed.start().world == 1:
                with output_lock(output, owner=f"{func.__name__}()", argument=argument):
                    return func(*args, **kwargs)
            with contextlib.ExitStack() as held:
                with distributed.agreement("locking the output"):
                    if distributed.is_main():
                        held.enter_context(output_lock(output, owner=f"{func.__name__}()", argument=argument))
                return func(*args, **kwargs)

        return locked

    return wrap
