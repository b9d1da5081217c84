#!/usr/bin/env bash
# Simulator throughput (issue: wechatpay-sim): requests per second it serves on ONE core (pinned to
# CPU 1) while wrk (CPU 0) replays one pre-signed request. Every request is fully handled: the
# Authorization signature verified (RSA verify), the body validated and recorded, the answer signed
# (RSA sign). The reference is openssl's sign+verify rate on one core in the same run, the ceiling
# for a server that signs every answer.
# Usage: bash bench/sim.sh [SECONDS]   (installs wrk from Debian's packages if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release -q -p wechatpay-sim --bin wechatpay-sim
WORK=$(mktemp -d); SB=$WORK/sb
./target/release/wechatpay-sim init "$SB" >/dev/null
PORT=$((20000 + RANDOM % 20000)); BASE=http://127.0.0.1:$PORT
RUST_LOG=warn taskset -c 1 ./target/release/wechatpay-sim serve "$SB" --listen 127.0.0.1:$PORT >/dev/null 2>&1 &
SIM=$!
trap 'kill $SIM 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "$BASE/sim/counters" && break; sleep 0.1; done
MCHID=$(python3 -c "import json;print(json.load(open('$SB/sandbox.json'))['mchid'])")
SERIAL=$(python3 -c "import json;print(json.load(open('$SB/sandbox.json'))['merchant_serial'])")
OPENID=$(curl -s -X POST "$BASE/sim/members" -H 'content-type: application/json' -d '{"push":false}' | python3 -c "import json,sys;print(json.load(sys.stdin)['openid'])")
TX=$(curl -s -X POST "$BASE/sim/payments" -H 'content-type: application/json' -d "{\"openid\":\"$OPENID\",\"amount\":1000}")
export BODY=$(echo "$TX" | python3 -c "import json,sys;t=json.load(sys.stdin);print(json.dumps({'transaction_id':t['transaction_id'],'appid':t['appid'],'openid':t['openid'],'earn_points':True,'increased_points':10,'points_update_time':'2026-11-27T10:00:00+08:00'},separators=(',',':')))")

sign() { # METHOD PATH BODY → Authorization
  local ts nonce sig
  ts=$(date +%s); nonce=BENCH$RANDOM$RANDOM
  sig=$(printf '%s\n%s\n%s\n%s\n%s\n' "$1" "$2" "$ts" "$nonce" "$3" | openssl dgst -sha256 -sign "$SB/merchant/apiclient_key.pem" | base64 -w0)
  echo "WECHATPAY2-SHA256-RSA2048 mchid=\"$MCHID\",nonce_str=\"$nonce\",signature=\"$sig\",timestamp=\"$ts\",serial_no=\"$SERIAL\""
}
cat > "$WORK/req.lua" <<'LUA'
wrk.method = os.getenv("METHOD")
wrk.body = os.getenv("METHOD") == "POST" and os.getenv("BODY") or nil
wrk.headers["Authorization"] = os.getenv("AUTH")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
wrk.headers["User-Agent"] = "wrk-bench"
LUA

speed=$(taskset -c 1 openssl speed -seconds 3 rsa2048 2>/dev/null | grep -E '^rsa 2048 bits')
sign_s=$(echo "$speed" | awk '{print $(NF-1)}'); verify_s=$(echo "$speed" | awk '{print $NF}')
ceiling=$(python3 -c "print(round(1/(1/$sign_s + 1/$verify_s)))")
echo "openssl on one core: sign/s=$sign_s verify/s=$verify_s → ceiling for sign+verify per request: $ceiling req/s"

run() { # NAME METHOD PATH
  export METHOD=$2 AUTH
  AUTH=$(sign "$2" "$3" "$([ "$2" = POST ] && echo "$BODY" || true)")
  out=$(taskset -c 0 wrk -t1 -c32 -d"${SECS}s" --latency -s "$WORK/req.lua" "$BASE$3")
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  bad=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  echo "$1: ${rps} req/s on one core (p99 ${p99}, non-2xx ${bad:-0}) = $(python3 -c "print(round($rps/$ceiling,3))") of the sign+verify ceiling"
}
run "points notify (POST, 204)" POST /v3/businesscircle/points/notify
run "authorization query (GET, 200 JSON)" GET "/v3/businesscircle/user-authorizations/$OPENID?appid=wx1234567890abcdef"
