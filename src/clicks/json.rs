//! The click event's JSON line, written by hand.
//!
//! Why not `serde_json::to_writer`: the click-log writer encodes every
//! click on the edge's core, and serde's generic serializer (a state
//! machine per field, `fmt` for the timestamp and the numbers) was about a
//! quarter of the writer's time. The output is byte for byte what
//! `serde_json` writes for [`WireClick`](super::WireClick) (a test checks
//! it on arbitrary events), so readers keep decoding with serde.

/// What a byte of a JSON string becomes: 0 = itself, `u` = `\u00XX`,
/// anything else = that letter after a backslash (as serde_json escapes).
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` as a quoted JSON string.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc = ESCAPE[usize::from(b)];
        if esc == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        if esc == b'u' {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', esc]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends `"key":` (keys are fixed ASCII names: no escaping).
pub fn push_key(out: &mut Vec<u8>, key: &str) {
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

/// Appends `n` in decimal.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends Unix milliseconds as a quoted RFC 3339 UTC time with
/// milliseconds (`"2026-09-21T14:13:20.123Z"`), as
/// [`Rfc3339Millis`](super::Rfc3339Millis) serialises it.
pub fn push_rfc3339_millis(out: &mut Vec<u8>, ms: i64) {
    use chrono::{Datelike, Timelike};
    let dt = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    let year = dt.year();
    if !(0..=9999).contains(&year) {
        // Outside what four digits hold: the general path (never on the
        // hot path: click times are now).
        let s = serde_json::to_string(&super::Rfc3339Millis(ms)).unwrap_or_default();
        out.extend_from_slice(s.as_bytes());
        return;
    }
    let two = |n: u32| [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8];
    let y = year as u32;
    let [mo0, mo1] = two(dt.month());
    let [d0, d1] = two(dt.day());
    let [h0, h1] = two(dt.hour());
    let [mi0, mi1] = two(dt.minute());
    let [s0, s1] = two(dt.second());
    let milli = dt.timestamp_subsec_millis();
    out.extend_from_slice(&[
        b'"',
        b'0' + (y / 1000) as u8,
        b'0' + (y / 100 % 10) as u8,
        b'0' + (y / 10 % 10) as u8,
        b'0' + (y % 10) as u8,
        b'-',
        mo0,
        mo1,
        b'-',
        d0,
        d1,
        b'T',
        h0,
        h1,
        b':',
        mi0,
        mi1,
        b':',
        s0,
        s1,
        b'.',
        b'0' + (milli / 100) as u8,
        b'0' + (milli / 10 % 10) as u8,
        b'0' + (milli % 10) as u8,
        b'Z',
        b'"',
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn strings_encode_as_serde_json_does(s in any::<String>()) {
            let mut out = Vec::new();
            push_str(&mut out, &s);
            prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&s).unwrap());
        }

        #[test]
        fn control_and_quote_heavy_strings_too(s in "[\\x00-\\x1f\"\\\\a/\\x7f\u{e9}]{0,40}") {
            let mut out = Vec::new();
            push_str(&mut out, &s);
            prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&s).unwrap());
        }

        #[test]
        fn numbers_encode_as_serde_json_does(n in any::<u64>()) {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            prop_assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }

        #[test]
        fn times_encode_as_the_serde_impl_does(ms in -62_167_219_200_000i64..=253_402_300_799_999) {
            let mut out = Vec::new();
            push_rfc3339_millis(&mut out, ms);
            let want = serde_json::to_string(&crate::clicks::Rfc3339Millis(ms)).unwrap();
            prop_assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }

    #[test]
    fn times_outside_four_digit_years_fall_back_to_the_serde_impl() {
        for ms in [i64::MIN, -62_167_219_200_001, 253_402_300_800_000, i64::MAX] {
            let mut out = Vec::new();
            push_rfc3339_millis(&mut out, ms);
            let want = serde_json::to_string(&crate::clicks::Rfc3339Millis(ms)).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }
}
