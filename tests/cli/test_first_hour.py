"""A new user's first hour (issue 18), through the real command line on real files: no silent
wrong result (a warning naming what is concerned, exit 0, or a one-line refusal, exit 2, with
nothing written), and every message true to what the tool reads."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import zarr
from conftest import tree_digest

from fstack_dask import fuse_zarr, sample_stack, write_stack

tifffile = pytest.importorskip("tifffile")
Image = pytest.importorskip("PIL.Image")

TIMEOUT = 180


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    """``python -m fstack_dask ARGS`` in a fresh interpreter, stderr a pipe (not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "fstack_dask", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
        check=False,
    )


def _lines(text: str, start: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(start)]


@pytest.fixture
def pcb(tmp_path):
    """The shipped PCB photographs (7 RGB planes, a handheld series) as JPEG files, as a
    camera saves them."""
    folder = tmp_path / "pcb"
    folder.mkdir()
    for k, plane in enumerate(sample_stack("pcb"), start=1):
        Image.fromarray(plane).save(folder / f"pcb_{k:03d}.jpg", quality=95)
    return folder


@pytest.fixture
def lightsheet(tmp_path):
    """The shipped light-sheet stack (34 planes of 128 x 128 uint16) as TIFF planes."""
    folder = tmp_path / "lightsheet"
    folder.mkdir()
    for k, plane in enumerate(sample_stack("mitochondria_lightsheet")):
        tifffile.imwrite(folder / f"IP_{k:04d}.tif", plane)
    return folder


# ------------------------------------------------------------ silent wrong results


def test_a_file_not_named_like_the_planes_is_listed_and_named(pcb, tmp_path):
    """Another tool's fused result saved beside the planes, same size and format: it is
    fused as a plane (it may be wanted), and both the run's log and info name it."""
    mean = sample_stack("pcb").mean(axis=0).round().astype(np.uint8)
    Image.fromarray(mean).save(pcb / "expected.jpg", quality=95)
    res = cli("fuse", pcb, tmp_path / "all.ome.zarr", "--no-progress")
    assert res.returncode == 0, res.stderr
    listing = "8 JPEG files, in this order: first 'expected.jpg', last 'pcb_007.jpg'"
    assert f"fstack-dask: src '{pcb}': {listing}" in res.stderr.splitlines()
    (warning,) = _lines(res.stderr, "fstack-dask: warning: ")
    pattern = f"{pcb}/pcb_*.jpg"
    assert "'expected.jpg' is not named like the other 7 files" in warning
    assert "fused as plane 1 of 8" in warning and f"such as '{pattern}'" in warning
    assert "UserWarning" not in res.stderr  # said once, as the command line says things

    info = cli("info", pcb)
    assert info.returncode == 0, info.stderr
    assert f"files:              {listing}" in info.stdout.splitlines()
    assert _lines(info.stdout, "warning: ") == [warning.removeprefix("fstack-dask: ")]

    res = cli("fuse", pattern, tmp_path / "planes.ome.zarr", "--no-progress")  # as suggested
    assert res.returncode == 0, res.stderr
    assert "7 JPEG files, in this order: first 'pcb_001.jpg', last 'pcb_007.jpg'" in res.stderr
    assert "warning" not in res.stderr


def test_platform_litter_in_a_folder_is_skipped(pcb, tmp_path):
    # what macOS (AppleDouble "._" files, .DS_Store) and Windows leave in a copied folder
    (pcb / "._pcb_001.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00" + bytes(4088))
    (pcb / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    (pcb / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")
    (pcb / "desktop.ini").write_text("[.ShellClassInfo]\r\n")
    res = cli("fuse", pcb, tmp_path / "out.ome.zarr", "--no-progress", "--levels", "0")
    assert res.returncode == 0, res.stderr
    assert "skipped 1 hidden or system file ('._pcb_001.jpg')" in res.stderr
    planes = sorted(str(p) for p in pcb.glob("pcb_*.jpg"))
    expected = fuse_zarr(planes, tmp_path / "clean.ome.zarr", levels=0, progress=False)
    fused = zarr.open_group(str(tmp_path / "out.ome.zarr"), mode="r")["0"][...]
    np.testing.assert_array_equal(fused, expected["0"][...])


def test_axes_on_plane_files_are_refused(lightsheet, tmp_path):
    """A folder's order is fixed (one plane per file): --axes yxz made a 34 x 128 'image'."""
    before = tree_digest(tmp_path)
    res = cli("fuse", lightsheet, tmp_path / "out.ome.zarr", "--axes", "yxz")
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"fstack-dask: error: --axes 'yxz' cannot apply to src folder '{lightsheet}': plane files "
        "are always read as 'zyx' (one plane per file, in name order, then rows, columns); "
        "omit --axes"
    ]
    assert tree_digest(tmp_path) == before


def test_one_file_or_a_single_image_is_refused(lightsheet, tmp_path):
    before = tree_digest(tmp_path)
    res = cli("fuse", f"{lightsheet}/IP_0007*.tif", tmp_path / "out.ome.zarr")
    assert res.returncode == 2
    (line,) = res.stderr.splitlines()
    assert line.startswith(f"fstack-dask: error: src pattern '{lightsheet}/IP_0007*.tif' gives "
                           f"one file, '{lightsheet}/IP_0007.tif'; a focus stack needs at least "
                           "2 planes")  # fmt: skip
    for axes in ((), ("--axes", "zyx")):  # the hint was --axes zyx, which then failed too
        res = cli("fuse", lightsheet / "IP_0007.tif", tmp_path / "out.ome.zarr", *axes)
        assert res.returncode == 2
        (line,) = res.stderr.splitlines()
        assert line == (
            f"fstack-dask: error: TIFF '{lightsheet}/IP_0007.tif' (series 0) is a single 2-D "
            f"image (128 x 128 px), not a focus stack: give the folder of the planes, a pattern "
            f"matching them (e.g. '{lightsheet}/*.tif') or a multi-page TIFF"
        )
    assert tree_digest(tmp_path) == before


def test_few_planes_and_a_dropped_alpha_channel_are_said(tmp_path):
    folder = tmp_path / "rgba"
    folder.mkdir()
    planes = sample_stack("pcb")[2:4]
    alpha = np.full(planes.shape[1:-1] + (1,), 255, np.uint8)
    for k, plane in enumerate(planes):
        Image.fromarray(np.concatenate([plane, alpha], axis=-1), "RGBA").save(folder / f"s{k}.png")
    res = cli("fuse", folder, tmp_path / "out.ome.zarr", "--no-progress")
    assert res.returncode == 0, res.stderr
    warnings = _lines(res.stderr, "fstack-dask: warning: ")
    assert len(warnings) == 2, res.stderr
    assert (
        f"the PNG files of src folder '{folder}' have an alpha channel, which is dropped"
        in (warnings[0])
    )
    assert (
        "has 2 focus planes: with fewer than 5 the selectivity fit is not defined" in (warnings[1])
    )


def test_axes_that_make_an_unlikely_stack_are_said(tmp_path):
    """A plain y, x, z array given --axes zyx: 40 'planes' of 30 x 6 pixels."""
    src = tmp_path / "yxz.zarr"
    data = sample_stack("mitochondria_lightsheet")[:6, :40, :30]
    zarr.create_array(str(src), data=np.ascontiguousarray(np.moveaxis(data, 0, -1)))
    res = cli("fuse", src, tmp_path / "wrong.ome.zarr", "--axes", "zyx", "--no-progress")
    assert res.returncode == 0, res.stderr
    (warning,) = _lines(res.stderr, "fstack-dask: warning: ")
    assert warning == (
        f"fstack-dask: warning: axes 'zyx' make src '{src}' a stack of 40 focus planes of 30 x 6 "
        "pixels, more planes than the image has columns: fused as given, right for a small "
        "crop of a deep stack; if the array is transposed instead, give the axes that name its "
        "focus axis, e.g. 'yxz' for its axis of length 6"
    )
    res = cli("fuse", src, tmp_path / "right.ome.zarr", "--axes", "yxz", "--no-progress")
    assert res.returncode == 0 and "warning" not in res.stderr, res.stderr


# --------------------------------------------------------------- true messages


def test_a_truncated_plane_is_named(pcb, tmp_path):
    whole = (pcb / "pcb_003.jpg").read_bytes()
    (pcb / "pcb_003.jpg").write_bytes(whole[: len(whole) // 2])  # an interrupted download
    res = cli("fuse", pcb, tmp_path / "out.ome.zarr", "--no-progress")
    assert res.returncode == 1
    (error,) = _lines(res.stderr, "fstack-dask: error: ")
    assert error.startswith(
        f"fstack-dask: error: cannot read file '{pcb}/pcb_003.jpg' of src '{pcb}' (OSError: "
        "image file is truncated"
    )
    assert "region" not in error and "(and " not in error  # one file, said once
    assert not (tmp_path / "out.ome.zarr").exists()


def test_messages_and_help_name_every_reader(tmp_path):
    res = cli("fuse", tmp_path / "nothere", tmp_path / "out.ome.zarr")
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"fstack-dask: error: src '{tmp_path}/nothere' does not exist; expected a Zarr or "
        "OME-Zarr store, a TIFF file (multi-page, OME-TIFF, ImageJ), a CZI, ND2 or LIF file, an "
        "HDF5 dataset, or a folder or glob of plane files (TIFF, PNG, JPEG)"
    ]
    readme = " ".join((pathlib.Path(__file__).parents[2] / "docs" / "cli.md").read_text().split())
    for command in ("fuse", "info"):
        text = " ".join(cli(command, "--help").stdout.split())
        src = text.split("positional arguments: SRC ", 1)[1]
        src = src.split(" DST ")[0].split(" options:")[0].split("; or an fstack_dask")[0]
        assert f"SRC {src}" in readme  # docs/cli.md's command line says what --help says
        assert "SRC the focus stack: a folder of TIFF, PNG or JPEG planes" in text
        assert "a multi-page TIFF (OME-TIFF, ImageJ), an HDF5 dataset" in text
        assert "a CZI, ND2 or LIF file, or a Zarr array or OME-Zarr image (path or URL)" in text
        for status in ("0 success", "2 usage", "1 runtime failure", "130 interrupted",
                       "143 terminated"):  # fmt: skip
            assert status in text


def test_scene_help_names_every_file_that_takes_it():
    """``--scene`` picks a TIFF's series too (the README, and its own refusal: "--scene
    applies to CZI, ND2, LIF and TIFF files"), but its help named CZI, ND2 and LIF only (a
    README audit)."""
    for command in ("fuse", "info"):
        text = " ".join(cli(command, "--help").stdout.split())
        scene = text.split("--scene N|NAME ", 1)[1].split(" --level")[0]
        assert all(f"({kind})" in scene for kind in ("CZI", "ND2", "LIF", "TIFF")), scene


def test_levels_help_gives_a_tiff_dst_s_default():
    """A TIFF dst's levels go on until the image fits one 512 px tile (README, fuse_zarr's
    docstring), where ``--help`` said "until the image fits in one chunk" only."""
    text = " ".join(cli("fuse", "--help").stdout.split())
    levels = text.split("--levels N|auto ", 1)[1].split(" --")[0]
    assert "for a TIFF DST in one 512 px tile" in levels, levels


def test_info_auto_on_a_stack_without_measurable_noise(tmp_path):
    """A piecewise-flat stack has no noise to measure: texture/noise^2 is infinite, stored
    as the string "inf"; info formatted it as a number and crashed."""
    y, x = np.mgrid[:256, :256]
    plane = ((y // 32 + x // 32) % 2 * 1000 + 100).astype(np.uint16)
    for k in range(7):
        tifffile.imwrite(tmp_path / f"IP{k}.tif", plane)
    res = cli("info", f"{tmp_path}/IP*.tif", "--auto")
    assert res.returncode == 0, res.stderr
    (parameters,) = _lines(res.stdout, "parameters:")
    assert "(nhsize and sth chosen from the data: noise 0, texture/noise^2 inf" in parameters


def test_info_describes_our_outputs(lightsheet, tmp_path):
    out = tmp_path / "fused.ome.zarr"
    fuse_zarr(lightsheet, out, chunks=32, depth_map=True, progress=False)
    res = cli("info", out)
    assert res.returncode == 0, res.stderr
    info = dict(line.split(":", 1) for line in res.stdout.splitlines())
    info = {k: v.strip() for k, v in info.items()}
    assert info["output"] == str(out)
    assert info["state"] == "complete"
    assert info["image"] == "yx (128, 128) uint16, chunks (32, 32)"
    assert info["levels"] == "0: (128, 128), 1: (64, 64), 2: (32, 32)"
    assert info["depth"] == "float32, 3 level(s)"
    assert info["fused from"] == f"{lightsheet} (axes zyx, shape (34, 128, 128), level 0)"
    assert info["parameters"] == (
        "nhsize 9, sth 13 dB, alpha 0.2, channels independent, chunks 32 x 32, maps depth"
    )
    assert info["provenance"].startswith("fstack_dask ")


def test_info_shows_the_depth_maps_unit(tmp_path):
    """info read a map's unit from the top of its attributes, where it is not (it is under
    ``fstack_dask``): a depth map in micrometres was shown without its unit."""
    stack = (np.random.default_rng(0).random((5, 64, 64)) * 1000).astype(np.uint16)
    write_stack(tmp_path / "s.zarr", stack, axes="zyx", scale={"z": 2.0, "y": 0.5, "x": 0.5},
                units={a: "micrometer" for a in "zyx"})  # fmt: skip
    out = fuse_zarr(tmp_path / "s.zarr", tmp_path / "o.ome.zarr", chunks=32, depth_map=True,
                    selectivity_map=True, progress=False)  # fmt: skip
    assert out["depth"].attrs["fstack_dask"]["unit"] == "micrometer"
    res = cli("info", tmp_path / "o.ome.zarr")
    assert res.returncode == 0, res.stderr
    info = {k: v.strip() for k, v in (line.split(":", 1) for line in res.stdout.splitlines())}
    assert info["depth"] == "float32, micrometer, 2 level(s)"
    assert info["selectivity"] == "float32, dB, 2 level(s)"


def test_info_describes_our_ome_tiff_output(tmp_path):
    """``info fused.ome.tif`` took our own TIFF output for a source of three series and asked
    which one to fuse; it describes it as it does an OME-Zarr output."""
    stack = (np.random.default_rng(0).random((2, 5, 64, 80)) * 1000).astype(np.uint16)
    write_stack(tmp_path / "s.zarr", stack, axes="czyx", scale={"z": 2.0, "y": 0.5, "x": 0.5},
                units={a: "micrometer" for a in "zyx"})  # fmt: skip
    dst = tmp_path / "fused.ome.tif"
    fuse_zarr(tmp_path / "s.zarr", dst, depth_map=True, selectivity_map=True, progress=False)
    res = cli("info", dst)
    assert res.returncode == 0, res.stderr
    info = {k: v.strip() for k, v in (line.split(":", 1) for line in res.stdout.splitlines())}
    assert info["output"] == str(dst)
    assert info["format"] == "fstack_dask output, pyramidal OME-TIFF (BigTIFF, 512 x 512 px tiles)"
    assert info["state"] == "complete"
    assert info["image"] == "cyx (2, 64, 80) uint16"
    assert info["levels"] == "0: (2, 64, 80)"  # it fits one tile
    assert info["scale"] == "y=0.5 \u00b5m, x=0.5 \u00b5m"
    assert info["depth"] == "float32, micrometer, 1 level(s)"
    assert info["selectivity"] == "float32, dB, 1 level(s)"
    assert info["fused from"] == f"{tmp_path / 's.zarr'} (axes czyx, shape (2, 5, 64, 80), level 0)"


def test_info_says_an_output_without_pixel_sizes_alike_for_tiff_and_zarr(tmp_path, monkeypatch):
    """A source without pixel sizes fused to a TIFF showed ``scale: none`` and its path as
    typed, to an OME-Zarr ``scale: y=1, x=1`` and its absolute path: one image, two answers."""
    write_stack(tmp_path / "s.zarr", np.zeros((3, 20, 20), np.uint8), axes="zyx")
    monkeypatch.chdir(tmp_path)
    said = []
    for name in ("o.ome.tif", "o.ome.zarr"):
        fuse_zarr("s.zarr", name, progress=False)
        res = cli("info", name, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        said.append({k: v.strip() for k, v in (ln.split(":", 1) for ln in res.stdout.splitlines())})
    assert [i["scale"] for i in said] == ["y=1, x=1 (no unit)"] * 2
    assert [i["output"] for i in said] == [str(tmp_path / n) for n in ("o.ome.tif", "o.ome.zarr")]


def test_info_of_an_interrupted_run_into_a_tiff_says_how_far_it_got(tmp_path, capsys):
    """A run into ``fused.ome.tif`` that failed part-way keeps its blocks in the working store
    beside it; ``info fused.ome.tif`` said "src ... does not exist" (a README audit): it
    describes the run as it does an unfinished OME-Zarr dst."""
    from fstack_dask._cli.main import main

    src = tmp_path / "stack.zarr"
    write_stack(src, sample_stack("mitochondria_lightsheet")[:, :96, :96], axes="zyx",
                chunks=(34, 32, 32))  # fmt: skip
    (src / "0" / "c" / "0" / "2" / "2").write_bytes(b"not zstd" * 8)
    dst = tmp_path / "fused.ome.tif"
    args = ["fuse", str(src), str(dst), "--chunks", "32", "--no-progress"]
    assert main([*args, "--scheduler", "synchronous"]) == 1
    work = tmp_path / ".fused.ome.tif.fstack-work"
    done = len(os.listdir(work / ".fstack_dask" / "done"))
    assert not dst.exists() and 0 < done < 9
    capsys.readouterr()
    assert main(["info", str(dst)]) == 0
    lines = capsys.readouterr().out.splitlines()
    info = {k: v.strip() for k, v in (line.split(":", 1) for line in lines)}
    assert info["output"] == f"{dst} (not written yet; its run works in {work})"
    assert info["format"] == "fstack_dask output, unfinished: a pyramidal OME-TIFF once complete"
    assert info["state"].startswith(f"unfinished: {done} of 9 blocks of level 0 done; resumable")
    assert info["fused from"] == f"{src} (axes zyx, shape (34, 96, 96), level 0)"


@pytest.mark.parametrize("name", ["fused.ome.tif", "fused.ome.zarr"])
def test_info_says_an_overwrite_of_an_output_is_under_way(tmp_path, capsys, name):
    """An ``--overwrite`` of our output that failed part-way leaves the old output in place and
    the new run beside it (a TIFF's working store, an OME-Zarr's staging folder), for
    ``--resume``: info showed the old output "complete" and nothing of the run (a README
    audit); it adds how far the overwrite got."""
    from fstack_dask._cli.main import main

    src = tmp_path / "stack.zarr"
    write_stack(src, sample_stack("mitochondria_lightsheet")[:, :96, :96], axes="zyx",
                chunks=(34, 32, 32))  # fmt: skip
    dst = tmp_path / name
    fuse_zarr(src, dst, chunks=32, progress=False)
    (src / "0" / "c" / "0" / "2" / "2").write_bytes(b"not zstd" * 8)
    args = ["fuse", str(src), str(dst), "--chunks", "32", "--alpha", "0.3", "--overwrite"]
    assert main([*args, "--no-progress", "--scheduler", "synchronous"]) == 1
    capsys.readouterr()
    assert main(["info", str(dst)]) == 0
    lines = capsys.readouterr().out.splitlines()
    info = {k: v.strip() for k, v in (line.split(":", 1) for line in lines)}
    assert info["state"] == "complete" and "alpha 0.2" in info["parameters"]
    work = tmp_path / (".fused.ome.tif.fstack-work" if name.endswith(".tif") else f".{name}")
    assert info["overwrite"].startswith(f"under way in {work}")  # (a staging folder: -HEX)
    assert ": unfinished: " in info["overwrite"]
    assert " of 9 blocks of level 0 done; resumable" in info["overwrite"]


def test_info_and_resume_of_an_unfinished_run(tmp_path):
    """An interrupted run: info says how far it got and that it can be resumed; a resume
    with other parameters is refused showing both values."""
    src = tmp_path / "stack.zarr"
    data = sample_stack("mitochondria_lightsheet")[:, :96, :96]
    write_stack(src, data, axes="zyx", chunks=(34, 32, 32))
    chunk = src / "0" / "c" / "0" / "2" / "2"
    good = chunk.read_bytes()
    chunk.write_bytes(b"not zstd" * 8)  # the blocks that read it fail; the others are written
    out = tmp_path / "fused.ome.zarr"
    res = cli("fuse", src, out, "--chunks", "32", "--no-progress", "--scheduler", "synchronous")
    assert res.returncode == 1
    chunk.write_bytes(good)
    done = len(os.listdir(out / ".fstack_dask" / "done"))
    assert 0 < done < 9

    res = cli("info", out)
    assert res.returncode == 0, res.stderr
    (state,) = _lines(res.stdout, "state:")
    assert state.split(":", 1)[1].strip() == (
        f"unfinished: {done} of 9 blocks of level 0 done; resumable: run the same fuse command "
        "again with --resume (resume=True), which computes only the blocks left"
    )

    before = tree_digest(out)
    res = cli("fuse", src, out, "--chunks", "32", "--alpha", "0.3", "--resume")
    assert res.returncode == 2
    (line,) = res.stderr.splitlines()
    assert line.startswith("fstack-dask: error: ") and "(alpha was 0.2, now 0.3)" in line
    assert tree_digest(out) == before
    res = cli("fuse", src, out, "--chunks", "32", "--resume", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert f"resuming {out}: {9 - done} of 9 blocks left" in res.stderr
    (state,) = _lines(cli("info", out).stdout, "state:")
    assert state.split(":", 1)[1].strip() == "complete"


def test_dst_named_like_a_picture_is_refused(lightsheet, tmp_path):
    before = tree_digest(tmp_path)
    for name in ("fused.png", "fused.JPG"):
        res = cli("fuse", lightsheet, tmp_path / name)
        assert res.returncode == 2
        suffix = name.rsplit(".", 1)[1].upper()
        assert res.stderr.splitlines() == [
            f"fstack-dask: error: dst '{tmp_path / name}' names a {suffix} file, but fstack_dask "
            "writes OME-Zarr (or OME-TIFF for a dst ending in .ome.tif): choose a name such as "
            "'fused.ome.zarr', and see the README's 'Reading the result' for viewing or saving "
            "it as a picture"
        ]
    assert tree_digest(tmp_path) == before


def _readme_block(heading: str, page: str = "README.md") -> str:
    """The first ```python block after ``heading`` in the README (or a page of it, docs/...)."""
    text = "\n" + (pathlib.Path(__file__).parents[2] / page).read_text()
    after = text.split(f"\n{heading}\n", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("side", [64, 300])
def test_the_readme_s_reading_the_result_runs_as_written(tmp_path, side):
    """It read ``group["1"]``, which an image in one chunk (the demo's) does not have."""
    pytest.importorskip("PIL")
    from fstack_dask import synthetic_stack

    stack = synthetic_stack((side, side), 7, dtype="uint16", seed=1).stack.transpose(2, 0, 1)
    write_stack(tmp_path / "s.ome.zarr", stack, axes="zyx")
    fuse_zarr(tmp_path / "s.ome.zarr", tmp_path / "fused.ome.zarr", chunks=128, depth_map=True,
              progress=False)  # fmt: skip
    code = _readme_block("## Reading the result")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fused.png").is_file()


def test_info_of_an_overwrite_a_job_on_another_node_left_does_not_wait(
    tmp_path, capsys, monkeypatch
):
    """An --overwrite killed on another node (an HPC job) leaves its staging folder with a lock
    from another machine: info of the complete output watched that lock for the stale age
    (60 s), silently, before its 'overwrite' line (20050a8 looked the run up as a resume
    does), where info otherwise judges a lock at a glance. It shows the lock's age at once."""
    import json
    import time

    from fstack_dask._cli.main import main
    from fstack_dask._outputs import staleness

    src = tmp_path / "stack.zarr"
    write_stack(src, sample_stack("mitochondria_lightsheet")[:, :96, :96], axes="zyx",
                chunks=(34, 32, 32))  # fmt: skip
    dst = tmp_path / "fused.ome.zarr"
    fuse_zarr(src, dst, chunks=32, progress=False)
    (src / "0" / "c" / "0" / "2" / "2").write_bytes(b"not zstd" * 8)
    args = ["fuse", str(src), str(dst), "--chunks", "32", "--alpha", "0.3", "--overwrite"]
    assert main([*args, "--no-progress", "--scheduler", "synchronous"]) == 1
    [staged] = [p for p in tmp_path.iterdir() if p.name.startswith(".fused.ome.zarr.fstack-")]
    lock = staged / ".fstack_dask" / "lock"
    lock.write_text(json.dumps({"host": "node17", "pid": 4242, "machine": "another-node"}))
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    monkeypatch.setattr(staleness, "LOCK_STALE_AFTER", 6.0)  # (a watch: 6 s, not 60)
    monkeypatch.setattr(staleness, "HEARTBEAT_EVERY", 1.0)
    capsys.readouterr()
    started = time.monotonic()
    assert main(["info", str(dst)]) == 0
    assert time.monotonic() - started < 5
    (line,) = _lines(capsys.readouterr().out, "overwrite:")
    assert f"under way in {staged}: unfinished: " in line
    assert "its lock, from pid 4242 on node17, was last renewed 36" in line, line


_PLACEHOLDERS = """
import dask.array as da
import os

import numpy as np
import tifffile
import zarr

from fstack_dask import synthetic_stack

planes = synthetic_stack((96, 80), 7, dtype="uint16", seed=1).stack.transpose(2, 0, 1).copy()
os.makedirs("cell1", exist_ok=True)
for k, plane in enumerate(planes):
    tifffile.imwrite(f"cell1/cell_z{k:02d}.tif", plane)
raw = zarr.create_array("raw.zarr", shape=(2, *planes.shape), dtype=planes.dtype,
                        chunks=(1, 7, 48, 48))
raw[...] = np.stack([planes, planes[:, ::-1]])
numpy_or_dask_or_xarray_stack = stack = planes
dask_stack = da.from_array(planes, chunks=(7, 48, 48))
im_stack = np.moveaxis(planes, 0, -1)  # the reference's layout, [M, N, P]
"""


@pytest.mark.parametrize(
    ("page", "heading"),
    [
        ("README.md", "## From Python"),
        ("docs/python.md", "# Use from Python / Jupyter"),
        ("docs/python.md", '## Noisy stacks: `nhsize="auto"`, `sth="auto"`'),
    ],
)
def test_the_readme_s_python_runs_as_written(tmp_path, page, heading):
    """The README's Python, its placeholders (your stack, your folder) bound to a small stack:
    a parameter renamed or a call changed fails here, not in a user's first hour. (Pasted
    whole, "Use from Python" failed at its third line: it fused into its second line's dst,
    'fused.ome.zarr', FileExistsError.)"""
    code = _readme_block(heading, page).replace('"/data/cell1/"', '"cell1/"')
    done = subprocess.run([sys.executable, "-c", _PLACEHOLDERS + "import fstack_dask\n" + code],
                          cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_a_glob_and_a_list_are_named_as_they_were_given(lightsheet, tmp_path):
    """The run's log said "src (34 TIFF files pattern '.../IP_*.tif')" of a glob, and a
    list's warnings "src (2 TIFF files (a list of 2 files))"."""
    pattern = f"{lightsheet}/IP_*.tif"
    res = cli("fuse", pattern, tmp_path / "out.ome.zarr", "--no-progress", "--levels", "0")
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == [
        f"fstack-dask: src (34 TIFF files matching pattern '{pattern}'): 34 TIFF files, in "
        "this order: first 'IP_0000.tif', last 'IP_0033.tif'"
    ]
    planes = [str(lightsheet / f"IP_{k:04d}.tif") for k in (3, 4)]
    with pytest.warns(UserWarning, match=r"^src \(a list of 2 TIFF files\) has 2 focus planes"):
        fuse_zarr(planes, tmp_path / "two.ome.zarr", levels=0, progress=False)
