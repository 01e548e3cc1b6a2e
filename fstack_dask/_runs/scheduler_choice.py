"""Which scheduler a run gets, as dask would choose it, and getting it ready: the names and
addresses it accepts, a distributed Client (the default one, or our own connection to an
address), the worker processes behind ``processes``, the compiled kernel loaded on
every worker before the first block, and a local cluster's workers kept through the
interrupt of the process that started them (:mod:`.shield`).
"""

from __future__ import annotations

import contextlib
import functools
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._params import is_synchronous, local_workers
from .pool import process_pool

__all__ = [
    "Scheduler",
    "check_scheduler",
    "connect",
    "is_address",
    "resolve_scheduler",
    "warm_workers",
]


@dataclass(frozen=True)
class Scheduler:
    """Where tasks run: ``kind`` is synchronous, threads, processes or distributed."""

    kind: str
    workers: int  # tasks at once in one process
    processes: int = 1
    client: Any = None  # a distributed Client, or the process pool for "processes"
    ticks: Any = None  # "processes": the queue its workers report finished blocks on
    address: str = ""  # "distributed": the scheduler's, kept for a Client closed mid-run


NAMES = ("synchronous", "sync", "single-threaded", "threads", "processes", "distributed",
         "dask.distributed")  # fmt: skip
# a distributed scheduler's address: host and port (inproc addresses: an in-process cluster's)
_ADDRESS = re.compile(
    r"(tcp|tls|ucx|ws|wss)://(\[[0-9a-fA-F:]+\]|[^\s:/\[\]]+):\d{1,5}/?|inproc://\S+/\d+/\d+"
)


def is_address(text: str) -> bool:
    """Whether ``text`` is a distributed scheduler's address (``tcp://host:8786``)."""
    return bool(_ADDRESS.fullmatch(text))


def check_scheduler(scheduler: Any) -> None:
    """Refuse, before anything is done, a scheduler name that is neither one of dask's nor
    a scheduler's address (``'thread'`` was taken for an address: "missing port number",
    naming nothing, then a 60 s wait at exit for the Client it left; an adversarial run)."""
    if isinstance(scheduler, str) and scheduler.lower() not in NAMES:
        if not _ADDRESS.fullmatch(scheduler):
            raise ValueError(
                "scheduler must be 'synchronous', 'threads', 'processes', 'distributed', a "
                f"scheduler address such as 'tcp://host:8786', or a distributed.Client, got "
                f"{scheduler!r}"
            )
    elif not (scheduler is None or isinstance(scheduler, str) or callable(scheduler)):
        if not _is_client(scheduler):  # refused here, not after planning and warm-up
            raise _not_a_scheduler(scheduler)


def _is_client(scheduler: Any) -> bool:
    return hasattr(scheduler, "submit") and hasattr(scheduler, "scheduler_info")


def _not_a_scheduler(scheduler: Any) -> TypeError:
    return TypeError(
        "scheduler must be 'synchronous', 'threads', 'processes', a scheduler address such as "
        f"'tcp://host:8786' or a distributed.Client, got {type(scheduler).__name__}"
    )


def resolve_scheduler(scheduler: Any, stack: contextlib.ExitStack) -> Scheduler:
    """The scheduler to use, as dask would choose it.

    An explicit ``scheduler`` wins; then ``dask.config``'s ``scheduler`` (so
    ``dask.config.set(scheduler="threads")`` is honoured even while a Client exists, as in
    dask); then the active ``distributed`` Client; then threads. ``num_workers`` from
    dask's config sets the local worker count.
    """
    import dask

    if scheduler is None:
        scheduler = dask.config.get("scheduler", None) or dask.config.get("get", None)
    if scheduler is None:
        client = _default_client()
        if client is not None:
            scheduler = client
    if scheduler is None:
        scheduler = "threads"
    n_local = local_workers(dask.config.get("num_workers", None))
    if is_synchronous(scheduler):
        return Scheduler("synchronous", 1)
    if isinstance(scheduler, str):
        name = scheduler.lower()
        if name == "threads":
            return Scheduler("threads", n_local)
        if name == "processes":
            return _processes(n_local, stack)
        if name in ("dask.distributed", "distributed"):
            client = _default_client()
            if client is None:
                raise ValueError(
                    f"scheduler={scheduler!r} needs a running distributed Client; none exists"
                )
            return _cluster(client, stack)
        check_scheduler(scheduler)
        # Our own connection to an address, closed when done (not made the default).
        return _cluster(stack.enter_context(connect(scheduler, "scheduler", "")), stack)
    if callable(scheduler) and not hasattr(scheduler, "submit"):
        # a dask get function such as dask.threaded.get
        name = getattr(scheduler, "__module__", "")
        if "multiprocessing" in name:
            return _processes(n_local, stack)
        return Scheduler("threads", n_local)
    if _is_client(scheduler):
        return _cluster(scheduler, stack)
    raise _not_a_scheduler(scheduler)


def _connect_timeout() -> float:
    """Seconds an address where nothing listens is tried again before it is refused:
    distributed's own connect timeout (``distributed.comm.timeouts.connect``, 30 s), so that
    a scheduler still starting (a batch script's ``dask scheduler &``, its imports slow on a
    shared file system) is waited for as long as distributed would wait for it."""
    import dask.config
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s"))


def connect(address: str, name: str, where: str, *, default: bool = False) -> Any:
    """A ``distributed.Client`` of the scheduler at ``address`` (``name``, as the caller calls
    the parameter, ``where`` what else sets it), made the default one with ``default``.
    Where nothing listens (a TCP connection refused, at once, for as long as distributed
    waits to connect) a ``ValueError`` naming it: it was distributed's 30 s wait, then exit 1, for a
    mistyped port. An address that does not answer (a host down) is left to
    distributed's wait, 30 s."""
    from urllib.parse import urlsplit

    from distributed import Client

    said = f"{name} {address!r}" + (f" ({where})" if where else "")
    try:
        _ = urlsplit(address).port  # (tcp://host:99999 was "Port out of range 0-65535" alone)
    except ValueError as exc:
        raise ValueError(f"{said}: {exc}") from None
    wait = _connect_timeout()
    if _refused(address, wait):
        raise ValueError(
            f"{said}: nothing listens there (connection refused for {wait:g} s): "
            "start the scheduler first (dask scheduler), or check the host and port"
        )
    try:
        return Client(address, set_as_default=default, timeout="30s")
    except Exception as exc:  # (distributed's message, naming no parameter)
        raise ConnectionError(
            f"{said}: no distributed scheduler could be reached there "
            f"({type(exc).__name__}: {' '.join(str(exc).split()) or 'no message'})"
        ) from exc


def _refused(address: str, wait: float) -> bool:
    """Whether every TCP connection to ``address`` (tcp:// or tls://) was refused for
    ``wait`` seconds; any other outcome (it listens, no answer, a name not
    found) is distributed's to meet."""
    import socket
    import time
    from urllib.parse import urlsplit

    parts = urlsplit(address)
    if parts.scheme not in ("tcp", "tls") or not parts.hostname or parts.port is None:
        return False
    deadline = time.monotonic() + wait
    while True:
        try:
            socket.create_connection((parts.hostname, parts.port), timeout=2).close()
        except ConnectionRefusedError:
            if time.monotonic() >= deadline:
                return True
            time.sleep(0.25)
            continue
        except (OSError, ValueError):
            return False
        return False


def _processes(n: int, stack: contextlib.ExitStack) -> Scheduler:
    """Worker processes for the whole run, kept from an earlier run where they may be
    (:mod:`.pool`: they are slow to start)."""
    import multiprocessing

    if multiprocessing.current_process().daemon:  # Python forbids it children
        raise ValueError(
            "scheduler='processes' cannot start worker processes here: this process is a "
            "daemonic one (a multiprocessing.Pool worker, say), which may have none; use "
            "scheduler='threads'"
        )
    pool = stack.enter_context(process_pool(n))
    return Scheduler("processes", 1, n, pool, pool.ticks)


def warm_workers(scheduler: Scheduler, dtype: Any, **kernel: Any) -> None:
    """Have every worker process load the compiled kernel now, in the background, while the
    run claims dst and decodes its first rows (a fresh worker would otherwise pay numba's
    import and the kernel's loading, a second or more, at its first block). Best effort."""
    from .._algorithm.block import warm_up

    task = functools.partial(warm_up, dtype, **kernel)
    with contextlib.suppress(Exception):
        if scheduler.kind == "distributed":
            # Client.run without waiting takes only a coroutine function (a plain one fails
            # on every worker with "Combination not supported", and nothing is loaded).
            scheduler.client.run(_warm_up_in_background, task, wait=False)
        elif scheduler.kind == "processes":
            for slot in scheduler.client.slots:
                scheduler.client.submit_to(slot, task)


async def _warm_up_in_background(task: Callable[[], None]) -> None:
    """On a worker: ``task`` (which starts a thread of its own and returns)."""
    task()


def _default_client() -> Any:
    if "distributed" not in sys.modules:
        return None  # no Client can exist: importing distributed to ask would cost 0.5 s
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return default_client()
    except ValueError:
        return None


def _cluster(client: Any, stack: contextlib.ExitStack) -> Scheduler:
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    threads = [int(w.get("nthreads", 1)) for w in workers.values()] or [1]
    from .shield import shield_local_workers  # (distributed: imported once a Client is used)

    stack.enter_context(shield_local_workers(client))
    address = str(getattr(getattr(client, "scheduler", None), "address", "") or "")
    return Scheduler("distributed", max(threads), max(1, len(workers)), client, address=address)
