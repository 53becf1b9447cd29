#!/usr/bin/env bash
# System packages some tests drive (Debian/Ubuntu, as root): Prometheus and promtool, Alertmanager
# and amtool (the alert rules, dashboards and deploy checks), Chromium (the browser tests).
# Elsewhere it says what to install and leaves it to you: those tests then skip, saying why.
set -euo pipefail
packages=(prometheus prometheus-alertmanager chromium)
if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
  echo "system-deps: install ${packages[*]} yourself (no apt-get as root here); their tests skip without them"
  exit 0
fi
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
fi
echo "system-deps: ${packages[*]} installed"
