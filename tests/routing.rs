//! Routing rules and weighted variants (CONTRACT.md "v2 additions — Routing
//! rules and experiments"), against the real binary over real sockets:
//! the admin surface, validation, the edge's choices, the country from a
//! trusted header and from an mmdb file, and the click events.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{client, eventually, Api, Server, BROWSER_UA, HIGH_RATE_LIMITS};
use serde_json::{json, Value};

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
const PATIENCE: Duration = Duration::from_secs(10);

/// A server that believes `CF-IPCountry` and `X-Forwarded-For` from
/// localhost (the tests' own proxy), with limits that never trip.
fn behind_proxy(extra: &[(&str, &str)]) -> Server {
    let mut env: Vec<(&str, &str)> = HIGH_RATE_LIMITS.to_vec();
    env.push(("CLICKEDGE_EDGE__TRUSTED_PROXIES", "[\"127.0.0.0/8\"]"));
    env.push(("CLICKEDGE_GEO__COUNTRY_HEADER", "CF-IPCountry"));
    env.extend_from_slice(extra);
    Server::start_with(&env)
}

fn geo_device_link() -> Value {
    json!({
        "destination": "https://shop.example/",
        "code": "geo",
        "rules": [
            {"if": {"country": ["DE", "AT"], "device": ["mobile"]}, "destination": "https://m.shop.example/de?c={click_id}"},
            {"if": {"country": ["DE"]}, "destination": "https://shop.example/de"},
            {"if": {"language": ["fr"]}, "destination": "https://shop.example/fr"},
        ],
    })
}

fn three_way() -> Value {
    json!([
        {"destination": "https://a.example/", "weight": 50},
        {"destination": "https://b.example/", "weight": 30},
        {"destination": "https://c.example/", "weight": 20},
    ])
}

/// One edge GET: status and `Location`.
async fn click(server: &Server, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = client().get(server.edge_url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let loc = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (r.status().as_u16(), loc)
}

#[tokio::test]
async fn rules_and_variants_come_back_from_create_get_list_patch_and_batch() {
    let server = Server::start();
    let api = Api::new(&server, server.token("acme"));
    let mut body = geo_device_link();
    body["variants"] = three_way();
    let link = api.link(body).await;
    assert_eq!(link["rules"].as_array().unwrap().len(), 3);
    assert_eq!(link["rules"][0]["if"]["country"], json!(["DE", "AT"]));
    assert_eq!(link["rules"][0]["if"]["device"], json!(["mobile"]));
    assert_eq!(
        link["rules"][0]["destination"],
        "https://m.shop.example/de?c={click_id}"
    );
    assert_eq!(link["variants"], three_way());
    let (_, got) = api.get("/v1/links/geo").await;
    assert_eq!(got["rules"], link["rules"]);
    assert_eq!(got["variants"], link["variants"]);
    let (_, list) = api.get("/v1/links").await;
    assert_eq!(list["links"][0]["variants"], three_way());
    // A plain link shows empty lists.
    let plain = api
        .link(json!({"destination": "https://x.example/", "code": "plain"}))
        .await;
    assert_eq!(
        (plain["rules"].clone(), plain["variants"].clone()),
        (json!([]), json!([]))
    );
    // PATCH replaces each list it names and leaves the other alone.
    let (status, patched) = api
        .patch(
            "/v1/links/geo",
            json!({"rules": [{"if": {"os": ["android"]}, "destination": "https://android.example/"}]}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["rules"][0]["if"], json!({"os": ["android"]}));
    assert_eq!(patched["variants"], three_way());
    let (_, patched) = api
        .patch("/v1/links/geo", json!({"variants": null, "rules": []}))
        .await;
    assert_eq!(
        (patched["rules"].clone(), patched["variants"].clone()),
        (json!([]), json!([]))
    );
    // Batch items are validated one by one, errors in place.
    let (status, batch) = api
        .post(
            "/v1/links/batch",
            json!({"links": [
                {"destination": "https://a.example/", "variants": three_way()},
                {"destination": "https://a.example/", "variants": [{"destination": "https://a.example/", "weight": 1}]},
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["results"][0]["status"], 201);
    assert_eq!(batch["results"][0]["link"]["variants"], three_way());
    assert_eq!(batch["results"][1]["status"], 422);
    assert_eq!(batch["results"][1]["error"]["code"], "invalid_variants");
    // They survive a restart (the store file round-trips them).
    let mut server = server;
    let dir = server.take_dir();
    drop(server);
    let server = Server::start_in(dir.path(), &[]);
    let api = Api::new(&server, server.token("acme"));
    let code = batch["results"][0]["link"]["code"].as_str().unwrap();
    let (_, again) = api.get(&format!("/v1/links/{code}")).await;
    assert_eq!(again["variants"], three_way());
}

#[tokio::test]
async fn bad_rules_and_variants_are_422_naming_the_field_and_index() {
    let server = Server::start();
    let api = Api::new(&server, server.token("acme"));
    let dest = "https://x.example/";
    let rule = |cond: Value| json!({"if": cond, "destination": dest});
    let cases = [
        (
            json!({"rules": [rule(json!({"city": ["x"]}))]}),
            "invalid_rules",
            "rules[0].if.city",
        ),
        (
            json!({"rules": [rule(json!({"country": ["DE"]})), rule(json!({"country": ["Germany"]}))]}),
            "invalid_rules",
            "rules[1].if.country[0]",
        ),
        (
            json!({"rules": [rule(json!({"device": []}))]}),
            "invalid_rules",
            "rules[0].if.device",
        ),
        (
            json!({"rules": [{"if": {"country": ["DE"]}, "destination": "javascript:alert(1)"}]}),
            "invalid_rules",
            "rules[0].destination",
        ),
        (
            json!({"rules": vec![rule(json!({"country": ["DE"]})); 33]}),
            "invalid_rules",
            "rules: at most 32",
        ),
        (
            json!({"rules": vec![rule(json!({"country": ["DE"]})); 10_000]}),
            "invalid_rules",
            "rules: at most 32",
        ),
        (
            json!({"variants": [{"destination": dest, "weight": 1}]}),
            "invalid_variants",
            "variants: 2-64",
        ),
        (
            json!({"variants": [{"destination": dest, "weight": 1}, {"destination": dest, "weight": 1001}]}),
            "invalid_variants",
            "variants[1].weight",
        ),
        (
            json!({"variants": [{"destination": dest, "weight": 1}, {"destination": "ftp://x/", "weight": 1}]}),
            "invalid_variants",
            "variants[1].destination",
        ),
    ];
    for (extra, code, field) in cases {
        let mut body = json!({"destination": dest});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, err) = api.post("/v1/links", body.clone()).await;
        assert_eq!(status, 422, "{err}");
        assert_eq!(err["error"]["code"], code, "{err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{field}: {message}");
        // PATCH validates the same way and changes nothing.
        let plain = api.link(json!({"destination": dest})).await;
        let path = format!("/v1/links/{}", plain["code"].as_str().unwrap());
        let (status, _) = api.patch(&path, extra.clone()).await;
        assert_eq!(status, 422);
        assert_eq!(api.get(&path).await.1["rules"], json!([]));
    }
    // Nesting deeper than serde's limit is invalid JSON, not a crash.
    let deep = format!(
        r#"{{"destination":"{dest}","rules":[{{"if":{{"country":{}{}}},"destination":"{dest}"}}]}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let r = client()
        .post(server.admin_url("/v1/links"))
        .bearer_auth(server.token("acme"))
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "invalid_json");
}

#[tokio::test]
async fn clicks_follow_the_first_matching_rule_and_events_say_which() {
    let server = behind_proxy(&[]);
    let api = Api::new(&server, server.token("acme"));
    api.link(geo_device_link()).await;
    let de_mobile = click(
        &server,
        "/geo",
        &[("cf-ipcountry", "DE"), ("user-agent", IPHONE)],
    )
    .await;
    assert_eq!(de_mobile.0, 302);
    assert!(
        de_mobile.1.starts_with("https://m.shop.example/de?c="),
        "{de_mobile:?}"
    );
    let de_desktop = click(
        &server,
        "/geo",
        &[("cf-ipcountry", "DE"), ("user-agent", BROWSER_UA)],
    )
    .await;
    assert_eq!(de_desktop.1, "https://shop.example/de");
    let fr = click(
        &server,
        "/geo",
        &[
            ("cf-ipcountry", "FR"),
            ("user-agent", IPHONE),
            ("accept-language", "fr-CA,fr;q=0.8"),
        ],
    )
    .await;
    assert_eq!(fr.1, "https://shop.example/fr");
    let us = click(
        &server,
        "/geo",
        &[("cf-ipcountry", "US"), ("user-agent", BROWSER_UA)],
    )
    .await;
    assert_eq!(us.1, "https://shop.example/");
    // Invalid UTF-8 in Accept-Language is no language, not an error.
    let mut req = client().get(server.edge_url("/geo?x=1"));
    req = req.header(
        "accept-language",
        reqwest::header::HeaderValue::from_bytes(b"fr\xff\xfe").unwrap(),
    );
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "https://shop.example/?x=1");
    // A giant user agent is bounded work.
    let giant = format!("Mozilla/5.0 (iPhone; {})", "x".repeat(7000));
    let (status, loc) = click(
        &server,
        "/geo",
        &[("cf-ipcountry", "AT"), ("user-agent", &giant)],
    )
    .await;
    assert_eq!(status, 302);
    assert!(loc.starts_with("https://m.shop.example/de"), "{loc}");

    let mut lines = Vec::new();
    assert!(
        eventually(PATIENCE, || {
            lines = server.click_log_lines();
            lines.len() >= 6
        })
        .await
    );
    let fact = |l: &Value| {
        (
            l["country"].as_str().unwrap().to_owned(),
            l["device"].as_str().unwrap().to_owned(),
            l["os"].as_str().unwrap().to_owned(),
            l["rule"].clone(),
            l["variant"].clone(),
            l["destination"].as_str().unwrap().to_owned(),
        )
    };
    let s = |x: &str| x.to_owned();
    assert_eq!(
        fact(&lines[0]),
        (
            s("DE"),
            s("mobile"),
            s("ios"),
            json!(0),
            Value::Null,
            s("https://m.shop.example/de?c={click_id}")
        )
    );
    assert_eq!(
        fact(&lines[1]),
        (
            s("DE"),
            s("desktop"),
            s("macos"),
            json!(1),
            Value::Null,
            s("https://shop.example/de")
        )
    );
    assert_eq!(
        fact(&lines[2]),
        (
            s("FR"),
            s("mobile"),
            s("ios"),
            json!(2),
            Value::Null,
            s("https://shop.example/fr")
        )
    );
    assert_eq!(
        fact(&lines[3]),
        (
            s("US"),
            s("desktop"),
            s("macos"),
            Value::Null,
            Value::Null,
            s("https://shop.example/")
        )
    );
    // No header, no agent: nothing known.
    assert_eq!(
        fact(&lines[4]),
        (
            s(""),
            s(""),
            s(""),
            Value::Null,
            Value::Null,
            s("https://shop.example/")
        )
    );
    let (_, stats) = api.get("/v1/links/geo/stats").await;
    assert_eq!(
        stats["countries"],
        json!({"DE": 2, "FR": 1, "US": 1, "AT": 1}),
        "{stats}"
    );
    assert_eq!(
        stats["devices"],
        json!({"mobile": 3, "desktop": 2}),
        "{stats}"
    );
    assert_eq!(stats["variants"], json!([]));
}

#[tokio::test]
async fn the_country_header_is_ignored_from_an_untrusted_peer() {
    let mut env: Vec<(&str, &str)> = HIGH_RATE_LIMITS.to_vec();
    env.push(("CLICKEDGE_GEO__COUNTRY_HEADER", "CF-IPCountry"));
    let server = Server::start_with(&env);
    let api = Api::new(&server, server.token("acme"));
    api.link(geo_device_link()).await;
    let (_, loc) = click(&server, "/geo", &[("cf-ipcountry", "DE")]).await;
    assert_eq!(loc, "https://shop.example/");
    let mut lines = Vec::new();
    assert!(
        eventually(PATIENCE, || {
            lines = server.click_log_lines();
            !lines.is_empty()
        })
        .await
    );
    assert_eq!(lines[0]["country"], "");
}

/// An mmdb with 192.0.2.0/24 in `country` and 198.51.100.0/24 in `to`.
fn mmdb(country: &str, to: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Country {
        iso_code: String,
    }
    #[derive(serde::Serialize)]
    struct Record {
        country: Country,
    }
    let mut w = mmdb_writer::Writer::new("clickedge-test");
    for (net, code) in [("192.0.2.0/24", country), ("198.51.100.0/24", to)] {
        let rec = Record {
            country: Country {
                iso_code: code.to_owned(),
            },
        };
        w.insert(net.parse::<ipnet::IpNet>().unwrap(), &rec)
            .unwrap();
    }
    w.to_bytes().unwrap()
}

#[tokio::test]
async fn the_country_comes_from_the_mmdb_and_a_replaced_file_is_picked_up() {
    let geo_dir = tempfile::tempdir().unwrap();
    let path = geo_dir.path().join("country.mmdb");
    std::fs::write(&path, mmdb("DE", "FR")).unwrap();
    let path_str = path.to_str().unwrap().to_owned();
    let server = behind_proxy(&[
        ("CLICKEDGE_GEO__MMDB", &path_str),
        ("CLICKEDGE_GEO__RELOAD_INTERVAL_MS", "50"),
    ]);
    let api = Api::new(&server, server.token("acme"));
    api.link(geo_device_link()).await;
    let from = |ip: &'static str| [("x-forwarded-for", ip), ("user-agent", BROWSER_UA)];
    assert_eq!(
        click(&server, "/geo", &from("192.0.2.7")).await.1,
        "https://shop.example/de"
    );
    assert_eq!(
        click(&server, "/geo", &from("198.51.100.7")).await.1,
        "https://shop.example/"
    );
    assert_eq!(
        click(&server, "/geo", &from("203.0.113.1")).await.1,
        "https://shop.example/"
    );
    // Swapped while serving (written aside, renamed into place).
    let tmp = geo_dir.path().join("country.mmdb.tmp");
    std::fs::write(&tmp, mmdb("FR", "DE")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let mut swapped = false;
    for _ in 0..100 {
        if click(&server, "/geo", &from("198.51.100.7")).await.1 == "https://shop.example/de" {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(swapped, "the new database was not picked up");
    // A broken file keeps the last good one serving.
    std::fs::write(&tmp, b"not a database").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        click(&server, "/geo", &from("198.51.100.7")).await.1,
        "https://shop.example/de"
    );
    let lines = server.click_log_lines();
    assert_eq!(lines[0]["country"], "DE");
    assert_eq!(lines[1]["country"], "FR");
    assert_eq!(lines[2]["country"], "");
}

#[tokio::test]
async fn a_start_with_an_unreadable_mmdb_fails_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.mmdb");
    std::fs::write(&path, b"junk").unwrap();
    let out = common::command(
        dir.path(),
        &[("CLICKEDGE_GEO__MMDB".into(), path.display().to_string())],
    )
    .arg("serve")
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.mmdb"), "{err}");
}

#[tokio::test]
async fn visitors_keep_their_variant_and_variants_split_by_weight() {
    let server = behind_proxy(&[]);
    let api = Api::new(&server, server.token("acme"));
    api.link(json!({"destination": "https://x.example/", "code": "ab", "variants": three_way()}))
        .await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut first = Vec::new();
    for i in 0..600u32 {
        let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
        let (_, loc) = click(
            &server,
            "/ab",
            &[("x-forwarded-for", &ip), ("user-agent", BROWSER_UA)],
        )
        .await;
        *seen.entry(loc.clone()).or_default() += 1;
        first.push((ip, loc));
    }
    for (ip, loc) in first.iter().step_by(20) {
        let (_, again) = click(
            &server,
            "/ab",
            &[("x-forwarded-for", ip), ("user-agent", BROWSER_UA)],
        )
        .await;
        assert_eq!(&again, loc, "{ip} moved");
    }
    // 50/30/20 over 600 visitors: loose bounds (the tight ±2 % over 100k is
    // the unit test's), but every variant gets its share.
    let share = |d: &str| seen.get(d).copied().unwrap_or(0) as f64 / 600.0;
    assert!(
        (0.40..0.60).contains(&share("https://a.example/")),
        "{seen:?}"
    );
    assert!(
        (0.22..0.38).contains(&share("https://b.example/")),
        "{seen:?}"
    );
    assert!(
        (0.13..0.27).contains(&share("https://c.example/")),
        "{seen:?}"
    );
    let mut lines = Vec::new();
    assert!(
        eventually(PATIENCE, || {
            lines = server.click_log_lines();
            lines.len() >= 630
        })
        .await
    );
    for l in &lines {
        let v = l["variant"].as_u64().unwrap() as usize;
        assert_eq!(l["destination"], three_way()[v]["destination"], "{l}");
        assert_eq!(l["rule"], Value::Null);
    }
    // The embedded stats count each variant's clicks.
    let mut stats = Value::Null;
    for _ in 0..200 {
        stats = api.get("/v1/links/ab/stats").await.1;
        if stats["clicks"] == 630 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stats["clicks"], 630, "{stats}");
    let per_variant: Vec<u64> = stats["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["clicks"].as_u64().unwrap())
        .collect();
    assert_eq!(per_variant.iter().sum::<u64>(), 630, "{stats}");
    for (i, v) in stats["variants"].as_array().unwrap().iter().enumerate() {
        let want = lines.iter().filter(|l| l["variant"] == i).count() as u64;
        assert_eq!(v["clicks"], want, "{stats}");
        assert_eq!(v["human_clicks"], want);
        assert_eq!(v["destination"], three_way()[i]["destination"]);
        assert_eq!(v["weight"], three_way()[i]["weight"]);
    }
    assert_eq!(stats["devices"], json!({"desktop": 630}));
    assert_eq!(stats["countries"], json!({}));
}

#[tokio::test]
async fn patching_rules_under_load_never_shows_a_half_applied_link() {
    let server = behind_proxy(&[]);
    let api = Api::new(&server, server.token("acme"));
    let version = |v: u32| {
        json!({
            "destination": format!("https://v{v}.example/plain"),
            "rules": [{"if": {"country": ["DE"]}, "destination": format!("https://v{v}.example/de")}],
        })
    };
    let mut body = version(0);
    body["code"] = json!("flip");
    api.link(body).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clickers = Vec::new();
    for country in ["DE", "US"] {
        let url = server.edge_url("/flip");
        let stop = stop.clone();
        clickers.push(tokio::spawn(async move {
            let http = client();
            let mut answers = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = http
                    .get(&url)
                    .header("cf-ipcountry", country)
                    .send()
                    .await
                    .unwrap();
                let loc = r.headers()["location"].to_str().unwrap().to_owned();
                let want = if country == "DE" { "/de" } else { "/plain" };
                assert!(loc.ends_with(want), "{country} got {loc}");
                answers += 1;
            }
            answers
        }));
    }
    for v in 1..=20 {
        let (status, _) = api.patch("/v1/links/flip", version(v)).await;
        assert_eq!(status, 200);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clickers {
        assert!(c.await.unwrap() > 0);
    }
}
