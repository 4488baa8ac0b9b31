"""Bad calibration requests fail with a clear message and leave nothing behind.

    test_calibrate_errors.py BIN_DIR WORK_DIR

For each case: lowbit-calibrator exits non-zero, stderr names the problem, the output
directory does not exist, and the output's parent holds nothing new (no temp directories).
"""
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures", "calib")


def main():
    bin_dir, work = sys.argv[1], sys.argv[2]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    gen = os.path.join(bin_dir, "tools", "lowbit-gen-model")
    calib = os.path.join(bin_dir, "calibrator", "lowbit-calibrator")
    model = os.path.join(work, "model")
    subprocess.run([gen, "--out", model], check=True)
    tokens = os.path.join(work, "tokens.jsonl")
    with open(tokens, "w") as f:
        for i in range(8):
            f.write(json.dumps({"input_ids": [(i * 7 + j) % 512 for j in range(20)]}) + "\n")
    bad_tokens = os.path.join(work, "bad_tokens.jsonl")
    with open(bad_tokens, "w") as f:
        f.write(json.dumps({"input_ids": [1, 2, 3]}) + "\n")
        f.write(json.dumps({"input_ids": [4, 512, 6]}) + "\n")
    # A model directory with its config but a weight missing.
    broken = os.path.join(work, "broken")
    os.makedirs(broken)
    shutil.copy(os.path.join(model, "config.json"), broken)
    with open(os.path.join(broken, "model.safetensors"), "wb") as f:
        header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
        f.write(len(header).to_bytes(8, "little") + header)
    # An unsupported architecture.
    gpt2 = os.path.join(work, "gpt2")
    shutil.copytree(model, gpt2)
    with open(os.path.join(gpt2, "config.json")) as f:
        cfg = json.load(f)
    cfg["architectures"] = ["GPT2LMHeadModel"]
    cfg["model_type"] = "gpt2"
    with open(os.path.join(gpt2, "config.json"), "w") as f:
        json.dump(cfg, f)

    cases = [
        ("missing weight", ["--model", broken, "--data", tokens, "--scheme", "W4A16"], "model.embed_tokens.weight"),
        ("no model", ["--model", os.path.join(work, "nope"), "--data", tokens, "--scheme", "W4A16"], "nope"),
        ("unsupported architecture", ["--model", gpt2, "--data", tokens, "--scheme", "W4A16"], "\"gpt2\" is not supported"),
        ("token id >= vocab", ["--model", model, "--data", bad_tokens, "--scheme", "W4A16",
                               "--heldout_fraction", "0", "--shuffle=false"], "512"),
        ("recipe matches nothing", ["--model", model, "--data", tokens, "--recipe",
                                    os.path.join(FIXTURES, "matches_nothing.yaml")], "match no"),
        ("group size does not divide K", ["--model", model, "--data", tokens, "--recipe",
                                          os.path.join(FIXTURES, "group_96.yaml")], "does not divide"),
        ("unknown scheme", ["--model", model, "--data", tokens, "--scheme", "W3A5"], "W3A5"),
        ("missing data", ["--model", model, "--data", os.path.join(work, "none.jsonl"), "--scheme", "W4A16"],
         "none.jsonl"),
    ]
    failures = 0
    for name, args, needle in cases:
        out = os.path.join(work, "out", name.replace(" ", "_").replace(">=", "ge"))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        before = set(os.listdir(os.path.dirname(out)))
        p = subprocess.run([calib, "calibrate", "--quiet", "--out", out] + args, capture_output=True, text=True)
        after = set(os.listdir(os.path.dirname(out)))
        problems = []
        if p.returncode == 0:
            problems.append("exit status 0")
        if needle not in p.stderr:
            problems.append(f"stderr does not mention {needle!r}")
        if os.path.exists(out):
            problems.append("output directory exists")
        if after != before:
            problems.append(f"left behind {sorted(after - before)}")
        if p.returncode < 0 or p.returncode > 2:
            problems.append(f"exit status {p.returncode} (crash?)")
        status = "ok" if not problems else "FAIL " + "; ".join(problems)
        print(f"{name}: {status}\n    {p.stderr.strip()}")
        failures += bool(problems)
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
