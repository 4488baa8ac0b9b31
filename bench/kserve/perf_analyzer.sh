#!/usr/bin/env bash
# Triton's own load generator, perf_analyzer (the tritonclient wheel's bin/, in .pytools), on
# lowbit-runtime's KServe v2 service: the view of a Triton user who points their usual tool at the
# runtime. M = 1 BF16 requests (-b 1: ModelConfig makes the rows the batch dim; random data, as
# perf_analyzer makes it) on the one-layer W8A8
# model bench-rpc uses — o_proj (4096², weights stay in L3) and gate_proj (4096 -> 14336, streamed
# from memory) — at concurrency 1 / 8 / 64, on a runtime with dynamic batching and on one without.
# Writes OUT/perf-analyzer.md (a table: infer/s, p50 / p99 latency, the server's own queue and
# compute time per request from ModelStatistics, and the batching lift) and prints it;
# docs/benchmarks.md records a run.
#
#   bash bench/kserve/perf_analyzer.sh [OUT (default /tmp/lowbit-perf-analyzer)]
#
# Environment: BUILD_DIR (default build), HIDDEN / INTERMEDIATE (4096 / 14336), CONCURRENCY
# ("1 8 64"), REQUESTS (per measurement window, default 300), BACKEND (cpu), STABILITY
# (perf_analyzer's --stability-percentage, default 50: its own 10% is rarely reached on a shared VM).
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-/tmp/lowbit-perf-analyzer}"
build="${BUILD_DIR:-build}"
hidden="${HIDDEN:-4096}"
inter="${INTERMEDIATE:-14336}"
read -r -a conc <<< "${CONCURRENCY:-1 8 64}"
requests="${REQUESTS:-300}"
backend="${BACKEND:-cpu}"
stability="${STABILITY:-50}"
pa=.pytools/bin/perf_analyzer
export LD_LIBRARY_PATH=".pytools/nvidia/cuda_runtime/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[[ -x "$pa" ]] || { echo "no $pa: run scripts/setup.sh" >&2; exit 1; }
mkdir -p "$out"
ckpt="$out/checkpoints/bench-w8a8"
if [[ ! -f "$ckpt/config.json" ]]; then
  heads=$((hidden / 128 > 0 ? hidden / 128 : 1))
  "$build/tools/lowbit-gen-model" --out "$out/float" --hidden "$hidden" --intermediate "$inter" --layers 1 \
    --heads "$heads" --kv_heads $((heads / 4 > 0 ? heads / 4 : 1)) --vocab 512 > /dev/null
  "$build/tools/lowbit-rtn" --model "$out/float" --out "$ckpt" --scheme W8A8 > /dev/null
fi

pid=""
trap '[[ -n "$pid" ]] && kill "$pid" 2> /dev/null; wait 2> /dev/null || true' EXIT
start_runtime() {  # batching true|false; sets pid and addr
  local log="$out/runtime-batching-$1.log"
  "$build/runtime/lowbit-runtime" serve --address 127.0.0.1:0 --model_root "$out/checkpoints" --backend "$backend" \
    --batching="$1" --load b=bench-w8a8 > "$log" 2>&1 &
  pid=$!
  addr=""
  for _ in $(seq 1 300); do
    addr="$(grep -ao 'listening on [^ ]*' "$log" | sed 's/listening on //')" || true
    [[ -n "$addr" ]] && return 0
    sleep 0.1
  done
  echo "lowbit-runtime did not start; see $log" >&2
  exit 1
}

# A column of perf_analyzer's CSV by its header name (the server's columns come only when the
# server reports statistics, and shift the others).
col() { awk -F, -v name="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == name) c = i } NR == 2 && c { print $c }' "$1"; }

table="| layer | batching | concurrency | infer/s | p50 latency (µs) | p99 latency (µs) | server queue (µs) | server compute (µs) |
|---|---|---:|---:|---:|---:|---:|---:|"
declare -A rate
for batching in false true; do
  start_runtime "$batching"
  for layer in self_attn.o_proj mlp.gate_proj; do
    for c in "${conc[@]}"; do
      csv="$out/pa-$batching-$layer-$c.csv"
      "$pa" -i grpc -u "$addr" -m "b/model.layers.0.$layer" -b 1 --concurrency-range "$c" \
        --measurement-mode count_windows --measurement-request-count "$requests" \
        --stability-percentage "$stability" -f "$csv" > "$csv.log" 2>&1 ||
        { echo "perf_analyzer failed; see $csv.log" >&2; exit 1; }
      ips="$(col "$csv" "Inferences/Second")"
      # The server's side, per request (ModelStatistics): its wait for a batch, and its GEMM's
      # input + infer + output phases.
      queue="$(col "$csv" "Server Queue")"
      compute="$(($(col "$csv" "Server Compute Input") + $(col "$csv" "Server Compute Infer") + \
        $(col "$csv" "Server Compute Output")))"
      rate[$batching,$layer,$c]=$ips
      table+=$'\n'"| ${layer#*.} | $([[ $batching == true ]] && echo on || echo off) | $c | $ips"
      table+=" | $(col "$csv" "p50 latency") | $(col "$csv" "p99 latency") | $queue | $compute |"
      echo "batching $batching, $layer, concurrency $c: $ips infer/s" >&2
    done
  done
  kill "$pid"
  wait "$pid" 2> /dev/null || true
  pid=""
done
lifts=""
for layer in self_attn.o_proj mlp.gate_proj; do
  for c in "${conc[@]}"; do
    lifts+="$(awk -v a="${rate[true,$layer,$c]}" -v b="${rate[false,$layer,$c]}" -v l="${layer#*.}" -v c="$c" \
      'BEGIN { printf "%s, concurrency %d: batching lifts throughput %.2fx", l, c, a / b }')"$'\n'
  done
done
{
  echo "# perf_analyzer on lowbit-runtime (KServe v2, backend $backend, W8A8, K = $hidden, M = 1 BF16)"
  echo
  echo "$table"
  echo
  echo "$lifts"
} | tee "$out/perf-analyzer.md"
