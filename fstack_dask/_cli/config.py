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
import errno
import os
import re
import select
import stat
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from .._params import (
    DEFAULT_MEMORY_PER_TASK,
)
from .._sources.common import import_optional
from .config_values import (
    _CLUSTER_KEYS_FOR,
    _SCHEMA,
    _SECTIONS,
    _type_name,
    check_value,
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


_JOBQUEUE_CLASS = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}
# A config file is a few lines; more is not one (``--config /dev/zero`` read until the memory
# ran out: an adversarial run on names, 2026-12-06).
_MAX_CONFIG_CHARS = 1 << 20


# ---------------------------------------------------------------- the config


@dataclass(frozen=True)
class AlgorithmConfig:
    """Parameters of the fusion (Pertuz et al. 2013), as in :func:`focus_stack`."""

    nhsize: int | str | None = None  # None: 9, or "auto" when ``auto`` is on
    alpha: float = 0.2
    sth: float | str | None = None  # None: 13, or "auto" when ``auto`` is on
    focus: tuple[float, ...] | None = None
    auto: bool = False  # choose nhsize and sth from the data, unless they are given


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
    given: frozenset[str] = field(default=frozenset(), compare=False)
    """The keys the file set (``"resources.memory_per_task"``), for messages."""

    def fuse_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`fuse_zarr`, all but scheduler, resume and progress."""
        a, i, o = self.algorithm, self.input, self.output
        return {
            "axes": i.axes,
            "level": i.level,
            "channels": i.channels,
            "nhsize": a.nhsize if a.nhsize is not None else ("auto" if a.auto else 9),
            "focus": None if a.focus is None else list(a.focus),
            "alpha": a.alpha,
            "sth": a.sth if a.sth is not None else ("auto" if a.auto else 13.0),
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
        from .._runs.scheduler_choice import connect

        where = "--scheduler, or the config's cluster.address"
        with connect(c.address, "scheduler", where, default=True) as client:
            yield client
        return
    cls = _jobqueue_class(c.kind)
    from .._runs.waiting import telling_refusals  # (what sbatch said, for a refused run's line)

    told = {"job_cls": telling_refusals(cls.job_cls)} if hasattr(cls, "job_cls") else {}
    with cls(**dict(c.jobqueue), **told) as cluster:
        cluster.scale(jobs=c.jobs)
        with Client(cluster) as client:
            yield client


def _jobqueue_class(kind: str) -> Any:
    name = _JOBQUEUE_CLASS[kind]
    dask_jobqueue = import_optional(
        "dask_jobqueue", extra="jobqueue", what=f"cluster kind {kind!r}", package="dask-jobqueue"
    )  # a missing extra is bad input, exit 2, as every other one (was a RuntimeError: 1)
    return getattr(dask_jobqueue, name)


# ------------------------------------------------------------------- loading


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses duplicate keys (plain safe_load keeps the last one silently)."""


class _AtKey(Exception):
    """A value that YAML could not construct (an explicit tag: ``!!python/object``, ``!!int
    5.5``), with the keys leading to it: the message named a line and column, or nothing."""

    def __init__(self, key: Any, cause: Exception):
        super().__init__(key, cause)
        self.keys, self.cause = [str(key)], cause


class _Duplicate(yaml.constructor.ConstructorError):
    """A key given twice in one mapping (said as YAML's error, with its line)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        with contextlib.suppress(TypeError):
            if key in seen:
                mark = key_node.start_mark
                raise _Duplicate(None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark)
            seen[key] = True
        try:  # (kept by the loader for construct_mapping below; deep: a list's items too)
            loader.construct_object(value_node, deep=True)
        except _AtKey as exc:
            exc.keys.insert(0, str(key))
            raise
        except _Duplicate:
            raise
        except (yaml.constructor.ConstructorError, ValueError) as exc:
            raise _AtKey(key, exc) from None
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)

# Numbers as YAML 1.2 reads them, not PyYAML's YAML 1.1: ``nhsize: 011`` was octal (9, where
# 11 was typed), ``sth: 13:00`` sexagesimal (780), both run silently; ``alpha: 2e-1`` was a
# string (no dot), refused as one. ``1_1``, ``0b1``, ``1:30`` are
# strings now, refused by the key's check, naming it.
_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_StrictLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def _construct_int(loader: _StrictLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    return int(text, 0 if text[:2] in ("0o", "0x") else 10)  # (10: "011" is 11)


_StrictLoader.add_constructor(_INT, _construct_int)


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
    given = frozenset(f"{section}.{key}" for section, body in sections.items() for key in body)
    return Config(**built, path=path, given=given)


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
    if not str(text_path).strip():  # an unset shell variable: --config "$CFG"
        raise ValueError(f"--config must name a YAML file, got {text_path!r}")
    if os.path.isdir(text_path):
        raise ValueError(f"config file {text_path!r} is a directory, expected a YAML file")
    try:
        text = _read_text(text_path)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {text_path!r} does not exist") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"config file {text_path!r} is not UTF-8 text: {exc}") from None
    except OSError as exc:  # a socket cannot be opened: "[Errno 6] No such device", exit 1
        if exc.errno not in (errno.ENXIO, errno.ENODEV):
            raise
        raise ValueError(f"config file {text_path!r} is not a file, expected a YAML file") from None
    if len(text) > _MAX_CONFIG_CHARS:
        raise ValueError(
            f"config file {text_path!r} holds more than {_MAX_CONFIG_CHARS} characters, expected "
            "a YAML file of a few options (see configs/README.md)"
        )
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _AtKey as exc:
        cause, hint = exc.cause, ""
        why = _yaml_message(cause) if isinstance(cause, yaml.YAMLError) else str(cause)
        if isinstance(cause, yaml.YAMLError):  # a tag only Python's own loader reads
            hint = " (a config holds plain values: no YAML tags such as !!python/object)"
        raise ValueError(
            f"config file {text_path!r}: {'.'.join(exc.keys)} cannot be read: {why}{hint}"
        ) from None
    except yaml.YAMLError as exc:
        raise ValueError(
            f"config file {text_path!r} is not valid YAML: {_yaml_message(exc)}"
        ) from None
    except ValueError as exc:  # a value YAML reads but Python cannot hold: a 13th month,
        # 5000 digits (the message named neither the file nor the key)
        raise ValueError(f"config file {text_path!r} is not valid YAML: {exc}") from None
    except RecursionError:  # ('[' * 50000: "maximum recursion depth exceeded", exit 1)
        raise ValueError(
            f"config file {text_path!r} is nested too deeply to be read, expected a YAML file "
            "of a few options (see configs/README.md)"
        ) from None
    if _expands_beyond(data, _MAX_CONFIG_CHARS):
        raise ValueError(
            f"config file {text_path!r} repeats its values (YAML aliases) beyond "
            f"{_MAX_CONFIG_CHARS} in all, expected a YAML file of a few options (see "
            "configs/README.md)"
        )
    return config_from_mapping(data, text_path)


def _expands_beyond(data: Any, limit: int) -> bool:
    """Whether ``data`` holds more than ``limit`` values counted as its readers see them.
    YAML aliases repeat a value without its text: 600 bytes of aliases of aliases held 10^9
    values (a list may even hold itself), which fsspec's token of the storage options then
    spelled out, GBs and minutes before anything was said (a review of d5c9341)."""
    pending, seen = [data], 0
    while pending:
        value = pending.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(value, Mapping):
            pending += [*value.keys(), *value.values()]
        elif isinstance(value, (list, tuple)):
            pending += value
    return False


def _read_text(path: str) -> str:
    """The file's text, at most one character more than a config may hold. A named pipe is
    opened without waiting for a writer and read once one writes within
    :data:`_PIPE_WAIT_S`: ``open()`` waited forever where no program wrote to it (a review,
    2026-12-06). A pipe that has its writer (``--config <(...)``, ``/dev/stdin``) is read
    as any file: it is no named one (its path leads to ``pipe:[...]``)."""
    if not _is_named_pipe(path):
        with open(path, encoding="utf-8") as fh:
            return fh.read(_MAX_CONFIG_CHARS + 1)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        poll = select.poll()
        poll.register(fd, select.POLLIN)
        # Linux reports no hang-up before a first writer: no event means none came
        if not poll.poll(_PIPE_WAIT_S * 1000):
            raise ValueError(
                f"config file {path!r} is a named pipe that no program wrote to within "
                f"{_PIPE_WAIT_S:g} s, expected a YAML file"
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    with open(fd, encoding="utf-8") as fh:  # (closes fd)
        return fh.read(_MAX_CONFIG_CHARS + 1)


_PIPE_WAIT_S = 2.0


def _is_named_pipe(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.lstat(os.path.realpath(path)).st_mode)
    except OSError:
        return False


def _yaml_message(exc: yaml.YAMLError) -> str:
    """One line: the problem and where."""
    if isinstance(exc, yaml.MarkedYAMLError):
        problem = exc.problem or exc.context or "syntax error"
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{problem}{where}"
    return " ".join(str(exc).split())
