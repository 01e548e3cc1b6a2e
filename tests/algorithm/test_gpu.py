"""``device="cuda"``: the CUDA kernel against the CPU engine, the checks, the refusals.

Three kinds of test:

* numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, in subprocesses, tiny stacks): the
  CUDA source run as Python on a CPU. It does no fused multiply-adds, as our kernels on a
  GPU do none (``libdevice.dmul_rn``), so it must give the CPU engine's bits exactly;
* compiling the kernels to PTX for sm_90 (needs numba-cuda with NVVM, no GPU): they compile
  for the real target and contain no fused multiply-add and no unrounded product;
* ``gpu``: on a real GPU (skipped with the reason where there is none), the contract:
  >= 99.9 % of pixels identical to the CPU, none more than one level apart, and bit for bit
  across chunkings; run by ``benchmarks/gpu_check.sh``.

The argument checks and the refusals without a GPU run everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from clusters import Cluster

from fstack_dask import focus_stack, fuse, fuse_zarr, synthetic_stack, write_stack
from fstack_dask._algorithm.device import NUMPY_BELOW, check_device, cuda_problem
from fstack_dask._cli.config import config_from_mapping

HERE = pathlib.Path(__file__).resolve().parents[1]  # the helpers, in tests/
SIM_ENV = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
HAS_CUDA_TARGET = importlib.util.find_spec("numba.cuda") is not None
needs_cuda_target = pytest.mark.skipif(
    not HAS_CUDA_TARGET, reason="numba has no CUDA target here (pip install numba-cuda)"
)
NUMPY_COMPILES = tuple(int(p) for p in np.__version__.split(".")[:2]) < NUMPY_BELOW
# numba-cuda's real compile path: installed, and with a NumPy it can compile with (the
# package refuses --device cuda otherwise, which the NumPy 2.5 test below checks)
compiles_for_cuda = pytest.mark.skipif(
    importlib.util.find_spec("numba_cuda") is None or not NUMPY_COMPILES,
    reason="numba-cuda is not installed, or cannot compile with this NumPy (>= 2.5)",
)


def _run(args: list[str], env=None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _json(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def gpu_usable() -> bool:
    """Whether a real GPU is usable here (then the refusal tests do not apply)."""
    if not HAS_CUDA_TARGET:
        return False
    code = "from fstack_dask._algorithm.device import cuda_problem; print(cuda_problem() is None)"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    return _run(["-c", code], env=env).stdout.strip() == "True"


# ------------------------------------------------------------------ the simulator


@needs_cuda_target
def test_simulated_kernel_gives_the_cpu_engines_bits():
    """Every dtype and edge case of the CPU path: grey and RGB, P < 5, one plane, flat and
    saturated regions, float16/32/64 (and float64 too small for its variance), signed, 32-
    and 64-bit integers, big-endian, even window, uneven focus, undefined S filled: image,
    depth and selectivity bit for bit."""
    results = _json(_run([str(HERE / "cuda_cases.py")], env=SIM_ENV))
    assert len(results) == 15
    for name, r in results.items():
        assert r["same_dtype"], name
        assert r["bits"] and r["depth_bits"] and r["selectivity_bits"], (name, r)


@needs_cuda_target
def test_simulated_pipeline_fuse_zarr_fuse_focus_stack():
    """device='cuda' through fuse_zarr (4 blocks with halos), fuse (two chunkings) and
    focus_stack, against the CPU; provenance; a cuda run is not resumed on the cpu; the
    device memory of one block against its formula."""
    found = _json(_run([str(HERE / "cuda_pipeline.py")], env=SIM_ENV))
    for name in ("0", "depth", "selectivity"):
        assert found["fuse_zarr"][name] == {"identical": 1.0, "max_diff": 0.0}, name
    assert found["provenance_device"] == "cuda"
    assert "written with different device" in found["resume_on_cpu"]
    assert found["fuse_chunkings_bits"] == [True, True]
    assert found["fuse_zarr_vs_focus_stack_bits"]
    for name in ("focus_stack", "mitochondria_lightsheet", "pcb"):
        assert found[name] == {"identical": 1.0, "max_diff": 0.0}, name
    # The formula is an upper bound, and not a loose one.
    assert 0.95 * found["device_formula"] <= found["device_bytes"] <= found["device_formula"]


LAUNCHES_AND_RGB_COPY = """
import json, numpy as np
from fstack_dask import synthetic_stack
from fstack_dask._algorithm import compiled, cuda
from fstack_dask._algorithm.block import fuse_block

held = []
class Kernel:  # stands for a numba-cuda kernel: records whether the launch lock is held
    def __getitem__(self, config):
        return lambda *args: held.append(cuda._launch_lock.locked())
ws = cuda.workspace()
ws.launch(Kernel(), 100, 1, 2)

def refuse(src, dst):
    raise AssertionError("a contiguous RGB block went through the tiled copy")
compiled._copy_tiles = refuse
s = synthetic_stack((24, 20), 6, rgb=True, seed=1).stack
block = np.ascontiguousarray(np.moveaxis(s, (2, 3), (1, 0)))  # (3, P, Y, X), a slab a channel
gpu = fuse_block(block, rgb=True, engine="cuda").image
cpu = fuse_block(block, rgb=True, engine="compiled").image
print(json.dumps({"held": held, "rgb_bits": bool(np.array_equal(gpu, cpu))}))
"""


@needs_cuda_target
def test_launches_are_serialised_and_rgb_groups_copied_a_channel_at_a_time():
    """Kernel launches hold the launch lock (numba-cuda 0.30 loads a kernel's module at its
    first launch without one: 16 threads at once crashed on an H200); a contiguous RGB block
    is staged into pinned memory a channel slab at a time (the tiled copy took 7.2 s for a
    3 x 51 x 4096^2 block on the H200), with the CPU engine's bits."""
    found = _json(_run(["-c", LAUNCHES_AND_RGB_COPY], env=SIM_ENV))
    assert found == {"held": [True], "rgb_bits": True}


ASSEMBLED_IN_PINNED_MEMORY = """
import json, os, pathlib, sys, tempfile, numpy as np, zarr
from fstack_dask import synthetic_stack, write_stack, fuse_zarr
from fstack_dask._algorithm import cuda
from fstack_dask._algorithm.block import block_buffer, fuse_block

tmp = pathlib.Path(tempfile.mkdtemp())
zyx = np.moveaxis(synthetic_stack((28, 22), 6, dtype="uint16", seed=11).stack, 2, 0)
write_stack(tmp / "in.zarr", zyx, axes="zyx", chunks=(6, 16, 16))
ws = cuda.workspace()
found = {}
for exchange in ("1", "0"):  # halo exchange's assembly, and the unit cache's
    os.environ["FSTACK_DASK_HALO_EXCHANGE"] = exchange
    for device in ("cuda", "cpu"):
        fuse_zarr(tmp / "in.zarr", tmp / f"{device}{exchange}.zarr", device=device, chunks=16,
                  scheduler="synchronous", progress=False, nhsize=5)
    found[f"staged exchange={exchange}"] = ws.staged_bytes
    found[f"bits exchange={exchange}"] = bool(np.array_equal(
        zarr.open_group(tmp / f"cuda{exchange}.zarr")["0"][...],
        zarr.open_group(tmp / f"cpu{exchange}.zarr")["0"][...]))
rgb = synthetic_stack((20, 18), 6, rgb=True).stack
rgb = np.ascontiguousarray(np.moveaxis(rgb, (2, 3), (1, 0)))
for name, block, is_rgb in (("grey", zyx[:, :20, :18].copy(), False), ("rgb", rgb, True)):
    before = ws.staged_bytes
    plain = fuse_block(block, rgb=is_rgb, engine="cuda", nhsize=5).image
    found[f"{name} staged from a plain array"] = [ws.staged_bytes - before, block.nbytes]
    pinned = block_buffer(block.shape, block.dtype, engine="cuda")
    pinned[...] = block
    before = ws.staged_bytes
    fused = fuse_block(pinned, rgb=is_rgb, engine="cuda", nhsize=5).image
    found[f"{name} staged in place"] = ws.staged_bytes - before
    found[f"{name} bits"] = bool(np.array_equal(plain, fused))
print(json.dumps(found))
"""


@needs_cuda_target
def test_blocks_are_assembled_in_pinned_memory_and_sent_without_a_staging_copy():
    """With device='cuda' a block's haloed samples are assembled in the thread's pinned
    buffer, so fuse_cuda sends them without copying them again (issue 19: fewer host
    copies); a block given as a plain array is staged whole; the bits are the CPU's."""
    found = _json(_run(["-c", ASSEMBLED_IN_PINNED_MEMORY], env=SIM_ENV))
    assert found["staged exchange=1"] == found["staged exchange=0"] == 0, found
    assert found["bits exchange=1"] and found["bits exchange=0"], found
    for name in ("grey", "rgb"):
        staged, nbytes = found[f"{name} staged from a plain array"]
        assert staged == nbytes > 0, found
        assert found[f"{name} staged in place"] == 0, found
        assert found[f"{name} bits"], found


@needs_cuda_target
def test_one_worker_per_gpu_as_the_readme_starts_them(tmp_path):
    """docs/gpu.md's "Several GPUs", run as written, with numba's simulator standing in for the
    GPUs: a ``dask scheduler`` and ``CUDA_VISIBLE_DEVICES=i dask worker ...`` per GPU, then
    ``fstack-dask fuse --scheduler ADDRESS --device cuda`` from a process that has no GPU.

    A worker without a GPU among them makes the run a one-line refusal (exit 2) naming
    that worker, before anything is written; once it is retired, both GPU workers fuse
    blocks, and the output is the CPU's, bit for bit."""
    from distributed import Client

    zyx = np.moveaxis(synthetic_stack((30, 28), 6, dtype="uint16", seed=3).stack, 2, 0)
    write_stack(tmp_path / "in.zarr", zyx, axes="zyx", chunks=(6, 16, 16))
    gpus = [{"NUMBA_ENABLE_CUDASIM": "1", "CUDA_VISIBLE_DEVICES": str(i)} for i in range(2)]
    no_gpu = {"NUMBA_ENABLE_CUDASIM": "0", "CUDA_VISIBLE_DEVICES": ""}
    # The simulator runs one kernel at a time in a process: one thread per worker.
    cluster = Cluster(tmp_path, [*gpus, no_gpu], nthreads=1)
    planner_env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    planner_env["CUDA_VISIBLE_DEVICES"] = ""  # the login node: no GPU where we plan
    args = ["-m", "fstack_dask", "fuse", str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"),
            "--scheduler", cluster.address, "--device", "cuda", "--chunks", "16",
            "--nhsize", "5", "--no-progress"]  # fmt: skip
    try:
        with Client(cluster.address) as client:
            envs = client.run(lambda: os.environ["CUDA_VISIBLE_DEVICES"])
            lacking = next(w for w, env in envs.items() if env == "")
            refused = _run(args, env=planner_env)
            assert refused.returncode == 2, refused.stderr
            line = refused.stderr.strip()
            assert "\n" not in line and line.startswith("fstack-dask: error: --device cuda ")
            assert f"(on worker {lacking})" in line, line
            assert not (tmp_path / "out.zarr").exists()

            client.retire_workers([lacking], close_workers=True)
            before = client.run(lambda dask_worker: dask_worker.state.executed_count)
            done = _run(args, env=planner_env)
            assert done.returncode == 0, done.stderr
            after = client.run(lambda dask_worker: dask_worker.state.executed_count)
            assert sorted(envs[w] for w in after) == ["0", "1"]
            assert all(after[w] > before[w] for w in after), (before, after)
    finally:
        cluster.stop()
    fuse_zarr(tmp_path / "in.zarr", tmp_path / "cpu.zarr", chunks=32, nhsize=5, progress=False)
    import zarr

    gpu_out = zarr.open_group(tmp_path / "out.zarr")
    assert gpu_out.attrs["fstack_dask"]["device"] == "cuda"
    assert np.array_equal(gpu_out["0"][...], zarr.open_group(tmp_path / "cpu.zarr")["0"][...])


# ------------------------------------------------------------------ the real target, no GPU

PTX = textwrap.dedent(
    """
    import json, pickle, re, sys
    from types import SimpleNamespace
    import numba.cuda.dispatcher as dispatcher
    # Device functions compile for the current GPU's architecture; there is none here.
    dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=(9, 0))
    from numba import cuda
    from numba.cuda.cudadrv import nvvm
    from fstack_dask._algorithm.cuda_kernels import build

    try:
        nvvm.NVVM()
    except Exception as e:  # no libNVVM anywhere numba-cuda looks: nothing to check here
        print(json.dumps({"no NVVM": f"{type(e).__name__}: {e}"}))
        sys.exit()
    kernels = build(cuda, simulator=False)
    found = {}
    for name, sig in pickle.load(open(sys.argv[1], "rb")):
        ptx, _ = cuda.compile_ptx(kernels[name].py_func, sig, cc=(9, 0))
        ops = re.findall(r"^\\s*((?:fma|mad|mul)(?:\\.[a-z]+)*\\.f(?:32|64))\\s", ptx, re.M)
        found[f"{name}{sig}"] = sorted(set(ops))
    print(json.dumps(found))
    """
)


@compiles_for_cuda
def test_kernels_compile_for_sm90_without_fused_multiply_adds(tmp_path):
    """NVVM contracts a * b + c into one fused multiply-add unless told not to; every float
    product here is libdevice's dmul_rn, so the PTX has only correctly rounded products.

    The signatures compiled are those the engine launches on every case of the simulator's
    test (recorded there by ``cuda_signatures.py``), so they cannot drift from the code."""
    from fstack_dask._algorithm.cuda_kernels import KERNELS

    sigs = tmp_path / "signatures.pkl"
    recorded = _run([str(HERE / "cuda_signatures.py"), str(sigs)], env=SIM_ENV)
    assert recorded.returncode == 0, recorded.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = _run(["-c", PTX, str(sigs)], env=env, timeout=900)
    found = _json(done)
    if "no NVVM" in found:
        pytest.skip("NVVM cannot be loaded here: " + found["no NVVM"].splitlines()[0])
    assert len(found) == int(recorded.stdout.split()[-1]) >= len(KERNELS)
    assert {key.split("(")[0] for key in found} == set(KERNELS)  # every kernel is launched
    for kernel, ops in found.items():
        assert all(op.startswith("mul.rn.") for op in ops), (kernel, ops)
    blend_uint16 = next(k for k in found if k.startswith("blend(Array(uint16,"))
    assert "mul.rn.f64" in found[blend_uint16]  # the products are there, as dmul_rn


CACHE = textwrap.dedent(
    """
    import json, pickle, sys
    from types import SimpleNamespace
    import numba.cuda.dispatcher as dispatcher
    from numba.cuda.cudadrv import devices, nvvm
    # No GPU here: the device says it is an sm_90, and binding a kernel to it stops at its
    # cubin (linked by nvJitLink, which needs no driver): what numba-cuda caches on disk.
    fake = SimpleNamespace(compute_capability=(9, 0), id=0)
    dispatcher.get_current_device = lambda: fake
    devices.get_context = lambda devnum=None: SimpleNamespace(device=fake)
    dispatcher._Kernel.bind = lambda self: self._codelibrary.get_cubin()
    compiled = []
    compile_ir = nvvm.compile_ir
    def counting(*args, **kwargs):
        compiled.append(1)
        return compile_ir(*args, **kwargs)
    nvvm.compile_ir = counting
    from numba import cuda
    from fstack_dask._algorithm.cuda import build_kernels

    try:
        nvvm.NVVM()
    except Exception as e:  # no libNVVM anywhere numba-cuda looks: nothing to check here
        print(json.dumps({"no NVVM": f"{type(e).__name__}: {e}"}))
        sys.exit()
    kernels = build_kernels(cuda, simulator=False)
    launched = pickle.load(open(sys.argv[1], "rb"))
    for name, sig in launched:
        kernels[name].compile(sig)
    used = [kernels[name] for name in dict(launched)]
    print(json.dumps({
        "signatures": len(launched),
        "hits": sum(sum(k._cache_hits.values()) for k in used),
        "misses": sum(sum(k._cache_misses.values()) for k in used),
        "nvvm_compilations": len(compiled),
        "cubins_sm90": all((9, 0, "a") in o._codelibrary._cubin_cache
                           for k in used for o in k.overloads.values()),
        "paths": sorted({k._cache.cache_path for k in used}),
    }))
    """
)


@compiles_for_cuda
def test_kernels_are_cached_on_disk_and_loaded_by_a_new_process(tmp_path):
    """numba-cuda's real compile path, on a pretend sm_90 (no GPU): the first process compiles
    the kernels a uint16 block launches and writes them to the disk cache, beside the CPU
    engine's in a folder named after the kernels' sources; a new process loads every one of
    them, cubin included, without compiling anything (no NVVM call)."""
    from fstack_dask._algorithm.cuda_kernels import source_digest

    sigs = tmp_path / "signatures.pkl"
    recorded = _run([str(HERE / "cuda_signatures.py"), str(sigs), "uint16"], env=SIM_ENV)
    assert recorded.returncode == 0, recorded.stderr[-3000:]
    n = int(recorded.stdout.split()[-1])
    env = {
        k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "NUMBA_CACHE_DIR")
    }
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    first = _json(_run(["-c", CACHE, str(sigs)], env=env, timeout=900))
    if "no NVVM" in first:
        pytest.skip("NVVM cannot be loaded here: " + first["no NVVM"].splitlines()[0])
    folder = tmp_path / "cache" / "fstack_dask" / "numba" / f"cuda-{source_digest()}"
    assert first["signatures"] == n >= 8
    assert first["misses"] == n and first["hits"] == 0 and first["nvvm_compilations"] >= n
    assert all(pathlib.Path(p).is_relative_to(folder) for p in first["paths"]), first["paths"]
    kernels = {name for name, _ in pickle.loads(sigs.read_bytes())}
    assert len(list(folder.rglob("cuda_kernels.*.nbi"))) == len(kernels)  # an index each
    again = _json(_run(["-c", CACHE, str(sigs)], env=env, timeout=900))
    assert again["hits"] == n and again["misses"] == 0, again
    assert again["nvvm_compilations"] == 0 and again["cubins_sm90"], again


# ------------------------------------------------------------------ checks, no GPU needed


def test_device_argument_is_checked(tmp_path):
    stack = synthetic_stack((16, 16), 5, dtype="uint8", seed=0).stack
    assert check_device(" CUDA ") == "cuda"
    with pytest.raises(ValueError, match=r"^device must be 'cpu' or 'cuda', got 'gpu'$"):
        focus_stack(stack, device="gpu")
    with pytest.raises(TypeError, match="^device must be 'cpu' or 'cuda', got 1"):
        focus_stack(stack, device=1)
    with pytest.raises(ValueError, match="^device must be"):
        fuse(stack, axes="yxz", device="tpu")
    write_stack(tmp_path / "in.zarr", np.moveaxis(stack, 2, 0), axes="zyx")
    with pytest.raises(ValueError, match="^device must be"):
        fuse_zarr(tmp_path / "in.zarr", tmp_path / "out.zarr", device="cuda:0", progress=False)
    assert not (tmp_path / "out.zarr").exists()


def test_config_key_resources_device():
    assert config_from_mapping({"resources": {"device": "cuda"}}).fuse_kwargs()["device"] == "cuda"
    assert config_from_mapping({}).fuse_kwargs()["device"] == "cpu"
    with pytest.raises(ValueError, match=r"resources\.device must be cpu or cuda, got 'gpu'"):
        config_from_mapping({"resources": {"device": "gpu"}}, "run.yaml")


def test_cpu_run_is_not_resumed_on_cuda(tmp_path):
    """The device is part of what a resume compares (last bits may differ between them)."""
    from fstack_dask._runs.resume import check_resumable

    class Dst:
        class dst:  # noqa: N801 - stands for a Location
            spec = "out.zarr"

    with pytest.raises(ValueError, match="started with different device"):
        check_resumable(Dst, {"params": {"device": "cpu"}}, {"device": "cuda"}, None, "resume")
    check_resumable(Dst, {"params": {}}, {"device": "cpu"}, None, "resume")  # older runs


def test_cuda_without_gpu_is_a_one_line_error(tmp_path, gpu_usable):
    if gpu_usable:
        pytest.skip("a CUDA GPU is usable here")
    stack = synthetic_stack((16, 16), 5, dtype="uint8", seed=0).stack
    with pytest.raises(ValueError) as info:
        focus_stack(stack, device="cuda")
    message = str(info.value)
    assert message.startswith("device='cuda' ") and "\n" not in message
    if NUMPY_COMPILES or not HAS_CUDA_TARGET:
        assert ("no usable CUDA GPU" in message) or ("fstack_dask[gpu]" in message)
    else:  # numba-cuda with NumPy 2.5 (the gpu extra's bound lifted): that is the reason
        assert "cannot compile for the GPU here" in message, message
        assert "use NumPy < 2.5 with numba" in message, message
    write_stack(tmp_path / "in.zarr", np.moveaxis(stack, 2, 0), axes="zyx")
    with pytest.raises(ValueError, match="^device='cuda' "):
        fuse_zarr(tmp_path / "in.zarr", tmp_path / "out.zarr", device="cuda", progress=False)
    assert not (tmp_path / "out.zarr").exists()  # refused before anything is written
    with pytest.raises(ValueError, match="^device='cuda' "):
        fuse(stack, axes="yxz", device="cuda")


def test_cuda_without_numbas_cuda_target_names_the_extra():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["numba.cuda"] = None  # as if numba-cuda were not installed
        import numpy as np
        from fstack_dask import focus_stack
        try:
            focus_stack(np.zeros((8, 8, 5), np.uint8), device="cuda")
        except ValueError as exc:
            print(exc)
        """
    )
    out = _run(["-c", code]).stdout.strip()
    assert out.startswith("device='cuda' needs numba's CUDA target"), out
    assert 'pip install "fstack_dask[gpu]"' in out and "\n" not in out


def test_cli_refuses_cuda_without_gpu(tmp_path, gpu_usable):
    if gpu_usable:
        pytest.skip("a CUDA GPU is usable here")
    stack = synthetic_stack((16, 16), 5, dtype="uint8", seed=0).stack
    write_stack(tmp_path / "in.zarr", np.moveaxis(stack, 2, 0), axes="zyx")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    src, dst = str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr")
    args = ["-m", "fstack_dask", "fuse", src, dst, "--device", "cuda", "--no-progress"]
    done = _run(args, env=env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fstack-dask: error: --device cuda "), lines
    assert not (tmp_path / "out.zarr").exists()
    bad = _run(["-m", "fstack_dask", "fuse", "a", "b", "--device", "gpu"], env=env)
    assert bad.returncode == 2 and "--device" in bad.stderr


# ------------------------------------------------------------------ the smoke test

SMOKE_SIM = textwrap.dedent(
    """
    import json
    import numpy as np
    from fstack_dask import focus_stack, synthetic_stack
    from fstack_dask._algorithm import device

    found = {"problem": device.cuda_problem(), "steps": dict(device._smoke)}
    stack = synthetic_stack((12, 10), 5, dtype="uint16", seed=1).stack
    found["run_bits"] = bool(np.array_equal(focus_stack(stack, nhsize=3, device="cuda"),
                                            focus_stack(stack, nhsize=3)))
    # The run step, as on a GPU, with a kernel that computes the wrong number.
    def wrong(out, x):
        out[0] = x * 2.0
    device._tiny_kernel = wrong
    from numba import cuda
    found["wrong"] = device._smoke_step("run", cuda)
    print(json.dumps(found))
    """
)


@needs_cuda_target
def test_smoke_test_passes_in_the_simulator_and_a_run_works():
    """In numba's simulator the tiny kernel runs (once per process) and a run follows; the
    launch step turns a kernel that computes the wrong number into a one-line problem."""
    found = _json(_run(["-c", SMOKE_SIM], env=SIM_ENV))
    assert found["problem"] is None and found["steps"] == {"simulator": None}
    assert found["run_bits"]
    wrong = found["wrong"]
    assert "\n" not in wrong
    if importlib.util.find_spec("numba_cuda") is not None:
        assert wrong.startswith("cannot run a kernel on the GPU here: numba-cuda "), wrong
    else:  # numba < 0.61 without numba-cuda (the floor, 0.59): numba's own CUDA target
        assert wrong.startswith("cannot run a kernel on the GPU here: numba "), wrong
        assert "'s CUDA target with NumPy " in wrong, wrong
    assert "(RuntimeError: a kernel computing 41.0 gave 40.0)" in wrong, wrong


# NumPy 2.5 as numba-cuda 0.30 meets it: np.row_stack is gone (numba-cuda overloads it
# when its CUDA target first initialises, numba only below 2.5) and the version says 2.5.
NUMPY_25 = textwrap.dedent(
    """
    import runpy, sys
    import numpy
    if hasattr(numpy, "row_stack"):  # a real NumPy 2.5 has none to remove
        del numpy.row_stack
    numpy.__version__ = "2.5.2"
    sys.argv = ["fstack-dask", *sys.argv[1:]]
    runpy.run_module("fstack_dask", run_name="__main__")
    """
)


@pytest.mark.skipif(
    importlib.util.find_spec("numba_cuda") is None, reason="numba-cuda is not installed"
)
def test_numpy_25_is_refused_before_anything_is_written(tmp_path):
    """numba-cuda 0.30 cannot compile with NumPy 2.5 (AttributeError on np.row_stack at its
    first compilation, GPU or not): --device cuda exits 2 with one line naming both versions
    and writes nothing, instead of failing with the first block. With the real NumPy (< 2.5)
    the same check compiles, and the run is refused for want of a GPU only (or runs); with a
    real NumPy 2.5 it is refused as the pretend one is."""
    stack = synthetic_stack((16, 16), 5, dtype="uint8", seed=0).stack
    write_stack(tmp_path / "in.zarr", np.moveaxis(stack, 2, 0), axes="zyx")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    from importlib.metadata import version

    args = ["fuse", str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), "--device", "cuda",
            "--no-progress"]  # fmt: skip
    done = _run(["-c", NUMPY_25, *args], env=env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    target = f"numba-cuda {version('numba-cuda')}"
    assert lines == [
        f"fstack-dask: error: --device cuda cannot compile for the GPU here: {target} with "
        "NumPy 2.5.2 (AttributeError: module 'numpy' has no attribute 'row_stack'); use "
        f"NumPy < 2.5 with {target}, or --device cpu"
    ], lines
    assert not (tmp_path / "out.zarr").exists()
    real = _run(["-m", "fstack_dask", *args], env=env)
    if NUMPY_COMPILES:
        assert "cannot compile" not in real.stderr, real.stderr
    else:  # this NumPy is one numba-cuda cannot compile with: refused the same way
        assert real.returncode == 2 and "cannot compile for the GPU here" in real.stderr
        assert not (tmp_path / "out.zarr").exists()


# ------------------------------------------------------------------ on a real GPU


@pytest.mark.gpu
def test_gpu_kernel_against_cpu_engine():
    """Every case of the simulator test at 20x the sides, on the GPU: the contract (and,
    as no fused multiply-add is left, expected bit for bit: reported by the benchmark)."""
    sys.path.insert(0, str(HERE))
    from cuda_cases import cases, compare

    for name, (block, kwargs) in cases(scale=20).items():
        r = compare(block, kwargs)
        assert r["same_dtype"], name
        assert r["identical"] >= 0.999 and r["max_diff"] <= 1, (name, r)


@pytest.mark.gpu
def test_gpu_pipeline():
    """fuse_zarr on threads (several streams at once), fuse across chunkings bit for bit,
    focus_stack and the shipped real stacks, against the CPU."""
    found = _json(_run([str(HERE / "cuda_pipeline.py"), "--gpu"]))
    for name in ("0", "depth", "selectivity"):
        r = found["fuse_zarr"][name]
        assert r["identical"] >= 0.999 and r["max_diff"] <= (1 if name == "0" else 1e-3), name
    assert all(found["fuse_chunkings_bits"]) and found["fuse_zarr_vs_focus_stack_bits"]
    assert "written with different device" in found["resume_on_cpu"]
    for name in ("focus_stack", "mitochondria_lightsheet", "pcb"):
        r = found[name]
        assert r["identical"] >= 0.999 and r["max_diff"] <= 1, (name, r)


@pytest.mark.gpu
def test_gpu_cli_and_distributed_worker(tmp_path):
    """The CLI with --device cuda, and one dask-distributed worker process using the GPU."""
    from distributed import Client, LocalCluster

    zyx = np.moveaxis(synthetic_stack((300, 280), 9, dtype="uint16", seed=2).stack, 2, 0)
    write_stack(tmp_path / "in.zarr", zyx, axes="zyx", chunks=(9, 128, 128))
    done = _run(["-m", "fstack_dask", "fuse", str(tmp_path / "in.zarr"),
                 str(tmp_path / "cli.zarr"), "--device", "cuda", "--no-progress"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:  # fmt: skip
        out = fuse_zarr(tmp_path / "in.zarr", tmp_path / "dist.zarr", device="cuda",
                        scheduler=client, progress=False)  # fmt: skip
        dist = out["0"][...]
    import zarr

    cli = zarr.open_group(tmp_path / "cli.zarr")["0"][...]
    assert np.array_equal(dist, cli)  # one implementation, whatever the scheduler
    cpu = focus_stack(np.moveaxis(zyx, 0, 2))
    assert np.mean(dist == cpu) >= 0.999
    assert np.abs(dist.astype(np.int64) - cpu).max() <= 1


def test_gpu_problem_is_one_line_or_none():
    problem = cuda_problem()
    assert problem is None or "\n" not in problem


def test_info_prints_gpu_memory_per_task(tmp_path):
    """`fstack-dask info --device cuda` needs no GPU: it prints the formula's bytes per task."""
    from fstack_dask._algorithm.cuda import device_block_memory
    from fstack_dask._params import overlap_depth

    zyx = np.moveaxis(synthetic_stack((300, 280), 9, dtype="uint16", seed=2).stack, 2, 0)
    write_stack(tmp_path / "in.zarr", zyx, axes="zyx", chunks=(9, 128, 128))
    done = _run(["-m", "fstack_dask", "info", str(tmp_path / "in.zarr"), "--device", "cuda",
                 "--chunks", "128"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    halo = overlap_depth(9)
    gpu = device_block_memory((128 + 2 * halo, 128 + 2 * halo), 9, 1, 2)
    line = next(x for x in done.stdout.splitlines() if x.startswith("device:"))
    assert f"cuda: {gpu / 2**20:.1f} MiB of GPU memory per task" in line, line
    # where fuse --device cuda would be refused, info says so (it exited 0 in silence before)
    problem = cuda_problem()
    if problem is None:
        assert "cannot run here" not in line, line
    else:
        assert f"cannot run here: fstack_dask {problem.split('; use ')[0]}" in line, line
