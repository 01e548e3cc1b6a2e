"""Progress of a run, wherever it runs: a bar with an ETA on a terminal or in a notebook,
plain lines otherwise.

* A terminal: tqdm's text bar on stderr.
* Jupyter: tqdm's widget when ipywidgets is installed; without it the same text bar, which a
  notebook shows as one line updated in place (``tqdm.auto`` would warn instead).
* A stderr that is not a terminal (a batch job's log, a file): a bar redrawn with carriage
  returns would make the log one enormous line, so a plain line is written at most every
  ``LOG_EVERY`` seconds, and one at the end. It goes to the ``fstack_dask.progress`` logger
  when logging is set up to show it (the command line does), else straight to stderr: a
  script without any logging set-up still shows its progress.

The count starts from the blocks a resumed run finds done, and the ETA is computed from the
blocks this run finished. Worker processes and cluster workers report each block as it
finishes (``reports``), so the count moves block by block on every scheduler.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time

__all__ = ["Progress"]

log = logging.getLogger("fstack_dask.progress")

LOG_EVERY = 30.0  # seconds between progress lines when stderr is not a terminal
SHOW_AFTER = 1.0  # seconds before a bar appears (short runs print nothing)


def _in_notebook() -> bool:
    # A notebook's kernel has imported IPython; importing it here would cost a script 0.2 s.
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def _has_widgets() -> bool:
    """Whether tqdm's notebook widget can be drawn (it needs ipywidgets)."""
    try:
        import ipywidgets  # noqa: F401 - tqdm.notebook imports it too
    except ImportError:
        return False
    return True


def _writable(stream: object) -> bool:
    """Whether ``stream`` can be written (not None, not closed, asked without raising)."""
    try:
        return stream is not None and not getattr(stream, "closed", False)
    except (ValueError, OSError):
        return False


class Progress:
    """Counts finished blocks; shows them as described in the module docstring.

    Parameters
    ----------
    total : int
        Blocks of the whole pass, those done before included.
    done : int, optional
        Blocks already done when the run starts (a resume's).
    enabled : bool, optional
        False: count, show nothing.
    unit, label : str, optional
        How the count and the pass are named (``"blocks"``, ``"fusing"``).
    since : tuple, optional
        For a later try of the same run (a cluster that lost the in-memory source): the
        blocks done when the run began and its ``time.monotonic()`` then, from which "done
        before this run", the time elapsed and the estimate are counted (the blocks of the
        tries before were said "done before this run").
    """

    def __init__(
        self,
        total: int,
        *,
        done: int = 0,
        enabled: bool = True,
        unit: str = "blocks",
        label: str = "fusing",
        since: tuple[int, float] | None = None,
    ) -> None:
        self.total, self.unit, self.label = int(total), unit, label
        self.initial = self.done = min(int(done), self.total)
        self.start = time.monotonic()
        if since is not None:  # a run's later try: its earlier tries' blocks are this run's
            self.initial, self.start = min(int(since[0]), self.done), since[1]
        self._bar = None
        self._last_line = self.start
        self._last_count = -1  # the count the last plain line showed
        # No stderr (pythonw, a service wrapper) or a closed one: nothing to show, and the run
        # must not fail for it, with or without progress (a helper's run, 2026-12-05).
        self.enabled = enabled and self.total > self.done and _writable(sys.stderr)
        self._tty = self.enabled and (sys.stderr.isatty() or _in_notebook())

    def _make_bar(self) -> None:
        if _in_notebook() and _has_widgets():
            from tqdm.notebook import tqdm
        else:
            from tqdm.std import tqdm
        self._bar = tqdm(
            total=self.total,
            initial=self.done,
            unit=self.unit[:-1] if self.unit.endswith("s") else self.unit,
            desc=self.label,
            file=sys.stderr,
            dynamic_ncols=True,
            smoothing=0.1,
        )
        # tqdm times by the wall clock: stepped back (NTP, a VM's clock) the bar stood still
        # for as long, its elapsed time negative
        self._bar._time = time.monotonic
        self._bar.start_t = self._bar.last_print_t = time.monotonic()

    def advance(self, n: int) -> None:
        """Count ``n`` more finished blocks."""
        if n <= 0:
            return
        self.done = min(self.done + n, self.total)
        if not self.enabled:
            return
        now = time.monotonic()
        if self._tty:
            if self._bar is None and now - self.start >= SHOW_AFTER:
                self._make_bar()
            elif self._bar is not None:
                self._bar.update(n)
        elif now - self._last_line >= LOG_EVERY:
            self._last_line, self._last_count = now, self.done
            self._emit(self._line(now))

    def _line(self, now: float, *, final: bool = False) -> str:
        elapsed = now - self.start
        text = (
            f"{self.label}: {self.done}/{self.total} {self.unit} "
            f"({100 * self.done / self.total:.0f}%)"
        )
        if self.initial:
            text += f", {self.initial} done before this run"
        text += f", {elapsed:.0f} s elapsed"
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        if not final and rate > 0 and self.done < self.total:
            # no estimate before the first block: a guess would be a number made up
            text += f", about {(self.total - self.done) / rate:.0f} s left"
        return text

    @staticmethod
    def _emit(text: str) -> None:
        if log.isEnabledFor(logging.INFO) and log.hasHandlers():
            log.info("%s", text)
        elif _writable(sys.stderr):  # nobody set logging up: an INFO record would be dropped
            with contextlib.suppress(ValueError, OSError):  # closed meanwhile: not the run's
                print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        """End the bar, or write the last line (what is done, also after an interruption)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif (
            self.enabled
            and not self._tty
            and time.monotonic() - self.start >= SHOW_AFTER
            and self.done != self._last_count  # not said just before
        ):
            self._emit(self._line(time.monotonic(), final=True))
