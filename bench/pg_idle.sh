#!/usr/bin/env bash
# What idle pointsync instances cost on PostgreSQL: N `pointsync serve` instances on one scratch
# database, no payments, the simulator running; over SECONDS (after 6 s to settle) the CPU the
# instances and the server use per second, the database's transactions per second (their
# timers: lease rescue, health probes, the dispatcher's idle claims) and the server's WAL bytes
# per second (all databases: what those transactions wrote).
# Usage: bash bench/pg_idle.sh [N] [SECONDS]   (defaults 1, 20)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${1:-1}; S=${2:-20}
pg_scratch_db pointsync_idle_$$
PS_BIN=${PS_BIN:-./target/release/pointsync}
xacts() { psql -qAt "$URL" -c "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"; }
wal() { psql -qAt "$URL" -c "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"; }
SIM_URL=http://127.0.0.1:$(port)
{ printf '[service]\npublic_listen = "127.0.0.1:0"\nadmin_listen = "127.0.0.1:0"\ndatabase = "%s"\n' "$URL"
  wechatpay_toml; throughput_toml; } > "$WORK/idle.toml"
./target/release/wechatpay-sim serve "$SB" --listen "${SIM_URL#http://}" --notify-url http://127.0.0.1:9/unused >/dev/null 2>&1 &
PIDS=($!); SVC=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $SCRATCH_DB WITH (FORCE)" >/dev/null 2>&1; rm -rf "$WORK"' EXIT
for _ in $(seq "$N"); do
  RUST_LOG=warn "$PS_BIN" serve --config "$WORK/idle.toml" >/dev/null 2>&1 &
  SVC+=($!); PIDS+=($!)
done
sleep 6
c0=0; for p in "${SVC[@]}"; do c0=$((c0 + $(ticks "$p"))); done; g0=$(pg_ticks); x0=$(xacts); l0=$(wal)
sleep "$S"
c1=0; for p in "${SVC[@]}"; do c1=$((c1 + $(ticks "$p"))); done; g1=$(pg_ticks); l1=$(wal)
sleep 1.5 # a backend reports its counts when idle for a second
x1=$(xacts)
python3 -c "
n,s=$N,$S
print(f'{n} idle instance(s) over {s} s: the instances {($c1-$c0)*10/s:.1f} ms of CPU per second, PostgreSQL {($g1-$g0)*10/s:.1f} ms/s, {($x1-$x0)/s:.1f} transactions/s in their database, {($l1-$l0)/s:.0f} WAL bytes/s')"
