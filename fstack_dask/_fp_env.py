"""IEEE arithmetic in the calling thread, whatever a library set: :func:`ieee_arithmetic`.

A thread's floating-point environment (x86's MXCSR, Arm's FPCR) decides whether subnormal
numbers are flushed to zero (FTZ/DAZ), how results are rounded and which exceptions trap. A
library built with ``-ffast-math`` or ``-Ofast`` sets FTZ/DAZ when it is imported, in the
importing thread and in the threads it starts later; an Intel-compiled Python starts with
them. On such a worker a float stack's subnormal samples read as 0: its blocks fused to other
bits (NaN depths where the samples have contrast) than every other worker's, in one output
(found by an adversarial run on mixed nodes, 2026-12-05). A host that unmasks traps
(``feenableexcept``) had the kernels' first 0/0 (a flat patch's selectivity) kill the process
with SIGFPE: numpy's ``errstate`` does not mask them, and numba computes with the thread's
environment as it finds it. Every task that does arithmetic on samples therefore runs in the
default environment (round to nearest, no flushing, no traps), and gives the thread back as
it found it.

Checking costs two float operations and, where the C library has it, one ``fegetexcept``
through ctypes; only a thread found in another environment pays for ``fegetenv``/``fesetenv``.
Where the C library cannot set the default (no ``fesetenv``), the task fails with a one-line
error rather than write other bits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["ieee_arithmetic", "in_ieee_arithmetic", "with_ieee_arithmetic"]

F = TypeVar("F", bound=Callable[..., Any])

# Module globals, not literals: the compiler would fold ``5e-324 * 1.0`` once, in whatever
# environment compiled the module, and the check must run in this thread's.
_TINY = 5e-324  # the smallest subnormal double
_ONE = 1.0
_THREE_QUARTERS_ULP = 3 * 2.0**-54  # 1 + this is 1 + 1 ulp rounded to nearest, 1 toward zero
_ONE_UP = 1.0 + 2.0**-52


def in_ieee_arithmetic() -> bool:
    """Whether this thread keeps subnormals and rounds to nearest (even) in both directions
    (its traps are :func:`_traps_enabled`'s: a float operation cannot test them safely)."""
    return (
        _TINY * _ONE != 0.0
        and _ONE + _THREE_QUARTERS_ULP == _ONE_UP
        and -_ONE - _THREE_QUARTERS_ULP == -_ONE_UP
    )


_FENV_BYTES = 64  # at least sizeof(fenv_t) on every platform (32 on x86-64 glibc, 8 on Arm)


@functools.cache
def _fegetexcept() -> Any:
    """glibc's ``fegetexcept`` (the traps enabled), or None: musl and macOS have no
    ``feenableexcept`` either."""
    for name in (ctypes.util.find_library("m"), ctypes.util.find_library("c"), None):
        try:
            function = ctypes.CDLL(name).fegetexcept
        except (OSError, AttributeError):
            continue
        function.argtypes, function.restype = [], ctypes.c_int
        return function
    return None


def _traps_enabled() -> bool:
    """Whether a floating-point exception in this thread raises SIGFPE."""
    function = _fegetexcept()
    return function is not None and function() != 0


@functools.cache
def _fenv_functions() -> tuple[Any, Any, Any] | None:
    """(fegetenv, fesetenv, FE_DFL_ENV) from the C library, or None where there are none."""
    names = [ctypes.util.find_library("m"), ctypes.util.find_library("c"), None]
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            get, put = lib.fegetenv, lib.fesetenv
        except (OSError, AttributeError):
            continue
        get.argtypes = put.argtypes = [ctypes.c_void_p]
        get.restype = put.restype = ctypes.c_int
        if sys.platform == "darwin":
            try:  # macOS exports the default environment as data
                default = ctypes.addressof(ctypes.c_char.in_dll(lib, "_FE_DFL_ENV"))
            except ValueError:
                continue
        else:
            default = ctypes.c_void_p(-1).value  # glibc and musl: FE_DFL_ENV is (fenv_t *) -1
        return get, put, default
    return None


class FloatingPointEnvironmentError(RuntimeError):
    """This thread flushes subnormals, rounds otherwise or traps, and it could not be set back."""


@contextmanager
def ieee_arithmetic() -> Iterator[None]:
    """Run the body in the default floating-point environment; restore the thread's after.

    Raises
    ------
    FloatingPointEnvironmentError
        Where the thread is in another environment and it cannot be set to the default.
    """
    if in_ieee_arithmetic() and not _traps_enabled():
        yield
        return
    functions = _fenv_functions()
    saved = ctypes.create_string_buffer(_FENV_BYTES)
    if functions is None or functions[0](saved) != 0 or functions[1](functions[2]) != 0:
        raise FloatingPointEnvironmentError(_MESSAGE)
    try:
        if not in_ieee_arithmetic() or _traps_enabled():
            raise FloatingPointEnvironmentError(_MESSAGE)
        yield
    finally:
        functions[1](saved)


_MESSAGE = (
    "this thread flushes subnormal numbers to zero, rounds other than to nearest or traps "
    "floating-point exceptions (a library built with -ffast-math or -Ofast sets the first "
    "when imported; feenableexcept the last), and fstack_dask "
    "could not set IEEE arithmetic back: its blocks would differ from other machines' bits; "
    "import fstack_dask in a process without that library"
)


def with_ieee_arithmetic(function: F) -> F:
    """``function`` run inside :func:`ieee_arithmetic` (a task that computes on samples)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with ieee_arithmetic():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
