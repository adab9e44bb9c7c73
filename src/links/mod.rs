//! Links: the model, its validation, the pre-compiled destination template,
//! the lock-free table the edge reads, and the store that persists them.
//!
//! Nothing in here touches the network.

pub mod table;
pub mod template;
pub mod validate;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::{Deserialize, Serialize};

pub use table::{LinkTable, SharedLinkTable};
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
/// Kept small because there may be millions: the code and the destination
/// share one allocation, the tenant name is shared by all of its links, and
/// the template marks ranges of the destination instead of copying it.
#[derive(Debug)]
pub struct Link {
    /// The code, then the destination.
    text: Box<str>,
    tenant: Arc<str>,
    tags: Box<[Box<str>]>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    template: Template,
    /// The status the edge answers with.
    pub status: StatusCode,
    /// The redirect status as stored (`status` is 302 if it is not one).
    redirect: u16,
    code_len: u8,
    disabled: bool,
    deleted: bool,
}

impl Link {
    pub fn compile(record: LinkRecord) -> Link {
        let tenant = Arc::from(record.tenant.as_str());
        Link::compile_for(record, tenant)
    }

    /// Compiles `record`, sharing `tenant` (equal to `record.tenant`) with
    /// the tenant's other links.
    pub fn compile_for(record: LinkRecord, tenant: Arc<str>) -> Link {
        debug_assert_eq!(*tenant, *record.tenant);
        let status = StatusCode::from_u16(record.redirect)
            .ok()
            .filter(|s| s.is_redirection())
            .unwrap_or(StatusCode::FOUND);
        let template = Template::compile(&record.destination, record.passthrough);
        // Codes are at most 64 bytes (`validate::MAX_CODE_LEN`).
        let code_len = u8::try_from(record.code.len()).expect("a code is at most 255 bytes");
        let mut text = String::with_capacity(record.code.len() + record.destination.len());
        text.push_str(&record.code);
        text.push_str(&record.destination);
        Link {
            text: text.into_boxed_str(),
            tenant,
            tags: record
                .tags
                .into_iter()
                .map(String::into_boxed_str)
                .collect(),
            created_at: record.created_at,
            updated_at: record.updated_at,
            expires_at: record.expires_at,
            template,
            status,
            redirect: record.redirect,
            code_len,
            disabled: record.disabled,
            deleted: record.deleted,
        }
    }

    /// The link as stored and as the admin API shows it.
    pub fn to_record(&self) -> LinkRecord {
        LinkRecord {
            code: self.code().to_owned(),
            tenant: self.tenant().to_owned(),
            destination: self.destination().to_owned(),
            redirect: self.redirect,
            created_at: self.created_at,
            updated_at: self.updated_at,
            expires_at: self.expires_at,
            disabled: self.disabled,
            deleted: self.deleted,
            tags: self.tags.iter().map(|t| t.to_string()).collect(),
            passthrough: self.template.passthrough(),
        }
    }

    pub fn state_at(&self, now_ms: i64) -> LinkState {
        let expired = self
            .expires_at
            .is_some_and(|t| now_ms >= t.timestamp_millis());
        if self.deleted || self.disabled || expired {
            LinkState::Gone
        } else {
            LinkState::Live
        }
    }

    /// Appends the `Location` for one request (see [`Template::render_into`]).
    #[inline]
    pub fn render_into(&self, vars: &template::Vars<'_>, query: Option<&str>, out: &mut String) {
        self.template
            .render_into(self.destination(), vars, query, out)
    }

    pub fn code(&self) -> &str {
        &self.text[..usize::from(self.code_len)]
    }

    pub fn destination(&self) -> &str {
        &self.text[usize::from(self.code_len)..]
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The shared tenant name.
    pub fn tenant_name(&self) -> &Arc<str> {
        &self.tenant
    }

    /// Deleted links stay as tombstones (see [`LinkRecord::deleted`]).
    pub fn is_deleted(&self) -> bool {
        self.deleted
    }
}
