"""The ``FSTACK_DASK_*`` environment variables: a value none of them accepts is refused in one
line naming the variable, with nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import synthetic_store, tree_digest

SWITCHES = ["FSTACK_DASK_HALO_EXCHANGE", "FSTACK_DASK_CUDA_PINNED"]


def _cli(*args, cwd, env):
    """The real command line in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "fstack_dask", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})  # fmt: skip


@pytest.fixture()
def src(tmp_path):
    return synthetic_store(tmp_path / "stack.ome.zarr", (40, 32), 5, chunk=32, seed=1)


# every value once through the one parser both switches share (_env.choice), each switch with
# the values its fix (1075cab) named: a CLI run each, 8, not all 14 pairs
@pytest.mark.parametrize(
    ("name", "value"),
    [*((SWITCHES[0], v) for v in ["maybe", " 1", "yes", "no", "TRUE"]),
     *((SWITCHES[1], v) for v in ["maybe", "true", "2"])],
)  # fmt: skip
def test_a_switch_that_is_neither_0_nor_1_is_refused_naming_it(src, tmp_path, name, value):
    """FSTACK_DASK_HALO_EXCHANGE=maybe ran with halo exchange on (``no`` turned it off; ``TRUE``
    on), FSTACK_DASK_CUDA_PINNED=maybe pinned: each taken in silence. Refused before writing."""
    before = tree_digest(tmp_path)
    done = _cli("fuse", src, tmp_path / "out.zarr", "--no-progress", cwd=tmp_path,
                env={name: value})  # fmt: skip
    assert done.returncode == 2, done.stderr[-500:]
    assert done.stderr.splitlines() == [
        f"fstack-dask: error: {name} must be '0' or '1' (or unset), got {value!r}"
    ]
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("value", ["nump", "NumPy", " compiled", "1"])
def test_an_engine_it_does_not_know_is_refused_before_the_demo_writes(tmp_path, value):
    """FSTACK_DASK_ENGINE=nump ran the default engine with a warning; the demo had written its
    planes before its fusion checked anything."""
    done = _cli("demo", tmp_path / "d", "--size", "32", "--planes", "5", "--no-progress",
                cwd=tmp_path, env={"FSTACK_DASK_ENGINE": value})  # fmt: skip
    assert done.returncode == 2, done.stderr[-500:]
    assert done.stderr.splitlines() == [
        "fstack-dask: error: FSTACK_DASK_ENGINE must be 'numpy' or 'compiled' (or unset), "
        f"got {value!r}"
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["", "0", "1"])
def test_a_switch_set_empty_0_or_1_runs(src, tmp_path, value):
    env = dict.fromkeys(SWITCHES, value)
    done = _cli("fuse", src, tmp_path / "out.zarr", "--no-progress", cwd=tmp_path, env=env)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-500:]


def test_every_variable_set_empty_runs_its_default_without_a_word(src, tmp_path):
    """README: "unset or empty is a variable's default" (``VAR= cmd``, ``${VAR:-}``), every
    variable the package reads. FSTACK_DASK_LOCK_STALE_AFTER= warned "must be a positive
    number of seconds, got ''; 60 s is used", once from the command line and once more, with
    its source line, from each process of ``--scheduler processes``."""
    names = ["FSTACK_DASK_ENGINE", *SWITCHES, "FSTACK_DASK_LOCK_STALE_AFTER",
             "FSTACK_DASK_PROCESS_POOL_IDLE"]  # fmt: skip
    done = _cli("fuse", src, tmp_path / "out.zarr", "--no-progress", "--scheduler", "processes",
                cwd=tmp_path, env=dict.fromkeys(names, ""))  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr[-800:]


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan"])
def test_a_bad_lock_stale_age_is_refused_in_one_line(src, tmp_path, value):
    """FSTACK_DASK_LOCK_STALE_AFTER=abc was warned of, 60 s used, by the command line and again
    by each process of ``--scheduler processes``, there with its source line:
    refused before anything is written, as the other variables are."""
    before = tree_digest(tmp_path)
    done = _cli("fuse", src, tmp_path / "out.zarr", "--no-progress", "--scheduler", "processes",
                cwd=tmp_path, env={"FSTACK_DASK_LOCK_STALE_AFTER": value})  # fmt: skip
    assert done.returncode == 2, done.stderr[-800:]
    assert done.stderr.splitlines() == [
        "fstack-dask: error: FSTACK_DASK_LOCK_STALE_AFTER must be a number of seconds above 0, "
        f"or inf (or unset), got {value!r}"
    ]
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize(("dst", "says"), [
    ("out.zarr", "--device cuda cannot run with this environment: FSTACK_DASK_CUDA_PINNED must "
                 "be '0' or '1' (or unset), got 'maybe'"),
    ("out.png", "dst 'out.png' names a PNG file"),
])  # fmt: skip
def test_a_bad_pinned_switch_with_cuda_is_refused_without_a_warning_that_contradicts_it(
    src, tmp_path, dst, says
):
    """--device cuda with FSTACK_DASK_CUDA_PINNED=maybe printed "warning: ... the default (1) is
    used" (the planning process imported the GPU module, which read it as a worker does), then
    the error refusing the same value, or another refusal (a fuzzer of option combinations,
    g66): one line, the error."""
    (tmp_path / "work").mkdir()
    before = tree_digest(tmp_path)
    done = _cli("fuse", src, dst, "--no-progress", "--device", "cuda", cwd=tmp_path / "work",
                env={"FSTACK_DASK_CUDA_PINNED": "maybe", "NUMBA_ENABLE_CUDASIM": "1"})  # fmt: skip
    assert done.returncode == 2, done.stderr[-800:]
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fstack-dask: error: {says}"), lines
    assert tree_digest(tmp_path) == before


def test_a_worker_meeting_a_bad_pinned_switch_warns_and_pins():
    """Where a refusal would fail a running task (a worker that joins later with another
    environment), the value is warned of and the default runs; a worker asked before the run
    (``cuda_problem``, every worker's check for device='cuda') refuses it, naming it."""
    code = (
        "import warnings; warnings.simplefilter('error')\n"
        "from fstack_dask._algorithm.device import cuda_problem\n"
        "print(cuda_problem())\n"
        "warnings.simplefilter('default')\n"
        "from fstack_dask._algorithm import cuda; print(cuda.pinned())\n"
    )
    env = {**os.environ, "FSTACK_DASK_CUDA_PINNED": "yes", "NUMBA_ENABLE_CUDASIM": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-800:]
    problem, pinned = done.stdout.splitlines()
    assert problem == (
        "cannot run with this environment: FSTACK_DASK_CUDA_PINNED must be '0' or '1' (or "
        "unset), got 'yes'"
    )
    assert pinned == "True"
    assert (
        "FSTACK_DASK_CUDA_PINNED must be '0' or '1' (or unset), got 'yes'; the default (1) "
        "is used" in done.stderr
    )


def test_info_of_an_output_refuses_a_bad_lock_stale_age_as_a_run_does(src, tmp_path):
    """info of an output judged its lock with 60 s in silence where
    FSTACK_DASK_LOCK_STALE_AFTER held what a run (and info of a source) refuses: alike now."""
    done = _cli("fuse", src, tmp_path / "out.zarr", "--no-progress", cwd=tmp_path, env={})
    assert done.returncode == 0, done.stderr[-500:]
    before = tree_digest(tmp_path)
    for of in (tmp_path / "out.zarr", src):
        done = _cli("info", of, cwd=tmp_path, env={"FSTACK_DASK_LOCK_STALE_AFTER": "abc"})
        assert (done.returncode, done.stdout) == (2, ""), done.stdout[-500:]
        assert done.stderr.splitlines() == [
            "fstack-dask: error: FSTACK_DASK_LOCK_STALE_AFTER must be a number of seconds above "
            "0, or inf (or unset), got 'abc'"
        ]
    assert tree_digest(tmp_path) == before
