#!/usr/bin/python3
"""Independent NumPy reference of the Llama-family forward pass (Llama 2/3/3.1, Mistral, Qwen2).

Written from the Hugging Face modeling code's equations (LlamaRMSNorm, rotate_half RoPE with
the default / linear / llama3 inverse frequencies, causal scaled-dot-product attention with
repeat_kv for GQA, SwiGLU MLP), in float64. It shares no code with the C++ forward: it reads
the safetensors files itself (bf16 decoded by bit shifting) and config.json itself.

Usage as a test (ctest, tests/python/forward.cmake):
  /usr/bin/python3 tests/python/llama_ref.py --gen lowbit-gen-model --forward lowbit-forward \
      --work DIR (--tokens "1,2,3;4,5" | --lengths 70,33,1) [--expect-rope-scaling-matters] \
      -- [lowbit-gen-model flags]
generates the model, runs lowbit-forward on the token ids, computes the logits here and
compares: ||C - ref|| / ||ref|| <= rtol and max|C - ref| / max|ref| <= rtol (default 1e-4).
Exit status 0 when they agree, 1 otherwise, 2 for usage errors.

As a library: load_model(dir) -> (config, tensors); logits(config, tensors, ids) -> [n, vocab].
"""

import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys

try:
    import numpy as np
except ImportError:
    sys.stderr.write("llama_ref.py needs NumPy: run it with /usr/bin/python3\n")
    sys.exit(2)


# ------------------------------------------------------------------------------------------
# safetensors: 8-byte little-endian header length, a JSON header, then the data buffer.
# ------------------------------------------------------------------------------------------
def _read_file(path):
    out = {}
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    base = 8 + n
    for name, e in header.items():
        if name == "__metadata__":
            continue
        begin, end = e["data_offsets"]
        raw = blob[base + begin:base + end]
        shape = tuple(e["shape"])
        dt = e["dtype"]
        if dt == "F32":
            a = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        elif dt == "F16":
            a = np.frombuffer(raw, dtype="<f2").astype(np.float64)
        elif dt == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << np.uint32(16)
            a = bits.view(np.float32).astype(np.float64)
        else:
            raise ValueError(f"{path}: {name} has dtype {dt}, not a float weight")
        out[name] = a.reshape(shape)
    return out


def load_model(directory):
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(x for x in os.listdir(directory) if x.endswith(".safetensors"))
    tensors = {}
    for name in files:
        tensors.update(_read_file(os.path.join(directory, name)))
    return config, tensors


# ------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------
def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def inv_frequencies(config, head_dim, use_scaling=True):
    base = float(config.get("rope_theta", 10000.0))
    inv = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    rs = config.get("rope_scaling") if use_scaling else None
    if not rs:
        return inv
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "linear":
        return inv / rs["factor"]
    if kind == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        return np.where(medium, smoothed, scaled)
    if kind == "default":
        return inv
    raise ValueError(f"rope_scaling {kind} not modelled")


def rope(x, positions, inv):
    """x [n, heads, d]; Hugging Face rotate_half: (x1, x2) -> x*cos + (-x2, x1)*sin."""
    freqs = positions[:, None] * inv[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def linear(t, name, x):
    y = x @ t[name + ".weight"].T
    if name + ".bias" in t:
        y = y + t[name + ".bias"]
    return y


def sequence_logits(config, t, ids, use_scaling=True):
    h = config["hidden_size"]
    nh = config["num_attention_heads"]
    nkv = config.get("num_key_value_heads") or nh
    d = config.get("head_dim") or h // nh
    eps = config.get("rms_norm_eps", 1e-6)
    inv = inv_frequencies(config, d, use_scaling)
    n = len(ids)
    x = t["model.embed_tokens.weight"][np.asarray(ids, dtype=np.int64)]
    pos = np.arange(n, dtype=np.float64)
    mask = np.triu(np.full((n, n), -np.inf), k=1)
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        a = rms_norm(x, t[p + "input_layernorm.weight"], eps)
        q = linear(t, p + "self_attn.q_proj", a).reshape(n, nh, d)
        k = linear(t, p + "self_attn.k_proj", a).reshape(n, nkv, d)
        v = linear(t, p + "self_attn.v_proj", a).reshape(n, nkv, d)
        q, k = rope(q, pos, inv), rope(k, pos, inv)
        rep = nh // nkv
        k = np.repeat(k, rep, axis=1)  # repeat_kv: head j uses kv head j // rep
        v = np.repeat(v, rep, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(d) + mask[None]
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", s, v).reshape(n, nh * d)
        x = x + linear(t, p + "self_attn.o_proj", o)
        m = rms_norm(x, t[p + "post_attention_layernorm.weight"], eps)
        g = linear(t, p + "mlp.gate_proj", m)
        u = linear(t, p + "mlp.up_proj", m)
        x = x + linear(t, p + "mlp.down_proj", g / (1 + np.exp(-g)) * u)
    x = rms_norm(x, t["model.norm.weight"], eps)
    head = t["model.embed_tokens.weight"] if config.get("tie_word_embeddings") else t["lm_head.weight"]
    return x @ head.T


def logits(config, t, sequences, use_scaling=True):
    return np.concatenate([sequence_logits(config, t, s, use_scaling) for s in sequences], axis=0)


# ------------------------------------------------------------------------------------------
# The test driver
# ------------------------------------------------------------------------------------------
def relative_errors(got, ref):
    diff = got - ref
    return (float(np.linalg.norm(diff) / np.linalg.norm(ref)),
            float(np.abs(diff).max() / np.abs(ref).max()))


def token_ids(args, vocab):
    if args.tokens:
        return [[int(v) for v in seq.split(",") if v.strip()] for seq in args.tokens.split(";")]
    seqs, state = [], 12345
    for n in (int(v) for v in args.lengths.split(",")):
        seq = []
        for _ in range(n):
            state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
            seq.append((state >> 33) % vocab)
        seqs.append(seq)
    return seqs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gen", required=True, help="lowbit-gen-model binary")
    ap.add_argument("--forward", required=True, help="lowbit-forward binary")
    ap.add_argument("--work", required=True, help="scratch directory (replaced, removed on success)")
    ap.add_argument("--tokens", help='token ids, e.g. "1,2,3;4,5"')
    ap.add_argument("--lengths", help="sequence lengths for deterministic pseudo-random ids, e.g. 70,33")
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--expect-rope-scaling-matters", action="store_true",
                    help="also check that ignoring rope_scaling changes the logits far beyond rtol")
    ap.add_argument("gen_flags", nargs="*")
    args = ap.parse_args()
    if bool(args.tokens) == bool(args.lengths):
        ap.error("give exactly one of --tokens and --lengths")

    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    model = os.path.join(args.work, "model")
    out = os.path.join(args.work, "logits.bin")
    subprocess.run([args.gen, "--out", model] + args.gen_flags, check=True, stdout=subprocess.DEVNULL)
    config, tensors = load_model(model)
    seqs = token_ids(args, config["vocab_size"])
    spec = ";".join(",".join(str(i) for i in s) for s in seqs)
    subprocess.run([args.forward, "--model", model, "--tokens", spec, "--out", out], check=True)
    got = np.fromfile(out, dtype="<f4").astype(np.float64)
    ref = logits(config, tensors, seqs)
    ok = True
    if got.size != ref.size:
        print(f"FAIL logits: lowbit-forward wrote {got.size} values, expected {ref.shape}")
        return 1
    got = got.reshape(ref.shape)
    norm_err, max_err = relative_errors(got, ref)
    print(f"logits {ref.shape}, lengths {[len(s) for s in seqs]}: ||d||/||ref|| = {norm_err:.3g}, "
          f"max|d|/max|ref| = {max_err:.3g} (rtol {args.rtol:g})")
    if not (norm_err <= args.rtol and max_err <= args.rtol):
        print("FAIL: the C++ forward disagrees with the reference")
        ok = False
    if args.expect_rope_scaling_matters:
        plain = logits(config, tensors, seqs, use_scaling=False)
        moved, _ = relative_errors(plain, ref)
        print(f"without rope_scaling the reference moves by {moved:.3g}")
        if not moved > 100 * args.rtol:
            print("FAIL: rope_scaling does not change these logits enough for the test to mean anything")
            ok = False
    if ok:
        shutil.rmtree(args.work, ignore_errors=True)
        print("PASS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
