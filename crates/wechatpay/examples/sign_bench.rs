//! RSA-2048 PKCS#1 v1.5 SHA-256 signing cost with aws-lc-rs, to compare with `openssl speed rsa2048`.

fn main() {
    let key = wechatpay::PrivateKey::from_pem(wechatpay::testing::keys::MERCHANT_KEY_PEM).unwrap();
    let msg =
        b"POST\n/v3/businesscircle/points/notify\n1700000000\nNONCE\n{\"transaction_id\":\"1\"}\n";
    for _ in 0..200 {
        key.sign_base64(msg);
    }
    let t = wechatpay::clock::monotonic();
    for _ in 0..3000 {
        std::hint::black_box(key.sign_base64(msg));
    }
    println!(
        "aws-lc sign: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / 3000.0
    );
}
