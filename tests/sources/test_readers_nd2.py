"""The ND2 reader's mapping of nd2's frames onto a focus stack.

No ND2 file can be shipped (tests/data/README.md): these tests serve frames through a
stand-in for ``nd2.ND2File`` that behaves as nd2 0.12 documents and implements it
(``sizes`` in loop order, ``read_frame(seq_index)`` with the sequence index raveled over the
loops in that order, a frame ``(C, Y, X)`` or ``(Y, X, S)`` with single channels squeezed),
so they check our positions, loop order, channels and metadata, not nd2 itself.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from readers_util import need

nd2 = need("nd2")

import fstack_dask  # noqa: E402
from fstack_dask._sources.common import MissingExtraError  # noqa: E402
from fstack_dask._sources.open import open_source  # noqa: E402

# nd2's own example file's camera matrix (its frame_metadata docstring): turned 180 degrees
CAMERA = (-0.9998932296054086, -0.014612644841559427, 0.014612644841559427, -0.9998932296054086)


def _pixel_to_stage(camera, orientation=(1, 1), cal=(0.325, 0.325), size=(50, 40)):
    """nd2 0.12's pixel-to-stage matrix, as its parser builds it (``_parse.load_metadata``)
    from the camera matrix, the stage's orientation, the pixel size and the frame's size."""
    (m11, m12, m21, m22), (ix, iy), (cx, cy), (w, h) = camera, orientation, cal, size
    return (
        *(ix * cx * m11, ix * cy * m12, -0.5 * (ix * cx * m11 * w + ix * cy * m12 * h)),
        *(iy * cx * m21, iy * cy * m22, -0.5 * (iy * cx * m21 * w + iy * cy * m22 * h)),
    )


class _StandIn:
    """nd2.ND2File over an array ``data[T, P, Z, C, Y, X]`` (RGB: ``[..., Y, X, S]``)."""

    def __init__(self, sizes, data, *, rgb=False, compression=None, names=("", "", "")):
        self.sizes, self.data, self.is_rgb, self.is_legacy = sizes, data, rgb, False
        self.dtype = data.dtype
        self.attributes = types.SimpleNamespace(compressionType=compression)
        ns = types.SimpleNamespace
        self.metadata = ns(channels=[
            ns(channel=ns(name=n, color=ns(r=r, g=g, b=b)))
            for n, (r, g, b) in zip(("DAPI", "GFP"), ((0, 0, 255), (0, 255, 0)), strict=True)
        ])  # fmt: skip
        points = [types.SimpleNamespace(name=n) for n in names]
        self.experiment = [
            types.SimpleNamespace(type="XYPosLoop", parameters=types.SimpleNamespace(points=points))
        ]
        self.reads = []

    def __call__(self, path):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def close(self):
        pass

    def voxel_size(self):
        return types.SimpleNamespace(x=0.325, y=0.325, z=1.5)

    stage_um = ((1000.0, 500.0), (-200.0, 300.0))  # x and y at position 0, and per position
    pixel_to_stage = None

    def frame_metadata(self, seq):
        """As nd2 0.12 gives it: its own Position and Volume structures, per channel."""
        from nd2 import structures as st

        loops = {d: n for d, n in self.sizes.items() if d not in "CYXS"}
        p = int(dict(zip(loops, np.unravel_index(seq, list(loops.values())), strict=True))["P"])
        (x0, dx), (y0, dy) = self.stage_um
        position = st.Position(stagePositionUm=st.StagePosition(x0 + dx * p, y0 + dy * p, 7.0))
        volume = st.Volume(
            axesCalibrated=(True, True, True), axesCalibration=(0.325, 0.325, 1.5),
            axesInterpretation=("distance", "distance", "distance"),
            bitsPerComponentInMemory=16, bitsPerComponentSignificant=16,
            cameraTransformationMatrix=CAMERA, componentCount=1, componentDataType="unsigned",
            voxelCount=(self.sizes["X"], self.sizes["Y"], 1),
            pixelToStageTransformationMatrix=self.pixel_to_stage,
        )  # fmt: skip
        channel = types.SimpleNamespace(position=position, volume=volume)
        return types.SimpleNamespace(channels=[channel, channel])

    def read_frame(self, seq):
        loops = [n for d, n in self.sizes.items() if d not in "CYXS"]
        index = np.unravel_index(seq, loops)
        self.reads.append(tuple(int(i) for i in index))
        return self.data[index].squeeze()


def _data(shape, seed=0):
    from fstack_dask import synthetic_stack

    t, p, z, c, y, x = shape
    out = np.empty(shape, np.uint16)
    for k in np.ndindex(t, p, c):
        s = synthetic_stack((y, x), z, seed=int(np.ravel_multi_index(k, (t, p, c)))).stack
        out[k[0], k[1], :, k[2]] = np.round(np.moveaxis(s, -1, 0) * 4000)
    return out


@pytest.fixture
def nd2_file(tmp_path, monkeypatch):
    path = tmp_path / "cells.nd2"
    path.write_bytes(b"")  # the stand-in serves the frames
    sizes = {"T": 2, "P": 3, "Z": 6, "C": 2, "Y": 40, "X": 50}
    stand_in = _StandIn(sizes, _data(tuple(sizes.values())), names=("A1", "A2", "B1"))
    monkeypatch.setattr(nd2, "ND2File", stand_in)
    return path, stand_in


def test_positions_are_the_scenes_and_frames_map_onto_tzcyx(nd2_file):
    path, f = nd2_file
    with pytest.raises(ValueError, match=r"holds 3 positions: 0 'A1' \(position 0\), 1 "
                       r"'A2' \(position 1\), 2 'B1' \(position 2\); name one after"):  # fmt: skip
        open_source(path)
    src = open_source(f"{path}/B1")
    assert (src.axes, src.shape) == ("tzcyx", (2, 6, 2, 40, 50))
    np.testing.assert_array_equal(src.array[...], f.data[:, 2])
    np.testing.assert_array_equal(src.array[1, 2:4, 1, 5:30, 7:9], f.data[1, 2, 2:4, 1, 5:30, 7:9])
    assert {p for _, p, _ in f.reads} == {2}  # only frames of that position were read
    assert src.scale == {"x": 0.325, "y": 0.325, "z": 1.5}
    assert [c["label"] for c in src.channels] == ["DAPI", "GFP"]
    assert [c["color"] for c in src.channels] == ["0000FF", "00FF00"]
    assert src.unit_shape == (1, 6, 2, 40, 50)  # a frame holds every channel; 512 px units


def test_fused_position_equals_its_frames_fused_in_memory(nd2_file, tmp_path):
    path, f = nd2_file
    out = fstack_dask.fuse_zarr(f"{path}/1", tmp_path / "o.ome.zarr", chunks=16, progress=False)
    expected = np.stack([
        np.stack([fstack_dask.focus_stack(np.moveaxis(f.data[t, 1, :, c], 0, -1))
                  for c in range(2)])
        for t in range(2)
    ])  # fmt: skip
    np.testing.assert_array_equal(out["0"][:], expected)


def test_compressed_frames_are_read_whole(tmp_path, monkeypatch):
    path = tmp_path / "z.nd2"
    path.write_bytes(b"")
    sizes = {"Z": 4, "Y": 700, "X": 600}
    data = np.arange(4 * 700 * 600, dtype=np.uint16).reshape(1, 1, 4, 1, 700, 600)
    monkeypatch.setattr(nd2, "ND2File", _StandIn(sizes, data, compression="lossless"))
    assert open_source(path).unit_shape == (4, 700, 600)
    monkeypatch.setattr(nd2, "ND2File", _StandIn(sizes, data))
    assert open_source(path).unit_shape == (4, 512, 512)


def test_missing_nd2_names_the_extra(nd2_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "nd2", None)
    with pytest.raises(MissingExtraError, match=r'pip install "fstack_dask\[nd2\]"$'):
        open_source(f"{nd2_file[0]}/0")


def test_each_position_keeps_its_stage_position(nd2_file, tmp_path):
    """nd2's stage position of each position (micrometres, the field's centre) as the
    translation of the output's first pixel, the image's and the depth map's: through nd2's
    pixel-to-stage matrix where it gives one (stage axes against the image's, as with the
    camera of nd2's own example file, negated), else as nd2 reports it less half the field.
    The positions were dropped, so fused positions could not be laid back together."""
    path, f = nd2_file
    f.pixel_to_stage = _pixel_to_stage(CAMERA)
    a, b, c, d, e, g = f.pixel_to_stage
    for p in range(3):
        at = f.frame_metadata(p * 6).channels[0].position.stagePositionUm  # T 0, Z 0
        shift = open_source(f"{path}/{p}").translation
        # the centre where nd2 puts it; the corners within the camera's rotation (0.84 degrees)
        for px, py, tol in ((25, 20, 1e-6), (0, 0, 0.3), (49, 0, 0.3), (0, 39, 0.3), (49, 39, 0.3)):
            stage_x, stage_y = a * px + b * py + c + at.x, d * px + e * py + g + at.y
            assert shift["x"] + px * 0.325 == pytest.approx(-stage_x, abs=tol)
            assert shift["y"] + py * 0.325 == pytest.approx(-stage_y, abs=tol)
    out = fstack_dask.fuse_zarr(f"{path}/2", tmp_path / "o.ome.zarr", chunks=16,
                                depth_map=True, progress=False)  # fmt: skip
    for group in (out, out["depth"]):
        transforms = group.attrs["ome"]["multiscales"][0]["datasets"][0][
            "coordinateTransformations"
        ]
        assert transforms[1]["translation"][-2:] == pytest.approx([shift["y"], shift["x"]])
    f.pixel_to_stage = None  # no stage orientation in the file: as nd2 reports the position
    at = f.frame_metadata(6).channels[0].position.stagePositionUm
    src = open_source(f"{path}/1")
    assert src.translation == pytest.approx({"x": at.x - 25 * 0.325, "y": at.y - 20 * 0.325})
    (said,) = src.warnings  # a guess, said
    assert "taken to run as the image's" in said and "check the directions" in said


def test_a_camera_at_90_degrees_leaves_the_position_out_with_a_warning(nd2_file):
    path, f = nd2_file
    f.pixel_to_stage = _pixel_to_stage((0.0, 1.0, -1.0, 0.0))
    src = open_source(f"{path}/1")
    assert src.translation == {}
    assert len(src.warnings) == 1 and "camera is turned 90 degrees to the stage" in src.warnings[0]


def _parsed_matrix(device_settings):
    """The pixel-to-stage matrix nd2's own parser makes of a file whose first channel has
    ``device_settings`` (its ``pDeviceSetting``), with a camera turned 180 degrees."""
    from nd2 import structures as st
    from nd2._parse._parse import load_global_metadata, load_metadata

    attrs = st.Attributes(bitsPerComponentInMemory=16, bitsPerComponentSignificant=16,
                          componentCount=1, heightPx=40, pixelDataType="unsigned",
                          sequenceCount=1, widthPx=50)  # fmt: skip
    probe = {"m_ExcitationSpectrum": {}, "m_EmissionSpectrum": {}}
    plane = {"sDescription": "DAPI", "pFluorescentProbe": probe}
    planes = {"uiCount": 1, "sPlaneNew": {"a0": plane},
              "sSampleSetting": {"a0": {"pDeviceSetting": device_settings}}}  # fmt: skip
    raw = {"bCalibrated": True, "dCalibration": 0.325, "dStgLgCT11": -1.0, "dStgLgCT22": -1.0,
           "sPicturePlanes": planes}  # fmt: skip
    meta = load_metadata(raw, load_global_metadata(attrs, raw, [], {}))
    return meta.channels[0].volume.pixelToStageTransformationMatrix


def test_settings_without_the_stage_s_orientation_keep_the_position(nd2_file):
    """NIS settings that use the XY stage but record no orientation (``m_iXOrientation0``):
    nd2 multiplies by its default 0, a matrix of zeros, which was taken for a camera turned
    90 degrees: the position was left out, with a warning that said so. Now it is as
    without a matrix, as nd2's OME-XML gives it, with the warning that the directions are
    taken as the image's; a recorded orientation still turns it, and needs no warning."""
    path, f = nd2_file
    f.pixel_to_stage = _parsed_matrix({"m_iXYUse0": 1})
    assert f.pixel_to_stage == pytest.approx((0,) * 6)
    at = f.frame_metadata(6).channels[0].position.stagePositionUm
    src = open_source(f"{path}/1")
    assert len(src.warnings) == 1 and "90 degrees" not in src.warnings[0], src.warnings
    assert "taken to run as the image's" in src.warnings[0]
    assert src.translation == pytest.approx({"x": at.x - 25 * 0.325, "y": at.y - 20 * 0.325})
    f.pixel_to_stage = _parsed_matrix({"m_iXYUse0": 1, "m_iXOrientation0": 1,
                                       "m_iYOrientation0": -1})  # fmt: skip
    src = open_source(f"{path}/1")
    assert src.translation == pytest.approx(
        {"x": -at.x - 25 * 0.325, "y": at.y - 20 * 0.325}  # camera at 180, x stage as is
    )
    assert src.warnings == ()  # the direction is known
