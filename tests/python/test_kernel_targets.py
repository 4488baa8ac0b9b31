#!/usr/bin/python3
"""bench/kernels/targets.py against hand-computed verdicts on a synthetic device session.
Run: /usr/bin/python3 tests/python/test_kernel_targets.py"""
import csv
import os
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "bench", "kernels"))
import targets  # noqa: E402

FIELDS = ["op", "shape", "m", "k", "n", "us", "tflops", "tbs", "ratio_sgemm", "us_graph"]


def row(op, m, us, us_graph=0.0, tbs=0.0, tflops=0.0, shape="o_proj"):
    return dict(op=op, shape=shape, m=m, k=4096, n=4096, us=us, tflops=tflops, tbs=tbs, ratio_sgemm=0,
                us_graph=us_graph)


def write(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)


def line(text, start):
    return next(l for l in text.splitlines() if l.startswith(start))


class TargetsTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        # M = 1, int4 o_proj: 8.4 MB in 4 µs from the host loop (2.1 TB/s), 2.5 µs from a graph:
        # 8.4e6 / 2.5e-6 = 3.36 TB/s, 100.3% of an H100's 3.35.
        ours = [row("w8a8", 4096, 50, tflops=2.75), row("fp8", 4096, 60, tflops=2.29),
                row("fp8", 1, 7, us_graph=5), row("w4a16", 1, 4, us_graph=2.5, tbs=2.1),
                row("w4a16", 16, 4, us_graph=3), row("w4a16", 256, 20),
                row("quant_int8", 4096, 10, tbs=2.8)]
        torch = [row("torch_bf16", 4096, 100), row("torch_scaled_mm", 4096, 66),
                 row("torch_scaled_mm", 1, 9, us_graph=6), row("torch_bf16", 1, 12),
                 row("torch_bf16", 16, 12, us_graph=10.5), row("torch_bf16", 256, 19)]
        write(os.path.join(self.dir, "kernels-cuda.csv"), ours)
        write(os.path.join(self.dir, "torch-baselines.csv"), torch)
        write(os.path.join(self.dir, "gemv-split", "kernels-cuda.csv"),
              [row("w4a16", 16, 5, us_graph=3), row("fp8", 16, 5)])
        write(os.path.join(self.dir, "gemv-unsplit", "kernels-cuda.csv"),
              [row("w4a16", 16, 6, us_graph=4.5), row("fp8", 16, 4)])
        cpu = [row("sgemm", 64, 900), row("w8a8", 64, 300), row("w8a8", 256, 500)]
        cpu[1]["ratio_sgemm"], cpu[2]["ratio_sgemm"] = 3.0, 2.4
        write(os.path.join(self.dir, "kernels-cpu.csv"), cpu)
        with open(os.path.join(self.dir, "nvidia-smi.txt"), "w") as f:
            f.write("|   0  NVIDIA H100 80GB HBM3          On  |\n")
        self.text = targets.evaluate(self.dir)

    def test_gpu_and_bandwidth(self):
        self.assertIn("GPU: H100, HBM 3.35 TB/s (spec)", self.text)

    def test_large_m_ratios_against_bf16(self):
        self.assertIn("o_proj M=4096 2.00× (host loop) | met", line(self.text, "| INT8 at M ≥ 1024"))
        self.assertIn("o_proj M=4096 1.67× (host loop) | not met", line(self.text, "| FP8 at M ≥ 1024"))

    def test_scaled_mm_uses_graph_times_where_both_have_them(self):
        l = line(self.text, "| FP8 ≥ 1.05×")
        self.assertIn("o_proj M=1 1.20× (graph)", l)  # 6 / 5
        self.assertIn("o_proj M=4096 1.10× (host loop)", l)  # 66 / 60
        self.assertTrue(l.endswith("| met |"))

    def test_w4a16_small_m_falls_back_to_loop_times_and_fails_on_the_worst(self):
        l = line(self.text, "| W4A16 at M ≤ 16")
        self.assertIn("o_proj M=1 3.00× (host loop)", l)  # torch has no graph time at M = 1: 12 / 4
        self.assertIn("o_proj M=16 3.50× (graph)", l)  # 10.5 / 3
        self.assertTrue(l.endswith("| not met |"))
        self.assertIn("o_proj M=256 0.95× (host loop) | not met", line(self.text, "| W4A16 at M ≥ 256"))

    def test_bandwidth_fractions(self):
        self.assertIn("w4a16 o_proj 100%", line(self.text, "| M = 1: every GEMM"))
        # 2.8 TB/s with no graph time: 2.8 / 3.35 = 84% < 85%.
        self.assertIn("o_proj M=4096 84% | not met", line(self.text, "| quantization"))

    def test_cpu_target_takes_the_worst_ratio(self):
        self.assertIn("o_proj M=64 3.00×; o_proj M=256 2.40× | not met", line(self.text, "| CPU: W8A8"))

    def test_split_k_table(self):
        self.assertIn("| w4a16 | o_proj | 1.50 |", self.text)  # 4.5 / 3
        self.assertIn("| fp8 | o_proj | 0.80 (loop) |", self.text)  # 4 / 5, no graph times


if __name__ == "__main__":
    unittest.main()
