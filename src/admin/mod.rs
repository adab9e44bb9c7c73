//! The admin listener: `/healthz`, `/readyz`, `/metrics` and the JSON API
//! under `/v1`, authenticated by bearer tokens and scoped to tenants.
//!
//! Kept apart from the edge: its own listener, its own limits (body size,
//! request deadline), and errors in one JSON shape (`error.rs`).

pub mod auth;
pub mod conflicts;
pub mod error;
pub mod links;
pub mod reconciliation;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::clicklog::ClickLog;
use crate::server::Body;
use crate::stats::StatsIndex;
use crate::store::Store;
use crate::telemetry;
use error::{json_response, ApiError};

pub struct Admin {
    pub store: Arc<Store>,
    pub stats: Arc<StatsIndex>,
    /// Full mode: stats come from ClickHouse, readiness includes Kafka.
    pub warehouse: Option<Warehouse>,
    pub ledger: Arc<crate::postback::Ledger>,
    pub clicklog: ClickLog,
    pub metrics: Option<PrometheusHandle>,
    pub public_url: String,
    pub default_redirect: u16,
    /// Request bodies: size cap, deadline and minimum rate.
    pub body: crate::body::BodyLimits,
    pub request_timeout: Duration,
    /// Per-tenant budget of custom codes found taken by other tenants.
    pub conflicts: conflicts::ConflictBudget,
}

/// What the admin API reads in full mode.
pub struct Warehouse {
    pub client: clickhouse::Client,
    pub ship: Arc<crate::ship::ShipStatus>,
}

type Routed = (&'static str, Result<Response<Body>, ApiError>);

/// 503 for an answer read from ClickHouse when it did not give one; `code`
/// says which (`stats_unavailable`, `reconciliation_unavailable`).
fn warehouse_unavailable(code: &'static str, e: &crate::warehouse::WarehouseError) -> ApiError {
    tracing::warn!(error = %e, code, "admin: ClickHouse query failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        code,
        "this is read from ClickHouse, which did not answer; retry shortly",
    )
}

/// Serves one admin request within the request deadline.
pub async fn handle<B>(admin: Arc<Admin>, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (route, result) =
        match tokio::time::timeout(admin.request_timeout, route(admin.clone(), req)).await {
            Ok(routed) => routed,
            Err(_) => (
                "timeout",
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "timeout",
                    "the request took too long",
                )),
            ),
        };
    let resp = result.unwrap_or_else(ApiError::into_response);
    telemetry::admin_request(route, resp.status().as_u16());
    resp
}

async fn route<B>(admin: Arc<Admin>, req: Request<B>) -> Routed
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["healthz"] => (
            "healthz",
            only_get(&method).map(|()| ok_json(serde_json::json!({"status": "ok"}))),
        ),
        ["readyz"] => ("readyz", only_get(&method).map(|()| admin.readiness())),
        ["metrics"] => (
            "metrics",
            only_get(&method).map(|()| admin.render_metrics()),
        ),
        ["v1", ..] => {
            let who = match auth::authenticate(&admin.store, req.headers()) {
                Ok(who) => who,
                Err(e) => return ("auth", Err(e)),
            };
            let body = if matches!(method, Method::POST | Method::PATCH | Method::PUT) {
                match read_body(req.into_body(), admin.body).await {
                    Ok(b) => b,
                    Err(e) => return ("body", Err(e)),
                }
            } else {
                Bytes::new()
            };
            // Store writes take a file lock and fdatasync, stats queries can
            // be long: both run on the blocking pool, never on the workers
            // that serve redirects.
            let admin = Arc::clone(&admin);
            let path = path.clone();
            let dispatch = move || {
                let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
                admin.dispatch_v1(&who, &segments[1..], &method, query.as_deref(), &body)
            };
            match tokio::task::spawn_blocking(dispatch).await {
                Ok(routed) => routed,
                Err(_) => ("v1", Err(ApiError::internal("admin request task failed"))),
            }
        }
        _ => ("unknown", Err(ApiError::not_found("route"))),
    }
}

async fn read_body<B>(body: B, limits: crate::body::BodyLimits) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use crate::body::BodyError;
    crate::body::read(body, limits).await.map_err(|e| {
        telemetry::body_read_refused("admin", e.kind());
        match e {
            BodyError::TooLarge(max) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body is larger than {max} bytes"),
            ),
            e if e.is_slow() => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("request body {e}"),
            ),
            e => ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("could not read the request body: {e}"),
            ),
        }
    })
}

fn only_get(method: &Method) -> Result<(), ApiError> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed("GET, HEAD"))
    }
}

fn ok_json(v: impl serde::Serialize) -> Response<Body> {
    json_response(StatusCode::OK, &v)
}

fn created(v: impl serde::Serialize) -> Response<Body> {
    json_response(StatusCode::CREATED, &v)
}

fn no_content() -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

impl Admin {
    /// Routes an authenticated `/v1/…` request (`rest` is the path after
    /// `v1`). Synchronous: called on the blocking pool.
    fn dispatch_v1(
        &self,
        who: &auth::Principal,
        rest: &[&str],
        method: &Method,
        q: Option<&str>,
        body: &Bytes,
    ) -> Routed {
        let admin = self;
        match (rest, method) {
            (["links"], &Method::POST) => ("links_create", admin.create(who, body).map(created)),
            (["links"], &Method::GET) => ("links_list", admin.list(who, q).map(ok_json)),
            (["links", "batch"], &Method::POST) => {
                ("links_batch", admin.batch(who, body).map(ok_json))
            }
            (["links", code], &Method::GET) => (
                "links_get",
                admin.visible(who, code).map(|l| ok_json(admin.view(l))),
            ),
            (["links", code], &Method::PATCH) => {
                ("links_patch", admin.patch(who, code, body).map(ok_json))
            }
            (["links", code], &Method::DELETE) => (
                "links_delete",
                admin.delete(who, code).map(|()| no_content()),
            ),
            (["links", code, "stats"], &Method::GET) => {
                ("links_stats", admin.stats(who, code, q).map(ok_json))
            }
            (["reconciliation"], &Method::GET) => {
                ("reconciliation", admin.reconciliation(who, q).map(ok_json))
            }
            (["links"], _) => ("v1", Err(ApiError::method_not_allowed("GET, POST"))),
            // POST is the batch call; the others are a link coded `batch`.
            (["links", "batch"], _) => (
                "v1",
                Err(ApiError::method_not_allowed("GET, POST, PATCH, DELETE")),
            ),
            (["links", _], _) => (
                "v1",
                Err(ApiError::method_not_allowed("GET, PATCH, DELETE")),
            ),
            (["links", _, "stats"] | ["reconciliation"], _) => {
                ("v1", Err(ApiError::method_not_allowed("GET")))
            }
            _ => ("v1", Err(ApiError::not_found("route"))),
        }
    }

    /// Ready when the link table is loaded (it is before the listener
    /// binds) and the click-log writer is running.
    fn readiness(&self) -> Response<Body> {
        let kafka_down = self.warehouse.as_ref().is_some_and(|w| {
            !w.ship
                .kafka_reachable
                .load(std::sync::atomic::Ordering::Relaxed)
        });
        if kafka_down {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "not_ready", "reason": "kafka unreachable (clicks are kept in the local log)"}),
            )
        } else if self.clicklog.is_alive() {
            ok_json(serde_json::json!({
                "status": "ready",
                "links": self.store.table().load().len(),
            }))
        } else {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "not_ready", "reason": "click-log writer stopped"}),
            )
        }
    }

    fn render_metrics(&self) -> Response<Body> {
        let text = self
            .metrics
            .as_ref()
            .map(|h| h.render())
            .unwrap_or_default();
        let mut r = Response::new(Full::new(Bytes::from(text)));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        r
    }
}
