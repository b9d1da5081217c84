//! Callbacks pushed as WeChat pushes them: signed and encrypted, success only on 200/204, retried
//! on WeChat's schedules (scaled by `time_scale` so tests run a whole schedule in seconds), with
//! optional duplicate and `WECHATPAY/SIGNTEST/` probe deliveries.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use wechatpay::notify::Event;
use wechatpay::testing::CallbackSpec;

use crate::options::PushConfig;
use crate::shared::Shared;
use crate::state::Delivery;

/// Payments and refunds: re-sent after 15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/3h/3h/3h/6h/6h.
pub const PAYMENT_SCHEDULE: [u64; 15] = [
    15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600,
];
/// Authorizations: re-sent for about 5 minutes.
pub const AUTH_SCHEDULE: [u64; 10] = [1, 10, 10, 10, 10, 10, 60, 60, 60, 60];

/// Pushes `event` under a new notification id; returns the id.
pub(crate) fn push(sim: &Arc<Shared>, event: Event, key: String) -> String {
    let id = format!("EV-{}", wechatpay::crypto::random_token(24));
    let config = sim.push_config();
    let is_auth = matches!(event, Event::MallAuth(_));
    let urls: Vec<String> = match (is_auth, &config.auth_notify_url) {
        (true, Some(u)) => vec![u.clone()],
        _ => config
            .notify_url
            .iter()
            .chain(&config.more_notify_urls)
            .cloned()
            .collect(),
    };
    {
        let mut s = sim.state.lock().unwrap_or_else(|p| p.into_inner());
        s.deliveries.insert(
            id.clone(),
            Delivery {
                id: id.clone(),
                event_type: event.event_type().to_string(),
                key,
                attempts: 0,
                delivered: false,
                gave_up: false,
                last_status: 0,
            },
        );
    }
    if urls.is_empty() {
        return id;
    }
    sim.pending.fetch_add(1, Ordering::SeqCst);
    let sim2 = sim.clone();
    let id2 = id.clone();
    tokio::spawn(async move {
        deliver(&sim2, &urls, &event, &id2, &config, is_auth).await;
        if sim2.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            sim2.settled.notify_waiters();
        }
    });
    id
}

async fn send(
    sim: &Shared,
    url: &str,
    config: &PushConfig,
    event: &Event,
    id: &str,
    probe: bool,
) -> u16 {
    let spec = CallbackSpec {
        id: id.to_string(),
        probe,
        ..CallbackSpec::at(sim.clock.now())
    };
    let cb = sim.signer.build(event, &spec);
    let started = wechatpay::clock::monotonic();
    let res = sim
        .http
        .post(url)
        .timeout(Duration::from_millis(config.timeout_ms))
        .headers(cb.headers)
        .body(cb.body)
        .send()
        .await;
    let status = res.map(|r| r.status().as_u16()).unwrap_or(0);
    tracing::info!(
        id,
        event_type = event.event_type(),
        url,
        status,
        probe,
        "callback pushed"
    );
    if !probe && (200..300).contains(&status) {
        let us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        sim.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ack_latencies_us
            .push(us);
    }
    status
}

/// The next of `urls`, round-robin over every delivery attempt of the simulator.
fn next_url<'a>(sim: &Shared, urls: &'a [String]) -> &'a str {
    let i = sim.next_url.fetch_add(1, Ordering::Relaxed);
    &urls[i % urls.len()]
}

async fn deliver(
    sim: &Shared,
    urls: &[String],
    event: &Event,
    id: &str,
    config: &PushConfig,
    is_auth: bool,
) {
    let schedule: &[u64] = if is_auth {
        &AUTH_SCHEDULE
    } else {
        &PAYMENT_SCHEDULE
    };
    let mut attempt = 0usize;
    loop {
        let url = next_url(sim, urls);
        if config.probe_rate > 0.0 && sim.roll() < config.probe_rate {
            let status = send(sim, url, config, event, id, true).await;
            if (200..300).contains(&status) {
                sim.state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .counters
                    .probes_accepted += 1;
            }
        }
        let status = send(sim, url, config, event, id, false).await;
        attempt += 1;
        let ok = status == 200 || status == 204;
        {
            let mut s = sim.state.lock().unwrap_or_else(|p| p.into_inner());
            s.counters.callback_attempts += 1;
            if ok {
                s.counters.callback_acks += 1;
            }
            if let Some(d) = s.deliveries.get_mut(id) {
                d.attempts += 1;
                d.last_status = status;
                d.delivered |= ok;
                d.gave_up = !ok && attempt > schedule.len();
            }
        }
        if ok {
            if config.duplicate_rate > 0.0 && sim.roll() < config.duplicate_rate {
                let status = send(sim, url, config, event, id, false).await;
                let mut s = sim.state.lock().unwrap_or_else(|p| p.into_inner());
                s.counters.callback_attempts += 1;
                if status == 200 || status == 204 {
                    s.counters.callback_acks += 1;
                }
                if let Some(d) = s.deliveries.get_mut(id) {
                    d.attempts += 1;
                }
            }
            return;
        }
        if attempt > schedule.len() {
            return;
        }
        let wait = schedule[attempt - 1] as f64 * config.time_scale;
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
}
