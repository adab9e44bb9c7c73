//! `/v1/links`: create, read, update, delete, list, batch, and stats.

use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};

use super::auth::Principal;
use super::error::{ApiError, ErrorBody};
use super::Admin;
use crate::links::routing::{parse_rules, parse_variants, RoutingError};
use crate::links::validate::{is_valid_code, normalize_destination};
use crate::links::{LinkRecord, Rule, Variant};
use crate::stats::{Counts, Interval, SeriesPoint, MAX_SERIES_POINTS};
use crate::store::{NewLink, StoreError};
use crate::time::{parse_range_bound, RangeEnd};
use crate::tokens::is_valid_tenant;

/// Most links in one batch call.
pub const MAX_BATCH: usize = 1000;
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
const MAX_TAGS: usize = 32;
const MAX_TAG_BYTES: usize = 64;
/// Tenant that admin-created links get when the body names none.
const DEFAULT_TENANT: &str = "default";
const DEFAULT_STATS_DAYS: i64 = 30;

/// A link to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// Where the link goes: an absolute http(s) URL, at most 2048 bytes;
    /// may hold `{click_id}`-style macros.
    #[schema(example = "https://example.com/landing", format = "uri")]
    destination: String,
    /// The short code; generated when absent.
    #[schema(pattern = "^[A-Za-z0-9-]{1,64}$")]
    code: Option<String>,
    /// Redirect status; the configured default when absent.
    redirect: Option<u16>,
    /// RFC 3339; the link answers 410 after it.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// At most 32 tags of 1-64 printable bytes.
    tags: Option<Vec<String>>,
    /// Whether the visitor's query string is passed on (default true).
    passthrough: Option<bool>,
    /// Only admin tokens may create links for another tenant.
    tenant: Option<String>,
    /// Checked field by field by `links::routing` (errors name the index).
    #[serde(default)]
    rules: serde_json::Value,
    #[serde(default)]
    variants: serde_json::Value,
}

/// serde_json's own recursion limit. Batch items are skimmed as raw text
/// first, which serde_json does without counting depth, so the batch checks
/// it itself: a body nested deeper is `invalid_json` as anywhere else.
const MAX_JSON_DEPTH: usize = 128;

/// Whether no array or object in `body` is nested deeper than `max`
/// (brackets inside strings do not count).
fn nesting_within(body: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// The body of `POST /v1/links/batch` (parsed item by item in `batch`,
/// so one bad item fails alone; this type is its description).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// Up to 1000 links, each a `CreateBody` validated alone: a bad item
    /// gets its own 4xx in `results` and the others are still created.
    #[schema(value_type = Vec<Value>, max_items = 1000)]
    pub links: Vec<serde_json::Value>,
}

/// The answer to a batch: one result per item, in order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchAnswer {
    results: Vec<BatchResult>,
}

/// One batch item's outcome: its link (201) or its error (4xx).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum BatchResult {
    Created { status: u16, link: Box<LinkView> },
    Refused { status: u16, error: ErrorBody },
}

/// Changes to a link; absent keys are left as they are.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    destination: Option<String>,
    disabled: Option<bool>,
    /// RFC 3339, or `null` to remove the expiry.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<Option<String>>,
    redirect: Option<u16>,
    tags: Option<Vec<String>>,
    passthrough: Option<bool>,
    /// `null` or `[]` removes them; absent leaves them.
    #[serde(default, deserialize_with = "present")]
    rules: Option<Option<serde_json::Value>>,
    #[serde(default, deserialize_with = "present")]
    variants: Option<Option<serde_json::Value>>,
}

/// Distinguishes `"k": null` (Some(None)) from an absent key (None).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A link as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LinkView {
    pub code: String,
    pub short_url: String,
    pub destination: String,
    pub tenant: String,
    pub redirect: u16,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    pub disabled: bool,
    pub tags: Vec<String>,
    pub passthrough: bool,
    /// Routing rules, first match wins (see the contract's "Routing rules").
    #[schema(value_type = Vec<Object>)]
    pub rules: Vec<Rule>,
    /// Weighted variants, used when no rule matched.
    #[schema(value_type = Vec<Object>)]
    pub variants: Vec<Variant>,
}

/// One page of `GET /v1/links`, in code order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LinkPage {
    pub links: Vec<LinkView>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// `GET /v1/links/{code}/stats`: totals over the range and a series.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LinkStats {
    pub code: String,
    #[schema(format = DateTime)]
    pub from: String,
    #[schema(format = DateTime)]
    pub to: String,
    /// `hour` or `day`.
    #[schema(value_type = String, example = "day")]
    pub interval: &'static str,
    #[serde(flatten)]
    pub totals: Counts,
    /// Pending and approved conversions first received in the range.
    pub conversions: u64,
    /// Approved payouts per currency (latest status wins), as decimal text.
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub revenue: crate::postback::reconcile::Money,
    pub series: Vec<SeriesPoint>,
    #[serde(flatten)]
    pub routing: RoutingStats,
}

/// A link's clicks by routing fact, in its stats.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RoutingStats {
    /// The link's current variants, in order, with their clicks.
    pub variants: Vec<VariantStats>,
    /// Clicks by country (ISO 3166-1 alpha-2), where it is known.
    pub countries: std::collections::BTreeMap<String, u64>,
    /// Clicks by device (`desktop`, `mobile`, `tablet`), where it is known.
    pub devices: std::collections::BTreeMap<String, u64>,
}

/// One variant of a link and the clicks it got.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VariantStats {
    pub destination: String,
    pub weight: u16,
    pub clicks: u64,
    pub human_clicks: u64,
}

impl Admin {
    pub(super) fn view(&self, l: LinkRecord) -> LinkView {
        LinkView {
            short_url: format!("{}/{}", self.public_url, l.code),
            created_at: crate::time::rfc3339(l.created_at.timestamp_millis()),
            updated_at: crate::time::rfc3339(l.updated_at.timestamp_millis()),
            expires_at: l
                .expires_at
                .map(|t| crate::time::rfc3339(t.timestamp_millis())),
            code: l.code,
            destination: l.destination,
            tenant: l.tenant,
            redirect: l.redirect,
            disabled: l.disabled,
            tags: l.tags,
            passthrough: l.passthrough,
            rules: l.rules,
            variants: l.variants,
        }
    }

    /// Validates a create body into a link to store.
    pub(super) fn new_link(&self, who: &Principal, body: CreateBody) -> Result<NewLink, ApiError> {
        let tenant = match (&who.tenant, body.tenant) {
            (Some(own), None) => own.clone(),
            (Some(own), Some(t)) if *own == t => t,
            (Some(_), Some(_)) => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden_tenant",
                    "a tenant token can only create links for its own tenant",
                ))
            }
            (None, t) => t.unwrap_or_else(|| DEFAULT_TENANT.to_owned()),
        };
        if tenant == crate::tokens::ADMIN_TENANT || !is_valid_tenant(&tenant) {
            return Err(ApiError::invalid(
                "invalid_tenant",
                "tenant must be 1-64 chars of [A-Za-z0-9._-]",
            ));
        }
        if let Some(code) = &body.code {
            if !is_valid_code(code) {
                return Err(ApiError::invalid(
                    "invalid_code",
                    "code must be 1-64 characters of [A-Za-z0-9-]",
                ));
            }
            if super::routes::RESERVED_CODES.contains(&code.as_str()) {
                return Err(ApiError::invalid(
                    "invalid_code",
                    format!("`{code}` is reserved: the admin API has a route of that name"),
                ));
            }
        }
        let now = Utc::now();
        let record = LinkRecord {
            code: String::new(),
            tenant,
            destination: destination(&body.destination)?,
            redirect: redirect(body.redirect.unwrap_or(self.default_redirect))?,
            created_at: now,
            updated_at: now,
            expires_at: body.expires_at.as_deref().map(expires_at).transpose()?,
            disabled: false,
            deleted: false,
            tags: tags(body.tags.unwrap_or_default())?,
            passthrough: body.passthrough.unwrap_or(true),
            rules: rules(&body.rules)?,
            variants: variants(&body.variants)?,
        };
        Ok(NewLink {
            code: body.code,
            record,
        })
    }

    pub(super) fn create(&self, who: &Principal, body: &[u8]) -> Result<LinkView, ApiError> {
        let body: CreateBody = serde_json::from_slice(body).map_err(ApiError::invalid_json)?;
        let new = self.new_link(who, body)?;
        let rec = self
            .create_within_budget(who, vec![new])
            .pop()
            .expect("one result per link")?;
        Ok(self.view(rec))
    }

    /// Stores `new`, a tenant's custom codes held to its budget of codes
    /// taken by other tenants (`conflicts.rs`); results in input order.
    fn create_within_budget(
        &self,
        who: &Principal,
        new: Vec<NewLink>,
    ) -> Vec<Result<LinkRecord, ApiError>> {
        let Some(tenant) = &who.tenant else {
            // An admin token sees every link: nothing to learn here.
            return self
                .store
                .create_links(new)
                .into_iter()
                .map(|r| r.map_err(store_error))
                .collect();
        };
        let now = std::time::Instant::now();
        let budget = self.conflicts.available(tenant, now);
        let (results, foreign) = self.store.create_links_within(new, budget);
        self.conflicts.spend(tenant, foreign, now);
        crate::telemetry::admin_code_conflicts("taken_by_other_tenant", foreign);
        let mut refused = 0;
        let results = results
            .into_iter()
            .map(|r| {
                r.map_err(|e| match e {
                    StoreError::ConflictBudget(code) => {
                        refused += 1;
                        let secs = self.conflicts.retry_after_secs(tenant, now);
                        ApiError {
                            retry_after: Some(secs),
                            ..ApiError::new(
                                StatusCode::TOO_MANY_REQUESTS,
                                "too_many_conflicts",
                                format!(
                                    "custom code `{code}` not tried: too many of this tenant's custom codes were taken by other tenants; retry in {secs} s"
                                ),
                            )
                        }
                    }
                    e => store_error(e),
                })
            })
            .collect();
        crate::telemetry::admin_code_conflicts("refused", refused);
        results
    }

    /// Creates up to `MAX_BATCH` links, each validated alone, the valid ones
    /// stored in one write. Items are kept as raw JSON text until parsed
    /// into their own type, and the answer is written from typed values:
    /// a `serde_json::Value` tree per item (and per answer) was short-lived
    /// garbage left among a million long-lived links after a large import.
    pub(super) fn batch(&self, who: &Principal, body: &[u8]) -> Result<BatchAnswer, ApiError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Batch<'a> {
            #[serde(borrow)]
            links: Vec<&'a serde_json::value::RawValue>,
        }
        if !nesting_within(body, MAX_JSON_DEPTH) {
            return Err(ApiError::invalid_json(format!(
                "nested deeper than {MAX_JSON_DEPTH} levels"
            )));
        }
        let batch: Batch<'_> = serde_json::from_slice(body).map_err(ApiError::invalid_json)?;
        if batch.links.len() > MAX_BATCH {
            return Err(ApiError::invalid(
                "batch_too_large",
                format!("at most {MAX_BATCH} links per batch"),
            ));
        }
        let mut slots: Vec<Result<usize, ApiError>> = Vec::with_capacity(batch.links.len());
        let mut valid = Vec::new();
        for item in batch.links {
            let parsed = serde_json::from_str::<CreateBody>(item.get())
                .map_err(|e| ApiError::invalid("invalid_link", e.to_string()))
                .and_then(|b| self.new_link(who, b));
            slots.push(parsed.map(|new| {
                valid.push(new);
                valid.len() - 1
            }));
        }
        let mut stored: Vec<Option<Result<LinkRecord, ApiError>>> = self
            .create_within_budget(who, valid)
            .into_iter()
            .map(Some)
            .collect();
        let results = slots
            .into_iter()
            .map(|slot| {
                let outcome =
                    slot.and_then(|i| stored[i].take().expect("each stored result is used once"));
                match outcome {
                    Ok(rec) => BatchResult::Created {
                        status: StatusCode::CREATED.as_u16(),
                        link: Box::new(self.view(rec)),
                    },
                    Err(e) => {
                        let (status, error) = e.into_parts();
                        BatchResult::Refused {
                            status: status.as_u16(),
                            error,
                        }
                    }
                }
            })
            .collect();
        Ok(BatchAnswer { results })
    }

    /// The live link `code` if `who` may see it; 404 otherwise.
    pub(super) fn visible(&self, who: &Principal, code: &str) -> Result<LinkRecord, ApiError> {
        self.store
            .get_link(code)
            .filter(|l| who.can_see(&l.tenant))
            .ok_or_else(|| ApiError::not_found("link"))
    }

    pub(super) fn patch(
        &self,
        who: &Principal,
        code: &str,
        body: &[u8],
    ) -> Result<LinkView, ApiError> {
        let body: PatchBody = serde_json::from_slice(body).map_err(ApiError::invalid_json)?;
        self.visible(who, code)?;
        let destination = body.destination.as_deref().map(destination).transpose()?;
        let redirect = body.redirect.map(redirect).transpose()?;
        let expires = match body.expires_at {
            Some(Some(s)) => Some(Some(expires_at(&s)?)),
            Some(None) => Some(None),
            None => None,
        };
        let tags = body.tags.map(tags).transpose()?;
        let null = serde_json::Value::Null;
        let rules = body
            .rules
            .map(|v| rules(v.as_ref().unwrap_or(&null)))
            .transpose()?;
        let variants = body
            .variants
            .map(|v| variants(v.as_ref().unwrap_or(&null)))
            .transpose()?;
        let rec = self.store.update_link::<ApiError>(code, |l| {
            if !who.can_see(&l.tenant) {
                return Err(ApiError::not_found("link"));
            }
            if let Some(d) = destination {
                l.destination = d;
            }
            if let Some(r) = redirect {
                l.redirect = r;
            }
            if let Some(e) = expires {
                l.expires_at = e;
            }
            if let Some(t) = tags {
                l.tags = t;
            }
            // The new rules and variants replace the old in one record:
            // the edge sees the old link or the new, never a mix.
            if let Some(r) = rules {
                l.rules = r;
            }
            if let Some(v) = variants {
                l.variants = v;
            }
            if let Some(d) = body.disabled {
                l.disabled = d;
            }
            if let Some(p) = body.passthrough {
                l.passthrough = p;
            }
            l.updated_at = Utc::now();
            Ok(())
        })?;
        Ok(self.view(rec))
    }

    pub(super) fn delete(&self, who: &Principal, code: &str) -> Result<(), ApiError> {
        self.store.update_link::<ApiError>(code, |l| {
            if !who.can_see(&l.tenant) {
                return Err(ApiError::not_found("link"));
            }
            l.deleted = true;
            l.updated_at = Utc::now();
            Ok(())
        })?;
        Ok(())
    }

    pub(super) fn list(&self, who: &Principal, query: Option<&str>) -> Result<LinkPage, ApiError> {
        let mut limit = DEFAULT_PAGE;
        let mut cursor = None;
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "limit" => {
                    limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| ApiError::bad_query(format!("limit must be 1-{MAX_PAGE}")))?
                }
                "cursor" => {
                    let code = data_encoding::BASE64URL_NOPAD
                        .decode(v.as_bytes())
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok())
                        .filter(|c| is_valid_code(c))
                        .ok_or_else(|| ApiError::bad_query("cursor is not one this API gave"))?;
                    cursor = Some(code);
                }
                _ => {}
            }
        }
        let links = self
            .store
            .list_links(who.tenant.as_deref(), cursor.as_deref(), limit);
        let next = (links.len() == limit)
            .then(|| links.last())
            .flatten()
            .map(|l| data_encoding::BASE64URL_NOPAD.encode(l.code.as_bytes()));
        let links: Vec<LinkView> = links.into_iter().map(|l| self.view(l)).collect();
        Ok(LinkPage {
            links,
            next_cursor: next,
        })
    }

    pub(super) fn stats(
        &self,
        who: &Principal,
        code: &str,
        query: Option<&str>,
    ) -> Result<LinkStats, ApiError> {
        let link = self.visible(who, code)?;
        let mut from = None;
        let mut to = None;
        let mut interval = Interval::Day;
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "from" => from = Some(bound(&v, RangeEnd::From, "from")?),
                "to" => to = Some(bound(&v, RangeEnd::To, "to")?),
                "interval" => {
                    interval = match &*v {
                        "hour" => Interval::Hour,
                        "day" => Interval::Day,
                        _ => return Err(ApiError::bad_query("interval must be hour or day")),
                    }
                }
                _ => {}
            }
        }
        let to = to.unwrap_or_else(crate::time::now_ms);
        let from = from.unwrap_or(to - DEFAULT_STATS_DAYS * 86_400_000);
        if from >= to {
            return Err(ApiError::bad_query("from must be before to"));
        }
        if (to - from) / interval.millis() > MAX_SERIES_POINTS {
            return Err(ApiError::bad_query(format!(
                "range too large: at most {MAX_SERIES_POINTS} buckets"
            )));
        }
        let (totals, series): (Counts, Vec<SeriesPoint>) = match &self.warehouse {
            // On the blocking pool (see `route`), so waiting here is fine.
            Some(w) => tokio::runtime::Handle::current()
                .block_on(crate::warehouse::link_stats(
                    &w.client,
                    &link.tenant,
                    &link.code,
                    from,
                    to,
                    interval,
                ))
                .map_err(|e| super::warehouse_unavailable("stats_unavailable", &e))?,
            None => self.stats.query(&link.code, from, to, interval),
        };
        let (conversions, revenue) = match &self.warehouse {
            Some(w) => tokio::runtime::Handle::current()
                .block_on(crate::postback::full::link_totals(
                    &w.client,
                    &link.tenant,
                    &link.code,
                    from,
                    to,
                ))
                .map_err(|e| super::warehouse_unavailable("stats_unavailable", &e))?,
            None => crate::postback::reconcile::link_totals(&self.ledger, &link.code, from, to),
        };
        let breakdown = match &self.warehouse {
            Some(w) => tokio::runtime::Handle::current()
                .block_on(crate::warehouse::link_routing(
                    &w.client,
                    &link.tenant,
                    &link.code,
                    from,
                    to,
                ))
                .map_err(|e| super::warehouse_unavailable("stats_unavailable", &e))?,
            None => self.stats.breakdown(&link.code, from, to),
        };
        let routing = routing_stats(&link, &breakdown);
        Ok(LinkStats {
            code: link.code,
            from: crate::time::rfc3339(from),
            to: crate::time::rfc3339(to),
            interval: match interval {
                Interval::Hour => "hour",
                Interval::Day => "day",
            },
            totals,
            conversions,
            revenue,
            series,
            routing,
        })
    }
}

/// `variants` (the link's current ones, with their clicks), `countries`
/// and `devices` of a link's stats.
fn routing_stats(link: &LinkRecord, b: &crate::links::tally::Breakdown) -> RoutingStats {
    use crate::links::agent::Device;
    let variants = link
        .variants
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let [clicks, bots] = b.variants.get(i).copied().unwrap_or_default();
            VariantStats {
                destination: v.destination.clone(),
                weight: v.weight,
                clicks,
                human_clicks: clicks - bots,
            }
        })
        .collect();
    let countries = b
        .countries
        .iter()
        .map(|(c, n)| (String::from_utf8_lossy(c).into_owned(), *n))
        .collect();
    let devices = b
        .devices
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        // Clicks without a user agent have no device and are not listed.
        .filter_map(|(code, n)| {
            let device = Device::from_code(code as u8)?;
            Some((device.as_str().to_owned(), *n))
        })
        .collect();
    RoutingStats {
        variants,
        countries,
        devices,
    }
}

fn bound(v: &str, end: RangeEnd, name: &str) -> Result<i64, ApiError> {
    parse_range_bound(v, end).ok_or_else(|| {
        ApiError::bad_query(format!(
            "{name} must be an RFC 3339 timestamp or a YYYY-MM-DD date"
        ))
    })
}

fn destination(input: &str) -> Result<String, ApiError> {
    normalize_destination(input)
        .map_err(|e| ApiError::invalid("invalid_destination", e.to_string()))
}

fn redirect(status: u16) -> Result<u16, ApiError> {
    if matches!(status, 301 | 302 | 307 | 308) {
        Ok(status)
    } else {
        Err(ApiError::invalid(
            "invalid_redirect",
            "redirect must be 301, 302, 307 or 308",
        ))
    }
}

fn expires_at(s: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ApiError::invalid("invalid_expires_at", "expires_at must be RFC 3339"))
}

fn tags(tags: Vec<String>) -> Result<Vec<String>, ApiError> {
    if tags.len() > MAX_TAGS
        || tags
            .iter()
            .any(|t| t.is_empty() || t.len() > MAX_TAG_BYTES || t.chars().any(char::is_control))
    {
        return Err(ApiError::invalid(
            "invalid_tags",
            format!("at most {MAX_TAGS} tags of 1-{MAX_TAG_BYTES} printable bytes"),
        ));
    }
    Ok(tags)
}

fn rules(v: &serde_json::Value) -> Result<Vec<Rule>, ApiError> {
    parse_rules(v).map_err(|e: RoutingError| ApiError::invalid("invalid_rules", e.to_string()))
}

fn variants(v: &serde_json::Value) -> Result<Vec<Variant>, ApiError> {
    parse_variants(v).map_err(|e| ApiError::invalid("invalid_variants", e.to_string()))
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::CodeTaken(code) => ApiError::new(
            StatusCode::CONFLICT,
            "code_taken",
            format!("code `{code}` is already taken"),
        ),
        StoreError::NotFound => ApiError::not_found("link"),
        other => ApiError::internal(other),
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        store_error(e)
    }
}

#[cfg(test)]
mod tests {
    use super::nesting_within;

    #[test]
    fn nesting_is_counted_over_arrays_and_objects_but_not_inside_strings() {
        assert!(nesting_within(br#"{"links":[{"a":[1]}]}"#, 4));
        assert!(!nesting_within(br#"{"links":[{"a":[1]}]}"#, 3));
        // Brackets in strings, escaped quotes included, are text.
        assert!(nesting_within(br#"{"a":"[[[{{{\"[[["}"#, 1));
        assert!(nesting_within(br#"["\\"]"#, 1));
        let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        assert!(!nesting_within(deep.as_bytes(), 128));
        assert!(nesting_within(&deep.as_bytes()[1..deep.len() - 1], 128));
    }
}
