"""Asserts that one calibration's held-out KL divergence is lower than another's, and that
both reports are complete (modules with loss and time, eval metrics in range)."""
import argparse
import json
import math
import sys


def load(path):
    with open(path) as f:
        r = json.load(f)
    problems = []
    if not r.get("modules"):
        problems.append("no modules")
    for m in r.get("modules", []):
        for key in ("module", "algorithm", "loss", "seconds"):
            if key not in m:
                problems.append(f"module entry without {key}: {m}")
    ev = r.get("eval")
    if ev is None:
        problems.append("no eval section")
    else:
        if not (ev["tokens"] > 0):
            problems.append("eval over zero tokens")
        if not (0.0 <= ev["kl_mean"] <= ev["kl_p99"] or ev["kl_p99"] < ev["kl_mean"] < 1e-12):
            problems.append(f"kl_mean {ev['kl_mean']} / kl_p99 {ev['kl_p99']} inconsistent")
        if not (0.0 <= ev["top1_agreement"] <= 1.0):
            problems.append(f"top1_agreement {ev['top1_agreement']} outside [0, 1]")
        for key in ("perplexity_original", "perplexity_quantized"):
            if not (math.isfinite(ev[key]) and ev[key] >= 1.0):
                problems.append(f"{key} {ev[key]} is not a perplexity")
    if problems:
        sys.exit(f"{path}: " + "; ".join(problems))
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lower", required=True)
    ap.add_argument("--than", required=True)
    args = ap.parse_args()
    a, b = load(args.lower), load(args.than)
    ka, kb = a["eval"]["kl_mean"], b["eval"]["kl_mean"]
    print(f"KL mean {ka:.6g} ({a['algorithm']}) vs {kb:.6g} ({b['algorithm']}); "
          f"top-1 {a['eval']['top1_agreement']:.4f} vs {b['eval']['top1_agreement']:.4f}")
    if not ka < kb:
        sys.exit(f"expected KL {ka} < {kb}")


if __name__ == "__main__":
    main()
