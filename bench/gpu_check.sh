#!/usr/bin/env bash
# bench/gpu_check.sh — the whole GPU check in one call, for a machine with an
# NVIDIA GPU (H100/H200 lease: run it as `bash bench/gpu_check.sh` from the
# repository root, timeout_s 600). Finishes within 8 minutes:
#   1. environment: nvidia-smi, nvcc, compilers, which libraries exist
#   2. build with CUDA into build-gpu: CMake (-DPONDER_CUDA=ON) when ponder's
#      dependencies are installed, else a standalone build of just the model,
#      the CPU and CUDA backends and bench/gpu_bench.c (nvcc + gcc, no HDF5,
#      YAML, jansson or Criterion needed; a naive cblas_sgemm stands in for
#      OpenBLAS if that is missing — it only serves the small CPU references)
#   3. parity: bench/gpu_bench --parity (every op forward and backward, whole
#      training steps and KV-cache decoding, CUDA vs CPU) with PONDER_CUDA_SYNC=1,
#      the decode cases again without it (graph replays ordered by events alone),
#      then tests/test_cuda (Criterion) when it was built
#   4. bench: gpu_bench --bench: GEMM ceilings, training tok/s and TFLOP/s at the
#      GPT-2 124M shape, decode tok/s at batch 1 and 64 with CUDA graphs off/on
#   5. memcheck: compute-sanitizer over the op-level parity cases, if time is left
# and prints a table last. Logs go to $OUT (on the lease machine, so they come
# back) or build-gpu/logs. Exit status: 0 all parts passed, 1 a part failed,
# 2 no GPU.
#
# Options: --standalone forces the standalone build; --dry-run (for machines
# without a GPU) skips the GPU gate, builds, and runs the parity suite against
# the fake device (tests/fake_device.h) instead of the GPU parts; --decode
# (a short GPU check of decode work) runs only the matmul, attention_cached,
# attention_cached_write, linear_fused and
# decode parity cases and the decode benchmark.
set -euo pipefail

DRY_RUN=0
FORCE_STANDALONE=0
DECODE_ONLY=0
for arg in "$@"; do
    case $arg in
    --dry-run) DRY_RUN=1 ;;
    --standalone) FORCE_STANDALONE=1 ;;
    --decode) DECODE_ONLY=1 ;;
    *) echo "usage: bench/gpu_check.sh [--standalone] [--dry-run] [--decode]" >&2 && exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUILD=$ROOT/build-gpu
LOGDIR=${OUT:-$BUILD/logs}
mkdir -p "$BUILD" "$LOGDIR"
START=$(date +%s)
TOTAL_BUDGET=${GPU_CHECK_BUDGET:-470} # seconds; the lease allows 8 minutes
DEADLINE=$((START + TOTAL_BUDGET))
JOBS=$(nproc 2>/dev/null || echo 8)

NAMES=()
STATUS=()
NOTES=()
record() { NAMES+=("$1"); STATUS+=("$2"); NOTES+=("$3"); }
elapsed() { echo $(($(date +%s) - START)); }
banner() { echo; echo "=== [$(elapsed)s] $*"; }

# run_part NAME BUDGET_SECONDS COMMAND...: runs under `timeout`, tees to
# $LOGDIR/NAME.log, records PASS / FAIL (exit code) / TIMEOUT / SKIPPED.
run_part() {
    local name=$1 budget=$2
    shift 2
    local left=$((DEADLINE - $(date +%s)))
    if ((left < 15)); then
        record "$name" SKIPPED "no time left in the ${TOTAL_BUDGET}s budget"
        banner "$name: SKIPPED (no time left)"
        return 0
    fi
    ((budget > left)) && budget=$left
    banner "$name (time box ${budget}s): $*"
    local rc=0
    set +e
    timeout --kill-after=10 "$budget" "$@" 2>&1 | tee "$LOGDIR/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    if ((rc == 0)); then
        record "$name" PASS "$(($(date +%s) - START))s elapsed at end"
    elif ((rc == 124 || rc == 137)); then
        record "$name" TIMEOUT "killed after ${budget}s; see $name.log"
    else
        record "$name" FAIL "exit $rc; see $name.log"
    fi
    return 0
}

part_ok() { # part_ok NAME: did that part pass?
    local i
    for i in "${!NAMES[@]}"; do
        [[ ${NAMES[$i]} == "$1" && ${STATUS[$i]} == PASS ]] && return 0
    done
    return 1
}

print_table() {
    echo
    echo "================================ gpu_check summary ================================"
    echo "card: ${GPU_NAME:-unknown}   arch: sm_${ARCH:-?}   build: ${BUILD_KIND:-none}   total $(elapsed)s"
    printf '%-12s %-8s %s\n' part status note
    local i failed=0 passed=0
    for i in "${!NAMES[@]}"; do
        printf '%-12s %-8s %s\n' "${NAMES[$i]}" "${STATUS[$i]}" "${NOTES[$i]}"
        case ${STATUS[$i]} in PASS) passed=$((passed + 1)) ;; FAIL | TIMEOUT) failed=$((failed + 1)) ;; esac
    done
    local f rfiles=()
    for f in parity parity_async bench; do [[ -f $LOGDIR/$f.log ]] && rfiles+=("$LOGDIR/$f.log"); done
    if ((${#rfiles[@]})) && grep -q '^RESULT |' "${rfiles[@]}"; then
        echo
        printf '%-28s %-20s %s\n' measurement value note
        grep -h '^RESULT |' "${rfiles[@]}" | awk -F' \\| ' '{ printf "%-28s %-20s %s\n", $2, $3, $4 }'
    fi
    local failures=""
    [[ -f $LOGDIR/parity.log ]] && failures=$(grep -h '^  FAIL ' "$LOGDIR/parity.log" | head -20 || true)
    if [[ -n $failures ]]; then
        echo
        echo "parity failures (first 20):"
        echo "$failures"
    fi
    echo
    echo "logs: $LOGDIR"
    echo "gpu_check: $passed passed, $failed failed"
    [[ $failed -eq 0 ]]
}

# ------------------------------------------------------------ environment ---
banner "environment"
LDCACHE=$(ldconfig -p 2>/dev/null || true)
has_lib() { grep -q "$1" <<<"$LDCACHE"; }
if ((DRY_RUN)); then
    echo "dry run: no GPU needed; GPU parts are replaced by the fake-device parity run"
    GPU_NAME="none (dry run)"
    CAP=${PONDER_GPU_CAP:-9.0}
elif ! command -v nvidia-smi >/dev/null 2>&1 || ! timeout 30 nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no GPU here (nvidia-smi missing or failing): this check needs a CUDA device"
    record environment FAIL "no GPU: nvidia-smi -L failed"
    print_table || true
    exit 2
else
    timeout 30 nvidia-smi || true
    GPU_NAME=$(timeout 20 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
    CAP=$(timeout 20 nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 || true)
    GPU_NAME=${GPU_NAME:-unknown}
    CAP=${CAP:-9.0}
fi
ARCH=${PONDER_GPU_ARCH:-$(echo "$CAP" | tr -d '. ')}
[[ $ARCH =~ ^[0-9]+$ ]] || ARCH=90
NVCC=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
if [[ -z $NVCC ]]; then
    record environment FAIL "nvcc not found (PATH or /usr/local/cuda/bin)"
    print_table || true
    exit 1
fi
CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$NVCC")")")}
PATH=$(dirname "$NVCC"):$PATH
export PATH
{
    echo "card: $GPU_NAME (compute capability $CAP -> sm_$ARCH)"
    echo "nvcc: $("$NVCC" --version | tail -1)"
    echo "CUDA_HOME: $CUDA_HOME"
    echo "gcc: $(gcc --version 2>/dev/null | head -1 || echo missing)"
    echo "cmake: $(cmake --version 2>/dev/null | head -1 || echo missing)"
    echo "cores: $JOBS   uname: $(uname -srm)"
    for lib in libcublas.so libopenblas.so.0 libhdf5.so libyaml-0.so.2 libjansson.so.4 libcriterion.so.3; do
        if has_lib "$lib" || ls "$CUDA_HOME"/lib64/"$lib"* >/dev/null 2>&1 ||
            ls "$CUDA_HOME"/targets/*/lib/"$lib"* >/dev/null 2>&1; then
            echo "library $lib: found"
        else
            echo "library $lib: missing"
        fi
    done
    command -v compute-sanitizer >/dev/null 2>&1 && echo "compute-sanitizer: $(command -v compute-sanitizer)" || echo "compute-sanitizer: missing"
} | tee "$LOGDIR/environment.log"
record environment PASS "$GPU_NAME, sm_$ARCH"

# ------------------------------------------------------------------ build ---
# The standalone build: the model, both backends and gpu_bench, nothing else.
build_standalone() {
    set -euo pipefail
    local obj=$BUILD/standalone
    rm -rf "$obj" && mkdir -p "$obj"
    local cflags=(-O2 -g -std=gnu11 -fopenmp -fno-math-errno -I"$ROOT" -I"$CUDA_HOME/include" -DPONDER_HAVE_CUDA=1)
    local libdir=$CUDA_HOME/lib64
    [[ -d $libdir ]] || libdir=$(dirname "$(find "$CUDA_HOME" -name 'libcublas.so*' | head -1)")
    local nccl=()
    if [[ -f $CUDA_HOME/include/nccl.h ]] && ls "$libdir"/libnccl.so* >/dev/null 2>&1; then
        cflags+=(-DPONDER_HAVE_NCCL=1) && nccl=(-lnccl) && echo "standalone: with NCCL"
    fi
    local srcs=(util/error.c util/rng.c model/model.c model/model_train.c model/model_infer.c
        model/cpu/ops_cpu.c model/cpu/blas.c model/cpu/gemm_bf16.c trainer/optim.c bench/gpu_bench.c)
    local pids=() s
    for s in "${srcs[@]}" model/cuda/*.c; do
        [[ -f $s ]] || continue
        gcc "${cflags[@]}" -c "$s" -o "$obj/$(echo "$s" | tr / _).o" &
        pids+=($!)
    done
    for s in model/cuda/*.cu; do
        "$NVCC" -O3 -std=c++17 -arch=sm_"$ARCH" -I"$ROOT" -c "$s" -o "$obj/$(echo "$s" | tr / _).o" &
        pids+=($!)
    done
    for s in "${pids[@]}"; do wait "$s"; done
    g++ -fopenmp "$obj"/*.o -L"$libdir" -Wl,-rpath,"$libdir" "${nccl[@]}" -lcublas -lcudart -ldl -lm -lpthread \
        -o "$BUILD/gpu_bench"
    echo "standalone gpu_bench built: $BUILD/gpu_bench"
}

# A naive cblas_sgemm for the CPU reference when OpenBLAS is not installed.
build_naive_blas() {
    cat >"$BUILD/naive_cblas.c" <<'EOF'
/* row-major only, as ponder calls it: C = alpha op(A) op(B) + beta C */
void cblas_sgemm(int order, int ta, int tb, int M, int N, int K, float alpha, const float *A,
                 int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    (void)order;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float s = 0.0f;
            for (int k = 0; k < K; k++)
                s += (ta == 112 ? A[k * lda + i] : A[i * lda + k]) *
                     (tb == 112 ? B[j * ldb + k] : B[k * ldb + j]);
            C[i * ldc + j] = alpha * s + (beta == 0.0f ? 0.0f : beta * C[i * ldc + j]);
        }
}
EOF
    gcc -O3 -fopenmp -shared -fPIC "$BUILD/naive_cblas.c" -o "$BUILD/libnaive_cblas.so"
}
export -f build_standalone build_naive_blas
export ROOT BUILD CUDA_HOME NVCC ARCH

build_cmake() {
    set -euo pipefail
    cmake --build "$BUILD" -j "$JOBS" --target gpu_bench
    if grep -q '^test_cuda:' "$BUILD/Makefile" 2>/dev/null; then
        cmake --build "$BUILD" -j "$JOBS" --target test_cuda
    fi
}
export -f build_cmake
export JOBS

BUILD_KIND=none
rm -f "$BUILD/gpu_bench" "$BUILD/test_cuda"
banner "configure"
if ((!FORCE_STANDALONE)) && command -v cmake >/dev/null 2>&1 &&
    timeout 120 cmake -S "$ROOT" -B "$BUILD" -DPONDER_CUDA=ON -DPONDER_CUDA_ARCHITECTURES="$ARCH" \
        -DCMAKE_BUILD_TYPE=Release >"$LOGDIR/configure.log" 2>&1; then
    BUILD_KIND=cmake
    echo "CMake configured with CUDA (sm_$ARCH)"
    run_part build 240 bash -c build_cmake
else
    if ((!FORCE_STANDALONE)); then
        echo "CMake configure failed (ponder's dependencies missing?); its last lines:"
        tail -8 "$LOGDIR/configure.log" 2>/dev/null || true
    fi
    BUILD_KIND=standalone
    run_part build 240 bash -c build_standalone
fi
if ! part_ok build || [[ ! -x $BUILD/gpu_bench ]]; then
    echo "gpu_check: the build failed; nothing to run"
    print_table || true
    exit 1
fi
if ! has_lib libopenblas.so.0 && [[ -z ${PONDER_BLAS:-} ]]; then
    echo "no OpenBLAS: the CPU reference uses a naive cblas_sgemm"
    build_naive_blas
    export PONDER_BLAS=$BUILD/libnaive_cblas.so
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$JOBS}

if ((DRY_RUN)); then
    run_part parity 150 "$BUILD/gpu_bench" --parity --fake-device --only matmul,rope,attention_cached,attention_cached_write,linear_fused,model_step,decode,policy_loss,value_loss,loss_helpers,advantages,bf16
    print_table
    exit
fi

if ((DECODE_ONLY)); then
    run_part parity 120 env PONDER_CUDA_SYNC=1 "$BUILD/gpu_bench" --parity --only matmul,attention_cached,attention_cached_write,linear_fused,decode
    run_part parity_async 60 "$BUILD/gpu_bench" --parity --only matmul,linear_fused,decode
    run_part bench 120 "$BUILD/gpu_bench" --bench --decode
    print_table
    exit
fi

# ----------------------------------------------------------------- parity ---
run_part parity 150 env PONDER_CUDA_SYNC=1 "$BUILD/gpu_bench" --parity
# without the per-op sync that would hide a graph replay ordered wrongly
run_part parity_async 60 "$BUILD/gpu_bench" --parity --only matmul,linear_fused,decode
if [[ -x $BUILD/test_cuda ]]; then
    run_part test_cuda 120 "$BUILD/test_cuda" --verbose --filter 'cuda/*'
fi

# ------------------------------------------------------------------ bench ---
run_part bench 210 "$BUILD/gpu_bench" --bench

# --------------------------------------------------------------- memcheck ---
if command -v compute-sanitizer >/dev/null 2>&1; then
    run_part memcheck 120 compute-sanitizer --tool memcheck --error-exitcode 99 --print-limit 50 \
        "$BUILD/gpu_bench" --parity --only matmul,embedding,norms,rope,attention,attention_cached,attention_cached_write,linear_fused,activations,optimizer,policy_loss,value_loss,loss_helpers,advantages
else
    record memcheck SKIPPED "compute-sanitizer not installed"
fi

print_table
