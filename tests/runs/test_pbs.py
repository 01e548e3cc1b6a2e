"""A PBS cluster's batch jobs (``cluster.kind: pbs``, dask-jobqueue's ``PBSCluster``) that bring
no worker: the hold the job script asks for (``#PBS -h``) said at once, the waits the user asked
for (``-a`` a start time, ``-W depend=``) waited for. No PBS server here: the job scripts are
dask-jobqueue's own, and a ``qsub``, ``qstat`` and ``qdel`` first on PATH play the server,
``qstat -f`` answering as PBS Pro and Torque print a job (its state and hold types set by the
test), ``qsub`` and ``qdel`` noting what they were given."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("dask_jobqueue") is None, reason="dask_jobqueue not installed"
)


def _script(**kwargs) -> str:
    from fstack_dask._cli.config import _jobqueue_class  # (Ctrl-C's handler kept)

    PBSCluster = _jobqueue_class("pbs")

    with PBSCluster(cores=1, memory="1GiB", walltime="00:05:00", scheduler_options={
        "dashboard_address": ":0"}, **kwargs) as cluster:  # fmt: skip
        return cluster.job_script()


@pytest.mark.parametrize(
    ("extra", "prologue", "held"),
    [
        (["-h"], [], True),
        (["-V -h"], [], True),  # (among other options of its line)
        (["-Vh"], [], True),  # (among other flags of its word, as getopt reads it)
        (["-hq normal"], [], True),  # (a flag, then -q with its value)
        (["-l select=1:ncpus=1 -h"], [], True),
        (["-N job\\ -h -h"], [], True),  # (an escaped space: one word, then -h)
        (["-a 2359"], [], False),  # a start time: a wait the user asked for
        (["-W depend=afterok:123"], [], False),  # a dependency: a wait too
        (["-N -h"], [], False),  # the job's name, "-h"
        (["-N '-h'"], [], False),
        (["-A 'a -h'"], [], False),  # (quoted: one word, the account's)
        (["-N 'a -h"], [], False),  # (an unmatched quote: qsub refuses the script)
        ([], ["  #PBS -h"], True),  # (indented: still a directive to qsub)
        ([], [": ", "#PBS -h"], True),  # (a line of ':' is not a command to qsub)
        ([], ["echo start", "#PBS -h"], False),  # (after the first command: not read)
        (["-l walltime=1:00:00 \\"], [" -h"], True),  # (continued on the next line)
        ([], ["# PBS -h"], False),
    ],
)
def test_the_job_scripts_own_hold_is_read_as_qsub_reads_it(extra, prologue, held):
    from fstack_dask._runs.pbs_jobs import asks_hold

    script = _script(job_extra_directives=extra, job_script_prologue=prologue)
    assert asks_hold(script) is held, script


def test_qsubs_own_hold_and_directive_prefix_are_read(monkeypatch):
    """``qsub -h`` (a ``submit_command`` of the user's) holds too; ``-C`` or ``PBS_DPREFIX``
    name the directives' prefix, and qsub reads no ``#PBS`` line then."""
    from fstack_dask._runs.pbs_jobs import asks_hold

    script = _script(job_extra_directives=["-h"])
    assert asks_hold(_script(), "qsub -h")
    assert not asks_hold(script, "qsub -C '#SITE'")
    monkeypatch.setenv("PBS_DPREFIX", "#SITE")
    assert not asks_hold(script)
    assert asks_hold(script.replace("#PBS -h", "#SITE -h"))


_QSTAT = """#!/bin/sh
# qstat -f ID...: each job as PBS prints it, its state and hold types those of $FAKE_PBS/state
shift
read state hold <"$FAKE_PBS/state"
for id in "$@"; do
  printf 'Job Id: %s.server\\n    Job_Name = fstack\\n    job_state = %s\\n' "$id" "$state"
  printf '    Hold_Types = %s\\n    queue = workq\\n\\n' "$hold"
done
"""


@pytest.fixture
def fake_pbs(tmp_path, monkeypatch):
    """A qsub (each job script kept, its id 1, 2 ...), qstat and qdel first on PATH; the folder
    where they keep what they were given (``state``: what qstat says of every job)."""
    where, bin_ = tmp_path / "pbs", tmp_path / "bin"
    where.mkdir()
    bin_.mkdir()
    (bin_ / "qsub").write_text(
        '#!/bin/sh\nn=$(($(ls "$FAKE_PBS" | grep -c "^job") + 1))\n'
        'cp "$1" "$FAKE_PBS/job$n.sh"\necho "$n.server"\n'
    )
    (bin_ / "qstat").write_text(_QSTAT)
    (bin_ / "qdel").write_text('#!/bin/sh\necho "$@" >>"$FAKE_PBS/qdel"\n')
    for tool in ("qsub", "qstat", "qdel"):
        (bin_ / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PBS", str(where))
    return where


def _run(
    tmp_path: Path, extra: list[str], *args: str, popen: bool = False, thread: bool = False
) -> Any:
    """The CLI's fuse of a small stack on a PBS cluster of one job (``extra``: its
    job_extra_directives), its waits for a job pending for good shortened to 3 s; the process
    running, not waited for, with ``popen``; the command line run in a thread, with ``thread``."""
    from fstack_dask import synthetic_stack, write_stack

    src = tmp_path / "stack.zarr"
    write_stack(src, synthetic_stack((64, 64), 7, seed=3).stack.transpose(2, 0, 1), axes="zyx")
    jobqueue = {"cores": 1, "memory": "1GiB", "walltime": "00:05:00", "python": sys.executable,
                "log_directory": str(tmp_path / "logs"), "job_extra_directives": extra}  # fmt: skip
    config = tmp_path / "pbs.yaml"
    config.write_text(yaml.safe_dump({"cluster": {"kind": "pbs", "jobs": 1, "jobqueue": jobqueue}}))
    main = ("import sys; from fstack_dask._runs import waiting; waiting.REFUSED_AFTER = 3.0; "
            "from fstack_dask.__main__ import main; sys.exit(main())")  # fmt: skip
    if thread:  # a host's main([...]) in a thread of its own
        main = ("import sys, threading; from fstack_dask._runs import waiting; "
                "waiting.REFUSED_AFTER = 3.0; from fstack_dask._cli.main import main; "
                "got = []; t = threading.Thread(target=lambda: got.append(main(sys.argv[1:]))); "
                "t.start(); t.join(); sys.exit(got[0])")  # fmt: skip
    # (the NumPy engine: a run that fails within seconds left numba compiling in the driver's
    # warm-up thread as Python exited, and llvmlite aborted it, now and then, exit 134 or -11)
    env = {**os.environ, "FSTACK_DASK_ENGINE": "numpy"}
    cmd = [sys.executable, "-c", main, "fuse", str(src), str(tmp_path / "out.zarr"), "--config",
           str(config), "--no-progress", *args]  # fmt: skip
    if popen:
        return subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, env=env)


def test_jobs_held_by_their_job_script_are_said_at_once_and_cancelled(fake_pbs, tmp_path):
    """``#PBS -h`` in job_extra_directives (qstat: ``job_state = H``, ``Hold_Types = u``): no
    job ever starts, and the run waited the stall timeout, 600 s, then said its jobs were
    "still queued or ended without a worker" (PBS's holds were not read). One line now, as
    SLURM's hold, the job deleted (qdel), nothing written."""
    (fake_pbs / "state").write_text("H u\n")
    res = _run(tmp_path, ["-h"])
    assert res.returncode == 1, res.stderr
    (line,) = res.stderr.splitlines()
    assert re.fullmatch(
        r"fstack-dask: error: no block finished for \d s: no worker is connected to the "
        r"cluster; its batch job\(s\) \(1\) are held \(Hold_Types=u\), and a held job starts "
        r"only once released \(qrls\), so they are cancelled with the run: remove -h from "
        r"cluster.jobqueue.job_extra_directives if it is there; nothing was written",
        line,
    ), line
    assert "#PBS -h" in (fake_pbs / "job1.sh").read_text()
    assert (fake_pbs / "qdel").read_text().split() == ["1"]
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize(
    ("extra", "state"),
    [(["-a 2359"], "W n"), (["-W depend=afterok:9"], "H s"), ([], "H o"), ([], "H u")],
    ids=["start-time", "dependency", "operator-hold", "users-hold-once-queued"],
)
def test_waits_the_user_or_the_site_asked_for_are_waited_for(fake_pbs, tmp_path, extra, state):
    """A start time (``-a``: ``job_state = W``), a dependency (``-W depend=``: held by the
    system, ``Hold_Types = s``), an operator's hold (a maintenance's) and a user's made once
    queued (``qhold``, not the script's) end by themselves or by those who made them: the run
    waits for them to its stall timeout (8 s here, past the 3 s after which the script's own
    hold is said), then names them."""
    (fake_pbs / "state").write_text(f"{state}\n")
    res = _run(tmp_path, extra, "--stall-timeout", "8")
    assert res.returncode == 1, res.stderr
    (line,) = res.stderr.splitlines()
    assert line.startswith("fstack-dask: error: no block finished for 8 s: no worker is "), line
    if state.startswith("H"):
        assert f"its batch job(s) (1) are held (Hold_Types={state[2]}), " in line, line
    assert (fake_pbs / "qdel").read_text().split() == ["1"]


def test_a_ctrl_c_while_the_batch_jobs_wait_says_interrupted(fake_pbs, tmp_path):
    """dask-jobqueue replaces the process's Ctrl-C handler with ``sys.exit()`` when it is
    imported (its ``runner`` module, at import time): a Ctrl-C of a run on a PBS or SLURM
    cluster raised SystemExit, and the program ended 0, as if it had finished, saying nothing
    (a job script's next step went on). Python's handler is kept now: "interrupted", 130,
    ``--resume``."""
    import signal
    import time

    (fake_pbs / "state").write_text("W n\n")  # a start time: waited for
    proc = _run(tmp_path, [], "--stall-timeout", "600", popen=True)
    try:
        deadline = time.monotonic() + 60
        while not (fake_pbs / "job1.sh").exists():  # the cluster is up: its job submitted
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.splitlines()[-1] == (
        "fstack-dask: error: interrupted; rerun the same command with --resume to continue"
    ), err


def test_a_host_running_the_command_line_in_a_thread_runs_on_a_batch_cluster(fake_pbs, tmp_path):
    """A host's ``main([...])`` in a thread with a PBS (or SLURM) config ended at once, "error:
    signal only works in main thread of the main interpreter", exit 2: dask-jobqueue's import
    sets a signal handler, which only the main thread may. The run now goes on to its batch
    jobs (here pending for good: said at the stall timeout, as from the main thread)."""
    (fake_pbs / "state").write_text("W n\n")
    res = _run(tmp_path, [], "--stall-timeout", "5", thread=True)
    assert res.returncode == 1, res.stderr
    (line,) = res.stderr.splitlines()
    assert line.startswith("fstack-dask: error: no block finished for 5 s: no worker is "), line
    assert (fake_pbs / "job1.sh").exists()
