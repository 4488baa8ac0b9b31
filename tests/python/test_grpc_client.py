#!/usr/bin/python3
"""An independent client of both services: Debian's python3-grpcio with stubs that protoc
generates here from proto/, NumPy for the arithmetic, its own CRC-32C and safetensors reader.
No code is shared with the C++ side. It runs calibrate -> fetch -> load -> gemm and checks:

  * the upload's CRC-32C is what the server accepts (and a wrong one is refused);
  * WatchJob streams layer progress and ends in SUCCEEDED;
  * FetchResult's chunks reassemble (CRC-32C checked here) to exactly the safetensors tensors
    of the checkpoint on disk, and its file pieces to the checkpoint's other files;
  * Gemm on a W8A8 layer equals NumPy's dynamic per-token int8 x per-channel int8 GEMM
    (vLLM's arithmetic) computed from the checkpoint's tensors;
  * Gemm on a W4A16 layer equals NumPy's x . dequant(int4)^T within bf16 output rounding;
  * a wrong K is INVALID_ARGUMENT and a missing token is UNAUTHENTICATED.

usage: test_grpc_client.py --bin BUILD_DIR --proto PROTO_DIR --work DIR
"""
import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np

TOKEN = "py-client-token"


def crc32c(data, crc=0):
    table = crc32c.table
    if table is None:
        table = []
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            table.append(c)
        crc32c.table = table
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


crc32c.table = None


def read_safetensors_dir(d):
    out = {}
    for f in sorted(os.listdir(d)):
        if not f.endswith(".safetensors"):
            continue
        raw = open(os.path.join(d, f), "rb").read()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        for name, e in header.items():
            if name == "__metadata__":
                continue
            b, end = e["data_offsets"]
            out[name] = (e["dtype"], tuple(e["shape"]), raw[8 + n + b:8 + n + end])
    return out


def bf16_to_f32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x):
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u >> 16) & 1) + 0x7FFF
    return ((u + r) >> 16).astype(np.uint16)


def scale_array(entry):
    dtype, shape, raw = entry
    if dtype == "BF16":
        return bf16_to_f32(np.frombuffer(raw, np.uint16)).reshape(shape)
    if dtype == "F16":
        return np.frombuffer(raw, np.float16).astype(np.float32).reshape(shape)
    assert dtype == "F32", dtype
    return np.frombuffer(raw, np.float32).reshape(shape)


class Server:
    def __init__(self, argv, log):
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log)
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError("%s exited before listening; see %s" % (argv[0], log))
            if " listening on " in line:
                self.address = line.strip().split(" listening on ")[1]
                return
        raise RuntimeError("no listening line from %s" % argv[0])

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--proto", required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    work = a.work
    shutil.rmtree(work, ignore_errors=True)
    gen = os.path.join(work, "gen")
    os.makedirs(gen)
    protos = ["lowbit/v1/tensor.proto", "lowbit/v1/calibrator.proto", "lowbit/v1/runtime.proto"]
    subprocess.check_call(["protoc", "-I", a.proto, "--python_out=" + gen, "--grpc_python_out=" + gen,
                           "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin"] + protos)
    sys.path.insert(0, gen)
    import grpc
    from lowbit.v1 import calibrator_pb2 as cpb, calibrator_pb2_grpc as cgrpc
    from lowbit.v1 import runtime_pb2 as rpb, runtime_pb2_grpc as rgrpc
    from lowbit.v1 import tensor_pb2 as tpb

    models, outputs = os.path.join(work, "models"), os.path.join(work, "outputs")
    os.makedirs(outputs)
    subprocess.check_call([os.path.join(a.bin, "tools/lowbit-gen-model"), "--out", os.path.join(models, "tiny"),
                           "--hidden=128", "--intermediate=256", "--heads=4", "--kv_heads=2", "--layers=2"],
                          stdout=subprocess.DEVNULL)
    tokens = os.path.join(work, "tokens.jsonl")
    subprocess.check_call([os.path.join(a.bin, "tools/lowbit-gen-tokens"), "--out", tokens, "--samples=24",
                           "--max_len=32"], stdout=subprocess.DEVNULL)

    cal = Server([os.path.join(a.bin, "calibrator/lowbit-calibrator"), "serve", "--address=127.0.0.1:0",
                  "--state_dir=" + os.path.join(work, "state"), "--model_root=" + models,
                  "--output_root=" + outputs, "--auth_token=" + TOKEN], os.path.join(work, "calibrator.log"))
    rt = Server([os.path.join(a.bin, "runtime/lowbit-runtime"), "serve", "--address=127.0.0.1:0",
                 "--model_root=" + outputs, "--backend=cpu", "--auth_token=" + TOKEN],
                os.path.join(work, "runtime.log"))
    md = [("authorization", "Bearer " + TOKEN)]
    cchannel = grpc.insecure_channel(cal.address)
    rchannel = grpc.insecure_channel(rt.address)
    try:
        cstub = cgrpc.CalibratorServiceStub(cchannel)
        rstub = rgrpc.RuntimeServiceStub(rchannel)

        # Upload: a wrong checksum is refused, the right one accepted.
        data = open(tokens, "rb").read()

        def upload(name, crc):
            yield cpb.UploadDatasetRequest(name=name, format="jsonl", data=data[:1000])
            yield cpb.UploadDatasetRequest(data=data[1000:], last=True, crc32c=crc)

        good = crc32c(data)
        try:
            cstub.UploadDataset(upload("bad", good ^ 1), metadata=md, timeout=30)
            raise AssertionError("a wrong CRC-32C was accepted")
        except grpc.RpcError as e:
            assert e.code() in (grpc.StatusCode.DATA_LOSS, grpc.StatusCode.INVALID_ARGUMENT), e
        r = cstub.UploadDataset(upload("toks", good), metadata=md, timeout=30)
        assert r.sequences == 24, r
        # Only the good upload is listed, with exactly the bytes sent.
        ups = cstub.ListUploads(cpb.ListUploadsRequest(), metadata=md, timeout=30).uploads
        assert [(u.kind, u.name, u.bytes) for u in ups] == [(cpb.UPLOAD_KIND_DATASET, "toks", len(data))], ups

        def calibrate(scheme, algorithm):
            spec = cpb.JobSpec(model="tiny", scheme=scheme, algorithm=algorithm, dataset="toks",
                               heldout_fraction=0.25, output_name=scheme.lower())
            job = cstub.CreateJob(cpb.CreateJobRequest(spec=spec), metadata=md, timeout=30).job
            layers_seen = set()
            last = None
            for ev in cstub.WatchJob(cpb.WatchJobRequest(id=job.id), metadata=md, timeout=300):
                last = ev.job
                if last.progress.num_layers:
                    layers_seen.add(last.progress.layer)
            assert last.state == cpb.JOB_STATE_SUCCEEDED, (last.state, last.error_message)
            assert {0, 1} <= layers_seen, layers_seen
            return last

        job = calibrate("W8A8", "gptq")
        ckpt_dir = os.path.join(outputs, job.output_path or "w8a8")
        on_disk = read_safetensors_dir(ckpt_dir)

        # FetchResult reassembled here, CRC-32C checked here, equal to the files.
        # The checkpoint's other files (generation_config.json, ...) come as `file` pieces
        # between the header and the tensors.
        header, got, cur, files = None, {}, None, {}
        for msg in cstub.FetchResult(cpb.FetchResultRequest(id=job.id, chunk_bytes=4096), metadata=md, timeout=60):
            if msg.HasField("header"):
                header = msg.header
                continue
            if msg.HasField("file"):
                f = msg.file
                assert not got and cur is None, "a file piece after a tensor chunk"
                buf = files.setdefault(f.name, bytearray())
                assert f.offset == len(buf), (f.name, f.offset)
                buf += f.data
                if f.last:
                    assert crc32c(bytes(buf)) == f.crc32c, f.name
                continue
            c = msg.chunk
            if cur is None or cur["name"] != c.name:
                assert c.offset == 0, c.name
                cur = {"name": c.name, "dtype": c.dtype, "shape": tuple(c.shape), "buf": bytearray()}
            assert c.offset == len(cur["buf"]), (c.name, c.offset)
            cur["buf"] += c.data
            if c.last:
                assert crc32c(bytes(cur["buf"])) == c.crc32c, c.name
                got[c.name] = cur
                cur = None
        assert header is not None and header.tensors == len(on_disk) == len(got), (len(got), len(on_disk))
        assert json.loads(header.config_json)["quantization_config"]["format"] == "int-quantized"
        for name, (dtype, shape, raw) in on_disk.items():
            assert got[name]["shape"] == shape and bytes(got[name]["buf"]) == raw, name
        others = sorted(n for n in os.listdir(ckpt_dir) if not n.endswith(".safetensors") and
                        n not in ("config.json", "report.json", "recipe.yaml", "model.safetensors.index.json"))
        assert "generation_config.json" in others, others
        assert [f.name for f in header.files] == others == sorted(files), (list(header.files), others, sorted(files))
        for f in header.files:
            with open(os.path.join(ckpt_dir, f.name), "rb") as fh:
                assert bytes(files[f.name]) == fh.read() and f.size == len(files[f.name]), f.name

        # Runtime: load and run a W8A8 layer, check against NumPy.
        loaded = rstub.LoadModel(rpb.LoadModelRequest(name="w8a8", path=job.output_path or "w8a8"),
                                 metadata=md, timeout=60).model
        names = {l.name for l in loaded.layers}
        layer = "model.layers.1.mlp.down_proj"
        assert layer in names and len(names) == 14, sorted(names)
        wq = np.frombuffer(on_disk[layer + ".weight"][2], np.int8).reshape(on_disk[layer + ".weight"][1])
        ws = scale_array(on_disk[layer + ".weight_scale"]).reshape(-1).astype(np.float32)
        n, k = wq.shape
        rng = np.random.default_rng(5)
        x = (rng.standard_normal((7, k)) * np.linspace(0.1, 3, k)).astype(np.float32)
        x[3] = 0  # an all-zero row
        req = rpb.GemmRequest(model="w8a8", layer=layer, out_dtype=tpb.DTYPE_F32,
                              x=tpb.Tensor(dtype=tpb.DTYPE_F32, shape=[7, k], data=x.tobytes()))
        y = np.frombuffer(rstub.Gemm(req, metadata=md, timeout=30).y.data, np.float32).reshape(7, n)
        absmax = np.abs(x).max(axis=1)
        xs = np.where(absmax > 0, absmax / np.float32(127), np.float32(1)).astype(np.float32)
        xq = np.clip(np.rint(x / xs[:, None]), -128, 127).astype(np.int64)
        acc = xq @ wq.astype(np.int64).T
        ref = (acc.astype(np.float32) * ws[None, :]) * xs[:, None]
        step = xs[:, None] * ws[None, :] * np.abs(wq).max(axis=1)[None, :]
        err = np.abs(y - ref)
        assert np.all(err <= 1e-5 * np.abs(ref) + step), err.max()
        exact = np.mean(err <= 1e-6 * np.abs(ref) + 1e-30)
        assert exact >= 0.99, exact
        assert np.all(y[3] == 0)

        # W4A16 (round-to-nearest job) in bf16.
        job4 = calibrate("W4A16", "rtn")
        d4 = read_safetensors_dir(os.path.join(outputs, job4.output_path or "w4a16"))
        rstub.LoadModel(rpb.LoadModelRequest(name="w4", path=job4.output_path or "w4a16"), metadata=md, timeout=60)
        layer = "model.layers.0.self_attn.o_proj"
        packed = np.frombuffer(d4[layer + ".weight_packed"][2], np.int32).reshape(d4[layer + ".weight_packed"][1])
        scale = scale_array(d4[layer + ".weight_scale"])
        n = packed.shape[0]
        k = int(np.frombuffer(d4[layer + ".weight_shape"][2], np.int64)[1]) if d4[layer + ".weight_shape"][0] == "I64" \
            else int(np.frombuffer(d4[layer + ".weight_shape"][2], np.int32)[1])
        u = packed.view(np.uint32)
        codes = np.stack([(u >> (4 * i)) & 0xF for i in range(8)], axis=2).reshape(n, -1)[:, :k].astype(np.int64) - 8
        group = k // scale.shape[1]
        w = bf16_to_f32(f32_to_bf16_bits(codes * np.repeat(scale, group, axis=1)))
        xb = f32_to_bf16_bits(rng.standard_normal((5, k)).astype(np.float32))
        req = rpb.GemmRequest(model="w4", layer=layer, out_dtype=tpb.DTYPE_BF16,
                              x=tpb.Tensor(dtype=tpb.DTYPE_BF16, shape=[5, k], data=xb.tobytes()))
        y = bf16_to_f32(np.frombuffer(rstub.Gemm(req, metadata=md, timeout=30).y.data, np.uint16)).reshape(5, n)
        ref = bf16_to_f32(xb).astype(np.float64) @ w.astype(np.float64).T
        assert np.all(np.abs(y - ref) <= 2 ** -8 * np.abs(ref) + 1e-4 * np.abs(ref).max()), np.abs(y - ref).max()

        # DeleteJob: the W4A16 checkpoint and the job's record go (the runtime keeps its loaded copy).
        d4_dir = os.path.join(outputs, job4.output_path or "w4a16")
        ckpt_bytes = sum(os.path.getsize(os.path.join(d4_dir, f)) for f in os.listdir(d4_dir))
        deleted = cstub.DeleteJob(cpb.DeleteJobRequest(id=job4.id), metadata=md, timeout=30)
        assert deleted.job.id == job4.id and deleted.job.state == cpb.JOB_STATE_SUCCEEDED, deleted.job
        assert 0 < deleted.freed_bytes - ckpt_bytes < 65536, (deleted.freed_bytes, ckpt_bytes)  # + the record
        assert not os.path.exists(d4_dir), os.listdir(outputs)
        try:
            cstub.GetJob(cpb.GetJobRequest(id=job4.id), metadata=md, timeout=30)
            raise AssertionError("a deleted job was found")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e
        y2 = bf16_to_f32(np.frombuffer(rstub.Gemm(req, metadata=md, timeout=30).y.data, np.uint16)).reshape(5, n)
        assert np.array_equal(y, y2)

        # Errors: a wrong K, and no token.
        try:
            bad = rpb.GemmRequest(model="w4", layer=layer, x=tpb.Tensor(dtype=tpb.DTYPE_BF16, shape=[1, k + 8],
                                                                        data=bytes(2 * (k + 8))))
            rstub.Gemm(bad, metadata=md, timeout=30)
            raise AssertionError("a wrong K was accepted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        try:
            rstub.ListModels(rpb.ListModelsRequest(), timeout=30)
            raise AssertionError("a call without a token was accepted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
    finally:
        # Close the connections first: a graceful shutdown waits out its grace period for
        # clients that stay connected.
        cchannel.close()
        rchannel.close()
        codes_ = (cal.stop(), rt.stop())
    assert codes_ == (0, 0), codes_
    shutil.rmtree(work, ignore_errors=True)
    print("python grpc client: all checks passed")


if __name__ == "__main__":
    main()
