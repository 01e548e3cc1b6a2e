"""Never destroy what is not ours, part two (issue 22): ownership by record, claims without
check-then-act, leftovers.

Real stores on disk, the real CLI in a subprocess, real racing processes, a real tmpfs with
few inodes, and sha256 snapshots of what users put around and inside outputs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import tree_digest
from safety_util import (
    CACHE,
    CHUNK,
    KILLED_WHILE_REMOVING,
    bind_or_skip,
    cli,
    digest_of,
    masked_cli,
    one_line_error,
    small_stack,
    unmount_all_under,
    unshare_works,
    write_src,
)

from fstack_dask import SourceValueError, focus_stack, fuse_zarr, write_stack
from fstack_dask._outputs.destination import Destination
from fstack_dask._outputs.ownership import STATE_DIR
from fstack_dask._runs.blocks import FuseJob

FUSE = ("--chunks", CHUNK, "--no-progress")


def _user_files(folder: Path, names) -> None:
    for name in names:
        if "." in name:
            (folder / name).write_bytes(os.urandom(64))
        else:
            (folder / name / "sub").mkdir(parents=True)
            (folder / name / "sub" / "data.bin").write_bytes(os.urandom(256))


def _interrupted(src: Path, dst: Path, monkeypatch, n_blocks: int = 2, **kw) -> None:
    """An unfinished output: the run stops (as Ctrl-C would) after ``n_blocks`` blocks."""
    real = FuseJob.fuse_and_write
    calls = {"n": 0}

    def run_block(self, block, *args, **kwargs):
        if calls["n"] >= n_blocks:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(self, block, *args, **kwargs)

    monkeypatch.setattr(FuseJob, "fuse_and_write", run_block)
    with pytest.raises(KeyboardInterrupt):
        fuse_zarr(src, dst, chunks=CHUNK, scheduler="synchronous", progress=False, **kw)
    monkeypatch.setattr(FuseJob, "fuse_and_write", real)


def test_an_overwrite_of_an_unfinished_output_keeps_nothing_of_the_users(tmp_path, monkeypatch,
                                                                         caplog):  # fmt: skip
    """Clearing our unfinished output keeps its state folder on purpose (it holds the run's
    lock): it was reported as the user's, "kept ['.fstack_dask'] ...: fstack_dask did not
    write them" (a sixth adversarial run)."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    _interrupted(src, dst, monkeypatch)
    caplog.set_level(logging.WARNING, logger="fstack_dask")
    fuse_zarr(src, dst, chunks=CHUNK, overwrite=True, progress=False)
    assert "did not write" not in caplog.text, caplog.text


def _hidden(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------ 1. ownership by record


USERS = ["2024", "7", "depth", "selectivity", "notes.txt", "sub.partial"]


def test_overwrite_keeps_user_folders_that_only_look_like_ours(tmp_path):
    """`mkdir out.zarr/2024 out.zarr/depth`, then `--overwrite`: the issue's reproduction
    deleted both (digits and map names counted as ours). Now only what the output's record
    lists goes; the user's entries move with the overwrite, byte for byte."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    assert cli("fuse", src, dst, "--levels", "1", *FUSE).returncode == 0
    _user_files(dst, USERS)
    before = digest_of(dst, USERS)
    proc = cli("fuse", src, dst, "--overwrite", "--levels", "1", "--nhsize", "5", *FUSE)
    assert proc.returncode == 0, proc.stderr
    assert digest_of(dst, USERS) == before
    out = zarr.open_group(str(dst), mode="r")
    assert out.attrs["fstack_dask"]["entries"] == ["zarr.json", "0", "1"]
    expected = focus_stack(small_stack().transpose(1, 2, 0), nhsize=5)
    np.testing.assert_array_equal(out["0"][...], expected)
    assert _hidden(tmp_path) == []


def test_an_overwrite_gives_back_a_users_file_named_like_zarrs_temporary_one(tmp_path):
    """A user's 'zarr.notes.<32 hex>.partial' at the top of a complete output (c762f1e kept it
    from a resume): an --overwrite took it for zarr's temporary file of zarr.json (any 'zarr.*'
    name ending so), did not move it into the new output, and left the old output beside dst
    for good, the user's file in it ("kept [...] in .out.zarr.fstack-staging-...")."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    assert cli("fuse", src, dst, *FUSE).returncode == 0
    users = [f"zarr.notes.{'d' * 32}.partial", f"zarr.json.{'e' * 32}.partial"]
    _user_files(dst, users)
    before = digest_of(dst, users)
    proc = cli("fuse", src, dst, "--overwrite", "--nhsize", "5", *FUSE)
    assert proc.returncode == 0, proc.stderr
    assert digest_of(dst, users) == before
    assert _hidden(tmp_path) == [], proc.stderr


def test_overwrite_of_an_unfinished_output_in_place_keeps_user_folders(tmp_path, monkeypatch):
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    _interrupted(src, dst, monkeypatch, levels=1)
    _user_files(dst, USERS)
    before = digest_of(dst, USERS)
    proc = cli("fuse", src, dst, "--overwrite", "--levels", "1", *FUSE)
    assert proc.returncode == 0, proc.stderr
    assert digest_of(dst, USERS) == before
    expected = focus_stack(small_stack().transpose(1, 2, 0))
    np.testing.assert_array_equal(zarr.open_group(str(dst), mode="r")["0"][...], expected)


@pytest.mark.parametrize("state", ["complete", "unfinished"])
def test_a_user_entry_where_this_run_would_write_refuses_the_run(tmp_path, monkeypatch, state):
    """The user's `depth/` in an output without a depth map, then `--overwrite --depth-map`:
    refused before anything is written, naming it."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    if state == "complete":
        fuse_zarr(src, dst, chunks=CHUNK, progress=False)
    else:
        _interrupted(src, dst, monkeypatch)
    _user_files(dst, ["depth"])
    before = tree_digest(tmp_path)
    proc = cli("fuse", src, dst, "--overwrite", "--depth-map", *FUSE)
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc)
    assert "'depth'" in line and "did not write" in line
    assert tree_digest(tmp_path) == before


def test_resume_removes_only_zarrs_own_temporary_files(tmp_path, monkeypatch):
    """`*.partial` anywhere in an output was removed by `--resume`; now only zarr's own
    temporary files inside our entries (`<stem>.<32 hex>.partial`) go."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    _interrupted(src, dst, monkeypatch)
    (dst / "sub").mkdir()
    (dst / "sub" / "dataset.tar.partial").write_bytes(b"a download in progress")
    (dst / "notes.partial").write_bytes(b"mine")
    (dst / f"notes.{'a' * 32}.partial").write_bytes(b"mine too, though zarr-like")
    ours = dst / "0" / "c" / "0" / f"0.{'b' * 32}.partial"
    ours.write_bytes(b"a chunk write cut short")
    users = ["sub", "notes.partial", f"notes.{'a' * 32}.partial"]
    before = digest_of(dst, users)
    proc = cli("fuse", src, dst, "--resume", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert digest_of(dst, users) == before
    assert not ours.exists()


def test_resume_keeps_a_users_file_named_like_zarrs_temporary_but_for_a_newline(
    tmp_path, monkeypatch
):
    """A user's 'zarr.json.<32 hex>.partial\n' in an output's root, or such a name in a
    level, was deleted by a resume as a kill's temporary file: the pattern's $ matched
    before the last newline. Zarr's own temporary files still go."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    _interrupted(src, dst, monkeypatch)
    (dst / f"zarr.json.{'a' * 32}.partial\n").write_bytes(b"mine")
    (dst / "0" / f"notes.{'a' * 32}.partial\n").write_bytes(b"mine too")
    ours = dst / "0" / "c" / "0" / f"0.{'b' * 32}.partial"
    ours.write_bytes(b"a chunk write cut short")
    users = [f"zarr.json.{'a' * 32}.partial\n", f"0/notes.{'a' * 32}.partial\n"]
    before = digest_of(dst, users)
    fuse_zarr(src, dst, progress=False, resume=True)
    assert digest_of(dst, users) == before
    assert not ours.exists()


def test_resume_keeps_a_users_folder_or_link_named_like_zarrs_temporary_file(tmp_path, monkeypatch):
    """A user's folder named 'zarr.<32 hex>.partial' at the top of an output made every
    --resume fail with a raw 'Is a directory' (a review): it is left alone, as is a link so
    named (zarr's temporary files are plain files); zarr's own still go."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    _interrupted(src, dst, monkeypatch)
    (dst / f"zarr.{'a' * 32}.partial" / "sub").mkdir(parents=True)
    (dst / f"zarr.{'a' * 32}.partial" / "sub" / "data.bin").write_bytes(b"mine")
    (tmp_path / "target.txt").write_bytes(b"the link's")
    (dst / f"zarr.{'c' * 32}.partial").symlink_to(tmp_path / "target.txt")
    root = dst / f"zarr.{'d' * 32}.partial"
    root.write_bytes(b"zarr.json's write cut short")
    ours = dst / "0" / "c" / "0" / f"0.{'b' * 32}.partial"
    ours.write_bytes(b"a chunk write cut short")
    users = [f"zarr.{'a' * 32}.partial"]
    before = digest_of(dst, users)
    proc = cli("fuse", src, dst, "--resume", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert digest_of(dst, users) == before
    assert (dst / f"zarr.{'c' * 32}.partial").is_symlink()
    assert not ours.exists() and not root.exists()
    # an overwrite gives the folder back into the new output (it was left in a staging folder)
    proc = cli("fuse", src, dst, "--overwrite", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert digest_of(dst, users) == before


def test_resume_keeps_the_temporary_files_of_a_users_store_inside_a_level(tmp_path, monkeypatch):
    """A resume deleted every '<stem>.<32 hex>.partial' under our levels, those of a user's
    own Zarr store kept inside one (0/annotations/cells.zarr, whose interrupted write left
    one; or 0/notes.<hex>.partial): an --overwrite keeps them (not keys we write), and so
    does a resume now. Zarr's own temporary files of our keys still go."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    _interrupted(src, dst, monkeypatch)
    store = dst / "0" / "annotations" / "cells.zarr"
    (store / "c" / "0").mkdir(parents=True)
    (store / "c" / "0" / f"0.{'a' * 32}.partial").write_bytes(b"the user's chunk")
    (store / f"zarr.{'c' * 32}.partial").write_bytes(b"the user's zarr.json")
    (dst / "0" / f"notes.{'d' * 32}.partial").write_bytes(b"mine")
    # (at the output's top: a resume deleted every 'zarr.*.<hex>.partial' there)
    (dst / f"zarr.notes.{'d' * 32}.partial").write_bytes(b"mine")
    ours = [dst / "0" / "c" / "0" / f"0.{'b' * 32}.partial", dst / "0" / f"zarr.{'e' * 32}.partial",
            dst / f"zarr.{'f' * 32}.partial"]  # fmt: skip
    for path in ours:
        path.write_bytes(b"a write cut short")
    users = ["0/annotations", f"0/notes.{'d' * 32}.partial", f"zarr.notes.{'d' * 32}.partial"]
    before = digest_of(dst, users)
    fuse_zarr(src, dst, progress=False, resume=True)
    assert digest_of(dst, users) == before
    assert not [path for path in ours if path.exists()]


# ------------------------------------------------------------ 3. claims, not check-then-act


OTHER_RUN = textwrap.dedent(
    """
    import sys
    from fstack_dask import fuse_zarr
    fuse_zarr(sys.argv[1], sys.argv[2], progress=False)
    """
)


def _while_the_scheduler_starts(monkeypatch, action):
    """Run ``action`` after every check, while the run connects to its scheduler."""
    from fstack_dask._runs import scheduler_choice as _run

    real = _run.resolve_scheduler

    def resolve_scheduler(*args, **kwargs):
        action()
        return real(*args, **kwargs)

    monkeypatch.setattr(_run, "resolve_scheduler", resolve_scheduler)


def test_an_ome_zarr_landing_in_the_empty_dst_is_not_touched(tmp_path, monkeypatch):
    """dst is empty at the check; the user's OME-Zarr lands in it while the run waits for
    its scheduler. The run claims the folder, sees it is no longer empty, and refuses; the
    user's files are untouched (the old code wrote over them and, failing, deleted them)."""
    src = write_src(tmp_path / "src.zarr")
    theirs = tmp_path / "theirs.ome.zarr"
    write_stack(theirs, small_stack(seed=4), axes="zyx")
    dst = tmp_path / "out.zarr"
    dst.mkdir()
    _while_the_scheduler_starts(
        monkeypatch, lambda: shutil.copytree(theirs, dst, dirs_exist_ok=True)
    )
    with pytest.raises(FileExistsError, match="was empty when this run started and now holds"):
        fuse_zarr(src, dst, chunks=CHUNK, progress=False)
    assert tree_digest(dst) == tree_digest(theirs)


def test_another_run_completing_into_the_empty_dst_meanwhile_is_kept(tmp_path, monkeypatch):
    src = write_src(tmp_path / "src.zarr")
    other_src = write_src(tmp_path / "other.zarr", seed=3)
    dst = tmp_path / "out.zarr"
    dst.mkdir()

    def other_run():
        proc = subprocess.run([sys.executable, "-c", OTHER_RUN, str(other_src), str(dst)],
                              capture_output=True, text=True, timeout=180)  # fmt: skip
        assert proc.returncode == 0, proc.stderr

    _while_the_scheduler_starts(monkeypatch, other_run)
    with pytest.raises(FileExistsError, match="now holds"):
        fuse_zarr(src, dst, chunks=CHUNK, progress=False)
    out = zarr.open_group(str(dst), mode="r")
    assert out.attrs["fstack_dask"]["complete"] is True
    assert out.attrs["fstack_dask"]["src"] == str(other_src)
    expected = focus_stack(small_stack(seed=3).transpose(1, 2, 0))
    np.testing.assert_array_equal(out["0"][...], expected)


def test_a_dst_created_by_someone_else_meanwhile_is_not_touched(tmp_path, monkeypatch):
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"

    def theirs():
        dst.mkdir()
        (dst / "zarr.json").write_text("{}")

    _while_the_scheduler_starts(monkeypatch, theirs)
    with pytest.raises(RuntimeError, match="created or claimed by another run or program"):
        fuse_zarr(src, dst, chunks=CHUNK, progress=False)
    assert os.listdir(dst) == ["zarr.json"] and (dst / "zarr.json").read_text() == "{}"


def test_cleanup_after_a_failure_removes_only_what_the_run_wrote(tmp_path, monkeypatch):
    """A run that finished no block removes what its record says it wrote, not a file that
    appeared in its folder meanwhile."""
    dst = tmp_path / "out.zarr"
    # the blocks' pass begins: the run has claimed dst; a user's folder, named as the old "ours"
    _fail_every_block(tmp_path, monkeypatch, lambda: _user_files(dst, ["2024", "notes.txt"]))
    assert sorted(os.listdir(dst)) == ["2024", "notes.txt"]


def _fail_every_block(tmp_path: Path, monkeypatch, meanwhile) -> SourceValueError:
    """A run into ``tmp_path / "out.zarr"`` of an all-NaN source (no block can be fused:
    "nothing was written"), calling ``meanwhile()`` as its blocks' pass begins."""
    data = small_stack().astype(np.float32)
    data[:] = np.nan
    src = tmp_path / "nan.zarr"
    write_stack(src, data, axes="zyx", chunks=(7, CHUNK, CHUNK))
    from fstack_dask._runs import schedulers

    real = schedulers.execute

    def execute(*args, **kwargs):
        meanwhile()
        return real(*args, **kwargs)

    monkeypatch.setattr(schedulers, "execute", execute)
    with pytest.raises(SourceValueError, match="nothing was written") as caught:
        fuse_zarr(src, tmp_path / "out.zarr", chunks=CHUNK, scheduler="synchronous",
                  progress=False)  # fmt: skip
    return caught.value


@pytest.mark.parametrize("name", ["notes.txt", f"notes.{'a' * 32}.partial", "c/9/0", "3/zarr.json"])
def test_a_users_file_inside_an_entry_is_not_named_as_left_to_remove_by_hand(
    tmp_path, monkeypatch, name
):
    """A user's file put into the run's level folder while it ran (``0/notes.txt``) is kept
    on purpose ("fstack_dask did not write them"); a run that then finished no block said
    "... is left with 0/notes.txt, which could not be removed: remove it by hand" (and so of
    a user's ``0/notes.<hex>.partial``, named like zarr's temporary files, once kept; and of
    a user's file named like a chunk beyond the level's grid, ``0/c/9/0``, or a level beyond
    the output's, ``3/zarr.json`` in a run of levels 0-2: kept, and then named so)."""
    dst = tmp_path / "out.zarr"
    # the blocks' pass begins: the run has made dst/0
    note = dst / ("" if name.startswith("3/") else "0") / name

    def meanwhile():
        note.parent.mkdir(parents=True, exist_ok=True)
        note.write_text("mine")

    error = _fail_every_block(tmp_path, monkeypatch, meanwhile)
    assert "remove it by hand" not in str(error)
    assert note.read_text() == "mine"


def _copy_attributes(ours: Path, mine: Path, how: str) -> None:
    """A user's own store, made from an output of ours with its group attributes copied."""
    if how == "xarray":  # process the fused image, keep its attributes
        import xarray as xr

        levels = [k for k in zarr.open_group(str(ours), mode="r").array_keys() if k != "0"]
        ds = xr.open_zarr(ours, consolidated=False, drop_variables=levels)
        processed = (ds // 2).astype(ds["0"].dtype)
        processed.attrs = dict(ds.attrs)
        processed.to_zarr(mine, zarr_format=3, consolidated=False)
    else:  # zarr: a new group with the same attributes, the user's own array in it
        group = zarr.open_group(str(ours), mode="r")
        mine_group = zarr.create_group(str(mine), attributes=dict(group.attrs))
        mine_group.create_array("0", data=np.full(group["0"].shape, 7, group["0"].dtype))


@pytest.mark.parametrize("how", ["xarray", "zarr"])
@pytest.mark.parametrize("finished", [True, False])
def test_a_store_with_our_attributes_copied_in_is_not_ours(tmp_path, monkeypatch, how,
                                                          finished):  # fmt: skip
    """``xr.open_zarr(ours)`` processed and saved with ``attrs=ds.attrs``, or a group created
    with our attributes: the old code took it for our output, and ``--overwrite`` replaced
    the user's ``0`` and attributes (a second adversarial run, 2026-12-05). The attributes
    name the output's id; the id file in ``0/`` that no Zarr writer copies is not there."""
    src = write_src(tmp_path / "src.zarr")
    ours, mine = tmp_path / "ours.zarr", tmp_path / "mine.zarr"
    if finished:
        fuse_zarr(src, ours, chunks=CHUNK, progress=False)
    else:
        _interrupted(src, ours, monkeypatch, n_blocks=1)
    _copy_attributes(ours, mine, how)
    assert zarr.open_group(str(mine), mode="r").attrs["fstack_dask"]["output_id"]
    before = tree_digest(tmp_path)
    for flags in (["--overwrite"], ["--resume"], []):
        proc = cli("fuse", src, mine, *flags, *FUSE)
        assert proc.returncode == 2, proc.stderr
        assert "attributes of an fstack_dask output copied in" in one_line_error(proc)
    with pytest.raises(FileExistsError, match="not an fstack_dask output"):
        fuse_zarr(src, mine, chunks=CHUNK, overwrite=True, progress=False)
    assert tree_digest(tmp_path) == before


def test_copied_attributes_with_a_null_id_are_not_ours(tmp_path):
    """``"output_id": null`` in copied attributes matched the missing id file (None == None),
    and the store was replaced (a fourth adversarial run). An id must be a non-empty string
    that the id file holds too."""
    src = write_src(tmp_path / "src.zarr")
    ours, mine = tmp_path / "ours.zarr", tmp_path / "mine.zarr"
    fuse_zarr(src, ours, chunks=CHUNK, progress=False)
    attrs = dict(zarr.open_group(str(ours), mode="r").attrs)
    attrs["fstack_dask"] = {**attrs["fstack_dask"], "output_id": None}
    group = zarr.create_group(str(mine), attributes=attrs)
    group.create_array("0", data=np.full((8, 8), 7, np.uint16))
    before = tree_digest(tmp_path)
    proc = cli("fuse", src, mine, "--overwrite", *FUSE)
    assert proc.returncode == 2 and "not an fstack_dask output" in one_line_error(proc)
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize(
    ("where", "how"), [("zarr.json", "--overwrite"), (f"{STATE_DIR}/run.json", "--resume")]
)
def test_a_dst_whose_json_is_nested_too_deep_to_read_is_not_ours(tmp_path, where, how):
    """A dst's zarr.json (or a run record) nested 100000 deep stopped --overwrite, --resume
    and info with "maximum recursion depth exceeded while decoding a JSON array", exit 1
    (an adversarial run on names and metadata, 2026-12-06): it is not ours, and said so."""
    src = write_src(tmp_path / "src.zarr")
    mine = tmp_path / "mine.zarr"
    (mine / where).parent.mkdir(parents=True)
    deep = "[" * 100000 + "]" * 100000
    (mine / where).write_text('{"zarr_format": 3, "node_type": "group", "x": ' + deep + "}")
    before = tree_digest(tmp_path)
    proc = cli("fuse", src, mine, how, *FUSE)
    assert proc.returncode == 2 and "not an fstack_dask output" in one_line_error(proc)
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("where", ["zarr.json", f"{STATE_DIR}/lock"])
def test_a_dst_whose_metadata_or_lock_is_a_named_pipe_is_refused_not_waited_on(tmp_path, where):
    """A named pipe at a dst's zarr.json or lock: --overwrite waited for a writer forever (and
    a link to /dev/zero read until the memory ran out; an adversarial run on names,
    2026-12-06). Such a dst is not ours: refused at once, the pipe left as it was."""
    src = write_src(tmp_path / "src.zarr")
    mine = tmp_path / "mine.zarr"
    (mine / where).parent.mkdir(parents=True)
    os.mkfifo(mine / where)
    proc = cli("fuse", src, mine, "--overwrite", *FUSE, timeout=60)
    assert proc.returncode == 2 and "not an fstack_dask output" in one_line_error(proc)
    assert (mine / where).is_fifo() and sorted(os.listdir(mine)) == [where.split("/")[0]]


@pytest.mark.parametrize("where", ["zarr.json", f"{STATE_DIR}/lock"])
def test_a_dst_whose_metadata_or_lock_is_a_socket_is_refused_in_one_line(
    tmp_path, monkeypatch, where
):
    """A socket at a dst's zarr.json or lock cannot be opened at all: --overwrite stopped
    with "[Errno 6] No such device or address", exit 1 (a review, 2026-12-06, of the named
    pipes' refusal). Such a dst is not ours: refused, exit 2, the socket left as it was."""
    import socket

    src = write_src(tmp_path / "src.zarr")
    mine = tmp_path / "mine.zarr"
    (mine / where).parent.mkdir(parents=True)
    monkeypatch.chdir(mine)  # a socket's path is at most 108 bytes: bound relative
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(where)
    proc = cli("fuse", src, mine, "--overwrite", *FUSE, timeout=60)
    assert proc.returncode == 2 and "not an fstack_dask output" in one_line_error(proc)
    assert (mine / where).is_socket() and sorted(os.listdir(mine)) == [where.split("/")[0]]


def test_a_copy_without_hidden_files_is_refused_naming_the_id_file(tmp_path):
    """An output copied without its hidden files (``rsync --exclude='.*'``, a tar of
    ``$(ls)``) lacks its id file: refused as not ours, as it must be, but the message spoke
    only of attributes copied in, which the user had not done (an adversarial run on moved
    outputs). It names the id file and the copy's loss of it; nothing is changed."""
    src = write_src(tmp_path / "src.zarr")
    ours, copy = tmp_path / "ours.zarr", tmp_path / "copy.zarr"
    fuse_zarr(src, ours, chunks=CHUNK, progress=False)
    shutil.copytree(ours, copy, ignore=shutil.ignore_patterns(".*"))
    before = tree_digest(tmp_path)
    for flags in (["--overwrite"], ["--resume"]):
        proc = cli("fuse", src, copy, *flags, *FUSE)
        assert proc.returncode == 2, proc.stderr
        line = one_line_error(proc)
        assert "without its id file '0/.fstack_dask-output'" in line
        assert "a copy that left out hidden files lacks it too" in line
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("how", ["copied whole", "written before ids"])
def test_an_output_whose_id_file_is_with_it_is_ours(tmp_path, how):
    """A whole copy of an output (``cp -r``: the id file goes along) is an output of ours, and
    an output written before ids (no id in its attributes, no id file) is known by its
    provenance as before: both are replaced and resumed, and the id file is no user file."""
    src = write_src(tmp_path / "src.zarr")
    ours, dst = tmp_path / "ours.zarr", tmp_path / "out.zarr"
    fuse_zarr(src, ours, chunks=CHUNK, progress=False)
    shutil.copytree(ours, dst)
    if how == "written before ids":
        meta = json.loads((dst / "zarr.json").read_text())
        del meta["attributes"]["fstack_dask"]["output_id"]
        (dst / "zarr.json").write_text(json.dumps(meta))
        (dst / "0" / ".fstack_dask-output").unlink()
    proc = cli("fuse", src, dst, "--resume", *FUSE)
    assert proc.returncode == 0 and "already complete" in proc.stderr, proc.stderr
    proc = cli("fuse", src, dst, "--overwrite", "--nhsize", "5", *FUSE)
    assert proc.returncode == 0, proc.stderr
    assert "not written by us" not in proc.stderr and "did not write" not in proc.stderr
    out = zarr.open_group(str(dst), mode="r")
    assert out.attrs["fstack_dask"]["nhsize"] == 5
    assert (
        out.attrs["fstack_dask"]["output_id"]
        != zarr.open_group(str(ours)).attrs["fstack_dask"]["output_id"]
    )
    assert _hidden(tmp_path) == [] and sorted(os.listdir(dst)) == ["0", "1", "2", "zarr.json"]


@pytest.mark.parametrize("finished", [True, False])
def test_an_overwrite_of_an_output_with_a_users_file_inside_an_array_is_refused(
    tmp_path, monkeypatch, finished
):
    """Notes put inside an output's arrays (``0/annotations/cells.csv``, ``depth/0/x.txt``),
    a user's Zarr arrays nested in ours, files named like chunks beyond a grid (``0/c/99``)
    and a link there: an --overwrite removed the chunks around them and left them in the
    previous output, hidden beside dst (a warning, exit 0), or, of an unfinished output, in
    dst's arrays around the new chunks, where one named like a chunk of the new grid was
    overwritten or deleted by the new run. It is refused before anything is computed:
    one line naming them, exit 2, nothing changed."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    if finished:
        fuse_zarr(src, dst, chunks=CHUNK, depth_map=True, progress=False)
    else:
        _interrupted(src, dst, monkeypatch, n_blocks=1, depth_map=True)
    (dst / "0" / "annotations").mkdir()
    (dst / "0" / "annotations" / "cells.csv").write_text("x,y\n1,2\n")
    (dst / "depth" / "0" / "x.txt").write_text("mine")
    theirs = ["0/notes/zarr.json", "0/notes/c/1", "depth/0/cells/c/0/0", "depth/cells/zarr.json"]
    theirs += ["depth/7/zarr.json", "depth/7/c/0/0", "0/c/99", "0/c/5/0", "1/c/9/0/0"]
    for name in theirs:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        (dst / name).write_text(f"mine: {name}")
    os.symlink(tmp_path / "src.zarr", dst / "0" / "c" / "mylink")
    before = tree_digest(tmp_path)
    proc = cli("fuse", src, dst, "--overwrite", "--depth-map", *FUSE)
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc)
    assert "'0/annotations'" in line and "move them out of dst first" in line, line
    assert "(nothing was written)" in line and "more inside its arrays" in line, line
    assert tree_digest(tmp_path) == before


def test_a_users_file_put_inside_an_array_while_an_overwrite_runs_keeps_the_old_output_whole(
    tmp_path, monkeypatch, caplog
):
    """A user's ``0/annotations/x.csv`` put into the output while an overwrite of it ran (after
    its check refused none): the swap removed the previous output's chunks around it and left
    it in a hidden folder beside dst, said only as "kept ... : fstack_dask did not write
    them", and so did the next run. The previous output is kept whole there, a warning
    naming the file, the folder and what to do, by this run and the next."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    fuse_zarr(src, dst, chunks=CHUNK, progress=False)
    real, before = Destination.swap_in, {}

    def swap_in(self, target):
        (dst / "0" / "annotations").mkdir()
        (dst / "0" / "annotations" / "x.csv").write_text("x,y\n")
        before.update(tree_digest(dst / "0"))
        return real(self, target)

    monkeypatch.setattr(Destination, "swap_in", swap_in)
    with caplog.at_level(logging.WARNING, logger="fstack_dask"):
        out = fuse_zarr(src, dst, chunks=CHUNK, nhsize=5, overwrite=True, progress=False)
    assert out.attrs["fstack_dask"]["nhsize"] == 5
    (hidden,) = _hidden(tmp_path)
    assert tree_digest(tmp_path / hidden / "0") == before
    said = [r.getMessage() for r in caplog.records if "'0/annotations'" in r.getMessage()]
    assert said and hidden in said[0] and "kept whole" in said[0], said
    monkeypatch.setattr(Destination, "swap_in", real)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fstack_dask"):
        fuse_zarr(src, dst, chunks=CHUNK, nhsize=5, resume=True, progress=False)
    assert tree_digest(tmp_path / hidden / "0") == before
    assert any("'0/annotations'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "theirs",
    [
        ["depth/\u0661/zarr.json", "depth/\u00b2/zarr.json"],
        ["depth/01/zarr.json", "depth/00/c/0/0"],
        ["0/c/0/00"],
    ],
)
def test_a_users_folder_named_almost_like_a_level_or_chunk_refuses_an_overwrite(tmp_path, theirs):
    """A user's Zarr folder in a map named by another script's digit ('\u0661': int() makes it
    1), or by digits we never give a level ('01'), or a file '0/c/0/00' in a level's chunk
    folder, was once taken for ours and deleted by an overwrite; it is the user's: the
    overwrite is refused, naming it, and nothing changes."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    fuse_zarr(src, dst, chunks=CHUNK, depth_map=True, levels=1, progress=False)
    for name in theirs:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        (dst / name).write_text(f"mine: {name}")
    before = tree_digest(tmp_path)
    with pytest.raises(FileExistsError, match="move them out of dst first") as refused:
        fuse_zarr(src, dst, chunks=CHUNK, depth_map=True, levels=1, progress=False,
                  overwrite=True)  # fmt: skip
    assert repr(theirs[0].rsplit("/", 1)[0] if theirs[0] != "0/c/0/00" else theirs[0]) in str(
        refused.value
    )
    assert tree_digest(tmp_path) == before


def test_a_users_file_inside_an_array_of_ours_survives_an_overwrite_on_fsspec(tmp_path):
    """The same on a filesystem fsspec reaches (``memory://`` here; S3 alike): the old code
    removed each entry of ours there whole (a second adversarial run, 2026-12-05); then the
    overwrite left it in the previous output, hidden beside dst; it is refused since g101,
    as on a local disk, the file where it was."""
    import uuid

    import fsspec

    src = write_src(tmp_path / "src.zarr")
    dst = f"memory://fstack-own-{uuid.uuid4().hex}/out.ome.zarr"
    fuse_zarr(src, dst, chunks=CHUNK, progress=False)
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{dst}/0/annotations/cells.csv", b"x,y\n1,2\n")
    fs.pipe(f"{dst}/notes.txt", b"mine")
    before = {p: fs.cat(p) for p in fs.find(dst.rsplit("/", 1)[0])}
    with pytest.raises(FileExistsError, match="holds '0/annotations' inside its arrays"):
        fuse_zarr(src, dst, chunks=CHUNK, overwrite=True, nhsize=5, progress=False)
    assert {p: fs.cat(p) for p in fs.find(dst.rsplit("/", 1)[0])} == before
    assert fs.cat(f"{dst}/0/annotations/cells.csv") == b"x,y\n1,2\n"
    assert fs.cat(f"{dst}/notes.txt") == b"mine"


def test_a_failed_overwrite_keeps_the_users_own_folder(tmp_path, monkeypatch):
    """The user's empty folder (setgid, reached through a link), given as dst to a run that
    was interrupted; an overwrite that fails before its first block removes what the runs
    wrote, not the folder: the old code removed it (the link left dangling, the next run
    refused)."""
    src = write_src(tmp_path / "src.zarr")
    nan = small_stack().astype(np.float32)
    nan[:] = np.nan
    write_stack(tmp_path / "nan.zarr", nan, axes="zyx", chunks=(7, CHUNK, CHUNK))
    folder = tmp_path / "scratch" / "results"
    folder.mkdir(parents=True)
    os.chmod(folder, 0o2775)
    link = tmp_path / "results"
    os.symlink(folder, link)
    _interrupted(src, link, monkeypatch, n_blocks=1)
    with pytest.raises(SourceValueError, match="nothing was written"):
        fuse_zarr(tmp_path / "nan.zarr", link, chunks=CHUNK, overwrite=True,
                  scheduler="synchronous", progress=False)  # fmt: skip
    assert folder.is_dir() and os.stat(folder).st_mode & 0o7777 == 0o2775
    assert os.listdir(folder) == []
    out = fuse_zarr(src, link, chunks=CHUNK, scheduler="synchronous", progress=False)
    np.testing.assert_array_equal(out["0"][...], focus_stack(small_stack().transpose(1, 2, 0)))


# ---------------------------------------------------------------------------- 8. leftovers


@pytest.fixture()
def tmpfs(tmp_path):
    """A real tmpfs (root only): its inode count is what we choose."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "fs"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,nr_inodes=4096", "tmpfs",
                           str(mount)], capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")

    def limit(extra_inodes: int) -> None:
        st = os.statvfs(mount)
        used = st.f_files - st.f_ffree
        subprocess.run(["mount", "-o", f"remount,nr_inodes={used + extra_inodes}", str(mount)],
                       check=True)  # fmt: skip

    yield mount, limit
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("case", ["new", "empty", "overwrite"])
def test_no_inode_left_for_the_lock_leaves_nothing_behind(tmp_path, tmpfs, case):
    """The disk (here: its inodes) fills up while the lock is created: one line, exit 1, and
    no `.fstack_dask/` or staging folder that would lock the user out of the next run."""
    mount, limit = tmpfs
    src = write_src(tmp_path / "src.zarr")
    dst = mount / "out.zarr"
    if case == "empty":
        dst.mkdir()
    if case == "overwrite":
        assert cli("fuse", src, dst, *FUSE).returncode == 0
    before = tree_digest(mount)
    limit(2)  # dst (or the staging folder) and the state folder, not the lock file
    flags = ["--overwrite"] if case == "overwrite" else []
    proc = cli("fuse", src, dst, *flags, *FUSE)
    assert proc.returncode == 1, proc.stderr
    assert "no space left on device" in one_line_error(proc)
    assert tree_digest(mount) == before
    limit(10_000)
    proc = cli("fuse", src, dst, *(flags or ["--overwrite"]), *FUSE)  # the next run works
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("left", ["empty state folder", "stale lock", "lock and record tmp"])
def test_what_a_run_killed_while_claiming_left_does_not_lock_the_user_out(tmp_path, left):
    """A run killed (SIGKILL, no clean-up) between creating its state folder and writing its
    run record leaves only that: the next run takes the claim over, with or without flags.
    A state folder that holds anything else is not ours, and stays refused."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    state = dst / STATE_DIR
    state.mkdir(parents=True)
    if left != "empty state folder":
        body = {"host": "h", "machine": "another boot", "pid": 7, "token": "0" * 32}
        (state / "lock").write_text(json.dumps(body))
        os.utime(state / "lock", (0, 0))  # its heartbeat long gone
    if left == "lock and record tmp":
        (state / "done").mkdir()
        (state / f"run.json.{'ab' * 16}.tmp").write_text("{")
    # A short lease: the dead lock is watched for its stale age before it is taken over.
    proc = cli("fuse", src, dst, *FUSE, env={"FSTACK_DASK_LOCK_STALE_AFTER": "3"})
    assert proc.returncode == 0, proc.stderr
    expected = focus_stack(small_stack().transpose(1, 2, 0))
    np.testing.assert_array_equal(zarr.open_group(str(dst), mode="r")["0"][...], expected)
    _a_state_folder_holding_is_not_ours(tmp_path, src, "notes.txt", "--overwrite")


def _a_state_folder_holding_is_not_ours(tmp_path, src, name: str, flag: str) -> None:
    """A folder whose state folder holds a user's file ``name`` is refused, unchanged."""
    other = tmp_path / "other.zarr"
    (other / STATE_DIR).mkdir(parents=True)
    (other / STATE_DIR / name).write_text("my notes")
    before = tree_digest(tmp_path)
    proc = cli("fuse", src, other, flag, *FUSE)
    assert proc.returncode == 2 and "not an fstack_dask output" in one_line_error(proc)
    assert tree_digest(tmp_path) == before


STOP_AT = textwrap.dedent(
    """
    import importlib, os, signal, sys
    from fstack_dask._cli.main import main

    sig, module = getattr(signal, sys.argv[1]), importlib.import_module(sys.argv[2])
    name, text = sys.argv[3], sys.argv[4]  # the function, the text of its first argument
    real = getattr(module, name)

    def stop_first(first, *args):
        if text in str(first):
            os.kill(os.getpid(), sig)
        return real(first, *args)

    setattr(module, name, stop_first)
    sys.exit(main(["fuse", *sys.argv[5:]]))
    """
)


def _stopped_at(sig: str, module: str, name: str, text: str, *args) -> subprocess.CompletedProcess:
    """The CLI's ``fuse *args``, sent ``sig`` as ``module.name`` is called on a path holding
    ``text``."""
    return subprocess.run(
        [sys.executable, "-c", STOP_AT, sig, module, name, text, *map(str, args)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_a_run_stopped_between_its_file_list_and_its_record_resumes(tmp_path, sig):
    """Stopped after writing the source's file list but before its run record, a run left a
    state folder that every later run refused as "not an fstack_dask output", --resume
    included, though SIGTERM's own line said to rerun with --resume."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    # the source's file list is written, the record not
    proc = _stopped_at(sig, "fstack_dask._outputs.state", "_write_atomic", "run.json", src, dst,
                       *FUSE)  # fmt: skip
    assert proc.returncode == (-9 if sig == "SIGKILL" else 143), proc.stderr
    assert (dst / STATE_DIR / "source-files.npz").is_file()
    assert not (dst / STATE_DIR / "run.json").exists()
    proc = cli("fuse", src, dst, *FUSE, "--resume")
    assert proc.returncode == 0, proc.stderr
    expected = focus_stack(small_stack().transpose(1, 2, 0))
    np.testing.assert_array_equal(zarr.open_group(str(dst), mode="r")["0"][...], expected)
    # a state folder whose "file list" is not one NumPy wrote is still not ours
    _a_state_folder_holding_is_not_ours(tmp_path, src, "source-files.npz", "--resume")


def test_a_users_file_named_like_a_claims_leftover_but_for_a_newline_is_kept(tmp_path):
    """A state folder holding a user's file named like a killed claim's temporary file but
    for a last newline ('lock.0a.tmp\n': the pattern's $ matched before it) was taken over
    as a claim leftover, and the file deleted with it: it is not ours, and stays refused."""
    src = write_src(tmp_path / "src.zarr")
    other = tmp_path / "other.zarr"
    (other / STATE_DIR).mkdir(parents=True)
    (other / STATE_DIR / "lock.0a.tmp\n").write_text("my notes")
    before = tree_digest(tmp_path)
    with pytest.raises(FileExistsError, match="not an fstack_dask output"):
        fuse_zarr(src, other, chunks=CHUNK, progress=False, resume=True)
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_an_overwrite_stopped_as_it_begins_leaves_no_staging_folder(tmp_path, sig):
    """Stopped right after creating its staging folder, an overwrite left that empty hidden
    folder beside dst for good: SIGTERM's clean-up did not know it yet, and no later run
    removed one without a run record."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    assert cli("fuse", src, dst, *FUSE).returncode == 0
    # the staging folder is created, nothing is in it
    proc = _stopped_at(sig, "fstack_dask._outputs.folders", "take_on_looks", ".fstack-staging-",
                       src, dst, *FUSE, "--nhsize", "5", "--overwrite")  # fmt: skip
    assert proc.returncode == (-9 if sig == "SIGKILL" else 143), proc.stderr
    if sig == "SIGTERM":
        assert _hidden(tmp_path) == []  # its clean-up removed it
    proc = cli("fuse", src, dst, *FUSE, "--nhsize", "5", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert _hidden(tmp_path) == []
    assert zarr.open_group(str(dst), mode="r").attrs["fstack_dask"]["nhsize"] == 5


KILLED_WHILE_CLAIMING_THE_STAGING_FOLDER = textwrap.dedent(
    """
    import os, signal, sys
    from fstack_dask._outputs import lock, state
    from fstack_dask._cli.main import main

    point = sys.argv[1]

    def die_at(fn, when):
        def wrapped(*args, **kwargs):
            if when(*args):
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return wrapped

    staged = lambda path: ".fstack-staging-" in str(path)
    if point == "state folder made":  # before the lock is written
        create = lock.DestinationLock._create
        lock.DestinationLock._create = die_at(create, lambda self: staged(self.lock.path))
    elif point == "lock written aside":  # its temporary name, not yet linked
        lock._publish = die_at(lock._publish, lambda aside, path, *a: staged(path))
    else:  # the lock taken, the source's file list written aside, no run record
        state.os.replace = die_at(os.replace, lambda a, b: staged(b) and "source-files" in b)
    sys.exit(main(["fuse", *sys.argv[2:]]))
    """
)


@pytest.mark.parametrize("point", ["state folder made", "lock written aside", "lock taken"])
def test_an_overwrite_killed_while_claiming_its_staging_folder_leaves_nothing(tmp_path, point):
    """SIGKILL while an overwrite claimed its staging folder (strace's inject=flock or
    inject=rename:signal=SIGKILL) left it holding only a state folder: empty, a lock's
    temporary name, or a dead run's lock with an empty done folder and the source's file
    list aside. No later run removed a staging folder that was not empty and had no run
    record: hidden beside dst for good. The next overwrite empties and removes it."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    assert cli("fuse", src, dst, *FUSE).returncode == 0
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_CLAIMING_THE_STAGING_FOLDER, point,
         *map(str, (src, dst, *FUSE, "--nhsize", "5", "--overwrite"))],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    (hidden,) = _hidden(tmp_path)
    assert os.listdir(tmp_path / hidden) == [STATE_DIR]
    proc = cli("fuse", src, dst, *FUSE, "--nhsize", "5", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert _hidden(tmp_path) == []
    assert zarr.open_group(str(dst), mode="r").attrs["fstack_dask"]["nhsize"] == 5


WRITTEN_INTO_AFTER_IT_WAS_JUDGED = textwrap.dedent(
    """
    import os, sys
    from fstack_dask._outputs import leftovers
    from fstack_dask._cli.main import main

    def classify(folder):  # a user's write between the check and the removal
        kind = real(folder)
        if kind == "claimed" and ".fstack-staging-" in folder.path:
            with open(os.path.join(folder.path, ".fstack_dask", "notes.txt"), "w") as f:
                f.write("mine")
        return kind

    real, leftovers.classify = leftovers.classify, classify
    sys.exit(main(["fuse", *sys.argv[1:]]))
    """
)


def test_a_users_file_put_into_a_claim_left_beside_dst_as_it_is_emptied_is_kept(tmp_path):
    """A staging folder an overwrite killed while claiming it left is emptied by the next
    overwrite: judged a claim, then every entry its state folder held by then was unlinked,
    a user's notes.txt written there meanwhile too. Each is asked again before it
    goes: the user's is kept, and the folder with it, named in a warning by this run and the
    next (it stayed hidden beside dst, unnamed)."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    assert cli("fuse", src, dst, *FUSE).returncode == 0
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_CLAIMING_THE_STAGING_FOLDER, "lock taken",
         *map(str, (src, dst, *FUSE, "--overwrite"))],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    (hidden,) = _hidden(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", WRITTEN_INTO_AFTER_IT_WAS_JUDGED,
         *map(str, (src, dst, *FUSE, "--nhsize", "5", "--overwrite"))],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / hidden / STATE_DIR / "notes.txt").read_text() == "mine"
    assert zarr.open_group(str(dst), mode="r").attrs["fstack_dask"]["nhsize"] == 5
    said = f"{tmp_path / hidden}, a staging folder an overwrite of {dst} cut short left"
    assert said in proc.stderr and "'.fstack_dask/notes.txt'" in proc.stderr, proc.stderr
    proc = cli("fuse", src, dst, *FUSE, "--overwrite")  # the folder, as the user's, is kept
    assert proc.returncode == 0, proc.stderr
    assert said in proc.stderr and "'.fstack_dask/notes.txt'" in proc.stderr, proc.stderr
    assert (tmp_path / hidden / STATE_DIR / "notes.txt").read_text() == "mine"


def test_a_failed_tidy_up_after_the_swap_is_a_warning_and_the_next_run_finishes_it(
    tmp_path, monkeypatch, caplog
):
    """The old code reported "21 of 16 blocks done" and kept the old output hidden for good."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    fuse_zarr(src, dst, chunks=CHUNK, progress=False)
    real = Destination.remove

    def remove(self, folder, **kwargs):
        if ".fstack-staging-" in folder.path:
            raise OSError(5, "Input/output error")
        return real(self, folder, **kwargs)

    monkeypatch.setattr(Destination, "remove", remove)
    out = fuse_zarr(src, dst, chunks=CHUNK, nhsize=5, overwrite=True, progress=False)
    assert out.attrs["fstack_dask"]["complete"] is True and out.attrs["fstack_dask"]["nhsize"] == 5
    (hidden,) = _hidden(tmp_path)
    assert f"rm -r '{tmp_path / hidden}'" in caplog.text
    monkeypatch.setattr(Destination, "remove", real)
    fuse_zarr(src, dst, chunks=CHUNK, nhsize=5, resume=True, progress=False)  # complete: tidies
    assert _hidden(tmp_path) == []


def test_a_failed_second_rename_of_the_two_rename_swap_puts_the_old_output_back(
    tmp_path, monkeypatch
):
    """Where renameat2(RENAME_EXCHANGE) is not supported (NFS, Lustre), the swap is two
    renames: the old output aside, the staged one into dst. An I/O error on the second left
    no dst at all, the old output hidden as '.NAME.fstack-staging-old-*', while the error
    said "the previous output in dst is unchanged". It is put back; a resume then finishes."""
    from fstack_dask._outputs import folders

    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    fuse_zarr(src, dst, chunks=CHUNK, progress=False)
    before = tree_digest(dst)
    real = os.rename

    def rename(a, b, *args, **kwargs):
        if "fstack-staging-" in a and "-old-" not in a and b == str(dst):
            raise OSError(5, "Input/output error", a)
        return real(a, b, *args, **kwargs)

    monkeypatch.setattr(folders, "renameat2", lambda *args: False)
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="the previous output in dst is unchanged"):
        fuse_zarr(src, dst, chunks=CHUNK, nhsize=5, overwrite=True, progress=False)
    assert tree_digest(dst) == before
    assert [h for h in _hidden(tmp_path) if "-old-" in h] == []
    monkeypatch.setattr(os, "rename", real)
    out = fuse_zarr(src, dst, chunks=CHUNK, nhsize=5, resume=True, progress=False)
    assert out.attrs["fstack_dask"]["complete"] is True and out.attrs["fstack_dask"]["nhsize"] == 5
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("how", ["fresh", "overwrite"])
def test_an_io_error_tidying_a_complete_output_is_a_warning(tmp_path, monkeypatch, caplog, how):
    """An I/O error removing the state folder once the output was published (and swapped in)
    failed the run, exit 1, saying "nothing was written" (a fresh run) or "dst is kept with
    0 of 9 blocks done; rerun with --resume" (an overwrite) of a complete output (strace's
    inject=unlinkat:error=EIO at the done folder). It is a warning; a resume tidies up."""
    from fstack_dask._outputs import lifecycle

    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    if how == "overwrite":
        fuse_zarr(src, dst, chunks=CHUNK, progress=False)
    real = lifecycle.remove_state

    def remove_state(folder, *args, **kwargs):
        if folder.path.endswith(STATE_DIR):
            raise OSError(5, "Input/output error", "done")
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(lifecycle, "remove_state", remove_state)
    with caplog.at_level(logging.WARNING, logger="fstack_dask"):
        out = fuse_zarr(src, dst, chunks=CHUNK, nhsize=5, overwrite=how == "overwrite",
                        progress=False)  # fmt: skip
    assert out.attrs["fstack_dask"]["complete"] is True and out.attrs["fstack_dask"]["nhsize"] == 5
    assert f"{dst} is complete, but its state folder" in caplog.text
    assert (dst / STATE_DIR).exists() and not (dst / STATE_DIR / "lock").exists()
    monkeypatch.setattr(lifecycle, "remove_state", real)
    fuse_zarr(src, dst, chunks=CHUNK, nhsize=5, resume=True, progress=False)
    assert not (dst / STATE_DIR).exists()
    assert sorted(os.listdir(tmp_path)) == ["out.zarr", "src.zarr"]
    expected = focus_stack(small_stack().transpose(1, 2, 0), nhsize=5)
    np.testing.assert_array_equal(zarr.open_group(str(dst), mode="r")["0"][...], expected)


def test_an_io_error_removing_the_lock_does_not_keep_dst_locked_here(tmp_path, monkeypatch):
    """An I/O error removing the lock of a complete output (EIO on NFS) is a warning, "the next
    run into it removes it"; but the lock's descriptor stayed open, its flock held, and in the
    same process (a notebook) every later run into dst was refused, "is being written by pid
    <this one>", until the process ended."""
    import fsspec.implementations.local as local

    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    real, failed = local.LocalFileSystem.rm_file, []

    def rm_file(self, path, *args, **kwargs):
        if str(path).endswith(f"/{STATE_DIR}/lock") and not failed:
            failed.append(path)
            raise OSError(5, "Input/output error", path)
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(local.LocalFileSystem, "rm_file", rm_file)
    fuse_zarr(src, dst, chunks=CHUNK, progress=False)
    assert failed and (dst / STATE_DIR / "lock").exists()
    fuse_zarr(src, dst, chunks=CHUNK, resume=True, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["out.zarr", "src.zarr"]
    assert not (dst / STATE_DIR).exists()


@pytest.mark.parametrize("call", ["rmdir", "scandir"])
def test_an_io_error_removing_a_folder_of_the_previous_output_is_not_called_foreign(
    tmp_path, monkeypatch, caplog, call
):
    """An rmdir failing with EIO (or a folder that could not be listed, which os.walk skips,
    its rmdir then failing) while the swapped-out previous output was removed read as "a
    kept file inside": the warning said "kept ['1'] in .NAME.fstack-staging-...: fstack_dask
    did not write them" (it did), and the hidden folder, its proofs gone, stayed beside dst
    for good. The failure is named in the usual warning, and the next run removes the rest."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    fuse_zarr(src, dst, chunks=CHUNK, progress=False)
    real, failed = getattr(os, call), []

    def fail_once(path, *args, **kwargs):
        if ".fstack-staging-" in str(path) and str(path).endswith("/1/c") and not failed:
            failed.append(path)
            raise OSError(5, "Input/output error", path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, call, fail_once)
    with caplog.at_level(logging.WARNING, logger="fstack_dask"):
        out = fuse_zarr(src, dst, chunks=CHUNK, nhsize=5, overwrite=True, progress=False)
    assert failed and out.attrs["fstack_dask"]["nhsize"] == 5
    assert "did not write them" not in caplog.text
    assert "the previous one, moved to" in caplog.text and "Input/output error" in caplog.text
    monkeypatch.setattr(os, call, real)
    fuse_zarr(src, dst, chunks=CHUNK, nhsize=5, resume=True, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["out.zarr", "src.zarr"]


def test_zarrs_temporary_file_of_a_zarr_json_is_ours_for_an_overwrite(
    tmp_path, monkeypatch, caplog
):
    """zarr writes zarr.json through 'zarr.<32 hex>.partial' (Path.with_suffix), which a kill
    leaves. An --overwrite of that unfinished output took it for a user's file ("kept
    ['0/zarr.<hex>.partial'] ...: fstack_dask did not write them"): it stayed in the output."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    _interrupted(src, dst, monkeypatch, depth_map=True)
    left = ["0/zarr.0123456789abcdef0123456789abcdef.partial", "depth/zarr.%s.partial" % ("f" * 32)]
    for name in left:  # a kill while zarr wrote the level's (the map's) zarr.json
        (dst / name).write_bytes(b'{"zarr_for')
    with caplog.at_level(logging.WARNING, logger="fstack_dask"):
        fuse_zarr(src, dst, chunks=CHUNK, depth_map=True, overwrite=True, progress=False)
    assert "did not write" not in caplog.text, caplog.text
    assert [n for n in left if (dst / n).exists()] == []


def test_a_failed_run_that_cannot_remove_what_it_wrote_does_not_say_nothing_was_written(
    tmp_path, monkeypatch
):
    """A fault on every unlink of a temporary '.partial' zarr wrote while creating dst (ENOSPC
    in the fault sweep) left it there, and the error still ended "nothing was written"; every
    later run then refused dst as not ours. The error names what is left."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    real = os.unlink

    def unlink(path, *args, **kwargs):
        if str(path).endswith(".partial") and "/depth/zarr." in str(path):
            raise OSError(28, "No space left on device", path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(OSError) as caught:
        fuse_zarr(src, dst, chunks=CHUNK, depth_map=True, progress=False)
    assert "nothing was written" not in str(caught.value)
    # (zarr's temporary file of depth/zarr.json is this run's: its removal's error names it)
    assert f"{str(dst / 'depth')}/zarr." in str(caught.value)
    assert "could not be removed" in str(caught.value)
    assert str(caught.value).endswith("remove it by hand")


def test_a_swap_that_cannot_put_the_old_output_back_says_dst_is_missing(tmp_path, monkeypatch):
    """The two-rename swap's second rename fails, and so does the rename back (the same
    failing NFS server): dst is gone, the old output hidden beside it, and the error said
    "the previous output in dst is unchanged". It says where the old output is; the next run
    puts it back and a resume finishes."""
    from fstack_dask._outputs import folders

    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    fuse_zarr(src, dst, chunks=CHUNK, progress=False)
    real = os.rename

    def rename(a, b, *args, **kwargs):
        if "fstack-staging-" in a and b == str(dst):  # the staged one in, the old one back
            raise OSError(5, "Input/output error", a)
        return real(a, b, *args, **kwargs)

    monkeypatch.setattr(folders, "renameat2", lambda *args: False)
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError) as caught:
        fuse_zarr(src, dst, chunks=CHUNK, nhsize=5, overwrite=True, progress=False)
    monkeypatch.setattr(os, "rename", real)
    assert not dst.exists()
    [old] = [h for h in _hidden(tmp_path) if "-old-" in h]
    assert "unchanged" not in str(caught.value), caught.value
    assert f"dst is missing: the previous output is in {str(tmp_path / old)!r}" in str(caught.value)
    assert (tmp_path / old / "zarr.json").exists()
    out = fuse_zarr(src, dst, chunks=CHUNK, nhsize=5, resume=True, progress=False)
    assert out.attrs["fstack_dask"]["nhsize"] == 5 and _hidden(tmp_path) == []


def test_a_folder_another_run_removed_first_is_removed(tmp_path, monkeypatch):
    """Two runs may remove the same output of ours at once (a resume that finds a complete
    TIFF working store while the run that placed the TIFF still removes it): since the rmdir
    of a folder failing with EIO fails the removal, one the other run had already removed
    (ENOENT) failed it too, "[Errno 2] No such file or directory: '.../0/c/2'"."""
    from fstack_dask._locations import resolve
    from fstack_dask._outputs.removal import remove_output

    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    fuse_zarr(src, dst, chunks=CHUNK, progress=False)
    real = os.unlink

    def unlink(path, *args, **kwargs):  # and the other run removes the folder it emptied
        real(path, *args, **kwargs)
        parent = os.path.dirname(str(path))
        if parent.startswith(f"{dst}/") and not os.listdir(parent):
            os.rmdir(parent)

    monkeypatch.setattr(os, "unlink", unlink)
    assert remove_output(resolve(str(dst), name="dst"), protect=[]) == []
    assert sorted(os.listdir(tmp_path)) == ["src.zarr"]


KILLED_AFTER_EXCHANGE = textwrap.dedent(
    """
    import os, signal, sys
    from fstack_dask import fuse_zarr
    from fstack_dask._outputs import folders

    exchange = folders.exchange

    def exchange_then_die(new, dst):
        exchange(new, dst)
        os.kill(os.getpid(), signal.SIGKILL)

    folders.exchange = exchange_then_die
    fuse_zarr(sys.argv[1], sys.argv[2], chunks=32, nhsize=5, overwrite=True, progress=False)
    """
)


def test_a_kill_right_after_the_swap_loses_no_user_file(tmp_path):
    """Killed between the exchange and moving the user's files along: the next run puts
    them back into dst and removes the previous output."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    fuse_zarr(src, dst, chunks=CHUNK, progress=False)
    _user_files(dst, ["notes.txt", "2024"])
    before = digest_of(dst, ["notes.txt", "2024"])
    proc = subprocess.run([sys.executable, "-c", KILLED_AFTER_EXCHANGE, str(src), str(dst)],
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    assert not (dst / "notes.txt").exists() and len(_hidden(tmp_path)) == 1
    proc = cli("fuse", src, dst, "--resume", "--nhsize", "5", *FUSE)
    assert proc.returncode == 0, proc.stderr
    assert digest_of(dst, ["notes.txt", "2024"]) == before
    assert _hidden(tmp_path) == [] and not (dst / STATE_DIR).exists()
    expected = focus_stack(small_stack().transpose(1, 2, 0), nhsize=5)
    np.testing.assert_array_equal(zarr.open_group(str(dst), mode="r")["0"][...], expected)


def test_a_source_inside_the_previous_output_a_kill_left_is_not_moved_into_dst(tmp_path):
    """Killed right after its swap, an overwrite left the previous output beside dst with a
    user's stack inside it, which the next run moves back into dst. A run whose source was
    that stack moved it into dst while it read it. It stays where it is, the
    previous output with it, and a warning says so; the run writes dst."""
    seed = write_src(tmp_path / "seed.zarr")
    dst = tmp_path / "out.zarr"
    fuse_zarr(seed, dst, chunks=CHUNK, progress=False)
    shutil.copytree(seed, dst / "mystack.zarr")
    proc = subprocess.run([sys.executable, "-c", KILLED_AFTER_EXCHANGE, str(seed), str(dst)],
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    [old] = _hidden(tmp_path)
    src = tmp_path / old / "mystack.zarr"
    before = tree_digest(src)
    proc = cli("fuse", src, dst, *FUSE, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert "'mystack.zarr', which was in" in proc.stderr and "is this run's source" in proc.stderr
    assert tree_digest(src) == before and not (dst / "mystack.zarr").exists()
    expected = focus_stack(small_stack().transpose(1, 2, 0))
    np.testing.assert_array_equal(zarr.open_group(str(dst), mode="r")["0"][...], expected)


KILLED_BETWEEN_THE_TWO_RENAMES = textwrap.dedent(
    """
    import os, signal, sys
    from fstack_dask import fuse_zarr
    from fstack_dask._outputs import folders

    folders.renameat2 = lambda *args: False  # a filesystem without RENAME_EXCHANGE (NFS)
    rename = os.rename

    def rename_then_die(a, b, *args, **kwargs):
        rename(a, b, *args, **kwargs)
        if "-staging-old-" in b:  # the old output moved aside, the new one not yet in
            os.kill(os.getpid(), signal.SIGKILL)

    os.rename = rename_then_die
    fuse_zarr(sys.argv[1], sys.argv[2], chunks=32, nhsize=5, overwrite=True, progress=False)
    """
)


def test_a_kill_between_the_two_renames_of_a_swap_gives_dst_back(tmp_path):
    """Where the swap is two renames (no RENAME_EXCHANGE), a kill between them left no dst,
    the old output hidden as '.NAME.fstack-staging-old-*'; the next --resume fused dst again
    from scratch and left both hidden folders for good. It renames the old output back
    (a warning), then swaps the finished staged output in, as after any cut-short overwrite.
    ``info`` of dst meanwhile said "src ... does not exist", as if the output were lost: it
    says where the previous output is, whole, and that the next run puts it back."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    fuse_zarr(src, dst, chunks=CHUNK, progress=False)
    proc = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_THE_TWO_RENAMES, str(src),
                           str(dst)], capture_output=True, text=True, timeout=180)  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    assert not dst.exists() and len(_hidden(tmp_path)) == 2
    [old] = [name for name in _hidden(tmp_path) if "-old-" in name]
    info = cli("info", dst)
    assert info.returncode == 0, info.stderr
    assert (
        f"missing: an overwrite cut short while swapping left the previous output, whole, "
        f"in {tmp_path / old}" in info.stdout
    ), info.stdout
    assert "state:      complete" in info.stdout and "overwrite:  under way in " in info.stdout
    proc = cli("fuse", src, dst, "--resume", "--nhsize", "5", *FUSE)
    assert proc.returncode == 0, proc.stderr
    assert f"warning: restored {dst} from " in proc.stderr
    assert _hidden(tmp_path) == [] and sorted(os.listdir(tmp_path)) == ["out.zarr", "src.zarr"]
    expected = focus_stack(small_stack().transpose(1, 2, 0), nhsize=5)
    np.testing.assert_array_equal(zarr.open_group(str(dst), mode="r")["0"][...], expected)


def test_a_dst_removed_after_a_swap_the_kill_cut_short_is_not_put_back(tmp_path):
    """The two-rename swap done, the run killed before removing the old output (hidden as
    '.NAME.fstack-staging-old-*'); the user then removes dst and starts afresh. The fresh run
    renamed the old output back into dst ("restored ... where an overwrite cut short while
    swapping had left it") and refused it: "dst ... already exists". Only a kill between the
    two renames, the staged output still beside dst, puts it back."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    fuse_zarr(src, dst, chunks=CHUNK, progress=False)
    killed = KILLED_AFTER_EXCHANGE.replace(
        "exchange = folders.exchange",
        "folders.renameat2 = lambda *a: False\nexchange = folders.exchange",
    )
    proc = subprocess.run([sys.executable, "-c", killed, str(src), str(dst)],
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    [old] = _hidden(tmp_path)
    assert "-old-" in old
    shutil.rmtree(dst)
    proc = cli("fuse", src, dst, *FUSE)
    assert proc.returncode == 0, proc.stderr
    assert "restored" not in proc.stderr
    expected = focus_stack(small_stack().transpose(1, 2, 0))
    np.testing.assert_array_equal(zarr.open_group(str(dst), mode="r")["0"][...], expected)


def test_a_source_inside_the_previous_output_a_kill_hid_is_not_moved(tmp_path):
    """A kill between the two renames of a swap left the previous output hidden beside dst
    ('.NAME.fstack-staging-old-*'), with a user's stack kept inside it (entries not ours move
    along with an overwrite). A run whose source is that stack put the hidden folder back
    into dst, moving the source with it ("restored ..."), then refused: dst existed.
    The source is never moved: the previous output stays hidden and the run writes dst."""
    seed = write_src(tmp_path / "seed.zarr")
    dst = tmp_path / "out.zarr"
    fuse_zarr(seed, dst, chunks=CHUNK, progress=False)
    shutil.copytree(seed, dst / "mystack.zarr")
    proc = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_THE_TWO_RENAMES, str(seed),
                           str(dst)], capture_output=True, text=True, timeout=180)  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    [old] = [h for h in _hidden(tmp_path) if "-old-" in h]
    src = tmp_path / old / "mystack.zarr"
    before = tree_digest(src)
    proc = cli("fuse", src, dst, *FUSE)
    assert proc.returncode == 0, proc.stderr
    assert "restored" not in proc.stderr
    assert tree_digest(src) == before
    expected = focus_stack(small_stack().transpose(1, 2, 0))
    np.testing.assert_array_equal(zarr.open_group(str(dst), mode="r")["0"][...], expected)


def test_a_kill_while_the_previous_output_is_removed_leaves_it_ours(tmp_path):
    """Killed while removing the swapped-out previous output (here as its level 1 goes):
    the old code had removed its id file first, so the rest was no output of ours any more,
    and stayed hidden beside dst for good (a fifth adversarial run). What shows it ours now
    goes last, and the next run removes the rest."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    fuse_zarr(src, dst, chunks=CHUNK, progress=False)
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_REMOVING, r"fstack-staging-[0-9a-f]+/1/",
         "fuse", str(src), str(dst), "--overwrite", "--nhsize", "5", *map(str, FUSE)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    (hidden,) = _hidden(tmp_path)
    assert not (tmp_path / hidden / "0" / "c").exists()  # level 0's chunks went first
    proc = cli("fuse", src, dst, "--resume", "--nhsize", "5", *FUSE)
    assert proc.returncode == 0, proc.stderr
    assert _hidden(tmp_path) == [] and sorted(os.listdir(tmp_path)) == ["out.zarr", "src.zarr"]
    expected = focus_stack(small_stack().transpose(1, 2, 0), nhsize=5)
    np.testing.assert_array_equal(zarr.open_group(str(dst), mode="r")["0"][...], expected)


@pytest.mark.parametrize("dst_name", ["out.zarr", "out.tif"])
def test_a_kill_between_the_last_two_deletions_of_a_removal_leaves_nothing_for_good(
    tmp_path, dst_name
):
    """Killed as the previous output (swapped out by an overwrite) or a TIFF's working store
    was removed, between its id file's deletion and its root zarr.json's: the folder left
    held that zarr.json alone (and an empty '0'), taken for a user's copy of our attributes.
    Beside an OME-Zarr dst it stayed hidden for good, every overwrite saying it "holds
    'zarr.json', which fstack_dask did not write"; beside a TIFF dst every run into it was
    refused, exit 2, "move out what it holds". The next run removes what is left."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / dst_name
    assert cli("fuse", src, dst, *FUSE).returncode == 0
    removed = r"(fstack-staging-[0-9a-f]+|fstack-work)/0/\.fstack_dask-output$"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_REMOVING, removed, "fuse", str(src), str(dst),
         "--overwrite", "--nhsize", "5", *map(str, FUSE)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    (hidden,) = _hidden(tmp_path)
    assert sorted(os.listdir(tmp_path / hidden)) in (["0", "zarr.json"], ["zarr.json"])
    proc = cli("fuse", src, dst, "--overwrite", "--nhsize", "7", *FUSE)
    assert proc.returncode == 0, proc.stderr
    assert "did not write" not in proc.stderr, proc.stderr
    assert sorted(os.listdir(tmp_path)) == sorted([dst_name, "src.zarr"])


def test_a_stale_overwrite_whose_removal_was_cut_short_is_not_resumed(tmp_path, monkeypatch):
    """An interrupted ``--overwrite`` leaves its staging folder; a later overwrite removing
    it as stale is killed between its two passes (only the record, the id and the root
    metadata left). ``--resume`` took that for a resumable run and failed on it, the same
    way every time (a seventh adversarial run): now it is removed, and dst reported
    complete."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    fuse_zarr(src, dst, chunks=CHUNK, depth_map=True, progress=False)
    _interrupted(src, dst, monkeypatch, overwrite=True, nhsize=5, depth_map=True)
    (stale,) = _hidden(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_REMOVING, rf"{stale}/depth/zarr\.json$",
         "fuse", str(src), str(dst), "--overwrite", "--depth-map", "--nhsize", "7",
         *map(str, FUSE)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    left = sorted(f.relative_to(tmp_path / stale).as_posix()
                  for f in (tmp_path / stale).rglob("*") if f.is_file())  # fmt: skip
    assert left == [".fstack_dask/run.json", "0/.fstack_dask-output", "zarr.json"], left
    proc = cli("fuse", src, dst, "--resume", "--depth-map", *FUSE)
    assert proc.returncode == 0 and "already complete" in proc.stderr, proc.stderr
    assert stale not in os.listdir(tmp_path)


# ------------------------------------------- 4. what an overwrite's swap must not change


@pytest.mark.parametrize("mode", [0o700, 0o2775])
def test_an_overwrite_keeps_the_folders_permissions_and_group(tmp_path, mode):
    """An overwrite replaces dst by the new output's folder: the old code left it 755 with
    the user's primary group, a private folder (700) made readable to all, a setgid project
    folder's group lost (a third adversarial run). The new folder takes the old one's mode,
    group and ACLs; the files inside inherit the setgid group."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    dst.mkdir()
    group = os.getgid() if os.geteuid() != 0 else 1  # root may give any group (1: daemon)
    os.chown(dst, -1, group)
    os.chmod(dst, mode)
    assert cli("fuse", src, dst, *FUSE).returncode == 0
    inode = dst.stat().st_ino
    proc = cli("fuse", src, dst, "--overwrite", "--nhsize", "5", *FUSE)
    assert proc.returncode == 0, proc.stderr
    st = dst.stat()
    assert st.st_ino != inode  # another folder, which looks as the old one did
    assert (st.st_mode & 0o7777, st.st_gid) == (mode, group)
    if mode & 0o2000:
        assert (dst / "0" / "zarr.json").stat().st_gid == group


def test_an_overwrite_keeps_a_private_tiff_private(tmp_path, monkeypatch):
    """The new TIFF takes the old one's mode, and so does the working store the run fuses
    into beside it (a fourth adversarial run found it 755 for the whole run)."""
    from fstack_dask._runs import tiff_output

    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.ome.tif"
    assert cli("fuse", src, dst, *FUSE).returncode == 0
    os.chmod(dst, 0o600)
    seen, real = [], tiff_output.write_tiff

    def write_tiff(store, path, **kwargs):
        seen.append(os.stat(store.path).st_mode & 0o7777)
        return real(store, path, **kwargs)

    monkeypatch.setattr(tiff_output, "write_tiff", write_tiff)
    fuse_zarr(src, dst, chunks=CHUNK, overwrite=True, nhsize=3, progress=False)
    assert seen == [0o700] and dst.stat().st_mode & 0o777 == 0o600
    os.utime(dst, (1_577_836_800, 1_577_836_800))  # 2020: the new file is not dated so
    assert cli("fuse", src, dst, "--overwrite", "--nhsize", "5", *FUSE).returncode == 0
    assert dst.stat().st_mode & 0o777 == 0o600
    assert dst.stat().st_mtime > 1_700_000_000  # a sync tool comparing mtimes sees it new


def test_an_overwrite_that_cannot_swap_dst_is_refused_before_it_computes(tmp_path, tmpfs):
    """A mount point cannot be renamed: the old code computed the whole output, then failed
    with EBUSY, every time (and its --resume too). The working folder would be swapped away
    from under the user's shell. Both refused at once, nothing written."""
    mount, _limit = tmpfs
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    for out in (mount, dst):
        assert cli("fuse", src, out, *FUSE).returncode == 0
    before = tree_digest(tmp_path)
    proc = cli("fuse", src, mount, "--overwrite", *FUSE)
    assert proc.returncode == 2 and "is a mount point" in one_line_error(proc)
    for cwd, spelled in ((dst, "."), (dst / "0", dst)):
        proc = cli("fuse", src, spelled, "--overwrite", *FUSE, cwd=cwd)
        assert proc.returncode == 2 and "working folder" in one_line_error(proc), proc.stderr
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("name", ["out.zarr", "out.ome.tif"])
def test_an_overwrite_of_a_dst_bound_from_the_same_filesystem_is_refused(tmp_path, name):
    """A container binds a host's output folder (or TIFF) at dst, from the same filesystem:
    ``os.path.ismount`` does not see such a mount point, and --overwrite computed the whole
    output, then failed with "Device or resource busy", saying to rerun with --resume (which
    failed so again). Refused at once, as for another filesystem's mount, nothing written."""
    from safety_util import bind_or_skip, unmount_all_under

    src = write_src(tmp_path / "src.zarr")
    host = tmp_path / "host"
    host.mkdir()
    assert cli("fuse", src, host / name, *FUSE).returncode == 0
    (tmp_path / "box").mkdir()
    dst = tmp_path / "box" / name
    dst.mkdir() if name.endswith(".zarr") else dst.touch()
    bind_or_skip(host / name, dst)
    try:
        before = tree_digest(tmp_path)
        proc = cli("fuse", src, dst, "--overwrite", "--nhsize", "5", *FUSE)
        assert proc.returncode == 2 and "is a mount point" in one_line_error(proc)
        assert tree_digest(tmp_path) == before
    finally:
        unmount_all_under(tmp_path)


def test_an_overwrite_of_an_output_holding_a_mount_point_is_refused(tmp_path):
    """A filesystem mounted inside the output (``out.zarr/ann``) could not be moved into the
    new output: the swap left it stranded in the old output's hidden folder, which the
    warning told the user to ``rm -r`` (a fourth adversarial run). Refused before anything
    is computed."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    assert cli("fuse", src, dst, *FUSE).returncode == 0
    (dst / "ann").mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(dst / "ann")],
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        (dst / "ann" / "cells.csv").write_text("x,y")
        before = tree_digest(tmp_path)
        proc = cli("fuse", src, dst, "--overwrite", *FUSE)
        assert proc.returncode == 2 and "holds a mount point ('ann')" in one_line_error(proc)
        assert tree_digest(tmp_path) == before
    finally:
        subprocess.run(["umount", "-l", str(dst / "ann")], check=False)


@pytest.mark.parametrize("finished", [True, False])
def test_a_source_bound_inside_an_output_is_never_removed_with_it(tmp_path, monkeypatch,
                                                                  finished):  # fmt: skip
    """The source bound (``mount --bind``) at ``out.zarr/depth/7``: ``--overwrite`` walked
    into it and deleted the source's files, exit 0 (a seventh adversarial run). A bind mount
    of the same filesystem is no mount point to ``os.path.ismount``; the mount table tells.
    Refused, before anything is computed (finished) or removed (unfinished: cleared in
    place)."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    if finished:
        fuse_zarr(src, dst, chunks=CHUNK, depth_map=True, progress=False)
    else:
        _interrupted(src, dst, monkeypatch, depth_map=True)
    inside = dst / "depth" / "7"
    inside.mkdir()
    bind_or_skip(src, inside)
    try:
        before = tree_digest(src)
        # (unfinished: refused as holding a user's folder inside an array)
        refusals = (ValueError, PermissionError, *([] if finished else [FileExistsError]))
        with pytest.raises(refusals, match="depth/7"):
            fuse_zarr(src, dst, chunks=CHUNK, depth_map=True, overwrite=True, progress=False)
        assert tree_digest(src) == before
    finally:
        unmount_all_under(tmp_path)


@pytest.mark.skipif(
    not unshare_works("-m", "sh", "-c", "mount --bind /dev/null /proc/$$/mountinfo"),
    reason="needs root and unshare -m",
)
@pytest.mark.parametrize("statx", ["statx", "no statx"])
def test_a_source_bound_inside_an_output_is_kept_where_mounts_are_masked(tmp_path, statx):
    """A hardened container masks /proc/self/mountinfo (empty here: /dev/null bound over it).
    The mount table listed no mount, so none was seen: the source's chunk folder bound over
    the old output's ``0/c`` had its files deleted as the level's chunks by ``--overwrite``,
    which said to ``rm -r`` the rest (a ninth adversarial run). Each folder is now asked
    (statx) whether a mount starts there, or where statx is refused (seccomp, x86_64's
    number) whether its mount id differs from its parent's: refused before anything is
    computed, the source and the old output kept."""
    from safety_util import NO_STATX_CLI

    if statx == "no statx" and os.uname().machine != "x86_64":
        pytest.skip("the seccomp filter's syscall number is x86_64's")
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    assert cli("fuse", src, dst, *FUSE).returncode == 0
    before = tree_digest(tmp_path)
    run = "-m fstack_dask" if statx == "statx" else f"-c {shlex.quote(NO_STATX_CLI)}"
    script = (
        f'mount --bind "{src}/0/c/0" "{dst}/0/c" && mount --bind /dev/null /proc/$$/mountinfo '
        f'&& exec "{sys.executable}" {run} fuse "{src}" "{dst}" --chunks {CHUNK} '
        "--no-progress --overwrite"
    )
    env = {**os.environ, "XDG_CACHE_HOME": CACHE}
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True,
                          text=True, check=False, env=env)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "holds a mount point ('0/c')" in one_line_error(proc)
    assert tree_digest(tmp_path) == before


@pytest.mark.skipif(
    not unshare_works("-m", "sh", "-c", "mount --bind /dev/null /proc/$$/mountinfo")
    or os.uname().machine != "x86_64",
    reason="needs root, unshare -m, and x86_64 (the seccomp filter's syscall number)",
)
def test_a_tiff_overwrite_where_no_mount_point_can_be_told_is_refused_naming_dst(tmp_path):
    """A hardened container masks /proc/self/mountinfo and refuses statx (an older runtime's
    seccomp profile) and name_to_handle_at: whether a TIFF dst is a mount point cannot be
    told. ``--overwrite`` failed "cannot read the mount table ...", naming no parameter, exit
    1; as for a Zarr dst, it is refused in one line naming dst, exit 2, nothing
    written."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.tif"
    assert cli("fuse", src, dst, *FUSE).returncode == 0
    before = tree_digest(tmp_path)
    proc = masked_cli("fuse", src, dst, *FUSE, "--overwrite", no_statx=True, no_mount_id=True)
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc)
    assert line.startswith(f"fstack-dask: error: dst {str(dst)!r} cannot be checked for being a "
                           "mount point: cannot read the mount table"), line  # fmt: skip
    assert "statx failed: Operation not permitted" in line
    assert "nor name_to_handle_at (Operation not permitted)" in line
    assert tree_digest(tmp_path) == before


@pytest.mark.skipif(
    not unshare_works("-m", "sh", "-c", "mount --bind /dev/null /proc/$$/mountinfo")
    or os.uname().machine != "x86_64",
    reason="needs root, unshare -m, and x86_64 (the seccomp filter's syscall number)",
)
def test_a_fresh_tiff_run_where_statx_is_refused_removes_its_working_store(tmp_path):
    """/proc/self/mountinfo masked and statx refused (an older runtime's seccomp profile):
        a fresh TIFF run could not tell whether a mount started in its working store, left it
        beside the TIFF and warned of '.../out.tif/.fstack_dask', a path that does not exist
    . Where a mount starts is told by the mount id (name_to_handle_at) there: the store
        goes; where that is refused too, the store is kept, the warning naming its real path."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.tif"
    proc = masked_cli("fuse", src, dst, *FUSE, no_statx=True)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr, proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["out.tif", "src.zarr"]
    dst.unlink()
    proc = masked_cli("fuse", src, dst, *FUSE, no_statx=True, no_mount_id=True)
    assert proc.returncode == 0, proc.stderr
    work = tmp_path / ".out.tif.fstack-work"
    named = re.findall(r"refusing to delete '([^']+)'", proc.stderr)
    assert named and all(os.path.exists(p) for p in named), proc.stderr
    assert f"rm -r {str(work)!r}" in proc.stderr


@pytest.mark.parametrize("sep", ["\u2028", "\r", "\x85"], ids=["U+2028", "CR", "NEL"])
def test_a_mount_point_whose_path_has_a_line_separator_is_seen(tmp_path, sep):
    """The kernel escapes only space, tab, newline and backslash in /proc/self/mountinfo:
    a folder named with U+2028 (str.splitlines' line end) or a CR (a text read's) cut the
    mount's line in two, the mount point was missed, and an --overwrite of an output holding
    a user's folder bound at ``0/c/1`` swapped, then deleted its files '0' and '1' as the
    level's chunks (exit 0). Refused before anything is computed, their files kept."""
    from safety_util import bind_or_skip, unmount_all_under

    where = tmp_path / f"proj{sep}x"
    where.mkdir()
    src = write_src(where / "src.zarr")
    dst = where / "out.zarr"
    assert cli("fuse", src, dst, *FUSE).returncode == 0
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    for name in ("0", "1"):
        (theirs / name).write_text("the user's")
    bind_or_skip(theirs, dst / "0" / "c" / "1")
    try:
        before = tree_digest(tmp_path)
        proc = cli("fuse", src, dst, "--overwrite", "--nhsize", "5", *FUSE)
        assert proc.returncode == 2, proc.stderr
        assert "holds a mount point ('0/c/1')" in one_line_error(proc)
        assert tree_digest(tmp_path) == before
    finally:
        unmount_all_under(tmp_path)
    assert sorted(os.listdir(theirs)) == ["0", "1"]


def test_an_output_of_another_user_in_a_sticky_folder_cannot_be_swapped(tmp_path, monkeypatch):
    """In a sticky folder (``/tmp``, a shared project folder: 1777) only a folder's owner may
    rename it: another user's overwrite computed everything, then failed at the swap, and its
    --resume failed the same way (a fourth adversarial run, as a second user). The check,
    here as user 1000 looking at root's folders."""
    from fstack_dask._locations import resolve
    from fstack_dask._outputs.folders import unswappable

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    (shared / "out.zarr").mkdir()
    dst = resolve(shared / "out.zarr", name="dst")
    assert unswappable(dst) is None  # its owner (root) may
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "belongs to another user in a sticky folder" in unswappable(dst)
    os.chmod(shared, 0o777)
    assert unswappable(dst) is None


@pytest.mark.parametrize(
    ("dst_name", "theirs", "flags"),
    [
        ("out.zarr", ".out.zarr.fstack-staging-nhsize5", ("--overwrite",)),
        ("out.zarr", ".out.zarr.fstack-staging-old-results", ("--overwrite",)),
        ("out.tif", ".out.tif.fstack-work", ()),
        ("out.tif", ".out.tif.fstack-work", ("--overwrite",)),
    ],
    ids=["staging-like", "old-staging-like", "tiff working store, plain run", "... overwrite"],
)
def test_a_users_output_at_a_name_like_a_runs_own_is_never_removed(
    tmp_path, dst_name, theirs, flags
):
    """An output the user wrote at a hidden name like the folders a run leaves beside dst
    was removed by the next run into dst: by ``--overwrite`` as an interrupted overwrite's
    leftover, and by a plain run into a TIFF as its finished working store (which then exited
    2, "nothing was written", an eighth adversarial run). Names of runs' own carry 12 hex
    digits, and a working store says it is one."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / dst_name
    if dst_name.endswith(".zarr"):
        assert cli("fuse", src, dst, *FUSE).returncode == 0
    assert cli("fuse", src, tmp_path / theirs, "--nhsize", "5", *FUSE).returncode == 0
    (tmp_path / theirs / "notes.txt").write_text("the user's notes")
    before = tree_digest(tmp_path / theirs)
    proc = cli("fuse", src, dst, *flags, *FUSE)
    if dst_name.endswith(".tif"):
        assert proc.returncode == 2, proc.stderr
        line = one_line_error(proc)
        assert "is not a TIFF's working store" in line and "nothing was written" in line
        assert not dst.exists()
    else:
        assert proc.returncode == 0, proc.stderr
    assert tree_digest(tmp_path / theirs) == before


def test_a_users_folder_that_cannot_be_moved_back_does_not_stop_later_overwrites(tmp_path):
    """A user's read-only folder inside an output cannot be moved into the new one (renaming
    a folder to another parent needs write permission on it). The first overwrite said so;
    every later overwrite then failed, exit 1, with a raw ``Permission denied``, trying to
    move it again (an eighth adversarial run). Now each run warns, naming the folder and how
    to move it, keeps the previous output that holds it, and succeeds. (As an ordinary user:
    root without the capabilities that bypass file permissions.)"""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to play an ordinary user")
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    user = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", sys.executable,
            "-m", "fstack_dask", "fuse", str(src), str(dst), *map(str, FUSE)]  # fmt: skip
    run = lambda *flags: subprocess.run([*user, *flags], capture_output=True, text=True,  # noqa: E731
                                        timeout=300, check=False)  # fmt: skip
    assert run().returncode == 0
    (dst / "notes").mkdir()
    (dst / "notes" / "n.txt").write_text("important")
    (dst / "notes").chmod(0o555)
    try:
        for nhsize in (7, 5, 3):
            proc = run("--overwrite", "--nhsize", str(nhsize))
            assert proc.returncode == 0, proc.stderr
            assert "'notes', which was in" in proc.stderr and "chmod u+w" in proc.stderr
            assert zarr.open_group(str(dst), mode="r").attrs["fstack_dask"]["nhsize"] == nhsize
        (kept,) = tmp_path.glob(".out.zarr.fstack-staging-*/notes/n.txt")
        assert kept.read_text() == "important"
    finally:
        for folder in tmp_path.glob("**/notes"):
            folder.chmod(0o755)


def test_an_overwrite_in_a_folder_the_user_may_not_write_says_so(tmp_path):
    """dst's folder not writable: an overwrite, which writes beside dst, said "dst cannot be
    created: Permission denied", exit 1 (an eighth adversarial run). Refused first, naming
    the folder, exit 2, nothing changed. (As an ordinary user, as above.)"""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to play an ordinary user")
    src = write_src(tmp_path / "src.zarr")
    folder = tmp_path / "results"
    folder.mkdir()
    dst = folder / "out.zarr"
    assert cli("fuse", src, dst, *FUSE).returncode == 0
    before = tree_digest(folder)
    folder.chmod(0o555)
    try:
        proc = subprocess.run(
            [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", sys.executable,
             "-m", "fstack_dask", "fuse", str(src), str(dst), "--overwrite", "--nhsize", "5",
             *map(str, FUSE)], capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    finally:
        folder.chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    assert f"lies in '{folder}', which this user may not write" in one_line_error(proc)
    assert tree_digest(folder) == before


def test_a_second_run_between_the_two_renames_of_a_swap_is_refused(tmp_path, monkeypatch):
    """Without RENAME_EXCHANGE (NFS) the swap renames dst aside, then the new output into
    dst: between the two dst is missing and its lock is beside it with the old output. A
    second run started there created dst and wrote its own output (exit 0); the swap then
    failed "the previous output in dst is unchanged" with the old output hidden beside it.
    The second run is refused as for any output being written; the overwrite finishes."""
    from fstack_dask._outputs import folders

    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    fuse_zarr(src, dst, chunks=CHUNK, progress=False)
    monkeypatch.setattr(folders, "renameat2", lambda *a: False)
    real, seconds = os.rename, []

    def rename(a, b, *args, **kwargs):
        real(a, b, *args, **kwargs)
        if "-staging-old-" in str(b) and not seconds:  # dst aside, the new one not yet in
            seconds.append(cli("fuse", src, dst, *FUSE, "--nhsize", "7"))

    monkeypatch.setattr(os, "rename", rename)
    out = fuse_zarr(src, dst, chunks=CHUNK, nhsize=5, overwrite=True, progress=False)
    monkeypatch.setattr(os, "rename", real)
    [second] = seconds
    assert second.returncode == 1 and "is being written by pid" in second.stderr, second.stderr
    assert out.attrs["fstack_dask"]["nhsize"] == 5
    expected = focus_stack(small_stack().transpose(1, 2, 0), nhsize=5)
    np.testing.assert_array_equal(out["0"][...], expected)
    assert sorted(os.listdir(tmp_path)) == ["out.zarr", "src.zarr"]


@pytest.mark.parametrize("old", ["complete", "unfinished"])
def test_an_overwrite_unlinks_only_our_names_of_hard_linked_files(tmp_path, old):
    """A user's file hard-linked into an old output (beside our entries; one inside a level
    refuses the overwrite since g96) and a chunk of ours hard-linked out of it (a backup): an
    overwrite (a swap, or a clear in place of an unfinished run) removes our names only;
    every link's file keeps its bytes, and the user's name stays in the output."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    if old == "complete":
        assert cli("fuse", src, dst, "--chunks", CHUNK).returncode == 0
    else:
        killed = subprocess.run([sys.executable, "-c", _KILLED_AFTER_A_BLOCK, str(src), str(dst),
                                 "--chunks", str(CHUNK)], capture_output=True, text=True,
                                env={**os.environ, "XDG_CACHE_HOME": CACHE})  # fmt: skip
        assert killed.returncode == -9, killed.stderr
    home = tmp_path / "home"
    home.mkdir()
    (home / "mine.txt").write_bytes(b"mine")
    os.link(home / "mine.txt", dst / "notes.txt")
    chunk = next(p for p in sorted((dst / "0" / "c").rglob("*")) if p.is_file())
    os.link(chunk, home / "backup")
    backup = (home / "backup").read_bytes()
    proc = cli("fuse", src, dst, "--chunks", CHUNK, "--overwrite", "--depth-map")
    assert proc.returncode == 0, proc.stderr
    assert (home / "mine.txt").read_bytes() == b"mine"
    assert (home / "backup").read_bytes() == backup
    assert (dst / "notes.txt").read_bytes() == b"mine"
    assert os.path.samefile(home / "mine.txt", dst / "notes.txt")
    assert os.stat(home / "backup").st_nlink == 1  # our name of it went
    assert zarr.open_group(dst, mode="r").attrs["fstack_dask"]["complete"] is True


# The CLI's fuse (argv: its arguments), SIGKILLed once its first block is written.
_KILLED_AFTER_A_BLOCK = textwrap.dedent("""
    import os, signal, sys
    from fstack_dask._outputs.state import OutputState
    mark = OutputState.mark_done
    def mark_then_die(self, *args, **kwargs):
        mark(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    OutputState.mark_done = mark_then_die
    from fstack_dask._cli.main import main
    sys.exit(main(["fuse", *sys.argv[1:]]))
""")


def test_remains_are_never_removed_through_a_link_at_the_working_store_s_name(tmp_path):
    """A TIFF's working store may be a link (to scratch): the folder it leads to holding a
    user's zarr.json with our attributes copied in (and an empty '0') was taken for what a
    removal cut short left, and that zarr.json deleted, before any lock; refused as before."""
    src = write_src(tmp_path / "src.zarr")
    assert cli("fuse", src, tmp_path / "ref.ome.zarr", *FUSE).returncode == 0
    theirs = tmp_path / "scratch" / "group"
    (theirs / "0").mkdir(parents=True)
    meta = json.loads((tmp_path / "ref.ome.zarr" / "zarr.json").read_text())
    meta["attributes"]["notes"] = "the user's"
    (theirs / "zarr.json").write_text(json.dumps(meta))
    before = (theirs / "zarr.json").read_bytes()
    os.symlink(theirs, tmp_path / ".out.tif.fstack-work")
    proc = cli("fuse", src, tmp_path / "out.tif", *FUSE)
    assert proc.returncode == 2 and "move out what it holds" in proc.stderr, proc.stderr
    assert (theirs / "zarr.json").read_bytes() == before
