"""Progress reaches the user wherever the job runs (issue 18): plain lines on a stderr that
is not a terminal without any logging set-up, block by block on every scheduler, counted
from what is on disk after an interruption and on resume, never an estimate made up."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import subprocess
import sys
import textwrap

import dask
import pytest
from distributed import Client, LocalCluster

from fstack_dask import fuse_zarr, sample_stack, write_stack
from fstack_dask._runs import progress as _progress
from fstack_dask._runs import schedulers

STATE = ".fstack_dask"


@pytest.fixture
def src(tmp_path):
    """34 planes of 128 x 128 (the shipped light-sheet stack) in 32-px chunks: 16 blocks."""
    path = tmp_path / "stack.zarr"
    write_stack(path, sample_stack("mitochondria_lightsheet"), axes="zyx", chunks=(34, 32, 32))
    return path


class Recorder(_progress.Progress):
    """The real progress, with what it was told."""

    made: list[Recorder] = []

    def __init__(self, total, **kwargs):
        super().__init__(total, **kwargs)
        self.steps: list[int] = []
        Recorder.made.append(self)

    def advance(self, n):
        self.steps.append(n)
        super().advance(n)


@pytest.fixture
def recorder(monkeypatch):
    Recorder.made = []
    monkeypatch.setattr(schedulers, "Progress", Recorder)
    return Recorder.made


@pytest.fixture
def last_line_only(monkeypatch, caplog):
    """Progress lines as a batch job's log gets them, only the one at the end."""
    monkeypatch.setattr(_progress, "SHOW_AFTER", 0.0)
    monkeypatch.setattr(_progress, "LOG_EVERY", 1e9)
    caplog.set_level(logging.INFO, logger="fstack_dask.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "fstack_dask.progress"]


def test_a_script_whose_stderr_is_a_file_shows_progress(src, tmp_path):
    """A batch job runs a Python script with stderr sent to a file and sets no logging up:
    the lines were INFO records of a logger nobody configured, and so were dropped."""
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(f"""
        import fstack_dask
        from fstack_dask._runs import progress

        progress.SHOW_AFTER = progress.LOG_EVERY = 0.0  # every line, even for a short run
        fstack_dask.fuse_zarr({str(src)!r}, {str(tmp_path / "out.zarr")!r}, chunks=64, levels=0)
    """)
    )
    with open(tmp_path / "job.err", "w") as err:
        subprocess.run([sys.executable, str(script)], stderr=err, check=True, timeout=120)
    lines = (tmp_path / "job.err").read_text().splitlines()
    assert lines, "no progress at all"
    assert lines[0].startswith("fusing: 1/4 blocks (25%), ")
    assert lines[-1].startswith("fusing: 4/4 blocks (100%), ")
    assert not [line for line in lines if not line.startswith("fusing: ")]


@contextlib.contextmanager
def _one_worker(kind: str):
    """The scheduler ``kind`` with one worker: a task is a whole strip of blocks."""
    if kind == "processes":
        with dask.config.set(num_workers=1):
            yield "processes"
        return
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as client:  # fmt: skip
        yield client


@pytest.mark.parametrize("scheduler", ["processes", "distributed"])
def test_tasks_of_many_blocks_count_block_by_block(src, tmp_path, recorder, scheduler):
    """One worker: one task of 16 blocks. The bar jumped 0 -> 16 when it ended."""
    with _one_worker(scheduler) as sched:
        fuse_zarr(src, tmp_path / "out.zarr", chunks=32, levels=0, scheduler=sched)
    (bar,) = recorder
    assert bar.steps == [1] * 16
    assert (bar.total, bar.done) == (16, 16)


def test_an_interrupted_run_counts_what_is_on_disk(src, tmp_path, monkeypatch, last_line_only):
    """Ctrl-C while worker processes run: their blocks were written, and the last line said
    '0/16 blocks ... about nan s left'."""
    real_wait, calls = cf.wait, []
    dst = tmp_path / "out.zarr"

    def interrupted(fs, timeout=None, return_when=cf.ALL_COMPLETED):
        done = real_wait(fs, timeout=timeout, return_when=return_when)
        marked = dst / STATE / "done"
        if not calls and marked.exists() and len(os.listdir(marked)) >= 4:  # on disk: Ctrl-C
            calls.append(True)
            real_wait(fs)  # what runs ends (as the run waits for it), then the interrupt
            raise KeyboardInterrupt
        return done

    monkeypatch.setattr(schedulers.cf, "wait", interrupted)
    with dask.config.set(num_workers=1), pytest.raises(KeyboardInterrupt):
        fuse_zarr(src, dst, chunks=32, levels=0, scheduler="processes")
    on_disk = len(os.listdir(dst / STATE / "done"))
    assert 4 <= on_disk <= 16
    (line,) = last_line_only()
    assert line.startswith(f"fusing: {on_disk}/16 blocks (") and "nan" not in line


def test_a_resumed_run_counts_from_the_blocks_done(src, tmp_path, recorder, last_line_only):
    chunk = src / "0" / "c" / "0" / "1" / "2"  # z, y, x: read by the 3 x 3 blocks around it
    good = chunk.read_bytes()
    chunk.write_bytes(b"not zstd" * 8)
    dst = tmp_path / "out.zarr"
    with pytest.raises(RuntimeError):
        fuse_zarr(src, dst, chunks=32, levels=0, scheduler="synchronous")
    chunk.write_bytes(good)
    done = len(os.listdir(dst / STATE / "done"))
    assert done == 16 - 9
    recorder.clear()
    out = fuse_zarr(src, dst, chunks=32, levels=0, scheduler="synchronous", resume=True)
    assert out.attrs["fstack_dask"]["complete"] is True
    assert last_line_only()[-1].startswith(f"fusing: 16/16 blocks (100%), {done} done before ")
    (bar,) = recorder
    assert (bar.total, bar.done, bar.steps) == (16, 16, [1] * (16 - done))


def test_no_estimate_before_the_first_block(monkeypatch, last_line_only):
    bar = _progress.Progress(384)
    bar.close()
    (line,) = last_line_only()
    assert line.startswith("fusing: 0/384 blocks (0%), ") and "left" not in line
    assert "nan" not in line


def test_the_bar_goes_on_when_the_wall_clock_steps_back(monkeypatch, capsys):
    """tqdm times its bar by the wall clock: stepped back an hour (NTP) the bar stood still
    for that hour, drawn again only at the end. It is timed by the monotonic clock now."""
    import time

    import tqdm.std

    wall = [time.time()]
    monkeypatch.setattr(tqdm.std, "time", lambda: wall[0])
    bar = _progress.Progress(10)
    bar.enabled = bar._tty = True  # a terminal's bar
    bar._make_bar()
    wall[0] -= 3600.0
    for _ in range(3):
        time.sleep(0.15)  # more than tqdm's least interval between two drawings
        bar.advance(1)
    err = capsys.readouterr().err
    bar.close()
    assert "1/10" in err and "2/10" in err, err


def test_the_second_pass_counts_its_own_blocks(tmp_path, last_line_only):
    """The pass that fuses again the blocks holding an undefined selectivity said, of a fresh
    run, "undefined S: 4/4 blocks (100%), 1 done before this run" (g48, the README's PCB
    photographs): that block was done in the first pass and needed no second."""
    import numpy as np

    from fstack_dask import focus_stack, synthetic_stack

    stack = synthetic_stack((64, 128), 7, dtype="uint8", seed=2).stack.transpose(2, 0, 1).copy()
    stack[0] = 0  # a dark frame: S undefined where the fit reads it
    out = fuse_zarr(stack, tmp_path / "out.zarr", axes="zyx", chunks=32, levels=0)
    lines = last_line_only()
    assert lines[0].startswith("fusing: 8/8 blocks (100%), "), lines
    assert lines[1].startswith("undefined S: 4/4 blocks (100%), "), lines
    assert len(lines) == 2 and "before" not in lines[1], lines
    np.testing.assert_array_equal(out["0"][...], focus_stack(np.moveaxis(stack, 0, -1)))
