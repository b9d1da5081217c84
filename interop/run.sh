#!/usr/bin/env bash
# Interoperability with a third-party WeChat Pay SDK (PyPI `wechatpayv3`, installed here into a
# virtualenv under target/): points notify against wechatpay-sim in certificate and public-key
# modes, with the SDK's response verification on. Run by .ci/run; needs Python 3 and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/interop-venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check "wechatpayv3==2.0.4"
cargo build -q -p wechatpay-sim --bin wechatpay-sim
WORK=$(mktemp -d)
SIMS=()
trap 'kill "${SIMS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
for mode in cert pubkey; do
  sb="$WORK/$mode"
  ./target/debug/wechatpay-sim init "$sb" --mode "$mode" >/dev/null
  port=$((20000 + RANDOM % 20000))
  ./target/debug/wechatpay-sim serve "$sb" --listen "127.0.0.1:$port" >"$WORK/$mode.log" 2>&1 &
  SIMS+=($!)
  for _ in $(seq 100); do grep -q "127.0.0.1:$port" "$sb/wxpay.env" 2>/dev/null && break; sleep 0.1; done
  "$VENV/bin/python" interop/wechatpayv3_check.py "$sb" "http://127.0.0.1:$port"
done
