//! `wechatpay-sim init DIR` and `wechatpay-sim serve DIR`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wechatpay_sim::{PushConfig, Sandbox, SimConfig, Simulator, TrustMode};

/// mimalloc: every pushed callback and every answered request allocates and frees small buffers
/// across the runtime's threads, where glibc's allocator spent ~6 % of the simulator's CPU in
/// its free lists (`perf record` at the benchmark's maximum rate).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A local WeChat Pay APIv3 server for the 智慧商圈 family.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a sandbox: keys, certificates, APIv3 key, ids and a `wxpay.env`.
    Init {
        /// The folder to create it in.
        dir: PathBuf,
        /// How the simulated WeChat signs.
        #[arg(long, value_enum, default_value = "cert")]
        mode: TrustMode,
    },
    /// Serve the sandbox's simulated WeChat Pay on real HTTP.
    Serve {
        /// The sandbox folder.
        dir: PathBuf,
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8600")]
        listen: SocketAddr,
        /// Where to push callbacks (the mall's notify URL). Give it several times to spread
        /// deliveries over several instances round-robin, as a load balancer would (a retry may
        /// land on another).
        #[arg(long)]
        notify_url: Vec<String>,
        /// Multiply callback retry intervals (e.g. 0.001 runs the 24-hour schedule in 86 s).
        #[arg(long, default_value_t = 1.0)]
        time_scale: f64,
        /// Override the sandbox's trust mode.
        #[arg(long, value_enum)]
        mode: Option<TrustMode>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wechatpay-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init { dir, mode } => {
            let sb = Sandbox::init(&dir, mode)?;
            let d = sb.dir.clone().unwrap_or(dir);
            println!("sandbox created in {}", d.display());
            println!(
                "mchid {}  merchant serial {}  mode {:?}",
                sb.info.mchid, sb.info.merchant_serial, mode
            );
            println!(
                "use it:  wechatpay-sim serve {}   then   set -a; . {}/wxpay.env; set +a",
                d.display(),
                d.display()
            );
            Ok(())
        }
        Command::Serve {
            dir,
            listen,
            notify_url,
            time_scale,
            mode,
        } => {
            let mut sandbox = Sandbox::load(&dir)?;
            if let Some(m) = mode {
                sandbox.info.mode = m;
            }
            if notify_url.is_empty() {
                tracing::warn!(
                    "no --notify-url: payments, refunds and authorizations are recorded but no \
                     callback is pushed anywhere"
                );
            }
            let mut config = SimConfig::new(sandbox);
            config.listen = listen;
            let mut urls = notify_url.into_iter();
            config.push = PushConfig {
                notify_url: urls.next(),
                more_notify_urls: urls.collect(),
                time_scale,
                ..PushConfig::default()
            };
            let sim = Simulator::start(config).await?;
            sim.sandbox().write_env(&sim.base_url())?;
            println!(
                "wechatpay-sim serving on {} (control API under /sim)",
                sim.base_url()
            );
            tokio::signal::ctrl_c().await?;
            println!("stopping");
            Ok(())
        }
    }
}
