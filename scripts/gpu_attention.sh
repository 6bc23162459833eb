#!/usr/bin/env bash
# On the GPU machine: the attention tests (the flash kernels against the CPU
# reference and the simple kernels), bench_attention, and PyTorch SDPA at the
# same shapes for orientation. Runs prebuilt binaries from $BIN when both are
# there (built elsewhere and carried); otherwise configures like gpu_check.sh
# (needs .deps/) and builds only fg_test_ops and bench_attention. COMMIT names
# the commit in the table. Logs and the markdown go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/fg_out}
mkdir -p "$OUT"
BIN=${BIN:-build-gpu/bin}
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
  --format=csv,noheader | tee "$OUT/gpu.txt"

if [ ! -x "$BIN/fg_test_ops" ] || [ ! -x "$BIN/bench_attention" ]; then
  BIN=build-gpu/bin
  bash scripts/gpu_build.sh fg_test_ops bench_attention || exit 1
fi

SECONDS=0
timeout 170 "$BIN/fg_test_ops" --gtest_filter='*ttention*' > "$OUT/test.log" 2>&1
echo "tests rc=$? ${SECONDS}s"
grep -E "^\[  PASSED|^\[  FAILED|tests ran" "$OUT/test.log"
grep -E "Failure|relative error|Which is|Expected|trace|SKIPPED" "$OUT/test.log" | head -60

SECONDS=0
timeout 90 "$BIN/bench_attention" --out "$OUT/results_attention.md" --commit "$COMMIT" \
  > "$OUT/bench.log" 2>&1
echo "bench rc=$? ${SECONDS}s"

# PyTorch SDPA (its flash backend is FlashAttention-2; cuDNN where present), MHA shapes;
# TORCH=0 skips it.
[ "${TORCH:-1}" = 1 ] || { cat "$OUT/results_attention.md"; exit 0; }
SECONDS=0
timeout 60 python3 - > "$OUT/torch_attention.md" 2> "$OUT/torch.log" <<'EOF'
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

print(f"\n## PyTorch {torch.__version__} SDPA, same GPU, same run\n")
print("| shape | backend | forward TFLOP/s | backward TFLOP/s |\n|---|---|---:|---:|")
for B, T, H, hd in [(4, 4096, 16, 128), (16, 1024, 16, 128), (4, 4096, 32, 64),
                    (16, 1024, 32, 64), (16, 1024, 12, 64)]:
    flops = 4 * B * H * T * T * hd / 2
    q, k, v = (torch.randn(B, H, T, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    for name, backend in [("flash", SDPBackend.FLASH_ATTENTION),
                          ("cudnn", SDPBackend.CUDNN_ATTENTION)]:
        try:
            with sdpa_kernel(backend):
                fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
                o = fwd()
                do = torch.randn_like(o)
                bwd = lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True)
                tf = do_bench(fwd, warmup=20, rep=100, return_mode="median")
                tb = do_bench(bwd, warmup=20, rep=100, return_mode="median")
            print(f"| B={B} T={T} H={H} hd={hd} | {name} | {flops / tf / 1e9:.1f} | "
                  f"{2.5 * flops / tb / 1e9:.1f} |", flush=True)
        except Exception as e:  # a backend that is not available here
            print(f"| B={B} T={T} H={H} hd={hd} | {name} | n/a | n/a |", flush=True)
            print(name, e, file=__import__("sys").stderr)
EOF
echo "torch rc=$? ${SECONDS}s"
cat "$OUT/results_attention.md" "$OUT/torch_attention.md" 2>/dev/null | tail -40
