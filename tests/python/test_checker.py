#!/usr/bin/python3
"""Proves that check_checkpoint.py accepts valid compressed-tensors checkpoints and rejects
broken ones.  Run: /usr/bin/python3 tests/python/test_checker.py

The checkpoints are written by this file's own NumPy writer/quantizer (safetensors writer,
bf16 rounding, int4/int8 packing, FP8 E4M3FN encoder), built from the format notes in
shared/reference/compressed-tensors-format*.md, not from the checker's decoding code, on a
tiny 1-layer Llama (hidden 256, intermediate 512, 4 heads, 2 KV heads, vocab 64, bf16).
"""

import copy
import json
import os
import subprocess
import sys
import tempfile
import unittest
from dataclasses import dataclass

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKER = os.path.join(HERE, "check_checkpoint.py")
sys.path.insert(0, HERE)
import check_checkpoint as checker  # noqa: E402  (only for decoder cross-checks)

# --------------------------------------------------------------------------------------------
# Independent encoders
# --------------------------------------------------------------------------------------------
def to_bf16_bits(x):
    """float -> bf16 bit patterns, round to nearest even."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(b):
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def round_bf16(x):
    return from_bf16_bits(to_bf16_bits(x))


def encode_e4m3fn(x):
    """float -> E4M3FN byte, round to nearest even; |x| must already be <= 448."""
    x = np.asarray(x, dtype=np.float64)
    sign = np.signbit(x).astype(np.int64) << 7
    a = np.abs(x)
    _, exp = np.frexp(np.where(a > 0, a, 1.0))
    e = np.maximum(exp - 1, -6)                   # binade; below 2^-6 the step stays 2^-9
    step = np.ldexp(1.0, e - 3)                   # 3 mantissa bits
    m = np.rint(a / step) * step                  # np.rint: half to even
    _, exp2 = np.frexp(np.where(m > 0, m, 1.0))
    e2 = exp2 - 1
    normal = m >= 2.0 ** -6
    code_normal = ((e2 + 7) << 3) | np.rint((m / np.ldexp(1.0, e2) - 1.0) * 8).astype(np.int64)
    code_sub = np.rint(m / 2.0 ** -9).astype(np.int64)
    return (np.where(normal, code_normal, code_sub) | sign).astype(np.uint8)


def pack_int32(codes, bits, axis):
    """Signed codes -> int32 words along `axis`: add 2^(bits-1), pad with zeros to a multiple
    of 32/bits, value i of each run at bit offset bits*i (first value lowest)."""
    per = 32 // bits
    u = np.moveaxis(np.asarray(codes, dtype=np.int64) + (1 << (bits - 1)), axis, -1)
    pad = (-u.shape[-1]) % per
    u = np.concatenate([u, np.zeros(u.shape[:-1] + (pad,), np.int64)], axis=-1)
    u = u.reshape(u.shape[:-1] + (u.shape[-1] // per, per))
    words = np.zeros(u.shape[:-1], dtype=np.uint64)
    for i in range(per):
        words |= u[..., i].astype(np.uint64) << np.uint64(bits * i)
    return np.moveaxis(words.astype(np.uint32).view(np.int32), -1, axis)


# --------------------------------------------------------------------------------------------
# Independent safetensors writer
# --------------------------------------------------------------------------------------------
ITEMSIZE = {"I64": 8, "I32": 4, "F32": 4, "BF16": 2, "F16": 2, "I8": 1, "U8": 1, "F8_E4M3": 1}


@dataclass
class T:
    """A tensor to write: safetensors dtype string, shape, raw little-endian bytes."""
    dtype: str
    shape: tuple
    data: bytes


def t_array(dtype, arr):
    arr = np.ascontiguousarray(arr)
    np_type = {"I64": "<i8", "I32": "<i4", "F32": "<f4", "I8": "i1", "U8": "u1", "F8_E4M3": "u1",
               "BF16": "<u2", "F16": "<f2"}[dtype]
    return T(dtype, tuple(arr.shape), arr.astype(np_type).tobytes())


def t_bf16(values):
    return t_array("BF16", to_bf16_bits(values))


def t_float(dtype, values):
    """Values stored in a float dtype (BF16 rounded to nearest even, F16/F32 by NumPy)."""
    if dtype == "BF16":
        return t_bf16(values)
    return t_array(dtype, np.asarray(values, dtype={"F16": np.float16, "F32": np.float32}[dtype]))


def round_to(dtype, x):
    """x rounded to the storage dtype, back in float64 (scales are rounded before use)."""
    if dtype == "BF16":
        return round_bf16(x)
    return np.asarray(x).astype({"F16": np.float16, "F32": np.float32}[dtype]).astype(np.float64)


EPS = {"BF16": 2.0 ** -7, "F16": 2.0 ** -10, "F32": 2.0 ** -23}  # torch.finfo(dtype).eps


def write_safetensors(path, tensors, tamper=None):
    """Sort by alignment then name, offsets contiguous, header padded with spaces to 8."""
    names = sorted(tensors, key=lambda n: (-ITEMSIZE[tensors[n].dtype], n))
    header, pos = {"__metadata__": {"format": "pt"}}, 0
    for n in names:
        t = tensors[n]
        header[n] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [pos, pos + len(t.data)]}
        pos += len(t.data)
    if tamper:
        tamper(header)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((-len(raw)) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for n in names:
            f.write(tensors[n].data)


@dataclass
class Checkpoint:
    config: dict
    tensors: dict

    def copy(self):
        return Checkpoint(copy.deepcopy(self.config), dict(self.tensors))

    def write(self, directory, shards=1, tamper=None):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(self.config, f, indent=2, sort_keys=True)
        if shards == 1:
            write_safetensors(os.path.join(directory, "model.safetensors"), self.tensors, tamper)
            return
        names = sorted(self.tensors)
        weight_map = {}
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: self.tensors[n] for n in names[s::shards]}
            write_safetensors(os.path.join(directory, fname), part)
            weight_map.update({n: fname for n in part})
        index = {"metadata": {"total_size": sum(len(t.data) for t in self.tensors.values())},
                 "weight_map": weight_map}
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)


# --------------------------------------------------------------------------------------------
# The tiny Llama and its quantizations
# --------------------------------------------------------------------------------------------
HIDDEN, INTER, HEADS, KV_HEADS, VOCAB = 256, 512, 4, 2, 64
HEAD_DIM = HIDDEN // HEADS
LAYER = "model.layers.0"
SHAPES = {"self_attn.q_proj": (HEADS * HEAD_DIM, HIDDEN), "self_attn.k_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
          "self_attn.v_proj": (KV_HEADS * HEAD_DIM, HIDDEN), "self_attn.o_proj": (HIDDEN, HEADS * HEAD_DIM),
          "mlp.gate_proj": (INTER, HIDDEN), "mlp.up_proj": (INTER, HIDDEN), "mlp.down_proj": (HIDDEN, INTER)}
LINEARS = [f"{LAYER}.{p}" for p in SHAPES]


def make_original(seed=0, dtype="BF16", tied=False):
    """Weights ~ N(0, 0.02) with a few outliers and one all-zero row (eps scale)."""
    rng = np.random.default_rng(seed)
    def store(values):
        return t_float(dtype, values)

    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": INTER, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM, "num_hidden_layers": 1, "vocab_size": VOCAB, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": 128, "hidden_act": "silu",
        "tie_word_embeddings": tied, "torch_dtype": TORCH_DTYPE[dtype], "bos_token_id": 1,
        "eos_token_id": 2, "transformers_version": "4.56.0",
    }
    tensors = {"model.embed_tokens.weight": store(rng.normal(0, 0.02, (VOCAB, HIDDEN))),
               "lm_head.weight": store(rng.normal(0, 0.02, (VOCAB, HIDDEN))),
               "model.norm.weight": store(1 + rng.normal(0, 0.05, HIDDEN)),
               f"{LAYER}.input_layernorm.weight": store(1 + rng.normal(0, 0.05, HIDDEN)),
               f"{LAYER}.post_attention_layernorm.weight": store(1 + rng.normal(0, 0.05, HIDDEN))}
    for p, (n, k) in SHAPES.items():
        w = rng.normal(0, 0.02, (n, k))
        w[rng.integers(0, n, 4), rng.integers(0, k, 4)] *= 12.0
        w[3] = 0.0
        tensors[f"{LAYER}.{p}.weight"] = store(w)
    if tied:
        del tensors["lm_head.weight"]
    return Checkpoint(config, tensors)


TORCH_DTYPE = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


def model_dtype(ckpt):
    return {v: k for k, v in TORCH_DTYPE.items()}[ckpt.config["torch_dtype"]]


def weight_of(ckpt, module):
    t = ckpt.tensors[f"{module}.weight"]
    if t.dtype == "BF16":
        return from_bf16_bits(np.frombuffer(t.data, "<u2")).reshape(t.shape)
    return np.frombuffer(t.data, {"F16": "<f2", "F32": "<f4"}[t.dtype]).astype(np.float64).reshape(t.shape)


def qargs(num_bits, type_, symmetric, strategy, group_size=None, dynamic=False, actorder=None,
          observer="minmax"):
    return {"num_bits": num_bits, "type": type_, "symmetric": symmetric, "strategy": strategy,
            "group_size": group_size, "block_structure": None, "dynamic": dynamic,
            "actorder": actorder, "observer": None if dynamic else observer, "observer_kwargs": {}}


def scheme_config(name):
    """(format, weights args, input args) of each preset, expanded (det §4, §6.x.1)."""
    return {
        "W8A8": ("int-quantized", qargs(8, "int", True, "channel"), qargs(8, "int", True, "token", dynamic=True)),
        "W4A16": ("pack-quantized", qargs(4, "int", True, "group", 128, actorder="static"), None),
        "W4A16_GIDX": ("pack-quantized", qargs(4, "int", True, "group", 128, actorder="group"), None),
        "W4A16_ASYM": ("pack-quantized", qargs(4, "int", False, "group", 128), None),
        "W8A16": ("pack-quantized", qargs(8, "int", True, "channel"), None),
        "FP8": ("float-quantized", qargs(8, "float", True, "tensor"),
                qargs(8, "float", True, "tensor", observer="static_minmax")),
        "FP8_DYNAMIC": ("float-quantized", qargs(8, "float", True, "channel"),
                        qargs(8, "float", True, "token", dynamic=True)),
    }[name]


def symmetric_scale(absmax, qhalf, dtype):
    """CT convention: absmax / ((qmax-qmin)/2), rounded to the scale dtype first, zero -> eps."""
    s = round_to(dtype, absmax / qhalf)
    return np.where(s == 0, EPS[dtype], s)


def quantize_int_sym(w, bits, group, dtype, perm=None):
    """Symmetric RTN; returns codes [N,K], scales [N,G], group index of each column."""
    n, k = w.shape
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    order = np.arange(k) if perm is None else perm
    gidx = np.empty(k, np.int64)
    gidx[order] = np.arange(k) // (group or k)
    g = int(gidx.max()) + 1
    absmax = np.stack([np.abs(w[:, gidx == j]).max(axis=1) for j in range(g)], axis=1)
    s = symmetric_scale(absmax, (qmax - qmin) / 2, dtype)
    q = np.clip(np.rint(w / s[:, gidx]), qmin, qmax).astype(np.int64)
    return q, s, gidx


def quantize_int4_asym(w, group, dtype):
    """Asymmetric RTN (det §5): zero in range, scale=(max-min)/15, zp signed in [-8,7]."""
    n, k = w.shape
    wg = w.reshape(n, k // group, group)
    mn, mx = np.minimum(wg.min(axis=2), 0), np.maximum(wg.max(axis=2), 0)
    s = round_to(dtype, (mx - mn) / 15.0)
    s = np.where(s == 0, EPS[dtype], s)
    zp = np.rint(np.clip(-8 - mn / s, -8, 7)).astype(np.int64)
    gidx = np.arange(k) // group
    q = np.clip(np.rint(w / s[:, gidx] + zp[:, gidx]), -8, 7).astype(np.int64)
    return q, s, zp


def quantize_fp8(w, per_channel, dtype):
    absmax = np.abs(w).max(axis=1, keepdims=True) if per_channel else np.abs(w).max().reshape(1, 1)
    s = symmetric_scale(absmax, 448.0, dtype)
    return encode_e4m3fn(np.clip(w / s, -448, 448)), s


def quantize_module(name, w, scheme, rng, dtype="BF16", nudge=None):
    """The tensors the format table lists for one Linear (fmt §4); scales in `dtype`.
    `nudge(codes, qmin, qmax)` moves codes after rounding (GPTQ-like), scales unchanged."""
    n, k = w.shape
    if nudge is None:
        def nudge(c, qmin, qmax):
            return c
    out = {}
    def store(values):  # scales are stored in the model dtype
        return t_float(dtype, values)

    if scheme == "W8A8":
        q, s, _ = quantize_int_sym(w, 8, None, dtype)
        q = nudge(q, -128, 127)
        out["weight"], out["weight_scale"] = t_array("I8", q), store(s)
    elif scheme in ("W4A16", "W4A16_GIDX", "W8A16"):
        bits, group = (8, None) if scheme == "W8A16" else (4, 128)
        perm = rng.permutation(k) if scheme == "W4A16_GIDX" else None
        q, s, gidx = quantize_int_sym(w, bits, group, dtype, perm)
        q = nudge(q, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)
        out["weight_packed"] = t_array("I32", pack_int32(q, bits, axis=1))
        out["weight_scale"] = store(s)
        out["weight_shape"] = t_array("I64", np.array([n, k]))
        if perm is not None:
            out["weight_g_idx"] = t_array("I32", gidx)
    elif scheme == "W4A16_ASYM":
        q, s, zp = quantize_int4_asym(w, 128, dtype)
        q = nudge(q, -8, 7)
        out["weight_packed"] = t_array("I32", pack_int32(q, 4, axis=1))
        out["weight_scale"] = store(s)
        out["weight_shape"] = t_array("I64", np.array([n, k]))
        out["weight_zero_point"] = t_array("I32", pack_int32(zp, 4, axis=0))
    else:
        codes, s = quantize_fp8(w, scheme == "FP8_DYNAMIC", dtype)
        mag = nudge(codes.astype(np.int64) & 0x7F, 0, 0x7E)     # next E4M3 magnitude, same sign
        codes = ((codes & 0x80) | mag).astype(np.uint8)
        out["weight"] = t_array("F8_E4M3", codes)
        out["weight_scale"] = store(s.reshape(-1) if scheme == "FP8" else s)
        if scheme == "FP8":
            out["input_scale"] = store(np.array([0.0123]))
    return {f"{name}.{k}": v for k, v in out.items()}


def make_quantized(orig, scheme, kv_cache=False, seed=1, scale_dtype=None, nudge=None, dense=()):
    """RTN of every Linear but `dense` (left float, named in ignore); `nudge` see quantize_module."""
    rng = np.random.default_rng(seed)
    dtype = scale_dtype or model_dtype(orig)
    fmt, w_args, a_args = scheme_config(scheme)
    q = orig.copy()
    for m in LINEARS:
        if m in dense:
            continue
        del q.tensors[f"{m}.weight"]
        q.tensors.update(quantize_module(m, weight_of(orig, m), scheme, rng, dtype, nudge))
    kv_args = None
    if kv_cache:
        kv_args = qargs(8, "float", True, "tensor", observer="static_minmax")
        q.tensors[f"{LAYER}.self_attn.k_scale"] = t_float(dtype, np.array([0.031]))
        q.tensors[f"{LAYER}.self_attn.v_scale"] = t_float(dtype, np.array([0.007]))
    q.config["quantization_config"] = {
        "config_groups": {"group_0": {"format": fmt, "targets": ["Linear"], "weights": w_args,
                                      "input_activations": a_args, "output_activations": None}},
        "format": fmt, "global_compression_ratio": None, "ignore": ["lm_head"] + list(dense),
        "kv_cache_scheme": kv_args, "quant_method": "compressed-tensors",
        "quantization_status": "compressed", "sparsity_config": {}, "transform_config": {},
        "version": "0.17.0",
    }
    return q


# --------------------------------------------------------------------------------------------
# Calibrated checkpoints: SmoothQuant's fold and GPTQ-like code moves (algorithms §1.5, §3.2)
# --------------------------------------------------------------------------------------------
ATTN_NORM, MLP_NORM = f"{LAYER}.input_layernorm", f"{LAYER}.post_attention_layernorm"
BALANCE = {ATTN_NORM: [f"{LAYER}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")],
           MLP_NORM: [f"{LAYER}.mlp.{p}" for p in ("gate_proj", "up_proj")]}


def smoothing_vector(seed):
    """A SmoothQuant-like s: lognormal spread, a few outlier channels x8."""
    rng = np.random.default_rng(seed)
    s = rng.lognormal(0.0, 0.5, HIDDEN)
    s[rng.choice(HIDDEN, 4, replace=False)] *= 8.0
    return s


def smooth(orig, s_by_norm):
    """SmoothQuant's fold: norm / s, the balance Linears' columns * s, stored in the model dtype."""
    sm, dtype = orig.copy(), model_dtype(orig)
    for norm, s in s_by_norm.items():
        sm.tensors[f"{norm}.weight"] = t_float(dtype, weight_of(orig, norm) / s)
        for m in BALANCE[norm]:
            sm.tensors[f"{m}.weight"] = t_float(dtype, weight_of(orig, m) * s[None, :])
    return sm


def gptq_like(seed, fraction=0.1):
    """Moves a fraction of the codes by +-1 within [qmin, qmax], as GPTQ's error feedback does
    (its scales stay those of the original weights, §1.5)."""
    rng = np.random.default_rng(seed)

    def nudge(c, qmin, qmax):
        step = rng.choice([-1, 1], c.shape) * (rng.random(c.shape) < fraction)
        moved = c + step
        return np.where((moved < qmin) | (moved > qmax), c - step, moved)
    return nudge


def make_calibrated(orig, scheme, s_by_norm, dense=(), seed=5):
    """RTN of the smoothed model with GPTQ-like code moves: what --calibrated must accept."""
    return make_quantized(smooth(orig, s_by_norm), scheme, seed=seed, nudge=gptq_like(seed), dense=dense)


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------
class EncoderTests(unittest.TestCase):
    """The writer's building blocks against hand-checked values (fmt §5, det §6.2.3, §6.3.3)."""

    def test_int4_pack_worked_example(self):
        word = pack_int32(np.array([[1, 2, 0, 0, 0, 0, 0, 0]]), 4, axis=1)
        self.assertEqual(word.dtype, np.int32)
        self.assertEqual(int(word[0, 0]), -2004318039)
        self.assertEqual(int(word[0, 0]) & 0xFFFFFFFF, 0x888888A9)
        word = pack_int32(np.array([[-8, -1, 0, 1, 2, 3, 7, -3]]), 4, axis=1)
        self.assertEqual(int(word[0, 0]) & 0xFFFFFFFF, 0x5FBA9870)
        self.assertEqual(word.tobytes(), bytes([0x70, 0x98, 0xBA, 0x5F]))

    def test_checker_unpacks_the_worked_example(self):
        fields = checker.unpack_int32(np.array([[-2004318039]], dtype=np.int32), 4, axis=1)
        self.assertEqual((fields - 8).tolist(), [[1, 2, 0, 0, 0, 0, 0, 0]])

    def test_zero_points_pack_along_rows(self):
        zp = np.arange(16).reshape(16, 1) % 16 - 8          # rows 0..15, one group
        words = pack_int32(zp, 4, axis=0)
        self.assertEqual(words.shape, (2, 1))
        self.assertEqual(int(words[0, 0]) & 0xFFFFFFFF, 0x76543210)
        back = checker.unpack_int32(words, 4, axis=0) - 8
        self.assertEqual(back.tolist(), zp.tolist())

    def test_int8_pack_four_per_word(self):
        word = pack_int32(np.array([[1, -128, 127, 0]]), 8, axis=1)
        self.assertEqual(int(word[0, 0]) & 0xFFFFFFFF, 0x80FF0081)
        self.assertEqual((checker.unpack_int32(word, 8, axis=1) - 128).tolist(), [[1, -128, 127, 0]])

    def test_fp8_sanity_values(self):
        values = [1.0, 0.5, 2.0, -2.0, 448.0, 0.0, 2.0 ** -9, 2.0 ** -6]
        self.assertEqual(encode_e4m3fn(np.array(values)).tolist(), [0x38, 0x30, 0x40, 0xC0, 0x7E, 0x00, 0x01, 0x08])

    def test_fp8_checker_table(self):
        table = checker.FP8_TABLE
        self.assertTrue(np.isnan(table[0x7F]) and np.isnan(table[0xFF]))
        self.assertEqual(np.nanmax(table), 448.0)
        self.assertEqual(table[0x01], 2.0 ** -9)
        finite = [c for c in range(256) if c not in (0x7F, 0xFF)]
        self.assertEqual(encode_e4m3fn(table[finite]).tolist(), finite)  # round trip, -0 included

    def test_fp8_rounds_half_to_even(self):
        # 1.0625 is halfway between 1.0 (0x38) and 1.125 (0x39): even mantissa wins.
        self.assertEqual(encode_e4m3fn(np.array([1.0625, 1.1875])).tolist(), [0x38, 0x3A])

    def test_bf16_round_trip(self):
        self.assertEqual(to_bf16_bits(np.array([1.0, -2.0])).tolist(), [0x3F80, 0xC000])
        self.assertEqual(checker.bf16_bits_to_f32(np.array([0x3F80], np.uint16)).tolist(), [1.0])


class CheckerTestBase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="ct-checker-")
        cls.orig = make_original()
        cls.orig_dir = os.path.join(cls.tmp.name, "original")
        cls.orig.write(cls.orig_dir)
        cls.count = 0

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def new_dir(self):
        type(self).count += 1
        return os.path.join(self.tmp.name, f"q{self.count}")

    def write_original(self, ckpt):
        """A second original model (another dtype, tied embeddings) for one test."""
        path = self.new_dir()
        ckpt.write(path)
        return path

    def run_checker(self, qdir, expect=None, orig_dir=None, calibrated=False):
        cmd = [sys.executable, CHECKER, "--original", orig_dir or self.orig_dir, "--quantized", qdir]
        if expect:
            cmd += ["--expect-scheme", expect]
        if calibrated:
            cmd += ["--calibrated"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        out = p.stdout + p.stderr
        self.assertNotIn("Traceback", out)
        return p.returncode, out

    def assert_passes(self, ckpt, expect=None, shards=1, orig_dir=None, calibrated=False):
        qdir = self.new_dir()
        ckpt.write(qdir, shards=shards)
        rc, out = self.run_checker(qdir, expect, orig_dir, calibrated)
        self.assertEqual(rc, 0, out)
        self.assertIn("RESULT: PASS", out)
        return out

    def assert_fails(self, ckpt, *needles, expect=None, shards=1, after_write=None, tamper=None,
                     orig_dir=None, calibrated=False):
        qdir = self.new_dir()
        ckpt.write(qdir, shards=shards, tamper=tamper)
        if after_write:
            after_write(qdir)
        rc, out = self.run_checker(qdir, expect, orig_dir, calibrated)
        self.assertEqual(rc, 1, out)
        fails = "\n".join(line for line in out.splitlines() if line.startswith("FAIL"))
        for needle in needles:
            self.assertIn(needle, fails, out)
        return out


class ValidCheckpoints(CheckerTestBase):
    """The checker accepts what the format describes."""

    def test_schemes_pass(self):
        for scheme in ("W8A8", "W4A16", "W4A16_ASYM", "W8A16", "FP8", "FP8_DYNAMIC"):
            with self.subTest(scheme=scheme):
                out = self.assert_passes(make_quantized(self.orig, scheme), expect=scheme)
                self.assertIn(f"PASS numerics {scheme}", out)
                self.assertIn("PASS non-quantized tensors: 5 tensors byte-identical", out)

    def test_without_expect_scheme(self):
        self.assert_passes(make_quantized(self.orig, "W4A16"))

    def test_kv_cache_and_shards(self):
        out = self.assert_passes(make_quantized(self.orig, "FP8", kv_cache=True), expect="FP8", shards=3)
        self.assertIn("PASS kv-cache scales", out)
        self.assertIn("3 shard(s)", out)

    def test_legacy_group_actorder(self):
        self.assert_passes(make_quantized(self.orig, "W4A16_GIDX"), expect="W4A16")

    def test_fp16_and_fp32_models(self):
        for dtype in ("F16", "F32"):
            orig = make_original(seed=3, dtype=dtype)
            orig_dir = self.write_original(orig)
            for scheme in ("W8A8", "W4A16_ASYM", "FP8_DYNAMIC"):
                with self.subTest(dtype=dtype, scheme=scheme):
                    out = self.assert_passes(make_quantized(orig, scheme), expect=scheme, orig_dir=orig_dir)
                    self.assertIn(f"dtype {dtype}", out)

    def test_tied_embeddings_without_lm_head(self):
        orig = make_original(seed=4, tied=True)
        orig_dir = self.write_original(orig)
        self.assert_passes(make_quantized(orig, "W4A16"), expect="W4A16", orig_dir=orig_dir)

    def test_clipped_positive_end_is_accepted(self):
        out = self.assert_passes(make_quantized(self.orig, "W8A8"))
        self.assertIn("clipped code(s)", out)


class BrokenCheckpoints(CheckerTestBase):
    """Every corruption is reported with the tensor or field that is wrong."""

    Q = f"{LAYER}.self_attn.q_proj"

    def test_flipped_weight_dtype(self):
        q = make_quantized(self.orig, "W8A8")
        t = q.tensors[f"{self.Q}.weight"]
        q.tensors[f"{self.Q}.weight"] = T("U8", t.shape, t.data)
        self.assert_fails(q, f"{self.Q}.weight", "dtype U8, expected I8")

    def test_zero_point_on_symmetric_scheme(self):
        q = make_quantized(self.orig, "W4A16")
        q.tensors[f"{self.Q}.weight_zero_point"] = t_array("I32", pack_int32(np.zeros((256, 2), np.int64), 4, 0))
        self.assert_fails(q, f"{self.Q}.weight_zero_point", "symmetric")

    def test_dropped_scale(self):
        q = make_quantized(self.orig, "W4A16")
        del q.tensors[f"{LAYER}.self_attn.k_proj.weight_scale"]
        self.assert_fails(q, f"{LAYER}.self_attn.k_proj.weight_scale", "missing")

    def test_wrong_scale_shape(self):
        q = make_quantized(self.orig, "W8A8")
        t = q.tensors[f"{self.Q}.weight_scale"]
        q.tensors[f"{self.Q}.weight_scale"] = T(t.dtype, (256,), t.data)
        self.assert_fails(q, f"{self.Q}.weight_scale", "shape [256], expected [256, 1]")

    def test_truncated_file(self):
        def truncate(qdir):
            path = os.path.join(qdir, "model.safetensors")
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) - 16)
        self.assert_fails(make_quantized(self.orig, "W8A8"), "model.safetensors", "truncated",
                          after_write=truncate)

    def test_trailing_bytes(self):
        def append(qdir):
            with open(os.path.join(qdir, "model.safetensors"), "ab") as f:
                f.write(b"\0" * 4)
        self.assert_fails(make_quantized(self.orig, "FP8"), "trailing bytes", after_write=append)

    def test_perturbed_packed_weight_exceeds_bound(self):
        q = make_quantized(self.orig, "W4A16")
        name = f"{LAYER}.mlp.down_proj.weight_packed"
        words = np.frombuffer(q.tensors[name].data, "<i4").reshape(q.tensors[name].shape).copy()
        words[10, 5] ^= 0x4 << 12            # changes the code of column 5*8+3 by +-4 steps
        q.tensors[name] = t_array("I32", words)
        self.assert_fails(q, f"{LAYER}.mlp.down_proj", "exceed the dequantization error bound", "[10, 43]")

    def test_perturbed_zero_point_exceeds_bound(self):
        q = make_quantized(self.orig, "W4A16_ASYM")
        name = f"{self.Q}.weight_zero_point"
        words = np.frombuffer(q.tensors[name].data, "<i4").reshape(q.tensors[name].shape).copy()
        words[0, 0] ^= 0x3 << 4              # zero point of row 1, group 0
        q.tensors[name] = t_array("I32", words)
        self.assert_fails(q, self.Q, "exceed the dequantization error bound")

    def test_scale_not_in_model_dtype(self):
        orig = make_original(seed=3, dtype="F16")
        orig_dir = self.write_original(orig)
        self.assert_fails(make_quantized(orig, "W4A16", scale_dtype="BF16"),
                          f"{self.Q}.weight_scale", "dtype BF16, expected F16", orig_dir=orig_dir)

    def test_lm_head_not_ignored(self):
        q = make_quantized(self.orig, "W8A8")
        q.config["quantization_config"]["ignore"] = []
        self.assert_fails(q, "ignore", "'lm_head' is not in ignore")

    def test_scale_dtype_key(self):
        q = make_quantized(self.orig, "W4A16")
        q.config["quantization_config"]["config_groups"]["group_0"]["weights"]["scale_dtype"] = None
        self.assert_fails(q, "weights.scale_dtype", "must not be written")

    def test_format_mismatch(self):
        q = make_quantized(self.orig, "W8A8")
        qc = q.config["quantization_config"]
        qc["format"] = qc["config_groups"]["group_0"]["format"] = "pack-quantized"
        self.assert_fails(q, "format", "expected 'int-quantized'")

    def test_expect_scheme_mismatch(self):
        self.assert_fails(make_quantized(self.orig, "W4A16"), "symmetric=True (expected False)",
                          expect="W4A16_ASYM")

    def test_wrong_quantization_status(self):
        q = make_quantized(self.orig, "FP8")
        q.config["quantization_config"]["quantization_status"] = "frozen"
        self.assert_fails(q, "quantization_status", "'frozen'")

    def test_config_size_changed(self):
        q = make_quantized(self.orig, "W8A8")
        q.config["intermediate_size"] = 1024
        self.assert_fails(q, "config intermediate_size", "changed from 512 to 1024")

    def test_leftover_dense_weight(self):
        q = make_quantized(self.orig, "W4A16")
        q.tensors[f"{self.Q}.weight"] = self.orig.tensors[f"{self.Q}.weight"]
        self.assert_fails(q, f"{self.Q}.weight", "leftover dense weight")

    def test_unexpected_input_scale(self):
        q = make_quantized(self.orig, "FP8_DYNAMIC")
        q.tensors[f"{self.Q}.input_scale"] = t_bf16(np.array([0.5]))
        self.assert_fails(q, f"{self.Q}.input_scale", "unexpected")

    def test_norm_bytes_changed(self):
        q = make_quantized(self.orig, "W8A8")
        name = "model.norm.weight"
        data = bytearray(q.tensors[name].data)
        data[10] ^= 1
        q.tensors[name] = T("BF16", q.tensors[name].shape, bytes(data))
        self.assert_fails(q, name, "bytes differ")

    def test_fp8_nan_code(self):
        q = make_quantized(self.orig, "FP8")
        name = f"{self.Q}.weight"
        codes = np.frombuffer(q.tensors[name].data, "u1").reshape(256, 256).copy()
        codes[7, 9] = 0x7F
        q.tensors[name] = t_array("F8_E4M3", codes)
        self.assert_fails(q, name, "NaN code", "[7, 9]")

    def test_fp8_perturbed_code_exceeds_bound(self):
        q = make_quantized(self.orig, "FP8_DYNAMIC")
        name = f"{LAYER}.mlp.up_proj.weight"
        codes = np.frombuffer(q.tensors[name].data, "u1").reshape(512, 256).copy()
        codes[100, 17] ^= 0x08               # exponent bit: value off by a factor of 2 or more
        q.tensors[name] = t_array("F8_E4M3", codes)
        self.assert_fails(q, f"{LAYER}.mlp.up_proj", "exceed the dequantization error bound", "[100, 17]")

    def test_non_positive_scale(self):
        q = make_quantized(self.orig, "W8A8")
        name = f"{self.Q}.weight_scale"
        s = np.frombuffer(q.tensors[name].data, "<u2").reshape(256, 1).copy()
        s[5, 0] = to_bf16_bits(np.array([-1.0]))[0]
        q.tensors[name] = t_array("BF16", s)
        self.assert_fails(q, name, "not finite and > 0", "[5, 0]")

    def test_wrong_weight_shape_values(self):
        q = make_quantized(self.orig, "W4A16")
        q.tensors[f"{self.Q}.weight_shape"] = t_array("I64", np.array([256, 255]))
        self.assert_fails(q, f"{self.Q}.weight_shape", "[256, 255]")

    def test_wrong_g_idx(self):
        q = make_quantized(self.orig, "W4A16_GIDX")
        q.tensors[f"{self.Q}.weight_g_idx"] = t_array("I32", np.arange(256) // 128)
        self.assert_fails(q, self.Q, "exceed the dequantization error bound")

    def test_kv_cache_scale_missing_and_negative(self):
        q = make_quantized(self.orig, "FP8", kv_cache=True)
        del q.tensors[f"{LAYER}.self_attn.v_scale"]
        q.tensors[f"{LAYER}.self_attn.k_scale"] = t_bf16(np.array([-0.5]))
        self.assert_fails(q, f"{LAYER}.self_attn.v_scale", "missing", f"{LAYER}.self_attn.k_scale", "> 0")

    def test_kv_cache_scheme_wrong_bits(self):
        q = make_quantized(self.orig, "FP8", kv_cache=True)
        q.config["quantization_config"]["kv_cache_scheme"]["num_bits"] = 4
        self.assert_fails(q, "kv_cache_scheme", "num_bits=4")

    def test_kv_scales_without_scheme(self):
        q = make_quantized(self.orig, "FP8")
        q.tensors[f"{LAYER}.self_attn.k_scale"] = t_bf16(np.array([0.1]))
        self.assert_fails(q, f"{LAYER}.self_attn.k_scale", "without kv_cache_scheme")

    def test_overlapping_offsets(self):
        def overlap(header):
            name = f"{self.Q}.weight_scale"
            b, e = header[name]["data_offsets"]
            header[name]["data_offsets"] = [b - 2, e - 2]
        self.assert_fails(make_quantized(self.orig, "W8A8"), "overlap", tamper=overlap)

    def test_unknown_dtype_string(self):
        def bad_dtype(header):
            header[f"{self.Q}.weight"]["dtype"] = "INT8"
        self.assert_fails(make_quantized(self.orig, "W8A8"), "unknown dtype 'INT8'", tamper=bad_dtype)

    def test_garbage_header(self):
        def garbage(qdir):
            with open(os.path.join(qdir, "model.safetensors"), "r+b") as f:
                f.seek(8)
                f.write(b"[not json")
        self.assert_fails(make_quantized(self.orig, "W8A8"), "malformed JSON header", after_write=garbage)

    def test_missing_shard(self):
        def drop(qdir):
            os.remove(os.path.join(qdir, "model-00002-of-00002.safetensors"))
        self.assert_fails(make_quantized(self.orig, "W4A16"), "model-00002-of-00002.safetensors",
                          "does not exist", shards=2, after_write=drop)

    def test_index_points_to_wrong_shard(self):
        def remap(qdir):
            path = os.path.join(qdir, "model.safetensors.index.json")
            with open(path) as f:
                index = json.load(f)
            index["weight_map"]["model.norm.weight"] = (
                "model-00001-of-00002.safetensors"
                if index["weight_map"]["model.norm.weight"].startswith("model-00002") else
                "model-00002-of-00002.safetensors")
            with open(path, "w") as f:
                json.dump(index, f)
        self.assert_fails(make_quantized(self.orig, "W4A16"), "weight_map puts model.norm.weight",
                          shards=2, after_write=remap)

    def test_tensor_in_two_shards(self):
        def duplicate(qdir):
            # Rewrite shard 2 with an extra copy of a tensor that lives in shard 1.
            q = make_quantized(self.orig, "W4A16")
            names = sorted(q.tensors)
            part = {n: q.tensors[n] for n in names[1::2]}
            part[names[0]] = q.tensors[names[0]]
            write_safetensors(os.path.join(qdir, "model-00002-of-00002.safetensors"), part)
        self.assert_fails(make_quantized(self.orig, "W4A16"), "is in both", shards=2, after_write=duplicate)


class CalibratedCheckpoints(CheckerTestBase):
    """--calibrated: SmoothQuant folded into norms and balance Linears, GPTQ-moved codes."""

    Q, K, GATE = f"{LAYER}.self_attn.q_proj", f"{LAYER}.self_attn.k_proj", f"{LAYER}.mlp.gate_proj"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.s = {ATTN_NORM: smoothing_vector(11), MLP_NORM: smoothing_vector(12)}

    def calibrated(self, scheme, **kw):
        return make_calibrated(self.orig, scheme, self.s, **kw)

    def test_calibrated_schemes_pass(self):
        for scheme, expect in (("W8A8", "W8A8"), ("W4A16", "W4A16"), ("W4A16_ASYM", "W4A16_ASYM"),
                               ("W8A16", "W8A16"), ("FP8", "FP8"), ("FP8_DYNAMIC", "FP8_DYNAMIC"),
                               ("W4A16_GIDX", "W4A16")):
            with self.subTest(scheme=scheme):
                out = self.assert_passes(self.calibrated(scheme), expect=expect, calibrated=True)
                self.assertIn("PASS smoothing: 2 of 2 layer norm(s) smoothed", out)
                self.assertIn(f"PASS numerics (calibrated) {expect}: 7 module(s) (5 smoothed)", out)
                self.assertIn("PASS non-quantized tensors: 3 tensors byte-identical", out)
                # actorder group: the observer runs over the columns g_idx assigns to each group.
                self.assertIn("scale(s) match the min-max observer on W_ref", out)

    def test_rtn_checkpoint_passes_calibrated(self):
        """RTN is the s = 1, no-GPTQ case: every scale equals the observer exactly."""
        out = self.assert_passes(make_quantized(self.orig, "W4A16"), calibrated=True)
        self.assertIn("s = 1 everywhere", out)
        self.assertIn("max relative deviation 0 ", out)

    def test_gptq_only_passes_calibrated_not_default(self):
        q = make_quantized(self.orig, "W4A16", nudge=gptq_like(7))
        self.assert_passes(q, calibrated=True)
        self.assert_fails(q, "exceed the dequantization error bound")

    def test_default_mode_rejects_calibrated(self):
        self.assert_fails(self.calibrated("W4A16"), f"{ATTN_NORM}.weight", f"{MLP_NORM}.weight",
                          "bytes differ", "exceed the dequantization error bound")

    def test_dense_balance_linears(self):
        dense = BALANCE[MLP_NORM]
        out = self.assert_passes(self.calibrated("W8A8", dense=dense), calibrated=True)
        self.assertIn("PASS dense balance Linears: 0 byte-identical (s = 1), 2 equal to W_orig*diag(s)", out)

    def test_dense_balance_linear_without_s(self):
        q = self.calibrated("W8A8", dense=BALANCE[MLP_NORM])
        q.tensors[f"{self.GATE}.weight"] = self.orig.tensors[f"{self.GATE}.weight"]
        self.assert_fails(q, f"{self.GATE}.weight", "differ from W_orig*diag(s)", calibrated=True)

    def test_wrong_s_in_norm(self):
        """The norm was divided by an s that the weights did not get."""
        q = self.calibrated("W4A16")
        wrong = self.s[ATTN_NORM] * np.where(np.arange(HIDDEN) % 2, 1.1, 1.0)
        q.tensors[f"{ATTN_NORM}.weight"] = t_bf16(weight_of(self.orig, ATTN_NORM) / wrong)
        self.assert_fails(q, f"{self.Q}.weight_scale", "min-max observer", calibrated=True)

    def test_lost_s(self):
        """q_proj quantized from the unsmoothed weight while its norm was smoothed."""
        q = self.calibrated("W8A8")
        rtn = make_quantized(self.orig, "W8A8")
        for suffix in ("weight", "weight_scale"):
            q.tensors[f"{self.Q}.{suffix}"] = rtn.tensors[f"{self.Q}.{suffix}"]
        self.assert_fails(q, f"{self.Q}: relative Frobenius error", f"{self.Q}.weight_scale",
                          calibrated=True)

    def test_non_positive_s(self):
        q = self.calibrated("W8A8")
        norm = weight_of(q, MLP_NORM).copy()
        norm[17] = -norm[17]
        q.tensors[f"{MLP_NORM}.weight"] = t_bf16(norm)
        self.assert_fails(q, f"smoothing {MLP_NORM}.weight", "not finite and > 0", "[17]", calibrated=True)

    def test_transposed_weight(self):
        q = self.calibrated("W8A8")
        name = f"{self.Q}.weight"
        codes = np.frombuffer(q.tensors[name].data, "i1").reshape(256, 256)
        q.tensors[name] = t_array("I8", codes.T)
        self.assert_fails(q, f"{self.Q}: relative Frobenius error", calibrated=True)

    def test_wrong_packing_order(self):
        """int4 fields packed first value in the highest bits instead of the lowest."""
        q = self.calibrated("W4A16")
        name = f"{self.GATE}.weight_packed"
        u = np.frombuffer(q.tensors[name].data, "<u4").reshape(q.tensors[name].shape)
        rev = np.zeros_like(u)
        for i in range(8):
            rev |= ((u >> np.uint32(4 * i)) & np.uint32(0xF)) << np.uint32(4 * (7 - i))
        q.tensors[name] = t_array("I32", rev.view(np.int32))
        self.assert_fails(q, f"{self.GATE}: relative Frobenius error", calibrated=True)

    def test_scales_off_by_5_percent(self):
        for scheme in ("W4A16", "FP8_DYNAMIC", "W4A16_GIDX"):
            with self.subTest(scheme=scheme):
                q = self.calibrated(scheme)
                name = f"{self.K}.weight_scale"
                t = q.tensors[name]
                scale = from_bf16_bits(np.frombuffer(t.data, "<u2")).reshape(t.shape)
                q.tensors[name] = t_bf16(scale * 1.05)
                self.assert_fails(q, name, "differ from the min-max observer", calibrated=True)

    def test_changed_embedding_and_final_norm(self):
        q = self.calibrated("W4A16")
        for name in ("model.embed_tokens.weight", "model.norm.weight"):
            data = bytearray(q.tensors[name].data)
            data[6] ^= 1
            q.tensors[name] = T("BF16", q.tensors[name].shape, bytes(data))
        self.assert_fails(q, "model.embed_tokens.weight", "model.norm.weight", "bytes differ", calibrated=True)

    def test_changed_o_proj_when_dense(self):
        """o_proj reads no smoothed norm: left dense it must stay byte-identical."""
        o = f"{LAYER}.self_attn.o_proj"
        q = make_calibrated(self.orig, "W4A16", self.s, dense=(o,))
        q.tensors[f"{o}.weight"] = t_bf16(weight_of(self.orig, o) * 1.01)
        self.assert_fails(q, f"{o}.weight", "bytes differ", calibrated=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
