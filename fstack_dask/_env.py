"""The package's ``FSTACK_DASK_*`` environment variables: what each accepts, read one way.

A switch accepts exactly ``0`` or ``1``; unset or empty is its default (``VAR= cmd`` and
``${VAR:-}`` are the shell's ways of leaving one unset). Anything else (``maybe``, ``yes``,
``TRUE``, `` 1``) was taken as on or off in silence: the process
that plans a run refuses it in one line naming the variable, before anything is written. A
worker process that meets one (a late worker whose environment differs; those present when
the run starts were asked, before writing) warns and runs the default: refusing there would
fail its blocks in the middle of a run.
"""

from __future__ import annotations

import math
import os

__all__ = [
    "CUDA_PINNED", "ENGINE", "ENGINES", "HALO_EXCHANGE", "LOCK_STALE_AFTER", "SWITCH_VALUES",
    "check", "choice", "seconds", "switch", "switch_or_default",
]  # fmt: skip

SWITCH_VALUES = ("0", "1")
#: The CPU engine (``_algorithm.block``), chosen where a run is planned.
ENGINE, ENGINES = "FSTACK_DASK_ENGINE", ("numpy", "compiled")
#: Halo exchange (``_runs.exchange``), a switch read where a run is planned.
HALO_EXCHANGE = "FSTACK_DASK_HALO_EXCHANGE"
#: How ``_algorithm.cuda`` sends samples, a switch read in every process that fuses on a GPU.
CUDA_PINNED = "FSTACK_DASK_CUDA_PINNED"
#: When another host's lock is stale (``_outputs.staleness``): seconds, read at the import.
LOCK_STALE_AFTER, LOCK_STALE_DEFAULT = "FSTACK_DASK_LOCK_STALE_AFTER", 60.0


def check() -> None:
    """Refuse (``ValueError``, one line naming it) a value that none of the variables a run's
    planning reads accepts: every run, and the demo, call it before writing anything."""
    choice(ENGINE, ENGINES)
    switch(HALO_EXCHANGE, True)
    switch(CUDA_PINNED, True)
    seconds(LOCK_STALE_AFTER, LOCK_STALE_DEFAULT)


def choice(name: str, accepted: tuple[str, ...]) -> str | None:
    """The value of ``name`` if it is one of ``accepted``; None where unset or empty;
    otherwise ``ValueError`` naming the variable and what it accepts."""
    text = os.environ.get(name, "")
    if text == "":
        return None
    if text not in accepted:
        allowed = " or ".join(repr(a) for a in accepted)
        raise ValueError(f"{name} must be {allowed} (or unset), got {text!r}")
    return text


def switch(name: str, default: bool) -> bool:
    """``name`` as a switch (``0``/``1``; unset or empty: ``default``); refuses another value."""
    found = choice(name, SWITCH_VALUES)
    return default if found is None else found == "1"


def switch_or_default(name: str, default: bool) -> bool:
    """As :func:`switch`, where a refusal would fail a running task: another value is warned
    of and ``default`` runs."""
    try:
        return switch(name, default)
    except ValueError as exc:
        from ._errors import warn

        warn(f"{exc}; the default ({int(default)}) is used")
        return default


def seconds(name: str, default: float) -> float:
    """``name`` as seconds above 0, ``inf`` for never (unset or empty: ``default``); refuses
    another value (``abc``, ``0``, ``-5``, ``nan``)."""
    text = os.environ.get(name, "")
    if text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise ValueError(f"{name} must be a number of seconds above 0, or inf (or unset), "
                         f"got {text!r}")  # fmt: skip
    return value
