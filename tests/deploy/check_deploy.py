#!/usr/bin/python3
"""Static checks of what Lowbit deploys with (no Docker engine or cluster runs here).

  manifests   deploy/k8s: every resource against the Kubernetes OpenAPI schema of a pinned
              version (kubernetes-validate --strict), then cross-references the schema cannot
              see: kustomization resources exist; Services select pods that exist and name their
              ports; probes are native gRPC on a declared port; requests set; the runtime asks
              for whole GPUs; non-root; ConfigMap / Secret / PVC references resolve; the HPA's
              target exists and its metrics are served by the prometheus-adapter rules.
  docker      docker/: hadolint on every Dockerfile; base images pinned (no `latest`); final
              stages non-root with a HEALTHCHECK and EXPOSE; apt pins in the runtime stage are
              installable (in the apt lists) and cover every shared library the given binaries
              link (differences from the versions installed here are printed); compose.yaml refers to Dockerfiles, targets and
              the nginx template that exist and fills every placeholder; the two
              Dockerfile-specific .dockerignore files agree.
  collect-libs  docker/collect-libs.sh on the given binaries: every non-base library found and
              copied; the binaries start with only the copied set on LD_LIBRARY_PATH.

usage: check_deploy.py {manifests|docker|collect-libs} --repo DIR [--pytools DIR] [BINARY...]
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

K8S_VERSION = "1.33.0"  # native gRPC probes GA 1.27; Indexed Job backoffLimitPerIndex GA 1.33


SUBCOMMANDS = {"lowbit-calibrator": ("calibrate", "serve"), "lowbit-runtime": ("serve",)}


def load_yaml_docs(path):
    import yaml
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


class Checker:
    def __init__(self):
        self.errors = []
        self.passed = 0

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.errors.append(what)

    def finish(self, name):
        for e in self.errors:
            print("FAIL: " + e)
        print("%s: %d checks passed, %d failed" % (name, self.passed, len(self.errors)))
        return 1 if self.errors else 0


def need_tool(pytools, name):
    path = os.path.join(pytools, "bin", name)
    if not os.access(path, os.X_OK):
        print("FAIL: %s is not installed in %s: run scripts/setup.sh" % (name, pytools))
        sys.exit(1)
    return path


def pod_spec(obj):
    kind = obj.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return obj["spec"]["template"]["spec"], obj["spec"]["template"]["metadata"].get("labels", {})
    return None, None


def check_manifests(repo, pytools):
    c = Checker()
    kdir = os.path.join(repo, "deploy", "k8s")
    files = sorted(glob.glob(os.path.join(kdir, "**", "*.yaml"), recursive=True))
    kust = os.path.join(kdir, "kustomization.yaml")
    resources = [f for f in files if f != kust]
    tool = need_tool(pytools, "kubernetes-validate")
    env = dict(os.environ, PYTHONPATH=pytools)
    out = subprocess.run(["/usr/bin/python3", tool, "-k", K8S_VERSION, "--strict"] + resources,
                         capture_output=True, text=True, env=env)
    print(out.stdout + out.stderr, end="")
    c.check(out.returncode == 0, "kubernetes-validate -k %s --strict exited %d" % (K8S_VERSION, out.returncode))
    c.check(not re.search(r"^(ERROR|WARN)", out.stdout + out.stderr, re.M), "kubernetes-validate reported errors/warnings")

    sys.path.insert(0, pytools)
    objs = []
    for f in resources:
        for d in load_yaml_docs(f):
            objs.append((os.path.relpath(f, kdir), d))
    by_kind = {}
    for f, o in objs:
        by_kind.setdefault(o["kind"], []).append((f, o))

    k = load_yaml_docs(kust)[0]
    for r in k["resources"]:
        c.check(os.path.exists(os.path.join(kdir, r)), "kustomization resource %s missing" % r)
    listed = set(k["resources"])
    for f, o in objs:
        if f not in listed:
            c.check(f in ("secret.example.yaml", "jobs/calibrate-job.yaml", "prometheus-adapter/rules.yaml"),
                    "%s is neither in kustomization.yaml nor a known out-of-band file" % f)
    kimages = {i["name"] for i in k.get("images", [])}

    configmaps = {o["metadata"]["name"]: o for _, o in by_kind.get("ConfigMap", [])}
    secrets = {o["metadata"]["name"]: o for _, o in by_kind.get("Secret", [])}
    pvcs = {o["metadata"]["name"] for _, o in by_kind.get("PersistentVolumeClaim", [])}
    workloads = {}
    for f, o in objs:
        spec, labels = pod_spec(o)
        if spec is None:
            continue
        name = o["metadata"]["name"]
        workloads[(o["kind"], name)] = (spec, labels)
        sc = spec.get("securityContext", {})
        c.check(sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0, "%s: pod not pinned non-root" % name)
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        for v in vols.values():
            if "persistentVolumeClaim" in v:
                c.check(v["persistentVolumeClaim"]["claimName"] in pvcs,
                        "%s: PVC %s not defined" % (name, v["persistentVolumeClaim"]["claimName"]))
        for ct in spec["containers"]:
            cname = "%s/%s" % (name, ct["name"])
            # The services' binaries take a subcommand first (without it they print usage, exit 2).
            binary = os.path.basename((ct.get("command") or [""])[0])
            if binary in SUBCOMMANDS:
                args = ct.get("args", [])
                c.check(bool(args) and args[0] in SUBCOMMANDS[binary],
                        "%s: %s needs its subcommand (%s) as the first arg, got %s"
                        % (cname, binary, " or ".join(SUBCOMMANDS[binary]), args[:1]))
            image = ct["image"].rsplit(":", 1)
            c.check(len(image) == 2 and image[1] not in ("", "latest"), "%s: image %s not pinned" % (cname, ct["image"]))
            c.check(image[0] in kimages, "%s: image %s not in kustomization images" % (cname, image[0]))
            res = ct.get("resources", {})
            c.check("cpu" in res.get("requests", {}) and "memory" in res.get("requests", {}),
                    "%s: cpu/memory requests missing" % cname)
            c.check("memory" in res.get("limits", {}), "%s: memory limit missing" % cname)
            csc = ct.get("securityContext", {})
            c.check(csc.get("allowPrivilegeEscalation") is False and csc.get("capabilities", {}).get("drop") == ["ALL"],
                    "%s: privilege escalation / capabilities not locked down" % cname)
            for m in ct.get("volumeMounts", []):
                c.check(m["name"] in vols, "%s: mount of undefined volume %s" % (cname, m["name"]))
            for e in ct.get("env", []):
                ref = e.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    r = ref["configMapKeyRef"]
                    c.check(r["name"] in configmaps and r["key"] in configmaps[r["name"]]["data"],
                            "%s: ConfigMap key %s/%s missing" % (cname, r["name"], r["key"]))
                if "secretKeyRef" in ref:
                    r = ref["secretKeyRef"]
                    s = secrets.get(r["name"], {})
                    c.check(r["key"] in s.get("stringData", {}) or r["key"] in s.get("data", {}),
                            "%s: Secret key %s/%s missing" % (cname, r["name"], r["key"]))
            for e in ct.get("envFrom", []):
                if "configMapRef" in e:
                    c.check(e["configMapRef"]["name"] in configmaps, "%s: envFrom ConfigMap missing" % cname)
            # $(VAR) in args must be a declared env var (Kubernetes leaves unknown ones verbatim)
            declared = {e["name"] for e in ct.get("env", [])}
            for e in ct.get("envFrom", []):
                if "configMapRef" in e:
                    declared |= set(configmaps.get(e["configMapRef"]["name"], {}).get("data", {}))
            for arg in ct.get("args", []):
                for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
                    c.check(var in declared, "%s: $(%s) in args is not declared" % (cname, var))
            if o["kind"] != "Deployment":
                continue
            ports = {p["name"]: p["containerPort"] for p in ct.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                p = ct.get(probe)
                c.check(p is not None and "grpc" in p, "%s: %s is not a native gRPC probe" % (cname, probe))
                if p and "grpc" in p:
                    c.check(p["grpc"]["port"] == ports.get("grpc"), "%s: %s port is not the grpc port" % (cname, probe))
            if "runtime" in name:
                gpu_req = res.get("requests", {}).get("nvidia.com/gpu")
                gpu_lim = res.get("limits", {}).get("nvidia.com/gpu")
                c.check(gpu_lim is not None and gpu_req == gpu_lim and int(gpu_lim) >= 1,
                        "%s: nvidia.com/gpu requests must equal limits (whole GPUs)" % cname)
                c.check("--backend=cuda" in ct.get("args", []), "%s: runtime not pinned to the cuda backend" % cname)

    for f, svc in by_kind.get("Service", []):
        sel = svc["spec"]["selector"]
        matches = [(k2, spec) for k2, (spec, labels) in workloads.items()
                   if k2[0] == "Deployment" and all(labels.get(a) == b for a, b in sel.items())]
        c.check(len(matches) == 1, "Service %s selects %d Deployments" % (svc["metadata"]["name"], len(matches)))
        for (_, spec) in matches:
            names = {p["name"] for ct in spec["containers"] for p in ct.get("ports", [])}
            for p in svc["spec"]["ports"]:
                c.check(p["targetPort"] in names, "Service %s: targetPort %s not a container port name"
                        % (svc["metadata"]["name"], p["targetPort"]))

    adapter = by_kind.get("ConfigMap", [])
    served = set()
    for f, cm in adapter:
        if cm["metadata"]["name"] == "prometheus-adapter":
            import yaml
            for rule in yaml.safe_load(cm["data"]["config.yaml"])["rules"]:
                served.add(rule["name"]["as"])
                c.check("<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"],
                        "adapter rule %s does not group by the HPA's objects" % rule["name"]["as"])
    for f, hpa in by_kind.get("HorizontalPodAutoscaler", []):
        t = hpa["spec"]["scaleTargetRef"]
        c.check((t["kind"], t["name"]) in workloads, "HPA target %s/%s missing" % (t["kind"], t["name"]))
        for m in hpa["spec"]["metrics"]:
            if m["type"] == "Pods":
                c.check(m["pods"]["metric"]["name"] in served,
                        "HPA metric %s has no prometheus-adapter rule" % m["pods"]["metric"]["name"])
    # Metric names the adapter rules read must be ones the services export.
    sources = ""
    for d in ("runtime", "rpc", "calibrator"):
        for src in glob.glob(os.path.join(repo, d, "**", "*.cc"), recursive=True):
            sources += open(src, errors="replace").read()
    for f, cm in adapter:
        if cm["metadata"]["name"] == "prometheus-adapter":
            for metric in set(re.findall(r"(lowbit_[a-z_]+?)(?:_count|_sum)?\{", cm["data"]["config.yaml"])):
                c.check('"%s"' % metric in sources, "adapter reads %s, which no service exports" % metric)
    return c.finish("manifests")


def dockerfile_stages(text):
    """[(base, name, [instruction lines])] with continuation lines joined."""
    lines = re.sub(r"\\\n", " ", text).splitlines()
    stages = []
    for line in lines:
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", s, re.I)
        if m:
            stages.append([m.group(1), m.group(2), []])
        elif stages:
            stages[-1][2].append(s)
    return stages


def check_docker(repo, pytools, binaries):
    c = Checker()
    ddir = os.path.join(repo, "docker")
    dockerfiles = sorted(f for f in glob.glob(os.path.join(ddir, "Dockerfile.*")) if not f.endswith(".dockerignore"))
    c.check(len(dockerfiles) >= 2, "Dockerfiles missing")
    hadolint = need_tool(pytools, "hadolint")
    ver = subprocess.run([hadolint, "--version"], capture_output=True, text=True).stdout.strip()
    out = subprocess.run([hadolint, "--failure-threshold", "info"] + dockerfiles, capture_output=True, text=True)
    print("%s on %s: %s" % (ver, ", ".join(os.path.basename(d) for d in dockerfiles),
                            (out.stdout + out.stderr).strip() or "no findings"))
    c.check(out.returncode == 0, "hadolint found issues")

    targets = {}
    for df in dockerfiles:
        text = open(df).read()
        args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
        stages = dockerfile_stages(text)
        names = {s[1] for s in stages if s[1]}
        targets[os.path.basename(df)] = names
        for base, name, instrs in stages:
            resolved = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), base)
            if resolved in names:
                continue
            c.check(":" in resolved and not resolved.endswith(":latest") and re.search(r":[^:]*\d", resolved),
                    "%s: base %s not pinned to an exact tag" % (os.path.basename(df), resolved))
        finals = [s for s in stages if s[1] and not s[1] in ("build", "cuda-toolkit", "cuda-base")]
        c.check(finals, "%s: no final stage" % df)
        for base, name, instrs in finals:
            where = "%s[%s]" % (os.path.basename(df), name)
            user = [i for i in instrs if i.upper().startswith("USER ")]
            c.check(user and not re.match(r"USER\s+(root|0)\b", user[-1], re.I), "%s: not non-root" % where)
            hc = [i for i in instrs if i.upper().startswith("HEALTHCHECK ")]
            c.check(hc and '"health"' in hc[-1], "%s: no HEALTHCHECK via `lowbit health`" % where)
            c.check(any(i.upper().startswith("EXPOSE ") for i in instrs), "%s: no EXPOSE" % where)
        # apt pins of the Debian runtime stage: what is installed here, and enough for the binaries
        for base, name, instrs in stages:
            pins = {}
            for i in instrs:
                if "apt-get install" in i:
                    for spec in re.findall(r"\s([a-z0-9][a-z0-9.+-]+)=(\S+)", i):
                        pins[spec[0]] = spec[1]
            if not pins or name == "build":
                continue
            # The pins must be installable (in this machine's apt lists, as `docker build`'s
            # apt-get will need them); differences from what the tests ran with are reported.
            avail = {}
            out = subprocess.run(["apt-cache", "madison"] + sorted(pins), capture_output=True, text=True).stdout
            for l in out.splitlines():
                f = [x.strip() for x in l.split("|")]
                if len(f) >= 3:
                    avail.setdefault(f[0], set()).add(f[1])
            installed = {}
            out = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Version}\n"] + sorted(pins),
                                 capture_output=True, text=True).stdout
            for l in out.splitlines():
                if " " in l:
                    installed[l.split()[0]] = l.split()[1]
            for pkg, ver_ in sorted(pins.items()):
                c.check(ver_ in avail.get(pkg, ()), "%s[%s]: %s=%s is not in the apt lists (available: %s)"
                        % (os.path.basename(df), name, pkg, ver_, ", ".join(sorted(avail.get(pkg, ()))) or "none"))
                if installed.get(pkg) != ver_:
                    print("note: %s[%s]: pins %s=%s, this machine has %s"
                          % (os.path.basename(df), name, pkg, ver_, installed.get(pkg, "none")))
            needed = set()
            libs = {}  # soname -> candidate paths (ldd's, the real one, the other side of usrmerge)
            for b in binaries:
                if "calibrator" not in name or os.path.basename(b) == "lowbit-runtime":
                    continue
                for line in subprocess.run(["ldd", b], capture_output=True, text=True).stdout.splitlines():
                    parts = line.split()
                    if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("/"):
                        cands = {parts[2], os.path.realpath(parts[2])}
                        for cnd in list(cands):
                            cands.add(cnd[4:] if cnd.startswith("/usr/lib/") else "/usr" + cnd)
                        libs[parts[0]] = cands
            if libs:
                allpaths = sorted(set().union(*libs.values()))
                owners = {}
                out = subprocess.run(["dpkg", "-S"] + allpaths, capture_output=True, text=True).stdout
                for line in out.splitlines():
                    pkg, _, path = line.partition(": ")
                    owners[path.strip()] = pkg.split(":")[0]
                for soname, cands in libs.items():
                    found = [owners[c] for c in cands if c in owners]
                    needed.add(found[0] if found else "?" + soname)
            base_has = {"libc6", "libgcc-s1", "zlib1g", "libzstd1", "liblzma5", "libcrypt1"}
            for pkg in sorted(needed - base_has):
                c.check(pkg in pins, "%s[%s]: binaries link %s, which is not installed"
                        % (os.path.basename(df), name, pkg))
            if needed:
                print("%s[%s]: %d pinned packages cover the %d packages the binaries link"
                      % (os.path.basename(df), name, len(pins), len(needed - base_has)))

    import yaml
    compose = yaml.safe_load(open(os.path.join(ddir, "compose.yaml")))
    gpu = yaml.safe_load(open(os.path.join(ddir, "compose.gpu.yaml")))
    for sname, svc in compose["services"].items():
        b = svc.get("build")
        if b:
            df = os.path.normpath(os.path.join(ddir, b["context"], b["dockerfile"]))
            c.check(os.path.exists(df), "compose %s: %s missing" % (sname, df))
            c.check(b.get("target") in targets.get(os.path.basename(df), ()),
                    "compose %s: target %s not in %s" % (sname, b.get("target"), df))
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("./"):
                c.check(os.path.exists(os.path.join(ddir, src)), "compose %s: %s missing" % (sname, src))
                if src.endswith(".template"):
                    placeholders = set(re.findall(r"\$\{(\w+)\}", open(os.path.join(ddir, src)).read()))
                    c.check(placeholders and placeholders <= set(svc.get("environment", {})),
                            "compose %s: template placeholders %s not all set" % (sname, placeholders))
    c.check(set(gpu["services"]) <= set(compose["services"]), "compose.gpu.yaml overrides an unknown service")
    ign = [open(os.path.join(ddir, f)).read().split("\n", 2)[2] for f in
           ("Dockerfile.calibrator.dockerignore", "Dockerfile.cuda.dockerignore")]
    c.check(ign[0] == ign[1], "the two .dockerignore files differ")
    for pat in (".git", "build-*", ".pytools"):
        c.check(pat in ign[0].split(), ".dockerignore does not exclude %s" % pat)
    return c.finish("docker")


def check_collect_libs(repo, binaries):
    c = Checker()
    script = os.path.join(repo, "docker", "collect-libs.sh")
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run(["bash", script, d] + binaries, capture_output=True, text=True)
        c.check(out.returncode == 0, "collect-libs.sh exited %d: %s" % (out.returncode, out.stderr))
        copied = set(os.listdir(d))
        c.check(any(n.startswith("libgrpc++") for n in copied), "libgrpc++ not collected")
        c.check(not any(re.match(r"lib(c|m|stdc\+\+|gcc_s|cudart|cublas)\.so", n) for n in copied),
                "a base-image library was collected: %s" % sorted(copied))
        for b in binaries:
            libs = [l.split()[0] for l in subprocess.run(["ldd", b], capture_output=True, text=True).stdout.splitlines()
                    if "=>" in l]
            skipped = [n for n in libs if n not in copied]
            for n in skipped:
                c.check(re.match(r"(ld-linux|lib(c|m|dl|pthread|rt|resolv|stdc\+\+|gcc_s|z|cuda|cudart|cublas|cublasLt)"
                                 r")\.so", n), "%s: %s neither collected nor a base-image library" % (b, n))
            # As in the image (LD_LIBRARY_PATH=/opt/lowbit/lib): every library that is not the
            # base image's must resolve to a copy, transitively (ldd follows the whole tree).
            env = {"LD_LIBRARY_PATH": d, "PATH": "/usr/bin:/bin"}
            tree = subprocess.run(["ldd", b], capture_output=True, text=True, env=env).stdout
            for line in tree.splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[1] == "=>" and parts[0] in copied:
                    c.check(parts[2].startswith(d + "/"), "%s: %s resolves to %s, not the copy" % (b, parts[0], parts[2]))
            ok = subprocess.run([b, "--help"], capture_output=True, text=True, env=env)
            c.check(ok.returncode != 127 and "error while loading shared libraries" not in ok.stderr,
                    "%s does not start with the collected libraries: %s" % (b, ok.stderr[-300:]))
        print("collect-libs: %d libraries for %s" % (len(copied), ", ".join(os.path.basename(b) for b in binaries)))
    return c.finish("collect-libs")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("manifests", "docker", "collect-libs"))
    ap.add_argument("--repo", required=True)
    ap.add_argument("--pytools")
    ap.add_argument("binaries", nargs="*")
    a = ap.parse_intermixed_args()
    pytools = a.pytools or os.path.join(a.repo, ".pytools")
    if os.path.isdir(pytools):
        sys.path.insert(0, pytools)  # PyYAML
    if a.what == "manifests":
        return check_manifests(a.repo, pytools)
    if a.what == "docker":
        return check_docker(a.repo, pytools, a.binaries)
    return check_collect_libs(a.repo, a.binaries)


if __name__ == "__main__":
    sys.exit(main())
