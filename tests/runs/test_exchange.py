"""Halo exchange (issue 21): the driver's order over any plan, and the bits of real runs.

The dry run drives :func:`run_exchange` with tasks that do nothing, so hypothesis can try
many grids, budgets, worker counts and resumed runs in milliseconds: every block left is
fused exactly once, after its own and its neighbours' cores were decoded, and each core is
decoded about once. Real runs on stores on disk then compare the output with the whole
image fused in memory, over plans drawn the same way.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fstack_dask import focus_stack, fuse_zarr, synthetic_stack
from fstack_dask._algorithm.block import block_memory
from fstack_dask._layout import Layout
from fstack_dask._params import overlap_depth
from fstack_dask._runs import exchange, halo, runners, schedulers, waves
from fstack_dask._runs.dry_run import dry_run
from fstack_dask._runs.plan import Plan

HALO = overlap_depth(9)


def _plan(leads: int, rows: int, cols: int, block: int, *, edge: int = 0) -> Plan:
    """A plan of ``leads`` images of ``rows`` x ``cols`` blocks (the last ones ``edge`` px
    short of a whole block, when given)."""
    shape = (leads, 7, rows * block - edge, cols * block - edge)
    return Plan(Layout("tzyx", shape, False), (block, block), HALO, cols, (1,))


@st.composite
def dry_runs(draw):
    block = draw(st.sampled_from([16, 32, 64]))
    edge = draw(st.integers(0, min(block - HALO, block - 1)))
    plan = _plan(draw(st.integers(1, 3)), draw(st.integers(1, 24)), draw(st.integers(1, 24)),
                 block, edge=edge)  # fmt: skip
    core = 7 * block * block * 2
    budget = core * draw(st.integers(1, 200))  # from one core (narrow waves) to many
    slots = draw(st.integers(1, 40))
    threads = draw(st.integers(1, 4))
    names = [Plan.name(b) for b in plan.blocks()]
    done = set(draw(st.lists(st.sampled_from(names), max_size=len(names), unique=True)))
    return plan, budget, slots, threads, done


@settings(max_examples=300, deadline=None)
@given(case=dry_runs())
# found by this test: a resumed column whose middle blocks were done is not decoded there, so
# the next wave may not take its bands as handed over
@example(case=(_plan(1, 5, 2, 16), 3584, 1, 1, {"0_1_0", "0_2_0", "0_3_0"}))
def test_every_block_is_fused_once_after_the_decodes_around_it(case):
    plan, budget, slots, threads, done = case
    # the dry runner raises if a fuse comes before its block's or a neighbour's decode
    run = dry_run(plan, itemsize=2, slots=list(range(slots)), threads=threads, budget=budget,
                  done=done)  # fmt: skip
    left = {b for b in plan.blocks() if Plan.name(b) not in done}
    assert set(run.fuses) == left and set(run.fuses.values()) <= {1}
    assert sum(run.fused.values()) == len(left)
    if not done:  # a wave decodes a column on each side; row segments lend their borders
        core = 7 * plan.block[0] * plan.block[1] * 2
        view = waves.oriented(plan, budget, core)  # its columns: the image's rows, across
        n = view.grid[1]
        most = 1 + 2 * -(-n // min(n, exchange.wave_width(view, budget, core))) / n
        assert sum(run.decodes.values()) <= most * plan.n_blocks, (n, run.decodes)


@pytest.mark.parametrize(
    ("slots", "threads", "cut"), [(64, 1, False), (100, 1, True), (16, 4, False), (256, 1, True)]
)
def test_workers_that_outnumber_or_do_not_divide_the_columns_are_all_busy(slots, threads, cut):
    """60 columns of 120 blocks on 64, 100 or 256 single-thread workers (or 16 x 4): the
    busiest worker fuses at most 10 % more than an even share (100 workers would be 1.67x
    with a strip per column: row segments cut the image where that helps), and each core is
    still decoded about once."""
    plan = _plan(1, 120, 60, 64)
    budget = 60 * 120 * 7 * 64 * 64 * 2  # the whole image: one wave
    run = dry_run(plan, itemsize=2, slots=list(range(slots)), threads=threads, budget=budget)
    assert max(run.fused.values()) <= 1.1 * plan.n_blocks / slots, sorted(run.fused.values())
    assert run.decoded_ratio(plan) == 1.0
    assert (exchange.segments(plan, 60, slots * threads) > 1) == cut


def test_one_worker_per_column_needs_no_segments():
    plan = _plan(1, 120, 60, 64)
    assert exchange.segments(plan, 60, 60) == 1
    assert exchange.segments(plan, 30, 30) == 1  # a wave of 30 columns on 30 slots


@pytest.mark.parametrize("slots", [2, 64, 200])
def test_waves_narrower_than_the_image_go_whole(slots):
    """Memory for waves of 30 of 60 columns (two rows of their cores): a row segment holds
    two rows of its columns too, so such a wave in segments would hold up to twice the
    memory. It goes whole, a strip per column where the workers outnumber its columns, and
    the workers beyond them wait (before, it went in segments: every worker busy, and the
    cores held over the budget). Where memory holds segments they share the rows out
    (:func:`test_workers_that_outnumber_or_do_not_divide_the_columns_are_all_busy`)."""
    plan = _plan(1, 120, 60, 64)
    core = 7 * 64 * 64 * 2
    budget = next(b for b in range(core, 200 * core, core // 4)
                  if exchange.wave_width(plan, b, core) >= 30)  # fmt: skip
    assert exchange.wave_width(plan, budget, core) == 30
    run = dry_run(plan, itemsize=2, slots=list(range(slots)), threads=1, budget=budget)
    fused = sorted(run.fused.values())
    # two waves: at most a column of each per worker, and two workers share each wave
    assert fused[-1] == max(2 * 120, plan.n_blocks // slots), fused
    assert sum(fused) == plan.n_blocks
    assert run.decoded_ratio(plan) <= 1 + 1 / 60 + 1e-9  # the column beside the first wave
    # a wave of one column on 2 workers would need more than its memory: no halo exchange
    narrow, unit = _plan(1, 6, 4, 32), (32, 32)
    least = waves.least_memory(narrow, 7 * 32 * 32 * 2)
    assert waves.exchange_grid(narrow, unit, least, 2) is narrow
    assert waves.exchange_grid(narrow, unit, least - 1, 2) is None


@pytest.mark.parametrize(
    ("rows", "cols", "slots"), [(8, 8, 16), (8, 8, 64), (5, 3, 7), (40, 8, 16)]
)
def test_workers_that_outnumber_the_columns_share_the_rows_and_decode_once(rows, cols, slots):
    """An 8 x 8 grid on 16 single-thread workers (the 16-core node's 4096^2 stack): halo
    exchange gave strips to 8 workers and left 8 idle, because row segments cost two rows of
    decodes per border. Segments now lend their border rows: the busiest worker fuses its
    even share (within one block) and every core is decoded once."""
    plan = _plan(1, rows, cols, 64)
    run = dry_run(plan, itemsize=2, slots=list(range(slots)), threads=1, budget=10**9)
    even = -(-plan.n_blocks // slots)  # the busiest worker's share at best
    assert max(run.fused.values()) <= even + 1, sorted(run.fused.values())
    assert run.decoded_ratio(plan) == 1.0


def _stack(shape, planes, seed):
    return np.moveaxis(synthetic_stack(shape, planes, seed=seed, noise=0.02).stack, -1, 0)


@st.composite
def real_runs(draw):
    unit = draw(st.sampled_from([16, 24, 32, 48]))
    # whole units, or (large units) an even divisor: cells of several blocks
    block = unit * draw(st.integers(1, 2)) if unit < 32 else unit // draw(st.integers(1, 2))
    rows, cols = draw(st.integers(1, 18)), draw(st.integers(1, 4))
    if draw(st.booleans()):  # wide images: their waves may go across the rows
        rows, cols = cols, rows
    edge = draw(st.integers(0, unit - HALO))  # the last blocks a bit short
    shape = (max(block, rows * block - edge), max(block, cols * block - edge))
    leads = draw(st.integers(1, 2))
    threads = draw(st.integers(1, 3))
    scheduler = draw(st.sampled_from(["threads", "synchronous"]))
    cores = draw(st.integers(2, 40))  # cores of decoded units the workers' memory holds
    # the units in shards of 2 x 2: read by shards or by their chunks, as each run decides
    sharded = draw(st.booleans())
    return unit, block, shape, leads, threads, scheduler, cores, sharded


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=real_runs())
def test_any_plan_gives_the_whole_image_in_memory(case):
    unit, block, shape, leads, threads, scheduler, cores, sharded = case
    planes = 5
    data = np.stack([_stack(shape, planes, seed) for seed in range(leads)])
    task = block_memory((block + 2 * HALO,) * 2, planes, 1, 2, False)
    workers = 1 if scheduler == "synchronous" else threads
    memory = task + cores * planes * block * block * 2 // workers
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.zarr"
        shards = (1, planes, 2 * unit, 2 * unit) if sharded else None
        zarr.create_array(str(src), data=data, chunks=(1, planes, unit, unit), shards=shards,
                          dimension_names=list("tzyx"))  # fmt: skip
        runs = []
        with dask.config.set(num_workers=workers), pytest.MonkeyPatch.context() as patch:
            patch.setattr(schedulers, "execute", _recording(runs))
            out = fuse_zarr(src, Path(tmp) / "out.zarr", chunks=block, memory_per_task=memory,
                            scheduler=scheduler, progress=False, levels=0)  # fmt: skip
        got = out["0"][...]
    for t in range(leads):
        want = focus_stack(np.moveaxis(data[t], 0, -1))
        np.testing.assert_array_equal(got[t], want)
    # the cores and bands held stay within what the tasks leave of the memory (halo
    # exchange runs only where its smallest wave fits; the unit cache keeps to its own)
    ((job, report),) = runs
    assert report.cache_peak_bytes <= job.cache_bytes, (report.cache_peak_bytes, job.cache_bytes)


def _recording(runs: list) -> Any:
    """``schedulers.execute``, keeping each run's job and report."""
    execute = schedulers.execute

    def recording(job, blocks, **kwargs):
        report = execute(job, blocks, **kwargs)
        runs.append((job, report))
        return report

    return recording


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_row_segments_in_a_real_run(tmp_path, monkeypatch, caplog, scheduler):
    """An image of 2 x 20 blocks on 6 threads or worker processes: cut into row segments,
    which lend each other their border rows (across processes), the same bits and every
    unit decoded once."""
    used = []
    segments = exchange.segments_in_memory

    def recording(plan, width, capacity, depth):
        used.append(segments(plan, width, capacity, depth))
        return used[-1]

    monkeypatch.setattr(exchange, "segments_in_memory", recording)
    data = _stack((20 * 16, 2 * 16), 5, seed=3)
    src = tmp_path / "in.zarr"
    zarr.create_array(str(src), data=data, chunks=(5, 16, 16), dimension_names=list("zyx"))
    caplog.set_level(logging.DEBUG, logger="fstack_dask._runs.schedulers")
    with dask.config.set(num_workers=6):
        out = fuse_zarr(src, tmp_path / "out.zarr", chunks=16, scheduler=scheduler,
                        progress=False, levels=0)  # fmt: skip
    assert used and max(used) > 1, used
    np.testing.assert_array_equal(out["0"][...], focus_stack(np.moveaxis(data, 0, -1)))
    (report,) = [r.fstack_report for r in caplog.records if hasattr(r, "fstack_report")]
    assert report.decoded_bytes == data.nbytes


@pytest.mark.parametrize(("slots", "threads"), [(2, 1), (3, 1), (2, 4)])
def test_an_image_in_one_wave_on_few_slots_is_shared_evenly(slots, threads):
    """A whole image in one wave (tiny blocks, ample memory) on fewer slots than the rows
    would allow segments for: never more segments than task slots, and segments that
    outnumber the slots (slots of several threads) spread over them. Before, 64 x 64 blocks
    on 2 slots went in 5 segments, 4 of them on the first slot (and 102 400 blocks on 2
    workers were fused 97 920 by one of them)."""
    plan = _plan(1, 64, 64, 16)
    run = dry_run(plan, itemsize=2, slots=list(range(slots)), threads=threads,
                  budget=10**9)  # fmt: skip
    assert exchange.segments(plan, 64, slots * threads) <= slots * threads
    assert max(run.fused.values()) <= 1.1 * plan.n_blocks / slots, run.fused
    assert run.decoded_ratio(plan) == 1.0


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_blocks_smaller_than_their_units_go_by_cells(tmp_path, monkeypatch, caplog, scheduler):
    """Chunks of 2 x 2 blocks (large chunks, many float planes: a block is an even divisor
    of the unit): halo exchange by cells of one chunk, each decoded once and its blocks
    fused from it, a task per row of blocks. Before, such blocks went through the unit cache,
    whose strips of one block decoded the 4096^2 benchmark stack in 1024-px units 2.5 times.
    A corrupt chunk spoils only the blocks that read it; the resume then fuses cells of which
    some blocks are done, and every core and band is taken by as many fuses as it was kept
    for (nothing is left in the registry, nothing read twice)."""
    data = _stack((7 * 32 - 7, 3 * 32), 5, seed=4)  # 7 x 3 chunks, the last row short
    src = tmp_path / "in.zarr"
    zarr.create_array(str(src), data=data, chunks=(5, 32, 32), dimension_names=list("zyx"))
    fused_rows, left = [], []
    if scheduler == "threads":
        fuse_cell, forget_run = halo._fuse_cell, runners.forget_run

        def recording(job, cell, blocks, *args):
            fused_rows.append(len(blocks))
            return fuse_cell(job, cell, blocks, *args)

        def leftovers(token):
            left.append([k for k in halo._registry if k[0] == token])
            return forget_run(token)

        monkeypatch.setattr(halo, "_fuse_cell", recording)
        monkeypatch.setattr(runners, "forget_run", leftovers)
    caplog.set_level(logging.DEBUG, logger="fstack_dask._runs.schedulers")
    want = focus_stack(np.moveaxis(data, 0, -1))
    chunk = src / "c" / "0" / "2" / "1"
    good = chunk.read_bytes()
    chunk.write_bytes(b"not zstd" * 8)
    dst = tmp_path / "out.zarr"
    with dask.config.set(num_workers=3), pytest.raises(RuntimeError, match="chunk"):
        fuse_zarr(src, dst, chunks=16, scheduler=scheduler, progress=False, levels=0)
    done = {tuple(map(int, p.name.split("_"))) for p in (dst / ".fstack_dask" / "done").iterdir()}
    # the chunk's 4 blocks and those of its 8 neighbours' that reach into it: 4 x 4 blocks
    spoilt = {(j, i) for j in range(3, 7) for i in range(1, 5)}
    assert done == {(j, i) for j in range(14) for i in range(6)} - spoilt
    chunk.write_bytes(good)
    caplog.clear()
    with dask.config.set(num_workers=3):
        out = fuse_zarr(src, dst, chunks=16, scheduler=scheduler, progress=False, levels=0,
                        resume=True)  # fmt: skip
    np.testing.assert_array_equal(out["0"][...], want, strict=True)
    (report,) = [r.fstack_report for r in caplog.records if hasattr(r, "fstack_report")]
    # the resume decodes the cells left and their neighbours for their bands, each once:
    # the first 5 rows of chunks
    assert report.decoded_bytes == data[:, : 5 * 32].nbytes
    if scheduler == "threads":
        assert max(fused_rows) == 2, fused_rows  # a task fuses a row of a cell's blocks
        assert len(left) == 2 and not any(left), left  # the failed run's and the resume's


class _Decoding(Exception):
    pass


def test_a_run_by_cells_of_many_blocks_starts_without_listing_every_block():
    """Cells of 64 x 64 blocks of 1 px (``chunks=1``) over a 10^5 x 10^5 image, 10^10 blocks:
    to find the cells a resume had done, the driver listed every block of every cell, for
    hours before a fresh run's first decode; it counts the blocks done instead."""
    import signal
    import types

    from fstack_dask._runs.dry_run import _DryRunner

    layout = Layout("zyx", (7, 10**5, 10**5), False)
    plan, cells = Plan(layout, (1, 1), HALO, 1, (1,)), Plan(layout, (64, 64), HALO, 1, (1,))
    job = types.SimpleNamespace(plan=plan, cells=cells, itemsize=2, token="t")

    class FirstDecode(_DryRunner):
        def submit(self, slot, fn, *args):
            raise _Decoding

    def too_slow(*_):
        raise TimeoutError("no decode within 20 s")

    before = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(20)
    try:
        with pytest.raises(_Decoding):
            exchange.run_exchange(job, FirstDecode(cells, ["w"], 1), done=set(), budget=2**30,
                                  on_outcomes=lambda outcomes, shown: True)  # fmt: skip
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
    # a resume: cell (0, 0) whole, one block of cell (0, 1), and names of no block of the plan
    done = {Plan.name((j, i)) for j in range(64) for i in range(64)}
    assert waves.cells_done(job, done | {"3_70", "00_1", "1_x", "0_0_0", "5_100000"}) == {"0_0"}
    last = {Plan.name((j, i)) for j in range(99_968, 10**5) for i in range(99_968, 10**5)}
    assert waves.cells_done(job, done | last) == {"0_0", "1562_1562"}  # a cell of 32 x 32
    assert waves.cells_done(job, done | set(list(last)[1:])) == {"0_0"}


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_memory_below_the_smallest_wave_goes_through_the_unit_cache(
    tmp_path, monkeypatch, caplog, scheduler
):
    """Room for two decoded chunks beside each of 2 tasks, where halo exchange's smallest
    wave (two rows of a column and of the columns beside it, with their bands) needs more:
    before, its waves of one cell held 3.4 x that memory (decoding 1.75 x the stored bytes).
    Now the unit cache runs the blocks within it, decoding again what it cannot keep (9.7 x
    here): the same bits, on threads and on worker processes."""
    data = _stack((4 * 32, 4 * 32), 5, seed=5)
    src = tmp_path / "in.zarr"
    zarr.create_array(str(src), data=data, chunks=(5, 32, 32), dimension_names=list("zyx"))
    exchanged, runs = [], []
    monkeypatch.setattr(exchange, "run_exchange", lambda *a, **k: exchanged.append(a))
    monkeypatch.setattr(schedulers, "execute", _recording(runs))
    caplog.set_level(logging.DEBUG, logger="fstack_dask._runs.schedulers")
    memory = block_memory((16 + 2 * HALO,) * 2, 5, 1, 2, False) + 2 * 5 * 32 * 32 * 2
    with dask.config.set(num_workers=2):
        out = fuse_zarr(src, tmp_path / "out.zarr", chunks=16, memory_per_task=memory,
                        scheduler=scheduler, progress=False, levels=0)  # fmt: skip
    np.testing.assert_array_equal(out["0"][...], focus_stack(np.moveaxis(data, 0, -1)))
    assert exchanged == []
    ((job, report),) = runs
    assert report.decoded_bytes >= data.nbytes
    if scheduler == "threads":  # one process: its cache's peak against its budget
        assert 0 < report.cache_peak_bytes <= job.cache_bytes


@pytest.mark.parametrize("slots", [2, 16])
def test_a_wide_image_goes_in_waves_across_its_rows(slots, monkeypatch):
    """An image of 8 x 32 blocks with memory for waves of 4: waves of 4 of its 32 columns
    decode the column beside each of the 8 waves again (1 + 7 / 32 = 1.22 x the image, the
    4096 x 16384 stack on 2 workers); waves of 4 of its 8 rows, 1 + 1 / 8. The same image
    standing up goes down its columns, as before; every block is fused once, and on 2
    workers shared out evenly (16 workers would need memory for more than 4 columns)."""
    core = 7 * 64 * 64 * 2
    wide, tall = _plan(1, 8, 32, 64), _plan(1, 32, 8, 64)
    budget = next(b for b in range(core, 200 * core, core // 4)
                  if exchange.wave_width(wide, b, core) == 4)  # fmt: skip
    assert isinstance(waves.oriented(wide, budget, core), waves.Across)
    assert waves.oriented(tall, budget, core) is tall
    for plan in (wide, tall):
        run = dry_run(plan, itemsize=2, slots=list(range(slots)), threads=1, budget=budget)
        assert run.decoded_ratio(plan) == 1 + 1 / 8
        assert set(run.fuses) == set(plan.blocks()) and set(run.fuses.values()) == {1}
        if slots == 2:
            assert max(run.fused.values()) <= 1.1 * plan.n_blocks / slots, run.fused
    # down its columns, as before
    monkeypatch.setattr(exchange, "oriented", lambda grid, budget, core: grid)
    run = dry_run(wide, itemsize=2, slots=list(range(slots)), threads=1, budget=budget)
    assert run.decoded_ratio(wide) == 1 + 7 / 32


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_waves_across_a_wide_image_in_a_real_run(tmp_path, caplog, scheduler):
    """4 x 16 chunks on 2 threads or worker processes with memory for waves of 3: waves of
    rows, whose carried bands are the bottom ones (handed across processes): the same bits,
    and the row beside the first wave decoded again (1.25 x; down the columns, 1 + 5 / 16).
    ``fstack-dask info`` says so (on one CPU with the same memory beside its one task)."""
    data = _stack((4 * 64, 16 * 64), 5, seed=6)
    src = tmp_path / "in.zarr"
    zarr.create_array(str(src), data=data, chunks=(5, 64, 64), dimension_names=list("zyx"))
    # room for 6 cores beside each task: 12 on 2 workers, waves 3 wide
    task, core = block_memory((64 + 2 * HALO,) * 2, 5, 1, 2, False), 5 * 64 * 64 * 2
    memory = task + 6 * core
    caplog.set_level(logging.DEBUG, logger="fstack_dask._runs.schedulers")
    with dask.config.set(num_workers=2):
        out = fuse_zarr(src, tmp_path / "out.zarr", chunks=64, memory_per_task=memory,
                        scheduler=scheduler, progress=False, levels=0)  # fmt: skip
    np.testing.assert_array_equal(out["0"][...], focus_stack(np.moveaxis(data, 0, -1)))
    (report,) = [r.fstack_report for r in caplog.records if hasattr(r, "fstack_report")]
    assert report.decoded_bytes == data.nbytes * 5 // 4
    if scheduler == "threads":
        text = subprocess.run(
            [sys.executable, "-m", "fstack_dask", "info", str(src), "--chunks", "64",
             "--memory-per-task", str(task + 12 * core)],
            check=True, capture_output=True, text=True, preexec_fn=_one_cpu,
        ).stdout  # fmt: skip
        (line,) = [x for x in text.splitlines() if x.startswith("decoding")]
        assert "waves of 3 of 4 row(s): about 1.25 x" in line, line


def _one_cpu() -> None:  # info plans for the CPUs it may use: the same on any machine
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
