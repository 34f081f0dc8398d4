#!/usr/bin/env bash
# Install Debian packages the tests need, only when their program is missing.
# Usage: ensure-debian-packages.sh PROGRAM:PACKAGE [PROGRAM:PACKAGE ...]
set -euo pipefail
missing=()
for pair in "$@"; do
  prog=${pair%%:*}; pkg=${pair#*:}
  command -v "$prog" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root to install: ${missing[*]} (apt-get install -y ${missing[*]})" >&2; exit 1; }
  sudo=(sudo -n)
fi
echo "Installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get -qq update
"${sudo[@]}" apt-get -qq install -y --no-install-recommends "${missing[@]}" >/dev/null
