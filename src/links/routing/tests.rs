use super::*;
use serde_json::json;

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
const WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

fn rules(v: serde_json::Value) -> Vec<Rule> {
    parse_rules(&v).unwrap()
}

fn variants(v: serde_json::Value) -> Vec<Variant> {
    parse_variants(&v).unwrap()
}

fn err_rules(v: serde_json::Value) -> String {
    parse_rules(&v).unwrap_err().to_string()
}

fn err_variants(v: serde_json::Value) -> String {
    parse_variants(&v).unwrap_err().to_string()
}

fn visit<'a>(country: &[u8; 2], ua: &'a str, lang: &'a str, digest: &'a [u8; 16]) -> Visit<'a> {
    Visit {
        now_ms: 1_800_000_000_000,
        country: *country,
        user_agent: ua.as_bytes(),
        accept_language: lang.as_bytes(),
        ip_digest: digest,
    }
}

fn routing(r: Vec<Rule>, v: Vec<Variant>) -> Routing {
    Routing::compile(r, v, "code", true).unwrap()
}

const D: [u8; 16] = [7; 16];

#[test]
fn rules_are_normalised_at_mint() {
    let r = rules(json!([{
        "if": {"country": ["de", "AT"], "language": ["pt-BR"], "device": ["mobile"], "os": ["ios"],
               "after": "2026-01-01T01:00:00+01:00"},
        "destination": "HTTPS://DE.Example/x"
    }]));
    assert_eq!(r[0].when.country, Some(vec!["DE".into(), "AT".into()]));
    assert_eq!(r[0].when.language, Some(vec!["pt-br".into()]));
    assert_eq!(r[0].when.device, Some(vec![Device::Mobile]));
    assert_eq!(r[0].when.os, Some(vec![Os::Ios]));
    assert_eq!(
        r[0].when.after.unwrap().to_rfc3339(),
        "2026-01-01T00:00:00+00:00"
    );
    assert_eq!(r[0].destination, "https://de.example/x");
    assert!(parse_rules(&json!(null)).unwrap().is_empty());
    assert!(parse_rules(&json!([])).unwrap().is_empty());
}

#[test]
fn bad_rules_name_the_field_and_index() {
    let dest = "https://x.example/";
    let cases = [
        (json!({}), "rules: must be an array"),
        (json!([1]), "rules[0]: must be an object"),
        (
            json!([{"if": {"country": ["DE"]}, "destination": dest, "x": 1}]),
            "rules[0]: unknown field `x`",
        ),
        (json!([{"destination": dest}]), "rules[0].if: is required"),
        (
            json!([{"if": {}, "destination": dest}]),
            "rules[0].if: needs at least one condition",
        ),
        (
            json!([{"if": {"country": ["DE"]}, "destination": dest}, {"if": {"city": ["Berlin"]}, "destination": dest}]),
            "rules[1].if.city: unknown condition",
        ),
        (
            json!([{"if": {"country": ["DE", "DEU"]}, "destination": dest}]),
            "rules[0].if.country[1]: `DEU` is not an ISO 3166-1 alpha-2",
        ),
        (
            json!([{"if": {"country": []}, "destination": dest}]),
            "rules[0].if.country: must not be empty",
        ),
        (
            json!([{"if": {"country": "DE"}, "destination": dest}]),
            "rules[0].if.country: must be an array",
        ),
        (
            json!([{"if": {"country": [1]}, "destination": dest}]),
            "rules[0].if.country[0]: must be a string",
        ),
        (
            json!([{"if": {"device": ["phone"]}, "destination": dest}]),
            "rules[0].if.device[0]: `phone` is not one of",
        ),
        (
            json!([{"if": {"os": ["beos"]}, "destination": dest}]),
            "rules[0].if.os[0]: `beos` is not one of",
        ),
        (
            json!([{"if": {"language": ["de_DE"]}, "destination": dest}]),
            "rules[0].if.language[0]: `de_DE` is not a language tag",
        ),
        (
            json!([{"if": {"after": "tomorrow"}, "destination": dest}]),
            "rules[0].if.after: must be an RFC 3339",
        ),
        (
            json!([{"if": {"after": "2026-02-01T00:00:00Z", "before": "2026-01-01T00:00:00Z"}, "destination": dest}]),
            "rules[0].if.before: must be later than `after`",
        ),
        (
            json!([{"if": {"country": ["DE"]}, "destination": "javascript:alert(1)"}]),
            "rules[0].destination: destination scheme must be http or https",
        ),
        (
            json!([{"if": {"country": ["DE"]}}]),
            "rules[0].destination: is required",
        ),
    ];
    for (input, want) in cases {
        let got = err_rules(input.clone());
        assert!(got.starts_with(want), "{input}: {got}");
    }
}

#[test]
fn a_huge_rule_list_is_refused_before_its_items_are_read() {
    let item = json!({"if": {"country": ["nope"]}, "destination": "bad"});
    let list = serde_json::Value::Array(vec![item; 10_000]);
    assert_eq!(
        err_rules(list),
        "rules: at most 32 rules (got 10000)".to_string()
    );
    let ok = json!({"if": {"country": ["DE"]}, "destination": "https://x.example/"});
    assert_eq!(
        rules(serde_json::Value::Array(vec![ok.clone(); 32])).len(),
        32
    );
    assert!(err_rules(serde_json::Value::Array(vec![ok; 33])).starts_with("rules: at most 32"));
    let countries: Vec<_> = (0..10_000).map(|_| json!("DE")).collect();
    let got =
        err_rules(json!([{"if": {"country": countries}, "destination": "https://x.example/"}]));
    assert!(got.starts_with("rules[0].if.country: at most 256"), "{got}");
}

#[test]
fn bad_variants_name_the_field_and_index() {
    let v = |w: serde_json::Value| json!({"destination": "https://a.example/", "weight": w});
    let cases = [
        (json!([v(json!(1))]), "variants: 2-64 variants"),
        (
            serde_json::Value::Array(vec![v(json!(1)); 65]),
            "variants: 2-64 variants",
        ),
        (
            json!([v(json!(1)), v(json!(0))]),
            "variants[1].weight: must be an integer 1-1000",
        ),
        (
            json!([v(json!(1001)), v(json!(1))]),
            "variants[0].weight: must be an integer 1-1000",
        ),
        (json!([v(json!(1.5)), v(json!(1))]), "variants[0].weight"),
        (json!([v(json!("2")), v(json!(1))]), "variants[0].weight"),
        (json!([v(json!(-1)), v(json!(1))]), "variants[0].weight"),
        (
            json!([v(json!(1)), {"destination": "ftp://x/", "weight": 1}]),
            "variants[1].destination: destination scheme",
        ),
        (
            json!([v(json!(1)), {"destination": "https://b.example/", "weight": 1, "name": "b"}]),
            "variants[1]: unknown field `name`",
        ),
        (json!("x"), "variants: must be an array"),
    ];
    for (input, want) in cases {
        let got = err_variants(input.clone());
        assert!(got.starts_with(want), "{input}: {got}");
    }
    assert!(parse_variants(&json!([])).unwrap().is_empty());
    assert_eq!(
        variants(serde_json::Value::Array(vec![v(json!(1000)); 64])).len(),
        64
    );
}

#[test]
fn every_condition_alone_and_combined() {
    let dest = "https://r.example/";
    let one = |cond: serde_json::Value| {
        routing(rules(json!([{"if": cond, "destination": dest}])), vec![])
    };
    let hit = |r: &Routing, v: &Visit<'_>| r.choose(v).rule();
    let de = visit(b"DE", IPHONE, "de-AT,de;q=0.9", &D);
    let us = visit(b"US", WINDOWS, "en-US", &D);
    let nowhere = visit(&[0, 0], "", "", &D);

    let r = one(json!({"country": ["DE", "AT"]}));
    assert_eq!(
        (hit(&r, &de), hit(&r, &us), hit(&r, &nowhere)),
        (Some(0), None, None)
    );
    let r = one(json!({"device": ["mobile", "tablet"]}));
    assert_eq!(
        (hit(&r, &de), hit(&r, &us), hit(&r, &nowhere)),
        (Some(0), None, None)
    );
    let r = one(json!({"os": ["windows"]}));
    assert_eq!((hit(&r, &de), hit(&r, &us)), (None, Some(0)));
    let r = one(json!({"language": ["de"]}));
    assert_eq!(
        (hit(&r, &de), hit(&r, &us), hit(&r, &nowhere)),
        (Some(0), None, None)
    );
    let r = one(json!({"language": ["en-us"]}));
    assert_eq!((hit(&r, &de), hit(&r, &us)), (None, Some(0)));
    // `en-us` is not matched by `en-u`, nor `de` by `d`.
    let r = one(json!({"language": ["d", "en-u"]}));
    assert_eq!((hit(&r, &de), hit(&r, &us)), (None, None));
    // All conditions of one `if` must hold.
    let r = one(json!({"country": ["DE"], "device": ["desktop"]}));
    assert_eq!(hit(&r, &de), None);
    let r =
        one(json!({"country": ["DE"], "device": ["mobile"], "os": ["ios"], "language": ["de"]}));
    assert_eq!((hit(&r, &de), hit(&r, &us)), (Some(0), None));
    // The route carries the agent when it had to be parsed, and the country.
    let route = r.choose(&de);
    assert_eq!(
        (route.device_str(), route.os_str(), route.country_str()),
        ("mobile", "ios", "DE")
    );
    let r = one(json!({"country": ["DE"]}));
    assert!(
        !r.choose(&de).has_agent(),
        "no device rule: the writer parses it"
    );
}

#[test]
fn time_windows_hold_from_after_until_before() {
    let r = routing(
        rules(
            json!([{"if": {"after": "2026-06-01T00:00:00Z", "before": "2026-06-02T00:00:00Z"},
                       "destination": "https://sale.example/"}]),
        ),
        vec![],
    );
    let after = DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z")
        .unwrap()
        .timestamp_millis();
    let before = after + 86_400_000;
    let at = |now_ms| {
        r.choose(&Visit {
            now_ms,
            ..visit(&[0, 0], "", "", &D)
        })
        .rule()
    };
    assert_eq!(at(after - 1), None);
    assert_eq!(at(after), Some(0));
    assert_eq!(at(before - 1), Some(0));
    assert_eq!(at(before), None);
}

#[test]
fn the_first_matching_rule_wins_and_variants_apply_only_when_none_does() {
    let r = routing(
        rules(json!([
            {"if": {"country": ["DE"], "device": ["mobile"]}, "destination": "https://de-mobile.example/"},
            {"if": {"country": ["DE"]}, "destination": "https://de.example/"},
            {"if": {"device": ["mobile"]}, "destination": "https://mobile.example/"},
        ])),
        variants(json!([
            {"destination": "https://a.example/", "weight": 1},
            {"destination": "https://b.example/", "weight": 1},
        ])),
    );
    let dest = |v: &Visit<'_>| {
        let route = r.choose(v);
        let (d, _) = r.target(&route).unwrap();
        (route.rule(), route.variant(), d.to_owned())
    };
    assert_eq!(
        dest(&visit(b"DE", IPHONE, "", &D)),
        (Some(0), None, "https://de-mobile.example/".into())
    );
    assert_eq!(
        dest(&visit(b"DE", WINDOWS, "", &D)),
        (Some(1), None, "https://de.example/".into())
    );
    assert_eq!(
        dest(&visit(b"FR", IPHONE, "", &D)),
        (Some(2), None, "https://mobile.example/".into())
    );
    let (rule, variant, d) = dest(&visit(b"FR", WINDOWS, "", &D));
    assert_eq!(rule, None);
    assert!(variant.is_some());
    assert!(d == "https://a.example/" || d == "https://b.example/");
}

#[test]
fn a_routed_destination_takes_the_macros_and_passthrough() {
    let r = routing(
        rules(
            json!([{"if": {"country": ["DE"]}, "destination": "https://de.example/?c={click_id}&s={sub}"}]),
        ),
        vec![],
    );
    let route = r.choose(&visit(b"DE", "", "", &D));
    let vars = Vars {
        click_id: "ID",
        code: "code",
        sub: "a b",
    };
    let mut out = String::new();
    assert!(r.render_into(&route, &vars, Some("utm=x"), &mut out));
    assert_eq!(out, "https://de.example/?c=ID&s=a%20b&utm=x");
    let mut out = String::new();
    assert!(!r.render_into(&r.choose(&visit(b"US", "", "", &D)), &vars, None, &mut out));
    assert!(out.is_empty());
}

fn digest(n: u64) -> [u8; 16] {
    // Uniform, like a salted blake3 hash.
    let h = blake3::hash(&n.to_le_bytes());
    h.as_bytes()[..16].try_into().unwrap()
}

fn split(weights: &[u16]) -> Routing {
    let v = weights
        .iter()
        .enumerate()
        .map(|(i, w)| Variant {
            destination: format!("https://v{i}.example/"),
            weight: *w,
        })
        .collect();
    routing(vec![], v)
}

fn assign(r: &Routing, visitors: u64) -> Vec<u8> {
    (0..visitors)
        .map(|n| {
            r.choose(&visit(&[0, 0], WINDOWS, "", &digest(n)))
                .variant()
                .unwrap()
        })
        .collect()
}

#[test]
fn the_same_visitor_always_gets_the_same_variant() {
    let r = split(&[1, 1, 1, 1]);
    for n in 0..1000 {
        let d = digest(n);
        let first = r.choose(&visit(&[0, 0], WINDOWS, "", &d));
        for _ in 0..3 {
            assert_eq!(r.choose(&visit(&[0, 0], WINDOWS, "", &d)), first);
        }
        // Compiled again (a restart, a table rebuild): still the same.
        let again = split(&[1, 1, 1, 1]);
        assert_eq!(again.choose(&visit(&[0, 0], WINDOWS, "", &d)), first);
    }
    // Another user agent on the same IP is another visitor: over many IPs
    // some of them land elsewhere.
    let moved = (0..1000)
        .filter(|n| {
            let d = digest(*n);
            r.choose(&visit(&[0, 0], WINDOWS, "", &d)) != r.choose(&visit(&[0, 0], IPHONE, "", &d))
        })
        .count();
    assert!(moved > 500, "{moved}");
}

#[test]
fn weights_hold_within_two_percent_over_100k_visitors() {
    const N: u64 = 100_000;
    for weights in [
        &[1u16, 1][..],
        &[1, 1, 2],
        &[1, 3],
        &[5, 3, 2],
        &[250, 250, 250, 250],
    ] {
        let r = split(weights);
        let got = assign(&r, N);
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        for (i, w) in weights.iter().enumerate() {
            let want = N as f64 * f64::from(*w) / total as f64;
            let seen = got.iter().filter(|v| usize::from(**v) == i).count() as f64;
            let off = (seen - want).abs() / want;
            assert!(
                off <= 0.02,
                "weights {weights:?}: variant {i} got {seen}, want {want}"
            );
        }
    }
}

#[test]
fn changing_one_weight_moves_visitors_only_to_or_from_that_variant() {
    const N: u64 = 20_000;
    let before = assign(&split(&[1, 1, 1, 1]), N);
    let heavier = assign(&split(&[1, 1, 3, 1]), N);
    assert_eq!(before, assign(&split(&[1, 1, 1, 1]), N));
    let mut moved = 0;
    for (b, h) in before.iter().zip(&heavier) {
        if b != h {
            moved += 1;
            assert_eq!(*h, 2, "a visitor moved between two unchanged variants");
        }
    }
    // Variant 2 goes from 1/4 to 1/2: about a quarter of all visitors move,
    // and no more (the least any scheme can move).
    let share = moved as f64 / N as f64;
    assert!((0.23..0.27).contains(&share), "{share}");
    // Lowering a weight only moves visitors off that variant.
    let less = assign(&split(&[2, 2, 1, 2]), N);
    for (b, l) in before.iter().zip(&less) {
        if b != l {
            assert_eq!(*b, 2, "a visitor left a variant whose weight did not drop");
        }
    }
}

#[test]
fn accept_language_gives_its_first_tag_or_nothing() {
    assert_eq!(first_language(b"de-AT,de;q=0.9,en;q=0.5"), b"de-AT");
    assert_eq!(first_language(b"  fr ; q=1"), b"fr");
    assert_eq!(first_language(b"en"), b"en");
    assert_eq!(first_language(b""), b"");
    assert_eq!(first_language(b"*"), b"");
    assert_eq!(first_language(b"\xff\xfe,de"), b"");
    assert_eq!(first_language(b"d\xc3\xa9"), b"");
    let long = "a".repeat(100_000);
    assert_eq!(first_language(long.as_bytes()), b"");
    assert_eq!(first_language(b"zh-Hant-TW"), b"zh-Hant-TW");
}

#[test]
fn hostile_visits_cost_bounded_work_and_never_panic() {
    let r = routing(
        rules(json!([
            {"if": {"language": ["de"], "device": ["mobile"]}, "destination": "https://x.example/"},
        ])),
        variants(json!([
            {"destination": "https://a.example/", "weight": 1},
            {"destination": "https://b.example/", "weight": 1000},
        ])),
    );
    let giant = vec![b'A'; 1 << 20];
    let v = Visit {
        now_ms: 0,
        country: [0xff, 0x00],
        user_agent: &giant,
        accept_language: &giant,
        ip_digest: &D,
    };
    let route = r.choose(&v);
    assert_eq!(route.rule(), None);
    assert!(route.variant().is_some());
    assert_eq!(route.country_str(), "");
    let bad = Visit {
        user_agent: b"\xff\xfe\x00 iPhone",
        accept_language: b"\xc3\x28de",
        ..v
    };
    r.choose(&bad);
}

#[test]
fn country_sets_hold_exactly_their_codes() {
    let set = CountrySet::from_codes(&["DE".to_string(), "ZZ".into(), "AA".into()]);
    assert!(set.contains(*b"DE") && set.contains(*b"ZZ") && set.contains(*b"AA"));
    assert!(!set.contains(*b"DF") && !set.contains(*b"ED") && !set.contains([0, 0]));
    assert!(!set.contains(*b"de"), "codes are upper case by then");
}

#[test]
fn links_keep_rules_and_variants_through_the_store_record() {
    use crate::links::{Link, LinkRecord};
    let mut rec = LinkRecord::for_tests("abc", "t", "https://plain.example/");
    let ms = DateTime::from_timestamp_millis(1_790_000_000_123).unwrap();
    (rec.created_at, rec.updated_at) = (ms, ms);
    rec.rules = rules(
        json!([{"if": {"country": ["DE"], "after": "2026-01-01T00:00:00Z"},
                               "destination": "https://de.example/"}]),
    );
    rec.variants = variants(json!([
        {"destination": "https://a.example/", "weight": 3},
        {"destination": "https://b.example/", "weight": 1},
    ]));
    let link = Link::compile(rec.clone());
    assert_eq!(link.to_record(), rec);
    let json = serde_json::to_string(&rec).unwrap();
    assert_eq!(serde_json::from_str::<LinkRecord>(&json).unwrap(), rec);
    // A record written before routing existed still loads, as a plain link.
    let old = r#"{"code":"o","tenant":"t","destination":"https://o.example/","redirect":302,
        "created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z",
        "expires_at":null,"disabled":false,"tags":[],"passthrough":true}"#;
    let old: LinkRecord = serde_json::from_str(old).unwrap();
    assert!(old.rules.is_empty() && old.variants.is_empty());
    let plain = Link::compile(old);
    assert!(plain.routing().is_none());
    // A plain link's record stays as it was (no empty `rules` keys).
    let text = serde_json::to_string(&plain.to_record()).unwrap();
    assert!(
        !text.contains("rules") && !text.contains("variants"),
        "{text}"
    );
    // The destination an event reports is the one the click took.
    let routed = Route {
        rule: 0,
        ..Route::default()
    };
    assert_eq!(link.destination_for(&routed), "https://de.example/");
    assert_eq!(
        link.destination_for(&Route::default()),
        "https://plain.example/"
    );
}
