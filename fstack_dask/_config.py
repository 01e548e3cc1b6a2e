"""YAML run configurations for the command line: loading, strict validation, clusters.

A configuration file has up to five sections, all optional::

    algorithm: {nhsize: 9, alpha: 0.2, sth: 13, focus: null}
    input:     {axes: null, channels: auto}
    output:    {depth_map: false, selectivity_map: false, chunks: null, overwrite: false}
    resources: {memory_per_task: 256MiB, device: cpu}
    cluster:   {kind: local, scheduler: threads}     # or distributed / slurm / pbs

Every key is checked when the file is read: an unknown key, a value of the
wrong type or out of range, or a key that does not apply to the chosen
``cluster.kind`` is a :class:`ValueError` naming the key and the file, so a
typo fails at once instead of after a cluster has been queued for. See
``configs/README.md`` for the table of keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import numbers
import os
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from ._device import DEVICES
from ._params import (
    DEFAULT_MEMORY_PER_TASK,
    MAX_CHUNK,
    check_alpha,
    check_focus,
    check_memory,
    check_nhsize,
    check_sth,
    parse_axes,
)

__all__ = [
    "AlgorithmConfig",
    "ClusterConfig",
    "Config",
    "InputConfig",
    "OutputConfig",
    "ResourcesConfig",
    "check_value",
    "config_from_mapping",
    "load_config",
    "open_scheduler",
]

CHANNELS = ("auto", "rgb", "independent")
CLUSTER_KINDS = ("local", "distributed", "slurm", "pbs")
LOCAL_SCHEDULERS = ("synchronous", "threads", "processes")
JOBQUEUE_KINDS = ("slurm", "pbs")
_JOBQUEUE_CLASS = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}


# ---------------------------------------------------------------- the config


@dataclass(frozen=True)
class AlgorithmConfig:
    """Parameters of the fusion (Pertuz et al. 2013), as in :func:`focus_stack`."""

    nhsize: int = 9
    alpha: float = 0.2
    sth: float = 13.0
    focus: tuple[float, ...] | None = None


@dataclass(frozen=True)
class InputConfig:
    """How to read the source: axes of a plain array, channel handling."""

    axes: str | None = None
    channels: str = "auto"
    level: int = 0
    storage_options: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class OutputConfig:
    """What to write: extra maps, y/x chunks, whether to replace ``dst``."""

    depth_map: bool = False
    selectivity_map: bool = False
    chunks: int | tuple[int, int] | None = None
    overwrite: bool = False
    storage_options: Mapping[str, Any] | None = None
    levels: int | None = None


@dataclass(frozen=True)
class ResourcesConfig:
    """Per-task memory budget, in bytes; the stall timeout; where blocks are fused."""

    memory_per_task: int = DEFAULT_MEMORY_PER_TASK
    stall_timeout: float = 600.0
    device: str = "cpu"


@dataclass(frozen=True)
class ClusterConfig:
    """Where the tasks run.

    ``kind`` is ``"local"`` (a local Dask scheduler named by ``scheduler``),
    ``"distributed"`` (a running scheduler at ``address``), or ``"slurm"`` /
    ``"pbs"`` (a dask-jobqueue cluster built from ``jobqueue`` and scaled to
    ``jobs`` batch jobs).
    """

    kind: str = "local"
    scheduler: str = "threads"
    address: str | None = None
    jobs: int = 10
    jobqueue: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))


@dataclass(frozen=True)
class Config:
    """A validated run configuration; build it with :func:`load_config`.

    Examples
    --------
    >>> cfg = Config()
    >>> cfg.fuse_kwargs()["nhsize"], cfg.cluster.kind, cfg.cluster.scheduler
    (9, 'local', 'threads')
    >>> with cfg.cluster_context() as scheduler:
    ...     scheduler
    'threads'
    """

    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    path: str | None = field(default=None, compare=False)
    """The file it was read from, for messages; None for defaults."""

    def fuse_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`fuse_zarr`, all but scheduler, resume and progress."""
        a, i, o = self.algorithm, self.input, self.output
        return {
            "axes": i.axes,
            "level": i.level,
            "channels": i.channels,
            "nhsize": a.nhsize,
            "focus": None if a.focus is None else list(a.focus),
            "alpha": a.alpha,
            "sth": a.sth,
            "depth_map": o.depth_map,
            "selectivity_map": o.selectivity_map,
            "chunks": o.chunks,
            "memory_per_task": self.resources.memory_per_task,
            "levels": o.levels,
            "overwrite": o.overwrite,
            "storage_options": None if i.storage_options is None else dict(i.storage_options),
            "dst_storage_options": None if o.storage_options is None else dict(o.storage_options),
            "stall_timeout": self.resources.stall_timeout,
            "device": self.resources.device,
        }

    def with_overrides(self, **sections: Mapping[str, Any]) -> Config:
        """A copy with some values replaced, e.g. ``with_overrides(algorithm={"nhsize": 5})``.

        Values must already be validated (the command line validates its own).
        ``cluster`` replaces the whole cluster section, as a command-line
        ``--scheduler`` does.
        """
        changes: dict[str, Any] = {}
        for name, values in sections.items():
            if name not in _SECTIONS:
                raise ValueError(f"unknown config section {name!r}; expected one of {_SECTIONS}")
            if name == "cluster":
                changes[name] = ClusterConfig(**values)
            else:
                changes[name] = dataclasses.replace(getattr(self, name), **values)
        return dataclasses.replace(self, **changes)

    def cluster_context(self) -> contextlib.AbstractContextManager[Any]:
        """Context manager yielding what to pass to ``fuse_zarr(scheduler=...)``; see
        :func:`open_scheduler`."""
        return open_scheduler(self)


@contextlib.contextmanager
def open_scheduler(config: Config) -> Iterator[Any]:
    """Yield the ``scheduler=`` for :func:`fuse_zarr` described by ``config.cluster``.

    * ``local``: the scheduler name (``"synchronous"``, ``"threads"`` or
      ``"processes"``).
    * ``distributed``: a ``distributed.Client`` connected to ``address``
      (the scheduler itself is left running).
    * ``slurm`` / ``pbs``: a ``dask_jobqueue`` cluster built with
      ``**jobqueue``, scaled to ``jobs`` batch jobs, and a ``Client`` on it;
      on exit the client and the cluster are closed, which cancels the jobs.

    Raises
    ------
    RuntimeError
        If ``slurm``/``pbs`` is asked for and ``dask_jobqueue`` is not installed.
    """
    c = config.cluster
    if c.kind == "local":
        yield c.scheduler
        return
    from distributed import Client

    if c.kind == "distributed":
        with Client(c.address) as client:
            yield client
        return
    cls = _jobqueue_class(c.kind)
    with cls(**dict(c.jobqueue)) as cluster:
        cluster.scale(jobs=c.jobs)
        with Client(cluster) as client:
            yield client


def _jobqueue_class(kind: str) -> Any:
    name = _JOBQUEUE_CLASS[kind]
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise RuntimeError(
            f"cluster kind {kind!r} needs dask-jobqueue, which is not installed; "
            f'install it with: pip install "fstack_dask[jobqueue]"'
        ) from exc
    return getattr(dask_jobqueue, name)


# ------------------------------------------------------------- value parsers
# Each returns the normalised value or raises ValueError starting with ``name``
# (a dotted config key such as "algorithm.nhsize" or an option such as "--nhsize").


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _nhsize(value: Any, name: str) -> int:
    if not _is_int(value):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r} ({_type_name(value)})")
    try:
        return check_nhsize(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: {exc}") from None


def _alpha(value: Any, name: str) -> float:
    if not _is_real(value):
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r} ({_type_name(value)})")
    try:
        return check_alpha(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: {exc}") from None


def _sth(value: Any, name: str) -> float:
    if not _is_real(value):
        raise ValueError(
            f"{name} must be a finite number (dB), got {value!r} ({_type_name(value)})"
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
    if value not in CHANNELS or not isinstance(value, str):
        raise ValueError(f"{name} must be one of {', '.join(CHANNELS)}, got {value!r}")
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
    if isinstance(value, str) and value.strip().isdigit():  # from the command line
        value = int(value)
    if _is_int(value) and 0 <= value <= 40:
        return int(value)
    raise ValueError(f"{name} must be auto, null or an integer from 0 to 40, got {value!r}")


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
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValueError(
            f"{name} must be a mapping of fsspec options such as {{anon: true}}, got {value!r}"
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
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"{name} must be a scheduler address such as tcp://scheduler:8786, "
            f"got {value!r} ({_type_name(value)})"
        )
    return value.strip()


def _jobs(value: Any, name: str) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r} ({_type_name(value)})")
    return int(value)


def _sexagesimal(seconds: int) -> str:
    """The base-60 digits YAML 1.1 read, e.g. 14400 -> '4:00:00'."""
    digits = []
    n = abs(int(seconds))
    while True:
        n, d = divmod(n, 60)
        digits.append(d)
        if n == 0:
            break
    text = str(digits[-1]) + "".join(f":{d:02d}" for d in reversed(digits[:-1]))
    return ("-" if seconds < 0 else "") + text


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
    if _is_real(walltime):
        typed = _sexagesimal(walltime) if _is_int(walltime) else str(walltime)
        raise ValueError(
            f"{name}.walltime is the number {walltime!r}, not a time limit: YAML reads an "
            f"unquoted {typed} as a base-60 number ({walltime!r} seconds). Quote it, e.g. "
            f'walltime: "{typed}" (HH:MM:SS)'
        )
    if walltime is not None and not isinstance(walltime, str):
        raise ValueError(
            f'{name}.walltime must be a quoted string such as "04:00:00", got {walltime!r}'
        )
    return types.MappingProxyType(dict(value))


_SCHEMA: dict[str, dict[str, Any]] = {
    "algorithm": {"nhsize": _nhsize, "alpha": _alpha, "sth": _sth, "focus": _focus},
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


# ------------------------------------------------------------------- loading


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses duplicate keys (plain safe_load keeps the last one silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        with contextlib.suppress(TypeError):
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
                )
            seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _unknown(key: str, where: str, allowed: tuple[str, ...], path: str) -> ValueError:
    hint = difflib.get_close_matches(str(key), allowed, n=1)
    maybe = f" (did you mean {hint[0]!r}?)" if hint else ""
    label = f"{where}.{key}" if where else str(key)
    return ValueError(
        f"config file {path!r}: unknown key {label!r}{maybe}; expected one of: {', '.join(allowed)}"
    )


def config_from_mapping(data: Any, path: str = "<mapping>") -> Config:
    """Validate a mapping with the file schema (``None`` means all defaults)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(
            f"config file {path!r} must hold a mapping of sections "
            f"({', '.join(_SECTIONS)}), got {_type_name(data)}"
        )
    sections: dict[str, Any] = {}
    for section, body in data.items():
        if section not in _SCHEMA:
            raise _unknown(section, "", _SECTIONS, path)
        if body is None:
            body = {}
        if not isinstance(body, Mapping):
            raise ValueError(
                f"config file {path!r}: {section} must be a mapping of keys, "
                f"got {body!r} ({_type_name(body)})"
            )
        allowed = tuple(_SCHEMA[section])
        values = {}
        for key, value in body.items():
            if key not in _SCHEMA[section]:
                raise _unknown(key, section, allowed, path)
            try:
                values[key] = _SCHEMA[section][key](value, f"{section}.{key}")
            except ValueError as exc:
                raise ValueError(f"config file {path!r}: {exc}") from None
        sections[section] = values

    cluster = sections.get("cluster", {})
    kind = cluster.get("kind", ClusterConfig.kind)
    for key, kinds in _CLUSTER_KEYS_FOR.items():
        if key in cluster and kind not in kinds:
            raise ValueError(
                f"config file {path!r}: cluster.{key} only applies to cluster.kind "
                f"{' or '.join(kinds)}, but kind is {kind!r}; remove it or change the kind"
            )
    if kind == "distributed" and cluster.get("address") is None:
        raise ValueError(
            f"config file {path!r}: cluster.kind 'distributed' needs cluster.address, "
            f"e.g. tcp://scheduler:8786"
        )
    built = {
        "algorithm": AlgorithmConfig(**sections.get("algorithm", {})),
        "input": InputConfig(**sections.get("input", {})),
        "output": OutputConfig(**sections.get("output", {})),
        "resources": ResourcesConfig(**sections.get("resources", {})),
        "cluster": ClusterConfig(**cluster),
    }
    return Config(**built, path=path)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML configuration file.

    Parameters
    ----------
    path : str or os.PathLike
        The YAML file. Every section and key is optional; missing ones keep
        the defaults of :func:`fuse_zarr` (``cluster.scheduler`` defaults to
        ``"threads"``).

    Returns
    -------
    Config

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not valid YAML, or has an unknown key, a duplicate key, a
        value of the wrong type or out of range, or a cluster key that does
        not apply to ``cluster.kind``; the message names the file and the key.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "run.yaml"
    >>> _ = p.write_text("algorithm: {nhsize: 5}\\nresources: {memory_per_task: 1GiB}\\n")
    >>> cfg = load_config(p)
    >>> cfg.algorithm.nhsize, cfg.resources.memory_per_task
    (5, 1073741824)
    >>> _ = p.write_text("algorithm: {nhsiz: 5}\\n")
    >>> load_config(p)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: config file '...': unknown key 'algorithm.nhsiz' (did you mean 'nhsize'?); ...
    """
    text_path = os.fspath(path)
    if os.path.isdir(text_path):
        raise ValueError(f"config file {text_path!r} is a directory, expected a YAML file")
    try:
        with open(text_path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {text_path!r} does not exist") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"config file {text_path!r} is not UTF-8 text: {exc}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ValueError(
            f"config file {text_path!r} is not valid YAML: {_yaml_message(exc)}"
        ) from None
    return config_from_mapping(data, text_path)


def _yaml_message(exc: yaml.YAMLError) -> str:
    """One line: the problem and where."""
    if isinstance(exc, yaml.MarkedYAMLError):
        problem = exc.problem or exc.context or "syntax error"
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{problem}{where}"
    return " ".join(str(exc).split())
