//! Shared harness: starts the real `clickedge` binary on ephemeral ports in
//! a temporary data dir and talks to it over real sockets.
#![allow(dead_code)]

pub mod services;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_clickedge");
const START_TIMEOUT: Duration = Duration::from_secs(20);
pub const BROWSER_UA: &str =
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15";

/// Rate limits no test reaches by accident.
pub const HIGH_RATE_LIMITS: [(&str, &str); 4] = [
    ("CLICKEDGE_EDGE__RATE_LIMIT__REDIRECT_PER_SEC", "1000000"),
    ("CLICKEDGE_EDGE__RATE_LIMIT__REDIRECT_BURST", "10000000"),
    ("CLICKEDGE_EDGE__RATE_LIMIT__NOT_FOUND_PER_SEC", "1000000"),
    ("CLICKEDGE_EDGE__RATE_LIMIT__NOT_FOUND_BURST", "10000000"),
];

pub struct Server {
    child: Option<Child>,
    pub edge: SocketAddr,
    pub admin: SocketAddr,
    /// The HTTPS edge, when `[edge.tls]` is configured.
    pub edge_tls: Option<SocketAddr>,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub log: Arc<Mutex<Vec<String>>>,
    env: Vec<(String, String)>,
}

/// A command for the binary with a clean, hermetic environment.
pub fn command(data_dir: &Path, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("CLICKEDGE_DATA_DIR", data_dir)
        .env("CLICKEDGE_EDGE__LISTEN", "127.0.0.1:0")
        .env("CLICKEDGE_ADMIN__LISTEN", "127.0.0.1:0")
        .env("CLICKEDGE_LOG__FORMAT", "json")
        .env("CLICKEDGE_EDGE__NODE_ID", "test-node")
        .env("RUST_BACKTRACE", "1");
    // Every test talks from 127.0.0.1: limits high enough never to trip,
    // but the limiter still runs. tests/rate_limit.rs sets its own.
    for (key, value) in HIGH_RATE_LIMITS {
        cmd.env(key, value);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    pub fn start_with(env: &[(&str, &str)]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut s = Self::start_in(&dir, env);
        s._tmp = Some(tmp);
        s
    }

    /// Starts `serve` on an existing data dir (restarts keep the dir).
    pub fn start_in(dir: &Path, env: &[(&str, &str)]) -> Server {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut child = command(dir, &env)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn clickedge serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "listening" {
                        let _ = tx.send((
                            v["listener"].as_str().unwrap_or("").to_owned(),
                            v["addr"].as_str().unwrap_or("").parse::<SocketAddr>().ok(),
                        ));
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let (mut edge, mut admin, mut edge_tls) = (None, None, None);
        let deadline = Instant::now() + START_TIMEOUT;
        while edge.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((name, addr)) if name == "edge.listen" => edge = addr,
                Ok((name, addr)) if name == "admin.listen" => admin = addr,
                // Bound before the plain listeners, so seen before them.
                Ok((name, addr)) if name == "edge.tls.listen" => edge_tls = addr,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "clickedge did not start; log:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            }
        }
        Server {
            child: Some(child),
            edge: edge.unwrap(),
            admin: admin.unwrap(),
            edge_tls,
            data_dir: dir.to_owned(),
            _tmp: None,
            log,
            env,
        }
    }

    /// Runs a CLI subcommand against this server's data dir.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        command(&self.data_dir, &self.env)
            .args(args)
            .output()
            .expect("run clickedge")
    }

    /// Mints a token with the CLI and waits until the server accepts it.
    pub fn token(&self, tenant: &str) -> String {
        let out = self.cli(&["token", "create", "--tenant", tenant]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let token = stdout.lines().last().unwrap().trim().to_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self
                .admin_get_blocking(&token, "/v1/links?limit=1")
                .unwrap_or(0);
            if status == 200 {
                return token;
            }
            assert!(Instant::now() < deadline, "token never became valid");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn admin_get_blocking(&self, token: &str, path: &str) -> Option<u16> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.admin).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        buf.split(' ').nth(1)?.parse().ok()
    }

    pub fn edge_url(&self, path: &str) -> String {
        format!("http://{}{}", self.edge, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM and wait: the graceful path.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        signal(child.id(), "-TERM");
        wait_timeout(&mut child, Duration::from_secs(30))
    }

    /// Waits for exit after a signal was sent with [`signal`].
    pub fn stop_after_signal(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        wait_timeout(&mut child, Duration::from_secs(30))
    }

    /// SIGKILL: the crash path.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Keeps the data dir alive beyond this server (for restarts).
    pub fn take_dir(&mut self) -> tempfile::TempDir {
        self._tmp.take().expect("server owns its temp dir")
    }

    pub fn click_log_lines(&self) -> Vec<serde_json::Value> {
        click_log_lines(&self.data_dir)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every event in a data dir's click log, in order, as `clickedge log tail
/// --all` prints it (the log on disk is binary).
pub fn click_log_lines(data_dir: &Path) -> Vec<serde_json::Value> {
    if !data_dir.join("clicklog").is_dir() {
        return Vec::new();
    }
    let out = Command::new(BIN)
        .args(["log", "tail", "--all"])
        .env_clear()
        .env("CLICKEDGE_DATA_DIR", data_dir)
        .env("CLICKEDGE_EDGE__NODE_ID", "test-node")
        .output()
        .expect("clickedge log tail runs");
    assert!(
        out.status.success(),
        "clickedge log tail failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("log tail prints JSON lines"))
        .collect()
}

/// An HTTP client that never follows redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Admin API helper bound to one token.
pub struct Api<'a> {
    pub server: &'a Server,
    pub token: String,
    pub http: reqwest::Client,
}

impl<'a> Api<'a> {
    pub fn new(server: &'a Server, token: String) -> Api<'a> {
        Api {
            server,
            token,
            http: client(),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self
            .http
            .request(method, self.server.admin_url(path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let json = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        (status, json)
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// Creates a link and returns its JSON; panics unless 201.
    pub async fn link(&self, body: serde_json::Value) -> serde_json::Value {
        let (status, json) = self.post("/v1/links", body).await;
        assert_eq!(status, 201, "{json}");
        json
    }
}

/// Polls `f` until it returns true or `limit` passes.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// A browser's click on `code` at `server`'s edge: asserts the redirect and
/// returns the click id from its cookie.
pub async fn browser_click(http: &reqwest::Client, server: &Server, code: &str) -> String {
    let r = http
        .get(server.edge_url(&format!("/{code}")))
        .header("user-agent", BROWSER_UA)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    cookie["ce_click=".len()..cookie.find(';').unwrap()].to_owned()
}
