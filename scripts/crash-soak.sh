#!/usr/bin/env bash
# Crash soak: kill -9 a service at random moments, restart it on the same state directory, and
# check that nothing a client was told is done got lost and nothing half-done got in.
#
#   bash scripts/crash-soak.sh calibrator|runtime [ROUNDS (default 10)] [SEED (default 1)]
#
# calibrator: two W8A8 jobs (6 layers, vocabulary 32000: the checkpoint write lasts ≈ 340 ms) on a
#   server that runs one job at a time (the second queues) run once without a kill and are timed;
#   each round starts a fresh state directory, creates the same two jobs and kills the server
#   after a random delay in [0, 1.2 × the reference's time] (a job queued, in SmoothQuant, in any
#   layer, writing its checkpoint, or ended; a third of the kills aimed at a checkpoint write:
#   within 150 ms of a job's "write" step), restarts it — in half the rounds killing it once more
#   at another random moment — and waits for both. A round fails when a job does not succeed, a
#   checkpoint differs from the reference byte for byte, or resume state is left behind.
# runtime: a client loads and unloads models on a runtime with --state_dir (streamed loads with
#   `lowbit load --dir`, path loads, unloads, in a fixed sequence) and the runtime is killed after a
#   random delay; on restart every model whose load the client saw succeed (and did not unload)
#   must be listed, every model it saw unloaded must not be, the op that was in flight may have
#   gone either way; each listed model's GEMM output must equal the reference bit for bit; no
#   `.tmp` copy and no copy the record does not name may be left in the state directory.
# Uses the built binaries (build/, or $BUILD_DIR). The delays come from SEED, so a failing round
# can be replayed; KEEP=1 keeps the work directory. ctest runs a short form (crash_soak_calibrator,
# crash_soak_runtime: tests/integration/CMakeLists.txt); docs/testing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:?usage: crash-soak.sh calibrator|runtime [ROUNDS] [SEED]}"
rounds="${2:-10}"
seed="${3:-1}"
build="${BUILD_DIR:-build}"
lowbit="$build/cli/lowbit"
work="$(mktemp -d /tmp/lowbit-crash-soak-XXXXXX)"
token="soak-$RANDOM$RANDOM"
export LOWBIT_TOKEN="$token"
pid=""
main_shell=$BASHPID
cleanup() {
  # Only the script itself: a background child killed before it exec'ed its command (the `jobs
  # watch` below) can still run this trap, and removed the work directory under a running soak.
  [[ "$BASHPID" == "$main_shell" ]] || return 0
  [[ -n "$pid" ]] && kill -9 "$pid" 2> /dev/null || true
  if [[ "${KEEP:-0}" == 1 ]]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# start STATE_DIR: the service of $mode on a free port, its state under STATE_DIR; sets pid and
# LOWBIT_CALIBRATOR / LOWBIT_RUNTIME. Each start logs to its own STATE_DIR.log.<ns>.
start() {
  local state="$1" log
  log="$state.log.$(date +%s%N)"
  mkdir -p "$state"
  if [[ "$mode" == calibrator ]]; then
    "$build/calibrator/lowbit-calibrator" serve --address 127.0.0.1:0 --state_dir "$state" \
      --model_root "$work/models" --auth_token "$token" --shutdown_grace_ms 200 --max_concurrent_jobs 1 \
      > "$log" 2>&1 &
  else
    "$build/runtime/lowbit-runtime" serve --address 127.0.0.1:0 --state_dir "$state" \
      --model_root "$work/models" --auth_token "$token" --shutdown_grace_ms 200 > "$log" 2>&1 &
  fi
  pid=$!
  for _ in $(seq 1 400); do
    local port
    port="$(grep -ao 'listening on [^ ]*:[0-9]*' "$log" | sed 's/.*://')" || true
    if [[ -n "$port" ]]; then
      export LOWBIT_CALIBRATOR="127.0.0.1:$port" LOWBIT_RUNTIME="127.0.0.1:$port"
      "$lowbit" health --service "$mode" > /dev/null 2>&1 && return 0
    fi
    kill -0 "$pid" 2> /dev/null || { echo "the $mode did not start:"; cat "$log"; return 1; }
    sleep 0.05
  done
  echo "the $mode did not answer health checks in 20 s"
  return 1
}
kill_server() { kill -9 "$pid" 2> /dev/null || true; { wait "$pid"; } 2> /dev/null || true; pid=""; }
sleep_ms() { sleep "$(awk -v d="$1" 'BEGIN { printf "%.3f", d / 1000 }')"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# ---- calibrator -------------------------------------------------------------------------------
calibrator_setup() {
  "$build/tools/lowbit-gen-model" --out "$work/models/m" --hidden 512 --intermediate 1024 --layers 6 \
    --heads 8 --kv_heads 4 --vocab 32000 > /dev/null
  "$build/tools/lowbit-gen-tokens" --out "$work/tokens.jsonl" --samples 64 --min_len 32 --max_len 96 \
    --vocab 512 > /dev/null
}
create_jobs() {  # prints the two jobs' ids (the second queues behind the first)
  "$lowbit" upload-dataset "$work/tokens.jsonl" soak > /dev/null
  for out in out1 out2; do
    "$lowbit" calibrate --model m --dataset soak --scheme W8A8 --output_name "$out" --detach \
      --num_calibration_samples 48 --max_seq_length 96 2> /dev/null
  done
}
job_field() { "$lowbit" jobs get "$1" 2> /dev/null | grep -Eo "\"$2\": \"?[A-Za-z_0-9]*" | sed 's/.*[ "]//'; }
wait_job() {  # wait_job ID: 0 when it succeeded
  local state
  for _ in $(seq 1 1200); do
    state="$(job_field "$1" state)" || true
    [[ "$state" == JOB_STATE_SUCCEEDED ]] && return 0
    [[ "$state" =~ FAILED|CANCELLED ]] && { "$lowbit" jobs get "$1"; return 1; }
    sleep 0.1
  done
  echo "job $1 did not end in 120 s"
  return 1
}
checksum() { (cd "$1" && sha256sum model.safetensors config.json); }

calibrator_soak() {
  calibrator_setup
  echo "reference run (no kill) in $work"
  local t0 ref_ms ids state kills delay delays failed=0
  t0=$(now_ms)
  start "$work/ref"
  ids=($(create_jobs))
  wait_job "${ids[0]}" && wait_job "${ids[1]}"
  ref_ms=$(( $(now_ms) - t0 ))
  kill_server
  checksum "$work/ref/outputs/out1" > "$work/ref.sha256"
  diff <(checksum "$work/ref/outputs/out2") "$work/ref.sha256" > /dev/null ||
    { echo "the two reference jobs (same spec) wrote different checkpoints"; return 1; }
  echo "reference: two jobs in $ref_ms ms (server start included)"
  RANDOM="$seed"
  for r in $(seq 1 "$rounds"); do
    state="$work/round-$r"
    kills=$(( RANDOM % 2 + 1 ))
    start "$state"
    t0=$(now_ms)
    ids=($(create_jobs))
    delays=()
    for k in $(seq 1 "$kills"); do
      if (( RANDOM % 3 == 0 )); then
        # Aimed at the checkpoint write, which is short: follow the first unfinished job's
        # progress stream until its "write" step, then kill within the next 150 ms (this model's
        # checkpoint, 32000 × 512 embeddings and lm_head included, takes ≈ 340 ms to write).
        delay=$(( RANDOM % 150 ))
        delays+=("write+$delay")
        local target="" id
        for id in "${ids[@]}"; do
          [[ "$(job_field "$id" state)" =~ SUCCEEDED|FAILED|CANCELLED ]] || { target="$id"; break; }
        done
        if [[ -n "$target" ]]; then
          # A fresh file per kill: the previous kill's "write" must not end this wait at once.
          : > "$state.watch"
          "$lowbit" jobs watch "$target" > "$state.watch" 2>&1 &  # progress goes to stderr
          local wpid=$!
          until grep -q ' write ' "$state.watch" || ! kill -0 "$wpid" 2> /dev/null; do sleep 0.005; done
          kill "$wpid" 2> /dev/null || true
          { wait "$wpid"; } 2> /dev/null || true
        fi
      else
        delay=$(( RANDOM * RANDOM % (ref_ms * 12 / 10 + 1) ))
        delays+=("$delay")
      fi
      sleep_ms "$delay"
      kill_server
      # What the kill left on disk (the job files), for the log.
      local at=""
      for id in "${ids[@]}"; do
        at+="$(grep -Eo '"(state|phase|layersDone|layers_done)": "?[A-Za-z_0-9]*' "$state/jobs/$id.json" 2> /dev/null |
          sed 's/.*[ "]//' | tr '\n' ' '); " || true
      done
      echo "round $r: kill $k after ${delays[-1]} ms (on disk, state / phase / layers done: ${at%; })"
      start "$state" || { failed=$((failed + 1)); continue 2; }
    done
    local problem="" resumes=""
    for i in 0 1; do
      id="${ids[$i]}"
      if ! wait_job "$id"; then
        problem+=" job $id did not succeed;"
      elif ! diff <(checksum "$state/outputs/out$((i + 1))") "$work/ref.sha256" > /dev/null; then
        problem+=" job $id's checkpoint differs from the reference;"
      elif [[ -e "$state/work/$id" ]]; then
        problem+=" job $id left its resume state behind;"
      fi
      resumes+="$(job_field "$id" resumes) "
    done
    if [[ -n "$problem" ]]; then
      echo "round $r: FAILED —$problem (delays ${delays[*]} ms, seed $seed)"
      failed=$((failed + 1))
    else
      echo "round $r: ok ($(( $(now_ms) - t0 )) ms, $kills kill(s), resumes per job: ${resumes% })"
    fi
    kill_server
  done
  echo "$((rounds - failed)) of $rounds rounds ok (seed $seed)"
  [[ "$failed" == 0 ]]
}

# ---- runtime ----------------------------------------------------------------------------------
# The client's sequence: L = streamed load (`load --dir`), P = path load, U = unload.
ops=("L s1" "P p1" "L s2" "U s1" "L s3" "U p1" "P p2" "U s2" "L s1" "U s3" "P p1" "L s4")
layer=model.layers.1.self_attn.o_proj

runtime_setup() {
  "$build/tools/lowbit-gen-model" --out "$work/src" --hidden 1024 --intermediate 2816 --layers 4 \
    --heads 8 --kv_heads 4 --vocab 32000 > /dev/null
  "$build/tools/lowbit-rtn" --model "$work/src" --scheme W8A8 --out "$work/models/c" > /dev/null
  /usr/bin/python3 -c "import numpy as np; np.save('$work/x.npy', np.random.RandomState(1).randn(4, 1024).astype(np.float32))"
}
run_op() {  # run_op "L name" etc.
  local op=${1% *} name=${1#* }
  case "$op" in
    L) "$lowbit" load --name "$name" --dir "$work/models/c" > /dev/null 2>&1 ;;
    P) "$lowbit" load --name "$name" --path c > /dev/null 2>&1 ;;
    U) "$lowbit" unload "$name" > /dev/null 2>&1 ;;
  esac
}
client() {  # the sequence, one line per op the runtime acknowledged, until the first failure
  for op in "${ops[@]}"; do
    run_op "$op" || return 0
    echo "$op" >> "$1"
  done
}

runtime_soak() {
  runtime_setup
  local t0 seq_ms state done_file failed=0 delay cpid
  echo "reference run (the whole sequence, no kill) in $work"
  start "$work/ref"
  t0=$(now_ms)
  client "$work/ref.done"
  seq_ms=$(( $(now_ms) - t0 ))
  [[ "$(wc -l < "$work/ref.done")" == "${#ops[@]}" ]] || { echo "the sequence failed without a kill"; return 1; }
  "$lowbit" gemm --name s4 --layer "$layer" --x "$work/x.npy" --y "$work/ref-y.npy" > /dev/null
  kill_server
  echo "reference: ${#ops[@]} ops in $seq_ms ms"
  RANDOM="$seed"
  for r in $(seq 1 "$rounds"); do
    state="$work/round-$r"
    done_file="$state.done"
    : > "$done_file"
    start "$state"
    client "$done_file" &
    cpid=$!
    delay=$(( RANDOM * RANDOM % (seq_ms + 1) ))
    sleep_ms "$delay"
    kill_server
    wait "$cpid" || true
    local n_done in_flight=""
    n_done=$(wc -l < "$done_file")
    (( n_done < ${#ops[@]} )) && in_flight="${ops[$n_done]}"
    # What the acknowledged ops leave loaded.
    declare -A want=()
    while read -r op name; do
      if [[ "$op" == U ]]; then unset "want[$name]"; else want[$name]=1; fi
    done < "$done_file"
    if ! start "$state"; then
      echo "round $r: FAILED — the runtime did not start again after a kill at $delay ms"
      failed=$((failed + 1)); unset want; continue
    fi
    local listed problem=""
    listed="$("$lowbit" models 2> /dev/null | { grep -Eo '^model [^ ]+' || true; } | cut -d' ' -f2 | sort | tr '\n' ' ')"
    for name in $(printf '%s\n' "${ops[@]}" | cut -d' ' -f2 | sort -u); do  # every name the sequence uses
      local is=0 should=0
      [[ " $listed " == *" $name "* ]] && is=1
      [[ -n "${want[$name]:-}" ]] && should=1
      if (( is != should )) && [[ "${in_flight#* }" != "$name" ]]; then
        problem+=" $name is $([[ $is == 1 ]] && echo listed || echo missing);"
      fi
      if (( is )); then
        "$lowbit" gemm --name "$name" --layer "$layer" --x "$work/x.npy" --y "$state-$name.npy" > /dev/null 2>&1 &&
          cmp -s "$state-$name.npy" "$work/ref-y.npy" || problem+=" $name's GEMM differs from the reference;"
      fi
    done
    local leftovers
    leftovers="$(find "$state/streamed" -mindepth 1 -maxdepth 1 2> /dev/null | while read -r d; do
      grep -q "\"streamed/$(basename "$d")\"" "$state/loaded-models.json" 2> /dev/null || echo "$(basename "$d")"
    done | tr '\n' ' ')"
    [[ -n "$leftovers" ]] && problem+=" copies no record names: $leftovers;"
    if [[ -n "$problem" ]]; then
      echo "round $r: FAILED after a kill at $delay ms ($n_done ops acknowledged, in flight: ${in_flight:-none}):$problem (seed $seed)"
      failed=$((failed + 1))
    else
      echo "round $r: ok (kill at $delay ms, $n_done ops acknowledged, in flight: ${in_flight:-none}; loaded now: ${listed:-none})"
    fi
    unset want
    kill_server
  done
  echo "$((rounds - failed)) of $rounds rounds ok (seed $seed)"
  [[ "$failed" == 0 ]]
}

case "$mode" in
  calibrator) calibrator_soak ;;
  runtime) runtime_soak ;;
  *) echo "usage: crash-soak.sh calibrator|runtime [ROUNDS] [SEED]" >&2; exit 2 ;;
esac
