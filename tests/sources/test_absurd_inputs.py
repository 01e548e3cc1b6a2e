"""Inputs whose metadata is absurd, and the planner's cost on the largest images it accepts.

The planner (``_plan.make_plan``) searches by bisection; its output (block size, strip width,
block order) is part of the output's bytes, so it is compared here with a copy of the linear
searches it replaced, on a grid of shapes, chunks and memory budgets.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import subprocess
import sys
import tracemalloc

import pytest
import zarr
from conftest import tree_digest

from fstack_dask._algorithm.block import block_memory
from fstack_dask._layout import Layout
from fstack_dask._runs.plan import Plan, _choose_block, _smallest, make_plan

# ------------------------------------------------------------------ the old planner (oracle)


def _old_largest(fits, hi):
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _old_smallest(n, unit, halo):
    floor = max(2 * halo, 16)
    best = min(unit, n)
    for d in range(2, unit + 1):
        size = min(n, math.ceil(unit / d))
        if size < floor:
            break
        best = size
    return best


def _old_choose_block(ny, nx, uy, ux, halo, fits):
    ky_max, kx_max = math.ceil(ny / uy), math.ceil(nx / ux)
    k = _old_largest(lambda k: fits((min(k * uy, ny), min(k * ux, nx))), max(ky_max, kx_max))
    if k:
        by, bx = min(k * uy, ny), min(k * ux, nx)
        if by >= ny and kx_max > k:
            bx = min(nx, _old_largest(lambda m: fits((by, m * ux)), kx_max) * ux)
        elif bx >= nx and ky_max > k:
            by = min(ny, _old_largest(lambda m: fits((m * uy, bx)), ky_max) * uy)
        return by, bx
    smallest = max(2 * halo, 16)
    for d in range(2, max(uy, ux) + 1):
        by, bx = min(ny, math.ceil(uy / d)), min(nx, math.ceil(ux / d))
        if max(by, bx) < smallest:
            return None
        if fits((by, bx)):
            # since 2026-12-05: the first exact divisor of both units up to 2 d, if its
            # blocks are not too small (halo exchange by cells needs exact divisors)
            for e in range(d, min(2 * d, max(uy, ux)) + 1):
                if uy % e == 0 and ux % e == 0:
                    ey, ex = min(ny, math.ceil(uy / e)), min(nx, math.ceil(ux / e))
                    if max(ey, ex) >= smallest:
                        return ey, ex
                    break
            return by, bx
    return None


def _old_enough_blocks(layout, block, unit, workers):
    ny, nx = layout.shape_yx
    by, bx = block
    images = math.prod(layout.lead_shape)
    while images * math.ceil(ny / by) * math.ceil(nx / bx) < 2 * workers:
        if by >= bx and by > unit[0]:
            by = max(unit[0], (by // unit[0] + 1) // 2 * unit[0]) if by > unit[0] else by
        elif bx > unit[1]:
            bx = max(unit[1], (bx // unit[1] + 1) // 2 * unit[1])
        else:
            break
    return by, bx


def _old_make_plan(layout, *, unit_shape, halo, workers, memory_per_task, task_bytes,
                   unit_bytes, block=None, processes=1):  # fmt: skip
    ny, nx = layout.shape_yx
    uy, ux = min(unit_shape["y"], ny), min(unit_shape["x"], nx)
    if block is None:
        budget = memory_per_task * 0.75
        chosen = _old_choose_block(ny, nx, uy, ux, halo, lambda b: task_bytes(b) <= budget)
        if chosen is None:
            smallest = (_old_smallest(ny, uy, halo), _old_smallest(nx, ux, halo))
            need = math.ceil(task_bytes(smallest) / 0.75)
            raise ValueError(
                f"memory_per_task={memory_per_task} bytes cannot hold the smallest block "
                f"({smallest[0]} x {smallest[1]} px with a {halo} px halo, "
                f"{layout.n_planes} planes); give at least {need} bytes"
            )
        block = _old_enough_blocks(layout, chosen, (uy, ux), workers)
    by, bx = block
    cache = max(0, workers * memory_per_task - workers * task_bytes(block))
    unit_rows = 2 * math.ceil(by / uy) + 2
    strip = max(1, math.ceil(nx / bx))
    while strip > 1 and unit_rows * (math.ceil(strip * bx / ux) + 2) * unit_bytes > cache:
        strip -= 1
    if processes > 1:
        strip = min(strip, math.ceil(math.ceil(nx / bx) / processes))
    unit_lead = tuple(unit_shape.get(a, 1) for a in layout.lead_axes)
    return (by, bx), strip, unit_lead, cache


def _old_blocks(plan):
    groups = [
        [(s, min(s + u, n)) for s in range(0, n, u)]
        for n, u in zip(plan.layout.lead_shape, plan.unit_lead, strict=True)
    ]
    ny, nx = plan.grid
    for group in itertools.product(*groups):
        for s0 in range(0, nx, plan.strip):
            for j in range(ny):
                for i in range(s0, min(s0 + plan.strip, nx)):
                    for lead in itertools.product(*[range(a, b) for a, b in group]):
                        yield (*lead, j, i)


def _task_bytes(halo, n_planes, itemsize, rgb=False, nhsize=9):
    channels = 3 if rgb else 1
    return lambda b: block_memory(
        (b[0] + 2 * halo, b[1] + 2 * halo), n_planes, channels, itemsize, rgb, nhsize=nhsize
    )


def _plan_both(layout, unit, halo, memory, workers, processes, block=None):
    """(new plan, old plan) or the two errors, for one input."""
    n_planes = layout.n_planes
    task = _task_bytes(halo, n_planes, 2, layout.rgb)
    unit_bytes = 2 * layout.n_channels * n_planes * unit["y"] * unit["x"]
    kw = dict(unit_shape=unit, halo=halo, workers=workers, memory_per_task=memory,
              task_bytes=task, unit_bytes=unit_bytes, block=block, processes=processes)  # fmt: skip
    try:
        plan, cache = make_plan(layout, **kw)
        new = (plan.block, plan.strip, plan.unit_lead, cache)
    except ValueError as exc:
        new, plan = ("error", str(exc)), None
    try:
        old = _old_make_plan(layout, **kw)
    except ValueError as exc:
        old = ("error", str(exc))
    return new, old, plan


# ------------------------------------------------------------------------------ the planner

SIDES = (1, 7, 40, 300, 1000, 4097, 60_000)
UNITS = (1, 16, 64, 100, 512, 4096, 60_000)
MEMORY = (2**16, 2**20, 2**24, 2**28, 2**31)


@pytest.mark.parametrize("halo", [4, 13, 40])
def test_planner_gives_the_plans_of_the_linear_searches_it_replaced(halo):
    """Block size, strip width, cache and error (with its suggested size): equal on a grid."""
    checked = errors = 0
    for ny, nx, uy, ux, memory in itertools.product(SIDES, SIDES, UNITS, UNITS, MEMORY):
        if (uy, ux) != (ux, uy) and uy not in (16, 4096):  # fewer asymmetric units
            continue
        layout = Layout("zyx", (21, ny, nx), False)
        unit = {"z": 21, "y": min(uy, ny), "x": min(ux, nx)}
        for workers, processes in ((1, 1), (8, 3)):
            new, old, _ = _plan_both(layout, unit, halo, memory, workers, processes)
            assert new == old, (ny, nx, uy, ux, memory, workers, processes)
            errors += old[0] == "error"
            checked += 1
    assert checked > 1000 and 0 < errors < checked  # both paths taken


@pytest.mark.parametrize("halo", [4, 13])
def test_smallest_and_unit_divisors_equal_the_linear_searches(halo):
    task = _task_bytes(halo, 21, 2)
    for n, unit in itertools.product((1, 5, 16, 33, 100, 1000, 5000), (1, 2, 17, 64, 999, 4096)):
        assert _smallest(n, unit, halo) == _old_smallest(n, unit, halo), (n, unit)
    for (ny, nx), (uy, ux), budget in itertools.product(
        ((50, 70), (1000, 1000), (5000, 300)),
        ((1, 1), (33, 2000), (999, 999), (4096, 64)),
        (1e4, 1e5, 1e6, 1e7, 1e9),
    ):
        uy, ux = min(uy, ny), min(ux, nx)

        def fits(b, budget=budget):
            return task(b) <= budget

        assert _choose_block(ny, nx, uy, ux, halo, fits) == _old_choose_block(
            ny, nx, uy, ux, halo, fits
        ), (ny, nx, uy, ux, budget)


def test_block_order_is_unchanged_with_batch_axes_and_user_blocks():
    for axes, shape, unit in (
        ("tczyx", (5, 3, 4, 90, 130), {"t": 2, "c": 1, "z": 4, "y": 32, "x": 16}),
        ("tzyx", (7, 3, 64, 64), {"t": 3, "z": 3, "y": 64, "x": 64}),
        ("zyx", (3, 200, 333), {"z": 3, "y": 16, "x": 16}),
    ):
        layout = Layout(axes, shape, False)
        for block, memory in (((16, 16), 2**20), ((32, 48), 2**22), (None, 2**21), (None, 2**30)):
            new, old, plan = _plan_both(layout, unit, 4, memory, 4, 1, block=block)
            assert new == old
            assert list(plan.blocks()) == list(_old_blocks(plan))


class _Counted:
    """A task_bytes that refuses to be called more than ``limit`` times."""

    def __init__(self, task, limit):
        self.task, self.limit, self.calls = task, limit, 0

    def __call__(self, block):
        self.calls += 1
        assert self.calls <= self.limit, "planning is not O(log): too many evaluations"
        return self.task(block)


class _CountedBytes(int):
    """unit_bytes that counts the strip widths tried (each multiplies by it once)."""

    calls = 0

    def __rmul__(self, other):
        type(self).calls += 1
        assert type(self).calls <= 1000, "the strip search is not O(log): too many widths tried"
        return int(other) * int(self)


def test_planning_a_billion_by_a_billion_image_takes_a_few_evaluations():
    layout = Layout("zyx", (21, 10**9, 10**9), False)
    halo = 13
    # a source stored as one 10^9 x 10^9 chunk: no unit fits, so the unit is split by d = 2,
    # 3, ... up to about 10^9 / 2048 (the linear search tried each)
    task = _Counted(_task_bytes(halo, 21, 2), 400)
    unit = {"z": 21, "y": 10**9, "x": 10**9}
    plan, _ = make_plan(layout, unit_shape=unit, halo=halo, workers=2, memory_per_task=2**28,
                        task_bytes=task, unit_bytes=2**62)  # fmt: skip
    assert 16 <= plan.block[0] < 10**5 and plan.strip == 1
    assert plan.grid[1] > 10**4
    # 16 px chunks and a cache that holds a strip of some 60 of the 10^6 blocks a row has: the
    # strip width is found by bisection (the old loop tried each width down from 10^6)
    _CountedBytes.calls = 0
    task = _Counted(_task_bytes(halo, 21, 2), 400)
    unit = {"z": 21, "y": 16, "x": 16}
    unit_bytes = _CountedBytes(2 * 21 * 16 * 16)
    plan, _ = make_plan(layout, unit_shape=unit, halo=halo, workers=64, memory_per_task=2**28,
                        task_bytes=task, unit_bytes=unit_bytes)  # fmt: skip
    assert plan.grid[1] > 10**6 and 1 < plan.strip < 100 and _CountedBytes.calls < 100
    # and a budget too small for any block names the smallest one at once
    with pytest.raises(ValueError, match=r"smallest block \(26 x 26 px"):
        make_plan(layout, unit_shape={"z": 21, "y": 10**9, "x": 10**9}, halo=halo, workers=1,
                  memory_per_task=2**10, task_bytes=_Counted(_task_bytes(halo, 21, 2), 400),
                  unit_bytes=2**62)  # fmt: skip


def test_lead_axes_are_not_listed_before_the_first_block():
    """A batch axis of 10^6 time points (or 2**31 - 1): the first block costs no list of them."""
    layout = Layout("tzyx", (10**6, 3, 64, 64), False)
    plan = Plan(layout, (64, 64), 4, 1, (1,))
    tracemalloc.start()
    try:
        first = list(itertools.islice(plan.blocks(), 3))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert first == [(0, 0, 0), (1, 0, 0), (2, 0, 0)]
    assert peak < 2**16, peak  # a list of 10^6 ranges would take some 100 MB
    huge = Plan(Layout("tzyx", (2**31 - 1, 3, 64, 64), False), (64, 64), 4, 1, (1,))
    assert next(huge.blocks()) == (0, 0, 0)


# ---------------------------------------------------------------- the CLI, on absurd metadata


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "fstack_dask", *map(str, args)],
        capture_output=True, text=True, timeout=120, cwd=cwd, check=False,
    )  # fmt: skip


def _assert_refused(root, src, pattern, commands=("fuse", "info")):
    """``fuse`` and ``info``: exit 2, one line matching ``pattern``, nothing written."""
    before = tree_digest(root)
    for command in commands:
        args = (src, root / "out.ome.zarr", "--no-progress") if command == "fuse" else (src,)
        res = _cli(command, *args, cwd=root)
        lines = res.stderr.splitlines()
        assert res.returncode == 2, res.stderr
        assert len(lines) == 1 and lines[0].startswith("fstack-dask: error: "), res.stderr
        assert re.search(pattern, lines[0]), lines[0]
        assert res.stdout == ""
    assert tree_digest(root) == before


def _metadata_only(path, shape, chunks, axes="zyx", **kw):
    """A Zarr array with no chunk written: every read gives its fill value."""
    zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="uint16",
                      dimension_names=axes, **kw)  # fmt: skip
    return path


def test_cli_refuses_absurd_shapes_and_plans_the_largest_accepted(tmp_path):
    """10^12 x 10^12 px (used to plan forever in fuse and info); more voxels than 2**53; and
    a 10^6 x 10^6 x 21 stack, and one 2**31 - 1 px high, still planned."""
    root = tmp_path / "refused"
    root.mkdir()
    huge = _metadata_only(root / "huge.zarr", (21, 10**12, 10**12), (21, 64, 64))
    _assert_refused(
        root, huge, r"src '.*huge\.zarr' has length 1000000000000 along axis 'y' .*2\*\*31 - 1"
    )
    voxels = _metadata_only(root / "voxels.zarr", (9, 2**25, 2**25), (9, 64, 64))
    _assert_refused(root, voxels, r"src '.*voxels\.zarr' has shape .* at most 2\*\*53 ")
    for shape, chunks in (
        ((21, 10**6, 10**6), (21, 1024, 1024)),
        ((2, 2**31 - 1, 2**21), (2, 64, 64)),
    ):
        ok = _metadata_only(tmp_path / f"{shape[1]}.zarr", shape, chunks)
        res = _cli("info", ok, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert f"shape:              {shape}" in res.stdout and "strip:" in res.stdout


@pytest.mark.parametrize("where", ["chunk_grid", "zarr v2", "sharding"])
def test_cli_refuses_zero_chunks_when_opening(tmp_path, where):
    """A zero chunk used to fail only while reading (exit 1, a dst left behind)."""
    src = tmp_path / "zero.zarr"
    if where == "zarr v2":
        zarr.create_array(str(src), shape=(4, 40, 40), chunks=(4, 16, 16), dtype="uint16",
                          zarr_format=2, attributes={"_ARRAY_DIMENSIONS": list("zyx")})  # fmt: skip
        zarr.open_array(str(src), mode="r+")[:] = 7
        name, key, chunk = ".zarray", ("chunks",), [4, 0, 16]
    else:
        shards = (4, 32, 32) if where == "sharding" else None
        _metadata_only(src, (4, 40, 40), (4, 16, 16), shards=shards)
        zarr.open_array(str(src), mode="r+")[:] = 7
        if where == "sharding":
            name, key, chunk = (
                "zarr.json",
                ("codecs", 0, "configuration", "chunk_shape"),
                [4, 16, 0],
            )
        else:
            name, key, chunk = (
                "zarr.json",
                ("chunk_grid", "configuration", "chunk_shape"),
                [4, 0, 16],
            )
    meta = json.loads((src / name).read_text())
    node = meta
    for k in key[:-1]:
        node = node[k]
    node[key[-1]] = chunk
    (src / name).write_text(json.dumps(meta))
    pattern = (
        rf"src '.*zero\.zarr': {re.escape(name)} gives .*chunk shape.* {re.escape(str(chunk))}"
    )
    _assert_refused(
        tmp_path, src, pattern, commands=("fuse",) if where == "zarr v2" else ("fuse", "info")
    )


@pytest.mark.parametrize(
    ("kind", "make", "exc", "says"),
    [
        (
            "numpy",
            lambda np: np.zeros((0, 16, 16), "uint16"),
            ValueError,
            "length 0 along axis 'z'",
        ),
        ("dask", lambda np: np.zeros((0, 16, 16), "uint16"), ValueError, "length 0 along axis 'z'"),
        ("numpy", lambda np: np.zeros((5, 16, 16), bool), TypeError, "has dtype bool"),
        ("numpy", lambda np: np.zeros((5, 16, 16), "complex64"), TypeError, "has dtype complex64"),
        ("numpy", lambda np: np.zeros((5, 16, 16), "U5"), TypeError, "has dtype <U5"),
        ("numpy", lambda np: np.zeros((5, 16, 16), object), TypeError, "has dtype object"),
    ],
)
def test_an_in_memory_array_is_refused_as_a_stored_one_would_be(tmp_path, kind, make, exc, says):
    """An in-memory array skipped the checks of stored sources: an empty z axis wrote a
    complete image of zeros (depth_map=True: a raw IndexError), a bool array a bool image,
    complex, string or object arrays numba's or zarr's errors (an adversarial run)."""
    import numpy as np

    from fstack_dask import fuse_zarr

    data = make(np)
    if kind == "dask":
        import dask.array as da

        data = da.from_array(data)
    for depth_map in (False, True):
        with pytest.raises(exc, match=f"src \\({kind} array .*{re.escape(says)}"):
            fuse_zarr(data, tmp_path / "out.zarr", axes="zyx", depth_map=depth_map,
                      progress=False)  # fmt: skip
        assert not (tmp_path / "out.zarr").exists()


def test_a_chunk_larger_than_memory_per_task_is_refused_before_anything_is_written(tmp_path):
    """A chunk is decoded whole: one of 93 GiB (metadata only) was planned as "memory per
    process <= 2 x 256 MiB" and failed at run time with a MemoryError, exit 1; whole-plane
    chunks held 482 MiB for a budget of 16 (adversarial runs). Refused, naming what to give,
    and what it names is enough."""
    import numpy as np

    from fstack_dask import fuse_zarr

    meta_only = tmp_path / "huge.zarr"
    zarr.open_array(str(meta_only), mode="w", shape=(5, 64, 64), dtype="u2", chunks=(5, 64, 64))
    meta = json.loads((meta_only / "zarr.json").read_text())
    meta["shape"] = [5, 10**5, 10**5]
    meta["chunk_grid"]["configuration"]["chunk_shape"] = [5, 10**5, 10**5]
    (meta_only / "zarr.json").write_text(json.dumps(meta))
    for command in ("info", "fuse"):
        argv = [sys.executable, "-m", "fstack_dask", command, str(meta_only), "--axes", "zyx"]
        if command == "fuse":
            argv += [str(tmp_path / "out.zarr"), "--no-progress"]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode == 2 and "93.13 GiB decoded" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.zarr").exists()

    planes = np.random.default_rng(0).integers(0, 999, (21, 256, 256), dtype="uint16")
    src = tmp_path / "planes.zarr"
    zarr.create_array(str(src), data=planes, chunks=(1, 256, 256), dimension_names=list("zyx"))
    with pytest.raises(ValueError, match=r"give memory_per_task=(\d+)MiB") as refused:
        fuse_zarr(src, tmp_path / "out.zarr", memory_per_task="1MiB", progress=False)
    enough = re.search(r"memory_per_task=(\d+)MiB", str(refused.value))[1]
    assert not (tmp_path / "out.zarr").exists()
    fuse_zarr(src, tmp_path / "out.zarr", memory_per_task=f"{enough}MiB", progress=False)


def test_a_chunk_of_several_time_points_counts_them_all(tmp_path):
    """A chunk spanning 8 time points is decoded with all 8: the check counted one (a
    ninth adversarial run, reading the code)."""
    import numpy as np

    from fstack_dask import fuse_zarr

    data = np.random.default_rng(1).integers(0, 999, (8, 5, 128, 128), dtype="uint16")
    src = tmp_path / "t.zarr"
    zarr.create_array(str(src), data=data, chunks=(8, 5, 128, 128), dimension_names=list("tzyx"))
    with pytest.raises(ValueError, match=r"1.25 MiB decoded.*give memory_per_task=2MiB"):
        fuse_zarr(src, tmp_path / "out.zarr", memory_per_task="1MiB", progress=False)
    out = fuse_zarr(src, tmp_path / "out.zarr", memory_per_task="2MiB", progress=False)
    assert out["0"].shape == (8, 128, 128)


def test_a_dask_arrays_chunk_larger_than_memory_per_task_is_refused(tmp_path):
    """Each read of a dask array computes its chunks whole: one chunk of 21 x 4096^2 held
    2.9 GiB at a budget of 128 MiB, where the same store given as a path was refused (an
    adversarial run). Refused the same, and fused once rechunked."""
    import dask.array as da
    import numpy as np

    from fstack_dask import focus_stack, fuse_zarr

    data = np.random.default_rng(1).integers(0, 999, (7, 300, 300), dtype="uint16")
    x = da.from_array(data, chunks=(7, 300, 300))
    dst = tmp_path / "out.zarr"
    expected = r"chunks of src \(dask array .* memory_per_task \(1.00 MiB\).*the files the array"
    with pytest.raises(ValueError, match=expected):
        fuse_zarr(x, dst, axes="zyx", memory_per_task="1MiB", progress=False)
    assert not dst.exists()
    out = fuse_zarr(x.rechunk((7, 100, 100)), dst, axes="zyx", memory_per_task="1MiB",
                    progress=False)  # fmt: skip
    np.testing.assert_array_equal(out["0"][...], focus_stack(np.moveaxis(data, 0, -1)))


def test_a_unit_too_large_for_a_task_is_split_by_an_exact_divisor():
    """A 2048 px unit was split in 3 (683 px blocks), which halo exchange cannot tile by
    cells: the unit cache decoded 5-7 x the stored bytes (an adversarial run). Split in 4."""
    from fstack_dask._runs.waves import cells

    block = _choose_block(4096, 4096, 2048, 2048, 13, lambda b: max(b) <= 700)
    assert block == (512, 512)
    layout = Layout("zyx", (21, 4096, 4096), False)
    plan, _ = make_plan(layout, unit_shape={"z": 21, "y": 2048, "x": 2048}, halo=13, workers=2,
                        memory_per_task=2**30, task_bytes=lambda b: 2**30 * max(b) // 800,
                        unit_bytes=21 * 2048 * 2048 * 2)  # fmt: skip
    assert plan.block == (512, 512) and cells(plan, (2048, 2048)).block == (2048, 2048)
    # no exact divisor within twice the first that fits: the first, as before
    assert _choose_block(4096, 4096, 2047, 2047, 13, lambda b: max(b) <= 700) == (683, 683)
