//! Full mode against the real services: every click answered with a
//! redirect reaches ClickHouse exactly once, through broker outages,
//! ClickHouse outages, sink crashes and `serve` restarts; postbacks from
//! several nodes reconcile once from ClickHouse.
//!
//! Each test starts its own Tansu and ClickHouse (`scripts/services`) and
//! compares the *set* of click ids the edge handed out in `Set-Cookie` with
//! the set of distinct click ids in ClickHouse.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::services::{full_mode_env, wait_until, ClickHouse, Kafka, Sink};
use common::{Api, Server, BROWSER_UA};
use serde_json::json;

const DB: &str = "ce";
const BOT_UA: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
/// How long the sink may take to catch up at the end of a test.
const CATCH_UP: Duration = Duration::from_secs(120);

/// What the edge answered during a load.
#[derive(Default, Debug)]
struct Answered {
    ids: HashSet<String>,
    humans: u64,
    bots: u64,
    /// Requests not answered with a redirect (refused connections during a
    /// restart, 503s): not clicks, so not expected in ClickHouse.
    other: u64,
}

impl Answered {
    fn merge(&mut self, o: Answered) {
        self.ids.extend(o.ids);
        self.humans += o.humans;
        self.bots += o.bots;
        self.other += o.other;
    }
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Mints `n` links for tenant `acme`; returns the token and the codes.
fn mint_links(server: &Server, n: usize) -> (String, Vec<String>) {
    let token = server.token("acme");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let codes = rt.block_on(async {
        let api = Api::new(server, token.clone());
        let links: Vec<_> = (0..n)
            .map(|i| json!({"code": format!("pipe-{i}"), "destination": format!("https://shop.example/p/{i}?c={{click_id}}")}))
            .collect();
        let (status, body) = api.post("/v1/links/batch", json!({ "links": links })).await;
        assert_eq!(status, 200, "{body}");
        (0..n).map(|i| format!("pipe-{i}")).collect::<Vec<_>>()
    });
    (token, codes)
}

/// Sends clicks to `edge` until `stop` is set or `max` are sent, at most
/// `rate` per second, `concurrency` at a time. Every fourth click is a bot.
fn load(
    edge: std::net::SocketAddr,
    codes: Vec<String>,
    max: u64,
    rate: u64,
    concurrency: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Answered> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let codes = Arc::new(codes);
            let per_worker = max.div_ceil(concurrency);
            let gap = Duration::from_secs_f64(concurrency as f64 / rate as f64);
            let mut tasks = Vec::new();
            for w in 0..concurrency {
                let (client, codes, stop) = (client.clone(), codes.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    let mut got = Answered::default();
                    let mut next = tokio::time::Instant::now();
                    for i in 0..per_worker {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        tokio::time::sleep_until(next).await;
                        next += gap;
                        let n = w * per_worker + i;
                        let code = &codes[(n as usize) % codes.len()];
                        let bot = n.is_multiple_of(4);
                        let resp = client
                            .get(format!("http://{edge}/{code}?sub=s{}", n % 7))
                            .header("user-agent", if bot { BOT_UA } else { BROWSER_UA })
                            .send()
                            .await;
                        let Ok(resp) = resp else {
                            got.other += 1;
                            continue;
                        };
                        if resp.status() != 302 {
                            got.other += 1;
                            continue;
                        }
                        let cookie = resp.headers()["set-cookie"].to_str().unwrap();
                        let id = cookie
                            .strip_prefix("ce_click=")
                            .and_then(|c| c.split(';').next())
                            .unwrap();
                        got.ids.insert(id.to_owned());
                        if bot {
                            got.bots += 1;
                        } else {
                            got.humans += 1;
                        }
                    }
                    got
                }));
            }
            let mut all = Answered::default();
            for t in tasks {
                all.merge(t.await.unwrap());
            }
            all
        })
    })
}

fn distinct_clicks(ch: &ClickHouse) -> u64 {
    ch.query_u64(&format!("SELECT uniqExact(click_id) FROM {DB}.clicks"))
}

/// Waits until ClickHouse holds as many distinct clicks as were answered,
/// then checks the sets are equal.
fn assert_exactly_once(s: &Stack, answered: &Answered, server: &Server, sink: &Sink) {
    let ch = &s.ch;
    let want = answered.ids.len() as u64;
    let caught_up = wait_until(CATCH_UP, || distinct_clicks(ch) >= want);
    let stored: HashSet<String> = ch
        .query(&format!(
            "SELECT click_id FROM {DB}.clicks GROUP BY click_id"
        ))
        .lines()
        .map(str::to_owned)
        .collect();
    let missing: Vec<&String> = answered.ids.difference(&stored).take(5).collect();
    assert!(
        caught_up,
        "ClickHouse has {} distinct clicks, the edge answered {want}; missing e.g. {missing:?}\n--- serve metrics:\n{}\n--- serve log:\n{}\n--- sink log:\n{}\n--- broker log:\n{}",
        distinct_clicks(ch),
        server_metrics(server),
        server.log_text(),
        sink.log_text(),
        s.kafka.log_tail(),
    );
    let missing: Vec<&String> = answered.ids.difference(&stored).collect();
    let extra = stored.difference(&answered.ids).count();
    assert_eq!(
        (missing.len(), extra),
        (0, 0),
        "click ids missing from / unknown to ClickHouse; first missing: {:?}",
        &missing[..missing.len().min(5)]
    );
}

fn server_metrics(server: &Server) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let text = rt.block_on(async {
        let r = common::client()
            .get(server.admin_url("/metrics"))
            .send()
            .await;
        match r {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        }
    });
    text.lines()
        .filter(|l| l.starts_with("clickedge_ship") || l.starts_with("clickedge_clicklog_events"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sum of the stats of every link, as the admin API answers them.
fn stats_totals(server: &Server, token: &str, codes: &[String]) -> (u64, u64, u64) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let api = Api::new(server, token.to_owned());
        let (mut clicks, mut humans, mut bots) = (0, 0, 0);
        let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
        for code in codes {
            let (status, s) = api
                .get(&format!(
                    "/v1/links/{code}/stats?from={today}&to={today}&interval=hour"
                ))
                .await;
            assert_eq!(status, 200, "{s}");
            clicks += s["clicks"].as_u64().unwrap();
            humans += s["human_clicks"].as_u64().unwrap();
            bots += s["bot_clicks"].as_u64().unwrap();
            let series: u64 = s["series"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["clicks"].as_u64().unwrap())
                .sum();
            assert_eq!(series, s["clicks"].as_u64().unwrap(), "series adds up");
        }
        (clicks, humans, bots)
    })
}

struct Stack {
    kafka: Kafka,
    ch: ClickHouse,
    env: Vec<(String, String)>,
}

fn stack(storage: &'static str, extra: &[(&str, &str)]) -> Stack {
    let kafka = Kafka::start(storage);
    let ch = ClickHouse::start();
    let mut env = full_mode_env(&kafka, &ch, DB);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Stack { kafka, ch, env }
}

#[test]
fn every_answered_click_reaches_clickhouse_exactly_once() {
    let s = stack("memory", &[]);
    let server = Server::start_with(&env_refs(&s.env));
    let sink = Sink::start(&s.env);
    let (token, codes) = mint_links(&server, 50);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = load(server.edge, codes.clone(), 20_000, 100_000, 32, stop)
        .join()
        .unwrap();
    assert_eq!(answered.other, 0, "every click was redirected");
    assert_eq!(answered.ids.len(), 20_000);
    assert_exactly_once(&s, &answered, &server, &sink);

    let (clicks, humans, bots) = stats_totals(&server, &token, &codes);
    assert_eq!(clicks, 20_000, "stats count every click once");
    assert_eq!((humans, bots), (answered.humans, answered.bots));
    assert_eq!(
        s.ch.query_u64(&format!("SELECT count() FROM {DB}.dead_letters")),
        0
    );
    // The shipper trims what Kafka has: only the open segment is left.
    let segments = std::fs::read_dir(server.data_dir.join("clicklog"))
        .unwrap()
        .count();
    assert_eq!(segments, 1);
}

#[test]
fn a_broker_outage_loses_no_click_and_redirects_keep_answering() {
    // The broker crashes (SIGKILL); SQLite storage keeps the topics and
    // what was acknowledged across the restart.
    let s = stack("sqlite", &[]);
    let server = Server::start_with(&env_refs(&s.env));
    let sink = Sink::start(&s.env);
    let (_token, codes) = mint_links(&server, 20);
    add_network(&server);
    let clicked = click_once(&server, &codes[0]);
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(server.edge, codes, u64::MAX, 300, 8, stop.clone());

    std::thread::sleep(Duration::from_secs(4));
    s.kafka.kill();
    let outage = Instant::now();
    let readyz = || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            common::client()
                .get(server.admin_url("/readyz"))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        })
    };
    assert!(
        wait_until(Duration::from_secs(15), || readyz() == 503),
        "/readyz reports the broker outage"
    );
    // A conversion during the outage is accepted from the local ledger and
    // reaches ClickHouse once the broker is back.
    let query = format!(
        "click_id={clicked}&txn_id=during-outage&status=approved&payout=5&token=tok-kt-0123456789"
    );
    assert_eq!(postback(&server, &query), (200, "accepted".to_owned()));
    std::thread::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed()));
    s.kafka.restart();
    assert!(wait_until(Duration::from_secs(30), || readyz() == 200));
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let answered = running.join().unwrap();

    assert_eq!(
        answered.other, 0,
        "redirects kept answering during the outage"
    );
    assert!(answered.ids.len() > 5_000, "{} clicks", answered.ids.len());
    let mut answered = answered;
    answered.ids.insert(clicked);
    assert_exactly_once(&s, &answered, &server, &sink);
    let records = ledger_records(&server) as u64;
    assert!(
        wait_until(CATCH_UP, || {
            s.ch.query_u64(&format!("SELECT uniqExact(id) FROM {DB}.conversions")) == records
        }),
        "every ledger record reaches ClickHouse"
    );
    assert_eq!(
        s.ch.query_u64(&format!(
            "SELECT count() FROM {DB}.conversions WHERE txn_id = 'during-outage'"
        )),
        1
    );
}

#[test]
fn a_clickhouse_outage_is_retried_until_every_click_is_loaded() {
    let s = stack("memory", &[]);
    let server = Server::start_with(&env_refs(&s.env));
    let sink = Sink::start(&s.env);
    let (token, codes) = mint_links(&server, 20);
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(server.edge, codes.clone(), u64::MAX, 400, 8, stop.clone());

    std::thread::sleep(Duration::from_secs(3));
    s.ch.stop();
    // Stats are read from ClickHouse: unavailable, said plainly.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, body) =
        rt.block_on(Api::new(&server, token.clone()).get("/v1/links/pipe-0/stats"));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "stats_unavailable");
    let (status, body) = rt.block_on(Api::new(&server, token.clone()).get("/v1/reconciliation"));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "reconciliation_unavailable");
    std::thread::sleep(Duration::from_secs(10));
    s.ch.restart();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let answered = running.join().unwrap();

    assert_eq!(answered.other, 0);
    assert_exactly_once(&s, &answered, &server, &sink);
    assert!(
        sink.log_text().contains("insert failed; retrying"),
        "the sink saw the outage"
    );
    let (clicks, _, _) = stats_totals(&server, &token, &codes);
    assert_eq!(clicks, answered.ids.len() as u64);
}

#[test]
fn a_sink_killed_mid_batch_reloads_without_double_counting() {
    let s = stack("memory", &[("CLICKEDGE_SINK__BATCH_ROWS", "500")]);
    let server = Server::start_with(&env_refs(&s.env));
    let mut sink = Sink::start(&s.env);
    let (token, codes) = mint_links(&server, 20);
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(
        server.edge,
        codes.clone(),
        u64::MAX,
        1_000,
        16,
        stop.clone(),
    );
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(3));
        sink.kill_and_restart();
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let answered = running.join().unwrap();

    assert_exactly_once(&s, &answered, &server, &sink);
    let (clicks, _, _) = stats_totals(&server, &token, &codes);
    assert_eq!(
        clicks,
        answered.ids.len() as u64,
        "re-loaded rows count once"
    );
}

#[test]
fn a_graceful_serve_restart_mid_load_loses_nothing() {
    // Small segments: the log rotates every ~100 clicks, so the shipper
    // trims, follows rotations and resumes across the restart many times.
    let s = stack("memory", &[("CLICKEDGE_CLICKLOG__SEGMENT_BYTES", "65536")]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut env = s.env.clone();
    env.push(("CLICKEDGE_EDGE__LISTEN".into(), listen));
    let mut server = Server::start_with(&env_refs(&env));
    let sink = Sink::start(&s.env);
    let (_token, codes) = mint_links(&server, 20);
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(server.edge, codes, u64::MAX, 500, 8, stop.clone());

    std::thread::sleep(Duration::from_secs(3));
    let dir = server.take_dir();
    assert!(server.stop().success());
    let server = Server::start_in(dir.path(), &env_refs(&env));
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let answered = running.join().unwrap();

    assert!(answered.ids.len() > 1_000);
    assert_exactly_once(&s, &answered, &server, &sink);
    drop(server);
}

#[test]
fn poison_records_are_dead_lettered_and_the_rest_is_loaded() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let s = stack("memory", &[]);
    let server = Server::start_with(&env_refs(&s.env));
    let sink = Sink::start(&s.env);
    let (_token, codes) = mint_links(&server, 5);

    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &s.kafka.addr)
        .create()
        .unwrap();
    for poison in [
        &b"not json at all"[..],
        br#"{"v":2,"click_id":"from-the-future"}"#,
    ] {
        producer
            .send(BaseRecord::<(), [u8]>::to("clickedge.clicks").payload(poison))
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let answered = load(server.edge, codes, 200, 1_000, 4, stop)
        .join()
        .unwrap();
    assert_exactly_once(&s, &answered, &server, &sink);
    assert!(wait_until(Duration::from_secs(30), || {
        s.ch.query_u64(&format!("SELECT count() FROM {DB}.dead_letters")) == 2
    }));
    let reasons = s.ch.query(&format!(
        "SELECT reason FROM {DB}.dead_letters ORDER BY kafka_offset"
    ));
    assert!(reasons.contains("not JSON"), "{reasons}");
    assert!(reasons.contains("unsupported event version 2"), "{reasons}");
}

/// Network `kt` on a node, with a known GET token; waits until `serve`
/// answers for it.
fn add_network(server: &Server) {
    let out = server.cli(&["network", "add", "kt", "--token", "tok-kt-0123456789"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_until(Duration::from_secs(10), || {
        postback(
            server,
            "click_id=x&txn_id=probe&status=approved&payout=1&token=wrong",
        )
        .0 == 401
    }));
}

/// A GET postback on the node's edge: (status, outcome).
fn postback(server: &Server, query: &str) -> (u16, String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let r = common::client()
            .get(server.edge_url(&format!("/_postback/kt?{query}")))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        (status, v["result"].as_str().unwrap_or("").to_owned())
    })
}

/// A browser click on `code`; returns its click id.
fn click_once(server: &Server, code: &str) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(common::browser_click(&common::client(), server, code))
}

fn ledger_records(server: &Server) -> usize {
    std::fs::read_to_string(server.data_dir.join("postbacks.ledger"))
        .unwrap_or_default()
        .lines()
        .count()
}

#[test]
fn postbacks_from_two_nodes_reconcile_once_from_clickhouse_through_a_sink_restart() {
    let master = [("CLICKEDGE_MASTER_KEY", "7b".repeat(32))];
    let s = stack("memory", &[]);
    let node = |id: &str| {
        let mut env = env_refs(&s.env);
        env.push((master[0].0, &master[0].1));
        env.push(("CLICKEDGE_EDGE__NODE_ID", id));
        Server::start_with(&env)
    };
    // Clicks happen on node a; node b only hears postbacks, so every match
    // it makes is through ClickHouse.
    let (a, b) = (node("a"), node("b"));
    let mut sink = Sink::start(&s.env);
    let (token, codes) = mint_links(&a, 1);
    add_network(&a);
    add_network(&b);
    let c1 = click_once(&a, &codes[0]);
    let c2 = click_once(&a, &codes[0]);
    assert!(wait_until(CATCH_UP, || {
        s.ch.query_u64(&format!("SELECT uniqExact(click_id) FROM {DB}.click_ids")) == 2
    }));
    let pb = |n: &Server, click: &str, txn: &str, status: &str, payout: &str| {
        postback(
            n,
            &format!("click_id={click}&txn_id={txn}&status={status}&payout={payout}&currency=USD&token=tok-kt-0123456789"),
        )
    };
    let ok = |o: &str| (200, o.to_owned());
    // t1 pending on both nodes: each node's first, but one conversion.
    assert_eq!(pb(&a, &c1, "t1", "pending", "1.50"), ok("accepted"));
    assert_eq!(pb(&b, &c1, "t1", "pending", "1.50"), ok("accepted"));
    assert_eq!(pb(&b, &c1, "t1", "approved", "2.25"), ok("status_change"));
    // t2 matched on b through ClickHouse, then retried three times.
    assert_eq!(pb(&b, &c2, "t2", "approved", "10"), ok("accepted"));
    for _ in 0..3 {
        assert_eq!(pb(&b, &c2, "t2", "approved", "10"), ok("duplicate"));
    }
    assert_eq!(
        postback(
            &a,
            "click_id=x&txn_id=t9&status=approved&payout=1&token=nope"
        )
        .0,
        401
    );

    // The sink goes down; a click and its postback happen meanwhile: b
    // cannot find the click yet (unknown_click), and matches it on read.
    sink.kill_and_restart();
    sink.stop();
    let c3 = click_once(&a, &codes[0]);
    assert_eq!(pb(&b, &c3, "t3", "pending", "0.75"), ok("unknown_click"));
    let mut sink = Sink::start(&s.env);

    let records = (ledger_records(&a) + ledger_records(&b)) as u64;
    // 8 answered postbacks, the 401, and each node's probes while the
    // network came up.
    assert!(records >= 11, "{records}");
    let loaded = || {
        s.ch.query_u64(&format!("SELECT uniqExact(id) FROM {DB}.conversions")) == records
            && s.ch
                .query_u64(&format!("SELECT uniqExact(click_id) FROM {DB}.click_ids"))
                == 3
    };
    assert!(
        wait_until(CATCH_UP, loaded),
        "ledger records in ClickHouse: {} of {records}\n--- sink log:\n{}",
        s.ch.query_u64(&format!("SELECT uniqExact(id) FROM {DB}.conversions")),
        sink.log_text()
    );
    // One more sink restart re-reads recent records: nothing counts twice.
    sink.kill_and_restart();
    std::thread::sleep(Duration::from_secs(3));

    // The independent count, from what was sent above.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let path = format!("/v1/reconciliation?network=kt&from={day}&to={day}");
    for server in [&a, &b] {
        let admin = Api::new(server, server.token("*"));
        let (status, r) = rt.block_on(admin.get(&path));
        assert_eq!(status, 200, "{r}");
        let d = &r["days"][0];
        // 8 valid postbacks; the refusals are the 401 and the probes.
        assert_eq!(d["refused"]["bad_auth"], records - 8, "{r}");
        assert_eq!(d["received"], records, "{r}");
        assert_eq!(
            (
                &d["accepted"],
                &d["status_changes"],
                &d["duplicates"],
                &d["unknown_clicks"]
            ),
            (&json!(2), &json!(1), &json!(4), &json!(1)),
            "t1 and t2 accepted; t1 approved; b's t1 pending and t2's three retries; t3: {r}"
        );
        assert_eq!(d["unmatched"], 0, "t3's click has arrived: {r}");
        assert_eq!(d["conversions"], 3, "{r}");
        assert_eq!(d["revenue"], json!({"USD": "12.25"}), "{r}");
        assert_eq!(d["by_status"]["pending"]["count"], 1, "{r}");
        assert_eq!(d["by_status"]["approved"]["count"], 2, "{r}");
        let link = &d["links"][0];
        assert_eq!(
            (&link["code"], &link["tenant"]),
            (&json!(codes[0]), &json!("acme"))
        );
        assert_eq!(
            (&link["human_clicks"], &link["conversions"]),
            (&json!(3), &json!(3)),
            "{r}"
        );
    }
    // The tenant sees its conversions, not the refusals.
    let tenant = Api::new(&a, token.clone());
    let (_, r) = rt.block_on(tenant.get(&path));
    assert_eq!(r["days"][0]["conversions"], 3, "{r}");
    assert!(r["days"][0].get("refused").is_none(), "{r}");
    let (_, other) = rt.block_on(Api::new(&a, a.token("other")).get(&path));
    assert_eq!(other["days"], json!([]), "{other}");
    // Link stats carry the same conversions and revenue.
    let (_, st) =
        rt.block_on(tenant.get(&format!("/v1/links/{}/stats?from={day}&to={day}", codes[0])));
    assert_eq!(
        (&st["conversions"], &st["revenue"]),
        (&json!(3), &json!({"USD": "12.25"})),
        "{st}"
    );
}

/// Full mode: a link's variants, countries and devices in its stats come
/// from ClickHouse and equal what the test sent.
#[test]
fn per_variant_country_and_device_stats_come_from_clickhouse() {
    const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
    let s = stack(
        "memory",
        &[
            ("CLICKEDGE_EDGE__TRUSTED_PROXIES", "[\"127.0.0.0/8\"]"),
            ("CLICKEDGE_GEO__COUNTRY_HEADER", "CF-IPCountry"),
        ],
    );
    let server = Server::start_with(&env_refs(&s.env));
    let sink = Sink::start(&s.env);
    let token = server.token("acme");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let variants = json!([
        {"destination": "https://a.example/", "weight": 1},
        {"destination": "https://b.example/", "weight": 1},
        {"destination": "https://c.example/", "weight": 2},
    ]);
    let mut sent = [0u64; 3];
    let stats = rt.block_on(async {
        let api = Api::new(&server, token.clone());
        api.link(
            json!({"code": "split", "destination": "https://x.example/", "variants": variants}),
        )
        .await;
        let http = common::client();
        for i in 0..120u32 {
            let (country, ua) = if i % 3 == 0 {
                ("DE", IPHONE)
            } else {
                ("US", BROWSER_UA)
            };
            let r = http
                .get(server.edge_url("/split"))
                .header("x-forwarded-for", format!("10.0.{}.{}", i / 200, i % 200))
                .header("cf-ipcountry", country)
                .header("user-agent", ua)
                .send()
                .await
                .unwrap();
            let loc = r.headers()["location"].to_str().unwrap().to_owned();
            let v = [
                "https://a.example/",
                "https://b.example/",
                "https://c.example/",
            ]
            .iter()
            .position(|d| *d == loc)
            .unwrap();
            sent[v] += 1;
        }
        let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let deadline = Instant::now() + CATCH_UP;
        loop {
            let (status, st) = api
                .get(&format!("/v1/links/split/stats?from={today}&to={today}"))
                .await;
            if status == 200 && st["clicks"] == 120 {
                break st;
            }
            assert!(Instant::now() < deadline, "stats never reached 120: {st}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let got: Vec<u64> = stats["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["clicks"].as_u64().unwrap())
        .collect();
    assert_eq!(got, sent.to_vec(), "{stats}");
    assert_eq!(stats["variants"][2]["weight"], 2);
    assert_eq!(stats["variants"][0]["human_clicks"], sent[0]);
    assert_eq!(stats["countries"], json!({"DE": 40, "US": 80}), "{stats}");
    assert_eq!(
        stats["devices"],
        json!({"mobile": 40, "desktop": 80}),
        "{stats}"
    );
    drop(sink);
}
