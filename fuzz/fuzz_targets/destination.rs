//! Destination normalisation (`links::validate::normalize_destination`) on
//! any string an operator could send. Properties: nothing panics; an
//! accepted destination is absolute http(s) with a host and no user-info,
//! at most 2048 bytes of visible ASCII, a valid header value, and a fixed
//! point (normalising it again changes nothing).
#![no_main]

use clickedge::links::validate::{normalize_destination, MAX_DESTINATION_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    let Ok(n) = normalize_destination(input) else {
        return;
    };
    assert!(n.len() <= MAX_DESTINATION_BYTES);
    assert!(n.bytes().all(|b| b.is_ascii_graphic()), "{n:?}");
    assert!(http::HeaderValue::from_str(&n).is_ok(), "{n:?}");
    let url = url::Url::parse(&n).expect("normalised destinations parse");
    assert!(matches!(url.scheme(), "http" | "https"));
    assert!(url.username().is_empty() && url.password().is_none());
    assert!(url.host_str().is_some_and(|h| !h.is_empty()));
    assert_eq!(
        normalize_destination(&n),
        Ok(n.clone()),
        "not a fixed point"
    );
});
