//! The project's ClickHouse SQL — schema, stats, conversions and
//! reconciliation queries, retention — runs
//! on Debian's ClickHouse 18.16 and on current ClickHouse (the 26.x engine
//! in-process through `chdb`), with the same answers on both.

mod common;

use std::process::Command;

use clickedge::stats::Interval;
use clickedge::warehouse::{self, conversions, conversions::Scope};
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
            "('{id}', '{ts}', {ms}, 'acme', 'x', 'https://shop.example/', '{ip}', 'UA', '', '', {bot}, '', 'n1', 7, 'DE', 'mobile', 'ios', -1, 0)"
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
    // The click-id lookup of `a`, `c` and `d` (and `a` re-delivered).
    let id_row = |id: &str, ts: &str, ms: i64| format!("('{id}', '{ts}', {ms}, 'acme', 'x', 0)");
    sql.push(format!(
        "INSERT INTO {DB}.click_ids VALUES {}, {}, {}, {}",
        id_row("a", "2026-03-04 05:00:00", DAY_MS + 5 * HOUR),
        id_row("a", "2026-03-04 05:00:00", DAY_MS + 5 * HOUR),
        id_row("c", "2026-03-04 05:20:00", DAY_MS + 5 * HOUR + 1_200_000),
        id_row("d", "2026-03-04 06:00:00", DAY_MS + 6 * HOUR),
    ));
    sql.push(format!(
        "INSERT INTO {DB}.conversions VALUES {}",
        ledger_rows().join(", ")
    ));
    sql
}

const HOUR: i64 = 3_600_000;

/// Ledger records as two nodes shipped them, with re-deliveries:
/// - `t1`: pending accepted on n1 (delivered twice), approved on n1, and
///   the pending retried on n2, which had not seen it (a cross-node
///   duplicate that n2 called `accepted`);
/// - `t2`: `unknown_click` on n2 for click `c`, which has loaded since;
/// - `t0`: first received the day before, approved on the day: outside a
///   range starting on the day;
/// - two `bad_auth` refusals, one delivered twice;
/// - `t5`: accepted for link `y`, left out of link `x`'s scope.
fn ledger_rows() -> Vec<String> {
    #[allow(clippy::too_many_arguments)]
    let rec = |id: &str,
               hour: i64,
               outcome: &str,
               txn: &str,
               status: &str,
               payout: &str,
               click: &str,
               code: &str,
               node: &str| {
        let ms = DAY_MS + hour * HOUR;
        let tenant = if code.is_empty() { "" } else { "acme" };
        format!(
            "('{id}', toDateTime({}, 'UTC'), {ms}, '{outcome}', 'kt', '{txn}', '{status}', '{payout}', \
             'USD', '{click}', {}, '{code}', '{tenant}', 0, '', '{node}')",
            ms / 1000,
            DAY_MS + 5 * HOUR
        )
    };
    vec![
        rec("r1", 7, "accepted", "t1", "pending", "1.50", "a", "x", "n1"),
        rec("r1", 7, "accepted", "t1", "pending", "1.50", "a", "x", "n1"),
        rec(
            "r2",
            8,
            "status_change",
            "t1",
            "approved",
            "2.25",
            "a",
            "x",
            "n1",
        ),
        rec("r3", 9, "accepted", "t1", "pending", "1.50", "a", "x", "n2"),
        rec(
            "r4",
            10,
            "unknown_click",
            "t2",
            "pending",
            "3",
            "c",
            "",
            "n2",
        ),
        rec("r5", -20, "accepted", "t0", "pending", "4", "a", "x", "n1"),
        rec(
            "r6",
            2,
            "status_change",
            "t0",
            "approved",
            "4",
            "a",
            "x",
            "n1",
        ),
        rec("r7", 11, "bad_auth", "", "", "", "", "", "n1"),
        rec("r7", 11, "bad_auth", "", "", "", "", "", "n1"),
        rec("r8", 12, "bad_auth", "", "", "", "", "", "n2"),
        rec("r9", 13, "accepted", "t5", "pending", "1", "d", "y", "n1"),
    ]
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
    let day = Scope {
        network: None,
        from_ms: DAY_MS,
        to_ms: DAY_MS + 24 * HOUR,
        tenant: None,
        link: None,
    };
    vec![
        in_db(total),
        in_db(hourly),
        in_db(daily),
        warehouse::retained_parts_sql(DB),
        in_db(conversions::status_groups_sql(&day)),
        in_db(conversions::status_groups_sql(&Scope {
            tenant: Some("other"),
            ..day
        })),
        in_db(conversions::status_groups_sql(&Scope {
            link: Some(("acme", "x")),
            network: Some("kt"),
            ..day
        })),
        in_db(conversions::refused_sql(None, DAY_MS, DAY_MS + 24 * HOUR)),
        in_db(conversions::find_clicks_sql(
            &["c", "nope", "a"],
            Some((DAY_MS, DAY_MS + 6 * HOUR)),
        )),
        in_db(conversions::human_clicks_sql(
            &[("acme", "x"), ("acme", "y")],
            DAY_MS - 100 * 24 * HOUR,
            DAY_MS + 24 * HOUR,
        )),
    ]
}

/// Points unqualified table names at the test database.
fn in_db(q: String) -> String {
    ["clicks", "conversions", "click_ids"]
        .iter()
        .fold(q, |q, t| {
            q.replace(&format!(" FROM {t} "), &format!(" FROM {DB}.{t} "))
        })
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
    // Conversion groups of the day: t1's pending once (r1 counted once,
    // r3 the cross-node repeat: 2 records) then approved; t2 unmatched;
    // t0 left out (first received the day before).
    let (h, click_a, click_c) = (
        |n: i64| DAY_MS + n * HOUR,
        "a\t1772600400000",
        "c\t1772600400000",
    );
    let t1 = format!(
        "kt\tt1\tpending\t{}\taccepted\t1.50\tUSD\t{click_a}\tx\tacme\t{}\t2\n\
         kt\tt1\tapproved\t{}\tstatus_change\t2.25\tUSD\t{click_a}\tx\tacme\t{}\t1",
        h(7),
        h(9),
        h(8),
        h(8)
    );
    let t2 = format!(
        "kt\tt2\tpending\t{}\tunknown_click\t3\tUSD\t{click_c}\t\t\t0\t1",
        h(10)
    );
    let t5 = format!(
        "kt\tt5\tpending\t{}\taccepted\t1\tUSD\td\t1772600400000\ty\tacme\t{}\t1",
        h(13),
        h(13)
    );
    assert_eq!(old[q + 4].trim(), format!("{t1}\n{t2}\n{t5}"));
    // Another tenant sees only what is unmatched (resolved by the caller).
    assert_eq!(old[q + 5].trim(), t2);
    // One link: its matched conversions, and the unmatched.
    assert_eq!(old[q + 6].trim(), format!("{t1}\n{t2}"));
    // Refusals: r7 (delivered twice) and r8.
    assert_eq!(
        old[q + 7].trim(),
        format!("kt\t{}\tbad_auth\t2", DAY_MS / 86_400_000)
    );
    // Click lookup: `c` and `a` found once each, `nope` not.
    let mut found: Vec<&str> = old[q + 8].trim().lines().collect();
    found.sort_unstable();
    assert_eq!(
        found,
        [
            format!("a\tacme\tx\t{}\t0", h(5)),
            format!("c\tacme\tx\t{}\t0", h(5) + 1_200_000)
        ]
    );
    // Human clicks per link and day: the old day's 1, the day's 3.
    let day = DAY_MS / 86_400_000;
    assert_eq!(
        old[q + 9].trim(),
        format!("acme\tx\t{}\t1\nacme\tx\t{day}\t3", day - 100)
    );
    assert_eq!(old[q + 3].trim(), "click_ids\t20260304\nclicks\t20251124\nclicks\t20260304\nconversions\t20260303\nconversions\t20260304");
    // After dropping the old day's partition: four distinct, none old.
    assert_eq!(old.last().unwrap().trim(), "4\t0");
}

/// A `clicks` table made before the routing columns: the migration adds
/// them on both engines, old rows read their defaults, new rows keep theirs.
#[test]
fn a_clicks_table_from_before_routing_gets_its_columns_on_clickhouse_18_and_current() {
    let old_columns = [
        "click_id",
        "ts",
        "ts_ms",
        "tenant",
        "code",
        "destination",
        "ip_hash",
        "user_agent",
        "referer",
        "sub",
        "bot",
        "bot_reason",
        "edge_node",
        "salt_epoch",
    ];
    let mut sql = vec![
        format!("CREATE DATABASE IF NOT EXISTS {DB}"),
        format!(
            "CREATE TABLE {DB}.clicks (click_id String, ts DateTime('UTC'), ts_ms UInt64, \
             tenant String, code String, destination String, ip_hash String, user_agent String, \
             referer String, sub String, bot UInt8, bot_reason String, edge_node String, \
             salt_epoch UInt64) ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMMDD(ts) \
             ORDER BY (tenant, code, click_id)"
        ),
        format!(
            "INSERT INTO {DB}.clicks VALUES ('old', '2026-03-04 05:00:00', 1, 'acme', 'x', 'd', 'h', 'UA', '', '', 0, '', 'n', 7)"
        ),
    ];
    let existing: Vec<String> = old_columns.iter().map(|c| c.to_string()).collect();
    let migration = warehouse::add_missing_columns_sql(DB, &existing);
    assert_eq!(migration.len(), warehouse::ADDED_CLICK_COLUMNS.len());
    sql.extend(migration);
    // Run once more with every column present: nothing left to add.
    let mut all = existing;
    all.extend(
        warehouse::ADDED_CLICK_COLUMNS
            .iter()
            .map(|(c, _)| c.to_string()),
    );
    assert!(warehouse::add_missing_columns_sql(DB, &all).is_empty());
    // The schema's own CREATE is a no-op now, and new rows carry the facts.
    sql.extend(warehouse::schema(DB).into_iter().take(2));
    sql.push(format!(
        "INSERT INTO {DB}.clicks VALUES ('new', '2026-03-04 05:00:00', 2, 'acme', 'x', 'd', 'h', 'UA', '', '', 0, '', 'n', 7, 'DE', 'mobile', 'ios', 2, -1)"
    ));
    sql.push(format!(
        "SELECT click_id, country, device, os, rule, variant FROM {DB}.clicks ORDER BY click_id"
    ));
    sql.push(format!(
        "INSERT INTO {DB}.clicks VALUES ('new', '2026-03-04 05:00:00', 2, 'acme', 'x', 'd', 'h', 'UA', '', '', 0, '', 'n', 7, 'DE', 'mobile', 'ios', 2, -1), \
         ('v0', '2026-03-04 05:00:00', 3, 'acme', 'x', 'd', 'h', 'UA', '', '', 1, 'crawler', 'n', 7, 'US', 'desktop', 'linux', -1, 0), \
         ('v1', '2026-03-04 05:00:00', 4, 'acme', 'x', 'd', 'h', 'UA', '', '', 0, '', 'n', 7, 'DE', 'desktop', 'macos', -1, 1), \
         ('v1b', '2026-03-04 05:00:00', 5, 'acme', 'x', 'd', 'h', 'UA', '', '', 0, '', 'n', 7, '', '', '', -1, 1)"
    ));
    sql.push(in_db(warehouse::routing_sql(
        "acme",
        "x",
        0,
        DAY_MS + 86_400_000,
    )));
    let ch = ClickHouse::start();
    let old = run_server(&ch, &sql);
    let new = run_chdb(&sql);
    let at = |answers: &[String], back: usize| answers[answers.len() - 1 - back].trim().to_owned();
    let want = "new\tDE\tmobile\tios\t2\t-1\nold\t\t\t\t-1\t-1";
    assert_eq!(at(&old, 2), want);
    assert_eq!(at(&new, 2), want);
    // By variant (v0's only click a bot; `new` re-delivered counts once),
    // country and device.
    let want = "country\tDE\t2\t2\ncountry\tUS\t1\t0\n\
                device\tdesktop\t2\t1\ndevice\tmobile\t1\t1\n\
                variant\t0\t1\t0\nvariant\t1\t2\t2";
    assert_eq!(at(&old, 0), want);
    assert_eq!(at(&new, 0), want);
}
