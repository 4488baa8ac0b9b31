#!/usr/bin/python3
"""Independent checker for compressed-tensors checkpoints (what vLLM loads).

Usage:
  /usr/bin/python3 tests/python/check_checkpoint.py --original ORIG_DIR \
      --quantized QUANT_DIR [--expect-scheme W8A8|W8A16|W4A16|W4A16_ASYM|FP8|FP8_DYNAMIC]
      [--calibrated]

Written from the format notes only (docs: shared/reference/compressed-tensors-format.md,
referred to below as "fmt §n", and compressed-tensors-format-details.md, "det §n"); it shares
no code with the C++ writer. Standard library + NumPy only.

Stages (a later stage only runs on what the earlier ones accepted):
  1. safetensors containers and the shard index (fmt §2, det §2.2-2.4), both directories;
  2. config.json: quantization_config (fmt §3-4, det §3-4, §6.x.1) and the unchanged rest;
  3. the tensor set, dtypes and shapes per quantized Linear (fmt §4, det §6.x.2), byte
     identity of everything that is not quantized, KV-cache scales (det §6.4);
  4. numerics: unpack (fmt §5), dequantize (fmt §6) and compare with the original weights.

--calibrated: the checkpoint may come from GPTQ and/or SmoothQuant (llm-compressor-algorithms.md
§1.5, §1.6, §3.2), so two default rules are replaced; everything else (stages 1-3, codes in
range, scales > 0, byte identity of embeddings, final norm, lm_head, biases and dense
o_proj/down_proj) is checked as without it.
  * Smoothing: per layer, s = original / quantized input_layernorm (balance q/k/v_proj) and
    post_attention_layernorm (gate/up_proj); s = 1 where the norm's bytes are unchanged; s must
    be finite and > 0.  The reference weight of a balance Linear is W_ref = W_orig * diag(s)
    (W_ref = W_orig elsewhere).  A balance Linear left dense must equal W_ref within 2^-7 + 2^-10
    per element (two bf16 roundings), byte-identical when s = 1.
  * Numerics: instead of the per-element half-step bound (GPTQ moves codes off the nearest grid
    point), each module's relative Frobenius error ||W_ref - dq|| / ||W_ref|| must stay within
    int4 1.2, int8 0.3, fp8 0.3 (measurements in check_calibrated_module's docstring), and
    its scales must match the RTN min-max observer recomputed from W_ref and rounded to the scale
    dtype within 2^-6 + 2^-8 relative (GPTQ computes them once from the un-updated weights,
    §1.5); asymmetric zero points within 1.  Not for actorder "group" (scales of permuted groups).
  Without --calibrated the checks are exactly the default ones above.

Exit status: 0 when every check holds, 1 when any fails (one FAIL line per problem), 2 for
command-line usage errors.
"""

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass

try:
    import numpy as np
except ImportError:  # the PATH python3 of this machine has no NumPy
    sys.stderr.write("check_checkpoint.py needs NumPy: run it with /usr/bin/python3\n")
    sys.exit(2)


# --------------------------------------------------------------------------------------------
# Numeric tolerances (rationale in the docstrings of check_int_module / check_fp8_module).
# --------------------------------------------------------------------------------------------
SLACK = 2.0 ** -6            # relative slack on the rounding half-step (fp32 arithmetic)
CLIP_SLACK = 2.0 ** -7       # extra |w|-relative slack for codes clipped at the range end
FP8_REL = 2.0 ** -4          # half an ulp of a 3-bit mantissa, relative
FP8_ABS = 2.0 ** -9          # smallest subnormal step of E4M3, times the scale
TINY = 2.0 ** -20            # float noise, relative to the scale

MAX_HEADER_SIZE = 100_000_000  # det §2.2 (safetensors MAX_HEADER_SIZE)
MAX_FAIL_LINES = 200


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------
class Report:
    """Collects PASS/FAIL lines; the exit status is 1 as soon as one FAIL was recorded."""

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.passed = 0
        self.failures = []

    def ok(self, check, detail=""):
        self.passed += 1
        self.out.write(f"PASS {check}" + (f": {detail}" if detail else "") + "\n")

    def fail(self, check, detail):
        self.failures.append(f"{check}: {detail}")
        if len(self.failures) <= MAX_FAIL_LINES:
            self.out.write(f"FAIL {check}: {detail}\n")

    def note(self, text):
        self.out.write(f"NOTE {text}\n")

    def summary(self):
        if len(self.failures) > MAX_FAIL_LINES:
            self.out.write(f"FAIL ... {len(self.failures) - MAX_FAIL_LINES} more failures not shown\n")
        if self.failures:
            self.out.write(f"RESULT: FAIL ({len(self.failures)} problem(s), {self.passed} check(s) passed)\n")
            return 1
        self.out.write(f"RESULT: PASS ({self.passed} checks)\n")
        return 0


# --------------------------------------------------------------------------------------------
# safetensors container (fmt §2, det §2.2-2.4)
# --------------------------------------------------------------------------------------------
# Bits per element of every dtype in the safetensors Dtype enum (det §2.3).
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "U16": 16, "I16": 16, "U32": 32, "I32": 32, "U64": 64,
    "I64": 64, "F16": 16, "BF16": 16, "F32": 32, "F64": 64, "C64": 64, "F8_E5M2": 8,
    "F8_E4M3": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "F8_E8M0": 8, "F4": 4,
    "F6_E2M3": 6, "F6_E3M2": 6,
}
NUMPY_DTYPE = {
    "U8": "u1", "I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8", "U16": "<u2",
    "U32": "<u4", "U64": "<u8", "F16": "<f2", "F32": "<f4", "F64": "<f8", "BF16": "<u2",
    "F8_E4M3": "u1", "BOOL": "u1",
}


@dataclass
class TensorInfo:
    """One header entry; `start` is the absolute file offset of the tensor's first byte."""
    name: str
    dtype: str
    shape: tuple
    begin: int
    end: int
    path: str
    start: int = 0

    @property
    def numel(self):
        return math.prod(self.shape)

    @property
    def nbytes(self):
        return self.end - self.begin


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs):
    """json object hook: safetensors forbids duplicate tensor names (det §2.2)."""
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _entry_error(name, entry):
    """Returns why a header entry is malformed, or None (fmt §2 header layout)."""
    if not isinstance(entry, dict):
        return "entry is not an object"
    for key in ("dtype", "shape", "data_offsets"):
        if key not in entry:
            return f"missing '{key}'"
    if not isinstance(entry["dtype"], str) or entry["dtype"] not in DTYPE_BITS:
        return f"unknown dtype {entry['dtype']!r}"
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        return f"shape {shape!r} is not a list of non-negative integers"
    offs = entry["data_offsets"]
    if (not isinstance(offs, list) or len(offs) != 2 or not all(_is_int(o) for o in offs)
            or offs[0] < 0 or offs[1] < offs[0]):
        return f"data_offsets {offs!r} is not [begin, end] with 0 <= begin <= end"
    return None


def parse_safetensors(path, report, label):
    """Parses and validates one .safetensors file (fmt §2, det §2.2).

    Checks: 8-byte LE header length within limits, UTF-8 JSON object header without
    duplicate names, __metadata__ string->string, known dtypes, offsets contiguous from 0
    with no hole/overlap, end-begin == numel*itemsize, file length == 8 + N + last_end.
    Returns {name: TensorInfo} or None after reporting the failure.
    """
    check = f"{label} safetensors {os.path.basename(path)}"
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                report.fail(check, f"file is {size} bytes, shorter than the 8-byte header length")
                return None
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER_SIZE:
                report.fail(check, f"header length {n} exceeds the safetensors limit {MAX_HEADER_SIZE}")
                return None
            if 8 + n > size:
                report.fail(check, f"header length {n} runs past the end of the file ({size} bytes): truncated")
                return None
            raw = f.read(n)
    except OSError as e:
        report.fail(check, f"cannot read: {e}")
        return None
    try:
        text = raw.decode("utf-8")
        if not text.startswith("{"):
            raise ValueError("header does not start with '{'")
        header = json.loads(text, object_pairs_hook=_no_duplicates)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        report.fail(check, f"malformed JSON header: {e}")
        return None

    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict)
                                 and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
        report.fail(check, "__metadata__ must be a flat map of string to string")
        return None

    tensors = {}
    for name, entry in header.items():
        err = _entry_error(name, entry)
        if err:
            report.fail(check, f"tensor {name}: {err}")
            return None
        begin, end = entry["data_offsets"]
        tensors[name] = TensorInfo(name, entry["dtype"], tuple(entry["shape"]), begin, end,
                                   path, 8 + n + begin)

    if not _check_offsets(tensors, check, report):
        return None
    last_end = max((t.end for t in tensors.values()), default=0)
    if size != 8 + n + last_end:
        what = "truncated" if size < 8 + n + last_end else "trailing bytes"
        report.fail(check, f"file length {size} != 8 + header {n} + data {last_end} = "
                           f"{8 + n + last_end} ({what})")
        return None
    if n % 8:
        report.note(f"{check}: header length {n} is not padded to a multiple of 8 (convention, fmt §2)")
    report.ok(check, f"{len(tensors)} tensors, header {n} bytes, data {last_end} bytes")
    return tensors


def _check_offsets(tensors, check, report):
    """Offsets sorted are contiguous from 0, no holes/overlaps, size matches (det §2.2)."""
    pos = 0
    for t in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        bits = DTYPE_BITS[t.dtype] * t.numel
        if bits % 8 or t.nbytes != bits // 8:
            report.fail(check, f"tensor {t.name}: data_offsets span {t.nbytes} bytes but "
                               f"{t.dtype}{list(t.shape)} needs {bits / 8:g}")
            return False
        if t.begin != pos:
            kind = "hole" if t.begin > pos else "overlap"
            report.fail(check, f"tensor {t.name}: starts at {t.begin}, expected {pos} ({kind} in the data buffer)")
            return False
        pos = t.end
    return True


def load_checkpoint(directory, report, label, check_total_size):
    """Loads every shard of a HF directory, honouring model.safetensors.index.json (det §2.4).

    With an index: every listed shard exists and parses, every weight_map entry is in the
    named shard, every tensor of a listed shard is in weight_map, and (quantized side)
    metadata.total_size equals the sum of tensor bytes.  Without an index every
    *.safetensors file is loaded, as vLLM does.  No tensor may appear in two shards.
    Returns {name: TensorInfo} or None.
    """
    index_path = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index_path):
        return _load_indexed(directory, index_path, report, label, check_total_size)
    try:
        files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    except OSError as e:
        report.fail(f"{label} directory", f"cannot list {directory}: {e}")
        return None
    if not files:
        report.fail(f"{label} directory", f"no *.safetensors file in {directory}")
        return None
    return _merge_shards(directory, files, report, label)


def _load_indexed(directory, index_path, report, label, check_total_size):
    check = f"{label} index model.safetensors.index.json"
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError("weight_map is not a map of tensor name to file name")
    except (OSError, ValueError, KeyError, TypeError) as e:
        report.fail(check, f"unreadable index: {e!r}")
        return None
    files = sorted(set(weight_map.values()))
    for fname in files:
        if os.path.basename(fname) != fname or fname in (".", ".."):
            report.fail(check, f"shard name {fname!r} is not a plain file name")
            return None
        if not os.path.isfile(os.path.join(directory, fname)):
            report.fail(check, f"shard {fname} listed in weight_map does not exist")
            return None
    tensors = _merge_shards(directory, files, report, label)
    if tensors is None:
        return None
    good = True
    for name, fname in weight_map.items():
        t = tensors.get(name)
        if t is None or os.path.basename(t.path) != fname:
            where = "in no shard" if t is None else f"in {os.path.basename(t.path)}"
            report.fail(check, f"weight_map puts {name} in {fname} but it is {where}")
            good = False
    for name, t in tensors.items():
        if name not in weight_map:
            report.fail(check, f"tensor {name} of {os.path.basename(t.path)} is missing from weight_map")
            good = False
    if check_total_size and good:
        meta = index.get("metadata")
        total = meta.get("total_size") if isinstance(meta, dict) else None
        actual = sum(t.nbytes for t in tensors.values())
        if total is not None and total != actual:
            report.fail(check, f"metadata.total_size {total!r} != sum of tensor bytes {actual}")
            good = False
    if good:
        report.ok(check, f"{len(files)} shard(s), {len(weight_map)} tensors mapped")
    return tensors if good else None


def _merge_shards(directory, files, report, label):
    tensors = {}
    good = True
    for fname in files:
        part = parse_safetensors(os.path.join(directory, fname), report, label)
        if part is None:
            good = False
            continue
        for name, t in part.items():
            if name in tensors:
                report.fail(f"{label} shards", f"tensor {name} is in both "
                                               f"{os.path.basename(tensors[name].path)} and {fname}")
                good = False
            tensors[name] = t
    return tensors if good else None


def read_bytes(t):
    with open(t.path, "rb") as f:
        f.seek(t.start)
        data = f.read(t.nbytes)
    if len(data) != t.nbytes:
        raise OSError(f"short read of {t.name}")
    return data


def read_array(t):
    """The tensor as a NumPy array; BF16 comes back as float32, F8_E4M3 as raw uint8 codes."""
    arr = np.frombuffer(read_bytes(t), dtype=NUMPY_DTYPE[t.dtype])
    if t.dtype == "BF16":
        arr = bf16_bits_to_f32(arr)
    return arr.reshape(t.shape)


def same_bytes(a, b, chunk=1 << 26):
    """Byte comparison of two tensors' data, chunked so large embeddings stay cheap."""
    if a.nbytes != b.nbytes:
        return False
    with open(a.path, "rb") as fa, open(b.path, "rb") as fb:
        fa.seek(a.start)
        fb.seek(b.start)
        left = a.nbytes
        while left:
            n = min(chunk, left)
            if fa.read(n) != fb.read(n):
                return False
            left -= n
    return True


# --------------------------------------------------------------------------------------------
# Number formats (fmt §5, det §6.3.3)
# --------------------------------------------------------------------------------------------
def bf16_bits_to_f32(u16):
    """bf16 is the high half of an IEEE float32."""
    return (u16.astype(np.uint32) << np.uint32(16)).view(np.float32)


def fp8_e4m3fn_table():
    """Value of every E4M3FN byte, built from the bit layout (det §6.3.3).

    1 sign, 4 exponent bits with bias 7, 3 mantissa bits; exponent 0 is subnormal
    (m/8 * 2^-6); S.1111.111 (0x7F/0xFF) is NaN; no infinities; max 0x7E = 448.
    """
    table = np.empty(256, dtype=np.float64)
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        exp = (code >> 3) & 0xF
        man = code & 0x7
        if exp == 0xF and man == 0x7:
            table[code] = np.nan
        elif exp == 0:
            table[code] = sign * (man / 8.0) * 2.0 ** -6
        else:
            table[code] = sign * (1.0 + man / 8.0) * 2.0 ** (exp - 7)
    return table


FP8_TABLE = fp8_e4m3fn_table()


def unpack_int32(words, bits, axis):
    """Unpacks `32/bits` unsigned fields per int32 along `axis`, first field in the lowest bits.

    fmt §5: word[.., j] = sum_i u[.., j*per + i] << (bits*i).  Returns the unsigned fields
    (offset not removed, padding not removed) as int64, the packed axis grown by `per`.
    `words` are int32 bit patterns (a negative int32 is just a word whose top field is >= 8).
    """
    per = 32 // bits
    mask = np.uint32((1 << bits) - 1)
    u = np.ascontiguousarray(words, dtype=np.int32).view(np.uint32)
    fields = [((u >> np.uint32(bits * i)) & mask).astype(np.int16) for i in range(per)]
    stacked = np.stack(fields, axis=axis + 1)  # [.., words, per, ..] along axis
    shape = list(u.shape)
    shape[axis] *= per
    return stacked.reshape(shape).astype(np.int64)


# --------------------------------------------------------------------------------------------
# quantization_config (fmt §3-4, det §3-4, §6)
# --------------------------------------------------------------------------------------------
QARG_KEYS = {"num_bits", "type", "symmetric", "group_size", "strategy", "block_structure",
             "dynamic", "actorder", "observer", "observer_kwargs"}
STRATEGIES = {"tensor", "channel", "group", "token", "block", "tensor_group", "attn_head"}
FORMATS = {"int-quantized", "pack-quantized", "float-quantized", "naive-quantized", "mixed-precision",
           "dense", "nvfp4-pack-quantized", "mxfp4-pack-quantized", "mxfp8-quantized"}  # det §3.4
ACTORDER = {None: None, False: None, True: "group", "group": "group", "dynamic": "group",
            "weight": "weight", "static": "weight"}


@dataclass(frozen=True)
class QArgs:
    """Normalised QuantizationArgs: strategy inferred, channel/tensor group_size -> None."""
    num_bits: int
    type: str
    symmetric: bool
    strategy: str
    group_size: object
    dynamic: object
    actorder: object

    def describe(self):
        g = f" g{self.group_size}" if self.group_size else ""
        sym = "sym" if self.symmetric else "asym"
        dyn = " dynamic" if self.dynamic else ""
        return f"{self.type}{self.num_bits} {self.strategy}{g} {sym}{dyn}"


def _qa(num_bits, type_, symmetric, strategy, group_size=None, dynamic=False):
    return dict(num_bits=num_bits, type=type_, symmetric=symmetric, strategy=strategy,
                group_size=group_size, dynamic=dynamic)


@dataclass
class Preset:
    """Preset from det §4: format plus accepted weight / input-activation variants."""
    format: str
    weights: list
    inputs: list


PRESETS = {
    "W8A8": Preset("int-quantized", [_qa(8, "int", True, "channel")],
                   [_qa(8, "int", True, "token", dynamic=True)]),
    # W8A16 changed from channel to group 128 in CT 0.16 (det §4): accept both.
    "W8A16": Preset("pack-quantized", [_qa(8, "int", True, "channel"), _qa(8, "int", True, "group", 128)], [None]),
    # fmt §4: "int4 group 128 (or channel)".
    "W4A16": Preset("pack-quantized", [_qa(4, "int", True, "group", 128), _qa(4, "int", True, "channel")], [None]),
    "W4A16_ASYM": Preset("pack-quantized",
                         [_qa(4, "int", False, "group", 128), _qa(4, "int", False, "channel")], [None]),
    "FP8": Preset("float-quantized", [_qa(8, "float", True, "tensor")], [_qa(8, "float", True, "tensor")]),
    "FP8_DYNAMIC": Preset("float-quantized", [_qa(8, "float", True, "channel")],
                          [_qa(8, "float", True, "token", dynamic=True)]),
}


def parse_qargs(d, where, report, is_input=False):
    """Validates one QuantizationArgs object (det §3.3) and returns QArgs or None.

    Enforces: only the known keys (pydantic extra="forbid"; no scale_dtype/zp_dtype, fmt §0),
    field types, strategy inference, token => dynamic, group => group_size > 0, group_size > 0
    only with group, dynamic only with token/tensor/group, actorder "group" only with group
    strategy, no actorder on input activations.
    """
    if not isinstance(d, dict):
        report.fail(f"config {where}", f"expected an object, got {d!r}")
        return None
    bad = False
    for key in d:
        if key in ("scale_dtype", "zp_dtype"):
            report.fail(f"config {where}.{key}", "must not be written (compressed-tensors < 0.13 rejects it)")
            bad = True
        elif key not in QARG_KEYS:
            report.fail(f"config {where}.{key}", "unknown QuantizationArgs key (pydantic extra='forbid')")
            bad = True
    num_bits, type_ = d.get("num_bits", 8), d.get("type", "int")
    symmetric, group_size = d.get("symmetric", True), d.get("group_size")
    strategy, dynamic, actorder = d.get("strategy"), d.get("dynamic", False), d.get("actorder")
    problems = []
    if not _is_int(num_bits) or num_bits <= 0:
        problems.append(f"num_bits {num_bits!r} is not a positive integer")
    if type_ not in ("int", "float"):
        problems.append(f"type {type_!r} is not 'int' or 'float'")
    if not isinstance(symmetric, bool):
        problems.append(f"symmetric {symmetric!r} is not a boolean")
    if group_size is not None and not _is_int(group_size):
        problems.append(f"group_size {group_size!r} is not an integer or null")
    if not (isinstance(dynamic, bool) or dynamic == "local"):
        problems.append(f"dynamic {dynamic!r} is not a boolean or 'local'")
    if not isinstance(actorder, (str, bool, type(None))) or actorder not in ACTORDER:
        problems.append(f"actorder {actorder!r} is not null/group/weight/static/dynamic")
    if strategy is not None and (not isinstance(strategy, str) or strategy not in STRATEGIES):
        problems.append(f"strategy {strategy!r} is unknown")
    if d.get("block_structure") is not None:
        problems.append("block_structure is set (block strategy is not supported here)")
    for p in problems:
        report.fail(f"config {where}", p)
    if problems:
        return None

    if strategy is None:  # det §3.3 inference
        strategy = "tensor" if group_size is None else ("channel" if group_size == -1 else "group")
    if strategy in ("group", "tensor_group"):
        if group_size is None or group_size <= 0:
            problems.append(f"strategy {strategy} needs group_size > 0, got {group_size!r}")
    elif group_size is not None and group_size > 0:
        problems.append(f"group_size {group_size} > 0 with strategy {strategy}")
    if strategy == "token" and dynamic is not True:
        problems.append("strategy token requires dynamic: true")
    if dynamic is True and strategy not in ("token", "tensor", "tensor_group", "group"):
        problems.append(f"dynamic: true is not allowed with strategy {strategy}")
    order = ACTORDER[actorder]
    if is_input and order is not None:
        problems.append("input activations must not carry actorder")
    if order == "group" and strategy not in ("group", "tensor_group"):
        problems.append(f"actorder {actorder!r} requires strategy group, got {strategy}")
    if is_input and strategy not in ("token", "tensor", "group", "tensor_group", "attn_head"):
        problems.append(f"input activation strategy {strategy} is not allowed")
    for p in problems:
        report.fail(f"config {where}", p)
    if problems or bad:
        return None
    if strategy not in ("group", "tensor_group"):
        group_size = None
    return QArgs(num_bits, type_, symmetric, strategy, group_size, dynamic, order)


def _args_match(qa, want):
    """Fields of QArgs that differ from a preset variant dict (None means matches)."""
    if want is None or qa is None:
        return [] if want is None and qa is None else ["presence"]
    return [k for k, v in want.items() if getattr(qa, k) != v]


def classify(fmt, w, a):
    """Name of the preset matching (format, weights, inputs), or a description."""
    for name, p in PRESETS.items():
        if p.format == fmt and any(not _args_match(w, v) for v in p.weights) \
                and any(not _args_match(a, v) for v in p.inputs):
            return name
    return f"custom({w.describe()}; act {a.describe() if a else 'none'}; {fmt})"


@dataclass
class Scheme:
    """One config group, resolved: layout is 'int8' (int-quantized), 'packed' or 'fp8'."""
    group: str
    targets: list
    weights: QArgs
    inputs: object
    format: str
    layout: str
    label: str


def expected_format(w, a):
    """Format required by the scheme (fmt §0, det §3.4) and its layout, or (None, reason)."""
    if w.type == "int" and a is None:
        if w.num_bits not in (4, 8):
            return None, f"int{w.num_bits} weight-only is not supported (4 or 8 bits)"
        if w.strategy not in ("group", "channel") or w.dynamic:
            return None, f"pack-quantized weights must be static channel/group, got {w.describe()}"
        return ("pack-quantized", "packed"), None
    if w.type == "int" and a is not None and a.type == "int":
        if w.num_bits != 8 or a.num_bits != 8:
            return None, "int-quantized (W8A8) needs 8-bit weights and activations"
        if not w.symmetric or w.strategy not in ("channel", "tensor") or w.dynamic:
            return None, f"W8A8 weights must be static symmetric channel/tensor, got {w.describe()}"
        if not a.dynamic and a.strategy != "tensor":
            return None, "static int8 activations must use strategy tensor"
        return ("int-quantized", "int8"), None
    if w.type == "float" and a is not None and a.type == "float":
        if w.num_bits != 8 or a.num_bits != 8:
            return None, "float-quantized needs 8-bit (E4M3) weights and activations"
        if not w.symmetric or w.strategy not in ("channel", "tensor") or w.dynamic:
            return None, f"FP8 weights must be static symmetric channel/tensor, got {w.describe()}"
        if not a.symmetric or (not a.dynamic and a.strategy != "tensor"):
            return None, "FP8 activations must be symmetric, and static ones per tensor"
        return ("float-quantized", "fp8"), None
    return None, f"weights {w.describe()} with activations {a.describe() if a else 'none'} is not a supported scheme"


def check_scheme_group(gname, group, global_format, report):
    """Validates one config group (det §3.2) and returns a Scheme or None."""
    where = f"quantization_config.config_groups.{gname}"
    if not isinstance(group, dict):
        report.fail(f"config {where}", "is not an object")
        return None
    targets = group.get("targets")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        report.fail(f"config {where}.targets", f"must be a non-empty list of strings, got {targets!r}")
        return None
    for t in targets:
        if t.startswith("re:") and not _valid_regex(t[3:]):
            report.fail(f"config {where}.targets", f"invalid regex {t!r}")
            return None
    if group.get("weights") is None:
        report.fail(f"config {where}.weights", "missing: a quantized Linear group needs weights args")
        return None
    if group.get("output_activations") is not None:
        report.fail(f"config {where}.output_activations", "must be null")
        return None
    w = parse_qargs(group["weights"], f"{where}.weights", report)
    a_raw = group.get("input_activations")
    a = None if a_raw is None else parse_qargs(a_raw, f"{where}.input_activations", report, is_input=True)
    if w is None or (a_raw is not None and a is None):
        return None
    want, why = expected_format(w, a)
    if want is None:
        report.fail(f"config {where}", why)
        return None
    fmt, layout = want
    own = group.get("format")
    effective = own if own is not None else global_format
    if own is None and global_format == "mixed-precision":
        report.fail(f"config {where}.format", "global format is mixed-precision but the group has no own format")
        return None
    if effective != fmt:
        key = f"{where}.format" if own is not None else "quantization_config.format"
        report.fail(f"config {key}", f"{effective!r} does not match the scheme ({w.describe()}, "
                                     f"act {a.describe() if a else 'none'}): expected {fmt!r}")
        return None
    return Scheme(gname, targets, w, a, fmt, layout, classify(fmt, w, a))


def _valid_regex(pattern):
    try:
        re.compile(pattern)
        return True
    except re.error:
        return False


def check_expected_preset(scheme, preset_name, report):
    """--expect-scheme: format and args equal the preset (det §4, §6.x.1)."""
    p = PRESETS[preset_name]
    where = f"quantization_config.config_groups.{scheme.group}"
    good = True
    if scheme.format != p.format:
        report.fail(f"config {where}", f"format {scheme.format!r}, expected {p.format!r} for {preset_name}")
        good = False
    for part, qa, variants in (("weights", scheme.weights, p.weights),
                               ("input_activations", scheme.inputs, p.inputs)):
        diffs = [_args_match(qa, v) for v in variants]
        if all(diffs):
            best = min(range(len(variants)), key=lambda i: len(diffs[i]))
            want = variants[best]
            if want is None or qa is None:
                detail = f"{'present' if qa else 'absent'}, expected {'absent' if want is None else 'present'}"
            else:
                detail = ", ".join(f"{k}={getattr(qa, k)!r} (expected {want[k]!r})" for k in diffs[best])
            report.fail(f"config {where}.{part}", f"{detail} for --expect-scheme {preset_name}")
            good = False
    return good


def check_kv_cache_scheme(kv, report):
    """fmt §4 / det §6.4.1: num_bits 8, type float, strategy tensor, symmetric true."""
    qa = parse_qargs(kv, "quantization_config.kv_cache_scheme", report)
    if qa is None:
        return False
    want = dict(num_bits=8, type="float", strategy="tensor", symmetric=True)
    bad = [f"{k}={getattr(qa, k)!r} (expected {v!r})" for k, v in want.items() if getattr(qa, k) != v]
    if bad:
        report.fail("config quantization_config.kv_cache_scheme", ", ".join(bad))
        return False
    return True


def module_matches(name, entries):
    """Target/ignore matching on unfused HF names (det §3.5): exact, 're:' prefix match, class."""
    for e in entries:
        if e.startswith("re:"):
            if re.match(e[3:], name):
                return True
        elif e == name or e == "Linear":
            return True
    return False


def _inactive_section(key, value):
    """sparsity_config / transform_config must be absent, null or {} (det §3.1: vLLM parses a
    non-empty one; newest vLLM raises on sparsity targets).  A sparsity_config dict without
    targets (the dense config older compressed-tensors wrote) is tolerated."""
    if value is None or value == {}:
        return True
    return key == "sparsity_config" and isinstance(value, dict) and not value.get("targets")


def check_quant_config(qc, modules, expect, report):
    """Validates quantization_config and assigns a Scheme to every quantized Linear.

    Returns (plan {module: Scheme}, kv_cache: bool) or None when the config is unusable.
    """
    if not isinstance(qc, dict):
        report.fail("config quantization_config", "missing or not an object")
        return None
    good = True

    def require(key, value, why):
        nonlocal good
        if qc.get(key) != value:
            report.fail(f"config quantization_config.{key}", f"{qc.get(key)!r}, expected {value!r} ({why})")
            good = False

    require("quant_method", "compressed-tensors", "vLLM selects the loader by it")
    require("quantization_status", "compressed", "tensors are stored compressed")
    global_format = qc.get("format")
    if not isinstance(global_format, str) or global_format not in FORMATS:
        report.fail("config quantization_config.format", f"{global_format!r} is not a compressed-tensors format")
        good = False
    for key in ("sparsity_config", "transform_config"):
        if not _inactive_section(key, qc.get(key)):
            report.fail(f"config quantization_config.{key}", f"must be empty ({{}}), got {qc.get(key)!r}")
            good = False

    ignore = qc.get("ignore", [])
    if not isinstance(ignore, list) or not all(isinstance(x, str) for x in ignore):
        report.fail("config quantization_config.ignore", f"must be a list of strings, got {ignore!r}")
        return None
    bad_re = [x for x in ignore if x.startswith("re:") and not _valid_regex(x[3:])]
    if bad_re:
        report.fail("config quantization_config.ignore", f"invalid regex {bad_re[0]!r}")
        return None
    if not module_matches("lm_head", ignore):
        report.fail("config quantization_config.ignore", "'lm_head' is not in ignore (it must stay dense, fmt §0)")
        good = False

    groups = qc.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        report.fail("config quantization_config.config_groups", "missing or empty")
        return None
    schemes = [check_scheme_group(g, groups[g], global_format, report) for g in groups]
    if None in schemes:
        return None
    formats = {s.format for s in schemes}
    if len(formats) > 1 and global_format != "mixed-precision":
        report.fail("config quantization_config.format",
                    f"groups use {sorted(formats)}: global format must be 'mixed-precision'")
        good = False
    if expect and not all(check_expected_preset(s, expect, report) for s in schemes):
        good = False

    kv = qc.get("kv_cache_scheme")
    if kv is not None and not check_kv_cache_scheme(kv, report):
        good = False

    plan = assign_modules(modules, schemes, ignore, report)
    if plan is None or not good:
        return None
    n_q = len(plan)
    report.ok("config quantization_config",
              f"format {global_format}, {len(schemes)} group(s) "
              f"[{', '.join(s.group + '=' + s.label for s in schemes)}], {n_q} Linear modules quantized, "
              f"{len(modules) - n_q} left dense, ignore={ignore}, kv_cache_scheme={'set' if kv else 'none'}")
    return plan, kv is not None


def assign_modules(modules, schemes, ignore, report):
    """Maps every non-ignored Linear to exactly one group; fused shards agree (det §3.5)."""
    plan, good = {}, True
    used = set()
    for m in modules:
        if module_matches(m, ignore):
            continue
        hits = [s for s in schemes if module_matches(m, s.targets)]
        if len(hits) > 1:
            report.fail(f"config targets {m}", f"matched by several groups {[s.group for s in hits]}")
            good = False
        elif hits:
            plan[m] = hits[0]
            used.add(hits[0].group)
    for s in schemes:
        if s.group not in used:
            report.fail(f"config quantization_config.config_groups.{s.group}.targets",
                        f"{s.targets} match no quantizable Linear module")
            good = False
    for fused in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")):
        for m in modules:
            if not m.endswith("." + fused[0]):
                continue
            base = m[: -len(fused[0])]
            kinds = {f: (plan[base + f].group if base + f in plan else "dense") for f in fused}
            if len(set(kinds.values())) > 1:
                report.fail(f"config fused shards {base}{{{','.join(fused)}}}",
                            f"vLLM fuses them but they are quantized differently: {kinds}")
                good = False
    return plan if good else None


def check_config_rest(orig_cfg, q_cfg, report):
    """Every key but quantization_config (and the writer version) is unchanged (task rule 2)."""
    skip = {"quantization_config", "transformers_version", "_name_or_path"}
    good = True
    for key in sorted((set(orig_cfg) | set(q_cfg)) - skip):
        if key not in q_cfg:
            report.fail(f"config {key}", "present in the original config.json but missing")
            good = False
        elif key not in orig_cfg:
            report.fail(f"config {key}", f"not in the original config.json (added value {q_cfg[key]!r})")
            good = False
        elif orig_cfg[key] != q_cfg[key]:
            report.fail(f"config {key}", f"changed from {orig_cfg[key]!r} to {q_cfg[key]!r}")
            good = False
    if good:
        report.ok("config.json rest", f"{len(set(orig_cfg) - skip)} keys unchanged vs the original")
    return good


# --------------------------------------------------------------------------------------------
# The original model
# --------------------------------------------------------------------------------------------
LINEAR_RE = re.compile(r"^model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)$")
PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
MODEL_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


def load_json(path, report, check):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (OSError, ValueError) as e:
        report.fail(check, f"cannot read {path}: {e}")
        return None


def llama_linear_shapes(cfg):
    """[N, K] of each projection from the Llama config sizes (KeyError/TypeError if absent)."""
    sizes = [cfg[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")]
    sizes += [cfg[k] for k in ("num_key_value_heads", "head_dim") if cfg.get(k) is not None]
    if not all(_is_int(v) and v > 0 for v in sizes):
        raise TypeError(f"sizes must be positive integers, got {sizes}")
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    hd = cfg.get("head_dim") or h // nh
    return {"self_attn.q_proj": (nh * hd, h), "self_attn.k_proj": (nkv * hd, h),
            "self_attn.v_proj": (nkv * hd, h), "self_attn.o_proj": (h, nh * hd),
            "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h), "mlp.down_proj": (h, inter)}


def inspect_original(cfg, tensors, report):
    """Lists the Linear modules of the float model and its dtype; sanity-checks the model."""
    check = "original model"
    if cfg.get("quantization_config") is not None:
        report.fail(check, "config.json already has a quantization_config: not a float model")
        return None
    try:
        n_layers = cfg["num_hidden_layers"]
        shapes = llama_linear_shapes(cfg)
    except (KeyError, TypeError, ZeroDivisionError) as e:
        report.fail(check, f"config.json lacks Llama sizes: {e!r}")
        return None
    modules, dtypes = [], set()
    for i in range(n_layers):
        for p in PROJ:
            name = f"model.layers.{i}.{p}"
            t = tensors.get(name + ".weight")
            if t is None or t.shape != shapes[p]:
                got = "missing" if t is None else f"shape {list(t.shape)}"
                report.fail(check, f"{name}.weight {got}, expected {list(shapes[p])} from config.json")
                return None
            modules.append(name)
            dtypes.add(t.dtype)
    matches = (LINEAR_RE.match(n[:-len(".weight")]) for n in tensors if n.endswith(".weight"))
    extra = [mt.group(0) for mt in matches if mt and int(mt.group(1)) >= n_layers]
    if extra:
        report.fail(check, f"{extra[0]}.weight is beyond num_hidden_layers={n_layers}")
        return None
    if "lm_head.weight" in tensors:
        modules.append("lm_head")
        dtypes.add(tensors["lm_head.weight"].dtype)
    if len(dtypes) != 1 or next(iter(dtypes)) not in MODEL_DTYPES:
        report.fail(check, f"Linear weights must share one of BF16/F16/F32, found {sorted(dtypes)}")
        return None
    model_dtype = dtypes.pop()
    declared = cfg.get("torch_dtype", cfg.get("dtype"))
    if declared is not None and declared != MODEL_DTYPES[model_dtype]:
        report.note(f"original config dtype {declared!r} but the weights are {model_dtype}; using {model_dtype}")
    report.ok(check, f"{n_layers} layer(s), {len(modules)} Linear modules, dtype {model_dtype}")
    return modules, model_dtype


# --------------------------------------------------------------------------------------------
# Tensor set (fmt §4, det §6.1.2, §6.2.2, §6.3.2, §6.4.2)
# --------------------------------------------------------------------------------------------
@dataclass
class Spec:
    """What one expected tensor must look like."""
    dtypes: tuple
    shapes: tuple
    role: str


def scale_dtypes(model_dtype, layout):
    """Scales are stored in the model dtype (fmt §0); FP8 may also use F32 (fmt §4); fp32
    models: compressed-tensors falls back to fp16 (bf16 in old versions) (det §5)."""
    allowed = [model_dtype]
    if model_dtype == "F32":
        allowed += ["F16", "BF16"]
    if layout == "fp8" and "F32" not in allowed:
        allowed.append("F32")
    return tuple(allowed)


def expected_module_tensors(m, n, k, s, model_dtype):
    """The exact tensor set for quantized Linear `m` with weight [n, k] under scheme `s`."""
    w, a = s.weights, s.inputs
    sd = scale_dtypes(model_dtype, s.layout)
    groups = 1 if w.strategy == "channel" else (-(-k // w.group_size) if w.strategy == "group" else 0)
    scale_shape = (n, groups) if groups else (1,)
    out = {}
    if s.layout == "packed":
        per = 32 // w.num_bits
        out[f"{m}.weight_packed"] = Spec(("I32",), ((n, -(-k // per)),), "packed weight")
        out[f"{m}.weight_scale"] = Spec(sd, (scale_shape,), "weight scale")
        out[f"{m}.weight_shape"] = Spec(("I64",), ((2,),), "unpacked weight shape")
        if not w.symmetric:
            out[f"{m}.weight_zero_point"] = Spec(("I32",), ((-(-n // per), groups),), "packed zero point")
        if w.actorder == "group":
            out[f"{m}.weight_g_idx"] = Spec(("I32",), ((k,),), "group index")
    else:
        wdt = "I8" if s.layout == "int8" else "F8_E4M3"
        out[f"{m}.weight"] = Spec((wdt,), ((n, k),), "quantized weight")
        out[f"{m}.weight_scale"] = Spec(sd, (scale_shape,), "weight scale")
    if a is not None and not a.dynamic:
        out[f"{m}.input_scale"] = Spec(sd, ((1,),), "static input scale")
        if not a.symmetric:
            out[f"{m}.input_zero_point"] = Spec(("I8",), ((1,),), "input zero point")
    return out


def unexpected_hint(name, plan, orig):
    """Explains the usual reasons for an unexpected tensor name."""
    m, _, suffix = name.rpartition(".")
    s = plan.get(m)
    if suffix in ("k_scale", "v_scale"):
        return "KV-cache scale without kv_cache_scheme in the config"
    if s is None and f"{m}.weight" in orig:
        return f"{m} is not quantized (ignored or not targeted): only its original tensors belong"
    if s is None:
        return "not in the original checkpoint"
    if suffix == "weight_zero_point" and s.weights.symmetric:
        return "zero point on a symmetric scheme (must be omitted, fmt §4)"
    if suffix == "weight" and s.layout == "packed":
        return "leftover dense weight: pack-quantized replaces it by weight_packed"
    if suffix == "weight_g_idx":
        return "weight_g_idx is only written for actorder 'group'"
    if suffix == "input_scale":
        return "input_scale present but input activations are dynamic or absent"
    return f"not part of the {s.label} tensor set"


def check_tensor_set(orig, quant, plan, model_dtype, kv_layers, report, skip_bytes=frozenset()):
    """Exactly the expected names with the expected dtypes and shapes (vLLM is strict, fmt §0).

    Quantized Linear modules get the scheme's tensor set; every other original tensor must be
    present with identical dtype, shape and bytes (except the names in `skip_bytes`, which
    --calibrated checks against the smoothing instead); with kv_cache_scheme, k_scale / v_scale
    of shape [1] or [] per layer.  Returns the set of modules whose tensors are all well-formed.
    """
    expected, bad_modules, problems = {}, set(), 0
    for name, t in orig.items():
        m = name[:-len(".weight")] if name.endswith(".weight") else None
        if m in plan:
            n, k = t.shape
            g = plan[m].weights.group_size
            if g and k % g:
                report.fail(f"tensor {name}", f"K={k} is not divisible by group_size {g} (vLLM requires it)")
                bad_modules.add(m)
                problems += 1
            expected.update(expected_module_tensors(m, n, k, plan[m], model_dtype))
        else:
            expected[name] = Spec((t.dtype,), (t.shape,), "copied unchanged")
    kv_dtypes = scale_dtypes(model_dtype, "fp8")
    for i in range(kv_layers):
        for kind in ("k_scale", "v_scale"):
            expected[f"model.layers.{i}.self_attn.{kind}"] = Spec(kv_dtypes, ((1,), ()), "KV-cache scale")

    for name in sorted(set(expected) - set(quant)):
        report.fail(f"tensor {name}", f"missing ({expected[name].role})")
        bad_modules.add(name.rpartition(".")[0])
        problems += 1
    for name in sorted(set(quant) - set(expected)):
        report.fail(f"tensor {name}", f"unexpected: {unexpected_hint(name, plan, orig)}")
        bad_modules.add(name.rpartition(".")[0])
        problems += 1
    for name in sorted(set(expected) & set(quant)):
        spec, t = expected[name], quant[name]
        why = []
        if t.dtype not in spec.dtypes:
            why.append(f"dtype {t.dtype}, expected {'/'.join(spec.dtypes)}")
        if t.shape not in spec.shapes:
            why.append(f"shape {list(t.shape)}, expected {' or '.join(str(list(s)) for s in spec.shapes)}")
        if why:
            report.fail(f"tensor {name}", f"{'; '.join(why)} ({spec.role})")
            bad_modules.add(name.rpartition(".")[0])
            problems += 1
    if not problems:
        report.ok("tensor set", f"{len(quant)} tensors: exactly the expected names, dtypes and shapes")
    copied = sorted(n for n in orig if n in quant and n in expected
                    and expected[n].role == "copied unchanged" and n not in skip_bytes
                    and orig[n].dtype == quant[n].dtype and orig[n].shape == quant[n].shape)
    check_copied_bytes(orig, quant, copied, report)
    return {m for m in plan if m not in bad_modules}


def check_copied_bytes(orig, quant, names, report):
    """Non-quantized tensors (embeddings, norms, lm_head, ignored Linears) are byte-identical."""
    diff = [n for n in names if not same_bytes(orig[n], quant[n])]
    for n in diff:
        report.fail(f"tensor {n}", "bytes differ from the original (non-quantized tensors are copied unchanged)")
    if not diff:
        report.ok("non-quantized tensors", f"{len(names)} tensors byte-identical to the original")


def check_kv_scales(quant, n_layers, report):
    """k_scale / v_scale are finite and > 0 (det §6.4.2)."""
    good = True
    for i in range(n_layers):
        for kind in ("k_scale", "v_scale"):
            t = quant.get(f"model.layers.{i}.self_attn.{kind}")
            if t is None or t.dtype not in ("BF16", "F16", "F32"):
                continue  # already reported by the tensor-set check
            v = read_array(t).astype(np.float64).ravel()
            if not (np.all(np.isfinite(v)) and np.all(v > 0)):
                report.fail(f"tensor {t.name}", f"value {v.tolist()} must be finite and > 0")
                good = False
    if good:
        report.ok("kv-cache scales", f"{2 * n_layers} k_scale/v_scale tensors finite and > 0")


# --------------------------------------------------------------------------------------------
# Numerics (fmt §5-6, det §5)
# --------------------------------------------------------------------------------------------
@dataclass
class Stats:
    """Error statistics per scheme label."""
    modules: int = 0
    elements: int = 0
    max_err_over_scale: float = 0.0
    max_err_over_bound: float = 0.0
    clipped: int = 0
    bound_text: str = ""


class NumericError(Exception):
    """A decoded value breaks a rule; the message names what."""


def float_array(t):
    """Decodes a BF16/F16/F32 tensor to float64."""
    return read_array(t).astype(np.float64)


def positive_scales(name, s):
    """Scales must be finite and > 0 (task rule 4)."""
    bad = ~(np.isfinite(s) & (s > 0))
    if bad.any():
        idx = np.argwhere(bad)[0].tolist()
        raise NumericError(f"{name}: {int(bad.sum())} scale(s) not finite and > 0, first at {idx} = {s[tuple(idx)]!r}")


def unpack_weight(m, q, w, n, k):
    """Signed codes [n, k] of a packed weight (fmt §5), with the shape and padding checks."""
    bits = w.num_bits
    shape = read_array(q[f"{m}.weight_shape"]).tolist()
    if shape != [n, k]:
        raise NumericError(f"{m}.weight_shape: {shape}, expected [{n}, {k}]")
    raw = unpack_int32(read_array(q[f"{m}.weight_packed"]), bits, axis=1)
    if raw.shape[1] > k and raw[:, k:].any():
        raise NumericError(f"{m}.weight_packed: padding fields beyond column {k} are not zero")
    return raw[:, :k] - (1 << (bits - 1))


def unpack_zero_points(m, q, w, n, groups):
    """Signed zero points [n, groups], packed along N (fmt §5), or zeros when symmetric."""
    if w.symmetric:
        return np.zeros((n, groups), dtype=np.int64)
    raw = unpack_int32(read_array(q[f"{m}.weight_zero_point"]), w.num_bits, axis=0)
    if raw.shape[0] > n and raw[n:].any():
        raise NumericError(f"{m}.weight_zero_point: padding fields beyond row {n} are not zero")
    return raw[:n] - (1 << (w.num_bits - 1))


def column_groups(m, q, w, k, groups):
    """Group of every input column: g_idx[k] if present, else k // group_size (fmt §6)."""
    if w.strategy in ("channel", "tensor"):
        return np.zeros(k, dtype=np.int64)
    if w.actorder == "group":
        g = read_array(q[f"{m}.weight_g_idx"]).astype(np.int64)
        if g.min() < 0 or g.max() >= groups:
            raise NumericError(f"{m}.weight_g_idx: values must lie in [0, {groups}), got [{g.min()}, {g.max()}]")
        return g
    return np.arange(k, dtype=np.int64) // w.group_size


def decode_int_module(m, q, s, n, k):
    """Codes [n,k], scales [rows,groups] (rows 1 for tensor), zero points [rows,groups],
    column group index [k] and (qmin, qmax) of an integer module, with the range checks:
    codes and zero points in [qmin, qmax], scales finite and > 0, g_idx in range."""
    wa = s.weights
    qmin, qmax = -(1 << (wa.num_bits - 1)), (1 << (wa.num_bits - 1)) - 1
    if s.layout == "packed":
        codes = unpack_weight(m, q, wa, n, k)
    else:
        codes = read_array(q[f"{m}.weight"]).astype(np.int64)
    scale = float_array(q[f"{m}.weight_scale"]).reshape(n if wa.strategy != "tensor" else 1, -1)
    positive_scales(f"{m}.weight_scale", scale)
    groups = scale.shape[1]
    if codes.min() < qmin or codes.max() > qmax:
        raise NumericError(f"{m}: codes outside [{qmin}, {qmax}]")
    zp = unpack_zero_points(m, q, wa, scale.shape[0], groups)
    if zp.min() < qmin or zp.max() > qmax:
        raise NumericError(f"{m}.weight_zero_point: values outside [{qmin}, {qmax}]")
    cols = column_groups(m, q, wa, k, groups)
    return codes, scale, zp, cols, (qmin, qmax)


def check_int_module(m, q, w_orig, s, stats):
    """Integer schemes: w = (q - zp) * scale, compared with the original weight.

    Bound per element: |w - dq| <= B * scale * (1 + 2^-6) + 2^-20 * scale, with B = 0.5 for
    symmetric and 1.0 for asymmetric (the rounded zero point shifts the grid by up to half a
    step).  Codes sitting at the end of the range (qmin/qmax) with w beyond the grid end are
    clipped codes: the reference convention absmax/7.5 (int4) / absmax/127.5 (int8) clips the
    positive end on purpose (det §5), and a scale rounded down to bf16/fp16 moves the
    clipping point by up to |w| * 2^-8, so those elements get an extra |w| * 2^-7.
    """
    wa = s.weights
    n, k = w_orig.shape
    codes, scale, zp, cols, (qmin, qmax) = decode_int_module(m, q, s, n, k)
    base = 0.5 if wa.symmetric else 1.0
    stats.bound_text = f"{base}*scale*(1+2^-6) (+|w|*2^-7 on clipped codes)"
    for r0 in range(0, n, max(1, (1 << 22) // max(k, 1))):
        r1 = min(n, r0 + max(1, (1 << 22) // max(k, 1)))
        rows = slice(r0, r1) if scale.shape[0] > 1 else slice(0, 1)
        sc = scale[rows][:, cols]
        c = codes[r0:r1]
        dq = (c - zp[rows][:, cols]) * sc
        w = w_orig[r0:r1]
        err = np.abs(w - dq)
        clipped = ((c == qmax) & (w > dq)) | ((c == qmin) & (w < dq))
        bound = base * sc * (1 + SLACK) + TINY * sc + np.where(clipped, np.abs(w) * CLIP_SLACK, 0.0)
        _record(m, r0, err, bound, err / sc, w, dq, stats)
        stats.clipped += int(clipped.sum())


def decode_fp8_module(m, q, s):
    """Raw E4M3FN codes [n,k] and scales [rows,1] of an FP8 module: no NaN code, scales (and a
    static input_scale) finite and > 0."""
    codes = read_array(q[f"{m}.weight"])
    nan = (codes & 0x7F) == 0x7F
    if nan.any():
        idx = np.argwhere(nan)[0].tolist()
        raise NumericError(f"{m}.weight: {int(nan.sum())} NaN code(s) (0x7F/0xFF), first at {idx}")
    scale = float_array(q[f"{m}.weight_scale"]).reshape(-1, 1)
    positive_scales(f"{m}.weight_scale", scale)
    if f"{m}.input_scale" in q and s.inputs is not None and not s.inputs.dynamic:
        positive_scales(f"{m}.input_scale", float_array(q[f"{m}.input_scale"]))
    return codes, scale


def check_fp8_module(m, q, w_orig, s, stats):
    """FP8: w = e4m3fn(code) * scale; |w - dq| <= |w| * 2^-4 + scale * 2^-9 + 2^-20 * scale.

    2^-4 is half an ulp of a 3-bit mantissa relative to the value; scale * 2^-9 covers the
    subnormal range (its step is 2^-9).  Codes 0x7F / 0xFF (NaN) are rejected (det §6.3.3).
    """
    n, k = w_orig.shape
    codes, scale = decode_fp8_module(m, q, s)
    stats.bound_text = "|w|*2^-4 + scale*2^-9"
    step = max(1, (1 << 22) // max(k, 1))
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        sc = scale[r0:r1] if scale.shape[0] > 1 else scale
        dq = FP8_TABLE[codes[r0:r1]] * sc
        w = w_orig[r0:r1]
        err = np.abs(w - dq)
        bound = np.abs(w) * FP8_REL + sc * FP8_ABS + TINY * sc
        _record(m, r0, err, bound, err / sc, w, dq, stats)


def _record(m, r0, err, bound, err_over_scale, w, dq, stats):
    """Updates the statistics and raises on the first chunk with an out-of-bound element."""
    ratio = err / bound
    over = ratio > 1.0
    if over.any():
        i, j = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
        raise NumericError(
            f"{m}: {int(over.sum())} element(s) exceed the dequantization error bound; worst "
            f"[{r0 + i}, {j}] original {w[i, j]:.6g}, dequantized {dq[i, j]:.6g}, "
            f"|err| {err[i, j]:.4g} > bound {bound[i, j]:.4g} ({err_over_scale[i, j]:.3f} x scale)")
    stats.elements += err.size
    stats.max_err_over_bound = max(stats.max_err_over_bound, float(ratio.max(initial=0.0)))
    stats.max_err_over_scale = max(stats.max_err_over_scale, float(err_over_scale.max(initial=0.0)))


def check_numerics(orig, quant, plan, modules_ok, report):
    """Decodes every quantized module and compares it with the original float weight."""
    per_label = {}
    failed = False
    for m in sorted(modules_ok):
        s = plan[m]
        stats = per_label.setdefault(s.label, Stats())
        w = float_array(orig[f"{m}.weight"])
        if not np.all(np.isfinite(w)):
            report.fail(f"original {m}.weight", "has non-finite values; cannot compare")
            failed = True
            continue
        try:
            if s.layout == "fp8":
                check_fp8_module(m, quant, w, s, stats)
            else:
                check_int_module(m, quant, w, s, stats)
            stats.modules += 1
        except NumericError as e:
            report.fail("numerics", str(e))
            failed = True
    for label, st in sorted(per_label.items()):
        if st.modules:
            clip = f", {st.clipped} clipped code(s)" if st.clipped else ""
            report.ok(f"numerics {label}",
                      f"{st.modules} module(s), {st.elements} weights, max |w-dq|/scale = "
                      f"{st.max_err_over_scale:.4f}, max |w-dq|/bound = {st.max_err_over_bound:.4f} "
                      f"(bound {st.bound_text}){clip}")
    return not failed


# --------------------------------------------------------------------------------------------
# --calibrated: GPTQ and/or SmoothQuant (llm-compressor-algorithms.md §1.5, §1.6, §3.2)
# --------------------------------------------------------------------------------------------
# SmoothQuant's default Llama mappings (§3.3): the norm whose weight is divided by s, and the
# Linears whose input columns are multiplied by s.
SMOOTH_MAPPINGS = (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                   ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")))

# Limits on ||W_ref - dq||_F / ||W_ref||_F per module (rationale and measurements in
# check_calibrated_module).
FROB_LIMITS = {"int4": 1.2, "int8": 0.3, "fp8": 0.3}
# Relative tolerance of a stored scale against the observer recomputed from W_ref: s recovered
# from a bf16-rounded norm (2^-8) and the smoothed weight rounded to bf16 (2^-8) move the
# group's absmax by up to 2^-7; the expected and the stored scale are each rounded to bf16
# (up to 2^-8 each): 2^-6 in the worst case, plus 2^-8 of margin.
SCALE_REL = 2.0 ** -6 + 2.0 ** -8
# A dense (not quantized) balance Linear equals W_orig * diag(s) per element within the same
# two bf16 roundings (2^-8 each), plus 2^-10 of margin; the absolute term covers fp16
# subnormals (step 2^-24).
BALANCE_REL = 2.0 ** -7 + 2.0 ** -10
BALANCE_ABS = 2.0 ** -24
FLOAT_EPS = {"BF16": 2.0 ** -7, "F16": 2.0 ** -10, "F32": 2.0 ** -23}  # torch.finfo(dtype).eps


def smoothable_tensors(n_layers, plan):
    """Tensors SmoothQuant may rewrite: the per-layer norms and the balance Linears that are
    not quantized (quantized ones are replaced by their compressed tensors anyway)."""
    names = set()
    for i in range(n_layers):
        for norm, balance in SMOOTH_MAPPINGS:
            names.add(f"model.layers.{i}.{norm}.weight")
            names.update(f"model.layers.{i}.{b}.weight" for b in balance
                         if f"model.layers.{i}.{b}" not in plan)
    return frozenset(names)


def recover_smoothing(orig, quant, n_layers, report):
    """Recovers s = original_norm / quantized_norm per layer and norm (s = 1 where the norm's
    bytes are unchanged).  s must be finite and > 0 in every channel; a channel whose weight is
    0 in both is undetermined and taken as 1.  Returns ({balance module: s or absent},
    set of balance modules whose s could not be recovered)."""
    smooth, unusable = {}, set()
    changed, total, lo, hi, good = 0, 0, math.inf, 0.0, True
    for i in range(n_layers):
        for norm, balance in SMOOTH_MAPPINGS:
            name = f"model.layers.{i}.{norm}.weight"
            mods = [f"model.layers.{i}.{b}" for b in balance]
            o, qt = orig.get(name), quant.get(name)
            total += 1
            if o is None or qt is None or o.dtype != qt.dtype or o.shape != qt.shape:
                unusable.update(mods)  # reported by the tensor-set check (or not a Llama norm)
                continue
            if same_bytes(o, qt):
                continue
            wo, wq = float_array(o).ravel(), float_array(qt).ravel()
            with np.errstate(divide="ignore", invalid="ignore"):
                s = np.where((wo == 0) & (wq == 0), 1.0, wo / wq)
            bad = ~(np.isfinite(s) & (s > 0))
            k = orig[f"{mods[0]}.weight"].shape[1]
            if bad.any():
                j = int(np.argmax(bad))
                report.fail(f"smoothing {name}", f"s = original/quantized is not finite and > 0 in "
                                                 f"{int(bad.sum())} channel(s), first [{j}]: "
                                                 f"{wo[j]:.6g} / {wq[j]:.6g}")
            elif s.size != k:
                report.fail(f"smoothing {name}", f"{s.size} channels but the balance Linears have K={k}")
            else:
                changed += 1
                lo, hi = min(lo, float(s.min())), max(hi, float(s.max()))
                smooth.update((m, s) for m in mods)
                continue
            unusable.update(mods)
            good = False
    if good:
        rng = f"s in [{lo:.4g}, {hi:.4g}]" if changed else "s = 1 everywhere"
        report.ok("smoothing", f"{changed} of {total} layer norm(s) smoothed (s = original/quantized "
                               f"norm, finite and > 0), {rng}")
    return smooth, unusable


def check_dense_balance(orig, quant, plan, smooth, unusable, n_layers, report):
    """A balance Linear left dense (ignored) holds W_orig * diag(s) (per element within
    BALANCE_REL, stored in the model dtype); with s = 1 it is byte-identical."""
    same, scaled, worst, good = 0, 0, 0.0, True
    for i in range(n_layers):
        for _, balance in SMOOTH_MAPPINGS:
            for b in balance:
                m = f"model.layers.{i}.{b}"
                o, qt = orig.get(f"{m}.weight"), quant.get(f"{m}.weight")
                if m in plan or m in unusable or o is None or qt is None \
                        or o.dtype != qt.dtype or o.shape != qt.shape:
                    continue
                s = smooth.get(m)
                if s is None:
                    if same_bytes(o, qt):
                        same += 1
                    else:
                        report.fail(f"tensor {m}.weight", "bytes differ from the original but its norm "
                                                          "is unchanged (s = 1): it must be copied unchanged")
                        good = False
                    continue
                ref = float_array(o) * s[None, :]
                w = float_array(qt)
                err = np.abs(w - ref)
                with np.errstate(divide="ignore", invalid="ignore"):
                    rel = np.where(err > 0, err / np.abs(ref), 0.0)
                over = err > BALANCE_REL * np.abs(ref) + BALANCE_ABS
                if over.any() or not np.all(np.isfinite(w)):
                    r, c = np.unravel_index(int(np.argmax(np.where(np.isfinite(rel), rel, np.inf))), rel.shape)
                    report.fail(f"tensor {m}.weight",
                                f"{int(over.sum())} element(s) differ from W_orig*diag(s) by more than "
                                f"{BALANCE_REL:.4g} relative; worst [{r}, {c}] = {w[r, c]:.6g}, expected "
                                f"{ref[r, c]:.6g} (s = {s[c]:.6g})")
                    good = False
                    continue
                scaled += 1
                worst = max(worst, float(rel.max(initial=0.0)))
    if good and same + scaled:
        report.ok("dense balance Linears", f"{same} byte-identical (s = 1), {scaled} equal to "
                                           f"W_orig*diag(s): max relative deviation {worst:.3g} "
                                           f"(limit {BALANCE_REL:.4g})")


def round_to_dtype(x, dtype):
    """float64 -> nearest value of BF16 / F16 / F32 (round to nearest even), back as float64."""
    if dtype == "F16":
        return x.astype(np.float16).astype(np.float64)
    f = np.asarray(x, dtype=np.float32)
    if dtype == "F32":
        return f.astype(np.float64)
    u = f.view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32).astype(np.float64)


def observer_qparams(w, wa, layout, rows):
    """The RTN memoryless min-max observer on W_ref rows (det §5, algorithms §2.2), unrounded:
    (scale [rows, groups], min [rows, groups]) for channel/group; one value for tensor.
    Symmetric: absmax / ((qmax - qmin) / 2); asymmetric: (max - min) / (qmax - qmin), with the
    range extended to include 0."""
    if wa.strategy == "tensor":
        lo, hi = np.minimum(w.min(), 0.0).reshape(1, 1), np.maximum(w.max(), 0.0).reshape(1, 1)
    else:
        g = w.shape[1] if wa.strategy == "channel" else wa.group_size
        wg = w.reshape(rows, -1, g)
        lo, hi = np.minimum(wg.min(axis=2), 0.0), np.maximum(wg.max(axis=2), 0.0)
    if layout == "fp8":
        return np.maximum(-lo, hi) / 448.0, lo
    span = float((1 << wa.num_bits) - 1)
    if wa.symmetric:
        return np.maximum(-lo, hi) / (span / 2), lo
    return (hi - lo) / span, lo


@dataclass
class CalStats:
    """Per scheme label, for the --calibrated summary line."""
    modules: int = 0
    smoothed: int = 0
    sum_rel: float = 0.0
    max_rel: float = 0.0
    worst: str = ""
    scales: int = 0
    max_scale_dev: float = 0.0
    exact_scales: int = 0
    max_zp_diff: int = 0
    no_scale_check: int = 0
    limit_key: str = ""


def frob_key(s):
    return "fp8" if s.layout == "fp8" else f"int{s.weights.num_bits}"


def check_calibrated_module(m, q, w_ref, s, stats):
    """Decodes module `m` as the default mode does and compares it with W_ref = W_orig*diag(s).

    Returns a list of problems (empty when the module passes).
      * codes in range, scales finite and > 0, no FP8 NaN code, g_idx in range (as default);
      * scales: the memoryless min-max observer on W_ref per group / channel / tensor, rounded
        to the stored scale dtype (0 -> that dtype's eps), agrees within SCALE_REL; asymmetric
        zero points are within 1 of round(qmin - min/scale) with the stored scale. With actorder
        "group" GPTQ forms the groups over permuted columns: group j is the columns whose g_idx
        is j, and the observer runs over exactly those;
      * ||W_ref - dq||_F / ||W_ref||_F <= FROB_LIMITS[int4 | int8 | fp8].  GPTQ moves weights
        (codes are not the nearest grid point of W_ref), so there is no per-element bound.

    The Frobenius limits only catch gross corruption; the scale check catches subtle errors.
    GPTQ minimises the output error tr((W-Q) H (W-Q)^T), not the weight error: where the input
    is strongly anisotropic it moves the weights of rarely active columns a long way. Measured:
      int4: lowbit-rtn W4A16 0.112, W4A16_ASYM 0.101; the calibrator's GPTQ with actorder group
        on layer 0 of lowbit-gen-model's default model (embedding and norm outliers: diag(H)
        spans 7.6e2 .. 2.8e7) gives 0.97 weight error at half RTN's output error (0.051 vs
        0.107). Garbage is larger: int4 fields packed in reverse order 1.45, transposed codes
        1.54, random in-range codes about 2. Limit 1.2.
      int8 / fp8: lowbit-rtn W8A8 0.0075, W8A16 0.0066, FP8 0.027; calibrator GPTQ W8A8 at most
        0.025; a NumPy SmoothQuant + GPTQ simulation at most 0.054 (int8) and 0.047 (fp8);
        q_proj quantized without its s gives 0.70. Limit 0.3.
      The self-test's fixture (s with outliers x8, 10% of codes moved by +-1) gives int4 0.42
      (asym 0.29), int8 0.033, fp8 0.039.
    A wrong scale by a few percent barely moves the Frobenius error; the scale check catches it.
    """
    n, k = w_ref.shape
    wa = s.weights
    sdtype = q[f"{m}.weight_scale"].dtype
    if s.layout == "fp8":
        codes, scale = decode_fp8_module(m, q, s)
        zp, cols = None, None
    else:
        codes, scale, zp, cols, (qmin, qmax) = decode_int_module(m, q, s, n, k)
    problems = []
    check_scales = True
    perm = None  # actorder "group": columns ordered so that each group is contiguous
    if s.layout != "fp8" and wa.actorder == "group":
        counts = np.bincount(cols, minlength=scale.shape[1])
        if wa.group_size and np.all(counts == wa.group_size):
            perm = np.argsort(cols, kind="stable")
        else:
            problems.append(f"{m}.weight_g_idx: groups are not all of group_size {wa.group_size} columns")
            check_scales = False
    tensor_obs = observer_qparams(w_ref, wa, s.layout, 1) if wa.strategy == "tensor" else None
    err2 = ref2 = 0.0
    worst_dev, worst_at, n_bad, exact, zp_diff = 0.0, None, 0, 0, 0
    step = max(1, (1 << 22) // max(k, 1))
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        w = w_ref[r0:r1]
        sc = scale[r0:r1] if scale.shape[0] > 1 else scale
        if s.layout == "fp8":
            dq = FP8_TABLE[codes[r0:r1]] * sc
        else:
            z = zp[r0:r1] if zp.shape[0] > 1 else zp
            dq = (codes[r0:r1] - z[:, cols]) * sc[:, cols]
        err2 += float(np.sum((w - dq) ** 2))
        ref2 += float(np.sum(w ** 2))
        if not check_scales or (tensor_obs is not None and r0 > 0):
            continue
        w_obs = w if perm is None else w[:, perm]
        exp_raw, lo = tensor_obs if tensor_obs is not None else observer_qparams(w_obs, wa, s.layout, r1 - r0)
        exp = round_to_dtype(exp_raw, sdtype)
        exp = np.where(exp == 0, FLOAT_EPS[sdtype], exp)
        dev = np.abs(sc - exp) / exp
        exact += int(np.sum(sc == exp))
        bad = dev > SCALE_REL
        n_bad += int(bad.sum())
        i = np.unravel_index(int(np.argmax(dev)), dev.shape)
        if dev[i] > worst_dev or worst_at is None:
            worst_dev, worst_at = float(dev[i]), ((r0 + i[0]) if tensor_obs is None else 0, i[1], sc[i], exp[i])
        if s.layout != "fp8" and not wa.symmetric:
            zexp = np.clip(np.rint(qmin - lo / sc), qmin, qmax)
            zp_diff = max(zp_diff, int(np.abs(z - zexp).max(initial=0)))
    rel = math.sqrt(err2 / ref2) if ref2 > 0 else (0.0 if err2 == 0 else math.inf)
    key = frob_key(s)
    if not rel <= FROB_LIMITS[key]:
        problems.append(f"{m}: relative Frobenius error ||W_ref - dq|| / ||W_ref|| = {rel:.4f} exceeds "
                        f"the {key} limit {FROB_LIMITS[key]} (W_ref = W_orig*diag(s))")
    if n_bad:
        r, g, got, want = worst_at
        problems.append(f"{m}.weight_scale: {n_bad} scale(s) differ from the min-max observer on "
                        f"W_ref by more than {SCALE_REL:.4g} relative; worst [{r}, {g}] = {got:.6g}, "
                        f"expected {want:.6g} (deviation {worst_dev:.4g})")
    if zp_diff > 1:
        problems.append(f"{m}.weight_zero_point: differs by {zp_diff} from round(qmin - min/scale) "
                        f"on W_ref (allowed 1)")
    if not problems:
        stats.modules += 1
        stats.sum_rel += rel
        stats.limit_key = key
        if rel >= stats.max_rel:
            stats.max_rel, stats.worst = rel, m
        if check_scales:
            stats.scales += scale.size
            stats.exact_scales += exact
            stats.max_scale_dev = max(stats.max_scale_dev, worst_dev)
            stats.max_zp_diff = max(stats.max_zp_diff, zp_diff)
        else:
            stats.no_scale_check += 1
    return problems


def check_numerics_calibrated(orig, quant, plan, modules_ok, smooth, report):
    """--calibrated numerics: every quantized module against W_ref = W_orig*diag(s)."""
    per_label, failed = {}, False
    for m in sorted(modules_ok):
        s = plan[m]
        stats = per_label.setdefault(s.label, CalStats())
        w = float_array(orig[f"{m}.weight"])
        if not np.all(np.isfinite(w)):
            report.fail(f"original {m}.weight", "has non-finite values; cannot compare")
            failed = True
            continue
        sv = smooth.get(m)
        if sv is not None:
            w = w * sv[None, :]
            stats.smoothed += 1
        try:
            problems = check_calibrated_module(m, quant, w, s, stats)
        except NumericError as e:
            problems = [str(e)]
        for p in problems:
            report.fail("numerics (calibrated)", p)
            failed = True
    for label, st in sorted(per_label.items()):
        if not st.modules:
            continue
        scales = (f"{st.scales} scale(s) match the min-max observer on W_ref: max relative deviation "
                  f"{st.max_scale_dev:.3g} (tolerance {SCALE_REL:.4g}), {st.exact_scales} exact"
                  if st.scales else "no scale checked")
        if st.max_zp_diff:
            scales += f", zero points within {st.max_zp_diff}"
        if st.no_scale_check:
            scales += f"; {st.no_scale_check} module(s) whose scales could not be checked"
        report.ok(f"numerics (calibrated) {label}",
                  f"{st.modules} module(s) ({st.smoothed} smoothed), relative Frobenius error max "
                  f"{st.max_rel:.4f} ({st.worst}), mean {st.sum_rel / st.modules:.4f}, limit "
                  f"{FROB_LIMITS[st.limit_key]} ({st.limit_key}); {scales}")
    return not failed


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------
def run(original, quantized, expect, report, calibrated=False):
    """All stages; returns nothing, failures live in `report`."""
    for label, d in (("original", original), ("quantized", quantized)):
        if not os.path.isdir(d):
            report.fail(f"{label} directory", f"{d} is not a directory")
            return
    orig_cfg = load_json(os.path.join(original, "config.json"), report, "original config.json")
    q_cfg = load_json(os.path.join(quantized, "config.json"), report, "quantized config.json")
    orig = load_checkpoint(original, report, "original", check_total_size=False)
    if orig_cfg is None or orig is None:
        report.note("remaining checks skipped: the original model could not be read")
        return
    info = inspect_original(orig_cfg, orig, report)
    quant = load_checkpoint(quantized, report, "quantized", check_total_size=True)
    if info is None or q_cfg is None:
        report.note("config, tensor and numeric checks skipped: fix the failures above first")
        return
    modules, model_dtype = info
    check_config_rest(orig_cfg, q_cfg, report)
    result = check_quant_config(q_cfg.get("quantization_config"), modules, expect, report)
    if result is None or quant is None:
        report.note("tensor and numeric checks skipped: fix the failures above first")
        return
    plan, kv = result
    n_layers = orig_cfg["num_hidden_layers"]
    skip = smoothable_tensors(n_layers, plan) if calibrated else frozenset()
    modules_ok = check_tensor_set(orig, quant, plan, model_dtype, n_layers if kv else 0, report, skip)
    if kv:
        check_kv_scales(quant, n_layers, report)
    if not calibrated:
        check_numerics(orig, quant, plan, modules_ok, report)
        return
    smooth, unusable = recover_smoothing(orig, quant, n_layers, report)
    check_dense_balance(orig, quant, plan, smooth, unusable, n_layers, report)
    check_numerics_calibrated(orig, quant, plan, modules_ok - unusable, smooth, report)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Check a compressed-tensors checkpoint against its float original.")
    ap.add_argument("--original", required=True, help="Hugging Face Llama directory (float)")
    ap.add_argument("--quantized", required=True, help="compressed-tensors checkpoint directory")
    ap.add_argument("--expect-scheme", choices=sorted(PRESETS), help="assert the config matches this preset")
    ap.add_argument("--calibrated", action="store_true",
                    help="GPTQ and/or SmoothQuant may have been applied: recover the smoothing from "
                         "the norms, check scales against the observer and a relative Frobenius "
                         "error limit instead of the per-element bound (see the module docstring)")
    args = ap.parse_args(argv)
    report = Report()
    try:
        run(args.original, args.quantized, args.expect_scheme, report, args.calibrated)
    except Exception as e:  # never a traceback on a malformed checkpoint
        if os.environ.get("CHECK_CHECKPOINT_DEBUG"):
            raise
        report.fail("checker", f"malformed input stopped the check: {type(e).__name__}: {e}")
    return report.summary()


if __name__ == "__main__":
    sys.exit(main())
