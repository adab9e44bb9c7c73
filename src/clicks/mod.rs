//! What a click is: its id, the hashed client, its bot classification, and
//! the event written to the click log (and later to Kafka).
//!
//! Nothing here does I/O except the salt ratchet's state file.

pub mod bots;
pub mod id;
pub mod iphash;
pub(crate) mod json;

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize, Serializer};

use crate::links::{Link, Route};
pub use bots::{BotClassifier, BotReason, CachedClassifier, Signals};
pub use id::{ClickId, ClickIds};
pub use iphash::{IpHash, SaltRatchet};

/// Event schema version written as `"v"`.
pub const EVENT_VERSION: u8 = 1;
/// Longest user agent kept in an event (longer ones are cut at a char boundary).
pub const MAX_USER_AGENT_BYTES: usize = 512;
/// Longest referer kept.
pub const MAX_REFERER_BYTES: usize = 1024;
/// Longest sub-id kept (and substituted into `{sub}`).
pub const MAX_SUB_BYTES: usize = 256;

/// One answered redirect, as handed from the edge to the click-log writer.
///
/// The free-text fields share one allocation.
#[derive(Debug)]
pub struct ClickEvent {
    pub click_id: ClickId,
    pub ts_ms: i64,
    pub link: Arc<Link>,
    pub ip_hash: IpHash,
    pub signals: Signals,
    /// The routing decided on the edge; its device and OS are 0 when the
    /// link's rules did not need them (the writer fills them in).
    pub route: Route,
    text: String,
    ua_end: u32,
    referer_end: u32,
}

/// The client-supplied text of a click, as received (truncated on intake).
#[derive(Debug, Clone, Copy)]
pub struct ClientText<'a> {
    pub user_agent: &'a [u8],
    pub referer: &'a [u8],
    pub sub: &'a str,
}

impl ClickEvent {
    pub fn new(
        click_id: ClickId,
        ts_ms: i64,
        link: Arc<Link>,
        ip_hash: IpHash,
        signals: Signals,
        client: ClientText<'_>,
    ) -> ClickEvent {
        let ua = truncate_utf8(client.user_agent, MAX_USER_AGENT_BYTES);
        let referer = truncate_utf8(client.referer, MAX_REFERER_BYTES);
        let sub = truncate_str(client.sub, MAX_SUB_BYTES);
        let mut text = String::with_capacity(ua.len() + referer.len() + sub.len());
        text.push_str(&ua);
        let ua_end = text.len() as u32;
        text.push_str(&referer);
        let referer_end = text.len() as u32;
        text.push_str(sub);
        ClickEvent {
            click_id,
            ts_ms,
            link,
            ip_hash,
            signals,
            route: Route::default(),
            text,
            ua_end,
            referer_end,
        }
    }

    pub fn user_agent(&self) -> &str {
        &self.text[..self.ua_end as usize]
    }

    pub fn referer(&self) -> &str {
        &self.text[self.ua_end as usize..self.referer_end as usize]
    }

    pub fn sub(&self) -> &str {
        &self.text[self.referer_end as usize..]
    }
}

/// A click event as written on the wire (schema v1). `salt_epoch` is an
/// addition to the contract's fields: unique visitors are counted per epoch.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireClick<'a> {
    pub v: u8,
    #[serde(borrow)]
    pub click_id: Cow<'a, str>,
    pub ts: Rfc3339Millis,
    #[serde(borrow)]
    pub tenant: Cow<'a, str>,
    #[serde(borrow)]
    pub code: Cow<'a, str>,
    #[serde(borrow)]
    pub destination: Cow<'a, str>,
    #[serde(borrow)]
    pub ip_hash: Cow<'a, str>,
    #[serde(borrow)]
    pub user_agent: Cow<'a, str>,
    #[serde(borrow)]
    pub referer: Cow<'a, str>,
    #[serde(borrow)]
    pub sub: Cow<'a, str>,
    pub bot: bool,
    #[serde(borrow)]
    pub bot_reason: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub edge_node: Cow<'a, str>,
    #[serde(default)]
    pub salt_epoch: u64,
    /// ISO 3166-1 alpha-2, empty when unknown (v2; absent in older events).
    #[serde(borrow, default)]
    pub country: Cow<'a, str>,
    /// `mobile`, `tablet`, `desktop`, or empty when unknown.
    #[serde(borrow, default)]
    pub device: Cow<'a, str>,
    /// `ios`, `android`, `windows`, `macos`, `linux`, `other`, or empty.
    #[serde(borrow, default)]
    pub os: Cow<'a, str>,
    /// The index of the rule the click took, if any.
    #[serde(default)]
    pub rule: Option<u8>,
    /// The index of the variant the click took, if any.
    #[serde(default)]
    pub variant: Option<u8>,
}

/// Unix milliseconds serialised as RFC 3339 UTC with milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339Millis(pub i64);

impl Serialize for Rfc3339Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use chrono::{Datelike, Timelike};
        use std::fmt::Write;
        // Formatted field by field into a stack buffer: strftime-style
        // `format()` parses its pattern on every call and may allocate.
        let dt = chrono::DateTime::from_timestamp_millis(self.0).unwrap_or_default();
        let mut buf = StackStr::default();
        write!(
            buf,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            dt.year(),
            dt.month(),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
            dt.timestamp_subsec_millis()
        )
        .map_err(serde::ser::Error::custom)?;
        s.serialize_str(buf.as_str())
    }
}

/// A fixed-size `fmt::Write` target for short formatted values.
#[derive(Default)]
struct StackStr {
    buf: [u8; 32],
    len: usize,
}

impl StackStr {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Rfc3339Millis {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        chrono::DateTime::parse_from_rfc3339(&s)
            .map(|t| Rfc3339Millis(t.timestamp_millis()))
            .map_err(serde::de::Error::custom)
    }
}

fn truncate_utf8(bytes: &[u8], max: usize) -> std::borrow::Cow<'_, str> {
    let bytes = &bytes[..bytes.len().min(max)];
    match std::str::from_utf8(bytes) {
        Ok(s) => s.into(),
        // Cut inside a char, or not UTF-8 at all (obs-text): keep what is.
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&bytes[..e.valid_up_to()])
            .unwrap_or_default()
            .into(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned().into(),
    }
}

fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::{Link, LinkRecord};

    fn link() -> Arc<Link> {
        Arc::new(Link::compile(LinkRecord::for_tests(
            "abc",
            "acme",
            "https://example.com/",
        )))
    }

    #[test]
    fn long_or_invalid_text_is_cut_safely() {
        let ua = "é".repeat(400); // 800 bytes
        let ev = ClickEvent::new(
            ClickIds::new(&crate::keys::MasterKey::for_tests()).mint(1),
            1,
            link(),
            IpHash {
                epoch: 0,
                digest: [0; 16],
            },
            Signals::default(),
            ClientText {
                user_agent: ua.as_bytes(),
                referer: b"\xff\xfe",
                sub: &"x".repeat(300),
            },
        );
        assert!(ev.user_agent().len() <= MAX_USER_AGENT_BYTES);
        assert_eq!(ev.sub().len(), MAX_SUB_BYTES);
        assert_eq!(ev.referer(), "\u{fffd}\u{fffd}");
    }
}
