"""What each key of a configuration file accepts: one parser per key, the schema.

Every parser takes the value and its name (``"section.key"``, or the command-line option
that set it) and returns the checked value or raises a ValueError naming the key. The
command line checks its options with the same parsers, through :data:`check_value`.
"""

from __future__ import annotations

import math
import numbers
import re
import types
from collections.abc import Mapping
from typing import Any

from .._algorithm.device import DEVICES
from .._errors import diverted_warnings
from .._params import (
    MAX_CHUNK,
    check_alpha,
    check_focus,
    check_memory,
    check_nhsize,
    check_sth,
    parse_axes,
)

__all__ = ["check_value"]

CHANNELS = ("auto", "rgb", "independent")
CLUSTER_KINDS = ("local", "distributed", "slurm", "pbs")
LOCAL_SCHEDULERS = ("synchronous", "threads", "processes")
JOBQUEUE_KINDS = ("slurm", "pbs")


# ------------------------------------------------------------- value parsers
# Each returns the normalised value or raises ValueError starting with ``name``
# (a dotted config key such as "algorithm.nhsize" or an option such as "--nhsize").


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# Numbers typed on the command line, in ASCII: int() and float() also read "٩" (9), "1_3" (13)
# and "０.２", and int("²") fails naming nothing ("invalid literal for int()"): a typo of "0.2"
# as "0_2" was an sth of 2 (--chunks refused them already).
_ASCII_NUMBER = re.compile(
    r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?(?:inf|infinity|nan)"
)


def ascii_int(text: str) -> int | None:
    """``text`` as an int if it is one in ASCII digits (a sign allowed), else None."""
    text = text.strip()
    return int(text) if re.fullmatch(r"[-+]?[0-9]+", text) else None


def ascii_float(text: str) -> float | None:
    """``text`` as a float if it is one in ASCII (``1e-3``, ``.5``, ``inf``), else None."""
    text = text.strip()
    return float(text) if _ASCII_NUMBER.fullmatch(text.lower()) else None


def _nhsize(value: Any, name: str) -> int | str:
    if value == "auto":
        return "auto"
    if name.startswith("--") and isinstance(value, str) and ascii_int(value) is not None:
        value = ascii_int(value)  # the command line gives text; a config file's '9' stays refused
    if not _is_int(value):
        raise ValueError(
            f"{name} must be an integer >= 1 or auto, got {value!r} ({_type_name(value)})"
        )
    try:
        return check_nhsize(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: {exc}") from None


def _alpha(value: Any, name: str) -> float:
    if not _is_real(value):
        raise ValueError(
            f"{name} must be a number in [1e-06, 1], got {value!r} ({_type_name(value)})"
        )
    try:
        return check_alpha(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: {exc}") from None


def _sth(value: Any, name: str) -> float | str:
    if value == "auto":
        return "auto"
    if name.startswith("--") and isinstance(value, str):  # the command line gives text
        value = value if ascii_float(value) is None else ascii_float(value)
    if not _is_real(value):
        raise ValueError(
            f"{name} must be a finite number (dB) or auto, got {value!r} ({_type_name(value)})"
        )
    try:
        return check_sth(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: {exc}") from None


def _focus(value: Any, name: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value or not all(_is_real(v) for v in value):
        raise ValueError(
            f"{name} must be null or a non-empty list of numbers (one focus position per "
            f"plane), got {value!r} ({_type_name(value)})"
        )
    try:
        # Checked here, and again by the run, which warns (of steps too fine for the fit) on
        # the command line's notes: this Python warning printed a second copy with its
        # source file and line.
        with diverted_warnings(None):  # (this thread's alone, as catch_warnings did not)
            return tuple(float(v) for v in check_focus(list(value), len(value)))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: {exc}") from None


def _axes(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(
            f"{name} must be null or a string such as 'zyx', got {value!r} ({_type_name(value)})"
        )
    try:
        return parse_axes(value, len(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: {exc}") from None


def _channels(value: Any, name: str) -> str:
    if not isinstance(value, str) or value not in CHANNELS:  # (the type said: a list's [1])
        raise ValueError(
            f"{name} must be a string, one of {', '.join(CHANNELS)}, got {value!r} "
            f"({_type_name(value)})"
        )
    return value


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r} ({_type_name(value)})")
    return value


def _chunks(value: Any, name: str) -> int | tuple[int, int] | None:
    if value is None:
        return None
    if _is_int(value) and 1 <= value <= MAX_CHUNK:
        return int(value)
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(_is_int(v) and 1 <= v <= MAX_CHUNK for v in value)
    ):
        return int(value[0]), int(value[1])
    raise ValueError(
        f"{name} must be null, a positive integer or a list of two positive integers "
        f"[y, x] (at most {MAX_CHUNK}), got {value!r} ({_type_name(value)})"
    )


def _level(value: Any, name: str) -> int:
    if _is_int(value) and value >= 0:
        return int(value)
    raise ValueError(f"{name} must be an integer >= 0, got {value!r} ({_type_name(value)})")


def _levels(value: Any, name: str) -> int | None:
    if value is None or (isinstance(value, str) and value == "auto"):
        return None
    if isinstance(value, str) and ascii_int(value) is not None:  # from the command line
        value = ascii_int(value)
    if _is_int(value) and 0 <= value <= 40:
        return int(value)
    # (true was "got True": a bool, read as 1 where it is no integer)
    shown = "" if isinstance(value, str) or _is_int(value) else f" ({_type_name(value)})"
    raise ValueError(f"{name} must be auto, null or an integer from 0 to 40, got {value!r}{shown}")


def _seconds(value: Any, name: str) -> float:
    if _is_real(value) and math.isfinite(value) and value > 0:
        return float(value)
    raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


def _storage_options(value: Any, name: str) -> Mapping[str, Any] | None:
    """fsspec options: a mapping (or JSON text of one, from the command line)."""
    if value is None:
        return None
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(
                f'{name} must be a JSON object such as {{"anon": true}}: {exc}'
            ) from None
        except RecursionError:  # ("[" * 60000: "maximum recursion depth exceeded", exit 1)
            raise ValueError(
                f'{name} must be a JSON object such as {{"anon": true}}: nested too deeply'
            ) from None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValueError(
            f'{name} must be a mapping of fsspec options such as {{"anon": true}}, got {value!r}'
        )
    return types.MappingProxyType(dict(value))


def _memory(value: Any, name: str) -> int:
    try:
        return check_memory(value, name)
    except TypeError as exc:  # a config file's mistakes are all ValueErrors
        raise ValueError(str(exc)) from None


def _device(value: Any, name: str) -> str:
    if not isinstance(value, str) or value.strip().lower() not in DEVICES:
        raise ValueError(f"{name} must be cpu or cuda, got {value!r} ({_type_name(value)})")
    return value.strip().lower()


def _kind(value: Any, name: str) -> str:
    if not isinstance(value, str) or value not in CLUSTER_KINDS:
        raise ValueError(f"{name} must be one of {', '.join(CLUSTER_KINDS)}, got {value!r}")
    return value


def _scheduler(value: Any, name: str) -> str:
    if not isinstance(value, str) or value not in LOCAL_SCHEDULERS:
        raise ValueError(f"{name} must be one of {', '.join(LOCAL_SCHEDULERS)}, got {value!r}")
    return value


def _address(value: Any, name: str) -> str | None:
    from .._runs.scheduler_choice import is_address

    if value is None:
        return None
    if not isinstance(value, str) or not is_address(value.strip()):
        raise ValueError(
            f"{name} must be a scheduler address such as tcp://scheduler:8786, "
            f"got {value!r} ({_type_name(value)})"
        )
    return value.strip()


def _jobs(value: Any, name: str) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r} ({_type_name(value)})")
    return int(value)


def _jobqueue(value: Any, name: str) -> Mapping[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{name} must be a mapping of dask_jobqueue cluster arguments, "
            f"got {value!r} ({_type_name(value)})"
        )
    for key in value:
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"{name} has key {key!r}; expected argument names such as 'cores'")
    walltime = value.get("walltime")
    if _is_real(walltime):  # (an unquoted 4:00:00 is a string: the file is read as YAML 1.2)
        raise ValueError(
            f'{name}.walltime is the number {walltime!r}, not a time limit such as "04:00:00" '
            "(HH:MM:SS)"
        )
    if walltime is not None and not isinstance(walltime, str):
        raise ValueError(
            f'{name}.walltime must be a quoted string such as "04:00:00", got {walltime!r}'
        )
    for key in _JOBQUEUE_NAMES:
        # An unquoted account 011 is the number 11 and a queue 2e3 the float 2000.0 (YAML
        # 1.1 read 011 as 9): the scheduler would be asked for another name.
        if _is_real(value.get(key)):
            raise ValueError(
                f"{name}.{key} is the number {value[key]!r}, not a name: quote it as the "
                f'scheduler spells it, leading zeros and all ({key}: "..." in the file)'
            )
        if value.get(key) is not None and not isinstance(value[key], str):
            # (queue: true went as the partition 'True', a list as "['a', 'b']")
            raise ValueError(
                f"{name}.{key} must be a name (a string) or null, got {value[key]!r} "
                f"({_type_name(value[key])})"
            )
    return types.MappingProxyType(dict(value))


# dask-jobqueue's arguments that name something the batch scheduler knows (strings)
_JOBQUEUE_NAMES = ("queue", "account", "project")


_SCHEMA: dict[str, dict[str, Any]] = {
    "algorithm": {
        "nhsize": _nhsize,
        "alpha": _alpha,
        "sth": _sth,
        "focus": _focus,
        "auto": _bool,
    },
    "input": {
        "axes": _axes,
        "channels": _channels,
        "level": _level,
        "storage_options": _storage_options,
    },
    "output": {
        "depth_map": _bool,
        "selectivity_map": _bool,
        "chunks": _chunks,
        "overwrite": _bool,
        "storage_options": _storage_options,
        "levels": _levels,
    },
    "resources": {"memory_per_task": _memory, "stall_timeout": _seconds, "device": _device},
    "cluster": {
        "kind": _kind,
        "scheduler": _scheduler,
        "address": _address,
        "jobs": _jobs,
        "jobqueue": _jobqueue,
    },
}
_SECTIONS = tuple(_SCHEMA)
# Keys of the cluster section that only apply to some kinds.
_CLUSTER_KEYS_FOR = {
    "scheduler": ("local",),
    "address": ("distributed",),
    "jobs": JOBQUEUE_KINDS,
    "jobqueue": JOBQUEUE_KINDS,
}

# "section.key" -> its parser; the command line checks its options with the same ones.
check_value = {f"{s}.{k}": f for s, keys in _SCHEMA.items() for k, f in keys.items()}
