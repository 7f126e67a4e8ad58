"""Short tables for huge models: which rows of a long listing to print (decompose, inspect).

A pool of 10,000-node models has thousands of layers; a report prints at most ``limit`` rows,
the ones that matter first, and says how many it left out and how to see them (``hint``).
"""
from __future__ import annotations

from typing import Iterator


def shown_rows(n: int, keep: list[int], limit: int | None, lines: list[str], hint: str) -> Iterator[int]:
    """Row indices to print: all, or with ``limit`` the rows in ``keep`` and then the first ones up
    to ``limit`` rows; each run of skipped rows becomes one "... N more" line appended to ``lines``."""
    if limit is None or n <= limit:
        yield from range(n)
        return
    kept = set(sorted(set(keep))[:limit])
    for k in range(n):
        if len(kept) >= limit:
            break
        kept.add(k)
    skipped = 0
    for k in range(n + 1):
        if (k == n or k in kept) and skipped:
            lines.append(f"  ... {skipped} more" + (f" ({hint})" if hint else ""))
            skipped = 0
        if k < n and k in kept:
            yield k
        elif k < n:
            skipped += 1


def format_shape(shape: list | tuple | None) -> str:
    """``[batch,16]``; ``?`` for an unknown shape."""
    return "[" + ",".join(str(d) for d in shape) + "]" if shape is not None else "?"
