#!/usr/bin/python3
"""A stock Triton client (PyPI tritonclient, its own generated KServe v2 stubs) against
lowbit-runtime's inference.GRPCInferenceService. Nothing of Lowbit's code or protos is used on
this side: the checkpoints are read with the safetensors reader of test_grpc_client.py and the
expected results computed with NumPy. It checks:

  * ServerLive / ServerReady without a token; ServerMetadata with one, UNAUTHENTICATED without;
  * our proto/inference/predict_v2.proto has exactly tritonclient's names, numbers and types for
    every message and RPC it declares (the wire format);
  * ModelReady for a layer, not for a whole model, an unknown layer or version;
  * ModelMetadata of a layer: input x [-1, K], output y [-1, N], the model's dtype; ModelConfig:
    max_batch_size 16384 (the rows), x dims [K], y dims [N];
  * ModelInfer on a W8A8 layer (FP32 in and out) equals NumPy's dynamic per-token int8 x
    per-channel int8 GEMM from the checkpoint's tensors, an all-zero row gives zeros;
  * a [2, 3, K] FP16 input gives a [2, 3, N] FP16 output (leading dims kept) that equals the
    same rows sent as [6, K] bit for bit, and NumPy within FP16 rounding;
  * W4A16 with BF16 in and out (and FP32 in and out) equals NumPy's x . dequant(int4)^T within
    bf16 rounding; the out_dtype parameter "BF16" gives the FP32 result rounded to BF16;
  * 16 concurrent infers (async_infer) each equal the same request sent alone, bit for bit
    (the batcher joins them and splits them back), and so do 16 on one ModelStreamInfer stream
    (start_stream / async_stream_infer), a failing one among them reported to its callback;
  * Triton's own load generator, perf_analyzer (the wheel's bin/), runs 4 concurrent clients with
    batch 2 (the batch dim it learns from ModelConfig) on a layer with the token and finishes with
    its throughput; without the token it stops with the
    server's message;
  * ModelStatistics: perf_analyzer prints the server's side of its run from it, and the layer's
    counts grew by exactly its requests (2 rows each);
  * the model repository: the index lists the loaded model's layers READY and the checkpoint
    directory not loaded under its own name UNAVAILABLE; load_model("w4a16") makes its layers
    answer what the same checkpoint loaded as "w4" answers, bit for bit; unload_model undoes it;
  * errors: unknown model / layer / version NOT_FOUND, wrong K, wrong input name and INT8 data
    INVALID_ARGUMENT, a load with a config override INVALID_ARGUMENT, the shared-memory calls
    UNIMPLEMENTED; a good request is answered after them.

usage: test_triton_client.py --bin BUILD_DIR --pytools REPO/.pytools --proto REPO/proto --work DIR
"""
import argparse
import os
import shutil
import subprocess
import sys
import threading

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_grpc_client import Server, bf16_to_f32, f32_to_bf16_bits, read_safetensors_dir, scale_array  # noqa: E402

TOKEN = "triton-client-token"


def check_wire_format(proto_dir, work):
    """Our proto's messages and RPCs against tritonclient's own descriptors, field by field."""
    from google.protobuf import descriptor_pb2
    from tritonclient.grpc import model_config_pb2, service_pb2
    out = os.path.join(work, "predict_v2.pb")
    subprocess.check_call(["protoc", "-I", proto_dir, "--descriptor_set_out=" + out, "inference/predict_v2.proto"])
    ours = descriptor_pb2.FileDescriptorSet.FromString(open(out, "rb").read()).file[0]
    theirs = descriptor_pb2.FileDescriptorProto()
    service_pb2.DESCRIPTOR.CopyToProto(theirs)
    assert ours.package == theirs.package == "inference", (ours.package, theirs.package)

    def fields(m):
        return sorted((f.name, f.number, f.type, f.label, f.type_name) for f in m.field)

    def flatten(msgs, prefix):
        for m in msgs:
            yield prefix + m.name, m
            yield from flatten(m.nested_type, prefix + m.name + ".")

    # Triton's model configuration lives in its model_config.proto (same package); ours holds a
    # subset of those messages' fields and of its DataType values, each as Triton numbers it.
    config = descriptor_pb2.FileDescriptorProto()
    model_config_pb2.DESCRIPTOR.CopyToProto(config)
    subset = {m.name: m for m in config.message_type
              if m.name in ("ModelConfig", "ModelInput", "ModelOutput", "ModelDynamicBatching")}
    their_msgs = dict(flatten(theirs.message_type, ""))
    checked = 0
    for name, m in flatten(ours.message_type, ""):
        if name in subset:
            assert set(fields(m)) <= set(fields(subset[name])), (name, set(fields(m)) - set(fields(subset[name])))
        else:
            assert name in their_msgs, name
            assert fields(m) == fields(their_msgs[name]), (name, fields(m), fields(their_msgs[name]))
            assert [o.name for o in m.oneof_decl] == [o.name for o in their_msgs[name].oneof_decl], name
        checked += 1
    their_enum = {v.name: v.number for e in config.enum_type if e.name == "DataType" for v in e.value}
    for e in ours.enum_type:
        assert e.name == "DataType" and all(their_enum.get(v.name) == v.number for v in e.value), e
    their_rpcs = {r.name: r for r in theirs.service[0].method}
    assert ours.service[0].name == theirs.service[0].name == "GRPCInferenceService"
    for r in ours.service[0].method:
        t = their_rpcs[r.name]
        assert (r.input_type, r.output_type, r.client_streaming, r.server_streaming) == \
            (t.input_type, t.output_type, t.client_streaming, t.server_streaming), r.name
    print("wire format: %d messages and %d RPCs as tritonclient has them" % (checked, len(ours.service[0].method)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--pytools", required=True)
    ap.add_argument("--proto", required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    sys.path.insert(0, a.pytools)
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    work = a.work
    shutil.rmtree(work, ignore_errors=True)
    root = os.path.join(work, "root")
    os.makedirs(root)
    check_wire_format(a.proto, work)
    model = os.path.join(work, "float")
    subprocess.check_call([os.path.join(a.bin, "tools/lowbit-gen-model"), "--out", model, "--hidden=128",
                           "--intermediate=256", "--heads=4", "--kv_heads=2", "--layers=2"], stdout=subprocess.DEVNULL)
    for scheme, name in (("W8A8", "w8a8"), ("W4A16", "w4a16")):
        subprocess.check_call([os.path.join(a.bin, "tools/lowbit-rtn"), "--model", model, "--out",
                               os.path.join(root, name), "--scheme", scheme], stdout=subprocess.DEVNULL)
    rt = Server([os.path.join(a.bin, "runtime/lowbit-runtime"), "serve", "--address=127.0.0.1:0",
                 "--model_root=" + root, "--backend=cpu", "--auth_token=" + TOKEN, "--load=w8a8=w8a8,w4=w4a16"],
                os.path.join(work, "runtime.log"))
    hdr = {"authorization": "Bearer " + TOKEN}
    client = None

    def refused(code, call):
        try:
            call()
        except InferenceServerException as e:
            assert e.status() == "StatusCode." + code, (code, e.status(), e.message())
            return e.message()
        raise AssertionError("expected %s" % code)

    try:
        client = tc.InferenceServerClient(url=rt.address)
        assert client.is_server_live() and client.is_server_ready()
        meta = client.get_server_metadata(headers=hdr)
        assert meta.name == "lowbit-runtime" and meta.version, meta
        assert {"statistics", "model_repository", "model_configuration"} <= set(meta.extensions), meta
        refused("UNAUTHENTICATED", lambda: client.get_server_metadata())

        down = "model.layers.1.mlp.down_proj"
        assert not client.is_model_ready("w8a8", headers=hdr)  # a whole model is not a KServe model
        assert client.is_model_ready("w8a8/" + down, headers=hdr)
        assert client.is_model_ready("w8a8/" + down, model_version="1", headers=hdr)
        assert not client.is_model_ready("w8a8/" + down, model_version="2", headers=hdr)
        assert not client.is_model_ready("w8a8/model.layers.9.mlp.down_proj", headers=hdr)
        assert not client.is_model_ready("nope", headers=hdr)

        ck = read_safetensors_dir(os.path.join(root, "w8a8"))
        wq = np.frombuffer(ck[down + ".weight"][2], np.int8).reshape(ck[down + ".weight"][1])
        ws = scale_array(ck[down + ".weight_scale"]).reshape(-1).astype(np.float32)
        n, k = wq.shape
        md = client.get_model_metadata("w8a8/" + down, headers=hdr)
        assert md.name == "w8a8/" + down and list(md.versions) == ["1"] and md.platform == "lowbit:W8A8", md
        assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == [("x", "BF16", [-1, k])], md.inputs
        assert [(t.name, t.datatype, list(t.shape)) for t in md.outputs] == [("y", "BF16", [-1, n])], md.outputs

        # Triton's ModelConfig: the rows are the batch dim.
        conf = client.get_model_config("w8a8/" + down, headers=hdr).config
        assert conf.max_batch_size == 16384 and conf.backend == "lowbit", conf
        assert conf.HasField("dynamic_batching") and conf.dynamic_batching.max_queue_delay_microseconds == 0, conf
        assert [(t.name, t.data_type, list(t.dims)) for t in conf.input] == [("x", 14, [k])], conf.input  # TYPE_BF16
        assert [(t.name, t.data_type, list(t.dims)) for t in conf.output] == [("y", 14, [n])], conf.output

        def infer(name, x, datatype, **kw):
            inp = tc.InferInput("x", list(x.shape), datatype)
            inp.set_data_from_numpy(x)
            return client.infer(name, [inp], outputs=[tc.InferRequestedOutput("y")], headers=hdr, **kw)

        def layer_stats(name):
            st = client.get_inference_statistics(name, headers=hdr, as_json=True)["model_stats"]
            assert [(m["name"], m["version"]) for m in st] == [(name, "1")], st
            return st[0]

        def w8a8_ref(x):
            absmax = np.abs(x).max(axis=1)
            xs = np.where(absmax > 0, absmax / np.float32(127), np.float32(1)).astype(np.float32)
            xq = np.clip(np.rint(x / xs[:, None]), -128, 127).astype(np.int64)
            ref = ((xq @ wq.astype(np.int64).T).astype(np.float32) * ws[None, :]) * xs[:, None]
            step = xs[:, None] * ws[None, :] * np.abs(wq).max(axis=1)[None, :]
            return ref, step

        rng = np.random.default_rng(11)
        x = (rng.standard_normal((7, k)) * np.linspace(0.1, 3, k)).astype(np.float32)
        x[3] = 0
        r = infer("w8a8/" + down, x, "FP32", request_id="req-1")
        y = r.as_numpy("y")
        resp = r.get_response()
        assert resp.id == "req-1" and resp.model_version == "1", resp
        assert y.dtype == np.float32 and y.shape == (7, n), (y.dtype, y.shape)
        assert resp.parameters["batch_requests"].int64_param >= 1 and resp.parameters["kernel_us"].double_param > 0
        ref, step = w8a8_ref(x)
        err = np.abs(y - ref)
        assert np.all(err <= 1e-5 * np.abs(ref) + step), err.max()
        assert np.mean(err <= 1e-6 * np.abs(ref) + 1e-30) >= 0.99
        assert np.all(y[3] == 0)

        # Leading dims: [2, 3, K] FP16 -> [2, 3, N] FP16, the same as the rows sent flat.
        x16 = rng.standard_normal((2, 3, k)).astype(np.float16)
        y3 = infer("w8a8/" + down, x16, "FP16").as_numpy("y")
        assert y3.dtype == np.float16 and y3.shape == (2, 3, n), (y3.dtype, y3.shape)
        yflat = infer("w8a8/" + down, x16.reshape(6, k), "FP16").as_numpy("y")
        assert np.array_equal(y3.reshape(6, n).view(np.uint16), yflat.view(np.uint16))
        ref, step = w8a8_ref(x16.reshape(6, k).astype(np.float32))
        assert np.all(np.abs(yflat.astype(np.float32) - ref) <= 2 ** -11 * np.abs(ref) + step + 1e-6)

        # W4A16 in BF16 (tritonclient sends float32 arrays as BF16 by truncation: the values are
        # bf16-exact, so nothing is lost), then the out_dtype parameter.
        d4 = read_safetensors_dir(os.path.join(root, "w4a16"))
        o = "model.layers.0.self_attn.o_proj"
        packed = np.frombuffer(d4[o + ".weight_packed"][2], np.int32).reshape(d4[o + ".weight_packed"][1])
        scale = scale_array(d4[o + ".weight_scale"])
        n4 = packed.shape[0]
        u = packed.view(np.uint32)
        codes = np.stack([(u >> (4 * i)) & 0xF for i in range(8)], axis=2).reshape(n4, -1).astype(np.int64) - 8
        k4 = codes.shape[1]
        w = bf16_to_f32(f32_to_bf16_bits(codes * np.repeat(scale, k4 // scale.shape[1], axis=1)))
        xb = bf16_to_f32(f32_to_bf16_bits(rng.standard_normal((5, k4)).astype(np.float32)))
        ref = xb.astype(np.float64) @ w.astype(np.float64).T
        tol = 2 ** -8 * np.abs(ref) + 1e-4 * np.abs(ref).max()
        yb = infer("w4/" + o, xb, "BF16").as_numpy("y")
        assert yb.shape == (5, n4) and np.all(np.abs(yb - ref) <= tol), np.abs(yb - ref).max()
        # FP32 activations: computed in the model's dtype (BF16), answered in FP32.
        r = infer("w4/" + o, xb, "FP32")
        assert r.get_output("y").datatype == "FP32" and r.as_numpy("y").dtype == np.float32
        assert np.all(np.abs(r.as_numpy("y") - ref) <= tol)
        # The out_dtype parameter: the W8A8 result above, rounded to BF16.
        r = infer("w8a8/" + down, x, "FP32", parameters={"out_dtype": "BF16"})
        assert r.get_output("y").datatype == "BF16"
        assert np.array_equal(r.as_numpy("y"), bf16_to_f32(f32_to_bf16_bits(y)))

        # Concurrent requests: each answer equals the request sent alone.
        xs = [rng.standard_normal((1 + i % 3, k)).astype(np.float32) for i in range(16)]
        alone = [infer("w8a8/" + down, xi, "FP32").as_numpy("y") for xi in xs]
        results, done = [None] * len(xs), threading.Semaphore(0)

        def callback(i):
            def cb(result, error):
                results[i] = error if error is not None else result
                done.release()
            return cb

        for i, xi in enumerate(xs):
            inp = tc.InferInput("x", list(xi.shape), "FP32")
            inp.set_data_from_numpy(xi)
            client.async_infer("w8a8/" + down, [inp], callback(i), headers=hdr)
        for _ in xs:
            assert done.acquire(timeout=60)
        batched = 0
        for i, res in enumerate(results):
            assert not isinstance(res, Exception), res
            assert np.array_equal(res.as_numpy("y"), alone[i]), i
            batched = max(batched, res.get_response().parameters["batch_requests"].int64_param)
        print("16 concurrent infers: largest batch %d requests" % batched)

        # The same 16 on one ModelStreamInfer stream, with a failing request among them.
        stream_results, stream_done = {}, threading.Semaphore(0)

        def on_stream(result, error):
            if error is not None:
                stream_results["error"] = error
            else:
                stream_results[result.get_response().id] = result
            stream_done.release()

        client.start_stream(on_stream, headers=hdr)
        for i, xi in enumerate(xs):
            inp = tc.InferInput("x", list(xi.shape), "FP32")
            inp.set_data_from_numpy(xi)
            client.async_stream_infer("w8a8/" + down, [inp], request_id="s%d" % i)
        inp = tc.InferInput("x", [1, k], "FP32")
        inp.set_data_from_numpy(xs[0][:1])
        client.async_stream_infer("w8a8/model.layers.9.mlp.down_proj", [inp], request_id="bad")
        for _ in range(len(xs) + 1):
            assert stream_done.acquire(timeout=60)
        client.stop_stream()
        assert "NOT_FOUND" in str(stream_results.pop("error")), stream_results
        assert sorted(stream_results) == sorted("s%d" % i for i in range(len(xs))), sorted(stream_results)
        for i in range(len(xs)):
            assert np.array_equal(stream_results["s%d" % i].as_numpy("y"), alone[i]), i

        # perf_analyzer: Triton's load generator (random BF16 data from ModelMetadata) on our server.
        env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(a.pytools, "nvidia", "cuda_runtime", "lib"))
        csv = os.path.join(work, "perf.csv")
        pa = [os.path.join(a.pytools, "bin", "perf_analyzer"), "-i", "grpc", "-u", rt.address, "-m", "w8a8/" + down,
              "-b", "2",  # [2, K] requests: the batch dim from ModelConfig
              "--concurrency-range", "4", "--measurement-mode", "count_windows", "--measurement-request-count", "40",
              # A check that it runs, not a measurement: any spread between its windows is "stable"
              # (its default 10% fails on a shared machine).
              "--stability-percentage", "1000"]
        stats_before = layer_stats("w8a8/" + down)
        run = subprocess.run(pa + ["-H", "authorization:Bearer " + TOKEN, "-f", csv], capture_output=True, text=True,
                             timeout=120, env=env)
        assert run.returncode == 0, run.stdout + run.stderr
        rows = [line.split(",") for line in open(csv).read().splitlines()]
        assert rows[0][:2] == ["Concurrency", "Inferences/Second"] and rows[1][0] == "4", rows
        print("perf_analyzer, 4 concurrent clients, batch 2 (BF16 [2, %d]): %s infer/s" % (k, rows[1][1]))
        assert float(rows[1][1]) > 0, rows
        # It reads ModelStatistics before and after each measurement and prints the server's side.
        assert "Server: " in run.stdout and "Inference count: " in run.stdout, run.stdout
        # Every one of its requests is 2 rows, and it sent at least 3 windows of 40.
        stats = layer_stats("w8a8/" + down)
        requests = int(stats["inference_stats"]["success"]["count"]) - int(stats_before["inference_stats"]["success"]["count"])
        rows_done = int(stats["inference_count"]) - int(stats_before["inference_count"])
        assert requests >= 120 and rows_done == 2 * requests, (requests, rows_done)
        print("  its server-side lines:", " | ".join(l.strip() for l in run.stdout.splitlines() if "Server:" in l or
                                                      "Inference count" in l or "Avg request latency" in l))
        run = subprocess.run(pa, capture_output=True, text=True, timeout=120, env=env)
        assert run.returncode != 0 and "requires a token" in run.stdout + run.stderr, run.stdout + run.stderr

        # Triton's model repository extension over the model root: w8a8 is loaded under its own
        # name, w4a16 only as "w4" (so that directory is UNAVAILABLE); the quantized Linears of
        # both (those with a weight scale / packed weight in the checkpoint) are READY models.
        def index():
            return {m.name: (m.state, m.version) for m in client.get_model_repository_index(headers=hdr).models}

        want = {"w8a8/" + t[:-len(".weight_scale")]: ("READY", "1") for t in ck if t.endswith(".weight_scale")}
        want.update({"w4/" + t[:-len(".weight_packed")]: ("READY", "1") for t in d4 if t.endswith(".weight_packed")})
        want["w4a16"] = ("UNAVAILABLE", "")
        assert len(want) == 2 * 14 + 1, want
        assert index() == want, (index(), want)
        client.load_model("w4a16", headers=hdr)
        assert client.is_model_ready("w4a16/" + o, headers=hdr)
        assert index()["w4a16/" + o] == ("READY", "1") and "w4a16" not in index(), index()
        x4 = f32_to_bf16_bits(rng.standard_normal((3, k)).astype(np.float32)).view(np.uint16)
        same = [infer(name + "/" + down, bf16_to_f32(x4), "BF16").as_numpy("y") for name in ("w4", "w4a16")]
        assert np.array_equal(same[0], same[1]), "the same checkpoint under two names answers the same"
        client.load_model("w4a16", headers=hdr)  # already loaded from it: nothing to do
        client.unload_model("w4a16", headers=hdr)
        assert not client.is_model_ready("w4a16/" + o, headers=hdr) and index()["w4a16"][0] == "UNAVAILABLE"
        msg = refused("NOT_FOUND", lambda: client.load_model("nope", headers=hdr))
        assert "nope" in msg, msg
        msg = refused("INVALID_ARGUMENT", lambda: client.load_model("w4a16", config="{}", headers=hdr))
        assert "'config'" in msg, msg

        # Errors, then a good request.
        msg = refused("NOT_FOUND", lambda: infer("nope/" + down, x, "FP32"))
        assert "nope" in msg, msg
        refused("NOT_FOUND", lambda: infer("w8a8/model.layers.7.mlp.down_proj", x, "FP32"))
        refused("NOT_FOUND", lambda: infer("w8a8/" + down, x, "FP32", model_version="3"))
        msg = refused("INVALID_ARGUMENT", lambda: infer("w8a8/" + down, x[:, :-8].copy(), "FP32"))
        assert "K" in msg, msg
        msg = refused("INVALID_ARGUMENT", lambda: infer("w8a8/" + down, x.astype(np.int8), "INT8"))
        assert "INT8" in msg, msg
        msg = refused("INVALID_ARGUMENT", lambda: infer("w8a8", x, "FP32"))
        assert "w8a8/" in msg, msg

        def wrong_name():
            inp = tc.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            client.infer("w8a8/" + down, [inp], headers=hdr)

        msg = refused("INVALID_ARGUMENT", wrong_name)
        assert "'input'" in msg, msg
        refused("INVALID_ARGUMENT", lambda: infer("w8a8/" + down, x, "FP32", parameters={"out_dtype": "FP64"}))
        refused("UNIMPLEMENTED", lambda: client.get_system_shared_memory_status(headers=hdr))
        assert np.array_equal(infer("w8a8/" + down, x, "FP32").as_numpy("y"), y)
    finally:
        if client is not None:
            client.close()
        code = rt.stop()
    assert code == 0, code
    shutil.rmtree(work, ignore_errors=True)
    print("triton client: all checks passed")


if __name__ == "__main__":
    main()
