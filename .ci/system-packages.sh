#!/usr/bin/env bash
# Install the Debian/Ubuntu packages listed in $1 that are missing (as root), or name them.
set -euo pipefail
list=${1:?usage: system-packages.sh FILE}
mapfile -t wanted < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$list" | grep -v '^$')
missing=()
for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "missing system packages (install them as root): ${missing[*]}" >&2
    exit 1
fi
