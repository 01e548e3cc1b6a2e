#!/usr/bin/env bash
# Start a real single-node SLURM cluster (munge + slurmctld + slurmd) on this
# machine, for the `slurm`-marked tests (tests/test_slurm.py).
#
# * Debian/Ubuntu, run as root, no systemd needed: daemons are started directly.
# * Idempotent: when munge and SLURM already answer, it only checks.
# * Daemons started here are recorded in $STATE_DIR/started; .ci/stop-slurm.sh
#   stops exactly those.
#
# Environment knobs:
#   SLURM_SETUP_TIMEOUT  seconds to wait for the node to become idle (default 60)
#   SLURM_SETUP_NO_APT=1 never call apt-get (fail if slurm is not installed)
set -euo pipefail

TIMEOUT="${SLURM_SETUP_TIMEOUT:-60}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
STATE_DIR=/run/fstack-slurm            # our bookkeeping (which daemons we started)
RUN_DIR=/run/slurm                     # pid files
LOG_DIR=/var/log/slurm
SPOOL_CTLD=/var/spool/slurmctld
SPOOL_D=/var/spool/slurmd
MUNGE_KEY=/etc/munge/munge.key
MUNGE_RUN=/run/munge

step() { printf '[setup-slurm] %s\n' "$*"; }
die() { printf '[setup-slurm] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

pid_alive() { # pidfile
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

proc_running() { # exact command name; no dependency on procps (pgrep)
    local c
    for c in /proc/[0-9]*/comm; do
        [ "$(cat "$c" 2>/dev/null)" = "$1" ] && return 0
    done
    return 1
}

diagnostics() {
    echo "----- diagnostics -----" >&2
    sinfo -N -l 2>&1 | sed 's/^/sinfo: /' >&2 || true
    scontrol show node 2>&1 | sed 's/^/node: /' >&2 || true
    for c in munged slurmctld slurmd; do proc_running "$c" && echo "process $c: running" >&2 || echo "process $c: NOT running" >&2; done
    for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
        [ -f "$f" ] && { echo "--- tail $f" >&2; tail -n 25 "$f" >&2; }
    done
    echo "-----------------------" >&2
}

# --------------------------------------------------------------------- install
if command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 \
        && command -v munged >/dev/null 2>&1 && command -v sinfo >/dev/null 2>&1; then
    step "install: slurm-wlm and munge already present ($(slurmctld -V 2>/dev/null || echo '?'))"
else
    [ "${SLURM_SETUP_NO_APT:-0}" = 1 ] && die "slurm not installed and SLURM_SETUP_NO_APT=1"
    step "install: apt-get install slurm-wlm munge"
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' init scripts from starting daemons (no systemd here):
    # we start them ourselves below. Only add a policy-rc.d if none exists.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt_log=/tmp/setup-slurm-apt.log
    apt_install() {
        apt-get install -y -qq --no-install-recommends slurm-wlm munge >>"$apt_log" 2>&1
    }
    # CI runs `apt-get update` first; if the lists are missing or stale the
    # first install fails, so update and try once more.
    : >"$apt_log"
    if ! apt_install; then
        step "install: retrying after apt-get update"
        if ! { apt-get update -qq >>"$apt_log" 2>&1 && apt_install; }; then
            tail -n 30 "$apt_log" >&2
            die "apt-get install failed (full log: $apt_log)"
        fi
    fi
    if [ -e /usr/sbin/policy-rc.d ] && [ -n "$(trap -p EXIT)" ]; then
        rm -f /usr/sbin/policy-rc.d; trap - EXIT
    fi
    step "install: done ($(slurmctld -V))"
fi

mkdir -p "$STATE_DIR"
touch "$STATE_DIR/started"

# ----------------------------------------------------------------------- munge
munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

if munge_ok; then
    step "munge: already running"
else
    if [ ! -s "$MUNGE_KEY" ]; then
        step "munge: creating key $MUNGE_KEY"
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile="$MUNGE_KEY" --force
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
        fi
    fi
    # munged is picky about ownership/permissions of its key and directories.
    chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge 2>/dev/null || true
    chmod 0700 /etc/munge; chmod 0400 "$MUNGE_KEY"
    mkdir -p "$MUNGE_RUN"; chown munge:munge "$MUNGE_RUN"; chmod 0755 "$MUNGE_RUN"
    rm -f "$MUNGE_RUN/munged.pid"
    step "munge: starting munged (as user munge)"
    # --force: start even if a stale socket is left over.
    if command -v runuser >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged --force
    else
        su -s /bin/sh munge -c '/usr/sbin/munged --force'
    fi
    echo munged >>"$STATE_DIR/started"
    for _ in $(seq 1 50); do munge_ok && break; sleep 0.1; done
    munge_ok || { diagnostics; die "munge does not answer (munge -n | unmunge)"; }
    step "munge: ok"
fi

# ------------------------------------------------------------------ slurm.conf
NODE="$(hostname -s 2>/dev/null || true)"
[ -n "$NODE" ] || NODE=localhost
CPUS="$(nproc --all)"
# slurmd -C prints the hardware it sees, e.g. "NodeName=vm CPUs=2 ... RealMemory=24000"
HW="$(slurmd -C 2>/dev/null | head -n1 || true)"
hw_field() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$HW"; }
MEM_REPORTED="$(hw_field RealMemory)"
if [ -z "$MEM_REPORTED" ]; then
    MEM_REPORTED=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
fi
# A bit below what slurmd sees, otherwise the node is drained for "Low RealMemory".
MEM=$(( MEM_REPORTED * 95 / 100 ))
SOCKETS="$(hw_field SocketsPerBoard)"
CORES="$(hw_field CoresPerSocket)"
THREADS="$(hw_field ThreadsPerCore)"
TOPO=""
if [ -n "$SOCKETS" ] && [ -n "$CORES" ] && [ -n "$THREADS" ] \
        && [ $(( SOCKETS * CORES * THREADS )) -eq "$CPUS" ]; then
    TOPO=" SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS"
fi

NEW_CONF="$(cat <<EOF
# Written by fstack_dask .ci/setup-slurm.sh -- single-node CI cluster.
ClusterName=ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
StateSaveLocation=$SPOOL_CTLD
SlurmdSpoolDir=$SPOOL_D
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=60
KillWait=5
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$CPUS$TOPO RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)"

conf_changed=0
if [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$NEW_CONF" ]; then
    step "config: $CONF up to date (node $NODE, $CPUS CPUs, RealMemory=$MEM MB)"
else
    if [ -f "$CONF" ] && ! grep -q 'fstack_dask .ci/setup-slurm.sh' "$CONF"; then
        cp "$CONF" "$CONF.bak.$(date +%s)"
        step "config: backed up existing foreign $CONF"
    fi
    mkdir -p "$CONF_DIR"
    printf '%s\n' "$NEW_CONF" >"$CONF"
    chmod 644 "$CONF"
    conf_changed=1
    step "config: wrote $CONF (node $NODE, $CPUS CPUs, RealMemory=$MEM MB)"
fi
mkdir -p "$RUN_DIR" "$LOG_DIR" "$SPOOL_CTLD" "$SPOOL_D"

# -------------------------------------------------------------------- daemons
if pid_alive "$RUN_DIR/slurmctld.pid" || proc_running slurmctld; then
    if [ "$conf_changed" = 1 ]; then
        step "slurmctld: running, config changed -> scontrol reconfigure"
        scontrol reconfigure || true
    else
        step "slurmctld: already running"
    fi
else
    step "slurmctld: starting"
    # -c would clear saved state; keep it so restarts are cheap.
    slurmctld
    echo slurmctld >>"$STATE_DIR/started"
fi

if pid_alive "$RUN_DIR/slurmd.pid" || proc_running slurmd; then
    step "slurmd: already running"
else
    step "slurmd: starting (-N $NODE)"
    slurmd -N "$NODE"
    echo slurmd >>"$STATE_DIR/started"
fi

# ---------------------------------------------------------------------- wait
step "wait: for node $NODE to be idle (timeout ${TIMEOUT}s)"
deadline=$(( SECONDS + TIMEOUT ))
state=""
resumed=0
while :; do
    state="$(sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1 || true)"
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        drain*|down*)
            # e.g. left "down" from a previous run; try once to bring it back.
            if [ "$resumed" = 0 ]; then
                scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
                resumed=1
            fi ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
        diagnostics
        die "node $NODE not idle after ${TIMEOUT}s (state: '${state:-no answer}')"
    fi
    sleep 1
done
# sinfo may still say "idle" for a while after slurmd died (SlurmdTimeout), so
# also check the process and run one real step through the whole chain.
pid_alive "$RUN_DIR/slurmd.pid" || proc_running slurmd || { diagnostics; die "slurmd is not running"; }
step "smoke: srun -N1 true"
if ! timeout 30 srun -N1 -t 1 -J setup-slurm-smoke true; then
    scancel -n setup-slurm-smoke >/dev/null 2>&1 || true
    diagnostics
    die "srun smoke job failed"
fi
step "ready: $(sinfo -h -o '%P %a %D %T %N' | head -n1)"
