#!/usr/bin/python3
"""The arithmetic behind docs/scaling.md: GPTQ calibration of a Llama-70B-shaped model on k
workers. Prints the Markdown tables the doc quotes; with --check DOC, fails unless every table
row printed here appears verbatim in DOC (so the doc cannot drift from the formulas).

FLOP counts follow docs/benchmarks.md "Calibration": Hessian accumulation rows*K^2 (syrk),
GPTQ 2K^3/3 + N*K^2 + N*K*B, a forward pass 2*params per token + attention.
"""
import argparse
import sys

# ---- the model: Llama-2/3-70B shapes ----
LAYERS, D, F, HEADS, KV_HEADS = 80, 8192, 28672, 64, 8
HEAD_DIM = D // HEADS
KV = KV_HEADS * HEAD_DIM
MODULES = [  # (name, N = out features, K = in features, Hessian input group)
    ("q_proj", D, D, "attn_in"), ("k_proj", KV, D, "attn_in"), ("v_proj", KV, D, "attn_in"),
    ("o_proj", D, D, "attn_out"), ("gate_proj", F, D, "mlp_in"), ("up_proj", F, D, "mlp_in"),
    ("down_proj", D, F, "mlp_mid"),
]
# ---- the calibration set (llm-compressor's usual 512 samples x 2048 tokens) ----
SAMPLES, SEQ = 512, 2048
TOKENS = SAMPLES * SEQ
BLOCK = 128  # GPTQ block size
# ---- assumptions: one H100 SXM per worker ----
R_BF16 = 600e12   # sustained bf16 tensor-core GEMM for the layer forward (989 peak dense)
R_FP32 = 50e12    # fp32 (no TF32) syrk for Hessians (67 peak)
R_GPTQ = 25e12    # GPTQ solve: half the fp32 rate (the CPU code reaches ~70% of sgemm; the GPU
                  # column loop is latency-bound, so assume less)
NET = 25e9        # bytes/s per worker (200 Gb/s NIC, ~100% of line rate after overheads)
BARRIER = 0.05    # s per layer: RPC round trips, synchronisation
WQ_BITS = 4       # W4A16 group 128: packed int4 + one bf16 scale per 128 weights
GROUP = 128


def gb(x):
    return x / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check")
    a = ap.parse_args()

    params = sum(n * k for _, n, k, _ in MODULES)
    w_bytes = 2 * params  # bf16
    wq_bytes = params * WQ_BITS / 8 + params / GROUP * 2
    hess_k = {}
    for _, n, k, g in MODULES:
        hess_k[g] = k
    h_elems = sum(k * k for k in hess_k.values())
    h_bytes = 4 * h_elems  # f32
    h_bytes_per_module = sum(4 * k * k for _, _, k, _ in MODULES)  # one copy per module call
    hidden_bytes = TOKENS * D * 2  # bf16 hidden states of the whole calibration set

    fwd_flops = TOKENS * (2 * params + 4 * (SEQ / 2) * D)  # Linears + causal attention (avg ctx SEQ/2)
    hess_flops = TOKENS * h_elems
    gptq = {name: 2 * k ** 3 / 3 + n * k * k + n * k * BLOCK for name, n, k, _ in MODULES}
    t_fwd = fwd_flops / R_BF16
    t_hess = hess_flops / R_FP32
    t_solve = sum(gptq.values()) / R_GPTQ
    t_solve_max = max(gptq.values()) / R_GPTQ

    rows = []
    rows.append("| Linear params per layer | %d (%.2f GB bf16) |" % (params, gb(w_bytes)))
    rows.append("| packed W4A16 g128 per layer | %.2f GB |" % gb(wq_bytes))
    for g, k in hess_k.items():
        rows.append("| Hessian %s (%d x %d f32) | %d bytes = %.1f MiB |" % (g, k, k, 4 * k * k, 4 * k * k / 2**20))
    rows.append("| Hessians per layer, one per distinct input | %.2f GB |" % gb(h_bytes))
    rows.append("| Hessians per layer, one per module (7 calls) | %.2f GB |" % gb(h_bytes_per_module))
    rows.append("| hidden states of %d x %d tokens (bf16) | %.1f GB |" % (SAMPLES, SEQ, gb(hidden_bytes)))
    rows.append("| forward of one layer | %.2e FLOP = %.2f s |" % (fwd_flops, t_fwd))
    rows.append("| Hessian accumulation, one layer | %.2e FLOP = %.2f s |" % (hess_flops, t_hess))
    rows.append("| GPTQ solves, one layer (down_proj alone) | %.2e FLOP = %.2f s (%.2f s) |"
                % (sum(gptq.values()), t_solve, t_solve_max))

    def sequential(k):
        """Data-parallel over samples, layer by layer (the calibrator's sequential pipeline)."""
        compute = (2 * t_fwd + t_hess) / k
        solve = t_solve if k == 1 else max(t_solve_max, t_solve / k)
        comm = 0 if k == 1 else (k - 1) / k * (h_bytes + wq_bytes) / NET
        per_layer = compute + solve + comm + (BARRIER if k > 1 else 0)
        return per_layer, comm * 1, LAYERS * per_layer

    def fanout_only(k):
        """One machine does forwards + Hessians; QuantizeLayer calls go to k workers."""
        solve = t_solve if k == 1 else max(t_solve_max, t_solve / k)
        comm = 0 if k == 1 else (w_bytes + h_bytes_per_module + wq_bytes) / NET
        per_layer = 2 * t_fwd + t_hess + solve + comm + (BARRIER if k > 1 else 0)
        return per_layer, comm, LAYERS * per_layer

    def independent(k):
        """Hessians from the unquantized model (no error propagation): no per-layer barrier,
        the 560 solves spread over all workers and overlap the forwards."""
        total = LAYERS * ((t_fwd + t_hess) + t_solve) / k
        comm = 0 if k == 1 else (k - 1) / k * (h_bytes + wq_bytes) / NET
        total += LAYERS * comm
        return total / LAYERS, comm, total

    table = []
    for label, fn in (("sequential, data-parallel over samples", sequential),
                      ("sequential, QuantizeLayer fan-out only", fanout_only),
                      ("independent layers, data-parallel + fan-out", independent)):
        base = fn(1)[2]
        for k in (1, 8, 32):
            per_layer, comm, total = fn(k)
            table.append("| %s | %d | %.2f s | %.2f s | %.0f s = %.1f min | %.1fx |"
                         % (label, k, per_layer, comm, total, total / 60, base / total))
    floor = t_solve_max + (h_bytes + wq_bytes) / NET + BARRIER
    extra = ["| serial floor of the sequential pipeline (k -> inf) | %.2f s per layer = %.0f s |"
             % (floor, LAYERS * floor)]

    print("| quantity | value |\n|---|---|")
    print("\n".join(rows))
    print()
    print("| schedule | k | per layer | of which network | 80 layers | speed-up |\n|---|---|---|---|---|---|")
    print("\n".join(table))
    print()
    print("\n".join(extra))
    if a.check:
        doc = open(a.check).read()
        missing = [r for r in rows + table + extra if r not in doc]
        for r in missing:
            print("NOT IN %s: %s" % (a.check, r))
        print("%d rows checked, %d missing" % (len(rows + table + extra), len(missing)))
        return 1 if missing else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
