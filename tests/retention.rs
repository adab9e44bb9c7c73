//! `[retention] days` in embedded mode (CONTRACT.md "Tenant data
//! lifecycle"): with the service's clock moved forward between runs
//! (`[retention] test_clock_offset_secs`), click-log segments, stats
//! buckets and ledger records older than the window go, newer ones stay,
//! and the stats over the window do not change.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Api, Server};
use serde_json::{json, Value};

const MASTER: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const DAY_S: i64 = 86_400;
const PATIENCE: Duration = Duration::from_secs(15);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn date(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

/// Starts `serve` on `dir` with its clock `offset_days` ahead.
fn start(dir: &Path, offset_days: i64) -> Server {
    let offset = (offset_days * DAY_S).to_string();
    Server::start_in(
        dir,
        &[
            ("CLICKEDGE_MASTER_KEY", MASTER),
            ("CLICKEDGE_CLICKLOG__SEGMENT_BYTES", "4096"),
            ("CLICKEDGE_RETENTION__DAYS", "90"),
            ("CLICKEDGE_RETENTION__TEST_CLOCK_OFFSET_SECS", &offset),
        ],
    )
}

/// Every file under `dir`, as bytes, concatenated.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else if let Ok(b) = std::fs::read(&path) {
            out.extend(b);
        }
    }
    out
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

async fn clicks_between(api: &Api<'_>, from: &str, to: &str) -> u64 {
    let (status, v) = api
        .get(&format!("/v1/links/spring/stats?from={from}&to={to}"))
        .await;
    assert_eq!(status, 200, "{v}");
    v["clicks"].as_u64().unwrap()
}

/// Waits until the link's stats over the service's today count `want`.
async fn wait_clicks(api: &Api<'_>, today: &str, want: u64) {
    let mut got = 0;
    let ok = common::eventually(PATIENCE, || {
        got = futures_lite_block(clicks_between(api, today, today));
        got >= want
    })
    .await;
    assert!(ok, "stats reached {got} of {want}");
}

/// Runs a future to completion from a sync closure (the helper polls).
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

async fn postback(api: &Api<'_>, token: &str, click_id: &str, txn: &str) -> (u16, String) {
    let url = api.server.edge_url(&format!(
        "/_postback/aff?click_id={click_id}&txn_id={txn}&payout=2.00&token={token}"
    ));
    let r = api.http.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    (status, v["result"].as_str().unwrap_or("").to_owned())
}

fn wait_network(server: &Server) {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let mut c = std::net::TcpStream::connect(server.edge).unwrap();
        write!(
            c,
            "PUT /_postback/aff HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut buf = String::new();
        c.read_to_string(&mut buf).unwrap();
        if buf.split(' ').nth(1) == Some("405") {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "network never live");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Appends one click record of run A to segment `path`.
fn append_record(path: &Path, click_id: &str, ts_ms: i64) {
    use std::io::Write;
    let text = json!({
        "v": 1, "click_id": click_id, "ts": clickedge::time::rfc3339(ts_ms),
        "tenant": "acme", "code": "spring", "destination": "https://shop.example/",
        "ip_hash": "ab".repeat(16), "user_agent": common::BROWSER_UA, "referer": "",
        "sub": "", "bot": false, "bot_reason": null, "edge_node": "test-node", "salt_epoch": 0
    })
    .to_string();
    let wire: clickedge::clicks::WireClick = serde_json::from_str(&text).unwrap();
    let (mut payload, mut framed) = (Vec::new(), Vec::new());
    clickedge::clicklog::record::encode_wire(&wire, &mut payload);
    clickedge::clicklog::segments::frame(&payload, &mut framed);
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(&framed).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_segments_buckets_and_ledger_records_go_new_ones_stay_and_window_stats_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let t0 = now_ms();

    // Run A, today: 24 clicks and an accepted postback.
    let server = start(dir, 0);
    let token = server.token("acme");
    let api = Api::new(&server, token.clone());
    api.link(json!({"code": "spring", "destination": "https://shop.example/"}))
        .await;
    let out = server.cli(&["network", "add", "aff"]);
    assert!(out.status.success());
    let net: Value = serde_json::from_slice(&out.stdout).unwrap();
    let net_token = net["token"].as_str().unwrap().to_owned();
    wait_network(&server);
    let mut old_ids = Vec::new();
    for _ in 0..24 {
        old_ids.push(common::browser_click(&api.http, &server, "spring").await);
    }
    let day_a = date(t0);
    wait_clicks(&api, &day_a, 24).await;
    assert_eq!(
        postback(&api, &net_token, &old_ids[0], "OLD-1").await,
        (200, "accepted".into())
    );
    drop(api);
    assert!(server.stop().success());
    // Run A's last segment is closed (full) so run B starts a new one.
    let log_dir = dir.join("clicklog");
    let last = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let ids = clickedge::clicks::ClickIds::new(
        &clickedge::keys::MasterKey::load(Some(MASTER), None, Path::new("/"), true)
            .unwrap()
            .0,
    );
    while std::fs::metadata(&last).unwrap().len() < 4096 {
        // Pad it with more of run A's clicks (as its writer would have).
        let id = ids.mint(t0 as u64).as_str().to_owned();
        append_record(&last, &id, t0);
        old_ids.push(id);
    }

    // Run B, 60 days later: 5 clicks and a postback.
    let server = start(dir, 60);
    let api = Api::new(&server, token.clone());
    wait_network(&server);
    let mut new_ids = Vec::new();
    for _ in 0..5 {
        new_ids.push(common::browser_click(&api.http, &server, "spring").await);
    }
    let t_b = t0 + 60 * DAY_S * 1000;
    let day_b = date(t_b);
    wait_clicks(&api, &day_b, 5).await;
    assert_eq!(
        postback(&api, &net_token, &new_ids[0], "NEW-1").await,
        (200, "accepted".into())
    );
    assert_eq!(
        clicks_between(&api, &day_a, &day_b).await,
        old_ids.len() as u64 + 5
    );
    let window_b = clicks_between(&api, &date(t_b - DAY_S * 1000), &day_b).await;
    assert_eq!(window_b, 5);
    drop(api);
    assert!(server.stop().success());
    let before = all_bytes(&log_dir);
    assert!(holds(&before, &old_ids[3]) && holds(&before, &new_ids[3]));

    // Run C, 100 days after A: A is past the 90-day window, B is not.
    let server = start(dir, 100);
    let api = Api::new(&server, token.clone());
    wait_network(&server);
    let ok = common::eventually(PATIENCE, || {
        let log = all_bytes(&log_dir);
        !old_ids.iter().any(|id| holds(&log, id))
    })
    .await;
    assert!(ok, "run A's clicks are still in the click log");
    let log = all_bytes(&log_dir);
    for id in &new_ids {
        assert!(holds(&log, id), "run B's click {id} was removed");
    }
    let ledger = dir.join("postbacks.ledger");
    let ok = common::eventually(PATIENCE, || {
        !holds(&std::fs::read(&ledger).unwrap(), "OLD-1")
    })
    .await;
    assert!(ok, "run A's ledger record is still there");
    assert!(holds(&std::fs::read(&ledger).unwrap(), "NEW-1"));

    // Stats: A's day is gone, B's unchanged, the window holds B only.
    assert_eq!(clicks_between(&api, &day_a, &day_a).await, 0);
    assert_eq!(
        clicks_between(&api, &date(t_b - DAY_S * 1000), &day_b).await,
        window_b
    );
    let t_c = t0 + 100 * DAY_S * 1000;
    assert_eq!(
        clicks_between(&api, &date(t_c - 89 * DAY_S * 1000), &date(t_c)).await,
        5
    );

    // A re-sent old postback is out of window, never counted again.
    assert_eq!(
        postback(&api, &net_token, &old_ids[0], "OLD-1").await.0,
        422
    );

    // Exports hold only what is kept.
    let r = api
        .http
        .get(server.admin_url("/v1/export/clicks"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let exported: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["click_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(exported, new_ids);
    let r = api
        .http
        .get(server.admin_url("/v1/export/conversions"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(text.contains("NEW-1") && !text.contains("OLD-1"), "{text}");
}
