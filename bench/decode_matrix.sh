#!/usr/bin/env bash
# bench/decode_matrix.sh — ponder's decode throughput (KV cache) at batch 1, 8
# and 64 for the tiny config and the GPT-2 124M shape, with the naive
# no-cache generator (the full forward over the whole sequence per new token)
# in the same process, two passes interleaved. 2 threads. The tiny batch 64
# also runs as 8 groups of 8 samples sharing a prompt (groupG), as a rollout
# decodes it.
#   bash bench/decode_matrix.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build}/decode_bench
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for rep in 1 2; do
  for batch in 1 8 64; do
    "$B" tiny "$batch" 128 16 2 naive
    if [ "$batch" -eq 64 ]; then "$B" tiny 64 128 16 2 group8; fi
    if [ "$batch" -lt 64 ]; then "$B" gpt2 "$batch" 32 16 2 naive; else "$B" gpt2 "$batch" 32 16 2; fi
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
