"""Independent AEAD_AES_256_GCM vector for the callback tests (Python `cryptography`).

Run: python3 gen_aead_vector.py > aead_vector.json
"""
import base64, json
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

key = open(__file__.replace("gen_aead_vector.py", "apiv3.key"), "rb").read().strip()
nonce = b"GiCVO6LB04WZ"
aad = b"mall_transaction"
plain = json.dumps({"mchid": "1230000109", "merchant_name": "腾讯广场", "shop_name": "微信支付", "shop_number": "123456",
                    "appid": "wxd678efh567hg6787", "openid": "oUpF8uMuAJ2pxb1Q9zNjWUHsd", "amount": 200,
                    "time_end": "2020-05-20T13:29:35+08:00", "transaction_id": "1234567890"}, ensure_ascii=False).encode()
ct = AESGCM(key).encrypt(nonce, plain, aad)
print(json.dumps({"nonce": nonce.decode(), "associated_data": aad.decode(), "ciphertext": base64.b64encode(ct).decode(),
                  "plaintext": plain.decode()}, ensure_ascii=False))
