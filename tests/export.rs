//! Exports (CONTRACT.md "Tenant data lifecycle"): `GET /v1/export/clicks`
//! and `/v1/export/conversions` against the real binary in embedded mode.
//! What is exported is compared with what the edge answered (the click ids
//! from `Set-Cookie`), across tenants, as NDJSON and as CSV.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use clickedge::clicks::ClickIds;
use clickedge::keys::MasterKey;
use common::{Api, Server, BROWSER_UA};
use serde_json::{json, Value};

const MASTER: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const PATIENCE: Duration = Duration::from_secs(10);

fn env() -> [(&'static str, &'static str); 1] {
    [("CLICKEDGE_MASTER_KEY", MASTER)]
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `GET path` on the admin API with `token` and an `Accept`: status,
/// content type and the whole text.
async fn export(api: &Api<'_>, path: &str, accept: &str) -> (u16, String, String) {
    let r = api
        .http
        .get(api.server.admin_url(path))
        .bearer_auth(&api.token)
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ctype, r.text().await.unwrap())
}

/// The NDJSON click export of `query`, as JSON values.
async fn clicks(api: &Api<'_>, query: &str) -> Vec<Value> {
    let (status, ctype, text) = export(
        api,
        &format!("/v1/export/clicks?{query}"),
        "application/x-ndjson",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(ctype, "application/x-ndjson");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids_of(records: &[Value]) -> BTreeSet<String> {
    records
        .iter()
        .map(|r| r["click_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until the export of `api`'s tenant holds `want` clicks.
async fn exported(api: &Api<'_>, query: &str, want: usize) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = clicks(api, query).await;
        if got.len() >= want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_export_holds_exactly_the_clicks_the_edge_answered_and_never_another_tenants() {
    let server = Server::start_with(&env());
    let acme = Api::new(&server, server.token("acme"));
    let globex = Api::new(&server, server.token("globex"));
    let admin = Api::new(&server, server.token("*"));
    acme.link(json!({"code": "spring", "destination": "https://shop.example/"}))
        .await;
    globex
        .link(json!({"code": "autumn", "destination": "https://globex.example/"}))
        .await;
    let mut answered = BTreeSet::new();
    for _ in 0..5 {
        answered.insert(common::browser_click(&acme.http, &server, "spring").await);
    }
    let mut theirs = BTreeSet::new();
    for _ in 0..3 {
        theirs.insert(common::browser_click(&acme.http, &server, "autumn").await);
    }

    let got = exported(&acme, "", 5).await;
    assert_eq!(ids_of(&got), answered);
    for r in &got {
        assert_eq!(r["v"], 1);
        assert_eq!(r["tenant"], "acme");
        assert_eq!(r["code"], "spring");
        assert_eq!(r["user_agent"], BROWSER_UA);
        assert_eq!(r["edge_node"], "test-node");
    }
    assert_eq!(ids_of(&exported(&globex, "", 3).await), theirs);

    // An admin names the tenant; a tenant cannot name another.
    assert_eq!(ids_of(&clicks(&admin, "tenant=acme").await), answered);
    let (status, _, text) = export(&admin, "/v1/export/clicks", "*/*").await;
    assert_eq!(status, 400, "{text}");
    let e: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(e["error"]["code"], "invalid_query");
    let (status, _, text) = export(&acme, "/v1/export/clicks?tenant=globex", "*/*").await;
    assert_eq!(status, 403, "{text}");
    let (status, _, _) = export(&acme, "/v1/export/conversions?tenant=globex", "*/*").await;
    assert_eq!(status, 403);
    assert_eq!(ids_of(&clicks(&acme, "tenant=acme").await), answered);

    // The range: a window in the future holds nothing, one around now all.
    let later = clickedge::time::rfc3339(now_ms() + 3_600_000);
    let q = form_urlencoded::Serializer::new(String::new())
        .append_pair("from", &later)
        .append_pair("to", "2999-12-31")
        .finish();
    assert!(clicks(&acme, &q).await.is_empty());
    let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(
        ids_of(&clicks(&acme, &format!("from={day}&to={day}")).await),
        answered
    );

    // No token: 401, as everywhere.
    let r = common::client()
        .get(server.admin_url("/v1/export/clicks"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn bad_from_or_to_is_400_in_the_error_shape() {
    let server = Server::start_with(&env());
    let acme = Api::new(&server, server.token("acme"));
    let long = "9".repeat(10_000);
    for query in [
        "from=yesterday",
        "to=2026-13-01",
        "from=2026-12-05&to=2026-12-01",
        "from=2026-12-01T00:00:00Z&to=2026-12-01T00:00:00Z",
        "from=%00%ff",
        "to=2026-12-01T25:00:00Z",
        &format!("from={long}"),
    ] {
        for kind in ["clicks", "conversions"] {
            let (status, ctype, text) =
                export(&acme, &format!("/v1/export/{kind}?{query}"), "text/csv").await;
            assert_eq!(status, 400, "{kind}?{query}: {text}");
            assert_eq!(ctype, "application/json", "{kind}?{query}");
            let e: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(e["error"]["code"], "invalid_query", "{kind}?{query}");
            assert!(e["error"]["message"].as_str().unwrap().len() < 200);
        }
    }
    // The server carries on.
    assert!(clicks(&acme, "").await.is_empty());
}

/// Appends click records (as another process would have written them) to
/// the newest segment of the log under `data_dir`, with the server down.
fn append_records(data_dir: &Path, records: impl Iterator<Item = Value>) {
    let log_dir = data_dir.join("clicklog");
    let mut segs: Vec<_> = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(segs.last().unwrap())
        .unwrap();
    let mut f = std::io::BufWriter::with_capacity(1 << 20, f);
    let (mut payload, mut framed) = (Vec::new(), Vec::new());
    for rec in records {
        let text = rec.to_string();
        let wire: clickedge::clicks::WireClick = serde_json::from_str(&text).unwrap();
        payload.clear();
        framed.clear();
        clickedge::clicklog::record::encode_wire(&wire, &mut payload);
        clickedge::clicklog::segments::frame(&payload, &mut framed);
        f.write_all(&framed).unwrap();
    }
    f.flush().unwrap();
}

fn record(click_id: &str, ts_ms: i64, tenant: &str, code: &str, user_agent: &str) -> Value {
    json!({
        "v": 1, "click_id": click_id, "ts": clickedge::time::rfc3339(ts_ms),
        "tenant": tenant, "code": code, "destination": "https://shop.example/?a=1,b=2",
        "ip_hash": "ab".repeat(16), "user_agent": user_agent, "referer": "https://r.example/\"q\"",
        "sub": "s,1", "bot": false, "bot_reason": null, "edge_node": "elsewhere", "salt_epoch": 3
    })
}

#[tokio::test]
async fn csv_export_parses_back_even_with_commas_quotes_and_newlines_in_a_field() {
    let mut server = Server::start_with(&env());
    let token = server.token("acme");
    let api = Api::new(&server, token.clone());
    api.link(json!({"code": "spring", "destination": "https://shop.example/"}))
        .await;
    // A live click with commas and quotes in its user agent.
    let odd_ua = "Mozilla/5.0 (X11, \"quoted\"; a,b) Gecko";
    let r = api
        .http
        .get(server.edge_url("/spring?sub=x,y"))
        .header("user-agent", odd_ua)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(exported(&api, "", 1).await.len(), 1);
    drop(api);
    let dir = server.take_dir();
    assert!(server.stop().success());
    // A record with a newline and a CR in its user agent (no HTTP header
    // can carry one, but the log must not be trusted to never hold one).
    let ids = ClickIds::new(
        &MasterKey::load(Some(MASTER), None, Path::new("/"), true)
            .unwrap()
            .0,
    );
    let id = ids.mint(now_ms() as u64);
    let nasty_ua = "line one\nline \"two\",\r\nthree";
    append_records(
        dir.path(),
        std::iter::once(record(id.as_str(), now_ms(), "acme", "spring", nasty_ua)),
    );

    let server = Server::start_in(dir.path(), &env());
    let api = Api::new(&server, token);
    let json_lines = clicks(&api, "").await;
    assert_eq!(json_lines.len(), 2);
    let (status, ctype, text) = export(&api, "/v1/export/clicks", "text/csv").await;
    assert_eq!(status, 200);
    assert_eq!(ctype, "text/csv; charset=utf-8");
    let mut rd = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = rd.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(header[..3], ["v", "click_id", "ts"]);
    let rows: Vec<csv::StringRecord> = rd.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    // Each CSV row says what its JSON line says, field for field.
    for (row, line) in rows.iter().zip(&json_lines) {
        for (name, value) in header.iter().zip(row.iter()) {
            let want = match &line[name] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            assert_eq!(value, want, "column {name}");
        }
    }
    assert_eq!(&rows[0][7], odd_ua);
    assert_eq!(&rows[0][9], "x,y");
    assert_eq!(&rows[1][7], nasty_ua);

    // An empty CSV export is still a header.
    let admin = Api::new(&server, server.token("*"));
    let (status, _, text) = export(&admin, "/v1/export/clicks?tenant=nobody", "text/csv").await;
    assert_eq!(status, 200);
    assert_eq!(text.lines().count(), 1);
    assert!(text.starts_with("v,click_id,ts,"));
}

/// The server's peak resident set (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_huge_range_streams_in_chunks_without_holding_the_answer_in_memory() {
    let mut server = Server::start_with(&env());
    let token = server.token("acme");
    let dir = server.take_dir();
    assert!(server.stop().success());
    // 300 000 clicks (about 150 MB of NDJSON) over the last 20 days, every
    // tenth another tenant's, with long user agents.
    const N: usize = 300_000;
    let ids = ClickIds::new(
        &MasterKey::load(Some(MASTER), None, Path::new("/"), true)
            .unwrap()
            .0,
    );
    let start = now_ms() - 20 * 86_400_000;
    let ua = format!("{BROWSER_UA} {}", "x".repeat(200));
    append_records(
        dir.path(),
        (0..N).map(|i| {
            let ts = start + (i as i64) * 5_000;
            let id = ids.mint(ts as u64);
            let tenant = if i % 10 == 0 { "globex" } else { "acme" };
            record(id.as_str(), ts, tenant, "spring", &ua)
        }),
    );
    let server = Server::start_in(dir.path(), &env());
    let api = Api::new(&server, token);
    // Settled: the start-up work (replays, the click index) is done once
    // the peak stops moving.
    let mut before = peak_rss_kib(server.pid());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = peak_rss_kib(server.pid());
        if now == before || Instant::now() > deadline {
            break;
        }
        before = now;
    }
    let mut resp = api
        .http
        .get(server.admin_url("/v1/export/clicks?from=1970-01-01&to=2999-12-31"))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Streamed: no length known up front.
    assert!(resp.headers().get("content-length").is_none());
    let (mut lines, mut bytes, mut chunks) = (0usize, 0usize, 0usize);
    let mut partial = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        chunks += 1;
        bytes += chunk.len();
        partial.extend_from_slice(&chunk);
        let last_newline = partial.iter().rposition(|&b| b == b'\n');
        if let Some(at) = last_newline {
            for line in partial[..at].split(|&b| b == b'\n') {
                let v: Value = serde_json::from_slice(line).unwrap();
                assert_eq!(v["tenant"], "acme");
                lines += 1;
            }
            partial.drain(..=at);
        }
    }
    assert!(partial.is_empty());
    assert_eq!(lines, N - N / 10);
    assert!(chunks > 100, "{chunks} chunks for {bytes} bytes");
    let grown_mib = (peak_rss_kib(server.pid()).saturating_sub(before)) / 1024;
    eprintln!("exported {bytes} bytes in {chunks} chunks; peak RSS grew {grown_mib} MiB");
    assert!(
        (grown_mib as usize) < bytes / (1 << 20) / 4,
        "peak RSS grew {grown_mib} MiB for a {} MiB answer",
        bytes >> 20
    );
}

/// `network add`, then waits until the edge knows it.
fn add_network(server: &Server, name: &str) -> String {
    let out = server.cli(&["network", "add", name]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = {
            use std::io::Read;
            let mut c = std::net::TcpStream::connect(server.edge).unwrap();
            write!(
                c,
                "PUT /_postback/{name} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut buf = String::new();
            c.read_to_string(&mut buf).unwrap();
            buf.split(' ').nth(1).unwrap_or("").to_owned()
        };
        if status == "405" {
            break;
        }
        assert!(Instant::now() < deadline, "network never live");
        std::thread::sleep(Duration::from_millis(50));
    }
    v["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn conversions_export_holds_the_tenants_postbacks_only_as_ndjson_and_csv() {
    let server = Server::start_with(&env());
    let acme = Api::new(&server, server.token("acme"));
    let globex = Api::new(&server, server.token("globex"));
    acme.link(json!({"code": "spring", "destination": "https://shop.example/"}))
        .await;
    globex
        .link(json!({"code": "autumn", "destination": "https://globex.example/"}))
        .await;
    let net = add_network(&server, "aff");
    let mine = common::browser_click(&acme.http, &server, "spring").await;
    let theirs = common::browser_click(&acme.http, &server, "autumn").await;
    exported(&acme, "", 1).await;
    exported(&globex, "", 1).await;
    for (cid, txn) in [(&mine, "A-1"), (&theirs, "G-1"), (&mine, "A-1")] {
        let url = server.edge_url(&format!(
            "/_postback/aff?click_id={cid}&txn_id={txn}&payout=1.50&token={}",
            net
        ));
        let r = acme.http.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let (status, ctype, text) = export(&acme, "/v1/export/conversions", "*/*").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(ctype, "application/x-ndjson");
    let recs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let outcomes: Vec<&str> = recs
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["accepted", "duplicate"]);
    for r in &recs {
        assert_eq!(r["tenant"], "acme");
        assert_eq!(r["click_id"], mine.as_str());
        assert_eq!(r["txn_id"], "A-1");
        assert_eq!(r["payout"], "1.50");
    }
    let (_, _, text) = export(&globex, "/v1/export/conversions", "*/*").await;
    assert_eq!(text.lines().count(), 1);
    assert!(text.contains("G-1") && !text.contains("A-1"));

    let (status, _, text) = export(&acme, "/v1/export/conversions", "text/csv").await;
    assert_eq!(status, 200);
    let mut rd = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(&rd.headers().unwrap()[3], "txn_id");
    let rows: Vec<csv::StringRecord> = rd.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(&rows[0][1], "accepted");
    assert_eq!(&rows[0][5], "1.50");
    assert_eq!(&rows[0][10], "acme");
}

#[tokio::test]
async fn a_slow_reader_gets_the_whole_export_past_the_idle_timeout_and_a_leaver_costs_nothing() {
    // Connections idle for 1 s are closed: an export being sent is not idle.
    let idle = [
        ("CLICKEDGE_MASTER_KEY", MASTER),
        ("CLICKEDGE_EDGE__IDLE_TIMEOUT_MS", "1000"),
    ];
    let mut server = Server::start_with(&idle);
    let token = server.token("acme");
    let dir = server.take_dir();
    assert!(server.stop().success());
    const N: usize = 20_000;
    let ids = ClickIds::new(
        &MasterKey::load(Some(MASTER), None, Path::new("/"), true)
            .unwrap()
            .0,
    );
    let start = now_ms() - 86_400_000;
    let ua = format!("{BROWSER_UA} {}", "y".repeat(300));
    append_records(
        dir.path(),
        (0..N).map(|i| {
            let ts = start + i as i64;
            record(ids.mint(ts as u64).as_str(), ts, "acme", "spring", &ua)
        }),
    );
    let server = Server::start_in(dir.path(), &idle);
    let api = Api::new(&server, token);

    // A client that reads one chunk and leaves.
    for _ in 0..8 {
        let mut resp = api
            .http
            .get(server.admin_url("/v1/export/clicks"))
            .bearer_auth(&api.token)
            .send()
            .await
            .unwrap();
        assert!(resp.chunk().await.unwrap().is_some());
        drop(resp);
    }

    // Four that do not read hold every slot: a fifth is 503 until they go.
    // (The leavers' slots come back once the server notices they left.)
    let mut stalled = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while stalled.len() < 4 {
        let resp = api
            .http
            .get(server.admin_url("/v1/export/clicks"))
            .bearer_auth(&api.token)
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            200 => stalled.push(resp),
            503 => {
                assert!(Instant::now() < deadline, "slots never came back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("export answered {other}"),
        }
    }
    let (status, _, text) = export(&api, "/v1/export/clicks", "*/*").await;
    assert_eq!(status, 503, "{text}");
    let e: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(e["error"]["code"], "too_many_exports");
    drop(stalled);
    let mut freed = false;
    for _ in 0..100 {
        if export(
            &api,
            "/v1/export/clicks?from=2999-01-01&to=2999-01-02",
            "*/*",
        )
        .await
        .0 == 200
        {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        freed,
        "the slots of clients that left were never given back"
    );

    // A slow one: about 4 s for the whole answer.
    let mut resp = api
        .http
        .get(server.admin_url("/v1/export/clicks"))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    let began = Instant::now();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        began.elapsed() > Duration::from_secs(2),
        "not slow enough to prove it"
    );
    let lines = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(lines, N);
    // The server carries on.
    assert_eq!(clicks(&api, "from=2999-01-01&to=2999-01-02").await.len(), 0);
}
