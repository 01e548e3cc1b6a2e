#!/usr/bin/env bash
# The GPU check of issue 11 in one go, on a machine with a CUDA GPU, from the repository root:
# install the carried wheels (benchmarks/gpu_wheels.sh) offline, print the environment, run the
# GPU tests (tests/test_gpu.py -m gpu, and the PTX check), then the benchmark
# (benchmarks/gpu.py). Everything goes to $OUT (default /tmp/gpu_check): env.txt, pytest.txt,
# bench.txt, gpu.json, gpu.md. Record a run with: python benchmarks/gpu.py --record gpu.json
set -uo pipefail
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "wheel install failed"; exit 3; }
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
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
from fstack_dask._device import cuda_problem
print("cuda_problem:", cuda_problem())
PYEOF
} 2>&1 | tee "$OUT/env.txt"
status=0
pytest=("$PY" -m pytest -p no:cacheprovider -o addopts="" -q -rs)
timeout 240 "${pytest[@]}" -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/pytest.txt" || status=1
timeout 60 "${pytest[@]}" tests/test_gpu.py::test_kernels_compile_for_sm90_without_fused_multiply_adds \
  2>&1 | tee -a "$OUT/pytest.txt" || status=1
timeout 240 "$PY" benchmarks/gpu.py --out "$OUT" ${GPU_BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.txt" || status=1
exit $status
