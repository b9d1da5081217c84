//! `pointsync` — serve, demo, status, sync retry, member(s), parking, adjust, doctor, migrate.
//! The options are in `args.rs`; this file runs them.

mod args;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser as _;

use args::{Cli, Command, MembersCommand, ParkingState, SyncCommand};
use pointsync::config::Config;
use pointsync::store::sqlite::SqliteStore;
use pointsync::store::{Adjusted, Database, Store};

/// mimalloc: the service allocates and frees small buffers on every request, across threads,
/// where glibc's allocator spent a measurable share of the CPU consolidating its free lists.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logs(json: bool) {
    init_logs_with(json, "info");
}

/// Set once logs are JSON: then every line this process writes, on stdout and stderr, is JSON.
static JSON_LINES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn init_logs_with(json: bool, default_filter: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // colour codes only for a person at a terminal, never in a log file or journal
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        JSON_LINES.store(true, std::sync::atomic::Ordering::SeqCst);
        b.json().init();
    } else {
        b.init();
    }
}

fn json_lines() -> bool {
    JSON_LINES.load(std::sync::atomic::Ordering::SeqCst)
}

/// Binds a listener; the error names the config key.
async fn bind(addr: std::net::SocketAddr, key: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("key `{key}`: cannot bind {addr}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // one worker thread per core, or `TOKIO_WORKER_THREADS` (signing a sync runs on a worker)
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pointsync: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json_lines() {
                let line = serde_json::json!({
                    "level": "ERROR", "target": "pointsync", "fields": {"message": one_line(&e)}
                });
                eprintln!("{line}");
            } else {
                eprintln!("pointsync: {}", one_line(&e));
            }
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        #[cfg(unix)]
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
            return;
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn run(cli: Cli) -> Result<()> {
    let Some(path) = cli.command.config() else {
        return demo(cli.command).await;
    };
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            if let Command::Doctor { json, .. } = &cli.command {
                let check = pointsync::doctor::Check {
                    check: "config",
                    verdict: pointsync::doctor::Verdict::Fail,
                    found: e.to_string(),
                    fix: Some("correct the key named".into()),
                };
                print_checks(&[check], *json)?;
                anyhow::bail!("doctor: the config does not load");
            }
            return Err(e.into());
        }
    };
    // the backend is chosen by `service.database`
    match &config.service.database {
        Database::Sqlite(_) => with_store::<SqliteStore>(cli.command, config).await,
        Database::Postgres(_) => {
            with_store::<pointsync::store::postgres::PgStore>(cli.command, config).await
        }
    }
}

async fn demo(command: Command) -> Result<()> {
    let Command::Demo {
        dir,
        payments,
        members,
        rate,
        seed,
        instances,
        database,
    } = command
    else {
        anyhow::bail!("not the demo command");
    };
    #[cfg(not(feature = "demo"))]
    {
        let _ = (dir, payments, members, rate, seed, instances, database);
        anyhow::bail!(
            "this pointsync was built without the demo (it keeps the simulator and test keys out \
             of the service); run it with: cargo run --release -p pointsync --features demo -- demo"
        )
    }
    #[cfg(feature = "demo")]
    {
        // the demo's progress line and report say what happened; logs only for errors
        init_logs_with(false, "error");
        println!(
            "pointsync demo: {payments} payments by {members} members at {rate}/s (seed {seed}), \
             {instances} instance(s)"
        );
        let report = pointsync::demo::run(pointsync::demo::DemoOptions {
            dir,
            payments,
            members,
            rate,
            seed,
            instances,
            database,
            ..Default::default()
        })
        .await?;
        println!("{report}");
        if report.records_match {
            Ok(())
        } else {
            anyhow::bail!("WeChat's record does not match the ledger")
        }
    }
}

async fn with_store<S: Store>(command: Command, config: Config) -> Result<()> {
    let db = &config.service.database;
    match command {
        Command::Demo { .. } => anyhow::bail!("the demo has no config"),
        Command::Serve { .. } => {
            init_logs(config.service.log_format == "json");
            for warning in config.exposed_secrets() {
                tracing::warn!("{warning}");
            }
            // keys and settings are checked before any database is created or migrated
            let client = pointsync::service::client_for(&config)?;
            // a shared store (PostgreSQL) holds the outgoing rate for all instances together
            let options = pointsync::store::OpenOptions {
                rate_qps: config.dispatcher.qps,
                ..config.service.open_options()
            };
            let store = S::open(db, &options).await?;
            let public = bind(config.service.public_listen, "service.public_listen").await?;
            let admin = bind(config.service.admin_listen, "service.admin_listen").await?;
            let running = pointsync::service::start_with(
                &config,
                client,
                store,
                public,
                admin,
                std::sync::Arc::new(pointsync::clock::SystemClock),
            )
            .await?;
            if json_lines() {
                let line = serde_json::json!({"listening": {
                    "public": running.public_addr.to_string(),
                    "admin": running.admin_addr.to_string(),
                }});
                println!("{line}");
            } else {
                println!(
                    "listening public={} admin={}",
                    running.public_addr, running.admin_addr
                );
            }
            shutdown_signal().await;
            tracing::info!("shutting down: no new claims, finishing in-flight syncs");
            running.shutdown().await;
            tracing::info!("stopped");
            Ok(())
        }
        Command::Status { json, .. } => {
            let s = S::open_read_only(db).await?.status().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(());
            }
            println!("syncs:  {}", fmt_counts(&s.syncs));
            println!("inbox:  {}", fmt_counts(&s.inbox));
            match s.oldest_pending_at {
                Some(t) => println!(
                    "oldest pending sync: enqueued {} s ago",
                    (pointsync::service::now_ms() - t) / 1000
                ),
                None => println!("oldest pending sync: none"),
            }
            for p in &s.parked {
                println!(
                    "{} #{} {} after {} attempts: {}",
                    p.state,
                    p.id,
                    p.transaction_id,
                    p.attempts,
                    pointsync::store::describe_failure(&p.error)
                );
            }
            Ok(())
        }
        Command::Sync {
            command: SyncCommand::Retry { ids, .. },
        } => {
            let store = S::open(db, &config.service.open_options()).await?;
            if !ids.is_empty() {
                let parked: std::collections::BTreeSet<i64> = store
                    .status()
                    .await?
                    .parked
                    .iter()
                    .filter(|p| p.state == "parked")
                    .map(|p| p.id)
                    .collect();
                let unknown: Vec<String> = ids
                    .iter()
                    .filter(|id| !parked.contains(id))
                    .map(|id| format!("#{id}"))
                    .collect();
                if !unknown.is_empty() {
                    anyhow::bail!(
                        "no parked sync {} (see `pointsync status`); nothing re-queued",
                        unknown.join(", ")
                    );
                }
            }
            let n = store
                .retry_parked(&ids, pointsync::service::now_ms())
                .await?;
            println!("{n} parked syncs re-queued");
            Ok(())
        }
        Command::Adjust {
            openid,
            points,
            reference,
            reason,
            ..
        } => {
            let a = pointsync::store::Adjustment {
                openid: openid.clone(),
                points,
                reference: reference.clone(),
                reason,
            };
            let allow = config.rules.allow_negative_balance;
            let store = S::open(db, &config.service.open_options()).await?;
            match store
                .adjust(&a, allow, pointsync::service::now_ms())
                .await?
            {
                Adjusted::Applied { balance } => {
                    println!("{openid}: {points:+} applied ({reference}); balance {balance}")
                }
                Adjusted::Duplicate { balance } => println!(
                    "{openid}: {reference} was applied before; nothing changed; balance {balance}"
                ),
                Adjusted::WouldGoNegative { balance } => anyhow::bail!(
                    "{openid}: balance {balance}; {points:+} would make it negative \
                     (rules.allow_negative_balance is off); nothing changed"
                ),
                Adjusted::UnknownMember => anyhow::bail!("no member {openid}; nothing changed"),
                Adjusted::Conflict {
                    openid: first,
                    points: first_points,
                } => anyhow::bail!(
                    "{reference} was applied before as {first_points:+} to {first}; a reference \
                     names one adjustment: use a new reference; nothing changed"
                ),
            }
            Ok(())
        }
        Command::Member { openid, json, .. } => {
            let store = S::open_read_only(db).await?;
            let api = mall_api(&config, store.clone())?;
            let view = pointsync::service::mall_api::member_view(&api, &openid)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
                return Ok(());
            }
            let a = &view.authorization;
            let learned = match (&a.source, a.learned_at) {
                (Some(source), Some(at)) => format!(
                    " ({} from WeChat's {source}, {})",
                    a.wechat_state.as_deref().unwrap_or("?"),
                    pointsync::domain::china_time(at)
                ),
                _ => " (never reported by WeChat)".to_string(),
            };
            println!(
                "{}  balance {}  authorization: {}{learned}",
                view.openid, view.balance, a.state
            );
            println!(
                "credited today: {}  payments not credited (not authorized): {}  pending points: {}{}",
                view.credited_today,
                view.not_credited_payments,
                view.pending_points.status,
                view.pending_points
                    .error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
            let Some(m) = store.member(&openid).await? else {
                return Ok(());
            };
            for e in m.entries {
                let refund = if e.refund_id.is_empty() {
                    String::new()
                } else {
                    format!(" refund {}", e.refund_id)
                };
                println!(
                    "  {}  {:>6} {:>+7} → {:>7}  {}{refund}  {}",
                    pointsync::domain::china_time(e.created_at),
                    e.kind,
                    e.points,
                    e.balance_after,
                    e.transaction_id,
                    e.rule
                );
            }
            Ok(())
        }
        Command::Parking {
            state,
            openid,
            plate,
            time,
            appid,
            brandid,
            key,
            ..
        } => {
            let store = S::open(db, &config.service.open_options()).await?;
            let api = mall_api(&config, store)?;
            let body = pointsync::service::mall_api::ParkingBody {
                openid: openid.clone(),
                plate_number: plate.clone(),
                state: match state {
                    ParkingState::In => "IN",
                    ParkingState::Out => "OUT",
                }
                .to_string(),
                time: time
                    .unwrap_or_else(|| pointsync::domain::china_time(pointsync::clock::now_ms())),
                appid,
                brandid,
            };
            let accepted = pointsync::service::mall_api::accept_parking(&api, body, key.as_deref())
                .await
                .map_err(|e| match &e.field {
                    Some(f) => anyhow::anyhow!("{} ({f}): {}", e.code, e.message),
                    None => anyhow::anyhow!("{}: {}", e.code, e.message),
                })?;
            let note = if accepted.duplicate {
                " (reported before: the same event)"
            } else {
                ""
            };
            println!(
                "parking {} stored{note}: {openid} {plate}; the running service relays it to WeChat",
                accepted.id
            );
            Ok(())
        }
        Command::Members {
            command: MembersCommand::Reconcile { stale_after, .. },
        } => {
            let store = S::open(db, &config.service.open_options()).await?;
            let queries = queries(&config)?;
            let now = pointsync::clock::now_ms;
            let stale_ms = i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX);
            let done = pointsync::service::reconcile::reconcile(
                &store,
                queries,
                now().saturating_sub(stale_ms),
                now,
                |p| {
                    println!(
                        "asked {}: {} authorized, {} not authorized, {} other, {} failed",
                        p.asked, p.authorized, p.not_authorized, p.other, p.failed
                    )
                },
            )
            .await?;
            println!(
                "reconciled {} members: {} authorized, {} not authorized, {} other state, {} not answered",
                done.asked, done.authorized, done.not_authorized, done.other, done.failed
            );
            if done.failed > 0 {
                anyhow::bail!(
                    "{} members were not answered (the last: {}); run it again",
                    done.failed,
                    done.last_error.unwrap_or_default()
                );
            }
            Ok(())
        }
        Command::Doctor { json, probe, .. } => {
            let checks =
                pointsync::doctor::run::<S>(&config, probe, pointsync::clock::now_ms() / 1000)
                    .await;
            print_checks(&checks, json)?;
            let failed = checks
                .iter()
                .filter(|c| c.verdict == pointsync::doctor::Verdict::Fail)
                .count();
            if failed > 0 {
                anyhow::bail!("doctor: {failed} check(s) failed");
            }
            Ok(())
        }
        Command::Migrate { .. } => {
            let m = S::migrate(db).await?;
            if m.applied.is_empty() {
                println!("schema up to date ({})", m.version);
                return Ok(());
            }
            for a in &m.applied {
                println!("applied: {a}");
            }
            println!("schema now at version {}", m.version);
            Ok(())
        }
    }
}

/// WeChat's query client for a command.
fn queries(config: &Config) -> Result<std::sync::Arc<pointsync::service::Queries>> {
    Ok(std::sync::Arc::new(pointsync::service::Queries::new(
        config,
        config.client()?,
        pointsync::metrics::Metrics::new(),
        std::sync::Arc::new(pointsync::clock::SystemClock),
    )))
}

/// The mall API's operations over `store`, for the commands that share them.
fn mall_api<S: Store>(
    config: &Config,
    store: S,
) -> Result<pointsync::service::mall_api::MallApi<S>> {
    Ok(pointsync::service::mall_api::MallApi::new(
        config,
        store,
        queries(config)?,
        pointsync::metrics::Metrics::new(),
        std::sync::Arc::new(tokio::sync::Notify::new()),
        std::sync::Arc::new(pointsync::clock::SystemClock),
    )?)
}

fn print_checks(checks: &[pointsync::doctor::Check], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(checks)?);
    } else {
        for c in checks {
            println!("{c}");
        }
    }
    Ok(())
}

/// The error and its causes on one line, each said once (an error that quotes its source is not
/// followed by the source again).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out.replace('\n', " ")
}

fn fmt_counts(m: &std::collections::BTreeMap<String, i64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
