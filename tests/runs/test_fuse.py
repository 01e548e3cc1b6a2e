"""Chunked fusion: lazy, and bit-identical to the whole image for any chunking and scheduler."""

from __future__ import annotations

import tracemalloc

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from distributed import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import chunks_for, edge_stacks, stacks

from fstack_dask import focus_stack, fuse, overlap_depth, synthetic_stack


def _fail_scheduler(*args, **kwargs):
    raise AssertionError("building the graph must not compute anything")


@pytest.fixture(scope="module")
def stack():
    # 530 rows so that 513-pixel chunks leave an uneven 17-pixel last chunk.
    return synthetic_stack((530, 90), 7, dtype="uint16", noise=0.03, seed=42).stack


@pytest.fixture(scope="module")
def expected(stack):
    return focus_stack(stack)


def test_building_the_graph_computes_nothing(stack):
    def exploding(block):
        raise AssertionError("a block was computed")

    lazy_input = da.from_array(stack, chunks=(64, 64, -1)).map_blocks(exploding, dtype=stack.dtype)
    with dask.config.set(scheduler=_fail_scheduler):
        out = fuse(lazy_input, axes="yxz", return_maps=True)
        assert isinstance(out.image, da.Array)
        assert out.image.shape == stack.shape[:2]
        assert out.image.dtype == stack.dtype
        assert out.depth.dtype == np.float32 and out.selectivity.dtype == np.float32
    with (
        pytest.raises(AssertionError, match="must not compute"),
        dask.config.set(scheduler=_fail_scheduler),
    ):
        out.image.compute()  # the guard itself works


@pytest.mark.parametrize("chunks", [None, 7, 64, 100, 513, (513, 7), (100, 45)])
def test_chunkings_are_bit_identical(stack, expected, chunks):
    dstack = da.from_array(stack, chunks=(-1, -1, -1))
    out = fuse(dstack, axes="yxz", chunks=chunks)
    if chunks is not None:
        cy, cx = (chunks, chunks) if np.ndim(chunks) == 0 else chunks
        assert out.chunks[0][0] == min(cy, stack.shape[0])
        assert out.chunks[1][0] == min(cx, stack.shape[1])
    assert np.array_equal(out.compute(scheduler="threads"), expected)


def test_input_chunks_are_kept_when_not_given(stack, expected):
    dstack = da.from_array(stack, chunks=(100, 30, 3))  # z split too: fuse joins it
    out = fuse(dstack, axes="yxz")
    assert out.chunks == dstack.chunks[:2]
    assert np.array_equal(out.compute(), expected)


def test_chunks_smaller_than_the_halo(stack, expected):
    depth = overlap_depth(9)
    out = fuse(stack, axes="yxz", chunks=(3, 5))
    assert 3 < depth and out.chunks[0][0] == 3  # output keeps the requested chunks
    assert np.array_equal(out.compute(), expected)


@pytest.mark.parametrize("scheduler", ["synchronous", "threads", "processes"])
def test_local_schedulers_are_bit_identical(stack, expected, scheduler):
    out = fuse(stack, axes="yxz", chunks=(100, 64), return_maps=True)
    image, depth, sel = dask.compute(*out, scheduler=scheduler)
    assert np.array_equal(image, expected)
    ref_maps = fuse(stack, axes="yxz", chunks=(530, 90), return_maps=True)
    r_depth, r_sel = dask.compute(ref_maps.depth, ref_maps.selectivity, scheduler="sync")
    assert np.array_equal(depth, r_depth, equal_nan=True)
    assert np.array_equal(sel, r_sel, equal_nan=True)


def test_distributed_local_cluster_with_processes(stack, expected, local_cluster):
    with Client(local_cluster) as client:
        out = fuse(stack, axes="yxz", chunks=(64, 40))
        assert np.array_equal(client.compute(out).result(), expected)


def test_rgb_and_independent_channels():
    rgb = synthetic_stack((70, 60), 7, rgb=True, dtype="uint8", seed=3).stack  # y x z c
    out = fuse(rgb, axes="yxzc", chunks=(16, 23))
    assert out.shape == (70, 60, 3)
    assert np.array_equal(out.compute(), focus_stack(rgb))
    czyx = np.moveaxis(rgb, (3, 2), (0, 1))
    indep = fuse(czyx, axes="czyx", channels="independent", chunks=20)
    assert indep.shape == (3, 70, 60)
    expected = np.stack([focus_stack(rgb[..., c]) for c in range(3)])
    assert np.array_equal(indep.compute(), expected)
    shared = fuse(czyx, axes="czyx", channels="rgb", chunks=33).compute()
    assert np.array_equal(shared, np.moveaxis(focus_stack(rgb), -1, 0))


def test_batch_axes_are_fused_independently():
    a = synthetic_stack((40, 30), 6, dtype="uint8", seed=1).stack
    b = synthetic_stack((40, 30), 6, dtype="uint8", seed=2).stack
    tzyx = np.stack([np.moveaxis(a, 2, 0), np.moveaxis(b, 2, 0)])
    out = fuse(tzyx, axes="tzyx", chunks=17)
    assert out.shape == (2, 40, 30)
    assert np.array_equal(out.compute(), np.stack([focus_stack(a), focus_stack(b)]))


def test_maps(stack):
    out = fuse(stack, axes="yxz", return_maps=True, chunks=200)
    depth = out.depth.compute()
    assert np.nanmin(depth) >= 0 and np.nanmax(depth) <= stack.shape[2] - 1
    sel = out.selectivity.compute()
    assert np.isfinite(sel).mean() > 0.9


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data(), stack=stacks(), nhsize=st.integers(1, 11))
def test_property_any_chunking_matches_whole_image(data, stack, nhsize):
    ychunks = data.draw(chunks_for(stack.shape[0]), label="y chunks")
    xchunks = data.draw(chunks_for(stack.shape[1]), label="x chunks")
    dstack = da.from_array(stack, chunks=(ychunks, xchunks, -1))
    out = fuse(dstack, axes="yxz", nhsize=nhsize, return_maps=True)
    assert out.image.chunks == (ychunks, xchunks)
    image, depth, sel = dask.compute(*out, scheduler="sync")
    assert np.array_equal(image, focus_stack(stack, nhsize))
    whole = fuse(stack, axes="yxz", nhsize=nhsize, return_maps=True, chunks=stack.shape[:2])
    w_depth, w_sel = dask.compute(whole.depth, whole.selectivity, scheduler="sync")
    assert np.array_equal(depth, w_depth, equal_nan=True)
    assert np.array_equal(sel, w_sel, equal_nan=True)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data(), stack=edge_stacks(), nhsize=st.sampled_from([1, 2, 3, 9]))
def test_property_edge_dtypes_any_chunking_matches_whole_image(data, stack, nhsize):
    """int8, negative int16, 32- and 64-bit integers near their limits, float16, float32 near
    3e38 and 1e-38, float64 and big-endian samples: the same bits for any chunking as the
    whole image in memory, the maps too (g57's sweep over these found none differ)."""
    ychunks = data.draw(chunks_for(stack.shape[0]), label="y chunks")
    xchunks = data.draw(chunks_for(stack.shape[1]), label="x chunks")
    dstack = da.from_array(stack, chunks=(ychunks, xchunks, -1))
    out = fuse(dstack, axes="yxz", nhsize=nhsize, return_maps=True)
    image, depth, sel = dask.compute(*out, scheduler="sync")
    want = focus_stack(stack, nhsize)
    assert image.dtype == want.dtype and np.array_equal(image, want)
    whole = fuse(stack, axes="yxz", nhsize=nhsize, return_maps=True, chunks=stack.shape[:2])
    w_depth, w_sel = dask.compute(whole.depth, whole.selectivity, scheduler="sync")
    assert np.array_equal(depth, w_depth, equal_nan=True)
    assert np.array_equal(sel, w_sel, equal_nan=True)


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"axes": "zyxq"}, ValueError, "axes"),
        ({"axes": "zzx"}, ValueError, "axes"),
        ({"axes": "cyx"}, ValueError, "axes"),
        ({"axes": 3}, TypeError, "axes"),
        ({"channels": "rgb"}, ValueError, "channels"),
        ({"channels": "colour"}, ValueError, "channels"),
        ({"nhsize": 0}, ValueError, "nhsize"),
        ({"alpha": 2}, ValueError, "alpha"),
        ({"focus": [1, 2]}, ValueError, "focus"),
        # the rules of fuse_zarr (a helper's run, 2026-12-05: ZeroDivisionError, unpacking
        # errors, 1-px tasks from True, a comparison error for "1GiB", "no" taken as True)
        ({"chunks": 0}, ValueError, "chunks"),
        ({"chunks": (0, 64)}, ValueError, "chunks"),
        # not an int nor a (y, x) pair: a TypeError since aee14b7, as fuse_zarr's
        ({"chunks": (64, 64, 64)}, TypeError, "chunks"),
        ({"chunks": True}, TypeError, "chunks"),
        ({"chunks": "1KiB"}, TypeError, "chunks"),
        ({"memory_per_task": "lots"}, ValueError, "memory_per_task"),
        ({"return_maps": "no"}, TypeError, "return_maps"),
    ],
)
def test_fuse_bad_arguments(kwargs, exc, name):
    stack = np.zeros((5, 8, 8), np.uint8)
    args = {"axes": "zyx", **kwargs}
    with pytest.raises(exc, match=name):
        fuse(stack, **args)


def test_fuse_takes_chunks_as_a_numpy_array():
    """Taken before fuse() checked its chunks (a review, 2026-12-05): still taken."""
    stack = synthetic_stack((64, 48), 5, dtype="uint16", seed=2).stack
    lazy = fuse(stack, axes="yxz", chunks=np.asarray([32, 24]))
    assert lazy.chunks == ((32, 32), (24, 24))
    assert np.array_equal(lazy.compute(), focus_stack(stack))


def test_fuse_takes_memory_per_task_as_fuse_zarr_does():
    stack = synthetic_stack((256, 200), 5, dtype="uint16", seed=1).stack
    lazy = fuse(stack, axes="yxz", memory_per_task="2MiB")
    assert len(lazy.chunks[0]) > 1  # a budget that small cuts the image
    assert np.array_equal(lazy.compute(), focus_stack(stack))


def test_fuse_plans_its_chunks_for_the_nhsize_given(monkeypatch):
    """The compiled engine's row buffers grow with nhsize; the lazy fuse's planner counted
    them for nhsize 9: at nhsize 301 and 200 MiB a task, blocks of 741 px that the model
    counts at 224 MB. Never computed: a stack of zeros 4 such blocks wide."""
    from fstack_dask._algorithm import block

    if block.blend_compiled is None:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(block, "ENGINE", "compiled")
    budget, nhsize = 200 << 20, 301
    stack = da.zeros((2964, 2964, 5), dtype="uint8", chunks=(2964, 2964, 5))
    lazy = fuse(stack, axes="yxz", nhsize=nhsize, sth=13, memory_per_task=budget)
    side, halo = lazy.chunks[0][0], overlap_depth(nhsize)
    counted = block.block_memory((side + 2 * halo,) * 2, 5, 1, 1, False, nhsize=nhsize,
                                 engine="compiled")  # fmt: skip
    assert counted <= budget, (side, counted)


def _kept_per_block(rows: int) -> tuple[float, int]:
    """Bytes fuse() keeps for its graph (traced) and its blocks, for a 7-plane stack of
    ``rows`` 32-px block rows (nothing is computed: the input is dask's zeros)."""
    lazy_input = da.zeros((7, 32 * rows, 128), dtype="uint16", chunks=(7, 32, 32))
    fuse(lazy_input[:, :64, :64], chunks=32)  # imports and caches, not counted
    tracemalloc.start()
    try:
        out = fuse(lazy_input, chunks=32, return_maps=True)
        kept = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return kept, out.image.npartitions


def test_building_the_graph_keeps_a_few_kilobytes_a_block():
    """The image minimums (5 planes or more) went to map_overlap as a keyword, which dask
    materialised and optimised per block: about 50 KB and 10-20 ms a block before anything
    ran (10^5 blocks: half an hour). Counted here in bytes: a few KB a block now."""
    small, n_small = _kept_per_block(4)
    large, n_large = _kept_per_block(36)
    per_block = (large - small) / (n_large - n_small)
    assert per_block < 15_000, f"{per_block:.0f} bytes a block"


def test_batch_images_are_filled_with_their_own_smallest_selectivity():
    """The lazy graph's minimums, one per image of a batch axis, each broadcast over its own
    image's blocks: images whose undefined S need different fills."""
    images = []
    for seed in (2, 5):
        yxz = synthetic_stack((48, 40), 7, dtype="uint8", noise=0.01, seed=seed).stack.copy()
        yxz[..., 0] = 0  # a dark frame: S undefined where the fit reads it
        images.append(yxz)
    images[1][..., 1] = 255
    tzyx = np.stack([np.moveaxis(s, 2, 0) for s in images])
    out = fuse(tzyx, axes="tzyx", chunks=(16, 13), return_maps=True)
    for t, yxz in enumerate(images):
        whole = fuse(tzyx[t], axes="zyx", chunks=(48, 40), return_maps=True)
        np.testing.assert_array_equal(out.image[t].compute(), focus_stack(yxz))
        np.testing.assert_array_equal(out.selectivity[t].compute(), whole.selectivity.compute())


def test_the_same_fusion_twice_is_the_same_graph():
    """bind() names its copy of the input by a random seed unless given one: fuse() of the same
    input twice (5 planes or more) made two graphs, computed twice in one dask.compute, and no
    name of dask's caches matched across calls."""
    x = da.from_array(np.random.default_rng(0).random((6, 64, 64)), chunks=(6, 32, 32))
    first, second = fuse(x, nhsize=3, chunks=32), fuse(x, nhsize=3, chunks=32)
    assert first.name == second.name
    assert fuse(x, nhsize=5, chunks=32).name != first.name


def test_the_scheduler_holds_no_halo_strip_that_keeps_its_whole_chunk(tmp_path):
    """dask's overlap cut each chunk's halo strips for its neighbours as views: a strip of
    13 rows kept its whole chunk alive until the neighbour's block ran, about three rows of
    chunks at once (21 x 4096^2 uint8, 512-px blocks: 152 MiB held by the scheduler, 64 MiB
    at 2048^2). The strips are copies now; what the scheduler holds after each task is
    checked here, never timed: no array in its cache is a view of a much larger one."""
    from dask.callbacks import Callback

    yxz = synthetic_stack((64, 192), 7, dtype="uint8", noise=0.05, seed=4).stack
    src = zarr.create_array(tmp_path / "src.zarr", shape=(7, 64, 192), chunks=(7, 32, 32),
                            dtype="uint8")  # fmt: skip
    src[:] = np.moveaxis(yxz, 2, 0)
    worst: list[tuple[int, int]] = [(0, 1)]

    class Held(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            for value in state["cache"].values():
                if isinstance(value, np.ndarray) and isinstance(value.base, np.ndarray):
                    worst.append((value.base.nbytes, max(value.nbytes, 1)))

    with Held(), dask.config.set(scheduler="threads", num_workers=2):
        image = fuse(da.from_zarr(src), chunks=32).compute()
    np.testing.assert_array_equal(image, focus_stack(yxz))
    base, own = max(worst, key=lambda pair: pair[0] / pair[1])
    assert base <= 2 * own, f"a held view of {own} bytes keeps {base} bytes alive"


def test_a_dataarray_is_fused_along_the_axis_its_dims_name():
    """fuse() took axes="zyx" whatever a DataArray's dims said: dims (y, x, z) fused along y,
    a (20, 3) image, exit 0, where fuse_zarr read the dims (g59's leftover). Its dims name its
    axes, as for fuse_zarr and auto_parameters_for; an axes that contradicts them is refused."""
    from fstack_dask import auto_parameters_for

    xr = pytest.importorskip("xarray")
    stack = synthetic_stack((40, 36), 5, seed=1).stack  # (y, x, z)
    named = xr.DataArray(stack, dims=("y", "x", "depth"))
    expected = focus_stack(stack)
    np.testing.assert_array_equal(fuse(named, chunks=16).compute(), expected)
    np.testing.assert_array_equal(fuse(named, axes="yxz").compute(), expected)
    with pytest.raises(ValueError, match=r"^axes 'zyx' contradicts the xarray dims \('y', 'x'"):
        fuse(named, axes="zyx")
    assert auto_parameters_for(named) == auto_parameters_for(stack, axes="yxz")
    unnamed = xr.DataArray(np.moveaxis(stack, -1, 0))  # dims dim_0 ..: as before, zyx
    np.testing.assert_array_equal(fuse(unnamed, axes="zyx").compute(), expected)


def test_a_dataarray_whose_dims_xarray_named_is_fused_as_any_array():
    """A dask-backed DataArray made without dims (xarray names them dim_0, ...) was fused by
    fuse() with its default axes 'zyx'; f46fe34 refused it, "axes is required" (a review): such
    dims name no axis, and axes= decides, default 'zyx', as for any array."""
    from fstack_dask import auto_parameters_for

    xr = pytest.importorskip("xarray")
    zyx = np.moveaxis(synthetic_stack((40, 36), 5, seed=1).stack, -1, 0)
    unnamed = xr.DataArray(da.from_array(zyx, chunks=(5, 20, 20)))
    np.testing.assert_array_equal(fuse(unnamed).compute(), fuse(zyx).compute())
    assert auto_parameters_for(unnamed) == auto_parameters_for(zyx)
