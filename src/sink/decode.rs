//! Kafka record → ClickHouse row, or the reason it cannot be one.
//!
//! Never panics and never rejects the batch: anything that is not a v1 click
//! event becomes a dead letter carrying its reason.

use crate::clicks::{WireClick, EVENT_VERSION};
use crate::warehouse::ClickRow;

/// Longest payload kept in `dead_letters` (the rest is cut).
const MAX_DEAD_PAYLOAD_BYTES: usize = 64 * 1024;
/// Longest click id or code accepted (the edge mints 32 and allows 64).
const MAX_ID_BYTES: usize = 64;

#[derive(Debug)]
pub enum Decoded {
    Click(Box<ClickRow>),
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
    #[error("invalid click event: {0}")]
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

pub fn click(payload: &[u8]) -> Decoded {
    match parse(payload) {
        Ok(row) => Decoded::Click(Box::new(row)),
        Err(p) => Decoded::Poison(p),
    }
}

fn parse(payload: &[u8]) -> Result<ClickRow, Poison> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(Poison::Empty);
    }
    let ev: WireClick = match serde_json::from_slice(payload) {
        Ok(ev) => ev,
        Err(e) => {
            // Tell "another version" apart from "broken".
            #[derive(serde::Deserialize)]
            struct Versioned {
                v: serde_json::Value,
            }
            return Err(match serde_json::from_slice::<Versioned>(payload) {
                Ok(v) if v.v != serde_json::json!(EVENT_VERSION) => {
                    Poison::Version(v.v.to_string())
                }
                Ok(_) => Poison::Invalid(e.to_string()),
                Err(_) if e.is_data() => Poison::Invalid(e.to_string()),
                Err(_) => Poison::NotJson(e.to_string()),
            });
        }
    };
    if ev.v != EVENT_VERSION {
        return Err(Poison::Version(ev.v.to_string()));
    }
    let field = |name: &str, value: &str, max: usize| {
        if value.is_empty() || value.len() > max {
            Err(Poison::Invalid(format!("{name} must be 1-{max} bytes")))
        } else {
            Ok(())
        }
    };
    field("click_id", &ev.click_id, MAX_ID_BYTES)?;
    field("code", &ev.code, MAX_ID_BYTES)?;
    field("tenant", &ev.tenant, MAX_ID_BYTES)?;
    let ts_ms = u64::try_from(ev.ts.0)
        .ok()
        .filter(|ms| *ms / 1000 <= u64::from(u32::MAX))
        .ok_or_else(|| Poison::Invalid("ts out of range".into()))?;
    Ok(ClickRow {
        click_id: ev.click_id.into_owned(),
        ts: (ts_ms / 1000) as u32,
        ts_ms,
        tenant: ev.tenant.into_owned(),
        code: ev.code.into_owned(),
        destination: ev.destination.into_owned(),
        ip_hash: ev.ip_hash.into_owned(),
        user_agent: ev.user_agent.into_owned(),
        referer: ev.referer.into_owned(),
        sub: ev.sub.into_owned(),
        bot: u8::from(ev.bot),
        bot_reason: ev.bot_reason.map(|r| r.into_owned()).unwrap_or_default(),
        edge_node: ev.edge_node.into_owned(),
        salt_epoch: ev.salt_epoch,
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
        let Decoded::Click(row) = click(GOOD.as_bytes()) else {
            panic!("not decoded")
        };
        assert_eq!(row.ts_ms, 1_772_600_767_089);
        assert_eq!(row.ts, 1_772_600_767);
        assert_eq!((row.bot, row.bot_reason.as_str()), (1, "crawler"));
        assert_eq!(row.salt_epoch, 7);
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
            match click(payload.as_bytes()) {
                Decoded::Poison(p) => assert_eq!(p.label(), *label, "{payload}"),
                Decoded::Click(_) => panic!("{payload} decoded"),
            }
        }
        let no_id = GOOD.replace("06h0000000000000000000000000000a", "");
        assert!(matches!(
            click(no_id.as_bytes()),
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
            let _ = click(&bytes);
        }
    }
}
