//! The command line: every subcommand and its options (clap derive).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The mall's WeChat Pay 智慧商圈 points service.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Receive callbacks, credit points and sync them to WeChat (until SIGTERM or ctrl-c).
    Serve {
        /// Config file (TOML); `POINTSYNC__SECTION__KEY` variables override it.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Simulate a mall day against the built-in simulator and report.
    Demo {
        /// Folder for the sandbox, config and database (default: a new temporary folder).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Payments.
        #[arg(long, default_value_t = 2000)]
        payments: usize,
        /// Members.
        #[arg(long, default_value_t = 200)]
        members: usize,
        /// Payments per second.
        #[arg(long, default_value_t = 400.0)]
        rate: f64,
        /// Seed of the generated day.
        #[arg(long, default_value_t = 2026)]
        seed: u64,
        /// `pointsync serve` instances sharing the database (more than one: --database).
        #[arg(long, default_value_t = 1)]
        instances: usize,
        /// An empty PostgreSQL database (`postgres://…`); default an SQLite file in --dir.
        #[arg(long)]
        database: Option<String>,
    },
    /// Backlog by state, oldest pending sync, parked syncs with their reasons.
    Status {
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Points-sync operations.
    Sync {
        #[command(subcommand)]
        command: SyncCommand,
    },
    /// A member as the mall API shows her (balance, authorization, today's credits, WeChat's
    /// pending points), then her ledger with the rule behind each entry.
    Member {
        /// The member's openid.
        openid: String,
        #[arg(long, short)]
        config: PathBuf,
        /// Print the mall API's JSON (`GET /v1/members/{openid}`).
        #[arg(long)]
        json: bool,
    },
    /// Members' authorization.
    Members {
        #[command(subcommand)]
        command: MembersCommand,
    },
    /// Report a car entering (`in`) or leaving (`out`) the mall; relayed to WeChat by the running
    /// service, like `POST /v1/parkings`.
    Parking {
        /// `in` or `out`.
        #[arg(value_enum)]
        state: ParkingState,
        /// The member's openid.
        openid: String,
        /// Plate number.
        plate: String,
        /// When (RFC 3339; default now).
        #[arg(long)]
        time: Option<String>,
        /// Appid (default `wechatpay.appids[0]`, else her latest payment's).
        #[arg(long)]
        appid: Option<String>,
        /// 品牌ID (default `wechatpay.brandid`).
        #[arg(long)]
        brandid: Option<i64>,
        /// Idempotency key (default: the event's own fields).
        #[arg(long)]
        key: Option<String>,
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Add or take a member's points (redeemed or corrected in the mall's own systems).
    /// Idempotent on --reference; refuses to make a balance negative unless
    /// `rules.allow_negative_balance` is on.
    Adjust {
        /// The member's openid.
        openid: String,
        /// Points to add (positive) or take (negative, e.g. -50).
        #[arg(allow_negative_numbers = true)]
        points: i64,
        /// Your unique reference (a redemption order, a ticket): the same reference twice has one
        /// effect.
        #[arg(long)]
        reference: String,
        /// Why, kept in the ledger.
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Preflight before pointing WeChat at the service: keys, WeChat's acceptance of the signature,
    /// trust, the APIv3 key, the clock, the database, the listeners, the callback URL. One line
    /// per check; exit 0 only when all pass.
    Doctor {
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Also send a probe through `service.public_url` (checks the proxy forwards intact).
        #[arg(long)]
        probe: bool,
    },
    /// Create or upgrade the database schema.
    Migrate {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ParkingState {
    In,
    Out,
}

#[derive(Subcommand, Debug)]
pub enum MembersCommand {
    /// Ask WeChat again about members whose authorization is unknown or older than
    /// --stale-after (revocations are learned only this way), within `wechatpay.query_qps`.
    Reconcile {
        /// Re-ask members whose state was learned longer ago than this (`24h`, `30m`, `0s`).
        #[arg(long, default_value = "24h")]
        stale_after: humantime::Duration,
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum SyncCommand {
    /// Re-drive parked syncs (all, or the given outbox ids) after fixing their cause.
    Retry {
        /// Required: re-drive parked syncs.
        #[arg(long, required = true)]
        parked: bool,
        /// Outbox ids (default: every parked sync).
        ids: Vec<i64>,
        #[arg(long, short)]
        config: PathBuf,
    },
}

impl Command {
    /// The config file of a command that has one.
    pub fn config(&self) -> Option<&PathBuf> {
        match self {
            Command::Demo { .. } => None,
            Command::Serve { config }
            | Command::Status { config, .. }
            | Command::Member { config, .. }
            | Command::Parking { config, .. }
            | Command::Members {
                command: MembersCommand::Reconcile { config, .. },
            }
            | Command::Adjust { config, .. }
            | Command::Migrate { config }
            | Command::Doctor { config, .. }
            | Command::Sync {
                command: SyncCommand::Retry { config, .. },
            } => Some(config),
        }
    }
}
