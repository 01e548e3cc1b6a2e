"""Tests for the dependency-free PNG writer and the preview contrast stretch."""

from __future__ import annotations

import struct
import warnings
import zlib

import numpy as np
import pytest

from fstack_dask._outputs import png as _png
from fstack_dask._outputs.png import read_png_text, to_uint8, write_png


def _decode_png(data: bytes) -> tuple[dict, np.ndarray, list[bytes]]:
    """Minimal independent decoder for what write_png emits (8-bit, filter 0)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert pos == len(data)
    kinds = [k for k, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and chunks[-1][1] == b""
    assert set(kinds[1:-1]) == {b"IDAT"}
    w, h, depth, ctype, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    ihdr = {"width": w, "height": h, "depth": depth, "ctype": ctype}
    assert (depth, comp, filt, interlace) == (8, 0, 0, 0)
    channels = {0: 1, 2: 3}[ctype]
    raw = zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT"))
    rows = np.frombuffer(raw, np.uint8).reshape(h, 1 + w * channels)
    assert (rows[:, 0] == 0).all()  # filter type None on every scanline
    pixels = rows[:, 1:].reshape((h, w) if channels == 1 else (h, w, 3))
    return ihdr, pixels, kinds


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 33), (5, 9, 3), (1, 1, 3), (40, 31, 3)])
def test_round_trip(tmp_path, shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "x.png"
    assert write_png(path, image) is None
    ihdr, pixels, _ = _decode_png(path.read_bytes())
    assert (ihdr["height"], ihdr["width"]) == shape[:2]
    assert ihdr["ctype"] == (0 if len(shape) == 2 else 2)
    np.testing.assert_array_equal(pixels, image)


def test_non_contiguous_input_and_str_path(tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    view = image[::2, ::-3]
    path = str(tmp_path / "v.png")
    write_png(path, view)
    np.testing.assert_array_equal(_decode_png(open(path, "rb").read())[1], view)


def test_multiple_idat_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(_png, "_IDAT_CHUNK", 100)
    image = np.random.default_rng(2).integers(0, 256, (50, 60), dtype=np.uint8)
    write_png(tmp_path / "m.png", image)
    _, pixels, kinds = _decode_png((tmp_path / "m.png").read_bytes())
    assert kinds.count(b"IDAT") > 1
    np.testing.assert_array_equal(pixels, image)


def test_decodes_with_opencv_if_available(tmp_path):
    cv2 = pytest.importorskip("cv2")
    image = np.random.default_rng(3).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    write_png(tmp_path / "c.png", image)
    back = cv2.imread(str(tmp_path / "c.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(back[..., ::-1], image)  # OpenCV is BGR


@pytest.mark.parametrize(
    ("image", "exc"),
    [
        (np.zeros((4, 4), np.uint16), TypeError),
        (np.zeros((4, 4), np.float32), TypeError),
        ([[0, 1], [2, 3]], TypeError),
        (np.zeros(4, np.uint8), ValueError),
        (np.zeros((4, 4, 4), np.uint8), ValueError),
        (np.zeros((4, 4, 1), np.uint8), ValueError),
        (np.zeros((0, 4), np.uint8), ValueError),
    ],
)
def test_write_png_rejects_bad_images(tmp_path, image, exc):
    with pytest.raises(exc, match="image"):
        write_png(tmp_path / "bad.png", image)
    assert not (tmp_path / "bad.png").exists()


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(kind, body) of every chunk, each CRC checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, out = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        out.append((kind, body))
        pos += 12 + length
    return out


def test_text_chunks_are_written_and_read_back(tmp_path):
    image = np.random.default_rng(4).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    text = {"Software": "fstack-dask 0.1.0", "Description": "a preview, \xe9t\xe9 (Latin-1)"}
    path = tmp_path / "t.png"
    write_png(path, image, text=text)
    chunks = _chunks(path.read_bytes())
    assert [k for k, _ in chunks] == [b"IHDR", b"tEXt", b"tEXt", b"IDAT", b"IEND"]
    assert chunks[1][1] == b"Software\x00fstack-dask 0.1.0"
    assert read_png_text(path) == text
    image_module = pytest.importorskip("PIL.Image")  # an independent reader
    with image_module.open(path) as im:
        assert im.text == text
        np.testing.assert_array_equal(np.asarray(im), image)
    # no text: none read; not a PNG, or cut short: nothing of ours
    write_png(tmp_path / "plain.png", image)
    assert read_png_text(tmp_path / "plain.png") == {}
    (tmp_path / "not.png").write_bytes(b"GIF89a...")
    assert read_png_text(tmp_path / "not.png") == {}
    (tmp_path / "cut.png").write_bytes(path.read_bytes()[:40])
    assert read_png_text(tmp_path / "cut.png") == {}


@pytest.mark.parametrize(
    "text",
    [{"": "x"}, {" Lead": "x"}, {"Two  spaces": "x"}, {"K" * 80: "x"}, {"Tab\t": "x"},
     {"Key": "nul\x00"}, {"Key": "snowman \u2603"}, {"Key": 3}],
)  # fmt: skip
def test_text_png_cannot_hold_is_refused_before_writing(tmp_path, text):
    with pytest.raises(ValueError, match="text"):
        write_png(tmp_path / "t.png", np.zeros((2, 2), np.uint8), text=text)
    assert not (tmp_path / "t.png").exists()


def test_to_uint8_stretch():
    x = np.linspace(-3.0, 5.0, 1001)
    out = to_uint8(x, low=0, high=100)
    assert out.dtype == np.uint8 and out.shape == x.shape
    assert out[0] == 0 and out[-1] == 255
    assert (np.diff(out.astype(int)) >= 0).all()
    # Default percentiles saturate the outer 0.5 % at each end.
    out = to_uint8(x)
    assert (out[:5] == 0).all() and (out[-5:] == 255).all()
    assert 0 < out[500] < 255


def test_to_uint8_integer_and_bool_inputs_keep_shape():
    x = np.arange(24, dtype=np.uint16).reshape(2, 3, 4)
    out = to_uint8(x, low=0, high=100)
    assert out.shape == (2, 3, 4)
    assert out.min() == 0 and out.max() == 255
    np.testing.assert_array_equal(to_uint8(np.array([True, False])), [255, 0])


def test_to_uint8_nan_and_inf():
    x = np.array([np.nan, 0.0, 1.0, 2.0, np.inf, -np.inf])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = to_uint8(x, low=0, high=100)
    np.testing.assert_array_equal(out, [0, 0, 128, 255, 255, 0])


@pytest.mark.parametrize(
    "x",
    [np.full((5, 5), 3.5), np.full(4, np.nan), np.array([np.nan, 2.0, 2.0]), np.zeros((0, 3))],
)
def test_to_uint8_degenerate_inputs_give_zeros_without_warnings(x):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == x.shape
    assert not out.any()


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"low": 50, "high": 50}, ValueError),
        ({"low": -1}, ValueError),
        ({"high": 101}, ValueError),
        ({"low": "1"}, TypeError),
        ({"high": None}, TypeError),
    ],
)
def test_to_uint8_bad_percentiles(kwargs, exc):
    with pytest.raises(exc, match="low|high"):
        to_uint8(np.arange(5.0), **kwargs)


def test_to_uint8_rejects_non_numeric():
    with pytest.raises(TypeError, match="image"):
        to_uint8(np.array([1 + 2j]))
    with pytest.raises(TypeError, match="image"):
        to_uint8(np.array(["a"]))
