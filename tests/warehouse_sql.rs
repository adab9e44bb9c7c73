//! The project's ClickHouse SQL — schema, stats queries, retention — runs
//! on Debian's ClickHouse 18.16 and on current ClickHouse (the 26.x engine
//! in-process through `chdb`), with the same answers on both.

mod common;

use std::process::Command;

use clickedge::stats::Interval;
use clickedge::warehouse;
use common::services::ClickHouse;

const DB: &str = "ce";
/// 2026-03-04T00:00:00Z
const DAY_MS: i64 = 1_772_582_400_000;

/// Known rows: `a` twice (a re-delivery), `b` a bot, `c` the same visitor
/// as `a`, `d` another visitor an hour later, `old` 100 days earlier.
fn statements() -> Vec<String> {
    let mut sql = warehouse::schema(DB);
    let row = |id: &str, ts: &str, ms: i64, ip: &str, bot: u8| {
        format!(
            "('{id}', '{ts}', {ms}, 'acme', 'x', 'https://shop.example/', '{ip}', 'UA', '', '', {bot}, '', 'n1', 7)"
        )
    };
    sql.push(format!(
        "INSERT INTO {DB}.clicks VALUES {}, {}, {}, {}, {}, {}",
        row("a", "2026-03-04 05:00:00", DAY_MS + 5 * 3_600_000, "h1", 0),
        row("a", "2026-03-04 05:00:00", DAY_MS + 5 * 3_600_000, "h1", 0),
        row(
            "b",
            "2026-03-04 05:10:00",
            DAY_MS + 5 * 3_600_000 + 600_000,
            "h9",
            1
        ),
        row(
            "c",
            "2026-03-04 05:20:00",
            DAY_MS + 5 * 3_600_000 + 1_200_000,
            "h1",
            0
        ),
        row("d", "2026-03-04 06:00:00", DAY_MS + 6 * 3_600_000, "h2", 0),
        row(
            "old",
            "2025-11-24 06:00:00",
            DAY_MS - 100 * 86_400_000,
            "h3",
            0
        ),
    ));
    sql
}

/// Queries whose answers must match across the two engines.
fn queries() -> Vec<String> {
    let (total, hourly) =
        warehouse::stats_sql("acme", "x", DAY_MS, DAY_MS + 86_400_000, Interval::Hour);
    let (_, daily) = warehouse::stats_sql(
        "acme",
        "x",
        DAY_MS - 200 * 86_400_000,
        DAY_MS + 86_400_000,
        Interval::Day,
    );
    let in_db = |q: String| q.replace(" FROM clicks ", &format!(" FROM {DB}.clicks "));
    vec![
        in_db(total),
        in_db(hourly),
        in_db(daily),
        warehouse::retained_parts_sql(DB),
    ]
}

fn retention() -> Vec<String> {
    vec![
        warehouse::drop_partition_sql(DB, "clicks", "20251124"),
        format!("SELECT uniqExact(click_id), countIf(click_id = 'old') FROM {DB}.clicks"),
    ]
}

/// Runs statements through chdb; returns the answers of all of them.
fn run_chdb(statements: &[String]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import json, sys
from chdb import session
s = session.Session(sys.argv[1])
for q in json.load(sys.stdin):
    r = s.query(q, "TabSeparated")
    print(json.dumps(str(r)))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script, dir.path().to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    serde_json::to_writer(child.stdin.take().unwrap(), statements).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "chdb failed (is it installed? `pip install chdb`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<String>(l).unwrap())
        .collect()
}

fn run_server(ch: &ClickHouse, statements: &[String]) -> Vec<String> {
    statements.iter().map(|q| ch.query(q)).collect()
}

#[test]
fn schema_stats_and_retention_sql_agree_on_clickhouse_18_and_current() {
    let all: Vec<String> = statements()
        .into_iter()
        .chain(queries())
        .chain(retention())
        .collect();
    let ch = ClickHouse::start();
    assert!(ch.query("SELECT version()").starts_with("18.16"));
    let old = run_server(&ch, &all);
    let new = run_chdb(&all);
    assert!(
        new.len() == all.len(),
        "chdb answered {} of {} statements",
        new.len(),
        all.len()
    );
    let answers = statements().len();
    for (i, q) in all.iter().enumerate().skip(answers) {
        assert_eq!(
            old[i].trim(),
            new[i].trim(),
            "18.16 and current disagree on:\n{q}"
        );
    }
    let q = answers;
    // Totals: a (once), b, c, d — human a, c, d — visitors h1, h2.
    assert_eq!(old[q].trim(), "0\t4\t3\t2");
    // Hourly: 05:00 has a, b, c (human a, c; visitor h1); 06:00 has d.
    let h5 = DAY_MS + 5 * 3_600_000;
    let h6 = h5 + 3_600_000;
    assert_eq!(old[q + 1].trim(), format!("{h5}\t3\t2\t1\n{h6}\t1\t1\t1"));
    // Daily over 200 days: the old click's day and 2026-03-04.
    let old_day = DAY_MS - 100 * 86_400_000;
    assert_eq!(
        old[q + 2].trim(),
        format!("{old_day}\t1\t1\t1\n{DAY_MS}\t4\t3\t2")
    );
    assert_eq!(old[q + 3].trim(), "clicks\t20251124\nclicks\t20260304");
    // After dropping the old day's partition: four distinct, none old.
    assert_eq!(old.last().unwrap().trim(), "4\t0");
}
