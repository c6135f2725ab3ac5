#!/usr/bin/env bash
# bench/dist_bench.sh — GRPO step throughput by rank layout on this machine:
#   1 rank x 2 threads, 2 ranks x 1 thread colocated, and 2 ranks x 1 thread
#   disaggregated (1 learner + 1 rollout rank) with max_staleness 0 and 1.
# Each layout runs bench/dist_bench.yaml (grpo_arith's GRPO step: 16 prompts x
# 8 samples, <= 48 new tokens) from the same SFT checkpoint, twice,
# interleaved (A B C D A B C D) because this machine is shared and noisy.
# Samples/s is taken from rank 0's metrics (elapsed_s of RL steps 2..N, so
# start-up and the first step are left out). Also prints the job's traffic,
# and before each run the cache-line round trip between cpu0 and cpu1
# (bench/core_distance: about 60 ns when the host put them on one L3, 300+
# when on two; one rank with 2 threads slows down in the second case).
#
#   bash bench/dist_bench.sh [BUILD_DIR]      (default build/)
#   PRECISION=bf16 bash bench/dist_bench.sh   (model.precision; default fp32)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
OUTDIR=$BUILD/bench-dist
mkdir -p "$OUTDIR"
SFT=$OUTDIR/sft/checkpoints/step_00000300.h5
if [ ! -f "$SFT" ]; then
  echo "making the SFT checkpoint (300 steps of configs/sft_arith.yaml)"
  "$BUILD/ponder" train configs/sft_arith.yaml stages.0.steps=300 run.dir="$OUTDIR/sft" \
    checkpoint.every=300 eval.every=0 data.eval_size=50 >"$OUTDIR/sft.log" 2>&1
fi

rate() { # rate RUN_DIR: samples/s over RL steps 2..N from rank 0's metrics
  python3 - "$1/metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"kind":"rl"' in l]
t = [r["elapsed_s"] for r in rows]
s = sum(r["samples"] for r in rows[1:])
print(f"{s / (t[-1] - t[0]):.1f} {1e3 * (t[-1] - t[0]) / (len(t) - 1):.0f}")
EOF
}

layouts=("1x2" "2x1-colocated" "2x1-disagg-k0" "2x1-disagg-k1")
run_layout() {
  local name=$1 dir=$OUTDIR/$1-$2
  rm -rf "$dir"
  local common=(bench/dist_bench.yaml model.init_from="$SFT" run.dir="$dir"
    model.precision="${PRECISION:-fp32}")
  local rt="-"
  [ -x "$BUILD/core_distance" ] && rt=$("$BUILD/core_distance" | grep -o '"roundtrip_ns":[0-9]*' | cut -d: -f2)
  case $name in
  1x2) "$BUILD/ponder" train "${common[@]}" runtime.threads=2 >"$dir.log" 2>&1 ;;
  2x1-colocated) OMP_NUM_THREADS=1 launch/ponder-mpi -n 2 --ponder "$BUILD/ponder" train \
    "${common[@]}" runtime.threads=1 >"$dir.log" 2>&1 ;;
  2x1-disagg-k0) OMP_NUM_THREADS=1 launch/ponder-mpi -n 2 --ponder "$BUILD/ponder" train \
    "${common[@]}" runtime.threads=1 dist.mode=disaggregated dist.max_staleness=0 >"$dir.log" 2>&1 ;;
  2x1-disagg-k1) OMP_NUM_THREADS=1 launch/ponder-mpi -n 2 --ponder "$BUILD/ponder" train \
    "${common[@]}" runtime.threads=1 dist.mode=disaggregated dist.max_staleness=1 >"$dir.log" 2>&1 ;;
  esac
  local r
  r=$(rate "$dir")
  local traffic
  traffic=$(grep -o 'per RL step.*' "$dir.log" || echo "-")
  printf '%-16s run %s  round trip %4s ns  %8s samples/s  %6s ms/step   %s\n' "$name" "$2" "$rt" ${r} "$traffic"
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for rep in 1 2; do
  for l in "${layouts[@]}"; do run_layout "$l" "$rep"; done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
