//! Kafka record → ClickHouse row, or the reason it cannot be one.
//!
//! Never panics and never rejects the batch: anything that is not a v1
//! click event (on `clickedge.clicks`) or a v1 ledger record (on
//! `clickedge.conversions`) becomes a dead letter carrying its reason.

use serde::Deserialize;

use crate::clicks::{WireClick, EVENT_VERSION};
use crate::postback::ledger::LedgerRecord;
use crate::ship::topics;
use crate::warehouse::conversions::ConversionRow;
use crate::warehouse::{ClickRow, ClickRows};

/// Longest payload kept in `dead_letters` (the rest is cut).
const MAX_DEAD_PAYLOAD_BYTES: usize = 64 * 1024;
/// Longest click id or code accepted (the edge mints 32 and allows 64).
const MAX_ID_BYTES: usize = 64;

#[derive(Debug)]
pub enum Decoded {
    /// Added to the batch's click rows.
    Click,
    Conversion(Box<ConversionRow>),
    Poison(Poison),
}

#[derive(Debug, thiserror::Error)]
pub enum Poison {
    #[error("empty record")]
    Empty,
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("unsupported event version {0} (this sink loads v1)")]
    Version(String),
    #[error("invalid event: {0}")]
    Invalid(String),
}

impl Poison {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Poison::Empty => "empty",
            Poison::NotJson(_) => "not_json",
            Poison::Version(_) => "version",
            Poison::Invalid(_) => "invalid",
        }
    }
}

/// Decodes a record of `topic`: conversions from their topic, clicks from
/// any other (a click goes straight into `clicks`).
pub fn record(topic: &str, payload: &[u8], clicks: &mut ClickRows) -> Decoded {
    if topic == topics::CONVERSIONS {
        conversion(payload)
    } else {
        click(payload, clicks)
    }
}

pub fn click(payload: &[u8], clicks: &mut ClickRows) -> Decoded {
    match parse_click(payload, clicks) {
        Ok(()) => Decoded::Click,
        Err(p) => Decoded::Poison(p),
    }
}

pub fn conversion(payload: &[u8]) -> Decoded {
    match parse_conversion(payload) {
        Ok(row) => Decoded::Conversion(Box::new(row)),
        Err(p) => Decoded::Poison(p),
    }
}

/// A v1 JSON event, or why not.
fn parse_json<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, Poison> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(Poison::Empty);
    }
    match serde_json::from_slice(payload) {
        Ok(ev) => Ok(ev),
        Err(e) => {
            // Tell "another version" apart from "broken".
            #[derive(serde::Deserialize)]
            struct Versioned {
                v: serde_json::Value,
            }
            Err(match serde_json::from_slice::<Versioned>(payload) {
                Ok(v) if v.v != serde_json::json!(EVENT_VERSION) => {
                    Poison::Version(v.v.to_string())
                }
                Ok(_) => Poison::Invalid(e.to_string()),
                Err(_) if e.is_data() => Poison::Invalid(e.to_string()),
                Err(_) => Poison::NotJson(e.to_string()),
            })
        }
    }
}

fn parse_click(payload: &[u8], clicks: &mut ClickRows) -> Result<(), Poison> {
    let ev: WireClick = parse_json(payload)?;
    if ev.v != EVENT_VERSION {
        return Err(Poison::Version(ev.v.to_string()));
    }
    field("click_id", &ev.click_id, MAX_ID_BYTES)?;
    field("code", &ev.code, MAX_ID_BYTES)?;
    field("tenant", &ev.tenant, MAX_ID_BYTES)?;
    let ts_ms = u64::try_from(ev.ts.0)
        .ok()
        .filter(|ms| *ms / 1000 <= u64::from(u32::MAX))
        .ok_or_else(|| Poison::Invalid("ts out of range".into()))?;
    clicks.push(&ClickRow {
        click_id: &ev.click_id,
        ts: (ts_ms / 1000) as u32,
        ts_ms,
        tenant: &ev.tenant,
        code: &ev.code,
        destination: &ev.destination,
        ip_hash: &ev.ip_hash,
        user_agent: &ev.user_agent,
        referer: &ev.referer,
        sub: &ev.sub,
        bot: u8::from(ev.bot),
        bot_reason: ev.bot_reason.as_deref().unwrap_or_default(),
        edge_node: &ev.edge_node,
        salt_epoch: ev.salt_epoch,
        country: short("country", &ev.country)?,
        device: short("device", &ev.device)?,
        os: short("os", &ev.os)?,
        rule: ev.rule.map_or(-1, i16::from),
        variant: ev.variant.map_or(-1, i16::from),
    });
    Ok(())
}

/// A routing fact: empty (older events, unknown) or a short name.
fn short<'a>(name: &str, value: &'a str) -> Result<&'a str, Poison> {
    if value.len() > 16 {
        Err(Poison::Invalid(format!("{name} longer than 16 bytes")))
    } else {
        Ok(value)
    }
}

fn field(name: &str, value: &str, max: usize) -> Result<(), Poison> {
    if value.is_empty() || value.len() > max {
        Err(Poison::Invalid(format!("{name} must be 1-{max} bytes")))
    } else {
        Ok(())
    }
}

fn parse_conversion(payload: &[u8]) -> Result<ConversionRow, Poison> {
    let rec: LedgerRecord = parse_json(payload)?;
    if rec.v != crate::postback::ledger::RECORD_VERSION {
        return Err(Poison::Version(rec.v.to_string()));
    }
    field("network", &rec.network, MAX_ID_BYTES)?;
    let received_ms = rec.received_at.0;
    let received_at = u32::try_from(received_ms.div_euclid(1000))
        .map_err(|_| Poison::Invalid("received_at out of range".into()))?;
    // Records written before ids existed: the payload itself names them
    // (a re-delivery is byte-identical).
    let id = rec
        .id
        .unwrap_or_else(|| blake3::hash(payload).to_hex()[..32].to_owned());
    field("id", &id, MAX_ID_BYTES)?;
    Ok(ConversionRow {
        id,
        received_at,
        received_ms,
        outcome: rec.outcome.as_str().to_owned(),
        network: rec.network,
        txn_id: rec.txn_id.unwrap_or_default(),
        status: rec
            .status
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        payout: rec.payout.map(|p| p.to_string()).unwrap_or_default(),
        currency: rec.currency.unwrap_or_default(),
        click_id: rec.click_id.unwrap_or_default(),
        click_ts_ms: rec.click_ts.map_or(0, |t| t.0),
        code: rec.code.unwrap_or_default(),
        tenant: rec.tenant.unwrap_or_default(),
        occurred_ms: rec.occurred_at.map_or(0, |t| t.0),
        reason: rec.reason.unwrap_or_default(),
        edge_node: rec.edge_node,
    })
}

/// The payload as text for `dead_letters`: invalid UTF-8 replaced, cut to
/// a bound.
pub fn payload_text(payload: &[u8]) -> String {
    let cut = &payload[..payload.len().min(MAX_DEAD_PAYLOAD_BYTES)];
    String::from_utf8_lossy(cut).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = r#"{"v":1,"click_id":"06h0000000000000000000000000000a","ts":"2026-03-04T05:06:07.089Z","tenant":"acme","code":"spring","destination":"https://shop.example/","ip_hash":"00ff","user_agent":"UA","referer":"","sub":"s1","bot":true,"bot_reason":"crawler","edge_node":"n1","salt_epoch":7}"#;

    #[test]
    fn a_v1_click_becomes_a_row() {
        let mut rows = ClickRows::default();
        let Decoded::Click = click(GOOD.as_bytes(), &mut rows) else {
            panic!("not decoded")
        };
        let row = rows.iter().next().unwrap();
        assert_eq!(row.ts_ms, 1_772_600_767_089);
        assert_eq!(row.ts, 1_772_600_767);
        assert_eq!((row.bot, row.bot_reason), (1, "crawler"));
        assert_eq!(row.salt_epoch, 7);
        assert_eq!((row.tenant, row.code, row.sub), ("acme", "spring", "s1"));
        assert_eq!(rows.len(), 1);
        // An event from before routing: no facts, no rule, no variant.
        assert_eq!((row.country, row.device, row.os), ("", "", ""));
        assert_eq!((row.rule, row.variant), (-1, -1));
    }

    #[test]
    fn routing_facts_reach_the_row_and_oversized_ones_are_poison() {
        let routed = GOOD.replace(
            "\"salt_epoch\":7}",
            "\"salt_epoch\":7,\"country\":\"DE\",\"device\":\"mobile\",\"os\":\"ios\",\"rule\":null,\"variant\":3}",
        );
        let mut rows = ClickRows::default();
        assert!(matches!(
            click(routed.as_bytes(), &mut rows),
            Decoded::Click
        ));
        let row = rows.iter().next().unwrap();
        assert_eq!((row.country, row.device, row.os), ("DE", "mobile", "ios"));
        assert_eq!((row.rule, row.variant), (-1, 3));
        assert_eq!(row.salt_epoch, 7);
        let huge = routed.replace("\"DE\"", &format!("\"{}\"", "D".repeat(100)));
        assert!(matches!(
            click(huge.as_bytes(), &mut ClickRows::default()),
            Decoded::Poison(Poison::Invalid(_))
        ));
    }

    #[test]
    fn poison_records_carry_their_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("not json", "not_json"),
            ("{\"v\":2,\"click_id\":\"x\"}", "version"),
            ("{\"v\":\"1\"}", "version"),
            ("{\"v\":1,\"click_id\":\"x\"}", "invalid"),
            ("[1,2]", "invalid"),
        ];
        for (payload, label) in cases {
            match click(payload.as_bytes(), &mut ClickRows::default()) {
                Decoded::Poison(p) => assert_eq!(p.label(), *label, "{payload}"),
                other => panic!("{payload} decoded: {other:?}"),
            }
        }
        let no_id = GOOD.replace("06h0000000000000000000000000000a", "");
        assert!(matches!(
            click(no_id.as_bytes(), &mut ClickRows::default()),
            Decoded::Poison(Poison::Invalid(_))
        ));
    }

    const LEDGER: &str = r#"{"v":1,"id":"0123456789abcdef0123456789abcdef","outcome":"accepted","network":"kt","txn_id":"t1","status":"approved","payout":"2.50","currency":"USD","click_id":"06h0000000000000000000000000000a","click_ts":"2026-03-04T05:06:07.089Z","code":"spring","tenant":"acme","received_at":"2026-03-04T06:00:00.000Z","occurred_at":null,"reason":null,"edge_node":"n1"}"#;

    #[test]
    fn a_ledger_record_on_the_conversions_topic_becomes_a_row() {
        let Decoded::Conversion(row) = record(
            topics::CONVERSIONS,
            LEDGER.as_bytes(),
            &mut ClickRows::default(),
        ) else {
            panic!("not decoded")
        };
        assert_eq!(row.id, "0123456789abcdef0123456789abcdef");
        assert_eq!(
            (
                row.outcome.as_str(),
                row.status.as_str(),
                row.payout.as_str()
            ),
            ("accepted", "approved", "2.50")
        );
        assert_eq!(
            (row.received_ms, row.received_at),
            (1_772_604_000_000, 1_772_604_000)
        );
        assert_eq!(
            (row.code.as_str(), row.tenant.as_str(), row.occurred_ms),
            ("spring", "acme", 0)
        );
        // The same bytes on the clicks topic are not a click.
        assert!(matches!(
            record(topics::CLICKS, LEDGER.as_bytes(), &mut ClickRows::default()),
            Decoded::Poison(_)
        ));
    }

    #[test]
    fn a_ledger_record_without_an_id_is_named_by_its_bytes() {
        let old = LEDGER.replace(r#""id":"0123456789abcdef0123456789abcdef","#, "");
        let id = |payload: &str| match conversion(payload.as_bytes()) {
            Decoded::Conversion(row) => row.id,
            other => panic!("{other:?}"),
        };
        assert_eq!(id(&old), id(&old));
        assert_eq!(id(&old).len(), 32);
        assert_ne!(id(&old), id(&old.replace("t1", "t2")));
    }

    #[test]
    fn broken_ledger_records_are_dead_lettered() {
        for (payload, label) in [
            ("", "empty"),
            ("{", "not_json"),
            (r#"{"v":2,"outcome":"accepted"}"#, "version"),
            (r#"{"v":1,"outcome":"sideways","network":"kt"}"#, "invalid"),
        ] {
            match conversion(payload.as_bytes()) {
                Decoded::Poison(p) => assert_eq!(p.label(), label, "{payload}"),
                other => panic!("{payload} decoded: {other:?}"),
            }
        }
        let no_network = LEDGER.replace(r#""network":"kt""#, r#""network":"""#);
        assert!(matches!(
            conversion(no_network.as_bytes()),
            Decoded::Poison(Poison::Invalid(_))
        ));
    }

    #[test]
    fn dead_payloads_are_text_and_bounded() {
        assert_eq!(payload_text(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(
            payload_text(&vec![b'x'; 100_000]).len(),
            MAX_DEAD_PAYLOAD_BYTES
        );
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_are_dead_lettered(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = click(&bytes, &mut ClickRows::default());
            let _ = conversion(&bytes);
        }
    }
}
