#!/usr/bin/env bash
# End to end for one scheme: generate a synthetic model, quantize it with lowbit-rtn, and
# verify the checkpoint with the independent Python checker.
#   run_scheme_check.sh GEN_MODEL RTN WORKDIR SCHEME [lowbit-gen-model flags...]
set -euo pipefail
gen=$1 rtn=$2 work=$3 scheme=$4
shift 4
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$work" && mkdir -p "$work"
"$gen" --out "$work/model" "$@"
"$rtn" --model "$work/model" --out "$work/quantized" --scheme "$scheme"
/usr/bin/python3 "$here/check_checkpoint.py" --original "$work/model" --quantized "$work/quantized" \
  --expect-scheme "$scheme"
rm -rf "$work"
