#!/usr/bin/env bash
# The messages one pointsync instance sends PostgreSQL per payment at 200 payments/s, and how
# many of them are a lone `Sync` (the test sqlx makes of every connection given back to its pool:
# a round trip of its own). `bench/scaleout.sh` runs the 200/s phase of SETUP while `strace`
# watches the first instance's `sendto` calls (sqlx's writes; HTTP goes by `writev`) for SECONDS,
# 10 s into the phase. Payments per instance in the window: 200/s ÷ instances × SECONDS.
# Usage: bash bench/pg_round_trips.sh [SETUP] [SECONDS]   (defaults postgres:2, 5)
# PS_BIN: the pointsync binary (default the release build). Needs strace.
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP=${1:-postgres:2}; S=${2:-5}
PS_BIN=${PS_BIN:-./target/release/pointsync}
command -v strace >/dev/null || { echo "needs strace"; exit 1; }
OUT=$(mktemp -d); trap 'rm -rf "$OUT"' EXIT
PS_BIN=$PS_BIN bash bench/scaleout.sh 10 $((200 * (S + 25))) "$SETUP" > "$OUT/bench.txt" 2>&1 &
BENCH=$!
pid=""
for _ in $(seq 600); do
  pid=$(pgrep -f "$(basename "$PS_BIN") serve" | head -1 || true)
  [ -n "$pid" ] && break; sleep 0.1
done
[ -n "$pid" ] || { echo "no pointsync instance started"; cat "$OUT/bench.txt"; exit 1; }
sleep 10
timeout "$S" strace -f -qq -e trace=sendto -p "$pid" -o "$OUT/trace" || true
wait "$BENCH"
grep "200/s:" "$OUT/bench.txt" | cut -c1-160
python3 - "$OUT/trace" "${SETUP##*:}" "$S" <<'PY'
import re,sys
lines=open(sys.argv[1]).read().splitlines()
payments=200/int(sys.argv[2])*float(sys.argv[3])
sends=sum(1 for l in lines if 'sendto(' in l and '= ' in l)
syncs=sum(1 for l in lines if re.search(r'sendto\(\d+, "S\\0\\0\\0\\4", 5,', l))
print(f"one instance over {sys.argv[3]} s (~{payments:.0f} payments): {sends} sends to PostgreSQL "
      f"({sends/payments:.2f} per payment), {syncs} of them a lone Sync ({syncs/payments:.2f} per payment)")
PY
