//! Validation of what operators send: codes and destinations.

use rand::Rng;
use url::Url;

/// Longest destination accepted, before and after normalisation.
pub const MAX_DESTINATION_BYTES: usize = 2048;
/// Longest code accepted.
pub const MAX_CODE_LEN: usize = 64;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a destination was refused; the admin API shows `message()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("destination is longer than 2048 bytes")]
    TooLong,
    #[error("destination contains control characters")]
    ControlCharacters,
    #[error("destination is not an absolute URL")]
    NotAbsolute,
    #[error("destination scheme must be http or https")]
    Scheme,
    #[error("destination must not contain user info (user@)")]
    UserInfo,
    #[error("destination has no host")]
    NoHost,
    #[error(
        "a macro in the destination's host must be a whole label with at least two fixed labels to its right (https://{{sub}}.shop.example/), so a visitor can never choose the registrable domain"
    )]
    MacroInHost,
}

/// Fixed labels a host macro needs to its right: a visitor may fill in a
/// label under the operator's domain, never the domain itself.
pub const FIXED_LABELS_RIGHT_OF_A_MACRO: usize = 2;

/// The host rule: no macro, or macros only as whole labels, the last of
/// them followed by at least [`FIXED_LABELS_RIGHT_OF_A_MACRO`] labels
/// without one. (Under a multi-label public suffix such as `co.uk`, two
/// fixed labels are the suffix itself: use three.)
fn host_macros_allowed(host: &str) -> bool {
    use super::template::{has_macro, is_one_macro};
    if !has_macro(host) {
        return true;
    }
    let labels: Vec<&str> = host.split('.').collect();
    if labels.iter().any(|l| has_macro(l) && !is_one_macro(l)) {
        return false;
    }
    let last = labels
        .iter()
        .rposition(|l| has_macro(l))
        .expect("has a macro");
    labels[last + 1..].iter().filter(|l| !l.is_empty()).count() >= FIXED_LABELS_RIGHT_OF_A_MACRO
}

/// A code is 1-64 chars of `[A-Za-z0-9-]`.
pub fn is_valid_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= MAX_CODE_LEN
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A fresh random code of `len` base62 chars from the thread CSPRNG.
pub fn random_code(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| BASE62[rng.random_range(0..BASE62.len())] as char)
        .collect()
}

/// Parses and normalises a destination: absolute http(s), a host, no
/// user-info, no control characters, at most 2048 bytes before and after.
pub fn normalize_destination(input: &str) -> Result<String, DestinationError> {
    if input.len() > MAX_DESTINATION_BYTES {
        return Err(DestinationError::TooLong);
    }
    if input.chars().any(char::is_control) {
        return Err(DestinationError::ControlCharacters);
    }
    let url = Url::parse(input.trim()).map_err(|_| DestinationError::NotAbsolute)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(DestinationError::Scheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(DestinationError::UserInfo);
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err(DestinationError::NoHost);
    };
    if !host_macros_allowed(host) {
        return Err(DestinationError::MacroInHost);
    }
    let normalized = String::from(url);
    if normalized.len() > MAX_DESTINATION_BYTES {
        return Err(DestinationError::TooLong);
    }
    Ok(normalized)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn destinations_are_normalised() {
        assert_eq!(
            normalize_destination("HTTPS://Example.COM").unwrap(),
            "https://example.com/"
        );
        assert_eq!(
            normalize_destination("http://example.com/a b?q=1").unwrap(),
            "http://example.com/a%20b?q=1"
        );
        assert_eq!(
            normalize_destination("https://bücher.example/").unwrap(),
            "https://xn--bcher-kva.example/"
        );
    }

    #[test]
    fn hostile_destinations_are_refused_with_a_reason() {
        use DestinationError::*;
        let cases = [
            ("javascript:alert(1)", Scheme),
            ("data:text/html,hi", Scheme),
            ("ftp://example.com/", Scheme),
            ("/relative/path", NotAbsolute),
            ("//evil.example/path", NotAbsolute),
            ("example.com", NotAbsolute),
            ("https://user@example.com/", UserInfo),
            ("https://user:pw@example.com/", UserInfo),
            ("https://example.com/\r\nSet-Cookie: x=1", ControlCharacters),
            ("https://example.com/\0", ControlCharacters),
            ("https://example.com/\t", ControlCharacters),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_destination(input), Err(want), "{input:?}");
        }
        for input in [
            "https://{sub}/",
            "https://{sub}.example/",
            "https://{sub}.example./",
            "https://%7Bsub%7D.example/",
            "https://{SUB}.example/",
            "https://x{sub}.shop.example/",
            "https://{sub}x.shop.example/",
            "https://shop.{sub}.example/",
            "https://{sub}.{code}.example/",
            "https://{sub}{code}.shop.example/",
            "https://shop.example{sub}/",
        ] {
            assert_eq!(normalize_destination(input), Err(MacroInHost), "{input:?}");
        }
        for input in [
            "https://{sub}.shop.example/",
            "https://{code}.{sub}.shop.example/",
            "https://a.{click_id}.shop.example:8443/x/{sub}",
            "https://shop.example/{sub}?s={sub}",
        ] {
            assert!(normalize_destination(input).is_ok(), "{input:?}");
        }
        let long = format!("https://example.com/{}", "a".repeat(2048));
        assert_eq!(normalize_destination(&long), Err(TooLong));
    }

    #[test]
    fn codes_follow_the_contract_alphabet() {
        assert!(is_valid_code("a"));
        assert!(is_valid_code("Promo-2026"));
        assert!(is_valid_code(&"x".repeat(64)));
        for bad in ["", "_x", "a_b", "a/b", "a.b", "ü", "a b", "a%20"] {
            assert!(!is_valid_code(bad), "{bad:?}");
        }
        assert!(!is_valid_code(&"x".repeat(65)));
    }

    #[test]
    fn random_codes_are_base62_of_the_asked_length() {
        let c = random_code(8);
        assert_eq!(c.len(), 8);
        assert!(c.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(random_code(8), random_code(8));
    }

    proptest! {
        #[test]
        fn code_validation_matches_its_definition(s in "\\PC{0,70}") {
            let expected = (1..=64).contains(&s.len())
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            prop_assert_eq!(is_valid_code(&s), expected);
        }

        #[test]
        fn normalised_destinations_are_fixed_points_and_safe(s in "https?://[a-z]{1,10}\\.[a-z]{2,3}(/[ -~]{0,40})?") {
            if let Ok(n) = normalize_destination(&s) {
                prop_assert_eq!(normalize_destination(&n), Ok(n.clone()));
                prop_assert!(n.len() <= MAX_DESTINATION_BYTES);
                prop_assert!(n.bytes().all(|b| b.is_ascii_graphic()));
                prop_assert!(http::HeaderValue::from_str(&n).is_ok());
            }
        }

        /// Same property as the `destination` fuzz target, on URL-shaped
        /// input with the parts that go wrong: user-info, ports, IPv6 and
        /// IDNA hosts, dot segments, percent-escapes, odd schemes.
        #[test]
        fn accepted_destinations_are_safe_fixed_points(
            scheme in "(https?|HTTP|ftp|javascript)",
            userinfo in "([a-z]{1,4}(:[a-z]{0,3})?@)?",
            host in "([a-z0-9-]{1,8}(\\.[a-zü]{1,5}){0,2}|\\[::1\\]|[0-9]{1,3}(\\.[0-9]{1,3}){3})",
            port in "(:[0-9]{0,6})?",
            path in "(/(\\.|\\.\\.|%[0-9a-fA-F]{0,2}|[ -~]{0,6})){0,4}",
            rest in "(\\?[ -~]{0,12})?(#[ -~]{0,6})?",
        ) {
            let input = format!("{scheme}://{userinfo}{host}{port}{path}{rest}");
            if let Ok(n) = normalize_destination(&input) {
                let url = Url::parse(&n).unwrap();
                prop_assert!(matches!(url.scheme(), "http" | "https"), "{}", n);
                prop_assert!(url.username().is_empty() && url.password().is_none());
                prop_assert!(url.host_str().is_some_and(|h| !h.is_empty()));
                prop_assert!(n.len() <= MAX_DESTINATION_BYTES);
                prop_assert!(n.bytes().all(|b| b.is_ascii_graphic()), "{}", n);
                prop_assert_eq!(normalize_destination(&n), Ok(n.clone()));
            }
        }

        #[test]
        fn arbitrary_input_never_panics(s in "\\PC{0,200}") {
            let _ = normalize_destination(&s);
        }
    }
}
