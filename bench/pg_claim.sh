#!/usr/bin/env bash
# What the dispatcher's claim reads and writes, on PostgreSQL (BENCHMARKS.md, tenth session): on a
# scratch database migrated by pointsync, an outbox of 23,000 syncs (20,000 done, 3,000 pending),
# the claim of 12 rows under EXPLAIN (ANALYZE, BUFFERS) — the buffers it reads to find them against
# all it touches (each leased row a new version with an entry in every index of the outbox) — then
# the same statement prepared and executed seven times: literal values in the plan and a planning
# time each time mean it is planned again on every execution (custom plans). Then a batch of 34
# outcomes (completions.rs's statement) with a generic plan, as every connection had them in the
# reverted 93c16fd: how it finds its rows. Nothing is kept (each statement is rolled back). The
# claim is claim.rs's `lease_sql` without the shared rate.
# Usage: bash bench/pg_claim.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
pg_scratch_db pointsync_pg_claim_$$
psql -qAt "$URL" -c "INSERT INTO outbox (transaction_id, payload, state, due_at, created_at)
  SELECT 'T' || g, repeat('x', 300), CASE WHEN g < 20000 THEN 'done' ELSE 'pending' END, 1000000 + g / 3, 1000000 + g / 3
  FROM generate_series(1, 23000) g" -c "ANALYZE outbox"
CLAIM="UPDATE outbox SET state = 'inflight', lease_owner = \$1, lease_until = (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT + \$2, attempts = attempts + 1
  WHERE id IN (SELECT id FROM outbox WHERE state = 'pending' AND due_at <= \$3 ORDER BY due_at, id LIMIT \$4 FOR UPDATE SKIP LOCKED)
  RETURNING id"
OUTCOMES="UPDATE outbox o SET state = v.state, due_at = COALESCE(v.due_at, o.due_at), last_error = COALESCE(v.error, o.last_error),
    done_at = CASE WHEN v.state = 'done' THEN v.now_ms ELSE o.done_at END, lease_owner = NULL, lease_until = NULL
  FROM UNNEST(\$1::BIGINT[], \$2::TEXT[], \$3::BIGINT[], \$4::TEXT[], \$5::BIGINT[], \$6::TEXT[], \$7::BIGINT[]) AS v (id, state, due_at, error, now_ms, owner, attempt)
  WHERE o.id = v.id AND o.state = 'inflight' AND o.lease_owner = v.owner AND o.attempts = v.attempt RETURNING o.id"
{
  echo "PREPARE claim(TEXT, BIGINT, BIGINT, BIGINT) AS $CLAIM;"
  echo "BEGIN; EXPLAIN (ANALYZE, BUFFERS) EXECUTE claim('bench', 30000, 99999999, 12); ROLLBACK;"
  for _ in $(seq 7); do echo "BEGIN; EXPLAIN (ANALYZE) EXECUTE claim('bench', 30000, 99999999, 12); ROLLBACK;"; done
  echo "SET plan_cache_mode = force_generic_plan;"
  echo "PREPARE outcomes(BIGINT[], TEXT[], BIGINT[], TEXT[], BIGINT[], TEXT[], BIGINT[]) AS $OUTCOMES;"
  echo "BEGIN; UPDATE outbox SET state = 'inflight', lease_owner = 'bench', attempts = 1 WHERE id BETWEEN 20000 AND 20033;"
  echo "EXPLAIN (ANALYZE, BUFFERS) EXECUTE outcomes('{$(seq -s, 20000 20033)}', array_fill('done'::TEXT, ARRAY[34]), array_fill(NULL::BIGINT, ARRAY[34]), array_fill(NULL::TEXT, ARRAY[34]), array_fill(5::BIGINT, ARRAY[34]), array_fill('bench'::TEXT, ARRAY[34]), array_fill(1::BIGINT, ARRAY[34])); ROLLBACK;"
} | psql -q "$URL" | grep -E "Buffers|Index Cond|Hash Join|Nested Loop|Planning Time|Execution Time|^ Update on"
