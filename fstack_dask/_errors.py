"""The errors ``fuse_zarr`` raises besides ValueError/TypeError, and how a failure is told.

Every failure ends in one message that says what happened and what is left on disk: nothing,
or the finished blocks and how to continue (``resume=True``).
"""

from __future__ import annotations

import errno
import logging
import warnings

__all__ = [
    "DestinationFullError",
    "DestinationLockedError",
    "FstackDaskWarning",
    "LeaseLostError",
    "SourceReadError",
    "SourceValueError",
    "is_no_space",
    "warn",
    "with_outcome",
]


class SourceReadError(RuntimeError):
    """A chunk of the source could not be read or decoded (corrupt, truncated, unreadable)."""


class SourceValueError(ValueError):
    """A chunk of the source holds values that cannot be fused (NaN or infinity)."""


class DestinationLockedError(RuntimeError):
    """Another live run is writing the same destination."""


class LeaseLostError(DestinationLockedError):
    """This run's lock was taken over by another run: it stopped writing."""


class DestinationFullError(OSError):
    """The device holding the destination is full (ENOSPC) or over quota."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self):
        return type(self), (self.strerror,)


class FstackDaskWarning(UserWarning):
    """Something that may make the result other than the user meant (an odd file among the
    planes, too few planes, unlikely axes): the run goes on, and says so."""


# Shown every time, not once per place in the code: a notebook cell run again on the same
# folder must warn again. Appended, so that a user's own filter still wins.
warnings.filterwarnings("always", category=FstackDaskWarning, append=True)


def warn(message: str) -> None:
    """Warn the user, once, wherever they look.

    A Python warning (:class:`FstackDaskWarning`: shown in scripts and notebooks, and
    catchable), and a record on the ``fstack_dask`` logger when logging is set up (a batch
    job's log, the command line, which shows the record and not the warning). Without any
    logging set-up the record is not made, so that Python's last-resort handler does not print
    the message a second time.

    Parameters
    ----------
    message : str
        One line naming what is concerned (the files, the axes, the planes) and what to do.
    """
    logger = logging.getLogger("fstack_dask")
    if logger.hasHandlers():
        logger.warning(message)
    warnings.warn(message, FstackDaskWarning, stacklevel=3)


def is_no_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is ENOSPC or EDQUOT."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def with_outcome(exc: BaseException, *, dst: str, left: str) -> BaseException:
    """``exc`` with what is left on disk added to its message (same type where we can)."""
    if is_no_space(exc):
        return DestinationFullError(
            f"no space left on device while writing dst {dst!r}: free space or choose another "
            f"dst; {left}"
        )
    if isinstance(exc, (SourceReadError, SourceValueError)):
        left = left.replace("rerun with", "repair the source and rerun with")
        return type(exc)(f"{exc}; {left}")
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return exc
    try:
        clone = type(exc)(f"{_text(exc)}; {left}")
    except Exception:  # an exception class with another signature: keep it as it is
        return exc
    return clone


def _text(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
