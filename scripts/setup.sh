#!/usr/bin/env bash
# Installs every dependency Lowbit builds and tests with. Idempotent and pinned:
# Debian packages from scripts/apt-packages.txt (name=version). Safe to run again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

want=()
while read -r line; do
  line=${line%%#*}; line=$(echo "$line" | xargs)
  [ -n "$line" ] && want+=("$line")
done < "$here/apt-packages.txt"

missing=()
for spec in "${want[@]}"; do
  name=${spec%%=*}; ver=${spec#*=}
  have=$(dpkg-query -W -f='${Status} ${Version}' "$name" 2>/dev/null || true)
  if [ "$have" != "install ok installed $ver" ]; then missing+=("$spec"); fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#want[@]} pinned Debian packages present"
else
  echo "setup: installing ${#missing[@]} Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  if ! $SUDO apt-get install -y -qq --no-install-recommends --allow-downgrades "${missing[@]}"; then
    # A pinned version can vanish from the mirror after a point release; say so loudly and
    # take the candidate rather than leave the machine without the package.
    echo "setup: WARNING: a pinned version is not available; installing candidates instead" >&2
    names=(); for spec in "${missing[@]}"; do names+=("${spec%%=*}"); done
    $SUDO apt-get install -y -qq --no-install-recommends "${names[@]}"
  fi
fi
