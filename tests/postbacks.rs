//! Postbacks, rule by rule from CONTRACT.md "Postbacks" and the
//! reconciliation and stats parts of "Admin API", against the real binary:
//! networks registered with the CLI, postbacks over real sockets, the
//! ledger read back through the admin API and from the data dir.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use clickedge::clicks::ClickIds;
use clickedge::keys::MasterKey;
use common::{Api, Server, BROWSER_UA};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// A fixed master key, so the tests can mint genuine click ids.
const MASTER: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
/// Generous bound for the CLI → serve hand-off and the click-log commit.
const PATIENCE: Duration = Duration::from_secs(10);
const DAY_MS: i64 = 86_400_000;

fn env() -> [(&'static str, &'static str); 1] {
    [("CLICKEDGE_MASTER_KEY", MASTER)]
}

fn start() -> Server {
    Server::start_with(&env())
}

fn ids() -> ClickIds {
    ClickIds::new(
        &MasterKey::load(Some(MASTER), None, Path::new("/"), true)
            .unwrap()
            .0,
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn now_s() -> i64 {
    now_ms() / 1000
}

/// The network's side of a signed POST: HMAC-SHA256(secret, "<t>.<body>").
fn mac_hex(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn sign(secret: &str, t: i64, body: &str) -> String {
    format!("t={t},v1={}", mac_hex(secret, t, body))
}

struct Net {
    secret: String,
    token: String,
}

/// `clickedge network add NAME ARGS…`, then waits until `serve` knows it.
fn add_network(server: &Server, name: &str, args: &[&str]) -> Net {
    let mut argv = vec!["network", "add", name];
    argv.extend_from_slice(args);
    let out = server.cli(&argv);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], name);
    wait_network(server, name, true);
    Net {
        secret: v["secret"].as_str().unwrap().to_owned(),
        token: v["token"].as_str().unwrap().to_owned(),
    }
}

/// Raw request on the edge; returns the status. PUT on a postback path
/// answers 405 for a known network and 404 otherwise, and records nothing.
fn edge_status_blocking(server: &Server, method: &str, path: &str) -> u16 {
    let mut s = std::net::TcpStream::connect(server.edge).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    buf.split(' ').nth(1).unwrap().parse().unwrap()
}

fn wait_network(server: &Server, name: &str, live: bool) {
    let path = format!("/_postback/{name}");
    let want = if live { 405 } else { 404 };
    let deadline = Instant::now() + PATIENCE;
    while edge_status_blocking(server, "PUT", &path) != want {
        assert!(
            Instant::now() < deadline,
            "network {name} never became {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn setup(server: &Server) -> Api<'_> {
    let api = Api::new(server, server.token("acme"));
    api.link(json!({"code": "spring", "destination": "https://shop.example/"}))
        .await;
    api
}

/// A browser click on `code`; returns its click id once it is recorded
/// (visible in stats, hence in the click index too).
async fn click(api: &Api<'_>, code: &str) -> String {
    let clicks = |v: &Value| v["clicks"].as_u64().unwrap();
    let stats = format!("/v1/links/{code}/stats");
    let before = clicks(&api.get(&stats).await.1);
    let id = common::browser_click(&api.http, api.server, code).await;
    let deadline = Instant::now() + PATIENCE;
    while clicks(&api.get(&stats).await.1) <= before {
        assert!(Instant::now() < deadline, "click never recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    id
}

async fn get_pb(api: &Api<'_>, network: &str, query: &str) -> (u16, Value) {
    let r = api
        .http
        .get(
            api.server
                .edge_url(&format!("/_postback/{network}?{query}")),
        )
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_eq!(r.headers()["cache-control"], "private, no-store");
    (status, r.json().await.unwrap())
}

async fn post_pb(api: &Api<'_>, network: &str, body: &str, sig: Option<&str>) -> (u16, Value) {
    let mut req = api
        .http
        .post(api.server.edge_url(&format!("/_postback/{network}")))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(s) = sig {
        req = req.header("x-clickedge-signature", s);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn q(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// The reconciliation rows of `network` for today, as `api` sees them.
async fn today(api: &Api<'_>, network: &str) -> Vec<Value> {
    let day = chrono::Utc::now().format("%Y-%m-%d");
    let (status, v) = api
        .get(&format!(
            "/v1/reconciliation?network={network}&from={day}&to={day}"
        ))
        .await;
    assert_eq!(status, 200, "{v}");
    v["days"].as_array().unwrap().clone()
}

fn result(got: &(u16, Value)) -> (u16, &str) {
    (got.0, got.1["result"].as_str().unwrap_or(""))
}

#[test]
fn the_test_signer_matches_known_answer_vectors() {
    // Computed independently: printf '%s' "<t>.<body>" | openssl dgst -sha256 -hmac <secret>
    let secret = "ces_known_answer_secret_0001";
    let t = 1_790_000_000;
    assert_eq!(
        mac_hex(
            secret,
            t,
            r#"{"click_id":"06h0hj9qjztf4znm9m14chvwpymq4fpw","txn_id":"A-1","payout":"12.50"}"#
        ),
        "b0595e1b0aadb0f7cb51bb7c0669a405aeaad18e861799f45200010ca715526c"
    );
    assert_eq!(
        mac_hex(secret, t, r#"{"txn_id":"B-2","status":"approved"}"#),
        "cd801bd83258311c7157c61d286fade94b818d98374f4c1b934b743c2cba487b"
    );
    assert_eq!(
        mac_hex("k", 1_790_000_300, ""),
        "c2ee3f3ebdd5ba6ce1b3ad96d8ed4483c0876eddcdc43f8f3736fd2d17747c72"
    );
}

#[tokio::test]
async fn a_signed_post_is_accepted_and_every_bad_signature_is_401() {
    let server = start();
    let api = setup(&server).await;
    let net = add_network(
        &server,
        "sig",
        &["--secret", "ces_known_answer_secret_0001"],
    );
    assert_eq!(net.secret, "ces_known_answer_secret_0001");
    let cid = click(&api, "spring").await;
    let body = json!({"click_id": cid, "txn_id": "A-1", "payout": "12.50"}).to_string();
    let t = now_s();

    let wrong = post_pb(
        &api,
        "sig",
        &body,
        Some(&sign("ces_wrong_secret_000000", t, &body)),
    )
    .await;
    assert_eq!(result(&wrong), (401, "bad_auth"));
    let tampered = body.replace("12.50", "99.50");
    let got = post_pb(&api, "sig", &tampered, Some(&sign(&net.secret, t, &body))).await;
    assert_eq!(result(&got), (401, "bad_auth"));
    let stale = post_pb(&api, "sig", &body, Some(&sign(&net.secret, t - 301, &body))).await;
    assert_eq!(result(&stale), (401, "bad_auth"));
    // Well past the 300 s tolerance: the server's clock moves on while the
    // requests above run, and a timestamp one second over could be back in.
    let future = post_pb(&api, "sig", &body, Some(&sign(&net.secret, t + 330, &body))).await;
    assert_eq!(result(&future), (401, "bad_auth"));
    let missing = post_pb(&api, "sig", &body, None).await;
    assert_eq!(result(&missing), (401, "bad_auth"));
    for garbled in ["t=1", "v1=abc", "nonsense", &format!("t={t},v1=zz")] {
        let got = post_pb(&api, "sig", &body, Some(garbled)).await;
        assert_eq!(result(&got), (401, "bad_auth"), "{garbled}");
    }

    // Several v1 entries (a rotation in progress): one match is enough.
    let two = format!(
        "t={t},v1={},v1={}",
        mac_hex("ces_wrong_secret_000000", t, &body),
        mac_hex(&net.secret, t, &body)
    );
    let ok = post_pb(&api, "sig", &body, Some(&two)).await;
    assert_eq!(result(&ok), (200, "accepted"), "{}", ok.1);
    let again = post_pb(&api, "sig", &body, Some(&sign(&net.secret, t, &body))).await;
    assert_eq!(result(&again), (200, "duplicate"));

    let rows = today(&api, "sig").await;
    assert_eq!(rows[0]["conversions"], 1);
    assert_eq!(rows[0]["revenue"], json!({"USD": "12.50"}));
}

#[tokio::test]
async fn a_rotated_out_secret_works_during_the_grace_period_and_not_after() {
    let server = start();
    let api = setup(&server).await;
    let net = add_network(&server, "rot", &[]);
    let cid = click(&api, "spring").await;
    let post_with = |secret: String, txn: &'static str| {
        let body = json!({"click_id": cid, "txn_id": txn}).to_string();
        let sig = sign(&secret, now_s(), &body);
        let api = &api;
        async move { post_pb(api, "rot", &body, Some(&sig)).await }
    };

    let out = server.cli(&["network", "rotate", "rot", "--grace", "1h"]);
    assert!(out.status.success());
    let rotated: Value = serde_json::from_slice(&out.stdout).unwrap();
    let second = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(second, net.secret);
    assert!(rotated["previous_valid_until"].is_string());
    wait_secret_live(&api, "rot", &second).await;
    assert_eq!(
        result(&post_with(net.secret.clone(), "old-1").await),
        (200, "accepted")
    );
    assert_eq!(
        result(&post_with(second.clone(), "new-1").await),
        (200, "accepted")
    );

    let out = server.cli(&["network", "rotate", "rot", "--grace", "0s"]);
    assert!(out.status.success());
    let third = serde_json::from_slice::<Value>(&out.stdout).unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_secret_live(&api, "rot", &third).await;
    assert_eq!(result(&post_with(second, "old-2").await), (401, "bad_auth"));
    assert_eq!(
        result(&post_with(net.secret, "older-2").await),
        (401, "bad_auth")
    );
    assert_eq!(result(&post_with(third, "new-2").await), (200, "accepted"));
}

/// Waits until `serve` accepts signatures made with `secret`; the probe
/// names a forged click, so it never becomes a conversion.
async fn wait_secret_live(api: &Api<'_>, network: &str, secret: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let body = json!({"click_id": "0".repeat(32), "txn_id": "probe"}).to_string();
        let got = post_pb(api, network, &body, Some(&sign(secret, now_s(), &body))).await;
        if got.0 == 422 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "secret never became live: {}",
            got.1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn get_postbacks_need_the_token_and_an_allowed_address() {
    let server = start();
    let api = setup(&server).await;
    let open = add_network(&server, "open", &["--auth", "token"]);
    let fenced = add_network(&server, "fenced", &["--allowed-ip", "10.0.0.0/8,192.0.2.1"]);
    let local = add_network(&server, "local", &["--allowed-ip", "127.0.0.1"]);
    let cid = click(&api, "spring").await;
    let with = |token: &str, txn: &str| q(&[("click_id", &cid), ("txn_id", txn), ("token", token)]);

    assert_eq!(
        result(&get_pb(&api, "open", &with("cet_wrong", "1")).await),
        (401, "bad_auth")
    );
    assert_eq!(
        result(&get_pb(&api, "open", &q(&[("click_id", &cid), ("txn_id", "1")])).await),
        (401, "bad_auth")
    );
    assert_eq!(
        result(&get_pb(&api, "open", &with(&open.token, "1")).await),
        (200, "accepted")
    );
    // The network's secret is not its token.
    assert_eq!(
        result(&get_pb(&api, "open", &with(&open.secret, "2")).await),
        (401, "bad_auth")
    );
    // Signed POSTs are off for this network.
    let body = json!({"click_id": cid, "txn_id": "3"}).to_string();
    let got = post_pb(
        &api,
        "open",
        &body,
        Some(&sign(&open.secret, now_s(), &body)),
    )
    .await;
    assert_eq!(result(&got), (401, "bad_auth"));

    // The right token from outside the allow-list is still refused.
    assert_eq!(
        result(&get_pb(&api, "fenced", &with(&fenced.token, "1")).await),
        (401, "bad_auth")
    );
    assert_eq!(
        result(&get_pb(&api, "local", &with(&local.token, "1")).await),
        (200, "accepted")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_identical_postbacks_at_once_count_once() {
    let server = start();
    let api = setup(&server).await;
    let net = add_network(&server, "burst", &[]);
    let cid = click(&api, "spring").await;
    let url = server.edge_url(&format!(
        "/_postback/burst?{}",
        q(&[
            ("click_id", &cid),
            ("txn_id", "B-1"),
            ("payout", "2.25"),
            ("token", &net.token)
        ])
    ));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let http = api.http.clone();
        let url = url.clone();
        set.spawn(async move {
            let r = http.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()["result"]
                .as_str()
                .unwrap()
                .to_owned()
        });
    }
    let mut outcomes = std::collections::BTreeMap::new();
    while let Some(r) = set.join_next().await {
        *outcomes.entry(r.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(outcomes.get("accepted"), Some(&1), "{outcomes:?}");
    assert_eq!(outcomes.get("duplicate"), Some(&99), "{outcomes:?}");

    let rows = today(&api, "burst").await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row["received"], 100);
    assert_eq!(row["accepted"], 1);
    assert_eq!(row["duplicates"], 99);
    assert_eq!(row["conversions"], 1);
    assert_eq!(row["revenue"], json!({"USD": "2.25"}));
    assert_eq!(row["links"][0]["code"], "spring");
    assert_eq!(row["links"][0]["conversions"], 1);
    let (_, stats) = api.get("/v1/links/spring/stats").await;
    assert_eq!(stats["conversions"], 1);
    assert_eq!(stats["revenue"], json!({"USD": "2.25"}));
}

#[tokio::test]
async fn a_status_change_is_three_ledger_entries_and_the_latest_status_wins() {
    let server = start();
    let api = setup(&server).await;
    let net = add_network(&server, "life", &["--status", "approved=sale,confirmed,1"]);
    let cid = click(&api, "spring").await;
    let pb = |status: &str, payout: &str| {
        q(&[
            ("click_id", &cid),
            ("txn_id", "L-1"),
            ("status", status),
            ("payout", payout),
            ("token", &net.token),
        ])
    };
    assert_eq!(
        result(&get_pb(&api, "life", &pb("pending", "5.00")).await),
        (200, "accepted")
    );
    let rows = today(&api, "life").await;
    assert_eq!(rows[0]["by_status"]["pending"]["count"], 1);
    assert_eq!(rows[0]["conversions"], 1);
    assert_eq!(rows[0]["revenue"], json!({}));

    assert_eq!(
        result(&get_pb(&api, "life", &pb("SALE", "5.00")).await),
        (200, "status_change")
    );
    let rows = today(&api, "life").await;
    assert_eq!(
        rows[0]["by_status"],
        json!({"approved": {"count": 1, "payout": {"USD": "5.00"}}})
    );
    assert_eq!(rows[0]["revenue"], json!({"USD": "5.00"}));
    assert_eq!(rows[0]["links"][0]["epc"], json!({"USD": "5.00"}));

    assert_eq!(
        result(&get_pb(&api, "life", &pb("reversed", "5.00")).await),
        (200, "status_change")
    );
    assert_eq!(
        result(&get_pb(&api, "life", &pb("1", "5.00")).await),
        (200, "duplicate")
    );
    let rows = today(&api, "life").await;
    let row = &rows[0];
    assert_eq!(
        row["by_status"],
        json!({"reversed": {"count": 1, "payout": {"USD": "5.00"}}})
    );
    assert_eq!(row["conversions"], 0);
    assert_eq!(row["revenue"], json!({}));
    assert_eq!(
        (row["accepted"].clone(), row["status_changes"].clone()),
        (json!(1), json!(2))
    );
    let (_, stats) = api.get("/v1/links/spring/stats").await;
    assert_eq!(stats["conversions"], 0);

    let ledger = std::fs::read_to_string(server.data_dir.join("postbacks.ledger")).unwrap();
    let entries: Vec<Value> = ledger
        .lines()
        .map(|l| serde_json::from_str(l.split_once(' ').unwrap().1).unwrap())
        .filter(|v: &Value| v["txn_id"] == "L-1")
        .collect();
    let seen: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["outcome"].as_str().unwrap(),
                e["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("accepted", "pending"),
            ("status_change", "approved"),
            ("status_change", "reversed"),
            ("duplicate", "approved"),
        ]
    );
    let e = &entries[0];
    assert_eq!(e["v"], 1);
    assert_eq!(e["network"], "life");
    assert_eq!(e["click_id"], cid.as_str());
    assert_eq!(e["code"], "spring");
    assert_eq!(e["tenant"], "acme");
    assert_eq!(e["payout"], "5.00");
    assert_eq!(e["currency"], "USD");
    assert!(e["received_at"].is_string());
}

#[tokio::test]
async fn each_network_dialect_round_trips_through_get() {
    let server = start();
    let api = setup(&server).await;
    // (preset, network fields for click id, txn id, status, payout)
    let dialects: [(&str, [&str; 4], &str); 4] = [
        ("keitaro", ["subid", "tid", "status", "payout"], "sale"),
        ("voluum", ["cid", "txid", "", "payout"], ""),
        (
            "everflow",
            ["transaction_id", "conversion_id", "", "amount"],
            "",
        ),
        (
            "binom",
            ["cnv_id", "txid", "cnv_status", "payout"],
            "approved",
        ),
    ];
    for (preset, [c, t, s, p], status) in dialects {
        let net = add_network(&server, preset, &["--preset", preset, "--currency", "EUR"]);
        let cid = click(&api, "spring").await;
        let mut pairs = vec![
            (c, cid.as_str()),
            (t, "D-1"),
            (p, "7.10"),
            ("token", &net.token),
        ];
        if !s.is_empty() {
            pairs.push((s, status));
        }
        let got = get_pb(&api, preset, &q(&pairs)).await;
        assert_eq!(result(&got), (200, "accepted"), "{preset}: {}", got.1);
        let rows = today(&api, preset).await;
        assert_eq!(
            rows[0]["by_status"],
            json!({"approved": {"count": 1, "payout": {"EUR": "7.10"}}}),
            "{preset}"
        );
        assert_eq!(rows[0]["links"][0]["code"], "spring", "{preset}");
        // The payout parameter is the network's own name.
        let bad = get_pb(
            &api,
            preset,
            &q(&[(c, &cid), (t, "D-2"), (p, "7,10"), ("token", &net.token)]),
        )
        .await;
        assert_eq!(result(&bad), (400, "malformed"));
        assert_eq!(bad.1["field"], p, "{preset}");
    }
}

#[tokio::test]
async fn hostile_postbacks_get_their_outcome_and_the_process_carries_on() {
    let server = start();
    let api = setup(&server).await;
    let net = add_network(&server, "hx", &["--window", "30d"]);
    let cid = click(&api, "spring").await;
    let get = |pairs: &[(&str, &str)]| {
        let mut pairs = pairs.to_vec();
        pairs.push(("token", &net.token));
        q(&pairs)
    };
    let ids = ids();

    let mut forged = cid.clone();
    let last = if forged.ends_with('0') { "1" } else { "0" };
    forged.replace_range(31..32, last);
    let got = get_pb(&api, "hx", &get(&[("click_id", &forged), ("txn_id", "F")])).await;
    assert_eq!(result(&got), (422, "forged_click"));
    let got = get_pb(
        &api,
        "hx",
        &get(&[("click_id", "not-a-click-id"), ("txn_id", "F")]),
    )
    .await;
    assert_eq!(result(&got), (422, "forged_click"));

    let old = ids.mint((now_ms() - 31 * DAY_MS) as u64);
    let got = get_pb(
        &api,
        "hx",
        &get(&[("click_id", old.as_str()), ("txn_id", "W")]),
    )
    .await;
    assert_eq!(result(&got), (422, "out_of_window"));

    let unknown = ids.mint(now_ms() as u64);
    let got = get_pb(
        &api,
        "hx",
        &get(&[("click_id", unknown.as_str()), ("txn_id", "U")]),
    )
    .await;
    assert_eq!(result(&got), (200, "unknown_click"));

    for (pairs, field) in [
        (
            vec![
                ("click_id", cid.as_str()),
                ("txn_id", "M"),
                ("payout", "1e3"),
            ],
            "payout",
        ),
        (
            vec![
                ("click_id", cid.as_str()),
                ("txn_id", "M"),
                ("payout", "12.345678901"),
            ],
            "payout",
        ),
        (
            vec![
                ("click_id", cid.as_str()),
                ("txn_id", "M"),
                ("payout", "NaN"),
            ],
            "payout",
        ),
        (
            vec![
                ("click_id", cid.as_str()),
                ("txn_id", "M"),
                ("status", "maybe"),
            ],
            "status",
        ),
        (vec![("click_id", cid.as_str())], "txn_id"),
        (vec![("txn_id", "M")], "click_id"),
    ] {
        let got = get_pb(&api, "hx", &get(&pairs)).await;
        assert_eq!(result(&got), (400, "malformed"), "{pairs:?}");
        assert_eq!(got.1["field"], field, "{pairs:?}");
    }

    // Bodies: oversized, not JSON, not an object, a float payout.
    let t = now_s();
    let huge = format!(
        "{{\"click_id\":\"{cid}\",\"txn_id\":\"{}\"}}",
        "x".repeat(20_000)
    );
    for body in [
        huge.as_str(),
        "not json",
        "[1,2]",
        &format!("{{\"click_id\":\"{cid}\",\"txn_id\":\"J\",\"payout\":1.5}}"),
    ] {
        let got = post_pb(&api, "hx", body, Some(&sign(&net.secret, t, body))).await;
        assert_eq!(
            result(&got),
            (400, "malformed"),
            "{}",
            &body[..body.len().min(40)]
        );
    }

    let got = get_pb(&api, "nobody", &get(&[("click_id", &cid), ("txn_id", "N")])).await;
    assert_eq!(result(&got), (404, "unknown_network"));
    assert_eq!(edge_status_blocking(&server, "GET", "/_postback/a/b"), 404);
    assert_eq!(edge_status_blocking(&server, "GET", "/_postback/"), 404);
    assert_eq!(edge_status_blocking(&server, "GET", "/_other"), 404);

    // Still serving: redirects, health, and a valid postback.
    assert_eq!(
        result(&get_pb(&api, "hx", &get(&[("click_id", &cid), ("txn_id", "OK")])).await),
        (200, "accepted")
    );
    let r = api
        .http
        .get(server.admin_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    click(&api, "spring").await;

    // Admins see what was refused; the unmatched conversion is counted.
    let admin = Api::new(&server, server.token("*"));
    let rows = today(&admin, "hx").await;
    let refused = &rows[0]["refused"];
    assert_eq!(refused["forged_click"], 2);
    assert_eq!(refused["out_of_window"], 1);
    assert_eq!(refused["malformed"], 10);
    assert_eq!(rows[0]["unmatched"], 1);
    assert_eq!(rows[0]["unknown_clicks"], 1);
    // The tenant sees only its own conversion.
    let rows = today(&api, "hx").await;
    assert!(rows[0].get("refused").is_none());
    assert_eq!(rows[0]["unmatched"], 0);
    assert_eq!(rows[0]["conversions"], 1);
}

#[tokio::test]
async fn dedupe_survives_a_restart_and_an_unknown_click_is_matched_once_it_is_recorded() {
    let mut server = start();
    let api = setup(&server).await;
    let net = add_network(&server, "rs", &[]);
    let cid = click(&api, "spring").await;
    let known = q(&[
        ("click_id", &cid),
        ("txn_id", "R-1"),
        ("payout", "1.00"),
        ("token", &net.token),
    ]);
    assert_eq!(result(&get_pb(&api, "rs", &known).await), (200, "accepted"));
    let late = ids().mint(now_ms() as u64);
    let early = q(&[
        ("click_id", late.as_str()),
        ("txn_id", "R-2"),
        ("payout", "2.00"),
        ("token", &net.token),
    ]);
    assert_eq!(
        result(&get_pb(&api, "rs", &early).await),
        (200, "unknown_click")
    );
    let token = api.token.clone();
    drop(api);

    let dir = server.take_dir();
    assert!(server.stop().success());
    // The click for `late` is recorded (as another node's log would hand it
    // over): appended to the click log while the server is down.
    let log_dir = dir.path().join("clicklog");
    let mut segs: Vec<_> = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let line = json!({
        "v": 1, "click_id": late.as_str(), "ts": clickedge::time::rfc3339(now_ms()),
        "tenant": "acme", "code": "spring", "destination": "https://shop.example/",
        "ip_hash": "00".repeat(16), "user_agent": BROWSER_UA, "referer": "", "sub": "",
        "bot": false, "bot_reason": null, "edge_node": "elsewhere", "salt_epoch": 0
    });
    let text = line.to_string();
    let wire: clickedge::clicks::WireClick = serde_json::from_str(&text).unwrap();
    let (mut payload, mut framed) = (Vec::new(), Vec::new());
    clickedge::clicklog::record::encode_wire(&wire, &mut payload);
    clickedge::clicklog::segments::frame(&payload, &mut framed);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(segs.last().unwrap())
        .unwrap();
    f.write_all(&framed).unwrap();
    drop(f);

    let server = Server::start_in(dir.path(), &env());
    let api = Api::new(&server, token);
    wait_network(&server, "rs", true);
    assert_eq!(
        result(&get_pb(&api, "rs", &known).await),
        (200, "duplicate")
    );
    assert_eq!(
        result(&get_pb(&api, "rs", &early).await),
        (200, "duplicate")
    );
    let rows = today(&api, "rs").await;
    assert_eq!(rows[0]["conversions"], 2);
    assert_eq!(rows[0]["unmatched"], 0);
    assert_eq!(rows[0]["duplicates"], 2);
    assert_eq!(rows[0]["revenue"], json!({"USD": "3.00"}));
}

#[tokio::test]
async fn a_tenant_never_sees_another_tenants_conversions() {
    let server = start();
    let api = setup(&server).await;
    let other = Api::new(&server, server.token("globex"));
    let net = add_network(&server, "ten", &[]);
    let cid = click(&api, "spring").await;
    let got = get_pb(
        &api,
        "ten",
        &q(&[
            ("click_id", &cid),
            ("txn_id", "T"),
            ("payout", "4.00"),
            ("token", &net.token),
        ]),
    )
    .await;
    assert_eq!(result(&got), (200, "accepted"));
    assert_eq!(today(&api, "ten").await.len(), 1);
    assert!(today(&other, "ten").await.is_empty());
    let (status, _) = other.get("/v1/links/spring/stats").await;
    assert_eq!(status, 404);
    let (status, _) = other.get("/v1/reconciliation?from=yesterday").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn networks_can_be_listed_updated_and_removed_and_secrets_never_leak() {
    let server = start();
    let api = setup(&server).await;
    let net = add_network(&server, "leak", &["--preset", "keitaro"]);
    let cid = click(&api, "spring").await;
    let pb = q(&[
        ("subid", &cid),
        ("tid", "S-1"),
        ("status", "sale"),
        ("token", &net.token),
    ]);
    assert_eq!(result(&get_pb(&api, "leak", &pb).await), (200, "accepted"));
    let bad = q(&[
        ("subid", &cid),
        ("tid", "S-2"),
        ("token", &format!("{}x", net.token)),
    ]);
    assert_eq!(result(&get_pb(&api, "leak", &bad).await), (401, "bad_auth"));
    let body = json!({"subid": cid, "tid": "S-3"}).to_string();
    let got = post_pb(
        &api,
        "leak",
        &body,
        Some(&sign(&net.secret, now_s(), &body)),
    )
    .await;
    assert_eq!(result(&got), (200, "accepted"));
    let out = server.cli(&["network", "rotate", "leak"]);
    let rotated: Value = serde_json::from_slice(&out.stdout).unwrap();
    let second = rotated["secret"].as_str().unwrap().to_owned();

    let out = server.cli(&[
        "network",
        "update",
        "leak",
        "--currency",
        "gbp",
        "--param",
        "payout=sum",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = server.cli(&["network", "list"]);
    assert!(list.status.success());
    let list_text = String::from_utf8(list.stdout).unwrap();
    let listed: Value = serde_json::from_str(list_text.lines().next().unwrap()).unwrap();
    assert_eq!(listed["name"], "leak");
    assert_eq!(listed["currency"], "GBP");
    assert_eq!(listed["params"]["payout"], "sum");
    assert_eq!(listed["params"]["click_id"], "subid");
    assert!(listed.get("secret").is_none() && listed.get("token").is_none());

    let bad = server.cli(&["network", "add", "leak"]);
    assert!(!bad.status.success(), "a second add of the same name fails");
    let bad = server.cli(&[
        "network",
        "add",
        "x2",
        "--status",
        "approved=a",
        "--status",
        "rejected=A",
    ]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--status"));

    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains("clickedge_postbacks_total{network=\"leak\",outcome=\"accepted\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("clickedge_postback_verify_duration_seconds_count"));

    let out = server.cli(&["network", "remove", "leak"]);
    assert!(out.status.success());
    wait_network(&server, "leak", false);
    assert_eq!(
        result(&get_pb(&api, "leak", &pb).await),
        (404, "unknown_network")
    );

    let log = server.log_text();
    for secret in [&net.secret, &net.token, &second] {
        assert!(!log.contains(secret.as_str()), "secret in the log");
        assert!(!metrics.contains(secret.as_str()), "secret in metrics");
        assert!(
            !list_text.contains(secret.as_str()),
            "secret in network list"
        );
        for entry in walk(&server.data_dir) {
            let bytes = std::fs::read(&entry).unwrap();
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "secret in plain text in {}", entry.display());
        }
    }
    // Removed: not even its sealed record is left.
    assert!(
        !std::fs::read_to_string(server.data_dir.join("networks.log"))
            .unwrap()
            .contains("\"name\":\"leak\"")
    );
}

/// The records of `networks.log`, as JSON.
fn network_records(data_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(data_dir.join("networks.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l.split_once(' ').unwrap().1).unwrap())
        .collect()
}

#[tokio::test]
async fn removing_a_network_leaves_no_copy_of_its_sealed_secrets_anywhere_in_the_data_dir() {
    let server = start();
    let api = setup(&server).await;
    let gone = add_network(&server, "gone", &[]);
    let stay = add_network(&server, "stay", &[]);
    for _ in 0..2 {
        let out = server.cli(&["network", "rotate", "gone"]);
        assert!(out.status.success());
    }
    // Every sealed value "gone" ever had, from every record of it.
    let mut sealed = BTreeSet::new();
    for rec in network_records(&server.data_dir) {
        if rec["name"] == "gone" {
            for field in ["secret", "previous_secret", "token"] {
                if let Some(v) = rec[field].as_str() {
                    sealed.insert(v.to_owned());
                }
            }
        }
    }
    assert!(sealed.len() >= 4, "{sealed:?}");
    let stay_before: Vec<Value> = network_records(&server.data_dir)
        .into_iter()
        .filter(|r| r["name"] == "stay")
        .collect();

    let out = server.cli(&["network", "remove", "gone"]);
    assert!(out.status.success());
    // At once: nothing is left by the time the command returns.
    for entry in walk(&server.data_dir) {
        let bytes = std::fs::read(&entry).unwrap();
        for value in sealed.iter().chain([&gone.secret, &gone.token]) {
            let found = bytes.windows(value.len()).any(|w| w == value.as_bytes());
            assert!(!found, "a secret of `gone` is left in {}", entry.display());
        }
    }
    assert_eq!(network_records(&server.data_dir), stay_before);
    // The running server sees the removal, and the other network works on.
    wait_network(&server, "gone", false);
    let cid = click(&api, "spring").await;
    let pb = q(&[
        ("click_id", &cid),
        ("txn_id", "K-1"),
        ("token", &stay.token),
    ]);
    assert_eq!(result(&get_pb(&api, "stay", &pb).await), (200, "accepted"));
    // Writes go on in the rewritten file, and the server reads them.
    let out = server.cli(&["network", "remove", "stay"]);
    assert!(out.status.success());
    wait_network(&server, "stay", false);
    assert!(network_records(&server.data_dir).is_empty());
    let again = add_network(&server, "gone", &[]);
    assert_ne!(again.secret, gone.secret);
    let out = server.cli(&["network", "remove", "nope"]);
    assert!(!out.status.success());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn a_repeated_token_or_mapped_field_in_a_get_postback_is_malformed() {
    let server = start();
    let api = setup(&server).await;
    let net = add_network(&server, "rep", &["--preset", "keitaro"]);
    let cid = click(&api, "spring").await;
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[
                ("subid", &cid),
                ("tid", "R1"),
                ("token", &net.token),
                ("token", "wrong"),
            ],
            "token",
        ),
        (
            &[
                ("subid", &cid),
                ("tid", "R1"),
                ("token", "wrong"),
                ("token", &net.token),
            ],
            "token",
        ),
        (
            &[
                ("subid", &cid),
                ("subid", "other"),
                ("tid", "R1"),
                ("token", &net.token),
            ],
            "subid",
        ),
        (
            &[
                ("subid", &cid),
                ("tid", "R1"),
                ("tid", "R2"),
                ("token", &net.token),
            ],
            "tid",
        ),
    ];
    for (pairs, field) in cases {
        let got = get_pb(&api, "rep", &q(pairs)).await;
        assert_eq!(result(&got), (400, "malformed"), "{pairs:?}: {}", got.1);
        assert_eq!(got.1["field"], field, "{}", got.1);
    }
    let status = q(&[
        ("subid", &cid),
        ("tid", "R1"),
        ("status", "sale"),
        ("status", "rejected"),
        ("token", &net.token),
    ]);
    let got = get_pb(&api, "rep", &status).await;
    assert_eq!(result(&got), (400, "malformed"), "{}", got.1);
    assert_eq!(got.1["field"], "status");
    // Nothing above counted; the same postback once is accepted.
    let once = q(&[("subid", &cid), ("tid", "R1"), ("token", &net.token)]);
    assert_eq!(result(&get_pb(&api, "rep", &once).await), (200, "accepted"));
}

#[tokio::test]
async fn negative_payouts_need_a_reversal_and_occurred_at_must_be_plausible() {
    let server = start();
    let api = setup(&server).await;
    let net = add_network(&server, "money", &["--preset", "keitaro"]);
    let cid = click(&api, "spring").await;
    let pb = |pairs: &[(&str, &str)]| {
        let mut pairs = pairs.to_vec();
        pairs.push(("token", &net.token));
        q(&pairs)
    };
    // Negative revenue on an approved sale: refused, naming the payout.
    let got = get_pb(
        &api,
        "money",
        &pb(&[
            ("subid", &cid),
            ("tid", "N1"),
            ("status", "sale"),
            ("payout", "-83.50"),
        ]),
    )
    .await;
    assert_eq!(result(&got), (400, "malformed"), "{}", got.1);
    assert_eq!(got.1["field"], "payout");
    assert!(
        got.1["reason"].as_str().unwrap().contains("reversed"),
        "{}",
        got.1
    );
    // A reversal may take money back.
    let ok = get_pb(
        &api,
        "money",
        &pb(&[
            ("subid", &cid),
            ("tid", "N1"),
            ("status", "sale"),
            ("payout", "83.50"),
        ]),
    )
    .await;
    assert_eq!(result(&ok), (200, "accepted"), "{}", ok.1);
    let back = get_pb(
        &api,
        "money",
        &pb(&[
            ("subid", &cid),
            ("tid", "N1"),
            ("status", "reversed"),
            ("payout", "-83.50"),
        ]),
    )
    .await;
    assert_eq!(result(&back), (200, "status_change"), "{}", back.1);

    // A conversion an hour before its click, or an hour from now: each
    // refused with a reason of its own, in the answer and the ledger.
    let hour_ago = (now_s() - 3600).to_string();
    let early = get_pb(
        &api,
        "money",
        &pb(&[("subid", &cid), ("tid", "T1"), ("occurred_at", &hour_ago)]),
    )
    .await;
    assert_eq!(result(&early), (422, "out_of_window"), "{}", early.1);
    assert!(
        early.1["reason"]
            .as_str()
            .unwrap()
            .starts_with("before_click:"),
        "{}",
        early.1
    );
    let in_an_hour = (now_s() + 3600).to_string();
    let future = get_pb(
        &api,
        "money",
        &pb(&[("subid", &cid), ("tid", "T2"), ("occurred_at", &in_an_hour)]),
    )
    .await;
    assert_eq!(result(&future), (422, "out_of_window"), "{}", future.1);
    let reason = future.1["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("clock_skew:") && !reason.contains("older"),
        "{reason}"
    );
    let ledger = std::fs::read_to_string(server.data_dir.join("postbacks.ledger")).unwrap();
    assert!(ledger.contains("\"reason\":\"before_click:"), "{ledger}");
    assert!(ledger.contains("\"reason\":\"clock_skew:"), "{ledger}");
    // Now is fine.
    let now = now_s().to_string();
    let fine = get_pb(
        &api,
        "money",
        &pb(&[("subid", &cid), ("tid", "T3"), ("occurred_at", &now)]),
    )
    .await;
    assert_eq!(result(&fine), (200, "accepted"), "{}", fine.1);
}
