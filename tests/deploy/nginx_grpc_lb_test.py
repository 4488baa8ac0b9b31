#!/usr/bin/python3
"""nginx (Debian) with grpc_pass in front of lowbit-runtime replicas on loopback.

Runs docker/nginx/lowbit-grpc.conf.template (the front that docker/compose.yaml deploys) with
its placeholders filled, in a temp dir, as a non-daemon, on loopback ports; no root needed.

  1. one W8A8 checkpoint (lowbit-gen-model + lowbit-rtn), loaded by two runtime replicas;
     the expected Y of every test input is computed once by a direct call (no nginx);
  2. checks through the front: grpc.health.v1, a GemmStream, a missing token
     (UNAUTHENTICATED, passed through), a request over 1 MiB (passes; the same request through
     an nginx with the default client_max_body_size fails: we print the status it gets);
  3. throughput, 64 concurrent clients (Python threads, one HTTP/2 connection each) for a few
     seconds: through a front with one replica, then through a front with both;
  4. the same load through a fresh front with both replicas, and one replica SIGKILLed
     mid-run: every call must succeed, directly or after client retries on a retryable
     status; every Y must equal the expected Y bit for bit (W8A8 is deterministic).

Prints a summary and writes result.json into --work. Exit 77 (ctest SKIP_RETURN_CODE) only
when nginx is not installed (LOWBIT_NGINX=PATH picks the binary; a missing PATH = not installed).

usage: nginx_grpc_lb_test.py --runtime BIN --gen-model BIN --rtn BIN --proto DIR --template F
                             --work DIR [--seconds S] [--hidden H] [--rows M]
"""
import argparse
import collections
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

SKIP = 77
TOKEN = "deploy-test-token"
LAYER = "model.layers.0.self_attn.o_proj"
CLIENTS = 64
# What a client may retry: UNAVAILABLE (nginx answers 502 when no replica could take the call,
# and grpc maps HTTP 502/503/504 to UNAVAILABLE; a replica that dies mid-call also ends in
# UNAVAILABLE). Anything else is a failure of the test.
RETRYABLE = {"UNAVAILABLE"}
MAX_ATTEMPTS = 8


def find_nginx():
    if "LOWBIT_NGINX" in os.environ:  # an explicit binary (empty or missing: "not installed")
        c = os.environ["LOWBIT_NGINX"]
        return c if c and os.access(c, os.X_OK) else None
    for c in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if c and os.access(c, os.X_OK):
            return c
    return None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("nothing listens on 127.0.0.1:%d" % port)


class Runtime:
    def __init__(self, binary, model_root, log, threads):
        self.log = open(log, "ab")
        argv = [binary, "serve", "--address=127.0.0.1:0", "--model_root=" + model_root, "--backend=cpu",
                "--batching=true", "--auth_token=" + TOKEN, "--threads=%d" % threads]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log)
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError("lowbit-runtime exited before listening; see %s" % log)
            if " listening on " in line:
                self.address = line.strip().split(" listening on ")[1]
                return
        raise RuntimeError("no listening line from lowbit-runtime")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Nginx:
    """One nginx master + worker, its own prefix dir, config and logs; not a daemon."""

    def __init__(self, binary, template, work, name, upstreams, tuned=True, body_limit=None):
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir)
        for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(self.dir, d))
            os.chmod(os.path.join(self.dir, d), 0o777)  # the worker runs as nobody when we are root
        self.port = free_port()
        self.access_log = os.path.join(self.dir, "access.log")
        # fail_timeout 1 s (5 s in compose): nginx probes the dead replica again within the run,
        # so its connect-refused retries show up in the access log.
        servers = " ".join("server %s max_fails=1 fail_timeout=1s;" % u for u in upstreams)
        if tuned:
            text = open(template).read()
            for key, value in (("LOWBIT_UPSTREAM_SERVERS", servers), ("LOWBIT_LISTEN", "127.0.0.1:%d" % self.port),
                               ("LOWBIT_ACCESS_LOG", self.access_log)):
                text = text.replace("${%s}" % key, value)
            if body_limit:
                assert "client_max_body_size 256m;" in text
                text = text.replace("client_max_body_size 256m;", "client_max_body_size %s;" % body_limit)
            left = re.findall(r"\$\{[A-Z_]+\}", text)
            if left:
                raise RuntimeError("unfilled placeholders in %s: %s" % (template, left))
        else:  # nginx's defaults: client_max_body_size 1m, grpc timeouts 60 s, no retries of POSTs
            text = ("upstream lowbit_runtime { %s }\nserver { listen 127.0.0.1:%d http2; access_log %s;\n"
                    "  location / { grpc_pass grpc://lowbit_runtime; } }\n" % (servers, self.port, self.access_log))
        with open(os.path.join(self.dir, "lowbit.conf"), "w") as f:
            f.write(text)
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write("worker_processes 1;\npid %s/nginx.pid;\nerror_log %s/error.log info;\n"
                    "events { worker_connections 4096; }\nhttp {\n" % (self.dir, self.dir))
            for key, d in (("client_body", "client_body"), ("proxy", "proxy"), ("fastcgi", "fastcgi"),
                           ("uwsgi", "uwsgi"), ("scgi", "scgi")):
                f.write("  %s_temp_path %s/%s;\n" % (key, self.dir, d))
            f.write("  include %s/lowbit.conf;\n}\n" % self.dir)
        err = os.path.join(self.dir, "error.log")
        subprocess.run([binary, "-t", "-q", "-p", self.dir, "-c", conf, "-e", err], check=True)
        self.proc = subprocess.Popen([binary, "-p", self.dir, "-c", conf, "-e", err, "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "stderr"), "wb"))
        wait_port(self.port)
        self.target = "127.0.0.1:%d" % self.port

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish open calls, then exit
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_lines(self):
        with open(self.access_log) as f:
            return [l for l in f if '"POST /lowbit.v1.RuntimeService/Gemm ' in l]


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), from /proc; 0 when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def summarize_access_log(lines):
    """Counts calls nginx sent to more than one replica, and calls per replica that answered."""
    retried, served = 0, collections.Counter()
    statuses = collections.Counter()
    for l in lines:
        m = re.search(r"upstream=(.*?) upstream_status=(.*?) rt=", l)
        if not m:
            continue
        addrs = [a.strip() for a in m.group(1).split(",")]
        if len(addrs) > 1:
            retried += 1
            statuses[m.group(2)] += 1
        served[addrs[-1]] += 1
    return retried, served, statuses


def main():
    ap = argparse.ArgumentParser()
    for flag in ("--runtime", "--gen-model", "--rtn", "--proto", "--template", "--work"):
        ap.add_argument(flag, required=True)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--runtime_threads", type=int, default=1)
    a = ap.parse_args()

    nginx = find_nginx()
    if not nginx:
        print("SKIP: nginx is not installed (scripts/setup.sh installs Debian's nginx)")
        return SKIP
    version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()

    work = a.work
    shutil.rmtree(work, ignore_errors=True)
    gen = os.path.join(work, "gen")
    os.makedirs(gen)
    t0 = time.time()
    subprocess.check_call(["protoc", "-I", a.proto, "--python_out=" + gen, "--grpc_python_out=" + gen,
                           "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin",
                           "lowbit/v1/tensor.proto", "lowbit/v1/runtime.proto"])
    sys.path.insert(0, gen)
    import grpc
    import numpy as np
    from lowbit.v1 import runtime_pb2, runtime_pb2_grpc, tensor_pb2

    root = os.path.join(work, "models")
    os.makedirs(root)
    heads = max(1, a.hidden // 64)
    subprocess.check_call([a.gen_model, "--out", os.path.join(work, "float"), "--hidden", str(a.hidden),
                           "--layers", "1", "--heads", str(heads), "--kv_heads", str(heads)],
                          stdout=subprocess.DEVNULL)
    subprocess.check_call([a.rtn, "--model", os.path.join(work, "float"), "--out", os.path.join(root, "ck"),
                           "--scheme", "W8A8"], stdout=subprocess.DEVNULL)

    md = (("authorization", "Bearer " + TOKEN),)
    opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.use_local_subchannel_pool", 1)]

    def stub_for(target):
        ch = grpc.insecure_channel(target, options=opts)
        return ch, runtime_pb2_grpc.RuntimeServiceStub(ch)

    def bf16_tensor(rows, seed):
        x = np.random.default_rng(seed).standard_normal((rows, a.hidden)).astype(np.float32)
        u = x.view(np.uint32).astype(np.uint64)
        bits = ((u + ((u >> 16) & 1) + 0x7FFF) >> 16).astype(np.uint16)
        return tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_BF16, shape=[rows, a.hidden], data=bits.tobytes())

    def gemm_request(x):
        return runtime_pb2.GemmRequest(model="m", layer=LAYER, x=x)

    replicas, fronts = [], []
    try:
        for i in range(2):
            replicas.append(Runtime(a.runtime, root, os.path.join(work, "runtime%d.log" % i), a.runtime_threads))
        for r in replicas:
            ch, stub = stub_for(r.address)
            info = stub.LoadModel(runtime_pb2.LoadModelRequest(name="m", path="ck"), metadata=md, timeout=60)
            assert any(l.name == LAYER for l in info.model.layers), "no %s in the checkpoint" % LAYER
            ch.close()

        # Expected answers, once, directly from replica 0. Replica 1 must agree bit for bit.
        inputs = [gemm_request(bf16_tensor(a.rows, seed)) for seed in range(8)]
        expected = []
        chans = [stub_for(r.address) for r in replicas]
        for req in inputs:
            ys = [s.Gemm(req, metadata=md, timeout=30).y for _, s in chans]
            assert ys[0].data == ys[1].data and list(ys[0].shape) == [a.rows, a.hidden], "replicas disagree"
            expected.append(ys[0].data)
        for ch, _ in chans:
            ch.close()
        setup_s = time.time() - t0

        # ---- checks through the front ----
        both = [r.address for r in replicas]
        front = Nginx(nginx, a.template, work, "front_checks", both)
        fronts.append(front)
        ch, stub = stub_for(front.target)
        health = ch.unary_unary("/grpc.health.v1.Health/Check", request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)(b"", timeout=10)
        assert health == b"\x08\x01", "health through nginx: %r (want SERVING)" % health
        reqs = [runtime_pb2.GemmStreamRequest(request_id=i, request=inputs[i % 8]) for i in range(32)]
        got = {r.request_id: r for r in stub.GemmStream(iter(reqs), metadata=md, timeout=30)}
        assert len(got) == 32 and all(got[i].error_code == 0 and got[i].response.y.data == expected[i % 8]
                                      for i in range(32)), "GemmStream through nginx"
        try:
            stub.Gemm(inputs[0], timeout=10)
            raise AssertionError("a call without the token passed")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
        big = gemm_request(bf16_tensor(2048 if a.hidden >= 512 else 8192, 99))  # > 1 MiB of X
        big_bytes = big.ByteSize()
        y_big = stub.Gemm(big, metadata=md, timeout=60).y
        _, direct = stub_for(replicas[0].address)
        assert y_big.data == direct.Gemm(big, metadata=md, timeout=60).y.data, "large request through nginx"
        ch.close()
        plain = Nginx(nginx, a.template, work, "front_defaults", both, tuned=False)
        fronts.append(plain)
        pch, pstub = stub_for(plain.target)
        try:
            pstub.Gemm(big, metadata=md, timeout=30)
            default_big = "OK (unexpected)"
        except grpc.RpcError as e:
            default_big = "%s: %s" % (e.code().name, e.details())
        pch.close()
        small = Nginx(nginx, a.template, work, "front_1m_limit", both, body_limit="1m")
        fronts.append(small)
        sch, sstub = stub_for(small.target)
        try:
            sstub.Gemm(big, metadata=md, timeout=30)
            limited_big = "OK (unexpected)"
        except grpc.RpcError as e:
            limited_big = "%s: %s" % (e.code().name, e.details())
        sch.close()
        print("checks: health SERVING, GemmStream 32/32, no token -> UNAUTHENTICATED, "
              "%.1f MiB request OK through the front; with nginx defaults: %s; through the template "
              "with client_max_body_size 1m: %s" % (big_bytes / 2**20, default_big, limited_big))
        assert limited_big.startswith("RESOURCE_EXHAUSTED"), "413 not mapped to RESOURCE_EXHAUSTED"
        assert not default_big.startswith("OK"), "default client_max_body_size let %d bytes through" % big_bytes

        # ---- load ----
        def run_load(target, seconds, kill=None):
            stop_at = time.time() + seconds
            lock = threading.Lock()
            agg = collections.Counter()
            codes = collections.Counter()
            samples = {}
            kill_time = [None]

            def client(idx):
                ch, stub = stub_for(target)
                rng = random.Random(idx)
                c = collections.Counter()
                my_codes = collections.Counter()
                while time.time() < stop_at:
                    k = rng.randrange(8)
                    started = time.time()
                    for attempt in range(MAX_ATTEMPTS):
                        try:
                            y = stub.Gemm(inputs[k], metadata=md, timeout=15).y
                        except grpc.RpcError as e:
                            name = e.code().name
                            my_codes[name] += 1
                            with lock:
                                samples.setdefault(name, e.details())
                            if name in RETRYABLE and attempt + 1 < MAX_ATTEMPTS:
                                c["client_retries"] += 1
                                time.sleep(min(0.5, 0.01 * 2 ** attempt))
                                continue
                            c["failed"] += 1
                            break
                        c["ok"] += 1
                        c["ok_after_retry"] += attempt > 0
                        if y.data != expected[k]:
                            c["wrong"] += 1
                        if kill_time[0] is not None and started > kill_time[0]:
                            c["ok_started_after_kill"] += 1
                        break
                ch.close()
                with lock:
                    agg.update(c)
                    codes.update(my_codes)

            threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
            pids = {"replica%d" % i: r.proc.pid for i, r in enumerate(replicas)}
            pids["client"] = os.getpid()
            cpu0 = {k_: cpu_seconds(p) for k_, p in pids.items()}
            t_start = time.time()
            for t in threads:
                t.start()
            if kill is not None:
                time.sleep(seconds * 0.4)
                kill_time[0] = time.time()
                kill()
            for t in threads:
                t.join()
            elapsed = time.time() - t_start
            cores = {k_: round((cpu_seconds(p) - cpu0[k_]) / elapsed, 2) for k_, p in pids.items()
                     if kill is None or k_ != "replica1"}
            return {"cores_used": cores, "ok": agg["ok"], "wrong": agg["wrong"], "failed": agg["failed"],
                    "client_retries": agg["client_retries"], "ok_after_retry": agg["ok_after_retry"],
                    "ok_started_after_kill": agg["ok_started_after_kill"], "codes": dict(codes),
                    "code_samples": samples, "seconds": elapsed, "calls_per_s": agg["ok"] / elapsed}

        f1 = Nginx(nginx, a.template, work, "front_1replica", both[:1])
        fronts.append(f1)
        one = run_load(f1.target, a.seconds)
        f2 = Nginx(nginx, a.template, work, "front_2replicas", both)
        fronts.append(f2)
        two = run_load(f2.target, a.seconds)
        _, served2, _ = summarize_access_log(f2.log_lines())
        f3 = Nginx(nginx, a.template, work, "front_kill", both)
        fronts.append(f3)
        killed = run_load(f3.target, a.seconds + 1, kill=replicas[1].kill)
        nginx_retried, served3, retry_statuses = summarize_access_log(f3.log_lines())
        front_codes = collections.Counter(re.search(r'" (\d+) ', l).group(1) for l in f3.log_lines())

        result = {
            "nginx": version, "clients": CLIENTS, "rows": a.rows, "hidden": a.hidden, "dtype": "bf16",
            "runtime_threads": a.runtime_threads, "cpus": os.cpu_count(), "setup_s": setup_s,
            "one_replica": one, "two_replicas": two, "kill_run": killed,
            "two_replicas_served_by": dict(served2), "kill_run_served_by": dict(served3),
            "kill_run_nginx_retried": nginx_retried, "kill_run_nginx_retry_upstream_statuses": dict(retry_statuses),
            "kill_run_front_http_statuses": dict(front_codes), "default_nginx_large_request": default_big,
            "large_request_bytes": big_bytes, "template_1m_limit_large_request": limited_big,
        }
        with open(os.path.join(work, "result.json"), "w") as f:
            json.dump(result, f, indent=1)
        print("%s; %d clients, Gemm %dx%d bf16 x W8A8 %dx%d, runtime --threads=%d, %d CPUs"
              % (version, CLIENTS, a.rows, a.hidden, a.hidden, a.hidden, a.runtime_threads, os.cpu_count() or 0))
        print("throughput through nginx: 1 replica %.0f calls/s, 2 replicas %.0f calls/s (x%.2f); "
              "2-replica split %s" % (one["calls_per_s"], two["calls_per_s"],
                                      two["calls_per_s"] / max(one["calls_per_s"], 1e-9), dict(served2)))
        print("CPU cores used (of %d, shared with whatever else runs): 1 replica %s; 2 replicas %s; "
              "load average %.1f" % (os.cpu_count() or 0, one["cores_used"], two["cores_used"], os.getloadavg()[0]))
        print("kill run: %d ok (%d started after the SIGKILL), %d wrong, %d failed; nginx re-sent %d calls "
              "to the other replica (upstream statuses %s); client saw %s, retried %d times, %d calls "
              "succeeded on a retry; front answered HTTP %s"
              % (killed["ok"], killed["ok_started_after_kill"], killed["wrong"], killed["failed"], nginx_retried,
                 dict(retry_statuses), killed["codes"] or "no error", killed["client_retries"],
                 killed["ok_after_retry"], dict(front_codes)))
        for name, detail in killed["code_samples"].items():
            print("  %s e.g. %r" % (name, detail))

        bad = []
        for label, r in (("1 replica", one), ("2 replicas", two), ("kill run", killed)):
            if r["wrong"]:
                bad.append("%s: %d wrong answers" % (label, r["wrong"]))
            if r["failed"]:
                bad.append("%s: %d calls failed for good (%s)" % (label, r["failed"], r["codes"]))
            if r["ok"] < CLIENTS:
                bad.append("%s: only %d calls completed" % (label, r["ok"]))
        if killed["ok_started_after_kill"] == 0:
            bad.append("no call started after the kill completed")
        if len(served2) != 2:
            bad.append("the 2-replica front used %s" % dict(served2))
        if bad:
            print("FAIL: " + "; ".join(bad))
            return 1
        print("PASS (%.1f s)" % (time.time() - t0))
        return 0
    finally:
        for f in fronts:
            f.stop()
        for r in replicas:
            r.stop()


if __name__ == "__main__":
    sys.exit(main())
