"""The per-task memory model that chooses chunk sizes is an upper bound of what a task allocates."""

from __future__ import annotations

import inspect
import tracemalloc

import numpy as np
import pytest

from fstack_dask import synthetic_stack
from fstack_dask._algorithm import compiled as _compiled
from fstack_dask._algorithm import fused as _fused
from fstack_dask._algorithm.block import ENGINE, block_memory, fuse_block

ENGINES = ["numpy"] + (["compiled"] if _fused.blend_compiled is not None else [])


def _peak(block: np.ndarray, engine: str, **kwargs) -> int:
    """What one fuse_block call allocates at its peak (warm), plus its input."""
    fuse_block(block, engine=engine, **kwargs)  # compile / warm up
    tracemalloc.start()
    try:
        fuse_block(block, engine=engine, **kwargs)
        return tracemalloc.get_traced_memory()[1] + block.nbytes
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("planes", "dtype", "rgb", "nhsize"),
    [
        (21, "uint16", False, 9),
        (7, "uint8", True, 9),
        (9, "float32", False, 15),
        (6, "float16", False, 3),
        (5, "int64", True, 5),
    ],
)
def test_block_memory_bounds_allocations(engine, planes, dtype, rgb, nhsize):
    stack = synthetic_stack((160, 120), planes, rgb=rgb, dtype=dtype, seed=0).stack
    block = np.ascontiguousarray(
        np.moveaxis(stack, (3, 2), (0, 1)) if rgb else np.moveaxis(stack, 2, 0)
    )
    kwargs = {"rgb": rgb, "nhsize": nhsize, "with_depth": True, "with_selectivity": True}
    peak = _peak(block, engine, **kwargs)  # (plus the input itself)
    estimate = block_memory(
        (160, 120), planes, 3 if rgb else 1, np.dtype(dtype).itemsize, rgb,
        nhsize=nhsize, engine=engine, float16=dtype == "float16",
    )  # fmt: skip
    assert peak <= estimate, (peak, estimate)
    assert peak >= 0.3 * estimate, "the model should not be wildly pessimistic"


def test_default_engine_is_the_models_default():
    args = ((100, 100), 10, 1, 2, False)
    assert block_memory(*args) == block_memory(*args, engine=ENGINE)
    if "compiled" in ENGINES:
        # The compiled engine holds no (P, Y, X) float64 temporaries: well under the NumPy one.
        assert block_memory(*args, engine="compiled") < 0.7 * block_memory(*args, engine="numpy")


@pytest.mark.skipif("compiled" not in ENGINES, reason="numba is not installed")
def test_compiled_functions_allocate_nothing_themselves():
    # tracemalloc sees NumPy's allocations, not numba's: so every buffer the compiled
    # functions use is allocated by their Python callers, and the test above is complete.
    for module in (_compiled, _fused):
        for name, obj in vars(module).items():
            func = getattr(obj, "py_func", None)
            if func is not None:
                source = inspect.getsource(func)
                for maker in ("np.empty", "np.zeros", "np.ones", ".copy(", "np.full"):
                    assert maker not in source, (name, maker)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("shape", "nhsize"), [((40, 40), 1001), ((3, 3000), 101)])
def test_a_halo_deeper_than_the_image_is_counted_as_each_engine_reads_it(engine, shape, nhsize):
    """A halo deeper than the image is read clipped to it, and the compiled engine works on
    what it read; the NumPy engine pads it by its windows (13 MB for a 40 x 40 image at
    nhsize 1001, where the clipped shape counts 0.4 MB): the model counts its halo whole."""
    from fstack_dask._algorithm.block import haloed_shape
    from fstack_dask._params import overlap_depth

    stack = synthetic_stack(shape, 5, dtype="uint8", seed=0).stack
    block = np.ascontiguousarray(np.moveaxis(stack, 2, 0))
    kwargs = {"rgb": False, "nhsize": nhsize, "with_depth": True, "with_selectivity": True}
    peak = _peak(block, engine, **kwargs)  # (plus the input itself)
    counted = haloed_shape(shape, overlap_depth(nhsize), shape, engine)
    assert peak <= block_memory(counted, 5, 1, 1, False, nhsize=nhsize, engine=engine), peak


@pytest.mark.skipif("compiled" not in ENGINES, reason="numba is not installed")
@pytest.mark.parametrize("dtype", ["int64", "uint64"])
def test_a_deep_halo_on_64_bit_integers_is_counted_as_the_run_plans_it(tmp_path, dtype):
    """The compiled engine (the default) takes 64-bit integers' focus measure from the NumPy
    engine, whose window sums pad each plane by the window: a run planned the halo clipped to
    a 40 x 40 image at nhsize 1001 as 1.9 MB a task, where the task held 18 MB."""
    from fstack_dask import write_stack
    from fstack_dask._runs.fusion import plan_fusion

    stack = synthetic_stack((40, 40), 5, dtype="uint16", seed=0).stack.astype(dtype)
    block = np.ascontiguousarray(np.moveaxis(stack, 2, 0))
    write_stack(tmp_path / "s.ome.zarr", block, axes="zyx")
    fusion = plan_fusion(str(tmp_path / "s.ome.zarr"), nhsize=1001, depth_map=True,
                         selectivity_map=True)  # fmt: skip
    assert fusion.kernel.get("engine") == "compiled"
    kwargs = {"rgb": False, "nhsize": 1001, "with_depth": True, "with_selectivity": True}
    peak = _peak(block, "compiled", **kwargs)  # (plus the input itself)
    assert peak <= fusion.task_bytes(fusion.block), peak


@pytest.mark.skipif("compiled" not in ENGINES, reason="numba is not installed")
def test_a_float16_stack_is_counted_widened_as_the_run_plans_it(tmp_path):
    """The compiled engine widens float16 samples to float32 (4 bytes a sample more), which
    block_memory counts with float16=True; the run's plan never said so (4.19 MB planned for
    a task that held 4.61 MB)."""
    from fstack_dask import write_stack
    from fstack_dask._runs.fusion import plan_fusion

    stack = synthetic_stack((160, 120), 21, dtype="float16", seed=0).stack
    block = np.ascontiguousarray(np.moveaxis(stack, 2, 0))
    write_stack(tmp_path / "s.ome.zarr", block, axes="zyx")
    fusion = plan_fusion(str(tmp_path / "s.ome.zarr"), chunks=(160, 120), depth_map=True,
                         selectivity_map=True)  # fmt: skip
    assert fusion.kernel.get("engine") == "compiled"
    kwargs = {"rgb": False, "nhsize": 9, "with_depth": True, "with_selectivity": True}
    peak = _peak(block, "compiled", **kwargs)  # (plus the input itself)
    read = (160 - 2 * fusion.halo, 120 - 2 * fusion.halo)  # a block whose task reads all 160 x 120
    assert peak <= fusion.task_bytes(read), peak


def test_the_readme_s_memory_formulas_are_the_models():
    """The README's per-pixel formulas (now docs/performance.md's and docs/gpu.md's) for a task
    on the CPU and on the GPU said ``10 C + 25 +
    f`` and ``f + 32``, the model's before the selectivity was kept in float64 for the fill of
    undefined S (a README audit): each is read from the README and checked against the model,
    which the tests above check against what the engines allocate."""
    import pathlib
    import re

    from fstack_dask._algorithm.cuda import device_block_memory, plane_groups

    docs = pathlib.Path(__file__).parents[2] / "docs"
    performance, gpu_page = (docs / "performance.md").read_text(), (docs / "gpu.md").read_text()
    (cpu,) = re.findall(r"\[P \(2 C b \+ f\) \+ 10 C \+ (\d+) \+ f\] \+ row buffers", performance)
    (gpu,) = re.findall(r"Y X \[C P b \+ P f \+ 16 G \+ f \+ (\d+) \+ C o\]", gpu_page)
    for planes, channels, b in ((21, 1, 2), (51, 3, 1), (7, 1, 4)):
        f, rgb = 4 if b <= 2 else 8, channels == 3
        model = [
            block_memory((r, 64), planes, channels, b, rgb, engine="compiled") for r in (64, 65)
        ]
        per_pixel = planes * (2 * channels * b + f) + 10 * channels + int(cpu) + f
        assert (model[1] - model[0]) // 64 == per_pixel, (planes, channels, b)
        groups = plane_groups(planes, f)
        per_pixel = channels * planes * b + planes * f + 16 * groups + f + int(gpu) + channels * b
        gpu_model = [device_block_memory((r, 64), planes, channels, b) for r in (64, 65)]
        assert (gpu_model[1] - gpu_model[0]) // 64 == per_pixel, (planes, channels, b)
