"""Where ``device="cuda"`` and the run's engine are checked: where the tasks will run, once the
scheduler is known.

The process that plans a run (a login node, say) may have no GPU while its workers do: on a
distributed cluster each worker is asked, before anything is written, and a worker without a
usable GPU refuses the run in one line naming it. The engine itself is only ever handed the
device as a plain value, and every run names its engine where it is planned (:func:`run_engine`);
worker processes that cannot run it (numba broken there) refuse the run before anything is
written (:func:`require_engine_on_workers`).
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from typing import Any

from .._algorithm import block as _kernel
from .._algorithm.block import engine_problem
from .._algorithm.device import cuda_problem, engine_for, require_here
from .._errors import raise_if_stopped

__all__ = [
    "require_device",
    "require_device_for_graph",
    "require_engine_on_workers",
    "retired",
    "run_engine",
]


def run_engine(device: str) -> str:
    """The engine every task of a run uses, chosen once where the run is planned.

    On the CPU: this process's :data:`~fstack_dask._algorithm.block.ENGINE`
    (``FSTACK_DASK_ENGINE``, or NumPy where numba is missing), read now. Left to each worker,
    a cluster whose workers differed (one without numba, one with the variable set) fused its
    blocks with two engines, whose last bits differ, into one output (an adversarial run on
    mixed nodes, 2026-12-05); a worker that cannot run the named engine now refuses.
    """
    return engine_for(device) or _kernel.ENGINE


def require_device(device: str, scheduler: Any = None) -> None:
    """Refuse ``device="cuda"`` where the tasks cannot use a GPU (``ValueError`` naming it).

    ``scheduler`` is a :class:`~fstack_dask._runs.scheduler_choice.Scheduler`; on a distributed
    cluster each worker is asked (the process that plans the run may have no GPU, its
    workers do); otherwise this process is.
    """
    if device != "cuda":
        return
    client = getattr(scheduler, "client", None)
    if getattr(scheduler, "kind", None) == "distributed" and client is not None:
        # a worker gone meanwhile (CommClosedError, an OSError) is left out, as the engine's
        # check leaves it (1d3812d): its tasks go to the others (it failed the run)
        answers = client.run(cuda_problem, on_error="return")
        for worker, problem in sorted(answers.items()):
            if isinstance(problem, OSError):
                continue
            if isinstance(problem, BaseException):
                raise problem
            if problem is not None:
                raise ValueError(f"device='cuda' {problem} (on worker {worker})")
        return
    require_here(device)


def require_engine_on_workers(engine: str, scheduler: Any) -> None:
    """Refuse (``ValueError``, one line) a run whose worker processes cannot run ``engine``:
    ``scheduler="processes"`` (this process, which fuses nothing, never imported numba) or a
    distributed cluster, each worker asked. A numba broken there failed the run at its first
    block, once dst was created and its blocks handed out (2026-12-06); on a cluster where only
    some workers are broken, the others' blocks were computed before the run failed."""
    client = getattr(scheduler, "client", None)
    if scheduler.kind == "distributed":
        answers = _answers_of_workers(client, engine)
    elif scheduler.kind == "processes":
        answers = [("process", problem) for problem in client.ask_each(engine_problem, engine)]
        if not answers:  # every process died (a stop signal to the group is raised instead)
            raise_if_stopped()
            # a broken pool, as the run would meet it (exit 1, not a parameter's 2): the pool
            # adds why where a script without a main guard killed them (CI, on 5eff0bc)
            raise cf.process.BrokenProcessPool(
                f"no worker process answered the check of engine={engine!r}: every one "
                "died (killed, out of memory?); nothing written, rerun"
            )
    else:  # this process fuses: checked where dst was accepted (run.checked)
        return
    for worker, problem in answers:
        if problem is not None:
            where = "a worker process" if worker == "process" else f"worker {worker}"
            raise ValueError(f"{problem} (on {where})")


#: Seconds the engine's check waits for a worker where every one died as it was asked (a
#: nanny restarts its worker in a few seconds).
WORKERS_AWAITED = 60.0


def _answers_of_workers(client: Any, engine: str) -> list[tuple[str, Any]]:
    """Each live worker's answer to ``engine_problem(engine)``. A worker gone meanwhile (a node
    lost, a nanny restarting it: CommClosedError, an OSError) failed the run here, where its
    tasks go to the others; but where every worker went, the check passed
    with nothing asked: it asks again, for up to :data:`WORKERS_AWAITED`
    seconds, the workers that come (a nanny's restart), else refuses in one line. A cluster
    with no worker yet (its batch jobs queued or refused), or whose workers the scheduler
    retired as they were asked (``adapt()``), is left to the run (its stall check)."""
    deadline, gone = time.monotonic() + WORKERS_AWAITED, set()
    while True:
        replies = client.run(engine_problem, engine, on_error="return")
        answers = sorted((w, a) for w, a in replies.items() if not isinstance(a, OSError))
        for _, answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        if answers or not (replies or gone):  # none yet (batch jobs queued): the stall's to say
            return answers
        gone.update(replies)
        if not replies and retired(client, gone):  # adapt() retired them, idle: the run's
            return []  # tasks bring workers back (it waited 60 s for them, and refused)
        if time.monotonic() >= deadline:
            raise ValueError(
                f"no worker of the cluster answered the check of engine={engine!r} within "
                f"{WORKERS_AWAITED:g} s: every one died or left (killed, out of memory?); "
                "nothing written, rerun once it has workers"
            )
        raise_if_stopped()
        time.sleep(0.5)


def retired(client: Any, workers: set[str]) -> bool:
    """Whether the scheduler removed every one of ``workers`` on purpose (``expected``: retired
    by ``adapt()`` or a ``scale()`` down), not lost (killed, a crash): its own events say."""
    try:
        return all(
            any(e.get("action") == "remove-worker" and e.get("expected") is True
                for _, e in client.get_events(worker))
            for worker in workers
        )  # fmt: skip
    except (OSError, TypeError, AttributeError):  # (an older scheduler's events): as lost
        return False


def require_device_for_graph(device: str) -> None:
    """As :func:`require_device`, for a lazy graph: the active distributed Client's workers
    if there is one (they will compute it), else this process."""
    if device != "cuda":
        return
    from .scheduler_choice import Scheduler, _default_client

    client = _default_client()
    scheduler = Scheduler("distributed", 1, 1, client) if client is not None else None
    require_device(device, scheduler)
