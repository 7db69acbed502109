#!/usr/bin/env bash
# debfetch.sh DIR PACKAGE…: unpack Debian packages into DIR (nothing installed, no root needed).
# The .deb files come from `apt-get download`; when apt's package lists do not know a package
# yet (a fresh machine), they are updated first: the system's as root or with sudo, else a copy
# of our own under DIR/apt. Used for the tools the tests drive (scripts/promtool.sh, kcat.sh).
set -euo pipefail

DIR=$1
shift
say() { printf 'debfetch: %s\n' "$*" >&2; }
for tool in apt-get dpkg-deb; do
  command -v "$tool" >/dev/null 2>&1 || { say "error: $tool not found (needed to fetch $*)"; exit 1; }
done

WORK="$DIR/download"
rm -rf "$WORK"
mkdir -p "$WORK" "$DIR/root"
trap 'rm -rf "$WORK"' EXIT
APT=(apt-get -qq)

download() { (cd "$WORK" && "${APT[@]}" download "$@") >/dev/null 2>"$WORK/apt.err"; }

if ! download "$@"; then
  say "updating apt's package lists to find $*"
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
  download "$@" || { cat "$WORK/apt.err" >&2; say "error: apt-get download $* failed"; exit 1; }
fi

for deb in "$WORK"/*.deb; do
  dpkg-deb -x "$deb" "$DIR/root"
done
