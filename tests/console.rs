//! `/console` (CONTRACT.md "v2 additions — Operator console"): sessions
//! and CSRF over raw HTTP (a forged form post, a cookie replayed after
//! sign-out, another tenant's code in the URL: all refused), and the whole
//! walk in a real browser: headless Chromium driven over WebDriver
//! (chromedriver, fantoccini) signs in, mints a link, finds it, follows
//! the short link to a local destination with the attribution cookie set,
//! sees the click in the chart and a postback in reconciliation, and signs
//! out. Screenshots land in target/console-screenshots/.
//!
//! Chromium and chromedriver come from Debian (scripts/test installs
//! them). Without them the browser test is skipped with a note, unless
//! `CLICKEDGE_REQUIRE_TOOLS=1` (scripts/test sets it).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{client, Api, Server};
use serde_json::{json, Value};

const DESKTOP_CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
const PATIENCE: Duration = Duration::from_secs(15);
const MASTER: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

fn tools_required() -> bool {
    std::env::var("CLICKEDGE_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// The value of `name="csrf"` in a page.
fn csrf_in(html: &str) -> String {
    let at = html
        .find(r#"name="csrf" value=""#)
        .expect("the page has a form")
        + 19;
    html[at..at + html[at..].find('"').unwrap()].to_owned()
}

/// The `name=value` of a `Set-Cookie` for `name`, and the whole header.
fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<(String, String)> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| (v[..v.find(';').unwrap_or(v.len())].to_owned(), v.to_owned()))
}

/// A signed-in console over raw HTTP: the session cookie and its CSRF.
struct Console<'a> {
    server: &'a Server,
    http: reqwest::Client,
    cookie: String,
    csrf: String,
}

impl<'a> Console<'a> {
    async fn sign_in(server: &'a Server, token: &str) -> Console<'a> {
        let http = client();
        let page = http
            .get(server.admin_url("/console/sign-in"))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        let (pre, _) = set_cookie(&page, "ce_console_signin").expect("a sign-in cookie");
        let form_csrf = csrf_in(&page.text().await.unwrap());
        let resp = http
            .post(server.admin_url("/console/sign-in"))
            .header("cookie", &pre)
            .form(&[("csrf", form_csrf.as_str()), ("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 303, "signed in");
        assert_eq!(resp.headers()["location"], "/console/links");
        let (cookie, _) = set_cookie(&resp, "ce_console").expect("a session cookie");
        let mut console = Console {
            server,
            http,
            cookie,
            csrf: String::new(),
        };
        let (status, html) = console.get("/console/links").await;
        assert_eq!(status, 200);
        console.csrf = csrf_in(&html);
        console
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(self.server.admin_url(path))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(self.server.admin_url(path))
            .header("cookie", &self.cookie)
            .form(form)
            .send()
            .await
            .unwrap()
    }
}

async fn link_codes(api: &Api<'_>) -> Vec<String> {
    let (_, page) = api.get("/v1/links?limit=1000").await;
    page["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["code"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_session_cookie_is_http_only_strict_and_expiring_and_pages_carry_a_strict_csp() {
    let server = Server::start();
    let token = server.token("acme");
    let http = client();
    let page = http
        .get(server.admin_url("/console/sign-in"))
        .send()
        .await
        .unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && !csp.contains("script-src"));
    let (pre, _) = set_cookie(&page, "ce_console_signin").unwrap();
    let csrf = csrf_in(&page.text().await.unwrap());
    let resp = http
        .post(server.admin_url("/console/sign-in"))
        .header("cookie", &pre)
        .header("x-forwarded-proto", "https")
        .form(&[("csrf", csrf.as_str()), ("token", token.as_str())])
        .send()
        .await
        .unwrap();
    let (_, header) = set_cookie(&resp, "ce_console").unwrap();
    for part in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=",
        "Secure",
    ] {
        assert!(header.contains(part), "{part} in {header}");
    }
    // Without TLS in front, no Secure (the browser would drop the cookie).
    let console = Console::sign_in(&server, &token).await;
    let (status, _) = console.get("/console/links").await;
    assert_eq!(status, 200);
    // The stylesheet is the only asset, same origin.
    let css = http
        .get(server.admin_url("/console/app.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.status(), 200);
    assert!(!css.text().await.unwrap().contains("http"));
}

#[tokio::test]
async fn a_bad_token_or_a_sign_in_form_from_elsewhere_is_refused() {
    let server = Server::start();
    let token = server.token("acme");
    let http = client();
    let page = http
        .get(server.admin_url("/console/sign-in"))
        .send()
        .await
        .unwrap();
    let (pre, _) = set_cookie(&page, "ce_console_signin").unwrap();
    let csrf = csrf_in(&page.text().await.unwrap());
    // A wrong token: the form again, 401, no session.
    let resp = http
        .post(server.admin_url("/console/sign-in"))
        .header("cookie", &pre)
        .form(&[("csrf", csrf.as_str()), ("token", "cet_not-a-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(set_cookie(&resp, "ce_console").is_none());
    // A good token posted from another site (no sign-in cookie, or one
    // that does not match the form): 403, no session.
    for cookie in ["", "ce_console_signin=forged"] {
        let resp = http
            .post(server.admin_url("/console/sign-in"))
            .header("cookie", cookie)
            .form(&[("csrf", csrf.as_str()), ("token", token.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "cookie {cookie:?}");
        assert!(set_cookie(&resp, "ce_console").is_none());
    }
    // Pages without a session go to the sign-in page.
    let resp = http
        .get(server.admin_url("/console/links"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/console/sign-in");
}

#[tokio::test]
async fn a_forged_form_post_is_refused_and_changes_nothing() {
    let server = Server::start();
    let token = server.token("acme");
    let api = Api::new(&server, token.clone());
    api.link(json!({"code": "keep", "destination": "https://example.com/"}))
        .await;
    let console = Console::sign_in(&server, &token).await;
    // The victim's cookie rides along, but the forger cannot know the CSRF.
    for csrf in [None, Some("guess"), Some("")] {
        let mut form = vec![("destination", "https://evil.example/"), ("code", "forged")];
        if let Some(c) = csrf {
            form.push(("csrf", c));
        }
        let resp = console.post("/console/links", &form).await;
        assert_eq!(resp.status(), 403, "csrf {csrf:?}");
        let mut form = vec![("disabled", "true")];
        if let Some(c) = csrf {
            form.push(("csrf", c));
        }
        let resp = console.post("/console/links/keep/disable", &form).await;
        assert_eq!(resp.status(), 403);
        assert_eq!(
            console
                .post("/console/sign-out", &[("csrf", csrf.unwrap_or("x"))])
                .await
                .status(),
            403
        );
    }
    assert_eq!(link_codes(&api).await, ["keep"]);
    assert_eq!(api.get("/v1/links/keep").await.1["disabled"], false);
    // The real form works.
    let resp = console
        .post(
            "/console/links",
            &[
                ("csrf", console.csrf.as_str()),
                ("destination", "https://example.com/new"),
                ("code", "made"),
                ("tags", "spring, email"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/console/links/made?created=1");
    let made = api.get("/v1/links/made").await.1;
    assert_eq!(made["tags"], json!(["spring", "email"]));
    assert_eq!(made["tenant"], "acme");
    // Hostile input gets the API's own validation, shown on the page.
    let resp = console
        .post(
            "/console/links",
            &[
                ("csrf", console.csrf.as_str()),
                ("destination", "javascript:alert(1)"),
                ("code", "<script>"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 422);
    let html = resp.text().await.unwrap();
    assert!(!html.contains("<script>"), "escaped");
    assert_eq!(link_codes(&api).await, ["keep", "made"]);

    // Editing goes through the API's validation too.
    let resp = console
        .post(
            "/console/links/made/edit",
            &[
                ("csrf", console.csrf.as_str()),
                ("destination", "https://example.com/changed"),
                ("tags", "autumn"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 303);
    let made = api.get("/v1/links/made").await.1;
    assert_eq!(made["destination"], "https://example.com/changed");
    assert_eq!(made["tags"], json!(["autumn"]));
    let resp = console
        .post(
            "/console/links/made/edit",
            &[
                ("csrf", console.csrf.as_str()),
                ("destination", "ftp://nope"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 422);
    assert_eq!(
        api.get("/v1/links/made").await.1["destination"],
        "https://example.com/changed"
    );
    let resp = console
        .post(
            "/console/links/made/edit",
            &[("destination", "https://evil.example/")],
        )
        .await;
    assert_eq!(resp.status(), 403);
}

#[tokio::test]
async fn the_links_list_pages_and_searches_across_pages() {
    let server = Server::start();
    let token = server.token("acme");
    let api = Api::new(&server, token.clone());
    let links: Vec<Value> = (0..60)
        .map(|i| {
            json!({
                "code": format!("c{i:02}"),
                "destination": format!("https://example.com/{i}"),
                "tags": [if i % 3 == 0 { "fizz" } else { "plain" }],
            })
        })
        .collect();
    let (status, _) = api.post("/v1/links/batch", json!({ "links": links })).await;
    assert_eq!(status, 200);
    let console = Console::sign_in(&server, &token).await;
    let rows = |html: &str| html.matches("<td><a class=\"mono\"").count();
    let next = |html: &str| -> Option<String> {
        let at = html.find("href=\"/console/links?")? + 6;
        let href = &html[at..at + html[at..].find('"')?];
        Some(href.replace("&amp;", "&"))
    };
    let (_, first) = console.get("/console/links").await;
    assert_eq!(rows(&first), 25);
    let (_, second) = console.get(&next(&first).unwrap()).await;
    assert_eq!(rows(&second), 25);
    assert!(second.contains(">c25<") && !second.contains(">c24<"));
    let (_, third) = console.get(&next(&second).unwrap()).await;
    assert_eq!(rows(&third), 10);
    assert!(next(&third).is_none());
    // 20 links are tagged fizz: one page, the search kept on "next".
    let (_, fizz) = console.get("/console/links?q=FIZZ").await;
    assert_eq!(rows(&fizz), 20);
    assert!(next(&fizz).is_none());
    let (_, none) = console.get("/console/links?q=%3Cb%3E").await;
    assert_eq!(rows(&none), 0);
    assert!(none.contains("&lt;b&gt;"));
}

#[tokio::test]
async fn a_session_cookie_replayed_after_sign_out_is_refused() {
    let server = Server::start();
    let token = server.token("acme");
    let api = Api::new(&server, token.clone());
    let console = Console::sign_in(&server, &token).await;
    let resp = console
        .post("/console/sign-out", &[("csrf", console.csrf.as_str())])
        .await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/console/sign-in");
    let (_, cleared) = set_cookie(&resp, "ce_console").unwrap();
    assert!(cleared.contains("Max-Age=0"));
    // The stolen cookie (and its CSRF) no longer open anything.
    let r = console
        .http
        .get(server.admin_url("/console/links"))
        .header("cookie", &console.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/console/sign-in");
    let r = console
        .post(
            "/console/links",
            &[
                ("csrf", console.csrf.as_str()),
                ("destination", "https://example.com/"),
                ("code", "after"),
            ],
        )
        .await;
    assert_eq!(r.status(), 303);
    assert!(link_codes(&api).await.is_empty());

    // Revoking the token ends the sessions made with it.
    let out = server.cli(&["token", "create", "--tenant", "acme"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let id = first["id"].as_str().unwrap().to_owned();
    let second = text.lines().last().unwrap().trim().to_owned();
    let deadline = Instant::now() + PATIENCE;
    while Api::new(&server, second.clone()).get("/v1/links").await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the new token never became valid"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let console = Console::sign_in(&server, &second).await;
    assert!(server.cli(&["token", "revoke", &id]).status.success());
    let deadline = Instant::now() + PATIENCE;
    while console.get("/console/links").await.0 == 200 {
        assert!(
            Instant::now() < deadline,
            "a revoked token's session lived on"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn another_tenants_code_in_the_url_is_not_found_and_cannot_be_changed() {
    let server = Server::start();
    let admin = Api::new(&server, server.token("*"));
    admin
        .link(json!({"code": "theirs", "destination": "https://other.example/", "tenant": "other"}))
        .await;
    admin
        .link(json!({"code": "ours", "destination": "https://acme.example/", "tenant": "acme"}))
        .await;
    let console = Console::sign_in(&server, &server.token("acme")).await;
    let (status, html) = console.get("/console/links/theirs").await;
    assert_eq!(status, 404);
    assert!(!html.contains("other.example"));
    let resp = console
        .post(
            "/console/links/theirs/disable",
            &[("csrf", console.csrf.as_str()), ("disabled", "true")],
        )
        .await;
    assert_eq!(resp.status(), 404);
    assert_eq!(admin.get("/v1/links/theirs").await.1["disabled"], false);
    let (_, list) = console.get("/console/links").await;
    assert!(list.contains("ours") && !list.contains("theirs"));
    let (_, search) = console.get("/console/links?q=other").await;
    assert!(!search.contains("theirs"));
    // A path that is no code at all is a 404 too, and never a server error.
    for path in [
        "/console/links/..%2F..%2Fv1",
        "/console/links/%3Cscript%3E",
        "/console/nope",
    ] {
        assert_eq!(console.get(path).await.0, 404, "{path}");
    }
    // The admin's console sees both tenants.
    let admin_console = Console::sign_in(&server, &admin.token).await;
    let (_, list) = admin_console.get("/console/links").await;
    assert!(list.contains("ours") && list.contains("theirs"));
    // And picks one.
    let (_, picked) = admin_console.get("/console/links?tenant=other").await;
    assert!(picked.contains(">theirs<") && !picked.contains(">ours<"));
}

#[tokio::test]
async fn an_admin_rotates_a_network_secret_seen_once_and_a_tenant_cannot() {
    let server = Server::start_with(&[("CLICKEDGE_MASTER_KEY", MASTER)]);
    let out = server.cli(&["network", "add", "kt", "--auth", "hmac"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added: Value = serde_json::from_slice(&out.stdout).unwrap();
    let old_secret = added["secret"].as_str().unwrap().to_owned();
    let admin = Console::sign_in(&server, &server.token("*")).await;
    let (status, page) = admin.get("/console/networks").await;
    assert_eq!(status, 200);
    assert!(page.contains("kt") && !page.contains(&old_secret));
    // Forged: refused, nothing rotated.
    let r = admin
        .post("/console/networks/kt/rotate", &[("csrf", "nope")])
        .await;
    assert_eq!(r.status(), 403);
    let r = admin
        .post(
            "/console/networks/kt/rotate",
            &[("csrf", admin.csrf.as_str())],
        )
        .await;
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    let at = page
        .find("id=\"new-secret\">")
        .expect("the new secret is shown")
        + 16;
    let new_secret = &page[at..at + page[at..].find('<').unwrap()];
    assert!(new_secret.starts_with("ces_") && new_secret != old_secret);
    let (_, again) = admin.get("/console/networks").await;
    assert!(!again.contains(new_secret), "shown once");
    assert!(
        admin
            .post(
                "/console/networks/nope/rotate",
                &[("csrf", admin.csrf.as_str())]
            )
            .await
            .status()
            == 404
    );
    // Networks are not a tenant's: its session sees none and rotates none.
    let tenant = Console::sign_in(&server, &server.token("acme")).await;
    assert_eq!(tenant.get("/console/networks").await.0, 404);
    let r = tenant
        .post(
            "/console/networks/kt/rotate",
            &[("csrf", tenant.csrf.as_str())],
        )
        .await;
    assert_eq!(r.status(), 404);
    let (_, links) = tenant.get("/console/links").await;
    assert!(!links.contains("/console/networks"));
    // The secret shown is the one the edge now verifies with.
    let body = r#"{"click_id":"x","txn_id":"1"}"#;
    let t = chrono::Utc::now().timestamp();
    let sig = |secret: &str| {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.{body}").as_bytes());
        format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
    };
    let post = |s: String| {
        client()
            .post(server.edge_url("/_postback/kt"))
            .header("content-type", "application/json")
            .header("x-clickedge-signature", s)
            .body(body)
            .send()
    };
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = post(sig(new_secret)).await.unwrap().status().as_u16();
        if status != 401 {
            break;
        }
        assert!(Instant::now() < deadline, "the new secret never verified");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        post(sig("ces_wrong-secret-entirely"))
            .await
            .unwrap()
            .status(),
        401
    );
}

// ---- the browser walk ------------------------------------------------------

struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// chromedriver on a free port, or `None` (with the skip note) without it.
fn chromedriver() -> Option<Driver> {
    let installed = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !(installed("chromedriver") && installed("chromium")) {
        assert!(
            !tools_required(),
            "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        );
        eprintln!("skipped: chromium or chromedriver is not installed");
        return None;
    }
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let deadline = Instant::now() + PATIENCE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Driver { child, port })
}

/// A destination server: answers every request with a small page.
async fn destination() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = "<!doctype html><title>Landing</title><h1>You landed</h1>";
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    addr
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits until the browser is on a path ending in `suffix` (a click
/// returns before the navigation it starts has finished).
async fn wait_path(c: &fantoccini::Client, suffix: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let url = c.current_url().await.unwrap();
        if url.path().ends_with(suffix) {
            let ready = c.execute("return document.readyState", vec![]).await;
            if ready.is_ok_and(|v| v == "complete") {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "never reached {suffix}: at {url}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn shot(c: &fantoccini::Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

#[tokio::test]
async fn in_a_real_browser_an_operator_signs_in_mints_a_link_follows_it_and_sees_the_click() {
    use fantoccini::{ClientBuilder, Locator};
    let Some(driver) = chromedriver() else { return };
    let server = Server::start_with(&[("CLICKEDGE_MASTER_KEY", MASTER)]);
    let token = server.token("acme");
    let api = Api::new(&server, token.clone());
    // Neighbours in the list, so it looks like a working account.
    for (code, dest, tags) in [
        (
            "spring-sale",
            "https://shop.example/spring?utm_source=newsletter",
            json!(["spring", "email"]),
        ),
        (
            "docs",
            "https://docs.example/getting-started",
            json!(["docs"]),
        ),
        (
            "summer-teaser",
            "https://shop.example/summer",
            json!(["summer"]),
        ),
    ] {
        api.link(json!({"code": code, "destination": dest, "tags": tags}))
            .await;
    }
    let landing = destination().await;
    let out = server.cli(&["network", "add", "demo-net", "--auth", "token"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let net: Value = serde_json::from_slice(&out.stdout).unwrap();
    let net_token = net["token"].as_str().unwrap().to_owned();

    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,900", "--lang=en-US",
            // Headless Chromium says so in its user agent, and the edge counts
            // it as a bot; an operator's click is a person's.
            format!("--user-agent={DESKTOP_CHROME}"),
        ]}),
    );
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session");

    // Sign in.
    c.goto(&server.admin_url("/console")).await.unwrap();
    wait_path(&c, "/console/sign-in").await;
    shot(&c, "01-sign-in").await;
    c.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(&token)
        .await
        .unwrap();
    c.find(Locator::Css("form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_path(&c, "/console/links").await;

    // Mint a link to the local destination.
    let dest = format!("http://{landing}/welcome");
    c.find(Locator::Css("#destination"))
        .await
        .unwrap()
        .send_keys(&dest)
        .await
        .unwrap();
    c.find(Locator::Css("#code"))
        .await
        .unwrap()
        .send_keys("launch")
        .await
        .unwrap();
    c.find(Locator::Css("#tags"))
        .await
        .unwrap()
        .send_keys("launch, browser")
        .await
        .unwrap();
    shot(&c, "02-new-link").await;
    c.find(Locator::XPath("//button[normalize-space()='Create link']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_path(&c, "/console/links/launch").await;
    let body = c
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("Created"), "{body}");

    // Find it in the list by search.
    c.goto(&server.admin_url("/console/links")).await.unwrap();
    shot(&c, "03-links").await;
    c.find(Locator::Css("#q"))
        .await
        .unwrap()
        .send_keys("browser")
        .await
        .unwrap();
    c.find(Locator::XPath("//button[normalize-space()='Search']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while c.current_url().await.unwrap().query() != Some("q=browser") {
        assert!(Instant::now() < deadline, "the search never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_path(&c, "/console/links").await;
    let rows = c.find_all(Locator::Css("tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].text().await.unwrap().contains("launch"));

    // The browser follows the short link itself.
    c.goto(&server.edge_url("/launch")).await.unwrap();
    let url = c.current_url().await.unwrap();
    assert_eq!(url.as_str(), format!("{dest}"));
    let h1 = c
        .find(Locator::Css("h1"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(h1, "You landed");
    // Cookies are per host, not per port: the edge's cookie is visible here.
    let cookies = c.get_all_cookies().await.unwrap();
    let click = cookies
        .iter()
        .find(|k| k.name() == "ce_click")
        .expect("the attribution cookie is set");
    let click_id = click.value().to_owned();
    assert!(click.http_only().unwrap_or(false));

    // A postback for that click.
    let pb = client()
        .get(server.edge_url(&format!(
            "/_postback/demo-net?click_id={click_id}&txn_id=order-1&token={net_token}&status=approved&payout=12.50&currency=USD"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(pb.status(), 200, "{}", pb.text().await.unwrap());

    // The stats page shows the click in its chart.
    let deadline = Instant::now() + PATIENCE;
    loop {
        c.goto(&server.admin_url("/console/links/launch"))
            .await
            .unwrap();
        let clicks = c
            .find(Locator::Css("#kpi-clicks"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if clicks == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the click never reached the stats page"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let bars = c
        .find_all(Locator::Css("svg.chart rect.human"))
        .await
        .unwrap();
    assert_eq!(bars.len(), 30, "a bar per day");
    let mut tall = 0;
    for b in &bars {
        let h: f64 = b.attr("height").await.unwrap().unwrap().parse().unwrap();
        if h > 0.0 {
            tall += 1;
        }
    }
    assert_eq!(tall, 1, "one day has the click");
    let kpis = c
        .find(Locator::Css(".kpis"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(kpis.contains("12.5"), "revenue shown: {kpis}");
    shot(&c, "04-link-stats").await;

    // Reconciliation shows the postback.
    c.find(Locator::LinkText("Reconciliation"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_path(&c, "/console/reconciliation").await;
    let table = c
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        table.contains("demo-net") && table.contains("launch"),
        "{table}"
    );
    shot(&c, "05-reconciliation").await;

    // A phone-sized window still reads.
    c.set_window_size(390, 844).await.unwrap();
    c.goto(&server.admin_url("/console/links/launch"))
        .await
        .unwrap();
    shot(&c, "06-link-stats-phone").await;
    c.set_window_size(1280, 900).await.unwrap();

    // Sign out; the console is closed to this browser again.
    c.find(Locator::XPath("//button[normalize-space()='Sign out']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_path(&c, "/console/sign-in").await;
    c.goto(&server.admin_url("/console/links")).await.unwrap();
    wait_path(&c, "/console/sign-in").await;
    c.close().await.unwrap();
    drop(driver);
}

#[tokio::test]
async fn a_links_page_shows_its_rules_variants_and_the_devices_its_clicks_came_from() {
    let server = Server::start();
    let api = Api::new(&server, server.token("acme"));
    api.link(json!({
        "code": "split",
        "destination": "https://shop.example/",
        "rules": [{"if": {"device": ["mobile"]}, "destination": "https://m.shop.example/"}],
        "variants": [
            {"destination": "https://a.shop.example/", "weight": 1},
            {"destination": "https://b.shop.example/", "weight": 3}
        ]
    }))
    .await;
    let iphone =
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148";
    let desktop =
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36";
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for ua in [iphone, desktop] {
        let r = http
            .get(server.edge_url("/split"))
            .header("user-agent", ua)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302);
    }
    let console = Console::sign_in(&server, &api.token).await;
    // The clicks are counted once the click-log writer has taken them.
    let deadline = Instant::now() + Duration::from_secs(5);
    let html = loop {
        let (status, html) = console.get("/console/links/split").await;
        assert_eq!(status, 200);
        if html.contains("id=\"devices\"") || Instant::now() > deadline {
            break html;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for shown in [
        "https://m.shop.example/",
        "https://a.shop.example/",
        "https://b.shop.example/",
        "(75 %)",
        "mobile",
        "desktop",
    ] {
        assert!(html.contains(shown), "{shown} in {html}");
    }
}
