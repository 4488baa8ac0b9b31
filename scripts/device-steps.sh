# Sourced by the scripts/device-*.sh runs: time-boxed steps under one deadline, so a hung kernel or
# a slow step costs its own cap and never the whole device call (whose limit kills everything and
# returns only what is already under $OUT). Needs $out; LOWBIT_DEVICE_BUDGET_S (default 480) is the
# seconds the whole script may take — keep it under the device call's timeout_s.
#   step NAME CAP_S CMD ARGS...   runs CMD with stdout+stderr to $out/NAME.log, at most CAP_S
#                                 seconds and never past the deadline; appends "NAME rc seconds" to
#                                 $out/steps.tsv (rc 124: timed out, "skipped": no time left).
device_deadline=$(( $(date +%s) + ${LOWBIT_DEVICE_BUDGET_S:-480} ))
rc=0
step() {
  local name="$1" cap="$2"
  shift 2
  local left=$(( device_deadline - $(date +%s) - 5 ))
  if (( left < 15 )); then
    printf '%s\tskipped\t0\n' "$name" >> "$out/steps.tsv"
    echo "== $name: skipped (no time left)"
    return 0
  fi
  (( cap > left )) && cap=$left
  echo "== $name (at most ${cap} s)"
  local t0 s=0
  t0=$(date +%s)
  timeout -k 5 "$cap" "$@" > "$out/$name.log" 2>&1 || s=$?
  printf '%s\t%s\t%s\n' "$name" "$s" "$(( $(date +%s) - t0 ))" >> "$out/steps.tsv"
  tail -5 "$out/$name.log"
  (( s == 0 )) || rc=$s
  return 0
}
