#!/usr/bin/env bash
# What a statement and a commit cost the local PostgreSQL server's CPU at a moderate rate, where
# each statement wakes an idle backend: pgbench, one client, SECONDS each, on a scratch table of
# 1,000 rows — `SELECT 1` (a round trip), then a one-row UPDATE in a transaction of its own (a
# round trip, a row write and a commit with its WAL flush) — and the server's CPU per transaction
# from /proc (bench/lib.sh, pg_ticks).
# Usage: bash bench/pg_statement_cost.sh [SECONDS]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
S=${1:-5}
PG_ADMIN=${POINTSYNC_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}
DB=pointsync_cost_$$
URL=$(db_url "$PG_ADMIN" "$DB")
WORK=$(mktemp -d)
trap 'psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1; rm -rf "$WORK"' EXIT
psql -q "$PG_ADMIN" -c "CREATE DATABASE $DB" >/dev/null
psql -q "$URL" -c "CREATE TABLE t (id INT PRIMARY KEY, x BIGINT)" -c "INSERT INTO t SELECT g, 0 FROM generate_series(1, 1000) g" >/dev/null
echo 'SELECT 1;' > "$WORK/select.sql"
echo 'UPDATE t SET x = x + 1 WHERE id = (random() * 999)::INT + 1;' > "$WORK/update.sql"
for what in select update; do
  g0=$(pg_ticks)
  n=$(pgbench -n -c 1 -T "$S" -f "$WORK/$what.sql" "$URL" 2>/dev/null | awk '/number of transactions actually processed/ {print $NF}')
  g1=$(pg_ticks)
  python3 -c "print(f'$what: {$n} transactions, the server {($g1-$g0)*1e4/$n:.0f} µs of CPU each')"
done
