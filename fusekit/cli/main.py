"""Entry point of the ``fusekit`` command."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
from typing import Iterator

from fusekit import __version__
from fusekit.errors import FusekitError, TrainingInterrupted

# One module per command in this package; each defines register(subparsers).
COMMANDS = [
    "decompose",
    "inspect_cmd",
    "train_single",
    "data_cmd",
    "fuse",
    "eval_cmd",
    "predict",
    "export_cmd",
    "bench",
    "demo",
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog="fusekit",
        description="Fuse trained single-task ONNX models into one multi-task ONNX model (EMM).",
    )
    parser.add_argument("--version", action="version", version=f"fusekit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"fusekit.cli.{name}").register(subparsers)
    return parser


def _with_config(parser: argparse.ArgumentParser, argv: list[str], args: argparse.Namespace) -> argparse.Namespace:
    args._argv = argv  # the command line as typed, for the run record
    if getattr(args, "config", None) is None:
        return args
    from fusekit.cli.config import apply_config

    return apply_config(parser, argv, args)


def parse(argv: list[str]) -> argparse.Namespace:
    """The parsed command line with the values of its ``--config`` file (flags override them)."""
    parser = build_parser()
    return _with_config(parser, argv, parser.parse_args(argv))


@contextlib.contextmanager
def _one_interrupt() -> Iterator[None]:
    """Ctrl-C stops the command once; a second Ctrl-C while it stops is ignored, so that the
    checkpoint, the removal of temporary files and the lock release finish (no traceback)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def first(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _closed_stdout() -> int:
    """The reader of stdout went away (``fusekit inspect X | head``): stop quietly, as ``yes | head``
    does, with the shell's code for SIGPIPE; later writes go nowhere."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def _reports(error: BaseException) -> bool:
    """Whether this process prints ``error``: always, except that in a torchrun run an error every
    rank raised alike is printed by rank 0 only (fusekit/distributed.py)."""
    from fusekit.distributed import reports

    return reports(error)


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors print one line and return 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    flags = getattr(args, "_option_flags", None)
    try:
        with _one_interrupt():
            code = _run(parser, argv, args, flags)
    except KeyboardInterrupt:  # arrived after the command's own handling
        print("fusekit: interrupted", file=sys.stderr)
        code = 130
    _forget_caught_interrupt()
    return code


def _forget_caught_interrupt() -> None:
    """CPython records a Ctrl-C that crossed ``exec`` of a string (dataclasses do that while torch
    imports) as unhandled, even when fusekit caught it, and then ends the process by SIGINT instead
    of with the code returned here; a successful ``exec`` clears that record."""
    exec("pass")


def _run(parser: argparse.ArgumentParser, argv: list[str], args: argparse.Namespace, flags) -> int:
    try:
        args = _with_config(parser, argv, args)
        if flags is not None:
            flags.check(args)
        code = int(args.run(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _closed_stdout()
    except TrainingInterrupted as exc:
        if _reports(exc):
            print(f"fusekit: {exc.render(flags.table() if flags else None)}", file=sys.stderr)
        return 130
    except FusekitError as exc:
        # The library names option fields; say them as this command's flags.
        if _reports(exc):
            print(f"fusekit: error: {exc.render(flags.table() if flags else None)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fusekit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
