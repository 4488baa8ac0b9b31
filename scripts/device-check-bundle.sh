#!/usr/bin/env bash
# Sourced by the device scripts after unpacking the bundle into $bundle: fails when the working
# tree's sources differ from those the bundle's binaries were built from (run
# scripts/device-bundle.sh again before the device call), so a session never measures old code.
if [[ -f "$bundle/SOURCES.sha256" ]]; then
  if ! stale="$(sha256sum --quiet -c "$bundle/SOURCES.sha256" 2>&1)"; then
    echo "stale bundle: these sources changed since scripts/device-bundle.sh built it:" >&2
    echo "$stale" | head -20 >&2
    exit 3
  fi
fi
export LOWBIT_COMMIT="$(cat "$bundle/COMMIT" 2>/dev/null || echo unknown)"
