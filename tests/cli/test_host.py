"""``main([...])`` called from a host (a notebook, a user's script) leaves the host's warning
filters and loggers as it found them, whatever the run's end (g87)."""

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
