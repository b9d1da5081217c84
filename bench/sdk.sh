#!/usr/bin/env bash
# SDK benchmark (issue: signed, verified APIv3 calls): points-notify calls against the simulator
# (another process, pinned to CPU 1) from the SDK client (pinned to CPU 0), one at a time and with
# 16 in flight. Reports the client's CPU µs per call, its ratio to one RSA-2048 sign + one verify
# from `openssl speed rsa2048` measured in the same run, and peak RSS.
# Usage: bash bench/sdk.sh [CALLS]
# NOTIFY_BENCH_BIN and SIM_BIN run other builds (an A/B against an older commit built apart).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-3000}
if [ -z "${SIM_BIN:-}" ]; then cargo build --release -q -p wechatpay-sim --bin wechatpay-sim; fi
if [ -z "${NOTIFY_BENCH_BIN:-}" ]; then cargo build --release -q -p wechatpay --example notify_bench; fi
SIM_BIN=${SIM_BIN:-./target/release/wechatpay-sim}
NOTIFY_BENCH_BIN=${NOTIFY_BENCH_BIN:-./target/release/examples/notify_bench}
SB=$(mktemp -d)/sandbox
"$SIM_BIN" init "$SB" >/dev/null
PORT=$((20000 + RANDOM % 20000))
PIN_SIM=""; PIN_CLI=""
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then PIN_SIM="taskset -c 1"; PIN_CLI="taskset -c 0"; fi
RUST_LOG=warn $PIN_SIM "$SIM_BIN" serve "$SB" --listen 127.0.0.1:$PORT >/dev/null 2>&1 &
SIM=$!
trap 'kill $SIM 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q "127.0.0.1:$PORT" "$SB/wxpay.env" 2>/dev/null && break; sleep 0.1; done
set -a; . "$SB/wxpay.env"; set +a

# best of three 2-second runs: the conservative floor on a noisy shared machine
sign_s=0; verify_s=0
for _ in 1 2 3; do
  speed=$($PIN_CLI openssl speed -seconds 2 rsa2048 2>/dev/null | grep -E '^rsa 2048 bits')
  sign_s=$(python3 -c "print(max($sign_s, $(echo "$speed" | awk '{print $(NF-1)}')))")
  verify_s=$(python3 -c "print(max($verify_s, $(echo "$speed" | awk '{print $NF}')))")
done
floor=$(python3 -c "print(1e6/$sign_s + 1e6/$verify_s)")
echo "openssl speed rsa2048: sign/s=$sign_s verify/s=$verify_s → floor (1 sign + 1 verify) = $(printf %.1f "$floor") µs"

for c in 1 16; do
  line=$($PIN_CLI "$NOTIFY_BENCH_BIN" "$N" "$c")
  us=$(echo "$line" | sed -E 's/.*client_cpu_us_per_call=([0-9.]+).*/\1/')
  rss=$(echo "$line" | sed -E 's/.*peak_rss_kib=([0-9]+).*/\1/')
  ratio=$(python3 -c "print(round($us/$floor, 3))")
  echo "in_flight=$c  $line  ratio_to_floor=$ratio  peak_rss_MiB=$(python3 -c "print(round($rss/1024,1))")"
done
