#!/usr/bin/env bash
# PostgreSQL's CPU by backend during the maximum phase of bench/scaleout.sh: the bench database's
# backends, each named by the statement it ran last (the outcome recorder's is its batched
# `UPDATE outbox o …`; a lane's mostly `COMMIT`), CPU ticks (1/100 s) from /proc over SECONDS,
# DELAY seconds into the phase — late in a long phase is where the outbox's dead index entries
# weigh most. Ends with the phase's line.
# Usage: bash bench/pg_backends.sh [MAX_PAYMENTS] [SETUP] [DELAY] [SECONDS]
#   (defaults 20000, postgres:2, 8, 10)
# PS_BIN: the pointsync binary (default the release build). Needs the local server's /proc.
set -euo pipefail
cd "$(dirname "$0")/.."
MAX=${1:-20000}; SETUP=${2:-postgres:2}; DELAY=${3:-8}; S=${4:-10}
PG_ADMIN=${POINTSYNC_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}
OUT=$(mktemp -d); trap 'rm -rf "$OUT"' EXIT
bash bench/scaleout.sh "$MAX" 10 "$SETUP" > "$OUT/bench.txt" 2>&1 &
BENCH=$!
# pid|last statement|CPU ticks of every backend of the bench's database
snap() {
  psql -qAt "$PG_ADMIN" -F'|' -c "SELECT pid, left(regexp_replace(query, '\s+', ' ', 'g'), 40)
    FROM pg_stat_activity WHERE datname LIKE 'pointsync_bench%'" |
    while IFS='|' read -r pid q; do echo "$pid|$q|$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null)"; done
}
for _ in $(seq 1200); do grep -q "200/s:" "$OUT/bench.txt" && break; sleep 0.5; done
sleep "$DELAY"; snap > "$OUT/a"; sleep "$S"; snap > "$OUT/b"
wait "$BENCH"
python3 - "$OUT/a" "$OUT/b" "$S" <<'PY'
import collections, sys
read = lambda f: {l.split('|')[0]: l.rstrip('\n').split('|') for l in open(f) if l.count('|') == 2}
a, b = read(sys.argv[1]), read(sys.argv[2])
kinds, n = collections.Counter(), collections.Counter()
for pid, (_, q, t) in b.items():
    if not t:
        continue
    before = a.get(pid, ['', '', '0'])[2] or '0'
    kind = 'outcome recorder' if q.startswith('UPDATE outbox o') else q[:30] or '(none)'
    kinds[kind] += int(t) - int(before); n[kind] += 1
print(f"PostgreSQL backends' CPU over {sys.argv[3]} s of the maximum phase, ticks (1/100 s):")
for k, v in kinds.most_common():
    print(f"{v:6d}  {k} ({n[k]} backends)")
print(f"{sum(kinds.values()):6d}  in all")
PY
grep "max:" "$OUT/bench.txt" | sed -E "s/; callback.*(PostgreSQL [^,]*, [0-9]+ buffer accesses).*/; \1/"
