//! `/console`: the operator console on the admin listener, server-rendered
//! HTML (maud) with no script and no external asset, under a strict
//! Content-Security-Policy.
//!
//! Owns the console's routes, sign-in and sign-out, and turning forms into
//! calls of the same `Admin` methods the JSON API uses, so validation and
//! tenant scoping are the API's own: a tenant's session sees only its
//! tenant (another tenant's code is a 404), an admin's sees every tenant.
//! Sessions and CSRF tokens are `session.rs`; pages are `pages.rs`; the
//! stats chart is `chart.rs`. Never reads a bearer header: the console is
//! cookie-authenticated, the API is not.

pub mod chart;
pub mod pages;
pub mod session;

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use maud::Markup;

use super::auth::{principal_for_hash, principal_for_token};
use super::error::ApiError;
use super::Admin;
use crate::server::Body;
use pages::{Flash, LinksPage, Viewer};
use session::{Session, SESSION_COOKIE, SESSION_TTL, SIGN_IN_COOKIE};

/// No script, no frame, no foreign origin: styles and forms are our own.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";
const PAGE_SIZE: usize = 25;
/// Links read per store call while searching.
const SCAN_BATCH: usize = 500;
/// Most links one search page looks through before it offers "next page".
const SCAN_LIMIT: usize = 20_000;
const SIGN_IN_COOKIE_SECS: u64 = 3600;
const HOUR_MS: i64 = 3_600_000;

/// Whether `path` is the console's.
pub fn owns(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

/// A parsed console request, handed to the blocking pool.
struct Ask {
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    form: Vec<(String, String)>,
}

impl Ask {
    fn query(&self, key: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_deref().unwrap_or("").as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    fn field(&self, key: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the request came over HTTPS (directly or via a proxy that
    /// says so): session cookies are then `Secure`.
    fn secure(&self) -> bool {
        self.headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
    }
}

/// Serves one console request; returns the metrics route label too.
pub async fn handle<B>(admin: Arc<Admin>, req: Request<B>) -> (&'static str, Response<Body>)
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let form = if parts.method == Method::POST {
        match super::read_body(body, admin.body).await {
            Ok(b) => form_urlencoded::parse(&b).into_owned().collect(),
            Err(e) => return ("console", problem(e.status, "Request refused", &e.message)),
        }
    } else {
        Vec::new()
    };
    let ask = Ask {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        form,
    };
    // Stats and store writes block (file lock, fdatasync, ClickHouse): on
    // the blocking pool, like the API.
    match tokio::task::spawn_blocking(move || admin.console(&ask)).await {
        Ok(resp) => ("console", resp),
        Err(_) => (
            "console",
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something broke",
                "see the server log",
            ),
        ),
    }
}

fn html(status: StatusCode, page: Markup) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(page.into_string())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(h);
    r
}

fn secure_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn problem(status: StatusCode, title: &str, message: &str) -> Response<Body> {
    html(status, pages::problem(title, message))
}

/// 303 to `location` (after a form post, or to the sign-in page).
fn see_other(location: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    let h = r.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(location).unwrap_or(HeaderValue::from_static("/console/links")),
    );
    secure_headers(h);
    r
}

fn with_cookie(mut r: Response<Body>, cookie: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// A link code from a console path segment, if it could be one.
fn code_segment(s: &str) -> Option<&str> {
    crate::links::validate::is_valid_code(s).then_some(s)
}

impl Admin {
    fn console(&self, ask: &Ask) -> Response<Body> {
        let rest = ask.path.trim_start_matches("/console");
        let segments: Vec<&str> = rest.trim_matches('/').split('/').collect();
        let get = ask.method == Method::GET || ask.method == Method::HEAD;
        let post = ask.method == Method::POST;
        match (segments.as_slice(), get, post) {
            ([""], true, _) => see_other("/console/links"),
            (["app.css"], true, _) => {
                let mut r = Response::new(Full::new(Bytes::from_static(
                    pages::STYLESHEET.0.as_bytes(),
                )));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/css; charset=utf-8"),
                );
                secure_headers(r.headers_mut());
                r.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("max-age=300"),
                );
                r
            }
            (["sign-in"], true, _) => self.sign_in_page(ask, None),
            (["sign-in"], _, true) => self.sign_in(ask),
            (["sign-out"], _, true) => self.sign_out(ask),
            (["links"], true, _) => self.with_session(ask, |s| self.links_page(ask, s, None)),
            (["links"], _, true) => self.with_form(ask, |s| self.create_from_form(ask, s)),
            (["links", code], true, _) => match code_segment(code) {
                Some(code) => self.with_session(ask, |s| self.link_page(ask, s, code, None)),
                None => self.with_session(ask, |_| not_found()),
            },
            (["links", code, "edit"], _, true) => match code_segment(code) {
                Some(code) => self.with_form(ask, |s| self.edit_from_form(ask, s, code)),
                None => self.with_form(ask, |_| not_found()),
            },
            (["links", code, "disable"], _, true) => match code_segment(code) {
                Some(code) => self.with_form(ask, |s| self.toggle_from_form(ask, s, code)),
                None => self.with_form(ask, |_| not_found()),
            },
            (["networks"], true, _) => self.with_session(ask, |s| self.networks_page(s, None)),
            (["networks", name, "rotate"], _, true) => {
                let name = (*name).to_owned();
                self.with_form(ask, |s| self.rotate_from_form(s, &name))
            }
            (["reconciliation"], true, _) => {
                self.with_session(ask, |s| self.reconciliation_page(ask, s))
            }
            _ => not_found(),
        }
    }

    /// The request's live session: its cookie names one that has not
    /// expired or been signed out, and whose token is still valid.
    fn session(&self, ask: &Ask) -> Option<(String, Session)> {
        let id = session::cookie(&ask.headers, SESSION_COOKIE)?;
        let s = self.console_sessions.get(id, crate::time::now_ms())?;
        match principal_for_hash(&self.store, &s.token_hash) {
            Some(who) if who == s.who => Some((id.to_owned(), s)),
            _ => {
                self.console_sessions.revoke(id);
                None
            }
        }
    }

    /// Runs a page for a signed-in viewer; others go to the sign-in page.
    fn with_session(
        &self,
        ask: &Ask,
        page: impl FnOnce(&Session) -> Response<Body>,
    ) -> Response<Body> {
        match self.session(ask) {
            Some((_, s)) => page(&s),
            None => see_other("/console/sign-in"),
        }
    }

    /// Like [`Self::with_session`] for a form post, which must also carry
    /// the session's CSRF token: a forged post is refused with 403.
    fn with_form(&self, ask: &Ask, act: impl FnOnce(&Session) -> Response<Body>) -> Response<Body> {
        let Some((_, s)) = self.session(ask) else {
            return see_other("/console/sign-in");
        };
        let presented = ask.field("csrf").unwrap_or("");
        if !session::same_secret(presented, &s.csrf) {
            return problem(
                StatusCode::FORBIDDEN,
                "Form refused",
                "This form did not come from your console session. Reload the page and try again.",
            );
        }
        act(&s)
    }

    fn sign_in_page(&self, ask: &Ask, error: Option<&str>) -> Response<Body> {
        if error.is_none() && self.session(ask).is_some() {
            return see_other("/console/links");
        }
        let token = session::random_token();
        let status = if error.is_some() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        let r = html(status, pages::sign_in(&token, error));
        with_cookie(
            r,
            &session::set_cookie(SIGN_IN_COOKIE, &token, SIGN_IN_COOKIE_SECS, ask.secure()),
        )
    }

    fn sign_in(&self, ask: &Ask) -> Response<Body> {
        let expected = session::cookie(&ask.headers, SIGN_IN_COOKIE).unwrap_or("");
        let presented = ask.field("csrf").unwrap_or("");
        if expected.is_empty() || !session::same_secret(presented, expected) {
            return problem(
                StatusCode::FORBIDDEN,
                "Form refused",
                "This sign-in form did not come from this console. Reload the sign-in page and try again.",
            );
        }
        let token = ask.field("token").unwrap_or("").trim();
        let Ok((who, hash)) = principal_for_token(&self.store, token) else {
            return self.sign_in_page(ask, Some("That token is not valid."));
        };
        let Some(id) = self
            .console_sessions
            .create(who, hash, crate::time::now_ms())
        else {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many sessions",
                "Try again later.",
            );
        };
        let r = see_other("/console/links");
        let r = with_cookie(
            r,
            &session::set_cookie(SESSION_COOKIE, &id, SESSION_TTL.as_secs(), ask.secure()),
        );
        with_cookie(r, &session::set_cookie(SIGN_IN_COOKIE, "", 0, ask.secure()))
    }

    fn sign_out(&self, ask: &Ask) -> Response<Body> {
        if let Some((id, s)) = self.session(ask) {
            if !session::same_secret(ask.field("csrf").unwrap_or(""), &s.csrf) {
                return problem(
                    StatusCode::FORBIDDEN,
                    "Form refused",
                    "This form did not come from your console session.",
                );
            }
            self.console_sessions.revoke(&id);
        }
        with_cookie(
            see_other("/console/sign-in"),
            &session::set_cookie(SESSION_COOKIE, "", 0, ask.secure()),
        )
    }

    fn links_page(&self, ask: &Ask, s: &Session, flash: Option<Flash>) -> Response<Body> {
        let q = ask.query("q").unwrap_or_default();
        let needle = q.trim().to_lowercase();
        let cursor = ask.query("cursor").filter(|c| code_segment(c).is_some());
        let first_page = cursor.is_none();
        // An admin may pick one tenant; a tenant's session is its own.
        let picked = ask
            .query("tenant")
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty() && crate::tokens::is_valid_tenant(t));
        let scope = s.who.tenant.clone().or(picked.clone());
        let mut after = cursor;
        let (mut shown, mut scanned) = (Vec::new(), 0);
        let mut next = None;
        'scan: loop {
            let batch = self
                .store
                .list_links(scope.as_deref(), after.as_deref(), SCAN_BATCH);
            let exhausted = batch.len() < SCAN_BATCH;
            for l in batch {
                scanned += 1;
                after = Some(l.code.clone());
                let hit = needle.is_empty()
                    || l.code.to_lowercase().contains(&needle)
                    || l.destination.to_lowercase().contains(&needle)
                    || l.tags.iter().any(|t| t.to_lowercase().contains(&needle));
                if hit {
                    if shown.len() == PAGE_SIZE {
                        next = shown
                            .last()
                            .map(|v: &super::links::LinkView| v.code.clone());
                        break 'scan;
                    }
                    shown.push(self.view(l));
                }
                if scanned >= SCAN_LIMIT {
                    next = after.clone();
                    break 'scan;
                }
            }
            if exhausted {
                break;
            }
        }
        let viewer = Viewer {
            tenant: s.who.tenant.as_deref(),
            csrf: &s.csrf,
        };
        let status = if matches!(flash, Some(Flash::Bad(_))) {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::OK
        };
        html(
            status,
            pages::links(
                &viewer,
                LinksPage {
                    links: &shown,
                    q: &q,
                    tenant: if s.who.tenant.is_none() {
                        picked.as_deref().unwrap_or("")
                    } else {
                        ""
                    },
                    next,
                    first_page,
                    flash,
                    admin: s.who.tenant.is_none(),
                },
            ),
        )
    }

    fn create_from_form(&self, ask: &Ask, s: &Session) -> Response<Body> {
        let mut body = serde_json::Map::new();
        body.insert(
            "destination".into(),
            ask.field("destination").unwrap_or("").trim().into(),
        );
        if let Some(code) = ask.field("code").map(str::trim).filter(|c| !c.is_empty()) {
            body.insert("code".into(), code.into());
        }
        let tags: Vec<serde_json::Value> = ask
            .field("tags")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(Into::into)
            .collect();
        if !tags.is_empty() {
            body.insert("tags".into(), tags.into());
        }
        if s.who.tenant.is_none() {
            if let Some(t) = ask.field("tenant").map(str::trim).filter(|t| !t.is_empty()) {
                body.insert("tenant".into(), t.into());
            }
        }
        let json = serde_json::to_vec(&body).expect("a map serialises");
        match self.create(&s.who, &json) {
            Ok(link) => see_other(&format!("/console/links/{}?created=1", link.code)),
            Err(e) => self.links_page(ask, s, Some(Flash::Bad(e.message))),
        }
    }

    fn link_page(
        &self,
        ask: &Ask,
        s: &Session,
        code: &str,
        flash: Option<Flash>,
    ) -> Response<Body> {
        let link = match self.visible(&s.who, code) {
            Ok(l) => self.view(l),
            Err(_) => return not_found(),
        };
        let hourly = ask.query("interval").as_deref() == Some("hour");
        let now = crate::time::now_ms();
        let query = if hourly {
            // 48 whole hours, the current one included.
            let to = (now / HOUR_MS + 1) * HOUR_MS;
            format!(
                "interval=hour&from={}&to={}",
                crate::time::rfc3339(to - 48 * HOUR_MS),
                crate::time::rfc3339(to)
            )
        } else {
            let day = 24 * HOUR_MS;
            let to = (now / day + 1) * day;
            format!(
                "interval=day&from={}&to={}",
                crate::time::rfc3339(to - 30 * day),
                crate::time::rfc3339(to)
            )
        };
        let stats = match self.stats(&s.who, code, Some(&query)) {
            Ok(st) => st,
            Err(e) => return api_problem(e),
        };
        let flash = flash.or_else(|| {
            if ask.query("created").as_deref() == Some("1") {
                Some(Flash::Ok(format!("Created {}.", link.short_url)))
            } else if ask.query("saved").as_deref() == Some("1") {
                Some(Flash::Ok(
                    "Saved: the edge serves the change within a second.".into(),
                ))
            } else {
                None
            }
        });
        let viewer = Viewer {
            tenant: s.who.tenant.as_deref(),
            csrf: &s.csrf,
        };
        html(
            StatusCode::OK,
            pages::link(&viewer, &link, &stats, hourly, flash),
        )
    }

    fn edit_from_form(&self, ask: &Ask, s: &Session, code: &str) -> Response<Body> {
        let tags: Vec<&str> = ask
            .field("tags")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        let body = serde_json::json!({
            "destination": ask.field("destination").unwrap_or("").trim(),
            "tags": tags,
        });
        let body = serde_json::to_vec(&body).expect("JSON serialises");
        match self.patch(&s.who, code, &body) {
            Ok(_) => see_other(&format!("/console/links/{code}?saved=1")),
            Err(e) if e.status == StatusCode::NOT_FOUND => not_found(),
            Err(e) => {
                let mut r = self.link_page(ask, s, code, Some(Flash::Bad(e.message)));
                if r.status() == StatusCode::OK {
                    *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
                }
                r
            }
        }
    }

    fn toggle_from_form(&self, ask: &Ask, s: &Session, code: &str) -> Response<Body> {
        let disabled = ask.field("disabled") == Some("true");
        let body = serde_json::to_vec(&serde_json::json!({ "disabled": disabled }))
            .expect("JSON serialises");
        match self.patch(&s.who, code, &body) {
            Ok(_) => see_other(&format!("/console/links/{code}")),
            Err(e) if e.status == StatusCode::NOT_FOUND => not_found(),
            Err(e) => api_problem(e),
        }
    }

    /// Networks are global (not a tenant's): admins only; a tenant's
    /// session gets a 404, as for anything not its own.
    fn networks_page(&self, s: &Session, shown_once: Option<(String, String)>) -> Response<Body> {
        let (Some(nets), None) = (&self.networks, &s.who.tenant) else {
            return not_found();
        };
        if let Err(e) = nets.store.poll() {
            return api_problem(ApiError::internal(e));
        }
        let list = nets.store.list();
        let viewer = Viewer {
            tenant: None,
            csrf: &s.csrf,
        };
        html(
            StatusCode::OK,
            pages::networks(&viewer, &list, shown_once.as_ref()),
        )
    }

    fn rotate_from_form(&self, s: &Session, name: &str) -> Response<Body> {
        let (Some(nets), None) = (&self.networks, &s.who.tenant) else {
            return not_found();
        };
        if !crate::postback::networks::is_valid_name(name) {
            return not_found();
        }
        let secret = zeroize::Zeroizing::new(crate::postback::cli::random_secret());
        match crate::postback::networks::rotate_secret(
            &nets.store,
            &nets.sealer,
            name,
            nets.rotation_grace,
            &secret,
        ) {
            Ok(_) => {
                tracing::info!(network = name, "console: network secret rotated");
                self.networks_page(s, Some((name.to_owned(), secret.to_string())))
            }
            Err(crate::postback::networks::NetworkError::NotFound(_)) => not_found(),
            Err(e) => api_problem(ApiError::internal(e)),
        }
    }

    fn reconciliation_page(&self, ask: &Ask, s: &Session) -> Response<Body> {
        let network = ask.query("network").unwrap_or_default();
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("network", network.trim());
        let data = match self.reconciliation(&s.who, Some(&q.finish())) {
            Ok(r) => serde_json::to_value(&r).expect("reconciliation serialises"),
            Err(e) => return api_problem(e),
        };
        let viewer = Viewer {
            tenant: s.who.tenant.as_deref(),
            csrf: &s.csrf,
        };
        html(
            StatusCode::OK,
            pages::reconciliation(&viewer, &data, network.trim()),
        )
    }
}

fn not_found() -> Response<Body> {
    problem(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is nothing here for your session.",
    )
}

fn api_problem(e: ApiError) -> Response<Body> {
    problem(e.status, "Cannot show this", &e.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_owns_its_prefix_only() {
        assert!(owns("/console"));
        assert!(owns("/console/links"));
        assert!(!owns("/consoles"));
        assert!(!owns("/v1/console"));
    }

    #[test]
    fn the_policy_allows_no_script_and_no_foreign_origin() {
        assert!(CSP.contains("default-src 'none'"));
        assert!(!CSP.contains("script-src"));
        assert!(!CSP.contains("unsafe"));
    }
}
