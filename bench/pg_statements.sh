#!/usr/bin/env bash
# PostgreSQL's statements per payment, by kind, behind each setup of bench/scaleout.sh: the
# server logs every statement (ALTER SYSTEM SET log_statement = 'all', reset on exit) while a
# setup runs MAX payments as fast as the simulator pushes (and 10 at 200/s) — or, with PHASE=200/s,
# MAX payments at 200/s (and 10 as fast as it can) — then the log's new lines about the bench's
# databases are counted. Needs the local server and its log readable.
# Usage: bash bench/pg_statements.sh [MAX_PAYMENTS] [SETUPS]   (defaults 4000, "postgres:1 postgres:2")
# PG_LOG: the server's log (default Debian's for PostgreSQL 15).
set -euo pipefail
cd "$(dirname "$0")/.."
MAX=${1:-4000}
SETUPS=${2:-postgres:1 postgres:2}
PG_ADMIN=${POINTSYNC_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}
PG_LOG=${PG_LOG:-/var/log/postgresql/postgresql-15-main.log}
[ -r "$PG_LOG" ] || { echo "cannot read the server log $PG_LOG (set PG_LOG)"; exit 1; }
logging() { psql -qAt "$PG_ADMIN" -c "ALTER SYSTEM $1" -c "SELECT pg_reload_conf()" >/dev/null; }
trap 'logging "RESET log_statement"' EXIT
logging "SET log_statement = 'all'"
for setup in $SETUPS; do
  from=$(($(stat -c %s "$PG_LOG") + 1))
  if [ "${PHASE:-max}" = max ]; then
    bash bench/scaleout.sh "$MAX" 10 "$setup" | grep "max:"
  else
    bash bench/scaleout.sh 10 "$MAX" "$setup" | grep "200/s:"
  fi
  echo "statements per payment behind $setup (authorization callbacks included: 200 members per phase):"
  tail -c +"$from" "$PG_LOG" | grep -a "@pointsync_bench" | grep -a -E "LOG:  (statement|execute [^:]*): " |
    sed -E 's/.*LOG:  (statement|execute [^:]*): //' | awk -v n=$((MAX + 10)) '
    { k = "other: " substr($0, 1, 60)
      if ($0 ~ /^WITH i AS \(INSERT INTO inbox/) k = "callback (one statement of CTEs)"
      else if ($0 ~ /^WITH v AS MATERIALIZED/) k = "group writes (one statement, batch.rs)"
      else if ($0 ~ /^SELECT s.seen/) k = "group snapshot"
      else if ($0 ~ /pg_try_advisory_xact_lock/) k = "group member locks"
      else if ($0 ~ /^BEGIN/) k = "BEGIN"
      else if ($0 ~ /^COMMIT/) k = "COMMIT"
      else if ($0 ~ /^WITH bucket AS/ || $0 ~ /^UPDATE outbox SET state = .inflight./)
        k = ($0 ~ /ANY\(\$3\)/) ? "group lease" : "claim"
      else if ($0 ~ /^UPDATE outbox o SET state = v.state/) k = "outcomes recorded (a batch)"
      else if ($0 ~ /^SELECT m.balance, m.authorized/) k = "member summary"
      c[k]++ }
    END { for (k in c) printf "%7.3f  %s\n", c[k] / n, k }' | sort -rn | head -14
done
