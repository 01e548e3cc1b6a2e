"""End-to-end check against a REAL SLURM cluster through dask-jobqueue.

Needs a running SLURM (CI: ``bash .ci/setup-slurm.sh`` starts a single-node one)
and ``dask_jobqueue`` (``pip install "fstack_dask[jobqueue]"``); otherwise the
module is skipped with the reason. The cluster is built from the
``cluster.jobqueue`` section of ``configs/slurm.yaml``, shrunk to fit a CI box.

Environment:
  FSTACK_SLURM_PARTITION  partition to submit to (default ``debug``)
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "slurm.yaml"
PARTITION = os.environ.get("FSTACK_SLURM_PARTITION", "debug")
BUDGET_S = 90  # whole test: submit, wait for the worker, compute, close


def _run(*cmd: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _slurm_skip_reason() -> str | None:
    """None when a SLURM controller answers and PARTITION exists, else why not."""
    if shutil.which("sinfo") is None:
        return "sinfo not on PATH (no SLURM client; CI runs .ci/setup-slurm.sh)"
    try:
        res = _run("sinfo", "-h", "-o", "%R %a %T")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo does not respond: {exc!r}"
    if res.returncode != 0:
        return f"sinfo failed (rc={res.returncode}): {res.stderr.strip()[:200]}"
    parts = {line.split()[0] for line in res.stdout.splitlines() if line.strip()}
    if PARTITION not in parts:
        return f"SLURM partition {PARTITION!r} not found (have: {sorted(parts)})"
    return None


def _jobqueue_skip_reason() -> str | None:
    if importlib.util.find_spec("dask_jobqueue") is None:
        return 'dask_jobqueue not installed (pip install "fstack_dask[jobqueue]")'
    return None


_NO_JOBQUEUE = _jobqueue_skip_reason()

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(_NO_JOBQUEUE is not None, reason=f"SLURM test skipped: {_NO_JOBQUEUE}"),
]


@pytest.fixture(scope="module")
def slurm_available():
    """Skip unless SLURM answers. A fixture, not a collection-time skipif: with the
    controller down ``sinfo`` takes ~10 s to give up, which deselected runs
    (``-m "not slurm"``) should not pay."""
    reason = _slurm_skip_reason()
    if reason is not None:
        pytest.skip(f"SLURM test skipped: {reason}")


def slurm_cluster(**kwargs: Any) -> Any:
    """dask-jobqueue's SLURMCluster, imported as the package imports it: Ctrl-C's handler kept
    (dask-jobqueue's import sets ``sys.exit()`` for the whole process)."""
    from fstack_dask._cli.config import _jobqueue_class

    return _jobqueue_class("slurm")(**kwargs)


def _jobqueue_kwargs(tmp_path: Path) -> dict:
    """``cluster.jobqueue`` from configs/slurm.yaml, overridden to fit this machine."""
    cfg = yaml.safe_load(CONFIG.read_text())
    assert cfg["cluster"]["kind"] == "slurm"
    kwargs = dict(cfg["cluster"]["jobqueue"])
    kwargs.update(
        cores=1,
        processes=1,
        memory="2GiB",
        queue=PARTITION,
        walltime="00:05:00",
        account=None,
        python=sys.executable,  # the job runs on this host: same interpreter/venv
        local_directory=str(tmp_path / "worker-space"),
        log_directory=str(tmp_path / "logs"),  # slurm-*.out, instead of the cwd
        death_timeout=30,
        # Free dashboard port: several clusters/sessions may share the host.
        scheduler_options={"dashboard_address": ":0"},
    )
    return kwargs


def _job_states(job_ids: list[str]) -> dict[str, str]:
    res = _run("squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T")
    return dict(line.split() for line in res.stdout.splitlines() if line.strip())


def test_slurmcluster_from_config_computes(slurm_available, tmp_path):
    import dask.array as da
    from distributed import Client

    t0 = time.monotonic()
    kwargs = _jobqueue_kwargs(tmp_path)
    job_ids: list[str] = []
    with slurm_cluster(**kwargs) as cluster:
        script = cluster.job_script()
        assert f"#SBATCH -p {PARTITION}" in script
        assert sys.executable in script
        cluster.scale(jobs=1)
        with Client(cluster) as client:
            try:
                client.wait_for_workers(1, timeout=60)
            except TimeoutError:
                logs = "\n".join(
                    f"--- {p.name}\n{p.read_text()[-2000:]}"
                    for p in sorted((tmp_path / "logs").glob("*"))
                )
                squeue = _run("squeue", "-o", "%i %P %j %T %R").stdout
                pytest.fail(f"no dask worker within 60 s\nsqueue:\n{squeue}\n{logs}")
            job_ids = [str(job.job_id) for job in cluster.workers.values() if job.job_id]
            assert len(job_ids) == 1, cluster.workers
            assert _job_states(job_ids).get(job_ids[0]) == "RUNNING"

            x = da.ones((1000, 1000), chunks=100)
            total = client.compute(x.sum()).result(timeout=30)
            assert total == 1_000_000

            # The work really ran inside the SLURM job.
            (worker_addr,) = client.scheduler_info()["workers"]
            env = client.run(lambda: os.environ.get("SLURM_JOB_ID"), workers=[worker_addr])
            assert env[worker_addr] == job_ids[0]

    # close() scancels the job; it must leave PENDING/RUNNING promptly.
    deadline = time.monotonic() + 20
    while _job_states(job_ids).get(job_ids[0]) in {"PENDING", "RUNNING"}:
        assert time.monotonic() < deadline, f"job {job_ids[0]} still alive after close()"
        time.sleep(0.5)
    elapsed = time.monotonic() - t0
    assert elapsed < BUDGET_S, f"took {elapsed:.1f} s (budget {BUDGET_S} s)"


def test_two_slurm_jobs_feed_one_run(slurm_available, tmp_path):
    """Two batch jobs of a SLURMCluster, each a dask worker, fuse one stack together (each
    unit decoded once, the bands crossing between them): the threads scheduler's bytes."""
    import numpy as np
    from distributed import Client

    from fstack_dask import fuse_zarr, synthetic_stack, write_stack

    src = tmp_path / "stack.zarr"
    data = synthetic_stack((128, 128), 7, seed=3).stack.transpose(2, 0, 1)
    write_stack(src, data, axes="zyx", chunks=(7, 32, 32))
    expected = fuse_zarr(src, tmp_path / "threads.zarr", chunks=32, progress=False,
                         scheduler="threads")["0"][...]  # fmt: skip
    with slurm_cluster(**_jobqueue_kwargs(tmp_path)) as cluster:
        cluster.scale(jobs=2)
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=90)
            jobs = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
            assert len(set(jobs.values())) == 2, jobs  # two batch jobs, one worker each
            out = fuse_zarr(src, tmp_path / "out.zarr", chunks=32, progress=False,
                            scheduler=client)  # fmt: skip
            ran = client.run(lambda dask_worker: dask_worker.state.executed_count)
            np.testing.assert_array_equal(out["0"][...], expected)
    assert all(n > 0 for n in ran.values()), ran  # both jobs' workers fused blocks


def test_a_refused_batch_job_is_said_not_taken_for_memory(slurm_available, tmp_path):
    """configs/slurm.yaml as shipped asks for the partition 'normal'; on a site without it
    sbatch refuses every job, and distributed's log (silenced on the command line) was the
    only place that said so: the run waited --stall-timeout (600 s), then blamed memory, "no
    workers left; lower --memory-per-task (--memory-per-task ) ...". Now it fails within
    seconds of the refusal, saying the jobs were refused and where to look, and (the g55
    brief) what sbatch said, the first line of its error, where it said only "refused"."""
    import re

    from fstack_dask import synthetic_stack, write_stack

    src = tmp_path / "stack.zarr"
    write_stack(src, synthetic_stack((64, 64), 7, seed=3).stack.transpose(2, 0, 1), axes="zyx")
    kwargs = _jobqueue_kwargs(tmp_path)
    kwargs.update(queue="no-such-partition", scheduler_options=None)
    config = tmp_path / "slurm.yaml"
    jobqueue = {k: v for k, v in kwargs.items() if v is not None}
    config.write_text(
        yaml.safe_dump({"cluster": {"kind": "slurm", "jobs": 2, "jobqueue": jobqueue}})
    )
    with contextlib.ExitStack() as held:  # the dashboard's port taken, as by a notebook's
        # cluster: distributed's four-line warning broke the one line (a CI run)
        with contextlib.suppress(OSError):
            taken = held.enter_context(socket.socket())
            taken.bind(("", 8787))
            taken.listen()
        res = subprocess.run(
            [sys.executable, "-m", "fstack_dask", "fuse", str(src), str(tmp_path / "out.zarr"),
             "--config", str(config), "--no-progress"],  # the default --stall-timeout, 600 s
            capture_output=True, text=True, timeout=BUDGET_S, check=False,
        )  # fmt: skip
    assert res.returncode == 1, res.stderr
    (line,) = res.stderr.splitlines()
    assert re.fullmatch(
        r"fstack-dask: error: no block finished for 1\d s: no worker is connected to the "
        r"cluster; 2 of its 2 batch job\(s\) could not be submitted \(the batch scheduler "
        r"refused them: 'sbatch: error: invalid partition specified: no-such-partition'\): "
        r"check the batch system \(sinfo, squeue, qstat\) against the config's "
        r"cluster\.jobqueue \(queue, account, walltime, cores, memory\); nothing was written",
        line,
    ), line
    assert not (tmp_path / "out.zarr").exists()


def _slurm_config(tmp_path: Path, jobs: int, **overrides) -> tuple[Path, str]:
    """A config file of a SLURM cluster of ``jobs`` jobs named uniquely (the machine's SLURM
    is shared: a scancel by name must reach this test's jobs only), and that name."""
    name = f"fstack-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    kwargs = _jobqueue_kwargs(tmp_path)
    kwargs.update(scheduler_options=None, job_name=name, memory="1GiB", **overrides)
    jobqueue = {k: v for k, v in kwargs.items() if v is not None}
    config = tmp_path / "slurm.yaml"
    config.write_text(
        yaml.safe_dump({"cluster": {"kind": "slurm", "jobs": jobs, "jobqueue": jobqueue}})
    )
    return config, name


#: The waits before a run stops for batch jobs that bring no worker, shortened for the tests
#: that wait past them (a job pending 12 s past 3 s tells the same decision as one pending 25 s
#: past 15 s, in half the time): squeue's reason seen for ``batch_jobs._STUCK_FOR`` (15 s) and
#: ``waiting.REFUSED_AFTER`` (10 s), set in the run's own process; a job gone for distributed's
#: lost-worker-timeout (15 s) + 5 s, through dask's own setting. The defaults stay tested:
#: REFUSED_AFTER by the refused and held runs' "1\d s", _STUCK_FOR by PartitionTimeLimit's run.
SHORT_S = 3.0
LOST_WORKER_TIMEOUT = "1s"
BEGIN_S = 12  # a delayed job's pending time: past the shortened waits (3 s, 1 + 5 s)
_SHORT_MAIN = (
    "import sys; from fstack_dask._runs import batch_jobs, waiting; "
    f"batch_jobs._STUCK_FOR = waiting.REFUSED_AFTER = {SHORT_S}; "
    "from fstack_dask.__main__ import main; sys.exit(main())"
)


def _fuse_cli(*args: str, short: bool = False) -> subprocess.Popen[str]:
    """The CLI's ``fuse``; ``short``: with the waits above shortened."""
    program = ["-c", _SHORT_MAIN] if short else ["-m", "fstack_dask"]
    env = {**os.environ, "DASK_DISTRIBUTED__DEPLOY__LOST_WORKER_TIMEOUT": LOST_WORKER_TIMEOUT}
    return subprocess.Popen(
        [sys.executable, *program, "fuse", *args, "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env if short else None,
    )  # fmt: skip


@pytest.fixture
def short_waits(monkeypatch):
    """The waits above shortened in this process, for a Python user's own cluster."""
    import dask
    import distributed  # noqa: F401 (its config first: set's undo of a key it made drops it all)

    from fstack_dask._runs import batch_jobs, waiting

    monkeypatch.setattr(batch_jobs, "_STUCK_FOR", SHORT_S)
    monkeypatch.setattr(waiting, "REFUSED_AFTER", SHORT_S)
    with dask.config.set({"distributed.deploy.lost-worker-timeout": LOST_WORKER_TIMEOUT}):
        yield


def _error_line(proc: subprocess.Popen[str]) -> str:
    """The one line of a run that must fail with exit 1 within 60 s (not the 600 s stall)."""
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    (line,) = err.splitlines()
    return line


def _failed_run(
    src: Path, dst: Path, config: Path, name: str, short: bool = False
) -> tuple[str, str]:
    """The one line of a CLI run that must fail within 60 s, and its jobs left queued."""
    proc = _fuse_cli(str(src), str(dst), "--config", str(config), short=short)
    try:
        line = _error_line(proc)
    finally:
        left = _stop(proc, name)
    return line, left


def _stop(proc: subprocess.Popen[str], name: str) -> str:
    """Kill the run if it is still there; its jobs that were left queued (then cancelled)."""
    proc.kill()
    left = _run("squeue", "-h", "-n", name, "-o", "%i %T").stdout
    _run("scancel", "-n", name)
    return left


def _wait_for_blocks(dst: Path, proc: subprocess.Popen[str], n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    done = dst / ".fstack_dask" / "done"
    while not (done.is_dir() and len(list(done.iterdir())) >= n):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {n} blocks within {timeout} s"
        time.sleep(0.2)


def test_the_runs_batch_jobs_all_ended_mid_run_is_said_at_once(slurm_available, tmp_path):
    """The only batch job of a run ends mid-run (scancel here; a walltime reached or a
    preemption's requeue end it alike): distributed closes the lost job after 15 s and, the
    cluster scaled to a fixed number of jobs, starts none in its place. The run waited the
    stall timeout, 600 s, then said "start workers for it (dask worker tcp://...)", false for
    a batch cluster. Now one line within seconds, naming the job and telling --resume,
    which finishes the output bit for bit as an uninterrupted run writes it. (The waits
    shortened: distributed closes the job 1 s after its worker is lost.)"""
    import re

    import numpy as np
    import zarr

    from fstack_dask import fuse_zarr, synthetic_stack, write_stack

    src, dst = tmp_path / "stack.zarr", tmp_path / "out.zarr"
    write_stack(src, synthetic_stack((512, 512), 7, seed=3).stack.transpose(2, 0, 1),
                axes="zyx", chunks=(7, 32, 32))  # fmt: skip
    config, name = _slurm_config(tmp_path, jobs=1)
    t0 = time.monotonic()
    proc = _fuse_cli(str(src), str(dst), "--config", str(config), "--chunks", "32", short=True)
    try:
        _wait_for_blocks(dst, proc, 1, timeout=60)
        job = _run("squeue", "-h", "-n", name, "-o", "%i").stdout.split()
        _run("scancel", "-n", name)
        line = _error_line(proc)
    finally:
        _stop(proc, name)
    assert re.fullmatch(
        rf"fstack-dask: error: no block finished for \d+ s: no worker is connected to the "
        rf"cluster; its batch job\(s\) \({job[0]}\) ended \(their walltime reached, scancel, a "
        r"preemption\) and a cluster of a fixed number of jobs starts none in their place: "
        r"lengthen cluster.jobqueue.walltime if it was reached; dst '.*out.zarr' is kept with "
        r"\d+ of 256 blocks done; rerun with --resume to continue",
        line,
    ), line
    assert time.monotonic() - t0 < 60  # (not the 600 s of --stall-timeout)
    res = subprocess.run(
        [sys.executable, "-m", "fstack_dask", "fuse", str(src), str(dst), "--resume",
         "--chunks", "32", "--no-progress"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    expected = fuse_zarr(src, tmp_path / "whole.zarr", chunks=32, progress=False)
    got = zarr.open_group(dst, mode="r")
    arrays = dict(expected.members(max_depth=None))
    assert sorted(dict(got.members(max_depth=None))) == sorted(arrays)
    for path, arr in arrays.items():
        if isinstance(arr, zarr.Array):
            np.testing.assert_array_equal(got[path][...], arr[...], err_msg=path)


@pytest.mark.parametrize(
    "hold",
    ["--hold", "-N 1 --hold", "--hol", '--comment="a # b" --hold', "-Ht 10", "#SBATCH--hold"],
)
def test_held_batch_jobs_are_said_at_once_and_cancelled(slurm_available, tmp_path, hold):
    """A config whose jobs are held (``--hold`` in job_extra_directives; ``scontrol hold``, an
    administrator's hold alike): none ever starts. The run waited the stall timeout, 600 s,
    then said the jobs were "still queued or ended without a worker". Now one line
    within seconds naming them and the hold, exit 1, nothing written, no job left queued.
    Also a hold among other options of its line, or abbreviated, as sbatch takes them (waited
    for 600 s until g98: only ``#SBATCH --hold`` or ``-H`` was taken for the script's), after
    a quoted '#' (taken for a comment's) or with options after it in its word (``-Ht 10``: a
    hold, then -t; both waited for 600 s until g105)."""
    import re

    from fstack_dask import synthetic_stack, write_stack

    src, dst = tmp_path / "stack.zarr", tmp_path / "out.zarr"
    write_stack(src, synthetic_stack((64, 64), 7, seed=3).stack.transpose(2, 0, 1), axes="zyx")
    # (a line of the prologue, before its first command: "#SBATCH--hold", which sbatch reads
    # as a hold, was not taken for a directive)
    where = "job_script_prologue" if hold.startswith("#") else "job_extra_directives"
    config, name = _slurm_config(tmp_path, jobs=1, **{where: [hold]})
    line, left = _failed_run(src, dst, config, name)  # the default 600 s stall
    assert re.fullmatch(
        r"fstack-dask: error: no block finished for 1\d s: no worker is connected to the "
        r"cluster; its batch job\(s\) \(\d+\) are held \(JobHeldUser\), and a held job starts "
        r"only once released \(scontrol release\), so they are cancelled with the run: remove "
        r"--hold from cluster.jobqueue.job_extra_directives if it is there; nothing was written",
        line,
    ), line
    assert left.strip() == "", left  # (scancel'd by the cluster's close, before exit)
    assert not dst.exists()


def test_a_scale_just_before_the_run_whose_sbatch_is_slow_is_not_taken_for_ended_jobs(
    slurm_available, short_waits, tmp_path, monkeypatch
):
    """A notebook's SLURMCluster and Client, then ``cluster.scale(jobs=1)`` and the run at
    once, sbatch answering after 15 s (a busy controller): a job is in ``cluster.workers``
    only once its sbatch answered, and the run failed after 10 s, "its batch job(s) (1 of
    them) ended (their walltime reached, scancel, a preemption)", a healthy run stopped (the
    g84 review). It waits for the job, and fuses. (The run's 10 s shortened to 3 s, and sbatch's
    15 s to 8 s.)"""
    import numpy as np
    from distributed import Client

    from fstack_dask import fuse_zarr, synthetic_stack, write_stack

    slow = tmp_path / "bin"
    slow.mkdir()
    (slow / "sbatch").write_text(f'#!/bin/sh\nsleep 8\nexec {shutil.which("sbatch")} "$@"\n')
    (slow / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{slow}{os.pathsep}{os.environ['PATH']}")
    src = tmp_path / "stack.zarr"
    write_stack(src, synthetic_stack((64, 64), 7, seed=3).stack.transpose(2, 0, 1), axes="zyx")
    expected = fuse_zarr(src, tmp_path / "threads.zarr", progress=False, scheduler="threads")
    with slurm_cluster(**_jobqueue_kwargs(tmp_path)) as cluster, Client(cluster) as client:
        cluster.scale(jobs=1)
        out = fuse_zarr(src, tmp_path / "out.zarr", progress=False, scheduler=client)
        np.testing.assert_array_equal(out["0"][...], expected["0"][...])


@pytest.fixture
def own_partition():
    """Make a partition of this test's own on the cluster's node (the machine's SLURM is
    shared: the ``debug`` partition is never brought down), given its settings; removed
    after. Skips where partitions cannot be made (not root, an older SLURM)."""
    made: list[str] = []

    def make(**settings: str) -> str:
        node = _run("sinfo", "-h", "-p", PARTITION, "-o", "%N").stdout.strip()
        name = f"fstack-{os.getpid()}-{len(made)}"
        res = _run("scontrol", "create", f"PartitionName={name}", f"Nodes={node}",
                   *(f"{k}={v}" for k, v in settings.items()))  # fmt: skip
        if res.returncode != 0:
            pytest.skip(f"cannot make a SLURM partition: {res.stderr.strip()[:200]}")
        made.append(name)
        return name

    yield make
    for name in made:
        _run("scancel", "-p", name)
        _run("scontrol", "delete", f"PartitionName={name}")


def _small_stack(tmp_path: Path) -> Path:
    from fstack_dask import synthetic_stack, write_stack

    src = tmp_path / "stack.zarr"
    write_stack(src, synthetic_stack((64, 64), 7, seed=3).stack.transpose(2, 0, 1), axes="zyx")
    return src


@pytest.mark.parametrize("why", ["PartitionTimeLimit", "DependencyNeverSatisfied"])
def test_jobs_pending_for_a_reason_that_never_clears_are_said_and_cancelled(
    slurm_available, own_partition, tmp_path, why
):
    """A job pending for a reason that no wait clears (a walltime beyond its partition's
    limit, a dependency on a job that failed; a per-job limit alike): the run waited the stall
    timeout, 600 s, then said the jobs were "still queued or ended without a worker". Now
    one line within about 30 s naming the jobs and squeue's reason, exit 1, nothing written, no
    job left queued. (PartitionTimeLimit's run keeps the program's waits, 15 s and 10 s; the
    other's are shortened.)"""
    import re

    src, dst = _small_stack(tmp_path), tmp_path / "out.zarr"
    if why == "PartitionTimeLimit":  # (a 1-minute partition, the jobs' walltime 5 minutes)
        overrides = {"queue": own_partition(MaxTime="1")}
    else:
        failed = _run("sbatch", "--parsable", "-J", f"fstack-{os.getpid()}-failing",
                      "-p", PARTITION, "-o", str(tmp_path / "failing.out"),
                      "--wrap", "exit 1").stdout.strip()  # fmt: skip
        while _job_states([failed]):  # (ended: its dependants pend for good)
            time.sleep(0.2)
        overrides = {"job_extra_directives": [f"--dependency=afterok:{failed}"]}
    config, name = _slurm_config(tmp_path, jobs=1, **overrides)
    t0 = time.monotonic()
    short = why != "PartitionTimeLimit"
    line, left = _failed_run(src, dst, config, name, short)  # (the default 600 s stall)
    assert re.fullmatch(
        r"fstack-dask: error: no block finished for \d+ s: no worker is connected to the "
        rf"cluster; its batch job\(s\) \(\d+\) are pending for a reason that does not clear by "
        rf"itself \({why}\), so they are cancelled with the run: .*; nothing was written",
        line,
    ), line
    assert time.monotonic() - t0 < 45
    assert left.strip() == "", left
    assert not dst.exists()


def test_jobs_whose_partition_is_down_are_waited_for_until_the_site_brings_it_up(
    slurm_available, own_partition, tmp_path
):
    """A partition the site brought down (``scontrol update State=DOWN``: a maintenance), its
    jobs pending for ``PartitionDown``: SLURM keeps them queued for when it comes back up. The
    run stopped after 25 s, its jobs cancelled, whatever the stall timeout (a user's 2 h
    included). It waits for the partition, up to the stall timeout, saying once why: the site
    brings it up 15 s in (past the waits given a reason that never clears, shortened to 3 s),
    and the run finishes."""
    src, dst = _small_stack(tmp_path), tmp_path / "out.zarr"
    queue = own_partition(State="DOWN")
    config, name = _slurm_config(tmp_path, jobs=1, queue=queue)
    proc = _fuse_cli(str(src), str(dst), "--config", str(config), "--stall-timeout", "90",
                     short=True)  # fmt: skip
    try:
        deadline, reason = time.monotonic() + 30, ""
        while reason != "PartitionDown" and time.monotonic() < deadline:
            time.sleep(0.5)
            reason = _run("squeue", "-h", "-n", name, "-o", "%r").stdout.strip()
        time.sleep(15)  # (the run stopped 6 s after this reason was seen: 3 s, then 3 s)
        assert proc.poll() is None, proc.communicate()
        assert _run("scontrol", "update", f"PartitionName={queue}", "State=UP").returncode == 0
        _, err = proc.communicate(timeout=90)
    finally:
        _stop(proc, name)
    assert reason == "PartitionDown", reason
    assert proc.returncode == 0, err
    assert "pending (PartitionDown): their partition is down, and the run waits for the site " \
        "to bring it up, to its stall timeout" in err, err  # fmt: skip
    assert (dst / "zarr.json").exists()


def test_jobs_whose_partition_stays_down_are_said_at_the_stall_timeout(
    slurm_available, own_partition, tmp_path
):
    """The other side: a partition still down at the stall timeout (20 s here) is said then,
    the jobs cancelled, nothing written."""
    import re

    src, dst = _small_stack(tmp_path), tmp_path / "out.zarr"
    config, name = _slurm_config(tmp_path, jobs=1, queue=own_partition(State="DOWN"))
    proc = _fuse_cli(str(src), str(dst), "--config", str(config), "--stall-timeout", "20",
                     short=True)  # fmt: skip
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        left = _stop(proc, name)
    assert proc.returncode == 1, err
    assert re.fullmatch(
        r"fstack-dask: error: no block finished for 20 s: no worker is connected to the "
        r"cluster; its batch job\(s\) \(\d+\) are still pending, waiting for the site "
        r"\(PartitionDown\), so they are cancelled with the run: their partition is down "
        r"\(sinfo\), as for a maintenance: rerun once the site brings it up, give the run a "
        r"longer stall timeout to wait for it, or choose another cluster.jobqueue.queue; "
        r"nothing was written",
        err.splitlines()[-1],
    ), err
    assert left.strip() == "", left
    assert not dst.exists()


@pytest.mark.parametrize("why", ["BeginTime", "Resources"])
def test_jobs_waiting_for_a_reason_that_clears_are_waited_for(
    slurm_available, own_partition, tmp_path, why
):
    """The other side: a job that waits for its start time, or for cores another job holds (a
    busy cluster), starts once it clears; the run waits for it (past the wait that a reason
    that never clears is given, shortened) and finishes."""
    src, dst = _small_stack(tmp_path), tmp_path / "out.zarr"
    if why == "BeginTime":
        overrides = {"job_extra_directives": [f"--begin=now+{BEGIN_S}"]}
    else:  # a partition of one core, held by another job for 20 s (the run's start-up within)
        queue = own_partition(MaxCPUsPerNode="1")
        _run("sbatch", "-J", f"fstack-{os.getpid()}-busy", "-p", queue, "-c", "1",
             "--mem=64M", "-o", str(tmp_path / "busy.out"), "--wrap", "sleep 20")  # fmt: skip
        overrides = {"queue": queue}
    config, name = _slurm_config(tmp_path, jobs=1, **overrides)
    proc = _fuse_cli(str(src), str(dst), "--config", str(config), short=True)
    try:
        deadline, reason = time.monotonic() + 20, ""
        while time.monotonic() < deadline and reason in ("", "None"):  # (not yet looked at)
            time.sleep(0.5)
            reason = _run("squeue", "-h", "-n", name, "-o", "%r").stdout.strip()
        _, err = proc.communicate(timeout=110)
    finally:
        _stop(proc, name)
    # (what the job waited for: behind the busy job, Resources or, as often, Priority)
    assert reason in ((why,) if why == "BeginTime" else ("Resources", "Priority")), reason
    assert proc.returncode == 0, err
    assert (dst / "zarr.json").exists()


def _a_run_whose_job_ends(tmp_path: Path, what: str) -> tuple[Path, Path, dict, list[str], Any]:
    """A stack of 64 blocks, dst, the SLURMCluster arguments of jobs named for ``what``, the
    list their ids go to and a thread that scancels them once 2 blocks are done (start it)."""
    import threading

    from fstack_dask import synthetic_stack, write_stack

    src, dst = tmp_path / "stack.zarr", tmp_path / "out.zarr"
    write_stack(src, synthetic_stack((256, 256), 7, seed=3).stack.transpose(2, 0, 1),
                axes="zyx", chunks=(7, 32, 32))  # fmt: skip
    name = f"fstack-{os.getpid()}-{what}"
    kwargs = _jobqueue_kwargs(tmp_path)
    kwargs.update(job_name=name, memory="1GiB")
    ended: list[str] = []

    def end_the_job() -> None:
        done = dst / ".fstack_dask" / "done"
        while not (done.is_dir() and len(list(done.iterdir())) >= 2):
            time.sleep(0.1)
        ended.extend(_run("squeue", "-h", "-n", name, "-o", "%i").stdout.split())
        _run("scancel", "-n", name)

    return src, dst, kwargs, ended, threading.Thread(target=end_the_job, daemon=True)


def test_an_adaptive_clusters_jobs_that_end_are_replaced_and_the_run_finishes(
    slurm_available, short_waits, tmp_path
):
    """A user's adaptive SLURMCluster (``cluster.adapt``) whose job ends mid-run (scancel
    here; a walltime reached alike, checked by hand with walltime 00:01:00): the adaptor
    submits another, and the run goes on to the output an uninterrupted run writes."""
    import numpy as np
    from distributed import Client

    from fstack_dask import fuse_zarr

    src, dst, kwargs, ended, end_the_job = _a_run_whose_job_ends(tmp_path, "adaptive")
    try:
        with slurm_cluster(**kwargs) as cluster:
            cluster.adapt(minimum=1, maximum=1)
            with Client(cluster) as client:
                end_the_job.start()
                out = fuse_zarr(src, dst, chunks=32, progress=False, scheduler=client,
                                stall_timeout=50)  # fmt: skip
                ran = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
    finally:
        _run("scancel", "-n", kwargs["job_name"])
    assert ended and ended[0] not in ran.values(), (ended, ran)  # another job finished it
    expected = fuse_zarr(src, tmp_path / "threads.zarr", chunks=32, progress=False)
    np.testing.assert_array_equal(out["0"][...], expected["0"][...])


def test_adaptive_jobs_that_fail_at_start_up_are_said_in_one_line(
    slurm_available, short_waits, tmp_path
):
    """Every job of a user's adaptive SLURMCluster fails at start-up (here its prologue
    exits; a python missing on the nodes, a module that does not load alike): no worker
    ever joins, the cluster takes the job for one still coming and submits none in its place.
    The run waited the stall timeout, 600 s, then said the jobs were "still queued or ended
    without a worker". Now it says they ended without a worker, naming them, how SLURM
    says they ended while it keeps them (a JobLaunchFailure leaves no output to see) and
    where their output is, within seconds (the waits shortened: 6 s)."""
    import re

    from distributed import Client

    from fstack_dask import fuse_zarr
    from fstack_dask._runs.waiting import StalledError

    src = _small_stack(tmp_path)
    name = f"fstack-{os.getpid()}-failing"
    kwargs = _jobqueue_kwargs(tmp_path)
    kwargs.update(job_name=name, memory="1GiB", job_script_prologue=["exit 3"])
    t0 = time.monotonic()
    try:
        with slurm_cluster(**kwargs) as cluster:
            cluster.adapt(minimum=1, maximum=2)
            with Client(cluster) as client, pytest.raises(StalledError) as caught:
                # (90 s, not 600: the line that said "still queued" came after it)
                fuse_zarr(src, tmp_path / "out.zarr", progress=False, scheduler=client,
                          stall_timeout=90)  # fmt: skip
    finally:
        _run("scancel", "-n", name)
    assert re.fullmatch(
        r"no block finished for \d+ s: no worker is connected to the cluster; its batch "
        r"job\(s\) \(\d+\) ended without their worker ever joining \(scontrol: FAILED, "
        r"NonZeroExitCode, exit code 3:0; it failed to start: .*\), and none comes in "
        r"their place: see their output, slurm-<id>.out in the cluster's log_directory or the "
        r"folder the cluster was made in; nothing was written",
        str(caught.value),
    ), caught.value
    assert time.monotonic() - t0 < 60  # (not the stall timeout)


def test_a_users_own_fixed_clusters_ended_jobs_are_named(slurm_available, short_waits, tmp_path):
    """A Python user's own SLURMCluster (``scale(jobs=1)``, passed as ``scheduler=``) whose
    job ends mid-run: the line said "(1 of them)" (only the command line's cluster kept its
    jobs' ids) and told to lengthen "cluster.jobqueue.walltime", a config this user has not.
    Now it names the job, and the cluster's walltime."""
    from distributed import Client

    from fstack_dask import fuse_zarr
    from fstack_dask._runs.waiting import StalledError

    src, dst, kwargs, jobs, end_the_job = _a_run_whose_job_ends(tmp_path, "own")
    try:
        with slurm_cluster(**kwargs) as cluster:
            cluster.scale(jobs=1)
            with Client(cluster) as client, pytest.raises(StalledError) as caught:
                end_the_job.start()
                fuse_zarr(src, dst, chunks=32, progress=False, scheduler=client)
    finally:
        _run("scancel", "-n", kwargs["job_name"])
    assert f"its batch job(s) ({jobs[0]}) ended (" in str(caught.value), (jobs, caught.value)
    assert "lengthen the cluster's walltime if it was reached" in str(caught.value)


def _a_delayed_job_finishes(tmp_path: Path, **overrides) -> None:
    """A CLI run whose one job starts after 12 s (``--begin``) finishes: past the 3 s and 6 s
    that a job pending for good, or gone, is given (the waits shortened), it is waited for."""
    src, dst = _small_stack(tmp_path), tmp_path / "out.zarr"
    extra = [f"--begin=now+{BEGIN_S}", *overrides.pop("job_extra_directives", [])]
    config, name = _slurm_config(tmp_path, jobs=1, job_extra_directives=extra, **overrides)
    proc = _fuse_cli(str(src), str(dst), "--config", str(config), short=True)
    try:
        _, err = proc.communicate(timeout=110)
    finally:
        _stop(proc, name)
    assert proc.returncode == 0, err
    assert (dst / "zarr.json").exists()


@pytest.mark.parametrize(
    "reason", ["AssocGrpCPURunMinutesLimit", "PartitionNodeLimit", "BadConstraints"]
)
def test_jobs_pending_for_a_reason_that_clears_in_time_are_waited_for(
    slurm_available, tmp_path, monkeypatch, reason
):
    """squeue's AssocGrpCPURunMinutesLimit (QOSGrpCPUMinutesLimit ...): the user's other jobs
    hold the minutes a group may have running, and it clears as they run and end. Its "Min"
    was read as a per-job limit (QOSMinMemory), and a healthy run stopped after 15 s, "pending
    for a reason that does not clear by itself". PartitionNodeLimit: squeue's manual
    says it "can also indicate that required nodes are DOWN or DRAINED" (an admin's drain or
    reboot), and a healthy run stopped so too (g89 noticed it; the lead took it off the list).
    BadConstraints: said while no node has the features the job asks for, it clears as one
    gets them (g92 saw a job start so on this SLURM, its node's features taken away, then
    given back), and a healthy run stopped after 15 s, its job cancelled.
    (squeue says the reason here of a job that waits for its begin time: this SLURM keeps no
    accounts, and its one node is shared.)"""
    _squeue_through(tmp_path, monkeypatch, f"sed s/BeginTime/{reason}/")
    _a_delayed_job_finishes(tmp_path)


def _squeue_through(tmp_path: Path, monkeypatch: Any, command: str) -> None:
    """An ``squeue`` first on PATH whose answer the real one's output piped to ``command`` is."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "squeue").write_text(f'#!/bin/sh\n{shutil.which("squeue")} "$@" | {command}\n')
    (fake / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")


def test_a_users_squeue_defaults_do_not_hide_the_runs_jobs(slurm_available, tmp_path, monkeypatch):
    """``export SQUEUE_STATES=RUNNING`` in a user's login script (SQUEUE_PARTITION,
    SQUEUE_USERS alike) filters what squeue lists: the run's job, pending, was not listed,
    taken for one gone without its worker, and a healthy run stopped after 20 s, "ended
    without their worker ever joining". The run asks squeue without them."""
    monkeypatch.setenv("SQUEUE_STATES", "RUNNING")
    _a_delayed_job_finishes(tmp_path)


def test_a_job_array_pending_is_waited_for(slurm_available, tmp_path):
    """``--array=0`` in job_extra_directives: squeue lists the job sbatch called 123 as
    123_[0] (its tasks, 123_0 once running), and the pending job, not found by its id, was
    taken for one gone without its worker: a healthy run stopped after 20 s."""
    _a_delayed_job_finishes(tmp_path, job_extra_directives=["--array=0"])


def test_held_jobs_beside_jobs_pending_for_good_are_told_the_hold(
    slurm_available, own_partition, tmp_path, monkeypatch
):
    """Two jobs pending for good, one held (sbatch's hold; here squeue's first line says it),
    one for its walltime beyond its partition's limit (its second line): the line told of the
    held one "they ask for more than the site lets one job have: lower walltime, cores or
    memory", a change that would not start it. It says a held job starts once released.
    (An administrator's hold, and a user's made after the jobs were queued, are waited for: the
    tests below.)"""
    sed = "sed -e 1s/PartitionTimeLimit/JobHeldUser/ -e 2s/JobHeldUser/PartitionTimeLimit/"
    _squeue_through(tmp_path, monkeypatch, sed)  # (whichever reason squeue says of each)
    src, dst = _small_stack(tmp_path), tmp_path / "out.zarr"
    config, name = _slurm_config(tmp_path, jobs=2, queue=own_partition(MaxTime="1"),
                                 job_extra_directives=["--hold"])  # fmt: skip
    line, left = _failed_run(src, dst, config, name, short=True)
    assert "(JobHeldUser, PartitionTimeLimit), so they are cancelled with the run: " in line, line
    assert "a held job starts only once released (scontrol release); their walltime" in line
    assert "more than the site lets one job have" not in line, line
    assert left.strip() == "", left


def test_a_failing_squeue_is_not_asked_at_each_poll(slurm_available, tmp_path, monkeypatch):
    """squeue failing (a controller too busy to answer): the run asked it again at each poll,
    4 times a second, while its job pended, adding to the controller's load. It asks
    every 5 s, and the run, its job started, finishes (4 a second: about 50 calls)."""
    calls = tmp_path / "squeue-calls"
    _squeue_through(tmp_path, monkeypatch, f"cat >/dev/null; echo . >>{calls}; exit 1")
    _a_delayed_job_finishes(tmp_path)
    assert len(calls.read_text().split()) <= 8  # (the job starts after 12 s or more)


@pytest.mark.parametrize("directive", ["--clusters=other", "-N 1 --cluster=other", "-vM other"])
def test_jobs_sent_to_another_slurm_cluster_are_waited_for(
    slurm_available, tmp_path, monkeypatch, directive
):
    """``--clusters=other`` in job_extra_directives (a site's GPU cluster beside the login
    node's: sbatch -M): squeue, asked without ``-M``, asks its own cluster, which knows none of
    the jobs ("Invalid job id"), and a healthy run stopped after 20 s, "ended without their
    worker ever joining", its job left queued there. squeue is asked with ``-M``. Also
    where the line's first option is another (``-N 1 --cluster=other``), or ``-M`` comes among
    flags (``-vM other``), both of which sbatch reads (a run stopped so too).
    (This SLURM has one cluster: an sbatch first on PATH submits here without the directive,
    and an squeue first on PATH answers as the login node's cluster would unless asked ``-M
    other``.)"""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text(
        "#!/bin/sh\n"
        f'sed \'/^#SBATCH.*[ =]other$/d\' "$1" >"$1.here" && '
        f'exec {shutil.which("sbatch")} "$1.here"\n'
    )
    (fake / "squeue").write_text(  # (asked "... -M other": the real one without those two)
        '#!/bin/bash\ncase "$*" in *"-M other") ;; *) echo "slurm_load_jobs error: Invalid job '
        f'id specified" >&2; exit 1;; esac\nexec {shutil.which("squeue")} "${{@:1:$#-2}}"\n'
    )
    for name in ("sbatch", "squeue"):
        (fake / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    _a_delayed_job_finishes(tmp_path, job_extra_directives=[directive])


def test_how_jobs_sent_to_another_slurm_cluster_ended_is_said(
    slurm_available, tmp_path, monkeypatch
):
    """A job sent to another SLURM cluster (``--clusters=other``, as in the test above) that
    ends without its worker joining (its prologue exits 3): the line said how SLURM says it
    ended ("scontrol: FAILED, NonZeroExitCode, exit code 3:0") only for a job of scontrol's own
    cluster, asked without ``-M``, which knows none of the other's, and it was left out.
    scontrol is asked with ``-M``. (As above, an sbatch first on PATH submits here, and an
    squeue and an scontrol first on PATH answer as the login node's cluster would unless asked
    ``-M other``.)"""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text(
        "#!/bin/sh\n"
        f'sed /--clusters=other/d "$1" >"$1.here" && exec {shutil.which("sbatch")} "$1.here"\n'
    )
    for name in ("squeue", "scontrol"):  # (asked "... -M other ...": the real one without it)
        (fake / name).write_text(
            '#!/bin/bash\nargs=()\nwhile [ $# -gt 0 ]; do if [ "$1" = -M ] && [ "$2" = other ]'
            '; then other=1; shift 2; else args+=("$1"); shift; fi; done\n'
            '[ -n "$other" ] || { echo "slurm_load_jobs error: Invalid job id specified" >&2; '
            f'exit 1; }}\nexec {shutil.which(name)} "${{args[@]}}"\n'
        )
    for name in ("sbatch", "squeue", "scontrol"):
        (fake / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    src, dst = _small_stack(tmp_path), tmp_path / "out.zarr"
    config, name = _slurm_config(tmp_path, jobs=1, job_extra_directives=["--clusters=other"],
                                 job_script_prologue=["exit 3"])  # fmt: skip
    line, left = _failed_run(src, dst, config, name, short=True)
    assert "ended without their worker ever joining (scontrol: FAILED, NonZeroExitCode, exit " \
        "code 3:0; it failed to start: " in line, line  # fmt: skip
    assert not dst.exists()


def test_jobs_slurm_held_after_a_failed_launch_are_said_at_once(
    slurm_available, tmp_path, monkeypatch
):
    """A job whose node failed to launch it (a prolog that failed, a spool it could not
    write): SLURM requeues it held, squeue's reason SLURM's own words, "launch failed requeued
    held" (``scontrol requeuehold``'s "job requeued in held state" alike), not ``JobHeld...``.
    The run waited the stall timeout, 600 s, for a job that starts only once released (the g94
    brief). It says them at once, as a user's hold. (A real launch failure drains the node,
    the one this machine's SLURM shares: squeue here says it of a job held with --hold.)"""
    _squeue_through(tmp_path, monkeypatch, "sed 's/JobHeldUser/launch failed requeued held/'")
    src, dst = _small_stack(tmp_path), tmp_path / "out.zarr"
    config, name = _slurm_config(tmp_path, jobs=1, job_extra_directives=["--hold"])
    line, left = _failed_run(src, dst, config, name)
    assert "are held (launch failed requeued held), and a held job starts only once " in line
    assert "SLURM held them when their node failed to launch them (sinfo -R" in line, line
    assert left.strip() == "", left
    assert not dst.exists()


#: a job script's "#SBATCH --hold" after its first command, which sbatch ignores, and
#: SBATCH_HOLD=0, a variable sbatch does not read: each was taken for the script's hold
_NO_HOLD = {"job_script_prologue": ["echo starting", "#SBATCH --hold"], "SBATCH_HOLD": "0"}


@pytest.mark.parametrize(
    ("hold", "reason", "told"),
    [("hold", "JobHeldAdmin", {}), ("uhold", "JobHeldUser", {}),
     ("uhold", "JobHeldUser", _NO_HOLD)],
    ids=["admin", "user", "user-no-script-hold"],
)  # fmt: skip
def test_jobs_held_for_a_while_once_queued_are_waited_for(
    slurm_available, tmp_path, monkeypatch, hold, reason, told
):
    """An administrator holds the run's pending job (``scontrol hold`` by root: squeue's
    JobHeldAdmin), as during a maintenance, or its user does (``scontrol uhold``, as ``scontrol
    hold`` by its owner: JobHeldUser), to let another job of theirs go first, and releases it
    20 s later: the run took either for ``--hold`` in its job script and stopped after 10 s,
    its jobs cancelled. A hold the job script does not ask for is waited
    for, and the run finishes."""
    told = dict(told)
    if "SBATCH_HOLD" in told:
        monkeypatch.setenv("SBATCH_HOLD", told.pop("SBATCH_HOLD"))
    src, dst = _small_stack(tmp_path), tmp_path / "out.zarr"
    config, name = _slurm_config(tmp_path, jobs=1, job_extra_directives=["--begin=now+5"],
                                 **told)  # fmt: skip
    proc = _fuse_cli(str(src), str(dst), "--config", str(config))
    try:
        deadline, job = time.monotonic() + 30, ""
        while not job and time.monotonic() < deadline:
            job = _run("squeue", "-h", "-n", name, "-o", "%i").stdout.strip()
            time.sleep(0.2)
        assert _run("scontrol", hold, job).returncode == 0
        time.sleep(20)  # (past the 10 s after which the job script's hold is said)
        said = _run("squeue", "-h", "-j", job, "-o", "%r").stdout.strip()
        _run("scontrol", "release", job)
        _, err = proc.communicate(timeout=90)
    finally:
        _stop(proc, name)
    assert said == reason, said
    assert proc.returncode == 0, err
    assert (dst / "zarr.json").exists()


def test_jobs_an_administrator_holds_are_said_at_the_stall_timeout(slurm_available, tmp_path):
    """The other side: an administrator's hold not released within the stall timeout is said
    then, the hold named (it said the jobs were "still queued or ended without a worker")."""
    import re

    src, dst = _small_stack(tmp_path), tmp_path / "out.zarr"
    config, name = _slurm_config(tmp_path, jobs=1, job_extra_directives=["--begin=now+5"])
    proc = _fuse_cli(str(src), str(dst), "--config", str(config), "--stall-timeout", "25")
    try:
        deadline, job = time.monotonic() + 30, ""
        while not job and time.monotonic() < deadline:
            job = _run("squeue", "-h", "-n", name, "-o", "%i").stdout.strip()
            time.sleep(0.2)
        _run("scontrol", "hold", job)
        line = _error_line(proc)
    finally:
        left = _stop(proc, name)
    assert re.fullmatch(
        r"fstack-dask: error: no block finished for 25 s: no worker is connected to the "
        rf"cluster; its batch job\(s\) \({job}\) are held \(JobHeldAdmin\), and a held job "
        r"starts only once released \(scontrol release\), so they are cancelled with the run: "
        r"an administrator held them \(a maintenance, say\): rerun once the site releases "
        r"them, or give the run a longer stall timeout; nothing was written",
        line,
    ), line
    assert left.strip() == "", left
