"""A real dask-distributed cluster for tests: ``dask scheduler`` and ``dask worker`` processes.

Started as a user starts them by hand (the README's recipes), each worker with its own
environment (``CUDA_VISIBLE_DEVICES`` per GPU, say), so that tests can pause, kill or
retire them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A dask scheduler and one worker process per entry of ``worker_envs``.

    Each worker gets ``nthreads`` threads and this process's environment updated with its
    entry; all their output goes to ``tmp / "cluster.log"``.
    """

    def __init__(self, tmp: Path, worker_envs=({},), nthreads: int = 2):
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        log = open(tmp / "cluster.log", "w")  # noqa: SIM115 - closed in stop()
        self.log = log
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1",
             "--port", str(self.port), "--dashboard-address", ":0"], stdout=log, stderr=log,
        )  # fmt: skip
        self.workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dask",
                    "worker",
                    self.address,
                    "--nworkers",
                    "1",
                    "--nthreads",
                    str(nthreads),
                    "--memory-limit",
                    "2GB",
                    "--no-dashboard",
                ],
                stdout=log,
                stderr=log,
                env={**os.environ, **env},
            )  # fmt: skip
            for env in worker_envs
        ]
        self.worker = self.workers[0] if self.workers else None
        from distributed import Client

        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(self.address, timeout=5) as client:
                    found = client.scheduler_info(n_workers=-1)["workers"]
                    if len(found) == len(self.workers):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                log.flush()
                raise AssertionError(
                    f"the test cluster did not start:\n{(tmp / 'cluster.log').read_text()}"
                )
            time.sleep(0.5)

    def stop(self):
        for p in (*self.workers, self.scheduler):
            if p.poll() is None:
                for child in psutil.Process(p.pid).children(recursive=True):
                    child.kill()
                p.kill()
            p.wait()
        self.log.close()
