#!/usr/bin/env bash
# The GPU paths in one prepared command (issue 15), within 8 minutes on one GPU:
#   1. the CUDA contract tests            4. two Ray actors at 0.5 GPU each planning a batch
#   2. planner time per iteration against   5. one visual-model training throughput figure
#      H = 10..80 and B (B x H >= 4096), with the fraction of the measured matmul rate
#   3. GRASP lifted / GD iteration ratio (in table 2)   6. one small sweep cell (linear task, GRASP, H = 10)
# Tables go to $OUT (default gpu-check/) and to stdout. On a machine without CUDA the GPU-only parts
# print a line saying they are skipped; --quick (or GPU_CHECK_QUICK=1) keeps a CPU run to about a minute.
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#   OUT=/tmp/gc bash benchmarks/gpu_check.sh --quick
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK="${GPU_CHECK_QUICK:-0}"
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        *) echo "usage: bash benchmarks/gpu_check.sh [--quick]" >&2; exit 2 ;;
    esac
done
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
OUT="${OUT:-gpu-check}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
QFLAG=()
[ "$QUICK" = 1 ] && QFLAG=(--quick)
T0=$SECONDS

echo "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    CUDA=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
else
    CUDA=0
fi

# 1. The CUDA contract tests (the planner contract suite's cases on a CUDA device).
if [ "$CUDA" = 1 ]; then
    rc=0
    "$PY" -m pytest -q -p no:cacheprovider tests/platform/test_planner_contract.py -k cuda >"$OUT/contract.log" 2>&1 || rc=$?
    {
        echo "## CUDA contract tests (pytest exit status $rc; the whole output: contract.log)"
        echo
        echo '```'
        tail -5 "$OUT/contract.log"
        echo '```'
    } | tee "$OUT/contract.md"
else
    echo "no CUDA device: skipping the CUDA contract tests (tests/platform/test_planner_contract.py -k cuda)"
fi

# 2-6. The tables (gpu_check.py prints its own skip line for a GPU-only part).
for part in planners visual ray sweep; do
    "$PY" benchmarks/gpu_check.py "$part" --out "$OUT" "${QFLAG[@]}"
done

echo "gpu check: $((SECONDS - T0)) s; tables in $OUT"
