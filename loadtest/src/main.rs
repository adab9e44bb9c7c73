//! `loadtest`: an HTTP/1.1 load generator for redirect servers.
//!
//! Closed-loop (`--connections N`, as fast as the server answers) finds the
//! ceiling; open-loop (`--rate R`) holds a fixed request rate and measures
//! latency from each request's scheduled send time. Redirects are never
//! followed; every answer that is not a 3xx counts as an error, and a sample
//! of answers has its `Location`, `Set-Cookie` and `Cache-Control` checked.

mod http;
mod traffic;
mod worker;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use traffic::Traffic;
use worker::{Errors, Plan, Tally};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Server address, `host:port` (an `http://` prefix is accepted).
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: String,
    /// A code to request; repeat for several.
    #[arg(long = "code")]
    codes: Vec<String>,
    /// File with one code per line; requests pick codes at random.
    #[arg(long = "codes")]
    codes_file: Option<PathBuf>,
    /// Concurrent connections (closed-loop) or senders (open-loop).
    #[arg(long, short = 'c', default_value_t = 64)]
    connections: usize,
    /// How long to measure, after the warm-up.
    #[arg(long, short = 'd', default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Requests before this are sent but not recorded.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Open-loop: total requests per second on a fixed schedule.
    #[arg(long)]
    rate: Option<f64>,
    /// Open a new connection for every request (`Connection: close`).
    #[arg(long)]
    new_conn: bool,
    /// Mix user agents (browsers, crawlers, previews), referers and `sub`s.
    #[arg(long)]
    realistic: bool,
    /// Check the headers of every n-th answer per connection (0 = never).
    #[arg(long, default_value_t = 100)]
    check_every: u64,
    /// Name of the attribution cookie to look for.
    #[arg(long, default_value = "ce_click")]
    cookie_name: String,
    /// Write the click id of every redirect answered (from `Set-Cookie`),
    /// one per line, to this file.
    #[arg(long)]
    record_ids: Option<PathBuf>,
    /// Runtime threads (default: one per available core).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the summary as one JSON object instead of one text line.
    #[arg(long)]
    json: bool,
    /// Free-form label carried into the summary (e.g. "nginx keep-alive").
    #[arg(long, default_value = "")]
    label: String,
    /// Also print the slowest answer of each second (always in `--json`),
    /// to line a stall up with the server's log.
    #[arg(long)]
    timeline: bool,
}

#[derive(Debug, Serialize)]
struct Summary {
    label: String,
    mode: &'static str,
    connection: &'static str,
    connections: usize,
    target_rate: Option<f64>,
    seconds: f64,
    requests: u64,
    ok: u64,
    errors: u64,
    error_kinds: Errors,
    retried: u64,
    rps: f64,
    latency_us: Percentiles,
    /// Wall-clock start of the measured window, unix ms.
    measured_from_unix_ms: u64,
    /// The slowest answer of each second of the window, µs.
    worst_us_per_second: Vec<u64>,
}

#[derive(Debug, Serialize)]
struct Percentiles {
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a positive number of requests per second");
        }
    }
    let host = args
        .target
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let addr: SocketAddr = host
        .to_socket_addrs()
        .with_context(|| format!("resolving --target {host}"))?
        .next()
        .context("--target resolved to no address")?;
    let traffic = Traffic::load(
        args.codes.clone(),
        args.codes_file.as_deref(),
        args.realistic,
    )?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // One thread: a current-thread runtime, without the work-stealing
    // machinery that a pinned single-core generator only pays for.
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    let measured_from = std::time::SystemTime::now() + args.warmup;
    let (tally, seconds) = runtime.block_on(drive(&args, addr, host, traffic));
    let summary = summarize(&args, &tally, seconds, measured_from);
    if let Some(path) = &args.record_ids {
        let mut text = tally.click_ids.join("\n");
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print_line(&summary);
        if args.timeline {
            print_timeline(&summary);
        }
    }
    Ok(())
}

async fn drive(args: &Args, addr: SocketAddr, host: String, traffic: Traffic) -> (Tally, f64) {
    let start = Instant::now();
    let record_from = start + args.warmup;
    let stop_at = record_from + args.duration;
    let interval = args
        .rate
        .map(|rate| Duration::from_secs_f64(args.connections as f64 / rate));
    let plan = Arc::new(Plan {
        addr,
        host,
        traffic,
        new_conn: args.new_conn,
        interval,
        start,
        record_from,
        stop_at,
        check_every: args.check_every,
        cookie_name: args.cookie_name.clone(),
        keep_click_ids: args.record_ids.is_some(),
    });
    let workers: Vec<_> = (0..args.connections)
        .map(|i| tokio::spawn(worker::run(Arc::clone(&plan), i, args.connections)))
        .collect();
    let mut total = Tally::new();
    for w in workers {
        total.merge(w.await.expect("worker task panicked"));
    }
    // Throughput over the fixed window: only requests sent inside it count,
    // and a straggler finishing late does not stretch the denominator.
    (total, args.duration.as_secs_f64().max(f64::EPSILON))
}

fn summarize(
    args: &Args,
    tally: &Tally,
    seconds: f64,
    measured_from: std::time::SystemTime,
) -> Summary {
    let h: &Histogram<u64> = &tally.latency_us;
    let q = |p: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(p)
        }
    };
    let errors = tally.errors.total();
    Summary {
        label: args.label.clone(),
        mode: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        connection: if args.new_conn { "new" } else { "keep-alive" },
        connections: args.connections,
        target_rate: args.rate,
        seconds,
        requests: tally.ok + errors,
        ok: tally.ok,
        errors,
        error_kinds: tally.errors.clone(),
        retried: tally.retried,
        rps: tally.ok as f64 / seconds,
        latency_us: Percentiles {
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p999: q(0.999),
            max: if h.is_empty() { 0 } else { h.max() },
        },
        measured_from_unix_ms: measured_from
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        worst_us_per_second: tally.worst_us_per_second.clone(),
    }
}

/// One line: the window's start (unix ms) and the slowest answer of each
/// second after it, in ms.
fn print_timeline(s: &Summary) {
    let worst: Vec<String> = s
        .worst_us_per_second
        .iter()
        .map(|us| format!("{:.1}", *us as f64 / 1e3))
        .collect();
    println!(
        "slowest per second from unix ms {}: {} ms",
        s.measured_from_unix_ms,
        worst.join(" ")
    );
}

fn print_line(s: &Summary) {
    let l = &s.latency_us;
    println!(
        "{label}{mode}/{conn} c={c} {secs:.1}s: {rps:.0} req/s ok={ok} errors={errors} \
         (connect={ec} io={ei} timeout={et} status={es} check={ek}) retried={retried} \
         latency p50={p50}us p90={p90}us p99={p99}us p99.9={p999}us max={max}us",
        label = if s.label.is_empty() {
            String::new()
        } else {
            format!("[{}] ", s.label)
        },
        mode = s.mode,
        conn = s.connection,
        c = s.connections,
        secs = s.seconds,
        rps = s.rps,
        ok = s.ok,
        errors = s.errors,
        ec = s.error_kinds.connect,
        ei = s.error_kinds.io,
        et = s.error_kinds.timeout,
        es = s.error_kinds.status,
        ek = s.error_kinds.check,
        retried = s.retried,
        p50 = l.p50,
        p90 = l.p90,
        p99 = l.p99,
        p999 = l.p999,
        max = l.max,
    );
}
