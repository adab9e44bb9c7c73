//! Links: the model, its validation, the pre-compiled destination template,
//! the lock-free table the edge reads, and the store that persists them.
//!
//! Nothing in here touches the network.

pub mod table;
pub mod template;
pub mod validate;

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

/// A link compiled for the hot path: status and template prepared once.
#[derive(Debug)]
pub struct Link {
    pub record: LinkRecord,
    pub status: StatusCode,
    pub template: Template,
    expires_at_ms: Option<i64>,
}

impl Link {
    pub fn compile(record: LinkRecord) -> Link {
        let status = StatusCode::from_u16(record.redirect)
            .ok()
            .filter(|s| s.is_redirection())
            .unwrap_or(StatusCode::FOUND);
        let template = Template::compile(&record.destination, record.passthrough);
        let expires_at_ms = record.expires_at.map(|t| t.timestamp_millis());
        Link {
            record,
            status,
            template,
            expires_at_ms,
        }
    }

    pub fn state_at(&self, now_ms: i64) -> LinkState {
        let expired = self.expires_at_ms.is_some_and(|t| now_ms >= t);
        if self.record.deleted || self.record.disabled || expired {
            LinkState::Gone
        } else {
            LinkState::Live
        }
    }

    pub fn code(&self) -> &str {
        &self.record.code
    }
}
