//! The `clickedge` command line: parse, load config, dispatch.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use clickedge::config::Config;
use clickedge::links::SharedLinkTable;
use clickedge::store::Store;
use clickedge::tokens;

/// Small, short-lived allocations dominate (a few per redirect, freed on
/// another thread by the click-log writer); mimalloc handles that pattern
/// far better than glibc malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "clickedge", version, about = "Click-tracking redirect edge")]
struct Cli {
    /// Config file (TOML). Without one, the embedded defaults apply.
    #[arg(long, global = true, env = "CLICKEDGE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the edge, the admin API and metrics in one process.
    Serve,
    /// Load click events from Kafka into ClickHouse (full mode); needs
    /// `[kafka]` and `[clickhouse]`.
    Sink,
    /// Create, list and revoke admin API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Register affiliate networks and their postback secrets.
    #[command(subcommand)]
    Network(Box<clickedge::postback::cli::NetworkCommand>),
    /// Read the local click log.
    #[command(subcommand)]
    Log(LogCommand),
    /// Validate the configuration and print the effective values.
    CheckConfig,
}

#[derive(Subcommand)]
enum LogCommand {
    /// Print the click log's records as the contract's JSON lines (the
    /// events Kafka gets), oldest first. Read-only: safe beside `serve`.
    Tail {
        /// Print only the last N records (default 10).
        #[arg(
            short = 'n',
            long = "lines",
            default_value_t = 10,
            conflicts_with = "all"
        )]
        lines: usize,
        /// Print every record.
        #[arg(long)]
        all: bool,
        /// Keep printing records as they are written.
        #[arg(short, long)]
        follow: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token; the token is printed alone on the last line of stdout.
    Create {
        /// Tenant the token is scoped to; `*` for an admin token.
        #[arg(long)]
        tenant: String,
    },
    /// List tokens (ids and tenants, never the tokens).
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("clickedge: {e}");
            return ExitCode::from(2);
        }
    };
    clickedge::time::set_offset(config.retention.test_clock_offset_secs * 1000);
    // Before the link table and maps are touched. Set either way: the flag
    // is inherited across fork and exec. When set, it wins over mimalloc's
    // MADV_HUGEPAGE and a host setting of `always`.
    let thp_off = !config.edge.transparent_huge_pages;
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(thp_off) {
        eprintln!(
            "clickedge: could not set edge.transparent_huge_pages (PR_SET_THP_DISABLE): {e}; \
             keeping the host's setting"
        );
    }
    let result = match cli.command {
        Command::Serve => serve(config),
        Command::Sink => sink(config),
        Command::Token(cmd) => token(&config, cmd),
        Command::Network(cmd) => clickedge::postback::cli::run(&config, *cmd),
        Command::Log(LogCommand::Tail { lines, all, follow }) => {
            let opts = clickedge::clicklog::cli::TailOptions {
                last: (!all).then_some(lines),
                follow,
            };
            clickedge::clicklog::cli::tail(
                &config.data_dir,
                &config.edge.node_id,
                opts,
                &mut std::io::stdout().lock(),
            )
            .context("reading the click log")
        }
        Command::CheckConfig => {
            println!("{config:#?}");
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clickedge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    clickedge::telemetry::init_tracing(&config.log);
    let metrics = clickedge::telemetry::install_metrics()
        .map_err(anyhow::Error::msg)
        .context("installing the metrics recorder")?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all().thread_name("clickedge");
    if let Some(n) = config.edge.workers {
        rt.worker_threads(n.get());
    }
    let rt = rt.build().context("starting the runtime")?;
    until_signal(rt, |shutdown| {
        clickedge::app::serve(config, Some(metrics), shutdown)
    })?;
    Ok(())
}

/// Runs `task` on `rt` with a token cancelled by SIGTERM or SIGINT.
fn until_signal<F, T>(rt: tokio::runtime::Runtime, task: impl FnOnce(CancellationToken) -> F) -> T
where
    F: std::future::Future<Output = T>,
{
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            signals.cancel();
        });
        task(shutdown).await
    })
}

fn sink(config: Config) -> anyhow::Result<()> {
    let (Some(kafka), Some(clickhouse)) = (config.kafka.clone(), config.clickhouse.clone()) else {
        anyhow::bail!(
            "`sink` needs both [kafka] brokers and [clickhouse] url/database in the config"
        );
    };
    clickedge::telemetry::init_tracing(&config.log);
    let metrics = clickedge::telemetry::install_metrics()
        .map_err(anyhow::Error::msg)
        .context("installing the metrics recorder")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("clickedge-sink")
        .build()
        .context("starting the runtime")?;
    let settings = clickedge::sink::SinkSettings {
        kafka,
        clickhouse,
        sink: config.sink.clone(),
        retention: config.retention.clone(),
        client_id: format!("clickedge-sink-{}", config.edge.node_id),
    };
    until_signal(rt, |shutdown| {
        clickedge::sink::run(settings, Some(metrics), shutdown)
    })?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn token(config: &Config, cmd: TokenCommand) -> anyhow::Result<()> {
    clickedge::fsutil::create_private_dir(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let store = Store::open(
        &config.data_dir,
        config.links.random_code_len,
        Arc::new(SharedLinkTable::default()),
        false,
    )?;
    match cmd {
        TokenCommand::Create { tenant } => {
            anyhow::ensure!(
                tokens::is_valid_tenant(&tenant),
                "tenant must be `*` or 1-64 chars of [A-Za-z0-9._-]"
            );
            let new = tokens::mint(&tenant, chrono::Utc::now());
            store.add_token(new.record.clone())?;
            println!(
                "{}",
                serde_json::json!({"id": new.record.id, "tenant": new.record.tenant})
            );
            println!("{}", new.secret);
        }
        TokenCommand::List => {
            for t in store.list_tokens() {
                println!(
                    "{}",
                    serde_json::json!({
                        "id": t.id,
                        "tenant": t.tenant,
                        "created_at": clickedge::time::rfc3339(t.created_at.timestamp_millis()),
                        "revoked": t.revoked,
                    })
                );
            }
        }
        TokenCommand::Revoke { id } => {
            let t = store
                .revoke_token(&id)
                .with_context(|| format!("no live token with id {id}"))?;
            println!("{}", serde_json::json!({"id": t.id, "revoked": true}));
        }
    }
    Ok(())
}
