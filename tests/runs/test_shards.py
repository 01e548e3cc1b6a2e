"""A sharded source read by its chunks (issue 21): blocks smaller than a shard decode only
their own chunks, so halo exchange holds chunk-sized cores and fuses in wide waves; each
run reads by shards or by their chunks, whichever decodes less on its workers."""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys

import dask
import numpy as np
import pytest
import zarr

from fstack_dask import focus_stack, fuse_zarr, synthetic_stack
from fstack_dask._algorithm.block import block_memory
from fstack_dask._params import overlap_depth
from fstack_dask._runs.fusion import plan_fusion
from fstack_dask._runs.reading import read_by
from fstack_dask._sources.open import Reopen

HALO = overlap_depth(9)
PLANES, CHUNK, SHARD = 5, 32, 128
SHARD_BYTES = PLANES * SHARD * SHARD * 2


def _sharded(tmp_path, shape=(2 * SHARD, 2 * SHARD)):
    data = np.moveaxis(synthetic_stack(shape, PLANES, seed=6, noise=0.02).stack, -1, 0)
    src = tmp_path / "in.zarr"
    zarr.create_array(str(src), data=data, chunks=(PLANES, CHUNK, CHUNK),
                      shards=(PLANES, SHARD, SHARD), dimension_names=list("zyx"))  # fmt: skip
    return src, data


def _memory(shards: float) -> int:
    """A task's block of one chunk, and room for ``shards`` decoded shards beside it."""
    return int(block_memory((CHUNK + 2 * HALO,) * 2, PLANES, 1, 2, False) + shards * SHARD_BYTES)


def _decoded(caplog) -> int:
    (report,) = [r.fstack_report for r in caplog.records if hasattr(r, "fstack_report")]
    return report.decoded_bytes


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_blocks_smaller_than_a_shard_decode_only_their_chunks(tmp_path, caplog, scheduler):
    """2 x 2 shards of 4 x 4 chunks, blocks of one chunk, memory for 1.5 decoded shards
    beside each of 2 tasks. Read by shards (as before), the waves were one shard wide and
    decoded the column of shards beside each again: 1.5 x the image. Read by chunks each
    chunk is decoded once. A corrupt shard spoils the blocks that read it and the error names
    its file; a resume with more memory reads by whole shards, with the same bits."""
    src, data = _sharded(tmp_path)
    want = focus_stack(np.moveaxis(data, 0, -1))
    memory = _memory(1.5)
    fusion = plan_fusion(src, chunks=CHUNK, memory_per_task=memory, levels=0)
    assert read_by(fusion, 2).source.by_inner_chunks
    assert read_by(fusion, 2).source.read_shape == (PLANES, CHUNK, CHUNK)
    caplog.set_level(logging.DEBUG, logger="fstack_dask._runs.schedulers")
    run = dict(chunks=CHUNK, scheduler=scheduler, progress=False, levels=0)
    with dask.config.set(num_workers=2):
        out = fuse_zarr(src, tmp_path / "whole.zarr", memory_per_task=memory, **run)
    np.testing.assert_array_equal(out["0"][...], want, strict=True)
    assert _decoded(caplog) == data.nbytes  # 1.5 x read by shards

    shard = src / "c" / "0" / "1" / "0"
    good = shard.read_bytes()
    shard.write_bytes(b"not zstd" * 8)
    dst = tmp_path / "out.zarr"
    with dask.config.set(num_workers=2), pytest.raises(RuntimeError, match="c/0/1/0"):
        fuse_zarr(src, dst, memory_per_task=memory, **run)
    done = {tuple(map(int, p.name.split("_"))) for p in (dst / ".fstack_dask" / "done").iterdir()}
    # the shard's 4 x 4 blocks, and their neighbours whose halos reach into it
    spoilt = {(j, i) for j in range(3, 8) for i in range(5)}
    assert done == {(j, i) for j in range(8) for i in range(8)} - spoilt
    shard.write_bytes(good)
    more = _memory(8)
    assert not read_by(
        plan_fusion(src, chunks=CHUNK, memory_per_task=more), 2
    ).source.by_inner_chunks
    with dask.config.set(num_workers=2):
        out = fuse_zarr(src, dst, memory_per_task=more, resume=True, **run)
    np.testing.assert_array_equal(out["0"][...], want, strict=True)


def test_whole_shards_are_read_as_shards_where_a_task_holds_one(tmp_path):
    """The automatic block: whole shards where one fits a task's memory (read by shards,
    each once, in fewer requests), else whole chunks of a shard, read by chunks; a block
    only a little wider than its halo reads by shards where chunks would not decode less."""
    src, _ = _sharded(tmp_path)
    large = plan_fusion(src, memory_per_task=2**30)
    assert large.block[0] % SHARD == 0 and not read_by(large, 2).source.by_inner_chunks
    small = plan_fusion(src, memory_per_task=_memory(1.5))
    assert small.block == (CHUNK, CHUNK) and read_by(small, 2).source.by_inner_chunks
    # one task with room for 7 shards: either way each unit is decoded once (by shards in
    # one wave of 2 columns; by chunks the bands of 13 px on 32-px cores take more room)
    assert not read_by(
        plan_fusion(src, chunks=CHUNK, memory_per_task=_memory(7)), 1
    ).source.by_inner_chunks


def test_a_worker_reopens_the_source_reading_as_the_run_planned(tmp_path):
    src, _ = _sharded(tmp_path)
    for by_chunks in (False, True):
        reopened = pickle.loads(pickle.dumps(Reopen(str(src), None, 0, None, by_chunks)))()
        assert reopened.unit_shape == (PLANES, SHARD, SHARD)  # what a file holds, for resumes
        expected = (PLANES, CHUNK, CHUNK) if by_chunks else (PLANES, SHARD, SHARD)
        assert reopened.read_shape == expected


def test_info_says_how_a_sharded_source_is_read(tmp_path):
    src, _ = _sharded(tmp_path)

    def one_cpu() -> None:  # info plans for the CPUs it may use: the same on any machine
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    def info(memory: int) -> dict[str, str]:
        text = subprocess.run(
            [sys.executable, "-m", "fstack_dask", "info", str(src), "--memory-per-task",
             str(memory)], check=True, capture_output=True, text=True, preexec_fn=one_cpu,
        ).stdout  # fmt: skip
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    by_chunks = info(_memory(1.5))
    assert by_chunks["source chunks"].strip() == (
        f"({PLANES}, {CHUNK}, {CHUNK}) in shards of ({PLANES}, {SHARD}, {SHARD}) (read by chunks)"
    )
    assert "by whole shards" in info(2**30)["source chunks"]


def test_a_sharded_store_behind_fsspec_is_read_by_its_chunks(tmp_path, caplog):
    """Byte-range reads of a shard's chunks through an fsspec store (``memory://``, as
    ``s3://`` goes): the same bits as the whole image, each chunk decoded once."""
    import uuid

    data = np.moveaxis(synthetic_stack((SHARD, 2 * SHARD), PLANES, seed=7).stack, -1, 0)
    url = f"memory://fstack-shards-{uuid.uuid4().hex}/in.zarr"
    zarr.create_array(url, data=data, chunks=(PLANES, CHUNK, CHUNK),
                      shards=(PLANES, SHARD, SHARD), dimension_names=list("zyx"))  # fmt: skip
    caplog.set_level(logging.DEBUG, logger="fstack_dask._runs.schedulers")
    with dask.config.set(num_workers=2):
        out = fuse_zarr(url, tmp_path / "out.zarr", chunks=CHUNK, memory_per_task=_memory(1.5),
                        progress=False, levels=0)  # fmt: skip
    np.testing.assert_array_equal(out["0"][...], focus_stack(np.moveaxis(data, 0, -1)))
    assert _decoded(caplog) == data.nbytes
