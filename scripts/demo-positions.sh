#!/usr/bin/env bash
# `make run`'s demo portfolio "demo": long 5 of this month's BTC 60,000 calls and 3 of the
# 70,000 puts on Deribit, short 20,000 USD of the perpetual, 1 BTC of collateral. Set once the
# worker's registry knows the instruments (the command refuses unknown ones), retried for up to a minute.
# SIGTERM (run.sh's Ctrl-C cleanup) stops the command in flight as well, and the script exits only
# once it is gone. (Started in the background by a script, this one ignores SIGINT: bash does that
# to the asynchronous commands of a non-interactive shell, so Ctrl-C alone would not stop it.)
set -uo pipefail
FAUST=${FAUST:-.venv/bin/faust}
stop() {
  trap - TERM INT HUP
  local pids
  pids=$(jobs -p)
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086  # one pid a word
    kill -TERM $pids 2>/dev/null
    wait $pids 2>/dev/null
  fi
  exit 143
}
trap stop TERM INT HUP
# Each command runs in the background and is waited for: a trapped signal interrupts `wait` at
# once, whereas bash runs a trap only after a foreground command has ended.
run() { "$@" & wait $!; }
EXPIRY=$(.venv/bin/python -c 'import time; from app.market.symbols import monthly_expiries as m; print(m(time.time_ns(), 1)[0])')
BOOK=$(mktemp --suffix=.csv)
trap 'rm -f "$BOOK"' EXIT
cat > "$BOOK" <<CSV
portfolio,instrument,quantity
demo,deribit:BTC-$EXPIRY-60000-C,5
demo,deribit:BTC-$EXPIRY-70000-P,3
demo,deribit:BTC-PERPETUAL,-20000
CSV
for _ in $(seq 1 30); do
  if run "$FAUST" -A app positions set --file "$BOOK" 2>/dev/null \
     && run "$FAUST" -A app collateral set demo BTC "${DEMO_COLLATERAL_BTC:-1}" 2>/dev/null; then
    echo "run: demo portfolio set: $FAUST -A app positions list; collateral list" >&2
    exit 0
  fi
  run sleep 2
done
echo "run: could not set the demo portfolio (is the worker up?)" >&2
exit 1
