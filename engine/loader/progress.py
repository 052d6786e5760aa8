"""A progress bar on stderr while the weights load: redrawn in place on a terminal; elsewhere
(logs, pipes) only a line at each quarter, so a log file gets four lines, not hundreds."""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
BAR_WIDTH = 30


def progress(items: Iterable[T], total: int, label: str = "loading weights") -> Iterator[T]:
    """Yields ``items``; an item counts as done when the next one is asked for."""
    stream = sys.stderr
    is_tty = stream.isatty()
    start = last_draw = time.perf_counter()
    num_quarters = 0
    for num_done, item in enumerate(items, 1):
        yield item
        now = time.perf_counter()
        if is_tty and (now - last_draw > 0.1 or num_done == total):
            filled = BAR_WIDTH * num_done // max(total, 1)
            stream.write(f"\r{label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {num_done}/{total} tensors "
                         f"{now - start:.1f}s" + ("\n" if num_done == total else ""))
            stream.flush()
            last_draw = now
        elif not is_tty and 4 * num_done // max(total, 1) > num_quarters:
            num_quarters = 4 * num_done // max(total, 1)
            stream.write(f"{label}: {num_done}/{total} tensors ({25 * num_quarters}%) {now - start:.1f}s\n")
            stream.flush()
