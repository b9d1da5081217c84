#!/usr/bin/env bash
# pointsync scale-out benchmark (issue 11): the simulator and pointsync on this machine, on SQLite
# (1 instance) and on the local PostgreSQL (1, 2, 3 instances behind the simulator's round-robin
# delivery), everything measured in one run. For each setup: a 200 payments/s phase (ack and
# callback→sync latency, CPU per transaction at a moderate rate) and a phase as fast as the
# simulator can push (transactions/s beside the machine's crypto ceiling: payments over the time
# from asking the simulator to generate them, its members' authorizations first, to the last sync
# recorded done). CPU per transaction is
# read from /proc for every process: the service (all instances), the simulator, PostgreSQL (its
# live processes plus what its postmaster reaped) — and, on SQLite, the service's writer thread
# alone (CPU and write calls) — and the context switches per transaction of the service and the
# simulator (their live threads): the thread hand-offs and wake-ups each payment pays for — and the
# share of syncs leased on receipt (the rest each waited for a claim) — and PostgreSQL's buffer
# accesses, commits and WAL bytes per transaction: counts, steady however noisy the machine. Ends
# with the scale-out model on paper.
# Usage: bash bench/scaleout.sh [MAX_PAYMENTS] [RATE_PAYMENTS] [SETUPS]
#   defaults 10000, 4000 and "sqlite:1 postgres:1 postgres:2 postgres:3"
# POINTSYNC_BENCH_POSTGRES: the server (default postgres://postgres@127.0.0.1:5432/postgres).
# PS_BIN / SIM_BIN: the pointsync / simulator binary to measure (default the release builds), to
# compare two builds.
# MAX_RATE: what the simulator offers in the maximum phase, payments/s (default 5000: an open loop
# well past capacity). MEMBERS: how many members the generated payments are spread over (default
# 200). PS_WORKERS: each instance's runtime worker threads (TOKIO_WORKER_THREADS); default its share
# of the cores, cores ÷ instances and at least 1, as the README advises for instances sharing a
# machine; "all" leaves tokio's default, one per core, to every instance. PG_VACUUM=1: a VACUUM
# (ANALYZE) of the PostgreSQL database before each phase, its CPU counted in the phase's (default
# none: on a server running with autovacuum off, as this machine's, the analyse before the first
# phase freezes an empty database's statistics for the whole run).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
MAX=${1:-10000}
RATE_COUNT=${2:-4000}
SETUPS=${3:-sqlite:1 postgres:1 postgres:2 postgres:3}
PG_ADMIN=${POINTSYNC_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}
cargo build --release -q -p pointsync -p wechatpay-sim
PS_BIN=${PS_BIN:-./target/release/pointsync}
SIM_BIN=${SIM_BIN:-./target/release/wechatpay-sim}
WORK=$(mktemp -d); SB=$WORK/sandbox
"$SIM_BIN" init "$SB" >/dev/null
PIDS=()
DB_NAME=""
cleanup() {
  kill "${PIDS[@]}" 2>/dev/null || true
  [ -z "$DB_NAME" ] || psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
# context switches (voluntary and not) of process $1's live threads: its thread hand-offs and wake-ups
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^(non)?voluntary_ctxt_switches/ {n+=$2} END {print n+0}'; }
# syncs of result $1 (done, leased_on_receipt) so far, all instances together (admin ports after)
syncs_total() {
  local result=$1 a n=0; shift
  for a in "$@"; do
    n=$((n + $(curl -s "http://127.0.0.1:$a/metrics" | awk -v r="$result" '$1 == "pointsync_syncs_total{result=\"" r "\"}" {n=$2} END {printf "%d", n+0}')))
  done
  echo "$n"
}
# SQLite's writer thread of process $1 ("pointsync-writer", which the kernel cuts to 15 characters):
# its CPU ticks and its write calls
writer_stats() {
  local t
  for t in /proc/$1/task/*; do
    [ "$(cat "$t/comm")" = pointsync-write ] || continue
    echo "$(awk '{print $14+$15}' "$t/stat") $(awk '/^syscw/ {print $2}' "$t/io")"; return
  done
  echo "0 0"
}

# PostgreSQL's work in database $1 so far, as counts that no other load on the machine changes:
# buffer accesses, committed transactions, and bytes of WAL (the server's, all databases). A
# backend reports its counts when idle for a second, so this waits that long first.
pg_work() {
  sleep 1.5
  psql -qAt "$1" -F ' ' -c "SELECT blks_hit + blks_read, xact_commit, pg_current_wal_lsn() - '0/0'::pg_lsn FROM pg_stat_database WHERE datname = current_database()"
}

# the crypto floor and ceiling: best of three 2-second openssl runs
crypto_speed
CORES=$(nproc)
FLOOR=$(python3 -c "print(1e6/$sign_s + 2e6/$verify_s)")
CEILING=$(python3 -c "print($CORES*1e6/(3e6/$sign_s + 3e6/$verify_s))")
printf 'openssl rsa2048: %.0f signs/s, %.0f verifies/s; service floor (1 sign + 2 verifies) %.0f µs; %s-core crypto ceiling (3 signs + 3 verifies per tx) %.0f tx/s\n' \
  "$sign_s" "$verify_s" "$FLOOR" "$CORES" "$CEILING"

SIMP=$(port); SIM_URL=http://127.0.0.1:$SIMP
cat > "$WORK/pointsync.toml" <<TOML
[service]
public_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
database = "$WORK/unused.db"
$(wechatpay_toml)
$(throughput_toml)
TOML

RESULTS=$WORK/results.jsonl
run_setup() { # STORE INSTANCES
  local store=$1 n=$2 db i urls=() svc=() adm=()
  if [ "$store" = sqlite ]; then
    db=$WORK/pointsync-$n.db
  else
    DB_NAME=pointsync_bench_$$_$n
    psql -q "$PG_ADMIN" -c "CREATE DATABASE $DB_NAME" >/dev/null
    db=$(db_url "$PG_ADMIN" "$DB_NAME")
    # the instances migrate it as they open it (an advisory lock serialises them)
  fi
  local pubs=()
  for i in $(seq "$n"); do pubs+=("$(port)"); adm+=("$(port)"); done
  local notify=()
  for p in "${pubs[@]}"; do notify+=(--notify-url "http://127.0.0.1:$p/wechatpay/notify"); done
  RUST_LOG=warn "$SIM_BIN" serve "$SB" --listen "127.0.0.1:$SIMP" "${notify[@]}" --time-scale 0.01 >/dev/null 2>&1 &
  local sim=$!; PIDS+=("$sim")
  for _ in $(seq 200); do curl -sf "$SIM_URL/sim/counters" >/dev/null && break; sleep 0.05; done
  local workers=${PS_WORKERS:-$(( CORES / n > 0 ? CORES / n : 1 ))}
  local env_workers=(env)
  if [ "$workers" = all ]; then workers="$CORES (tokio's default)"; else env_workers+=(TOKIO_WORKER_THREADS="$workers"); fi
  echo "$store ×$n: runtime worker threads per instance: $workers"
  for i in $(seq 0 $((n - 1))); do
    "${env_workers[@]}" POINTSYNC__SERVICE__DATABASE=$db POINTSYNC__SERVICE__PUBLIC_LISTEN=127.0.0.1:${pubs[$i]} \
      POINTSYNC__SERVICE__ADMIN_LISTEN=127.0.0.1:${adm[$i]} \
      "$PS_BIN" serve --config "$WORK/pointsync.toml" >/dev/null 2>"$WORK/pointsync-$i.log" &
    svc+=($!); PIDS+=($!)
  done
  for i in $(seq 0 $((n - 1))); do
    local up=""
    for _ in $(seq 200); do curl -sf "http://127.0.0.1:${adm[$i]}/healthz" >/dev/null && { up=1; break; }; sleep 0.05; done
    [ -n "$up" ] || { echo "pointsync instance $i did not start"; cat "$WORK/pointsync-$i.log"; exit 1; }
  done
  local admins; admins=$(printf 'http://127.0.0.1:%s/metrics ' "${adm[@]}")
  for ph in "200/s $RATE_COUNT 200 2" "max $MAX ${MAX_RATE:-5000} 3"; do
    set -- $ph
    local name=$1 count=$2 rate=$3 seed=$4
    curl -s -X POST "$SIM_URL/sim/reset" >/dev/null
    local g0="0 0 0" g1="0 0 0"
    [ "$store" = sqlite ] || g0=$(pg_work "$db")
    # the counters first: scraping them is not the phase's work
    local before leased0
    before=$(syncs_total done "${adm[@]}"); leased0=$(syncs_total leased_on_receipt "${adm[@]}")
    local c0=0 s0 p0 t0 since x0=0 y0
    for p in "${svc[@]}"; do c0=$((c0 + $(ticks "$p"))); x0=$((x0 + $(switches "$p"))); done
    s0=$(ticks "$sim"); y0=$(switches "$sim"); p0=$(pg_ticks)
    # PG_VACUUM=1: the database vacuumed and analysed first, as pgbench vacuums before each run;
    # its CPU counts in the phase's, its time does not
    if [ "$store" != sqlite ] && [ "${PG_VACUUM:-0}" = 1 ]; then psql -q "$db" -c "VACUUM (ANALYZE)"; fi
    t0=$(date +%s.%N); since=$(($(date +%s%N)/1000000))
    local w0; w0=$(writer_stats "${svc[0]}")
    curl -s -X POST "$SIM_URL/sim/generate" -H 'content-type: application/json' \
      -d "{\"count\":$count,\"seed\":$seed$n,\"members\":${MEMBERS:-200},\"rate_per_sec\":$rate}" >/dev/null
    # one long-lived poller: the simulator's accepted syncs until they are all there (a scrape of
    # /metrics counts the backlog in the database: at 10 Hz on every instance that was ~8 % of
    # PostgreSQL's CPU per payment), then done across the instances and the shared backlog empty
    python3 - "$count" "$before" "$SIM_URL" $admins <<'PY'
import json,re,sys,time,urllib.request
count,before,sim,urls=int(sys.argv[1]),float(sys.argv[2]),sys.argv[3],sys.argv[4:]
while json.load(urllib.request.urlopen(sim+'/sim/counters'))['points_accepted']<count:
    time.sleep(0.1)
def value(text,pattern):
    m=re.search(r'^'+pattern+r' (\S+)$',text,re.M)
    return float(m.group(1)) if m else 0.0
def scrape():
    ts=[urllib.request.urlopen(u).read().decode() for u in urls]
    done=sum(value(t,r'pointsync_syncs_total\{result="done"\}') for t in ts)
    busy=value(ts[0],r'pointsync_sync_backlog\{state="pending"\}')+value(ts[0],r'pointsync_sync_backlog\{state="inflight"\}')
    return done,busy
while True:
    done,busy=scrape()
    if done-before>=count and busy==0: break
    time.sleep(0.1)
PY
    local polled c1=0 s1 p1 lat ack x1=0 y1
    polled=$(python3 -c "import time;print(time.time()-$t0)")
    for p in "${svc[@]}"; do c1=$((c1 + $(ticks "$p"))); x1=$((x1 + $(switches "$p"))); done
    s1=$(ticks "$sim"); y1=$(switches "$sim"); p1=$(pg_ticks)
    local w1; w1=$(writer_stats "${svc[0]}")
    local leased1; leased1=$(syncs_total leased_on_receipt "${adm[@]}")
    [ "$store" = sqlite ] || g1=$(pg_work "$db")
    if [ "$store" = sqlite ]; then
      lat=$(python3 -c "
import sqlite3,sys
c=sqlite3.connect('file:$db?mode=ro',uri=True)
v=[r[0] for r in c.execute('SELECT done_at-created_at FROM outbox WHERE state=\'done\' AND created_at>=? ORDER BY 1',($since,))]
last=c.execute('SELECT MAX(done_at) FROM outbox WHERE state=\'done\' AND created_at>=?',($since,)).fetchone()[0]
print(v[round((len(v)-1)*0.5)],v[round((len(v)-1)*0.99)],last)")
    else
      lat=$(psql -qAt "$db" -F ' ' -c "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY done_at-created_at), percentile_disc(0.99) WITHIN GROUP (ORDER BY done_at-created_at), MAX(done_at) FROM outbox WHERE state='done' AND created_at >= $since")
    fi
    ack=$(curl -s "$SIM_URL/sim/ack-latency")
    local counters; counters=$(curl -s "$SIM_URL/sim/counters")
    python3 - "$store" "$n" "$name" "$count" "$since" "$((c1 - c0))" "$((s1 - s0))" "$((p1 - p0))" "$lat" "$ack" "$FLOOR" "$CEILING" "$counters" "$w0" "$w1" "$((x1 - x0))" "$((y1 - y0))" "$((leased1 - leased0))" "$g0" "$g1" "$polled" >> "$RESULTS" <<'PY'
import json,sys
a=sys.argv[1:]
k=json.loads(a[12])
(wt0,ww0),(wt1,ww1)=(map(int,x.split()) for x in a[13:15])
(b0,x0,l0),(b1,x1,l1)=(map(float,x.split()) for x in a[18:20])
tick=1e6/100 # µs per clock tick
count,since=int(a[3]),int(a[4])
svc,sim,pg=(int(x)*tick/count for x in a[5:8])
lat=a[8].split(); ack=json.loads(a[9]); floor,ceiling=float(a[10]),float(a[11])
# the phase lasts from asking the simulator to generate it to the last sync recorded done (the
# poller's 0.1 s steps are not the system's time)
wall=(int(lat[2])-since)/1000
print(json.dumps({"store":a[0],"instances":int(a[1]),"phase":a[2],"count":count,"tps":count/wall,"wall_s":wall,"polled_s":float(a[20]),
  "of_ceiling":count/wall/ceiling,"ack_p50":ack["p50_ms"],"ack_p99":ack["p99_ms"],
  "sync_p50":int(lat[0]),"sync_p99":int(lat[1]),"svc_us":svc,"svc_floor":svc/floor,"sim_us":sim,"pg_us":pg,
  "deliveries_per_ack":k["callback_attempts"]/max(k["callback_acks"],1),
  "writer_us":(wt1-wt0)*tick/count,"writer_writes":(ww1-ww0)/count,
  "svc_switches":int(a[15])/count,"sim_switches":int(a[16])/count,"leased_on_receipt":int(a[17])/count,
  "pg_buffers":(b1-b0)/count,"pg_commits":(x1-x0)/count,"pg_wal_bytes":(l1-l0)/count}))
PY
    tail -1 "$RESULTS" | python3 -c "
import json,sys
r=json.load(sys.stdin)
pg=f\"; PostgreSQL {r['pg_us']:.0f} µs/tx ({r['pg_us']/r['svc_us']:.2f} of the service's), {r['pg_buffers']:.0f} buffer accesses, {r['pg_commits']:.2f} commits, {r['pg_wal_bytes']:.0f} WAL bytes per tx\" if r['store']=='postgres' else f\"; its SQLite writer thread {r['writer_us']:.0f} µs/tx, {r['writer_writes']:.1f} write calls/tx\"
print(f\"{r['store']} ×{r['instances']} {r['phase']:>5}: {r['tps']:.0f} tx/s ({r['of_ceiling']:.2f} of the ceiling; {r['wall_s']:.2f} s to the last sync done, the poller saw {r['polled_s']:.2f} s); ack p50 {r['ack_p50']:.1f} p99 {r['ack_p99']:.1f} ms; callback→sync p50 {r['sync_p50']} p99 {r['sync_p99']} ms; service {r['svc_us']:.0f} µs/tx = {r['svc_floor']:.2f}× floor, {r['svc_switches']:.1f} context switches/tx; simulator {r['sim_us']:.0f} µs/tx, {r['sim_switches']:.1f} switches/tx; {r['deliveries_per_ack']:.2f} deliveries per acknowledged callback; {r['leased_on_receipt']:.0%} of syncs leased on receipt{pg}\")"
  done
  kill "${svc[@]}" "$sim" 2>/dev/null || true
  wait "${svc[@]}" "$sim" 2>/dev/null || true
  PIDS=()
  if [ "$store" = postgres ]; then
    psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null; DB_NAME=""
  fi
}

for s in $SETUPS; do run_setup "${s%%:*}" "${s##*:}"; done

# the scale-out model, on paper, from the PostgreSQL max phases
python3 - "$RESULTS" <<'PY'
import json,sys
rows=[json.loads(l) for l in open(sys.argv[1])]
pg=[r for r in rows if r["store"]=="postgres" and r["phase"]=="max"]
if pg:
    best=min(pg,key=lambda r:r["pg_us"])
    per_core=1e6/best["pg_us"]
    per_instance_core=1e6/best["svc_us"]
    print(f"scale-out model: PostgreSQL spends {best['pg_us']:.0f} µs per transaction (×{best['instances']} run), so one PostgreSQL core carries ~{per_core:.0f} tx/s; "
          f"a pointsync core carries ~{per_instance_core:.0f} tx/s (its {best['svc_us']:.0f} µs/tx), so one PostgreSQL core keeps ~{per_core/per_instance_core:.1f} fully loaded pointsync cores busy "
          f"(WeChat's side excluded: on a real deployment the simulator's half of the crypto is not on these machines)")
PY
