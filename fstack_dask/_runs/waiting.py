"""Waiting for a run's tasks: counting the blocks they report while they run, and telling a
cluster that stalled or a scheduler that went away from a slow run."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from .._errors import raise_if_stopped
from . import batch_jobs, device
from . import reports as reports_

__all__ = [
    "SchedulerLostError",
    "StalledError",
    "WorkersDiedError",
    "a_worker",
    "cluster_waiter",
    "fetched",
    "first_done",
    "killed_error",
    "lost_error",
    "local_waiter",
    "lost",
    "settled",
    "telling_refusals",
]

POLL = 0.25  # seconds between looks at the blocks reported while tasks of many blocks run
# seconds without a block before a batch cluster whose every job the batch scheduler refused
# fails (it waited stall_timeout, 600 s by default, for workers that could never come)
REFUSED_AFTER = 10.0


class StalledError(RuntimeError):
    """No block finished for too long on a cluster (workers paused, frozen or lost)."""


class SchedulerLostError(RuntimeError):
    """The dask scheduler went away during a run."""


class WorkersDiedError(RuntimeError):
    """Workers died, one after another, running the same task of a run."""


def killed_error(exc: BaseException) -> WorkersDiedError | None:
    """distributed's ``KilledWorker`` said in one line, or None for another failure: its own
    named the task's key, not the run's, and its signature kept the line from saying what
    the run left (dst kept, --resume: a cluster whose workers die at start-up)."""
    if type(exc).__name__ != "KilledWorker":
        return None
    tries = getattr(exc, "allowed_failures", None)
    return WorkersDiedError(
        f"{'' if tries is None else f'{int(tries) + 1} '}workers died one after another while they "
        "ran the same task of this run (dask's KilledWorker): a worker that dies as it starts "
        "(a preload, its environment: see the workers' logs) or as it fuses (out of memory: "
        "lower memory_per_task or give each worker more memory)"
    )


def lost(client: Any, exc: BaseException) -> bool:
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return False
    text = f"{type(exc).__name__} {exc}"
    return (
        "scheduler-connection-lost" in text
        or "CommClosedError" in text
        or getattr(client, "status", "running") not in ("running", "connecting")
    )


def lost_error(client: Any, address: str, exc: BaseException) -> SchedulerLostError | None:
    """The run's failure ``exc`` said as the loss of its scheduler (at ``address``, kept from
    the run's start: a closed Client has none), or of its Client closed by another thread;
    None where it is neither."""
    if isinstance(exc, SchedulerLostError) or not lost(client, exc):
        return None
    address = getattr(getattr(client, "scheduler", None), "address", None) or address or "?"
    if getattr(client, "status", None) in ("closing", "closed"):
        # closed by the user (another thread of a notebook), not by a lost scheduler:
        # a Client gives one up only after its reconnect timeout (30 s), the run at once
        return SchedulerLostError(
            f"the distributed Client of this run was closed while it ran (client.close() "
            f"from another thread?); make a new Client for the scheduler at {address}"
        )
    return SchedulerLostError(
        f"lost the connection to the dask scheduler at {address} (it stopped, or the "
        "network failed)"
    )


@contextlib.contextmanager
def _said_lost(client: Any) -> Iterator[None]:
    """The block's failure said by :func:`lost_error` where it is one (the in-memory source's
    scatter, its Client closed meanwhile, failed "CommClosedError in <TCP (closed)
    ConnectionPool.scatter ...>")."""
    address = str(getattr(getattr(client, "scheduler", None), "address", "") or "")
    try:
        yield
    except Exception as exc:
        error = lost_error(client, address, exc)
        if error is not None:
            raise error from exc
        raise


def first_done(running: set[Any]) -> tuple[set[Any], set[Any]]:
    """The running tasks (futures of this process) that finished, once one has, and the rest;
    a stop a signal asked for meanwhile is raised (:func:`~.._errors.raise_if_stopped`)."""
    while True:
        raise_if_stopped()
        done, rest = cf.wait(running, timeout=POLL, return_when=cf.FIRST_COMPLETED)
        if done:
            return set(done), set(rest)


def local_waiter(reports: Callable[[], list[Any]], ticks: reports_.Ticks) -> Callable:
    """Wait for the first of the running tasks to finish, counting reported blocks."""

    def waiter(running: set[Any]) -> tuple[set[Any], set[Any]]:
        while True:
            raise_if_stopped()
            done, rest = cf.wait(running, timeout=POLL, return_when=cf.FIRST_COMPLETED)
            if done:
                return set(done), set(rest)
            for run_id in reports():
                ticks.tick(run_id)

    return waiter


def cluster_waiter(
    client: Any, stall_timeout: float, reports: Callable[[], list[Any]], ticks: reports_.Ticks
) -> Callable[[set[Any]], tuple]:
    """Wait for the first of the running tasks to finish, counting reported blocks; fail
    when no block finished for ``stall_timeout`` seconds."""
    from distributed import wait

    def waiter(running: set[Any]) -> tuple[set[Any], set[Any]]:
        last = time.monotonic()
        while True:
            raise_if_stopped()
            # each job's id while it runs: distributed forgets one that ended
            batch_jobs.remember(getattr(client, "cluster", None))
            try:
                # distributed.wait uses the default client: make it ours (with an address,
                # our client is not the default; another one may be).
                with client.as_current():
                    result = wait(list(running), timeout=POLL, return_when="FIRST_COMPLETED")
            except TimeoutError:
                now = time.monotonic()
                reported = reports()
                for run_id in reported:
                    ticks.tick(run_id)
                if reported:
                    last = now
                elif now - last >= stall_timeout:
                    raise StalledError(_stall_message(client, stall_timeout, True)) from None
                elif now - last >= REFUSED_AFTER and _never_coming(client):
                    raise StalledError(_stall_message(client, round(now - last))) from None
                continue
            return set(result.done), set(result.not_done)

    return waiter


def settled(future: Any, waiter: Callable[[set[Any]], tuple]) -> None:
    """Wait, with the run's stall checks (``waiter``), until a cluster's task has a result or
    an error: one whose worker died after it ended (its batch job ended, a worker killed) is
    computed again first, and ``Future.result`` waited for a worker for ever where none would
    come (the lead's CI: a SLURM job scancelled as a fuse ended, hung)."""
    while future.status not in ("finished", "error", "cancelled"):
        waiter({future})


def fetched(client: Any, future: Any, waiter: Callable[[set[Any]], tuple]) -> Any:
    """The result of a cluster's task (raising what it raised), fetched once, however long
    that takes, while the task keeps it; one lost with its worker is :func:`settled` again,
    then fetched. A fetch bounded to 30 s, then made anew, never ended where a result took
    longer (a slow link, a loaded worker): each try serialized it again on the worker, which
    fell further behind."""
    import asyncio

    while True:
        settled(future, waiter)
        if future.status != "finished":
            return future.result()  # raises what the task raised
        # (a coroutine of the Client's own gather, run on its loop: one fetch we can wait on)
        fetch = asyncio.run_coroutine_threadsafe(
            client.gather(future, asynchronous=True), client.loop.asyncio_loop
        )
        try:
            while future.status == "finished" and not fetch.done():
                raise_if_stopped()
                cf.wait([fetch], timeout=POLL)
            if fetch.done():
                return fetch.result()
        finally:
            fetch.cancel()  # (lost as it was fetched: computed again first; or a stop)


@contextlib.contextmanager
def a_worker(client: Any, stall_timeout: float) -> Iterator[None]:
    """Wait until the cluster has a worker, kept busy inside the block. An adaptive cluster
    scaled to none (``adapt(minimum=0)``) starts workers for tasks only: a scatter, no task,
    waited 30 s for one and failed "No valid workers found", a valid run refused. A
    task asks for one, and holds it (adapt() retires idle workers) until the block
    ends. None for ``stall_timeout`` seconds (or none can come: a batch cluster's jobs all
    refused, a local cluster's all ended): the stall's :class:`StalledError`, one line, as
    the run's own wait says it."""
    if client.scheduler_info(n_workers=-1).get("workers"):
        with _said_lost(client):
            yield
        return
    from distributed import Event

    name = f"fstack-dask-a-worker-{uuid.uuid4().hex}"
    keeper = client.submit(_busy_until, name, key=name)
    try:
        start = time.monotonic()
        while not client.scheduler_info(n_workers=-1).get("workers"):
            raise_if_stopped()
            waited = time.monotonic() - start
            if waited >= stall_timeout or (waited >= REFUSED_AFTER and _never_coming(client)):
                seconds = round(min(waited, stall_timeout))
                raise StalledError(_stall_message(client, seconds, waited >= stall_timeout))
            time.sleep(POLL)
        with _said_lost(client):
            yield
    finally:
        with contextlib.suppress(Exception):  # (a scheduler gone: the run says so)
            event = Event(name, client=client)
            event.set()  # wakes the task if it waits (a set, then cleared, Event still does)
            # and dropped from the scheduler here: a task that never ran (no worker came:
            # the stall) cannot, and a set Event no one waits on is kept for good
            event.clear()
        keeper.release()


def _busy_until(name: str) -> None:
    """A task that keeps its worker busy until the Event ``name`` is set, or until the task is
    released (cancelled: it started after the Event was set and dropped)."""
    from distributed import Event, get_worker

    event = Event(name)
    while not event.wait(timeout=5):
        task = get_worker().state.tasks.get(name)  # (its key is the Event's name)
        if task is None or task.state == "cancelled":
            return
    # a set Event no task waits on is never dropped: the scheduler kept one for each run
    event.clear()


def _stall_message(client: Any, seconds: float, timed_out: bool = False) -> str:
    """The stall's line; ``timed_out``: at the stall timeout (a batch job held by an
    administrator, waited for, is said then)."""
    try:
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
    except Exception:
        workers = {}
    paused = [a for a, w in workers.items() if str(w.get("status", "")).endswith("paused")]
    if not workers:
        # (it said "no workers left; lower memory_per_task", also where none had ever
        # joined: a batch cluster whose jobs the batch scheduler refused, a scheduler
        # without workers; memory had nothing to do with it)
        cluster = getattr(client, "cluster", None)
        return f"no block finished for {seconds:g} s: no worker is connected to the " + (
            batch_jobs.said(cluster, timed_out)
            or _batch_jobs(cluster)
            or (_FAILED_TO_START if _all_ended(cluster, ("failed",)) else "")
            or (_ENDED if _all_ended(cluster) and not _all_retired(client) else "")
            or (_NONE_PLANNED if _none_planned(cluster) else "")
            # (a worker the user retired, closed by the cluster too: not one lost)
            or (_NONE_PLANNED if _dropped(cluster) and _all_retired(client) else "")
            or (_DROPPED if _dropped(cluster) else "")
            or f"scheduler: start workers for it (dask worker {_address(client)})"
        )
    retiring = _retiring(client, workers, seconds)
    if retiring and not paused:
        return (
            f"no block finished for {seconds:g} s: {len(retiring)} of {len(workers)} worker(s) "
            "were being retired meanwhile (client.retire_workers, a cluster's scale down), and "
            "a worker being retired takes no task; retire workers once the run has ended"
        )
    if paused:
        cause = (
            f"{len(paused)} of {len(workers)} worker(s) are paused because their memory use is "
            "above dask's pause threshold"
        )
    else:
        cause = "the workers are frozen, overloaded or unreachable"
    return (
        f"no block finished for {seconds:g} s: {cause}; lower memory_per_task or give each "
        "worker more memory"
    )


def _retiring(client: Any, workers: dict[str, Any], seconds: float) -> set[str]:
    """The workers being retired now (status closing_gracefully), or that the scheduler was
    asked to retire in the last ``seconds``: ``client.retire_workers`` called again and again
    kept a worker whose data no other could take closing gracefully, taking no task, and the
    run stalled, "the workers are frozen ... lower memory_per_task", false."""
    found = {a for a, w in workers.items() if w.get("status") == "closing_gracefully"}
    try:
        events = client.get_events("all")
    except Exception:  # (a scheduler gone: the status alone)
        return found
    since = time.time() - seconds - 5.0  # (the scheduler's clock, a few seconds apart)
    for when, event in events:
        if when >= since and isinstance(event, dict) and event.get("action") == "retire-workers":
            asked = [*event.get("retired", ()), *event.get("could-not-retire", ())]
            found.update(a for a in asked if a in workers)
    return found


def _address(client: Any) -> str:
    try:
        return str(client.scheduler.address)
    except Exception:
        return "ADDRESS"


def _all_refused(cluster: Any) -> bool:
    """Whether the batch scheduler refused every job of a dask-jobqueue cluster: a job has
    no id while it is submitted too, so only once the cluster's lock, held while it submits
    them, is free (a distributed without that lock: never, and the stall timeout says it)."""
    jobs, lock = batch_jobs.jobs(cluster), getattr(cluster, "_lock", None)
    if not jobs or lock is None or not callable(getattr(lock, "locked", None)):
        return False
    return not lock.locked() and all(j.job_id is None for j in jobs)


_ENDED = (
    "cluster: its worker processes have all ended (a LocalCluster's end at an interrupt of "
    "the Jupyter kernel or Python that made it, which reaches them too: dask/distributed#1925); "
    "make a new cluster and Client"
)


def _all_retired(client: Any) -> bool:
    """Whether the scheduler removed every worker it lost on purpose (``client.retire_workers``,
        a scale down), not lost (killed: an interrupt): the line blamed an interrupt nobody sent
    ; :data:`_NONE_PLANNED` says it."""
    try:
        events = client.get_events()
    except Exception:  # (a scheduler gone: the interrupt's line, as before)
        return False
    gone = {
        topic
        for topic, logged in events.items()
        if any(isinstance(e, dict) and e.get("action") == "remove-worker" for _, e in logged)
    }
    return bool(gone) and device.retired(client, gone)  # fmt: skip


_FAILED_TO_START = (
    'cluster: its workers failed to start ("Nanny failed to start worker process": a '
    "preload, a plugin or the workers' environment failing; the cluster's log says why), and "
    "it starts none in their place: fix what stops them, then make a new cluster and Client"
)


def _all_ended(cluster: Any, states: tuple[str, ...] = ()) -> bool:
    """Whether every worker (a nanny) of a local cluster has ended: after an interrupt of the
    kernel that made it, a LocalCluster's nannies did not restart their worker processes, and
    the next run waited out the stall timeout (600 s), then told to start workers with
    ``dask worker``."""
    if cluster is None or hasattr(cluster, "job_script"):
        return False  # a batch cluster's jobs: _batch_jobs says
    workers = list(getattr(cluster, "workers", {}).values())
    states = states or _ENDED_STATES  # ("failed" alone: each failed to start)
    return bool(workers) and all(getattr(w.status, "value", None) in states for w in workers)


_ENDED_STATES = ("closed", "closing", "closing_gracefully", "failed")


_NONE_PLANNED = (
    "cluster, which is not adaptive and has none to start (scaled to 0, or its workers "
    "retired): scale it up (cluster.scale(n)) or make it adaptive (cluster.adapt())"
)


def _none_planned(cluster: Any) -> bool:
    """Whether a cluster object of this process (a ``LocalCluster``, a ``SpecCluster``) that is
    not adaptive has no worker that may still come: scaled to none, or its workers retired
    (the engine's check leaves a retired one to the run, which waited out the stall timeout,
    600 s, for a worker nothing would start)."""
    if not _fixed(cluster):
        return False
    workers = dict(getattr(cluster, "workers", {}))  # (copied at once, as in _jobs)
    if any(name not in workers for name in list(getattr(cluster, "worker_spec", {}))):
        # asked for and still starting: a cluster has a worker object only once it started
        # (cluster.scale(1) just before the run, a worker 15 s to start, failed it)
        return False
    return all(getattr(w.status, "value", None) in _ENDED_STATES for w in workers.values())


_DROPPED = (
    "cluster, which closed the worker(s) it lost that were not back within distributed's "
    "lost-worker-timeout (each killed again as it came back: a block needing more memory than "
    "a worker has?), and starts none in their place: make a new cluster, or cluster.scale(n)"
)


def _dropped(cluster: Any) -> bool:
    """Whether a cluster object of this process that is not adaptive closed a worker it was
    asked for: a ``SpecCluster`` closes a worker lost (its process killed) whose nanny has
    not brought it back within distributed's lost-worker-timeout, and starts none in its
    place. The run waited out its stall timeout, 600 s, then told to start workers with
    ``dask worker`` (a worker killed at each try of a block, in the lead's loaded run)."""
    if not _fixed(cluster) or getattr(cluster, "_correct_state_waiting", 1) is not None:
        return False  # (another kind of cluster, or one starting its workers: scale())
    lock = getattr(cluster, "_lock", None)
    if lock is None or lock.locked():
        return False
    workers = dict(getattr(cluster, "workers", {}))  # (copied at once, as in _jobs)
    asked = list(getattr(cluster, "worker_spec", {}))
    return any(n not in workers for n in asked) and all(
        getattr(w.status, "value", None) in _ENDED_STATES for w in workers.values()
    )


def _fixed(cluster: Any) -> bool:
    """Whether ``cluster`` is a cluster object of this process (a ``LocalCluster``, a
    ``SpecCluster``), not a batch one, that is not adaptive."""
    if cluster is None or hasattr(cluster, "job_script") or not hasattr(cluster, "worker_spec"):
        return False  # a batch cluster's jobs, another kind of cluster: their own checks
    adaptive = getattr(cluster, "_adaptive", None)  # (distributed's own test of it)
    return adaptive is None or getattr(adaptive, "periodic_callback", None) is None


def _never_coming(client: Any) -> bool:
    """Whether the workers of a cluster without any can never come (the run fails at once)."""
    cluster = getattr(client, "cluster", None)
    return (
        _all_refused(cluster)
        or _all_ended(cluster)
        or _none_planned(cluster)
        or _dropped(cluster)
        or bool(batch_jobs.ended(cluster))
        or bool(batch_jobs.stuck(cluster)[0])
    )


def _batch_jobs(cluster: Any) -> str:
    """What became of a dask-jobqueue cluster's batch jobs, or "" for another cluster."""
    jobs = batch_jobs.jobs(cluster)
    if not jobs:
        return ""
    refused = sum(j.job_id is None for j in jobs)
    said = next((j.refusal for j in jobs if getattr(j, "refusal", None)), None)
    told = (
        f"{refused} of its {len(jobs)} batch job(s) could not be submitted (the batch "
        + (f"scheduler refused them: {said!r})" if said else "scheduler refused them)")
        if refused
        else f"its {len(jobs)} batch job(s) are still queued or ended without a worker"
    )
    return (
        f"cluster; {told}: check the batch system (sinfo, squeue, qstat) against the config's "
        "cluster.jobqueue (queue, account, walltime, cores, memory)"
    )


def telling_refusals(job_cls: type) -> type:
    """``job_cls`` (a dask-jobqueue job class) whose jobs keep, as ``refusal``, the first line
    of what the batch scheduler said when it refused them (``sbatch: error: invalid partition
    specified: normal``), for the stall's one line: dask-jobqueue raises it in distributed's
    event loop, whose log the command line silences, and the line said only that the jobs
    were refused."""

    class Telling(job_cls):  # type: ignore[misc,valid-type]
        refusal: str | None = None
        # each job's id by its name, kept after distributed forgets a job that ended, for
        # the line that names them
        submitted: dict[str, str] = {}  # noqa: RUF012 (one per class telling_refusals makes)

        async def start(self) -> None:
            await super().start()
            type(self).submitted[self.name] = str(self.job_id)

        async def _submit_job(self, script_filename: str) -> Any:
            try:
                return await super()._submit_job(script_filename)
            except RuntimeError as exc:  # dask-jobqueue's: the command, its stdout, its stderr
                _, _, err = str(exc).partition("stderr:\n")
                lines = [line.strip() for line in (err or str(exc)).splitlines()]
                self.refusal = next((line for line in lines if line), None)
                raise

    Telling.__name__ = Telling.__qualname__ = job_cls.__name__
    return Telling
