//! One click as the local log stores it: a fixed-layout binary record.
//!
//! Why binary: the writer runs on the edge's core, and turning each click
//! into the contract's JSON (escaping, a formatted timestamp, hex) was work
//! the redirect paid for even in embedded mode, where nobody reads JSON.
//! A record is a fixed header and the click's text fields copied as they
//! are; the JSON for `clickedge.clicks` is made from it once, by whoever
//! ships ([`Record::write_json`]), and `clickedge log tail` prints it.
//!
//! Layout of a payload (little endian; the frame around it, with its length
//! and checksum, is [`super::segments`]'s):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format version ([`FORMAT`]) |
//! | 1 | bot reason (0 = human) |
//! | 6 | routing facts: country (2 ASCII bytes, 0 = none), device, os, rule, variant (`0xff` = none) |
//! | 8 | `ts_ms` (i64) |
//! | 8 | salt epoch |
//! | 16 | IP hash digest |
//! | 1 | click id length |
//! | 1 | reserved (0) |
//! | 2 × 6 | lengths of tenant, code, destination, user agent, referer, sub |
//! | … | click id, then the six texts, back to back |

use crate::clicks::{json, BotReason, ClickEvent, Rfc3339Millis, WireClick, EVENT_VERSION};

/// The payload format written today.
pub const FORMAT: u8 = 1;
/// Bytes before the first text field.
const HEADER: usize = 54;
/// A record longer than this is not one the writer made (the texts are
/// capped: user agent 512, referer 1024, sub 256, destination 2048, code
/// 64; a tenant name is short). Framing uses it to tell garbage from data.
pub const MAX_PAYLOAD: usize = 16 * 1024;
/// Routing facts of a click (geo, device, the rule or variant it took);
/// `NONE` is "no rule" / "no variant" in the routing bytes.
pub use crate::links::routing::{Route, NONE};

/// Appends the payload of `ev` (classified as `bot`) to `out`.
pub fn encode(ev: &ClickEvent, bot: Option<BotReason>, route: Route, out: &mut Vec<u8>) {
    let link = &ev.link;
    encode_fields(
        &Fields {
            bot,
            route,
            ts_ms: ev.ts_ms,
            epoch: ev.ip_hash.epoch,
            digest: ev.ip_hash.digest,
            click_id: ev.click_id.as_str(),
            tenant: link.tenant(),
            code: link.code(),
            destination: link.destination_for(&route),
            user_agent: ev.user_agent(),
            referer: ev.referer(),
            sub: ev.sub(),
        },
        out,
    );
}

/// A record's fields, borrowed from wherever they are.
struct Fields<'a> {
    bot: Option<BotReason>,
    route: Route,
    ts_ms: i64,
    epoch: u64,
    digest: [u8; 16],
    click_id: &'a str,
    tenant: &'a str,
    code: &'a str,
    destination: &'a str,
    user_agent: &'a str,
    referer: &'a str,
    sub: &'a str,
}

fn encode_fields(f: &Fields<'_>, out: &mut Vec<u8>) {
    let texts = [
        f.tenant,
        f.code,
        f.destination,
        f.user_agent,
        f.referer,
        f.sub,
    ];
    let click_id = &f.click_id.as_bytes()[..f.click_id.len().min(255)];
    out.reserve(HEADER + click_id.len() + texts.iter().map(|t| t.len()).sum::<usize>());
    out.push(FORMAT);
    out.push(bot_code(f.bot));
    out.extend_from_slice(&f.route.country);
    out.extend_from_slice(&[f.route.device, f.route.os, f.route.rule, f.route.variant]);
    out.extend_from_slice(&f.ts_ms.to_le_bytes());
    out.extend_from_slice(&f.epoch.to_le_bytes());
    out.extend_from_slice(&f.digest);
    out.push(click_id.len() as u8);
    out.push(0);
    // Texts are capped far below 64 KiB at intake; a longer one (never
    // made by the edge) is cut rather than corrupt the layout.
    fn cut(t: &str) -> &[u8] {
        &t.as_bytes()[..t.len().min(u16::MAX as usize)]
    }
    for t in texts {
        out.extend_from_slice(&(cut(t).len() as u16).to_le_bytes());
    }
    out.extend_from_slice(click_id);
    for t in texts {
        out.extend_from_slice(cut(t));
    }
}

/// Appends the payload of an event given as the contract's JSON (an old
/// `.jsonl` log being converted, or a test that plants a click).
pub fn encode_wire(ev: &WireClick<'_>, out: &mut Vec<u8>) {
    let mut digest = [0u8; 16];
    // An unreadable hash is kept as zeros: the click still counts.
    let _ = hex::decode_to_slice(ev.ip_hash.as_bytes(), &mut digest);
    encode_fields(
        &Fields {
            bot: ev
                .bot_reason
                .as_deref()
                .and_then(bot_from_str)
                .or(if ev.bot {
                    Some(BotReason::Crawler)
                } else {
                    None
                }),
            route: Route {
                country: Route::country_code(ev.country.as_bytes()),
                device: crate::links::agent::Device::parse(&ev.device).map_or(0, |d| d as u8),
                os: crate::links::agent::Os::parse(&ev.os).map_or(0, |o| o as u8),
                rule: ev.rule.unwrap_or(NONE),
                variant: ev.variant.unwrap_or(NONE),
            },
            ts_ms: ev.ts.0,
            epoch: ev.salt_epoch,
            digest,
            click_id: &ev.click_id,
            tenant: &ev.tenant,
            code: &ev.code,
            destination: &ev.destination,
            user_agent: &ev.user_agent,
            referer: &ev.referer,
            sub: &ev.sub,
        },
        out,
    );
}

const BOT_REASONS: [BotReason; 5] = [
    BotReason::NoUserAgent,
    BotReason::Preview,
    BotReason::Crawler,
    BotReason::Prefetch,
    BotReason::Head,
];

fn bot_code(bot: Option<BotReason>) -> u8 {
    match bot {
        None => 0,
        Some(b) => BOT_REASONS
            .iter()
            .position(|r| *r == b)
            .map_or(0, |i| i as u8 + 1),
    }
}

fn bot_from_str(s: &str) -> Option<BotReason> {
    BOT_REASONS.into_iter().find(|r| r.as_str() == s)
}

/// Why a payload could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("click-log record of format {0}, which this build does not know")]
    Format(u8),
    #[error("click-log record shorter than its fields")]
    Short,
    #[error("click-log record with text that is not UTF-8")]
    Utf8,
    #[error("click-log record with an unknown bot reason {0}")]
    BotReason(u8),
}

/// A decoded record, borrowing its texts from the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub bot: Option<BotReason>,
    pub route: Route,
    pub ts_ms: i64,
    pub salt_epoch: u64,
    pub ip_digest: [u8; 16],
    pub click_id: &'a str,
    pub tenant: &'a str,
    pub code: &'a str,
    pub destination: &'a str,
    pub user_agent: &'a str,
    pub referer: &'a str,
    pub sub: &'a str,
}

impl<'a> Record<'a> {
    pub fn decode(p: &'a [u8]) -> Result<Record<'a>, DecodeError> {
        if p.len() < HEADER {
            return Err(DecodeError::Short);
        }
        if p[0] != FORMAT {
            return Err(DecodeError::Format(p[0]));
        }
        let bot = match p[1] {
            0 => None,
            n => Some(
                *BOT_REASONS
                    .get(usize::from(n) - 1)
                    .ok_or(DecodeError::BotReason(n))?,
            ),
        };
        let u64_at = |at: usize| u64::from_le_bytes(p[at..at + 8].try_into().expect("8 bytes"));
        let route = Route {
            country: [p[2], p[3]],
            device: p[4],
            os: p[5],
            rule: p[6],
            variant: p[7],
        };
        let mut lens = [0usize; 7];
        lens[0] = usize::from(p[40]);
        for (i, len) in lens[1..].iter_mut().enumerate() {
            let at = 42 + 2 * i;
            *len = usize::from(u16::from_le_bytes([p[at], p[at + 1]]));
        }
        let mut texts = [""; 7];
        let mut at = HEADER;
        for (text, len) in texts.iter_mut().zip(lens) {
            let bytes = p.get(at..at + len).ok_or(DecodeError::Short)?;
            *text = std::str::from_utf8(bytes).map_err(|_| DecodeError::Utf8)?;
            at += len;
        }
        let [click_id, tenant, code, destination, user_agent, referer, sub] = texts;
        Ok(Record {
            bot,
            route,
            ts_ms: u64_at(8) as i64,
            salt_epoch: u64_at(16),
            ip_digest: p[24..40].try_into().expect("16 bytes"),
            click_id,
            tenant,
            code,
            destination,
            user_agent,
            referer,
            sub,
        })
    }

    /// The visitor key embedded stats count distinct (as
    /// [`crate::clicks::IpHash::visitor_key`]).
    pub fn visitor_key(&self) -> u64 {
        u64::from_le_bytes(self.ip_digest[..8].try_into().expect("8 bytes"))
    }

    /// Appends the event as one JSON line of the contract's schema (v1):
    /// the bytes `serde_json` writes for the same [`WireClick`] (a test
    /// checks it), so readers keep decoding with serde.
    pub fn write_json(&self, edge_node: &str, out: &mut Vec<u8>) {
        let mut hex = [0u8; 32];
        hex::encode_to_slice(self.ip_digest, &mut hex).expect("32 hex chars");
        let ip_hash = std::str::from_utf8(&hex).expect("hex is ASCII");
        out.extend_from_slice(b"{\"v\":");
        json::push_u64(out, u64::from(EVENT_VERSION));
        let text = |out: &mut Vec<u8>, key, value| {
            out.push(b',');
            json::push_key(out, key);
            json::push_str(out, value);
        };
        text(out, "click_id", self.click_id);
        out.extend_from_slice(b",\"ts\":");
        json::push_rfc3339_millis(out, self.ts_ms);
        text(out, "tenant", self.tenant);
        text(out, "code", self.code);
        text(out, "destination", self.destination);
        text(out, "ip_hash", ip_hash);
        text(out, "user_agent", self.user_agent);
        text(out, "referer", self.referer);
        text(out, "sub", self.sub);
        out.extend_from_slice(if self.bot.is_some() {
            b",\"bot\":true"
        } else {
            b",\"bot\":false"
        });
        match self.bot {
            Some(reason) => text(out, "bot_reason", reason.as_str()),
            None => out.extend_from_slice(b",\"bot_reason\":null"),
        }
        text(out, "edge_node", edge_node);
        out.extend_from_slice(b",\"salt_epoch\":");
        json::push_u64(out, self.salt_epoch);
        text(out, "country", self.route.country_str());
        text(out, "device", self.route.device_str());
        text(out, "os", self.route.os_str());
        let index = |out: &mut Vec<u8>, key, value: Option<u8>| {
            out.push(b',');
            json::push_key(out, key);
            match value {
                Some(i) => json::push_u64(out, u64::from(i)),
                None => out.extend_from_slice(b"null"),
            }
        };
        index(out, "rule", self.route.rule());
        index(out, "variant", self.route.variant());
        out.push(b'}');
    }

    /// The record as [`WireClick`] (serde's view of the same event).
    pub fn to_wire(&self, edge_node: &'a str, ip_hash_hex: &'a str) -> WireClick<'a> {
        use std::borrow::Cow::Borrowed;
        WireClick {
            v: EVENT_VERSION,
            click_id: Borrowed(self.click_id),
            ts: Rfc3339Millis(self.ts_ms),
            tenant: Borrowed(self.tenant),
            code: Borrowed(self.code),
            destination: Borrowed(self.destination),
            ip_hash: Borrowed(ip_hash_hex),
            user_agent: Borrowed(self.user_agent),
            referer: Borrowed(self.referer),
            sub: Borrowed(self.sub),
            bot: self.bot.is_some(),
            bot_reason: self.bot.map(|b| Borrowed(b.as_str())),
            edge_node: Borrowed(edge_node),
            salt_epoch: self.salt_epoch,
            country: std::borrow::Cow::Owned(self.route.country_str().to_owned()),
            device: Borrowed(self.route.device_str()),
            os: Borrowed(self.route.os_str()),
            rule: self.route.rule(),
            variant: self.route.variant(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clicks::{ClickIds, ClientText, IpHash, Signals};
    use crate::links::{Link, LinkRecord};
    use std::sync::Arc;

    fn event(ts: i64, tenant: &str, ua: &str, referer: &str, sub: &str, epoch: u64) -> ClickEvent {
        let link = Arc::new(Link::compile(LinkRecord::for_tests(
            "abc",
            tenant,
            "https://example.com/?q=\"x\"",
        )));
        ClickEvent::new(
            ClickIds::new(&crate::keys::MasterKey::for_tests()).mint(ts as u64),
            ts,
            link,
            IpHash {
                epoch,
                digest: [0x5a; 16],
            },
            Signals::default(),
            ClientText {
                user_agent: ua.as_bytes(),
                referer: referer.as_bytes(),
                sub,
            },
        )
    }

    #[test]
    fn a_record_decodes_to_the_event_it_was_made_from() {
        let ev = event(
            1_790_000_000_123,
            "acme",
            "Mozilla/5.0",
            "https://r/",
            "s-1",
            9,
        );
        let mut out = Vec::new();
        let route = Route {
            country: *b"DE",
            device: 2,
            os: 3,
            rule: 1,
            variant: NONE,
        };
        encode(&ev, Some(BotReason::Preview), route, &mut out);
        let r = Record::decode(&out).unwrap();
        assert_eq!(r.click_id, ev.click_id.as_str());
        assert_eq!(r.ts_ms, 1_790_000_000_123);
        assert_eq!((r.tenant, r.code), ("acme", "abc"));
        assert_eq!(r.destination, "https://example.com/?q=\"x\"");
        assert_eq!(
            (r.user_agent, r.referer, r.sub),
            ("Mozilla/5.0", "https://r/", "s-1")
        );
        assert_eq!(r.bot, Some(BotReason::Preview));
        assert_eq!(r.route, route);
        assert_eq!(r.salt_epoch, 9);
        assert_eq!(r.visitor_key(), ev.ip_hash.visitor_key());
    }

    #[test]
    fn short_unknown_or_garbled_payloads_are_errors_not_panics() {
        let ev = event(1, "t", "ua", "", "", 0);
        let mut out = Vec::new();
        encode(&ev, None, Route::default(), &mut out);
        for cut in 0..out.len() {
            assert!(Record::decode(&out[..cut]).is_err(), "cut at {cut}");
        }
        let mut other = out.clone();
        other[0] = 9;
        assert_eq!(Record::decode(&other), Err(DecodeError::Format(9)));
        let mut bad = out.clone();
        bad[1] = 200;
        assert_eq!(Record::decode(&bad), Err(DecodeError::BotReason(200)));
    }

    #[test]
    fn a_json_event_converts_to_the_same_record() {
        let ev = event(1_790_000_000_123, "acme", "UA", "", "x", 4);
        let mut bin = Vec::new();
        encode(&ev, Some(BotReason::Head), Route::default(), &mut bin);
        let mut line = Vec::new();
        Record::decode(&bin).unwrap().write_json("n", &mut line);
        let wire: WireClick<'_> = serde_json::from_slice(&line).unwrap();
        let mut again = Vec::new();
        encode_wire(&wire, &mut again);
        assert_eq!(again, bin);
    }

    proptest::proptest! {
        /// The hand-written JSON line is the line serde_json writes for the
        /// same `WireClick`, whatever the client sent.
        #[test]
        fn the_json_line_is_what_serde_writes(
            ua in proptest::prelude::any::<String>(),
            referer in "[\\x00-\\x7f\u{e9}\u{1F600}]{0,40}",
            sub in proptest::prelude::any::<String>(),
            tenant in "[a-z\"\\\\]{1,12}",
            bot in 0usize..3,
            epoch in proptest::prelude::any::<u64>(),
            ts in 0i64..253_402_300_799_999,
        ) {
            let reason = [None, Some(BotReason::Crawler), Some(BotReason::Prefetch)][bot];
            let ev = event(ts, &tenant, &ua, &referer, &sub, epoch);
            let mut bin = Vec::new();
            encode(&ev, reason, Route::default(), &mut bin);
            let r = Record::decode(&bin).unwrap();
            let mut ours = Vec::new();
            r.write_json("node\t1", &mut ours);
            let hex = "5a".repeat(16);
            let theirs = serde_json::to_vec(&r.to_wire("node\t1", &hex)).unwrap();
            proptest::prop_assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(theirs).unwrap());
        }
    }
}
