"""Real-world naming schemes of focus-stack plane files (microscopes, cameras, software):
one stack opens in focus order with no refusal; a folder of several stacks is refused with
a glob that opens one of them."""

from __future__ import annotations

import datetime
import glob
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
from readers_util import need

tifffile = need("tifffile")

from fstack_dask._sources.images import open_image_files  # noqa: E402


def _stamps(n, step, per_plane=1):
    t0 = datetime.datetime(2024, 5, 1, 13, 45, 50)  # the minute turns within the stack
    return [t0 + datetime.timedelta(seconds=step * (k // per_plane)) for k in range(n)]


def _z(fmt, planes):
    return [fmt.format(k) for k in planes]


_HALF_UM = [k / 2 for k in range(-7, 8)]
# name of each plane, in focus order
ONE_STACK = {
    "micro-manager": _z("img_channel000_position000_time000000000_z{:03d}.tif", range(12)),
    "metamorph": _z("exp_w1DAPI_s1_t1_z{}.TIF", range(1, 12)),
    "zen": _z("image_z{:02d}c1.tif", range(1, 12)),
    "zen mosaic": _z("image_z{:02d}c1m1.tif", range(1, 12)),
    "las x": _z("Series001_z{:02d}_ch00.tif", range(12)),
    "nis": _z("xy001z{:02d}c1.tif", range(1, 12)),
    "cellsens": _z("Image_01_Z{:03d}_C001.tif", range(1, 12)),
    "fiji sequence": _z("name{:04d}.tif", range(12)),
    "imagej": _z("Stack_{:04d}.tif", range(1, 12)),
    "from 0": _z("p{}.tif", range(12)),
    # numbers that count unevenly on purpose: no gap is said
    "steps of 2": _z("z{:02d}.tif", range(0, 24, 2)),
    "frame counter, uneven": [f"z{k + 1:02d}_frame_{123 + 7 * k + k // 4}.tif" for k in range(9)],
    "adaptive steps": _z("z{:03d}.tif", [0, 10, 20, 25, 30, 35, 40, 50, 60]),
    "time of day, a second skipped": _z("img_13-45-{:02d}.tif", [1, 2, 3, 5, 6, 7]),
    "time of day, dots": _z("img_13.45.{:02d}.tif", [1, 2, 3, 5, 6, 7]),
    "focus um": [f"z{'+' if p > 0 else ''}{p:g}um.tif" for p in _HALF_UM],
    "focus um unsigned": [f"z{p:g}um.tif" for p in _HALF_UM],
    "focus mm": [f"focus_{p / 100:.3f}mm.tif" for p in _HALF_UM],
    "decimals": _z("z{}um.tif", ["0.25", "0.5", "1", "1.75", "2.125", "10"]),
    # positions in metres: %g and Python's str() write exponents ("5e-07" was 5, e, -7)
    "focus m, %g": [f"z_{k * 5e-7:g}m.tif" for k in range(-3, 6)],
    "focus m, str()": [f"z_{k * 5e-7}.tif" for k in range(-3, 6)],
    # a decimal comma (%g in a European locale): "z1,5" was two numbers, 1 and 5
    "decimal comma": [f"z_{f'{p:g}'.replace('.', ',')}um.tif" for p in _HALF_UM],
    "decimal comma, one whole part": _z("pos_10,{}.tif", ["125", "25", "375", "5", "625"]),
    "decimal comma and steps": _z("z{}.tif", ["0", "0,5", "1", "1,5", "2", "2,5"]),
    # a date written with dots beside it is no decimal point (the comma was text then)
    "decimal comma, dotted date": _z("01.05.2024_z{}um.tif", ["0", "0,5", "1", "1,5", "2"]),
    "date": [f"{t:%Y-%m-%d_%H-%M-%S}_z{k + 1:02d}.tif" for k, t in enumerate(_stamps(21, 3))],
    "date packed": [f"{t:%Y%m%d_%H%M%S}_z{k + 1:02d}.tif" for k, t in enumerate(_stamps(21, 3))],
    "date two per s": [
        f"{t:%Y-%m-%d %H.%M.%S} z{k + 1:02d}.tif" for k, t in enumerate(_stamps(21, 1, 2))
    ],
    "frame counter": [f"frame_{123 + 7 * k:06d}_z{k + 1:02d}.tif" for k in range(21)],
    "counter after z": [f"z{k + 1:02d}_frame_{123 + 7 * k:06d}.tif" for k in range(21)],
    "camera": _z("IMG_{:04d}.JPG", range(1, 12)),
    "camera high": _z("DSC_{:04d}.JPG", range(9989, 10000)),
    "camera export": _z("_MG_{:04d}.jpg", range(1234, 1245)),
    "stage": [f"x{1200 + k % 2}_y{3400 - k % 3}_z{k / 2:g}.tif" for k in range(12)],
    "stage drifting": [f"x{1200 - 3 * k}_y3400_z{k / 2:g}.tif" for k in range(12)],
    "stage signed": [f"x{k - 5}_y3400_z{k / 2:g}.tif" for k in range(12)],
    "focus drifting": [f"pos{900 - k}_focus_{k:03d}.tif" for k in range(12)],
    # another number that changes every few planes, never repeating a plane's number
    "time point per 3 planes": [f"t{k // 3}_z{k:02d}.tif" for k in range(12)],
    "second run goes on": [f"run{1 + k // 6}_z{k:02d}.tif" for k in range(12)],
    # the g44 review: more instruments' and programs' names
    "micro-manager 1.4": _z("img_000000000_Default_{:03d}.tif", range(12)),
    "metamorph time point": _z("exp_w1_s1_t1_z{}.TIF", range(1, 12)),
    "leica": _z("Position001_z{:03d}_ch00.tif", range(12)),
    "olympus": _z("Image_Z{:03d}.tif", range(1, 12)),
    "openspim planes": _z("spim_TL01_Angle0_Z{:04d}.tif", range(12)),
    "imagej sequence of a titled stack": _z("cell2_t01{:04d}.tif", range(12)),
    "date and z per plane": [
        f"{t:%Y%m%d}_{t:%H%M%S}_{k:03d}.tif" for k, t in enumerate(_stamps(12, 7))
    ],
    "frame counter, z labelled": [f"frame_{900 + 3 * k:06d}_ch0_z{k:02d}.tif" for k in range(12)],
    # z or focus labelling a number of one value (a stack's), a counter the planes: refused
    # as files numbered alike
    "z of one value, a counter": _z("stack_z2_img{:03d}.tif", range(1, 12)),
    "focus of one value, a counter": _z("focus1_{:03d}.tif", range(1, 12)),
    # signs as m and p, a Unicode minus, an en dash: refused as two stacks, or the minus
    # planes fused after the plus ones
    "m and p signs": _z("focus_{}.tif", ["m2", "m1", "0", "p1", "p2"]),
    "m and p signs, um": [
        f"z{'m' if p < 0 else 'p' if p else ''}{abs(p):g}um.tif" for p in _HALF_UM
    ],
    "unicode minus": [f"z{p:g}um.tif".replace("-", "\u2212") for p in _HALF_UM],
    "en dash": [f"z_{p:g}.tif".replace("-", "\u2013") for p in _HALF_UM],
    "a tile m in every name": _z("image_m1_z{:02d}.tif", range(1, 12)),
    # a counter past 999 written with a thousands separator: 1,000 was read 1.000, first
    "slices s": _z("img_s{:02d}.tif", range(1, 12)),  # "s" for slice: no MetaMorph "_t" after
    "thousands separator": _z("z{}.tif", ["997", "998", "999", "1,000", "1,001", "1,002"]),
    "thousands or decimals, one order": _z("z{}.tif", ["1,000", "1,250", "1,500", "2,000", "2,25"]),
    # a "p" between digits as a decimal point: refused as two stacks, with a glob of half the
    # planes; as text where that counts one stack, "pos1p1" ... "pos1p10"
    "p as a decimal point": _z("z{}.tif", ["1", "1p5", "2", "2p5", "3"]),
    "p as a decimal point, um": _z("z{}um.tif", ["0p5", "1p0", "1p5", "2p0", "2p5"]),
    "p between digits as text": _z("pos1p{}.tif", range(1, 12)),
    # a plane lost among "p" decimals (one step twice the others): refused as two stacks, or
    # as two files numbered alike ("focus_-0p5um", "focus_0p5um" read as text), since a43958e
    # ; with a decimal point the same planes open
    "p as a decimal point, a plane lost": _z("z{}.tif", ["0", "0p5", "1", "1p5", "2", "3", "3p5"]),
    "p as a decimal point, three planes, one lost": _z("z_{}.tif", ["-1", "-0p5", "0p5"]),
    "p as a decimal point, um, a plane lost": _z(
        "focus_{}um.tif", ["-1p0", "-0p5", "0p0", "0p5", "1p5", "2p0"]
    ),
    # signs as words after a focus label: refused as two stacks with a glob of half
    "minus and plus words": _z("focus_{}.tif", ["minus2", "minus1", "0", "plus1", "plus2"]),
    # all below 0: the "-" read as a separator, the planes backwards
    "all negative": _z("z{}.tif", range(-5, 0)),
    "all negative um": [f"z{p:g}um.tif" for p in _HALF_UM[:7]],
    "a dash before a count after z": _z("z-{:02d}.tif", range(1, 12)),  # a separator
    "a dash before a count from 0 after z": _z("z-{}.tif", range(12)),
    "dashes between words, a count after z": _z("Image-Z-{}.tif", range(1, 12)),
    "m and p signs, a zero, no label": _z("sample_{}.tif", ["m2", "m1", "0", "p1", "p2"]),
}


def _write(folder, names, seed=0):
    """Plane k (in focus order) holds the value k + 1; written shuffled (mtime is no help)."""
    folder.mkdir(parents=True, exist_ok=True)
    order = list(range(len(names)))
    random.Random(seed).shuffle(order)
    for k in order:
        plane = np.full((6, 7, 3) if names[k].lower().endswith(".jpg") else (6, 7), k + 1, "uint8")
        path = folder / names[k]
        if path.suffix.lower() == ".jpg":
            need("PIL.Image").fromarray(plane).save(path, quality=100)
        else:
            tifffile.imwrite(path, plane)
    return folder


def _order(opened):
    return [os.path.basename(f) for f in opened.files]


@pytest.mark.parametrize("scheme", sorted(ONE_STACK))
def test_one_stack_opens_in_focus_order(tmp_path, scheme):
    names = ONE_STACK[scheme]
    folder = _write(tmp_path / "stack", names)
    opened = open_image_files(folder)
    assert _order(opened) == names
    assert opened.warnings == ()
    if not names[0].lower().endswith(".jpg"):  # JPEG is lossy: the names say it
        np.testing.assert_array_equal(opened.array[:, 0, 0], np.arange(1, len(names) + 1))


def test_a_stage_drifting_down_is_fused_in_z_order_not_x(tmp_path):
    """x1200_y3400_z0.tif, x1197_y3400_z0.5.tif, ...: the stage's x changing per plane
    ordered the planes by x, backwards, in silence (a review of real naming schemes)."""
    names = ONE_STACK["stage drifting"]
    folder = _write(tmp_path / "stack", names)
    done = subprocess.run(
        [sys.executable, "-m", "fstack_dask", "info", str(folder)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert f"first {names[0]!r}, last {names[-1]!r}" in done.stdout
    dst = tmp_path / "o.zarr"
    subprocess.run(
        [sys.executable, "-m", "fstack_dask", "fuse", str(folder), str(dst), "--depth-map"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip


def test_a_stage_drifting_down_beside_a_stray_file_is_still_in_z_order(tmp_path):
    """The same planes beside one file without a z (overview.tif) were ordered by x again,
    backwards, the warning naming only the stray file: by z, the stray file last."""
    names = ONE_STACK["stage drifting"]
    folder = _write(tmp_path / "stack", [*names, "overview.tif"])
    opened = open_image_files(folder)
    assert _order(opened) == [*names, "overview.tif"]
    (warning,) = opened.warnings
    assert f"'overview.tif' is not named like the other {len(names)} files" in warning
    assert f"fused as plane {len(names) + 1} of {len(names) + 1}" in warning


@pytest.mark.parametrize("fmt", ["z{:02d}.tif", "z{}.tif"])
def test_a_leftover_copy_is_named_in_a_warning_whose_glob_leaves_it_out(tmp_path, fmt):
    """z01.tif ... z21.tif and z21_copy.tif: the warning's glob, 'z*.tif', matched the copy
    too (a review of real naming schemes); it is now one that leaves it out, or none."""
    names = _z(fmt, range(1, 22))
    folder = _write(tmp_path / "stack", [*names, "z21_copy.tif"])
    opened = open_image_files(folder)
    assert _order(opened) == [*names, "z21_copy.tif"]
    (warning,) = opened.warnings
    assert "'z21_copy.tif' is not named like the other 21 files" in warning
    suggested = re.search(r"a pattern such as '([^']+)'$", warning)
    if fmt == "z{}.tif":  # z1 ... z21: no glob tells z21_copy.tif apart
        assert suggested is None and warning.endswith("move it out")
    else:
        assert _order(open_image_files(suggested.group(1))) == names


@pytest.mark.parametrize("stray", ["overview_tile_1.tif", "xy1.tif", "time_0.tif"])
def test_a_lone_file_labelled_as_a_position_beside_a_stack_is_named_in_a_warning(tmp_path, stray):
    """z01.tif ... z07.tif beside one overview image, overview_tile_1.tif, was refused as
        files numbered by their stage position ('overview_tile_1.tif' ... 'overview_tile_1.tif')
    : one file counts no positions; it is named in a warning, as any stray file is, with
        a glob that leaves it out."""
    names = _z("z{:02d}.tif", range(1, 8))
    folder = _write(tmp_path / "stack", [*names, stray])
    opened = open_image_files(folder)
    (warning,) = opened.warnings
    assert f"{stray!r} is not named like the other 7 files" in warning
    suggested = re.search(r"a pattern such as '([^']+)'$", warning).group(1)
    assert _order(open_image_files(suggested)) == names


SEVERAL = {
    "micro-manager channels": [
        f"img_channel{c:03d}_position000_time000000000_z{k:03d}.tif"
        for c in range(2)
        for k in range(5)
    ],
    "nis positions": [f"xy{p:03d}z{k:02d}c1.tif" for p in (1, 2) for k in range(1, 6)],
    "las x channels": [f"Series001_z{k:02d}_ch{c:02d}.tif" for c in range(2) for k in range(5)],
    "metamorph wavelengths": [
        f"exp_w{w}_s1_t1_z{k}.TIF" for w in ("1DAPI", "2GFP") for k in range(1, 6)
    ],
    "zen channels": [f"image_z{k:02d}c{c}.tif" for c in (1, 2) for k in range(1, 6)],
    "date time points": [f"2024-05-01_13-45-0{t}_z{k:02d}.tif" for t in (1, 2) for k in range(5)],
    "stage tiles": [f"x{x}_y3400_z{k / 2:g}.tif" for x in (1200, 1800) for k in range(5)],
    # a glob 'cell_z*.tif' for the first matched the second's files too
    "a suffix apart": [f"cell_z{k:02d}{c}.tif" for c in ("", "_dapi") for k in range(5)],
    "a suffix apart, unpadded": [f"z{k}{c}.tif" for c in ("", "_b") for k in range(5)],
    # stacks of unequal length (a channel one plane short, a position stopped early): fused
    # as one stack of 9 planes, exit 0, before the rule took partly shared numbers
    "a channel one plane short": [f"cell_ch{c}_z{k:02d}.tif" for c in (0, 1) for k in range(5 - c)],
    "decimal comma channels": [
        f"cell_ch{c}_z{f'{k / 2:g}'.replace('.', ',')}um.tif" for c in (0, 1) for k in range(5)
    ],
    "positions of 5 and 3": [
        f"xy{p:03d}z{k:02d}c1.tif" for p in (1, 2) for k in range(1, 8 - 2 * p)
    ],
    # a number changing per plane (a time stamp, a frame counter) made each file a stack of
    # its own: two time points or two channels fused as one stack of 10 planes, exit 0
    "channels with a frame counter": [
        f"frame_{123 + 7 * (5 * c + k):06d}_ch{c}_z{k:02d}.tif" for c in (0, 1) for k in range(5)
    ],
    # two cells whose numbers run on: fused as one stack of 10 planes, exit 0
    "two cells numbered on": [
        f"cell{c}_z{k + 1:02d}.tif" for c in "AB" for k in range(5 * (c == "B"), 5 + 5 * (c == "B"))
    ],
    "two cells numbered on, a time per plane": [
        f"cell{c}_{t:%H-%M-%S}_z{k:02d}.tif"
        for c in "AB"
        for k, t in enumerate(_stamps(5, 3), start=5 * (c == "B"))
    ],
    # signs as m and p: no glob was suggested
    "m and p signs, two cells": [
        f"cell{c}_focus_{k}.tif" for c in "AB" for k in ["m2", "m1", "0", "p1", "p2"]
    ],
    "positions p1 and p2": [f"cell_p{p}_z{k:02d}.tif" for p in (1, 2) for k in range(5)],
    # m and p with no plane 0 and no z or focus label: fused as one signed stack of 10, with
    # a warning of a plane 0 missing, since m and p were read as signs
    "m and p, no zero, no label": [f"sample_{s}{k}.tif" for s in "mp" for k in range(1, 6)],
    # signed after a dash, a plane 0 each: "stacks of 4 planes", no glob ("cellA-*.tif" took
    # cellA-0, read apart)
    "m and p after a dash, two cells": [
        f"cell{c}-{k}.tif" for c in "AB" for k in ["m2", "m1", "0", "p1", "p2"]
    ],
    # a "p" as a decimal point: the glob selected the planes without one, 'c0_z[0-9].tif'
    "p as a decimal point, two channels": [
        f"c{c}_z{k}.tif" for c in (0, 1) for k in ["1", "1p5", "2", "2p5", "3"]
    ],
    # a "p" between two counts, not a decimal point: PerkinElmer Harmony's field f and plane p
    # ("f01p01" read 1.01), and a series s: fused as one stack of 10, exit 0, since ae88503
    "harmony fields": [
        f"r02c02f{f:02d}p{k:02d}-ch1sk1fk1fl1.tiff" for f in (1, 2) for k in range(1, 6)
    ],
    "series s, planes p": [f"s{s}p{k}.tif" for s in (1, 2) for k in range(1, 6)],
    "channels interleaved, frame counter": [
        f"frame_{123 + 7 * (2 * k + c):06d}_ch{c}_z{k:02d}.tif" for c in (0, 1) for k in range(5)
    ],
}


@pytest.mark.parametrize("scheme", sorted(SEVERAL))
def test_several_stacks_are_refused_with_a_glob_that_opens_one(tmp_path, scheme):
    names = SEVERAL[scheme]
    folder = _write(tmp_path / "stacks", names)
    with pytest.raises(ValueError, match="holds more than one stack") as info:
        open_image_files(folder)
    suggested = re.search(r"a glob such as '([^']+)'$", str(info.value)).group(1)
    opened = open_image_files(suggested)
    assert opened.array.shape[0] == 5
    assert sorted(glob.glob(suggested)) == sorted(opened.files)
    assert _order(opened) in (names[:5], names[5:])


@pytest.mark.parametrize(
    ("names", "label"),
    [
        (_z("exp_w1DAPI_s{}_t1.TIF", range(1, 8)), "s"),
        (_z("xy{:02d}c1.tif", range(1, 8)), "xy"),
        (_z("exp-Scene-{}-c1.tif", range(1, 8)), "Scene"),
        (_z("tile_{:03d}.tif", range(7)), "tile_"),
        (_z("exp_w1DAPI_s1_t{}.TIF", range(1, 8)), "t"),  # a time-lapse
    ],
)
def test_files_numbered_by_stage_position_are_refused(tmp_path, names, label):
    """MetaMorph's _s1_t1 ... _s7_t1 (its z-series are files of their own), Nikon's xy01 ...,
    ZEN's scenes, mosaic tiles: fields of view apart, fused as a focus stack, exit 0;
    MetaMorph's _s1_t1 ... _s1_t7: time points."""
    folder = _write(tmp_path / "s", names)
    with pytest.raises(ValueError) as info:
        open_image_files(folder)
    kind = "time point" if label == "t" else "stage position"
    assert str(info.value).startswith(
        f"spec folder '{folder}': its files ({names[0]!r} ... {names[-1]!r}) are numbered by "
        f"their {kind} ({label!r}), not by focus"
    )
    assert "pass them from Python as a list of files, read in the order given" in str(info.value)
    listed = [str(folder / n) for n in reversed(names)]  # what the message offers: read as given
    assert _order(open_image_files(listed)) == names[::-1]


@pytest.mark.parametrize(
    ("names", "renamed"),
    [
        (_z("tile_{:03d}.tif", range(7)), _z("tile_z{:03d}.tif", range(7))),
        (_z("stage_{:02d}.tif", range(7)), _z("stage_z{:02d}.tif", range(7))),
        (_z("xy{:02d}c1.tif", range(1, 8)), _z("z{:02d}c1.tif", range(1, 8))),
    ],
)
def test_planes_refused_as_stage_positions_open_from_the_cli_once_renamed(tmp_path, names, renamed):
    """Planes named tile_000 ... (or stage_00 ...) refused as stage positions were told only
    that a list of files is read as given, which the CLI's one SRC cannot be: the
    message says to rename them with a z label, and so renamed the CLI fuses them."""
    folder = _write(tmp_path / "s", names)
    done = _fuse_cli(folder, tmp_path / "o.zarr")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1
    assert "rename them with their plane number after a 'z', 'z01' ..." in done.stderr
    assert not (tmp_path / "o.zarr").exists()
    named = _write(tmp_path / "r", renamed)
    assert _order(open_image_files(named)) == renamed


def test_an_order_that_depends_on_what_a_comma_is_is_refused_naming_the_files(tmp_path):
    """z999 beside z1,001: 1001 (a thousands separator) after it, or 1.001 (a decimal comma)
    before it; nothing in the names says which. Refused, naming the files."""
    folder = _write(tmp_path / "s", _z("z{}.tif", ["998", "999", "1,001", "1,002", "1,003"]))
    done = _fuse_cli(folder, tmp_path / "o.zarr")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1
    assert ("'z999.tif' comes before 'z1,001.tif' if the comma in 'z1,001.tif' separates "
            "thousands, and after it if it is a decimal comma") in done.stderr  # fmt: skip
    assert not (tmp_path / "o.zarr").exists()


def test_m_and_p_signs_without_a_zero_are_signs_after_a_focus_label(tmp_path):
    """focus_m2, focus_m1, focus_p1, focus_p2: focus offsets by their label, one stack, the
    missing 0 said as for z-2 ... z2 without z0; sample_m1 ... beside sample_p1 ... (no label,
    no zero) are refused as two stacks (test_several_stacks_are_refused_with_a_glob_...)."""
    names = _z("focus_{}.tif", ["m2", "m1", "p1", "p2", "p3"])
    opened = open_image_files(_write(tmp_path / "s", names))
    assert _order(opened) == names
    (warning,) = opened.warnings
    assert "but 1 plane is missing: 0 (the first gap after 'focus_m1.tif')" in warning


def test_m_and_p_signs_after_a_dash_with_a_zero_open_in_focus_order(tmp_path):
    """cell-m2, cell-m1, cell-0, cell-p1, cell-p2 (no label, a plane 0): one stack, refused as
    two since 25d680c, its 0 unseen as it reads "cell" and "-0", a pattern of its own."""
    names = _z("cell-{}.tif", ["m2", "m1", "0", "p1", "p2"])
    opened = open_image_files(_write(tmp_path / "s", names))
    assert _order(opened) == names
    # cell-0 was warned about as named unlike the others, and plane 0 as missing
    assert opened.warnings == ()


def test_p_as_a_decimal_point_opens_from_the_cli_and_an_ambiguous_one_is_refused(tmp_path):
    """z1, z1p5, z2, z2p5, z3 ("p" for a decimal point) was refused as two stacks, with a glob
    selecting the three planes without a "p": the CLI fuses all five, in focus order.
    Where "p" as a point makes two names one position, 1p1 and 1p10, it is refused."""
    names = ONE_STACK["p as a decimal point"]
    folder = _write(tmp_path / "s", names)
    done = subprocess.run(
        [sys.executable, "-m", "fstack_dask", "info", str(folder)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "5 TIFF files, in this order: first 'z1.tif', last 'z3.tif'" in done.stdout
    done = _fuse_cli(folder, tmp_path / "o.zarr", "--levels", "0")
    assert done.returncode == 0, done.stderr
    folder = _write(tmp_path / "tie", _z("z{}.tif", ["1", "1p1", "1p10", "2"]))
    with pytest.raises(ValueError) as info:
        open_image_files(folder)
    assert "'z1p1.tif' and 'z1p10.tif' are numbered alike" in str(info.value)


def _fuse_cli(src, dst, *extra):
    return subprocess.run(
        [sys.executable, "-m", "fstack_dask", "fuse", str(src), str(dst), "--no-progress", *extra],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("how", ["symlink", "hard link", "glob through a linked folder", "list"])
def test_one_file_named_twice_is_refused_naming_both(tmp_path, how):
    """z08.tif a link to z05.tif (a hard link, a glob's ``**`` reaching the planes again
    through a linked folder, a list naming ``a/z1.tif`` and ``a/./z1.tif``) was fused as two
    planes, the focus fit seeing one plane repeated, exit 0."""
    folder = _write(tmp_path / "stack", _z("z{:02d}.tif", range(1, 8)))
    src, a, b = folder, "'z05.tif'", "'z08.tif'"
    if how == "symlink":
        os.symlink("z05.tif", folder / "z08.tif")
    elif how == "hard link":
        os.link(folder / "z05.tif", folder / "z08.tif")
    elif how == "list":
        src = [str(folder / "z01.tif"), f"{folder}/./z01.tif", str(folder / "z02.tif")]
        a, b = repr(src[0]), repr(src[1])
    else:
        os.symlink(folder, tmp_path / "again")
        src = f"{tmp_path}/**/z0[1-3].tif"
        a, b = repr(f"{tmp_path}/again/z01.tif"), repr(f"{folder}/z01.tif")
    with pytest.raises(ValueError) as info:
        open_image_files(src)
    assert f"{a} and {b} are one file (a link, or one file named two ways)" in str(info.value)
    assert str(info.value).endswith("so one plane would be fused twice; remove the link or the "
                                    "second name")  # fmt: skip
    if isinstance(src, list):
        return
    done = _fuse_cli(src, tmp_path / "o.zarr")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "are one file" in done.stderr
    assert not (tmp_path / "o.zarr").exists()


GAPS = {
    "one lost": (_z("z{:02d}.tif", [1, 2, 3, 4, 5, 7, 8, 9, 10]),
                 "in steps of 1 from 01 to 10, but 1 plane is missing: 06 (the first gap after "
                 "'z05.tif')"),
    "several": (_z("z{:02d}.tif", [1, 2, 3, 5, 6, 9, 10, 14]),
                "from 01 to 14, but 6 planes are missing: 04, 07 to 08, 11 to 13 (the first gap "
                "after 'z03.tif')"),
    "signed, its zero": (_z("z{}.tif", [-3, -2, -1, 1, 2, 3]), "missing: 0 (the first gap"),
    "all negative": (_z("z{}.tif", [-5, -4, -2, -1]), "missing: -3 (the first gap after "
                     "'z-4.tif')"),  # (said none, the numbers read as 5, 4, 2, 1)
    "bare numbers": (_z("{:02d}.tif", [1, 2, 3, 5, 6]), "missing: 04 (the first gap after "
                     "'03.tif')"),
    "steps of 2": (_z("z{:03d}.tif", [0, 2, 4, 8, 10]), "in steps of 2 from 000 to 010, but 1 "
                   "plane is missing: 006"),
    "by the z beside a frame counter": (
        [f"z{k:02d}_frame_{123 + 7 * k}.tif" for k in (1, 2, 3, 5, 6)], "missing: 04"),
}  # fmt: skip


@pytest.mark.parametrize("scheme", sorted(GAPS))
def test_a_gap_in_the_numbering_is_said(tmp_path, scheme):
    """z01..z05, z07..z10 (a plane lost in transfer) was fused with no word, though the fusion
    takes the planes as evenly spaced in focus."""
    names, said = GAPS[scheme]
    folder = _write(tmp_path / "stack", names)
    (warning,) = open_image_files(folder).warnings
    assert warning.startswith(f"spec folder '{folder}': the planes are numbered in steps of ")
    assert said in warning and warning.endswith("copy it again")
    assert open_image_files([folder / n for n in names]).warnings == ()  # a list: as chosen
    if scheme != "one lost":
        return
    info = subprocess.run([sys.executable, "-m", "fstack_dask", "info", str(folder)],
                          capture_output=True, text=True, check=True, timeout=300)  # fmt: skip
    assert said in info.stdout + info.stderr
    done = _fuse_cli(folder, tmp_path / "o.zarr")
    assert done.returncode == 0 and said in done.stderr, done.stderr


@pytest.mark.parametrize("src", ["folder", "glob"])
def test_a_plane_that_links_to_nothing_is_refused(tmp_path, src):
    """near.tif, mid.tif -> a share not mounted, far.tif: the link was left out as "not a
    file" and the stack fused without its plane, exit 0."""
    folder = _write(tmp_path / "stack", ["far.tif", "near.tif", "top.tif"])
    os.symlink(tmp_path / "share" / "mid.tif", folder / "mid.tif")
    spec = folder if src == "folder" else f"{folder}/*.tif"
    said = f"'mid.tif' is a link to '{tmp_path}/share/mid.tif', which does not exist"
    with pytest.raises(FileNotFoundError, match=re.escape(said)):
        open_image_files(spec)
    done = _fuse_cli(spec, tmp_path / "o.zarr")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and said in done.stderr
    assert not (tmp_path / "o.zarr").exists()


def test_a_glob_in_a_folder_named_with_brackets_reads_that_folder(tmp_path):
    """'exp[1]/*.tif' read the planes of exp1 (the class [1]), exit 0, and where no exp1
    was, said "matches no files": a folder that exists as spelled is the one meant."""
    names = _z("z{}.tif", range(5))
    meant = _write(tmp_path / "exp[1]", names)
    _write(tmp_path / "exp1", _z("z{}.tif", range(6)), seed=1)
    opened = open_image_files(f"{meant}/*.tif")
    assert [os.path.dirname(f) for f in opened.files] == [str(meant)] * 5
    alone = _write(tmp_path / "Stack [2024]", names)
    done = _fuse_cli(f"{alone}/z*.tif", tmp_path / "o.zarr", "--levels", "0")
    assert done.returncode == 0, done.stderr
    assert open_image_files(f"{tmp_path}/exp[0-9]/*.tif").array.shape[0] == 6  # a class


def test_one_plane_number_in_two_spellings_of_the_extension_is_refused(tmp_path):
    """z05.tiff beside z05.tif (a plane saved again by another tool) was fused as a further
    plane, with only the warning about a name unlike the others."""
    folder = _write(tmp_path / "stack", [*_z("z{:02d}.tif", range(1, 8)), "z05.tiff"])
    with pytest.raises(ValueError) as info:
        open_image_files(folder)
    assert str(info.value) == (
        f"spec folder '{folder}': 'z05.tif' and 'z05.tiff' are numbered alike, so their order "
        "in the stack is a guess; remove or rename one of them, or select the planes with a glob"
    )


def test_one_file_listed_in_two_cases_on_a_case_insensitive_mount_is_refused(exfat, tmp_path):
    """[z05.tif, z05.TIF] on exFAT through FUSE (an SD card), which gives each spelling its
    own inode: one file fused as two planes, exit 0. Two files of a case-sensitive
    folder named so are two planes, as listed."""
    names = _z("z{:02d}.tif", range(1, 6))
    for folder in (exfat, tmp_path / "ext4"):
        _write(folder, names)
        listed = [folder / n for n in names] + [folder / "z05.TIF"]
        if folder == exfat:
            with pytest.raises(ValueError, match=r"z05\.tif' and '.*/z05\.TIF' are one file"):
                open_image_files(listed)
        else:
            tifffile.imwrite(folder / "z05.TIF", np.full((6, 7), 9, "uint8"))
            assert open_image_files(listed).array[:, 0, 0].tolist() == [1, 2, 3, 4, 5, 9]


def test_decimals_that_might_count_on_are_said_as_the_names_write_them(tmp_path):
    """x1,9 and x1,10: the warning said "reading 1.10 and 1.2 ... after the dot", numbers no
    name holds."""
    names = _z("x1,{}.tif", [1, 10, 2, 9])  # in decimal order
    (warning,) = open_image_files(_write(tmp_path / "stack", names)).warnings
    assert warning.endswith(
        "'x1,10.tif' is ordered before 'x1,2.tif', reading 1,10 and 1,2 as decimal numbers; if "
        "the digits after the comma count on instead (1,2 before 1,10), the planes are out of "
        "focus order: rename them, or pass the files as a list in focus order"
    )


UNGLOBBABLE = {
    "positions of a drifting stage": [
        f"x{1200 - 3 * k + 600 * p}_y3400_z{k / 2:g}.tif" for p in (0, 1) for k in range(5)
    ],
    "time points stamped per plane": [
        f"{t + datetime.timedelta(minutes=later):%Y-%m-%d_%H-%M-%S}_z{k:02d}.tif"
        for later in (0, 5)
        for k, t in enumerate(_stamps(5, 3))
    ],
}


@pytest.mark.parametrize("scheme", sorted(UNGLOBBABLE))
def test_stacks_of_a_number_changing_per_plane_are_refused(tmp_path, scheme):
    """x1200_y3400_z0 ... beside x1800_y3400_z0 ... (x changing per plane), or two time
    points stamped per plane: each file was a stack of its own and the folder was fused as
    one stack of 10 planes, exit 0. No glob tells them apart
    ('x*_y3400_z*.tif' matches both): the refusal says to move one stack's files."""
    names = UNGLOBBABLE[scheme]
    folder = _write(tmp_path / "stacks", names)
    with pytest.raises(ValueError, match="holds more than one stack") as info:
        open_image_files(folder)
    assert str(info.value).endswith("move one stack's files to a folder of their own")


LONE = {
    "another channel's one plane": (
        [*_z("cell_ch0_z{:02d}.tif", range(5)), "cell_ch1_z00.tif"],
        "'cell_ch0_z00.tif' and 'cell_ch1_z00.tif'",
    ),
    "a plane taken again later": (
        [*_z("cell_t0_z{}.tif", range(6)), "cell_t1_z3.tif"],
        "'cell_t0_z3.tif' and 'cell_t1_z3.tif'",
    ),
    "a second day's first frame": (
        [*_z("2024-05-01_{:03d}.jpg", range(1, 6)), "2024-05-02_001.jpg"],
        "'2024-05-01_001.jpg' and '2024-05-02_001.jpg'",
    ),
}


@pytest.mark.parametrize("scheme", sorted(LONE))
def test_one_plane_number_held_by_two_files_of_one_pattern_is_refused(tmp_path, scheme):
    """cell_ch0_z00..z04 beside cell_ch1_z00 (one plane of another channel, a plane taken again
    at a later time point): two files claim plane 00, and the second was fused as one more
    plane, exit 0 (left by the g44 review: two stacks were refused only where the second held
    two planes). A stack's own plane numbers never repeat: refused as numbered alike."""
    names, pair = LONE[scheme]
    folder = _write(tmp_path / "stack", names)
    with pytest.raises(ValueError) as info:
        open_image_files(folder)
    assert str(info.value) == (
        f"spec folder '{folder}': {pair} are numbered alike, so their order in the stack is a "
        "guess; remove or rename one of them, or select the planes with a glob"
    )


# One focal plane's time points, channels or stage coordinates: z (or focus) of one value,
# the other number labelled as what it is (g59 on 0e1d43d)
ONE_PLANE_SERIES = {
    "time points, t": [f"cell_z1_t{t:03d}.tif" for t in range(1, 7)],
    "channels, ch": [f"cell_z1_ch{c}.tif" for c in range(3)],
    "zen channels": [f"image_z01c{c}.tif" for c in range(1, 4)],
    "focus, stage x": [f"focus_2_x{x}_y3400.tif" for x in (1200, 1800, 2400)],
}


@pytest.mark.parametrize("scheme", sorted(ONE_PLANE_SERIES))
def test_one_planes_time_points_or_channels_are_not_fused_as_a_stack(tmp_path, scheme):
    """Channels (or time points, or stage positions) of one focal plane, their names holding
    z of one value, were fused as a focus stack, exit 0, once a labelled number of one value
    counted no planes (0e1d43d, found by g59): refused, naming the plane and the label."""
    names = ONE_PLANE_SERIES[scheme]
    folder = _write(tmp_path / "series", names)
    with pytest.raises(ValueError, match="all at one focal plane"):
        open_image_files(folder)
    proc = _fuse_cli(folder, tmp_path / "out.ome.zarr")
    assert proc.returncode != 0 and "all at one focal plane" in proc.stderr, proc.stderr
    assert "rename them with their plane number after a 'z'" in proc.stderr  # (the CLI takes
    # no list, all the message offered)
    assert not (tmp_path / "out.ome.zarr").exists()


@pytest.mark.parametrize(
    "names",
    [
        [f"pos_100,{y},{z}.tif" for y in (200, 400) for z in (300, 301, 302)],
        [f"xyz_{x},340,{z}.tif" for x in (120, 121) for z in (500, 505, 510)],
    ],
)
def test_comma_lists_of_three_digit_numbers_are_not_read_as_one_number(tmp_path, names):
    """Reading two or more comma groups as one number (d486479, for ``z1,000,000``) fused two
    stage positions written as coordinates (``pos_100,200,300`` beside ``pos_100,400,300``) as
    one stack with 199 997 planes "missing" (found by g67; reverted): still refused."""
    folder = _write(tmp_path / "stacks", names)
    with pytest.raises(ValueError, match="more than one stack"):
        open_image_files(folder)


def test_a_p_between_two_counts_without_a_focus_label_is_text(tmp_path):
    """``cell1p0 ... cell1p9`` beside ``cell2p0 ... cell2p9`` (a cell and a plane) read as
    decimals step evenly, 1.0 ... 2.9: fused as one stack of 20, exit 0 (found by g67, after
    ae88503 and a43958e): a "p" is a decimal point only after a z or focus label or before a
    unit; here, two stacks refused; ``zp1p5``-style and ``1p5um`` names still read it."""
    names = [f"cell{c}p{k}.tif" for c in (1, 2) for k in range(10)]
    with pytest.raises(ValueError, match="more than one stack"):
        open_image_files(_write(tmp_path / "cells", names))
    names = [f"stack_{p}um.tif" for p in ["0p5", "1p0", "1p5", "2p0", "2p5"]]
    opened = open_image_files(_write(tmp_path / "um", names))
    assert _order(opened) == names


def test_two_counts_from_1_after_a_z_label_are_not_decimals_with_gaps(tmp_path):
    """z1p1 ... z1p9 beside z2p1 ... z2p9 (a stack and a plane, counted from 1) read as
    decimals skip only 2.0, a whole position none of them writes: two stacks, refused, where
    a plane lost among decimals (z0, z0p5, ... z2, z3: `ONE_STACK`) opens."""
    names = [f"z{s}p{k}.tif" for s in (1, 2) for k in range(1, 10)]
    with pytest.raises(ValueError, match="more than one stack"):
        open_image_files(_write(tmp_path / "counts", names))
