#!/usr/bin/env bash
# Put Prometheus' promtool at $1 (default <repo>/.cache/promtool/promtool) for the /metrics check
# (`promtool check metrics`, tests/helpers.py promtool_check). It comes from Debian's `prometheus`
# package, fetched with `apt-get download` (no root needed) and unpacked with `dpkg-deb`: only
# promtool is taken out of it, nothing is installed. When apt's package lists do not know the package yet
# (a fresh machine), they are updated first: the system's as root or with sudo, else a copy of
# our own under .cache/promtool/apt.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${1:-$ROOT/.cache/promtool/promtool}
say() { printf 'promtool: %s\n' "$*" >&2; }

if [ -x "$TARGET" ] && "$TARGET" --version >/dev/null 2>&1; then exit 0; fi
for tool in apt-get dpkg-deb; do
  command -v "$tool" >/dev/null 2>&1 || { say "error: $tool not found: promtool is taken from Debian's prometheus package"; exit 1; }
done

DIR=$(dirname "$TARGET")
WORK="$DIR/download"
rm -rf "$WORK"
mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT
APT=(apt-get -qq)

download() { (cd "$WORK" && "${APT[@]}" download prometheus) >/dev/null 2>"$WORK/apt.err"; }

if ! download; then
  say "updating apt's package lists to find the prometheus package"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n apt-get update -qq >/dev/null
  else  # no root: lists of our own, the system's sources
    LISTS="$DIR/apt"
    mkdir -p "$LISTS/lists/partial" "$LISTS/archives/partial"
    APT+=(-o "Dir::State::Lists=$LISTS/lists" -o "Dir::Cache=$LISTS" -o "Dir::Cache::archives=$LISTS/archives"
          -o "Debug::NoLocking=1")
    "${APT[@]}" update >/dev/null
  fi
  download || { cat "$WORK/apt.err" >&2; say "error: apt-get download prometheus failed"; exit 1; }
fi

deb=("$WORK"/prometheus_*.deb)
dpkg-deb --fsys-tarfile "${deb[0]}" | tar -x -C "$WORK" ./usr/bin/promtool
mv "$WORK/usr/bin/promtool" "$TARGET"
"$TARGET" --version 2>&1 | head -1 | sed 's/^/promtool: /' >&2
