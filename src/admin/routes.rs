//! The admin listener's route table: every (method, path) it serves, in
//! one list. The router matches requests against [`ROUTES`] and nothing
//! else, and tests/openapi.rs checks `/v1/openapi.json` against the same
//! list, so the description cannot miss a route or keep a dead one.
//!
//! `/console/…` is not here: the console is HTML with its own routes
//! (`console/mod.rs`), not part of the API the document describes.
//!
//! Owns path matching only: it never authenticates or reads a body.

use http::{HeaderValue, Method};

use super::error::ApiError;

/// What a matched request is. `dispatch` in `mod.rs` matches on this
/// exhaustively, so a route added here without a handler does not compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteId {
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    LinksCreate,
    LinksList,
    LinksBatch,
    LinksGet,
    LinksPatch,
    LinksDelete,
    LinksStats,
    Reconciliation,
    ExportClicks,
    ExportConversions,
}

impl RouteId {
    /// The `route` label of `clickedge_http_requests_total`.
    pub const fn name(self) -> &'static str {
        match self {
            RouteId::Healthz => "healthz",
            RouteId::Readyz => "readyz",
            RouteId::Metrics => "metrics",
            RouteId::OpenApi => "openapi",
            RouteId::LinksCreate => "links_create",
            RouteId::LinksList => "links_list",
            RouteId::LinksBatch => "links_batch",
            RouteId::LinksGet => "links_get",
            RouteId::LinksPatch => "links_patch",
            RouteId::LinksDelete => "links_delete",
            RouteId::LinksStats => "links_stats",
            RouteId::Reconciliation => "reconciliation",
            RouteId::ExportClicks => "export_clicks",
            RouteId::ExportConversions => "export_conversions",
        }
    }
}

/// One served route. `path` uses OpenAPI's template syntax (`{code}` is
/// one non-empty path segment).
#[derive(Debug)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub id: RouteId,
    /// Whether a bearer token is required.
    pub auth: bool,
}

const fn route(method: Method, path: &'static str, id: RouteId, auth: bool) -> Route {
    Route {
        method,
        path,
        id,
        auth,
    }
}

/// Every route of the admin listener (`HEAD` is also answered wherever an
/// unauthenticated `GET` is).
pub const ROUTES: &[Route] = &[
    route(Method::GET, "/healthz", RouteId::Healthz, false),
    route(Method::GET, "/readyz", RouteId::Readyz, false),
    route(Method::GET, "/metrics", RouteId::Metrics, false),
    route(Method::GET, "/v1/openapi.json", RouteId::OpenApi, false),
    route(Method::POST, "/v1/links", RouteId::LinksCreate, true),
    route(Method::GET, "/v1/links", RouteId::LinksList, true),
    route(Method::POST, "/v1/links/batch", RouteId::LinksBatch, true),
    route(Method::GET, "/v1/links/{code}", RouteId::LinksGet, true),
    route(Method::PATCH, "/v1/links/{code}", RouteId::LinksPatch, true),
    route(
        Method::DELETE,
        "/v1/links/{code}",
        RouteId::LinksDelete,
        true,
    ),
    route(
        Method::GET,
        "/v1/links/{code}/stats",
        RouteId::LinksStats,
        true,
    ),
    route(
        Method::GET,
        "/v1/reconciliation",
        RouteId::Reconciliation,
        true,
    ),
    route(
        Method::GET,
        "/v1/export/clicks",
        RouteId::ExportClicks,
        true,
    ),
    route(
        Method::GET,
        "/v1/export/conversions",
        RouteId::ExportConversions,
        true,
    ),
];

/// A request matched to its route, with the path's `{…}` values in order.
#[derive(Debug)]
pub struct Matched<'p> {
    pub route: &'static Route,
    pub params: Vec<&'p str>,
}

/// Why a request matched no route.
#[derive(Debug, PartialEq, Eq)]
pub enum Unmatched {
    /// No route has this path.
    NotFound,
    /// Routes have this path, with these methods (for `Allow`).
    MethodNotAllowed(Vec<Method>),
}

impl Unmatched {
    pub fn into_error(self) -> ApiError {
        match self {
            Unmatched::NotFound => ApiError::not_found("route"),
            Unmatched::MethodNotAllowed(allowed) => {
                let allow = allowed
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                ApiError::method_not_allowed().with_allow(
                    HeaderValue::from_str(&allow).expect("method names are header-safe"),
                )
            }
        }
    }
}

/// Finds the route for `method` and `path`. A path is the resource of
/// its most literal template: `/v1/links/batch` is the batch (only `POST`;
/// `GET` is 405, and `batch` is a reserved code), never the link coded
/// `batch`.
pub fn find<'p>(method: &Method, path: &'p str) -> Result<Matched<'p>, Unmatched> {
    let candidates: Vec<(&'static Route, usize, Vec<&'p str>)> = ROUTES
        .iter()
        .filter_map(|r| match_path(r.path, path).map(|(l, p)| (r, l, p)))
        .collect();
    let Some(most_literal) = candidates.iter().map(|c| c.1).max() else {
        return Err(Unmatched::NotFound);
    };
    let mut allowed = Vec::new();
    for (route, literals, params) in candidates {
        if literals != most_literal {
            continue;
        }
        let head_as_get = method == Method::HEAD && route.method == Method::GET && !route.auth;
        if route.method == method || head_as_get {
            return Ok(Matched { route, params });
        }
        allowed.push(route.method.clone());
        if route.method == Method::GET && !route.auth {
            allowed.push(Method::HEAD);
        }
    }
    Err(Unmatched::MethodNotAllowed(allowed))
}

/// Codes that a link may not have: a literal segment where `{code}` stands.
pub const RESERVED_CODES: &[&str] = &["batch"];

/// Matches `path` against a template: the number of literal segments and
/// the parameter values, or `None`.
fn match_path<'p>(template: &str, path: &'p str) -> Option<(usize, Vec<&'p str>)> {
    let mut want = template.trim_start_matches('/').split('/');
    let mut got = path.strip_prefix('/')?.split('/');
    let (mut literals, mut params) = (0, Vec::new());
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some((literals, params)),
            (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') => {
                if g.is_empty() {
                    return None;
                }
                params.push(g);
            }
            (Some(w), Some(g)) if w == g => literals += 1,
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_literal_path_is_its_own_resource_and_methods_pick_the_route() {
        let m = find(&Method::POST, "/v1/links/batch").unwrap();
        assert_eq!(m.route.id, RouteId::LinksBatch);
        assert_eq!(
            find(&Method::GET, "/v1/links/batch").unwrap_err(),
            Unmatched::MethodNotAllowed(vec![Method::POST])
        );
        let m = find(&Method::GET, "/v1/links/batches").unwrap();
        assert_eq!((m.route.id, m.params), (RouteId::LinksGet, vec!["batches"]));
        let m = find(&Method::GET, "/v1/links/abc/stats").unwrap();
        assert_eq!((m.route.id, m.params), (RouteId::LinksStats, vec!["abc"]));
    }

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405_with_the_allowed_ones() {
        assert_eq!(
            find(&Method::GET, "/v1/nope").unwrap_err(),
            Unmatched::NotFound
        );
        assert_eq!(
            find(&Method::GET, "/v1/links/").unwrap_err(),
            Unmatched::NotFound
        );
        assert_eq!(
            find(&Method::GET, "//healthz").unwrap_err(),
            Unmatched::NotFound
        );
        assert_eq!(
            find(&Method::PUT, "/v1/links/x").unwrap_err(),
            Unmatched::MethodNotAllowed(vec![Method::GET, Method::PATCH, Method::DELETE])
        );
        assert!(find(&Method::HEAD, "/healthz").is_ok());
        assert!(find(&Method::HEAD, "/v1/links").is_err());
    }
}
