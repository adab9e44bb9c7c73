//! The public listener: routing, the redirect hot path and its state.
//!
//! Everything the redirect path reads is built once at start-up into
//! [`Edge`]; the only shared mutable state it touches is the link table
//! (one `ArcSwap` load) and the salt ratchet (another).

pub mod client_ip;
pub mod geo;
pub mod ratelimit;
pub mod redirect;
pub mod shed;
pub mod to_https;

use std::sync::Arc;

use http::HeaderValue;
use ipnet::IpNet;

use crate::clicklog::ClickLog;
use crate::clicks::{ClickIds, SaltRatchet};
use crate::config::CookieConfig;
use crate::links::SharedLinkTable;
use crate::telemetry::EdgeMetrics;

pub struct Edge {
    pub links: Arc<SharedLinkTable>,
    pub ids: ClickIds,
    pub salts: Arc<SaltRatchet>,
    pub clicklog: ClickLog,
    pub trusted_proxies: Vec<IpNet>,
    /// The visitor's country, for rules and events.
    pub geo: geo::Geo,
    pub cookie: CookieTemplate,
    /// The same cookie with `Secure`, for requests that came over TLS.
    pub secure_cookie: CookieTemplate,
    pub metrics: EdgeMetrics,
    /// `/_postback/{network}`; `None` where postbacks are not served.
    pub postbacks: Option<Arc<crate::postback::Postbacks>>,
    /// Per-client token buckets (redirects, not-found answers, postbacks).
    pub limiter: Arc<ratelimit::RateLimiter>,
    /// Longer request targets (path and query) get 414.
    pub max_request_target_bytes: usize,
    /// Requests in flight on the edge; beyond the cap, 503 at once.
    pub in_flight: shed::InFlightLimit,
    /// Postbacks in flight: their own pool, so postbacks (slow bodies
    /// included) can never take the slots redirects need.
    pub postback_in_flight: shed::InFlightLimit,
    /// Set when the plain listener redirects everything to HTTPS.
    pub https_redirect: Option<to_https::HttpsRedirect>,
}

/// `Set-Cookie` pre-rendered around the click id.
pub struct CookieTemplate {
    prefix: String,
    suffix: String,
}

impl CookieTemplate {
    pub fn new(cfg: &CookieConfig, secure: bool) -> CookieTemplate {
        CookieTemplate {
            prefix: format!("{}=", cfg.name),
            suffix: format!(
                "; Max-Age={}; Path=/; HttpOnly; SameSite=Lax{}",
                cfg.max_age_secs,
                if secure { "; Secure" } else { "" }
            ),
        }
    }

    pub fn render(&self, click_id: &str) -> HeaderValue {
        let mut s = String::with_capacity(self.prefix.len() + click_id.len() + self.suffix.len());
        s.push_str(&self.prefix);
        s.push_str(click_id);
        s.push_str(&self.suffix);
        HeaderValue::try_from(s).expect("cookie name and click id are token characters")
    }
}
