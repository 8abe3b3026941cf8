#!/usr/bin/env bash
# Issue 13's GPU checks in one call, for a session that is lent a GPU (the device budget is 15
# minutes with start-up, so everything runs in one go, in at most GPU_CHECK_BUDGET seconds,
# 360 by default; each phase gets its own cap and never more than what is left):
#
#   make gpu-wheels                 # here: hydra-core, omegaconf, antlr4, pykeops, keopscore
#                                   # as pure-Python wheels in .whl/ (the GPU image has torch,
#                                   # triton and lightning but not hydra)
#   device run: bash scripts/gpu_check.sh      carry [".whl"], timeout_s 450 (360 s of checks)
#
# Phases, in order (caps in seconds):
#   1 pytest -m gpu (110)            the CUDA tests: compiled Triton kernels, sync counts (one
#                                    line per test as it ends, so a cut-short run shows which)
#   2 bench (125)                    100k x 100k x 64: fwd in the four precisions, the three
#                                    gradient sets (grad x, y, h also with the one-pass
#                                    GENMOD_TRITON_BWD=fused backward), KeOps, torch, the
#                                    cuBLAS GEMM / exp floors;
#                                    then 1M x 1M x 64: fwd, fwd+bwd (h), KeOps, peak memory
#   3 bench low-D (35)               256 x 160k x 2 at h = 0.04 (a KDE training step's shape)
#                                    and 20k x 20k x {1, 2, 3}: the explicit-difference kernels
#   4 training (what is left, ~90) genmod-train trainer=gpu data.n_samples=200000 (1 epoch,
#                                    70 s at most) and experiment=lvm_digits trainer=gpu
#                                    (3 epochs, 40 s at most): start-up, per step, per epoch
# Every figure goes to $OUT as it is measured (a run cut short keeps what it has):
#   gpu.txt            device, torch / triton versions        pytest_gpu.log
#   bench_*.log        each benchmark phase's log
#   benchmarks.md      docs/benchmarks.md with its cuda, cuda-lowd and cuda-train sections
#                      rewritten after every size: copy it over docs/benchmarks.md and commit
# A second device call, when the budget allows (about 4 minutes): the tile sweep of the kernels
# no GPU has timed yet (one-pass backward, fp16x3 forward, the low-D kernels), with the best
# tiles per kernel printed for _TILES in genmod/ops/_triton_launch.py:
#   device run: python3 scripts/sweep_tiles.py --out $OUT --budget 200     timeout_s 280
# Without a CUDA device it is a dry run: the GPU tests are collected (imported and parsed), the
# GPU training commands composed (hydra --cfg job), and tiny CPU versions of the benchmark and
# of the training timings run; it exits 0 when all of that works.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

echo "gpu_check: the GPU image lacks hydra-core/omegaconf: run 'make gpu-wheels' on the host"
echo "  and carry .whl/ (device run: bash scripts/gpu_check.sh, carry [\".whl\"]); found:" \
    "$(compgen -G '.whl/*.whl' | wc -l) wheel(s) in .whl/"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/genmod-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/genmod-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

{
    nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not found"
    "$PY" -c "import torch, triton; print('torch', torch.__version__, '| triton', \
triton.__version__, '| cuda', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/gpu.txt"
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    DRY=0
else
    DRY=1
    echo "gpu_check: no CUDA device: dry run (collect, compose, tiny CPU versions)"
fi
BUDGET=${GPU_CHECK_BUDGET:-$((DRY ? 3600 : 360))}
cp docs/benchmarks.md "$OUT/benchmarks.md" 2>/dev/null || true

status=0
# cap SECONDS: a phase's timeout, never past the overall budget
cap() { local left=$((BUDGET - SECONDS)); ((left < $1)) && echo $((left > 5 ? left : 5)) || echo "$1"; }
phase() {  # phase NAME CAP LOG COMMAND...: run it under its cap, tee its log, note failures
    local name=$1 limit log=$OUT/$3
    limit=$(cap "$2")
    shift 3
    echo "== $name (cap ${limit} s, ${SECONDS} s elapsed)" | tee -a "$OUT/phases.txt"
    timeout "$limit" "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    echo "   $name: exit $rc at ${SECONDS} s" | tee -a "$OUT/phases.txt"
    return "$rc"
}
bench=("$PY" scripts/bench_kde.py --out "$OUT/benchmarks.md" --repeats 3)

if ((DRY)); then
    phase "gpu tests (collect only)" 600 pytest_gpu.log \
        "$PY" -m pytest -q -p no:cacheprovider -m gpu --collect-only tests || status=1
    for cmd in "trainer=gpu data.n_samples=200000 trainer.max_epochs=1" \
        "experiment=lvm_digits trainer=gpu trainer.max_epochs=3"; do
        # shellcheck disable=SC2086
        phase "compose: genmod-train $cmd" 300 "compose_${cmd%% *}.log" \
            "$PY" -m genmod.cli.train $cmd --cfg job || status=1
    done
    phase "bench (tiny, CPU)" 600 bench_cuda.log "${bench[@]}" --quick --sizes 300x400x16 \
        --tools genmod,genmod-bwd,genmod-bwd-h,genmod-bwd-yh,floor-gemm,floor-exp || status=1
    phase "bench low-D (tiny, CPU)" 600 bench_lowd.log "${bench[@]}" --quick --lowd \
        --sizes 64x2000x2@0.04,500x500x3@0.2 --tools genmod,genmod-bwd-h || status=1
    phase "training (tiny, CPU)" 900 bench_train.log "${bench[@]}" --quick --train || status=1
else
    timeout "$(cap 110)" "$PY" -m pytest -v --tb=short -p no:cacheprovider -m gpu tests 2>&1 |
        tee "$OUT/pytest_gpu.log"
    rc=${PIPESTATUS[0]}
    [[ $rc -eq 0 ]] || status=1
    echo "   pytest -m gpu: exit $rc at ${SECONDS} s" | tee -a "$OUT/phases.txt"
    tools=genmod,genmod-bwd,genmod-bwd-fused,genmod-bwd-h,genmod-bwd-yh,genmod-ieee,genmod-tf32
    tools+=,genmod-fp16x3
    tools+=,keops,torch-naive,floor-gemm,floor-gemm-tf32,floor-exp
    # 100k then 1M (fwd, fwd+bwd (h), KeOps there): one section, rewritten after each size
    phase "bench 100k, 1M" 125 bench_cuda.log "${bench[@]}" --device cuda --precisions \
        --tools "$tools" --max-seconds 20 --timeout 60 || status=1
    phase "bench low-D" 35 bench_lowd.log "${bench[@]}" --device cuda --lowd \
        --max-seconds 20 --timeout 30 --tools genmod,genmod-bwd,genmod-bwd-h || status=1
    phase "training" 125 bench_train.log "${bench[@]}" --device cuda --train || status=1
fi
echo "gpu_check: results in $OUT after ${SECONDS} s (exit $status)"
exit $status
