#!/usr/bin/env bash
# The GPU check of issue 11 in one go, on a machine with a CUDA GPU, from the repository root:
# install the carried wheels (benchmarks/gpu_wheels.sh) offline, print the environment, run the
# GPU tests (tests/algorithm/test_gpu.py -m gpu, and the PTX check), then the benchmark
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
from fstack_dask._algorithm.device import cuda_problem
print("cuda_problem:", cuda_problem())
try:
    from numba.cuda.cudadrv import nvvm
    print("NVVM", nvvm.NVVM().get_version())
except Exception as e:  # the PTX test and the kernels will say more
    print("NVVM not loaded:", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
PYEOF
} 2>&1 | tee "$OUT/env.txt"
status=0
pytest=("$PY" -m pytest -p no:cacheprovider -o addopts="" -q -rs)
timeout 240 "${pytest[@]}" -m gpu tests/algorithm/test_gpu.py 2>&1 | tee "$OUT/pytest.txt" || status=1
timeout 60 "${pytest[@]}" tests/algorithm/test_gpu.py::test_kernels_compile_for_sm90_without_fused_multiply_adds \
  2>&1 | tee -a "$OUT/pytest.txt" || status=1
timeout 240 "$PY" benchmarks/gpu.py --out "$OUT" ${GPU_BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.txt" || status=1
exit $status
