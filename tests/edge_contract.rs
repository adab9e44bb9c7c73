//! The public edge, rule by rule from CONTRACT.md "Public edge".

mod common;

use common::{client, eventually, Api, Server, BROWSER_UA};
use serde_json::json;
use std::time::Duration;

async fn setup(server: &Server) -> Api<'_> {
    Api::new(server, server.token("acme"))
}

async fn wait_for_events(server: &Server, n: usize) -> Vec<serde_json::Value> {
    let ok = eventually(Duration::from_secs(5), || {
        server.click_log_lines().len() >= n
    })
    .await;
    assert!(ok, "expected {n} click events");
    server.click_log_lines()
}

#[tokio::test]
async fn a_redirect_carries_location_cookie_and_no_store() {
    let server = Server::start();
    let api = setup(&server).await;
    api.link(json!({"code": "promo", "destination": "https://shop.example/p/{code}?cid={click_id}&s={sub}"}))
        .await;
    let resp = client()
        .get(server.edge_url("/promo?sub=news%20letter"))
        .header("user-agent", BROWSER_UA)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let h = resp.headers();
    let cookie = h["set-cookie"].to_str().unwrap();
    let click_id = cookie
        .strip_prefix("ce_click=")
        .and_then(|c| c.split(';').next())
        .unwrap();
    assert_eq!(
        cookie,
        format!("ce_click={click_id}; Max-Age=604800; Path=/; HttpOnly; SameSite=Lax")
    );
    assert_eq!(click_id.len(), 32);
    assert!(click_id.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(
        h["location"],
        format!("https://shop.example/p/promo?cid={click_id}&s=news%20letter&sub=news%20letter")
    );
    assert_eq!(h["cache-control"], "private, no-store");
}

#[tokio::test]
async fn each_link_answers_its_own_redirect_status() {
    let server = Server::start();
    let api = setup(&server).await;
    for status in [301, 302, 307, 308] {
        let code = format!("s{status}");
        api.link(json!({"code": code, "destination": "https://x.example/", "redirect": status}))
            .await;
        let resp = client()
            .get(server.edge_url(&format!("/{code}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status);
    }
}

#[tokio::test]
async fn query_parameters_pass_through_and_the_destination_wins() {
    let server = Server::start();
    let api = setup(&server).await;
    api.link(json!({"code": "pt", "destination": "https://x.example/a?utm_source=dest#frag"}))
        .await;
    api.link(json!({"code": "nopt", "destination": "https://x.example/b", "passthrough": false}))
        .await;
    let loc = |path: &'static str| {
        let url = server.edge_url(path);
        async move {
            let r = client().get(url).send().await.unwrap();
            r.headers()["location"].to_str().unwrap().to_owned()
        }
    };
    assert_eq!(
        loc("/pt?utm_source=req&gclid=42").await,
        "https://x.example/a?utm_source=dest&gclid=42#frag"
    );
    assert_eq!(loc("/nopt?gclid=42").await, "https://x.example/b");
}

#[tokio::test]
async fn unknown_codes_are_404_and_not_cached() {
    let server = Server::start();
    for path in [
        "/nope",
        "/",
        "/a_b",
        "/a/b",
        &format!("/{}", "x".repeat(65)),
    ] {
        let r = client().get(server.edge_url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(r.headers()["cache-control"], "private, no-store");
    }
}

#[tokio::test]
async fn disabled_deleted_and_expired_links_are_gone() {
    let server = Server::start();
    let api = setup(&server).await;
    api.link(json!({"code": "off", "destination": "https://x.example/"}))
        .await;
    api.link(json!({"code": "del", "destination": "https://x.example/"}))
        .await;
    api.link(json!({"code": "old", "destination": "https://x.example/", "expires_at": "2020-01-01T00:00:00Z"}))
        .await;
    assert_eq!(
        api.patch("/v1/links/off", json!({"disabled": true}))
            .await
            .0,
        200
    );
    assert_eq!(api.delete("/v1/links/del").await.0, 204);
    for code in ["off", "del", "old"] {
        let url = server.edge_url(&format!("/{code}"));
        let r = client().get(url).send().await.unwrap();
        assert_eq!(r.status(), 410, "{code}");
        assert_eq!(r.headers()["cache-control"], "private, no-store");
    }
}

#[tokio::test]
async fn other_methods_get_405_with_allow_and_reserved_paths_404() {
    let server = Server::start();
    let api = setup(&server).await;
    api.link(json!({"code": "m", "destination": "https://x.example/"}))
        .await;
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let r = client()
            .request(method.parse().unwrap(), server.edge_url("/m"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method}");
        assert_eq!(r.headers()["allow"], "GET, HEAD");
        assert_eq!(r.headers()["cache-control"], "private, no-store");
    }
    let r = client().get(server.edge_url("/_m")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn every_redirect_is_recorded_with_the_contract_fields_and_no_raw_ip() {
    let server = Server::start();
    let api = setup(&server).await;
    api.link(json!({"code": "rec", "destination": "https://x.example/"}))
        .await;
    let r = client()
        .get(server.edge_url("/rec?sub=s1"))
        .header("user-agent", BROWSER_UA)
        .header("referer", "https://news.example/article")
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    let events = wait_for_events(&server, 1).await;
    let ev = &events[0];
    assert_eq!(ev["v"], 1);
    assert!(cookie.contains(ev["click_id"].as_str().unwrap()));
    assert_eq!(ev["tenant"], "acme");
    assert_eq!(ev["code"], "rec");
    assert_eq!(ev["destination"], "https://x.example/");
    assert_eq!(ev["user_agent"], BROWSER_UA);
    assert_eq!(ev["referer"], "https://news.example/article");
    assert_eq!(ev["sub"], "s1");
    assert_eq!(ev["bot"], false);
    assert_eq!(ev["bot_reason"], serde_json::Value::Null);
    assert_eq!(ev["edge_node"], "test-node");
    assert_eq!(ev["ip_hash"].as_str().unwrap().len(), 32);
    let ts = ev["ts"].as_str().unwrap();
    assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");
    // The raw client IP appears in no file of the data dir.
    for entry in walk(&server.data_dir) {
        let text = String::from_utf8_lossy(&std::fs::read(&entry).unwrap()).into_owned();
        assert!(
            !text.contains("127.0.0.1"),
            "{} holds a raw IP",
            entry.display()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn bots_previews_prefetches_and_head_are_redirected_but_classified() {
    let server = Server::start();
    let api = setup(&server).await;
    api.link(json!({"code": "b", "destination": "https://x.example/"}))
        .await;
    type Header<'a> = Option<(&'a str, &'a str)>;
    let cases: [(&str, &str, Header); 5] = [
        (
            "GET",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            None,
        ),
        ("GET", "facebookexternalhit/1.1", None),
        ("GET", BROWSER_UA, Some(("sec-purpose", "prefetch"))),
        ("HEAD", BROWSER_UA, None),
        ("GET", BROWSER_UA, None),
    ];
    for (method, ua, extra) in cases {
        let mut req = client()
            .request(method.parse().unwrap(), server.edge_url("/b"))
            .header("user-agent", ua);
        if let Some((k, v)) = extra {
            req = req.header(k, v);
        }
        assert_eq!(req.send().await.unwrap().status(), 302);
    }
    let events = wait_for_events(&server, 5).await;
    let reasons: Vec<_> = events
        .iter()
        .map(|e| (e["bot"].clone(), e["bot_reason"].clone()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (json!(true), json!("crawler")),
            (json!(true), json!("preview")),
            (json!(true), json!("prefetch")),
            (json!(true), json!("head")),
            (json!(false), json!(null)),
        ]
    );
    let (_, stats) = api.get("/v1/links/b/stats").await;
    assert_eq!(stats["clicks"], 5);
    assert_eq!(stats["bot_clicks"], 4);
    assert_eq!(stats["human_clicks"], 1);
}

#[tokio::test]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    async fn hashes(server: &Server) -> (String, String) {
        let api = Api::new(server, server.token("acme"));
        api.link(json!({"code": "x", "destination": "https://x.example/"}))
            .await;
        for xff in ["203.0.113.1", "203.0.113.2"] {
            client()
                .get(server.edge_url("/x"))
                .header("x-forwarded-for", xff)
                .send()
                .await
                .unwrap();
        }
        let ev = wait_for_events(server, 2).await;
        (
            ev[0]["ip_hash"].as_str().unwrap().to_owned(),
            ev[1]["ip_hash"].as_str().unwrap().to_owned(),
        )
    }
    let untrusted = Server::start();
    let (a, b) = hashes(&untrusted).await;
    assert_eq!(a, b, "X-Forwarded-For from an untrusted peer is ignored");
    let trusted = Server::start_with(&[("CLICKEDGE_EDGE__TRUSTED_PROXIES", "[\"127.0.0.0/8\"]")]);
    let (a, b) = hashes(&trusted).await;
    assert_ne!(
        a, b,
        "X-Forwarded-For from a trusted proxy names the client"
    );
}

#[tokio::test]
async fn click_ids_are_unique_and_time_ordered() {
    let server = Server::start();
    let api = setup(&server).await;
    api.link(json!({"code": "u", "destination": "https://x.example/?c={click_id}"}))
        .await;
    let mut ids = Vec::new();
    for _ in 0..50 {
        let r = client().get(server.edge_url("/u")).send().await.unwrap();
        let loc = r.headers()["location"].to_str().unwrap().to_owned();
        ids.push(loc.rsplit('=').next().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "unique");
    assert_eq!(sorted, ids, "string order is time order");
}
