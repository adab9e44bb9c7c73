//! The real Kafka API (Tansu) and ClickHouse for full-mode tests.
//!
//! Each test starts its own instances through `scripts/services` (one source
//! of truth for how they are configured), so it can stop and restart them
//! without disturbing other tests. `scripts/services install` (run by
//! `scripts/test`) must have installed them; a missing service is a test
//! failure, never a skip.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{signal, wait_timeout, BIN};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/services")
}

fn services(args: &[&str]) -> String {
    let out = Command::new(script())
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/services");
    assert!(
        out.status.success(),
        "scripts/services {args:?} failed (run `scripts/services install` first)"
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A Tansu broker. `sqlite` storage keeps topics and data across restarts.
pub struct Kafka {
    dir: tempfile::TempDir,
    pub addr: String,
    storage: &'static str,
}

impl Kafka {
    pub fn start(storage: &'static str) -> Kafka {
        let dir = tempfile::tempdir().unwrap();
        let addr = services(&["start-kafka", dir.path().to_str().unwrap(), "", storage]);
        Kafka { dir, addr, storage }
    }

    pub fn stop(&self) {
        services(&["stop", self.dir.path().to_str().unwrap()]);
    }

    /// SIGKILL: the broker crashes.
    pub fn kill(&self) {
        services(&["stop", self.dir.path().to_str().unwrap(), "--now"]);
    }

    /// The broker's own log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Starts again on the same port and storage.
    pub fn restart(&self) {
        let port = self.addr.rsplit(':').next().unwrap();
        let addr = services(&[
            "start-kafka",
            self.dir.path().to_str().unwrap(),
            port,
            self.storage,
        ]);
        assert_eq!(addr, self.addr);
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A ClickHouse server with its own config and data dir.
pub struct ClickHouse {
    dir: tempfile::TempDir,
    pub url: String,
}

impl ClickHouse {
    pub fn start() -> ClickHouse {
        let dir = tempfile::tempdir().unwrap();
        let url = services(&["start-clickhouse", dir.path().to_str().unwrap()]);
        ClickHouse { dir, url }
    }

    pub fn stop(&self) {
        services(&["stop", self.dir.path().to_str().unwrap()]);
    }

    /// Starts again on the same port and data.
    pub fn restart(&self) {
        let port = self.url.rsplit(':').next().unwrap();
        let url = services(&["start-clickhouse", self.dir.path().to_str().unwrap(), port]);
        assert_eq!(url, self.url);
    }

    /// Runs `sql` over HTTP; the answer in TabSeparated.
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "--data-binary", sql, &self.url])
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "clickhouse query failed: {sql}\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn query_u64(&self, sql: &str) -> u64 {
        self.query(sql).trim().parse().unwrap_or(0)
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Env for `serve` and `sink` in full mode against these services.
pub fn full_mode_env(kafka: &Kafka, ch: &ClickHouse, database: &str) -> Vec<(String, String)> {
    [
        ("CLICKEDGE_KAFKA__BROKERS", kafka.addr.as_str()),
        ("CLICKEDGE_CLICKHOUSE__URL", ch.url.as_str()),
        ("CLICKEDGE_CLICKHOUSE__DATABASE", database),
        ("CLICKEDGE_SINK__METRICS_LISTEN", "127.0.0.1:0"),
        ("CLICKEDGE_SINK__BATCH_INTERVAL_MS", "300"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A `clickedge sink` process.
pub struct Sink {
    child: Option<Child>,
    env: Vec<(String, String)>,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Sink {
    pub fn start(env: &[(String, String)]) -> Sink {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sink.log");
        let mut s = Sink {
            child: None,
            env: env.to_vec(),
            log,
            _dir: dir,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = super::command(self._dir.path(), &self.env)
            .arg("sink")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {BIN} sink: {e}"));
        self.child = Some(child);
    }

    /// SIGKILL, then start again.
    pub fn kill_and_restart(&mut self) {
        let mut c = self.child.take().unwrap();
        let _ = c.kill();
        let _ = c.wait();
        self.spawn();
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "-TERM");
            wait_timeout(&mut c, Duration::from_secs(30));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    f()
}
