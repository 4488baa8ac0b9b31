#!/usr/bin/python3
"""Plots lowbit-bench-kernels CSV output: TFLOP/s against M, one panel per layer shape.

Usage: plot.py kernels-cpu.csv kernels-cpu.png   (Debian python3-matplotlib, pinned in
scripts/apt-packages.txt; GPU runs also accept the torch baseline CSV as a third argument).
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main():
    rows = load(sys.argv[1])
    if len(sys.argv) > 3:
        rows += load(sys.argv[3])
    shapes = []
    for r in rows:
        key = (r["shape"], r["k"], r["n"])
        if key not in shapes:
            shapes.append(key)
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.5 * len(shapes), 4), squeeze=False)
    for ax, (shape, k, n) in zip(axes[0], shapes):
        ops = []
        for r in rows:
            if (r["shape"], r["k"], r["n"]) == (shape, k, n) and float(r["tflops"]) > 0 and r["op"] not in ops:
                ops.append(r["op"])
        for op in ops:
            pts = sorted((int(r["m"]), float(r["tflops"])) for r in rows
                         if (r["shape"], r["k"], r["n"], r["op"]) == (shape, k, n, op))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=op,
                    linestyle="--" if op in ("sgemm", "torch_bf16", "torch_int_mm", "torch_scaled_mm") else "-")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel("TFLOP/s")
        ax.set_title(f"{shape} K={k} N={n}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)
    print("wrote", sys.argv[2])


if __name__ == "__main__":
    main()
