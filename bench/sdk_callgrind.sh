#!/usr/bin/env bash
# Instructions per points-notify call (issue 2), independent of the machine's speed: runs
# `notify_bench` under `valgrind --tool=callgrind` for A and for B calls (one at a time) against the
# simulator, and splits the difference / (B − A) by library: aws-lc (the crypto floor) against
# everything else the SDK makes the CPU do.
# Usage: bash bench/sdk_callgrind.sh [A] [B]     (defaults 100 and 300)
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:-100}; B=${2:-300}
command -v valgrind >/dev/null || { apt-get install -y -q valgrind >/dev/null; }
cargo build --release -q -p wechatpay-sim --bin wechatpay-sim
cargo build --release -q -p wechatpay --example notify_bench
WORK=$(mktemp -d)
./target/release/wechatpay-sim init "$WORK/sandbox" >/dev/null
PORT=$(python3 -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])")
RUST_LOG=warn ./target/release/wechatpay-sim serve "$WORK/sandbox" --listen "127.0.0.1:$PORT" >/dev/null 2>&1 &
SIM=$!
trap 'kill $SIM 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 50); do grep -q "127.0.0.1:$PORT" "$WORK/sandbox/wxpay.env" 2>/dev/null && break; sleep 0.1; done
set -a; . "$WORK/sandbox/wxpay.env"; set +a
for n in "$A" "$B"; do
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.$n" ./target/release/examples/notify_bench "$n" 1 >/dev/null 2>&1
  callgrind_annotate --threshold=100 --auto=no --inclusive=no "$WORK/cg.$n" > "$WORK/self.$n" 2>/dev/null
done
python3 - "$WORK/self.$A" "$WORK/self.$B" "$((B - A))" <<'PY'
import collections, re, sys
def load(f):
    d = collections.Counter()
    for line in open(f):
        m = re.match(r'\s*([\d,]+)\s+\([^)]*\)\s+(.*)', line)
        if m and '=>' not in line and 'PROGRAM TOTALS' not in line:
            d[m.group(2).strip()] += int(m.group(1).replace(',', ''))
    return d
a, b, calls = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
cat = collections.Counter()
for k in b:
    v = (b[k] - a.get(k, 0)) / calls
    if '/aws-lc/' in k or 'aws_lc' in k: c = 'aws-lc'
    elif 'libc.so' in k and ('malloc' in k or 'free' in k): c = 'malloc/free'
    elif 'libc.so' in k: c = 'other libc'
    elif 'tokio' in k: c = 'tokio'
    elif 'hyper' in k: c = 'hyper'
    elif 'reqwest' in k: c = 'reqwest'
    else: c = 'other Rust'
    cat[c] += v
total = sum(cat.values())
for c, v in cat.most_common():
    print(f"{c:12s} {v:12,.0f} instructions per call  {v / total * 100:5.1f} %")
print(f"{'not aws-lc':12s} {total - cat['aws-lc']:12,.0f} instructions per call")
PY
