//! RSA-2048 PKCS#1 v1.5 SHA-256 signing and verifying cost with aws-lc-rs, to compare with
//! `openssl speed rsa2048` (its sign/s and verify/s columns).

use base64::Engine;

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

    // a key pair whose public half the SDK reads as WeChat's platform public key
    let signer = wechatpay::PrivateKey::from_pem(wechatpay::testing::keys::PUBKEY_KEY_PEM).unwrap();
    let public = wechatpay::PublicKey::from_pem(wechatpay::testing::keys::PUBKEY_PEM).unwrap();
    let sig = base64::engine::general_purpose::STANDARD
        .decode(signer.sign_base64(msg))
        .unwrap();
    assert!(public.verify(msg, &sig), "the test key pair does not match");
    let t = wechatpay::clock::monotonic();
    for _ in 0..20000 {
        assert!(std::hint::black_box(public.verify(msg, &sig)));
    }
    println!(
        "aws-lc verify: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / 20000.0
    );
}
