"""``"auto"`` parameters through the stored-stack path: fuse_zarr, the CLI, config and info
(issue 12.1): the choice is made once from a fixed sample, recorded, and the output is
bit-identical across chunkings and schedulers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import zarr

from fstack_dask import (
    auto_parameters_for,
    focus_stack,
    fuse,
    fuse_zarr,
    synthetic_stack,
    write_stack,
)
from fstack_dask._cli.config import config_from_mapping


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    data = synthetic_stack((160, 140), 9, dtype="uint16", noise=0.06, seed=11).stack
    path = tmp_path_factory.mktemp("auto") / "noisy.ome.zarr"
    write_stack(path, data.transpose(2, 0, 1), axes="zyx", chunks=(9, 48, 48))
    return path, data


def test_fuse_zarr_auto_is_recorded_and_chunk_invariant(noisy, tmp_path):
    src, data = noisy
    chosen = auto_parameters_for(data, axes="yxz")
    outs = []
    for chunks, scheduler in ((48, "threads"), ((37, 100), "synchronous"), (160, "threads")):
        out = fuse_zarr(src, tmp_path / f"o{len(outs)}.zarr", nhsize="auto", sth="auto",
                        chunks=chunks, scheduler=scheduler, progress=False, levels=0)  # fmt: skip
        attrs = out.attrs["fstack_dask"]
        assert (attrs["nhsize"], attrs["sth"]) == (chosen.nhsize, chosen.sth)
        assert attrs["auto"]["tiles"] == chosen.as_dict()["tiles"]
        outs.append(out["0"][...])
    for other in outs[1:]:
        np.testing.assert_array_equal(outs[0], other)
    np.testing.assert_array_equal(outs[0], focus_stack(data, nhsize=chosen.nhsize, sth=chosen.sth))
    assert chosen.nhsize != 9 or chosen.sth != 13  # the noisy stack moved the parameters


def test_auto_resume_chooses_the_same_and_is_accepted(noisy, tmp_path):
    src, _ = noisy
    dst = tmp_path / "o.zarr"
    fuse_zarr(src, dst, nhsize="auto", sth="auto", progress=False)
    # a resume of a complete output with the same (automatic) parameters has nothing to do
    again = fuse_zarr(src, dst, nhsize="auto", sth="auto", resume=True, progress=False)
    assert again.attrs["fstack_dask"]["complete"] is True


def test_cli_auto_switch_config_and_info(noisy, tmp_path):
    src, data = noisy
    chosen = auto_parameters_for(data, axes="yxz")
    run = [sys.executable, "-m", "fstack_dask"]
    done = subprocess.run([*run, "fuse", src, tmp_path / "a.zarr", "--auto", "--no-progress"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"nhsize={chosen.nhsize}" in done.stderr  # the choice is logged
    attrs = zarr.open_group(str(tmp_path / "a.zarr")).attrs["fstack_dask"]
    assert (attrs["nhsize"], attrs["sth"]) == (chosen.nhsize, chosen.sth)
    info = subprocess.run([*run, "info", src, "--auto"], capture_output=True, text=True,
                          check=True)  # fmt: skip
    assert f"nhsize {chosen.nhsize}, sth {chosen.sth:g} dB" in info.stdout
    # a fixed value beside the switch is kept; the other is chosen
    cmd = [*run, "fuse", src, tmp_path / "b.zarr", "--auto", "--nhsize", "15", "--no-progress"]
    half = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert half.returncode == 0, half.stderr
    assert zarr.open_group(str(tmp_path / "b.zarr")).attrs["fstack_dask"]["nhsize"] == 15
    bad = subprocess.run([*run, "fuse", src, tmp_path / "c.zarr", "--sth", "loud"],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert bad.returncode == 2 and "--sth" in bad.stderr


def test_config_auto_switch():
    cfg = config_from_mapping({"algorithm": {"auto": True}})
    assert (cfg.fuse_kwargs()["nhsize"], cfg.fuse_kwargs()["sth"]) == ("auto", "auto")
    cfg = config_from_mapping({"algorithm": {"auto": True, "sth": 10}})
    assert (cfg.fuse_kwargs()["nhsize"], cfg.fuse_kwargs()["sth"]) == ("auto", 10.0)
    cfg = config_from_mapping({"algorithm": {"nhsize": "auto"}})
    assert (cfg.fuse_kwargs()["nhsize"], cfg.fuse_kwargs()["sth"]) == ("auto", 13.0)
    assert config_from_mapping({}).fuse_kwargs()["nhsize"] == 9  # the reference's, always
    with pytest.raises(ValueError, match="algorithm.auto must be"):
        config_from_mapping({"algorithm": {"auto": "yes"}})


def test_values_beyond_the_auto_sample_overflowing_its_nhsize_say_what_fits(tmp_path):
    """nhsize="auto" checks float64 values against its window only in the sample it reads;
    one beyond it failed its block naming an nhsize the user never gave ("(nhsize=15) would
    overflow float64; rescale the data"). The block says the sample chose it and what fits."""
    data = synthetic_stack((128, 640), 5, dtype="float64", seed=4).stack.transpose(2, 0, 1)
    data = np.ascontiguousarray(data)
    data[:, 64, 150] = 1e153  # between the sample's tiles (x 0-128, 171-299, ...)
    src = tmp_path / "hot.ome.zarr"
    write_stack(src, data, axes="zyx", chunks=(5, 128, 128))
    run = [sys.executable, "-m", "fstack_dask", "fuse", src, tmp_path / "out.zarr"]
    done = subprocess.run([*run, "--nhsize", "auto", "--no-progress"], capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert done.returncode == 1, done.stderr
    (said,) = [line for line in done.stderr.splitlines() if "error:" in line]
    assert (
        "has values of magnitude 1e+153, which the sample from which --nhsize auto chose nhsize="
        in said
        and "pass --nhsize 3 (it holds them) with --overwrite, or rescale the data;" in said
    ), said
    # --auto (not --nhsize auto) is named as given (it said "--nhsize auto chose")
    done = subprocess.run([*run, "--auto", "--overwrite", "--no-progress"], capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert "which the sample from which --auto chose nhsize=" in done.stderr, done.stderr
    # as it says
    done = subprocess.run([*run, "--nhsize", "3", "--overwrite", "--no-progress"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    # an nhsize given is the user's own: said as before
    done = subprocess.run([*run, "--nhsize", "5", "--overwrite", "--no-progress"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 1 and "(nhsize=5) would overflow float64" in done.stderr


@pytest.mark.parametrize("entry", ["fuse", "focus_stack"])
def test_fuse_and_focus_stack_say_values_beyond_the_auto_sample_too(entry):
    """fuse_zarr's block said the sample from which nhsize='auto' chose its nhsize did not
    hold a value (14335ea); fuse and focus_stack still said "(nhsize=11) would overflow
    float64; rescale the data", an nhsize the user never gave, and not the one that fits (the
    g81 review)."""
    data = synthetic_stack((128, 640), 5, dtype="float64", seed=4).stack.transpose(2, 0, 1)
    data = np.ascontiguousarray(data)
    data[:, 64, 150] = 1e153  # between the sample's tiles

    def run(nhsize):
        if entry == "fuse":
            return fuse(data, axes="zyx", nhsize=nhsize).compute()
        return focus_stack(data.transpose(1, 2, 0), nhsize=nhsize)

    with pytest.raises(ValueError, match=r"^im_stack has values of magnitude 1e\+153, which the "
                       r"sample from which nhsize='auto' chose nhsize=\d+ did not hold: .*; pass "
                       r"nhsize=3 \(it holds them\), or rescale the data$"):  # fmt: skip
        run("auto")
    with pytest.raises(ValueError, match=r"\(nhsize=5\) would overflow float64; rescale"):
        run(5)  # the user's own nhsize: as before


def _sampled(monkeypatch):
    """The calls of "auto"'s sampler (each reads its sample of tiles from the source)."""
    import fstack_dask._runs.fusion as fusion

    calls, real = [], fusion._auto
    monkeypatch.setattr(fusion, "_auto", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_auto_refuses_an_existing_tiff_dst_before_reading_its_sample(noisy, tmp_path, monkeypatch,
                                                                     capsys):  # fmt: skip
    # A TIFF dst's run read "auto"'s sample (minutes of a remote stack) before it refused its
    # existing dst (g88, after f02e370 did so for an OME-Zarr dst)
    from fstack_dask._cli.main import main

    src, _ = noisy
    dst = tmp_path / "out.ome.tif"
    assert main(["fuse", str(src), str(dst), "--no-progress", "--levels", "0"]) == 0
    calls = _sampled(monkeypatch)
    assert main(["fuse", str(src), str(dst), "--sth", "auto", "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert not calls
    assert main(["fuse", str(src), str(tmp_path / "new.ome.tif"), "--sth", "auto",
                 "--no-progress", "--levels", "0"]) == 0  # fmt: skip
    assert calls  # a new dst: the sample is read


def test_auto_on_a_cluster_refuses_its_dst_before_reading_its_sample(noisy, tmp_path, monkeypatch,
                                                                     capsys):  # fmt: skip
    # The CLI's cluster path planned (reading "auto"'s sample) before it examined dst
    from fstack_dask._cli.main import main

    src, _ = noisy
    calls = _sampled(monkeypatch)
    (tmp_path / "out.zarr").mkdir()
    (tmp_path / "out.zarr" / "notes.txt").write_text("a user's")
    (tmp_path / "out.ome.tif").write_bytes(b"a user's")
    for dst in (tmp_path / "out.zarr", tmp_path / "out.ome.tif"):
        argv = ["fuse", str(src), str(dst), "--sth", "auto", "--scheduler", "tcp://127.0.0.1:9",
                "--no-progress"]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"dst {str(dst)!r}" in err and "auto parameters" not in err, err
    assert not calls
