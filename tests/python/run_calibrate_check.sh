#!/usr/bin/env bash
# End to end through the calibration pipeline: generate a synthetic model and tokens, calibrate
# it two ways (A and B), verify both checkpoints with the independent checker (--calibrated:
# GPTQ / SmoothQuant may move weights), and require A's held-out KL divergence (report.json)
# to be lower than B's.
#   run_calibrate_check.sh BIN_DIR WORKDIR EXPECT_SCHEME "A calibrate flags" "B calibrate flags" [gen-model flags...]
# EXPECT_SCHEME is a preset name for the checker, or - for none.
set -euo pipefail
bin=$1 work=$2 expect=$3 a_flags=$4 b_flags=$5
shift 5
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$work" && mkdir -p "$work"
"$bin/tools/lowbit-gen-model" --out "$work/model" "$@"
vocab=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["vocab_size"])' "$work/model/config.json")
"$bin/tools/lowbit-gen-tokens" --out "$work/tokens.jsonl" --vocab "$vocab" --samples 48 --min_len 24 --max_len 64 --seed 7
check_args=()
[ "$expect" != "-" ] && check_args=(--expect-scheme "$expect")
for side in a b; do
  flags=$a_flags
  [ "$side" = b ] && flags=$b_flags
  # shellcheck disable=SC2086
  "$bin/calibrator/lowbit-calibrator" calibrate --model "$work/model" --data "$work/tokens.jsonl" \
    --out "$work/$side" --heldout_fraction 0.25 --quiet $flags
  /usr/bin/python3 "$here/check_checkpoint.py" --original "$work/model" --quantized "$work/$side" --calibrated \
    "${check_args[@]}"
done
/usr/bin/python3 "$here/compare_reports.py" --lower "$work/a/report.json" --than "$work/b/report.json"
rm -rf "$work"
