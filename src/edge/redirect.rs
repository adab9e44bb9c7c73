//! The redirect hot path.
//!
//! [`decide`] is everything a redirect costs except the hand-off: one table
//! load, one lookup, a click id, an IP hash, the country (when geo is
//! configured), the link's rules and variants (when it has any), the
//! `Location` and cookie headers and the event. No lock, no await, no I/O. [`handle`] adds the
//! click-log hand-off (the only place that may wait, and only under the
//! `backpressure` overflow policy) and the response.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCEPT_LANGUAGE, ALLOW, CACHE_CONTROL, CONTENT_TYPE, LOCATION, REFERER,
    RETRY_AFTER, SET_COOKIE, USER_AGENT,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use super::ratelimit::{too_many_requests, Class, Verdict};
use super::{client_ip::client_ip, Edge};
use crate::clicklog::Recorded;
use crate::clicks::{bots, ClickEvent, ClientText, Signals, MAX_SUB_BYTES};
use crate::links::routing::{Route, Visit};
use crate::links::template::{query_param, Vars};
use crate::links::{validate::is_valid_code, LinkState};
use crate::server::{Body, Peer};

static NO_STORE: HeaderValue = HeaderValue::from_static("private, no-store");
static TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
static ALLOWED: HeaderValue = HeaderValue::from_static("GET, HEAD");
static RETRY_SOON: HeaderValue = HeaderValue::from_static("1");

/// Initial size of the per-thread `Location` buffer (it grows as needed).
const LOCATION_BUF_BYTES: usize = 4096;

thread_local! {
    static LOCATION_BUF: std::cell::RefCell<String> =
        std::cell::RefCell::new(String::with_capacity(LOCATION_BUF_BYTES));
}

/// What the edge answers, before the click-log hand-off.
#[derive(Debug)]
pub enum Decision {
    Redirect {
        status: StatusCode,
        location: HeaderValue,
        cookie: HeaderValue,
        event: ClickEvent,
    },
    NotFound,
    Gone,
    MethodNotAllowed,
    BadRequest,
    /// The request target is longer than `max_request_target_bytes`
    /// (decided by [`handle`] before anything else).
    UriTooLong,
}

/// Decides the answer to a request for `/{code}`. Pure apart from the
/// clock and the random click id.
/// `secure` says the request came over TLS (the cookie gets `Secure`).
pub fn decide<B>(
    edge: &Edge,
    req: &Request<B>,
    peer: IpAddr,
    secure: bool,
    now_ms: i64,
) -> Decision {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Decision::MethodNotAllowed;
    }
    // Authority-form targets (`GET host:443`) have no leading slash.
    let Some(code) = req.uri().path().strip_prefix('/') else {
        return Decision::NotFound;
    };
    if !is_valid_code(code) {
        return Decision::NotFound;
    }
    let link = match edge.links.load().get(code) {
        Some(link) => Arc::clone(link),
        None => return Decision::NotFound,
    };
    if link.state_at(now_ms) == LinkState::Gone {
        return Decision::Gone;
    }
    let click_id = edge.ids.mint(now_ms as u64);
    let headers = req.headers();
    let header = |name| headers.get(name).map_or(&b""[..], HeaderValue::as_bytes);
    let ip = client_ip(peer, headers, &edge.trusted_proxies);
    let ip_hash = edge.salts.hash(ip, now_ms as u64);
    let country = edge.geo.country(peer, ip, headers);
    // A plain link pays one pointer test here; see `links::routing`.
    let route = match link.routing() {
        None => Route {
            country,
            ..Route::default()
        },
        Some(routing) => routing.choose(&Visit {
            now_ms,
            country,
            user_agent: header(USER_AGENT),
            accept_language: header(ACCEPT_LANGUAGE),
            ip_digest: &ip_hash.digest,
        }),
    };
    let query = req.uri().query();
    let sub = query_param(query, "sub").unwrap_or_default();
    let sub = truncate(&sub, MAX_SUB_BYTES);
    let vars = Vars {
        click_id: click_id.as_str(),
        code,
        sub,
    };
    // Render into a reused buffer, then copy once at the exact length.
    let location = LOCATION_BUF.with_borrow_mut(|buf| {
        buf.clear();
        link.render_routed_into(&route, &vars, query, buf);
        HeaderValue::from_maybe_shared(Bytes::copy_from_slice(buf.as_bytes()))
    });
    let Ok(location) = location else {
        return Decision::BadRequest;
    };
    let cookie = if secure {
        &edge.secure_cookie
    } else {
        &edge.cookie
    }
    .render(click_id.as_str());
    let signals = Signals {
        head: req.method() == Method::HEAD,
        prefetch: bots::is_prefetch(headers),
    };
    let status = link.status();
    let mut event = ClickEvent::new(
        click_id,
        now_ms,
        link,
        ip_hash,
        signals,
        ClientText {
            user_agent: header(USER_AGENT),
            referer: header(REFERER),
            sub,
        },
    );
    event.route = route;
    Decision::Redirect {
        status,
        location,
        cookie,
        event,
    }
}

/// Serves one request on the public listener.
pub async fn handle<B>(edge: Arc<Edge>, req: Request<B>, peer: Peer) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let m = &edge.metrics;
    // Postbacks and everything else draw on separate pools: a client that
    // holds postbacks open (slow bodies) fills only the postback pool.
    let postback =
        edge.postbacks.is_some() && crate::postback::endpoint::is_postback_path(req.uri().path());
    let pool = if postback {
        &edge.postback_in_flight
    } else {
        &edge.in_flight
    };
    let Some(_slot) = pool.try_begin() else {
        if postback {
            m.postback_shed.increment(1);
        } else {
            m.shed.increment(1);
        }
        return busy();
    };
    let now_ms = crate::time::now_ms();
    if let (Some(https), false) = (&edge.https_redirect, peer.tls) {
        // No lookup and no click on the plain hop; it is a redirect for
        // the limiter all the same.
        let verdict = edge
            .limiter
            .check(Class::Redirect, peer.addr.ip(), req.headers(), now_ms);
        if let Verdict::Limit { retry_after_secs } = verdict {
            m.rate_limited.increment(1);
            return too_many_requests(retry_after_secs);
        }
        m.https_redirect.increment(1);
        return https.answer(&req);
    }
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    let reserved = req.uri().path().starts_with("/_");
    // Postbacks: their own (generous) limiter class, then the endpoint,
    // which authenticates before it reads anything else.
    match &edge.postbacks {
        Some(pb) if postback && target_len <= edge.max_request_target_bytes => {
            let verdict =
                edge.limiter
                    .check(Class::Postback, peer.addr.ip(), req.headers(), now_ms);
            if let Verdict::Limit { retry_after_secs } = verdict {
                m.rate_limited.increment(1);
                return too_many_requests(retry_after_secs);
            }
            return crate::postback::endpoint::handle(pb, &edge.trusted_proxies, req, peer).await;
        }
        _ => {}
    }
    let decision = if target_len > edge.max_request_target_bytes {
        Decision::UriTooLong
    } else if reserved {
        Decision::NotFound
    } else {
        decide(&edge, &req, peer.addr.ip(), peer.tls, now_ms)
    };
    // Only redirects are generous; every other answer helps a code scan.
    // A redirect's event already hashed the client: the limiter reuses it.
    let (class, hashed) = match &decision {
        Decision::Redirect { event, .. } => (Class::Redirect, Some(event.ip_hash)),
        _ => (Class::NotFound, None),
    };
    let client = client_ip(peer.addr.ip(), req.headers(), &edge.trusted_proxies);
    let verdict = edge
        .limiter
        .check_client(class, client, hashed, now_ms, started);
    if let Verdict::Limit { retry_after_secs } = verdict {
        m.rate_limited.increment(1);
        return too_many_requests(retry_after_secs);
    }
    if reserved && !matches!(decision, Decision::UriTooLong) {
        m.reserved.increment(1);
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    match decision {
        Decision::Redirect {
            status,
            location,
            cookie,
            event,
        } => {
            if edge.clicklog.record(event).await == Recorded::Refused {
                m.unavailable.increment(1);
                return busy();
            }
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = status;
            let h = resp.headers_mut();
            h.insert(LOCATION, location);
            h.insert(SET_COOKIE, cookie);
            h.insert(CACHE_CONTROL, NO_STORE.clone());
            m.redirected(status).increment(1);
            m.duration.record(started.elapsed().as_secs_f64());
            resp
        }
        Decision::NotFound => {
            m.not_found.increment(1);
            plain(StatusCode::NOT_FOUND, "not found\n")
        }
        Decision::Gone => {
            m.gone.increment(1);
            plain(StatusCode::GONE, "this link is no longer available\n")
        }
        Decision::MethodNotAllowed => {
            m.method_not_allowed.increment(1);
            let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            resp.headers_mut().insert(ALLOW, ALLOWED.clone());
            resp
        }
        Decision::BadRequest => {
            m.bad_request.increment(1);
            plain(StatusCode::BAD_REQUEST, "bad request\n")
        }
        Decision::UriTooLong => {
            m.uri_too_long.increment(1);
            plain(StatusCode::URI_TOO_LONG, "request target too long\n")
        }
    }
}

/// 503 + `Retry-After: 1`: the click log or the process is saturated.
fn busy() -> Response<Body> {
    let mut resp = plain(StatusCode::SERVICE_UNAVAILABLE, "busy, retry\n");
    resp.headers_mut().insert(RETRY_AFTER, RETRY_SOON.clone());
    resp
}

/// A small text answer; every edge answer is `private, no-store`.
fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CACHE_CONTROL, NO_STORE.clone());
    h.insert(CONTENT_TYPE, TEXT.clone());
    resp
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
