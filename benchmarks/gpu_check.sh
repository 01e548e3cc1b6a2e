#!/usr/bin/env bash
# The GPU check of issue 19 in one go, on a machine with a CUDA GPU, from the repository root
# (meant to take under 5 minutes on a 16-core H100/H200 node; not yet timed on one):
#   1. install the wheels carried in .whl/ (benchmarks/gpu_wheels.sh) offline: NumPy 2.4 in a
#      folder of its own, the rest in another;
#   2. print the environment (card, driver, versions, cuda_problem());
#   3. where the image's NumPy is 2.5 or later, check with it (not the carried 2.4) that
#      --device cuda is refused in one line naming numba-cuda's and NumPy's versions, exit 2,
#      nothing written (issue 19, point 4);
#   4. the benchmark (benchmarks/gpu.py; arguments given to this script go to it);
#   5. the GPU tests (tests/algorithm/test_gpu.py -m gpu), the sm_90 PTX test, the disk
#      cache's test;
#   6. record the run in benchmarks/RESULTS.md, naming the card (not in the simulator).
# Everything goes to $OUT (default /tmp/gpu_check): env.txt, numpy25.txt, bench.txt,
# pytest.txt, checks.txt, gpu.json, gpu.md, RESULTS.md. A dry run without a GPU, in numba's
# CUDA simulator, at tiny sizes:
#   NUMBA_ENABLE_CUDASIM=1 benchmarks/gpu_check.sh --size 32 --planes 5 --small 24,5 \
#     --crop 24,32 --repeat 1 --workers 2 --sample-crop 24 --e2e "32x32 48x32" \
#     --startup-planes 5 --startup-side 16
set -uo pipefail
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
: >"$OUT/checks.txt"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
start=$SECONDS
if compgen -G ".whl/*.whl" >/dev/null; then
  rest=(.whl/*.whl)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "${rest[@]}" || { echo "wheel install failed"; exit 3; }
  BASE="/tmp/site:$PWD"
  if compgen -G ".whl/numpy/numpy-*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site-numpy .whl/numpy/numpy-*.whl || { echo "NumPy install failed"; exit 3; }
    export PYTHONPATH="/tmp/site-numpy:$BASE"
  else
    export PYTHONPATH="$BASE"
  fi
else
  BASE="$PWD"
  export PYTHONPATH="$PWD"
fi
# numba-cuda finds NVVM and libdevice in the nvidia-* wheels, else under CUDA_HOME; an image
# whose toolkit is in /usr/local/cuda (nvcc) may have no nvidia-cuda-nvcc wheel.
if [ -z "${CUDA_HOME:-}${CUDA_PATH:-}" ] && [ -d /usr/local/cuda ]; then
  export CUDA_HOME=/usr/local/cuda
fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$PY" - <<'PYEOF'
import importlib.metadata as md
for name in ("numpy", "numba", "numba-cuda", "cuda-bindings", "dask", "distributed", "zarr"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "MISSING")
import numpy
print("numpy imported from", numpy.__file__, numpy.__version__)
from fstack_dask._algorithm.device import cuda_problem
print("cuda_problem:", cuda_problem())
try:
    from numba.cuda.cudadrv import nvvm
    print("NVVM", nvvm.NVVM().get_version())
except Exception as e:  # the PTX test and the kernels will say more
    print("NVVM not loaded:", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
PYEOF
} 2>&1 | tee "$OUT/env.txt"

# 3. The image's own NumPy (the carried 2.4 left out of the path), if it is 2.5 or later.
image_numpy="$(PYTHONPATH="$BASE" "$PY" -c 'import numpy; print(numpy.__version__)' 2>/dev/null)"
{
  echo "image NumPy: ${image_numpy:-none}"
  if PYTHONPATH="$BASE" "$PY" -c 'import sys, numpy
sys.exit(0 if tuple(int(v) for v in numpy.__version__.split(".")[:2]) >= (2, 5) else 1)' 2>/dev/null
  then
    tmp="$(mktemp -d)"
    PYTHONPATH="$BASE" "$PY" -c "import numpy as np; from fstack_dask import write_stack
write_stack('$tmp/in.zarr', np.arange(5 * 16 * 16, dtype=np.uint16).reshape(5, 16, 16), axes='zyx')"
    PYTHONPATH="$BASE" timeout 120 "$PY" -m fstack_dask fuse "$tmp/in.zarr" "$tmp/out.zarr" \
      --device cuda --no-progress 2>"$tmp/err"
    rc=$?
    echo "exit status: $rc; stderr lines: $(wc -l <"$tmp/err"); dst written: $([ -e "$tmp/out.zarr" ] && echo yes || echo no)"
    cat "$tmp/err"
    if [ "$rc" = 2 ] && [ "$(wc -l <"$tmp/err")" = 1 ] && [ ! -e "$tmp/out.zarr" ]; then
      echo "NumPy $image_numpy: --device cuda refused before anything was written (exit 2, one line): $(cat "$tmp/err")" >>"$OUT/checks.txt"
    else
      echo "NumPy $image_numpy: --device cuda NOT refused as expected (exit $rc; see numpy25.txt)" >>"$OUT/checks.txt"
    fi
    rm -rf "$tmp"
  else
    echo "not checked: the image's NumPy is below 2.5"
  fi
} 2>&1 | tee "$OUT/numpy25.txt"

status=0
timeout -k 10 210 "$PY" benchmarks/gpu.py --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.txt"
bench=${PIPESTATUS[0]}
[ "$bench" -eq 0 ] || status=1
# a crash or a timeout (124) is said here, not only in bench.txt
echo "benchmarks/gpu.py: exit $bench$([ "$bench" -eq 124 ] && echo ' (timed out at 210 s)')" >>"$OUT/checks.txt"
pytest=("$PY" -m pytest -p no:cacheprovider -o addopts="" -q -rs)
timeout 120 "${pytest[@]}" -m gpu tests/algorithm/test_gpu.py 2>&1 | tee "$OUT/pytest.txt" || status=1
echo "GPU tests (pytest -m gpu tests/algorithm/test_gpu.py): $(tail -n 1 "$OUT/pytest.txt")" >>"$OUT/checks.txt"
timeout 90 "${pytest[@]}" \
  tests/algorithm/test_gpu.py::test_kernels_compile_for_sm90_without_fused_multiply_adds \
  tests/algorithm/test_gpu.py::test_kernels_are_cached_on_disk_and_loaded_by_a_new_process \
  2>&1 | tee "$OUT/pytest_ptx.txt" || status=1
echo "PTX and disk-cache tests (no GPU needed): $(tail -n 1 "$OUT/pytest_ptx.txt")" >>"$OUT/checks.txt"
echo "benchmarks/gpu_check.sh: $((SECONDS - start)) s in all" | tee -a "$OUT/checks.txt"
if [ -f "$OUT/gpu.json" ]; then
  "$PY" benchmarks/gpu.py --record "$OUT/gpu.json" --checks "$OUT/checks.txt" >/dev/null \
    && echo "recorded in benchmarks/RESULTS.md (a copy in $OUT/RESULTS.md)"
  cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
fi
exit $status
