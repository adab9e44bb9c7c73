//! The admin API for links, rule by rule from CONTRACT.md "Admin API":
//! create, read, update, delete, list, batch, tenants, tokens, errors,
//! health and stats, all against the real binary over real sockets.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::time::Duration;

use common::{client, eventually, Api, Server, BROWSER_UA};
use serde_json::{json, Value};

/// How long a change may take to reach the edge (CONTRACT: "within 1 s").
const LIVE_WITHIN: Duration = Duration::from_secs(1);
/// Generous bound for things the contract gives no figure for (token
/// revocation picked up from the CLI, stats after the click log commits).
const PATIENCE: Duration = Duration::from_secs(10);
const BASE62: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

async fn setup(server: &Server) -> Api<'_> {
    Api::new(server, server.token("acme"))
}

/// Asserts the contract's error shape, `{"error":{"code","message"}}` and
/// nothing else, with the expected status and machine code.
#[track_caller]
fn assert_error(got: &(u16, Value), status: u16, code: &str) {
    let (got_status, body) = got;
    assert_eq!(*got_status, status, "status for {body}");
    assert_error_shape(body);
    assert_eq!(body["error"]["code"], code, "{body}");
}

#[track_caller]
fn assert_error_shape(body: &Value) {
    let top = body
        .as_object()
        .unwrap_or_else(|| panic!("error body is not a JSON object: {body}"));
    assert_eq!(top.len(), 1, "only `error` at the top level: {body}");
    let err = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("`error` is not an object: {body}"));
    let code = err.get("code").and_then(Value::as_str).unwrap_or("");
    assert!(
        !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
        "`error.code` is a machine code: {body}"
    );
    let message = err.get("message").and_then(Value::as_str).unwrap_or("");
    assert!(!message.is_empty(), "`error.message` is human text: {body}");
}

/// One admin request with full control over the auth header and raw body.
async fn raw(
    server: &Server,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    let mut req = client().request(method.parse().unwrap(), server.admin_url(path));
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, json)
}

/// A blocking edge GET (usable inside `eventually`): status and Location.
fn edge_get_blocking(server: &Server, path: &str) -> Option<(u16, Option<String>)> {
    let mut s = std::net::TcpStream::connect(server.edge).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let head = text.split("\r\n\r\n").next()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let location = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("location")
            .then(|| v.trim().to_owned())
    });
    Some((status, location))
}

async fn edge_status(server: &Server, code: &str) -> u16 {
    client()
        .get(server.edge_url(&format!("/{code}")))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Mints a token with the CLI; returns (id, token) once the server takes it.
async fn token_with_id(server: &Server, tenant: &str) -> (String, String) {
    let out = server.cli(&["token", "create", "--tenant", tenant]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let first: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    let id = first["id"].as_str().unwrap().to_owned();
    let token = stdout.lines().last().unwrap().trim().to_owned();
    let bearer = format!("Bearer {token}");
    let valid = poll(PATIENCE, || async {
        raw(server, "GET", "/v1/links?limit=1", Some(&bearer), None)
            .await
            .0
            == 200
    })
    .await;
    assert!(valid, "a fresh token never became valid");
    (id, token)
}

/// Async polling, for conditions that need an await to check.
async fn poll<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[track_caller]
fn assert_rfc3339_utc(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    assert!(s.ends_with('Z'), "UTC with Z: {s}");
    assert!(
        chrono::DateTime::parse_from_rfc3339(s).is_ok(),
        "not RFC 3339: {s}"
    );
}

// ---- create ---------------------------------------------------------------

#[tokio::test]
async fn creating_a_link_answers_201_with_the_whole_link() {
    let server = Server::start();
    let api = setup(&server).await;
    let (status, link) = api
        .post(
            "/v1/links",
            json!({
                "destination": "https://shop.example/p?x=1",
                "code": "spring-sale",
                "redirect": 307,
                "expires_at": "2099-01-02T03:04:05Z",
                "tags": ["email", "spring"],
                "passthrough": false,
            }),
        )
        .await;
    assert_eq!(status, 201, "{link}");
    let fields: HashSet<&str> = link
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in [
        "code",
        "short_url",
        "destination",
        "tenant",
        "redirect",
        "created_at",
        "updated_at",
        "expires_at",
        "disabled",
        "tags",
        "passthrough",
    ] {
        assert!(fields.contains(key), "`{key}` missing from {link}");
    }
    assert_eq!(link["code"], "spring-sale");
    assert_eq!(link["short_url"], "http://localhost:8080/spring-sale");
    assert_eq!(link["destination"], "https://shop.example/p?x=1");
    assert_eq!(link["tenant"], "acme");
    assert_eq!(link["redirect"], 307);
    assert_eq!(link["expires_at"], "2099-01-02T03:04:05Z");
    assert_eq!(link["disabled"], false);
    assert_eq!(link["tags"], json!(["email", "spring"]));
    assert_eq!(link["passthrough"], false);
    assert_rfc3339_utc(&link["created_at"]);
    assert_rfc3339_utc(&link["updated_at"]);
    // It redirects as asked.
    let r = client()
        .get(server.edge_url("/spring-sale?q=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(r.headers()["location"], "https://shop.example/p?x=1");
}

#[tokio::test]
async fn omitted_fields_get_their_documented_defaults() {
    let server = Server::start();
    let api = setup(&server).await;
    let link = api.link(json!({"destination": "https://x.example/"})).await;
    assert_eq!(link["tenant"], "acme");
    assert_eq!(link["redirect"], 302);
    assert_eq!(link["expires_at"], Value::Null);
    assert_eq!(link["disabled"], false);
    assert_eq!(link["tags"], json!([]));
    assert_eq!(link["passthrough"], true);
    assert_eq!(link["created_at"], link["updated_at"]);
}

#[tokio::test]
async fn random_codes_are_eight_base62_chars_and_all_differ() {
    let server = Server::start();
    let api = setup(&server).await;
    let mut seen = HashSet::new();
    for _ in 0..30 {
        let link = api.link(json!({"destination": "https://x.example/"})).await;
        let code = link["code"].as_str().unwrap().to_owned();
        assert_eq!(code.len(), 8, "{code}");
        assert!(code.chars().all(|c| BASE62.contains(c)), "{code}");
        assert_eq!(link["short_url"], format!("http://localhost:8080/{code}"));
        assert!(seen.insert(code.clone()), "code {code} handed out twice");
    }
}

#[tokio::test]
async fn a_taken_custom_code_is_409_code_taken() {
    let server = Server::start();
    let api = setup(&server).await;
    api.link(json!({"code": "mine", "destination": "https://a.example/"}))
        .await;
    let again = api
        .post(
            "/v1/links",
            json!({"code": "mine", "destination": "https://b.example/"}),
        )
        .await;
    assert_error(&again, 409, "code_taken");
    // The first link is untouched.
    let (_, link) = api.get("/v1/links/mine").await;
    assert_eq!(link["destination"], "https://a.example/");
}

#[tokio::test]
async fn destinations_that_are_not_safe_absolute_http_urls_are_422_invalid_destination() {
    let server = Server::start();
    let api = setup(&server).await;
    let too_long = format!("https://x.example/{}", "a".repeat(2048 - 18 + 1));
    assert_eq!(too_long.len(), 2049);
    let cases = [
        "/x",
        "//evil.example/x",
        "example.com",
        "javascript:alert(1)",
        "data:text/html,x",
        "ftp://x/",
        "https://u:p@x.example/",
        "https://u@x.example/",
        "https://x.example/\r\nSet-Cookie: a=b",
        "https://x.example/\0",
        "",
        too_long.as_str(),
    ];
    for dest in cases {
        let got = api.post("/v1/links", json!({"destination": dest})).await;
        assert_error(&got, 422, "invalid_destination");
    }
    // Nothing was stored for any of them.
    let (status, list) = api.get("/v1/links").await;
    assert_eq!(status, 200);
    assert_eq!(list["links"], json!([]), "{list}");
}

#[tokio::test]
async fn a_destination_of_exactly_2048_bytes_is_accepted() {
    let server = Server::start();
    let api = setup(&server).await;
    let dest = format!("https://x.example/{}", "a".repeat(2048 - 18));
    assert_eq!(dest.len(), 2048);
    let link = api.link(json!({"destination": dest})).await;
    assert_eq!(link["destination"], dest);
}

#[tokio::test]
async fn the_stored_destination_is_the_normalised_url() {
    let server = Server::start();
    let api = setup(&server).await;
    let cases = [
        ("HTTPS://Example.COM", "https://example.com/"),
        ("http://example.com/a b?q=1", "http://example.com/a%20b?q=1"),
        ("https://example.com:443/x", "https://example.com/x"),
    ];
    for (input, stored) in cases {
        let link = api.link(json!({"destination": input})).await;
        assert_eq!(link["destination"], stored, "{input}");
        let code = link["code"].as_str().unwrap();
        let (_, got) = api.get(&format!("/v1/links/{code}")).await;
        assert_eq!(got["destination"], stored, "{input}");
    }
}

#[tokio::test]
async fn invalid_codes_are_422_invalid_code() {
    let server = Server::start();
    let api = setup(&server).await;
    let long = "x".repeat(65);
    for code in ["a_b", long.as_str(), "", "a/b", "a.b", "ü", "a b", "_x"] {
        let got = api
            .post(
                "/v1/links",
                json!({"code": code, "destination": "https://x.example/"}),
            )
            .await;
        assert_error(&got, 422, "invalid_code");
    }
    // 64 characters is the longest allowed.
    let max = "y".repeat(64);
    let link = api
        .link(json!({"code": max, "destination": "https://x.example/"}))
        .await;
    assert_eq!(link["code"], max);
}

#[tokio::test]
async fn redirect_statuses_other_than_301_302_307_308_are_422_invalid_redirect() {
    let server = Server::start();
    let api = setup(&server).await;
    for redirect in [303, 300, 304, 200, 404, 0] {
        let got = api
            .post(
                "/v1/links",
                json!({"destination": "https://x.example/", "redirect": redirect}),
            )
            .await;
        assert_error(&got, 422, "invalid_redirect");
    }
    for redirect in [301, 302, 307, 308] {
        let link = api
            .link(json!({"destination": "https://x.example/", "redirect": redirect}))
            .await;
        assert_eq!(link["redirect"], redirect);
    }
}

#[tokio::test]
async fn malformed_expires_at_is_422_invalid_expires_at() {
    let server = Server::start();
    let api = setup(&server).await;
    for bad in [
        "tomorrow",
        "2026-13-01T00:00:00Z",
        "2026-01-01 00:00",
        "",
        "1767225600",
    ] {
        let got = api
            .post(
                "/v1/links",
                json!({"destination": "https://x.example/", "expires_at": bad}),
            )
            .await;
        assert_error(&got, 422, "invalid_expires_at");
    }
    // An offset is accepted and answered in UTC.
    let link = api
        .link(
            json!({"destination": "https://x.example/", "expires_at": "2099-06-01T12:00:00+02:00"}),
        )
        .await;
    assert_eq!(link["expires_at"], "2099-06-01T10:00:00Z");
}

#[tokio::test]
async fn unknown_fields_and_invalid_json_are_400_invalid_json() {
    let server = Server::start();
    let api = setup(&server).await;
    let bearer = format!("Bearer {}", api.token);
    api.link(json!({"code": "p", "destination": "https://x.example/"}))
        .await;
    let unknown = api
        .post(
            "/v1/links",
            json!({"destination": "https://x.example/", "destnation": "typo"}),
        )
        .await;
    assert_error(&unknown, 400, "invalid_json");
    let unknown_patch = api.patch("/v1/links/p", json!({"colour": "red"})).await;
    assert_error(&unknown_patch, 400, "invalid_json");
    let unknown_batch = api
        .post("/v1/links/batch", json!({"links": [], "extra": 1}))
        .await;
    assert_error(&unknown_batch, 400, "invalid_json");
    let bodies: [&[u8]; 6] = [
        b"{",
        b"",
        b"not json",
        b"[]",
        b"{\"destination\": \"https://x.example/\",}",
        b"\xff\xfe{}",
    ];
    for (method, path) in [
        ("POST", "/v1/links"),
        ("PATCH", "/v1/links/p"),
        ("POST", "/v1/links/batch"),
    ] {
        for body in bodies {
            let got = raw(&server, method, path, Some(&bearer), Some(body.to_vec())).await;
            assert_error(&got, 400, "invalid_json");
        }
    }
    // The link survived every bad PATCH.
    let (_, link) = api.get("/v1/links/p").await;
    assert_eq!(link["destination"], "https://x.example/");
}

// ---- read, update, delete ---------------------------------------------------

#[tokio::test]
async fn a_link_can_be_read_patched_and_deleted() {
    let server = Server::start();
    let api = setup(&server).await;
    let created = api
        .link(json!({"code": "life", "destination": "https://one.example/"}))
        .await;
    let (status, got) = api.get("/v1/links/life").await;
    assert_eq!(status, 200);
    assert_eq!(got, created);

    // destination
    let (status, patched) = api
        .patch(
            "/v1/links/life",
            json!({"destination": "HTTPS://Two.Example/path"}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["destination"], "https://two.example/path");
    assert_eq!(patched["created_at"], created["created_at"]);
    assert!(patched["updated_at"].as_str() >= created["updated_at"].as_str());
    assert_eq!(api.get("/v1/links/life").await.1, patched);

    // disabled
    let (status, patched) = api.patch("/v1/links/life", json!({"disabled": true})).await;
    assert_eq!(status, 200);
    assert_eq!(patched["disabled"], true);
    assert_eq!(edge_status(&server, "life").await, 410);
    let (_, patched) = api
        .patch("/v1/links/life", json!({"disabled": false}))
        .await;
    assert_eq!(patched["disabled"], false);
    assert_eq!(edge_status(&server, "life").await, 302);

    // expires_at: a past expiry makes it gone, null clears it
    let (status, patched) = api
        .patch(
            "/v1/links/life",
            json!({"expires_at": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(patched["expires_at"], "2020-01-01T00:00:00Z");
    assert_eq!(edge_status(&server, "life").await, 410);
    let (status, patched) = api
        .patch("/v1/links/life", json!({"expires_at": null}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(patched["expires_at"], Value::Null);
    assert_eq!(edge_status(&server, "life").await, 302);

    // redirect
    let (status, patched) = api.patch("/v1/links/life", json!({"redirect": 308})).await;
    assert_eq!(status, 200);
    assert_eq!(patched["redirect"], 308);
    assert_eq!(edge_status(&server, "life").await, 308);

    // An empty PATCH changes nothing the link shows.
    let (status, same) = api.patch("/v1/links/life", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(same["destination"], "https://two.example/path");
    assert_eq!(same["redirect"], 308);

    // delete
    let (status, body) = api.delete("/v1/links/life").await;
    assert_eq!(status, 204);
    assert_eq!(body, Value::Null, "204 has no body");
    assert_error(&api.get("/v1/links/life").await, 404, "not_found");
    assert_error(
        &api.patch("/v1/links/life", json!({"disabled": false}))
            .await,
        404,
        "not_found",
    );
    assert_error(&api.delete("/v1/links/life").await, 404, "not_found");
    assert_error(&api.get("/v1/links/life/stats").await, 404, "not_found");
    assert_eq!(edge_status(&server, "life").await, 410);
    let (_, list) = api.get("/v1/links").await;
    assert_eq!(list["links"], json!([]), "deleted links are not listed");
}

#[tokio::test]
async fn a_deleted_code_is_gone_on_the_edge_and_never_handed_out_again() {
    let server = Server::start();
    let api = setup(&server).await;
    api.link(json!({"code": "once", "destination": "https://x.example/"}))
        .await;
    assert_eq!(api.delete("/v1/links/once").await.0, 204);
    assert_eq!(edge_status(&server, "once").await, 410);
    let again = api
        .post(
            "/v1/links",
            json!({"code": "once", "destination": "https://y.example/"}),
        )
        .await;
    assert_error(&again, 409, "code_taken");
    assert_eq!(edge_status(&server, "once").await, 410);
}

#[tokio::test]
async fn unknown_codes_are_404_for_every_verb() {
    let server = Server::start();
    let api = setup(&server).await;
    assert_error(&api.get("/v1/links/nope").await, 404, "not_found");
    assert_error(
        &api.patch("/v1/links/nope", json!({"disabled": true})).await,
        404,
        "not_found",
    );
    assert_error(&api.delete("/v1/links/nope").await, 404, "not_found");
    assert_error(&api.get("/v1/links/nope/stats").await, 404, "not_found");
}

#[tokio::test]
async fn patch_validates_like_create_and_leaves_the_link_unchanged_on_error() {
    let server = Server::start();
    let api = setup(&server).await;
    let created = api
        .link(json!({"code": "keep", "destination": "https://x.example/"}))
        .await;
    let cases = [
        (
            json!({"destination": "javascript:alert(1)"}),
            "invalid_destination",
        ),
        (
            json!({"destination": "https://u:p@x.example/"}),
            "invalid_destination",
        ),
        (
            json!({"destination": "https://x.example/\r\nX: y"}),
            "invalid_destination",
        ),
        (json!({"redirect": 303}), "invalid_redirect"),
        (json!({"expires_at": "soon"}), "invalid_expires_at"),
        // A valid field next to an invalid one: nothing is applied.
        (
            json!({"disabled": true, "redirect": 200}),
            "invalid_redirect",
        ),
    ];
    for (body, code) in cases {
        let got = api.patch("/v1/links/keep", body).await;
        assert_error(&got, 422, code);
    }
    assert_eq!(api.get("/v1/links/keep").await.1, created);
    assert_eq!(edge_status(&server, "keep").await, 302);
}

#[tokio::test]
async fn changes_are_live_on_the_edge_within_a_second() {
    let server = Server::start();
    let api = setup(&server).await;
    api.link(json!({"code": "live", "destination": "https://before.example/"}))
        .await;
    fn shows<'a>(server: &'a Server, want: (u16, Option<&'a str>)) -> impl FnMut() -> bool + 'a {
        move || {
            edge_get_blocking(server, "/live")
                .is_some_and(|(s, loc)| s == want.0 && loc.as_deref() == want.1)
        }
    }
    assert!(
        eventually(
            LIVE_WITHIN,
            shows(&server, (302, Some("https://before.example/")))
        )
        .await,
        "a new link is served"
    );
    api.patch(
        "/v1/links/live",
        json!({"destination": "https://after.example/"}),
    )
    .await;
    assert!(
        eventually(
            LIVE_WITHIN,
            shows(&server, (302, Some("https://after.example/")))
        )
        .await,
        "a new destination is served"
    );
    api.patch("/v1/links/live", json!({"redirect": 301})).await;
    assert!(
        eventually(
            LIVE_WITHIN,
            shows(&server, (301, Some("https://after.example/")))
        )
        .await,
        "a new redirect status is served"
    );
    api.patch("/v1/links/live", json!({"disabled": true})).await;
    assert!(
        eventually(LIVE_WITHIN, shows(&server, (410, None))).await,
        "disabling is live"
    );
    api.patch("/v1/links/live", json!({"disabled": false}))
        .await;
    assert!(
        eventually(
            LIVE_WITHIN,
            shows(&server, (301, Some("https://after.example/")))
        )
        .await,
        "re-enabling is live"
    );
    api.delete("/v1/links/live").await;
    assert!(
        eventually(LIVE_WITHIN, shows(&server, (410, None))).await,
        "deleting is live"
    );
}

// ---- list -----------------------------------------------------------------

/// Follows `next_cursor` from the first page; returns every code in order.
async fn list_all(api: &Api<'_>, limit: usize) -> Vec<String> {
    let mut codes = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let path = match &cursor {
            Some(c) => format!("/v1/links?limit={limit}&cursor={c}"),
            None => format!("/v1/links?limit={limit}"),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let links = page["links"].as_array().expect("links is an array");
        assert!(links.len() <= limit, "page larger than limit");
        codes.extend(links.iter().map(|l| l["code"].as_str().unwrap().to_owned()));
        match &page["next_cursor"] {
            Value::Null => return codes,
            Value::String(c) => {
                assert!(!links.is_empty(), "a cursor after an empty page");
                cursor = Some(c.clone());
            }
            other => panic!("next_cursor is {other}"),
        }
    }
    panic!("pagination never ended");
}

#[tokio::test]
async fn listing_pages_through_every_link_exactly_once() {
    let server = Server::start();
    let api = setup(&server).await;
    let mut want = HashSet::new();
    for i in 0..25 {
        let body = if i % 2 == 0 {
            json!({"code": format!("l{i:02}"), "destination": "https://x.example/"})
        } else {
            json!({"destination": "https://x.example/"})
        };
        want.insert(api.link(body).await["code"].as_str().unwrap().to_owned());
    }
    for limit in [1, 7, 10, 25, 1000] {
        let codes = list_all(&api, limit).await;
        let unique: HashSet<String> = codes.iter().cloned().collect();
        assert_eq!(
            codes.len(),
            unique.len(),
            "limit {limit}: a link listed twice"
        );
        assert_eq!(unique, want, "limit {limit}: every link listed");
    }
    // The default page holds all 25.
    let (status, page) = api.get("/v1/links").await;
    assert_eq!(status, 200);
    assert_eq!(page["links"].as_array().unwrap().len(), 25);
    assert_eq!(page["next_cursor"], Value::Null);
    // Listed links are whole links.
    assert_eq!(page["links"][0]["tenant"], "acme");
    assert!(page["links"][0]["short_url"].is_string());
}

#[tokio::test]
async fn list_limits_outside_1_to_1000_and_foreign_cursors_are_400_invalid_query() {
    let server = Server::start();
    let api = setup(&server).await;
    for query in [
        "limit=0",
        "limit=5000",
        "limit=1001",
        "limit=-1",
        "limit=ten",
        "limit=",
        "cursor=%%%",
        "cursor=not-base64!",
    ] {
        let got = api.get(&format!("/v1/links?{query}")).await;
        assert_error(&got, 400, "invalid_query");
    }
    assert_eq!(api.get("/v1/links?limit=1000").await.0, 200);
    assert_eq!(api.get("/v1/links?limit=1").await.0, 200);
}

// ---- batch ----------------------------------------------------------------

#[tokio::test]
async fn batch_results_are_in_request_order_and_mix_successes_and_errors() {
    let server = Server::start();
    let api = setup(&server).await;
    api.link(json!({"code": "taken", "destination": "https://x.example/"}))
        .await;
    let (status, body) = api
        .post(
            "/v1/links/batch",
            json!({"links": [
                {"code": "b1", "destination": "https://one.example/"},
                {"destination": "javascript:alert(1)"},
                {"destination": "HTTPS://Two.Example"},
                {"code": "a_b", "destination": "https://x.example/"},
                {"code": "b1", "destination": "https://dup.example/"},
                {"code": "taken", "destination": "https://x.example/"},
                {"destination": "https://x.example/", "redirect": 303},
                {"code": "b2", "destination": "https://three.example/", "redirect": 308, "tags": ["t"]},
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results array");
    assert_eq!(results.len(), 8);
    let ok = |i: usize| {
        assert_eq!(results[i]["status"], 201, "item {i}: {}", results[i]);
        &results[i]["link"]
    };
    let err = |i: usize, status: u16, code: &str| {
        assert_eq!(results[i]["status"], status, "item {i}: {}", results[i]);
        assert_error_shape(&json!({"error": results[i]["error"]}));
        assert_eq!(results[i]["error"]["code"], code, "item {i}");
    };
    assert_eq!(ok(0)["code"], "b1");
    err(1, 422, "invalid_destination");
    assert_eq!(ok(2)["destination"], "https://two.example/");
    err(3, 422, "invalid_code");
    // A code taken earlier in the same batch, or before it: as for one create.
    err(4, 409, "code_taken");
    err(5, 409, "code_taken");
    err(6, 422, "invalid_redirect");
    assert_eq!(ok(7)["code"], "b2");
    assert_eq!(ok(7)["redirect"], 308);
    // Successes are stored and served; the first b1 is the one kept.
    assert_eq!(
        api.get("/v1/links/b1").await.1["destination"],
        "https://one.example/"
    );
    let random = ok(2)["code"].as_str().unwrap();
    assert_eq!(api.get(&format!("/v1/links/{random}")).await.0, 200);
    assert_eq!(edge_status(&server, "b2").await, 308);
    assert_eq!(list_all(&api, 1000).await.len(), 4);
}

#[tokio::test]
async fn a_batch_of_1000_is_accepted_and_1001_is_422_batch_too_large() {
    let server = Server::start();
    let api = setup(&server).await;
    let items = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|_| json!({"destination": "https://x.example/"}))
            .collect()
    };
    let too_many = api
        .post("/v1/links/batch", json!({"links": items(1001)}))
        .await;
    assert_error(&too_many, 422, "batch_too_large");
    assert_eq!(list_all(&api, 1000).await.len(), 0, "nothing of it stored");
    let (status, body) = api
        .post("/v1/links/batch", json!({"links": items(1000)}))
        .await;
    assert_eq!(status, 200);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 1000);
    assert!(results.iter().all(|r| r["status"] == 201));
    assert_eq!(list_all(&api, 1000).await.len(), 1000);
    // An empty batch is an empty answer.
    let (status, body) = api.post("/v1/links/batch", json!({"links": []})).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"results": []}));
}

// ---- tenants and tokens -------------------------------------------------------

#[tokio::test]
async fn a_tenant_never_sees_or_changes_another_tenants_links() {
    let server = Server::start();
    let a = Api::new(&server, server.token("tenant-a"));
    let b = Api::new(&server, server.token("tenant-b"));
    let b_link = b
        .link(json!({"code": "bees", "destination": "https://b.example/"}))
        .await;
    a.link(json!({"code": "ants", "destination": "https://a.example/"}))
        .await;

    assert_error(&a.get("/v1/links/bees").await, 404, "not_found");
    assert_error(
        &a.patch(
            "/v1/links/bees",
            json!({"destination": "https://evil.example/"}),
        )
        .await,
        404,
        "not_found",
    );
    assert_error(
        &a.patch("/v1/links/bees", json!({"disabled": true})).await,
        404,
        "not_found",
    );
    assert_error(&a.delete("/v1/links/bees").await, 404, "not_found");
    assert_error(&a.get("/v1/links/bees/stats").await, 404, "not_found");
    // Refusals look exactly like a code that does not exist.
    assert_eq!(
        a.get("/v1/links/bees").await,
        a.get("/v1/links/nothing-here").await
    );

    let a_codes = list_all(&a, 1).await;
    assert_eq!(a_codes, vec!["ants".to_owned()]);
    let b_codes = list_all(&b, 1).await;
    assert_eq!(b_codes, vec!["bees".to_owned()]);

    // B's link is untouched and still served.
    assert_eq!(b.get("/v1/links/bees").await.1, b_link);
    let r = client().get(server.edge_url("/bees")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "https://b.example/");
    // A cannot take B's code either, and learns only that it is taken.
    let taken = a
        .post(
            "/v1/links",
            json!({"code": "bees", "destination": "https://a.example/"}),
        )
        .await;
    assert_error(&taken, 409, "code_taken");
}

#[tokio::test]
async fn a_tenant_token_cannot_create_links_for_another_tenant() {
    let server = Server::start();
    let api = setup(&server).await;
    let got = api
        .post(
            "/v1/links",
            json!({"destination": "https://x.example/", "tenant": "other"}),
        )
        .await;
    assert_error(&got, 403, "forbidden_tenant");
    let got = api
        .post(
            "/v1/links",
            json!({"destination": "https://x.example/", "tenant": "*"}),
        )
        .await;
    assert_eq!(got.0, 403, "{}", got.1);
    assert_error_shape(&got.1);
    let (status, body) = api
        .post(
            "/v1/links/batch",
            json!({"links": [{"destination": "https://x.example/", "tenant": "other"}]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["results"][0]["status"], 403);
    assert_eq!(body["results"][0]["error"]["code"], "forbidden_tenant");
    assert!(list_all(&api, 100).await.is_empty());
    // Naming its own tenant is fine.
    let own = api
        .link(json!({"destination": "https://x.example/", "tenant": "acme"}))
        .await;
    assert_eq!(own["tenant"], "acme");
}

#[tokio::test]
async fn an_admin_token_sees_every_tenant_and_may_choose_the_tenant() {
    let server = Server::start();
    let admin = Api::new(&server, server.token("*"));
    let acme = setup(&server).await;
    acme.link(json!({"code": "acme-1", "destination": "https://a.example/"}))
        .await;
    let default = admin
        .link(json!({"code": "adm-1", "destination": "https://x.example/"}))
        .await;
    assert_eq!(default["tenant"], "default");
    let other = admin
        .link(json!({"code": "adm-2", "destination": "https://x.example/", "tenant": "globex"}))
        .await;
    assert_eq!(other["tenant"], "globex");
    let bad = admin
        .post(
            "/v1/links",
            json!({"destination": "https://x.example/", "tenant": "no spaces"}),
        )
        .await;
    assert_eq!(bad.0, 422, "{}", bad.1);
    assert_error_shape(&bad.1);

    let (status, link) = admin.get("/v1/links/acme-1").await;
    assert_eq!(status, 200);
    assert_eq!(link["tenant"], "acme");
    let (status, patched) = admin
        .patch(
            "/v1/links/acme-1",
            json!({"destination": "https://admin.example/"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(patched["tenant"], "acme", "patching keeps the tenant");
    assert_eq!(admin.get("/v1/links/acme-1/stats").await.0, 200);

    let mut all = list_all(&admin, 2).await;
    all.sort();
    assert_eq!(all, vec!["acme-1", "adm-1", "adm-2"]);
    assert_eq!(list_all(&acme, 10).await, vec!["acme-1"]);
    assert_eq!(admin.delete("/v1/links/adm-2").await.0, 204);
}

#[tokio::test]
async fn requests_without_a_valid_bearer_token_are_401_unauthorized() {
    let server = Server::start();
    let api = setup(&server).await;
    api.link(json!({"code": "sec", "destination": "https://x.example/"}))
        .await;
    let token = api.token.clone();
    let long = format!("Bearer {}", "x".repeat(10_000));
    let basic = format!("Basic {token}");
    let no_scheme = token.clone();
    let twice = format!("Bearer {token}{token}");
    let cases: [Option<&str>; 8] = [
        None,
        Some("Bearer ce_wrongwrongwrongwrongwrongwrongwrongwrongwro"),
        Some(&basic),
        Some("Bearer"),
        Some("Bearer "),
        Some(&no_scheme),
        Some(&twice),
        Some(&long),
    ];
    let requests: [(&str, &str, Option<Vec<u8>>); 6] = [
        ("GET", "/v1/links", None),
        ("GET", "/v1/links/sec", None),
        (
            "PATCH",
            "/v1/links/sec",
            Some(br#"{"disabled":true}"#.to_vec()),
        ),
        ("DELETE", "/v1/links/sec", None),
        (
            "POST",
            "/v1/links",
            Some(br#"{"destination":"https://x.example/"}"#.to_vec()),
        ),
        ("GET", "/v1/links/sec/stats", None),
    ];
    for auth in cases {
        for (method, path, body) in &requests {
            let got = raw(&server, method, path, auth, body.clone()).await;
            assert_error(&got, 401, "unauthorized");
        }
    }
    // Nothing changed.
    let (_, link) = api.get("/v1/links/sec").await;
    assert_eq!(link["disabled"], false);
    assert_eq!(list_all(&api, 100).await, vec!["sec"]);
}

#[tokio::test]
async fn a_revoked_token_is_401_unauthorized() {
    let server = Server::start();
    let (id, token) = token_with_id(&server, "acme").await;
    let keep = setup(&server).await;
    let bearer = format!("Bearer {token}");
    let out = server.cli(&["token", "revoke", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = poll(PATIENCE, || async {
        raw(&server, "GET", "/v1/links", Some(&bearer), None)
            .await
            .0
            == 401
    })
    .await;
    assert!(refused, "the revoked token kept working");
    assert_error(
        &raw(&server, "GET", "/v1/links", Some(&bearer), None).await,
        401,
        "unauthorized",
    );
    // Other tokens of the same tenant keep working.
    assert_eq!(keep.get("/v1/links").await.0, 200);
    // Revoking twice is an error from the CLI, not a silent success.
    assert!(!server.cli(&["token", "revoke", &id]).status.success());
}

// ---- protocol-level errors --------------------------------------------------------

#[tokio::test]
async fn bodies_larger_than_max_body_bytes_are_413_payload_too_large() {
    let server = Server::start_with(&[("CLICKEDGE_ADMIN__MAX_BODY_BYTES", "4096")]);
    let api = setup(&server).await;
    let big = json!({"destination": format!("https://x.example/{}", "a".repeat(5000))});
    assert_error(&api.post("/v1/links", big).await, 413, "payload_too_large");
    let batch = json!({"links": (0..200).map(|_| json!({"destination": "https://x.example/"})).collect::<Vec<_>>()});
    assert_error(
        &api.post("/v1/links/batch", batch).await,
        413,
        "payload_too_large",
    );
    // Just under the limit is fine.
    let fits = json!({"destination": format!("https://x.example/{}", "a".repeat(1500))});
    assert_eq!(api.post("/v1/links", fits).await.0, 201);
    assert!(list_all(&api, 10).await.len() == 1);
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_are_405() {
    let server = Server::start();
    let api = setup(&server).await;
    api.link(json!({"code": "r", "destination": "https://x.example/"}))
        .await;
    let bearer = format!("Bearer {}", api.token);
    for path in [
        "/v2/links",
        "/v1/nothing",
        "/v1/links/r/clicks",
        "/v1/links/r/stats/x",
        "/",
        "/nope",
    ] {
        let got = raw(&server, "GET", path, Some(&bearer), None).await;
        assert_error(&got, 404, "not_found");
    }
    for (method, path) in [
        ("PUT", "/v1/links/r"),
        ("POST", "/v1/links/r"),
        ("PUT", "/v1/links"),
        ("DELETE", "/v1/links"),
        ("POST", "/v1/links/r/stats"),
        ("GET", "/v1/links/batch/x"),
    ] {
        let got = raw(&server, method, path, Some(&bearer), Some(b"{}".to_vec())).await;
        if path == "/v1/links/batch/x" {
            // `batch/x` is not a route at all.
            assert_error(&got, 404, "not_found");
        } else {
            assert_error(&got, 405, "method_not_allowed");
        }
    }
    // The link is intact after a PUT.
    assert_eq!(
        api.get("/v1/links/r").await.1["destination"],
        "https://x.example/"
    );
}

#[tokio::test]
async fn health_readiness_and_metrics_answer_without_a_token() {
    let server = Server::start();
    let api = setup(&server).await;
    // Some traffic so the request counters exist.
    api.link(json!({"code": "m", "destination": "https://x.example/"}))
        .await;
    client().get(server.edge_url("/m")).send().await.unwrap();
    for path in ["/healthz", "/readyz"] {
        let r = client().get(server.admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = client()
        .get(server.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("clickedge_http_requests_total"), "{text}");
    // And with a (wrong) token they still answer: they are not behind auth.
    let r = client()
        .get(server.admin_url("/healthz"))
        .header("authorization", "Bearer nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

// ---- stats ------------------------------------------------------------------

#[tokio::test]
async fn stats_count_clicks_humans_bots_and_unique_visitors() {
    let server = Server::start();
    let api = setup(&server).await;
    api.link(json!({"code": "st", "destination": "https://x.example/"}))
        .await;
    for ua in [BROWSER_UA, BROWSER_UA, BROWSER_UA, "curl/8.0"] {
        let r = client()
            .get(server.edge_url("/st"))
            .header("user-agent", ua)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302);
    }
    let deadline = std::time::Instant::now() + PATIENCE;
    let stats = loop {
        let (status, body) = api.get("/v1/links/st/stats?interval=hour").await;
        assert_eq!(status, 200, "{body}");
        if body["clicks"] == 4 || std::time::Instant::now() >= deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(stats["clicks"], 4, "stats never showed 4 clicks: {stats}");
    assert_eq!(stats["human_clicks"], 3, "{stats}");
    assert_eq!(stats["bot_clicks"], 1, "{stats}");
    assert_eq!(stats["unique_visitors"], 1, "{stats}");
    assert_eq!(stats["conversions"], 0, "{stats}");
    assert_eq!(stats["revenue"], json!({}), "{stats}");
    let series = stats["series"].as_array().expect("series array");
    assert!(!series.is_empty());
    let sum: u64 = series.iter().map(|p| p["clicks"].as_u64().unwrap()).sum();
    assert_eq!(sum, 4, "series sums to the total");
    let human: u64 = series
        .iter()
        .map(|p| p["human_clicks"].as_u64().unwrap())
        .sum();
    assert_eq!(human, 3);
    for p in series {
        assert_rfc3339_utc(&p["ts"]);
    }
    // Hourly buckets are an hour apart.
    if series.len() >= 2 {
        let t0 = chrono::DateTime::parse_from_rfc3339(series[0]["ts"].as_str().unwrap()).unwrap();
        let t1 = chrono::DateTime::parse_from_rfc3339(series[1]["ts"].as_str().unwrap()).unwrap();
        assert_eq!((t1 - t0).num_seconds(), 3600);
    }
    // A link nobody clicked has zeros.
    api.link(json!({"code": "quiet", "destination": "https://x.example/"}))
        .await;
    let (_, quiet) = api.get("/v1/links/quiet/stats").await;
    assert_eq!(quiet["clicks"], 0, "{quiet}");
    assert_eq!(quiet["unique_visitors"], 0, "{quiet}");
}

#[tokio::test]
async fn stats_ranges_accept_dates_and_rfc3339_and_refuse_bad_values() {
    let server = Server::start();
    let api = setup(&server).await;
    api.link(json!({"code": "rg", "destination": "https://x.example/"}))
        .await;
    let r = client()
        .get(server.edge_url("/rg"))
        .header("user-agent", BROWSER_UA)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let counted = poll(PATIENCE, || async {
        api.get("/v1/links/rg/stats").await.1["clicks"] == 1
    })
    .await;
    assert!(counted, "the click never reached the stats");

    let now = chrono::Utc::now();
    let today = now.format("%Y-%m-%d").to_string();
    let yesterday = (now - chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let hour_ago =
        (now - chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let in_an_hour =
        (now + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    // The same instants with an offset; `+` must be sent as %2B.
    let plus2 = chrono::FixedOffset::east_opt(2 * 3600).unwrap();
    let hour_ago_plus2 = (now - chrono::Duration::hours(1))
        .with_timezone(&plus2)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
        .replace('+', "%2B");
    let stats = |q: String| {
        let api = &api;
        async move {
            let (status, body) = api.get(&format!("/v1/links/rg/stats?{q}")).await;
            assert_eq!(status, 200, "{q}: {body}");
            body
        }
    };
    // A `to` date is inclusive: today..today holds today's click.
    let s = stats(format!("from={today}&to={today}&interval=hour")).await;
    assert_eq!(s["clicks"], 1, "{s}");
    assert_eq!(s["series"].as_array().unwrap().len(), 24, "{s}");
    let s = stats(format!("from={yesterday}&to={today}&interval=day")).await;
    assert_eq!(s["clicks"], 1, "{s}");
    assert_eq!(s["series"].as_array().unwrap().len(), 2, "{s}");
    let s = stats(format!("from={yesterday}&to={yesterday}")).await;
    assert_eq!(s["clicks"], 0, "yesterday saw no click: {s}");
    let s = stats(format!("from={hour_ago}&to={in_an_hour}&interval=hour")).await;
    assert_eq!(s["clicks"], 1, "{s}");
    let s = stats(format!(
        "from={hour_ago_plus2}&to={in_an_hour}&interval=hour"
    ))
    .await;
    assert_eq!(s["clicks"], 1, "{s}");
    assert_rfc3339_utc(&s["from"]);
    assert_rfc3339_utc(&s["to"]);

    for q in [
        "from=yesterday".to_owned(),
        "to=2026-13-01".to_owned(),
        "from=2026-02-30".to_owned(),
        "from=".to_owned(),
        "from=1767225600".to_owned(),
        "from=2026-01-01T00:00:00".to_owned(),
        "interval=week".to_owned(),
        // from >= to
        format!("from={today}T12:00:00Z&to={today}T12:00:00Z"),
        format!("from={in_an_hour}&to={hour_ago}"),
        format!("from={today}&to={yesterday}"),
    ] {
        let got = api.get(&format!("/v1/links/rg/stats?{q}")).await;
        assert_error(&got, 400, "invalid_query");
    }
}

/// A raw admin request (every header line as given); status, head, body.
fn admin_raw_blocking(server: &Server, head: &str) -> (u16, String, Value) {
    let mut s = std::net::TcpStream::connect(server.admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{head}Host: admin.test\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let (h, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let status = h.split(' ').nth(1).unwrap().parse().unwrap();
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, h.to_ascii_lowercase(), json)
}

#[tokio::test]
async fn two_authorization_headers_are_400_whichever_comes_first() {
    let server = Server::start();
    let api = setup(&server).await;
    let good = format!("Authorization: Bearer {}\r\n", api.token);
    let bad = "Authorization: Bearer not-a-token\r\n";
    for (first, second) in [
        (good.as_str(), bad),
        (bad, good.as_str()),
        (good.as_str(), good.as_str()),
    ] {
        let (status, _, body) = admin_raw_blocking(
            &server,
            &format!("GET /v1/links HTTP/1.1\r\n{first}{second}"),
        );
        assert_eq!(status, 400, "{first}{second}: {body}");
        assert_eq!(body["error"]["code"], "duplicate_header", "{body}");
        assert_error_shape(&body);
    }
    let (status, _, _) = admin_raw_blocking(&server, &format!("GET /v1/links HTTP/1.1\r\n{good}"));
    assert_eq!(status, 200);
}

#[tokio::test]
async fn every_admin_405_names_the_allowed_methods_in_allow() {
    let server = Server::start();
    let api = setup(&server).await;
    api.link(json!({"code": "r", "destination": "https://x.example/"}))
        .await;
    let auth = format!("Authorization: Bearer {}\r\n", api.token);
    for (method, path, allow) in [
        ("PUT", "/v1/links", "get, post"),
        ("PUT", "/v1/links/r", "get, patch, delete"),
        ("POST", "/v1/links/r/stats", "get"),
        ("DELETE", "/v1/reconciliation", "get"),
        ("POST", "/healthz", "get, head"),
        ("PUT", "/metrics", "get, head"),
    ] {
        let (status, head, body) = admin_raw_blocking(
            &server,
            &format!("{method} {path} HTTP/1.1\r\n{auth}Content-Length: 0\r\n"),
        );
        assert_eq!(status, 405, "{method} {path}: {body}");
        // The methods, in any order.
        let methods = |list: &str| {
            let mut m: Vec<String> = list.split(',').map(|m| m.trim().to_lowercase()).collect();
            m.sort();
            m
        };
        let got = head
            .lines()
            .find_map(|l| l.strip_prefix("allow: "))
            .unwrap_or_else(|| panic!("{method} {path}: no Allow in {head}"));
        assert_eq!(methods(got), methods(allow), "{method} {path}");
    }
}

#[tokio::test]
async fn a_macro_that_could_make_up_the_registrable_domain_is_422_naming_the_rule() {
    let server = Server::start();
    let api = setup(&server).await;
    for dest in [
        "https://{sub}/",
        "https://{sub}.example/",
        "https://%7Bsub%7D.example/",
        "https://x{sub}.shop.example/",
        "https://shop.{sub}.example/",
    ] {
        let got = api.post("/v1/links", json!({"destination": dest})).await;
        assert_error(&got, 422, "invalid_destination");
        let message = got.1["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("whole label") && message.contains("two fixed labels"),
            "{message}"
        );
    }
    // PATCH is held to the same rule.
    api.link(json!({"code": "m", "destination": "https://{sub}.shop.example/"}))
        .await;
    let got = api
        .patch("/v1/links/m", json!({"destination": "https://{sub}/"}))
        .await;
    assert_error(&got, 422, "invalid_destination");
    // The shape that is allowed keeps a visitor under the operator's domain.
    let r = client()
        .get(server.edge_url("/m?sub=evil.example"))
        .header("user-agent", BROWSER_UA)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with("https://evil.example.shop.example/"),
        "{location}"
    );
}

#[tokio::test]
async fn a_tenant_finds_only_a_budget_of_other_tenants_codes_taken_then_gets_429_unlooked() {
    let server = Server::start_with(&[
        ("CLICKEDGE_ADMIN__CODE_CONFLICTS_BURST", "5"),
        ("CLICKEDGE_ADMIN__CODE_CONFLICTS_PER_SEC", "0.001"),
    ]);
    let owner = Api::new(&server, server.token("owner"));
    let prober = Api::new(&server, server.token("prober"));
    let link = |code: String| json!({"code": code, "destination": "https://x.example/"});
    let taken: Vec<Value> = (0..10).map(|i| link(format!("secret-{i}"))).collect();
    let (status, v) = owner.post("/v1/links/batch", json!({"links": taken})).await;
    assert_eq!(status, 200, "{v}");

    // 10 of the owner's codes, then 10 free ones, in one batch of guesses.
    let mut guesses: Vec<Value> = (0..10).map(|i| link(format!("secret-{i}"))).collect();
    guesses.extend((0..10).map(|i| link(format!("free-{i}"))));
    let (status, v) = prober
        .post("/v1/links/batch", json!({"links": guesses}))
        .await;
    assert_eq!(status, 200, "{v}");
    let statuses: Vec<u64> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    // The first 5 conflicts are answered; after them nothing is looked up:
    // taken and free codes alike are 429.
    assert_eq!(statuses[..5], [409; 5], "{v}");
    assert!(statuses[5..].iter().all(|&s| s == 429), "{statuses:?}");
    assert_eq!(
        v["results"][19]["error"]["code"], "too_many_conflicts",
        "{v}"
    );
    // A single create is refused the same way, with Retry-After, and a
    // random code is still created.
    let r = prober
        .http
        .post(server.admin_url("/v1/links"))
        .bearer_auth(&prober.token)
        .json(&link("free-x".into()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    prober
        .link(json!({"destination": "https://x.example/"}))
        .await;
    // The owner's own codes cost the owner nothing; admin tokens are free.
    for _ in 0..10 {
        let got = owner.post("/v1/links", link("secret-0".into())).await;
        assert_error(&got, 409, "code_taken");
    }
    let admin = Api::new(&server, server.token("*"));
    for _ in 0..10 {
        let got = admin.post("/v1/links", link("secret-1".into())).await;
        assert_error(&got, 409, "code_taken");
    }
    let metrics = server.metrics_text().await;
    let value = |outcome: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with("clickedge_admin_code_conflicts_total") && l.contains(outcome))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    assert_eq!(value("taken_by_other_tenant"), Some(5), "{metrics}");
    assert_eq!(value("\"refused\""), Some(16), "{metrics}");
}
