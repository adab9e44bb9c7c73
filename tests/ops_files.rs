//! The ops files that ship in config/ (CONTRACT.md "v2 additions —
//! Operator console, API description, ops files"): the alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`), the
//! dashboard's queries parse as PromQL, and every metric name either file
//! uses is one the binary exports, as src/telemetry.rs names them and as a
//! live `serve` shows them on /metrics.
//!
//! promtool comes from Debian's `prometheus` package (scripts/test installs
//! it). Without it the promtool checks are skipped with a note, unless
//! `CLICKEDGE_REQUIRE_TOOLS=1` (scripts/test sets it).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Server;
use serde_json::Value;

const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn tools_required() -> bool {
    std::env::var("CLICKEDGE_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// `promtool`, or `None` (with the skip note) when it is not installed.
fn promtool() -> Option<Command> {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some(Command::new("promtool"));
    }
    assert!(
        !tools_required(),
        "promtool is not installed (apt-get install prometheus)"
    );
    eprintln!("skipped: promtool is not installed");
    None
}

#[track_caller]
fn assert_success(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `clickedge_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("clickedge_") {
        let start = i + at;
        let starts_word =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if starts_word {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// The metric names src/telemetry.rs declares (`pub const X: &str =
/// "clickedge_…";`), the one place that names every metric.
fn declared_metrics() -> BTreeSet<String> {
    let src = std::fs::read_to_string(repo("src/telemetry.rs")).unwrap();
    let names: BTreeSet<String> = src
        .lines()
        .filter(|l| l.trim_start().starts_with("pub const ") && l.contains(": &str = \"clickedge_"))
        .flat_map(metric_names)
        .collect();
    assert!(
        names.len() > 30,
        "telemetry.rs names its metrics: {names:?}"
    );
    names
}

/// The metric families a live `serve` shows (`# TYPE name kind`).
fn scraped_families(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

/// The PromQL expressions of the dashboard's panels.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(repo("config/grafana-dashboard.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(
                target["expr"]
                    .as_str()
                    .expect("a target has an expr")
                    .to_owned(),
            );
        }
    }
    assert!(exprs.len() > 20, "the dashboard has its panels");
    exprs
}

/// A base metric name for a used one: histogram series are named by their
/// family plus `_bucket`, `_sum` or `_count`.
fn family<'a>(used: &'a str, known: &BTreeSet<String>) -> Option<&'a str> {
    if known.contains(used) {
        return Some(used);
    }
    HISTOGRAM_SUFFIXES
        .iter()
        .filter_map(|s| used.strip_suffix(s))
        .find(|base| known.contains(*base))
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(mut check) = promtool() else { return };
    let out = check
        .args(["check", "rules"])
        .arg(repo("config/prometheus-alerts.yml"))
        .output()
        .unwrap();
    assert_success(&out, "promtool check rules");
    let out = Command::new("promtool")
        .args(["test", "rules", "prometheus-alerts.test.yml"])
        .current_dir(repo("config"))
        .output()
        .unwrap();
    assert_success(&out, "promtool test rules");
}

#[test]
fn every_dashboard_query_parses_as_promql() {
    let Some(mut check) = promtool() else { return };
    // Grafana's variables become what Grafana would put there; each query
    // becomes a recording rule, which promtool parses.
    let rules: Vec<Value> = dashboard_queries()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let expr = e
                .replace("$__rate_interval", "5m")
                .replace("$__range", "6h")
                .replace("$instance", ".*");
            serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": expr})
        })
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().unwrap();
    // JSON is YAML.
    let path = dir.path().join("dashboard-queries.yml");
    std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    let out = check.args(["check", "rules"]).arg(&path).output().unwrap();
    assert_success(&out, "promtool check rules (dashboard queries)");
}

#[tokio::test]
async fn every_metric_in_the_dashboard_and_the_rules_is_one_the_binary_exports() {
    let declared = declared_metrics();

    // What a live serve shows is all declared (so the declared list is the
    // binary's), and its histograms are histograms.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, not_after) = certificate(dir.path());
    let server = Server::start_with(&[
        ("CLICKEDGE_EDGE__TLS__LISTEN", "127.0.0.1:0"),
        ("CLICKEDGE_EDGE__TLS__CERT", cert.to_str().unwrap()),
        ("CLICKEDGE_EDGE__TLS__KEY", key.to_str().unwrap()),
    ]);
    // A redirect, so the latency histogram has a sample to show.
    let _ = common::client()
        .get(server.edge_url("/nothing-here"))
        .send()
        .await;
    let scraped = scraped_families(&server.metrics_text().await);
    let scraped_names: BTreeSet<String> = scraped.iter().map(|(n, _)| n.clone()).collect();
    for name in &scraped_names {
        assert!(
            declared.contains(name),
            "/metrics shows {name}, which telemetry.rs does not declare"
        );
    }

    let mut used = BTreeSet::new();
    for expr in dashboard_queries() {
        used.extend(metric_names(&expr));
    }
    let rules = std::fs::read_to_string(repo("config/prometheus-alerts.yml")).unwrap();
    let rule_names: BTreeSet<String> = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:") || l.starts_with("          "))
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(metric_names)
        .collect();
    assert!(
        rule_names.len() >= 10,
        "the rules use metrics: {rule_names:?}"
    );
    used.extend(rule_names);
    for name in &used {
        let base = family(name, &declared).unwrap_or_else(|| {
            panic!("{name} is used in config/ but the binary exports no such metric")
        });
        if base != name {
            // A `_bucket`/`_sum`/`_count` series: its family is a histogram.
            if let Some((_, kind)) = scraped.iter().find(|(n, _)| n == base) {
                assert_eq!(kind, "histogram", "{name} is used as a histogram series");
            }
        }
    }

    // The two gauges the certificate and salt alerts read are exported by
    // an embedded serve with TLS, with the values they claim.
    let text = server.metrics_text().await;
    let value = |metric: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(metric)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{metric} missing from /metrics:\n{text}"))
    };
    assert_eq!(
        value("clickedge_tls_certificate_expiry_timestamp_seconds"),
        not_after as f64
    );
    let rotation = value("clickedge_ip_salt_rotation_seconds");
    let epoch_start = value("clickedge_ip_salt_epoch_start_timestamp_seconds");
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(rotation > 0.0);
    assert!(
        epoch_start <= now && now - epoch_start <= rotation,
        "the salt in use began within the last rotation: {epoch_start} vs {now}"
    );
}

/// A self-signed certificate for localhost that expires at a known time;
/// returns (cert path, key path, notAfter as Unix seconds).
fn certificate(dir: &Path) -> (PathBuf, PathBuf, i64) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_after = rcgen::date_time_ymd(2031, 1, 2);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    let not_after = chrono::NaiveDate::from_ymd_opt(2031, 1, 2)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp();
    (cert_path, key_path, not_after)
}
