#!/usr/bin/env bash
# Stop the SLURM/munge daemons that .ci/setup-slurm.sh started (and only those),
# as recorded in /run/fstack-slurm/started. Safe to run twice.
set -euo pipefail

STATE_DIR=/run/fstack-slurm
RUN_DIR=/run/slurm

step() { printf '[stop-slurm] %s\n' "$*"; }

started="$STATE_DIR/started"
if [ ! -s "$started" ]; then
    step "nothing recorded in $started; nothing to stop"
    exit 0
fi

pidfile_of() {
    case "$1" in
        slurmd) echo "$RUN_DIR/slurmd.pid" ;;
        slurmctld) echo "$RUN_DIR/slurmctld.pid" ;;
        munged) echo /run/munge/munged.pid ;;
    esac
}

stop_one() { # daemon name
    local name="$1" pf pid
    pf="$(pidfile_of "$name")"
    if [ ! -s "$pf" ]; then
        step "$name: no pid file $pf (already stopped?)"
        return 0
    fi
    pid="$(cat "$pf")"
    if ! kill -0 "$pid" 2>/dev/null; then
        step "$name: pid $pid not running"
        rm -f "$pf"
        return 0
    fi
    step "$name: stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        step "$name: still alive after 10 s, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pf"
}

# Reverse start order: compute daemon first, controller, then munge.
for name in slurmd slurmctld munged; do
    if grep -qx "$name" "$started"; then
        stop_one "$name"
    fi
done
: >"$started"
step "done"
