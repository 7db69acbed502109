#!/usr/bin/env bash
# `make run`: the local broker (unless KAFKA_BOOTSTRAP names one), the venue simulator
# (FEED=sim, the default) and `faust -A app worker` ingesting FEEDS with its web server.
# `make run FEED=live` ingests the venues' real endpoints instead of the simulator.
# Ctrl-C (or SIGTERM) stops the demo positions job, the worker, the simulator, and the broker if this
# script started it, and the script returns only once they are gone.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export WEB_HOST=${WEB_HOST:-127.0.0.1}
export WEB_PORT=${WEB_PORT:-6066}
export FEED=${FEED:-sim}
LOG_LEVEL=${LOG_LEVEL:-info}
case "$LOG_LEVEL" in  # faust -l spells two levels its own way
  warning) FAUST_LEVEL=warn ;; critical) FAUST_LEVEL=crit ;; *) FAUST_LEVEL=$LOG_LEVEL ;;
esac
FAUST=${FAUST:-.venv/bin/faust}
export FAUST

started_kafka=0
worker_pid=""
sim_pid=""
demo_pid=""
paper_pid=""

stop_pid() {
  local pid=$1 name=$2
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    echo "run: stopping $name (pid $pid)" >&2
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      pkill -KILL -P "$pid" 2>/dev/null || true  # its own children too (the demo job's command)
      kill -KILL "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  fi
}

cleanup() {
  trap - INT TERM EXIT
  # What this script starts runs in the background, where bash makes it ignore SIGINT (a faust
  # command handles it again once started; demo-positions.sh never does): Ctrl-C alone is not
  # enough. The demo job first: it talks to the worker, and would retry for a minute without it.
  stop_pid "$demo_pid" "demo positions job"
  stop_pid "$paper_pid" "paper executor"
  stop_pid "$worker_pid" worker
  stop_pid "$sim_pid" simulator
  if [ "$started_kafka" = 1 ]; then scripts/kafka.sh down; fi
}
trap cleanup INT TERM EXIT

if [ -z "${KAFKA_BOOTSTRAP:-}" ]; then
  if ! scripts/kafka.sh status >/dev/null 2>&1; then started_kafka=1; fi
  scripts/kafka.sh up  # KAFKA_NODES=3: the replicated cluster (`make cluster-up`'s)
  KAFKA_BOOTSTRAP=$(scripts/kafka.sh bootstrap)
  export KAFKA_BOOTSTRAP
fi

case "$FEED" in
  sim)
    SIM_PORT=${SIM_PORT:-8765}
    export SIM_URL=${SIM_URL:-http://127.0.0.1:$SIM_PORT}
    SIM_INSTRUMENTS=${SIM_INSTRUMENTS:-0}
    if ! [[ "$SIM_INSTRUMENTS" =~ ^[0-9]+$ ]]; then
      echo "run: SIM_INSTRUMENTS must be a whole number (instruments per venue to add), not '$SIM_INSTRUMENTS'" >&2
      exit 2
    fi
    export FEEDS=${FEEDS:-$(.venv/bin/python -c "from app.feeds import sim_feeds; print(sim_feeds($SIM_INSTRUMENTS))")}
    "$FAUST" -A app simulate --port "$SIM_PORT" --rate "${SIM_RATE:-10}" &
    sim_pid=$!
    export RISK_RULES_FILE=${RISK_RULES_FILE:-$ROOT/scripts/demo-rules.toml}
    demo=${DEMO_POSITIONS:-1}
    paper=${HEDGE_PAPER:-1}
    ;;
  live)
    export FEEDS=${FEEDS:-$(.venv/bin/python -c 'from app.feeds import DEFAULT_LIVE_FEEDS as f; print(f)')}
    ;;
  *) echo "run: FEED must be 'sim' or 'live', not '$FEED'" >&2; exit 2 ;;
esac

cat >&2 <<MSG
run: worker starting, ingesting from the ${FEED} feeds: ${FEEDS}
run: web           http://$WEB_HOST:$WEB_PORT/   (books: /api/books, health: /health, ready: /ready)
run: topics        ${TOPIC_PREFIX:-}raw.<venue> → ${TOPIC_PREFIX:-}book.top, book.depth, book.status, control.resync, raw.deadletter
run: tail book.top $FAUST -A app tail book.top
run: risk          http://$WEB_HOST:$WEB_PORT/risk   (rules: ${RISK_RULES_FILE:-none}; $FAUST -A app positions list)
run: hedge fills   ${TOPIC_PREFIX:-}hedge.fills (paper executor: ${paper:-0}; HEDGE_PAPER=0 to answer signals yourself)
run: Ctrl-C stops everything this command started
MSG
"$FAUST" -A app worker -l "$FAUST_LEVEL" --web-host "$WEB_HOST" --web-port "$WEB_PORT" &
worker_pid=$!
if [ "${demo:-0}" = 1 ]; then
  scripts/demo-positions.sh &
  demo_pid=$!
fi
if [ "${paper:-0}" = 1 ]; then
  "$FAUST" -A app hedge paper --delay-s "${HEDGE_PAPER_DELAY_S:-2}" &
  paper_pid=$!
fi
wait "$worker_pid" || true
