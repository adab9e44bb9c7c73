//! The destination of a link, compiled once so a redirect only copies slices.
//!
//! A destination may contain the macros `{click_id}`, `{code}` and `{sub}`
//! (also in their percent-encoded form `%7Bsub%7D`, which is what URL
//! normalisation turns braces in a path into). With passthrough on, the
//! request's query parameters are appended, except those the destination
//! already has: the destination wins on conflicts.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC};

/// Characters percent-encoded when `{sub}` is substituted: all but RFC 3986
/// unreserved, so a hostile sub can never add parameters, paths or headers.
const SUB_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Bytes of a passed-through query pair that must not reach `Location` raw.
/// hyper accepts non-ASCII (obs-text) bytes in a request target, but a
/// `Location` is an ASCII URI reference; everything else is left as sent.
const PASSTHROUGH_ENCODE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'|')
    .add(b'\\')
    .add(b'^');

/// Per-request values substituted into a template.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    pub click_id: &'a str,
    pub code: &'a str,
    /// The decoded `sub` query value.
    pub sub: &'a str,
}

/// How a destination is rendered. It holds no text: the caller passes the
/// destination (the link keeps the one copy) and rendering finds the
/// fragment, the query and the macros in it as it copies. That costs a few
/// `memchr` scans of a short string and saves a million links from
/// carrying a second, pre-split copy of their destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Template {
    passthrough: bool,
    /// Whether the destination has any macro (if not, it is copied as is).
    has_macros: bool,
}

impl Template {
    /// Compiles a normalised destination.
    pub fn compile(destination: &str, passthrough: bool) -> Template {
        Template {
            passthrough,
            has_macros: next_macro(destination, 0).is_some(),
        }
    }

    /// Whether the request's query parameters are appended.
    pub fn passthrough(&self) -> bool {
        self.passthrough
    }

    /// Builds the `Location` for one request. `destination` is the one the
    /// template was compiled from; `query` is the raw request query.
    pub fn render(&self, destination: &str, vars: &Vars<'_>, query: Option<&str>) -> String {
        let mut out = String::with_capacity(capacity_hint(destination, vars, query));
        self.render_into(destination, vars, query, &mut out);
        out
    }

    /// Appends the `Location` for one request to `out`; bytes a `Location`
    /// must not carry are percent-encoded.
    pub fn render_into(
        &self,
        destination: &str,
        vars: &Vars<'_>,
        query: Option<&str>,
        out: &mut String,
    ) {
        let (head, fragment) = destination
            .split_at(memchr::memchr(b'#', destination.as_bytes()).unwrap_or(destination.len()));
        self.push_expanded(out, head, vars);
        let query = query.filter(|_| self.passthrough).unwrap_or("");
        if !query.is_empty() {
            let own = memchr::memchr(b'?', head.as_bytes()).map(|i| &head[i + 1..]);
            let mut joiner = match own {
                None => "?",
                Some(q) if q.is_empty() || q.ends_with('&') => "",
                Some(_) => "&",
            };
            let own = OwnParams::new(own.unwrap_or(""));
            let mut rest = query;
            while !rest.is_empty() {
                let (pair, after) = split_once_byte(rest, b'&').unwrap_or((rest, ""));
                rest = after;
                if pair.is_empty() || own.has(pair) {
                    continue;
                }
                out.push_str(joiner);
                out.extend(percent_encoding::utf8_percent_encode(
                    pair,
                    PASSTHROUGH_ENCODE,
                ));
                joiner = "&";
            }
        }
        self.push_expanded(out, fragment, vars);
    }

    /// Copies `s`, substituting its macros.
    fn push_expanded(&self, out: &mut String, s: &str, vars: &Vars<'_>) {
        if !self.has_macros {
            out.push_str(s);
            return;
        }
        let mut copied = 0;
        let mut from = 0;
        while let Some((at, kind, len)) = next_macro(s, from) {
            out.push_str(&s[copied..at]);
            match kind {
                Macro::ClickId => out.push_str(vars.click_id),
                Macro::Code => out.push_str(vars.code),
                Macro::Sub => {
                    out.extend(percent_encoding::utf8_percent_encode(vars.sub, SUB_ENCODE))
                }
            }
            from = at + len;
            copied = from;
        }
        out.push_str(&s[copied..]);
    }
}

/// Upper bound of the rendered length, for sizing buffers.
fn capacity_hint(destination: &str, vars: &Vars<'_>, query: Option<&str>) -> usize {
    destination.len() + 2 * vars.click_id.len() + vars.sub.len() * 3 + query.map_or(0, str::len) + 2
}

/// Most of a destination's own parameter names kept on the stack while
/// rendering; the names after them are found by scanning again.
const STACK_PARAMS: usize = 16;

/// The names of the destination's own query parameters, split once per
/// rendering: a passed-through parameter with one of them is dropped (the
/// destination wins).
struct OwnParams<'a> {
    /// Decoded.
    names: [Cow<'a, str>; STACK_PARAMS],
    len: usize,
    /// What is left of the query after `names`.
    rest: &'a str,
}

impl<'a> OwnParams<'a> {
    fn new(query: &'a str) -> OwnParams<'a> {
        let mut own = OwnParams {
            names: [const { Cow::Borrowed("") }; STACK_PARAMS],
            len: 0,
            rest: query,
        };
        while own.len < STACK_PARAMS && !own.rest.is_empty() {
            let (pair, rest) = split_once_byte(own.rest, b'&').unwrap_or((own.rest, ""));
            own.rest = rest;
            if !pair.is_empty() {
                own.names[own.len] = decode_component(param_name(pair));
                own.len += 1;
            }
        }
        own
    }

    /// Whether the request's `pair` names one of them (compared decoded).
    fn has(&self, pair: &str) -> bool {
        if self.len == 0 {
            return false;
        }
        let wanted = decode_component(param_name(pair));
        let in_rest = || {
            self.rest
                .split('&')
                .filter(|p| !p.is_empty())
                .any(|p| decode_component(param_name(p)) == wanted)
        };
        self.names[..self.len].contains(&wanted) || (!self.rest.is_empty() && in_rest())
    }
}

fn param_name(pair: &str) -> &str {
    split_once_byte(pair, b'=').map_or(pair, |(name, _)| name)
}

/// `str::find` for an ASCII byte, as a plain loop: the strings searched
/// while rendering are a few dozen bytes, too short to repay a `memchr`
/// call.
#[inline]
fn find_byte(s: &str, b: u8) -> Option<usize> {
    debug_assert!(b.is_ascii());
    s.bytes().position(|c| c == b)
}

/// `str::split_once` for an ASCII byte (a char boundary on both sides).
#[inline]
fn split_once_byte(s: &str, b: u8) -> Option<(&str, &str)> {
    let i = find_byte(s, b)?;
    Some((&s[..i], &s[i + 1..]))
}

/// Decodes one `application/x-www-form-urlencoded` component, borrowing
/// when there is nothing to decode.
pub fn decode_component(raw: &str) -> Cow<'_, str> {
    if !raw.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(raw);
    }
    let plus_decoded: Cow<'_, str> = if raw.contains('+') {
        Cow::Owned(raw.replace('+', " "))
    } else {
        Cow::Borrowed(raw)
    };
    let decoded = percent_encoding::percent_decode_str(&plus_decoded).decode_utf8_lossy();
    Cow::Owned(decoded.into_owned())
}

/// The decoded value of the first `name` parameter in a raw query.
pub fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<Cow<'q, str>> {
    query?
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_component(k) == name).then(|| decode_component(v))
        })
        .next()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Macro {
    ClickId,
    Code,
    Sub,
}

const MACROS: [(&str, Macro); 3] = [
    ("click_id", Macro::ClickId),
    ("code", Macro::Code),
    ("sub", Macro::Sub),
];

/// The first macro in `s` at or after byte `from`: where, which, how long.
/// Accepts `{m}` and `%7Bm%7D`.
/// Whether `s` holds a macro anywhere.
pub(crate) fn has_macro(s: &str) -> bool {
    next_macro(s, 0).is_some()
}

/// Whether `s` is exactly one macro and nothing else.
pub(crate) fn is_one_macro(s: &str) -> bool {
    macro_at(s.as_bytes()).is_some_and(|(_, len)| len == s.len())
}

fn next_macro(s: &str, from: usize) -> Option<(usize, Macro, usize)> {
    let bytes = s.as_bytes();
    let mut from = from;
    // Macros start with `{` or `%`, both ASCII: every hit is a char boundary.
    while let Some(i) = memchr::memchr2(b'{', b'%', &bytes[from..]) {
        let at = from + i;
        if let Some((kind, len)) = macro_at(&bytes[at..]) {
            return Some((at, kind, len));
        }
        from = at + 1;
    }
    None
}

fn macro_at(bytes: &[u8]) -> Option<(Macro, usize)> {
    let (open_len, close): (usize, &[u8]) = if bytes.starts_with(b"{") {
        (1, b"}")
    } else if bytes.len() >= 3 && bytes[..3].eq_ignore_ascii_case(b"%7B") {
        (3, b"%7D")
    } else {
        return None;
    };
    let rest = &bytes[open_len..];
    MACROS.iter().find_map(|&(name, kind)| {
        let after = rest.strip_prefix(name.as_bytes())?;
        (after.len() >= close.len() && after[..close.len()].eq_ignore_ascii_case(close))
            .then_some((kind, open_len + name.len() + close.len()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VARS: Vars<'static> = Vars {
        click_id: "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        code: "promo",
        sub: "a b&c=d",
    };

    fn render(dest: &str, passthrough: bool, query: Option<&str>) -> String {
        Template::compile(dest, passthrough).render(dest, &VARS, query)
    }

    #[test]
    fn macros_expand_in_query_path_and_fragment() {
        assert_eq!(
            render(
                "https://shop.example/p/%7Bcode%7D?cid={click_id}&s={sub}#{code}",
                false,
                None
            ),
            "https://shop.example/p/promo?cid=01ARZ3NDEKTSV4RRFFQ69G5FAV&s=a%20b%26c%3Dd#promo"
        );
    }

    /// Found by the `template` fuzz target: a macro in the host is
    /// substituted like anywhere else. That is the operator's choice (one
    /// subdomain per code); `{sub}` there is percent-encoded, so a visitor
    /// can only pick a label under the operator's domain, and anything but
    /// unreserved characters makes a host browsers refuse.
    #[test]
    fn a_macro_label_in_the_host_stays_under_the_fixed_suffix() {
        let dest =
            crate::links::validate::normalize_destination("https://{code}.shop.example/").unwrap();
        assert_eq!(render(&dest, false, None), "https://promo.shop.example/");
        let dest =
            crate::links::validate::normalize_destination("https://{sub}.shop.example/").unwrap();
        let vars = Vars {
            sub: "evil.test/x?",
            ..VARS
        };
        let loc = Template::compile(&dest, false).render(&dest, &vars, None);
        assert_eq!(loc, "https://evil.test%2Fx%3F.shop.example/");
    }

    #[test]
    fn unknown_braces_are_left_alone() {
        assert_eq!(
            render("https://x.example/?a={nope}&b={sub", false, None),
            "https://x.example/?a={nope}&b={sub"
        );
    }

    #[test]
    fn passthrough_appends_request_parameters_and_destination_wins() {
        assert_eq!(
            render(
                "https://x.example/?utm=dest",
                true,
                Some("utm=req&gclid=9&&x")
            ),
            "https://x.example/?utm=dest&gclid=9&x"
        );
        assert_eq!(
            render("https://x.example/p", true, Some("a=1")),
            "https://x.example/p?a=1"
        );
        assert_eq!(
            render("https://x.example/p?", true, Some("a=1")),
            "https://x.example/p?a=1"
        );
    }

    #[test]
    fn the_destination_wins_past_its_first_sixteen_parameters_too() {
        let own: Vec<String> = (0..20).map(|i| format!("p{i}=d")).collect();
        let dest = format!("https://x.example/?{}", own.join("&"));
        assert_eq!(
            render(&dest, true, Some("p3=r&p18=r&q=r")),
            format!("{dest}&q=r")
        );
    }

    #[test]
    fn passthrough_goes_before_the_fragment() {
        assert_eq!(
            render("https://x.example/p#top", true, Some("a=1")),
            "https://x.example/p?a=1#top"
        );
    }

    #[test]
    fn passthrough_off_ignores_the_query() {
        assert_eq!(
            render("https://x.example/p", false, Some("a=1")),
            "https://x.example/p"
        );
    }

    #[test]
    fn encoded_conflicting_names_are_recognised() {
        assert_eq!(
            render("https://x.example/?a%20b=1", true, Some("a+b=2&c=3")),
            "https://x.example/?a%20b=1&c=3"
        );
    }

    #[test]
    fn sub_is_read_decoded_from_the_query() {
        assert_eq!(
            query_param(Some("x=1&sub=a%20b+c"), "sub").as_deref(),
            Some("a b c")
        );
        assert_eq!(query_param(Some("sub"), "sub").as_deref(), Some(""));
        assert_eq!(query_param(Some("subx=1"), "sub"), None);
        assert_eq!(query_param(None, "sub"), None);
    }

    proptest! {
        #[test]
        fn any_sub_renders_to_a_valid_header(sub in "\\PC{0,64}") {
            let dest = "https://x.example/?s={sub}";
            let t = Template::compile(dest, true);
            let vars = Vars { sub: &sub, ..VARS };
            let loc = t.render(dest, &vars, None);
            prop_assert!(http::HeaderValue::from_str(&loc).is_ok());
            // The substituted value decodes back to the original.
            let back = query_param(loc.split_once('?').map(|x| x.1), "s").unwrap();
            prop_assert_eq!(back.as_ref(), sub.as_str());
        }

        #[test]
        fn destination_parameters_always_survive_passthrough(
            q in "([a-z]{1,3}=[a-z0-9]{0,3}&){0,5}"
        ) {
            let loc = render("https://x.example/?a=dest", true, Some(&q));
            let qs = loc.split_once('?').unwrap().1;
            let a = query_param(Some(qs), "a");
            prop_assert_eq!(a.as_deref(), Some("dest"));
            let a_count = qs.split('&').filter(|p| p.split('=').next() == Some("a")).count();
            prop_assert_eq!(a_count, 1);
        }

        #[test]
        fn any_request_query_passes_through_as_ascii(q in "\\PC{0,60}") {
            let loc = render("https://x.example/p?a=1", true, Some(&q));
            prop_assert!(loc.bytes().all(|b| b.is_ascii_graphic()), "{}", loc);
            prop_assert!(http::HeaderValue::from_str(&loc).is_ok());
        }

        /// Same property as the `template` fuzz target: whatever the
        /// visitor sends, the redirect stays on the destination's host.
        #[test]
        fn a_visitor_never_moves_the_redirect_to_another_host(
            host in "[a-z]{1,8}\\.(example|test)(:[0-9]{1,4})?",
            path in "(/[ -~]{0,20}){0,2}",
            q in "\\PC{0,60}",
            sub in "\\PC{0,30}",
            passthrough in any::<bool>(),
        ) {
            let Ok(dest) = crate::links::validate::normalize_destination(
                &format!("https://{host}{path}")
            ) else { return Ok(()) };
            let vars = Vars { sub: &sub, ..VARS };
            let loc = Template::compile(&dest, passthrough).render(&dest, &vars, Some(&q));
            prop_assert!(http::HeaderValue::from_str(&loc).is_ok(), "{}", loc);
            let want = url::Url::parse(&dest).unwrap();
            let got = url::Url::parse(&loc).unwrap();
            prop_assert_eq!(got.host_str(), want.host_str(), "{}", loc);
            prop_assert_eq!(got.port(), want.port(), "{}", loc);
        }

        /// A macro the host accepts (a whole label, two fixed labels to
        /// its right): whatever the visitor's `sub`, the rendered host
        /// still ends in those fixed labels.
        #[test]
        fn no_sub_changes_the_fixed_suffix_of_a_host_with_a_macro(
            left in "([a-z0-9]{1,5}\\.){0,2}",
            mac in "(\\{sub\\}|\\{code\\}|\\{click_id\\}|%7Bsub%7D)",
            suffix in "[a-z0-9]{1,6}(\\.[a-z0-9-]{1,6}){0,2}\\.[a-z]{2,6}",
            port in "(:[0-9]{1,4})?",
            path in "(/[ -~]{0,12})?",
            sub in "(\\PC|[./?#@:%\\\\\\[\\]])*",
            q in "[ -~]{0,30}",
            passthrough in any::<bool>(),
        ) {
            let dest = crate::links::validate::normalize_destination(
                &format!("https://{left}{mac}.{suffix}{port}{path}")
            ).unwrap();
            let vars = Vars { sub: &sub, ..VARS };
            let loc = Template::compile(&dest, passthrough).render(&dest, &vars, Some(&q));
            prop_assert!(http::HeaderValue::from_str(&loc).is_ok(), "{}", loc);
            // The authority as a browser splits it: up to the first `/`,
            // `?`, `#` or `\\` after the scheme.
            let rest = loc.strip_prefix("https://").unwrap();
            let end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
            let authority = &rest[..end];
            prop_assert!(!authority.contains('@'), "{}", loc);
            let host = authority.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(authority, |(h, _)| h);
            let fixed = format!(".{suffix}");
            prop_assert!(host.ends_with(&fixed), "{} does not end in {}", host, fixed);
            if let Ok(got) = url::Url::parse(&loc) {
                let h = got.host_str().unwrap_or("");
                prop_assert!(h.ends_with(&fixed), "{} parsed to {}", loc, h);
            }
        }

        /// Any host shape with macros anywhere: if it is accepted, no
        /// `sub` changes the last two labels of the rendered host.
        #[test]
        fn an_accepted_host_keeps_its_last_two_labels_whatever_the_sub(
            labels in proptest::collection::vec("(\\{sub\\}|\\{code\\}|[a-z]{1,4}|[a-z]{0,2}\\{sub\\}[a-z]{0,2})", 1..5),
            sub in "(\\PC|[./?#@:%\\\\])*",
        ) {
            let Ok(dest) = crate::links::validate::normalize_destination(
                &format!("https://{}/", labels.join("."))
            ) else { return Ok(()) };
            let host = url::Url::parse(&dest).unwrap().host_str().unwrap().to_owned();
            let parts: Vec<&str> = host.rsplitn(3, '.').collect();
            prop_assert!(parts.len() >= 2 || !has_macro(&host), "{}", dest);
            if parts.len() < 2 { return Ok(()) }
            let fixed = format!(".{}.{}", parts[1], parts[0]);
            prop_assert!(!has_macro(&fixed), "{}", dest);
            let vars = Vars { sub: &sub, ..VARS };
            let loc = Template::compile(&dest, false).render(&dest, &vars, None);
            let rest = loc.strip_prefix("https://").unwrap();
            let got = &rest[..rest.find('/').unwrap()];
            prop_assert!(got.ends_with(&fixed) || got == &fixed[1..], "{} from {}", got, dest);
        }

        #[test]
        fn compile_and_render_never_panic(dest in "\\PC{0,80}", q in "[ -~]{0,40}") {
            let _ = render(&dest, true, Some(&q));
        }
    }
}
