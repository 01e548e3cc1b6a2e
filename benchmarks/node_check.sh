#!/usr/bin/env bash
# Everything a lent 16-core GPU node is needed for, in one lease (at most ~9.5 minutes):
#   1. benchmarks/gpu_check.sh (issue 19: the GPU's figures and tests; wheels from .whl/);
#   2. benchmarks/pipeline.py at W = 16 (issue 19): the host pipeline without a kernel, the
#      ceiling of any engine end to end, against a read-only pass (~30 s);
#   3. benchmarks/scaling.py at W = 16 (issue 21): the compute bound and threads, processes,
#      16 x 1 and 4 x 4 LocalClusters on grey4096, then threads and 16 x 1 on grey4096x16384,
#      each stack's figures saved as soon as they are measured, within what time is left;
#      then grey4096 stored in shards, threads and 16 x 1, if time is still left.
# The logs and JSON files end up in $OUT/node.tgz (the device tool returns at most 8 files),
# with checks.txt, gpu.json, pipeline.json and scaling.json beside it.
#   run(command="OUT=$OUT bash benchmarks/node_check.sh", carry=[".whl"], timeout_s=600)
set -uo pipefail
OUT="${OUT:-/tmp/node_check}"
WORK=/tmp/node_work
rm -rf "$WORK" && mkdir -p "$WORK" "$OUT"
export PYTHONUNBUFFERED=1
budget=${BUDGET_S:-570}
# what exists so far, copied to $OUT after every step: a run stopped at the tool's limit (no
# EXIT trap runs on SIGKILL) still returns what it had
save() {
  for f in checks.txt gpu.json pipeline.json scaling.json; do
    if [ -f "$WORK/$f" ]; then cp "$WORK/$f" "$OUT/"; fi
  done
  tar czf "$OUT/node.tgz" -C "$WORK" .
}
finish() {
  save
  echo "node_check.sh: $SECONDS s"
}
trap finish EXIT
trap 'exit 143' TERM INT HUP  # SIGTERM: the EXIT trap runs (bash skips it on an untrapped signal)

timeout -k 10 330 env OUT="$WORK" bash benchmarks/gpu_check.sh >"$WORK/gpu_check.log" 2>&1
echo "gpu_check.sh: exit $? after $SECONDS s"
save
tail -n 5 "$WORK/checks.txt" 2>/dev/null

if [ -d /tmp/site ]; then
  export PYTHONPATH="/tmp/site-numpy:/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
PY="${PYTHON:-python3}"
scaling() {
  local left=$((budget - SECONDS))
  [ "$left" -gt 20 ] || { echo "no time left for scaling $*"; return; }
  timeout -k 10 "$left" "$PY" benchmarks/scaling.py --cache /tmp/scaling_cache --workers 16 \
    --no-without-exchange --json "$WORK/scaling.json" "$@" >>"$WORK/scaling.log" 2>&1
  echo "scaling.py $*: exit $? at $SECONDS s"
  save
}
timeout -k 10 $((budget - SECONDS > 20 ? 120 : 1)) "$PY" benchmarks/pipeline.py --cache /tmp/scaling_cache \
  --workers 16 --stacks grey4096 --rounds 2 --json "$WORK/pipeline.json" >"$WORK/pipeline.log" 2>&1
echo "pipeline.py: exit $? at $SECONDS s"; save; grep -E "^  " "$WORK/pipeline.log"
scaling --only compute measured --stacks grey4096 --repeat 2 \
  --kinds threads processes cluster cluster4x4
scaling --only measured compute --stacks grey4096x16384 --repeat 1 --kinds threads cluster
# then, while time is left: the sharded layout (shards read by their chunks) at W = 16
scaling --only measured --stacks grey4096 --layout sharded --repeat 1 --kinds threads cluster
grep -E "^  " "$WORK/scaling.log" | cut -c1-400
