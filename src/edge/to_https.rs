//! The optional HTTP → HTTPS redirect of the plain listener
//! (`edge.tls.redirect_http`).
//!
//! Every request on the plain listener is answered `308 Permanent Redirect`
//! to the same host, the HTTPS port, and the same path and query, so the
//! method and body are kept (a POSTed postback is re-sent over TLS). No
//! link is looked up and no click is recorded on this hop: the click is
//! recorded once, on the HTTPS request that follows. The host comes from
//! the request (`Host`, or the target's authority); a request without a
//! valid one gets 400, so nothing the client sends can break the header.

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, HOST, LOCATION};
use http::uri::Authority;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

use crate::server::Body;

static NO_STORE: HeaderValue = HeaderValue::from_static("private, no-store");
static TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// Bytes of the path and query that cannot appear raw in a `Location`.
const TARGET_ENCODE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'<').add(b'>');

const HTTPS_DEFAULT_PORT: u16 = 443;

/// Builds the 308 answers of the plain listener.
#[derive(Debug, Clone)]
pub struct HttpsRedirect {
    /// `""` for 443, else `":<port>"`.
    port_suffix: String,
}

impl HttpsRedirect {
    pub fn new(https_port: u16) -> HttpsRedirect {
        HttpsRedirect {
            port_suffix: if https_port == HTTPS_DEFAULT_PORT {
                String::new()
            } else {
                format!(":{https_port}")
            },
        }
    }

    /// The `Location` for `req`, or `None` when it names no valid host.
    pub fn location<B>(&self, req: &Request<B>) -> Option<HeaderValue> {
        let authority = match req.uri().authority() {
            Some(a) => a.clone(),
            None => {
                let host = req.headers().get(HOST)?.to_str().ok()?;
                host.parse::<Authority>().ok()?
            }
        };
        let host = authority.host();
        // `Authority` lets through hosts no URL can carry (`[]`, labels
        // IDNA refuses): only a host a URL parser accepts is echoed back.
        if host.is_empty() || authority.as_str().contains('@') || url::Host::parse(host).is_err() {
            return None;
        }
        // Origin-form targets only; `*` and authority-form go to `/`.
        let target = req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str())
            .filter(|t| t.starts_with('/'))
            .unwrap_or("/");
        let mut location = String::with_capacity(8 + host.len() + 6 + target.len());
        location.push_str("https://");
        location.push_str(host);
        location.push_str(&self.port_suffix);
        location.extend(utf8_percent_encode(target, TARGET_ENCODE));
        HeaderValue::try_from(location).ok()
    }

    /// The whole answer: 308 with `Location`, or 400 without a host.
    pub fn answer<B>(&self, req: &Request<B>) -> Response<Body> {
        let mut resp = Response::new(Full::new(Bytes::new()));
        match self.location(req) {
            Some(location) => {
                *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
                resp.headers_mut().insert(LOCATION, location);
            }
            None => {
                *resp.status_mut() = StatusCode::BAD_REQUEST;
                *resp.body_mut() = Full::new(Bytes::from_static(b"bad request: no host\n"));
                resp.headers_mut().insert(CONTENT_TYPE, TEXT.clone());
            }
        }
        resp.headers_mut().insert(CACHE_CONTROL, NO_STORE.clone());
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(port: u16, target: &str, host: Option<&str>) -> Option<String> {
        let mut req = Request::get(target);
        if let Some(h) = host {
            req = req.header(HOST, h);
        }
        let req = req.body(()).unwrap();
        HttpsRedirect::new(port)
            .location(&req)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn the_location_keeps_host_path_and_query_and_names_the_https_port() {
        assert_eq!(
            location(443, "/promo?sub=a&b=c", Some("go.example:80")).as_deref(),
            Some("https://go.example/promo?sub=a&b=c")
        );
        assert_eq!(
            location(8443, "/x", Some("go.example")).as_deref(),
            Some("https://go.example:8443/x")
        );
        assert_eq!(
            location(443, "/x", Some("[2001:db8::1]:8080")).as_deref(),
            Some("https://[2001:db8::1]/x")
        );
        // An absolute-form target names its own authority.
        assert_eq!(
            location(443, "http://other.example/y?q", Some("ignored.example")).as_deref(),
            Some("https://other.example/y?q")
        );
    }

    #[test]
    fn requests_without_a_usable_host_get_no_location() {
        assert_eq!(location(443, "/x", None), None);
        assert_eq!(location(443, "/x", Some("")), None);
        assert_eq!(location(443, "/x", Some("a b")), None);
        assert_eq!(location(443, "/x", Some("user@evil.example")), None);
        assert_eq!(location(443, "/x", Some("evil.example/path")), None);
        // Found by the property below: an empty IPv6 literal.
        assert_eq!(location(443, "/x", Some("[]")), None);
    }

    proptest::proptest! {
        /// Same property as the `request_target` fuzz target: whatever
        /// target and Host a client sends, the `Location` is an ASCII
        /// https URL on the host it named, or there is none.
        #[test]
        fn any_target_and_host_give_an_https_location_or_none(
            target in "/[ -~]{0,60}",
            host in "[ -~]{0,30}",
        ) {
            let Ok(req) = Request::get(target.as_str()).header(HOST, host.as_str()).body(()) else {
                return Ok(());
            };
            if let Some(loc) = HttpsRedirect::new(8443).location(&req) {
                let loc = loc.to_str().unwrap();
                let url = url::Url::parse(loc).unwrap();
                proptest::prop_assert_eq!(url.scheme(), "https");
                proptest::prop_assert_eq!(url.port(), Some(8443));
                let authority: Authority = host.parse().unwrap();
                proptest::prop_assert!(
                    loc.starts_with(&format!("https://{}:8443/", authority.host())),
                    "{}", loc
                );
            }
        }
    }

    #[test]
    fn the_answer_is_a_308_or_a_400_and_never_cached() {
        let r = HttpsRedirect::new(443);
        let req = Request::post("/_postback/net")
            .header(HOST, "h.example")
            .body(())
            .unwrap();
        let resp = r.answer(&req);
        assert_eq!(resp.status(), 308);
        assert_eq!(resp.headers()[LOCATION], "https://h.example/_postback/net");
        assert_eq!(resp.headers()[CACHE_CONTROL], "private, no-store");
        let resp = r.answer(&Request::get("/x").body(()).unwrap());
        assert_eq!(resp.status(), 400);
        assert_eq!(resp.headers()[CACHE_CONTROL], "private, no-store");
    }
}
