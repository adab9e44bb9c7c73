//! `clickedge serve`: assembles the store, the click log, the edge and the
//! admin listener, runs them until shutdown, then stops them in order.
//!
//! Start-up: lock the data dir → master key → store (publishes the link
//! table) → salt ratchet → postbacks (click index, networks, ledger) →
//! stats + click-log writer → bind → serve.
//! Shutdown: stop accepting → drain connections (grace period) → stop
//! background tasks → flush, fsync and checkpoint the click log.

use std::fs::File;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Admin;
use crate::clicklog::{spawn_writer, WriterConfig};
use crate::clicks::{ClickIds, SaltRatchet};
use crate::config::Config;
use crate::edge::ratelimit::RateLimiter;
use crate::edge::shed::InFlightLimit;
use crate::edge::to_https::HttpsRedirect;
use crate::edge::{CookieTemplate, Edge};
use crate::keys::{KeyError, MasterKey, MASTER_KEY_ENV};
use crate::links::SharedLinkTable;
use crate::postback::Postbacks;
use crate::server::{self, HttpLimits};
use crate::stats::StatsIndex;
use crate::store::{Store, StoreError};
use crate::telemetry::EdgeMetrics;

const LOCK_FILE: &str = "serve.lock";
const SALT_TICK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "full mode needs both [kafka] (clicks are shipped there) and [clickhouse] (stats are read there); only {0} is set"
    )]
    HalfFullMode(&'static str),
    #[error(transparent)]
    Ship(#[from] crate::ship::ShipError),
    #[error("data_dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("another `clickedge serve` is using data_dir {0}")]
    DataDirBusy(String),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Salt(#[from] crate::clicks::iphash::SaltError),
    #[error(transparent)]
    Postback(#[from] crate::postback::OpenError),
    #[error("click log: {0}")]
    ClickLog(std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Geo(#[from] crate::edge::geo::GeoError),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The admin listener serves operators and scrapers, not the public.
const ADMIN_MAX_CONNECTIONS: usize = 1024;

/// Runs `serve` until `shutdown` is cancelled.
pub async fn serve(
    config: Config,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let full = match (&config.kafka, &config.clickhouse) {
        (Some(k), Some(c)) => Some((k.clone(), c.clone())),
        (None, None) => None,
        (Some(_), None) => return Err(ServeError::HalfFullMode("[kafka]")),
        (None, Some(_)) => return Err(ServeError::HalfFullMode("[clickhouse]")),
    };
    let data_dir = config.data_dir.clone();
    let dir_err = |source| ServeError::DataDir {
        path: data_dir.display().to_string(),
        source,
    };
    crate::fsutil::create_private_dir(&data_dir).map_err(dir_err)?;
    let lock = File::create(data_dir.join(LOCK_FILE)).map_err(dir_err)?;
    if lock.try_lock().is_err() {
        return Err(ServeError::DataDirBusy(data_dir.display().to_string()));
    }

    let env_key = std::env::var(MASTER_KEY_ENV).ok();
    let (master, key_source) = MasterKey::load(
        env_key.as_deref(),
        config.master_key_file.as_deref(),
        &data_dir,
        true,
    )?;
    tracing::info!(source = ?key_source, "master key loaded");

    let table = Arc::new(SharedLinkTable::default());
    let store = Arc::new(Store::open(
        &data_dir,
        config.links.random_code_len,
        table.clone(),
        true,
    )?);
    tracing::info!(links = table.load().len(), "link table loaded");

    let now_ms = crate::time::now_ms() as u64;
    let salts = Arc::new(SaltRatchet::open(
        &data_dir,
        config.privacy.salt_rotation,
        config.privacy.salt_grace,
        now_ms,
    )?);

    let postbacks = Arc::new(Postbacks::open(&config, &master)?);
    let stats = Arc::new(StatsIndex::default());
    let ship_config = |kafka: &crate::config::KafkaConfig| crate::ship::ShipperConfig {
        kafka: kafka.clone(),
        data_dir: data_dir.clone(),
        client_id: format!("clickedge-serve-{}", config.edge.node_id),
        edge_node: config.edge.node_id.clone(),
        shutdown_grace: config.edge.shutdown_grace,
    };
    // What the click-log writer feeds: the postback click index always;
    // embedded stats in embedded mode (full mode reads ClickHouse); the
    // Kafka shipper in full mode.
    let mut consumers: Vec<Box<dyn crate::clicklog::Consumer>> = vec![Box::new(
        crate::postback::click_index::ClickIndexFeed(postbacks.click_index.clone()),
    )];
    let mut ship_source = None;
    match &full {
        None => consumers.push(Box::new(crate::stats::StatsFeed::new(
            stats.clone(),
            &data_dir,
            config.stats.snapshot_interval,
            config.retention.as_duration(),
        ))),
        Some((kafka, _)) => {
            let (feed, source) = crate::ship::feed(&ship_config(kafka));
            consumers.push(Box::new(feed));
            ship_source = Some(source);
        }
    }
    let (clicklog, writer) = spawn_writer(
        WriterConfig {
            data_dir: data_dir.clone(),
            queue_capacity: config.clicklog.queue_capacity.get(),
            overflow: config.clicklog.overflow,
            overflow_wait: config.clicklog.overflow_wait,
            fsync_interval: config.clicklog.fsync_interval,
            segment_bytes: config.clicklog.segment_bytes,
            retention: config.retention.as_duration(),
            // In full mode the shipper deletes segments once Kafka has them.
            delete_old_segments: config.kafka.is_none(),
        },
        consumers,
    )
    .map_err(ServeError::ClickLog)?;

    // Full mode: the shipper follows the click log into Kafka, and the
    // admin API reads stats from ClickHouse.
    let (shippers, warehouse) = match (&full, ship_source) {
        (Some((kafka, ch)), Some(source)) => {
            crate::telemetry::pipeline_zero(false);
            let clicks = crate::ship::spawn(ship_config(kafka), source, clicklog.backlog_flag())?;
            let ledger = crate::ship::ledger::spawn(ship_config(kafka))?;
            let warehouse = crate::admin::Warehouse {
                client: crate::warehouse::client(ch),
                ship: clicks.status.clone(),
            };
            (Some((clicks, ledger)), Some(warehouse))
        }
        _ => (None, None),
    };

    // Certificates are checked before anything listens: a bad pair stops
    // start-up with the key named.
    let tls = match &config.edge.tls {
        Some(t) => {
            let (certs, loaded) = crate::tls::CertStore::open(&t.cert, &t.key)?;
            let certs = Arc::new(certs);
            let acceptor =
                tokio_rustls::TlsAcceptor::from(crate::tls::server_config(certs.clone())?);
            let listener = bind("edge.tls.listen", t.listen)?;
            Some((t, certs, loaded, acceptor, listener))
        }
        None => None,
    };
    // The plain listener's optional 308 names the port actually bound.
    let https_redirect = match &tls {
        Some((t, _, _, _, listener)) if t.redirect_http => {
            let port = match t.https_port {
                Some(port) => port,
                None => listener
                    .local_addr()
                    .map_err(|source| ServeError::Bind {
                        key: "edge.tls.listen",
                        addr: t.listen,
                        source,
                    })?
                    .port(),
            };
            Some(HttpsRedirect::new(port))
        }
        _ => None,
    };
    // The geo database is read before anything listens: a bad file stops
    // start-up with its path.
    let mmdb = match &config.geo.mmdb {
        Some(path) => Some(crate::edge::geo::Mmdb::open(path)?),
        None => None,
    };
    let geo = crate::edge::geo::Geo::new(
        config.geo.country_header.clone(),
        config.edge.trusted_proxies.clone(),
        mmdb.as_ref().map(|(db, _)| db.clone()),
    );
    let limiter = Arc::new(RateLimiter::new(
        &config.edge.rate_limit,
        config.edge.trusted_proxies.clone(),
        salts.clone(),
    ));
    let edge = Arc::new(Edge {
        links: table.clone(),
        ids: ClickIds::new(&master),
        salts: salts.clone(),
        clicklog: clicklog.clone(),
        trusted_proxies: config.edge.trusted_proxies.clone(),
        geo,
        cookie: CookieTemplate::new(&config.cookie, false),
        secure_cookie: CookieTemplate::new(&config.cookie, true),
        metrics: EdgeMetrics::register(),
        limiter: limiter.clone(),
        max_request_target_bytes: config.edge.max_request_target_bytes,
        in_flight: InFlightLimit::new(config.edge.max_in_flight),
        postback_in_flight: InFlightLimit::new(config.edge.postback_max_in_flight),
        https_redirect,
        postbacks: Some(postbacks.clone()),
    });
    let admin = Arc::new(Admin {
        store: store.clone(),
        stats,
        warehouse,
        ledger: postbacks.ledger.clone(),
        clicklog,
        metrics: metrics.clone(),
        public_url: config.edge.public_url.clone(),
        default_redirect: config.links.default_redirect,
        body: crate::body::BodyLimits {
            max_bytes: config.admin.max_body_bytes,
            timeout: config.admin.body_read_timeout,
            min_bytes_per_sec: config.admin.min_body_bytes_per_sec,
        },
        request_timeout: config.admin.request_timeout,
        console_sessions: Default::default(),
        networks: Some(crate::admin::NetworkAdmin {
            store: crate::postback::networks::NetworkStore::open(&config.data_dir)
                .map_err(crate::postback::OpenError::from)?,
            sealer: crate::postback::sealed::Sealer::new(&master),
            rotation_grace: config.postback.rotation_grace,
        }),
        conflicts: crate::admin::conflicts::ConflictBudget::new(
            config.admin.code_conflicts.per_sec,
            config.admin.code_conflicts.burst.get(),
        ),
        data_dir: data_dir.clone(),
        edge_node: config.edge.node_id.clone(),
        retention: config.retention.as_duration(),
    });

    let edge_listener = bind("edge.listen", config.edge.listen)?;
    let admin_listener = bind("admin.listen", config.admin.listen)?;
    let edge_limits = HttpLimits {
        header_read_timeout: config.edge.header_read_timeout,
        max_header_bytes: config.edge.max_header_bytes,
        max_headers: config.edge.max_headers,
        idle_timeout: config.edge.idle_timeout,
        h2_max_concurrent_streams: config.edge.h2_max_concurrent_streams,
        h2_max_reset_streams: config.edge.h2_max_reset_streams,
        h2_max_local_error_reset_streams: config.edge.h2_max_local_error_reset_streams,
        // One limit for the plain and the TLS edge together.
        connection_slots: Arc::new(Semaphore::new(config.edge.max_connections.get())),
        shutdown_grace: config.edge.shutdown_grace,
    };
    let admin_limits = HttpLimits {
        connection_slots: Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS)),
        ..edge_limits.clone()
    };

    let tasks = TaskTracker::new();
    if let Some((t, certs, loaded, acceptor, listener)) = tls {
        let edge = edge.clone();
        tasks.spawn(server::serve(
            "edge_tls",
            listener,
            edge_limits.clone(),
            Some(acceptor),
            shutdown.clone(),
            move |req, peer| crate::edge::redirect::handle(edge.clone(), req, peer),
        ));
        tasks.spawn(crate::tls::watch(
            certs,
            loaded,
            t.reload_interval,
            shutdown.clone(),
        ));
    }
    if let Some((db, loaded)) = mmdb {
        tasks.spawn(crate::edge::geo::watch(
            db,
            loaded,
            config.geo.reload_interval,
            shutdown.clone(),
        ));
    }
    tasks.spawn(server::serve(
        "edge",
        edge_listener,
        edge_limits,
        None,
        shutdown.clone(),
        move |req, peer| crate::edge::redirect::handle(edge.clone(), req, peer),
    ));
    tasks.spawn(server::serve(
        "admin",
        admin_listener,
        admin_limits,
        None,
        shutdown.clone(),
        move |req, _peer| crate::admin::handle(admin.clone(), req),
    ));
    tasks.spawn(poll_store(
        store,
        config.links.reload_interval,
        shutdown.clone(),
    ));
    tasks.spawn(tick_salts(salts, shutdown.clone()));
    tasks.spawn(crate::postback::poll_networks(
        postbacks.networks.clone(),
        config.links.reload_interval,
        shutdown.clone(),
    ));
    tasks.spawn(limiter.run_sweeper(shutdown.clone()));
    if full.is_none() {
        // Full mode ships the ledger file by offset; ClickHouse drops
        // old partitions instead.
        tasks.spawn(ledger_retention(
            postbacks.ledger.clone(),
            config.retention.as_duration(),
            shutdown.clone(),
        ));
    }
    if let Some(handle) = metrics {
        tasks.spawn(crate::telemetry::run_upkeep(handle, shutdown.clone()));
    }
    tasks.close();
    tracing::info!(
        node = %config.edge.node_id,
        mode = if full.is_some() { "full" } else { "embedded" },
        "clickedge serving"
    );

    shutdown.cancelled().await;
    tracing::info!("shutting down: no new connections; finishing in-flight requests");
    tasks.wait().await;
    let flushed = tokio::task::spawn_blocking(move || writer.shutdown())
        .await
        .map_err(|e| ServeError::ClickLog(std::io::Error::other(e)))
        .and_then(|r| r.map_err(ServeError::ClickLog));
    if let Err(e) = postbacks.ledger.sync() {
        tracing::error!(error = %e, "ledger: final sync failed");
    }
    if let Some((clicks, ledger)) = shippers {
        // The log and the ledger are flushed (or as flushed as they get):
        // ship their ends while the grace period lasts, and save the
        // confirmed positions.
        let _ = tokio::task::spawn_blocking(move || {
            std::thread::scope(|s| {
                s.spawn(|| clicks.shutdown());
                s.spawn(|| ledger.shutdown());
            })
        })
        .await;
    }
    flushed?;
    drop(lock);
    tracing::info!("stopped cleanly");
    Ok(())
}

fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    let listener = server::bind(addr).map_err(|source| ServeError::Bind { key, addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { key, addr, source })?;
    // Tests and scripts read this line to learn ephemeral ports.
    tracing::info!(listener = key, addr = %local, "listening");
    Ok(listener)
}

/// Picks up tokens and links written by other processes (the CLI).
async fn poll_store(store: Arc<Store>, every: Duration, shutdown: CancellationToken) {
    let mut ticker = crate::time::Ticker::new(every, shutdown);
    while ticker.tick().await {
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.poll()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "store: reload failed"),
            Err(e) => tracing::error!(error = %e, "store: reload task failed"),
        }
    }
}

/// How often the ledger's retention runs (and once at start).
const LEDGER_RETENTION_EVERY: Duration = Duration::from_secs(600);

/// Removes ledger records past `[retention] days` (embedded mode).
async fn ledger_retention(
    ledger: Arc<crate::postback::Ledger>,
    window: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = crate::time::Ticker::new(LEDGER_RETENTION_EVERY, shutdown);
    while ticker.tick().await {
        let ledger = ledger.clone();
        let cutoff_ms = crate::time::now_ms() - window.as_millis() as i64;
        match tokio::task::spawn_blocking(move || ledger.apply_retention(cutoff_ms)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "ledger: retention failed"),
            Err(e) => tracing::error!(error = %e, "ledger: retention task failed"),
        }
    }
}

/// Steps the IP-hash salt at epoch boundaries and forgets old salts.
async fn tick_salts(salts: Arc<SaltRatchet>, shutdown: CancellationToken) {
    let report = |salts: &SaltRatchet, failed| {
        crate::telemetry::salt_state(
            salts.epoch_start_ms() / 1000,
            salts.rotation_ms() / 1000,
            failed,
        )
    };
    report(&salts, false);
    let mut ticker = crate::time::Ticker::new(SALT_TICK, shutdown);
    while ticker.tick().await {
        let ratchet = salts.clone();
        let now = crate::time::now_ms() as u64;
        let failed = match tokio::task::spawn_blocking(move || ratchet.tick(now)).await {
            Ok(Err(e)) => {
                tracing::error!(error = %e, "privacy: cannot persist the salt step");
                true
            }
            _ => false,
        };
        report(&salts, failed);
    }
}
