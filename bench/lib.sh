# Shared by the benchmark scripts (sourced).

# The [wechatpay] section pointing pointsync at the simulator's sandbox in $SB and at $SIM_URL.
wechatpay_toml() {
  python3 - "$SB/sandbox.json" "$SB" "$SIM_URL" <<'PY'
import json,sys
j=json.load(open(sys.argv[1])); sb,url=sys.argv[2],sys.argv[3]
print(f'''[wechatpay]
mchid = "{j['mchid']}"
serial = "{j['merchant_serial']}"
private_key = "{sb}/merchant/apiclient_key.pem"
apiv3_key_file = "{sb}/apiv3.key"
trust = ["{sb}/wechat/platform_cert.pem"]
base_url = "{url}"
backup_url = ""''')
PY
}

# The dispatcher and rules of the throughput benchmarks: the rate limit out of the way, and 64 syncs
# in flight per instance (32 until the eleventh session: at the maximum, claims of half as many
# rows, ~5-9 % fewer payments/s on SQLite and one PostgreSQL instance; 128 gained nothing and
# raised the callbacks' ack latency — BENCHMARKS.md). A mall sets `qps` to WeChat's limit for it and
# `concurrency` to about that rate times WeChat's answer time.
throughput_toml() {
  printf '%s\n' '[dispatcher]' 'qps = 5000' 'concurrency = 64' 'batch = 128' '[rules]' 'points_per_yuan = 1.0'
}

# RSA-2048 signs and verifies per second on one core into $sign_s and $verify_s: the best of three
# 2-second `openssl speed` runs, the conservative figure on a noisy shared machine.
crypto_speed() {
  sign_s=0; verify_s=0
  for _ in 1 2 3; do
    speed=$(openssl speed -seconds 2 rsa2048 2>/dev/null | grep -E '^rsa 2048 bits')
    sign_s=$(python3 -c "print(max($sign_s, $(echo "$speed" | awk '{print $(NF-1)}')))")
    verify_s=$(python3 -c "print(max($verify_s, $(echo "$speed" | awk '{print $NF}')))")
  done
}

# The URL of database $2 on the server at URL $1 (the same server, user and options).
db_url() { python3 -c "import urllib.parse as u,sys;p=u.urlparse(sys.argv[1]);print(p._replace(path='/'+sys.argv[2]).geturl())" "$1" "$2"; }

# A scratch PostgreSQL database $1 on the server at $PG_ADMIN (default the local one), created and
# migrated by pointsync's release build, its URL in $URL, and a scratch directory in $WORK; both
# are removed when the script exits.
pg_scratch_db() {
  PG_ADMIN=${PG_ADMIN:-${POINTSYNC_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}}
  SCRATCH_DB=$1
  WORK=$(mktemp -d)
  trap 'psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $SCRATCH_DB WITH (FORCE)" >/dev/null 2>&1; rm -rf "$WORK"' EXIT
  cargo build --release -q -p pointsync -p wechatpay-sim
  URL=$(db_url "$PG_ADMIN" "$1")
  psql -q "$PG_ADMIN" -c "CREATE DATABASE $1" >/dev/null
  # a configuration only for `migrate` (it checks the merchant's settings too): the simulator's
  SB=$WORK/sandbox; SIM_URL=http://127.0.0.1:9
  ./target/release/wechatpay-sim init "$SB" >/dev/null
  { printf '[service]\ndatabase = "%s"\n' "$URL"; wechatpay_toml; } > "$WORK/pointsync.toml"
  ./target/release/pointsync migrate --config "$WORK/pointsync.toml" >/dev/null
}

# A free loopback port.
port() { python3 -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])"; }
# CPU ticks (user + system) process $1 has used so far.
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
# PostgreSQL's CPU so far: its live processes, plus the children its postmaster reaped
pg_ticks() {
  local pm; pm=$(ps -C postgres -o pid=,ppid= | awk '$2==1 {print $1}' | head -1)
  [ -n "$pm" ] || { echo 0; return; }
  { for p in $(ps -C postgres -o pid=); do awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || true; done
    awk '{print $16+$17}' "/proc/$pm/stat"; } | awk '{s+=$1} END {print s+0}'
}
