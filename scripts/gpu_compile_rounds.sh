#!/usr/bin/env bash
# On the GPU machine: our step against torch.compile's in alternating rounds (ours, then
# compile, ROUNDS times, same process order every round), so a ratio is taken between runs
# minutes apart on the same GPU, and the spread over rounds shows how far one run's ratio
# can be trusted. Recompute none only; bench_train from $BIN (carried, or built by
# gpu_bench_train.sh first).
#   ROUNDS=3 MODELS=gpt2,seed STEPS=20 WARMUP=5 bash scripts/gpu_compile_rounds.sh
# Each round's reports (rounds_<r>_{ours.md,ours.json,compile.md,compile.log}) go to
# $OUT/rounds.tgz; the ratio rows of every round are echoed at the end.
set -uo pipefail
OUT=${OUT:-/tmp/fg_out}
BIN=${BIN:-build-carry/bin}
ROUNDS=${ROUNDS:-3}
MODELS=${MODELS:-gpt2,seed}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-5}
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
for r in $(seq 1 "$ROUNDS"); do
  SECONDS=0
  timeout 200 "$BIN/bench_train" --data .deps/tinyshakespeare.txt --models "$MODELS" \
    --recompute none --steps "$STEPS" --warmup "$WARMUP" --commit "$COMMIT" \
    --json "$OUT/rounds_${r}_ours.json" > "$OUT/rounds_${r}_ours.md" 2> "$OUT/rounds_${r}_ours.log" ||
    echo "round $r: bench_train failed: $(tail -1 "$OUT/rounds_${r}_ours.log")"
  PYTHONUNBUFFERED=1 timeout 300 python3 bench/compare_torch.py train --models "$MODELS" \
    --backends compile --steps $((STEPS - WARMUP)) --warmup "$WARMUP" \
    --ours-json "$OUT/rounds_${r}_ours.json" > "$OUT/rounds_${r}_compile.md" \
    2> "$OUT/rounds_${r}_compile.log" ||
    echo "round $r: compare_torch failed: $(tail -1 "$OUT/rounds_${r}_compile.log")"
  echo "round $r: ${SECONDS}s"
done
# Per round and model: our ms/step, compile's, and ours/compile (the ratio table's column).
for r in $(seq 1 "$ROUNDS"); do
  awk -v r="$r" -F'|' '
    FNR == NR {if (/^\| [a-z0-9]+ \| none \| [0-9.]+ \|/ && !($2 in ours)) ours[$2] = $4; next}
    /^\| [a-z0-9]+ \| [0-9]+ x [0-9]+ \|/ && $5 ~ /compile/ {comp[$2] = $6}
    /^\| [a-z0-9]+ \| [0-9,]+( \(graph\))? \|/ {printf "round %s %-6s ours %7.2f ms  compile %7.2f ms  ours/compile %s\n",
      r, $2, ours[$2], comp[$2], $8}' "$OUT/rounds_${r}_ours.md" "$OUT/rounds_${r}_compile.md"
done
cd "$OUT" && tar -czf rounds.tgz rounds_* && rm -f rounds_*.md rounds_*.json rounds_*.log
