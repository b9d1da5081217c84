#!/usr/bin/env bash
# Callback benchmark (issue: verified, decrypted, typed callbacks): µs per verified + decrypted
# callback, and its ratio to one RSA-2048 verify from `openssl speed rsa2048` in the same run.
# Usage: bash bench/callback.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-50000}
cargo build --release -q -p wechatpay --features test-util --example callback_bench
PIN=""; command -v taskset >/dev/null && PIN="taskset -c 0"
speed=$($PIN openssl speed -seconds 3 rsa2048 2>/dev/null | grep -E '^rsa 2048 bits')
verify_s=$(echo "$speed" | awk '{print $NF}')
verify_us=$(python3 -c "print(1e6/$verify_s)")
line=$($PIN ./target/release/examples/callback_bench "$N")
us=$(echo "$line" | sed -E 's/.*us_per_callback=([0-9.]+).*/\1/')
echo "openssl speed rsa2048: verify/s=$verify_s → $(printf %.2f "$verify_us") µs per verify"
echo "$line  ratio_to_one_verify=$(python3 -c "print(round($us/$verify_us, 3))")"
