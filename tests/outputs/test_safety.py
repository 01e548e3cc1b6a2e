"""Never destroy what is not ours (issue 8): spellings, ownership, resume identity, staged
overwrite, late source problems, durability.

Real stores and files on disk, the real CLI in a subprocess, and sha256 snapshots of the
source and of every folder around dst (``tree_digest`` of the whole test folder).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import tree_digest

from fstack_dask import focus_stack, fuse_zarr, synthetic_stack, write_stack
from fstack_dask._locations import remove_tree, resolve
from fstack_dask._outputs.ownership import STATE_DIR, owned_output
from fstack_dask._runs.blocks import FuseJob

SHAPE, PLANES, CHUNK = (96, 80), 7, 32
CACHE = os.path.join(os.path.expanduser("~"), ".cache")  # numba's cache, outside HOME=tmp


def _stack(seed=0, dtype="uint16"):
    return synthetic_stack(SHAPE, PLANES, dtype=dtype, seed=seed).stack.transpose(2, 0, 1)


@pytest.fixture()
def src(tmp_path):
    path = tmp_path / "stack.ome.zarr"
    write_stack(path, _stack(), axes="zyx", chunks=(PLANES, CHUNK, CHUNK))
    return path


def cli(*args, cwd=None, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "fstack_dask", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False,
        env={**os.environ, "XDG_CACHE_HOME": CACHE, **(env or {})},
    )  # fmt: skip


def run_main(*args, capsys):
    """The CLI's main() in this process (the same code as the subprocess, much faster)."""
    from fstack_dask._cli.main import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def _one_line_error(proc):
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fstack-dask: error: "), proc.stderr
    return lines[0]


# ----------------------------------------------------------- 1. one resolution of places


def test_every_spelling_of_one_place_is_one_location(tmp_path, monkeypatch):
    target = tmp_path / "out.zarr"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    canonical = resolve(str(target.resolve()), name="dst")
    spellings = [
        "out.zarr", "./out.zarr/", "out.zarr//", "x/../out.zarr", "~/out.zarr",
        "file:out.zarr", f"file:{target}", f"file://{target}", "file://out.zarr",
        "local:out.zarr", f"local://{target}", "link", "./link/", target, Path("link"),
    ]  # fmt: skip
    for spelling in spellings:
        assert resolve(spelling, name="dst") == canonical, spelling
    assert resolve("file:~", name="dst") == resolve(str(tmp_path), name="dst")
    # containment uses the same canonical paths
    inner = resolve("file:out.zarr/0", name="dst")
    assert canonical.contains(inner) and not inner.contains(canonical)


@pytest.mark.parametrize(
    ("spelling", "error", "match"),
    [
        ("foo:bar", ValueError, "neither a local path nor a URL"),
        ("c:/data/out.zarr", ValueError, "neither a local path nor a URL"),
        # chained URLs resolve to the place they wrap (tests/test_locations.py), but every
        # link must be a protocol fsspec knows: fsspec itself reads 'a::b' as a local path
        ("a::b", ValueError, "chained URL whose link 'a' names no protocol"),
        ("simplecache::nosuchprotocol://x", ValueError, "chained URL whose link"),
        ("dir://out.zarr", ValueError, "dir:// URL without its folder"),
        ("nosuchprotocol://bucket/x", ValueError, "fsspec does not know"),
        ("", ValueError, "non-empty"),
        ("memory://", ValueError, "names no place"),
        # its root spelled otherwise: an --overwrite there staged the output inside itself,
        # then failed, the output broken
        ("memory://.", ValueError, "names no place"),
        ("memory://x/..", ValueError, "names no place"),
        ("Memory:///./", ValueError, "names no place"),
        (b"out.zarr", TypeError, "local path"),
        (3, TypeError, "local path"),
    ],
)
def test_spellings_we_do_not_understand_are_refused(spelling, error, match):
    with pytest.raises(error, match=match) as info:
        resolve(spelling, name="dst")
    assert "dst" in str(info.value)


def test_http_dst_is_refused_with_a_clear_error(src, tmp_path):
    proc = cli("fuse", src, "https://example.org/out.zarr", "--no-progress")
    assert proc.returncode == 2
    assert "read-only" in _one_line_error(proc)


def _victim(root: Path) -> Path:
    victim = root / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "notes.txt").write_text("precious")
    return victim


@pytest.mark.parametrize(
    "spelling",
    ["file:{v}", "file:victim", "local:victim", "local://{v}", "file://{v}", "victim/",
     "./x/../victim", "file:.", "file:~", "~", "."],
)  # fmt: skip
def test_no_spelling_makes_overwrite_delete_a_user_folder(
    src, tmp_path, spelling, monkeypatch, capsys
):
    """The issue's reproduction: `fuse stack.zarr file:$PWD/victim` emptied victim/."""
    victim = _victim(tmp_path)
    before = tree_digest(tmp_path)
    dst = spelling.format(v=victim)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    if spelling == "file:{v}":  # the issue's own command line, in a real process
        proc = cli("fuse", src, dst, "--overwrite", "--no-progress", cwd=tmp_path,
                   env={"HOME": str(tmp_path)})  # fmt: skip
    else:
        proc = run_main("fuse", src, dst, "--overwrite", "--no-progress", capsys=capsys)
    assert proc.returncode == 2, proc.stderr
    _one_line_error(proc)
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize(
    "spelling",
    ["file:stack.ome.zarr", "local://{src}", "file://{src}/", "{src}/0", "file:{src}/../",
     "./x/../stack.ome.zarr"],
)  # fmt: skip
def test_dst_that_is_or_holds_the_source_is_refused_however_spelled(
    src, tmp_path, spelling, monkeypatch, capsys
):
    before = tree_digest(tmp_path)
    monkeypatch.chdir(tmp_path)
    for flags in ([], ["--overwrite"], ["--resume"]):
        dst = spelling.format(src=src)
        proc = run_main("fuse", src, dst, *flags, "--no-progress", capsys=capsys)
        assert proc.returncode == 2, proc.stderr
        assert "source" in _one_line_error(proc)
    assert tree_digest(tmp_path) == before


def test_source_spelled_as_a_local_url_is_protected_too(src, tmp_path):
    before = tree_digest(tmp_path)
    proc = cli("fuse", f"local://{src}", f"file:{src}", "--overwrite", "--no-progress")
    assert proc.returncode == 2 and "source" in _one_line_error(proc)
    assert tree_digest(tmp_path) == before


# ------------------------------------------------------------ 2. delete only our outputs


def test_overwrite_refuses_a_raw_zarr_stack(src, tmp_path):
    """The typo `fuse stack1.zarr stack2.zarr --overwrite` must not delete stack2."""
    other = tmp_path / "stack2.zarr"
    write_stack(other, _stack(seed=5), axes="zyx")
    (other / "README.txt").write_text("acquisition notes")
    before = tree_digest(tmp_path)
    proc = cli("fuse", src, other, "--overwrite", "--no-progress")
    assert proc.returncode == 2
    assert "not an fstack_dask output" in _one_line_error(proc)
    assert tree_digest(tmp_path) == before


def test_resume_into_a_folder_with_an_empty_state_folder_is_refused(src, tmp_path):
    folder = _victim(tmp_path)
    (folder / STATE_DIR).mkdir()
    before = tree_digest(tmp_path)
    for flags in (["--resume"], ["--overwrite"], ["--resume", "--overwrite"]):
        proc = cli("fuse", src, folder, *flags, "--no-progress")
        assert proc.returncode == 2, proc.stderr
        assert "not an fstack_dask output" in _one_line_error(proc)
    assert tree_digest(tmp_path) == before


def test_overwrite_replaces_an_empty_folder_and_our_output(src, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli("fuse", src, empty, "--overwrite", "--no-progress").returncode == 0
    first = zarr.open_group(str(empty), mode="r")["0"][...]
    np.testing.assert_array_equal(first, focus_stack(_stack().transpose(1, 2, 0)))
    (empty / "my-notes.txt").write_text("mine")  # a user's file inside our output
    proc = cli("fuse", src, empty, "--overwrite", "--nhsize", "5", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    out = zarr.open_group(str(empty), mode="r")
    assert out.attrs["fstack_dask"]["nhsize"] == 5
    assert (empty / "my-notes.txt").read_text() == "mine"  # kept, where it was put
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no debris


def test_the_guarded_delete_checks_again_right_before_removing(tmp_path, monkeypatch):
    ours = tmp_path / "out.zarr"
    fuse_zarr(_write_src(tmp_path), ours, progress=False)
    location = resolve(ours, name="dst")
    assert owned_output(location) is None
    # Someone replaces our output by their data after the caller's check.
    os.remove(ours / "zarr.json")
    (ours / "data.bin").write_bytes(b"x")
    before = tree_digest(tmp_path)
    with pytest.raises(PermissionError, match="not an fstack_dask output"):
        remove_tree(location, owned=owned_output)
    assert tree_digest(tmp_path) == before
    # and never the working folder, the home folder or the filesystem root
    monkeypatch.chdir(ours)
    with pytest.raises(PermissionError, match="refusing to delete"):
        remove_tree(location, owned=lambda _loc: None)
    for place in ("/", os.path.expanduser("~")):
        with pytest.raises(PermissionError, match="refusing to delete"):
            remove_tree(resolve(place, name="x"), owned=lambda _loc: None)
    assert tree_digest(tmp_path) == before


def _write_src(tmp_path, name="src.zarr", data=None, **kw):
    path = tmp_path / name
    write_stack(path, _stack() if data is None else data, axes="zyx",
                chunks=(PLANES, CHUNK, CHUNK), **kw)  # fmt: skip
    return path


# -------------------------------------------------------------- 3. resume checks the source


def _interrupt_after(monkeypatch, n_blocks: int):
    """Make the next run stop (as Ctrl-C would) after n_blocks blocks are written."""
    real = FuseJob.fuse_and_write
    calls = {"n": 0}

    def run_block(self, block, *args, **kwargs):
        if calls["n"] >= n_blocks:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(self, block, *args, **kwargs)

    monkeypatch.setattr(FuseJob, "fuse_and_write", run_block)
    return lambda: monkeypatch.setattr(FuseJob, "fuse_and_write", real)


def _unfinished(src, dst, monkeypatch, n_blocks=2, **kw):
    restore = _interrupt_after(monkeypatch, n_blocks)
    with pytest.raises(KeyboardInterrupt):
        fuse_zarr(src, dst, chunks=CHUNK, scheduler="synchronous", progress=False, **kw)
    restore()
    done = os.listdir(dst / STATE_DIR / "done")
    assert len(done) == n_blocks
    return done


def test_resume_accepts_the_same_store_under_another_spelling(src, tmp_path, monkeypatch):
    dst = tmp_path / "out.zarr"
    _unfinished(src, dst, monkeypatch)
    monkeypatch.chdir(tmp_path)
    out = fuse_zarr(f"file:{src.name}/", f"local://{dst}", resume=True, progress=False)
    expected = focus_stack(_stack().transpose(1, 2, 0))
    np.testing.assert_array_equal(out["0"][...], expected)


def _rewrite_chunk(src: Path, data: np.ndarray, index: tuple[int, int]):
    """Change the values of one source chunk (y, x index) in place."""
    arr = zarr.open_array(str(src / "0"), mode="r+")
    j, i = index
    region = (slice(None), slice(j * CHUNK, (j + 1) * CHUNK), slice(i * CHUNK, (i + 1) * CHUNK))
    arr[region] = data[region]


def test_resume_refuses_a_source_chunk_changed_under_a_finished_block(src, tmp_path, monkeypatch):
    dst = tmp_path / "out.zarr"
    _unfinished(src, dst, monkeypatch, n_blocks=2)  # blocks (0, 0) and (0, 1) are done
    _rewrite_chunk(src, _stack(seed=9), (0, 0))
    before = tree_digest(tmp_path)
    with pytest.raises(ValueError, match=r"source file 'c/0/0/0' changed.*finished block"):
        fuse_zarr(src, dst, resume=True, progress=False)
    assert tree_digest(tmp_path) == before
    proc = cli("fuse", src, dst, "--resume", "--no-progress")
    assert proc.returncode == 2 and "changed" in _one_line_error(proc)


def test_resume_accepts_a_change_no_finished_block_has_read(src, tmp_path, monkeypatch):
    """A repaired chunk that only unfinished blocks read: the resume is exact."""
    dst = tmp_path / "out.zarr"
    _unfinished(src, dst, monkeypatch, n_blocks=1)  # block (0, 0) reads chunks (0-1, 0-1)
    new = _stack(seed=9)
    _rewrite_chunk(src, new, (2, 2))
    out = fuse_zarr(src, dst, resume=True, progress=False)
    current = zarr.open_array(str(src / "0"))[...]
    np.testing.assert_array_equal(out["0"][...], focus_stack(current.transpose(1, 2, 0)))


def test_resume_refuses_another_stack_under_the_same_path(src, tmp_path, monkeypatch):
    dst = tmp_path / "out.zarr"
    _unfinished(src, dst, monkeypatch)
    import shutil

    shutil.rmtree(src)
    write_stack(src, _stack(seed=3)[:, :64], axes="zyx", chunks=(PLANES, CHUNK, CHUNK))
    with pytest.raises(ValueError, match="source changed since the run began.*its shape was"):
        fuse_zarr(src, dst, resume=True, progress=False)
    shutil.rmtree(src)
    write_stack(src, _stack(seed=3), axes="zyx", chunks=(PLANES, CHUNK, CHUNK))
    with pytest.raises(ValueError, match="changed"):
        fuse_zarr(src, dst, resume=True, progress=False)


# ---------------------------------------------------------- 4. validate before touching dst


def test_overwrite_with_a_zero_pixel_size_leaves_the_old_output(tmp_path):
    good = _write_src(tmp_path, "good.zarr")
    dst = tmp_path / "out.zarr"
    fuse_zarr(good, dst, progress=False)
    bad = _write_src(tmp_path, "bad.zarr")
    meta = json.loads((bad / "zarr.json").read_text())
    transform = meta["attributes"]["ome"]["multiscales"][0]["datasets"][0]
    transform["coordinateTransformations"][0]["scale"] = [1.0, 0.0, 1.0]
    (bad / "zarr.json").write_text(json.dumps(meta))
    before = tree_digest(tmp_path)
    proc = cli("fuse", bad, dst, "--overwrite", "--no-progress")
    assert proc.returncode == 2
    assert "positive finite pixel size" in _one_line_error(proc)
    assert tree_digest(tmp_path) == before


def _float_src(tmp_path, name, nan_at=None):
    data = _stack().astype(np.float32)
    if nan_at is not None:
        data[(slice(None), *nan_at)] = np.nan
    return _write_src(tmp_path, name, data)


def _repair_nan(src: Path) -> np.ndarray:
    """Replace NaN by 0, rewriting only the chunks that hold NaN; return the repaired data."""
    arr = zarr.open_array(str(src / "0"), mode="r+")
    data = arr[...]
    for j in range(0, data.shape[1], CHUNK):
        for i in range(0, data.shape[2], CHUNK):
            region = (slice(None), slice(j, j + CHUNK), slice(i, i + CHUNK))
            if np.isnan(data[region]).any():
                data[region] = np.nan_to_num(data[region])
                arr[region] = data[region]
    return data


def test_overwrite_that_meets_nan_late_leaves_the_old_output(tmp_path):
    dst = tmp_path / "out.zarr"
    fuse_zarr(_float_src(tmp_path, "good.zarr"), dst, progress=False)
    bad = _float_src(tmp_path, "nan.zarr", nan_at=(90, 70))  # the last chunk row and column
    before = tree_digest(tmp_path)
    proc = cli("fuse", bad, dst, "--overwrite", "--chunks", CHUNK, "--no-progress")
    assert proc.returncode == 1, proc.stderr
    line = _one_line_error(proc)
    assert "nan.zarr" in line and "chunk '0/c/0/2/2'" in line and "NaN" in line
    assert "previous output in dst is unchanged" in line and "kept beside it" in line
    after = tree_digest(tmp_path)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed and all(".out.zarr.fstack-staging-" in k for k in changed), changed
    old = zarr.open_group(str(dst), mode="r")["0"][...]
    # repair the chunk, resume the overwrite: the new output replaces the old one
    data = _repair_nan(bad)
    proc = cli("fuse", bad, dst, "--resume", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    new = zarr.open_group(str(dst), mode="r")["0"][...]
    np.testing.assert_array_equal(new, focus_stack(data.transpose(1, 2, 0)))
    assert not np.array_equal(new, old)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_fresh_run_with_nan_keeps_finished_blocks_and_says_how_to_resume(tmp_path):
    bad = _float_src(tmp_path, "nan.zarr", nan_at=(90, 70))
    dst = tmp_path / "out.zarr"
    proc = cli("fuse", bad, dst, "--chunks", CHUNK, "--no-progress")
    assert proc.returncode == 1
    line = _one_line_error(proc)
    assert "is kept with 5 of 9 blocks done" in line and "--resume" in line
    # repair the chunk, resume: the result is that of a fresh run on the repaired data
    data = _repair_nan(bad)
    assert cli("fuse", bad, dst, "--resume", "--no-progress").returncode == 0
    out = zarr.open_group(str(dst), mode="r")["0"][...]
    np.testing.assert_array_equal(out, focus_stack(data.transpose(1, 2, 0)))


def test_a_failed_run_whose_writes_cannot_be_removed_says_what_is_left(tmp_path, monkeypatch):
    """Credentials that may write but not read back (an S3 put-only policy): the clean-up
    of a run that finished nothing failed, silently, and the message said "nothing was
    written" over five objects and a lock (a sixth adversarial run)."""
    from fstack_dask._outputs.destination import Destination

    bad = _float_src(tmp_path, "nan.zarr", nan_at=(slice(None), slice(None)))

    def forbidden(self, target):
        raise PermissionError("Forbidden")

    monkeypatch.setattr(Destination, "remove_run", forbidden)
    dst = tmp_path / "out.zarr"
    with pytest.raises(ValueError) as failed:
        fuse_zarr(bad, dst, progress=False)
    assert "nothing was written" not in str(failed.value)
    assert f"what this run wrote in {str(dst)!r} could not be removed (Forbidden)" in str(
        failed.value
    )


def test_a_fresh_run_with_nan_everywhere_leaves_nothing(tmp_path):
    bad = _float_src(tmp_path, "nan.zarr", nan_at=(slice(None), slice(None)))
    before = tree_digest(tmp_path)
    proc = cli("fuse", bad, tmp_path / "out.zarr", "--no-progress")
    assert proc.returncode == 1
    assert "nothing was written" in _one_line_error(proc)
    assert tree_digest(tmp_path) == before


# ---------------------------------------------------------- 5. failures end in one line


def test_metadata_that_is_not_json_names_src_and_the_file(src, tmp_path):
    for body in ("{not json", "[1, 2]"):
        (src / "zarr.json").write_text(body)
        proc = cli("fuse", src, tmp_path / "out.zarr", "--no-progress")
        assert proc.returncode == 2
        line = _one_line_error(proc)
        assert "stack.ome.zarr" in line and "zarr.json" in line
    assert not (tmp_path / "out.zarr").exists()


def test_dst_that_is_a_file_exits_2(src, tmp_path):
    target = tmp_path / "out.zarr"
    target.write_text("not a folder")
    before = tree_digest(tmp_path)
    for flags in ([], ["--overwrite"], ["--resume"]):
        proc = cli("fuse", src, target, *flags, "--no-progress")
        assert proc.returncode == 2 and "is an existing file" in _one_line_error(proc)
    assert tree_digest(tmp_path) == before


def test_chunk_overflow_names_the_option(src, tmp_path):
    proc = cli("fuse", src, tmp_path / "o.zarr", "--chunks", "99999999999999999999999")
    assert proc.returncode == 2 and "--chunks" in _one_line_error(proc)
    with pytest.raises(ValueError, match="chunks must be at most"):
        fuse_zarr(src, tmp_path / "o.zarr", chunks=10**30)


@pytest.mark.parametrize("flag", ["overwrite", "resume", "depth_map", "progress"])
def test_non_bool_flags_are_a_type_error(src, tmp_path, flag):
    with pytest.raises(TypeError, match=f"{flag} must be True or False"):
        fuse_zarr(src, tmp_path / "o.zarr", **{flag: "no"})
    assert not (tmp_path / "o.zarr").exists()


def test_memory_per_task_as_a_size_string(src, tmp_path):
    out = fuse_zarr(src, tmp_path / "o.zarr", memory_per_task="1GiB", progress=False)
    assert out["0"].shape == SHAPE
    with pytest.raises(ValueError, match="memory_per_task must be a size"):
        fuse_zarr(src, tmp_path / "p.zarr", memory_per_task="lots")


# ------------------------------------------------------------------------ 7. durability


def test_chunk_files_are_synced_before_the_done_marker(src, tmp_path, monkeypatch):
    """Record the order of fsyncs and marker creations of a real run."""
    events = []
    real_fsync = os.fsync

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    dst = tmp_path / "out.zarr"
    fuse_zarr(src, dst, chunks=CHUNK, depth_map=True, levels=0, scheduler="synchronous",
              progress=False)  # fmt: skip
    synced = [p for kind, p in events if kind == "fsync"]
    markers = [i for i, p in enumerate(synced) if f"{STATE_DIR}/done/" in p]
    assert len(markers) == 9
    for n, where in enumerate(markers):
        block = synced[where].rsplit("/", 1)[1]
        j, i = map(int, block.split("_"))
        before = synced[markers[n - 1] + 1 if n else 0 : where]
        for array in ("0", "depth"):
            path = dst / array if array == "0" else dst / array / "0"
            assert str(path / "c" / str(j) / str(i)) in before, (block, array)


def test_the_folders_a_block_s_chunks_went_into_are_synced_in_their_parents_before_its_marker(
    src, tmp_path, monkeypatch
):
    """docs/safety.md, "Durable": a power cut cannot leave a marker without its data. zarr makes
    the folders of a chunk (``0/c``, ``0/c/1``) as it writes it, and a folder's own fsync does
    not make its name durable in its parent: only the chunk files and their folder were synced,
    so a power cut could take ``0/c/1``, the chunk files in it, and keep their done-marker."""
    events = []
    real_fsync = os.fsync

    def fsync(fd):
        events.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    dst = tmp_path / "out.zarr"
    for _ in range(2):  # and again into dst removed and made anew (inodes reused)
        shutil.rmtree(dst, ignore_errors=True)
        events.clear()
        fuse_zarr(src, dst, chunks=CHUNK, depth_map=True, levels=1, scheduler="synchronous",
                  progress=False)  # fmt: skip
        markers = [i for i, p in enumerate(events) if f"{STATE_DIR}/done/" in p]
        assert len(markers) >= 9  # level 0's blocks, then level 1's
        for where in markers:
            before = set(events[:where])
            # every chunk folder synced so far is synced in its parent too, up to dst
            folders = {p for p in before if "/c/" in p and os.path.isdir(p)}
            for folder in folders:
                parent = os.path.dirname(folder)
                while parent != str(dst):
                    assert parent in before, (events[where], parent)
                    parent = os.path.dirname(parent)


@pytest.mark.parametrize("code", ["EIO", "EINVAL"])
def test_a_folder_whose_fsync_fails_with_eio_fails_the_block(src, tmp_path, monkeypatch, code):
    """An fsync of a chunk's folder failing with EIO (what the folder held may be lost) was
    ignored like a filesystem's EINVAL (it cannot sync a folder): the block's done-marker
    was written all the same. EIO fails the run, naming the folder, and no block is marked
    done; EINVAL is still ignored."""
    import errno
    import stat

    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode) and "/0/c" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    dst = tmp_path / "out.zarr"
    kwargs = {"chunks": CHUNK, "levels": 0, "scheduler": "synchronous", "progress": False}
    if code == "EINVAL":
        fuse_zarr(src, dst, **kwargs)
        assert zarr.open_group(str(dst), mode="r").attrs["fstack_dask"]["complete"] is True
        return
    with pytest.raises(OSError, match=rf"Input/output error: '{dst}/0/c"):
        fuse_zarr(src, dst, **kwargs)
    assert not os.path.exists(dst) or not os.listdir(dst / STATE_DIR / "done")


def test_dst_is_synced_in_its_folder_once_complete(src, tmp_path, monkeypatch):
    """A new dst's own name was never synced in its parent folder, nor its published root
    ``zarr.json`` (complete: true): a power cut after the run said "complete", its state folder
    removed, could lose dst's entry (ext4 without dirsync). Both are synced once published,
    before the state folder goes."""
    events = []
    real_fsync, real_unlink = os.fsync, os.unlink

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def unlink(path, *args, **kwargs):
        events.append(("unlink", os.fspath(path)))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "unlink", unlink)
    dst = tmp_path / "out.zarr"
    fuse_zarr(src, dst, chunks=CHUNK, levels=0, scheduler="synchronous", progress=False)
    tidied = next(i for i, (kind, p) in enumerate(events)
                  if kind == "unlink" and f"{STATE_DIR}/done/" in p)  # fmt: skip
    after_publish = events[:tidied]
    assert ("fsync", str(dst / "zarr.json")) in after_publish[-6:], events[-12:]
    assert ("fsync", str(tmp_path)) in after_publish[-6:], events[-12:]


def test_an_eio_syncing_an_overwrite_s_swap_fails_the_run_saying_where_each_output_is(
    src, tmp_path, monkeypatch
):
    """The folder holding dst synced after an overwrite's swap: its EIO was ignored (a power
    cut could undo the swap the run said was done). It fails the run, which says that dst holds
    the new output and where the previous one is; --resume removes that one."""
    import errno

    kwargs = {"chunks": CHUNK, "levels": 0, "scheduler": "synchronous", "progress": False}
    dst = tmp_path / "out.zarr"
    fuse_zarr(src, dst, **kwargs)
    real_fsync, parent_syncs = os.fsync, []

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}") == str(tmp_path):
            parent_syncs.append(fd)
            if len(parent_syncs) == 2:  # the first: the new output's, published beside dst
                raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="after the swap .*: dst holds the new output, complete"):
        fuse_zarr(src, dst, nhsize=5, overwrite=True, **kwargs)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert zarr.open_group(str(dst), mode="r").attrs["fstack_dask"]["nhsize"] == 5
    fuse_zarr(src, dst, nhsize=5, resume=True, **kwargs)
    assert sorted(os.listdir(tmp_path)) == ["out.zarr", "stack.ome.zarr"]


def test_a_chunk_folder_made_again_within_its_parents_ctime_tick_is_synced_in_it(
    tmp_path, monkeypatch
):
    """The cache of parents synced (by the folder's inode and its parent's ctime) skipped the
    sync of a chunk folder removed and made again within the tick of its parent's ctime, its
    inode reused: on a filesystem keeping whole seconds (ext4 of 128-byte inodes, ext3, some NFS
    servers), a dst made anew within the second kept the keys the cache had, and its chunk
    folders' names were not synced before their markers. A ctime within its tick of now is
    never cached."""
    import time
    from types import SimpleNamespace

    from fstack_dask._outputs import write

    second = time.time_ns() // 10**9 * 10**9
    real_stat, synced = os.stat, []

    def stat(path, *args, **kwargs):  # whole seconds, and each path's inode reused
        found = real_stat(path, *args, **kwargs)
        return SimpleNamespace(st_dev=found.st_dev, st_ino=len(str(path)), st_ctime_ns=second)

    monkeypatch.setattr(write, "fsync_dir", synced.append)
    root = tmp_path / "out.zarr"
    folder = root / "0" / "c" / "1"
    for _ in range(2):  # dst made anew, at once
        shutil.rmtree(root, ignore_errors=True)
        folder.mkdir(parents=True)
        synced.clear()
        os.stat = stat
        try:
            write._sync_new_folders(str(root), {str(folder)})
        finally:
            os.stat = real_stat
        assert synced == [str(root / "0" / "c"), str(root / "0"), str(root)], synced


def test_a_state_folder_that_cannot_be_removed_is_named_by_the_file_that_stayed(
    src, tmp_path, monkeypatch
):
    """A done marker that may not be removed (immutable here; root_squash on NFS): the
    completed run's warning said "Permission denied: '0_0'", a name without its folder
    (a ninth adversarial run). It names the file's path now; the output is complete."""
    import shutil

    dst = tmp_path / "out.zarr"
    done = _unfinished(src, dst, monkeypatch)
    marker = dst / STATE_DIR / "done" / sorted(done)[0]
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("chattr needs root")
    if subprocess.run(["chattr", "+i", str(marker)], check=False).returncode != 0:
        pytest.skip("chattr +i refused here")
    env = {**os.environ, "XDG_CACHE_HOME": CACHE}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "fstack_dask", "fuse", str(src), str(dst), "--chunks",
             str(CHUNK), "--no-progress", "--resume"],
            capture_output=True, text=True, check=False, env=env,
        )  # fmt: skip
    finally:
        subprocess.run(["chattr", "-i", str(marker)], check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"Operation not permitted: {str(marker)!r}" in proc.stderr
