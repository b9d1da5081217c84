//! The console's HTML, rendered on the server (maud): plain pages and forms that work without
//! JavaScript; a few lines of script only refresh the activity chart.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::domain::china_time as time;
use crate::store::{InboxView, MemberView, Minute, ParkedSync, Status, describe_failure};

/// The frame every page shares.
pub fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "pointsync — " (title) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                nav {
                    a href="/" { "overview" } " · "
                    a href="/parked" { "parked syncs" } " · "
                    a href="/callbacks" { "recent callbacks" } " · "
                    form.inline method="get" action="/members" {
                        input type="search" name="openid" placeholder="member openid" id="member-search";
                        button type="submit" id="member-go" { "find member" }
                    }
                }
                h1 { (title) }
                (body)
            }
        }
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
nav{margin-bottom:1em}form.inline{display:inline;margin-left:1em}\
table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left}\
.num{text-align:right}.bad{color:#a00}.ok{color:#070}svg{border:1px solid #ddd}";

/// Callbacks (blue) and syncs (green) per minute over the last hour, as an inline SVG.
pub fn chart(minutes: &[Minute], now_minute: i64) -> Markup {
    let first = now_minute - 59;
    let max = minutes
        .iter()
        .map(|m| m.callbacks.max(m.syncs))
        .max()
        .unwrap_or(0)
        .max(1);
    let h = 100.0;
    html! {
        svg id="chart" width="600" height="110" viewBox="0 0 600 110" role="img"
            aria-label="callbacks and syncs per minute, last hour" {
            @for m in minutes.iter().filter(|m| m.minute >= first) {
                @let x = (m.minute - first) * 10;
                @let hc = m.callbacks as f64 / max as f64 * h;
                @let hs = m.syncs as f64 / max as f64 * h;
                rect x=(x) y=(format!("{:.1}", h - hc)) width="4" height=(format!("{hc:.1}")) fill="#36c" {
                    title { (m.callbacks) " callbacks" }
                }
                rect x=(x + 5) y=(format!("{:.1}", h - hs)) width="4" height=(format!("{hs:.1}")) fill="#3a3" {
                    title { (m.syncs) " syncs" }
                }
            }
            text x="2" y="108" font-size="9" { "−60 min" }
            text x="560" y="108" font-size="9" { "now" }
        }
    }
}

/// One trusted WeChat key: its id and, for a certificate, when it expires (Unix seconds).
pub type TrustedRow = (String, Option<i64>);

/// The overview.
pub fn overview(
    status: &Status,
    chart: Markup,
    failures: &[(String, u64)],
    errors: &[String],
    trusted: &[TrustedRow],
    now_ms: i64,
) -> Markup {
    let get = |k: &str| *status.syncs.get(k).unwrap_or(&0);
    page(
        "overview",
        html! {
            h2 { "callbacks and syncs per minute" }
            div id="chart-box" { (chart) }
            p { small { "blue: callbacks stored · green: syncs WeChat answered 204" } }
            h2 { "backlog" }
            table id="backlog" {
                tr { th { "state" } th.num { "syncs" } }
                @for state in ["pending", "inflight", "parked", "dead", "done"] {
                    tr { td { (state) } td.num id=(format!("backlog-{state}")) { (get(state)) } }
                }
            }
            p id="oldest-pending" {
                @match status.oldest_pending_at {
                    Some(t) => { "oldest pending sync: enqueued " ((now_ms - t) / 1000) " s ago" }
                    None => { "oldest pending sync: none" }
                }
            }
            h2 { "verification failures by cause" }
            @if failures.is_empty() { p { "none" } } @else {
                table id="failures" {
                    @for (cause, n) in failures { tr { td { (cause) } td.num { (n) } } }
                }
            }
            h2 { "trusted WeChat Pay keys" }
            table id="trusted" {
                tr { th { "serial or id" } th { "expires" } }
                @for (id, expires) in trusted {
                    tr {
                        td { (id) }
                        td {
                            @match expires {
                                Some(t) => {
                                    (time(t * 1000)) " (in " ((t - now_ms / 1000).div_euclid(86_400)) " days)"
                                }
                                None => { "public key (no expiry)" }
                            }
                        }
                    }
                }
            }
            h2 { "last errors" }
            @if errors.is_empty() { p.ok { "none" } } @else {
                ul id="errors" { @for e in errors { li.bad { (e) } } }
            }
            script { (PreEscaped(REFRESH)) }
        },
    )
}

/// The only script: re-fetch the chart every 15 s.
const REFRESH: &str = "setInterval(function(){fetch('/chart.svg').then(function(r){return r.text()})\
.then(function(t){document.getElementById('chart-box').innerHTML=t})},15000);";

/// Parked and dead syncs with WeChat's reason and a retry button.
pub fn parked(parked: &[ParkedSync], csrf: &str, notice: Option<&str>) -> Markup {
    page(
        "parked syncs",
        html! {
            @if let Some(n) = notice { p.ok id="notice" { (n) } }
            @if parked.is_empty() { p id="none-parked" { "no parked or dead syncs" } } @else {
                table id="parked" {
                    tr { th { "#" } th { "state" } th { "transaction" } th.num { "attempts" } th { "reason" } th {} }
                    @for p in parked {
                        tr id=(format!("parked-{}", p.id)) {
                            td { (p.id) } td { (p.state) } td { (p.transaction_id) }
                            td.num { (p.attempts) } td { (describe_failure(&p.error)) }
                            td {
                                @if p.state == "parked" {
                                    form method="post" action=(format!("/parked/{}/retry", p.id)) {
                                        input type="hidden" name="csrf" value=(csrf);
                                        button type="submit" id=(format!("retry-{}", p.id)) { "retry" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// A member: balance, authorization, ledger with explanations, an adjustment form.
pub fn member(m: &MemberView, csrf: &str, notice: Option<&str>) -> Markup {
    let authorization = match m.authorized {
        Some(true) => "authorized",
        Some(false) => "not authorized",
        None => "unknown (no authorization callback received)",
    };
    page(
        &format!("member {}", m.openid),
        html! {
            @if let Some(n) = notice { p id="notice" { (n) } }
            p { "balance " strong id="balance" { (m.balance) } " · authorization: " span id="authorization" { (authorization) } }
            h2 { "adjust" }
            form method="post" action=(format!("/members/{}/adjust", m.openid)) id="adjust" {
                input type="hidden" name="csrf" value=(csrf);
                label { "points " input type="number" name="points" id="adjust-points" required; }
                " "
                label { "reference " input type="text" name="reference" id="adjust-reference" required; }
                " "
                label { "reason " input type="text" name="reason" id="adjust-reason"; }
                " "
                button type="submit" id="adjust-go" { "apply" }
            }
            h2 { "ledger" }
            table id="ledger" {
                tr { th { "when" } th { "kind" } th.num { "points" } th.num { "balance" } th { "transaction / reference" } th { "why" } }
                @for e in m.entries.iter().rev() {
                    tr {
                        td { (time(e.created_at)) } td { (e.kind) } td.num { (format!("{:+}", e.points)) }
                        td.num { (e.balance_after) }
                        td { (e.transaction_id) @if !e.refund_id.is_empty() { " refund " (e.refund_id) } }
                        td { small { (e.rule.to_string()) } }
                    }
                }
            }
        },
    )
}

/// The newest callbacks.
pub fn callbacks(rows: &[InboxView]) -> Markup {
    page(
        "recent callbacks",
        html! {
            table id="callbacks" {
                tr { th { "received" } th { "event" } th { "key" } th { "status" } th.num { "deliveries" } th { "note" } }
                @for r in rows {
                    tr {
                        td { (time(r.received_at)) } td { (r.event_type) }
                        td { (r.transaction_id) @if !r.refund_id.is_empty() { " " (r.refund_id) } }
                        td { (r.status) } td.num { (r.deliveries) } td { (r.note) }
                    }
                }
            }
        },
    )
}

/// A plain message page (not found, refused).
pub fn message(title: &str, text: &str) -> Markup {
    page(title, html! { p id="message" { (text) } })
}
