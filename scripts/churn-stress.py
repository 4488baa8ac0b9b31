#!/usr/bin/python3
"""Churn stress of the runtime: GEMMs from many threads while the models they use are unloaded and
loaded again, calls cancelled and deadlines missed, all at once.

    /usr/bin/python3 scripts/churn-stress.py --bin build-asan [--seconds 60] [--threads 12]

Run it on an AddressSanitizer build (scripts/sanitize.sh builds build-asan/; `ninja -C build-asan
lowbit-runtime lowbit-rtn lowbit-gen-model` is enough) so that a use after free of an unloaded
model's weights, or a leak, ends the run; it works on any build. It makes a W8A8 and a W4A16
checkpoint, starts `lowbit-runtime serve --backend cpu` (dynamic batching on), loads both and
records, call by call, the answer of a set of GEMM cases (three layers of each model, M = 1, 3,
17). Then for --seconds, at once:
  * unary Gemm threads and GemmStream threads replay random cases: every answer must be the
    recorded bytes exactly (batched or not), or NOT_FOUND while its model is unloaded;
  * a thread with 1 ms deadlines: the recorded bytes or DEADLINE_EXCEEDED (or NOT_FOUND);
  * a thread that cancels its calls at once: the recorded bytes or CANCELLED (or NOT_FOUND);
  * two loader threads unload and load both models again by path, racing each other: ALREADY_EXISTS
    and NOT_FOUND are the only refusals allowed;
  * ListModels / GetServerInfo now and then.
At the end the runtime must still be serving every case right, its memory-budget count must be
the loaded models' bytes exactly (and 0 once they are unloaded), a SIGTERM must stop it with exit
status 0, and its log must hold no sanitizer report. Exit status 0 when all of that held. Not in ctest (a minute of
load on the CPUs); docs/testing.md.
"""
import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

import numpy as np

TOKEN = "churn-token"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build"))
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--threads", type=int, default=12, help="unary Gemm threads (plus 2 stream threads)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="lowbit-churn-")
    try:
        return run(a, work)
    finally:
        if a.keep:
            print("kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(a, work):
    gen = os.path.join(work, "gen")
    os.makedirs(gen)
    protos = ["lowbit/v1/tensor.proto", "lowbit/v1/runtime.proto"]
    subprocess.check_call(["protoc", "-I", os.path.join(ROOT, "proto"), "--python_out=" + gen,
                           "--grpc_python_out=" + gen, "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin"]
                          + protos)
    sys.path.insert(0, gen)
    import grpc
    from lowbit.v1 import runtime_pb2 as rpb, runtime_pb2_grpc as rgrpc
    from lowbit.v1 import tensor_pb2 as tpb

    models = os.path.join(work, "models")
    src = os.path.join(work, "src")
    subprocess.check_call([os.path.join(a.bin, "tools/lowbit-gen-model"), "--out", src, "--hidden=512",
                           "--intermediate=1024", "--heads=8", "--kv_heads=4", "--layers=2"], stdout=subprocess.DEVNULL)
    for scheme, name in (("W8A8", "c8"), ("W4A16", "c4")):
        subprocess.check_call([os.path.join(a.bin, "tools/lowbit-rtn"), "--model", src, "--scheme", scheme,
                               "--out", os.path.join(models, name)], stdout=subprocess.DEVNULL)
    log_path = os.path.join(work, "runtime.log")
    log = open(log_path, "wb")
    proc = subprocess.Popen([os.path.join(a.bin, "runtime/lowbit-runtime"), "serve", "--address=127.0.0.1:0",
                             "--model_root=" + models, "--backend=cpu", "--auth_token=" + TOKEN],
                            stdout=subprocess.PIPE, stderr=log)
    line = proc.stdout.readline().decode()
    if " listening on " not in line:
        print("the runtime did not start; see", log_path)
        return 1
    address = line.strip().split(" listening on ")[1]
    md = [("authorization", "Bearer " + TOKEN)]
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
    stub = rgrpc.RuntimeServiceStub(channel)
    models_by_name = {"m8": "c8", "m4": "c4"}
    for name, path in models_by_name.items():
        stub.LoadModel(rpb.LoadModelRequest(name=name, path=path), metadata=md, timeout=60)

    rng = np.random.default_rng(a.seed)
    layers = [("model.layers.0.self_attn.q_proj", 512), ("model.layers.1.mlp.down_proj", 1024),
              ("model.layers.1.mlp.up_proj", 512)]  # (name, K), the same in both models
    cases = []  # (request, expected y bytes)
    for model in models_by_name:
        for layer, k in layers:
            for m in (1, 3, 17):
                x = rng.standard_normal((m, k)).astype(np.float32)
                if model == "m4":  # W4A16 takes bf16 activations and answers in their dtype
                    t = tpb.Tensor(dtype=tpb.DTYPE_BF16, shape=[m, k],
                                   data=(x.view(np.uint32) >> 16).astype(np.uint16).tobytes())
                else:
                    t = tpb.Tensor(dtype=tpb.DTYPE_F32, shape=[m, k], data=x.tobytes())
                req = rpb.GemmRequest(model=model, layer=layer, x=t, out_dtype=t.dtype)
                y = stub.Gemm(req, metadata=md, timeout=30).y.data
                cases.append((req, y))
    print("runtime at %s; %d GEMM cases recorded; churning for %.0f s" % (address, len(cases), a.seconds))

    stop = time.time() + a.seconds
    outcomes = Counter()
    failures = []
    lock = threading.Lock()

    def note(kind, ok, detail=""):
        with lock:
            outcomes[kind] += 1
            if not ok and len(failures) < 20:
                failures.append("%s: %s" % (kind, detail))

    def check(kind, case, resp_or_err, allowed):
        req, want = case
        if isinstance(resp_or_err, grpc.RpcError):
            code = resp_or_err.code()
            note("%s %s" % (kind, code.name), code in allowed,
                 "%s on %s/%s: %s" % (code.name, req.model, req.layer, resp_or_err.details()))
        elif resp_or_err.y.data != want:
            note(kind + " WRONG BYTES", False, "%s/%s M=%d" % (req.model, req.layer, req.x.shape[0]))
        else:
            note(kind + " OK", True)

    nf = {grpc.StatusCode.NOT_FOUND}

    def unary(seed, timeout, allowed):
        r = random.Random(seed)
        while time.time() < stop:
            case = r.choice(cases)
            try:
                resp = stub.Gemm(case[0], metadata=md, timeout=timeout)
            except grpc.RpcError as e:
                resp = e
            check("Gemm" if timeout > 1 else "Gemm(1 ms deadline)", case, resp, allowed)

    def cancelling(seed):
        r = random.Random(seed)
        while time.time() < stop:
            case = r.choice(cases)
            fut = stub.Gemm.future(case[0], metadata=md, timeout=30)
            if r.random() < 0.5:
                time.sleep(r.random() * 0.002)
            fut.cancel()
            try:
                resp = fut.result()
            except grpc.FutureCancelledError:
                note("Gemm(cancelled) CANCELLED", True)
                continue
            except grpc.RpcError as e:
                resp = e
            check("Gemm(cancelled)", case, resp, nf | {grpc.StatusCode.CANCELLED})

    def streaming(seed):
        r = random.Random(seed)
        while time.time() < stop:
            batch = [r.choice(cases) for _ in range(r.randint(1, 24))]
            reqs = (rpb.GemmStreamRequest(request_id=i, request=c[0]) for i, c in enumerate(batch))
            seen = set()
            try:
                for resp in stub.GemmStream(reqs, metadata=md, timeout=60):
                    case = batch[resp.request_id]
                    seen.add(resp.request_id)
                    if resp.error_code != 0:
                        ok = resp.error_code == grpc.StatusCode.NOT_FOUND.value[0]
                        note("GemmStream error %d" % resp.error_code, ok, resp.error_message)
                    elif resp.response.y.data != case[1]:
                        note("GemmStream WRONG BYTES", False, "%s/%s" % (case[0].model, case[0].layer))
                    else:
                        note("GemmStream OK", True)
            except grpc.RpcError as e:
                note("GemmStream ended %s" % e.code().name, False, e.details())
                continue
            if len(seen) != len(batch):
                note("GemmStream MISSING ANSWERS", False, "%d of %d answered" % (len(seen), len(batch)))

    def loader(seed):
        r = random.Random(seed)
        while time.time() < stop:
            name = r.choice(list(models_by_name))
            for call, req in (("UnloadModel", rpb.UnloadModelRequest(name=name)),
                              ("LoadModel", rpb.LoadModelRequest(name=name, path=models_by_name[name]))):
                try:
                    getattr(stub, call)(req, metadata=md, timeout=60)
                    note(call + " OK", True)
                except grpc.RpcError as e:
                    ok = e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS)
                    note("%s %s" % (call, e.code().name), ok, e.details())
                time.sleep(r.random() * 0.25)

    def observer():
        while time.time() < stop:
            try:
                stub.ListModels(rpb.ListModelsRequest(), metadata=md, timeout=10)
                stub.GetServerInfo(rpb.GetServerInfoRequest(), metadata=md, timeout=10)
                note("ListModels + GetServerInfo OK", True)
            except grpc.RpcError as e:
                note("observer %s" % e.code().name, False, e.details())
            time.sleep(0.05)

    threads = [threading.Thread(target=unary, args=(a.seed * 100 + i, 30, nf)) for i in range(a.threads)]
    threads += [threading.Thread(target=streaming, args=(a.seed * 100 + 50 + i,)) for i in range(2)]
    threads.append(threading.Thread(target=unary, args=(a.seed * 100 + 60, 0.001,
                                                        nf | {grpc.StatusCode.DEADLINE_EXCEEDED})))
    threads.append(threading.Thread(target=cancelling, args=(a.seed * 100 + 70,)))
    threads += [threading.Thread(target=loader, args=(a.seed * 100 + 80 + i,)) for i in range(2)]
    threads.append(threading.Thread(target=observer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    alive = proc.poll() is None
    if alive:
        # Both models back, then one more checked call each: the server still answers right.
        for name, path in models_by_name.items():
            try:
                stub.LoadModel(rpb.LoadModelRequest(name=name, path=path), metadata=md, timeout=60)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                    failures.append("final LoadModel %s: %s" % (name, e.details()))
        for case in cases:
            try:
                if stub.Gemm(case[0], metadata=md, timeout=30).y.data != case[1]:
                    failures.append("final Gemm %s/%s: wrong bytes" % (case[0].model, case[0].layer))
            except grpc.RpcError as e:
                failures.append("final Gemm: %s %s" % (e.code().name, e.details()))
        # The memory budget's count after hundreds of unloads under load: the loaded models'
        # bytes exactly, and nothing once they are gone (no reservation or unload leaked).
        listed = stub.ListModels(rpb.ListModelsRequest(), metadata=md, timeout=10).models
        used = stub.GetServerInfo(rpb.GetServerInfoRequest(), metadata=md, timeout=10).memory_used_bytes
        print("after the churn: %d models loaded, %d bytes counted against the budget" % (len(listed), used))
        if used != sum(m.weight_bytes for m in listed) or len(listed) != 2:
            failures.append("memory used %d bytes, but the %d loaded models hold %d" %
                            (used, len(listed), sum(m.weight_bytes for m in listed)))
        for name in models_by_name:
            stub.UnloadModel(rpb.UnloadModelRequest(name=name), metadata=md, timeout=60)
        used = stub.GetServerInfo(rpb.GetServerInfoRequest(), metadata=md, timeout=10).memory_used_bytes
        if used != 0:
            failures.append("memory used %d bytes with no model loaded" % used)
    channel.close()
    status = None
    if alive:
        proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            failures.append("the runtime did not stop within 60 s of SIGTERM")
    else:
        failures.append("the runtime died during the churn (exit status %s); see %s" % (proc.poll(), log_path))
    log.close()
    text = open(log_path, errors="replace").read()
    for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "WARNING: ThreadSanitizer"):
        if marker in text:
            i = text.index(marker)
            failures.append("sanitizer report in the runtime's log:\n" + text[max(0, i - 200):i + 3000])
    if status not in (None, 0):
        failures.append("the runtime exited with status %d after SIGTERM" % status)

    for kind, n in sorted(outcomes.items()):
        print("  %-40s %8d" % (kind, n))
    if failures:
        print("FAILED:")
        for f in failures:
            print("  " + f)
        return 1
    print("ok: %d calls, the runtime stopped cleanly (status %s)" % (sum(outcomes.values()), status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
