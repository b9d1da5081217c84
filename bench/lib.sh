# Shared by the benchmark scripts (sourced): the [wechatpay] section pointing pointsync at the
# simulator's sandbox in $SB and at $SIM_URL.
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
