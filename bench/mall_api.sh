#!/usr/bin/env bash
# Mall API benchmark (issue 12): member reads per second with ROWS ledger entries stored (half
# `GET /v1/members/{openid}`, half `GET …/ledger?limit=20`, random members), pointsync pinned to one
# core (taskset -c 0) and the load generator to the other; then the callback acknowledgement p99
# at 200 payments/s (as the simulator measures it) without and with API reads at API_RATE/s.
# Usage: bash bench/mall_api.sh [ROWS] [MEMBERS] [SECONDS] [API_RATE]   (defaults 1000000 10000 10 500)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ROWS=${1:-1000000}; MEMBERS=${2:-10000}; SECS=${3:-10}; API_RATE=${4:-500}
cargo build --release -q -p pointsync --examples
cargo build --release -q -p pointsync -p wechatpay-sim
PS=./target/release/pointsync; SIM=./target/release/wechatpay-sim
SEED=./target/release/examples/mall_seed; LOAD=./target/release/examples/mall_load
WORK=$(mktemp -d); SB=$WORK/sandbox
"$SIM" init "$SB" >/dev/null
PUB=$(port); ADM=$(port); MALL=$(port); SIMP=$(port)
SIM_URL=http://127.0.0.1:$SIMP
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT
TOKEN=mall-bench-token-0123456789abcdef0123456789
SHA=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)
t0=$(date +%s.%N)
"$SEED" "$WORK/pointsync.db" "$ROWS" "$MEMBERS"
echo "seeded in $(python3 -c "print(round($(date +%s.%N)-$t0,1))") s; database $(du -h "$WORK/pointsync.db" | cut -f1)"
cat > "$WORK/pointsync.toml" <<TOML
[service]
public_listen = "127.0.0.1:$PUB"
admin_listen = "127.0.0.1:$ADM"
database = "$WORK/pointsync.db"
$(wechatpay_toml)
appids = ["wx1234567890abcdef"]
brandid = 1000
[dispatcher]
qps = 5000
[mall_api]
listen = "127.0.0.1:$MALL"
[[mall_api.tokens]]
name = "bench"
sha256 = "$SHA"
scopes = ["members:read"]
TOML
RUST_LOG=warn taskset -c 1 "$SIM" serve "$SB" --listen "127.0.0.1:$SIMP" --notify-url "http://127.0.0.1:$PUB/wechatpay/notify" --time-scale 0.01 >/dev/null 2>&1 &
SIMPID=$!; PIDS+=($SIMPID)
for _ in $(seq 200); do curl -sf "$SIM_URL/sim/counters" >/dev/null && break; sleep 0.05; done
taskset -c 0 "$PS" serve --config "$WORK/pointsync.toml" >/dev/null 2>"$WORK/pointsync.log" &
SVC=$!; PIDS+=($SVC)
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$ADM/healthz" >/dev/null && break; sleep 0.05; done
HZ=$(getconf CLK_TCK)
URL=http://127.0.0.1:$MALL
taskset -c 1 "$LOAD" "$URL" "$TOKEN" "$MEMBERS" 2 16 0 >/dev/null   # warm the page cache
for run in 1 2 3; do
  c0=$(ticks $SVC)
  R=$(taskset -c 1 "$LOAD" "$URL" "$TOKEN" "$MEMBERS" "$SECS" 16 0)
  c1=$(ticks $SVC)
  python3 - "$R" "$c0" "$c1" "$HZ" "$SECS" "$ROWS" "$run" <<'PY'
import json,sys
r=json.loads(sys.argv[1]); c=(int(sys.argv[3])-int(sys.argv[2]))/int(sys.argv[4]); secs=float(sys.argv[5])
print(f"run {sys.argv[7]}: member reads, {int(sys.argv[6]):,} ledger rows, pointsync on one core: {r['per_sec']:,.0f}/s "
      f"(p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, {r['errors']} errors); service CPU "
      f"{c/secs:.2f} cores, {c/max(r['requests'],1)*1e6:.0f} µs per read")
PY
done
[ -n "${READS_ONLY:-}" ] && exit 0
ack_phase() { # LABEL → prints the ack p99 at 200 payments/s for SECS*2 s
  curl -s -X POST "$SIM_URL/sim/reset" >/dev/null
  local n=$((200 * SECS * 2))
  curl -s -X POST "$SIM_URL/sim/generate" -H 'content-type: application/json' \
    -d "{\"count\":$n,\"seed\":$RANDOM,\"members\":200,\"rate_per_sec\":200}" >/dev/null
  sleep $((SECS * 2 + 2))
  for _ in $(seq 100); do
    [ "$(curl -s "$SIM_URL/sim/ack-latency" | python3 -c 'import json,sys;print(json.load(sys.stdin)["count"])')" -ge "$n" ] && break
    sleep 0.2
  done
  curl -s "$SIM_URL/sim/ack-latency"
}
# a first round warms up (new members' first payments); then alternated, twice each: the noise
# of a shared machine shows in the spread
ack_phase >/dev/null
A1=$(ack_phase)
taskset -c 1 "$LOAD" "$URL" "$TOKEN" "$MEMBERS" $((SECS * 2 + 2)) 16 "$API_RATE" > "$WORK/bg1.json" &
BG=$!; B1=$(ack_phase); wait $BG
A2=$(ack_phase)
taskset -c 1 "$LOAD" "$URL" "$TOKEN" "$MEMBERS" $((SECS * 2 + 2)) 16 "$API_RATE" > "$WORK/bg2.json" &
BG=$!; B2=$(ack_phase); wait $BG
python3 - "$A1" "$A2" "$B1" "$B2" "$(cat "$WORK/bg1.json")" "$(cat "$WORK/bg2.json")" "$API_RATE" <<'PY'
import json,sys
a=[json.loads(x) for x in sys.argv[1:3]]; b=[json.loads(x) for x in sys.argv[3:5]]
bg=[json.loads(x) for x in sys.argv[5:7]]
f=lambda r:f"p99 {r['p99_ms']} ms (p50 {r['p50_ms']}, n {r['count']})"
print("callback ack at 200/s alone:           " + "; ".join(map(f,a)))
print(f"callback ack at 200/s, {sys.argv[7]} API reads/s: " + "; ".join(map(f,b)))
print("  API reads meanwhile: " + "; ".join(f"{r['per_sec']}/s p99 {r['p99_ms']} ms, {r['errors']} errors" for r in bg))
ma=sum(r['p99_ms'] for r in a)/2; mb=sum(r['p99_ms'] for r in b)/2
print(f"ack p99 with API traffic / without (means of two runs): {mb/max(ma,0.001):.2f} (goal ≤ 1.20)")
PY
