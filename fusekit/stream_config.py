"""``StreamOptions``: whether data files are held in memory or read in batches (``fusekit/data/batches.py``).

Apart from the data floor so that the command line reads its defaults without importing pandas.
"""
from __future__ import annotations

from dataclasses import dataclass

from fusekit.options import Options, option

STREAM = ("auto", "always", "never")
# Resident bytes per cell of a table held the in-memory way (a pandas frame of text columns plus
# its encoded arrays): the issue measured about 1.5 KB per row of Census-Income's 40 columns.
CELL_BYTES = 40


@dataclass
class StreamOptions(Options):
    """Whether data files are held in memory or streamed in batches, and the streaming buffer."""

    stream: str = option("auto", choices=STREAM,
                         help="read data files in batches: auto (when the rows would not fit in --memory-budget), "
                              "always, or never (hold every row in memory)")
    memory_budget: int = option(1024, minimum=1, help="MB the rows of a data file may take in memory before auto "
                                                      "streams them")
    shuffle_buffer: int = option(262144, minimum=1, help="rows of the shuffle buffer when streaming")

    def decide(self, rows: int, columns: int) -> tuple[bool, str]:
        """(stream?, why) for a file of ``rows`` x ``columns`` (rows estimated for CSV)."""
        estimate = rows * columns * CELL_BYTES / 2**20
        size = f"{rows} rows x {columns} columns, about {estimate:.0f} MB in memory"
        if self.stream == "always":
            return True, f"streamed ({size}; stream=always)"
        if self.stream == "never":
            return False, f"in memory ({size}; stream=never)"
        if estimate > self.memory_budget:
            return True, f"streamed ({size}, above the {self.memory_budget} MB budget)"
        return False, f"in memory ({size}, within the {self.memory_budget} MB budget)"
