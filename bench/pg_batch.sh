#!/usr/bin/env bash
# What a statement's start costs against what its rows cost, on PostgreSQL (BENCHMARKS.md, ninth
# session): a callback's writes (inbox, member, ledger, payment, outbox) as four one-row
# statements in one transaction, against one statement writing the same four callbacks' rows
# (one multi-row write per table, as store/postgres/batch.rs does). pgbench, one client,
# prepared statements, on a scratch database migrated by pointsync; alternated PAIRS times.
# Usage: bash bench/pg_batch.sh [SECONDS] [PAIRS]   (defaults 8 and 2)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-8}
PAIRS=${2:-2}
PGBENCH=${PGBENCH:-$(command -v pgbench || echo /usr/lib/postgresql/15/bin/pgbench)}
. bench/lib.sh
pg_scratch_db pointsync_pg_batch_$$
psql -q "$URL" -c "CREATE SEQUENCE s" >/dev/null
# four callbacks per transaction either way
{ echo '\set m random(1, 200)'; echo 'BEGIN;'; for _ in 1 2 3 4; do sed -n '2,$p' bench/pg_batch/one.sql; done; echo 'COMMIT;'; } > "$WORK/one_by_one.sql"
{ sed -n 1p bench/pg_batch/four.sql; echo 'BEGIN;'; sed -n '2,$p' bench/pg_batch/four.sql; echo 'COMMIT;'; } > "$WORK/together.sql"
for _ in $(seq "$PAIRS"); do
  for f in one_by_one together; do
    tps=$("$PGBENCH" -n -M prepared -T "$SECS" -c 1 -f "$WORK/$f.sql" "$URL" 2>/dev/null | awk '/^tps/ {print $3}')
    python3 -c "print(f'$f: {float($tps):.0f} transactions/s of 4 callbacks, {1000/float($tps)/4:.3f} ms per callback')"
  done
done
