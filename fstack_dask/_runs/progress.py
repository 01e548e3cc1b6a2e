"""Progress of a run: a tqdm bar with an ETA on a terminal or in a notebook, plain lines
otherwise.

A bar redrawn with carriage returns turns a batch job's log into one enormous line, so when
stderr is not a terminal we log a line at most every ``LOG_EVERY`` seconds (and at the end)
through the ``fstack_dask`` logger instead.
"""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["Progress"]

log = logging.getLogger("fstack_dask.progress")

LOG_EVERY = 30.0  # seconds between progress lines when stderr is not a terminal
SHOW_AFTER = 1.0  # seconds before a bar appears (short runs print nothing)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


class Progress:
    """Counts finished blocks; shows them as described in the module docstring."""

    def __init__(
        self, total: int, *, enabled: bool = True, unit: str = "blocks", label: str = "fusing"
    ) -> None:
        self.total, self.unit, self.done, self.label = int(total), unit, 0, label
        self.start = time.monotonic()
        self._bar = None
        self._last_line = self.start
        self.enabled = enabled and total > 0
        self._tty = sys.stderr.isatty() or _in_notebook()

    def _make_bar(self) -> None:
        if _in_notebook():
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm
        self._bar = tqdm(
            total=self.total,
            initial=self.done,
            unit=self.unit[:-1] if self.unit.endswith("s") else self.unit,
            desc=self.label,
            file=sys.stderr,
            dynamic_ncols=True,
            smoothing=0.1,
        )

    def advance(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if self._tty:
            if self._bar is None and now - self.start >= SHOW_AFTER:
                self._make_bar()
            elif self._bar is not None:
                self._bar.update(n)
        elif now - self._last_line >= LOG_EVERY:
            self._last_line = now
            self._log(now)

    def _log(self, now: float) -> None:
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        log.info(
            "%s: %d/%d %s (%.0f%%), %.0f s elapsed, about %.0f s left",
            self.label, self.done, self.total, self.unit, 100 * self.done / self.total,
            elapsed, left,
        )  # fmt: skip

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and not self._tty and time.monotonic() - self.start >= SHOW_AFTER:
            self._log(time.monotonic())
