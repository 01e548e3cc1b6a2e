"""The lazy graph in bands of block columns (``fstack_dask._runs.lazy_bands``): the same bits as
one graph over the whole image, memory held by the scheduler bounded by a band rather than by
the image's width, and each chunk decoded about once a pass."""

from __future__ import annotations

import pickle
import threading

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from dask.callbacks import Callback

from fstack_dask import focus_stack, fuse, synthetic_stack
from fstack_dask._runs import lazy_bands


def _counted_reads():
    """A count of the chunks read (tasks on two threads) and the map that counts them."""
    reads, lock = [0], threading.Lock()

    def counted(block):
        with lock:
            reads[0] += 1
        return block

    return reads, counted


def _zyx(shape, planes, dtype="uint8", seed=4):
    yxz = synthetic_stack(shape, planes, dtype=dtype, noise=0.05, seed=seed).stack
    return np.ascontiguousarray(np.moveaxis(yxz, 2, 0))


@pytest.mark.parametrize("chunks", [32, (48, 40), (100, 64)])
def test_bands_give_the_bits_of_one_graph(monkeypatch, chunks):
    """Bands 64 px wide (2 block columns or more) against one overlap over the whole image:
    image and both maps, a dark frame (undefined S filled), RGB and a batch axis."""
    gray = _zyx((96, 300), 7)
    gray[0, :20] = 0
    rgb = np.stack([_zyx((64, 200), 6, seed=s) for s in (1, 2, 3)], -1)
    batch = np.stack([_zyx((64, 200), 5, "uint16", seed=s) for s in (5, 6)])
    for stack, axes in ((gray, "zyx"), (rgb, "zyxc"), (batch, "tzyx")):
        monkeypatch.setattr(lazy_bands, "BAND_WIDTH", 10**9)
        whole = dask.compute(*fuse(stack, axes=axes, chunks=chunks, return_maps=True))
        monkeypatch.setattr(lazy_bands, "BAND_WIDTH", 64)
        banded = fuse(stack, axes=axes, chunks=chunks, return_maps=True)
        for got, want in zip(dask.compute(*banded), whole, strict=True):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(
        banded.image[0].compute(), focus_stack(np.moveaxis(batch[0], 0, 2))
    )


def test_tiles_give_the_bits_of_fuse_zarr(monkeypatch, tmp_path):
    """Tiles 2 blocks high and wide (5 rows of tiles, 2 columns, uneven last ones), against
    fuse_zarr's image and maps of the same Zarr source: a dark frame (undefined S filled) and
    a patch without contrast in any plane."""
    from fstack_dask import fuse_zarr

    stack = _zyx((310, 96), 7, "uint16")
    stack[0, 100:200] = 0
    stack[:, 20:60, 10:50] = 1000
    src = zarr.create_array(tmp_path / "src.zarr", shape=stack.shape, chunks=(7, 64, 64),
                            dtype=stack.dtype)  # fmt: skip
    src[:] = stack
    want = fuse_zarr(tmp_path / "src.zarr", tmp_path / "dst.zarr", axes="zyx", chunks=32,
                     depth_map=True, selectivity_map=True, levels=0, progress=False)  # fmt: skip
    monkeypatch.setattr(lazy_bands, "BAND_WIDTH", 64)
    got = fuse(da.from_zarr(src), chunks=32, return_maps=True)
    assert got.image.chunks == ((32,) * 9 + (22,), (32,) * 3)
    for lazy, key in zip(got, ("0", "depth/0", "selectivity/0"), strict=True):
        np.testing.assert_array_equal(lazy.compute(), want[key][...], strict=True)


def test_tiles_give_the_bits_of_one_graph(monkeypatch):
    """Tiles 2 blocks high and wide of an RGB stack and of a stack with a batch axis, chunked
    so that a tile may be less high than the image (a NumPy array is one chunk: bands)."""
    rgb = np.stack([_zyx((200, 64), 6, seed=s) for s in (1, 2, 3)], -1)
    batch = np.stack([_zyx((200, 64), 5, "uint16", seed=s) for s in (5, 6)])
    for stack, axes in ((rgb, "zyxc"), (batch, "tzyx")):
        chunked = da.from_array(stack, chunks=stack.shape[:-2] + (32, 32) if axes == "tzyx"
                                else stack.shape[:-3] + (32, 32, 3))  # fmt: skip
        monkeypatch.setattr(lazy_bands, "BAND_WIDTH", 10**9)
        whole = dask.compute(*fuse(chunked, axes=axes, chunks=32, return_maps=True))
        monkeypatch.setattr(lazy_bands, "BAND_WIDTH", 64)
        tiled = fuse(chunked, axes=axes, chunks=32, return_maps=True)
        for got, want in zip(dask.compute(*tiled), whole, strict=True):
            np.testing.assert_array_equal(got, want)


def _held_and_reads(tmp_path, width: int, height: int = 128) -> tuple[int, int]:
    """Peak bytes of NumPy data the threaded scheduler holds (a view counted by its base,
    once) and chunks read, writing fuse() of a 7 x ``height`` x ``width`` Zarr stack in 32-px
    chunks."""
    stack = _zyx((height, width), 7)
    src = zarr.create_array(tmp_path / f"src{height}x{width}.zarr", shape=stack.shape,
                            chunks=(7, 32, 32), dtype="uint8")  # fmt: skip
    src[:] = stack
    peak, reads, lock = [0], [0], threading.Lock()

    class Held(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            bases = {}
            for value in list(state["cache"].values()):
                if isinstance(value, np.ndarray):
                    base = value.base if isinstance(value.base, np.ndarray) else value
                    bases[id(base)] = base.nbytes
            peak[0] = max(peak[0], sum(bases.values()))

    def counted(block):
        with lock:  # tasks on two threads
            reads[0] += 1
        return block

    lazy = da.from_zarr(src).map_blocks(counted, dtype=src.dtype)
    with Held(), dask.config.set(scheduler="threads", num_workers=2):
        fuse(lazy, chunks=32).to_zarr(tmp_path / f"dst{height}x{width}.zarr")
    return peak[0], reads[0]


@pytest.mark.skipif(not lazy_bands.BANDS, reason="this dask has no task spec: one overlap")
def test_the_scheduler_holds_a_band_not_a_row_of_the_image(monkeypatch, tmp_path):
    """One overlap over the image held, in dask's row-by-row order, the input chunks read for
    the halo of the row above until their own block ran: a row of chunks, growing with the
    image's width (21 x 2048 x 16384 uint16 in 512-px blocks: 449 MiB held against 91-124
    at 2048 wide, benchmarks/RESULTS.md). In bands 4 block columns wide, 32 columns hold about
    what 4 do (1.2 to 1.6 times here, 4.3 to 5.7 times before). Counted in bytes held, never
    timed. Each chunk is read once a pass (two passes: the smallest S first), and the halo
    columns beside each band once more, nothing else."""
    monkeypatch.setattr(lazy_bands, "BAND_WIDTH", 128)
    narrow, _ = _held_and_reads(tmp_path, 128)
    wide, reads = _held_and_reads(tmp_path, 1024)
    assert wide <= 2.5 * narrow, f"{wide} bytes held at 1024 px wide, {narrow} at 128"
    rows, columns, bands = 4, 32, 8
    assert reads <= 2 * rows * (columns + 2 * (bands - 1)) + 1, f"{reads} chunk reads"


@pytest.mark.skipif(not lazy_bands.BANDS, reason="this dask has no task spec: one overlap")
def test_the_scheduler_holds_a_tile_not_a_column_of_the_image(monkeypatch, tmp_path):
    """Bands as tall as the image held more as it grew taller: a chunk read for the halo of
    the block below it waited for its own block while dask's order went elsewhere (the first
    pass's reduction tree; 21 x 32768 x 2048 uint16 in 512-px blocks: 228 MiB held against
    124 at 2048 rows, benchmarks/RESULTS.md). Here 2048 rows held 2.2 to 2.4 times what 128
    rows did, and a 512 x 512 image 3.0 to 3.8 times. In tiles 4 blocks high and wide: 1.04 to
    1.17 and 1.2 to 1.3 times.
    Counted in bytes held, never timed; each chunk read once a pass, and the halo rows and
    columns beside each tile once more, nothing else."""
    monkeypatch.setattr(lazy_bands, "BAND_WIDTH", 128)
    small, _ = _held_and_reads(tmp_path, 128)
    tall, reads = _held_and_reads(tmp_path, 128, height=2048)
    assert tall <= 1.6 * small, f"{tall} bytes held at 2048 rows, {small} at 128"
    rows, columns, tiles = 64, 4, 16
    assert reads <= 2 * columns * (rows + 2 * (tiles - 1)) + 1, f"{reads} chunk reads"
    square, _ = _held_and_reads(tmp_path, 512, height=512)
    assert square <= 1.8 * small, f"{square} bytes held at 512 x 512, {small} at 128 x 128"


@pytest.mark.skipif(not lazy_bands.BANDS, reason="this dask has no task spec: one overlap")
def test_a_chunk_taller_than_a_tile_is_read_once_a_band(monkeypatch):
    """A tile is never less high than the input's own chunks: a chunk as tall as the image (one
    chunk row, 8 blocks high) would be read again by each of 4 rows of tiles 2 blocks high."""
    monkeypatch.setattr(lazy_bands, "BAND_WIDTH", 64)
    stack = _zyx((256, 320), 6)
    reads, counted = _counted_reads()
    source = da.from_array(stack, chunks=(6, 256, 32)).map_blocks(counted, dtype=stack.dtype)
    image = fuse(source, chunks=32).compute(scheduler="threads")
    np.testing.assert_array_equal(image, focus_stack(np.moveaxis(stack, 0, 2)))
    columns, bands = 10, 5
    assert reads[0] <= 2 * (columns + 2 * (bands - 1)) + 1, f"{reads[0]} chunk reads"


def test_a_stack_normalised_by_its_maximum_is_read_as_often_as_one_graph(monkeypatch):
    """A band's own copy of its input reaches back to the source: for an input whose every
    column depends on the whole image (a global maximum) a copy per band would read the whole
    source again per band; such a graph stays one overlap, read as often as before."""
    stack = _zyx((64, 320), 6)
    reads, counted = _counted_reads()
    source = da.from_array(stack, chunks=(6, 32, 32)).map_blocks(counted, dtype=stack.dtype)
    normalised = source.astype(np.float32) / source.max()
    counts, images = [], []
    for width in (10**9, 64):
        monkeypatch.setattr(lazy_bands, "BAND_WIDTH", width)
        reads[0] = 0
        images.append(fuse(normalised, chunks=32).compute(scheduler="threads"))
        counts.append(reads[0])
    np.testing.assert_array_equal(images[1], images[0])
    assert counts[1] <= counts[0], f"{counts[1]} source reads in bands, {counts[0]} in one graph"


def test_an_input_persisted_on_a_distributed_client(monkeypatch, local_cluster):
    """``client.persist`` leaves Futures in the input's graph, which dask's task spec drops:
    building fuse() of it in bands was a KeyError naming one of its chunks. It stays one
    overlap (a Future's data is the cluster's, not copied per band), with the same bits."""
    from distributed import Client

    monkeypatch.setattr(lazy_bands, "BAND_WIDTH", 64)
    stack = _zyx((64, 200), 7, "uint16")
    want = focus_stack(np.moveaxis(stack, 0, 2))
    with Client(local_cluster) as client:
        persisted = client.persist(da.from_array(stack, chunks=(7, 32, 40)))
        got = fuse(persisted, return_maps=True)
        np.testing.assert_array_equal(got.image.compute(), want)
        assert fuse(persisted).name == fuse(persisted).name  # the same graph twice


@pytest.mark.skipif(not lazy_bands.BANDS, reason="this dask has no task spec: one overlap")
def test_a_batch_axis_adds_no_edge_per_read_per_image(monkeypatch):
    """Each band's reads wait for the image minimums: every read referred to every image's
    minimum, edges growing with the square of a batch axis's length (40 time points: 3 edges
    a task, 160: 9, the threaded run twice as long as one graph's). One task per band waits
    for them, the reads for it: about one edge a task, as one graph has."""
    monkeypatch.setattr(lazy_bands, "BAND_WIDTH", 64)
    one = _zyx((32, 320), 6)
    stack = da.from_array(np.broadcast_to(one, (40, *one.shape)), chunks=(1, 6, 32, 32))
    graph = dict(fuse(stack, axes="tzyx", chunks=32).__dask_graph__())
    edges = sum(len(node.dependencies) for node in lazy_bands.convert_legacy_graph(graph).values())
    assert edges <= 2 * len(graph), f"{edges} edges for {len(graph)} tasks"


@pytest.mark.skipif(not lazy_bands.BANDS, reason="this dask has no task spec: one overlap")
def test_the_graph_has_as_many_layers_for_64_tiles_as_for_4(monkeypatch):
    """A tile was layers of its own (its copy of the input, its overlap, its blocks, its
    crop), each copying its collection's layers: 21 x 100000^2 uint16 in 512-px blocks (625
    tiles) was 5078 layers and fuse() took twice as long as in bands
    (benchmarks/RESULTS.md). The tiles lie side by side in one layer now: the same layers for
    64 tiles as for 4, counted, never timed; built with a scheduler that refuses any compute,
    blocks that raise if run. The same blocks both times (the smallest-S reduction's depth
    follows the blocks)."""

    def exploding(block):
        raise AssertionError("a block was computed")

    stack = da.zeros((7, 512, 512), chunks=(7, 32, 32), dtype="uint8")  # 256 blocks
    layers = []
    for width in (256, 64):
        monkeypatch.setattr(lazy_bands, "BAND_WIDTH", width)
        with dask.config.set(scheduler=_refusing):
            out = fuse(stack.map_blocks(exploding, dtype=stack.dtype), chunks=32,
                       return_maps=True)  # fmt: skip
        layers.append(len(out.image.dask.layers))
    assert layers[1] == layers[0], f"{layers[1]} layers for 64 tiles, {layers[0]} for 4"


def _refusing(*args, **kwargs):
    raise AssertionError("building the graph must not compute")


@pytest.mark.parametrize("width", [64, 10**9])
def test_the_blocks_take_their_index_not_dasks_block_info(monkeypatch, width):
    """dask's ``block_info`` is a dict of five entries built per block when the graph is built
    and carried in each task (246 against 271 MiB peak building and ordering 21 x 16384^2
    uint16 in 512-px blocks, benchmarks/RESULTS.md); the blocks take ``block_id`` and the
    grid's size instead. Checked in the graph's tasks, in tiles and in one graph."""
    monkeypatch.setattr(lazy_bands, "BAND_WIDTH", width)
    stack = da.zeros((7, 256, 256), chunks=(7, 32, 32), dtype="uint8")
    graph = fuse(stack, chunks=32, return_maps=True).image.__dask_graph__()
    tasks = [pickle.dumps(task) for task in dict(graph).values()]
    assert sum(b"fuse_chunk" in task for task in tasks) >= 64
    carrying = sum(b"chunk-location" in task for task in tasks)
    assert not carrying, f"{carrying} tasks carry dask's block_info"
