//! The admin listener: `/healthz`, `/readyz`, `/metrics` and the JSON API
//! under `/v1`, authenticated by bearer tokens and scoped to tenants.
//!
//! Kept apart from the edge: its own listener, its own limits (body size,
//! request deadline), and errors in one JSON shape (`error.rs`).

pub mod auth;
pub mod conflicts;
pub mod console;
pub mod error;
pub mod export;
pub mod links;
pub mod openapi;
pub mod reconciliation;
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::clicklog::ClickLog;
use crate::server::Body;
use crate::stats::StatsIndex;
use crate::store::Store;
use crate::telemetry;
use error::{json_response, ApiError};
use routes::RouteId;

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
    /// Signed-in console sessions (`console/session.rs`).
    pub console_sessions: console::session::Sessions,
    /// The postback networks, for the console's networks page (admins).
    pub networks: Option<NetworkAdmin>,
    /// Per-tenant budget of custom codes found taken by other tenants.
    pub conflicts: conflicts::ConflictBudget,
    /// Where the click log and the ledger are (exports read them).
    pub data_dir: std::path::PathBuf,
    /// This node's `edge_node` (exported click records carry it).
    pub edge_node: String,
    /// `[retention] days`: nothing older is exported.
    pub retention: Duration,
}

/// An admin answer: whole, or streamed (exports).
pub type AdminBody = Either<Body, export::ExportBody>;

/// What the console needs to list networks and rotate their secrets.
pub struct NetworkAdmin {
    pub store: crate::postback::networks::NetworkStore,
    pub sealer: crate::postback::sealed::Sealer,
    pub rotation_grace: Duration,
}

/// What the admin API reads in full mode.
pub struct Warehouse {
    pub client: clickhouse::Client,
    pub ship: Arc<crate::ship::ShipStatus>,
}

/// `GET /healthz`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(value_type = String, example = "ok")]
    pub status: &'static str,
}

/// `GET /readyz`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    #[schema(value_type = String, example = "ready")]
    pub status: &'static str,
    /// Links in the edge's table (when ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub links: Option<u64>,
    /// Why not (when not ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub reason: Option<&'static str>,
}

type Routed = (&'static str, Result<Response<AdminBody>, ApiError>);

/// A whole answer as an [`AdminBody`].
fn whole(r: Response<Body>) -> Response<AdminBody> {
    r.map(Either::Left)
}

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
pub async fn handle<B>(admin: Arc<Admin>, req: Request<B>) -> Response<AdminBody>
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
    let resp = result.unwrap_or_else(|e| whole(e.into_response()));
    telemetry::admin_request(route, resp.status().as_u16());
    resp
}

async fn route<B>(admin: Arc<Admin>, req: Request<B>) -> Routed
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if console::owns(req.uri().path()) {
        let (label, resp) = console::handle(admin, req).await;
        return (label, Ok(whole(resp)));
    }
    let method = req.method().clone();
    let path = req.uri().path();
    let query = req.uri().query().map(str::to_owned);
    let (route, params) = match routes::find(&method, path) {
        Ok(m) => (
            m.route,
            m.params.into_iter().map(str::to_owned).collect::<Vec<_>>(),
        ),
        Err(e) => {
            let label = if path.starts_with("/v1/") {
                "v1"
            } else {
                "unknown"
            };
            return (label, Err(e.into_error()));
        }
    };
    let name = route.id.name();
    match route.id {
        RouteId::Healthz => (name, Ok(whole(ok_json(Health { status: "ok" })))),
        RouteId::Readyz => (name, Ok(whole(admin.readiness()))),
        RouteId::Metrics => (name, Ok(whole(admin.render_metrics()))),
        RouteId::OpenApi => (name, Ok(whole(openapi::response()))),
        id => {
            let who = match auth::authenticate(&admin.store, req.headers()) {
                Ok(who) => who,
                Err(e) => return ("auth", Err(e)),
            };
            if let RouteId::ExportClicks | RouteId::ExportConversions = id {
                let format = export::Format::from_headers(req.headers());
                return (name, admin.export(&who, id, format, query.as_deref()));
            }
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
            let dispatch = move || admin.dispatch_v1(&who, id, &params, query.as_deref(), &body);
            match tokio::task::spawn_blocking(dispatch).await {
                Ok(result) => (name, result.map(whole)),
                Err(_) => (name, Err(ApiError::internal("admin request task failed"))),
            }
        }
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
        id: RouteId,
        params: &[String],
        q: Option<&str>,
        body: &Bytes,
    ) -> Result<Response<Body>, ApiError> {
        let code = || params.first().map(String::as_str).unwrap_or_default();
        match id {
            RouteId::LinksCreate => self.create(who, body).map(created),
            RouteId::LinksList => self.list(who, q).map(ok_json),
            RouteId::LinksBatch => self.batch(who, body).map(ok_json),
            RouteId::LinksGet => self.visible(who, code()).map(|l| ok_json(self.view(l))),
            RouteId::LinksPatch => self.patch(who, code(), body).map(ok_json),
            RouteId::LinksDelete => self.delete(who, code()).map(|()| no_content()),
            RouteId::LinksStats => self.stats(who, code(), q).map(ok_json),
            RouteId::Reconciliation => self.reconciliation(who, q).map(ok_json),
            RouteId::Healthz | RouteId::Readyz | RouteId::Metrics | RouteId::OpenApi => {
                Err(ApiError::internal("public route dispatched as /v1"))
            }
            RouteId::ExportClicks | RouteId::ExportConversions => {
                Err(ApiError::internal("an export is streamed, not dispatched"))
            }
        }
    }

    /// `GET /v1/export/…`: the scope is checked before the answer starts
    /// (a bad one is a whole error answer); the records then stream.
    fn export(
        &self,
        who: &auth::Principal,
        id: RouteId,
        format: export::Format,
        q: Option<&str>,
    ) -> Result<Response<AdminBody>, ApiError> {
        let mut scope = export::scope(who, q)?;
        let window_ms = i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        scope.from_ms = scope
            .from_ms
            .max(crate::time::now_ms().saturating_sub(window_ms));
        if self.warehouse.is_some() {
            // Full mode ships the log to Kafka and deletes it: the export
            // would have to come from ClickHouse, which is not built yet.
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "export_unavailable",
                "exports are served in embedded mode only for now",
            ));
        }
        let kind = match id {
            RouteId::ExportClicks => export::Kind::Clicks,
            _ => export::Kind::Conversions,
        };
        let source = export::Source {
            data_dir: self.data_dir.clone(),
            edge_node: self.edge_node.clone(),
            ledger: Arc::clone(&self.ledger),
        };
        export::start(source, kind, format, scope).map(|r| r.map(Either::Right))
    }

    /// Ready when the link table is loaded (it is before the listener
    /// binds) and the click-log writer is running.
    fn readiness(&self) -> Response<Body> {
        let kafka_down = self.warehouse.as_ref().is_some_and(|w| {
            !w.ship
                .kafka_reachable
                .load(std::sync::atomic::Ordering::Relaxed)
        });
        let not_ready = |reason| {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &Readiness {
                    status: "not_ready",
                    links: None,
                    reason: Some(reason),
                },
            )
        };
        if kafka_down {
            not_ready("kafka unreachable (clicks are kept in the local log)")
        } else if self.clicklog.is_alive() {
            ok_json(Readiness {
                status: "ready",
                links: Some(self.store.table().load().len() as u64),
                reason: None,
            })
        } else {
            not_ready("click-log writer stopped")
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
