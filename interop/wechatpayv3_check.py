"""Interoperability: a WeChat Pay SDK we did not write (PyPI `wechatpayv3`) against wechatpay-sim.

Usage: python3 wechatpayv3_check.py SANDBOX_DIR BASE_URL
The SDK's response verification stays on. Checks, for the sandbox's trust mode:
  1. points notify answers 204 and the simulator records the call;
  2. the authorization query answers 200 AUTHORIZED;
  3. with the simulator signing with the wrong key, the SDK raises its own signature error.
Prints `interop MODE: N passed, N failed` and exits non-zero on any failure.
"""
import json
import os
import sys

import requests
from wechatpayv3 import WeChatPay, WeChatPayType

sandbox, base = sys.argv[1], sys.argv[2]
info = json.load(open(os.path.join(sandbox, "sandbox.json")))
read = lambda p: open(os.path.join(sandbox, p)).read()

kwargs = {}
if info["mode"] == "pubkey":
    kwargs = {"public_key": read("wechat/pub_key.pem"), "public_key_id": info["pubkey_id"]}
else:
    # certificate mode: the SDK loads trusted platform certificates from cert_dir
    certs = os.path.join(sandbox, "py-certs")
    os.makedirs(certs, exist_ok=True)
    with open(os.path.join(certs, info["platform_serial"] + ".pem"), "w") as f:
        f.write(read("wechat/platform_cert.pem"))
    kwargs = {"cert_dir": certs}

pay = WeChatPay(
    wechatpay_type=WeChatPayType.MINIPROG,
    mchid=info["mchid"],
    private_key=read("merchant/apiclient_key.pem"),
    cert_serial_no=info["merchant_serial"],
    appid=info["appids"][0],
    apiv3_key=read("apiv3.key").strip(),
    **kwargs,
)
pay._core._gate_way = base  # the SDK has no base-URL option; its default is WeChat's host

member = requests.post(f"{base}/sim/members", json={"push": False}).json()
tx = requests.post(f"{base}/sim/payments", json={"openid": member["openid"], "amount": 8800}).json()

results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(("ok   " if ok else "FAIL ") + name + (f" — {detail}" if detail else ""))


code, _ = pay.points_notify(
    transaction_id=tx["transaction_id"], openid=tx["openid"], earn_points=True, increased_points=88,
    points_update_time="2026-11-27T10:00:00+08:00", total_points=88,
)
syncs = requests.get(f"{base}/sim/transactions/{tx['transaction_id']}/syncs").json()
check("points notify answers 204, verified", code == 204, f"status {code}")
check("the simulator recorded the sync", len(syncs) == 1 and json.loads(syncs[0]["body"])["increased_points"] == 88)

code, body = pay.user_authorization(openid=member["openid"])
check("authorization query answers 200 AUTHORIZED", code == 200 and json.loads(body)["authorize_state"] == "AUTHORIZED", f"{code} {body}")

requests.put(f"{base}/sim/options", json={"sign_with_wrong_key": True})
try:
    pay.points_notify(
        transaction_id=tx["transaction_id"], openid=tx["openid"], earn_points=True, increased_points=88,
        points_update_time="2026-11-27T10:00:00+08:00", total_points=88,
    )
    check("a wrongly signed answer is rejected by the SDK", False, "no exception")
except Exception as e:  # the SDK raises a bare Exception with this text
    check("a wrongly signed answer is rejected by the SDK", "failed to verify the signature" in str(e), str(e))
requests.put(f"{base}/sim/options", json={})

passed = sum(results)
print(f"interop {info['mode']}: {passed} passed, {len(results) - passed} failed")
sys.exit(0 if passed == len(results) else 1)
