"""Combinations of ``fstack-dask fuse`` options, config keys and destinations with a bad value
among good ones (contract 4): exit 2, one line naming the option or key at fault, nothing
written and the source unchanged, whichever the combination. Earlier reviews tried each option
alone; a fuzzer of combinations (g66, a larger version run outside the suite) drew these
values. Derandomized, a few dozen examples in-process (``main``), for a repeatable run."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile

import pytest
from conftest import tree_digest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fstack_dask import synthetic_stack, write_stack
from fstack_dask._cli.main import main

# option -> (good values, bad values); a bad one's error must name the option
OPTIONS = {
    "--axes": (["zyx"], ["zyxx", "abc", "", "zy", "czyx", "zxy"]),
    "--level": (["0"], ["1", "-1", "x", "1.5"]),
    "--channels": (["auto", "independent"], ["rgb", "RGB"]),
    "--nhsize": (["9", "3", "auto"], ["0", "-1", "4096", "1.5", "x", "AUTO", "nan"]),
    "--alpha": (["0.2", "1"], ["0", "2", "nan", "inf", "x", "1e-7"]),
    "--sth": (["13", "auto", "0"], ["nan", "inf", "x", "1e400"]),
    "--focus": (["0,1,2,3,4", "4,3,2,1,0"], ["0,1,2", "0,0,1,2,3", "nan,1,2,3,4", "0,2,1,3,4"]),
    "--chunks": (["16", "16,32", "auto"], ["0", "1,2,3", "x", "0,16"]),
    "--memory-per-task": (["256MiB", "1GiB"], ["MiB", "0", "1.5", "x", "1KiB"]),
    "--device": (["cpu"], ["gpu", "CPU"]),
    "--levels": (["0", "1", "auto"], ["-1", "x", "1.5", "40"]),
    "--stall-timeout": (["600"], ["0", "-1", "nan", "x"]),
    "--storage-options": (["{}"], ["[]", "nonjson", '{"anon": true}', "null"]),
    "--dst-storage-options": (["{}"], ["[]", '{"anon": true}']),
    "--scheduler": (["threads", "synchronous"], ["foo", "", "tcp://"]),
}
SWITCHES = ["--depth-map", "--no-depth-map", "--selectivity-map", "--overwrite", "--no-overwrite"]
# config key -> (good, bad), as YAML
KEYS = {
    "algorithm.nhsize": (["9", "auto"], ["0", "4096", "1.5", "x", "true", "[9]"]),
    "algorithm.alpha": (["0.2", "2e-1"], ["0", "2", ".nan", "true"]),
    "algorithm.focus": (["[0, 1, 2, 3, 4]", "null"], ["[0, 1, 2]", "[0, 0, 1, 2, 3]", "5"]),
    "output.chunks": (["16", "[16, 32]"], ["0", "[1, 2, 3]", "x", "true"]),
    "output.levels": (["0", "auto"], ["-1", "x", "1.5"]),
    "output.depth_map": (["true", "false"], ["x", "1"]),
    "resources.memory_per_task": (["256MiB"], ["MiB", "0", "1.5", "true"]),
    "resources.device": (["cpu"], ["gpu", "1"]),
    "cluster.scheduler": (["threads"], ["foo", "1"]),
}


@st.composite
def combinations(draw):
    """argv and config text with one or two bad values among a few good ones, and the names
    an error may give for each bad value."""
    names = draw(st.lists(st.sampled_from(sorted(OPTIONS)), max_size=5, unique=True))
    keys = draw(st.lists(st.sampled_from(sorted(KEYS)), max_size=3, unique=True))
    places = [("option", n) for n in names] + [("key", k) for k in keys]
    if not places:
        places = [("option", draw(st.sampled_from(sorted(OPTIONS))))]
    bad = set(draw(st.lists(st.sampled_from(places), min_size=1, max_size=2, unique=True)))
    argv, lines, blame = [], {}, []
    for where, name in places:
        good, wrong = (OPTIONS if where == "option" else KEYS)[name]
        value = draw(st.sampled_from(wrong if (where, name) in bad else good))
        if where == "option":
            argv.append(f"{name}={value}")  # (a value such as -1 as the option's, not another)
        else:
            section, key = name.split(".")
            lines.setdefault(section, []).append(f"  {key}: {value}")
        if (where, name) in bad:
            leaf = name.split(".")[-1]
            blame.append((name, "--" + leaf.replace("_", "-")) if where == "key" else (name,))
    argv += draw(st.lists(st.sampled_from(SWITCHES), max_size=2, unique=True))
    config = "".join(f"{s}:\n" + "\n".join(v) + "\n" for s, v in lines.items())
    dst = draw(st.sampled_from(["out.ome.zarr", "out.tif", "done.ome.zarr"]))
    if dst == "done.ome.zarr":  # an earlier output, to be replaced
        argv = [a for a in argv if a != "--no-overwrite"] + ["--overwrite"]
    return argv, config, dst, blame


@pytest.fixture(scope="module")
def made():
    """A stack and a finished output of it, made once; each example works on a copy."""
    root = tempfile.mkdtemp(prefix="combinations-")
    data = synthetic_stack((40, 36), 5, dtype="uint16", seed=1).stack.transpose(2, 0, 1)
    write_stack(os.path.join(root, "src.ome.zarr"), data, axes="zyx", chunks=(5, 16, 16))
    assert main(["fuse", os.path.join(root, "src.ome.zarr"), os.path.join(root, "done.ome.zarr"),
                 "--no-progress", "--scheduler", "synchronous"]) == 0  # fmt: skip
    yield root
    shutil.rmtree(root, ignore_errors=True)


@settings(max_examples=50, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(case=combinations())
def test_a_bad_value_among_good_ones_is_refused_in_one_line_naming_it(made, case):
    argv, config, dst, blame = case
    with tempfile.TemporaryDirectory(dir=made) as work:
        shutil.copytree(os.path.join(made, "src.ome.zarr"), os.path.join(work, "src.ome.zarr"))
        shutil.copytree(os.path.join(made, "done.ome.zarr"), os.path.join(work, "done.ome.zarr"))
        if config:
            with open(os.path.join(work, "run.yaml"), "w") as f:
                f.write(config)
            argv = ["--config", os.path.join(work, "run.yaml"), *argv]
        before = tree_digest(work)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["fuse", os.path.join(work, "src.ome.zarr"), os.path.join(work, dst),
                         "--no-progress", *argv])  # fmt: skip
        lines = err.getvalue().splitlines()
        said = json.dumps([argv, config, dst, lines])
        assert code == 2, said
        errors = [line for line in lines if line.startswith("fstack-dask: error: ")]
        assert len(errors) == 1 and len(lines) == 1, said
        assert any(any(n in errors[0] for n in names) for names in blame), said
        assert tree_digest(work) == before, said
