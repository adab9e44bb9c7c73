//! `GET /v1/openapi.json` (CONTRACT.md "v2 additions — Operator console,
//! API description, ops files"): the document parses, describes exactly the
//! routes the admin router serves (its route table, so the two cannot
//! drift), names the error shape and the bearer scheme, and schemathesis
//! finds no 5xx and no answer that breaks it against a live `serve`.
//!
//! schemathesis comes from PyPI (scripts/test installs it). Without it the
//! live check is skipped with a note, unless `CLICKEDGE_REQUIRE_TOOLS=1`
//! (scripts/test sets it), where a missing tool fails the test.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use clickedge::admin::routes::ROUTES;
use common::{client, Api, Server};
use serde_json::{json, Value};

/// Whether a missing external tool is a failure rather than a skip.
fn tools_required() -> bool {
    std::env::var("CLICKEDGE_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

async fn document(server: &Server) -> Value {
    let resp = client()
        .get(server.admin_url("/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).expect("the document is JSON")
}

/// (METHOD, path) of every operation in a document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        for (method, _) in item.as_object().unwrap() {
            ops.insert((method.to_uppercase(), path.clone()));
        }
    }
    ops
}

#[tokio::test]
async fn the_document_describes_exactly_the_routes_the_router_serves() {
    let server = Server::start();
    let doc = document(&server).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "OpenAPI 3.1: {}",
        doc["openapi"]
    );
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.as_str().to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(operations(&doc), served);
    // Every route in the table answers something other than "no such
    // route" on the live server (the table is what the router matches).
    let http = client();
    for r in ROUTES {
        let path = r.path.replace("{code}", "no-such-code");
        let resp = http
            .request(r.method.clone(), server.admin_url(&path))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(
            !(status == 404 && body["error"]["message"] == "route not found"),
            "{} {} is in the table but not served",
            r.method,
            r.path
        );
        if r.auth {
            assert_eq!(status, 401, "{} {} needs a token", r.method, r.path);
        }
    }
}

#[tokio::test]
async fn the_error_shape_and_the_bearer_scheme_are_described_and_used() {
    let server = Server::start();
    let doc = document(&server).await;
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer_token"]["type"], "http");
    assert_eq!(schemes["bearer_token"]["scheme"], "bearer");
    let error = &doc["components"]["schemas"]["ErrorAnswer"];
    assert_eq!(error["required"], json!(["error"]));
    let body = &doc["components"]["schemas"]["ErrorBody"];
    let mut required: Vec<&str> = body["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort_unstable();
    assert_eq!(required, ["code", "message"]);
    for r in ROUTES {
        let op = &doc["paths"][r.path][r.method.as_str().to_lowercase()];
        let secured = op["security"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s.get("bearer_token").is_some()));
        assert_eq!(secured, r.auth, "{} {} security", r.method, r.path);
        let default = &op["responses"]["default"]["content"]["application/json"]["schema"];
        assert_eq!(
            default["$ref"], "#/components/schemas/ErrorAnswer",
            "{} {} answers other errors in the error shape",
            r.method, r.path
        );
        if r.auth {
            assert!(
                op["responses"]["401"].is_object(),
                "{} {} documents 401",
                r.method,
                r.path
            );
        }
    }
}

#[tokio::test]
async fn wrong_methods_are_405_with_allow_and_the_error_shape() {
    let server = Server::start();
    let resp = client()
        .put(server.admin_url("/v1/links/abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, PATCH, DELETE");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

/// schemathesis's command line, if it is installed.
fn schemathesis() -> Option<Command> {
    let probe = |cmd: &mut Command| {
        cmd.arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if probe(&mut Command::new("st")) {
        return Some(Command::new("st"));
    }
    let mut py = Command::new("python3");
    py.args(["-m", "schemathesis.cli"]);
    if probe(&mut py) {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "schemathesis.cli"]);
        return Some(cmd);
    }
    None
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_schema() {
    let Some(mut st) = schemathesis() else {
        assert!(
            !tools_required(),
            "schemathesis is not installed (python3 -m pip install schemathesis)"
        );
        eprintln!("skipped: schemathesis is not installed");
        return;
    };
    let server = Server::start();
    let api = Api::new(&server, server.token("*"));
    // Something to find: links of two tenants, one with a known code.
    api.link(json!({"destination": "https://example.com/a", "code": "known", "tenant": "acme"}))
        .await;
    api.link(json!({"destination": "https://example.com/b", "tenant": "other"}))
        .await;
    let report = tempfile::tempdir().unwrap();
    let out = st
        .arg("run")
        .arg(server.admin_url("/v1/openapi.json"))
        .args(["--url", &server.admin_url("")])
        .args(["--header", &format!("Authorization: Bearer {}", api.token)])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance,\
             negative_data_rejection,ignored_auth,unsupported_method,\
             allow_header_conformance,missing_required_header",
        ])
        .args(["--max-examples", "60", "--seed", "18"])
        .args(["--workers", "1", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(report.path())
        .output()
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}\nserver log:\n{}",
        server.log_text()
    );
    assert!(!server.log_text().contains("admin: internal error"));
}
