//! Routing rules and weighted variants of a link: their model, their
//! validation at mint, and their compiled form the redirect evaluates.
//!
//! A link may carry `rules` (each an `if` of conditions on country, device,
//! OS, language and time, and a destination; the first rule whose
//! conditions all hold wins) and `variants` (weighted destinations, used
//! when no rule matched). Operators send them as JSON; [`parse_rules`] and
//! [`parse_variants`] check every field and say which one is wrong
//! (`rules[3].if.country[0]: …`).
//!
//! [`Routing::compile`] turns them into what the hot path reads: country
//! sets as bitsets over the 26×26 code space, device and OS sets as bit
//! masks, times in milliseconds, one [`Template`] per destination. Deciding
//! allocates nothing and does no I/O; the user agent is parsed (by
//! [`super::agent`]) only when a rule whose other conditions hold asks
//! about the device or OS, and the `Accept-Language` header is read only
//! when a rule asks about language.
//!
//! Variants are sticky without a cookie by weighted rendezvous hashing:
//! each variant `i` scores `-ln(u_i) / weight_i`, with `u_i` a hash of the
//! visitor (its salted IP hash and user agent, so stable within a salt
//! epoch) and a salt of (link code, `i`); the lowest score wins. The winner
//! is variant `i` with probability `weight_i / Σ weights`, the same visitor
//! always gets the same variant, and changing one variant's weight only
//! moves visitors to or from that variant (the others' scores do not
//! change), which is the least movement any scheme can have.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::agent::{self, Agent, Device, Os};
use super::template::{Template, Vars};
use super::validate::normalize_destination;

/// Most rules on one link.
pub const MAX_RULES: usize = 32;
/// Fewest variants on a link that has variants.
pub const MIN_VARIANTS: usize = 2;
/// Most variants on one link.
pub const MAX_VARIANTS: usize = 64;
/// Heaviest variant weight (the lightest is 1).
pub const MAX_WEIGHT: u64 = 1000;
/// Most entries in one condition list.
pub const MAX_LIST: usize = 256;
/// Longest language tag accepted (and read from `Accept-Language`).
pub const MAX_LANGUAGE_BYTES: usize = 35;
/// "No rule" / "no variant" in a [`Route`].
pub const NONE: u8 = 0xff;

/// One rule as stored and as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    #[serde(rename = "if")]
    pub when: Conditions,
    pub destination: String,
}

/// A rule's conditions; an absent one always holds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Conditions {
    /// ISO 3166-1 alpha-2, upper case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Vec<Device>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<Vec<Os>>,
    /// Language tags, lower case; `de` also matches `de-at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<Vec<String>>,
    /// Holds from this instant on (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<DateTime<Utc>>,
    /// Holds until this instant (exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<DateTime<Utc>>,
}

/// One weighted variant as stored and as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    pub destination: String,
    pub weight: u16,
}

/// Why `rules` or `variants` were refused: the field (with its index) and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RoutingError {
    pub field: String,
    pub message: String,
}

fn refuse<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, RoutingError> {
    Err(RoutingError {
        field: field.into(),
        message: message.into(),
    })
}

/// Validates and normalises a link's `rules` (`null` is none).
pub fn parse_rules(v: &Value) -> Result<Vec<Rule>, RoutingError> {
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => return refuse("rules", "must be an array of rules"),
    };
    // Checked before looking at any item: a 10k-entry list costs nothing.
    if items.len() > MAX_RULES {
        return refuse(
            "rules",
            format!("at most {MAX_RULES} rules (got {})", items.len()),
        );
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_rule(&format!("rules[{i}]"), item))
        .collect()
}

fn parse_rule(at: &str, item: &Value) -> Result<Rule, RoutingError> {
    let Value::Object(obj) = item else {
        return refuse(at, "must be an object with `if` and `destination`");
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "if" | "destination"))
    {
        return refuse(
            at,
            format!("unknown field `{k}` (a rule has `if` and `destination`)"),
        );
    }
    let when = match obj.get("if") {
        Some(Value::Object(c)) => parse_conditions(&format!("{at}.if"), c)?,
        Some(_) => return refuse(format!("{at}.if"), "must be an object of conditions"),
        None => return refuse(format!("{at}.if"), "is required"),
    };
    Ok(Rule {
        when,
        destination: parse_destination(&format!("{at}.destination"), obj.get("destination"))?,
    })
}

fn parse_conditions(
    at: &str,
    obj: &serde_json::Map<String, Value>,
) -> Result<Conditions, RoutingError> {
    if obj.is_empty() {
        return refuse(
            at,
            "needs at least one condition (country, device, os, language, after, before)",
        );
    }
    let mut c = Conditions::default();
    for (key, value) in obj {
        let field = format!("{at}.{key}");
        match key.as_str() {
            "country" => c.country = Some(list(&field, value, country)?),
            "device" => {
                c.device = Some(list(&field, value, |f, s| {
                    Device::parse(s).ok_or_else(|| RoutingError {
                        field: f.to_owned(),
                        message: format!("`{s}` is not one of mobile, tablet, desktop"),
                    })
                })?)
            }
            "os" => {
                c.os = Some(list(&field, value, |f, s| {
                    Os::parse(s).ok_or_else(|| RoutingError {
                        field: f.to_owned(),
                        message: format!(
                            "`{s}` is not one of ios, android, windows, macos, linux, other"
                        ),
                    })
                })?)
            }
            "language" => c.language = Some(list(&field, value, language)?),
            "after" => c.after = Some(instant(&field, value)?),
            "before" => c.before = Some(instant(&field, value)?),
            _ => {
                return refuse(
                    field,
                    "unknown condition (known: country, device, os, language, after, before)",
                )
            }
        }
    }
    if let (Some(a), Some(b)) = (c.after, c.before) {
        if a >= b {
            return refuse(format!("{at}.before"), "must be later than `after`");
        }
    }
    Ok(c)
}

/// A non-empty list of at most [`MAX_LIST`] strings, each checked by `item`.
fn list<T>(
    at: &str,
    value: &Value,
    item: impl Fn(&str, &str) -> Result<T, RoutingError>,
) -> Result<Vec<T>, RoutingError> {
    let Value::Array(items) = value else {
        return refuse(at, "must be an array of strings");
    };
    if items.is_empty() {
        return refuse(at, "must not be empty (leave the condition out instead)");
    }
    if items.len() > MAX_LIST {
        return refuse(at, format!("at most {MAX_LIST} entries"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let f = format!("{at}[{i}]");
            match v {
                Value::String(s) => item(&f, s),
                _ => refuse(f, "must be a string"),
            }
        })
        .collect()
}

fn country(at: &str, s: &str) -> Result<String, RoutingError> {
    if s.len() == 2 && s.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(s.to_ascii_uppercase())
    } else {
        refuse(
            at,
            format!("`{}` is not an ISO 3166-1 alpha-2 country code", clip(s)),
        )
    }
}

fn language(at: &str, s: &str) -> Result<String, RoutingError> {
    if is_language_tag(s.as_bytes()) {
        Ok(s.to_ascii_lowercase())
    } else {
        refuse(
            at,
            format!("`{}` is not a language tag like `de` or `pt-BR`", clip(s)),
        )
    }
}

/// `[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*`, at most [`MAX_LANGUAGE_BYTES`].
fn is_language_tag(tag: &[u8]) -> bool {
    if tag.is_empty() || tag.len() > MAX_LANGUAGE_BYTES {
        return false;
    }
    tag.split(|b| *b == b'-').enumerate().all(|(i, part)| {
        (1..=8).contains(&part.len())
            && part
                .iter()
                .all(|b| b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()))
    })
}

fn instant(at: &str, value: &Value) -> Result<DateTime<Utc>, RoutingError> {
    value
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| {
            let t = t.with_timezone(&Utc);
            // Kept to the millisecond, as the edge compares them.
            DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
        })
        .map_or_else(|| refuse(at, "must be an RFC 3339 timestamp"), Ok)
}

fn parse_destination(at: &str, value: Option<&Value>) -> Result<String, RoutingError> {
    match value {
        Some(Value::String(s)) => normalize_destination(s).or_else(|e| refuse(at, e.to_string())),
        Some(_) => refuse(at, "must be a string"),
        None => refuse(at, "is required"),
    }
}

/// Operator text quoted in an error, cut short.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(40);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Validates and normalises a link's `variants` (`null` or `[]` is none).
pub fn parse_variants(v: &Value) -> Result<Vec<Variant>, RoutingError> {
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) if items.is_empty() => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => return refuse("variants", "must be an array of variants"),
    };
    if !(MIN_VARIANTS..=MAX_VARIANTS).contains(&items.len()) {
        return refuse(
            "variants",
            format!(
                "{MIN_VARIANTS}-{MAX_VARIANTS} variants, or none (got {})",
                items.len()
            ),
        );
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("variants[{i}]");
            let Value::Object(obj) = item else {
                return refuse(at, "must be an object with `destination` and `weight`");
            };
            if let Some(k) = obj
                .keys()
                .find(|k| !matches!(k.as_str(), "destination" | "weight"))
            {
                return refuse(
                    at,
                    format!("unknown field `{k}` (a variant has `destination` and `weight`)"),
                );
            }
            let weight = match obj.get("weight").and_then(Value::as_u64) {
                Some(w) if (1..=MAX_WEIGHT).contains(&w) => w as u16,
                _ => return refuse(format!("{at}.weight"), "must be an integer 1-1000"),
            };
            Ok(Variant {
                destination: parse_destination(
                    &format!("{at}.destination"),
                    obj.get("destination"),
                )?,
                weight,
            })
        })
        .collect()
}

/// The routing facts of one click: the country and agent it was decided
/// on, and the rule or variant it took ([`NONE`] for neither). These are
/// the click log's six routing bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// ISO 3166-1 alpha-2, or zeros when unknown.
    pub country: [u8; 2],
    /// [`Device`] code, 0 when unknown (not yet parsed, or no agent).
    pub device: u8,
    /// [`Os`] code, 0 when unknown.
    pub os: u8,
    pub rule: u8,
    pub variant: u8,
}

impl Default for Route {
    fn default() -> Route {
        Route {
            country: [0, 0],
            device: 0,
            os: 0,
            rule: NONE,
            variant: NONE,
        }
    }
}

impl Route {
    /// The country as text; empty unless it is two upper-case letters.
    pub fn country_str(&self) -> &str {
        if self.country.iter().all(u8::is_ascii_uppercase) {
            std::str::from_utf8(&self.country).unwrap_or_default()
        } else {
            ""
        }
    }

    pub fn device_str(&self) -> &'static str {
        Device::from_code(self.device).map_or("", Device::as_str)
    }

    pub fn os_str(&self) -> &'static str {
        Os::from_code(self.os).map_or("", Os::as_str)
    }

    /// The rule index, if a rule was taken.
    pub fn rule(&self) -> Option<u8> {
        (self.rule != NONE).then_some(self.rule)
    }

    /// The variant index, if a variant was taken.
    pub fn variant(&self) -> Option<u8> {
        (self.variant != NONE).then_some(self.variant)
    }

    /// Whether the agent's device and OS are known (or were looked for).
    pub fn has_agent(&self) -> bool {
        self.device != 0 || self.os != 0
    }

    pub fn set_agent(&mut self, agent: Agent) {
        self.device = agent.device_code();
        self.os = agent.os_code();
    }

    /// Parses a country as the click log and the header give it.
    pub fn country_code(text: &[u8]) -> [u8; 2] {
        match text {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                [a.to_ascii_uppercase(), b.to_ascii_uppercase()]
            }
            _ => [0, 0],
        }
    }
}

/// Bit `code` for each code; an empty list (never accepted at mint) gets
/// a bit no agent has, so it matches nothing.
fn mask(codes: impl Iterator<Item = u8>) -> u8 {
    match codes.fold(0u8, |m, code| m | (1 << code)) {
        0 => 0x80,
        m => m,
    }
}

/// A set of countries: one bit per code in the 26×26 space.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CountrySet([u64; 11]);

impl CountrySet {
    fn index(code: [u8; 2]) -> Option<usize> {
        let [a, b] = code;
        (a.is_ascii_uppercase() && b.is_ascii_uppercase())
            .then(|| usize::from(a - b'A') * 26 + usize::from(b - b'A'))
    }

    fn from_codes<'a>(codes: impl IntoIterator<Item = &'a String>) -> CountrySet {
        let mut set = CountrySet([0; 11]);
        for c in codes {
            if let Some(i) = Self::index(Route::country_code(c.as_bytes())) {
                set.0[i / 64] |= 1 << (i % 64);
            }
        }
        set
    }

    #[inline]
    fn contains(&self, code: [u8; 2]) -> bool {
        Self::index(code).is_some_and(|i| self.0[i / 64] & (1 << (i % 64)) != 0)
    }
}

#[derive(Debug)]
struct CompiledRule {
    /// `None`: any country.
    countries: Option<Box<CountrySet>>,
    /// Bit `code` per allowed device; 0 = any.
    devices: u8,
    /// Bit `code` per allowed OS; 0 = any.
    oses: u8,
    /// Lower-case tags; empty = any.
    languages: Box<[Box<str>]>,
    after_ms: i64,
    before_ms: i64,
    template: Template,
}

impl CompiledRule {
    /// Cheap conditions first; the agent is asked for (and parsed, once
    /// per request) only when a rule gets as far as its device or OS.
    #[inline]
    fn matches(
        &self,
        now_ms: i64,
        country: [u8; 2],
        lang: &[u8],
        agent: &mut impl FnMut() -> Agent,
    ) -> bool {
        now_ms >= self.after_ms
            && now_ms < self.before_ms
            && self.countries.as_ref().is_none_or(|c| c.contains(country))
            && (self.languages.is_empty()
                || self.languages.iter().any(|l| language_matches(l, lang)))
            && ((self.devices == 0 && self.oses == 0) || {
                let a = agent();
                (self.devices == 0 || self.devices & (1 << a.device_code()) != 0)
                    && (self.oses == 0 || self.oses & (1 << a.os_code()) != 0)
            })
    }
}

#[derive(Debug)]
struct CompiledVariant {
    /// 1 / weight.
    inv_weight: f64,
    /// Stable per (link code, index).
    salt: u64,
    template: Template,
}

/// A link's rules and variants, as given and as compiled.
#[derive(Debug)]
pub struct Routing {
    rules: Vec<Rule>,
    variants: Vec<Variant>,
    compiled_rules: Box<[CompiledRule]>,
    compiled_variants: Box<[CompiledVariant]>,
    needs_language: bool,
}

/// What the hot path knows about one request, for [`Routing::choose`].
#[derive(Debug, Clone, Copy)]
pub struct Visit<'a> {
    pub now_ms: i64,
    /// As [`Route::country`]; zeros when unknown.
    pub country: [u8; 2],
    pub user_agent: &'a [u8],
    pub accept_language: &'a [u8],
    /// The visitor's salted IP hash ([`crate::clicks::IpHash`]'s digest).
    pub ip_digest: &'a [u8; 16],
}

impl Routing {
    /// Compiles a link's rules and variants; `None` when it has neither.
    /// They were validated at mint; anything odd in them (an old store
    /// file) compiles to a condition that never holds.
    pub fn compile(
        rules: Vec<Rule>,
        variants: Vec<Variant>,
        code: &str,
        passthrough: bool,
    ) -> Option<Routing> {
        if rules.is_empty() && variants.is_empty() {
            return None;
        }
        let ms = |t: Option<DateTime<Utc>>, none| t.map_or(none, |t| t.timestamp_millis());
        let compiled_rules = rules
            .iter()
            .map(|r| {
                let c = &r.when;
                CompiledRule {
                    countries: c
                        .country
                        .as_ref()
                        .map(|cs| Box::new(CountrySet::from_codes(cs))),
                    devices: c
                        .device
                        .as_ref()
                        .map_or(0, |ds| mask(ds.iter().map(|d| *d as u8))),
                    oses: c
                        .os
                        .as_ref()
                        .map_or(0, |os| mask(os.iter().map(|o| *o as u8))),
                    languages: c.language.as_ref().map_or_else(Box::default, |ls| {
                        ls.iter().map(|l| l.to_ascii_lowercase().into()).collect()
                    }),
                    after_ms: ms(c.after, i64::MIN),
                    before_ms: ms(c.before, i64::MAX),
                    template: Template::compile(&r.destination, passthrough),
                }
            })
            .collect();
        let compiled_variants = variants
            .iter()
            .enumerate()
            .map(|(i, v)| CompiledVariant {
                inv_weight: 1.0 / f64::from(v.weight.max(1)),
                salt: variant_salt(code, i),
                template: Template::compile(&v.destination, passthrough),
            })
            .collect();
        let needs_language = rules.iter().any(|r| r.when.language.is_some());
        Some(Routing {
            rules,
            variants,
            compiled_rules,
            compiled_variants,
            needs_language,
        })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn variants(&self) -> &[Variant] {
        &self.variants
    }

    /// The rule or variant this request takes (both [`NONE`] for the
    /// link's own destination), with the agent if it had to be parsed.
    /// The country is copied into the route as given.
    #[inline]
    pub fn choose(&self, visit: &Visit<'_>) -> Route {
        let mut route = Route {
            country: visit.country,
            ..Route::default()
        };
        let lang = if self.needs_language {
            first_language(visit.accept_language)
        } else {
            &[]
        };
        let mut parsed: Option<Agent> = None;
        let hit = {
            let mut agent = || *parsed.get_or_insert_with(|| agent::parse(visit.user_agent));
            self.compiled_rules
                .iter()
                .position(|r| r.matches(visit.now_ms, visit.country, lang, &mut agent))
        };
        if let Some(a) = parsed {
            route.set_agent(a);
        }
        if let Some(i) = hit {
            route.rule = i as u8;
        } else if !self.compiled_variants.is_empty() {
            route.variant = self.pick(visitor_seed(visit.ip_digest, visit.user_agent)) as u8;
        }
        route
    }

    /// Weighted rendezvous: the variant with the lowest `-ln(u) / weight`.
    #[inline]
    fn pick(&self, seed: u64) -> usize {
        let mut best = (f64::INFINITY, 0);
        for (i, v) in self.compiled_variants.iter().enumerate() {
            let h = mix(seed ^ v.salt);
            // A uniform draw in (0, 1): 53 bits, never 0.
            let u = ((h >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
            let score = -u.ln() * v.inv_weight;
            if score < best.0 {
                best = (score, i);
            }
        }
        best.1
    }

    /// The destination of the rule or variant `route` took, if any.
    pub fn target(&self, route: &Route) -> Option<(&str, &Template)> {
        if let Some(i) = route.rule() {
            let i = usize::from(i);
            return Some((
                self.rules.get(i)?.destination.as_str(),
                &self.compiled_rules.get(i)?.template,
            ));
        }
        let i = usize::from(route.variant()?);
        Some((
            self.variants.get(i)?.destination.as_str(),
            &self.compiled_variants.get(i)?.template,
        ))
    }

    /// Appends the `Location` for `route` if it took a rule or variant;
    /// false (nothing appended) if not.
    #[inline]
    pub fn render_into(
        &self,
        route: &Route,
        vars: &Vars<'_>,
        query: Option<&str>,
        out: &mut String,
    ) -> bool {
        match self.target(route) {
            Some((dest, template)) => {
                template.render_into(dest, vars, query, out);
                true
            }
            None => false,
        }
    }
}

/// The first tag of an `Accept-Language` value, if it is one; bounded and
/// byte-wise, so invalid UTF-8 is simply no language.
pub fn first_language(header: &[u8]) -> &[u8] {
    let start = header
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(header.len());
    let rest = &header[start..];
    let end = rest
        .iter()
        .take(MAX_LANGUAGE_BYTES + 1)
        .position(|b| matches!(b, b',' | b';' | b' ' | b'\t'))
        .unwrap_or(rest.len().min(MAX_LANGUAGE_BYTES + 1));
    let tag = &rest[..end];
    if is_language_tag(tag) {
        tag
    } else {
        &[]
    }
}

/// Whether a rule's (lower-case) `want` matches the visitor's tag: the
/// same tag, or `want` followed by a subtag (`de` matches `de-AT`).
fn language_matches(want: &str, tag: &[u8]) -> bool {
    let want = want.as_bytes();
    tag.len() >= want.len()
        && tag[..want.len()].eq_ignore_ascii_case(want)
        && (tag.len() == want.len() || tag[want.len()] == b'-')
}

/// The visitor, as a 64-bit seed: its salted IP hash (uniform, and stable
/// only within a salt epoch) and its user agent (the event's bound of it).
#[inline]
pub fn visitor_seed(ip_digest: &[u8; 16], user_agent: &[u8]) -> u64 {
    let lo = u64::from_le_bytes(ip_digest[..8].try_into().expect("8 bytes"));
    let hi = u64::from_le_bytes(ip_digest[8..].try_into().expect("8 bytes"));
    let ua = &user_agent[..user_agent.len().min(crate::links::agent::MAX_AGENT_BYTES)];
    lo ^ hi.rotate_left(32) ^ stable_hash(ua)
}

/// A small hash that is the same in every build and process (a variant
/// must not change when the edge restarts).
fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0x243f_6a88_85a3_08d3 ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    mix(h)
}

/// The salt of variant `index` of link `code`.
fn variant_salt(code: &str, index: usize) -> u64 {
    let mut h = blake3::Hasher::new_derive_key("clickedge 2026 variant salt v1");
    h.update(code.as_bytes());
    h.update(&(index as u64).to_le_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

/// splitmix64's finaliser: every input bit moves every output bit.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests;
