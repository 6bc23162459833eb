#!/usr/bin/env bash
# On the GPU machine: bench_train (baby, gpt2 and seed, recompute none, attn and full,
# per-kernel CUPTI profiles) and, when bench/compare_torch.py has its train mode,
# PyTorch eager and torch.compile at the same shapes beside ours. Runs a prebuilt
# $BIN/bench_train when there is one (built elsewhere and carried); otherwise
# configures like gpu_check.sh (needs .deps/) and builds only bench_train.
# STEPS/WARMUP: steps per run and how many are dropped (seed's steps are ~0.5 s);
# PROFILE=0 times without CUPTI; TORCH=0 skips PyTorch; COMMIT names the commit.
# PyTorch times the same steps after the same warm-up as ours.
# Everything goes to $OUT; the key tables are echoed at the end.
set -uo pipefail
OUT=${OUT:-/tmp/fg_out}
mkdir -p "$OUT"
BIN=${BIN:-build-gpu/bin}
STEPS=${STEPS:-30}
WARMUP=${WARMUP:-5}
PROFILE=${PROFILE:-1}
TORCH=${TORCH:-1}
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
  --format=csv,noheader | tee "$OUT/gpu.txt"

if [ ! -x "$BIN/bench_train" ]; then
  BIN=build-gpu/bin
  bash scripts/gpu_build.sh bench_train || exit 1
fi

# Nine runs; the markdown rows and the JSON are written as each run ends, so a
# timeout keeps the finished ones.
PROFILE_FLAG=
[ "$PROFILE" = 1 ] && PROFILE_FLAG=--profile
SECONDS=0
timeout 330 "$BIN/bench_train" --data .deps/tinyshakespeare.txt --models baby,gpt2,seed \
  --recompute none,attn,full --steps "$STEPS" --warmup "$WARMUP" --commit "$COMMIT" \
  --json "$OUT/bench_train.json" $PROFILE_FLAG > "$OUT/bench_train.md" 2> "$OUT/bench_train.log"
echo "bench_train rc=$? ${SECONDS}s"
grep -E "error|failed|unavailable" "$OUT/bench_train.log" "$OUT/bench_train.md" | head -20

# compare_torch.py lists its modes in --help ({layer,train}); older copies have no train mode.
if [ "$TORCH" = 1 ] && python3 bench/compare_torch.py --help 2>/dev/null | grep -q "train"; then
  SECONDS=0
  PYTHONUNBUFFERED=1 timeout 300 python3 bench/compare_torch.py train --steps $((STEPS - WARMUP)) \
    --warmup "$WARMUP" --ours-json "$OUT/bench_train.json" > "$OUT/compare_train.md" 2> "$OUT/compare_train.log"
  echo "compare_torch train rc=$? ${SECONDS}s"
  tail -5 "$OUT/compare_train.log"
else
  echo "compare_torch train: skipped (TORCH=$TORCH or no train mode)"
fi

# The report, with the top 8 kernels of each profiled run (all 25 are in the file).
echo
awk '/^## Per-kernel/ {k = 1} /^### / {n = 0} k && /^\| `/ {if (++n > 8) next} {print}' \
  "$OUT/bench_train.md"
[ -s "$OUT/compare_train.md" ] && { echo; cat "$OUT/compare_train.md"; }
