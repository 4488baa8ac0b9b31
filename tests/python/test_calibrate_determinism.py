"""The same tokens give the same checkpoint: calibrating from JSONL and from the raw .bin/.idx
format, and calibrating twice, must produce byte-identical safetensors and configs.

    test_calibrate_determinism.py BIN_DIR WORK_DIR
"""
import filecmp
import os
import shutil
import subprocess
import sys


def main():
    bin_dir, work = sys.argv[1], sys.argv[2]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    tool = lambda *p: os.path.join(bin_dir, *p)
    subprocess.run([tool("tools", "lowbit-gen-model"), "--out", f"{work}/model"], check=True)
    for path in (f"{work}/t.jsonl", f"{work}/t.bin"):
        subprocess.run([tool("tools", "lowbit-gen-tokens"), "--out", path, "--samples", "24", "--seed", "3"], check=True)
    runs = {"jsonl": f"{work}/t.jsonl", "bin": f"{work}/t.bin", "jsonl_again": f"{work}/t.jsonl"}
    for name, data in runs.items():
        subprocess.run([tool("calibrator", "lowbit-calibrator"), "calibrate", "--quiet", "--model", f"{work}/model",
                        "--data", data, "--recipe", os.path.join(os.path.dirname(__file__), "..", "fixtures",
                                                                 "recipes", "int8_w8a8.yaml"),
                        "--out", f"{work}/{name}"], check=True, stdout=subprocess.DEVNULL)
    files = sorted(f for f in os.listdir(f"{work}/jsonl") if f.endswith((".safetensors", ".json")) and f != "report.json")
    failures = []
    for other in ("bin", "jsonl_again"):
        _, mismatch, errors = filecmp.cmpfiles(f"{work}/jsonl", f"{work}/{other}", files, shallow=False)
        if mismatch or errors:
            failures.append(f"{other}: differs in {mismatch + errors}")
    print(f"compared {files} across {list(runs)}")
    if failures:
        sys.exit("; ".join(failures))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
