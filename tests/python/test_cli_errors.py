"""The `lowbit` CLI's argument checks, output directories and child processes, on the real binary.

    test_cli_errors.py --bin BUILD_DIR --work WORK_DIR

Usage errors exit 2 with a message naming the flag or file, before anything is started, uploaded
or written; `lowbit demo` / `bench-rpc` refuse a non-empty --out they did not make (a planted file
survives) and run children without a shell (any character in --out); `lowbit fetch` refuses an
--out that holds anything but an earlier fetch's files and removes stale temp files of an
interrupted fetch; --timeout_s does not bound streams (--stream_timeout_s does); default upload
names come from the normalized path; SIGTERM to `lowbit demo` stops both services, whose bearer
token is in their environment, not in their argv.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

failures = []
SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def check(name, ok, detail=""):
    print(("ok    " if ok else "FAIL  ") + name + ("" if ok else ": " + detail), flush=True)
    if not ok:
        failures.append(name)


def run(argv, env=None, cwd=None, timeout=60):
    full_env = dict(os.environ)
    for k in ("LOWBIT_RUNTIME", "LOWBIT_CALIBRATOR", "LOWBIT_TOKEN"):
        full_env.pop(k, None)
    full_env.update(env or {})
    return subprocess.run(argv, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout)


def expect(name, p, rc, needles=(), stream="stderr", absent=()):
    text = getattr(p, stream)
    problems = []
    if p.returncode != rc:
        problems.append("exit status %d, not %d" % (p.returncode, rc))
    for n in needles:
        if n not in text:
            problems.append("%s does not mention %r" % (stream, n))
    for n in absent:
        if n in text:
            problems.append("%s mentions %r" % (stream, n))
    check(name, not problems, "; ".join(problems) + "\n  stdout: " + p.stdout[-600:] + "\n  stderr: " + p.stderr[-600:])


def read_all(d):
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            path = os.path.join(root, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, d)] = fh.read()
    return out


def children_of(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"  # a zombie has stopped


def dead_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


class Calibrator:
    def __init__(self, binary, work, token, state="state", env=None):
        self.log = open(os.path.join(work, "calibrator.log"), "ab")
        self.proc = subprocess.Popen([binary, "serve", "--address=127.0.0.1:0",
                                      "--state_dir=" + os.path.join(work, state),
                                      "--model_root=" + os.path.join(work, "models"),
                                      "--output_root=" + os.path.join(work, "outputs"), "--auth_token=" + token],
                                     stdout=subprocess.PIPE, stderr=self.log, env=dict(os.environ, **(env or {})))
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError("lowbit-calibrator exited before listening")
            if " listening on " in line:
                self.address = line.strip().split(" listening on ")[1]
                return
        raise RuntimeError("no listening line from lowbit-calibrator")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def usage_errors(lowbit, work, model):
    down = {"LOWBIT_RUNTIME": "127.0.0.1:1", "LOWBIT_CALIBRATOR": "127.0.0.1:1"}  # a call would be UNAVAILABLE (1)
    b1 = os.path.join(work, "bench-never")
    for clients in ("abc", "-1", "99999999999", "1,,8"):
        p = run([lowbit, "bench-rpc", "--out", b1, "--bench_clients", clients], down, timeout=20)
        expect("bench-rpc --bench_clients %s" % clients, p, 2, ["--bench_clients", "not a client count"])
    check("bench-rpc with a bad flag starts nothing", not os.path.exists(b1), b1 + " exists")
    expect("bench-rpc --bench_seconds 0", run([lowbit, "bench-rpc", "--out", b1, "--bench_seconds", "0"], down), 2,
           ["--bench_seconds"])
    expect("gemm --dtype f64", run([lowbit, "gemm", "--name", "a", "--layer", "b", "--dtype", "f64"], down), 2,
           ["--dtype 'f64'"])
    expect("--runtime port > 65535", run([lowbit, "models", "--runtime", "127.0.0.1:99999"]), 2,
           ["--runtime '127.0.0.1:99999'", "1..65535"])
    expect("$LOWBIT_CALIBRATOR port > 65535", run([lowbit, "jobs"], {"LOWBIT_CALIBRATOR": "localhost:70000"}), 2,
           ["$LOWBIT_CALIBRATOR 'localhost:70000'"])
    expect("--calibrator without a port", run([lowbit, "jobs", "--calibrator", "localhost"]), 2, ["has no port"])
    p = run([lowbit, "models", "--timeout_s", "2"], {"LOWBIT_RUNTIME": ""})
    check("empty $LOWBIT_RUNTIME counts as unset",
          "dns URI" not in p.stderr and "secure client channel" not in p.stderr and
          (p.returncode == 0 or "127.0.0.1:50052" in p.stderr), p.stderr[-600:])
    for v in ("4294967296", "0", "-5"):
        expect("--max_message_bytes %s" % v, run([lowbit, "models", "--max_message_bytes", v], down), 2,
               ["--max_message_bytes %s" % v, "1..2147483647"])
    expect("--max_message_bytes below --chunk_bytes", run([lowbit, "models", "--max_message_bytes", "1000"], down), 2,
           ["--max_message_bytes 1000", "--chunk_bytes"])
    expect("--tls_cert without --tls_key", run([lowbit, "models", "--tls_ca", "c.pem", "--tls_cert", "c.pem"], down), 2,
           ["--tls_cert needs --tls_key"])
    expect("--tls_key without --tls_cert", run([lowbit, "models", "--tls_key", "k.pem"], down), 2,
           ["--tls_key needs --tls_cert"])
    not_pem = os.path.join(work, "not.pem")
    with open(not_pem, "w") as f:
        f.write("not a certificate\n")
    expect("--tls_ca that is not PEM", run([lowbit, "models", "--tls_ca", not_pem], down), 2,
           ["TLS CA '%s' holds no PEM certificate" % not_pem])
    expect("--timeout_s -1", run([lowbit, "models", "--timeout_s", "-1"], down), 2, ["--timeout_s"])
    expect("health --service typo", run([lowbit, "health", "--service", "calbrator"], down), 2,
           ["--service 'calbrator'"])
    # Every binary's --help lists its own flags (Abseil lists only a file named after the program).
    bin_dir = os.path.dirname(os.path.dirname(lowbit))
    for binary, flag in (("calibrator/lowbit-calibrator", "--per_layer_resume"), ("runtime/lowbit-runtime", "--state_dir"),
                         ("tools/lowbit-gen-model", "--outlier_channels"), ("tools/lowbit-gen-tokens", "--max_len"),
                         ("tools/lowbit-rtn", "--scheme"), ("tools/lowbit-demo", "--schemes"),
                         ("tools/lowbit-forward", "--bench_sgemm")):
        p = run([os.path.join(bin_dir, binary), "--help"])
        check("%s --help lists %s" % (binary, flag), flag in p.stdout + p.stderr and "No flags matched" not in p.stdout,
              (p.stdout + p.stderr)[-400:])
    expect("jobs get ID extra", run([lowbit, "jobs", "get", "j", "extra"], down), 2, ["usage: lowbit jobs get ID"])
    expect("jobs list extra", run([lowbit, "jobs", "list", "extra"], down), 2, ["list takes no arguments"])
    expect("jobs frob", run([lowbit, "jobs", "frob"], down), 2, ["unknown verb 'frob'"])
    expect("jobs retry without ID", run([lowbit, "jobs", "retry"], down), 2, ["usage: lowbit jobs retry ID"])
    expect("uploads delete of a frob", run([lowbit, "uploads", "delete", "frob", "x"], down), 2,
           ["delete takes 'model' or 'dataset'"])
    expect("uploads delete without a name", run([lowbit, "uploads", "delete", "model"], down), 2,
           ["usage: lowbit uploads [list] | lowbit uploads delete (model | dataset) NAME"])
    expect("jobs get --keep_output", run([lowbit, "jobs", "get", "j", "--keep_output"], down), 2,
           ["--keep_output is a flag of jobs delete, not of jobs get"])
    expect("jobs cancel --detach", run([lowbit, "jobs", "cancel", "j", "--detach"], down), 2,
           ["--detach is a flag of calibrate and jobs retry, not of jobs cancel"])
    expect("upload-dataset of a missing file", run([lowbit, "upload-dataset", os.path.join(work, "none.jsonl")], down),
           2, ["none.jsonl"], absent=["UNAVAILABLE"])
    expect("upload-dataset .bin without its .idx", run([lowbit, "upload-dataset", recipe_bin(work)], down), 2,
           ["t.idx"], absent=["UNAVAILABLE"])
    expect("upload-model of a file", run([lowbit, "upload-model", lowbit], down), 2, ["is not a directory"])
    # `health` takes --timeout_s (the Docker HEALTHCHECK passes 3): against a port that accepts
    # connections but never answers, it gives up then, not after its 5 s default.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    t0 = time.time()
    p = run([lowbit, "health", "--runtime", "127.0.0.1:%d" % silent.getsockname()[1], "--timeout_s", "1"])
    took = time.time() - t0
    silent.close()
    check("health --timeout_s 1 gives up after about 1 s", p.returncode == 1 and 0.8 < took < 3.5,
          "status %d after %.1f s: %s" % (p.returncode, took, p.stderr[-300:]))
    expect("unknown command", run([lowbit, "frob"]), 2, ["unknown command 'frob'"])
    expect("no command", run([lowbit]), 2, ["lowbit COMMAND"])
    # Abseil's own flag parser reports an unknown flag, with status 1 (documented).
    expect("unknown flag (absl: exit 1)", run([lowbit, "models", "--frob"]), 1, ["frob"])
    expect("--help lists the commands' flags", run([lowbit, "--help"]), 0,
           ["--bench_clients", "--stream_timeout_s", "--scheme", "--helpfull"], stream="stdout",
           absent=["No flags matched"])
    expect("calibrate --help lists calibrate's flags", run([lowbit, "calibrate", "--help"]), 0,
           ["--scheme", "--upload_model", "--calibrator"], stream="stdout", absent=["--bench_clients"])
    # calibrate checks every argument before it uploads: with an unreachable calibrator, a usage
    # error is 2, not UNAVAILABLE.
    expect("calibrate --upload_model without --scheme", run([lowbit, "calibrate", "--upload_model", model], down), 2,
           ["--scheme or --recipe"], absent=["UNAVAILABLE"])
    recipe = os.path.join(work, "r.yaml")
    with open(recipe, "w") as f:
        f.write("quant_stage: {}\n")
    expect("calibrate --scheme with --recipe",
           run([lowbit, "calibrate", "--upload_model", model, "--scheme", "W8A8", "--recipe", recipe, "--dataset", "d"],
               down), 2, ["--scheme or --recipe, not both"])
    expect("calibrate --data with --dataset",
           run([lowbit, "calibrate", "--model", "m", "--scheme", "W8A8", "--data", recipe, "--dataset", "d"], down), 2,
           ["--data or --dataset, not both"])
    expect("calibrate --model with --upload_model",
           run([lowbit, "calibrate", "--model", "m", "--upload_model", model, "--scheme", "W8A8", "--dataset", "d"],
               down), 2, ["not both"])
    expect("calibrate --data missing",
           run([lowbit, "calibrate", "--model", "m", "--scheme", "W8A8", "--data", os.path.join(work, "none.jsonl")],
               down), 2, ["--data", "none.jsonl"], absent=["UNAVAILABLE"])
    expect("calibrate --recipe missing",
           run([lowbit, "calibrate", "--model", "m", "--recipe", os.path.join(work, "none.yaml"), "--dataset", "d"],
               down), 2, ["--recipe", "none.yaml"])
    expect("upload-model / (no name)", run([lowbit, "upload-model", "/"], down), 2, ["give NAME"])
    expect("upload-model DIR ..", run([lowbit, "upload-model", model, ".."], down), 2, ["'..'"])
    expect("fetch --out with --verify_only", run([lowbit, "fetch", "j", "--out", "x", "--verify_only"], down), 2,
           ["usage: lowbit fetch"])
    expect("demo --runtime (demo starts its own)", run([lowbit, "demo", "--out", b1, "--runtime", "10.0.0.1:50052"]), 2,
           ["--runtime is not used", "starts its own services"])
    expect("gemm --state (a flag of jobs)", run([lowbit, "gemm", "--name", "a", "--layer", "b", "--state", "running"],
                                                down), 2, ["--state is a flag of lowbit jobs, not of gemm"])
    expect("demo --demo_schemes W3A5", run([lowbit, "demo", "--out", b1, "--demo_schemes", "W3A5"]), 2, ["W3A5"])
    check("demo with a bad flag writes nothing", not os.path.exists(b1), b1 + " exists")


def recipe_bin(work):
    """A token .bin without the .idx it needs."""
    path = os.path.join(work, "t.bin")
    with open(path, "wb") as f:
        f.write(b"\0" * 16)
    return path


def tool_dirs(lowbit, work):
    # A directory the tool did not make: refused, the planted files survive.
    for command in ("demo", "bench-rpc"):
        d = os.path.join(work, "precious-" + command)
        os.makedirs(os.path.join(d, "models", "mine"))
        os.makedirs(os.path.join(d, "state"))
        with open(os.path.join(d, "models", "mine", "weights.bin"), "w") as f:
            f.write("important")
        with open(os.path.join(d, "state", "db"), "w") as f:
            f.write("keep")
        before = read_all(d)
        p = run([lowbit, command, "--out", d, "--bench_seconds", "0.1"] if command == "bench-rpc"
                else [lowbit, command, "--out", d], timeout=30)
        expect(command + " --out a directory it did not make", p, 2, ["--out '%s'" % d, "not empty", "models"])
        check(command + ": the planted files survive", read_all(d) == before, str(sorted(read_all(d))))
    # The default directory, run twice: the second run reuses what the first made.
    demo_dir = os.path.join(work, "demo-out")
    for i in (1, 2):
        p = run([lowbit, "demo", "--out", demo_dir, "--demo_schemes", "W8A8", "--demo_samples", "16"], timeout=120)
        expect("demo run %d into its own directory" % i, p, 0, ["| W8A8 |"], stream="stdout")
    check("demo marks its directory", os.path.isfile(os.path.join(demo_dir, ".lowbit-demo")))
    # bench-rpc without a shell: a space and shell syntax in --out are plain characters.
    weird = os.path.join(work, "bench sp;$(touch pwned)")
    p = run([lowbit, "bench-rpc", "--out", weird, "--bench_hidden", "256", "--bench_intermediate", "512",
             "--bench_seconds", "0.1", "--bench_clients", "1", "--bench_latency_calls", "5"], cwd=work, timeout=120)
    expect("bench-rpc --out with a space and $(...)", p, 0, ["LoadModelStream"], stream="stdout")
    check("bench-rpc wrote its report there", os.path.isfile(os.path.join(weird, "bench-rpc.md")))
    check("bench-rpc ran no shell", not os.path.exists(os.path.join(work, "pwned")) and
          not os.path.exists(os.path.join(work, "bench")), str(os.listdir(work)))


def with_calibrator(lowbit, bin_dir, work, model):
    token = "t0ken"
    cal = Calibrator(os.path.join(bin_dir, "calibrator", "lowbit-calibrator"), work, token)
    env = {"LOWBIT_CALIBRATOR": cal.address, "LOWBIT_TOKEN": token}
    try:
        # Default upload names from the normalized path.
        models = os.path.join(work, "models")
        shutil.copytree(model, os.path.join(models, "slashy"))
        shutil.copytree(model, os.path.join(models, "doty"))
        expect("upload-model DIR/ is named after DIR", run([lowbit, "upload-model", models + "/slashy/"], env), 0,
               ["model uploads/slashy"], stream="stdout")
        expect("upload-model . is named after the directory",
               run([lowbit, "upload-model", "."], env, cwd=os.path.join(models, "doty")), 0,
               ["model uploads/doty"], stream="stdout")
        # --timeout_s bounds unary calls only; --stream_timeout_s bounds streams.
        expect("--timeout_s does not bound an upload",
               run([lowbit, "upload-model", model, "unary-deadline", "--timeout_s", "0.001", "--chunk_bytes", "4096"],
                   env), 0, ["unary-deadline"], stream="stdout")
        expect("--stream_timeout_s bounds an upload",
               run([lowbit, "upload-model", model, "stream-deadline", "--stream_timeout_s", "0.001"], env), 1,
               ["DEADLINE_EXCEEDED"])

        tokens = os.path.join(work, "tokens.jsonl")
        subprocess.check_call([os.path.join(bin_dir, "tools", "lowbit-gen-tokens"), "--out", tokens, "--samples=8",
                               "--max_len=24"], stdout=subprocess.DEVNULL)
        p = run([lowbit, "calibrate", "--model", "uploads/slashy", "--scheme", "W8A8", "--algorithm", "rtn", "--data",
                 tokens, "--output_name", "r1"], env, timeout=120)
        expect("calibrate", p, 0)
        m = re.search(r"job (\S+) created", p.stderr)
        if not m or p.returncode != 0:
            check("calibrate printed its job id", False, p.stderr[-600:])
            return
        job = m.group(1)

        # `jobs get`: JSON with the .proto field names, the report inline.
        p = run([lowbit, "jobs", "get", job], env)
        expect("jobs get", p, 0)
        try:
            got = json.loads(p.stdout)
            check("jobs get prints the job as JSON", got.get("id") == job and got.get("state") == "JOB_STATE_SUCCEEDED"
                  and isinstance(got.get("report"), dict) and "eval" in got["report"], p.stdout[:600])
        except ValueError as e:
            check("jobs get prints the job as JSON", False, "%s: %s" % (e, p.stdout[:600]))
        expect("jobs list with fetch's --out", run([lowbit, "jobs", "list", "--out", "x"], env), 2,
               ["--out is a flag of lowbit bench-rpc / demo / fetch, not of jobs"])
        # A job that fails: calibrate and jobs watch both say why.
        nothing = os.path.join(SOURCE_DIR, "tests", "fixtures", "calib", "matches_nothing.yaml")
        p = run([lowbit, "calibrate", "--model", "uploads/slashy", "--recipe", nothing, "--data", tokens], env,
                timeout=120)
        expect("calibrate of a recipe that matches nothing", p, 1, ["FAILED: INVALID_ARGUMENT", "match no"])
        m = re.search(r"job (\S+) created", p.stderr)
        if m:
            expect("jobs watch of the failed job says why", run([lowbit, "jobs", "watch", m.group(1)], env), 1,
                   ["job %s FAILED: INVALID_ARGUMENT" % m.group(1), "match no"])
            # jobs retry follows the job like calibrate: it fails again, the same way, from the start.
            expect("jobs retry follows the job to its end", run([lowbit, "jobs", "retry", m.group(1)], env, timeout=120),
                   1, ["job %s queued again (retry 1, from the start)" % m.group(1),
                       "job %s FAILED: INVALID_ARGUMENT" % m.group(1), "match no"])

        f1 = os.path.join(work, "f1")
        expect("fetch into a new directory", run([lowbit, "fetch", job, "--out", f1], env), 0, ["fetched"],
               stream="stdout")
        first = read_all(f1)
        expect("fetch again into the same directory", run([lowbit, "fetch", job, "--out", f1], env), 0)
        check("the re-fetch equals the first", read_all(f1) == first)
        stale = os.path.join(f1, "model.safetensors.tmp.%d" % dead_pid())
        with open(stale, "w") as f:
            f.write("partial")
        expect("fetch over a stale temp file", run([lowbit, "fetch", job, "--out", f1], env), 0)
        check("the stale temp file is gone", not os.path.exists(stale) and read_all(f1) == first,
              str(sorted(os.listdir(f1))))
        with open(os.path.join(f1, "tokenizer.json"), "w") as f:
            f.write("{\"another\": \"model\"}")
        before = read_all(f1)
        expect("fetch into a directory with a foreign file", run([lowbit, "fetch", job, "--out", f1], env), 2,
               ["--out '%s'" % f1, "'tokenizer.json'"])
        check("the foreign directory is unchanged", read_all(f1) == before)
        # A model directory (config.json, model.safetensors: names the result has too).
        mine = os.path.join(work, "mine")
        shutil.copytree(model, mine)
        before = read_all(mine)
        expect("fetch into a model directory", run([lowbit, "fetch", job, "--out", mine], env), 2,
               ["--out '%s'" % mine, "no report.json"])
        check("the model directory is unchanged", read_all(mine) == before)
        nope = os.path.join(work, "f-nope")
        expect("fetch of a missing job", run([lowbit, "fetch", "no-such-job", "--out", nope + "/a/b/"], env), 1,
               ["NOT_FOUND"])
        check("a failed fetch leaves no directory", not os.path.exists(nope), str(os.listdir(work)))
        expect("uploads lists the uploaded models", run([lowbit, "uploads"], env), 0,
               ["uploads/slashy", "uploads/doty"], stream="stdout")
        expect("uploads delete of an uploaded model", run([lowbit, "uploads", "delete", "model", "doty"], env), 0,
               ["deleted model doty"], stream="stdout")
        expect("uploads delete of it again", run([lowbit, "uploads", "delete", "model", "doty"], env), 1,
               ["NOT_FOUND", "doty"])
        expect("uploads after the delete", run([lowbit, "uploads", "list"], env), 0, ["uploads/slashy"],
               stream="stdout", absent=["uploads/doty"])
    finally:
        cal.stop()


def interrupt(lowbit, bin_dir, work, model):
    # Ctrl-C while following a job ends the CLI (as interrupted), not the job; the note says how
    # to find it again.
    token = "t0ken"
    cal = Calibrator(os.path.join(bin_dir, "calibrator", "lowbit-calibrator"), work, token, state="state-int",
                     env={"LOWBIT_CALIBRATOR_TEST_LAYER_PAUSE_MS": "2000"})
    env = dict(os.environ, LOWBIT_CALIBRATOR=cal.address, LOWBIT_TOKEN=token)
    try:
        tokens = os.path.join(work, "tokens.jsonl")
        p = subprocess.Popen([lowbit, "calibrate", "--upload_model", model, "--scheme", "W8A8", "--algorithm", "rtn",
                              "--data", tokens], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = p.stderr.readline()
        m = re.search(r"job (\S+) created", line)
        check("interrupt: calibrate printed its job id", m is not None, line)
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
        check("interrupt: calibrate ends as interrupted", p.returncode == -signal.SIGINT, "status %s" % p.returncode)
        if m:
            job = m.group(1)
            check("interrupt: the note names the job and how to follow or stop it",
                  "job %s goes on" % job in err and "lowbit jobs watch %s" % job in err and
                  "lowbit jobs cancel %s" % job in err, err[-600:])
            p = run([lowbit, "jobs", "get", job], env)
            check("interrupt: the job goes on", '"JOB_STATE_RUNNING"' in p.stdout or '"JOB_STATE_QUEUED"' in p.stdout,
                  p.stdout[:400] + p.stderr[-400:])
            expect("interrupt: jobs cancel", run([lowbit, "jobs", "cancel", job], env), 0)
            expect("jobs watch of the cancelled job", run([lowbit, "jobs", "watch", job], env, timeout=60), 1,
                   ["CANCELLED"])
            expect("jobs retry --detach of the cancelled job queues it again",
                   run([lowbit, "jobs", "retry", job, "--detach"], env), 0, [job], stream="stdout")
            expect("jobs retry of a job that is not failed or cancelled", run([lowbit, "jobs", "retry", job], env),
                   1, ["FAILED_PRECONDITION", "only a failed or cancelled job can be retried"])
            expect("jobs cancel of the retried job", run([lowbit, "jobs", "cancel", job], env), 0)
            expect("jobs watch of the retried job, cancelled", run([lowbit, "jobs", "watch", job], env, timeout=60),
                   1, ["CANCELLED"])
            expect("jobs delete of the cancelled job", run([lowbit, "jobs", "delete", job], env), 0,
                   ["deleted %s (CANCELLED)" % job], stream="stdout")
            expect("jobs get of the deleted job", run([lowbit, "jobs", "get", job], env), 1, ["NOT_FOUND", job])
    finally:
        cal.stop()


def demo_sigterm(lowbit, work):
    out = os.path.join(work, "demo-sig")
    env = dict(os.environ)
    env["LOWBIT_CALIBRATOR_TEST_LAYER_PAUSE_MS"] = "3000"  # the first job runs for a while
    demo = subprocess.Popen([lowbit, "demo", "--out", out, "--demo_schemes", "W8A8", "--demo_samples", "16"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    kids = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            line = demo.stdout.readline()
            if not line or line.startswith("calibrator on "):
                break
        kids = children_of(demo.pid)
        check("demo runs two services", len(kids) == 2, "children %s" % kids)
        for k in kids:
            with open("/proc/%d/cmdline" % k, "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
            with open("/proc/%d/environ" % k, "rb") as f:
                environ = f.read().decode(errors="replace").split("\0")
            check("service %d: no token in argv" % k, not any("auth_token" in a for a in argv), " ".join(argv))
            check("service %d: token in its environment" % k,
                  any(re.match(r"LOWBIT_(RUNTIME|CALIBRATOR)_AUTH_TOKEN=.+", e) for e in environ))
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=30)
        deadline = time.time() + 20
        while time.time() < deadline and any(alive(k) for k in kids):
            time.sleep(0.1)
        left = [k for k in kids if alive(k)]
        check("SIGTERM to demo stops both services", not left, "still running: %s" % left)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for k in kids:
            if alive(k):
                try:
                    os.kill(k, signal.SIGKILL)
                except OSError:
                    pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    work = os.path.abspath(a.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "outputs"))
    os.makedirs(os.path.join(work, "models"))
    a.bin = os.path.abspath(a.bin)
    lowbit = os.path.join(a.bin, "cli", "lowbit")
    model = os.path.join(work, "tiny")
    subprocess.check_call([os.path.join(a.bin, "tools", "lowbit-gen-model"), "--out", model, "--hidden=64",
                           "--intermediate=128", "--heads=2", "--kv_heads=1", "--layers=2"], stdout=subprocess.DEVNULL)
    t0 = time.time()
    usage_errors(lowbit, work, model)
    tool_dirs(lowbit, work)
    with_calibrator(lowbit, a.bin, work, model)
    interrupt(lowbit, a.bin, work, model)
    demo_sigterm(lowbit, work)
    print("%d failure(s) in %.1f s" % (len(failures), time.time() - t0))
    if failures:
        print("failed: " + ", ".join(failures))
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
