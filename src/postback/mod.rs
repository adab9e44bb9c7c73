//! Postbacks: conversions reported server-to-server by affiliate networks,
//! verified, recorded once, and reconciled against the clicks.
//!
//! Data flow, in the order a postback travels:
//!
//! ```text
//! edge /_postback/{network} ─► endpoint.rs  network known? IP allowed? signature/token?
//!                                  │         fields via the network's maps (params.rs, decimal.rs)
//!                                  ▼
//!                              ledger.rs     click-id tag → window → dedupe (network, txn_id, status)
//!                                  │         → click lookup (click_index.rs) → one durable record
//!                                  ▼
//! admin /v1/reconciliation ◄─ reconcile.rs   per network, day and link; latest status wins
//! ```
//!
//! Full mode (`full.rs`): matching asks ClickHouse for clicks this node has
//! not seen ([`ClickLookup`]), each node's ledger file is shipped to
//! `clickedge.conversions` (the ship module's ledger shipper) and loaded by the sink,
//! and reconciliation reads ClickHouse, where every node's records meet.
//! Ledger records are the `"v":1` JSON event that topic carries.
//!
//! Never here: a secret, a token or a raw IP in a log line, a metric label,
//! a file or an answer.

pub mod cli;
pub mod click_index;
pub mod decimal;
pub mod endpoint;
pub mod full;
pub mod ledger;
pub mod networks;
pub mod params;
pub mod reconcile;
pub mod sealed;
pub mod signature;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use click_index::{ClickIndex, ClickRef};
pub use ledger::Ledger;
pub use networks::NetworkTable;

/// A conversion's status, after the network's status map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Approved,
    Rejected,
    Reversed,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Pending,
        Status::Approved,
        Status::Rejected,
        Status::Reversed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Reversed => "reversed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// Pending and approved conversions count as conversions; rejected and
    /// reversed ones do not.
    pub fn counts_as_conversion(self) -> bool {
        matches!(self, Status::Pending | Status::Approved)
    }
}

/// What happened to one postback; every postback gets exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Accepted,
    StatusChange,
    Duplicate,
    UnknownClick,
    ForgedClick,
    OutOfWindow,
    BadAuth,
    Malformed,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Accepted,
        Outcome::StatusChange,
        Outcome::Duplicate,
        Outcome::UnknownClick,
        Outcome::ForgedClick,
        Outcome::OutOfWindow,
        Outcome::BadAuth,
        Outcome::Malformed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::StatusChange => "status_change",
            Outcome::Duplicate => "duplicate",
            Outcome::UnknownClick => "unknown_click",
            Outcome::ForgedClick => "forged_click",
            Outcome::OutOfWindow => "out_of_window",
            Outcome::BadAuth => "bad_auth",
            Outcome::Malformed => "malformed",
        }
    }

    /// The answer the contract gives each outcome.
    pub fn http_status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Outcome::Accepted
            | Outcome::StatusChange
            | Outcome::Duplicate
            | Outcome::UnknownClick => S::OK,
            Outcome::ForgedClick | Outcome::OutOfWindow => S::UNPROCESSABLE_ENTITY,
            Outcome::BadAuth => S::UNAUTHORIZED,
            Outcome::Malformed => S::BAD_REQUEST,
        }
    }

    /// Outcomes that carry a conversion (and are fsynced before the 200).
    pub fn is_valid(self) -> bool {
        self.http_status() == http::StatusCode::OK
    }
}

/// Finds the click a postback names. Embedded: this node's click index;
/// full mode: ClickHouse (tolerating ingestion lag: not found yet is
/// `unknown_click`, re-matched on read).
pub trait ClickLookup: Send + Sync {
    /// `ts_ms` is the time carried in the (verified) id.
    fn find(&self, click_id: &str, ts_ms: i64) -> Option<ClickRef>;
}

/// Where ledger records go once decided: the ledger file, in both modes
/// (full mode ships that file on to `clickedge.conversions`).
pub trait LedgerSink: Send {
    /// Appends one encoded record (a JSON object, no newline). With
    /// `durable`, it must be on stable storage before this returns.
    fn append(&mut self, json: &str, durable: bool) -> std::io::Result<()>;
}

/// Everything the edge needs to answer `/_postback/…`.
pub struct Postbacks {
    pub networks: Arc<NetworkTable>,
    /// Fed by the click-log writer.
    pub click_index: Arc<ClickIndex>,
    pub ledger: Arc<Ledger>,
    /// POST bodies: `postback.max_body_bytes`, the edge's body deadline
    /// and minimum rate.
    pub body: crate::body::BodyLimits,
    pub metrics: crate::telemetry::PostbackMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Networks(#[from] networks::NetworkError),
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    #[error("click index: reading the click log: {0}")]
    ClickLog(std::io::Error),
}

impl Postbacks {
    /// Builds the click index from the click log, loads the networks and
    /// replays the ledger. Call before the click-log writer starts, so the
    /// index and the writer's feed meet without a gap, and (in full mode)
    /// within the runtime that answers ClickHouse lookups.
    pub fn open(
        config: &crate::config::Config,
        master: &crate::keys::MasterKey,
    ) -> Result<Postbacks, OpenError> {
        let pc = &config.postback;
        let index = Arc::new(ClickIndex::new(
            pc.click_index_window,
            pc.click_index_max_clicks.get(),
        ));
        // Filled from the click log by its feed (`ClickIndexFeed`) once
        // the log is opened, before the writer starts.
        let networks = Arc::new(NetworkTable::open(
            &config.data_dir,
            sealed::Sealer::new(master),
        )?);
        // Full mode matches what this node has not seen in ClickHouse.
        let clicks: Arc<dyn ClickLookup> = match (&config.kafka, &config.clickhouse) {
            (Some(_), Some(ch)) => Arc::new(full::WarehouseClicks::new(
                index.clone(),
                crate::warehouse::client(ch),
                tokio::runtime::Handle::current(),
            )),
            _ => index.clone(),
        };
        let ledger = Arc::new(Ledger::open(
            &config.data_dir,
            clicks,
            crate::clicks::ClickIds::new(master),
            config.edge.node_id.clone(),
        )?);
        ledger.set_retention(config.retention.as_duration());
        Ok(Postbacks {
            networks,
            click_index: index,
            ledger,
            body: crate::body::BodyLimits {
                max_bytes: pc.max_body_bytes,
                timeout: config.edge.body_read_timeout,
                min_bytes_per_sec: config.edge.min_body_bytes_per_sec,
            },
            metrics: crate::telemetry::PostbackMetrics::register(),
        })
    }
}

/// Picks up networks added, rotated or removed by the CLI.
pub async fn poll_networks(
    networks: Arc<NetworkTable>,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut ticker = crate::time::Ticker::new(every, shutdown);
    while ticker.tick().await {
        let networks = networks.clone();
        match tokio::task::spawn_blocking(move || networks.poll()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "postback: network reload failed"),
            Err(e) => tracing::error!(error = %e, "postback: network reload task failed"),
        }
    }
}
