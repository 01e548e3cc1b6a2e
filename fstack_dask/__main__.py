"""``python -m fstack_dask`` and the ``fstack-dask`` program: the command line, its stop
signals held from its first line (:func:`main`)."""

from __future__ import annotations

import signal
import sys

from ._imports import STOP_SIGNALS

#: The exit status and word each stop signal gets if it ends an import.
_STOPS = {
    name: (
        128 + getattr(signal, name),
        "terminated" if name == "SIGTERM" else f"terminated by {name}",
    )
    for name in STOP_SIGNALS
    if hasattr(signal, name)
}


def main() -> int:
    """The program: Ctrl-C and the stop signals are held while it imports its command line,
    then delivered to its own handlers (a traceback, or an end without a word, -15, before).
    A second signal meanwhile (an import hung on a dead mount) ends it in one line."""
    from ._imports import hold_stop_signals, ignore_at_the_very_end

    # first in, so run last: the exit handlers the run's libraries register (distributed's,
    # multiprocessing's) run while a stop signal still ends it with its status (stopping.ending)
    ignore_at_the_very_end()
    hold_stop_signals(tuple(_STOPS), _end_held)
    try:
        from ._cli.main import main as command_line
    except BaseException as exc:
        from ._errors import interruption_behind

        # (a second signal landing in a class body as a module imports: Python 3.11 wraps
        # it in a RuntimeError, whose traceback the program printed)
        if interruption_behind(exc) is None:
            raise
        from ._imports import first_held

        held = first_held()
        name = signal.Signals(held).name if held is not None else "SIGINT"
        code, word = _STOPS.get(name, (130, "interrupted"))
        print(f"fstack-dask: error: {word}", file=sys.stderr, flush=True)
        return code
    return command_line()


def _end_held(signum: int) -> None:
    """End the program as ``signum`` asked, its imports not done: one hung (a dead mount)."""
    import os

    code, word = _STOPS.get(signal.Signals(signum).name, (128 + signum, "terminated"))
    os.write(2, f"fstack-dask: error: {word} (while starting)\n".encode())
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
