"""What became of a dask-jobqueue cluster's batch jobs while a run has no worker: ended (a
walltime, ``scancel``), held, pending for a reason that does not clear by itself, or ended
without their worker ever joining, each said in the stall's one line (:mod:`.waiting`)."""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import time
import weakref
from typing import Any

from . import pbs_jobs

log = logging.getLogger(__name__)

__all__ = ["ended", "jobs", "remember", "said", "stuck"]


def jobs(cluster: Any) -> list[Any]:
    """A dask-jobqueue cluster's batch jobs (none for another cluster)."""
    if not hasattr(cluster, "job_script"):
        return []
    # copied at once (no Python code runs while list() walks a dict): distributed's event
    # loop adds and removes jobs while this waiting thread looks
    found = list(getattr(cluster, "workers", {}).values())
    return [j for j in found if hasattr(j, "job_id")]


#: each cluster's job ids by job name, seen while it ran: distributed forgets a job that
#: ended, and a user's own cluster (not the command line's) keeps no id of it
_SEEN: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()


def remember(cluster: Any) -> None:
    """Note the ids of the cluster's batch jobs, for the line that names those that ended
    (it said "(1 of them)" for a user's own ``SLURMCluster``)."""
    if not hasattr(cluster, "job_script"):
        return
    named = {str(n): str(j.job_id) for n, j in list(getattr(cluster, "workers", {}).items())
             if getattr(j, "job_id", None) is not None}  # fmt: skip
    if named:
        try:
            _SEEN.setdefault(cluster, {}).update(named)
        except TypeError:  # (a cluster that cannot be weakly referred to: no ids kept)
            pass


def ended(cluster: Any) -> list[str]:
    """The batch jobs of a dask-jobqueue cluster scaled to a fixed number of jobs that all
        ended (a walltime, ``scancel``, a preemption's requeue), their ids where known, or [] while
        one may still bring a worker: distributed closes a lost worker's job after
        ``distributed.deploy.lost-worker-timeout`` (15 s) and starts none in its place, so the
        run waited out the stall timeout (600 s), then told to start workers with ``dask worker``
    . An adaptive cluster submits new jobs (checked: a walltime's end)."""
    if cluster is None or not hasattr(cluster, "job_script") or _adaptive(cluster):
        return []
    lock = getattr(cluster, "_lock", None)  # held while it submits jobs: a job is in
    # cluster.workers only once its sbatch answered (a busy controller: seconds), and a
    # scale() just before the run was taken for jobs that all ended
    if getattr(cluster, "_correct_state_waiting", None) is not None or (
        lock is not None and callable(getattr(lock, "locked", None)) and lock.locked()
    ):
        return []
    spec = dict(getattr(cluster, "worker_spec", {}))  # (copied at once, as in jobs)
    workers = dict(getattr(cluster, "workers", {}))
    if not spec or any(getattr(workers.get(name), "job_id", None) for name in spec):
        return []  # none planned, or one still queued or running
    gone = [name for name in spec if name not in workers]
    known = dict(_SEEN.get(cluster, {})) if _weak(cluster) else {}
    for name in gone:
        known.update(getattr(spec[name].get("cls"), "submitted", {}))
    return [str(known.get(name, "?")) for name in gone]


def _adaptive(cluster: Any) -> bool:
    adaptive = getattr(cluster, "_adaptive", None)  # (distributed's own test of it)
    return adaptive is not None and getattr(adaptive, "periodic_callback", None) is not None


def _weak(cluster: Any) -> bool:
    try:
        weakref.ref(cluster)
    except TypeError:
        return False
    return True


# squeue's reasons for a pending job that no wait clears: only the site (a partition brought
# up) or the job's own request (its walltime, cores, dependency) changes them. Not these:
# Resources, Priority, BeginTime, Dependency (clear as the queue moves); limits on the jobs
# running at once (AssocMaxJobsLimit, AssocGrp...: clear as other jobs end); ReqNodeNotAvail
# (also said of a job merely waiting where some nodes of its partition are down, and of one
# waiting for a maintenance reservation to end), and PartitionNodeLimit for the same reason
# (squeue's manual: it "can also indicate that required nodes are DOWN or DRAINED", an
# admin's drain or reboot); BadConstraints, said while no node has the features a job
# asks for and cleared as one gets them (a node that registers them as it starts, an admin's
# scontrol update: seen on this machine's SLURM).
_NEVER = {
    "PartitionTimeLimit": "their walltime is beyond their partition's time limit (sinfo -o "
    "'%P %l'): lower {where}walltime, or choose another queue",
    "DependencyNeverSatisfied": "the job they depend on failed or was cancelled: check "
    "--dependency in {where}job_extra_directives",
    "InvalidAccount": "their account is not valid",
    "InvalidQOS": "their QOS is not valid",
}
# squeue's reasons for a pending job whose partition the site brought down or made inactive,
# as for a maintenance, and brings back up: SLURM keeps the jobs queued for it, and the run
# waits for it to its stall timeout, which then says it (a user's --stall-timeout of 2 h was
# cut short after 25 s, and a maintenance of an hour failed every run that was queued for it)
_SITE = {
    "PartitionDown": "their partition is down (sinfo), as for a maintenance: rerun once the "
    "site brings it up, give the run a longer stall timeout to wait for it, or choose another "
    "{where}queue",
    "PartitionInactive": "their partition is inactive (sinfo), as for a maintenance: rerun "
    "once the site brings it up, give the run a longer stall timeout to wait for it, or choose "
    "another {where}queue",
}

# a limit on each job (its walltime, cores, nodes, memory: AssocMaxWallDurationPerJobLimit,
# QOSMaxCpuPerJobLimit, QOSMinMemory ...): the job alone passes it, whatever else runs. Not
# the group limits (AssocGrpCPURunMinutesLimit, QOSGrpCPUMinutesLimit ...): they clear as the
# user's other jobs run and end, and were taken for per-job ones by their "Min"
_PER_JOB = re.compile(r"(Assoc|QOS)Max\w*PerJob\w*|QOSMin\w*")
_PER_JOB_HINT = (
    "they ask for more than the site lets one job have: lower {where}walltime, cores or memory"
)

# holds no wait clears, by squeue's reason (its %r says SLURM's own words where it set some, not
# JobHeldUser): the user's (sbatch --hold, the job script's: see _waited); a requeue held
# (scontrol requeuehold); SLURM's own after the job's node failed to launch it, or after it was
# requeued too often. Each said what to do; the last two were waited for the stall timeout, 600
# s. Not JobHeldAdmin, nor a user's hold made after the jobs were queued: an
# administrator holds jobs for a maintenance, a user to let another job go first, and releases
# them after it; the run waits for them (cancelling them lost the run, and their place in the
# queue) and the stall timeout says it.
_HELD = {
    "JobHeldUser": "remove --hold from {where}job_extra_directives if it is there",
    "job requeued in held state": "they were requeued held (scontrol requeuehold)",
    "launch failed requeued held": "SLURM held them when their node failed to launch them "
    "(sinfo -R says whether it drained that node): tell the site",
    "JobHoldMaxRequeue": "SLURM held them after they were requeued too many times",
    "JobHeldAdmin": "an administrator held them (a maintenance, say): rerun once the site "
    "releases them, or give the run a longer stall timeout",
}

# what to do of each of PBS's hold types (qstat -f's Hold_Types), said at once for the job
# script's own (u, -h), at the stall timeout for the others
_PBS_HELD = {
    "u": "remove -h from {where}job_extra_directives if it is there",
    "o": "an operator held them (a maintenance, say): rerun once the site releases them, or "
    "give the run a longer stall timeout",
    "s": "the system held them: a dependency (-W depend) not yet met, or PBS's own hold (qstat "
    "-f says why in its comment)",
    "?": "qstat -f says why in its comment",
}

_ASK_EVERY = 5.0  # seconds between squeue's answers asked for (not at each poll of the run)
# seconds a reason that does not clear is seen before the run stops for it: squeue's reason is
# a scheduling pass old, and a pass may not yet have seen what changed
_STUCK_FOR = 15.0
_asked: dict[int, tuple[float, dict[str, tuple[str, str]] | None]] = {}
_since: dict[int, tuple[Any, float, float]] = {}


def stuck(cluster: Any, timed_out: bool = False) -> tuple[str, dict[str, str]]:
    """How every submitted job of a SLURM cluster fails to bring a worker, with squeue's reason
    by job id: ``"held"`` (a hold of :data:`_HELD`: at once), ``"pending"`` (a reason of
    :data:`_NEVER`, seen for :data:`_STUCK_FOR` seconds) or ``"gone"`` (ended with no worker
    joining, a job failing at start-up: seen for longer than distributed takes to forget a job
    that had one). A run waited out the stall timeout, 600 s, for each.
    ("", {}) otherwise, or where squeue does not answer. ``timed_out``: the run's
    stall timeout is over, and what squeue says now is said (an administrator's hold too)."""
    found = jobs(cluster)
    ids = [str(j.job_id) for j in found if j.job_id is not None]
    system = _system(found)
    if not ids or len(ids) < len(found) or not system:
        return "", {}
    if dict(getattr(cluster, "scheduler_info", {}) or {}).get("workers"):
        return "", {}  # a worker is there (its job's end not yet seen by the scheduler)
    if system == "pbs":
        asked = pbs_jobs.asks_hold(_script(cluster), str(getattr(found[0], "submit_command", "")))
        kind, reasons = _pbs_kind(_queue(cluster, ids), ids, asked, timed_out)
    else:
        rows = _queue(cluster, ids)
        kind, reasons = _kind(rows, ids, _waited(cluster, timed_out))
        _note_site_wait(cluster, rows, ids)
    key, now = (kind, tuple(sorted(reasons.items()))), time.monotonic()
    seen, first, last = _since.get(id(cluster), (None, now, now))
    if seen != key or now - last > 3 * _ASK_EVERY:  # (not seen so since: counted anew)
        first = now
    _since[id(cluster)] = (key, first, now)
    wait = {"held": 0.0, "pending": _STUCK_FOR, "gone": _lost_worker_timeout() + 5.0}
    if not kind or (now - first < wait[kind] and not timed_out):
        return "", {}
    return kind, reasons


_noted: set[int] = set()


def _note_site_wait(cluster: Any, rows: dict[str, tuple[str, str]] | None, ids: list[str]) -> None:
    """Say once, as the run waits, that its jobs wait for a partition the site brought down
    (:data:`_SITE`): the run waits for it to its stall timeout, 600 s by default, and said
    nothing meanwhile."""
    down = sorted({_head(r) for i, (s, r) in (rows or {}).items() if i in ids and s == "PENDING"
                   and _head(r) in _SITE})  # fmt: skip
    if down and id(cluster) not in _noted:
        _noted.add(id(cluster))
        log.info(
            "the run's batch job(s) are pending (%s): their partition is down, and the "
            "run waits for the site to bring it up, to its stall timeout",
            ", ".join(down),
        )


def _queue(cluster: Any, ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """squeue's state and reason of each job still queued or running, by id; None where it
    did not answer. Asked every :data:`_ASK_EVERY` seconds at most, also after a failure: a
    failing squeue (a controller overloaded) was asked at each poll, 4 times a second."""
    asked, rows = _asked.get(id(cluster), (-_ASK_EVERY, None))
    if time.monotonic() - asked < _ASK_EVERY and (rows is None or set(rows) <= set(ids)):
        return rows
    if _system(jobs(cluster)) == "pbs":
        rows = pbs_jobs.states(ids)
        _asked[id(cluster)] = (time.monotonic(), rows)
        return rows
    try:
        res = subprocess.run(
            ["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T %r", *_clusters(cluster)],
            capture_output=True, text=True, timeout=10, check=False, env=_own_squeue(),
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        res = None
    if res is None:
        rows = None
    elif res.returncode == 0:
        rows = _rows(res.stdout)
    else:  # every id unknown: all ended and forgotten (MinJobAge); another failure: unknown
        rows = {} if "Invalid job id" in res.stderr else None
    _asked[id(cluster)] = (time.monotonic(), rows)
    return rows


def _system(found: list[Any]) -> str:
    """The batch system of a cluster's jobs by how dask-jobqueue cancels them: "slurm", "pbs"
    (PBS Pro, OpenPBS, Torque: their jobs' holds are read since a run waited the stall
    timeout, 600 s, for jobs its job script held, ``#PBS -h``), or "" for another."""
    command = str(getattr(found[0], "cancel_command", "")).split()[:1] if found else []
    return {"scancel": "slurm", "qdel": "pbs"}.get(command[0] if command else "", "")


def _pbs_kind(
    rows: dict[str, tuple[str, str]] | None, ids: list[str], asked: bool, timed_out: bool
) -> tuple:
    """``"held"`` where qstat says every job held (``job_state = H``) by the hold the job
    script or qsub asks for (``asked``: ``-h``, a user hold, ``Hold_Types = u``), or by any
    hold once the stall timeout is over. A job waiting for its start time (``-a``: ``W``) or
    for a dependency (``-W depend=``: held by the system, ``s``) is waited for, as one an
    operator (``o``) or its user (``qhold``) held once queued."""
    if not rows or any(rows.get(i, ("",))[0] != "H" for i in ids):
        return "", {}
    if timed_out or (asked and all("u" in rows[i][1] for i in ids)):
        return "held", {i: f"Hold_Types={rows[i][1]}" for i in ids}
    return "", {}


def _rows(out: str) -> dict[str, tuple[str, str]]:
    """squeue's lines by the job id sbatch said: a job array's (``--array`` in
    job_extra_directives) are listed as its tasks, 123_[0-3] pending, 123_4 running, and a
    pending one was taken for a job gone; a task not pending is the one kept."""
    rows: dict[str, tuple[str, str]] = {}
    for cells in (line.split(None, 2) for line in out.splitlines()):
        if len(cells) < 2:
            continue
        job = re.split(r"[_+]", cells[0])[0]  # (123_4: an array's task; 123+0: a het job's)
        if rows.get(job, ("PENDING",))[0] == "PENDING":
            rows[job] = (cells[1], cells[2] if len(cells) > 2 else "")
    return rows


# a word of a #SBATCH line naming the cluster its job goes to (sbatch -M/--clusters): -M
# also among sbatch's short flags (-vM), its value the rest of the word or the next word
_CLUSTERS_WORD = re.compile(r"-[hOQsvVW]*M(.*)|--clusters?(?:=(.*))?")


def _clusters(cluster: Any) -> list[str]:
    """squeue's ``-M`` for the SLURM cluster sbatch sent the jobs to, where not this one
    (``--clusters`` in job_extra_directives, SBATCH_CLUSTERS or SLURM_CLUSTERS, which sbatch
    takes before the script's): squeue asks its own cluster otherwise, which knows none of
    them, "Invalid job id", and a healthy run stopped after 20 s, "ended without their worker
    ever joining"."""
    named = os.environ.get("SBATCH_CLUSTERS") or os.environ.get("SLURM_CLUSTERS")
    if not named:
        named = _script_clusters(_directives(_script(cluster)))
    return ["-M", named] if named else []


def _script_clusters(words: list[str]) -> str:
    """The clusters the last ``-M``/``--clusters`` of a job script's directives (``words``)
    names, or "": read only as a line's first option, ``-N 1 --cluster=other`` or ``-vM
    other`` sent squeue to its own cluster, and a healthy run stopped after 20 s, "ended
    without their worker ever joining"; one after the script's first command, which sbatch
    ignores, sent it to a cluster that has none of them."""
    named = ""
    for at, word in enumerate(words):
        found = _CLUSTERS_WORD.fullmatch(word)
        if found:
            value = found.group(1) or found.group(2)  # (-Mother, --clusters=other)
            named = value or (words[at + 1] if at + 1 < len(words) else "")
    return named


# a word of a #SBATCH line asking for a hold: -H, also among sbatch's other short flags
# (-vH) or followed by more options or one's value (-Hp debug: a hold, then -p), --hold or
# an abbreviation of it getopt takes (--hol, --ho)
_HOLD_WORD = re.compile(r"-[hkOQsvVW]*H\S*|--ho(?:ld?)?")


def _waited(cluster: Any, timed_out: bool) -> set[str]:
    """The holds the run waits for, to its stall timeout: an administrator's (a maintenance's,
    released after it), and a user's made after the jobs were queued (``scontrol hold`` or
    ``uhold`` to let another job go first, then ``release``: the run stopped after 10 s and
    cancelled them). A hold the job script asks for is said at once: no job of the run
    ever starts."""
    if timed_out:
        return set()
    if _script_holds(_script(cluster)):
        return {"JobHeldAdmin", *_SITE}
    return {"JobHeldAdmin", "JobHeldUser", *_SITE}


def _script_holds(script: str) -> bool:
    """Whether sbatch holds the jobs of ``script``, as it reads its directives: any option of
    a ``#SBATCH`` line (``-N 1 --hold``, ``--hol``: a hold said only as the line's first word,
    ``--hold``, was waited for 600 s), and only before the script's first command (a
    ``#SBATCH --hold`` after it, which sbatch ignores, stopped a run its user held for a
    while). Not SBATCH_HOLD: sbatch reads no such variable (SLURM 22.05), and one set to 0
    stopped such a run too."""
    return any(_HOLD_WORD.fullmatch(w) for w in _directives(script))


def _directives(script: str) -> list[str]:
    """The words of the options of a job script's ``#SBATCH`` lines, as sbatch reads them:
    each line's, and only before the script's first command; a line is one wherever it begins
    ``#SBATCH``, also without a space after it (``#SBATCH--hold``, a hold to sbatch, was waited
    for 600 s)."""
    words: list[str] = []
    for line in script.splitlines()[1:]:
        if line.strip() and not line.lstrip().startswith("#"):
            break  # (sbatch reads no directive after the first command)
        if line.startswith("#SBATCH"):
            words += _words(line)[1:]
    return words


def _words(line: str) -> list[str]:
    """The words of a ``#SBATCH`` line as sbatch reads them: quoted ones whole, the rest of the
    line from an unquoted ``#`` a comment (``--comment="a # b" --hold``: a hold, which was
    taken for a comment and waited for 600 s)."""
    try:
        return ["#SBATCH", *shlex.split(line[len("#SBATCH") :], comments=True)]
    except ValueError:  # (an unmatched quote: sbatch refuses the script)
        return line.split()


def _script(cluster: Any) -> str:
    try:
        return str(cluster.job_script())
    except Exception:  # (a cluster that cannot write its script here: nothing it asks)
        return ""


def _own_squeue() -> dict[str, str]:
    """The environment without the user's SQUEUE_* defaults: SQUEUE_STATES=RUNNING (or
    SQUEUE_PARTITION, SQUEUE_USERS ...) in a login script filters the jobs squeue says, and
    a healthy run's pending job, not listed, was taken for one gone."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SQUEUE_")}


def _kind(rows: dict[str, tuple[str, str]] | None, ids: list[str], waited: set[str]) -> tuple:
    if rows is None:
        return "", {}
    if not any(i in rows for i in ids):
        return "gone", dict.fromkeys(ids, "")
    pending = {i: r for i, (s, r) in rows.items() if s == "PENDING" and i in ids}
    if len(pending) < len(ids):
        return "", {}  # one runs (its worker joining), or has ended beside others queued
    if any(_head(r) in waited for r in pending.values()):
        return "", {}  # (a hold its maker releases: waited for)
    if all(_head(r) in _HELD for r in pending.values()):
        return "held", pending
    if all(_never_clears(r) or _head(r) in _HELD or _head(r) in _SITE for r in pending.values()):
        return "pending", pending  # (_SITE's: waited for until the stall timeout)
    return "", {}


def _head(reason: str) -> str:
    return reason.split(",")[0].strip()


def _never_clears(reason: str) -> bool:
    return _head(reason) in _NEVER or bool(_PER_JOB.fullmatch(_head(reason)))


def _lost_worker_timeout() -> float:
    import dask
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.deploy.lost-worker-timeout")))


def said(cluster: Any, timed_out: bool = False) -> str:
    """What a cluster whose batch jobs all ended, are all held, all pending for good or all
    gone without a worker says, or "" for another (``timed_out``: as :func:`stuck`)."""
    gone = ended(cluster)
    kind, reasons = ("ended", {}) if gone else stuck(cluster, timed_out)
    if not kind:
        return ""
    ids = gone or list(reasons)
    named = f"({', '.join(ids)})" if "?" not in ids else f"({len(ids)} of them)"
    ours = hasattr(getattr(cluster, "job_cls", None), "submitted")  # (telling_refusals')
    where = "cluster.jobqueue." if ours else "the cluster's "
    pbs = _system(jobs(cluster)) == "pbs"
    cancelled = (
        "so they are cancelled with the run"
        if ours
        else f"so cancel them (cluster.close(), or {'qdel' if pbs else 'scancel'} {' '.join(ids)})"
    )
    if kind == "ended":
        return (
            f"cluster; its batch job(s) {named} ended (their walltime reached, scancel, a "
            "preemption) and a cluster of a fixed number of jobs starts none in their place: "
            f"lengthen {where}walltime if it was reached"
        )
    told = _HELD if kind == "held" else {h: _hint(h) for h in map(_head, reasons.values())}
    if pbs:  # (a hint for each of the hold types qstat says, Hold_Types=uo)
        told = {h: "; ".join(_PBS_HELD.get(t, _PBS_HELD["?"]) for t in h[len("Hold_Types=") :])
                for h in map(_head, reasons.values())}  # fmt: skip
    todo = "; ".join(sorted({told[_head(r)].format(where=where) for r in reasons.values()}))
    if kind == "held":
        return (
            f"cluster; its batch job(s) {named} are held ({_listed(reasons)}), and a held job "
            f"starts only once released ({'qrls' if pbs else 'scontrol release'}), {cancelled}: "
            f"{todo}"
        )
    if kind == "gone":
        return (
            f"cluster; its batch job(s) {named} ended without their worker ever joining "
            f"({_ended_as(cluster, ids)}it failed to start: the job's python, its "
            "job_script_prologue, the scheduler out of reach), and none comes in their place: "
            "see their output, "
            f"slurm-<id>.out in {where}log_directory or the folder the cluster was made in"
        )
    if all(_head(r) in _SITE for r in reasons.values()):  # (said at the stall timeout)
        return (
            f"cluster; its batch job(s) {named} are still pending, waiting for the site "
            f"({_listed(reasons)}), {cancelled}: {todo}"
        )
    return (
        f"cluster; its batch job(s) {named} are pending for a reason that does not clear by "
        f"itself ({_listed(reasons)}), {cancelled}: {todo}"
    )


def _ended_as(cluster: Any, ids: list[str]) -> str:
    """How SLURM says the first of ``ids`` ended, while it keeps it (MinJobAge: 300 s by
    default; squeue lists no job that ended), as "scontrol: FAILED, NonZeroExitCode, exit code
    3:0; ", or "": JobLaunchFailure (the job's output file could not be opened on its node)
    leaves no output to see. Asked of the SLURM cluster sbatch sent the jobs
    to (:func:`_clusters`: asked its own, scontrol knew none of them, and it was left out)."""
    try:
        res = subprocess.run(["scontrol", *_clusters(cluster), "-o", "show", "job", ids[0]],
                             capture_output=True, text=True, timeout=10,
                             check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ""
    found = dict(re.findall(r"\b(JobState|Reason|ExitCode)=(\S+)", res.stdout))
    if res.returncode != 0 or "JobState" not in found:
        return ""
    told = [found["JobState"], found.get("Reason", "None"), f"exit code {found.get('ExitCode')}"]
    return f"scontrol: {', '.join(t for t in told if t != 'None')}; "


def _hint(head: str) -> str:
    """What to do of a reason: a held job beside others pending for good was told "they ask
    for more than the site lets one job have"."""
    if head in _HELD:
        return "a held job starts only once released (scontrol release)"
    return _NEVER.get(head) or _SITE.get(head) or _PER_JOB_HINT


def _listed(reasons: dict[str, str]) -> str:
    return ", ".join(sorted({_head(r) for r in reasons.values()}))
