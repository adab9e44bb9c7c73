//! Links: the model, its validation, the pre-compiled destination template,
//! the lock-free table the edge reads, and the store that persists them.
//!
//! Nothing in here touches the network.

pub mod agent;
pub mod routing;
pub mod table;
pub mod tally;
pub mod template;
pub mod validate;

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::{Deserialize, Serialize};

pub use routing::{Route, Routing, Rule, Variant};
pub use table::{LinkTable, SharedLinkTable};
pub use tally::Tally;
pub use template::Template;

/// A link as stored and as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    pub code: String,
    pub tenant: String,
    pub destination: String,
    pub redirect: u16,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub disabled: bool,
    /// Deleted links stay as tombstones: the edge answers 410 and the code is
    /// never handed out again.
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub tags: Vec<String>,
    pub passthrough: bool,
    /// Routing rules, first match wins (see [`routing`]); absent in store
    /// files written before they existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// Weighted variants, used when no rule matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<Variant>,
}

#[cfg(test)]
impl LinkRecord {
    /// A live, passthrough 302 link created now: the unit tests' fixture.
    pub(crate) fn for_tests(code: &str, tenant: &str, destination: &str) -> LinkRecord {
        let now = chrono::Utc::now();
        LinkRecord {
            code: code.into(),
            tenant: tenant.into(),
            destination: destination.into(),
            redirect: 302,
            created_at: now,
            updated_at: now,
            expires_at: None,
            disabled: false,
            deleted: false,
            tags: vec![],
            passthrough: true,
            rules: vec![],
            variants: vec![],
        }
    }
}

/// What the edge should do with a request for a link right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Live,
    Gone,
}

/// One link, compiled for the hot path. It is the only copy: the store's
/// indexes, the edge's table and in-flight click events share it through an
/// `Arc`, and it is never changed (a change is a new `Link`).
///
/// Kept to 64 bytes plus its text because there may be millions: the code
/// and the destination share one allocation, the tenant's name is shared by
/// all of its links, times are kept in milliseconds (what the admin API
/// shows), and the template is worked out from the destination as it is
/// rendered.
#[derive(Debug)]
pub struct Link {
    /// The code, then the destination.
    text: Box<str>,
    /// The tenant and the tags: one pointer, shared by all of a tenant's
    /// untagged links (most links).
    owner: Arc<Owner>,
    created_at_ms: i64,
    updated_at_ms: i64,
    /// [`NEVER`] if the link does not expire.
    expires_at_ms: i64,
    template: Template,
    /// This version's click tally, attached by the embedded stats on its
    /// first click (and shared with the link's other versions): see
    /// [`tally`]. Empty in full mode.
    tally: ArcSwapOption<Tally>,
    /// As stored; [`Link::status`] is 302 if it is not a redirect status.
    redirect: u16,
    code_len: u8,
    disabled: bool,
    deleted: bool,
}

/// `expires_at_ms` of a link that does not expire (later than any date
/// chrono can hold).
const NEVER: i64 = i64::MAX;

/// Whose a link is, and what only some links carry (tags, rules and
/// variants). A tenant's plain links share one (see [`Owner::tenant`]); a
/// link with tags or routing has its own.
#[derive(Debug)]
pub struct Owner {
    tenant: String,
    tags: Vec<String>,
    /// Boxed: 8 bytes in every owner, the rules only in links that have them.
    routing: Option<Box<Routing>>,
}

impl Owner {
    /// The owner its untagged links share.
    pub fn tenant(name: String) -> Arc<Owner> {
        Arc::new(Owner {
            tenant: name,
            tags: Vec::new(),
            routing: None,
        })
    }

    fn with(self: &Arc<Owner>, tags: Vec<String>, routing: Option<Routing>) -> Arc<Owner> {
        if tags.is_empty() && routing.is_none() {
            return self.clone();
        }
        Arc::new(Owner {
            tenant: self.tenant.clone(),
            tags,
            routing: routing.map(Box::new),
        })
    }
}

impl Link {
    pub fn compile(mut record: LinkRecord) -> Link {
        let owner = Owner::tenant(std::mem::take(&mut record.tenant));
        Link::compile_for(record, &owner)
    }

    /// Compiles `record`, sharing `owner` (the record's tenant, see
    /// [`Owner::tenant`]) with the tenant's other untagged links.
    pub fn compile_for(mut record: LinkRecord, owner: &Arc<Owner>) -> Link {
        debug_assert!(record.tenant.is_empty() || owner.tenant == record.tenant);
        let template = Template::compile(&record.destination, record.passthrough);
        let routing = Routing::compile(
            record.rules,
            record.variants,
            &record.code,
            record.passthrough,
        );
        // Codes are at most 64 bytes (`validate::MAX_CODE_LEN`).
        let code_len = u8::try_from(record.code.len()).expect("a code is at most 255 bytes");
        let mut text = String::with_capacity(record.code.len() + record.destination.len());
        text.push_str(&record.code);
        text.push_str(&record.destination);
        Link {
            text: text.into_boxed_str(),
            owner: owner.with(std::mem::take(&mut record.tags), routing),
            created_at_ms: record.created_at.timestamp_millis(),
            updated_at_ms: record.updated_at.timestamp_millis(),
            expires_at_ms: record.expires_at.map_or(NEVER, |t| t.timestamp_millis()),
            template,
            tally: ArcSwapOption::empty(),
            redirect: record.redirect,
            code_len,
            disabled: record.disabled,
            deleted: record.deleted,
        }
    }

    /// A link known only by its code and tenant: the link of a click read
    /// back from the click log or the warehouse, where nothing else about it
    /// is needed (it never goes into the table).
    pub fn reference(code: &str, tenant: &str) -> Link {
        Link::reference_for(code, &Owner::tenant(tenant.to_owned()))
    }

    /// [`Link::reference`] sharing `owner` (a tenant's, see
    /// [`Owner::tenant`]) with the tenant's other references.
    pub fn reference_for(code: &str, owner: &Arc<Owner>) -> Link {
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        Link::compile_for(
            LinkRecord {
                code: code.to_owned(),
                tenant: owner.tenant.clone(),
                destination: String::new(),
                redirect: 302,
                created_at: epoch,
                updated_at: epoch,
                expires_at: None,
                disabled: false,
                deleted: false,
                tags: vec![],
                passthrough: false,
                rules: vec![],
                variants: vec![],
            },
            owner,
        )
    }

    /// The link as stored and as the admin API shows it.
    pub fn to_record(&self) -> LinkRecord {
        let time = |ms| DateTime::from_timestamp_millis(ms).expect("it came from a DateTime");
        LinkRecord {
            code: self.code().to_owned(),
            tenant: self.tenant().to_owned(),
            destination: self.destination().to_owned(),
            redirect: self.redirect,
            created_at: time(self.created_at_ms),
            updated_at: time(self.updated_at_ms),
            expires_at: (self.expires_at_ms != NEVER).then(|| time(self.expires_at_ms)),
            disabled: self.disabled,
            deleted: self.deleted,
            tags: self.owner.tags.clone(),
            passthrough: self.template.passthrough(),
            rules: self
                .routing()
                .map(|r| r.rules().to_vec())
                .unwrap_or_default(),
            variants: self
                .routing()
                .map(|r| r.variants().to_vec())
                .unwrap_or_default(),
        }
    }

    pub fn state_at(&self, now_ms: i64) -> LinkState {
        if self.deleted || self.disabled || now_ms >= self.expires_at_ms {
            LinkState::Gone
        } else {
            LinkState::Live
        }
    }

    /// The status the edge answers with.
    #[inline]
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.redirect)
            .ok()
            .filter(|s| s.is_redirection())
            .unwrap_or(StatusCode::FOUND)
    }

    /// Appends the `Location` for one request (see [`Template::render_into`]).
    #[inline]
    pub fn render_into(&self, vars: &template::Vars<'_>, query: Option<&str>, out: &mut String) {
        self.template
            .render_into(self.destination(), vars, query, out)
    }

    /// The link's rules and variants, if it has any.
    #[inline]
    pub fn routing(&self) -> Option<&Routing> {
        self.owner.routing.as_deref()
    }

    /// Appends the `Location` for a request that took `route`: the rule's
    /// or variant's destination, or the link's own.
    #[inline]
    pub fn render_routed_into(
        &self,
        route: &Route,
        vars: &template::Vars<'_>,
        query: Option<&str>,
        out: &mut String,
    ) {
        let routed = self
            .routing()
            .is_some_and(|r| r.render_into(route, vars, query, out));
        if !routed {
            self.render_into(vars, query, out);
        }
    }

    /// The destination a request that took `route` was sent to (before
    /// macros and passthrough).
    pub fn destination_for(&self, route: &Route) -> &str {
        self.routing()
            .and_then(|r| r.target(route))
            .map_or_else(|| self.destination(), |(d, _)| d)
    }

    pub fn code(&self) -> &str {
        &self.text[..usize::from(self.code_len)]
    }

    pub fn destination(&self) -> &str {
        &self.text[usize::from(self.code_len)..]
    }

    pub fn tenant(&self) -> &str {
        &self.owner.tenant
    }

    /// Deleted links stay as tombstones (see [`LinkRecord::deleted`]).
    pub fn is_deleted(&self) -> bool {
        self.deleted
    }

    /// The link's tally, attached by `attach` on first use. Only the
    /// click-log writer's thread attaches, so two attaches never race.
    #[inline]
    pub fn tally(&self, attach: impl FnOnce() -> Arc<Tally>) -> Arc<Tally> {
        if let Some(tally) = self.tally.load_full() {
            return tally;
        }
        let tally = attach();
        self.tally.store(Some(tally.clone()));
        tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_gives_back_the_record_it_was_compiled_from() {
        let at = |s| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let record = LinkRecord {
            code: "spring".into(),
            tenant: "acme".into(),
            destination: "https://shop.example/?cid={click_id}#top".into(),
            redirect: 307,
            created_at: at("2026-03-01T10:00:00.123Z"),
            updated_at: at("2026-03-02T11:30:00.456Z"),
            expires_at: Some(at("2026-04-01T00:00:00Z")),
            disabled: true,
            deleted: false,
            tags: vec!["promo".into(), "q1".into()],
            passthrough: false,
            rules: vec![],
            variants: vec![],
        };
        let link = Link::compile(record.clone());
        assert_eq!(link.to_record(), record);
        assert_eq!(link.status(), StatusCode::TEMPORARY_REDIRECT);
        let plain = LinkRecord {
            expires_at: None,
            tags: vec![],
            redirect: 299,
            ..record
        };
        let link = Link::compile(plain.clone());
        assert_eq!(link.to_record(), plain);
        assert_eq!(link.status(), StatusCode::FOUND);
    }

    #[test]
    fn a_link_is_gone_from_its_expiry_on() {
        let now = Utc::now();
        let record = LinkRecord {
            code: "x".into(),
            tenant: "t".into(),
            destination: "https://x.example/".into(),
            redirect: 302,
            created_at: now,
            updated_at: now,
            expires_at: Some(now),
            disabled: false,
            deleted: false,
            tags: vec![],
            passthrough: true,
            rules: vec![],
            variants: vec![],
        };
        let link = Link::compile(record);
        let t = now.timestamp_millis();
        assert_eq!(link.state_at(t - 1), LinkState::Live);
        assert_eq!(link.state_at(t), LinkState::Gone);
    }

    #[test]
    fn a_link_stays_small() {
        // Plus one allocation for its code and destination (and, once
        // clicked in embedded mode, its tally). 64 bytes, so that the
        // `Arc<Link>` allocation fits the allocator's 80-byte class.
        assert!(std::mem::size_of::<Link>() <= 64);
    }
}
