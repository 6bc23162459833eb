#!/usr/bin/env bash
# On the GPU machine, the issues' must-show in one call: every GPU test binary, the baby
# tinyshakespeare run (5000 steps), bench_attention, bench_fused_qkv at the seed and
# GPT-2-small shapes, then bench_train against PyTorch eager and torch.compile
# (gpu_bench_train.sh). Runs prebuilt binaries from $BIN (built here, stripped and carried as
# build-carry/x.tar.xz, which is unpacked first when present; .deps/ carried beside it).
# COMMIT names the commit in the reports. ~4.5 minutes on an H200; logs to $OUT/logs.tgz.
set -uo pipefail
OUT=${OUT:-/tmp/fg_out}
BIN=${BIN:-build-carry/bin}
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
mkdir -p "$OUT"
[ -f build-carry/x.tar.xz ] && (cd build-carry && tar -xJf x.tar.xz)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
for t in core ops autograd trainer dist; do
  SECONDS=0
  timeout 300 "$BIN/fg_test_$t" > "$OUT/test_$t.log" 2>&1
  echo "$t rc=$? ${SECONDS}s $(grep -E '^\[  (PASSED|FAILED) ' "$OUT/test_$t.log" | tr '\n' ' ')"
done
grep -h "Failure\|FAILED  \]" "$OUT"/test_*.log | head -20
SECONDS=0
"$BIN/train_gpt" --device cuda --data .deps/tinyshakespeare.txt --tokenizer char \
  --n-layer 6 --n-head 6 --d-model 384 --max-seq-len 256 --seq 256 --batch 64 \
  --lr 1e-3 --min-lr 1e-4 --warmup 100 --decay-steps 5000 --steps 5000 --beta2 0.99 \
  --clip 1.0 --eval-every 250 --eval-batches 8 --log "$OUT/baby.jsonl" > "$OUT/baby.log" 2>&1
echo "baby rc=$? wall ${SECONDS}s"
tail -1 "$OUT/baby.log"
timeout 120 "$BIN/bench_attention" --reps 50 --commit "$COMMIT" --out "$OUT/results_attention.md" \
  > "$OUT/bench_attention.log" 2>&1
echo "bench_attention rc=$?"
grep -A10 "Default tilings" "$OUT/results_attention.md"
timeout 150 "$BIN/bench_fused_qkv" --shapes seed,gpt2 > "$OUT/bench_fused_qkv.log" 2>&1
echo "bench_fused_qkv rc=$?"
grep -E "^\| (shape|seed B|gpt2 B)" "$OUT/bench_fused_qkv.log"
BIN=$BIN STEPS=20 WARMUP=5 PROFILE=0 TORCH=1 COMMIT=$COMMIT bash scripts/gpu_bench_train.sh
cd "$OUT" && tar -czf logs.tgz ./*.log ./*.md ./*.json ./*.jsonl 2>/dev/null
rm -f ./*.log ./*.md ./*.jsonl
