//! Reading a postback's fields through its network's parameter map.
//!
//! Networks name the same values differently (Keitaro `subid`, Voluum
//! `cid`, Everflow `transaction_id`, …); the map says which request field
//! holds each. GET postbacks carry them in the query, signed POSTs in a JSON
//! object. Every problem names the field as the network sent it, so the
//! network's engineer sees which of their parameters is wrong.

use super::decimal::Decimal;
use super::networks::{normalize_currency, Network, ParamMap};
use super::Status;

/// Longest click id looked at (ours are 32 chars; longer is not ours).
const MAX_CLICK_ID_BYTES: usize = 64;
const MAX_TXN_ID_BYTES: usize = 128;
const MAX_VALUE_BYTES: usize = 256;
/// The GET parameter holding the network token (never a data field).
pub const TOKEN_PARAM: &str = "token";

/// A postback's values, mapped and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    pub click_id: String,
    pub txn_id: String,
    pub status: Status,
    pub payout: Decimal,
    pub currency: String,
    /// When the network says the conversion happened (unix ms).
    pub occurred_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {reason}")]
pub struct FieldError {
    /// The field as the network names it (`body` for the body as a whole).
    pub field: String,
    pub reason: String,
}

fn err(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// The raw values of one request, by the network's names.
pub trait Source {
    /// The value of `name`, if present; an error when present but unusable.
    fn get(&self, name: &str) -> Result<Option<String>, FieldError>;
}

/// A GET query string. A name asked for that occurs more than once is
/// refused (which one the network meant is not ours to guess).
pub struct Query<'a>(pub &'a str);

impl Source for Query<'_> {
    fn get(&self, name: &str) -> Result<Option<String>, FieldError> {
        let mut found = None;
        for (k, v) in form_urlencoded::parse(self.0.as_bytes()) {
            if k == name {
                if found.is_some() {
                    return Err(err(name, REPEATED));
                }
                found = Some(v.into_owned());
            }
        }
        Ok(found)
    }
}

const REPEATED: &str = "is given more than once";

/// The top-level keys of a JSON object that occur more than once (a
/// `serde_json::Map` would silently keep the last).
fn repeated_keys(body: &[u8]) -> Vec<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
            let mut seen = std::collections::HashSet::new();
            let mut repeated = Vec::new();
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if !seen.insert(k.clone()) {
                    repeated.push(k);
                }
            }
            Ok(repeated)
        }
    }
    serde_json::Deserializer::from_slice(body)
        .deserialize_map(Keys)
        .unwrap_or_default()
}

/// A JSON object body. Strings are taken as they are, integers as their
/// digits; a payout must be a string (money is never a float). A key
/// asked for that occurs more than once is refused, as in a query.
pub struct Json(
    pub serde_json::Map<String, serde_json::Value>,
    /// Top-level keys that occur more than once.
    pub Vec<String>,
);

impl Json {
    pub fn parse(body: &[u8]) -> Result<Json, FieldError> {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(map)) => Ok(Json(map, repeated_keys(body))),
            Ok(_) => Err(err("body", "must be a JSON object")),
            Err(e) => Err(err("body", format!("is not JSON: {e}"))),
        }
    }
}

impl Source for Json {
    fn get(&self, name: &str) -> Result<Option<String>, FieldError> {
        if self.1.iter().any(|k| k == name) {
            return Err(err(name, REPEATED));
        }
        match self.0.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => {
                Ok(Some(n.to_string()))
            }
            Some(_) => Err(err(name, "must be a string")),
        }
    }
}

/// Applies `network`'s maps to `src`.
pub fn extract(network: &Network, src: &impl Source) -> Result<Fields, FieldError> {
    extract_with(
        &network.settings.params,
        |v| network.status(v),
        network.settings.default_status,
        &network.settings.currency,
        src,
    )
}

/// [`extract`] with the network's parts spelled out (tests).
pub fn extract_with(
    map: &ParamMap,
    status_of: impl Fn(&str) -> Option<Status>,
    default_status: Status,
    default_currency: &str,
    src: &impl Source,
) -> Result<Fields, FieldError> {
    let get = |name: &str| -> Result<Option<String>, FieldError> {
        let v = src.get(name)?;
        if let Some(s) = &v {
            if s.len() > MAX_VALUE_BYTES {
                return Err(err(name, format!("longer than {MAX_VALUE_BYTES} bytes")));
            }
        }
        Ok(v.filter(|s| !s.is_empty()))
    };
    let click_id = get(&map.click_id)?.ok_or_else(|| err(&map.click_id, "is required"))?;
    if click_id.len() > MAX_CLICK_ID_BYTES {
        return Err(err(&map.click_id, "is not a click id"));
    }
    let txn_id = get(&map.txn_id)?.ok_or_else(|| err(&map.txn_id, "is required"))?;
    if txn_id.len() > MAX_TXN_ID_BYTES || txn_id.chars().any(char::is_control) {
        return Err(err(
            &map.txn_id,
            format!("must be 1-{MAX_TXN_ID_BYTES} bytes without control characters"),
        ));
    }
    let status = match get(&map.status)? {
        None => default_status,
        Some(v) => status_of(&v).ok_or_else(|| {
            err(
                &map.status,
                "is not a status this network maps onto pending, approved, rejected or reversed",
            )
        })?,
    };
    let payout = match get(&map.payout)? {
        None => Decimal::ZERO,
        Some(v) => Decimal::parse(&v)
            .map_err(|e| err(&map.payout, format!("must be a decimal string: {e}")))?,
    };
    // Money taken back is a reversal; any other status with a negative
    // amount would count as negative revenue.
    if payout.is_negative() && status != Status::Reversed {
        return Err(err(
            &map.payout,
            "must not be negative unless the status is reversed",
        ));
    }
    let currency = match get(&map.currency)? {
        None => default_currency.to_owned(),
        Some(v) => normalize_currency(&v)
            .ok_or_else(|| err(&map.currency, "must be a 3-letter currency code"))?,
    };
    let occurred_at_ms = get(&map.occurred_at)?
        .map(|v| {
            parse_time(&v).ok_or_else(|| {
                err(
                    &map.occurred_at,
                    "must be an RFC 3339 timestamp or unix seconds",
                )
            })
        })
        .transpose()?;
    Ok(Fields {
        click_id,
        txn_id,
        status,
        payout,
        currency,
        occurred_at_ms,
    })
}

fn parse_time(v: &str) -> Option<i64> {
    if !v.is_empty() && v.len() <= 12 && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse::<i64>().ok().map(|s| s * 1000);
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keitaro() -> ParamMap {
        ParamMap {
            click_id: "subid".into(),
            txn_id: "tid".into(),
            ..ParamMap::default()
        }
    }

    fn status_of(v: &str) -> Option<Status> {
        match v.to_ascii_lowercase().as_str() {
            "sale" => Some(Status::Approved),
            other => Status::parse(other),
        }
    }

    fn run(map: &ParamMap, q: &str) -> Result<Fields, FieldError> {
        extract_with(map, status_of, Status::Approved, "USD", &Query(q))
    }

    #[test]
    fn mapped_query_fields_are_read_and_checked() {
        let f = run(
            &keitaro(),
            "subid=abc&tid=T-1&status=sale&payout=12.50&currency=eur&occurred_at=1790000000",
        )
        .unwrap();
        assert_eq!(f.click_id, "abc");
        assert_eq!(f.txn_id, "T-1");
        assert_eq!(f.status, Status::Approved);
        assert_eq!(f.payout.to_string(), "12.50");
        assert_eq!(f.currency, "EUR");
        assert_eq!(f.occurred_at_ms, Some(1_790_000_000_000));
        // Absent optional fields take the network's defaults.
        let f = run(&keitaro(), "subid=abc&tid=1").unwrap();
        assert_eq!((f.status, f.currency.as_str()), (Status::Approved, "USD"));
        assert!(f.payout.is_zero());
    }

    #[test]
    fn problems_name_the_network_field() {
        let field = |q: &str| run(&keitaro(), q).unwrap_err().field;
        assert_eq!(field("tid=1"), "subid");
        assert_eq!(field("subid=a"), "tid");
        assert_eq!(field("subid=a&tid=1&payout=1e3"), "payout");
        assert_eq!(field("subid=a&tid=1&payout=12.5.0"), "payout");
        assert_eq!(field("subid=a&tid=1&status=maybe"), "status");
        assert_eq!(field("subid=a&tid=1&currency=dollars"), "currency");
        assert_eq!(field("subid=a&tid=1&occurred_at=yesterday"), "occurred_at");
    }

    #[test]
    fn a_mapped_field_given_twice_is_refused_naming_it() {
        let field = |q: &str| run(&keitaro(), q).unwrap_err();
        for (q, f) in [
            ("subid=a&subid=b&tid=1", "subid"),
            ("subid=a&tid=1&tid=2", "tid"),
            ("subid=a&tid=1&status=sale&status=rejected", "status"),
        ] {
            let e = field(q);
            assert_eq!((e.field.as_str(), e.reason.as_str()), (f, REPEATED), "{q}");
        }
        // An unmapped parameter may repeat.
        assert!(run(&keitaro(), "subid=a&tid=1&utm=x&utm=y").is_ok());
        let body = br#"{"click_id":"a","txn_id":"1","payout":"1.00","payout":"-5.00"}"#;
        let e = extract_with(
            &ParamMap::default(),
            status_of,
            Status::Approved,
            "USD",
            &Json::parse(body).unwrap(),
        )
        .unwrap_err();
        assert_eq!(e.field, "payout");
    }

    #[test]
    fn a_negative_payout_is_refused_unless_the_status_is_reversed() {
        for st in ["sale", "pending", "rejected"] {
            let e = run(
                &keitaro(),
                &format!("subid=a&tid=1&status={st}&payout=-83.50"),
            )
            .unwrap_err();
            assert_eq!(e.field, "payout", "{st}");
            assert!(e.reason.contains("reversed"), "{}", e.reason);
        }
        let f = run(&keitaro(), "subid=a&tid=1&status=reversed&payout=-83.50").unwrap();
        assert_eq!(
            (f.status, f.payout.to_string().as_str()),
            (Status::Reversed, "-83.50")
        );
        assert!(
            run(&keitaro(), "subid=a&tid=1&payout=-0.00").is_ok(),
            "minus zero is zero"
        );
    }

    #[test]
    fn json_payouts_must_be_strings() {
        let map = ParamMap::default();
        let body = br#"{"click_id":"a","txn_id":7,"payout":12.5}"#;
        let e = extract_with(
            &map,
            status_of,
            Status::Approved,
            "USD",
            &Json::parse(body).unwrap(),
        )
        .unwrap_err();
        assert_eq!(e.field, "payout");
        let body = br#"{"click_id":"a","txn_id":7,"payout":"12.5"}"#;
        let f = extract_with(
            &map,
            status_of,
            Status::Approved,
            "USD",
            &Json::parse(body).unwrap(),
        )
        .unwrap();
        assert_eq!(f.txn_id, "7");
        assert_eq!(Json::parse(b"[1]").err().unwrap().field, "body");
        assert_eq!(Json::parse(b"nope").err().unwrap().field, "body");
    }

    proptest! {
        #[test]
        fn any_query_is_read_or_refused_without_panicking(q in "\\PC{0,300}") {
            let _ = run(&keitaro(), &q);
        }

        #[test]
        fn well_formed_values_survive_url_encoding(
            click in "[0-9a-z]{32}",
            txn in "[A-Za-z0-9 _./:-]{1,40}",
            int in 0u64..1_000_000,
            cents in 0u32..100,
        ) {
            let payout = format!("{int}.{cents:02}");
            let q: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("subid", &click)
                .append_pair("tid", &txn)
                .append_pair("payout", &payout)
                .append_pair("status", "SALE")
                .finish();
            let f = run(&keitaro(), &q).unwrap();
            prop_assert_eq!(f.click_id, click);
            prop_assert_eq!(f.txn_id, txn);
            prop_assert_eq!(f.payout, Decimal::parse(&payout).unwrap());
            prop_assert_eq!(f.status, Status::Approved);
        }
    }
}
