#!/usr/bin/env bash
# `make run`'s demo portfolio "demo": long 5 of this month's BTC 60,000 calls and 3 of the
# 70,000 puts on Deribit, short 20,000 USD of the perpetual. Set once the worker's registry knows
# the instruments (the command refuses unknown ones), retried for up to a minute.
set -uo pipefail
FAUST=${FAUST:-.venv/bin/faust}
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
  if "$FAUST" -A app positions set --file "$BOOK" 2>/dev/null; then
    echo "run: demo portfolio set: $FAUST -A app positions list" >&2
    exit 0
  fi
  sleep 2
done
echo "run: could not set the demo portfolio (is the worker up?)" >&2
exit 1
