"""An output in an overlayfs lower layer (baked into a container image, run with the
container's layer on top), replaced by ``--overwrite``: its folder cannot be renamed there
(EXDEV without the mount's ``redirect_dir``), so the swap is done entry by entry
(:mod:`fstack_dask._outputs.inplace`); a run killed at each of its steps is finished by
``--resume``. Real overlay mounts (root only: elsewhere skipped), the real CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import tree_digest
from safety_util import CACHE, cli, one_line_error, write_src

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A source, our output of it without maps (the old one), and the reference of the new
    one (with a depth map)."""
    root = tmp_path_factory.mktemp("overlay-made")
    write_src(root / "src.zarr")
    for name, extra in (("old.zarr", ()), ("ref.zarr", ("--depth-map",)),
                        ("old.ome.tif", ())):  # fmt: skip
        proc = cli("fuse", root / "src.zarr", root / name, *extra)
        assert proc.returncode == 0, proc.stderr
    return root


def overlay(tmp_path: Path, lower: Path) -> Path:
    """``lower`` mounted as the lower layer of an overlay at a new folder, returned."""
    import os

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("an overlay mount needs root")
    upper, work, merged = (tmp_path / n for n in ("upper", "work", "merged"))
    for folder in (upper, work, merged):
        folder.mkdir()
    options = f"lowerdir={lower},upperdir={upper},workdir={work},redirect_dir=off"
    proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)],
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount an overlay here: {proc.stderr.strip()}")
    return merged


@pytest.fixture
def image(tmp_path, made):
    """The old output (with a user's notes.txt beside our entries) in a lower layer; yields
    the overlay's folder."""
    lower = tmp_path / "lower"
    lower.mkdir()
    shutil.copytree(made / "old.zarr", lower / "out.zarr")
    (lower / "out.zarr" / "notes.txt").write_text("mine")
    shutil.copy(made / "old.ome.tif", lower / "out.ome.tif")
    merged = overlay(tmp_path, lower)
    yield merged
    subprocess.run(["umount", "--lazy", str(merged)], check=False)


def assert_replaced(merged: Path, made: Path) -> None:
    """dst is the new output, whole, the user's file kept, nothing left beside it."""
    out = merged / "out.zarr"
    assert sorted(p.name for p in merged.iterdir()) == ["out.ome.tif", "out.zarr"]
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / ".fstack_dask").exists()
    got, ref = zarr.open_group(out, mode="r"), zarr.open_group(made / "ref.zarr", mode="r")
    assert got.attrs["fstack_dask"]["complete"] is True
    for key in ("0", "1", "depth/0"):
        assert np.array_equal(got[key][...], ref[key][...]), key


def test_an_overwrite_of_an_output_in_an_overlay_lower_layer_replaces_it(image, made):
    proc = cli("fuse", made / "src.zarr", image / "out.zarr", "--overwrite", "--depth-map")
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "entry by entry" in line]
    assert len(warned) == 1 and "Invalid cross-device link" in warned[0], proc.stderr
    assert_replaced(image, made)


def test_a_tiff_in_an_overlay_lower_layer_is_overwritten(image, made):
    before = (image / "out.ome.tif").read_bytes()
    proc = cli("fuse", made / "src.zarr", image / "out.ome.tif", "--overwrite", "--depth-map")
    assert proc.returncode == 0, proc.stderr
    assert (image / "out.ome.tif").read_bytes() != before
    assert sorted(p.name for p in image.iterdir()) == ["out.ome.tif", "out.zarr"]


# The CLI, SIGKILLed at one step of the replacement entry by entry (argv[1]); its arguments
# follow.
KILLED_AT = textwrap.dedent(
    r"""
    import os, re, signal, sys, types
    from fstack_dask._locations import remove
    from fstack_dask._outputs import inplace

    step = sys.argv[1]
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    removed = {"zarr.json": r"/out\.zarr/zarr\.json$", "chunk": r"/out\.zarr/0/c/",
               "staged record": r"staging-[0-9a-f]{12}/\.fstack_dask/run\.json$"}
    if step == "staged markers":  # (its folder goes by rmdir, once its markers went)
        def rmdir_then_die(path):
            os.rmdir(path)
            if re.search(r"staging-[0-9a-f]{12}/\.fstack_dask/done$", path):
                die()
        remove.os = types.SimpleNamespace(**{**vars(os), "rmdir": rmdir_then_die})
    elif step in removed:
        def unlink_then_die(path):
            os.unlink(path)
            if re.search(removed[step], path):
                die()
        remove.os = types.SimpleNamespace(**{**vars(os), "unlink": unlink_then_die})
    elif step == "rename":
        def rename_then_die(src, dst):
            os.rename(src, dst)
            die()
        inplace.os = types.SimpleNamespace(**{**vars(os), "rename": rename_then_die})
    else:  # before a step: "record" (written), "moved" (every entry moved)
        name = {"record": "_carry_on", "moved": "drop_staged_state"}[step]
        setattr(inplace, name, lambda *a, **k: die())
    from fstack_dask._cli.main import main
    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.mark.parametrize(
    "step", ["record", "zarr.json", "chunk", "rename", "moved", "staged markers", "staged record"]
)
def test_a_replacement_killed_at_each_step_is_finished_by_resume(image, made, step):
    import os

    args = ["fuse", made / "src.zarr", image / "out.zarr", "--depth-map"]
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, step, *map(str, args),
                             "--overwrite"], capture_output=True, text=True, check=False,
                            env={**os.environ, "XDG_CACHE_HOME": CACHE})  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    if step in ("zarr.json", "chunk", "rename"):  # (no image, staged entries left)
        info = cli("info", image / "out.zarr")  # (it said "0 of 9 blocks of level 0 done")
        assert info.returncode == 0, info.stderr
        assert "being replaced by a new output entry by entry" in info.stdout, info.stdout
        assert "blocks of level 0 done" not in info.stdout, info.stdout
    proc = cli(*args, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert_replaced(image, made)


# The CLI; a user's file put into dst's level 0 right before the staged one moves in, after
# the check for such files (argv: the CLI's).
_PUT_BEFORE_THE_MOVE = textwrap.dedent(r"""
    import os, sys
    from fstack_dask._outputs import inplace
    move = inplace._move
    def put_then_move(new, dst, entry, protect):
        if entry == "0":
            os.makedirs(os.path.join(dst.path, "0"), exist_ok=True)
            with open(os.path.join(dst.path, "0", "mine.txt"), "w") as f:
                f.write("mine")
        move(new, dst, entry, protect)
    inplace._move = put_then_move
    from fstack_dask._cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("when", ["killed", "while replaced"])
def test_a_users_file_put_into_an_entry_of_a_replacement_is_named(image, made, when):
    """A user's file put into an entry still to be replaced, while the replacement was cut
    short (killed once the old zarr.json went; every --resume) or while it ran (after its
    check): it failed "[Errno 39] Directory not empty", naming the staged folder, exit 1;
    now it names the file, keeps it, and --resume finishes once it is moved out."""
    import os

    args = ["fuse", made / "src.zarr", image / "out.zarr", "--depth-map"]
    script = [KILLED_AT, "zarr.json"] if when == "killed" else [_PUT_BEFORE_THE_MOVE]
    proc = subprocess.run([sys.executable, "-c", *script, *map(str, args), "--overwrite"],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "XDG_CACHE_HOME": CACHE})  # fmt: skip
    if when == "killed":
        assert proc.returncode == -9, proc.stderr
        (image / "out.zarr" / "0" / "mine.txt").write_text("mine")
        proc = cli(*args, "--resume")
    assert proc.returncode == 2, proc.stderr
    assert "0/mine.txt" in proc.stderr and "move it out" in proc.stderr, proc.stderr
    assert (image / "out.zarr" / "0" / "mine.txt").read_text() == "mine"
    (image / "out.zarr" / "0" / "mine.txt").unlink()
    proc = cli(*args, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert_replaced(image, made)


def test_a_users_file_inside_an_entry_the_new_output_replaces_is_kept(tmp_path, made):
    lower = tmp_path / "lower"
    lower.mkdir()
    shutil.copytree(made / "old.zarr", lower / "out.zarr")
    (lower / "out.zarr" / "0" / "notes.txt").write_text("mine")
    merged = overlay(tmp_path, lower)
    try:
        proc = cli("fuse", made / "src.zarr", merged / "out.zarr", "--overwrite")
        assert proc.returncode == 2, proc.stderr  # (since g96 before anything is computed;
        # it stopped the swap, the new output kept beside dst for --resume)
        assert "'0/notes.txt' inside its arrays" in proc.stderr, proc.stderr
        assert "nothing was written" in proc.stderr, proc.stderr
        assert (merged / "out.zarr" / "0" / "notes.txt").read_text() == "mine"
        assert zarr.open_group(merged / "out.zarr", mode="r").attrs["fstack_dask"]["complete"]
        (merged / "out.zarr" / "0" / "notes.txt").rename(merged / "notes.txt")
        proc = cli("fuse", made / "src.zarr", merged / "out.zarr", "--overwrite")
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in merged.iterdir()) == ["notes.txt", "out.zarr"]
    finally:
        subprocess.run(["umount", "--lazy", str(merged)], check=False)


_KILLED_BEFORE_THE_SWAP = textwrap.dedent("""
    import os, signal, sys
    from fstack_dask._outputs import folders
    folders.exchange = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    from fstack_dask._cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


# The CLI whose copy of the staged level 0 into dst fails ENOSPC at its third chunk (it
# failed with shutil.Error's list of every file it could not copy, a Python list).
_DISK_FULL = textwrap.dedent(r"""
    import errno, re, shutil, sys
    copyfile, n = shutil.copyfile, [0]
    def copyfile_or_full(src, dst, **kwargs):
        if re.search(r"/out\.zarr/0/c/", dst):
            n[0] += 1
            if n[0] >= 3:
                raise OSError(errno.ENOSPC, "No space left on device", dst)
        return copyfile(src, dst, **kwargs)
    shutil.copyfile = copyfile_or_full
    from fstack_dask._cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


# The CLI, SIGKILLed once the first chunk of the staged level 0 is removed, after its copy
# into dst (the resumed run that found the first kill also killed: its level 0 was copied
# again from what was left of it, a chunk short, complete, exit 0).
_KILLED_IN_THE_STAGED_REMOVAL = textwrap.dedent(r"""
    import os, re, signal, sys, types
    from fstack_dask._locations import remove
    def unlink_then_die(path):
        os.unlink(path)
        if re.search(r"staging-[0-9a-f]{12}/0/c/", path):
            os.kill(os.getpid(), signal.SIGKILL)
    remove.os = types.SimpleNamespace(**{**vars(os), "unlink": unlink_then_die})
    from fstack_dask._cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("cut", [None, "killed", "disk full"])
def test_a_staged_overwrite_in_the_lower_layer_too_is_resumed_and_swapped_in(tmp_path, made, cut):
    """An overwrite killed before its swap, baked into the image with the old output: the
    staged output's folders cannot be renamed either; they are copied into dst, then
    removed from the staged folder (its resume killed while one goes, or its copy failing
    ENOSPC, and resumed)."""
    import os

    lower = tmp_path / "lower"
    lower.mkdir()
    shutil.copytree(made / "old.zarr", lower / "out.zarr")
    (lower / "out.zarr" / "notes.txt").write_text("mine")
    shutil.copy(made / "old.ome.tif", lower / "out.ome.tif")
    args = ["fuse", made / "src.zarr", lower / "out.zarr", "--depth-map", "--overwrite"]
    killed = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_THE_SWAP, *map(str, args)],
                            capture_output=True, text=True, check=False,
                            env={**os.environ, "XDG_CACHE_HOME": CACHE})  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    assert len(os.listdir(lower)) == 3  # with the staged output
    merged = overlay(tmp_path, lower)
    try:
        args = ["fuse", made / "src.zarr", merged / "out.zarr", "--depth-map", "--resume"]
        if cut is not None:
            script = {"killed": _KILLED_IN_THE_STAGED_REMOVAL, "disk full": _DISK_FULL}[cut]
            killed = subprocess.run([sys.executable, "-c", script, *map(str, args)],
                                    capture_output=True, text=True,
                                    env={**os.environ, "XDG_CACHE_HOME": CACHE})  # fmt: skip
            assert killed.returncode == (-9 if cut == "killed" else 1), killed.stderr
            if cut == "disk full":  # one line naming the cause and the file, not a list
                error = killed.stderr.strip().splitlines()[-1]
                assert error.startswith("fstack-dask: error: no space left on device while "
                                        "writing dst"), error  # fmt: skip
                assert "with --resume to finish the replacement" in error, error
                assert "[(" not in error and "Errno" not in error, error
        proc = cli(*args)
        assert proc.returncode == 0, proc.stderr
        assert_replaced(merged, made)
    finally:
        subprocess.run(["umount", "--lazy", str(merged)], check=False)


def test_a_fresh_tiff_run_in_an_overlay_where_statx_is_refused_removes_its_working_store(
    tmp_path,
):
    """/proc/self/mountinfo masked and statx refused (an older runtime's seccomp profile), in
    an overlay (a container's root): name_to_handle_at, asked where a mount starts, is
    refused EOPNOTSUPP there (it gives no handles to open files by), and the fresh TIFF run
    left its working store beside the TIFF, with a warning; asked for a handle that
    only identifies the file, it tells the mount: the store goes."""
    import os

    from safety_util import masked_cli, unshare_works

    if os.uname().machine != "x86_64" or not unshare_works(
        "-m", "sh", "-c", "mount --bind /dev/null /proc/$$/mountinfo"
    ):
        pytest.skip("needs root, unshare -m, and x86_64 (the seccomp filter's syscall number)")
    lower = tmp_path / "lower"
    lower.mkdir()
    merged = overlay(tmp_path, lower)
    try:
        write_src(merged / "src.zarr")
        proc = masked_cli("fuse", merged / "src.zarr", merged / "out.tif", no_statx=True)
        assert proc.returncode == 0, proc.stderr
        assert "warning" not in proc.stderr, proc.stderr
        assert sorted(os.listdir(merged)) == ["out.tif", "src.zarr"]
    finally:
        subprocess.run(["umount", "--lazy", str(merged)], check=False)


def test_a_users_files_in_the_state_folders_of_a_replacement_cut_short_are_kept(image, made):
    """(g76: finishing the replacement removed every entry of dst's state folder but its
    lock, and of the staged one's, a user's notes with them.)"""
    import os

    args = ["fuse", made / "src.zarr", image / "out.zarr", "--depth-map"]
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, "moved", *map(str, args),
                             "--overwrite"], capture_output=True, text=True, check=False,
                            env={**os.environ, "XDG_CACHE_HOME": CACHE})  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    (staged,) = [p for p in image.iterdir() if "staging" in p.name]
    for state in (image / "out.zarr" / ".fstack_dask", staged / ".fstack_dask"):
        (state / "notes.txt").write_text("mine")
        (state / "done").mkdir(exist_ok=True)
        (state / "done" / "mine.txt").write_text("mine")
    proc = cli(*args, "--resume")
    assert proc.returncode == 0, proc.stderr
    for state in (image / "out.zarr" / ".fstack_dask", staged / ".fstack_dask"):
        assert (state / "notes.txt").read_text() == "mine"
        assert (state / "done" / "mine.txt").read_text() == "mine"
        assert not (state / "run.json").exists() and not (state / "lock").exists()
    assert proc.stderr.count("did not write them") == 2, proc.stderr
    got = zarr.open_group(image / "out.zarr", mode="r")
    assert got.attrs["fstack_dask"]["complete"] is True


@pytest.mark.parametrize("step", ["zarr.json", "rename"])
def test_a_replacement_cut_short_whose_staged_output_was_removed_says_so(image, made, step):
    """(g76: --resume with the new parameters refused "was started with different
    depth_map" (dst's record is the old output's), a plain run "continue it with --resume",
    and info called it resumable.) One line, exit 2, nothing changed; --overwrite then."""
    import os

    args = ["fuse", made / "src.zarr", image / "out.zarr", "--depth-map"]
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, step, *map(str, args),
                             "--overwrite"], capture_output=True, text=True, check=False,
                            env={**os.environ, "XDG_CACHE_HOME": CACHE})  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    (staged,) = [p for p in image.iterdir() if "staging" in p.name]
    shutil.rmtree(staged)
    before = tree_digest(image)
    info = cli("info", image / "out.zarr")
    assert info.returncode == 0, info.stderr
    assert f"{staged.name}', is gone" in info.stdout and "not resumable" in info.stdout
    for extra in (["--resume"], []):
        proc = cli(*args, *extra)
        assert proc.returncode == 2, proc.stderr
        error = one_line_error(proc)
        assert f"{staged.name}', is gone" in error and "start over with --overwrite" in error
        assert tree_digest(image) == before
    proc = cli(*args, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert_replaced(image, made)


def test_a_replacement_cut_short_whose_dst_was_renamed_says_so(image, made):
    """A user renamed dst (out.zarr to moved.zarr) left half replaced: info and every run
    said the staged output it was taking in "is gone", naming it where it was. They
    say dst was renamed, and what to do; renamed back, --resume finishes it."""
    import os

    args = ["fuse", made / "src.zarr", image / "out.zarr", "--depth-map"]
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, "zarr.json", *map(str, args),
                             "--overwrite"], capture_output=True, text=True, check=False,
                            env={**os.environ, "XDG_CACHE_HOME": CACHE})  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    shutil.move(image / "out.zarr", image / "moved.zarr")  # (mv: a copy, in a lower layer)
    before = tree_digest(image)
    info = cli("info", image / "moved.zarr")
    assert info.returncode == 0, info.stderr
    assert "was renamed since" in info.stdout and "is gone" not in info.stdout, info.stdout
    proc = cli("fuse", made / "src.zarr", image / "moved.zarr", "--depth-map", "--resume")
    assert proc.returncode == 2, proc.stderr
    error = one_line_error(proc)
    assert "was renamed since" in error and "rename dst back to 'out.zarr'" in error, error
    assert tree_digest(image) == before
    shutil.move(image / "moved.zarr", image / "out.zarr")
    proc = cli(*args, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert_replaced(image, made)


def test_a_copy_spelled_otherwise_of_a_replacement_cut_short_takes_nothing_of_it(image, made):
    """On a disk that tells case, Out.zarr, a copy of out.zarr taken while out.zarr was half
    replaced: a --resume into Out.zarr took out.zarr's staged output (its record names it
    without regard to case: for exFAT), and out.zarr was left "parts of the two outputs, no
    image, nothing to resume". It is refused, as a copy otherwise named is, and
    out.zarr's --resume finishes out.zarr."""
    import os

    args = ["fuse", made / "src.zarr", image / "out.zarr", "--depth-map"]
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, "chunk", *map(str, args),
                             "--overwrite"], capture_output=True, text=True, check=False,
                            env={**os.environ, "XDG_CACHE_HOME": CACHE})  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    shutil.copytree(image / "out.zarr", image / "Out.zarr", symlinks=True)
    before = tree_digest(image)
    proc = cli("fuse", made / "src.zarr", image / "Out.zarr", "--depth-map", "--resume")
    assert proc.returncode == 2, proc.stderr
    assert "rename dst back to 'out.zarr'" in one_line_error(proc)
    assert tree_digest(image) == before
    proc = cli(*args, "--resume")
    assert proc.returncode == 0, proc.stderr
    shutil.rmtree(image / "Out.zarr")
    assert_replaced(image, made)


@pytest.mark.parametrize("step", ["record", "moved"])
def test_info_of_a_replacement_cut_short_before_or_after_its_moves_says_so(image, made, step):
    """Killed once dst's record named the staged output, or once every entry had moved, info
    said "complete" and, of the staged output, "12 of 12 blocks done; resumable: ... computes
    only the blocks left": it says which output dst is, and that --resume finishes."""
    import os

    args = ["fuse", made / "src.zarr", image / "out.zarr", "--depth-map"]
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, step, *map(str, args),
                             "--overwrite"], capture_output=True, text=True, check=False,
                            env={**os.environ, "XDG_CACHE_HOME": CACHE})  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    info = cli("info", image / "out.zarr")
    assert info.returncode == 0, info.stderr
    (line,) = [x for x in info.stdout.splitlines() if x.startswith("overwrite:")]
    assert "cut short while replacing dst entry by entry" in line, line
    now = "the previous output, whole" if step == "record" else "the new output, whole"
    assert f"dst is {now}" in line and "blocks left" not in line, line
    proc = cli(*args, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert_replaced(image, made)


def test_info_of_a_replacement_cut_short_shows_the_new_outputs_parameters(image, made):
    """(g76: it showed the old output's, "maps none", under a state line of the new one.)"""
    import os

    args = ["fuse", made / "src.zarr", image / "out.zarr", "--depth-map"]
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, "chunk", *map(str, args),
                             "--overwrite"], capture_output=True, text=True, check=False,
                            env={**os.environ, "XDG_CACHE_HOME": CACHE})  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    info = cli("info", image / "out.zarr")
    assert info.returncode == 0, info.stderr
    assert "the lines below are the new output's" in info.stdout, info.stdout
    (line,) = [x for x in info.stdout.splitlines() if x.startswith("parameters:")]
    assert line.endswith("maps depth"), line


@pytest.mark.parametrize(
    "step, said",
    [("chunk", "with --resume to finish the replacement"), ("staged record", "already exists")],
)
def test_a_plain_run_after_a_replacement_cut_short_is_refused_first(image, made, step, said):
    """(g76: it finished the replacement, then exited 2 "already exists"; g82: killed once
    the staged record went, dst whole, it took over the stale lock and tidied dst's state
    folder first, two lines.) One line, exit 2, nothing changed; --resume then finishes it."""
    import os

    args = ["fuse", made / "src.zarr", image / "out.zarr", "--depth-map"]
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, step, *map(str, args),
                             "--overwrite"], capture_output=True, text=True, check=False,
                            env={**os.environ, "XDG_CACHE_HOME": CACHE})  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    before = tree_digest(image)
    proc = cli(*args)
    assert proc.returncode == 2, proc.stderr
    error = one_line_error(proc)
    assert said in error, error
    assert step != "chunk" or "nothing was changed" in error, error
    assert tree_digest(image) == before
    proc = cli(*args, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert_replaced(image, made)


# The CLI (argv: its arguments), which, right before it finishes a replacement cut short,
# starts argv[1:] with --overwrite and waits till that run holds dst's lock (two runs into
# it at once, the other first to the lock); it exits once that run did, with its own status.
_OVERTAKEN = textwrap.dedent(r"""
    import json, os, subprocess, sys, time
    from fstack_dask._outputs import inplace
    finish, others = inplace.resume_replacement, []
    def overtaken(dst, **kw):
        others.append(subprocess.Popen(
            [sys.executable, "-m", "fstack_dask", *sys.argv[1:-1], "--overwrite"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        lock = os.path.join(dst.path, ".fstack_dask", "lock")
        while others[0].poll() is None:
            try:
                if json.load(open(lock)).get("pid") == others[0].pid:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.01)
        return finish(dst, **kw)
    inplace.resume_replacement = overtaken
    from fstack_dask._cli.main import main
    status = main(sys.argv[1:])
    assert others and others[0].wait() == 0
    sys.exit(status)
""")


def test_a_resume_of_a_replacement_cut_short_that_another_run_is_finishing_says_so(image, made):
    """--resume and --overwrite into a replacement cut short at once, the overwrite first to
    dst's lock: the resume read dst's record, the old output's, and refused "was started with
    different depth_map ... start over with --overwrite and without --resume". It says
    another run is writing dst; that run's output is whole."""
    import os

    args = ["fuse", made / "src.zarr", image / "out.zarr", "--depth-map"]
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, "chunk", *map(str, args),
                             "--overwrite"], capture_output=True, text=True, check=False,
                            env={**os.environ, "XDG_CACHE_HOME": CACHE})  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    proc = subprocess.run([sys.executable, "-c", _OVERTAKEN, *map(str, args), "--resume"],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "XDG_CACHE_HOME": CACHE})  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "is being written by pid" in one_line_error(proc), proc.stderr
    assert_replaced(image, made)
