//! `POST` and `GET /_postback/{network}` on the public edge.
//!
//! Everything before the ledger happens here, in this order: the network
//! (unknown → 404, nothing recorded), the IP allow-list, the credential
//! (signature over the raw body for POST, `token=` for GET), then the
//! fields through the network's maps. The ledger (on the blocking pool,
//! as it fsyncs) does the rest and every answer follows the contract:
//! 200 `{"result":…}` for outcomes the network must not retry, 401, 400
//! naming the field, 404, 422. The token and the signature are never
//! logged, and the request URI (which holds the token) is never logged.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use ipnet::IpNet;

use super::ledger::Submission;
use super::networks::{is_valid_name, AuthMode, Network};
use super::params::{self, FieldError, Json, Query, TOKEN_PARAM};
use super::signature::{SignatureError, SignatureHeader, HEADER};
use super::{Outcome, Postbacks};
use crate::edge::client_ip::client_ip;
use crate::server::{Body, Peer};

pub const PATH_PREFIX: &str = "/_postback/";
static NO_STORE: HeaderValue = HeaderValue::from_static("private, no-store");
static JSON: HeaderValue = HeaderValue::from_static("application/json");
static ALLOWED: HeaderValue = HeaderValue::from_static("GET, POST");

pub fn is_postback_path(path: &str) -> bool {
    path.starts_with(PATH_PREFIX)
}

/// Answers one postback.
pub async fn handle<B>(
    pb: &Arc<Postbacks>,
    trusted_proxies: &[IpNet],
    req: Request<B>,
    peer: Peer,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    // Rate limiting (the edge's per-client limiter, postback class) hooks
    // in here: one call, before any lookup or body read.
    let name = &req.uri().path()[PATH_PREFIX.len()..];
    let network = match is_valid_name(name).then(|| pb.networks.get(name)).flatten() {
        Some(n) => n,
        None => {
            pb.metrics.unknown_network.increment(1);
            return answer(
                StatusCode::NOT_FOUND,
                serde_json::json!({"result": "unknown_network"}),
            );
        }
    };
    if req.method() != Method::GET && req.method() != Method::POST {
        let mut resp = answer(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"result": "method_not_allowed"}),
        );
        resp.headers_mut().insert(ALLOW, ALLOWED.clone());
        return resp;
    }
    let ip = client_ip(peer.addr.ip(), req.headers(), trusted_proxies);
    let now_ms = crate::time::now_ms();
    let (submission, field) = authenticate_and_read(pb, &network, ip, req, now_ms).await;
    pb.metrics.verify.record(started.elapsed().as_secs_f64());
    let ledger = pb.ledger.clone();
    let net = network.clone();
    let decided =
        tokio::task::spawn_blocking(move || ledger.process(&net, submission, now_ms)).await;
    match decided {
        Ok(Ok(d)) => {
            network.count(d.outcome);
            tracing::debug!(network = %network.name, outcome = d.outcome.as_str(), "postback");
            let mut body = serde_json::json!({"result": d.outcome.as_str()});
            if d.outcome != Outcome::Accepted {
                if let Some(r) = &d.reason {
                    body["reason"] = r.as_str().into();
                }
            }
            if let (Outcome::Malformed, Some(f)) = (d.outcome, field) {
                body["field"] = f.into();
            }
            answer(d.outcome.http_status(), body)
        }
        Ok(Err(e)) => {
            pb.metrics.ledger_errors.increment(1);
            tracing::error!(network = %network.name, error = %e, "postback: ledger write failed; answered 503");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"result": "unavailable", "reason": "could not record the postback; retry"}),
            )
        }
        Err(_) => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"result": "unavailable", "reason": "retry"}),
        ),
    }
}

/// The credential check and the fields. Returns the malformed field name
/// beside the submission, for the answer.
async fn authenticate_and_read<B>(
    pb: &Postbacks,
    network: &Network,
    ip: IpAddr,
    req: Request<B>,
    now_ms: i64,
) -> (Submission, Option<String>)
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let bad_auth = |reason: &str| {
        (
            Submission::Refused {
                outcome: Outcome::BadAuth,
                reason: reason.to_owned(),
            },
            None,
        )
    };
    let malformed = |e: FieldError| {
        let field = Some(e.field.clone());
        (
            Submission::Refused {
                outcome: Outcome::Malformed,
                reason: e.to_string(),
            },
            field,
        )
    };
    if !network.ip_allowed(ip) {
        return bad_auth("the client address is not in the network's allowed IPs");
    }
    if req.method() == Method::GET {
        if !network.accepts(AuthMode::Token) {
            return bad_auth("token (GET) postbacks are not enabled for this network");
        }
        let query = req.uri().query().unwrap_or("");
        let token = match Query(query).get_value(TOKEN_PARAM) {
            Ok(Some(token)) => token,
            Ok(None) => return bad_auth("the `token` parameter is missing"),
            // Given twice: malformed, whichever of the two is right.
            Err(e) => return malformed(e),
        };
        if !network.token_matches(&token) {
            return bad_auth("the token does not match");
        }
        return match params::extract(network, &Query(query)) {
            Ok(f) => (Submission::Fields(f), None),
            Err(e) => malformed(e),
        };
    }
    if !network.accepts(AuthMode::Hmac) {
        return bad_auth("signed (POST) postbacks are not enabled for this network");
    }
    let header = match req.headers().get(HEADER).map(|v| v.to_str()) {
        None => return bad_auth(&SignatureError::Missing.to_string()),
        Some(Err(_)) => return bad_auth(&SignatureError::Garbled.to_string()),
        Some(Ok(v)) => match SignatureHeader::parse(v) {
            Ok(h) => h,
            Err(e) => return bad_auth(&e.to_string()),
        },
    };
    // A deadline and a minimum rate: a body that trickles or never comes
    // frees its slot within `edge.body_read_timeout_ms`.
    let body = match crate::body::read(req.into_body(), pb.body).await {
        Ok(b) => b,
        Err(e) => {
            crate::telemetry::body_read_refused("edge", e.kind());
            return malformed(FieldError {
                field: "body".into(),
                reason: e.to_string(),
            });
        }
    };
    if let Err(e) = header.verify(&network.secrets_at(now_ms), &body, now_ms.div_euclid(1000)) {
        return bad_auth(&e.to_string());
    }
    match Json::parse(&body).and_then(|j| params::extract(network, &j)) {
        Ok(f) => (Submission::Fields(f), None),
        Err(e) => malformed(e),
    }
}

impl Query<'_> {
    fn get_value(&self, name: &str) -> Result<Option<String>, FieldError> {
        params::Source::get(self, name)
    }
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let bytes = serde_json::to_vec(&body).expect("JSON values serialise");
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CACHE_CONTROL, NO_STORE.clone());
    h.insert(CONTENT_TYPE, JSON.clone());
    resp
}
