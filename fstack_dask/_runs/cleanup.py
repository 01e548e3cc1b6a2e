"""A stopped or failed run's last calls to a cluster's workers, bounded in time.

``Client.run`` reaches each worker through its event loop, and waits for every answer without
a limit. A run stopped (Ctrl-C, SIGTERM) or failed (a stall) while a worker could not answer
(frozen, swapping, a task holding the interpreter) waited in its clean-up for as long as that
worker did: a Ctrl-C never ended the program, a SIGTERM only at its 60 s grace. What these
calls do is best effort (the run's statistics; its source, output and decoded cores forgotten
by the workers): the request still reaches a worker that answers later (the scheduler holds
it), so that worker forgets the run then, and the run's own outcome (its lock released, its
finished blocks kept for ``--resume``) does not depend on them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["CLEANUP_SECONDS", "run_on_workers"]

#: Seconds a stopped or failed run waits for its workers' answer to each clean-up call.
CLEANUP_SECONDS = 2.0


def run_on_workers(
    client: Any, function: Callable[..., Any], *args: Any, seconds: float | None, **kwargs: Any
) -> dict[str, Any]:
    """``client.run(function, *args, **kwargs)``, its answers; with ``seconds``, waited for
    that long at most (then no answer: ``{}``)."""
    if seconds is None:
        return dict(client.run(function, *args, **kwargs))
    try:
        # (Client.run hands what it does not take to Client.sync, whose limit this is)
        return dict(client.run(function, *args, callback_timeout=seconds, **kwargs))
    except TimeoutError:
        return {}
