#!/usr/bin/env bash
# On the GPU machine: two bench_train binaries (or one binary under two environments,
# A_ENV / B_ENV, or with two sets of extra flags, A_ARGS / B_ARGS) timed in turn in one
# call, so that machine and clock differences fall on both alike.
# Each round runs A then B: `--recompute none --profile` over $MODELS, and prints each
# run's ms/step and the per-step time of the kernels whose names match $KERNELS.
#   A=path/to/bench_train B=path/to/bench_train [A_ENV="X=1"] [B_ENV="X=2"] ROUNDS=2
#   MODELS=gpt2,seed KERNELS='embedding|rmsnorm_backward' bash scripts/gpu_ab_train.sh
# Full reports go to $OUT/ab_<round>_<A|B>.md.
set -uo pipefail
OUT=${OUT:-/tmp/fg_out}
mkdir -p "$OUT"
A=${A:?A=bench_train binary}
B=${B:-$A}
ROUNDS=${ROUNDS:-2}
MODELS=${MODELS:-gpt2,seed}
KERNELS=${KERNELS:-.}
STEPS=${STEPS:-12}
WARMUP=${WARMUP:-4}

run() {  # label env binary round extra-flags
  local md="$OUT/ab_$4_$1.md"
  env $2 timeout 300 "$3" --data .deps/tinyshakespeare.txt --models "$MODELS" --recompute none \
    --steps "$STEPS" --warmup "$WARMUP" --profile $5 > "$md" 2> "$OUT/ab_$4_$1.log" ||
    echo "$1 round $4 failed: $(tail -1 "$OUT/ab_$4_$1.log")"
  # Step rows, then each matching kernel's time per step (its total over the profiled steps).
  awk -v tag="$1.$4" -v pat="$KERNELS" -v steps=$((STEPS - WARMUP)) '
    /^\| [a-z0-9]+ \| none \| [0-9.]+ \| [0-9]+ \|/ {print tag, $2, "ms/step", $6}
    /^### Kernels: / {model = $3; sub(",", "", model)}
    /^\| `/ && $0 ~ pat {n = split($0, f, "|"); printf "%s %s %-60s %8.1f us/step\n", tag, model, \
      substr(f[2], 1, 60), f[4] * 1000 / steps}' "$md"
}

nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
for r in $(seq 1 "$ROUNDS"); do
  run A "${A_ENV:-}" "$A" "$r" "${A_ARGS:-}"
  run B "${B_ENV:-}" "$B" "$r" "${B_ARGS:-}"
done
