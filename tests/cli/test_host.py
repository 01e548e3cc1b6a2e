"""``main([...])`` called from a host (a notebook, a user's script) leaves the host's warning
filters and loggers as it found them, whatever the run's end."""

from __future__ import annotations

import logging
import os
import signal
import warnings

import pytest
from conftest import synthetic_store


@pytest.fixture(scope="module")
def cluster():
    """A notebook's own cluster (threads in this process), which the runs connect to."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                      host="127.0.0.1", dashboard_address=":0") as cluster:  # fmt: skip
        yield cluster


def _host_state():
    """The process's warning filters, and each logger's level, handlers, filters, switches."""
    loggers = {"": logging.getLogger()}
    loggers.update(
        (name, logger)
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    )
    return list(warnings.filters), {
        name: (lg.level, list(lg.handlers), list(lg.filters), lg.disabled, lg.propagate)
        for name, lg in loggers.items()
    }


def _interrupted_at_start(monkeypatch):
    """A real Ctrl-C (SIGINT to this process) as the run starts."""
    import fstack_dask._runs.fuse_zarr as pipeline

    real = pipeline.fuse_zarr

    def fuse_zarr(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "fuse_zarr", fuse_zarr)


CASES = {  # the exit status, and the options besides src, dst and --scheduler
    "fuse": (0, []),
    "usage error": (2, ["--levels", "9"]),  # refused once the cluster's loggers were turned down
    "interrupted": (130, []),
}


@pytest.mark.parametrize("case", list(CASES))
def test_main_leaves_the_hosts_warning_filters_and_loggers_as_it_found_them(
    tmp_path, cluster, monkeypatch, capsys, case
):
    """They were left changed: distributed's and asyncio's loggers at CRITICAL (a notebook's
    cluster said nothing more, its errors included), and an interrupted run's filter silencing
    the host's own "coroutine ... was never awaited" warnings."""
    import distributed  # noqa: F401 - imported by the host, as a notebook with a cluster has

    from fstack_dask._cli.main import main

    src = synthetic_store(tmp_path / "src.zarr", (48, 48), 5, chunk=48, seed=1)
    status, options = CASES[case]
    if case == "interrupted":
        _interrupted_at_start(monkeypatch)
    argv = ["fuse", str(src), str(tmp_path / "out.zarr"), "--no-progress",
            "--scheduler", cluster.scheduler_address, *options]  # fmt: skip
    filters, loggers = _host_state()
    assert main(argv) == status, capsys.readouterr().err
    after_filters, after_loggers = _host_state()
    assert after_filters == filters
    assert {name: after_loggers[name] for name in loggers} == loggers


def test_two_calls_in_two_threads_keep_their_settings_and_leave_the_hosts(tmp_path, monkeypatch):
    """A notebook fusing two stacks at once, a thread each: the first call to end put back
    what the second had changed, mid-run (its notes' level, its FstackDaskWarning shown twice),
    and the second, ending, left the host's ``fstack_dask`` logger at INFO and every
    FstackDaskWarning silenced. The second run here reads its blocks only once the
    first has ended, and notes what it sees then."""
    import threading

    from fstack_dask import FstackDaskWarning
    from fstack_dask._cli.main import main
    from fstack_dask._sources import fetch

    first = synthetic_store(tmp_path / "first.zarr", (64, 64), 5, chunk=32, seed=1)
    second = synthetic_store(tmp_path / "second.zarr", (64, 64), 5, chunk=32, seed=2)
    second_started, first_ended, seen = threading.Event(), threading.Event(), []
    real = fetch._read

    def read(source, sel, into=None):
        if "first.zarr" in repr(source) and not second_started.is_set():
            second_started.wait(60)  # the second call starts while the first runs
        if "second.zarr" in repr(source):
            second_started.set()
            first_ended.wait(60)
            silenced = any(f[0] == "ignore" and f[2] is FstackDaskWarning for f in warnings.filters)
            seen.append((logging.getLogger("fstack_dask").getEffectiveLevel(), silenced))
        return real(source, sel, into)

    monkeypatch.setattr(fetch, "_read", read)
    codes = {}

    def run(src):
        argv = ["fuse", str(src), str(tmp_path / f"{src.stem}.out.zarr"), "--no-progress",
                "--scheduler", "threads"]  # fmt: skip
        codes[src.stem] = main(argv)

    filters, loggers = _host_state()
    threads = [threading.Thread(target=run, args=(src,)) for src in (first, second)]
    threads[0].start()
    threads[1].start()
    threads[0].join(120)
    first_ended.set()
    threads[1].join(120)
    assert codes == {"first": 0, "second": 0}
    assert seen and set(seen) == {(logging.INFO, True)}  # its own settings to its end
    after_filters, after_loggers = _host_state()
    assert after_filters == filters
    assert {name: after_loggers[name] for name in loggers} == loggers


def test_main_called_while_its_host_handles_a_ctrl_c_says_its_own_error(tmp_path, capsys):
    """``main([...])`` called in a host's ``except KeyboardInterrupt:``: its usage error,
    chained by Python to the host's old Ctrl-C, was taken for one: "interrupted; rerun the
    same command with --resume", exit 130, where the error and 2 are due."""
    from fstack_dask._cli.main import main

    src = synthetic_store(tmp_path / "src.zarr", (64, 64), 5, chunk=32, seed=1)
    argv = ["fuse", str(src), str(tmp_path / "out.zarr"), "--levels", "9", "--no-progress"]
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--levels must be at most 6" in err and "interrupted" not in err


SCRIPT_WITH_LOGGING = """
import logging, sys
logging.basicConfig()  # a script's first line
from fstack_dask._cli.main import main
sys.exit(main(["fuse", *sys.argv[1:], "--no-progress"]))
"""


def test_main_in_a_script_that_set_logging_up_says_each_note_once(tmp_path):
    """A script that called ``logging.basicConfig()`` saw each of the command line's notes
    twice: its line, and the root handler's ``WARNING:fstack_dask:...``."""
    import subprocess
    import sys

    src = synthetic_store(tmp_path / "src.zarr", (64, 64), 3, chunk=32, seed=1)  # 3 planes: a note
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT_WITH_LOGGING, str(src), str(tmp_path / "out.zarr")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "3 focus planes" in line]
    assert len(said) == 1 and said[0].startswith("fstack-dask: warning: "), done.stderr
    assert "fstack_dask:" not in done.stderr, done.stderr


def test_info_in_one_thread_neither_takes_nor_drops_another_threads_warnings(
    tmp_path, monkeypatch, capsys
):
    """``main(["info", ...])`` in one thread of a host while another thread warns and sets a
    warning filter: info gathered its warnings with ``warnings.catch_warnings(record=True)``,
    which swaps the whole process's filters and display. It printed the other thread's
    warning among its source's, that thread's warning was never shown, and the filter that
    thread set meanwhile was gone once info ended."""
    import threading

    from fstack_dask._cli import info
    from fstack_dask._cli.main import main
    from fstack_dask._errors import warn

    src = synthetic_store(tmp_path / "clean.zarr", (64, 64), 5, chunk=32, seed=1)
    inside, warned = threading.Event(), threading.Event()
    real = info.plan_from_options

    def plan_from_options(*args, **kwargs):
        fusion = real(*args, **kwargs)
        inside.set()  # info gathers its warnings now: the other thread warns meanwhile
        warned.wait(60)
        return fusion

    monkeypatch.setattr(info, "plan_from_options", plan_from_options)
    shown = []
    monkeypatch.setattr(
        warnings, "showwarning", lambda message, *a, **k: shown.append(str(message))
    )
    codes, before = [], list(warnings.filters)

    def the_other_thread():
        inside.wait(60)
        warnings.filterwarnings("ignore", message="the host's own filter")
        warn("a warning of the other thread's work")
        warned.set()

    other = threading.Thread(target=the_other_thread)
    other.start()
    try:
        codes.append(main(["info", str(src)]))
    finally:
        warned.set()
        other.join(60)
    out = capsys.readouterr().out
    kept = [
        f for f in warnings.filters if f[1] is not None and f[1].pattern == "the host's own filter"
    ]
    warnings.filters[:] = before
    warnings._filters_mutated()
    assert codes == [0]
    assert "the other thread" not in out
    assert shown == ["a warning of the other thread's work"]
    assert kept and kept[0][2] is Warning


def test_two_calls_in_two_threads_show_each_note_once(tmp_path, monkeypatch, capsys):
    """Two ``main([...])`` calls at once in two threads of a host: each call's handler on the
    ``fstack_dask`` logger showed every record, the other call's too, so each note of either
    run was printed twice."""
    import importlib
    import threading

    cli = importlib.import_module("fstack_dask._cli.main")
    both_started = threading.Barrier(2, timeout=60)
    real = cli._fuse

    def fuse(*args, **kwargs):  # both calls' handlers in place before either run notes
        both_started.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "_fuse", fuse)
    codes = []

    def run(seed):
        src = synthetic_store(tmp_path / f"s{seed}.zarr", (64, 64), 5, chunk=32, seed=seed)
        codes.append(cli.main(["fuse", str(src), str(tmp_path / f"o{seed}.zarr"), "--auto",
                               "--no-progress", "--scheduler", "synchronous"]))  # fmt: skip

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    notes = [line for line in capsys.readouterr().err.splitlines() if "auto parameters" in line]
    assert codes == [0, 0]
    assert len(notes) == 2 and len(set(notes)) == 2, notes
