"""An ordinary user's permissions: another user's output in a group-shared folder, sources
this user may not read, umasks.

The suite runs as root, which ignores file permissions; these tests run the real CLI as an
ordinary user (root without the capabilities that bypass them, through ``setpriv``), and give
"another user's" files to uid 65534 (nobody)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tifffile
from conftest import tree_digest
from safety_util import CACHE, CHUNK, cli, one_line_error, small_stack, write_src

from fstack_dask import fuse_zarr
from fstack_dask._runs.blocks import FuseJob

FUSE = ("--chunks", CHUNK, "--no-progress")
OTHER = 65534  # another user: nobody


def as_user(*args, umask: int = 0o022) -> subprocess.CompletedProcess:
    """The CLI run by an ordinary user (root without dac_override, dac_read_search, fowner)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to play an ordinary user")
    code = (
        f"import os, runpy; os.umask({umask}); runpy.run_module('fstack_dask', run_name='__main__')"
    )
    return subprocess.run(
        [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", sys.executable,
         "-c", code, *map(str, args)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "XDG_CACHE_HOME": CACHE},
    )  # fmt: skip


def give_to_other_user(folder: Path) -> None:
    """Another user's output, written under umask 022: readable, not writable, by others."""
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), OTHER, OTHER)
    os.chown(folder, OTHER, OTHER)


def _unfinished(src: Path, dst: Path, monkeypatch) -> None:
    """An unfinished output: the run stops (as Ctrl-C would) after two blocks."""
    real, calls = FuseJob.fuse_and_write, []

    def run_block(self, *args, **kwargs):
        if len(calls) >= 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FuseJob, "fuse_and_write", run_block)
    with pytest.raises(KeyboardInterrupt):
        fuse_zarr(src, dst, chunks=CHUNK, scheduler="synchronous", progress=False)
    monkeypatch.setattr(FuseJob, "fuse_and_write", real)


def _output(src: Path, dst: Path, monkeypatch, *, complete: bool) -> None:
    """This user's output of ``src`` in ``dst``: complete, or unfinished (two blocks)."""
    if complete:
        fuse_zarr(src, dst, chunks=CHUNK, scheduler="synchronous", progress=False)
    else:
        _unfinished(src, dst, monkeypatch)


def _folders_writable(root: Path) -> None:
    """Every folder below ``root`` writable by anyone (written under umask 0)."""
    for folder, dirs, _files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777)


def _demo_overwrite_refused(args: tuple) -> str:
    """The one-line error of ``demo ... --seed 7 --overwrite`` over the demo ``args`` made,
    run by this user (exit 1)."""
    proc = as_user(*args, "--seed", "7", "--overwrite")
    assert proc.returncode == 1, proc.stderr
    return one_line_error(proc)


def _colleague_s_sticky_dst(tmp_path: Path, monkeypatch, *, complete: bool) -> tuple[Path, Path]:
    """``src`` and ``dst``, a colleague's output (complete or unfinished) with the sticky bit
    (1777), every folder inside writable (umask 0)."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    _output(src, dst, monkeypatch, complete=complete)
    _folders_writable(dst)
    give_to_other_user(dst)
    dst.chmod(0o1777)
    return src, dst


@pytest.mark.parametrize("complete", [False, True], ids=["unfinished", "complete"])
def test_another_users_output_is_refused_naming_the_folder_and_its_owner(tmp_path, monkeypatch,
                                                                          complete):  # fmt: skip
    """A colleague's output in the group's folder (theirs, 755): ``--resume`` and
    ``--overwrite`` failed with a raw ``[Errno 13] Permission denied: '.../lock.<hex>.tmp'``,
    or "dst cannot be created: Permission denied" (a twentieth adversarial run). Refused
    first, naming the folder, its owner and mode, exit 1, nothing changed; the resume of a
    complete output, which writes nothing, still says there is nothing to do."""
    src = write_src(tmp_path / "src.zarr")
    lab = tmp_path / "lab"
    lab.mkdir(mode=0o777)
    lab.chmod(0o777)  # the group's folder: anyone may create in it
    dst = lab / "out.zarr"
    _output(src, dst, monkeypatch, complete=complete)
    give_to_other_user(dst)
    before = tree_digest(tmp_path)
    for flag in ("--overwrite", "--resume"):
        proc = as_user("fuse", src, dst, flag, *FUSE)
        if complete and flag == "--resume":
            assert proc.returncode == 0 and "nothing to resume" in proc.stderr, proc.stderr
            continue
        assert proc.returncode == 1, proc.stderr
        line = one_line_error(proc)
        assert f"'{dst}' is owned by 65534" in line or f"'{dst}' is owned by nobody" in line
        assert "may not be written by this user" in line and "mode 755" in line
        assert sorted(os.listdir(lab)) == ["out.zarr"]  # no staging folder left
        assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("case", ["file", "folder", "pattern", "zarr"])
def test_a_source_this_user_may_not_read_is_named_with_what_is_missing(tmp_path, case):
    """A plane this user may not read, a folder of planes it may enter but not list (x
    without r), a Zarr chunk folder of another user's: each said only ``[Errno 13] Permission
    denied: '...'``, and a pattern in the unlisted folder "matches no files" (a twentieth
    adversarial run). Now one line says what this user may not do to which path, and its
    owner and mode; exit 1, nothing written."""
    planes = tmp_path / "planes"
    planes.mkdir()
    for i, plane in enumerate(small_stack()):
        tifffile.imwrite(planes / f"p{i:02d}.tif", plane)
    src, denied, doing = planes, planes / "p03.tif", "read the file"
    if case == "file":
        denied.chmod(0o000)
    elif case in ("folder", "pattern"):
        planes.chmod(0o311)
        denied, doing = planes, "list the folder"
        src = planes / "*.tif" if case == "pattern" else planes
    else:
        src = write_src(tmp_path / "src.zarr")
        denied, doing = src / "0" / "c" / "0" / "1", "list the folder"
        give_to_other_user(src)
        denied.chmod(0o700)
    dst = tmp_path / "out.zarr"
    proc = as_user("fuse", src, dst, *FUSE)
    planes.chmod(0o755)
    assert proc.returncode == 1, proc.stderr
    line = one_line_error(proc)
    assert f"this user may not {doing} '{denied}' (owned by " in line, line
    assert "[Errno" not in line and not dst.exists()


def test_the_lock_and_done_markers_follow_the_umask_like_the_other_files(tmp_path, monkeypatch):
    """Under a group's umask 002 an output's files are 664, but its lock and done-markers were
    created 644 (a twentieth adversarial run): they now follow the umask as the rest does, and
    under 077 they stay private."""
    src = write_src(tmp_path / "src.zarr")
    real, seen = FuseJob.fuse_and_write, {}

    def run_block(self, *args, **kwargs):
        lock = Path(self.output.path) / ".fstack_dask" / "lock"
        seen.setdefault(lock.parent.parent.name, lock.stat().st_mode & 0o777)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FuseJob, "fuse_and_write", run_block)
    for umask, want in ((0o002, 0o664), (0o077, 0o600)):
        dst = tmp_path / f"out{umask:o}.zarr"
        old = os.umask(umask)
        try:
            _unfinished(src, dst, monkeypatch)
        finally:
            os.umask(old)
        markers = list((dst / ".fstack_dask" / "done").iterdir())
        assert markers and {m.stat().st_mode & 0o777 for m in markers} == {want}
        assert seen[dst.name] == want
        assert (dst / "zarr.json").stat().st_mode & 0o777 == want


@pytest.mark.parametrize("locked", ["DIR", "another user's planes"])
def test_a_demo_overwrite_this_user_may_not_write_changes_nothing(tmp_path, locked):
    """``demo DIR --overwrite`` where DIR (or its planes/, a colleague's) may not be written:
    it removed the planes, then failed (``[Errno 13] Permission denied: '.../planes'``), the
    previews and fused output left without their planes (a twentieth adversarial run). Now
    refused first, naming the folder, its owner and mode; nothing changed."""
    out = tmp_path / "demo"
    args = ("demo", out, "--size", "64", "--planes", "7", "--no-progress")
    assert as_user(*args).returncode == 0
    folder = out if locked == "DIR" else out / "planes"
    if locked == "DIR":
        out.chmod(0o555)
    else:
        give_to_other_user(folder)
    before = tree_digest(tmp_path)
    proc = as_user(*args, "--overwrite")
    out.chmod(0o755)
    assert proc.returncode == 1, proc.stderr
    line = one_line_error(proc)
    assert f"this user may not write the folder '{folder}' (owned by " in line, line
    assert "nothing was changed" in line and tree_digest(tmp_path) == before


@pytest.mark.parametrize(
    ("complete", "theirs"), [(False, "0/c/0"), (True, "0/c/1")], ids=["unfinished", "complete"]
)
def test_an_overwrite_this_user_may_not_remove_is_refused_before_anything_changes(
    tmp_path, monkeypatch, complete, theirs
):
    """This user's own output holding a colleague's folder (755): ``--overwrite`` removed
    what it could and failed on a raw ``Permission denied`` (unfinished), or swapped and
    left the old output half removed beside dst with a warning, exit 0 (complete). Now
    refused before anything is written, naming the folder, its owner and mode (a stat-only
    walk); nothing changed."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    _output(src, dst, monkeypatch, complete=complete)
    folder = dst / theirs
    give_to_other_user(folder)
    before = tree_digest(tmp_path)
    proc = as_user("fuse", src, dst, "--overwrite", *FUSE)
    assert proc.returncode == 1, proc.stderr
    line = one_line_error(proc)
    assert f"'{dst}' cannot be replaced: this user may not write the folder '{folder}'" in line
    assert "mode 755" in line and "nothing was written" in line, line
    assert sorted(os.listdir(tmp_path)) == ["out.zarr", "src.zarr"]  # no staging folder left
    assert tree_digest(tmp_path) == before


def test_an_overwrite_keeps_a_colleagues_locked_folder_inside_a_level(tmp_path, monkeypatch):
    """A colleague's folder (700) inside this user's unfinished output's level, named like
    nothing a run writes (0/annotations): ``--overwrite`` kept it and wrote the new output
    (exit 0) until c949817, whose walk then refused the overwrite, "may not list the folder
    ... ask its owner to let you remove it", for a folder it never removes. Refused now as
    a user's folder inside an array (g96: kept in dst's array around the new chunks), naming
    it, never as one this user may not list; once moved out, the overwrite goes."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    _unfinished(src, dst, monkeypatch)
    theirs = dst / "0" / "annotations"
    theirs.mkdir()
    (theirs / "cells.csv").write_text("x\n")
    give_to_other_user(theirs)
    theirs.chmod(0o700)
    proc = as_user("fuse", src, dst, "--overwrite", *FUSE)
    assert proc.returncode == 2, proc.stderr
    assert "holds '0/annotations' inside its arrays" in proc.stderr, proc.stderr
    assert "may not list" not in proc.stderr
    assert (theirs / "cells.csv").read_text() == "x\n"
    shutil.move(theirs, tmp_path / "annotations")
    proc = as_user("fuse", src, dst, "--overwrite", *FUSE)
    assert proc.returncode == 0, proc.stderr


def test_info_of_an_output_this_user_may_not_read_names_the_folder(tmp_path, monkeypatch):
    """``info`` of a colleague's unfinished output whose level folder this user may not enter
    said "src '...' is an unfinished fstack_dask output, not an image yet" (its id file could
    not be read, so it was taken for no output): now it says what is denied, on which path,
    with its owner and mode, exit 1."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    _unfinished(src, dst, monkeypatch)
    give_to_other_user(dst)
    (dst / "0").chmod(0o700)
    proc = as_user("info", dst)
    assert proc.returncode == 1, proc.stderr
    line = one_line_error(proc)
    assert f"this user may not enter the folder '{dst / '0'}' (owned by " in line, line
    assert "mode 700" in line and "not an image yet" not in line


def test_info_of_an_output_in_a_folder_this_user_may_enter_but_not_list(tmp_path):
    """A colleague's complete output in their home (711: entered, not listed): ``info`` of it
    failed "may not list the folder '/home/...'", its look for an overwrite under way beside
    the output (20050a8) listing the parent; info shows the output as before."""
    src = write_src(tmp_path / "src.zarr")
    home = tmp_path / "alice"
    home.mkdir()
    dst = home / "out.zarr"
    fuse_zarr(src, dst, chunks=CHUNK, scheduler="synchronous", progress=False)
    give_to_other_user(home)
    home.chmod(0o711)
    proc = as_user("info", dst)
    assert proc.returncode == 0, proc.stderr
    assert "state:      complete" in proc.stdout, proc.stdout


@pytest.mark.parametrize("case", ["plane", "dst"])
def test_a_refusal_by_an_acl_says_there_is_one(tmp_path, case):
    """A plane of mode 644, or an output folder of mode 777, that an ACL keeps from this user
    (``setfacl -m u:USER:---``): the checks hold (they ask the system, which reads the ACL),
    but the message named the mode alone, "mode 777", which says anyone may write it. It now
    says there is an ACL. (A folder writable through an ACL alone is written as any other.)"""
    setfacl = shutil.which("setfacl")
    if setfacl is None:
        pytest.skip("needs setfacl (the acl package)")
    src = write_src(tmp_path / "src.zarr")
    if case == "plane":
        planes = tmp_path / "planes"
        planes.mkdir()
        for i, plane in enumerate(small_stack()):
            tifffile.imwrite(planes / f"p{i:02d}.tif", plane)
        give_to_other_user(planes)
        denied, args = planes / "p03.tif", ("info", planes)
        doing, mode, acl = "read the file", "644", "u:root:---"
    else:
        denied = tmp_path / "out.zarr"
        fuse_zarr(src, denied, chunks=CHUNK, scheduler="synchronous", progress=False)
        give_to_other_user(denied)
        denied.chmod(0o777)
        args, doing, mode, acl = (
            ("fuse", src, denied, "--overwrite", *FUSE),
            None,
            "777",
            "u:root:r-x",
        )
    subprocess.run([setfacl, "-m", acl, str(denied)], check=True)
    before = tree_digest(tmp_path)
    proc = as_user(*args)
    assert proc.returncode == 1, proc.stderr
    line = one_line_error(proc)
    said = f"may not {doing} '{denied}'" if doing else f"'{denied}' is owned by"
    assert said in line and f"mode {mode}, with an ACL (getfacl shows it)" in line, line
    assert tree_digest(tmp_path) == before


def test_a_demo_overwrite_of_a_fused_output_it_may_not_write_keeps_the_planes(tmp_path):
    """A colleague's demo DIR, its three folders made group-writable but not what is inside
    (the fused output's levels, 755): ``demo DIR --overwrite --seed 7`` passed the check of
    the three, replaced the planes, then fuse_zarr refused the fused output with "(nothing
    was written)", DIR left with the new planes beside the old fused image and previews."""
    out = tmp_path / "demo"
    args = ("demo", out, "--size", "64", "--planes", "7", "--no-progress")
    assert as_user(*args).returncode == 0
    give_to_other_user(out)
    for folder in (out, out / "planes", out / "fused.ome.zarr"):
        folder.chmod(0o777)
    before = tree_digest(tmp_path)
    line = _demo_overwrite_refused(args)
    assert "its fused.ome.zarr may not be written by this user" in line, line
    assert f"{str(out / 'fused.ome.zarr' / '0')!r} is owned by " in line, line
    assert "nothing was changed" in line and tree_digest(tmp_path) == before


@pytest.fixture()
def read_only_view(tmp_path):
    """``tmp_path/rw`` seen read-only at ``tmp_path/ro`` (a read-only bind mount: root only)."""
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount")
    bind = subprocess.run(["mount", "--bind", rw, ro], capture_output=True, check=False)
    if bind.returncode != 0:
        pytest.skip(f"mount --bind refused: {bind.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", ro], check=True, capture_output=True)
        yield rw, ro
    finally:
        subprocess.run(["umount", ro], check=False, capture_output=True)


def test_an_output_on_a_read_only_filesystem_is_not_blamed_on_its_owner(read_only_view,
                                                                       monkeypatch):  # fmt: skip
    """An unfinished output on a read-only mount (a snapshot, a project space mounted
    read-only on compute nodes): ``--resume`` said "may not be written by this user: ... is
    owned by root (group root), mode 755; ask its owner to let you write it (chmod -R g+w
    ...)", which no owner can do. It says the filesystem is read-only."""
    rw, ro = read_only_view
    src = write_src(rw / "src.zarr")
    _unfinished(src, rw / "out.zarr", monkeypatch)
    before = tree_digest(rw)
    proc = subprocess.run(
        [sys.executable, "-m", "fstack_dask", "fuse", ro / "src.zarr", ro / "out.zarr",
         *map(str, FUSE), "--resume"], capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "XDG_CACHE_HOME": CACHE},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    line = one_line_error(proc)
    assert f"dst '{ro / 'out.zarr'}' is on a read-only filesystem" in line, line
    assert "owner" not in line and "nothing was written" in line, line
    assert tree_digest(rw) == before


@pytest.mark.parametrize("complete", [False, True], ids=["unfinished", "complete"])
def test_an_overwrite_of_a_colleague_s_chunks_in_a_sticky_folder_is_refused_first(
    tmp_path, monkeypatch, complete
):
    """A colleague's chunk folder with the sticky bit (1777, as /tmp): os.access says this
    user may write it, but only a file's owner may remove a file there. ``--overwrite``
    removed what it could and failed on the colleague's chunk ("may not write the file",
    unfinished), or swapped and left the old output beside dst (complete). Refused first,
    naming the file and the sticky folder; nothing changed."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    _output(src, dst, monkeypatch, complete=complete)
    folder = dst / "0" / "c" / "0"
    give_to_other_user(folder)
    folder.chmod(0o1777)
    before = tree_digest(tmp_path)
    proc = as_user("fuse", src, dst, "--overwrite", *FUSE)
    assert proc.returncode == 1, proc.stderr
    line = one_line_error(proc)
    assert f"'{dst}' cannot be replaced: this user may not remove the file '{folder}/" in line
    assert "mode 1777), which has the sticky bit" in line and "nothing was written" in line
    assert sorted(os.listdir(tmp_path)) == ["out.zarr", "src.zarr"]
    assert tree_digest(tmp_path) == before


def test_a_demo_overwrite_of_a_fused_output_holding_a_colleague_s_folder_keeps_the_planes(
    tmp_path,
):
    """This user's demo DIR whose fused output holds a colleague's chunk folder (755):
    ``demo DIR --overwrite --seed 7`` passed the demo's check (the levels themselves are
    writable), replaced the planes, then fuse_zarr refused the fused output ("cannot be
    replaced: this user may not write the folder .../0/c/0", c949817's walk), DIR left with
    the new planes beside the old fused image. The demo makes that check first."""
    out = tmp_path / "demo"
    args = ("demo", out, "--size", "64", "--planes", "7", "--no-progress")
    assert as_user(*args).returncode == 0
    folder = out / "fused.ome.zarr" / "0" / "c" / "0"
    give_to_other_user(folder)
    before = tree_digest(tmp_path)
    line = _demo_overwrite_refused(args)
    assert "its fused.ome.zarr cannot be replaced: this user may not write the folder " in line
    assert f"{str(folder)!r} (owned by " in line, line
    assert "nothing was changed" in line and tree_digest(tmp_path) == before


@pytest.mark.parametrize("sticky", ["DIR", "planes"])
def test_a_demo_overwrite_of_a_colleague_s_sticky_dir_changes_nothing(tmp_path, sticky):
    """An earlier demo's DIR (or its planes folder) a colleague's with the sticky bit (1777),
    their files in it, every folder writable (umask 0): os.access says "writable", but only a
    file's owner may remove or replace it there. ``demo DIR --overwrite`` replaced the planes,
    then failed on the planes folder ("refused access to .../planes"): DIR was left with new
    planes beside the old image. Refused first, naming the file and the sticky folder."""
    out = tmp_path / "demo"
    args = ("demo", out, "--size", "64", "--planes", "5", "--no-progress")
    assert as_user(*args).returncode == 0
    _folders_writable(out)
    give_to_other_user(out)
    out.chmod(0o777)
    folder = out if sticky == "DIR" else out / "planes"
    folder.chmod(0o1777)
    before = tree_digest(tmp_path)
    line = _demo_overwrite_refused(args)
    assert "cannot be written: this user may not remove the " in line, line
    assert f"from the folder '{folder}' (" in line and "which has the sticky bit" in line, line
    assert "nothing was changed" in line and tree_digest(tmp_path) == before


@pytest.mark.parametrize("mode", [0o700, 0o755], ids=["700", "755"])
@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_a_colleagues_staging_folder_beside_dst_is_left_as_it_is(tmp_path, flag, mode):
    """A colleague's overwrite of the same dst, killed, left its staging folder beside it
    (theirs, 700): every ``--resume`` and ``--overwrite`` of this user's was refused with
    "permission denied: this user may not enter the folder '.../.out.zarr.fstack-staging-...'"
    (755, its run record readable: a --resume tried to continue it, "may not create 'lock...'
    in the folder ..."). The run does not need it: it goes on, says so once, never touches it."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    fuse_zarr(src, dst, chunks=CHUNK, scheduler="synchronous", progress=False)
    theirs = tmp_path / ".out.zarr.fstack-staging-0123456789ab"
    (theirs / ".fstack_dask").mkdir(parents=True)
    (theirs / ".fstack_dask" / "run.json").write_text('{"kind": "fstack_dask run"}')
    (theirs / "notes.txt").write_text("a colleague's")
    give_to_other_user(theirs)
    theirs.chmod(mode)
    before = tree_digest(theirs)
    proc = as_user("fuse", src, dst, flag, *FUSE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count(f"{theirs} (owned by nobody") == 1, proc.stderr
    assert "leaves it as it is" in proc.stderr
    assert tree_digest(theirs) == before and theirs.stat().st_uid == OTHER
    assert sorted(os.listdir(tmp_path)) == [theirs.name, "out.zarr", "src.zarr"]


@pytest.mark.parametrize("complete", [False, True], ids=["unfinished", "complete"])
def test_an_overwrite_of_a_colleague_s_sticky_dst_is_refused_first(tmp_path, monkeypatch, complete):
    """dst itself a colleague's with the sticky bit (1777), its entries theirs, every folder
    inside writable (umask 0): only the walk inside the entries judged the sticky bit, so an
    overwrite of a complete output swapped and left the old one beside dst (exit 0, a
    warning: "could not be removed ... zarr.json"). Refused first, nothing changed."""
    src, dst = _colleague_s_sticky_dst(tmp_path, monkeypatch, complete=complete)
    before = tree_digest(tmp_path)
    proc = as_user("fuse", src, dst, "--overwrite", *FUSE)
    assert proc.returncode == 1, proc.stderr
    line = one_line_error(proc)
    assert f"'{dst}' cannot be replaced: this user may not remove the " in line, line
    assert f"from the folder '{dst}' (" in line and "which has the sticky bit" in line, line
    assert sorted(os.listdir(tmp_path)) == ["out.zarr", "src.zarr"]
    assert tree_digest(tmp_path) == before


# Run argv[2:] as root in a user namespace of its own whose uid and gid maps are argv[1]
# ("inside outside count" lines joined by ";"), written by this (real) root: unshare -U -r maps
# one user alone, and more ranges need newuidmap, which not every system has.
_IN_NAMESPACE = """
import ctypes, os, sys
go, ready = os.pipe(), os.pipe()
pid = os.fork()
if pid == 0:
    if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0:  # CLONE_NEWUSER
        os._exit(77)
    os.write(ready[1], b"x")
    os.read(go[0], 1)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
os.close(ready[1])
if not os.read(ready[0], 1):  # (no user namespace made)
    sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
for name in ("uid_map", "gid_map"):
    with open(f"/proc/{pid}/{name}", "w") as fh:
        fh.write(sys.argv[1].replace(";", "\\n") + "\\n")
os.write(go[1], b"x")
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def in_user_namespace(*args, uid_map: str = "0 0 1") -> subprocess.CompletedProcess:
    """The CLI run by root in a user namespace of its own (a rootless container's root: every
    capability, over the users mapped there alone; the others' files are nobody's), its
    users mapped as ``uid_map`` says."""
    if os.geteuid() != 0:
        pytest.skip("needs root to play a rootless container's root")
    if subprocess.run([sys.executable, "-c", _IN_NAMESPACE, uid_map, "-c", ""],
                      check=False).returncode != 0:  # fmt: skip
        pytest.skip("this kernel lets no user namespace be made")
    return subprocess.run(
        [sys.executable, "-c", _IN_NAMESPACE, uid_map, "-m", "fstack_dask", *map(str, args)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "XDG_CACHE_HOME": CACHE},
    )  # fmt: skip


@pytest.mark.parametrize("where", ["parent", "chunk folder"])
@pytest.mark.parametrize("uid_map", ["0 0 1", "0 0 1;1 100000 65536"], ids=["unshare -r", "podman"])
def test_a_rootless_container_s_root_is_refused_a_colleague_s_sticky_files_first(
    tmp_path, where, uid_map
):
    """Root in a user namespace has CAP_FOWNER, but only over the users mapped there: a
    colleague's file in a sticky folder (theirs, 1777) is still theirs alone to remove or
    move. c333203's check and the swap's took any CAP_FOWNER (the swap's any root) for
    leave: an --overwrite of the colleague's output in a sticky folder computed it all, then
    failed 'Operation not permitted' and said to rerun with --resume (which failed so again);
    of one whose chunk folder was sticky, swapped and left the old output beside dst.
    Refused first, nothing written. So too under rootless podman's map (1-65536 to a
    subordinate range), which covers 65534, the overflow uid an unmapped owner is seen as:
    5cfa019's check took the colleague for a mapped user."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "box" / "out.zarr"
    dst.parent.mkdir()
    fuse_zarr(src, dst, chunks=CHUNK, scheduler="synchronous", progress=False)
    _folders_writable(dst)
    if where == "parent":
        give_to_other_user(dst.parent)
        dst.chmod(0o777)
        dst.parent.chmod(0o1777)
    else:
        give_to_other_user(dst / "0" / "c" / "0")
        (dst / "0" / "c" / "0").chmod(0o1777)
    before = tree_digest(tmp_path)
    proc = in_user_namespace("fuse", src, dst, "--overwrite", *FUSE, uid_map=uid_map)
    assert proc.returncode in (1, 2), proc.stderr
    line = one_line_error(proc)
    if where == "parent":
        assert "belongs to another user in a sticky folder, which only its owner may" in line
    else:
        assert "which has the sticky bit" in line and "nothing was written" in line, line
    assert tree_digest(tmp_path) == before
    assert sorted(os.listdir(dst.parent)) == ["out.zarr"]


def test_a_resume_of_an_output_in_a_colleague_s_sticky_dst_is_refused_first(tmp_path, monkeypatch):
    """A colleague's unfinished output, dst theirs with the sticky bit (1777), every folder
    inside writable (umask 0): a --resume computed every block left, then could not replace
    their zarr.json ("Operation not permitted") and said to rerun with --resume, which failed
    so again. Refused first, naming zarr.json and the sticky folder."""
    src, dst = _colleague_s_sticky_dst(tmp_path, monkeypatch, complete=False)
    before = tree_digest(tmp_path)
    proc = as_user("fuse", src, dst, "--resume", *FUSE)
    assert proc.returncode == 1, proc.stderr
    line = one_line_error(proc)
    assert (
        f"'{dst}' cannot be finished: this user may not remove the file '{dst}/zarr.json'" in line
    )
    assert "which has the sticky bit" in line and "nothing was written" in line, line
    assert tree_digest(tmp_path) == before


def _chattr_or_skip(flag: str, path: Path, request) -> None:
    """``chattr +flag path``, cleared after the test (root on a filesystem with such marks)."""
    chattr = shutil.which("chattr")
    if os.geteuid() != 0 or chattr is None:
        pytest.skip("chattr needs root")
    proc = subprocess.run([chattr, f"+{flag}", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"chattr +{flag} refused here: {proc.stderr.strip()}")
    request.addfinalizer(lambda: subprocess.run([chattr, f"-{flag}", str(path)], check=False))


@pytest.mark.parametrize("name", ["out.zarr", "out.tif"])
@pytest.mark.parametrize("where", ["parent", "dst"])
@pytest.mark.parametrize("flag", ["a", "i"])
def test_an_overwrite_of_a_dst_marked_immutable_or_append_only_is_refused_first(
    tmp_path, request, flag, where, name
):
    """dst's folder marked append-only (``chattr +a``, an archive's folder): os.access says
    "writable", so the overwrite computed it all, then failed "Operation not permitted" at the
    swap and said to rerun with --resume, which failed so again; dst marked immutable was
    blamed on its owner, root itself ("ask its owner"). Refused before anything is written,
    naming the mark and how to clear it (a ninth adversarial run). A TIFF dst still computed
    it all, failed so at its swap and left its working folder beside it. Each exits 2,
    as a usage error: an immutable dst exited 1, an append-only one 2."""
    src = write_src(tmp_path / "src.zarr")
    home = tmp_path / "archive"
    home.mkdir()
    dst = home / name
    assert cli("fuse", src, dst, *FUSE).returncode == 0
    marked = home if where == "parent" else dst
    _chattr_or_skip(flag, marked, request)
    before = tree_digest(tmp_path)
    proc = cli("fuse", src, dst, *FUSE, "--overwrite")
    assert proc.returncode == 2, proc.stderr
    mark = {"a": "append-only", "i": "immutable"}[flag]
    said = f"{str(marked)!r} is marked {mark} (chattr +{flag}; chattr -{flag}"
    assert said in one_line_error(proc)
    assert tree_digest(tmp_path) == before
    assert sorted(os.listdir(home)) == [name]  # no staging or working folder beside it


def test_an_overwrite_that_cannot_clear_an_unfinished_run_says_what_is_left(tmp_path,
                                                                           monkeypatch,
                                                                           request):  # fmt: skip
    """An unfinished output is cleared in place by --overwrite; a chunk file there may not be
    removed (immutable here; root_squash on NFS likewise): the run stopped part way with
    "permission denied: this user was refused access to '.../c/0/0' (owned by root ...,
    mode 644)", blaming the owner, root itself, and saying neither what was left of dst nor
    how to go on (a ninth adversarial run). It names the mark, before anything is removed
    (g53: until then, once part of the run was removed), and a rerun of --overwrite finishes
    once the mark is cleared. Exit 2, as a mark on dst itself (g76: 1, a mark deeper)."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    _unfinished(src, dst, monkeypatch)
    chunk = next(p for p in sorted((dst / "0" / "c").rglob("*")) if p.is_file())
    _chattr_or_skip("i", chunk, request)
    before = tree_digest(tmp_path)
    proc = cli("fuse", src, dst, *FUSE, "--overwrite")
    assert proc.returncode == 2, proc.stderr
    error = one_line_error(proc)
    assert f"{str(chunk)!r} is marked immutable (chattr +i; chattr -i clears it)" in error
    assert tree_digest(tmp_path) == before
    subprocess.run(["chattr", "-i", str(chunk)], check=True)
    assert cli("fuse", src, dst, *FUSE, "--overwrite").returncode == 0


def test_an_overwrite_that_cannot_clear_an_append_only_folder_names_its_mark(tmp_path,
                                                                             monkeypatch,
                                                                             request):  # fmt: skip
    """An unfinished output whose chunk folder is marked append-only (``chattr +a``): its
    files may not be removed, and the overwrite said "[Errno 1] Operation not permitted:
    '.../0/c/0/0'", naming the file, not the folder's mark nor how to clear it. One
    line naming dst, the folder's mark and ``chattr -a``; the rest kept; a rerun of
    --overwrite finishes once the mark is cleared. (Since g53's check of the marks inside an
    output before anything is written, the refusal comes before the clear: exit 2, g76.)"""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    _unfinished(src, dst, monkeypatch)
    folder = next(p.parent for p in sorted((dst / "0" / "c").rglob("*")) if p.is_file())
    kept = sorted(p.name for p in folder.iterdir())
    _chattr_or_skip("a", folder, request)
    proc = cli("fuse", src, dst, *FUSE, "--overwrite")
    assert proc.returncode == 2, proc.stderr
    error = one_line_error(proc)
    assert f"dst {str(dst)!r}" in error
    assert f"{str(folder)!r} is marked append-only (chattr +a; chattr -a clears it)" in error
    assert sorted(p.name for p in folder.iterdir()) == kept
    subprocess.run(["chattr", "-a", str(folder)], check=True)
    assert cli("fuse", src, dst, *FUSE, "--overwrite").returncode == 0


@pytest.mark.parametrize(("flag", "what"), [("i", "file"), ("a", "file"), ("a", "folder"),
                                            ("i", "folder"), ("i", "top"),
                                            ("a", "top")])  # fmt: skip
def test_an_overwrite_of_an_output_with_a_mark_inside_is_refused_first(tmp_path, request, flag,
                                                                      what):  # fmt: skip
    """A chunk file or folder inside a complete output marked immutable or append-only
    (``chattr``, which binds root too): the overwrite computed it all, swapped, then could
    not remove the old output and left it beside dst with a warning; an immutable folder was
    blamed on its owner, root itself ("ask its owner"). Refused before anything is
    written, naming the marked path, the mark and how to clear it. So is dst's own zarr.json
    marked, which the walk of dst's folders missed: swapped, then left beside dst.
    Exit 2, as dst marked itself, refused before anything is written (it exited 1 where a
    mark on dst or its parent exited 2: the same refusal, a usage error)."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    assert cli("fuse", src, dst, *FUSE).returncode == 0
    chunk = next(p for p in sorted((dst / "0" / "c").rglob("*")) if p.is_file())
    marked = {"file": chunk, "folder": chunk.parent, "top": dst / "zarr.json"}[what]
    _chattr_or_skip(flag, marked, request)
    before = tree_digest(tmp_path)
    proc = cli("fuse", src, dst, *FUSE, "--overwrite")
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc)
    mark = {"a": "append-only", "i": "immutable"}[flag]
    assert line.startswith(f"fstack-dask: error: dst {str(dst)!r} cannot be replaced: "), line
    assert f"{str(marked)!r} is marked {mark} (chattr +{flag}; chattr -{flag} clears it)" in line
    assert "ask its owner" not in line and "nothing was written" in line
    assert tree_digest(tmp_path) == before
    assert sorted(os.listdir(tmp_path)) == ["out.zarr", "src.zarr"]  # no staging folder


def test_a_marked_file_of_a_user_left_with_the_old_output_is_told_to_clear_its_mark(
    tmp_path, request
):
    """A user's notes.txt in the old output marked immutable (chattr +i) cannot be moved into
    the new one: the warning said 'chmod u+w', which moves it no more. It names the
    mark and how to clear it; the file is kept with the previous output."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    assert cli("fuse", src, dst, *FUSE).returncode == 0
    (dst / "notes.txt").write_text("mine")
    _chattr_or_skip("i", dst / "notes.txt", request)
    proc = cli("fuse", src, dst, *FUSE, "--overwrite")
    kept = [p for p in tmp_path.glob(".out.zarr.*/notes.txt")]
    for path in kept:  # (the finalizer's path moved with the old output)
        subprocess.run(["chattr", "-i", str(path)], check=True)
    assert proc.returncode == 0, proc.stderr
    assert len(kept) == 1 and kept[0].read_text() == "mine"
    assert "'notes.txt', which was in" in proc.stderr
    assert f"{str(kept[0])!r} is marked immutable (chattr +i; chattr -i clears it)" in proc.stderr
    assert "chmod u+w" not in proc.stderr
