#!/usr/bin/env python3
"""Reads one device session's kernel benchmark CSVs and states each issue-3 GPU target as met or not.

Inputs (all written by scripts/device-kernels.sh into one folder):
  kernels-cuda.csv        lowbit-bench-kernels --backend cuda
  torch-baselines.csv     bench/kernels/torch_baselines.py (same session)
  gemv-split/kernels-cuda.csv, gemv-unsplit/kernels-cuda.csv   the GEMVs at M ≤ 16 with K split
                          across blocks and without (optional)
  nvidia-smi.txt          which GPU (its HBM bandwidth: the spec figure below)
  kernels-cpu.csv         lowbit-bench-kernels --backend cpu --ops sgemm,w8a8 (optional: the CPU target)

Times: at M ≤ 256 both sides carry `us_graph` (calls replayed from a CUDA graph, no host launch
cost) next to `us` (calls issued from the host); a comparison uses `us_graph` when both sides
have it, else `us`, and says which. Bandwidth targets use the weight + activation + output bytes
the benchmark counts (its TB/s column) over the time used.

Usage: targets.py DIR [--out DIR/targets.md]   (Python 3 standard library only)
"""
import argparse
import csv
import os
import re
import sys

# HBM bandwidth by GPU (spec sheets, bytes/s). The M = 1 and quantization targets are fractions of it.
HBM_BYTES_PER_S = [("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12),
                   ("A100", 2.0e12), ("L40S", 0.864e12)]

GEMMS = ("w8a8", "fp8", "w4a16")


def load(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for key in ("m", "k", "n"):
            r[key] = int(r[key])
        for key in ("us", "tflops", "tbs", "us_graph"):
            r[key] = float(r.get(key) or 0)
    return rows


def index(rows):
    return {(r["op"], r["shape"], r["m"]): r for r in rows}


def gpu_bandwidth(smi_path):
    text = ""
    if os.path.exists(smi_path):
        with open(smi_path) as f:
            text = f.read()
    for name, bw in HBM_BYTES_PER_S:
        if re.search(re.escape(name), text):
            return name, bw
    return None, None


def times(ours, theirs):
    """(our µs, their µs, basis): graph times when both sides have them."""
    if ours["us_graph"] > 0 and theirs["us_graph"] > 0:
        return ours["us_graph"], theirs["us_graph"], "graph"
    return ours["us"], theirs["us"], "host loop"


def bytes_moved(r):
    return r["tbs"] * 1e12 * r["us"] * 1e-6


def hbm_fraction(r, bw):
    """The row's bytes over its time (the graph time when measured) as a fraction of bw."""
    t = r["us_graph"] if r["us_graph"] > 0 else r["us"]
    return bytes_moved(r) / (t * 1e-6) / bw


def ratio_rows(ours, theirs, op, base, ms):
    """Per (shape, M): t(base) / t(op)."""
    out = []
    for (o, shape, m), r in sorted(ours.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        if o != op or m not in ms or (base, shape, m) not in theirs:
            continue
        a, b, basis = times(r, theirs[(base, shape, m)])
        out.append((shape, m, b / a, basis))
    return out


def verdict(values, goal):
    if not values:
        return "no data"
    return "met" if min(values) >= goal else "not met"


def fmt_ratios(rows):
    return "; ".join(f"{s} M={m} {v:.2f}× ({basis})" for s, m, v, basis in rows) or "—"


def evaluate(folder):
    ours = index(load(os.path.join(folder, "kernels-cuda.csv")))
    torch = index(load(os.path.join(folder, "torch-baselines.csv")))
    gpu, bw = gpu_bandwidth(os.path.join(folder, "nvidia-smi.txt"))
    lines = []
    add = lines.append
    add(f"GPU: {gpu or 'unknown'}" + (f", HBM {bw / 1e12:.2f} TB/s (spec)" if bw else ""))
    add("")
    add("| target | result | verdict |")
    add("|---|---|---|")
    all_ms = sorted({m for (_, _, m) in ours})
    big = [m for m in all_ms if m >= 1024]
    for op, name in (("w8a8", "INT8"), ("fp8", "FP8")):
        rows = ratio_rows(ours, torch, op, "torch_bf16", big)
        add(f"| {name} at M ≥ 1024 ≥ 1.75× torch bf16 | {fmt_ratios(rows)} | "
            f"{verdict([v for _, _, v, _ in rows], 1.75)} |")
    rows = ratio_rows(ours, torch, "fp8", "torch_scaled_mm", all_ms)
    add(f"| FP8 ≥ 1.05× torch._scaled_mm at every shape | {fmt_ratios(rows)} | "
        f"{verdict([v for _, _, v, _ in rows], 1.05)} |")
    peak = max((r["tflops"] for (op, _, _), r in ours.items() if op in ("w8a8", "fp8")), default=0)
    add(f"| INT8 / FP8 aim ≥ 1400 TFLOP/s | best {peak:.0f} TFLOP/s | "
        f"{'no data' if peak == 0 else 'met' if peak >= 1400 else 'not met'} |")
    rows = ratio_rows(ours, torch, "w4a16", "torch_bf16", [m for m in all_ms if m <= 16])
    add(f"| W4A16 at M ≤ 16 ≥ 3.2× torch bf16 | {fmt_ratios(rows)} | {verdict([v for _, _, v, _ in rows], 3.2)} |")
    rows = ratio_rows(ours, torch, "w4a16", "torch_bf16", [m for m in all_ms if m >= 256])
    add(f"| W4A16 at M ≥ 256 ≥ 1.0× torch bf16 | {fmt_ratios(rows)} | {verdict([v for _, _, v, _ in rows], 1.0)} |")
    if bw:
        fr = [(f"{op} {shape}", hbm_fraction(r, bw)) for (op, shape, m), r in sorted(ours.items())
              if op in GEMMS and m == 1]
        add("| M = 1: every GEMM ≥ 75% of HBM bandwidth | " +
            ("; ".join(f"{k} {v:.0%}" for k, v in fr) or "—") +
            f" | {verdict([v for _, v in fr], 0.75)} |")
        q = [(shape, m, hbm_fraction(r, bw)) for (op, shape, m), r in sorted(ours.items())
             if op == "quant_int8" and m >= 1024]
        add("| quantization ≥ 85% of HBM bandwidth (M ≥ 1024) | " +
            ("; ".join(f"{s} M={m} {v:.0%}" for s, m, v in q) or "—") + f" | {verdict([v for _, _, v in q], 0.85)} |")
    cpu = [r for r in load(os.path.join(folder, "kernels-cpu.csv"))
           if r["op"] == "w8a8" and r["m"] >= 64 and float(r["ratio_sgemm"]) > 0]  # 0: no sgemm beside it
    if cpu:
        rows = [(r["shape"], r["m"], float(r["ratio_sgemm"])) for r in cpu]
        add("| CPU: W8A8 ≥ 2.5× OpenBLAS sgemm at M ≥ 64 | " +
            "; ".join(f"{s} M={m} {v:.2f}×" for s, m, v in rows) + f" | {verdict([v for _, _, v in rows], 2.5)} |")
    split = index(load(os.path.join(folder, "gemv-split", "kernels-cuda.csv")))
    unsplit = index(load(os.path.join(folder, "gemv-unsplit", "kernels-cuda.csv")))
    if split and unsplit:
        ms = sorted({m for (_, _, m) in split})
        add("")
        add("GEMVs with K split across blocks against unsplit: t(unsplit) / t(split), > 1 means split-K is faster")
        add("")
        add("| op | layer | " + " | ".join(f"M={m}" for m in ms) + " |")
        add("|---|---|" + "---:|" * len(ms))
        for op, shape in sorted({(o, s) for (o, s, _) in split}):
            cells = []
            for m in ms:
                a, b = split.get((op, shape, m)), unsplit.get((op, shape, m))
                if a and b:
                    ta, tb, basis = times(a, b)
                    cells.append(f"{tb / ta:.2f}" + ("" if basis == "graph" else " (loop)"))
                else:
                    cells.append("—")
            add(f"| {op} | {shape} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--out")
    args = ap.parse_args()
    text = evaluate(args.dir)
    sys.stdout.write(text)
    out = args.out or os.path.join(args.dir, "targets.md")
    with open(out, "w") as f:
        f.write(text)
    print("wrote", out)


if __name__ == "__main__":
    main()
