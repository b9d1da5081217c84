//! Callback verification cost: µs per verified + decrypted + typed `MALL_TRANSACTION.SUCCESS`
//! callback (signature check, envelope parse, AES-256-GCM, typed decode). Run by `bench/callback.sh`,
//! which compares it with one RSA-2048 verify from `openssl speed` in the same run.

use wechatpay::notify::{Event, NotifyParser};
use wechatpay::testing::{CallbackSigner, CallbackSpec, example_transaction, keys};
use wechatpay::{ApiV3Key, TrustStore};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50_000);
    let mut trust = TrustStore::new();
    trust
        .add_certificate_pem(keys::PLATFORM_CERT_PEM)
        .expect("test cert");
    let parser = NotifyParser::new(trust, ApiV3Key::new(keys::APIV3_KEY).expect("test key"));
    let now = 1_700_000_000;
    let event = Event::MallTransaction(example_transaction());
    let cb = CallbackSigner::test_platform().build(&event, &CallbackSpec::at(now));
    for _ in 0..1000 {
        parser
            .verify_at(&cb.headers, &cb.body, now)
            .expect("valid callback");
    }
    let t = wechatpay::clock::monotonic();
    for _ in 0..n {
        std::hint::black_box(
            parser
                .verify_at(&cb.headers, &cb.body, now)
                .expect("valid callback"),
        );
    }
    println!(
        "callbacks={n} us_per_callback={:.2}",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}
