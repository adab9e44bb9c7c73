//! Request targets as the edge gets them: any bytes hyper might accept as
//! a URI, through the whole redirect decision (code parsing, lookup, `sub`
//! and passthrough query, `Location`) and the HTTP → HTTPS redirect.
//! Properties: nothing panics; a redirect is only ever for `/` + a valid
//! code; every `Location` is an ASCII header value on the link's own host.
#![no_main]

use std::net::IpAddr;
use std::sync::OnceLock;

use clickedge::edge::redirect::{decide, Decision};
use clickedge::edge::to_https::HttpsRedirect;
use clickedge::links::validate::is_valid_code;
use libfuzzer_sys::fuzz_target;

#[path = "../../benches/support/mod.rs"]
mod support;

fn fixture() -> &'static support::Fixture {
    static FIXTURE: OnceLock<support::Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| support::fixture(1000))
}

fuzz_target!(|data: &[u8]| {
    let Ok(uri) = http::Uri::try_from(data) else {
        return;
    };
    let Ok(req) = http::Request::get(uri).header("host", "edge.test").body(()) else {
        return;
    };
    let ip: IpAddr = "203.0.113.7".parse().unwrap();
    let fx = fixture();
    match decide(&fx.edge, &req, ip, false, clickedge::time::now_ms()) {
        Decision::Redirect { location, .. } => {
            let code = req
                .uri()
                .path()
                .strip_prefix('/')
                .expect("a redirect has a path");
            assert!(is_valid_code(code), "redirected for {code:?}");
            let location = location.to_str().expect("Location is visible ASCII");
            let url = url::Url::parse(location).expect("Location is a URL");
            assert_eq!(url.host_str(), Some("shop.example.com"), "{location}");
        }
        _ => {}
    }
    let https = HttpsRedirect::new(8443);
    if let Some(location) = https.location(&req) {
        let location = location.to_str().expect("Location is visible ASCII");
        assert!(location.starts_with("https://"), "{location}");
    }
});
