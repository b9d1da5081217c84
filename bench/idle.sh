#!/usr/bin/env bash
# Idle cost with a long history (issue 5). Fills a database with N transactions (inbox rows carry
# a decrypted MALL_TRANSACTION resource of realistic size; outbox rows are done), times the
# operator's full status counts against the backlog query the metrics scrape uses, then runs each
# given pointsync binary idle for 30 s on that database and prints its CPU time and RSS.
# Usage: bash bench/idle.sh [N] [BIN...]     (defaults: 1000000 and target/release/pointsync)
# To compare with an older build, build it apart (its own CARGO_TARGET_DIR: a shared target/ can
# leave the newer tree linking the older library) and pass both binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
shift || true
BINS=("$@")
cargo build --release -q -p wechatpay-sim --bin wechatpay-sim
if [ ${#BINS[@]} -eq 0 ]; then
  cargo build --release -q -p pointsync
  BINS=(target/release/pointsync)
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
./target/release/wechatpay-sim init "$WORK/sandbox" >/dev/null
j() { python3 -c "import json;print(json.load(open('$WORK/sandbox/sandbox.json'))['$1'])"; }
port() { python3 -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])"; }
cat > "$WORK/pointsync.toml" <<TOML
[service]
public_listen = "127.0.0.1:$(port)"
admin_listen = "127.0.0.1:$(port)"
database = "$WORK/pointsync.db"
[wechatpay]
mchid = "$(j mchid)"
serial = "$(j merchant_serial)"
private_key = "$WORK/sandbox/merchant/apiclient_key.pem"
apiv3_key_file = "$WORK/sandbox/apiv3.key"
trust = ["$WORK/sandbox/wechat/platform_cert.pem"]
base_url = "http://127.0.0.1:9"
backup_url = ""
TOML
"${BINS[0]}" migrate --config "$WORK/pointsync.toml" >/dev/null
python3 - "$WORK/pointsync.db" "$N" <<'PY'
import json, sqlite3, sys, time
c = sqlite3.connect(sys.argv[1]); n = int(sys.argv[2])
c.execute("PRAGMA synchronous=OFF")
resource = json.dumps({"mchid": "1230000109", "merchant_name": "某某广场", "shop_name": "星巴克（沙盒店）",
    "shop_number": "S001", "appid": "wx1234567890abcdef", "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
    "time_end": "2026-11-27T10:00:00+08:00", "amount": 12345, "transaction_id": "4200000000000000000001",
    "commit_tag": "", "extra": "x" * 200}, ensure_ascii=False)
c.executemany("INSERT INTO inbox (event_type,transaction_id,refund_id,notification_id,openid,resource,status,received_at) "
              "VALUES ('MALL_TRANSACTION.SUCCESS',?,'',?,?,?,'applied',0)",
              ((f"F{i:019d}", f"EV-F{i}", f"oF{i % 100000}", resource) for i in range(n)))
c.executemany("INSERT INTO outbox (transaction_id,payload,state,due_at,created_at,done_at) VALUES (?,'{}','done',0,0,0)",
              ((f"F{i:019d}",) for i in range(n)))
c.commit()
for what, q in [("status: outbox by state", "SELECT state, COUNT(*) FROM outbox GROUP BY state"),
                ("status: inbox by status", "SELECT status, COUNT(*) FROM inbox GROUP BY status"),
                ("scrape: backlog", "SELECT state, COUNT(*) FROM outbox WHERE state IN ('pending', 'inflight', 'parked', 'dead') GROUP BY state")]:
    c.execute(q).fetchall()  # warm
    t = time.perf_counter(); c.execute(q).fetchall(); dt = time.perf_counter() - t
    print(f"{what:26s} {dt * 1000:8.1f} ms with {n} transactions")
PY
for bin in "${BINS[@]}"; do
  "$bin" serve --config "$WORK/pointsync.toml" >/dev/null 2>&1 &
  pid=$!
  sleep 3
  a=$(awk '{print $14+$15}' "/proc/$pid/stat"); sleep 30; b=$(awk '{print $14+$15}' "/proc/$pid/stat")
  echo "$bin: idle CPU over 30 s $(( (b - a) * 10 )) ms; RSS $(awk '/VmRSS/ {print $2/1024}' "/proc/$pid/status") MiB"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
