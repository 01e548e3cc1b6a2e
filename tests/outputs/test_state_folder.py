"""A user's files put into an output's state folder ``.fstack_dask/``: only the entries a run
writes there go (by name, as everywhere else), the rest is kept and named. Real stores on
disk, the real CLI in a subprocess, a run SIGKILLed where it matters."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import zarr
from safety_util import CACHE, cli, write_src

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# The CLI, SIGKILLed once every block is done, before the output is marked complete.
_KILLED_BEFORE_PUBLISH = textwrap.dedent("""
    import os, signal, sys
    from fstack_dask._outputs import lifecycle
    lifecycle.publish = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    from fstack_dask._cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


def killed_before_publish(*args) -> None:
    proc = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_PUBLISH, *map(str, args)],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "XDG_CACHE_HOME": CACHE})  # fmt: skip
    assert proc.returncode == -9, proc.stderr


def put_mine(state: Path) -> dict[str, str]:
    """A user's files in the state folder: beside our entries, in a folder, among the
    done-markers; returns them, by path, with their text."""
    mine = {"notes.txt": "a", "mine/a.txt": "b", "done/mine.txt": "c", "lock.txt": "d"}
    for rel, text in mine.items():
        (state / rel).parent.mkdir(parents=True, exist_ok=True)
        (state / rel).write_text(text)
    return mine


@pytest.fixture
def killed(tmp_path) -> tuple[Path, Path, dict[str, str]]:
    """A source, its output unfinished (killed once every block was done) with a user's
    files in its state folder: (src, dst, those files)."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    killed_before_publish("fuse", src, dst)
    return src, dst, put_mine(dst / ".fstack_dask")


def test_a_users_files_in_the_state_folder_are_kept_when_a_run_finishes(killed):
    """(g76: a resume's finish removed every entry of the state folder but the lock, a
    user's notes.txt and folders with them; a file in done/ counted as a block, "-1 of 9
    blocks left")."""
    src, dst, mine = killed
    proc = cli("fuse", src, dst, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "0 of 9 blocks left" in proc.stderr, proc.stderr
    left = sorted(str(p.relative_to(dst / ".fstack_dask")) for p in
                  (dst / ".fstack_dask").rglob("*") if p.is_file())  # fmt: skip
    assert left == sorted(mine), left  # ours went: the record, the markers, the lock
    warned = [line for line in proc.stderr.splitlines() if "did not write them" in line]
    assert len(warned) == 1 and "notes.txt" in warned[0] and "done/mine.txt" in warned[0]
    assert zarr.open_group(dst, mode="r").attrs["fstack_dask"]["complete"] is True
    proc = cli("fuse", src, dst, "--resume")  # complete: tidied, kept
    assert proc.returncode == 0, proc.stderr
    for rel, text in mine.items():
        assert (dst / ".fstack_dask" / rel).read_text() == text, rel


@pytest.mark.parametrize("old", ["unfinished", "complete"])
def test_a_users_files_in_the_state_folder_of_an_output_overwritten_are_kept(killed, old):
    """An overwrite of an unfinished output (cleared in place: its record and markers go)
    or of a complete one (swapped: the old output removed beside dst) whose state folder
    holds a user's files: they are kept where they were put, in dst, and named; ours went.
    (g93: the swap's left them in the previous output, in a hidden staging folder beside
    dst, for good: "kept ['.fstack_dask/notes.txt'] in .../.out.zarr.fstack-staging-...")"""
    src, dst, mine = killed
    if old == "complete":
        assert cli("fuse", src, dst, "--resume").returncode == 0
    proc = cli("fuse", src, dst, "--overwrite", "--depth-map")
    assert proc.returncode == 0, proc.stderr
    found = {str(p.relative_to(dst / ".fstack_dask")): p.read_text() for p in
             dst.parent.rglob("*") if p.is_file() and ".fstack_dask" in p.parts}  # fmt: skip
    assert found == mine, found
    assert sorted(os.listdir(dst.parent)) == ["out.zarr", "src.zarr"]  # nothing hidden beside
    assert "did not write them" in proc.stderr and "notes.txt" in proc.stderr, proc.stderr
    assert zarr.open_group(dst, mode="r").attrs["fstack_dask"]["complete"] is True


# The lock's temporary name of the releases of 2026-11-24 to 2026-12-04 (its pid and a hex),
# left where a run was killed between writing it and unlinking it.
OLD_LOCK_ASIDE = "lock.4242.0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("how", ["--resume", "--overwrite"])
def test_a_name_an_earlier_release_wrote_in_the_state_folder_goes_with_it(tmp_path, how):
    """(g82: it was kept, with a warning that fstack_dask had not written it, and the state
    folder with it for good; an overwrite of the output then left the old one's folder,
    ``.out.zarr.fstack-staging-...``, beside dst, holding only that name.)"""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    killed_before_publish("fuse", src, dst)
    (dst / ".fstack_dask" / OLD_LOCK_ASIDE).write_bytes(b"")
    proc = cli("fuse", src, dst, how)
    assert proc.returncode == 0, proc.stderr
    assert "did not write them" not in proc.stderr, proc.stderr
    assert not (dst / ".fstack_dask").exists()
    proc = cli("fuse", src, dst, "--overwrite", "--depth-map")  # the complete one swapped
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr", "src.zarr"]
    assert not (dst / ".fstack_dask").exists()


def test_a_complete_outputs_state_folder_holding_only_our_names_goes_on_resume(tmp_path):
    """A resume killed once its finish removed the record, where a kill during an earlier
    record's write left its temporary file: the next --resume of the complete output left
    the state folder with that file for good (it dropped only the record, the markers and
    the file list)."""
    from safety_util import KILLED_WHILE_REMOVING

    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    killed_before_publish("fuse", src, dst)
    tmp = dst / ".fstack_dask" / "run.json.0123456789abcdef0123456789abcdef.tmp"
    tmp.write_bytes(b"{")
    args = [r"/\.fstack_dask/run\.json$", "fuse", str(src), str(dst), "--resume"]
    proc = subprocess.run([sys.executable, "-c", KILLED_WHILE_REMOVING, *args],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "XDG_CACHE_HOME": CACHE})  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    assert tmp.exists() and zarr.open_group(dst, mode="r").attrs["fstack_dask"]["complete"]
    proc = cli("fuse", src, dst, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert not (dst / ".fstack_dask").exists(), list((dst / ".fstack_dask").iterdir())


@pytest.mark.parametrize("how", [(), ("--resume",), ("--overwrite",)])
def test_a_claim_an_earlier_release_was_killed_in_is_taken_over(tmp_path, how):
    """A run of an earlier release killed while it claimed dst, its lock written aside but
    not yet linked: dst holds ``.fstack_dask/`` with that name alone. Every run, --resume and
    --overwrite too, refused dst for good as "a folder with other content ('.fstack_dask'),
    not an fstack_dask output": it is a claim, taken over; nothing kept."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    (dst / ".fstack_dask" / "done").mkdir(parents=True)
    (dst / ".fstack_dask" / OLD_LOCK_ASIDE).write_text('{"token": "0123", "pid": 4242}')
    proc = cli("fuse", src, dst, *how)
    assert proc.returncode == 0, proc.stderr
    assert zarr.open_group(dst, mode="r").attrs["fstack_dask"]["complete"] is True
    assert not (dst / ".fstack_dask").exists()


def test_a_users_folder_named_like_a_done_marker_does_not_stop_a_resume(tmp_path):
    """A user's folder in ``.fstack_dask/done/`` named as a block's marker is (``99_99``,
    holding a file): every --resume failed "[Errno 21] Is a directory: ... done/99_99; dst
    is kept with 10 of 9 blocks done; rerun with --resume to continue". A
    marker is a file: the resume finishes, the folder and its file kept and named."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    killed_before_publish("fuse", src, dst)
    mine = dst / ".fstack_dask" / "done" / "99_99"
    mine.mkdir()
    (mine / "x.txt").write_text("mine")
    proc = cli("fuse", src, dst, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert (mine / "x.txt").read_text() == "mine"
    assert "did not write them" in proc.stderr and "done/99_99/x.txt" in proc.stderr, proc.stderr
    assert zarr.open_group(dst, mode="r").attrs["fstack_dask"]["complete"] is True


@pytest.mark.parametrize("link", [".fstack_dask", ".fstack_dask/done"])
def test_a_link_in_the_state_folder_of_an_output_overwritten_is_never_followed(tmp_path, link):
    """A user's link at ``.fstack_dask/done`` (or ``.fstack_dask`` itself) to a folder of theirs
    elsewhere: the overwrite's swap listed that folder as the old output's state and moved
    the files it held (``keep.txt``, and ``0_0``) out of it into the new output's state folder,
    exit 0 (g93's d4b0e15; found by g96). The folder elsewhere is never changed."""
    from conftest import tree_digest

    src, dst = write_src(tmp_path / "src.zarr"), tmp_path / "out.zarr"
    assert cli("fuse", src, dst, "--no-progress").returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (elsewhere / "0_0").write_text("mine too")
    (dst / ".fstack_dask").mkdir(exist_ok=True)
    if link == ".fstack_dask":
        (dst / ".fstack_dask").rmdir()
    os.symlink(elsewhere, dst / link)
    before = tree_digest(elsewhere)
    proc = cli("fuse", src, dst, "--overwrite", "--nhsize", "5", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert tree_digest(elsewhere) == before
    assert zarr.open_group(dst, mode="r").attrs["fstack_dask"]["nhsize"] == 5
