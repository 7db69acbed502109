#!/usr/bin/env bash
# Put Prometheus' promtool at $1 (default <repo>/.cache/promtool/promtool) for the /metrics check
# (`promtool check metrics`, tests/helpers.py promtool_check). It comes from Debian's `prometheus`
# package (scripts/debfetch.sh: no root needed); only promtool is kept.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${1:-$ROOT/.cache/promtool/promtool}

if [ -x "$TARGET" ] && "$TARGET" --version >/dev/null 2>&1; then exit 0; fi
DIR=$(dirname "$TARGET")
"$ROOT/scripts/debfetch.sh" "$DIR" prometheus
mv "$DIR/root/usr/bin/promtool" "$TARGET"
rm -rf "$DIR/root"
"$TARGET" --version 2>&1 | head -1 | sed 's/^/promtool: /' >&2
