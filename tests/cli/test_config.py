"""YAML configurations: strict loading, defaults, fuse_zarr keywords and cluster contexts."""

from __future__ import annotations

import dataclasses
import inspect
import os
import pathlib
import subprocess
import sys
import types

import pytest

from fstack_dask import fuse_zarr
from fstack_dask._cli.config import (
    ClusterConfig,
    Config,
    config_from_mapping,
    load_config,
    open_scheduler,
)
from fstack_dask._sources.common import MissingExtraError

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def _write(tmp_path: pathlib.Path, text: str, name: str = "run.yaml") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.path == str(path)
    kwargs = cfg.fuse_kwargs()
    assert set(kwargs) <= set(inspect.signature(fuse_zarr).parameters)


def test_shipped_configs_are_all_there():
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    assert {"local.yaml", "distributed.yaml", "algorithm.yaml", "slurm.yaml", "pbs.yaml"} <= names
    assert (CONFIGS / "README.md").is_file()


def test_jobqueue_configs_keep_their_sections():
    for name, kind in (("slurm.yaml", "slurm"), ("pbs.yaml", "pbs")):
        cfg = load_config(CONFIGS / name)
        assert cfg.cluster.kind == kind
        assert cfg.cluster.jobs == 10
        assert cfg.cluster.jobqueue["walltime"] == "04:00:00"
        assert cfg.cluster.jobqueue["cores"] == 8


def test_defaults_match_fuse_zarr(tmp_path):
    params = inspect.signature(fuse_zarr).parameters
    for cfg in (Config(), load_config(_write(tmp_path, "")), load_config(_write(tmp_path, "{}"))):
        kwargs = cfg.fuse_kwargs()
        for key, value in kwargs.items():
            assert value == params[key].default, key
        assert cfg.cluster == ClusterConfig()
        assert cfg.cluster.kind == "local" and cfg.cluster.scheduler == "threads"


def test_all_keys_are_read(tmp_path):
    path = _write(
        tmp_path,
        """
algorithm: {nhsize: 5, alpha: 0.5, sth: 10.5, focus: [0, 0.5, 1.5]}
input: {axes: ZYX, channels: independent, level: 1, storage_options: {anon: true}}
output: {depth_map: true, selectivity_map: true, chunks: [64, 32], overwrite: true,
         storage_options: {key: k}, levels: 3}
resources: {memory_per_task: 1GiB, stall_timeout: 90, device: cpu}
cluster: {kind: local, scheduler: processes}
""",
    )
    cfg = load_config(path)
    assert cfg.fuse_kwargs() == {
        "axes": "zyx",
        "level": 1,
        "channels": "independent",
        "storage_options": {"anon": True},
        "nhsize": 5,
        "focus": [0.0, 0.5, 1.5],
        "alpha": 0.5,
        "sth": 10.5,
        "depth_map": True,
        "selectivity_map": True,
        "chunks": (64, 32),
        "memory_per_task": 2**30,
        "overwrite": True,
        "dst_storage_options": {"key": "k"},
        "stall_timeout": 90.0,
        "levels": 3,
        "device": "cpu",
    }
    assert cfg.cluster.scheduler == "processes"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("256MiB", 256 * 2**20), ("1GiB", 2**30), ("500MB", 500_000_000), ("1000", 1000)],
)
def test_memory_sizes(tmp_path, text, expected):
    cfg = load_config(_write(tmp_path, f"resources: {{memory_per_task: {text}}}"))
    assert cfg.resources.memory_per_task == expected


def test_chunks_int_and_null(tmp_path):
    assert load_config(_write(tmp_path, "output: {chunks: 128}")).output.chunks == 128
    assert load_config(_write(tmp_path, "output: {chunks: null}")).output.chunks is None


def test_config_is_frozen():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.algorithm.nhsize = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.cluster = ClusterConfig()  # type: ignore[misc]


def test_with_overrides_replaces_values_and_the_cluster():
    cfg = config_from_mapping({"algorithm": {"nhsize": 5, "sth": 7}, "cluster": {"kind": "slurm"}})
    new = cfg.with_overrides(algorithm={"nhsize": 3}, cluster={"kind": "local"})
    assert (new.algorithm.nhsize, new.algorithm.sth) == (3, 7.0)
    assert new.cluster == ClusterConfig()
    assert cfg.algorithm.nhsize == 5  # the original is untouched


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("algoritm: {nhsize: 9}", "'algoritm'"),
        ("algorithm: {nhsiz: 9}", "'algorithm.nhsiz'"),
        ("output: {depth: true}", "'output.depth'"),
        ("cluster: {kind: slurm, job: 3}", "'cluster.job'"),
    ],
)
def test_unknown_keys_name_the_key_and_the_file(tmp_path, text, key):
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match="unknown key") as info:
        load_config(path)
    assert key in str(info.value)
    assert str(path) in str(info.value)


def test_unknown_key_suggests_the_right_one(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'nhsize'"):
        load_config(_write(tmp_path, "algorithm: {nhsiz: 9}"))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("algorithm: {nhsize: '9'}", "algorithm.nhsize"),
        ("algorithm: {nhsize: 0}", "algorithm.nhsize"),
        ("algorithm: {nhsize: 2.5}", "algorithm.nhsize"),
        ("algorithm: {alpha: true}", "algorithm.alpha"),
        ("algorithm: {alpha: 1.5}", "algorithm.alpha"),
        ("algorithm: {sth: high}", "algorithm.sth"),
        ("algorithm: {focus: 3}", "algorithm.focus"),
        ("algorithm: {focus: [0, 2, 1]}", "algorithm.focus"),
        ("input: {axes: 3}", "input.axes"),
        ("input: {axes: zzx}", "input.axes"),
        ("input: {channels: colour}", "input.channels"),
        ("output: {depth_map: 1}", "output.depth_map"),
        ("output: {overwrite: 'no'}", "output.overwrite"),
        ("output: {chunks: [1, 2, 3]}", "output.chunks"),
        ("output: {chunks: 0}", "output.chunks"),
        ("resources: {memory_per_task: lots}", "resources.memory_per_task"),
        ("resources: {memory_per_task: 0}", "resources.memory_per_task"),
        ("resources: {memory_per_task: ''}", "resources.memory_per_task"),
        ("cluster: {kind: kubernetes}", "cluster.kind"),
        ("cluster: {scheduler: thread}", "cluster.scheduler"),
        ("cluster: {kind: distributed, address: 8786}", "cluster.address"),
        ("cluster: {kind: slurm, jobs: 0}", "cluster.jobs"),
        ("cluster: {kind: slurm, jobqueue: [cores]}", "cluster.jobqueue"),
        ("algorithm: 9", "algorithm"),
    ],
)
def test_wrong_values_name_the_key(tmp_path, text, key):
    path = _write(tmp_path, text)
    with pytest.raises(ValueError) as info:
        load_config(path)
    assert key in str(info.value)
    assert str(path) in str(info.value)


def test_an_unquoted_walltime_is_the_time_typed_and_a_number_is_refused(tmp_path):
    """PyYAML's YAML 1.1 read an unquoted 4:00:00 as the number 14400 (base 60), which was
    refused, asking to quote it; read as YAML 1.2 it is the time typed."""
    text = "cluster:\n  kind: slurm\n  jobqueue:\n    walltime: 4:00:00\n"
    assert load_config(_write(tmp_path, text)).cluster.jobqueue["walltime"] == "4:00:00"
    with pytest.raises(ValueError) as info:
        load_config(_write(tmp_path, text.replace("4:00:00", "14400")))
    message = str(info.value)
    assert "cluster.jobqueue.walltime is the number 14400, not a time limit" in message
    assert '"04:00:00" (HH:MM:SS)' in message


@pytest.mark.parametrize(
    ("typed", "read"), [("account: 011", "11"), ("queue: 2e3", "2000.0"), ("project: 12", "12")]
)
def test_a_batch_scheduler_name_typed_as_a_number_is_refused(tmp_path, typed, read):
    """An unquoted account 011 went to dask-jobqueue as the number 11 (9 under YAML 1.1) and a
        queue 2e3 as the float 2000.0: the job asked the scheduler for another account or queue
    . Refused naming the key; quoted, the name is kept as typed."""
    text = f"cluster:\n  kind: slurm\n  jobqueue:\n    {typed}\n"
    key = typed.split(":")[0]
    with pytest.raises(ValueError) as info:
        load_config(_write(tmp_path, text))
    assert f"cluster.jobqueue.{key} is the number {read}, not a name: quote it" in str(info.value)
    assert f'({key}: "..." in the file)' in str(info.value)  # (it said account: "011" for a queue)
    quoted = text.replace(typed, f'{key}: "{typed.split(": ")[1]}"')
    assert load_config(_write(tmp_path, quoted)).cluster.jobqueue[key] == typed.split(": ")[1]


@pytest.mark.parametrize("typed", ["queue: true", "account: [a, b]", "project: {a: 1}"])
def test_a_batch_scheduler_name_that_is_no_string_is_refused(tmp_path, typed):
    """queue: true went to dask-jobqueue as the bool True (the partition 'True'), a list as
    "['a', 'b']": the job asked the batch scheduler for a queue or account no one named (the
    g44 review of 6c08738). Refused naming the key; null is the site's default."""
    text = f"cluster:\n  kind: slurm\n  jobqueue:\n    {typed}\n"
    key = typed.split(":")[0]
    with pytest.raises(ValueError, match=f"cluster.jobqueue.{key} must be a name"):
        load_config(_write(tmp_path, text))
    assert load_config(_write(tmp_path, text.replace(typed, f"{key}: null")))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("cluster: {kind: local, address: 'tcp://h:1'}", "cluster.address only applies"),
        ("cluster: {kind: slurm, scheduler: threads}", "cluster.scheduler only applies"),
        ("cluster: {kind: distributed, address: 'tcp://h:1', jobs: 2}", "cluster.jobs only"),
        ("cluster: {jobqueue: {cores: 1}}", "cluster.jobqueue only applies"),
        ("cluster: {kind: distributed}", "needs cluster.address"),
    ],
)
def test_cluster_keys_must_fit_the_kind(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        load_config(_write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("algorithm: {nhsize: 9\n", "not valid YAML"),
        ("algorithm: {nhsize: 9}\nalgorithm: {nhsize: 5}\n", "duplicate key 'algorithm'"),
        ("algorithm:\n  nhsize: 9\n  nhsize: 5\n", "duplicate key 'nhsize'"),
        ("- algorithm\n", "must hold a mapping"),
    ],
)
def test_bad_files(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        load_config(_write(tmp_path, text))


@pytest.mark.parametrize("kind", ["/dev/zero", "huge"])
def test_a_config_file_that_is_not_a_few_lines_is_refused(tmp_path, kind):
    """``--config /dev/zero`` was read until the memory ran out (a MemoryError, or the OOM
    killer); a file of many megabytes was read whole (an adversarial run on names,
    2026-12-06)."""
    path = "/dev/zero"
    if kind == "huge":
        path = tmp_path / "huge.yaml"
        path.write_text("# " + "x" * (2 << 20) + "\nalgorithm: {nhsize: 5}\n")
    with pytest.raises(ValueError, match=r"config file '.*' holds more than 1048576 characters"):
        load_config(path)


def test_a_config_file_nested_too_deeply_is_refused_naming_it(tmp_path):
    """YAML lists nested 50000 deep (well under the size limit) stopped the CLI with
    'maximum recursion depth exceeded while calling a Python object', exit 1, naming no file
    (a review, 2026-12-06)."""
    path = tmp_path / "deep.yaml"
    path.write_text("algorithm: " + "[" * 50000 + "]" * 50000 + "\n")
    with pytest.raises(ValueError, match=r"config file '.*deep.yaml' is nested too deeply"):
        load_config(path)


def test_a_config_file_that_is_a_socket_is_refused_naming_it(tmp_path, monkeypatch):
    """``--config`` naming a UNIX socket stopped the CLI with "[Errno 6] No such device or
    address", exit 1 (a review, 2026-12-06); a pipe (``--config <(...)``) is still read."""
    import socket

    monkeypatch.chdir(tmp_path)  # a socket's path is at most 108 bytes: bound relative
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock.yaml")
    with pytest.raises(ValueError, match=r"config file 'sock.yaml' is not a file, expected"):
        load_config("sock.yaml")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_config_that_is_a_named_pipe_nobody_writes_to_is_refused_not_waited_on(tmp_path):
    """``--config`` naming a named pipe no program writes to waited forever in ``open()``
    (a review, 2026-12-06): refused within ``_PIPE_WAIT_S``, exit 2, nothing written. One
    a program writes to, and a pipe that has its writer (``--config <(...)``), are read."""
    import subprocess
    import threading
    import time

    from safety_util import cli, one_line_error

    fifo = tmp_path / "run.yaml"
    os.mkfifo(fifo)
    began = time.monotonic()
    proc = cli("fuse", "--config", fifo, tmp_path / "src.zarr", tmp_path / "out.zarr",
               timeout=20)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "is a named pipe that no program wrote to within 2 s" in one_line_error(proc)
    assert time.monotonic() - began < 20 and sorted(os.listdir(tmp_path)) == ["run.yaml"]

    def write_later():
        time.sleep(0.3)
        fifo.write_text("algorithm: {nhsize: 5}\n")

    writer = threading.Thread(target=write_later)
    writer.start()
    assert load_config(fifo).algorithm.nhsize == 5
    writer.join()
    substituted = subprocess.run(  # bash's process substitution: /dev/fd/63
        ["bash", "-c", f'"{sys.executable}" -c "import sys; from fstack_dask._cli.config '
         'import load_config; print(load_config(sys.argv[1]).algorithm.nhsize)" '
         '<(echo "algorithm: {nhsize: 7}")'],
        capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert substituted.stdout.strip() == "7", substituted.stderr


@pytest.mark.parametrize("value", ["2026-13-01", "1" * 5000])
def test_a_config_value_python_cannot_hold_is_refused_naming_the_file(tmp_path, value):
    """A timestamp with a 13th month, an integer of 5000 digits: PyYAML's ValueError went out
    as it was ('month must be in 1..12'), naming neither the file nor the key (the key since
    g47)."""
    path = tmp_path / "odd.yaml"
    path.write_text(f"algorithm:\n  nhsize: {value}\n")
    with pytest.raises(ValueError, match=r"config file '.*odd.yaml': algorithm.nhsize cannot be "):
        load_config(path)


def test_a_config_file_of_aliases_of_aliases_is_refused_naming_it(tmp_path):
    """600 bytes of YAML aliases of aliases (a 'billion laughs') under input.storage_options
    loaded as 10^9 values by reference, which fsspec's token of the options spelled out: the
    CLI grew to GBs for minutes on an s3:// source, naming nothing. Refused in one line
    naming the file (exit 2); a file that repeats a value a few times is read as before."""
    lines = ["    a0: &a0 [" + ", ".join(["x"] * 10) + "]"]
    lines += [f"    a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * 10) + "]" for k in range(1, 9)]
    path = tmp_path / "laughs.yaml"
    path.write_text("input:\n  storage_options:\n" + "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"config file '.*laughs.yaml' repeats its values"):
        load_config(path)
    res = subprocess.run([sys.executable, "-m", "fstack_dask", "info", "s3://nowhere/src.zarr",
                          "--config", str(path)], capture_output=True, text=True, timeout=60,
                         check=False)  # fmt: skip
    assert res.returncode == 2 and "repeats its values" in res.stderr, res.stderr
    path.write_text("input:\n  storage_options:\n" + "\n".join(lines[:2]) + "\n")
    assert load_config(path).input.storage_options["a1"][9] == ["x"] * 10


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_local_cluster_context_yields_the_scheduler_name():
    cfg = config_from_mapping({"cluster": {"scheduler": "synchronous"}})
    with cfg.cluster_context() as scheduler:
        assert scheduler == "synchronous"


def test_distributed_cluster_context_yields_a_client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster:
        cfg = config_from_mapping(
            {"cluster": {"kind": "distributed", "address": cluster.scheduler_address}}
        )
        with cfg.cluster_context() as client:
            assert isinstance(client, Client)
            assert client.submit(sum, [1, 2]).result() == 3
        assert client.status == "closed"
        assert cluster.status.name == "running"  # the scheduler is left running


def _fake_jobqueue(calls: dict) -> types.ModuleType:
    """A dask_jobqueue stand-in whose clusters are real LocalClusters, recording their use."""
    from distributed import LocalCluster

    class _Fake(LocalCluster):
        def __init__(self, **kwargs):
            calls["kwargs"] = kwargs
            super().__init__(n_workers=0, processes=False, dashboard_address=":0")

        def scale(self, n=0, jobs=None, **kwargs):
            if jobs is None:  # LocalCluster's own calls
                return super().scale(n, **kwargs)
            calls.setdefault("jobs", []).append(jobs)
            return super().scale(1)

        def close(self, *args, **kwargs):
            calls["closed"] = True
            return super().close(*args, **kwargs)

    module = types.ModuleType("dask_jobqueue")
    module.SLURMCluster = type("SLURMCluster", (_Fake,), {})
    module.PBSCluster = type("PBSCluster", (_Fake,), {})
    return module


@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_jobqueue_cluster_context(monkeypatch, kind):
    from distributed import Client

    calls: dict = {}
    monkeypatch.setitem(sys.modules, "dask_jobqueue", _fake_jobqueue(calls))
    cfg = load_config(CONFIGS / f"{kind}.yaml")
    with open_scheduler(cfg) as client:
        assert isinstance(client, Client)
        assert client.submit(sum, [2, 3]).result(timeout=30) == 5
        assert (
            client.cluster.__class__.__name__
            == {"slurm": "SLURMCluster", "pbs": "PBSCluster"}[kind]
        )
    assert calls["kwargs"] == dict(cfg.cluster.jobqueue)  # verbatim
    assert calls["jobs"] == [10]
    assert calls.get("closed") is True
    assert client.status == "closed"


def test_jobqueue_missing_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # import fails
    cfg = config_from_mapping({"cluster": {"kind": "slurm"}})
    # a missing extra, as every other one (exit 2; it was a RuntimeError, exit 1)
    with pytest.raises(MissingExtraError, match=r"pip install \"fstack_dask\[jobqueue\]\""):
        with cfg.cluster_context():
            pass


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("algorithm: {nhsize: 011}", "nhsize", 11),  # YAML 1.1: octal, 9
        ("algorithm: {nhsize: 0o13}", "nhsize", 11),
        ("algorithm: {nhsize: 0xB}", "nhsize", 11),
        ("algorithm: {alpha: 2e-1}", "alpha", 0.2),  # YAML 1.1: a string (no dot), refused
        ("algorithm: {sth: 1e1}", "sth", 10.0),
        ("algorithm: {sth: -.5}", "sth", -0.5),
        ("resources: {stall_timeout: 1e3}", "stall_timeout", 1000.0),
    ],
)
def test_numbers_are_read_as_yaml_1_2_reads_them(tmp_path, text, key, value):
    """PyYAML reads YAML 1.1: ``nhsize: 011`` was octal 9 and ``sth: 13:00`` sexagesimal 780,
    both fused silently with a value that was not typed; ``alpha: 2e-1`` was a string, refused
    as one."""
    config = load_config(_write(tmp_path, text))
    section = config.resources if key == "stall_timeout" else config.algorithm
    got = getattr(section, key)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "algorithm: {sth: 13:00}",
            "algorithm.sth must be a finite number (dB) or auto, got '13:00'",
        ),
        (
            "algorithm: {nhsize: 1:30}",
            "algorithm.nhsize must be an integer >= 1 or auto, got '1:30'",
        ),
        (
            "algorithm: {nhsize: 0b1011}",
            "algorithm.nhsize must be an integer >= 1 or auto, got '0b",
        ),
        ("resources: {stall_timeout: '1:00:00'}", "resources.stall_timeout must be a positive"),
    ],
)
def test_a_sexagesimal_or_binary_number_is_refused_naming_the_key(tmp_path, text, says):
    path = _write(tmp_path, text)
    done = subprocess.run([sys.executable, "-m", "fstack_dask", "info", "--config", str(path),
                           str(tmp_path / "none.zarr")], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"fstack-dask: error: config file '{path}': {says}"), lines


def test_the_exit_status_table_names_every_status_the_help_lists():
    """configs/README's table stopped at 143, where --help (and the README) list 128 + N for
    SIGHUP, SIGUSR1/2 and SIGXCPU: a batch job's script reading 138 found it nowhere there."""
    import re

    helped = subprocess.run([sys.executable, "-m", "fstack_dask", "--help"], capture_output=True,
                            text=True, timeout=60, check=True).stdout  # fmt: skip
    section = helped.split("exit status:", 1)[1].split("\n\n", 1)[0]
    listed = re.findall(r"^\s{2}(\d+(?:\+N)?)\s", section, flags=re.M)
    table = (CONFIGS / "README.md").read_text().split("## Exit status of `fstack-dask`", 1)[1]
    rows = re.findall(r"^\| (\d+(?: \+ N)?) \|", table, flags=re.M)
    assert sorted(r.replace(" ", "") for r in rows) == sorted(listed)


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        ('resources: {memory_per_task: !!python/object:os.system "x"}',
         "resources.memory_per_task", "could not determine a constructor for the tag"),
        ("algorithm: {nhsize: !foo 5}", "algorithm.nhsize", "'!foo'"),
        ("algorithm: {nhsize: !!int 5.5}", "algorithm.nhsize", "'5.5'"),
        ("algorithm: {alpha: !!float abc}", "algorithm.alpha", "'abc'"),
        ("algorithm: {focus: [1, !!int x]}", "algorithm.focus", "'x'"),
        ("cluster: {kind: slurm, jobqueue: {cores: !!python/tuple [1]}}",
         "cluster.jobqueue.cores", "python/tuple"),
        ("resources: !!python/object:x {}", "resources", "python/object:x"),
    ],
)  # fmt: skip
def test_a_yaml_tag_a_config_cannot_read_is_refused_naming_the_key(tmp_path, text, key, says):
    """An explicit tag that YAML's safe loader cannot construct gave "not valid YAML: could not
    determine a constructor ... at line 1, column 30" or Python's "invalid literal for int()"
    alone, naming no key. A tag it can construct (``!!float 5``,
    ``!!str 5``) gives a value the key's own check judges, as before."""
    path = _write(tmp_path, text + "\n")
    with pytest.raises(ValueError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"config file {str(path)!r}: {key} cannot be read: "), message
    assert says in message and "\n" not in message
    with pytest.raises(ValueError, match=r"algorithm\.nhsize must be an integer"):
        load_config(_write(tmp_path, "algorithm: {nhsize: !!float 5}\n"))
    with pytest.raises(ValueError, match=r"not valid YAML: duplicate key 'nhsize'"):
        load_config(_write(tmp_path, "algorithm: {nhsize: 5, nhsize: 6}\n"))


def _fuse_with(tmp_path, config, *options):
    from fstack_dask import synthetic_stack, write_stack

    src = tmp_path / "in.zarr"
    if not src.exists():
        write_stack(src, synthetic_stack((32, 32), 5, dtype="uint16").stack.transpose(2, 0, 1),
                    axes="zyx")  # fmt: skip
    cfg = _write(tmp_path, config)
    command = [sys.executable, "-m", "fstack_dask", "fuse", str(src), str(tmp_path / "o.zarr"),
               "--config", str(cfg), "--no-progress", *options]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_a_memory_per_task_without_unit_is_told_as_the_config_key(tmp_path):
    """``resources.memory_per_task: 1.5`` (GiB meant) ran as 1 byte and was refused as
        "--memory-per-task 1 bytes cannot hold the smallest block": the option, not given, named
    . A fraction of a byte is refused naming the key; a whole
        number too small names the key where the file gave it, the option where that did."""
    done = _fuse_with(tmp_path, "resources: {memory_per_task: 1.5}\n")
    assert done.returncode == 2 and not (tmp_path / "o.zarr").exists()
    assert done.stderr.splitlines() == [
        f"fstack-dask: error: config file {str(tmp_path / 'run.yaml')!r}: "
        "resources.memory_per_task must be a whole number of bytes or a size with its unit "
        "such as '1.5GiB', got 1.5"
    ]
    done = _fuse_with(tmp_path, "resources: {memory_per_task: 1000}\n")
    assert done.returncode == 2 and not (tmp_path / "o.zarr").exists()
    assert done.stderr.startswith(
        "fstack-dask: error: resources.memory_per_task 1000 bytes cannot hold the smallest block"
    ), done.stderr
    done = _fuse_with(tmp_path, "resources: {memory_per_task: 1000}\n", "--memory-per-task", "2000")
    assert done.stderr.startswith(
        "fstack-dask: error: --memory-per-task 2000 bytes cannot hold the smallest block"
    ), done.stderr
    with pytest.raises(ValueError, match=r"^memory_per_task must be a whole number of bytes"):
        fuse_zarr(tmp_path / "in.zarr", tmp_path / "o.zarr", memory_per_task=1.5)
    assert not (tmp_path / "o.zarr").exists()
