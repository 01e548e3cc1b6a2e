"""Mistakes that were silent or raw (issue 10.5) and the scheduler dask's config names
(issue 9.4): each is one line naming what to change, with nothing written."""

from __future__ import annotations

import logging
import re
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from conftest import tree_digest

from fstack_dask import focus_stack, fuse, fuse_zarr, synthetic_stack, write_stack
from fstack_dask._cli.main import main
from fstack_dask._errors import FstackDaskWarning


@pytest.fixture()
def src(tmp_path):
    path = tmp_path / "stack.ome.zarr"
    data = synthetic_stack((64, 48), 7, dtype="uint16", seed=1).stack.transpose(2, 0, 1)
    write_stack(path, data, axes="zyx", chunks=(7, 32, 32))
    return path


def test_axes_that_make_an_absurd_image_are_refused(tmp_path):
    path = tmp_path / "named.zarr"
    # z is the last axis, as its names say: refused unless the user states the axes
    zarr.create_array(str(path), shape=(3, 4, 4000), dtype="uint16", dimension_names=list("yxz"))
    before = tree_digest(tmp_path)
    with pytest.raises(ValueError, match=r"4000 focus planes of 3 x 4 pixels.*check the axes"):
        fuse_zarr(path, tmp_path / "out.zarr")
    assert tree_digest(tmp_path) == before
    with pytest.warns(FstackDaskWarning, match="e.g. 'zyx' for its axis of length 3$"):
        out = fuse_zarr(path, tmp_path / "ok.zarr", axes="yxz", progress=False)  # as told
    assert out["0"].shape == (3, 4)


def test_axes_given_fuse_more_planes_than_pixels_as_fuse_does(tmp_path, capsys):
    """A 2 x 2 crop of 21 planes, its axes stated: fuse and focus_stack fuse it, and so does
    fuse_zarr (it was refused, its message offering the very axes given), with a warning."""
    stack = synthetic_stack((2, 2), 21, dtype="uint16", seed=2).stack  # (y, x, z)
    path = tmp_path / "plain.zarr"
    zarr.create_array(str(path), data=stack)  # no names: axes are the user's to give
    # it advised "the shortest axis as the focus axis", wrong for a real 2 x 2 crop
    with pytest.warns(FstackDaskWarning, match=r"21 focus planes of 2 x 2 pixels") as told:
        out = fuse_zarr(path, tmp_path / "out.zarr", axes="yxz", progress=False)
    (said,) = [str(w.message) for w in told if "focus planes of" in str(w.message)]
    assert "fused as given, right for a small crop of a deep stack; if the array is " in said
    assert "shortest" not in said
    assert (out["0"][...] == focus_stack(stack)).all()
    assert (out["0"][...] == fuse(stack, axes="yxz").compute()).all()
    code = main(["fuse", str(path), str(tmp_path / "cli.zarr"), "--axes", "yxz"])
    assert code == 0 and "more planes than the image has" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"channels": [1]},
         "channels must be a str, 'auto', 'rgb' or 'independent', got [1] (list)"),
        ({"levels": True}, "levels must be None (automatic) or an integer >= 0, got True (bool)"),
        ({"chunks": [1]}, "chunks must be a positive int or a (y, x) pair of them, got [1] (list)"),
        ({"chunks": (32, True)}, "chunks must be a positive int or a (y, x) pair of them, got (32"),
    ],
)  # fmt: skip
def test_a_parameter_of_the_wrong_type_is_a_type_error_naming_it(src, tmp_path, kwargs, says):
    """channels=[1], levels=True, chunks=[1] raised ValueError as a wrong value does; each is
    a TypeError naming the parameter and the type expected (a bool is no int here)."""
    before = tree_digest(tmp_path)
    with pytest.raises(TypeError) as told:
        fuse_zarr(src, tmp_path / "out.zarr", progress=False, **kwargs)
    assert str(told.value).startswith(says), told.value
    assert tree_digest(tmp_path) == before
    if "levels" not in kwargs:  # (fuse has no pyramid)
        with pytest.raises(TypeError, match=f"^{list(kwargs)[0]} must be"):
            fuse(np.zeros((5, 16, 16), np.uint16), axes="zyx", **kwargs)
    for kwargs in ({"channels": "rgbb"}, {"levels": -1}, {"chunks": [0, 8]}):  # wrong values
        with pytest.raises(ValueError, match=f"^{list(kwargs)[0]} must be"):
            fuse_zarr(src, tmp_path / "out.zarr", progress=False, **kwargs)


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ("input: {channels: [1]}", "input.channels must be a string, one of auto, rgb, "
         "independent, got [1] (list)"),
        ("output: {levels: true}", "output.levels must be auto, null or an integer from 0 to 40, "
         "got True (bool)"),
    ],
)  # fmt: skip
def test_a_config_value_of_the_wrong_type_names_the_type(src, tmp_path, config, says):
    from safety_util import cli

    (tmp_path / "c.yaml").write_text(config + "\n")
    proc = cli("fuse", src, tmp_path / "out.zarr", "--config", tmp_path / "c.yaml")
    assert proc.returncode == 2 and proc.stderr.endswith(f"{says}\n"), proc.stderr
    assert not (tmp_path / "out.zarr").exists()


def test_auto_refuses_dst_before_it_tells_the_parameters_it_chose(src, tmp_path):
    """--auto said "auto parameters: nhsize=..." and then that dst was refused (exists, is the
    source): a refused run says only why."""
    from safety_util import cli

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    for dst in (tmp_path / "taken", src, tmp_path / "taken.tif"):
        if dst.suffix == ".tif":
            dst.write_bytes(b"not ours")
        proc = cli("fuse", src, dst, "--auto", "--no-progress")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "auto parameters" not in proc.stderr, proc.stderr
    proc = cli("fuse", src, tmp_path / "out.zarr", "--auto", "--no-progress")
    assert proc.returncode == 0 and proc.stderr.count("auto parameters: nhsize=") == 1, proc.stderr


def test_axes_contradicting_stored_names_are_refused(tmp_path, capsys):
    path = tmp_path / "named.zarr"
    arr = zarr.create_array(str(path), shape=(5, 30, 40), dtype="uint16",
                            dimension_names=["z", "y", "x"])  # fmt: skip
    arr[...] = 1
    code = main(["fuse", str(path), str(tmp_path / "out.zarr"), "--axes", "yxz"])
    err = capsys.readouterr().err
    assert code == 2 and "contradicts the dimension_names" in err and "'zyx'" in err
    assert not (tmp_path / "out.zarr").exists()


def test_fuse_given_a_path_and_fuse_zarr_given_an_array(src, tmp_path):
    with pytest.raises(TypeError, match=r"fuse takes an array.*fuse_zarr"):
        fuse(str(src), axes="zyx")
    data = zarr.open_group(str(src))["0"][...]
    out = fuse_zarr(data, tmp_path / "from_array.zarr", axes="zyx", progress=False)
    assert out["0"].shape == (64, 48)  # arrays are sources too, with the resumable writer
    with pytest.raises(ValueError, match="axes is required"):
        fuse_zarr(data, tmp_path / "no_axes.zarr")


def test_chunks_that_make_a_million_files_warn(src, tmp_path, caplog):
    # 5 planes: fewer would warn too (the fit needs 5), and "sane" below means no warning
    zarr.create_array(str(tmp_path / "wide.zarr"), shape=(5, 4000, 4000), dtype="uint8",
                      dimension_names=list("zyx"))  # fmt: skip
    from fstack_dask._runs.fusion import plan_fusion

    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match="chunk files"):
        plan_fusion(tmp_path / "wide.zarr", chunks=3, levels=0)
    assert "1,779,556 chunk files" in caplog.text  # ceil(4000 / 3) ** 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan_fusion(tmp_path / "wide.zarr", chunks=64)  # a sane size: no warning


def test_chunks_that_make_a_million_blocks_warn_of_their_overhead(tmp_path, capsys):
    """``--chunks 1`` on a large image: each block costs milliseconds beyond its pixels, and
    ``info`` and the run said nothing of the time (only of the chunk files; a review,
    2026-12-06). Both warn, with the figure, naming chunks; a million blocks do not."""
    zarr.create_array(str(tmp_path / "wide.zarr"), shape=(5, 4000, 4000), dtype="uint8",
                      dimension_names=list("zyx"))  # fmt: skip
    from fstack_dask._runs.fusion import plan_fusion

    assert main(["info", str(tmp_path / "wide.zarr"), "--chunks", "3"]) == 0
    said = capsys.readouterr()
    line = [n for n in (said.out + said.err).splitlines() if "blocks, each costing" in n]
    assert len(line) == 1, said
    assert "chunks=(3, 3) make 1,779,556 blocks, each costing 5 ms or more" in line[0]
    assert "2.5 h or more of overhead alone; consider larger chunks" in line[0]
    with pytest.warns(UserWarning, match=r"chunks=\(3, 3\) make 1,779,556 blocks, each"):
        plan_fusion(tmp_path / "wide.zarr", chunks=3, levels=0)  # as the run plans
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan_fusion(tmp_path / "wide.zarr", chunks=(4, 8), levels=0)  # 500,000 blocks


def test_storage_options_reach_remote_src_and_dst(src, capsys):
    """The CLI's --storage-options / --dst-storage-options go to fsspec (here its memory
    filesystem, in this process); for a local path they are refused."""
    data = zarr.open_group(str(src))["0"][...]
    write_stack("memory://fstack-test/stack.zarr", data, axes="zyx")
    code = main(["fuse", "memory://fstack-test/stack.zarr", "memory://fstack-test/out.zarr",
                 "--storage-options", '{"skip_instance_cache": false}',
                 "--dst-storage-options", "{}", "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    out = zarr.open_group("memory://fstack-test/out.zarr", mode="r")
    assert out["0"].shape == (64, 48)
    code = main(["fuse", str(src), "/tmp/never.zarr", "--storage-options", '{"anon": true}'])
    assert code == 2 and "only apply to URLs" in capsys.readouterr().err
    code = main(["fuse", str(src), "/tmp/never.zarr", "--storage-options", "{not json"])
    assert code == 2 and "JSON object" in capsys.readouterr().err


def test_storage_options_for_a_src_they_cannot_reach_are_refused(src, tmp_path):
    """--storage-options with a glob of plane files, and storage_options= with an array or a
    list of files, were ignored in silence (fused, exit 0), where a local path's are refused
    (a fuzzer of option combinations): refused naming them, nothing written."""
    data = zarr.open_group(str(src))["0"]
    (tmp_path / "planes").mkdir()
    for i, plane in enumerate(data[...]):
        tifffile.imwrite(tmp_path / "planes" / f"p{i}.tif", plane)
    before = tree_digest(tmp_path)
    done = _cli("fuse", "planes/*.tif", "out.zarr", "--storage-options", '{"anon": true}',
                "--no-progress", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2, done.stderr[-500:]
    assert done.stderr.splitlines() == [
        "fstack-dask: error: --storage-options only apply to URLs such as 's3://...', but src "
        "'planes/*.tif' is a glob of local plane files"
    ]
    files = sorted(str(p) for p in (tmp_path / "planes").iterdir())
    for stack, what in [(data, "a zarr.Array"), (data[...], "a numpy.ndarray"),
                        (da.from_array(data[...]), "a dask.Array"), (files, "a list")]:  # fmt: skip
        with pytest.raises(ValueError, match=f"storage_options only apply .* src is {what}"):
            fuse_zarr(stack, tmp_path / "out.zarr", axes="zyx", storage_options={"anon": True},
                      progress=False)  # fmt: skip
    assert tree_digest(tmp_path) == before
    # a URL is never a glob of local plane files (a query's "?" made one)
    for url, says in [("s3://bucket/planes/*.tif", ".tif files are read from a local path only"),
                      ("s3://bucket/planes/*", "is a glob in a URL; globs of plane files are"),
                      ("http://127.0.0.1:9/in.zarr?sig=1", "cannot be reached")]:  # fmt: skip
        named = url.replace("sig=1", "sig=***")  # a query's values are hidden
        with pytest.raises(ValueError, match=f"^src '{re.escape(named)}'.*{says}"):
            fuse_zarr(url, tmp_path / "out.zarr", storage_options={"anon": True}, progress=False)
    assert tree_digest(tmp_path) == before


def _scheduler_of_the_run(caplog) -> str:
    reports = [r.fstack_report for r in caplog.records if hasattr(r, "fstack_report")]
    return reports[0].scheduler


@pytest.mark.parametrize("value", ["abc", -1, 2.5])
def test_a_dask_num_workers_that_is_no_count_is_refused_naming_it(src, tmp_path, value):
    """DASK_NUM_WORKERS=abc stopped the run with "invalid literal for int()", and -1 with
    "max_workers must be greater than 0" once planned, neither naming the setting (an
    adversarial run on names, 2026-12-06)."""
    before = tree_digest(tmp_path)
    with dask.config.set(num_workers=value), pytest.raises(ValueError) as info:
        fuse_zarr(src, tmp_path / "out.zarr", progress=False)
    assert str(info.value) == (
        f"dask's num_workers config (DASK_NUM_WORKERS) must be a positive integer, got {value!r}"
    )
    assert tree_digest(tmp_path) == before
    with dask.config.set(num_workers=2):
        fuse_zarr(src, tmp_path / "out.zarr", progress=False)


def test_dask_config_scheduler_is_honoured_even_with_a_client(src, tmp_path, caplog):
    """As in dask: an explicit scheduler= wins, then dask.config's scheduler, then the active
    Client, then threads."""
    from distributed import Client, LocalCluster

    caplog.set_level(logging.DEBUG, logger="fstack_dask._runs.schedulers")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster):  # fmt: skip
        runs = {}
        for name, config, scheduler in (
            ("client", {}, None),
            ("config", {"scheduler": "synchronous"}, None),
            ("explicit", {"scheduler": "synchronous"}, "threads"),
        ):
            caplog.clear()
            with dask.config.set(**config):
                out = fuse_zarr(src, tmp_path / f"{name}.zarr", scheduler=scheduler,
                                progress=False, levels=0)  # fmt: skip
            runs[name] = (_scheduler_of_the_run(caplog), out["0"][...])
    assert runs["client"][0] == "distributed"
    assert runs["config"][0] == "synchronous"
    assert runs["explicit"][0] == "threads"
    for _, image in runs.values():
        np.testing.assert_array_equal(image, runs["client"][1])


def _cli_with_dask_config(config, src, tmp_path):
    """``fstack-dask info src`` in a fresh process with ``DASK_CONFIG=config``; its address
    space capped, so that a dask reading /dev/zero fails fast rather than fill the machine."""
    import os
    import resource
    import subprocess
    import sys

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))

    env = dict(os.environ, DASK_CONFIG=str(config))
    command = (
        ["-m", "fstack_dask", "info", str(src)]
        if src
        else ["-c", "import fstack_dask as f; f.fuse"]
    )
    return subprocess.run([sys.executable, *command], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=20,
                          preexec_fn=cap)  # fmt: skip


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_a_dask_config_that_never_ends_is_refused_naming_it(src, tmp_path, kind):
    """dask's import reads its configuration files to their end: DASK_CONFIG=/dev/zero (or a
    FIFO) hung the command line, deaf to Ctrl-C, filling memory (an adversarial run)."""
    import os

    config = tmp_path / "dask.yaml"
    if kind == "fifo":
        os.mkfifo(config)
    else:
        config = kind
    done = _cli_with_dask_config(config, src, tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-500:]
    assert len(lines) == 1 and str(config) in lines[0] and "DASK_CONFIG" in lines[0], lines
    assert _cli_with_dask_config(os.devnull, src, tmp_path).returncode == 0  # reads empty
    library = _cli_with_dask_config(config, None, tmp_path)  # the API's first name imports dask
    assert "ValueError: dask's configuration" in library.stderr, library.stderr[-500:]


def _cli(*args, cwd, env=None):
    """The real command line in a fresh interpreter."""
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "fstack_dask", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env=None if env is None else {**os.environ, **env})  # fmt: skip


@pytest.mark.parametrize(
    ("directory", "says"),
    [
        ("", "DIR must be a non-empty path"),
        ("  ", "DIR must be a non-empty path"),
        ("s3://bucket/demo", "DIR 's3://bucket/demo' is a URL; the demo writes to a local"),
        ("memory://demo", "DIR 'memory://demo' is a URL; the demo writes to a local"),
        ("foo://x/demo", "DIR 'foo://x/demo' uses the protocol 'foo'"),
        ("s3:/bucket/demo", "DIR 's3:/bucket/demo' starts with 's3:'"),
    ],
)
def test_a_demo_dir_that_is_no_local_folder_is_refused(tmp_path, directory, says):
    """``fstack-dask demo ""`` (an unset shell variable) wrote its planes, zarr and previews
    into the current folder, and ``demo s3://bucket/demo`` or ``foo://x/demo`` into a local
    folder ``s3:/bucket/demo`` there, exit 0."""
    before = tree_digest(tmp_path)
    done = _cli("demo", directory, "--size", "32", "--planes", "5", cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-500:]
    assert len(lines) == 1 and lines[0].startswith(f"fstack-dask: error: {says}"), lines
    assert tree_digest(tmp_path) == before


def test_a_demo_dir_given_as_a_file_url_is_that_folder(tmp_path):
    done = _cli("demo", f"file://{tmp_path}/out", "--size", "32", "--planes", "5",
                "--no-progress", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-500:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # not 'file:'
    assert (tmp_path / "out" / "fused.ome.zarr" / "zarr.json").is_file()


@pytest.mark.parametrize("command", ["fuse", "info"])
@pytest.mark.parametrize("config", ["", " "])
def test_an_empty_config_path_is_refused_not_ignored(src, tmp_path, command, config):
    """``--config "$CFG"`` with CFG unset ran on the built-in defaults, exit 0, the file the
    user meant never read."""
    argv = [command, src, *([tmp_path / "out.zarr", "--no-progress"] if command == "fuse" else [])]
    before = tree_digest(tmp_path)
    done = _cli(*argv, "--config", config, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-500:]
    assert lines == [f"fstack-dask: error: --config must name a YAML file, got {config!r}"]
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize(
    ("command", "argv", "says"),
    [
        ("fuse", ["--level", "9"], "--level 9 is not in src"),
        ("fuse", ["--level", "+9"], "--level 9 is not in src"),
        ("fuse", ["--levels", "9"], "--levels must be at most 6 for a 64 x 48 image"),
        ("fuse", ["--focus", "0,1"], "--focus must be 1-D with one position per plane (7)"),
        (
            "fuse",
            ["--channels", "rgb"],
            "--channels 'rgb' needs a channel axis 'c', and the stack's axes are 'zyx'",
        ),
        ("info", ["--level", "3"], "--level 3 is not in src"),
        ("plain", ["--axes", "tzyx"], "--axes 'tzyx' has 4 letters but the array has 3"),
        ("plain-info", ["--axes", "tzyx"], "--axes 'tzyx' has 4 letters but the array has 3"),
    ],
)
def test_checks_against_the_source_name_the_option(src, tmp_path, capsys, command, argv, says):
    """``--level 9`` said ``level=9 is not in src``, ``--levels 9`` ``levels must be at most
    6``, ``--focus 0,1`` ``focus must be ...``, ``--axes tzyx`` ``axes 'tzyx' has ...``: the
    Python keyword, where each other check names the option."""
    if command.startswith("plain"):
        zarr.create_array(str(tmp_path / "plain.zarr"), shape=(7, 64, 48), dtype="uint16")
        src = tmp_path / "plain.zarr"
    dst = [str(tmp_path / "out.zarr"), "--no-progress"] if command in ("fuse", "plain") else []
    before = tree_digest(tmp_path)
    name = "info" if command.endswith("info") else "fuse"
    assert main([name, str(src), *dst, *argv]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"fstack-dask: error: {says}"), err
    assert tree_digest(tmp_path) == before


def test_a_config_key_s_check_against_the_source_keeps_its_name(src, tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("output: {levels: 9}\n")
    assert main(["fuse", str(src), str(tmp_path / "out.zarr"), "--config",
                 str(tmp_path / "run.yaml")]) == 2  # fmt: skip
    assert "error: levels must be at most 6" in capsys.readouterr().err


@pytest.mark.parametrize(
    "said",
    [
        "axes of TIFF 'a.tif' cannot be mapped",
        "chunks (1, 2) do not match 3 dimensions",
        "levelx=3",
        "focus steps of 1e-09",
    ],  # fmt: skip
)
def test_openings_that_are_not_the_option_keep_their_words(said):
    """Only a keyword's own check is renamed: the source's chunks or a file's axes are not
    the option's, even where the option was given."""
    import argparse

    from fstack_dask._cli.main import _message

    given = argparse.Namespace(axes="zyx", chunks=(3, 3), level=1, focus=[0.0, 1.0])
    assert _message(ValueError(said), given) == said


@pytest.mark.parametrize("unit", ["MiB", "GB", " kib "])
def test_a_memory_size_without_its_number_is_refused(src, tmp_path, capsys, unit):
    """dask reads a unit alone as one of it: ``--memory-per-task MiB`` (the number left out)
    ran with 1 MiB a task, or failed later saying so."""
    before = tree_digest(tmp_path)
    with pytest.raises(
        ValueError, match=f"^memory_per_task must be a size such as 256MiB.*{unit!r}"
    ):
        fuse_zarr(src, tmp_path / "out.zarr", memory_per_task=unit, progress=False)
    assert main(["info", str(src), "--memory-per-task", unit]) == 2
    assert "error: --memory-per-task must be a size such as 256MiB" in capsys.readouterr().err
    (tmp_path / "run.yaml").write_text(f"resources: {{memory_per_task: '{unit}'}}\n")
    assert main(["fuse", str(src), str(tmp_path / "out.zarr"), "--config",
                 str(tmp_path / "run.yaml")]) == 2  # fmt: skip
    assert "resources.memory_per_task must be a size" in capsys.readouterr().err
    (tmp_path / "run.yaml").unlink()
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--nhsize", "²"], "--nhsize must be an integer >= 1 or auto, got '²'"),
        (["--nhsize", "٩"], "--nhsize must be an integer >= 1 or auto, got '٩'"),
        (["--sth", "0_2"], "--sth must be a finite number (dB) or auto, got '0_2'"),
        (["--alpha", "０.２"], "argument --alpha: expected a number such as 0.2"),
        (["--stall-timeout", "1_0"], "argument --stall-timeout: expected a number"),
        (["--levels", "٢"], "--levels must be auto, null or an integer from 0 to 40, got '٢'"),
        (["--level", "²"], "argument --level: expected an integer such as 3, got '²'"),
        (["--focus", "0,1,2,3,4,5,٦"], "argument --focus: expected comma-separated numbers"),
    ],
)
def test_numbers_typed_other_than_in_ascii_digits_are_refused(src, tmp_path, capsys, argv, says):
    """int() and float() read '٩' as 9, '0_2' as 2 (a typo of 0.2: an sth of 2 dB, run) and
    '０.２' as 0.2, and int('²') failed naming nothing ('invalid literal for int()'), where
    --chunks refused them already."""
    before = tree_digest(tmp_path)
    assert main(["fuse", str(src), str(tmp_path / "out.zarr"), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"fstack-dask: error: {says}"), err
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("argv", [["--planes", "1_1"], ["--size", "٦٤"], ["--seed", "٣"]])
def test_demo_numbers_typed_other_than_in_ascii_digits_are_refused(tmp_path, argv):
    done = _cli("demo", tmp_path / "d", *argv, cwd=tmp_path)
    assert done.returncode == 2 and f"argument {argv[0]}: expected an integer" in done.stderr
    assert not (tmp_path / "d").exists()


def _a_demo_in_home(tmp_path):
    """A demo run into $HOME/x ($HOME: tmp_path/home), an empty current folder beside it:
    the home, that folder and the environment that names the home."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    env = {"HOME": str(home)}
    first = _cli("demo", home / "x", "--size", "32", "--planes", "5", "--seed", "1",
                 "--no-progress", cwd=tmp_path, env=env)  # fmt: skip
    assert first.returncode == 0, first.stderr[-500:]
    return home, cwd, env


def test_a_demo_dir_given_with_a_quoted_tilde_is_the_home_folder(tmp_path):
    """``fstack-dask demo '~/x' --overwrite`` (a quoted ~, as a script's "$DIR" holds it)
    checked and wrote its planes and previews in './~/x' but fused '$HOME/x/planes' over
    '$HOME/x/fused.ome.zarr': an earlier output there replaced by a fusion of other planes,
    exit 0, its PSNR against the wrong truth (an adversarial review)."""
    home, cwd, env = _a_demo_in_home(tmp_path)
    done = _cli("demo", "~/x", "--size", "32", "--planes", "5", "--seed", "7", "--overwrite",
                "--no-progress", cwd=cwd, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-500:]
    assert list(cwd.iterdir()) == []  # not './~/x'
    again = _cli("demo", tmp_path / "again", "--size", "32", "--planes", "5", "--seed", "7",
                 "--no-progress", cwd=tmp_path, env=env)  # fmt: skip
    assert tree_digest(home / "x" / "planes") == tree_digest(tmp_path / "again" / "planes")
    assert done.stdout.splitlines()[-1] == again.stdout.splitlines()[-1]  # its own PSNR


def test_a_demo_dir_of_a_folder_named_tilde_leaves_the_home_folder_alone(tmp_path):
    """``fstack-dask demo ./~/x --overwrite`` (a folder named '~' in the current one): pathlib
    made './~/x' '~/x', so the demo wrote its planes in './~/x' but fused '$HOME/x/planes' over
    '$HOME/x/fused.ome.zarr', an earlier demo's output there replaced, then failed on a raw
    IndexError. Both are './~/x' now; $HOME/x is untouched."""
    home, cwd, env = _a_demo_in_home(tmp_path)
    before = tree_digest(home)
    done = _cli("demo", "./~/x", "--size", "48", "--planes", "5", "--seed", "7", "--overwrite",
                "--no-progress", cwd=cwd, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-500:]
    assert tree_digest(home) == before
    assert (cwd / "~" / "x" / "fused.ome.zarr" / "zarr.json").is_file()
