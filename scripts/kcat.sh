#!/usr/bin/env bash
# Put kcat (the Kafka command-line client of the README's examples) at $1 (default
# <repo>/.cache/kcat/kcat): Debian's kcat with its librdkafka and yajl unpacked beside it
# (scripts/debfetch.sh: no root needed), run through a wrapper that points the loader at them.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${1:-$ROOT/.cache/kcat/kcat}

if [ -x "$TARGET" ] && "$TARGET" -V >/dev/null 2>&1; then exit 0; fi
DIR=$(dirname "$TARGET")
"$ROOT/scripts/debfetch.sh" "$DIR" kcat librdkafka1 libyajl2
LIBS=$(dirname "$(find "$DIR/root" -name 'librdkafka.so.1' | head -1)")
cat > "$TARGET" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$LIBS\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$DIR/root/usr/bin/kcat" "\$@"
WRAP
chmod +x "$TARGET"
"$TARGET" -V 2>&1 | head -1 | sed 's/^/kcat: /' >&2
