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

# The dispatcher and rules of the throughput benchmarks: the rate limit out of the way.
throughput_toml() {
  printf '%s\n' '[dispatcher]' 'qps = 5000' 'concurrency = 32' 'batch = 128' '[rules]' 'points_per_yuan = 1.0'
}
