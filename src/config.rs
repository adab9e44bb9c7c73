//! Typed configuration.
//!
//! Three layers, later wins: the embedded `config/default.toml`, an optional
//! file (`--config` / `CLICKEDGE_CONFIG`), and `CLICKEDGE_<SECTION>__<KEY>`
//! environment variables. The merged tree is deserialised into `Raw*` structs
//! that reject unknown keys, then validated once into [`Config`], whose fields
//! are types that cannot hold a bad value. Every error names the key.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use ipnet::IpNet;
use serde::Deserialize;

/// The embedded defaults; also the documentation of every key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Environment variables with the prefix that are not config keys.
const NON_KEY_ENV: &[&str] = &["config", "master_key"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Parse(String),
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub master_key_file: Option<PathBuf>,
    pub edge: EdgeConfig,
    pub admin: AdminConfig,
    pub links: LinksConfig,
    pub cookie: CookieConfig,
    pub privacy: PrivacyConfig,
    pub clicklog: ClickLogConfig,
    pub stats: StatsConfig,
    pub kafka: Option<KafkaConfig>,
    pub clickhouse: Option<ClickHouseConfig>,
    pub sink: SinkConfig,
    pub retention: RetentionConfig,
    pub log: LogConfig,
    pub postback: PostbackConfig,
    pub geo: GeoConfig,
}

/// `[geo]`: where the visitor's country comes from (both optional).
#[derive(Debug, Clone)]
pub struct GeoConfig {
    /// A header a trusted proxy sets to the country (e.g. `CF-IPCountry`),
    /// believed only from `[edge] trusted_proxies`.
    pub country_header: Option<http::HeaderName>,
    /// A MaxMind-format country or city database file.
    pub mmdb: Option<PathBuf>,
    /// How often the file is checked for changes.
    pub reload_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct EdgeConfig {
    pub listen: SocketAddr,
    pub public_url: String,
    pub trusted_proxies: Vec<IpNet>,
    pub node_id: String,
    pub workers: Option<NonZeroUsize>,
    /// Applied only by the binary's `main`, before anything large is
    /// allocated (a process-wide flag; embedders set their own).
    pub transparent_huge_pages: bool,
    pub max_connections: NonZeroUsize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub shutdown_grace: Duration,
    /// Longest request target (path and query) accepted; longer gets 414.
    pub max_request_target_bytes: usize,
    /// A connection with nothing in flight this long is closed.
    pub idle_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
    /// Streams a client may reset before they are answered (rapid reset).
    pub h2_max_reset_streams: usize,
    /// Streams the server may reset for a client's errors (MadeYouReset).
    pub h2_max_local_error_reset_streams: usize,
    /// Requests in flight on the edge beyond this get 503 at once.
    pub max_in_flight: usize,
    /// Postbacks in flight, a pool of their own (not counted in
    /// `max_in_flight`), so slow postbacks cannot starve redirects.
    pub postback_max_in_flight: usize,
    /// Deadline and minimum rate for every request body read on the edge.
    pub body_read_timeout: Duration,
    pub min_body_bytes_per_sec: u64,
    pub tls: Option<TlsConfig>,
    pub rate_limit: RateLimitConfig,
}

/// `[edge.rate_limit]`: per-client token buckets (see `edge::ratelimit`).
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub enabled: bool,
    pub redirect: BucketConfig,
    pub not_found: BucketConfig,
    pub postback: BucketConfig,
    /// Hard cap on tracked clients (all classes together).
    pub max_keys: NonZeroUsize,
    /// How often refilled buckets are dropped.
    pub sweep_interval: Duration,
    /// Clients in these networks are never limited.
    pub allow: Vec<IpNet>,
}

/// One class of requests: `per_sec` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketConfig {
    pub per_sec: f64,
    pub burst: NonZeroU32,
}

/// `[edge.tls]`: an HTTPS listener beside the plain one.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
    /// The plain listener answers 308 to the HTTPS one.
    pub redirect_http: bool,
    /// The HTTPS port clients see (default: the `listen` port).
    pub https_port: Option<u16>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// Deadline and minimum rate for an admin request body.
    pub body_read_timeout: Duration,
    pub min_body_bytes_per_sec: u64,
    /// Per tenant: custom codes that may turn out taken by another tenant.
    pub code_conflicts: BucketConfig,
}

#[derive(Debug, Clone)]
pub struct LinksConfig {
    pub random_code_len: usize,
    pub default_redirect: u16,
    pub reload_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct CookieConfig {
    pub name: String,
    pub max_age_secs: u64,
}

#[derive(Debug, Clone)]
pub struct PrivacyConfig {
    pub salt_rotation: Duration,
    pub salt_grace: Duration,
}

/// What the edge does when the click-log queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// Wait (bounded) for room, then answer 503: never redirect unrecorded.
    Backpressure,
    /// Answer 503 at once.
    Shed,
    /// Redirect anyway and count the dropped event.
    Drop,
}

impl OverflowPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            OverflowPolicy::Backpressure => "backpressure",
            OverflowPolicy::Shed => "shed",
            OverflowPolicy::Drop => "drop",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClickLogConfig {
    pub queue_capacity: NonZeroUsize,
    pub overflow: OverflowPolicy,
    pub overflow_wait: Duration,
    pub fsync_interval: Duration,
    pub segment_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct StatsConfig {
    pub snapshot_interval: Duration,
}

/// `[kafka]`: its presence switches `serve` to full mode.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    /// Partitions of topics clickedge creates (existing topics are kept).
    pub partitions: i32,
    pub replication_factor: i32,
    /// Producer batching delay (librdkafka `linger.ms`).
    pub linger: Duration,
    /// Records in flight to the broker at most (librdkafka's queue bound).
    pub queue_max_messages: u32,
    /// A record not acknowledged within this is re-sent from the click log;
    /// `None`: the producer retries until the broker takes it.
    pub message_timeout: Option<Duration>,
    /// Unshipped click log beyond this: the edge applies `clicklog.overflow`.
    pub max_backlog_bytes: u64,
    /// Consumer group of `clickedge sink`.
    pub group_id: String,
}

#[derive(Clone)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
}

/// `check-config` prints the effective config: never the password.
impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field(
                "password",
                &if self.password.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub batch_rows: NonZeroU32,
    pub batch_interval: Duration,
    pub max_batch_bytes: NonZeroUsize,
    /// `/metrics` and `/healthz` of the sink process.
    pub metrics_listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct RetentionConfig {
    pub days: NonZeroU32,
    /// Tests only: how far the service's clock is moved
    /// ([`crate::time::set_offset`]).
    pub test_clock_offset_secs: i64,
}

impl RetentionConfig {
    pub fn as_duration(&self) -> Duration {
        Duration::from_secs(u64::from(self.days.get()) * 86_400)
    }
}

/// `[postback]`: the postback endpoint and the click index behind it.
#[derive(Debug, Clone)]
pub struct PostbackConfig {
    pub max_body_bytes: usize,
    /// How long a rotated-out secret stays valid (default of `--grace`).
    pub rotation_grace: Duration,
    /// Clicks younger than this are kept for matching postbacks.
    pub click_index_window: Duration,
    pub click_index_max_clicks: NonZeroUsize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

// ---- raw, as written ------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: PathBuf,
    master_key_file: Option<PathBuf>,
    edge: RawEdge,
    admin: RawAdmin,
    links: RawLinks,
    cookie: RawCookie,
    privacy: RawPrivacy,
    clicklog: RawClickLog,
    stats: RawStats,
    kafka: Option<RawKafka>,
    clickhouse: Option<RawClickHouse>,
    sink: RawSink,
    retention: RawRetention,
    log: RawLog,
    postback: RawPostback,
    geo: RawGeo,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeo {
    country_header: String,
    mmdb: String,
    reload_interval_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEdge {
    listen: String,
    public_url: String,
    trusted_proxies: Vec<String>,
    node_id: String,
    workers: usize,
    transparent_huge_pages: bool,
    max_connections: usize,
    header_read_timeout_ms: u64,
    max_header_bytes: usize,
    max_headers: usize,
    shutdown_grace_ms: u64,
    max_request_target_bytes: usize,
    idle_timeout_ms: u64,
    h2_max_concurrent_streams: u32,
    h2_max_reset_streams: usize,
    h2_max_local_error_reset_streams: usize,
    max_in_flight: usize,
    postback_max_in_flight: usize,
    body_read_timeout_ms: u64,
    min_body_bytes_per_sec: u64,
    #[serde(default)]
    tls: Option<RawTls>,
    rate_limit: RawRateLimit,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    enabled: bool,
    redirect_per_sec: f64,
    redirect_burst: u32,
    not_found_per_sec: f64,
    not_found_burst: u32,
    postback_per_sec: f64,
    postback_burst: u32,
    max_keys: usize,
    sweep_interval_ms: u64,
    allow: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    listen: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    reload_interval_ms: Option<u64>,
    redirect_http: Option<bool>,
    https_port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: String,
    max_body_bytes: usize,
    request_timeout_ms: u64,
    body_read_timeout_ms: u64,
    min_body_bytes_per_sec: u64,
    code_conflicts_per_sec: f64,
    code_conflicts_burst: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLinks {
    random_code_len: usize,
    default_redirect: u16,
    reload_interval_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCookie {
    name: String,
    max_age_secs: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrivacy {
    salt_rotation: String,
    salt_grace: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClickLog {
    queue_capacity: usize,
    overflow: String,
    overflow_wait_ms: u64,
    fsync_interval_ms: u64,
    segment_bytes: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStats {
    snapshot_interval_secs: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafka {
    brokers: String,
    #[serde(default = "kafka_defaults::partitions")]
    partitions: i32,
    #[serde(default = "kafka_defaults::replication_factor")]
    replication_factor: i32,
    #[serde(default = "kafka_defaults::linger_ms")]
    linger_ms: u64,
    #[serde(default = "kafka_defaults::queue_max_messages")]
    queue_max_messages: u32,
    #[serde(default = "kafka_defaults::message_timeout_ms")]
    message_timeout_ms: u64,
    #[serde(default = "kafka_defaults::max_backlog_bytes")]
    max_backlog_bytes: u64,
    #[serde(default = "kafka_defaults::group_id")]
    group_id: String,
}

/// Defaults of the optional `[kafka]` section (documented in default.toml).
mod kafka_defaults {
    pub fn partitions() -> i32 {
        6
    }
    pub fn replication_factor() -> i32 {
        1
    }
    pub fn linger_ms() -> u64 {
        5
    }
    pub fn queue_max_messages() -> u32 {
        100_000
    }
    pub fn message_timeout_ms() -> u64 {
        0
    }
    pub fn max_backlog_bytes() -> u64 {
        4 << 30
    }
    pub fn group_id() -> String {
        "clickedge-sink".into()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClickHouse {
    url: String,
    database: String,
    #[serde(default = "default_clickhouse_user")]
    user: String,
    #[serde(default)]
    password: String,
}

fn default_clickhouse_user() -> String {
    "default".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    batch_rows: u32,
    batch_interval_ms: u64,
    max_batch_bytes: usize,
    metrics_listen: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    days: u32,
    test_clock_offset_secs: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostback {
    max_body_bytes: usize,
    rotation_grace: String,
    click_index_days: u32,
    click_index_max_clicks: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: String,
    format: String,
}

// ---- loading ----------------------------------------------------------------

impl Config {
    /// Loads defaults, then `file` (if any), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, Env::prefixed("CLICKEDGE_"))
    }

    fn load_with_env(file: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Parse(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(env.split("__").ignore(NON_KEY_ENV));
        let raw: RawConfig = figment
            .extract()
            .map_err(|e| ConfigError::Parse(flatten_figment_error(e)))?;
        Self::validate(raw)
    }

    /// Parses a complete TOML document layered over the defaults (tests).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Parse(flatten_figment_error(e)))?;
        Self::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        if raw.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        let edge = validate_edge(raw.edge)?;
        let admin = AdminConfig {
            listen: parse_addr("admin.listen", &raw.admin.listen)?,
            max_body_bytes: at_least("admin.max_body_bytes", raw.admin.max_body_bytes, 1024)?,
            request_timeout: millis("admin.request_timeout_ms", raw.admin.request_timeout_ms)?,
            body_read_timeout: millis(
                "admin.body_read_timeout_ms",
                raw.admin.body_read_timeout_ms,
            )?,
            min_body_bytes_per_sec: raw.admin.min_body_bytes_per_sec,
            code_conflicts: bucket(
                "admin.code_conflicts_per_sec",
                raw.admin.code_conflicts_per_sec,
                "admin.code_conflicts_burst",
                raw.admin.code_conflicts_burst,
            )?,
        };
        if !(7..=64).contains(&raw.links.random_code_len) {
            return Err(invalid("links.random_code_len", "must be between 7 and 64"));
        }
        if !matches!(raw.links.default_redirect, 301 | 302 | 307 | 308) {
            return Err(invalid(
                "links.default_redirect",
                "must be one of 301, 302, 307, 308",
            ));
        }
        let links = LinksConfig {
            random_code_len: raw.links.random_code_len,
            default_redirect: raw.links.default_redirect,
            reload_interval: millis("links.reload_interval_ms", raw.links.reload_interval_ms)?,
        };
        let cookie = validate_cookie(raw.cookie)?;
        let privacy = validate_privacy(raw.privacy)?;
        let clicklog = validate_clicklog(raw.clicklog)?;
        let stats = StatsConfig {
            snapshot_interval: Duration::from_secs(at_least(
                "stats.snapshot_interval_secs",
                raw.stats.snapshot_interval_secs,
                1,
            )?),
        };
        let kafka = raw.kafka.map(validate_kafka).transpose()?;
        let clickhouse = raw
            .clickhouse
            .map(|c| {
                let url = url::Url::parse(&c.url)
                    .map_err(|e| invalid("clickhouse.url", format!("not a URL: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(invalid("clickhouse.url", "must be http:// or https://"));
                }
                if c.database.is_empty()
                    || !c
                        .database
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(invalid("clickhouse.database", "must be [A-Za-z0-9_]+"));
                }
                Ok(ClickHouseConfig {
                    url: c.url,
                    database: c.database,
                    user: c.user,
                    password: c.password,
                })
            })
            .transpose()?;
        let sink = SinkConfig {
            batch_rows: NonZeroU32::new(raw.sink.batch_rows)
                .ok_or_else(|| invalid("sink.batch_rows", "must be at least 1"))?,
            batch_interval: millis("sink.batch_interval_ms", raw.sink.batch_interval_ms)?,
            max_batch_bytes: NonZeroUsize::new(at_least(
                "sink.max_batch_bytes",
                raw.sink.max_batch_bytes,
                64 * 1024,
            )?)
            .expect("at least 64 KiB"),
            metrics_listen: parse_addr("sink.metrics_listen", &raw.sink.metrics_listen)?,
        };
        let retention = RetentionConfig {
            days: NonZeroU32::new(raw.retention.days)
                .ok_or_else(|| invalid("retention.days", "must be at least 1"))?,
            test_clock_offset_secs: match raw.retention.test_clock_offset_secs {
                // Within ±100 years: far enough for any test, never an overflow.
                s if s.unsigned_abs() <= 100 * 365 * 86_400 => s,
                _ => {
                    return Err(invalid(
                        "retention.test_clock_offset_secs",
                        "must be within 100 years of 0",
                    ))
                }
            },
        };
        let log = LogConfig {
            format: match raw.log.format.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(invalid(
                        "log.format",
                        format!("`{other}` is not one of: text, json"),
                    ))
                }
            },
            level: raw.log.level,
        };
        tracing_subscriber::EnvFilter::try_new(&log.level)
            .map_err(|e| invalid("log.level", e.to_string()))?;
        let postback = validate_postback(raw.postback)?;
        let geo = validate_geo(raw.geo)?;
        Ok(Config {
            data_dir: raw.data_dir,
            master_key_file: raw.master_key_file,
            edge,
            admin,
            links,
            cookie,
            privacy,
            clicklog,
            stats,
            kafka,
            clickhouse,
            sink,
            retention,
            log,
            postback,
            geo,
        })
    }
}

fn validate_geo(raw: RawGeo) -> Result<GeoConfig, ConfigError> {
    let header = raw.country_header.trim();
    let country_header = (!header.is_empty())
        .then(|| {
            http::HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| invalid("geo.country_header", "is not a valid header name"))
        })
        .transpose()?;
    let mmdb = raw.mmdb.trim();
    Ok(GeoConfig {
        country_header,
        mmdb: (!mmdb.is_empty()).then(|| PathBuf::from(mmdb)),
        reload_interval: millis("geo.reload_interval_ms", raw.reload_interval_ms)?,
    })
}

fn validate_postback(raw: RawPostback) -> Result<PostbackConfig, ConfigError> {
    if !(1024..=1 << 20).contains(&raw.max_body_bytes) {
        return Err(invalid(
            "postback.max_body_bytes",
            "must be between 1024 and 1048576",
        ));
    }
    let rotation_grace = humantime::parse_duration(&raw.rotation_grace)
        .map_err(|e| invalid("postback.rotation_grace", e.to_string()))?;
    if !(1..=3660).contains(&raw.click_index_days) {
        return Err(invalid(
            "postback.click_index_days",
            "must be between 1 and 3660",
        ));
    }
    Ok(PostbackConfig {
        max_body_bytes: raw.max_body_bytes,
        rotation_grace,
        click_index_window: Duration::from_secs(u64::from(raw.click_index_days) * 86_400),
        click_index_max_clicks: NonZeroUsize::new(raw.click_index_max_clicks)
            .ok_or_else(|| invalid("postback.click_index_max_clicks", "must be at least 1"))?,
    })
}

fn validate_edge(raw: RawEdge) -> Result<EdgeConfig, ConfigError> {
    let public_url = url::Url::parse(&raw.public_url)
        .map_err(|e| invalid("edge.public_url", format!("not an absolute URL: {e}")))?;
    if !matches!(public_url.scheme(), "http" | "https") || public_url.query().is_some() {
        return Err(invalid(
            "edge.public_url",
            "must be an http(s) URL without a query",
        ));
    }
    let trusted_proxies = parse_cidrs("edge.trusted_proxies", &raw.trusted_proxies)?;
    let node_id = if raw.node_id.is_empty() {
        host_name()
    } else {
        raw.node_id
    };
    if node_id.len() > 64 || node_id.chars().any(char::is_control) {
        return Err(invalid(
            "edge.node_id",
            "must be at most 64 printable characters",
        ));
    }
    Ok(EdgeConfig {
        listen: parse_addr("edge.listen", &raw.listen)?,
        public_url: public_url.as_str().trim_end_matches('/').to_owned(),
        trusted_proxies,
        node_id,
        workers: NonZeroUsize::new(raw.workers),
        transparent_huge_pages: raw.transparent_huge_pages,
        max_connections: NonZeroUsize::new(raw.max_connections)
            .ok_or_else(|| invalid("edge.max_connections", "must be at least 1"))?,
        header_read_timeout: millis("edge.header_read_timeout_ms", raw.header_read_timeout_ms)?,
        max_header_bytes: at_least("edge.max_header_bytes", raw.max_header_bytes, 8192)?,
        max_headers: at_least("edge.max_headers", raw.max_headers, 8)?,
        shutdown_grace: millis("edge.shutdown_grace_ms", raw.shutdown_grace_ms)?,
        max_request_target_bytes: at_least(
            "edge.max_request_target_bytes",
            raw.max_request_target_bytes,
            256,
        )?,
        idle_timeout: millis("edge.idle_timeout_ms", raw.idle_timeout_ms)?,
        h2_max_concurrent_streams: at_least(
            "edge.h2_max_concurrent_streams",
            raw.h2_max_concurrent_streams,
            1,
        )?,
        h2_max_reset_streams: at_least("edge.h2_max_reset_streams", raw.h2_max_reset_streams, 1)?,
        h2_max_local_error_reset_streams: at_least(
            "edge.h2_max_local_error_reset_streams",
            raw.h2_max_local_error_reset_streams,
            1,
        )?,
        max_in_flight: at_least("edge.max_in_flight", raw.max_in_flight, 1)?,
        postback_max_in_flight: at_least(
            "edge.postback_max_in_flight",
            raw.postback_max_in_flight,
            1,
        )?,
        body_read_timeout: millis("edge.body_read_timeout_ms", raw.body_read_timeout_ms)?,
        min_body_bytes_per_sec: raw.min_body_bytes_per_sec,
        tls: raw.tls.map(validate_tls).transpose()?,
        rate_limit: validate_rate_limit(raw.rate_limit)?,
    })
}

fn parse_cidrs(key: &'static str, list: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    list.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| invalid(key, format!("`{s}` is not a CIDR")))
        })
        .collect()
}

/// One token bucket's two keys, checked.
fn bucket(
    rate_key: &'static str,
    per_sec: f64,
    burst_key: &'static str,
    burst: u32,
) -> Result<BucketConfig, ConfigError> {
    // Below one per hour a bucket never refills in practice; above 1e6
    // per client the limiter is pointless: both are typos.
    if !(per_sec.is_finite() && (1.0 / 3600.0..=1e6).contains(&per_sec)) {
        return Err(invalid(
            rate_key,
            "must be between 0.0003 (1/h) and 1000000",
        ));
    }
    let burst = NonZeroU32::new(burst)
        .filter(|b| b.get() <= 10_000_000)
        .ok_or_else(|| invalid(burst_key, "must be between 1 and 10000000"))?;
    Ok(BucketConfig { per_sec, burst })
}

fn validate_rate_limit(raw: RawRateLimit) -> Result<RateLimitConfig, ConfigError> {
    Ok(RateLimitConfig {
        enabled: raw.enabled,
        redirect: bucket(
            "edge.rate_limit.redirect_per_sec",
            raw.redirect_per_sec,
            "edge.rate_limit.redirect_burst",
            raw.redirect_burst,
        )?,
        not_found: bucket(
            "edge.rate_limit.not_found_per_sec",
            raw.not_found_per_sec,
            "edge.rate_limit.not_found_burst",
            raw.not_found_burst,
        )?,
        postback: bucket(
            "edge.rate_limit.postback_per_sec",
            raw.postback_per_sec,
            "edge.rate_limit.postback_burst",
            raw.postback_burst,
        )?,
        max_keys: NonZeroUsize::new(raw.max_keys)
            .filter(|n| n.get() >= 1024)
            .ok_or_else(|| invalid("edge.rate_limit.max_keys", "must be at least 1024"))?,
        sweep_interval: millis("edge.rate_limit.sweep_interval_ms", raw.sweep_interval_ms)?,
        allow: parse_cidrs("edge.rate_limit.allow", &raw.allow)?,
    })
}

fn validate_kafka(k: RawKafka) -> Result<KafkaConfig, ConfigError> {
    if k.brokers.trim().is_empty() || k.brokers.split(',').any(|b| !b.trim().contains(':')) {
        return Err(invalid(
            "kafka.brokers",
            "must be a comma-separated list of host:port",
        ));
    }
    if !(1..=1024).contains(&k.partitions) {
        return Err(invalid("kafka.partitions", "must be between 1 and 1024"));
    }
    if !(1..=16).contains(&k.replication_factor) {
        return Err(invalid(
            "kafka.replication_factor",
            "must be between 1 and 16",
        ));
    }
    if k.linger_ms > 10_000 {
        return Err(invalid("kafka.linger_ms", "must be at most 10000"));
    }
    // librdkafka's own bounds, checked here so a bad value names its key.
    if k.message_timeout_ms != 0
        && (k.message_timeout_ms <= k.linger_ms || k.message_timeout_ms > i32::MAX as u64)
    {
        return Err(invalid(
            "kafka.message_timeout_ms",
            "must be 0 (no deadline) or more than kafka.linger_ms and at most 2147483647",
        ));
    }
    if k.queue_max_messages > 2_147_483_647 {
        return Err(invalid(
            "kafka.queue_max_messages",
            "must be at most 2147483647",
        ));
    }
    if k.group_id.is_empty() || k.group_id.len() > 255 {
        return Err(invalid("kafka.group_id", "must be 1-255 characters"));
    }
    Ok(KafkaConfig {
        brokers: k.brokers,
        partitions: k.partitions,
        replication_factor: k.replication_factor,
        linger: Duration::from_millis(k.linger_ms),
        queue_max_messages: at_least("kafka.queue_max_messages", k.queue_max_messages, 1000)?,
        message_timeout: (k.message_timeout_ms > 0)
            .then(|| Duration::from_millis(k.message_timeout_ms)),
        max_backlog_bytes: at_least("kafka.max_backlog_bytes", k.max_backlog_bytes, 1 << 20)?,
        group_id: k.group_id,
    })
}

/// Default for `edge.tls.reload_interval_ms`.
const TLS_RELOAD_MS: u64 = 2000;

fn validate_tls(raw: RawTls) -> Result<TlsConfig, ConfigError> {
    let required = |key: &'static str, v: Option<String>| {
        v.filter(|s| !s.trim().is_empty())
            .ok_or_else(|| invalid(key, "is required when [edge.tls] is set"))
    };
    Ok(TlsConfig {
        listen: parse_addr("edge.tls.listen", &required("edge.tls.listen", raw.listen)?)?,
        cert: PathBuf::from(required("edge.tls.cert", raw.cert)?),
        key: PathBuf::from(required("edge.tls.key", raw.key)?),
        reload_interval: millis(
            "edge.tls.reload_interval_ms",
            raw.reload_interval_ms.unwrap_or(TLS_RELOAD_MS),
        )?,
        redirect_http: raw.redirect_http.unwrap_or(false),
        https_port: match raw.https_port {
            Some(0) => return Err(invalid("edge.tls.https_port", "must be 1-65535")),
            port => port,
        },
    })
}

fn validate_cookie(raw: RawCookie) -> Result<CookieConfig, ConfigError> {
    // RFC 6265 cookie-name is an RFC 7230 token.
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if raw.name.is_empty() || raw.name.len() > 64 || !raw.name.bytes().all(is_tchar) {
        return Err(invalid(
            "cookie.name",
            "must be 1-64 characters of an HTTP token",
        ));
    }
    if raw.max_age_secs == 0 || raw.max_age_secs > 400 * 86_400 {
        return Err(invalid(
            "cookie.max_age_secs",
            "must be between 1 and 34560000 (400 days, the browser cap)",
        ));
    }
    Ok(CookieConfig {
        name: raw.name,
        max_age_secs: raw.max_age_secs,
    })
}

fn validate_privacy(raw: RawPrivacy) -> Result<PrivacyConfig, ConfigError> {
    let salt_rotation = humantime::parse_duration(&raw.salt_rotation)
        .map_err(|e| invalid("privacy.salt_rotation", e.to_string()))?;
    if salt_rotation < Duration::from_secs(60) {
        return Err(invalid("privacy.salt_rotation", "must be at least 1m"));
    }
    if salt_rotation.as_secs() > 366 * 86_400 {
        return Err(invalid("privacy.salt_rotation", "must be at most 366d"));
    }
    let salt_grace = humantime::parse_duration(&raw.salt_grace)
        .map_err(|e| invalid("privacy.salt_grace", e.to_string()))?;
    if salt_grace >= salt_rotation {
        return Err(invalid(
            "privacy.salt_grace",
            "must be shorter than privacy.salt_rotation",
        ));
    }
    Ok(PrivacyConfig {
        salt_rotation,
        salt_grace,
    })
}

fn validate_clicklog(raw: RawClickLog) -> Result<ClickLogConfig, ConfigError> {
    let overflow = match raw.overflow.as_str() {
        "backpressure" => OverflowPolicy::Backpressure,
        "shed" => OverflowPolicy::Shed,
        "drop" => OverflowPolicy::Drop,
        other => {
            return Err(invalid(
                "clicklog.overflow",
                format!("`{other}` is not one of: backpressure, shed, drop"),
            ))
        }
    };
    let fsync_interval = millis("clicklog.fsync_interval_ms", raw.fsync_interval_ms)?;
    if fsync_interval > Duration::from_secs(10) {
        return Err(invalid(
            "clicklog.fsync_interval_ms",
            "must be at most 10000",
        ));
    }
    Ok(ClickLogConfig {
        queue_capacity: NonZeroUsize::new(raw.queue_capacity)
            .ok_or_else(|| invalid("clicklog.queue_capacity", "must be at least 1"))?,
        overflow,
        overflow_wait: Duration::from_millis(raw.overflow_wait_ms),
        fsync_interval,
        segment_bytes: at_least("clicklog.segment_bytes", raw.segment_bytes, 4096)?,
    })
}

fn parse_addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| invalid(key, format!("`{value}` is not an IP:port address")))
}

fn millis(key: &'static str, value: u64) -> Result<Duration, ConfigError> {
    if value == 0 {
        return Err(invalid(key, "must be at least 1"));
    }
    Ok(Duration::from_millis(value))
}

fn at_least<T: PartialOrd + std::fmt::Display + Copy>(
    key: &'static str,
    value: T,
    min: T,
) -> Result<T, ConfigError> {
    if value < min {
        return Err(invalid(key, format!("must be at least {min}")));
    }
    Ok(value)
}

/// Figment reports nested errors one per line; keep them all, on one line.
fn flatten_figment_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "edge".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of(toml: &str) -> String {
        Config::from_toml(toml).unwrap_err().to_string()
    }

    #[test]
    fn embedded_defaults_are_valid_and_embedded_mode() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.edge.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.admin.listen, "127.0.0.1:9080".parse().unwrap());
        assert_eq!(c.cookie.name, "ce_click");
        assert_eq!(c.privacy.salt_rotation, Duration::from_secs(86_400));
        assert_eq!(c.retention.days.get(), 90);
        assert!(c.kafka.is_none());
        assert_eq!(c.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn the_clickhouse_password_is_never_printed() {
        let c = Config::from_toml(
            "[kafka]\nbrokers = \"h:1\"\n[clickhouse]\nurl = \"http://h:8123\"\ndatabase = \"d\"\npassword = \"hunter2\"",
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn kafka_defaults_apply_and_librdkafka_bounds_name_their_key() {
        let k = Config::from_toml("[kafka]\nbrokers = \"127.0.0.1:9092\"")
            .unwrap()
            .kafka
            .unwrap();
        assert_eq!((k.partitions, k.replication_factor), (6, 1));
        assert_eq!(k.message_timeout, None, "no delivery deadline by default");
        assert_eq!(k.group_id, "clickedge-sink");
        let bad = |extra: &str| err_of(&format!("[kafka]\nbrokers = \"h:1\"\n{extra}"));
        assert!(bad("linger_ms = 20\nmessage_timeout_ms = 10").contains("kafka.message_timeout_ms"));
        assert!(bad("partitions = 0").contains("kafka.partitions"));
        assert!(bad("queue_max_messages = 10").contains("kafka.queue_max_messages"));
        assert!(err_of("[kafka]\nbrokers = \"nohost\"").contains("kafka.brokers"));
        assert!(err_of("[sink]\nmetrics_listen = \"x\"").contains("sink.metrics_listen"));
    }

    #[test]
    fn bad_values_name_their_key() {
        assert!(err_of("[edge]\nlisten = \"nope\"").contains("edge.listen"));
        assert!(
            err_of("[edge]\ntrusted_proxies = [\"10.0.0.0/33\"]").contains("edge.trusted_proxies")
        );
        assert!(err_of("[privacy]\nsalt_rotation = \"soon\"").contains("privacy.salt_rotation"));
        assert!(err_of("[clicklog]\noverflow = \"maybe\"").contains("clicklog.overflow"));
        assert!(err_of("[cookie]\nname = \"a b\"").contains("cookie.name"));
        assert!(err_of("[retention]\ndays = 0").contains("retention.days"));
        assert!(err_of("[retention]\ntest_clock_offset_secs = 9999999999")
            .contains("retention.test_clock_offset_secs"));
        assert!(
            err_of("[postback]\nrotation_grace = \"later\"").contains("postback.rotation_grace")
        );
        assert!(err_of("[postback]\nmax_body_bytes = 1").contains("postback.max_body_bytes"));
    }

    #[test]
    fn rate_limits_default_on_and_bad_values_name_their_key() {
        let c = Config::from_toml("").unwrap().edge.rate_limit;
        assert!(c.enabled);
        assert_eq!(c.not_found.per_sec, 0.5);
        assert_eq!(c.redirect.burst.get(), 1000);
        assert_eq!(c.max_keys.get(), 1_000_000);
        assert!(c.allow.is_empty());
        let rl = |body: &str| err_of(&format!("[edge.rate_limit]\n{body}"));
        assert!(rl("redirect_per_sec = 0").contains("edge.rate_limit.redirect_per_sec"));
        assert!(rl("not_found_per_sec = -1.5").contains("edge.rate_limit.not_found_per_sec"));
        assert!(rl("postback_burst = 0").contains("edge.rate_limit.postback_burst"));
        assert!(rl("max_keys = 10").contains("edge.rate_limit.max_keys"));
        assert!(rl("allow = [\"nope\"]").contains("edge.rate_limit.allow"));
        let ok =
            Config::from_toml("[edge.rate_limit]\nnot_found_per_sec = 2\nallow = [\"10.0.0.1\"]")
                .unwrap()
                .edge
                .rate_limit;
        assert_eq!(ok.not_found.per_sec, 2.0);
        assert_eq!(ok.allow, vec!["10.0.0.1/32".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn transparent_huge_pages_are_off_unless_asked_for() {
        assert!(!Config::from_toml("").unwrap().edge.transparent_huge_pages);
        let on = Config::from_toml("[edge]\ntransparent_huge_pages = true").unwrap();
        assert!(on.edge.transparent_huge_pages);
        assert!(Config::from_toml("[edge]\ntransparent_huge_pages = \"yes\"").is_err());
    }

    #[test]
    fn edge_limit_knobs_default_and_name_their_key() {
        let e = Config::from_toml("").unwrap().edge;
        assert_eq!(e.max_request_target_bytes, 8192);
        assert_eq!(e.idle_timeout, Duration::from_secs(5));
        assert_eq!(e.h2_max_concurrent_streams, 256);
        assert_eq!(e.h2_max_reset_streams, 64);
        assert_eq!(e.max_in_flight, 10_000);
        assert_eq!(e.postback_max_in_flight, 1000);
        assert_eq!(e.body_read_timeout, Duration::from_secs(3));
        assert_eq!(e.min_body_bytes_per_sec, 1024);
        let a = Config::from_toml("").unwrap().admin;
        assert_eq!(a.body_read_timeout, Duration::from_secs(5));
        assert!(err_of("[admin]\nbody_read_timeout_ms = 0").contains("admin.body_read_timeout_ms"));
        assert_eq!(a.code_conflicts.per_sec, 0.5);
        assert_eq!(a.code_conflicts.burst.get(), 20);
        assert!(err_of("[admin]\ncode_conflicts_burst = 0").contains("admin.code_conflicts_burst"));
        let edge = |body: &str| err_of(&format!("[edge]\n{body}"));
        for key in [
            "max_request_target_bytes",
            "idle_timeout_ms",
            "h2_max_concurrent_streams",
            "h2_max_reset_streams",
            "h2_max_local_error_reset_streams",
            "max_in_flight",
            "postback_max_in_flight",
            "body_read_timeout_ms",
        ] {
            assert!(
                edge(&format!("{key} = 0")).contains(&format!("edge.{key}")),
                "{key}"
            );
        }
        let tls = "[edge.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"c\"\nkey = \"k\"\n";
        let t = Config::from_toml(tls).unwrap().edge.tls.unwrap();
        assert!(!t.redirect_http, "off by default");
        assert!(err_of(&format!("{tls}https_port = 0")).contains("edge.tls.https_port"));
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let e = err_of("[edge]\nlisten_port = 80");
        assert!(e.contains("listen_port"), "{e}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own Error
    fn env_overrides_nested_keys() {
        let env = Env::prefixed("CET_TEST_A_");
        // Env is read lazily from the process environment; Jail restores it.
        figment::Jail::expect_with(|jail| {
            jail.set_env("CET_TEST_A_EDGE__LISTEN", "127.0.0.1:1234");
            jail.set_env("CET_TEST_A_EDGE__TRUSTED_PROXIES", "[\"10.0.0.0/8\"]");
            jail.set_env("CET_TEST_A_DATA_DIR", "/tmp/x");
            jail.set_env("CET_TEST_A_MASTER_KEY", "not-a-key-field");
            let c = Config::load_with_env(None, env.clone()).unwrap();
            assert_eq!(c.edge.listen, "127.0.0.1:1234".parse().unwrap());
            assert_eq!(c.edge.trusted_proxies.len(), 1);
            assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
            jail.set_env("CET_TEST_A_EDGE__MAX_CONNECTIONS", "zero");
            let e = Config::load_with_env(None, env.clone())
                .unwrap_err()
                .to_string();
            assert!(e.to_lowercase().contains("edge.max_connections"), "{e}");
            Ok(())
        });
    }
}
