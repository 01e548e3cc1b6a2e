"""A local cluster's workers kept through an interrupt of the process that started them: for
the run, its worker processes in this process's group ignore SIGINT, those its nannies start
during the run included (:func:`shield_local_workers`)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from distributed import WorkerPlugin

from .._errors import finish_quietly_despite_interrupts

__all__ = ["shield_local_workers"]


@contextlib.contextmanager
def shield_local_workers(client: Any) -> Iterator[None]:
    """For the run, the cluster's worker processes that are this process's children, in its
    process group, ignore SIGINT. A Jupyter kernel's interrupt (and a terminal's Ctrl-C) goes
    to the whole group, and a ``LocalCluster``'s workers died of it (dask/distributed#1925):
    their nannies did not restart them, and the next run in the kernel waited out the stall
    timeout (600 s) for workers that would never come. The run,
    interrupted here, ends its tasks itself. Other workers (another host, a ``dask worker``
    a shell script started beside the command line, which its Ctrl-C is to end) are left
    alone. A worker process a nanny starts during the run (one killed, restarted) is shielded
    too: a worker plugin, for the run only (a ``client.run`` at the start reached only the
    workers present then). Setting and restoring are carried through an interrupt: one
    that landed meanwhile left a worker ignoring SIGINT for good."""
    plugin = _Shield(os.getpgrp(), os.getpid(), f"fstack-dask-shield-{uuid.uuid4().hex}")
    registered: list[str] = []  # the scheduler's address, once asked to register
    try:
        finish_quietly_despite_interrupts(_register, client, plugin, registered)
        yield
    finally:
        # None registered (another process's cluster: Client("tcp://..."), no worker of ours):
        # none to restore. A run whose scheduler had died waited out its Client's timeout
        # (30 s) here; so did one whose client was closed.
        if registered and getattr(client, "status", None) == "running":
            with contextlib.suppress(Exception):
                finish_quietly_despite_interrupts(client.unregister_worker_plugin, plugin.token)
        elif registered and getattr(client, "status", None) in ("closing", "closed"):
            # closed by another thread (a notebook's client.close()), its scheduler alive:
            # the plugin stayed on it, the workers ignored SIGINT for good
            finish_quietly_despite_interrupts(_unregister_anew, registered[0], plugin.token)


def _register(client: Any, plugin: _Shield, registered: list[str]) -> None:
    """Have the run's plugin on the cluster's workers, present and to come, where some may be
    this process's children: a cluster object of this process (a ``LocalCluster``, adaptive
    ones scaled to none included), or a worker of ours found among those present (a Client
    made from a local cluster's address). Nothing is left on another process's scheduler."""
    if getattr(client, "cluster", None) is None:
        found = {}
        with contextlib.suppress(Exception):
            found = client.run(_is_ours, plugin.pgid, plugin.pid, on_error="return")
        if not any(ours is True for ours in found.values()):
            return
    # said registered first: a second Ctrl-C in the call below left it on the scheduler
    registered.append(str(getattr(getattr(client, "scheduler", None), "address", "") or ""))
    with contextlib.suppress(Exception):
        client.register_plugin(plugin, name=plugin.token)


def _unregister_anew(address: str, token: str) -> None:
    """The run's plugin removed through a connection of its own, where the run's Client was
    closed; none made where the scheduler does not answer within a few seconds."""
    from distributed import Client

    if not address:
        return
    with contextlib.suppress(Exception), Client(address, set_as_default=False, timeout=5) as c:
        c.unregister_worker_plugin(token)


class _Shield(WorkerPlugin):
    """On each worker: SIGINT ignored from its setup to its teardown, where it is ours."""

    def __init__(self, pgid: int, pid: int, token: str) -> None:
        self.pgid, self.pid, self.token = pgid, pid, token

    def setup(self, worker: Any) -> None:
        if _is_ours(self.pgid, self.pid):
            _ignore_interrupts(self.token)

    def teardown(self, worker: Any) -> None:
        _restore_interrupts(self.token)


#: On a worker: the runs that hold its SIGINT ignored, and its handler before the first.
_SHIELDED: dict[str, Any] = {"tokens": set(), "previous": None}


def _is_ours(pgid: int, pid: int) -> bool:
    """On a worker (in its event loop: the main thread of a nanny's worker process): whether
    it is the caller's child, in its process group, and its SIGINT handler can be set."""
    if os.getppid() != pid or os.getpgrp() != pgid:
        return False  # a worker in it elsewhere, or out of reach
    if threading.current_thread() is not threading.main_thread():
        return False
    return bool(_SHIELDED["tokens"]) or signal.getsignal(signal.SIGINT) is not None


def _ignore_interrupts(token: str) -> None:
    if not _SHIELDED["tokens"]:
        # (a handler set outside Python, None, could not be put back: _is_ours said no)
        _SHIELDED["previous"] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    _SHIELDED["tokens"].add(token)  # runs at once on one cluster: the last one restores


def _restore_interrupts(token: str) -> None:
    if token in _SHIELDED["tokens"]:
        _SHIELDED["tokens"].discard(token)
        if not _SHIELDED["tokens"]:
            signal.signal(signal.SIGINT, _SHIELDED["previous"])
