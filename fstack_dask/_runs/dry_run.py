"""A dry run of halo exchange: which worker would decode and fuse which blocks.

The driver (:func:`.exchange.run_exchange`) runs as in a real run, on a runner whose tasks
finish as they are submitted and do nothing: the plan of a 100 000 x 100 000 image on 256
workers is counted in seconds, nothing read or computed. The benchmarks
(``benchmarks/scaling.py``) record its counts next to the measured ones, and the tests check
the driver's order with it (every block fused once, after its neighbours' decodes).
"""

from __future__ import annotations

import concurrent.futures as cf
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .blocks import Outcome
from .exchange import Runner, run_exchange
from .exchange_strips import Block
from .halo import decode_rows, neighbours
from .plan import Plan

__all__ = ["DryRun", "dry_run"]


@dataclass
class DryRun:
    """What each slot (worker) would do: core pixels decoded and blocks fused, and how many
    times each block would be decoded and fused."""

    decoded: dict[Any, int]
    fused: dict[Any, int]
    decodes: Counter = field(default_factory=Counter)
    fuses: Counter = field(default_factory=Counter)

    def decoded_ratio(self, plan: Plan) -> float:
        """Pixels decoded over the image's pixels (every image of the plan)."""
        ny, nx = plan.layout.shape_yx
        return sum(self.decoded.values()) / (ny * nx * plan.n_images)


class _DryRunner(Runner):
    """Runs nothing: each task is finished when submitted. Raises if a fuse comes before a
    decode of every block around it, or would not find its core in its worker's registry or
    a neighbour's bands there or handed over (driver bugs a real run would pay for with
    reads from the store)."""

    def __init__(self, plan: Plan, slots: list[Any], threads: int):
        self.plan, self.slots, self.threads = plan, list(slots), threads
        self.run = DryRun({slot: 0 for slot in self.slots}, {slot: 0 for slot in self.slots})
        self.cores: set[tuple[Any, Block]] = set()  # (slot, block): a core kept there
        self.bands: set[tuple[Any, Block]] = set()  # (slot, block): its bands kept there

    def submit(self, slot: Any, fn: Callable, *args: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        blocks: list[Block] = args[1]
        if fn is decode_rows:
            keep, uses, export = args[2:5]
            for block, kept, n in zip(blocks, keep, uses, strict=True):
                (y0, y1), (x0, x1) = self.plan.core(block)
                self.run.decoded[slot] += (y1 - y0) * (x1 - x0)
                self.run.decodes[block] += 1
                if kept:
                    self.cores.add((slot, block))
                if kept or n > 0:
                    self.bands.add((slot, block))
            future.set_result({b: True for b, e in zip(blocks, export, strict=True) if e})
            return future
        handed = {b for found in args[2] for b in found}
        for block in blocks:
            missing = [n for n in [block, *neighbours(self.plan, block)]
                       if not self.run.decodes[n]]  # fmt: skip
            if missing:
                raise AssertionError(f"block {block} fused before {missing} were decoded")
            if (slot, block) not in self.cores:
                raise AssertionError(f"block {block}'s core is not kept where it is fused")
            lost = [n for n in neighbours(self.plan, block)
                    if n not in handed and (slot, n) not in self.bands]  # fmt: skip
            if lost:
                raise AssertionError(f"block {block} is fused without the bands of {lost}")
            self.run.fuses[block] += 1
        self.run.fused[slot] += len(blocks)
        future.set_result([Outcome(Plan.name(b)) for b in blocks])
        return future

    def close(self, running: set[Any]) -> None:
        return None

    def counts(self, token: str, seconds: float | None = None) -> list[tuple[int, float, int]]:
        return []


@dataclass(frozen=True)
class _PlannedJob:
    plan: Plan
    itemsize: int
    token: str = "dry-run"


def dry_run(
    plan: Plan,
    *,
    itemsize: int,
    slots: list[Any],
    threads: int,
    budget: int,
    done: set[str] | None = None,
) -> DryRun:
    """Run the halo exchange driver for ``plan`` (blocks in ``done`` already fused) on
    ``slots`` workers of ``threads`` threads with ``budget`` bytes of their memory for
    cores, with tasks that do nothing; returns what each worker would have done."""
    runner = _DryRunner(plan, slots, threads)
    run_exchange(_PlannedJob(plan, itemsize), runner, done=set(done or ()), budget=budget,
                 on_outcomes=lambda outcomes, shown: True)  # fmt: skip
    return runner.run
