"""The ``fstack-dask`` command line, run for real in subprocesses on real Zarr stores."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import zarr

from fstack_dask import focus_stack, fuse_zarr, synthetic_stack, write_stack
from fstack_dask._algorithm.block import block_memory
from fstack_dask._outputs.ownership import STATE_DIR
from fstack_dask._sources.open import open_source
from fstack_dask._version import __version__

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIMEOUT = 120


def cli(*args, cwd=None, exe: list[str] | None = None, env: dict[str, str] | None = None):
    """Run the CLI in a fresh interpreter; return the CompletedProcess."""
    cmd = (exe or [sys.executable, "-m", "fstack_dask"]) + [str(a) for a in args]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 64 x 64 x 7 uint16 stack in the reference layout, and the same as OME-Zarr (z, y, x)."""
    root = tmp_path_factory.mktemp("cli")
    stack = synthetic_stack((64, 64), 7, dtype="uint16", noise=0.02, seed=7).stack
    src = root / "stack.ome.zarr"
    write_stack(
        src,
        stack.transpose(2, 0, 1),
        axes="zyx",
        chunks=(1, 32, 32),
        scale={"y": 0.65, "x": 0.65},
        units={"y": "micrometer", "x": "micrometer"},
    )
    return root, src, stack


def _fused(dst: pathlib.Path) -> zarr.Group:
    return zarr.open_group(dst, mode="r")


def test_fuse_round_trip_equals_focus_stack(data, tmp_path):
    _, src, stack = data
    dst = tmp_path / "fused.ome.zarr"
    res = ok(cli("fuse", src, dst, "--chunks", "32", "--depth-map", "--no-progress"))
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1
    assert str(dst) in lines[0] and "(64, 64)" in lines[0] and "uint16" in lines[0]
    assert re.search(r"in \d+\.\d+ s$", lines[0])
    out = _fused(dst)
    np.testing.assert_array_equal(out["0"][...], focus_stack(stack))
    assert out["0"].chunks == (32, 32)
    assert "depth" in out and "selectivity" not in out
    scale = out.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]
    assert scale["scale"] == [0.65, 0.65]


def test_a_dst_named_with_a_newline_is_reported_on_one_line(data, tmp_path):
    """The success line printed the name raw, on two lines (a fifth adversarial run)."""
    _, src, _ = data
    dst = tmp_path / "two\nlines.ome.zarr"
    res = ok(cli("fuse", src, dst, "--chunks", "32", "--no-progress"))
    assert res.stdout.count("\n") == 1 and repr(str(dst)) in res.stdout, res.stdout


def test_entry_point_and_synchronous_scheduler(data, tmp_path):
    _, src, stack = data
    exe = shutil.which("fstack-dask", path=os.path.dirname(sys.executable)) or shutil.which(
        "fstack-dask"
    )
    if exe is None:
        pytest.skip("the fstack-dask entry point is not installed (pip install -e .)")
    dst = tmp_path / "fused.ome.zarr"
    ok(cli("fuse", src, dst, "--scheduler", "synchronous", "--no-progress", exe=[exe]))
    np.testing.assert_array_equal(_fused(dst)["0"][...], focus_stack(stack))
    assert ok(cli("--version", exe=[exe])).stdout.strip() == f"fstack-dask {__version__}"


def test_processes_scheduler(data, tmp_path):
    _, src, stack = data
    dst = tmp_path / "fused.ome.zarr"
    ok(cli("fuse", src, dst, "--scheduler", "processes", "--chunks", "32", "--no-progress"))
    np.testing.assert_array_equal(_fused(dst)["0"][...], focus_stack(stack))


def test_options_override_the_config(data, tmp_path):
    _, src, stack = data
    config = tmp_path / "run.yaml"
    config.write_text(
        "algorithm: {nhsize: 5, sth: 11}\n"
        "output: {depth_map: true, selectivity_map: true, chunks: 32}\n"
        "resources: {memory_per_task: 64MiB}\n"
        "cluster: {kind: local, scheduler: synchronous}\n"
    )
    dst = tmp_path / "fused.ome.zarr"
    args = ("--config", config, "--nhsize", "7", "--no-depth-map", "--no-progress")
    ok(cli("fuse", src, dst, *args))
    out = _fused(dst)
    attrs = out.attrs["fstack_dask"]
    assert attrs["nhsize"] == 7  # option beats file
    assert attrs["sth"] == 11  # file beats default
    assert attrs["depth_map"] is False and attrs["selectivity_map"] is True
    assert attrs["chunks"] == [32, 32]
    assert "depth" not in out and "selectivity" in out
    np.testing.assert_array_equal(out["0"][...], focus_stack(stack, nhsize=7, sth=11))

    # --overwrite and --chunks auto undo the file's values.
    ok(
        cli(
            "fuse", src, dst, "--config", config, "--overwrite", "--chunks", "auto", "--no-progress"
        )
    )
    assert _fused(dst).attrs["fstack_dask"]["nhsize"] == 5


def test_distributed_scheduler_from_config(data, tmp_path):
    from distributed import LocalCluster

    _, src, stack = data
    dst = tmp_path / "fused.ome.zarr"
    with LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=":0",
    ) as cluster:
        config = tmp_path / "dist.yaml"
        config.write_text(
            f"cluster: {{kind: distributed, address: '{cluster.scheduler_address}'}}\n"
        )
        ok(cli("fuse", src, dst, "--config", config, "--chunks", "32", "--no-progress"))
    np.testing.assert_array_equal(_fused(dst)["0"][...], focus_stack(stack))


@pytest.mark.parametrize("how", ["option", "config"])
def test_a_focus_too_fine_for_the_fit_is_warned_of_once_in_one_line(data, tmp_path, how):
    """--focus (or the config's algorithm.focus) in steps of 1e-9 printed Python's warning,
    its source file and the line of code, before the command line's own warning line: the
    value was checked (and warned of) as the options were read, before the command line
    showed warnings as its own."""
    _, src, _ = data
    focus = [k * 1e-9 for k in range(7)]
    (tmp_path / "c.yaml").write_text(f"algorithm:\n  focus: {focus}\n")
    given = ["--focus", ",".join(map(str, focus))] if how == "option" else ["--config", "c.yaml"]
    commands = [["fuse", src, tmp_path / "out.zarr", "--no-progress"]]
    commands += [["info", src]] if how == "config" else []  # (info takes no --focus)
    for command in commands:
        res = ok(cli(*command, *given, cwd=tmp_path))
        # once: not twice, and not silenced with the first (info shows it among its lines)
        shown = res.stdout if command[0] == "info" else res.stderr
        said = [line for line in shown.splitlines() if "focus steps of 1e-09" in line]
        first = "warning:" if command[0] == "info" else "fstack-dask: warning: focus steps"
        assert len(said) == 1 and said[0].startswith(first), (res.stdout, res.stderr)
        assert "FstackDaskWarning" not in res.stderr and "config_values" not in res.stderr


@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_demo_writes_stores_and_previews(tmp_path, rgb):
    out_dir = tmp_path / "demo"
    args = ["demo", out_dir, "--size", "64", "--planes", "7", "--seed", "3", "--no-progress"]
    res = ok(cli(*args, *(["--rgb"] if rgb else [])))
    for name in ("plane.png", "fused.png", "depth.png", "truth.png"):
        assert (out_dir / name).read_bytes()[:8] == PNG_SIGNATURE, name
        assert str(out_dir / name) in res.stdout
    planes = sorted(p.name for p in (out_dir / "planes").iterdir())  # a folder of TIFF planes
    assert planes == [f"plane_{p:03d}.tif" for p in range(7)]
    stack = open_source(out_dir / "planes")
    assert stack.axes == ("zyxc" if rgb else "zyx") and stack.rgb == rgb
    assert stack.scale["y"] == pytest.approx(0.65) and stack.units["y"] == "micrometer"
    fused = _fused(out_dir / "fused.ome.zarr")
    assert "0" in set(fused.array_keys())
    assert {"depth", "selectivity"} <= set(fused.group_keys())  # multiscale images of their own
    match = re.search(r"fused ([\d.]+) dB, middle plane ([\d.]+) dB", res.stdout)
    assert match, res.stdout
    assert float(match[1]) > float(match[2]) + 3

    # A second run refuses to replace it without --overwrite, and writes nothing; with it,
    # it replaces only what the demo wrote.
    before = sorted(p.name for p in out_dir.iterdir())
    again = cli(*args)
    assert again.returncode == 2
    assert again.stderr.startswith("fstack-dask: error:") and "--overwrite" in again.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == before
    (out_dir / "planes" / "notes.txt").write_text("mine")
    refused = cli(*args, "--overwrite")
    assert refused.returncode == 2 and "did not write" in refused.stderr
    assert (out_dir / "planes" / "notes.txt").read_text() == "mine"
    (out_dir / "planes" / "notes.txt").unlink()
    ok(cli(*args, "--overwrite"))


def test_demo_never_replaces_files_it_did_not_write(tmp_path):
    """PNGs of the preview names that the demo did not write (no mark) are refused before
    anything is written, also with --overwrite; the demo's own are replaced with it."""
    from conftest import tree_digest

    from fstack_dask._outputs.png import write_png

    out_dir = tmp_path / "demo"
    out_dir.mkdir()
    write_png(out_dir / "fused.png", np.full((4, 4), 7, np.uint8))  # a real PNG, not the demo's
    (out_dir / "truth.png").write_bytes(b"my notes")
    (out_dir / "notes.txt").write_text("mine")
    args = ["demo", out_dir, "--size", "32", "--planes", "5", "--no-progress"]
    before = tree_digest(tmp_path)
    for flags in ([], ["--overwrite"]):
        res = cli(*args, *flags)
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fstack-dask: error: "), res.stderr
        assert "holds fused.png, truth.png, which the demo did not write" in lines[0]
        assert res.stdout == "" and tree_digest(tmp_path) == before
    # moved away: the demo writes its previews, marked as its own
    from fstack_dask._cli.demo import PNG_MARK, PREVIEWS
    from fstack_dask._outputs.png import read_png_text

    (out_dir / "fused.png").unlink()
    (out_dir / "truth.png").unlink()
    ok(cli(*args, "--seed", "1"))
    assert all(read_png_text(out_dir / n)["Description"] == PNG_MARK for n in PREVIEWS)
    # one replaced by a file of the user's: refused, nothing changed
    write_png(out_dir / "depth.png", np.zeros((3, 3), np.uint8))
    before = tree_digest(tmp_path)
    res = cli(*args, "--seed", "2", "--overwrite")
    assert res.returncode == 2 and "holds depth.png, which the demo did not write" in res.stderr
    assert tree_digest(tmp_path) == before
    # the demo's own previews and planes are replaced with --overwrite; the user's file stays
    (out_dir / "depth.png").unlink()
    old = {n: (out_dir / n).read_bytes() for n in ("fused.png", "planes/plane_000.tif")}
    ok(cli(*args, "--seed", "2", "--overwrite"))
    assert all((out_dir / n).read_bytes() != body for n, body in old.items())
    assert (out_dir / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("theirs", ["a folder", "a text file", "a name ending in a newline"])
def test_demo_overwrite_refuses_a_plane_folder_holding_a_tif_name_of_the_users(tmp_path, theirs):
    """A user's folder, or a file that is no TIFF, named ``*.tif`` in the demo's plane folder:
    the data were kept, but ``--overwrite`` said ``[Errno 21] Is a directory`` (exit 1) or
    tifffile's ``not a TIFF file`` (an eighth adversarial run). One line naming the folder.
    A file named as a plane written aside but for a last newline is the user's too: the
    pattern's ``$`` matched before it, and ``--overwrite`` deleted it (a review of 40175d5)."""
    from conftest import tree_digest

    out_dir = tmp_path / "demo"
    args = ["demo", out_dir, "--size", "32", "--planes", "5", "--no-progress"]
    ok(cli(*args))
    if theirs == "a folder":
        (out_dir / "planes" / "sub.tif").mkdir()
        (out_dir / "planes" / "sub.tif" / "data.txt").write_text("precious")
    elif theirs == "a text file":
        (out_dir / "planes" / "zz_user.tif").write_text("precious")
    else:
        (out_dir / "planes" / f".plane_001.tif.{'7' * 32}.tmp\n").write_text("precious")
    before = tree_digest(tmp_path)
    res = cli(*args, "--overwrite")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].endswith("planes' holds files the demo did not write; refusing to delete them")
    assert tree_digest(tmp_path) == before


# The demo, SIGKILLed once 200 bytes of its 3rd plane are on disk (the TIFF header and part
# of its first IFD); its DIR is argv[1].
DEMO_KILLED_WRITING_A_PLANE = """
import io, os, signal, sys
import tifffile

real, count = tifffile.imwrite, [0]

def imwrite(path, *args, **kwargs):
    count[0] += 1
    if count[0] == 3:
        buffer = io.BytesIO()
        real(buffer, *args, **kwargs)
        with open(path, "wb") as fh:
            fh.write(buffer.getvalue()[:200])
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, *args, **kwargs)

tifffile.imwrite = imwrite
from fstack_dask._cli.main import main
sys.exit(main(["demo", sys.argv[1], "--size", "32", "--planes", "5", "--no-progress"]))
"""


def test_a_demo_killed_while_writing_a_plane_is_replaced_by_overwrite(tmp_path):
    """Planes were written in place: a demo killed meanwhile left ``plane_002.tif`` cut
    short, which a fusion of the folder would read, and which ``demo --overwrite`` then
    refused to replace as a file the demo did not write (the user had to delete the demo's
    own folder by hand). Each plane is written aside and renamed: the folder holds whole
    planes only, and the rerun replaces it."""
    out_dir = tmp_path / "demo"
    killed = cli(out_dir, exe=[sys.executable, "-c", DEMO_KILLED_WRITING_A_PLANE])
    assert killed.returncode == -9, killed.stderr
    planes = sorted(p.name for p in (out_dir / "planes").iterdir())
    assert [n for n in planes if not n.startswith(".")] == ["plane_000.tif", "plane_001.tif"]
    ok(cli("demo", out_dir, "--size", "32", "--planes", "5", "--no-progress", "--overwrite"))
    assert sorted(os.listdir(out_dir / "planes")) == [f"plane_{k:03d}.tif" for k in range(5)]


def test_demo_never_replaces_a_result_of_the_users_own(tmp_path, data):
    """DIR/fused.ome.zarr fused by the user from their own stack (an fstack_dask output, but
    not the demo's: its source is not DIR/planes) is refused before anything is written,
    also with --overwrite; an adversarial run found the demo replacing it with its own."""
    from conftest import tree_digest

    _, src, _ = data
    out_dir = tmp_path / "project"
    out_dir.mkdir()
    ok(cli("fuse", src, out_dir / "fused.ome.zarr", "--chunks", "32", "--no-progress"))
    before = tree_digest(tmp_path)
    res = cli("demo", out_dir, "--size", "32", "--planes", "5", "--no-progress", "--overwrite")
    assert res.returncode == 2, res.stderr
    assert "holds fused.ome.zarr, which the demo did not write" in res.stderr
    assert tree_digest(tmp_path) == before


def test_demo_overwrite_through_a_bind_mount_replaces_its_own_output(tmp_path):
    """``demo DIR --overwrite`` with DIR reached through a bind mount (a container's view of
    a host folder) refused its own fused.ome.zarr, "which the demo did not write": its
    source's recorded path was the other spelling of DIR/planes. The same folder is known
    by its device and inode; the user's own result is still refused (the test above)."""
    from safety_util import bind_or_skip, unmount_all_under

    real, bound = tmp_path / "real", tmp_path / "bound"
    real.mkdir()
    bound.mkdir()
    bind_or_skip(real, bound)
    try:
        args = ["--size", "32", "--planes", "5", "--no-progress"]
        ok(cli("demo", real / "d", *args))
        ok(cli("demo", bound / "d", *args, "--seed", "7", "--overwrite"))
        ok(cli("demo", real / "d", *args, "--overwrite"))
    finally:
        unmount_all_under(tmp_path)


def test_demo_overwrite_never_reaches_another_folder_or_a_backup(tmp_path):
    """A third adversarial run: ``B/planes`` a link to ``A/planes`` had ``demo B --overwrite``
    delete A's planes, and previews rewritten in place changed a hard-linked backup
    (``cp -al``). The link is refused before anything is written; previews are replaced by
    new files, the backup keeps the old ones."""
    from conftest import tree_digest

    args = ["--size", "32", "--planes", "5", "--no-progress"]
    ok(cli("demo", tmp_path / "A", *args))
    (tmp_path / "B").mkdir()
    os.symlink(tmp_path / "A" / "planes", tmp_path / "B" / "planes")
    before = tree_digest(tmp_path)
    res = cli("demo", tmp_path / "B", *args, "--overwrite")
    assert res.returncode == 2, res.stderr
    assert "holds planes, which the demo did not write" in res.stderr
    assert tree_digest(tmp_path) == before
    shutil.copytree(tmp_path / "A", tmp_path / "snapshot", copy_function=os.link)
    old = tree_digest(tmp_path / "snapshot")
    ok(cli("demo", tmp_path / "A", *args, "--seed", "7", "--overwrite"))
    assert tree_digest(tmp_path / "snapshot") == old
    assert (tmp_path / "A" / "fused.png").read_bytes() != (
        tmp_path / "snapshot" / "fused.png"
    ).read_bytes()


def _info(stdout: str) -> dict[str, str]:
    return dict(
        (k.strip(), v.strip()) for k, v in (line.split(":", 1) for line in stdout.splitlines())
    )


def test_info_prints_the_plan(data):
    _, src, _ = data
    res = ok(cli("info", src, "--chunks", "32"))
    info = _info(res.stdout)
    assert info["axes"] == "zyx"
    assert info["shape"] == "(7, 64, 64)"
    assert info["dtype"] == "uint16"
    assert info["source chunks"] == "(1, 32, 32)"
    assert info["format"] == "OME-NGFF 0.5"
    assert "y=0.65 micrometer" in info["scale"]
    assert info["halo"].startswith("13 px")
    assert info["chunks (y, x)"] == "32, 32"
    assert info["tasks"] == "4"
    # An upper bound: a block with its halo on every side.
    mib = block_memory((32 + 2 * 13, 32 + 2 * 13), 7, 1, 2, False) / 2**20
    assert info["memory per task"].startswith(f"{mib:.1f} MiB")
    assert info["decoding"].startswith("halo exchange by blocks, waves of 2 of 2 column(s)")
    assert "about 1.00 x the stored bytes decoded" in info["decoding"]
    # blocks half a chunk: by cells of one chunk
    res = ok(cli("info", src, "--chunks", "16", "--memory-per-task", "1MiB"))
    decoding = _info(res.stdout)["decoding"]
    assert decoding.startswith("halo exchange by cells of 32 x 32 px (4 blocks each), waves of"), (
        decoding
    )


def test_info_default_plan_matches_fuse(data, tmp_path):
    _, src, _ = data
    res = ok(cli("info", src, "--nhsize", "5", "--memory-per-task", "2MiB"))
    info = _info(res.stdout)
    out = fuse_zarr(src, tmp_path / "out.zarr", nhsize=5, memory_per_task="2MiB", progress=False)
    cy, cx = out.attrs["fstack_dask"]["chunks"]  # what fuse really did
    assert out["0"].chunks == (cy, cx)
    assert info["chunks (y, x)"] == f"{cy}, {cx}"
    assert info["halo"].startswith("7 px")
    n_tasks = -(-64 // cy) * -(-64 // cx)
    assert info["tasks"] == str(n_tasks)
    assert "budget 2.0 MiB" in info["memory per task"]


def _tree(path: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# Run for real in a subprocess: (argv with the fixture's paths as {fields}, exit status).
ERROR_CASES = {
    "missing src": (["fuse", "{root}/nope.zarr", "{dst}"], 2),
    "bad axes": (["fuse", "{src}", "{dst}", "--axes", "zyq"], 2),
    "bad nhsize": (["fuse", "{src}", "{dst}", "--nhsize", "0"], 2),
    "dst exists": (["fuse", "{src}", "{existing}"], 2),
    "dst inside src": (["fuse", "{src}", "{src}/fused.zarr"], 2),
    "bad config key": (["fuse", "{src}", "{dst}", "--config", "{bad_key}"], 2),
    "bad yaml": (["fuse", "{src}", "{dst}", "--config", "{bad_yaml}"], 2),
    "dst locked": (["fuse", "{src}", "{existing}", "--resume"], 1),
    # nothing listens at the config's address: a usage error naming it (4cede04), as the
    # README's table says; a host that does not answer is exit 1 (not reproducible here)
    "scheduler unreachable": (["fuse", "{src}", "{dst}", "--config", "{unreachable}"], 2),
}
# The same checks in-process through main(), for more cases at less cost.
MORE_ERROR_CASES = {
    "axes disagree": (["fuse", "{src}", "{dst}", "--axes", "yxz"], 2),
    "non-integer nhsize": (["fuse", "{src}", "{dst}", "--nhsize", "nine"], 2),
    "bad alpha": (["fuse", "{src}", "{dst}", "--alpha", "2"], 2),
    "focus length": (["fuse", "{src}", "{dst}", "--focus", "0,1,2"], 2),
    "focus not numbers": (["fuse", "{src}", "{dst}", "--focus", "a,b"], 2),
    # beyond float32, the depth map's dtype: all inf, exit 0 (a third adversarial run)
    "focus beyond float32": (
        ["fuse", "{src}", "{dst}", "--depth-map", "--focus", ",".join(f"{k}e39" for k in range(7))],
        2,
    ),  # fmt: skip
    "rgb without c": (["fuse", "{src}", "{dst}", "--channels", "rgb"], 2),
    "bad chunks": (["fuse", "{src}", "{dst}", "--chunks", "0"], 2),
    "bad scheduler": (["fuse", "{src}", "{dst}", "--scheduler", "thread"], 2),
    "bad memory": (["fuse", "{src}", "{dst}", "--memory-per-task", "lots"], 2),
    "missing config": (["fuse", "{src}", "{dst}", "--config", "{root}/nope.yaml"], 2),
    "abbreviated option": (["fuse", "{src}", "{dst}", "--nhsiz", "3"], 2),
    "unknown option": (["fuse", "{src}", "{dst}", "--bogus"], 2),
    "no command": ([], 2),
    "info missing src": (["info", "{root}/nope.zarr"], 2),
    "info bad config": (["info", "{src}", "--config", "{bad_yaml}"], 2),
    "demo bad size": (["demo", "{root}/demo", "--size", "0"], 2),
    # these wrote the planes, then refused (or a MemoryError, exit 1): an adversarial run
    "demo size too small to fuse": (["demo", "{root}/demo", "--size", "2"], 2),
    "demo one plane": (["demo", "{root}/demo", "--planes", "1"], 2),
    # OverflowError, exit 1, naming no option (an adversarial run)
    "nhsize of 400 digits": (["fuse", "{src}", "{dst}", "--nhsize", "9" * 400], 2),
    # int() reads other scripts' digits and underscores (an adversarial run)
    "chunks in Arabic-Indic digits": (["fuse", "{src}", "{dst}", "--chunks", "\u0666\u0664"], 2),
    "chunks with an underscore": (["fuse", "{src}", "{dst}", "--chunks", "1_0"], 2),
    "memory of 400 digits": (["fuse", "{src}", "{dst}", "--memory-per-task", "9" * 400], 2),
    # distributed's own messages (an unpacking error among them), naming no option
    "scheduler inproc://x": (["fuse", "{src}", "{dst}", "--scheduler", "inproc://x"], 2),
    "scheduler without host": (["fuse", "{src}", "{dst}", "--scheduler", "tcp://"], 2),
    "scheduler http": (["fuse", "{src}", "{dst}", "--scheduler", "http://127.0.0.1:9"], 2),
    "demo size beyond memory": (["demo", "{root}/demo", "--size", "100000000"], 2),
    # checked before connecting to the (here unreachable) scheduler
    "cluster and missing src": (["fuse", "{root}/nope", "{dst}", "--config", "{unreachable}"], 2),
    "cluster and dst exists": (["fuse", "{src}", "{existing}", "--config", "{unreachable}"], 2),
}


@pytest.fixture(scope="module")
def error_env(data, tmp_path_factory):
    _, src, _ = data
    root = tmp_path_factory.mktemp("errors")
    existing = root / "existing.ome.zarr"
    ok(cli("fuse", src, existing, "--no-progress"))
    (root / "bad_key.yaml").write_text("algorithm:\n  nhsiz: 5\n")
    (root / "bad_yaml.yaml").write_text("algorithm: {nhsize: 5\n")
    # nothing listens on the discard port: connecting fails
    (root / "unreachable.yaml").write_text(
        "cluster: {kind: distributed, address: 'tcp://127.0.0.1:9'}\n"
    )
    return {
        "root": root,
        "src": src,
        "dst": root / "out.ome.zarr",
        "existing": existing,
        "bad_key": root / "bad_key.yaml",
        "bad_yaml": root / "bad_yaml.yaml",
        "unreachable": root / "unreachable.yaml",
    }


def _snapshot(env) -> dict[str, list[str]]:
    return {k: _tree(env[k]) for k in ("root", "src")}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_are_one_line_with_the_documented_status(error_env, case):
    argv_template, status = ERROR_CASES[case]
    env = error_env
    before = _snapshot(env)
    lock = env["existing"] / STATE_DIR / "lock"
    if case == "dst locked":  # held by this (live) test process
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    try:
        res = cli(
            *(a.format(**env) for a in argv_template),
            cwd=env["root"],
            env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"},
        )
    finally:
        if lock.exists():
            shutil.rmtree(lock.parent)
    assert res.returncode == status, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("fstack-dask: error: ")
    assert res.stdout == ""
    assert _snapshot(env) == before  # nothing written


@pytest.mark.parametrize("case", list(MORE_ERROR_CASES))
def test_more_errors_in_process(error_env, case, capsys, monkeypatch):
    from fstack_dask._cli.main import main

    argv_template, status = MORE_ERROR_CASES[case]
    env = error_env
    monkeypatch.chdir(env["root"])
    before = _snapshot(env)
    assert main([a.format(**env) for a in argv_template]) == status
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fstack-dask: error: ")
    assert out == ""
    assert _snapshot(env) == before


def test_help_documents_the_exit_status():
    res = ok(cli("fuse", "--help"))
    assert "exit status" in res.stdout and "--config" in res.stdout
    assert re.search(r"^\s+2\s+usage or validation error", res.stdout, re.M)
    assert re.search(r"^\s+1\s+runtime failure", res.stdout, re.M)


def test_keyboard_interrupt_exits_130(monkeypatch, capsys, data, tmp_path):
    import fstack_dask._runs.fuse_zarr as pipeline
    from fstack_dask._cli.main import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "fuse_zarr", interrupted)
    _, src, _ = data
    assert main(["fuse", str(src), str(tmp_path / "x.zarr"), "--no-progress"]) == 130
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("fstack-dask: error: interrupted")
    assert "--resume" in err[0]


@pytest.mark.parametrize("address", ["inproc://x", "tcp://", "tcp://[::1", "http://127.0.0.1:9"])
def test_a_malformed_scheduler_address_names_the_option(error_env, capsys, address):
    """distributed's own messages named no option (``inproc://x``: "not enough values to
    unpack"; an adversarial run)."""
    from fstack_dask._cli.main import main

    env = error_env
    assert main(["fuse", str(env["src"]), str(env["dst"]), "--scheduler", address]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--scheduler must be synchronous, threads" in err, err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--dst-storage-options", '{"a": 1}'], "--dst-storage-options only apply to URLs"),
        (["--dst-storage-options", "null"], 'such as {"anon": true}'),
        (["--memory-per-task", "1"], "--memory-per-task 1 bytes cannot hold"),
    ],
)
def test_messages_name_the_option_as_it_was_given(error_env, capsys, argv, says):
    """They named ``storage_options`` for --dst-storage-options, the Python spelling
    ``memory_per_task=``, and an example that is not JSON (an adversarial run)."""
    from fstack_dask._cli.main import main

    env = error_env
    assert main(["fuse", str(env["src"]), str(env["dst"]), *argv]) == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--storage-options", "--dst-storage-options"])
def test_storage_options_nested_too_deeply_name_the_option(error_env, capsys, option):
    """JSON nested 60000 deep (one argument fits it) stopped the run with 'maximum recursion
    depth exceeded while decoding a JSON array', exit 1, naming no option (a review,
    2026-12-06)."""
    from fstack_dask._cli.main import main

    env = error_env
    assert main(["fuse", str(env["src"]), str(env["dst"]), option, "[" * 60000]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{option} must be a JSON object" in err, err
    assert "nested too deeply" in err


def test_a_tiff_without_pages_says_so(tmp_path):
    """It said "series=0 is out of range", naming no option (an adversarial run)."""
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "empty.tif"
    with tifffile.TiffWriter(path):
        pass
    res = cli("fuse", path, tmp_path / "out.zarr", "--no-progress")
    assert res.returncode == 2 and "holds no image (no pages)" in res.stderr, res.stderr


def test_device_is_read_whatever_its_case(error_env, tmp_path):
    """``device='CPU'`` was accepted in Python and ``--device CPU`` refused (an adversarial
    run): both read it as ``cpu``."""
    res = cli("fuse", error_env["src"], tmp_path / "out.zarr", "--device", "CPU", "--no-progress")
    assert res.returncode == 0, res.stderr


def test_chunks_over_memory_per_task_are_warned_of_by_the_run_as_by_info(data, tmp_path):
    """``info`` warned that ``--chunks 64`` need more than ``--memory-per-task`` lets a task
    hold, and the run itself went on in silence (a documentation run)."""
    _, src, _ = data
    over = ("--chunks", "64", "--memory-per-task", "200KiB")
    warning = "fstack-dask: warning: chunks=(64, 64) need about "
    res = cli("fuse", src, tmp_path / "out.zarr", *over, "--no-progress")
    assert res.returncode == 0 and warning in res.stderr, res.stderr
    assert "more than memory_per_task (200.00 kiB)" in res.stderr
    res = cli("info", src, *over)
    assert res.returncode == 0 and res.stdout.count("warning: chunks=(64, 64) need about ") == 1
    res = cli("fuse", src, tmp_path / "fits.zarr", "--chunks", "64", "--no-progress")
    assert res.returncode == 0 and "warning" not in res.stderr, res.stderr


def test_an_engine_typo_is_refused_on_the_command_line(data, tmp_path):
    """The warning given at import was lost on the command line (an adversarial run); since
    g47 the typo is refused (tests/cli/test_environment.py), nothing written."""
    _, src, _ = data
    res = cli("fuse", src, tmp_path / "o.zarr", "--no-progress", env={"FSTACK_DASK_ENGINE": "nump"})
    assert res.returncode == 2 and not (tmp_path / "o.zarr").exists(), res.stderr
    assert "error: FSTACK_DASK_ENGINE must be 'numpy' or 'compiled' (or unset), got 'nump'" in (
        res.stderr
    )


_LOADED = (
    "import atexit, runpy, sys\n"
    "heavy = ('numba', 'scipy', 'dask', 'distributed')\n"
    "atexit.register(lambda: print('loaded:', [m for m in heavy if m in sys.modules]))\n"
    "runpy.run_module('fstack_dask', run_name='__main__')\n"
)


def test_commands_that_fuse_nothing_import_no_kernel(data, tmp_path):
    """``--help``, a usage error and ``info`` of an output of ours fuse nothing, but ``info``
    imported numba and SciPy (the kernels, through the planner: about 0.7 s of its 1.9 s):
    none of the heavy packages is imported on those paths now."""
    _root, src, _stack = data
    dst = tmp_path / "out.zarr"
    fuse_zarr(src, dst, chunks=(32, 32), scheduler="synchronous", progress=False)
    for args, code in ((["--help"], 0), (["fuse", src], 2), (["info", dst], 0)):
        proc = cli("-c", _LOADED, *args, exe=[sys.executable])
        assert proc.returncode == code, proc.stderr
        assert proc.stdout.splitlines()[-1] == "loaded: []", (args, proc.stdout[-300:])


def test_refusals_and_plans_import_no_kernel(data, tmp_path):
    """A refused fuse (a missing src, a dst that exists or lies in src, a user's TIFF as dst,
    a bad --axes or --level, a dst's missing parent) and ``info`` of a source imported numba
    and SciPy (1-2 s) before saying anything: the planner imported the kernel. It is imported
    once dst is accepted (in the background, while the run prepares), not before."""
    _root, src, _stack = data
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("a user's")
    (tmp_path / "user.tif").write_bytes(b"II*\x00 a user's picture")
    refused = [
        ["fuse", tmp_path / "nothere.zarr", tmp_path / "o.zarr"],
        ["fuse", src, tmp_path / "taken"],
        ["fuse", src, tmp_path / "user.tif"],
        ["fuse", src, src / "inside.zarr"],
        ["fuse", src, tmp_path / "o.zarr", "--axes", "zyxc"],
        ["fuse", src, tmp_path / "o.zarr", "--level", "3"],
        ["fuse", src, tmp_path / "no" / "o.zarr"],
    ]
    calls = [[str(a) for a in args] for args in [*refused, ["info", src]]]
    code = (
        "import json, sys\n"
        "from fstack_dask._cli.main import main\n"
        "for args in json.loads(sys.argv[1]):\n"
        "    code = main(args)\n"
        "    print(code, [m for m in ('numba', 'scipy') if m in sys.modules])\n"
    )
    proc = cli("-c", code, json.dumps(calls), exe=[sys.executable])
    said = [line for line in proc.stdout.splitlines() if re.fullmatch(r"\d+ \[.*\]", line)]
    assert said == ["2 []"] * len(refused) + ["0 []"], (said, proc.stderr[-2000:])
    assert (tmp_path / "user.tif").read_bytes() == b"II*\x00 a user's picture"


README_ROWS = {  # a row of docs/safety.md's "Bad input" table: what it starts with, and the argv
    "src missing": ["fuse", "{mine}/nothere", "{dst}"],
    "src metadata damaged": ["fuse", "{mine}/damaged.zarr", "{dst}"],
    "a z axis of length 0": ["fuse", "{mine}/empty.zarr", "{dst}", "--axes", "zyx"],
    "complex, bool, datetime, object or string dtype": ["fuse", "{mine}/complex.zarr", "{dst}"],
    "dst exists (without": ["fuse", "{src}", "{existing}"],
    "dst named like a picture": ["fuse", "{src}", "fused.png"],
    "`--scene` for a source": ["fuse", "{src}", "{dst}", "--scene", "1"],
    "dst's parent folder does not exist": ["fuse", "{src}", "{mine}/nodir/out.zarr"],
    "dst equal to, inside, or containing src": ["fuse", "{src}", "{src}/sub"],
    "a TIFF dst for what OME-XML cannot hold": ["fuse", "{mine}/int64.zarr", "{mine}/out.tif"],
    "an HTTP dst": ["fuse", "{src}", "https://example.org/out.zarr"],
    "a chained URL with a link": ["fuse", "a::b", "{dst}"],
    "a symlink loop as src or dst": ["fuse", "{src}", "{mine}/loop"],
}


@pytest.mark.parametrize("row", list(README_ROWS))
def test_the_readme_s_bad_input_table_quotes_what_the_program_prints(
    error_env, row, capsys, monkeypatch, tmp_path
):
    """The table's first quote of a row, ``'...'`` any quoted name and ``...`` any text, is
    what the program prints, with the row's exit status: the row "src missing" had lost the
    CZI, ND2 and LIF files the message names since (a README audit)."""
    from fstack_dask._cli.main import main

    (tmp_path / "damaged.zarr").mkdir()
    (tmp_path / "damaged.zarr" / "zarr.json").write_text("{not json")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    zarr.create_array(str(tmp_path / "empty.zarr"), shape=(0, 8, 8), dtype="uint16")
    for name, dtype in (("complex", "complex64"), ("int64", "int64")):
        zarr.create_array(str(tmp_path / f"{name}.zarr"), shape=(5, 8, 8), dtype=dtype,
                          dimension_names=["z", "y", "x"])  # fmt: skip
    readme = (pathlib.Path(__file__).parents[2] / "docs" / "safety.md").read_text()
    (line,) = [s for s in readme.splitlines() if s.startswith(f"| {row}")]
    _, says, status, _ = line.split(" | ")
    quote = re.escape(says.split("`")[1])
    quote = quote.replace(r"'\.\.\.'", "'[^']*'").replace(r"\(\.\.\.\)", r"\(.*\)")
    quote = quote.replace(r"\ \.\.\.", ".*").replace(r"\.\.\.", ".*")  # (" ...": "; ...")
    monkeypatch.chdir(tmp_path)
    code = main([a.format(mine=tmp_path, **error_env) for a in README_ROWS[row]])
    (err,) = capsys.readouterr().err.splitlines()
    assert re.search(quote, err), (says, err)
    assert str(code) == status


def test_info_shows_the_sources_translation(tmp_path):
    """A source's position (an OME-Zarr translation, an OME-TIFF's stage position, an
    ImageJ origin) goes into the output but info did not show it (an adversarial run on
    metadata); none, no line."""
    src = tmp_path / "placed.ome.zarr"
    write_stack(src, np.zeros((5, 16, 16), np.uint8), axes="zyx",
                scale={"z": 2.0, "y": 0.5, "x": 0.5}, units={a: "micrometer" for a in "zyx"},
                translation={"z": -3.0, "y": 10.0, "x": 20.5})  # fmt: skip
    info = _info(ok(cli("info", src)).stdout)
    assert info["translation"] == "z=-3 micrometer, y=10 micrometer, x=20.5 micrometer"
    plain = tmp_path / "plain.ome.zarr"
    write_stack(plain, np.zeros((5, 16, 16), np.uint8), axes="zyx")
    assert "translation" not in _info(ok(cli("info", plain)).stdout)
