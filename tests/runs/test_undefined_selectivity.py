"""Undefined selectivity filled with the image's smallest, as the reference fills it, in a
chunked run (``run.fill_undefined``): blocks that need it are fused in a second pass, once
every block's smallest ``S`` is known; the same bits however chunked, on every scheduler,
through a resume, and an output begun before this rule is finished by its own rule.

Real Zarr stores on disk, real worker processes and a real ``distributed.LocalCluster``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from strategies import stacks

from fstack_dask import focus_stack, fuse_zarr, synthetic_stack
from fstack_dask._algorithm.block import fuse_block
from fstack_dask._runs.blocks import FuseJob


def _blank_first_plane(seed=2, shape=(96, 80)):
    """The reference's layout (y, x, z), plane 0 a dark frame: S undefined where the fit
    reads it, the image's smallest S there."""
    stack = synthetic_stack(shape, 7, dtype="uint8", noise=0.01, seed=seed).stack.copy()
    stack[..., 0] = 0
    return stack


def _planes(stack):
    return np.ascontiguousarray(np.moveaxis(stack, 2, 0))


def test_the_blocks_that_need_it_are_fused_again_with_the_images_smallest(tmp_path, caplog):
    stack = _blank_first_plane()
    with caplog.at_level("INFO", logger="fstack_dask"):
        out = fuse_zarr(_planes(stack), tmp_path / "out.zarr", axes="zyx", chunks=24,
                        progress=False, levels=1)  # fmt: skip
    np.testing.assert_array_equal(out["0"][...], focus_stack(stack))
    assert "hold pixels whose selectivity is undefined" in caplog.text
    # the image differs from the local rule's (S = -inf): the fill is what made it
    local = fuse_block(_planes(stack)).image
    assert not np.array_equal(out["0"][...], local)


@pytest.mark.parametrize("scheduler", ["synchronous", "threads", "processes", "cluster"])
def test_every_scheduler_gives_the_same_bits(tmp_path, scheduler, local_cluster_or_none):
    """Two images (a time axis), each with its own smallest S."""
    first = _blank_first_plane(2)
    second = _blank_first_plane(5)[:, :, ::-1].copy()  # blank last plane
    data = np.stack([_planes(first), _planes(second)])
    kind = local_cluster_or_none(scheduler)
    out = fuse_zarr(data, tmp_path / "out.zarr", axes="tzyx", chunks=(32, 40), scheduler=kind,
                    progress=False, levels=0)  # fmt: skip
    got = out["0"][...]
    np.testing.assert_array_equal(got[0], focus_stack(first))
    np.testing.assert_array_equal(got[1], focus_stack(second))


@pytest.fixture()
def local_cluster_or_none(request):
    clients = []

    def scheduler(name):
        if name != "cluster":
            return name
        from distributed import Client

        cluster = request.getfixturevalue("local_cluster")
        clients.append(Client(cluster))
        return clients[-1]

    yield scheduler
    for client in clients:
        client.close()


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data(), stack=stacks(max_side=40), nhsize=st.sampled_from([1, 3, 5, 9]))
def test_any_chunking_of_a_store_matches_the_whole_image(tmp_path_factory, data, stack, nhsize):
    """From a Zarr store whose chunks are the blocks (halo exchange) or not (unit cache)."""
    # fuse_zarr refuses more planes than pixels per plane where axes are not given (the next
    # test); hypothesis drew a 1 x 1 x 2 stack once (an adversarial run, 2026-12-06)
    assume(stack.shape[0] * stack.shape[1] >= stack.shape[2])
    block = data.draw(st.integers(4, 40), label="block")
    unit = data.draw(st.sampled_from([block, 8, 40]), label="source chunk")
    scheduler = data.draw(st.sampled_from(["threads", "synchronous"]), label="scheduler")
    root = tmp_path_factory.mktemp("run")
    planes = _planes(stack)
    zarr.create_array(str(root / "in.zarr"), data=planes, chunks=(planes.shape[0], unit, unit),
                      dimension_names=list("zyx"))  # fmt: skip
    out = fuse_zarr(root / "in.zarr", root / "out.zarr", chunks=block, scheduler=scheduler,
                    nhsize=nhsize, progress=False, levels=0)  # fmt: skip
    np.testing.assert_array_equal(out["0"][...], focus_stack(stack, nhsize))


def test_more_planes_than_pixels_per_plane_is_refused_naming_axes(tmp_path):
    """The one stack shape the property test above leaves out: refused in one line, before
    anything is written."""
    zarr.create_array(str(tmp_path / "in.zarr"), data=np.ones((2, 1, 1), "uint16"),
                      dimension_names=list("zyx"))  # fmt: skip
    with pytest.raises(ValueError, match=r"^axes 'zyx' make .* more planes than pixels"):
        fuse_zarr(tmp_path / "in.zarr", tmp_path / "out.zarr", progress=False)
    assert not (tmp_path / "out.zarr").exists()


def _stopped_in_the_second_pass(tmp_path, monkeypatch, after: int):
    """A run into ``out.zarr`` that stops (as Ctrl-C would) after ``after`` blocks of its
    second pass; returns the stack (y, x, z), the source and dst."""
    stack = _blank_first_plane()
    src, dst = tmp_path / "in.zarr", tmp_path / "out.zarr"
    zarr.create_array(str(src), data=_planes(stack), chunks=(7, 16, 16),
                      dimension_names=list("zyx"))  # fmt: skip
    real = FuseJob.fuse_and_write
    count = {"n": 0}

    def fuse_and_write(self, block, stack, **kwargs):
        if self.fills is not None:
            if count["n"] >= after:
                raise KeyboardInterrupt
            count["n"] += 1
        return real(self, block, stack, **kwargs)

    monkeypatch.setattr(FuseJob, "fuse_and_write", fuse_and_write)
    with pytest.raises(KeyboardInterrupt):
        fuse_zarr(src, dst, chunks=16, scheduler="synchronous", progress=False, levels=0)
    monkeypatch.undo()
    return stack, src, dst


def test_a_run_stopped_in_its_second_pass_resumes_to_the_same_bits(tmp_path, monkeypatch):
    """The blocks done before the stop keep their smallest S in their markers: the resume's
    fill is the same minimum, over every block of the image."""
    stack, src, dst = _stopped_in_the_second_pass(tmp_path, monkeypatch, after=2)
    markers = list((dst / ".fstack_dask" / "done").iterdir())
    assert markers and all("s_min " in m.read_text() for m in markers)
    out = fuse_zarr(src, dst, chunks=16, resume=True, progress=False, levels=0)
    np.testing.assert_array_equal(out["0"][...], focus_stack(stack))


def test_an_output_begun_before_the_rule_is_finished_by_its_own(tmp_path, monkeypatch):
    """An unfinished output whose record does not name the rule (written before it) is
    finished with S = -inf where undefined, as it was begun: never two rules in one image."""
    stack, src, dst = _stopped_in_the_second_pass(tmp_path, monkeypatch, after=0)
    record_path = dst / ".fstack_dask" / "run.json"
    record = json.loads(record_path.read_text())
    del record["params"]["undefined_selectivity"]
    record_path.write_text(json.dumps(record))
    out = fuse_zarr(src, dst, chunks=16, resume=True, progress=False, levels=0)
    np.testing.assert_array_equal(out["0"][...], fuse_block(_planes(stack)).image)


@pytest.mark.parametrize("torn", [b"", b"\0" * 40], ids=["empty", "zeros"])
def test_a_done_marker_cut_short_by_a_crash_is_fused_again(tmp_path, monkeypatch, caplog, torn):
    """A marker created but never written (a kill between the two; a power cut before its
    fsync leaves zeros on some filesystems) counted its block as done, without the smallest S
    it held: the resume filled undefined S with a larger one, other bits than a fresh run (a
    review, 2026-12-06). Its block is fused again."""
    stack, src, dst = _stopped_in_the_second_pass(tmp_path, monkeypatch, after=0)
    done = dst / ".fstack_dask" / "done"

    def s_min(marker):
        line = next(ln for ln in marker.read_text().splitlines() if ln.startswith("s_min "))
        return float.fromhex(line[len("s_min ") :])

    lowest = min(done.iterdir(), key=s_min)  # the block holding the image's smallest S
    lowest.write_bytes(torn)
    with caplog.at_level("WARNING", logger="fstack_dask"):
        out = fuse_zarr(src, dst, chunks=16, resume=True, progress=False, levels=0)
    np.testing.assert_array_equal(out["0"][...], focus_stack(stack))
    assert f"were cut short by a crash ({lowest.name})" in caplog.text
