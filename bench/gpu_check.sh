#!/usr/bin/env bash
# Issue 20's GPU check in one go: every `cuda` test, then bench/bench_gpu.py.
# About 8 minutes on one H200 at most (each step has its own time limit).
#
# 1. Once, on a machine that reaches PyPI, from the repo root:
#        bash bench/gpu_check.sh --prepare
#    downloads into .whl/ the wheels of sepcli's runtime dependencies that a GPU
#    image with PyTorch usually lacks (soundfile + cffi + pycparser, soxr,
#    platformdirs: the README's install minus torch, numpy, click, rich,
#    requests, pytest, which such images hold) and adds .whl/ to .git/info/exclude.
# 2. On the GPU machine, from the repo root (the device tool: carry [".whl"]):
#        bash bench/gpu_check.sh
#    installs those wheels into /tmp/sepcli-site (never over the image's CUDA
#    torch), runs sepcli from the source tree, and writes to $OUT (default
#    ./gpu-results): env.txt, cuda-tests.log, cuda-tests.xml, snr.jsonl (every
#    measured SNR), gpu_bench.md (the table for docs/benchmarks.md), bench.log.
set -u -o pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
    mkdir -p .whl
    exclude=$(git rev-parse --git-path info/exclude)
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d .whl soundfile soxr platformdirs cffi pycparser
    exit $?
fi

OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 - <<'EOF' 2>&1 | tee "$OUT/env.txt"
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
if not torch.cuda.is_available():
    sys.exit("CUDA is not available here: nothing to check")
p = torch.cuda.get_device_properties(0)
print("gpu", p.name, f"{p.total_memory / 2**30:.0f} GiB", "capability", f"{p.major}.{p.minor}")
EOF
[ "${PIPESTATUS[0]}" = 0 ] || exit 3
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/sepcli-site .whl/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/sepcli-site"
fi
python3 -c "import sepcli, soundfile, soxr, platformdirs; print('sepcli', sepcli.__file__)" \
    2>&1 | tee -a "$OUT/env.txt"
[ "${PIPESTATUS[0]}" = 0 ] || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >>"$OUT/env.txt" 2>&1

# The cuda tests (CPU references included); 3.5 minutes at most.
SEPCLI_GPU_REPORT="$OUT/snr.jsonl" timeout 210 python3 -m pytest -q -m cuda tests/test_cuda.py \
    -p no:cacheprovider -rs --durations=10 --junitxml="$OUT/cuda-tests.xml" 2>&1 \
    | tee "$OUT/cuda-tests.log"
tests=${PIPESTATUS[0]}

# The benchmark: starts no run after 150 s; 4 minutes at most.
timeout 240 python3 bench/bench_gpu.py --out "$OUT/gpu_bench.md" --budget 150 2>&1 \
    | tee "$OUT/bench.log"
bench=${PIPESTATUS[0]}

echo "cuda tests exit $tests, bench exit $bench; results in $OUT"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
