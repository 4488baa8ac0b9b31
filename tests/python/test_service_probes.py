"""What operators probe, on the real binaries: Prometheus /metrics, health by service name (the
KServe v2 service's too, and its absence with LOWBIT_RUNTIME_KSERVE=false), and the CLI's usage
errors.

The runtime links the CUDA libraries, whose static TLS (≈ 110 KiB) no longer fit the 100 KiB
stacks civetweb (behind /metrics) gives its threads; before rpc/thread_stack_floor.cc the runtime
exited at start with any --metrics_address. This starts both binaries with a metrics port, makes
one call to each through the `lowbit` CLI, and reads the call back from /metrics.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

TOKEN = "metrics-test-token"


def start(argv, log_path, env=None):
    log = open(log_path, "wb")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stdout.readline().decode()
        if not line:
            raise AssertionError("%s exited (%s) before listening; its log:\n%s" %
                                 (argv[0], proc.wait(), open(log_path).read()))
        if " listening on " in line:
            address = line.strip().split(" listening on ")[1]
            break
    else:
        raise AssertionError("no listening line from %s" % argv[0])
    # The metrics port (":0" asked for any free one) is in the log line the server writes.
    while time.time() < deadline:
        m = re.search(r"serving Prometheus metrics on (http://\S+/metrics)", open(log_path).read())
        if m:
            return proc, address, m.group(1)
        time.sleep(0.05)
    raise AssertionError("no metrics line in %s" % log_path)


def scrape(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200, r.status
        return r.read().decode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(os.path.join(a.work, "models"))
    cli = os.path.join(a.bin, "cli/lowbit")
    env = dict(os.environ, LOWBIT_TOKEN=TOKEN)
    procs = []
    try:
        rt, rt_addr, rt_url = start([os.path.join(a.bin, "runtime/lowbit-runtime"), "serve", "--address=127.0.0.1:0",
                                     "--metrics_address=127.0.0.1:0", "--backend=cpu", "--auth_token=" + TOKEN,
                                     "--model_root=" + os.path.join(a.work, "models")],
                                    os.path.join(a.work, "runtime.log"))
        procs.append(rt)
        cal, cal_addr, cal_url = start([os.path.join(a.bin, "calibrator/lowbit-calibrator"), "serve",
                                        "--address=127.0.0.1:0", "--metrics_address=127.0.0.1:0",
                                        "--auth_token=" + TOKEN, "--state_dir=" + os.path.join(a.work, "state"),
                                        "--model_root=" + os.path.join(a.work, "models")],
                                       os.path.join(a.work, "calibrator.log"))
        procs.append(cal)

        subprocess.check_call([cli, "info", "--runtime=" + rt_addr], env=env, stdout=subprocess.DEVNULL)
        text = scrape(rt_url)
        want = 'lowbit_rpc_requests_total{code="0",method="GetServerInfo",service="runtime"} 1'
        assert want in text, text
        for family in ("lowbit_runtime_queue_depth", "lowbit_runtime_memory_budget_bytes",
                       "lowbit_runtime_batch_requests", "lowbit_rpc_latency_seconds"):
            assert "# TYPE %s " % family in text, (family, text)

        # Health answers for the server ("") and for each service by name (grpc_health_probe -service).
        for argv in (["health", "--runtime=" + rt_addr], ["health", "--runtime=" + rt_addr, "lowbit.v1.RuntimeService"],
                     ["health", "--runtime=" + rt_addr, "inference.GRPCInferenceService"],
                     ["health", "--service=calibrator", "--calibrator=" + cal_addr, "lowbit.v1.CalibratorService"]):
            r = subprocess.run([cli] + argv, env=env, capture_output=True, text=True, timeout=30)
            assert r.returncode == 0 and r.stdout.strip() == "SERVING", (argv, r.returncode, r.stdout, r.stderr)
        r = subprocess.run([cli, "health", "--runtime=" + rt_addr, "lowbit.v1.NoSuchService"], env=env,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "NOT_FOUND" in (r.stdout + r.stderr).upper().replace(" ", "_"), r

        # KServe v2 on the same port (ServerLive needs no token: its answer is live = true, 08 01);
        # a runtime started with LOWBIT_RUNTIME_KSERVE=false serves neither it nor its health name.
        import grpc
        live = "/inference.GRPCInferenceService/ServerLive"

        def server_live(address):
            with grpc.insecure_channel(address) as ch:
                return ch.unary_unary(live, request_serializer=None, response_deserializer=None)(b"", timeout=30)

        assert server_live(rt_addr) == b"\x08\x01"
        off, off_addr, _ = start([os.path.join(a.bin, "runtime/lowbit-runtime"), "serve", "--address=127.0.0.1:0",
                                  "--metrics_address=127.0.0.1:0", "--backend=cpu", "--auth_token=" + TOKEN],
                                 os.path.join(a.work, "runtime-kserve-off.log"),
                                 dict(os.environ, LOWBIT_RUNTIME_KSERVE="false"))
        procs.append(off)
        try:
            server_live(off_addr)
            raise AssertionError("KServe answered with LOWBIT_RUNTIME_KSERVE=false")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNIMPLEMENTED, e
        r = subprocess.run([cli, "health", "--runtime=" + off_addr, "inference.GRPCInferenceService"], env=env,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0, (r.stdout, r.stderr)

        # A bad --m is a usage error (exit 2) naming the flag, not an abort.
        for m in ("-3", "0", "99999999999"):
            r = subprocess.run([cli, "gemm", "--runtime=" + rt_addr, "--name=none", "--layer=none", "--m=" + m],
                               env=env, capture_output=True, text=True, timeout=30)
            assert r.returncode == 2 and ("--m %s is not in 1.." % m) in r.stderr, (m, r.returncode, r.stderr)

        subprocess.check_call([cli, "jobs", "list", "--calibrator=" + cal_addr], env=env, stdout=subprocess.DEVNULL)
        text = scrape(cal_url)
        assert re.search(r'lowbit_rpc_requests_total\{code="0",method="ListJobs",service="calibrator"\} 1', text), text
        for p in procs:
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=30) == 0
        procs = []
    finally:
        for p in procs:
            p.kill()
            p.wait()
    print("runtime and calibrator /metrics: ok")


if __name__ == "__main__":
    sys.exit(main())
