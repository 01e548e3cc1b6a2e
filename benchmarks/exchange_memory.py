"""Halo exchange's memory: the decoded cores and bands a run holds against its budget.

Real runs (stores on disk, ``fuse_zarr``) over plans drawn as the hypothesis test
``tests/runs/test_exchange.py::test_any_plan_gives_the_whole_image_in_memory`` draws them
(units of 16-48 px, blocks of whole units or halves of one, plain or sharded stores, 1-3
threads or the synchronous scheduler, room for 2-40 decoded cores beside the tasks, tall and
wide images, one or two images): for each, the most bytes of cores and bands held at once
(the run report's ``cache_peak_bytes``) over what the tasks leave of the memory
(``cache_bytes``). The same bits as the whole image fused in memory are checked on every run.

The plans are drawn by this checkout's strategies; ``--tree DIR`` runs another checkout's
package on them (a ``git worktree`` of an earlier commit) for a before/after::

    python benchmarks/exchange_memory.py --examples 200
    python benchmarks/exchange_memory.py --tree ../before --examples 100
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def survey(examples: int, seed: int) -> list[dict]:
    import dask
    import numpy as np
    import test_exchange as t
    import zarr
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed

    from fstack_dask import focus_stack, fuse_zarr
    from fstack_dask._algorithm.block import block_memory
    from fstack_dask._runs import schedulers

    runs: list = []
    execute = schedulers.execute

    def recording(job, blocks, **kwargs):
        report = execute(job, blocks, **kwargs)
        runs.append((job, report))
        return report

    schedulers.execute = recording
    found: list[dict] = []

    @hypothesis_seed(seed)
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)  # fmt: skip
    @given(case=t.real_runs())
    def one(case):
        unit, block, shape, leads, threads, scheduler, cores, sharded = case
        planes = 5
        data = np.stack([t._stack(shape, planes, s) for s in range(leads)])
        task = block_memory((block + 2 * t.HALO,) * 2, planes, 1, 2, False)
        workers = 1 if scheduler == "synchronous" else threads
        memory = task + cores * planes * block * block * 2 // workers
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "in.zarr"
            shards = (1, planes, 2 * unit, 2 * unit) if sharded else None
            zarr.create_array(str(src), data=data, chunks=(1, planes, unit, unit),
                              shards=shards, dimension_names=list("tzyx"))  # fmt: skip
            runs.clear()
            with dask.config.set(num_workers=workers):
                out = fuse_zarr(src, Path(tmp) / "out.zarr", chunks=block, memory_per_task=memory,
                                scheduler=scheduler, progress=False, levels=0)  # fmt: skip
            got = out["0"][...]
        for k in range(leads):
            np.testing.assert_array_equal(got[k], focus_stack(np.moveaxis(data[k], 0, -1)))
        job, report = runs[0]
        found.append({
            "case": list(case), "grid": list(job.plan.grid),
            "held_over_budget": report.cache_peak_bytes / job.cache_bytes,
            "decoded_over_stored": report.decoded_bytes / data.nbytes,
        })  # fmt: skip

    one()
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--json", type=Path, help="write the runs here")
    args = parser.parse_args(argv)
    # the package from the tree; the plans drawn by this checkout's strategies
    here = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(args.tree.resolve()), str(here / "tests" / "runs")]
    import fstack_dask

    found = survey(args.examples, args.seed)
    over = sorted(r["held_over_budget"] for r in found if r["held_over_budget"] > 1)
    decoded = [r["decoded_over_stored"] for r in found]
    summary = {
        "package": fstack_dask.__file__,
        "runs": len(found),
        "over_budget": len(over),
        "median_over": over[len(over) // 2] if over else None,
        "most_over": over[-1] if over else None,
        "most_held_over_budget": max(r["held_over_budget"] for r in found),
        "decoded_over_stored_median": sorted(decoded)[len(decoded) // 2],
        "decoded_over_stored_most": max(decoded),
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": found}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
