#!/usr/bin/env python3
"""The fused residual + RMSNorm + QKV + bias + RoPE layer: ours against PyTorch.

On the GPU machine, in one run:
  1. correctness: our q, k, v, h, rstd and every gradient (fused_qkv_io on files) against
     PyTorch in fp32 on the same bf16 inputs, relative error ||a - b|| / ||b|| <= 1e-2 (NaN
     fails); PyTorch's own bf16 eager result is shown beside it for scale;
  2. speed at the bench shapes (bf16): PyTorch eager and torch.compile, forward and
     forward + backward, CUDA events, medians, inputs rotated out of L2, against ours
     (bench_fused_qkv's JSON from the same machine, or run here).

  PYTHONUNBUFFERED=1 python3 bench/compare_torch.py [--bin build-gpu/bin] [--ours-json F]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

EPS = 1e-5
THETA = 10000.0
ROTATE_BYTES = 256 << 20
SHAPES = [
    dict(name="seed", B=2, T=4096, D=4096, H=32, Hkv=32, bias=True),
    dict(name="gpt2", B=8, T=1024, D=768, H=12, Hkv=12, bias=False),
    dict(name="baby", B=64, T=256, D=384, H=6, Hkv=6, bias=False),
    dict(name="gqa", B=2, T=4096, D=4096, H=32, Hkv=8, bias=False),
]
# Correctness at the same hidden sizes and heads, fewer rows, and some options flipped:
# partial rotary, no residual, position offsets.
CHECKS = [
    dict(name="seed", B=1, T=256, D=4096, H=32, Hkv=32, bias=True, residual=True, rot=128, offset=0),
    dict(name="gpt2", B=2, T=200, D=768, H=12, Hkv=12, bias=False, residual=True, rot=64, offset=0),
    dict(name="baby", B=4, T=256, D=384, H=6, Hkv=6, bias=True, residual=False, rot=32, offset=5),
    dict(name="gqa", B=1, T=300, D=4096, H=32, Hkv=8, bias=False, residual=True, rot=128, offset=1000),
]


def rope_tables(T, rot, offset, device):
    """cos, sin (T, rot/2) in fp32 with the framework's angles: pos * theta^(-2i/rot)."""
    i = torch.arange(rot // 2, dtype=torch.float64)
    inv_freq = torch.exp2(-2.0 * i / rot * math.log2(THETA)).float().to(device)
    pos = torch.arange(offset, offset + T, dtype=torch.int32, device=device)
    angle = pos.float()[:, None] * inv_freq[None, :]
    return pos, torch.cos(angle), torch.sin(angle)


def rope(x, cos, sin, rot):
    """Rotate-half RoPE on the first rot dims of each head; x (B, T, heads, hd)."""
    half = rot // 2
    c = cos[None, :, None, :].to(x.dtype)
    s = sin[None, :, None, :].to(x.dtype)
    x1, x2, rest = x[..., :half], x[..., half:rot], x[..., rot:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, rest], dim=-1)


def make_layer(H, Hkv, hd, rot, residual):
    def layer(x, res, g, w, b, cos, sin):
        h = x + res if residual else x
        hf = h.float()
        rstd = torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + EPS)
        n = (hf * rstd * g.float()).to(x.dtype)
        qkv = F.linear(n, w, b)
        B, T, _ = x.shape
        q, k, v = qkv.split([H * hd, Hkv * hd, Hkv * hd], dim=-1)
        q = rope(q.reshape(B, T, H, hd), cos, sin, rot)
        k = rope(k.reshape(B, T, Hkv, hd), cos, sin, rot)
        return q, k, v.reshape(B, T, Hkv, hd), h

    return layer


def rel_err(a, b):
    a, b = a.double(), b.double()
    e = (a - b).norm().item() / max(b.norm().item(), 1e-300)
    return e if math.isfinite(e) else float("nan")


def write_bin(path, t):
    with open(path, "wb") as f:
        f.write(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())


def read_bin(path, shape, dtype, device):
    with open(path, "rb") as f:
        data = bytearray(f.read())
    return torch.frombuffer(data, dtype=dtype).reshape(shape).to(device)


def check_shape(c, bin_dir, dev):
    B, T, D, H, Hkv, rot = c["B"], c["T"], c["D"], c["H"], c["Hkv"], c["rot"]
    hd = D // H
    N = (H + 2 * Hkv) * hd
    gen = torch.Generator(device=dev).manual_seed(7)
    bf = torch.bfloat16

    def rnd(*shape, std=1.0):
        return (torch.randn(*shape, generator=gen, device=dev) * std).to(bf)

    inputs = dict(x=rnd(B, T, D), residual=rnd(B, T, D),
                  norm_weight=(torch.rand(D, generator=gen, device=dev) + 0.5).to(bf),
                  wqkv=rnd(N, D, std=0.02), bias=rnd(N, std=0.02),
                  dq=rnd(B, T, H, hd), dk=rnd(B, T, Hkv, hd), dv=rnd(B, T, Hkv, hd), dh=rnd(B, T, D))
    pos, cos, sin = rope_tables(T, rot, c["offset"], dev)
    with tempfile.TemporaryDirectory() as d:
        cfg = dict(B=B, T=T, D=D, H=H, Hkv=Hkv, rotary_dim=rot, bias=c["bias"],
                   residual=c["residual"], eps=EPS, theta=THETA, dtype="bf16")
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f)
        for name, t in inputs.items():
            if (name == "residual" and not c["residual"]) or (name == "bias" and not c["bias"]):
                continue
            write_bin(os.path.join(d, name + ".bin"), t)
        write_bin(os.path.join(d, "positions.bin"), pos)
        subprocess.run([os.path.join(bin_dir, "fused_qkv_io"), d], check=True)
        shapes = dict(q=(B, T, H, hd), k=(B, T, Hkv, hd), v=(B, T, Hkv, hd), h=(B, T, D),
                      dx=(B, T, D), dnorm_weight=(D,), dwqkv=(N, D), dbias=(N,))
        ours = {k: read_bin(os.path.join(d, k + ".out.bin"), s, bf, dev) for k, s in shapes.items()
                if k != "dbias" or c["bias"]}
        ours["rstd"] = read_bin(os.path.join(d, "rstd.out.bin"), (B * T,), torch.float32, dev)

    layer = make_layer(H, Hkv, hd, rot, c["residual"])

    def run(dtype):
        leaves = {k: inputs[k].to(dtype).requires_grad_() for k in ("x", "residual", "norm_weight", "wqkv", "bias")}
        res = leaves["residual"] if c["residual"] else None
        b = leaves["bias"] if c["bias"] else None
        q, k, v, h = layer(leaves["x"], res, leaves["norm_weight"], leaves["wqkv"], b, cos, sin)
        wrt = [leaves["x"], leaves["norm_weight"], leaves["wqkv"]] + ([b] if c["bias"] else [])
        grads = torch.autograd.grad([q, k, v, h], wrt, [inputs[n].to(dtype) for n in ("dq", "dk", "dv", "dh")])
        hf = h.detach().float()
        out = dict(q=q, k=k, v=v, h=h, dx=grads[0], dnorm_weight=grads[1], dwqkv=grads[2],
                   rstd=torch.rsqrt(hf.pow(2).mean(-1) + EPS).reshape(-1))
        if c["bias"]:
            out["dbias"] = grads[3]
        return {k: t.detach() for k, t in out.items()}

    ref, eager = run(torch.float32), run(bf)
    rows = []
    for name in ours:
        e_ours, e_eager = rel_err(ours[name], ref[name]), rel_err(eager[name], ref[name])
        rows.append((c["name"], name, e_ours, e_eager, e_ours <= 1e-2))
    return rows


def time_ms(fn, reps, warmup):
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    try:  # a device head start, so host overhead does not show as device idle time
        torch.cuda._sleep(int(0.05 * 1.98e9))
    except Exception:
        pass
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for i in range(reps):
        ev[i][0].record()
        fn(warmup + i)
        ev[i][1].record()
    torch.cuda.synchronize()
    ms = sorted(a.elapsed_time(b) for a, b in ev)
    return ms[reps // 2] if reps % 2 else 0.5 * (ms[reps // 2 - 1] + ms[reps // 2])


def bench_shape(s, reps, warmup, compile_too):
    dev = "cuda"
    B, T, D, H, Hkv = s["B"], s["T"], s["D"], s["H"], s["Hkv"]
    hd, rot = D // H, D // H
    N = (H + 2 * Hkv) * hd
    bf = torch.bfloat16
    set_bytes = 2 * (3 * B * T * D + B * T * N)
    sets = max(2, ROTATE_BYTES // set_bytes + 1)
    xs = [torch.randn(B, T, D, device=dev, dtype=bf).requires_grad_() for _ in range(sets)]
    rs = [torch.randn(B, T, D, device=dev, dtype=bf).requires_grad_() for _ in range(sets)]
    gs = [(torch.randn(B, T, H, hd, device=dev, dtype=bf) * 0.01, torch.randn(B, T, Hkv, hd, device=dev, dtype=bf) * 0.01,
           torch.randn(B, T, Hkv, hd, device=dev, dtype=bf) * 0.01, torch.randn(B, T, D, device=dev, dtype=bf) * 0.01)
          for _ in range(sets)]
    g = (torch.rand(D, device=dev) + 0.5).to(bf).requires_grad_()
    w = (torch.randn(N, D, device=dev) * 0.02).to(bf).requires_grad_()
    b = (torch.randn(N, device=dev) * 0.02).to(bf).requires_grad_() if s["bias"] else None
    _, cos, sin = rope_tables(T, rot, 0, dev)
    leaves = [g, w] + ([b] if b is not None else [])
    layer = make_layer(H, Hkv, hd, rot, True)
    out = {}
    fns = [("eager", layer)]
    if compile_too:
        fns.append(("compile", torch.compile(layer, dynamic=False)))
    for label, f in fns:
        def fwd(i):
            f(xs[i % sets], rs[i % sets], g, w, b, cos, sin)

        def fwd_bwd(i):
            o = f(xs[i % sets], rs[i % sets], g, w, b, cos, sin)
            torch.autograd.grad(o, [xs[i % sets], rs[i % sets]] + leaves, gs[i % sets])

        t0 = time.time()
        fwd_bwd(0)  # compiles forward and backward the first time
        torch.cuda.synchronize()
        out[label + "_compile_s"] = time.time() - t0
        out[label + "_fwd"] = time_ms(fwd, reps, warmup)
        out[label + "_fwd_bwd"] = time_ms(fwd_bwd, reps, warmup)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="build-gpu/bin", help="folder with fused_qkv_io and bench_fused_qkv")
    ap.add_argument("--ours-json", help="bench_fused_qkv --json output from this machine (else run it)")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=1e9,
                    help="skip torch.compile for shapes started after this many seconds")
    ap.add_argument("--md", help="also write the tables to this file")
    args = ap.parse_args()
    start = time.time()
    dev = "cuda"
    lines = [f"GPU: {torch.cuda.get_device_name(0)}; PyTorch {torch.__version__}; bf16; medians of "
             f"{args.reps} after {args.warmup} warm-up", ""]

    # 1. Correctness.
    lines += ["| check shape | tensor | ours vs fp32 | torch bf16 eager vs fp32 | ours <= 1e-2 |", "|---|---|---|---|---|"]
    ok = True
    for c in CHECKS:
        for name, tensor, e_ours, e_eager, good in check_shape(c, args.bin, dev):
            ok = ok and good
            lines.append(f"| {name} B{c['B']} T{c['T']} rot{c['rot']}{' bias' if c['bias'] else ''}"
                         f"{'' if c['residual'] else ' no-res'} pos+{c['offset']} | {tensor} | "
                         f"{e_ours:.2e} | {e_eager:.2e} | {'yes' if good else 'NO'} |")
        print(f"checked {c['name']} ({time.time() - start:.0f} s)", file=sys.stderr)
    print("\n".join(lines[2:]))

    # 2. Speed.
    if args.ours_json:
        with open(args.ours_json) as f:
            ours = json.load(f)["shapes"]
    else:
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            subprocess.run([os.path.join(args.bin, "bench_fused_qkv"), "--json", f.name], check=True,
                           stdout=subprocess.DEVNULL)
            ours = json.load(open(f.name))["shapes"]
    speed = ["", "| shape | ours fwd | eager fwd | compile fwd | ours fwd+bwd | eager fwd+bwd | "
                 "compile fwd+bwd | eager/ours (fwd, fwd+bwd) | compile/ours (fwd, fwd+bwd) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in SHAPES:
        compile_too = time.time() - start < args.budget_s
        t = bench_shape(s, args.reps, args.warmup, compile_too)
        o = ours.get(s["name"], {})
        of, ofb = o.get("fwd_ms", float("nan")), o.get("fwd_bwd_ms", float("nan"))
        cf, cfb = t.get("compile_fwd", float("nan")), t.get("compile_fwd_bwd", float("nan"))
        speed.append(f"| {s['name']} | {of:.3f} ms | {t['eager_fwd']:.3f} ms | {cf:.3f} ms | {ofb:.3f} ms | "
                     f"{t['eager_fwd_bwd']:.3f} ms | {cfb:.3f} ms | {t['eager_fwd'] / of:.2f}x, "
                     f"{t['eager_fwd_bwd'] / ofb:.2f}x | {cf / of:.2f}x, {cfb / ofb:.2f}x |")
        print(f"timed {s['name']} ({time.time() - start:.0f} s; compile took "
              f"{t.get('compile_compile_s', float('nan')):.0f} s)", file=sys.stderr)
        print(speed[-1])
    lines += speed
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
