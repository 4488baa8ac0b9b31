#!/usr/bin/env python3
"""GPU baselines for bench/kernels, measured on the device machine in the same session as
lowbit-bench-kernels --backend cuda: torch.matmul bf16 (cuBLAS), torch._int_mm (int8 → int32),
torch._scaled_mm (FP8 E4M3, per-token × per-channel scales, bf16 out) on the Llama-3-8B layer
shapes. CUDA events around many launches; weights rotate through enough copies to exceed 2× the
50 MB L2 for small M (design.md §7). For M ≤ 256 also `us_graph`: per call when GRAPH_CALLS calls
are replayed from a CUDA graph (no Python / host launch cost), as lowbit-bench-kernels does for its
side. Writes the same CSV columns as lowbit-bench-kernels.
Usage: torch_baselines.py [--ms 1,16,64,256,1024,4096] [--reps 5] [--out torch-baselines.csv]
"""
import argparse
import csv

import torch

SHAPES = [("qkv_proj", 4096, 6144), ("o_proj", 4096, 4096), ("gate_up_proj", 4096, 28672), ("down_proj", 14336, 4096)]
L2_BYTES = 50 << 20
GRAPH_CALLS = 64


def time_op(fn, copies, reps):
    for i in range(3):
        fn(i % copies)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn(0)
    end.record()
    torch.cuda.synchronize()
    one = max(start.elapsed_time(end) / 1e3, 1e-6)
    iters = max(10, int(0.05 / one))
    per = []
    for _ in range(reps):
        start.record()
        for i in range(iters):
            fn(i % copies)
        end.record()
        torch.cuda.synchronize()
        per.append(start.elapsed_time(end) / 1e3 / iters)
    per.sort()
    return per[len(per) // 2]


def time_graph(fn, copies, reps, one):
    """Per-call seconds of GRAPH_CALLS calls captured into one CUDA graph and replayed."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream before capture (torch's recipe)
        for i in range(3):
            fn(i % copies)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(GRAPH_CALLS):
            fn(i % copies)
    g.replay()
    torch.cuda.synchronize()
    launches = max(1, int(0.05 / (one * GRAPH_CALLS)))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    per = []
    for _ in range(reps):
        start.record()
        for _ in range(launches):
            g.replay()
        end.record()
        torch.cuda.synchronize()
        per.append(start.elapsed_time(end) / 1e3 / (launches * GRAPH_CALLS))
    per.sort()
    return per[len(per) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="1,16,64,256,1024,4096")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default="torch-baselines.csv")
    args = ap.parse_args()
    dev = torch.device("cuda")
    fields = ["op", "shape", "m", "k", "n", "us", "tflops", "tbs", "ratio_sgemm", "us_graph"]
    # Rows are written as they are measured: a run cut short keeps what it measured.
    with open(args.out, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=fields)
        out.writeheader()
        f.flush()
        for name, k, n in SHAPES:
            for m in [int(v) for v in args.ms.split(",")]:
                measure_shape(dev, name, k, n, m, args.reps, out, f)
    print("wrote", args.out)


def copies_for(m, weight_bytes):
    """Weight copies to rotate through: ≥ 2× the L2 for memory-bound M (as lowbit-bench-kernels)."""
    return max(1, min(16, -(-2 * L2_BYTES // weight_bytes))) if m <= 64 else 1


def measure_shape(dev, name, k, n, m, reps, out, f):
    c16, c8 = copies_for(m, 2 * n * k), copies_for(m, n * k)
    x16 = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    w16 = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) for _ in range(c16)]
    ops = {"torch_bf16": (lambda i: torch.matmul(x16, w16[i].t()), 2 * n * k + 2 * m * k + 2 * m * n, c16)}
    # torch._int_mm needs M > 16: at M ≤ 16 this row is an M = 17 product (labelled with M).
    x8 = torch.randint(-128, 127, (max(m, 17), k), device=dev, dtype=torch.int8)
    w8 = [torch.randint(-128, 127, (n, k), device=dev, dtype=torch.int8) for _ in range(c8)]
    ops["torch_int_mm"] = (lambda i: torch._int_mm(x8, w8[i].t()), n * k + m * k + 4 * m * n, c8)
    xf8 = x16.to(torch.float8_e4m3fn)
    wf8 = [torch.randn(n, k, device=dev, dtype=torch.bfloat16).to(torch.float8_e4m3fn) for _ in range(c8)]
    sa = torch.rand(m, 1, device=dev, dtype=torch.float32) + 0.5
    sb = torch.rand(1, n, device=dev, dtype=torch.float32) + 0.5
    ops["torch_scaled_mm"] = (lambda i: torch._scaled_mm(xf8, wf8[i].t(), scale_a=sa, scale_b=sb,
                                                          out_dtype=torch.bfloat16), n * k + m * k + 2 * m * n, c8)
    for op, (fn, nbytes, copies) in ops.items():
        try:
            t = time_op(fn, copies, reps)
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"{op} M={m} {name}: {e}", flush=True)
            continue
        tg = 0.0
        if m <= 256:
            try:
                tg = time_graph(fn, copies, reps, t)
            except Exception as e:  # noqa: BLE001 - the loop figure stands alone
                print(f"{op} M={m} {name}: no graph timing: {e}", flush=True)
        out.writerow(dict(op=op, shape=name, m=m, k=k, n=n, us=t * 1e6, tflops=2 * m * n * k / t / 1e12,
                          tbs=nbytes / t / 1e12, ratio_sgemm=0, us_graph=tg * 1e6))
        f.flush()
        graph = f"  graph {tg * 1e6:8.2f} us" if tg > 0 else ""
        print(f"{op:16s} {name:13s} M={m:<5d} {t * 1e6:10.1f} us {2 * m * n * k / t / 1e12:8.1f} TFLOP/s{graph}",
              flush=True)


if __name__ == "__main__":
    main()
