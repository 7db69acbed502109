#!/usr/bin/env bash
# `make run`: the local broker (unless KAFKA_BOOTSTRAP names one) and `faust -A app worker`.
# Ctrl-C (or SIGTERM) stops the worker, then the broker if this script started it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
WEB_HOST=${WEB_HOST:-127.0.0.1}
WEB_PORT=${WEB_PORT:-6066}
LOG_LEVEL=${LOG_LEVEL:-info}
case "$LOG_LEVEL" in  # faust -l spells two levels its own way
  warning) FAUST_LEVEL=warn ;; critical) FAUST_LEVEL=crit ;; *) FAUST_LEVEL=$LOG_LEVEL ;;
esac

started_kafka=0
worker_pid=""

cleanup() {
  trap - INT TERM EXIT
  if [ -n "$worker_pid" ] && kill -0 "$worker_pid" 2>/dev/null; then
    echo "run: stopping worker (pid $worker_pid)" >&2
    kill -TERM "$worker_pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$worker_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$worker_pid" 2>/dev/null || true
  fi
  if [ "$started_kafka" = 1 ]; then scripts/kafka.sh down; fi
}
trap cleanup INT TERM EXIT

if [ -z "${KAFKA_BOOTSTRAP:-}" ]; then
  if ! scripts/kafka.sh status >/dev/null 2>&1; then started_kafka=1; fi
  scripts/kafka.sh up
  export KAFKA_BOOTSTRAP="127.0.0.1:${KAFKA_PORT:-9092}"
fi

cat >&2 <<MSG
run: worker starting; web on http://$WEB_HOST:$WEB_PORT/ (health: /health, books: /api/books)
run: replay a capture into it:  .venv/bin/faust -A app replay --format cryptofeed ../shared/captures/cryptofeed/OKX.ws.1.0
run: tail book.top:             .venv/bin/faust -A app tail book.top
run: Ctrl-C stops everything this command started
MSG
.venv/bin/faust -A app worker -l "$FAUST_LEVEL" --web-host "$WEB_HOST" --web-port "$WEB_PORT" &
worker_pid=$!
wait "$worker_pid" || true
