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

# PyPI tools (scripts/pytools-requirements.txt, every dependency pinned) into <repo>/.pytools with
# Debian's python3 and pip --target, so the system Python stays untouched. A stamp named after
# the list's hash makes this a no-op when nothing changed. LOWBIT_SETUP_PYTOOLS=0 skips it
# (container builds need none of them).
if [ "${LOWBIT_SETUP_PYTOOLS:-1}" != 0 ]; then
  repo=$(cd "$here/.." && pwd)
  req="$here/pytools-requirements.txt"
  stamp="$repo/.pytools/.stamp-$(sha256sum "$req" | cut -c1-16)"
  if [ -f "$stamp" ]; then
    echo "setup: pinned PyPI tools present in .pytools"
  else
    echo "setup: installing pinned PyPI tools into .pytools"
    rm -rf "$repo/.pytools.tmp"
    /usr/bin/python3 -m pip install --disable-pip-version-check --no-input --quiet --root-user-action=ignore --no-deps \
      --only-binary=:all: --target "$repo/.pytools.tmp" -r "$req"
    rm -rf "$repo/.pytools"
    mv "$repo/.pytools.tmp" "$repo/.pytools"
    touch "$stamp"
  fi
fi
