//! Money as an exact decimal: an integer count of 10⁻⁸ units.
//!
//! Payouts arrive as decimal strings and are summed per currency; a float
//! would turn `0.1 + 0.2` into a reconciliation difference. Eight fractional
//! digits cover every currency and the sub-cent payouts CPC networks send;
//! an `i128` of 10⁻⁸ units holds more than 10²⁰, so sums cannot overflow in
//! practice (and are checked anyway). Written back with at least two
//! fractional digits (`12.50`), trailing zeros beyond that trimmed.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Fractional digits kept.
pub const SCALE: u32 = 8;
const ONE: i128 = 10i128.pow(SCALE);
/// Most integer digits accepted (10²⁰ is far beyond any payout).
const MAX_INT_DIGITS: usize = 20;
/// Fractional digits always written.
const MIN_SHOWN_FRACTION: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Decimal(i128);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    #[error("empty")]
    Empty,
    #[error("not a plain decimal number like 12.50")]
    Syntax,
    #[error("more than {SCALE} fractional digits")]
    TooPrecise,
    #[error("more than {MAX_INT_DIGITS} integer digits")]
    TooLarge,
}

impl Decimal {
    pub const ZERO: Decimal = Decimal(0);

    /// Parses `[+-]digits[.digits]`: no exponent, no spaces, no thousands
    /// separators, at most 8 fractional digits.
    pub fn parse(s: &str) -> Result<Decimal, DecimalError> {
        if s.is_empty() {
            return Err(DecimalError::Empty);
        }
        let (negative, rest) = match s.as_bytes()[0] {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let (int, frac) = match rest.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (rest, None),
        };
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(int) || frac.is_some_and(|f| !digits(f)) {
            return Err(DecimalError::Syntax);
        }
        let frac = frac.unwrap_or("");
        if frac.len() > SCALE as usize {
            return Err(DecimalError::TooPrecise);
        }
        let int = int.trim_start_matches('0');
        if int.len() > MAX_INT_DIGITS {
            return Err(DecimalError::TooLarge);
        }
        let mut units: i128 = 0;
        for b in int.bytes() {
            units = units * 10 + i128::from(b - b'0');
        }
        units *= ONE;
        let mut scale = ONE;
        for b in frac.bytes() {
            scale /= 10;
            units += i128::from(b - b'0') * scale;
        }
        Ok(Decimal(if negative { -units } else { units }))
    }

    pub fn checked_add(self, other: Decimal) -> Option<Decimal> {
        self.0.checked_add(other.0).map(Decimal)
    }

    /// `self / n`, rounded half away from zero to 8 fractional digits.
    pub fn div_round(self, n: u64) -> Option<Decimal> {
        if n == 0 {
            return None;
        }
        let n = i128::from(n);
        let q = self.0 / n;
        let r = self.0 % n;
        let bump = if r.abs() * 2 >= n { self.0.signum() } else { 0 };
        Some(Decimal(q + bump))
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let int = abs / ONE as u128;
        let frac = format!("{:0width$}", abs % ONE as u128, width = SCALE as usize);
        let keep = frac.trim_end_matches('0').len().max(MIN_SHOWN_FRACTION);
        write!(f, "{sign}{int}.{}", &frac[..keep])
    }
}

impl std::str::FromStr for Decimal {
    type Err = DecimalError;
    fn from_str(s: &str) -> Result<Decimal, DecimalError> {
        Decimal::parse(s)
    }
}

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Decimal::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    #[test]
    fn plain_decimals_parse_exactly_and_print_with_two_or_more_digits() {
        assert_eq!(d("12.5").to_string(), "12.50");
        assert_eq!(d("12").to_string(), "12.00");
        assert_eq!(d("0.00000001").to_string(), "0.00000001");
        assert_eq!(d("-3.125").to_string(), "-3.125");
        assert_eq!(d("+007.10").to_string(), "7.10");
        assert_eq!(d("0.1").checked_add(d("0.2")).unwrap(), d("0.3"));
    }

    #[test]
    fn anything_but_a_plain_decimal_is_refused() {
        for bad in [
            "", "-", ".5", "5.", "1e3", " 1", "1 ", "1,5", "NaN", "inf", "0x10", "1.2.3", "--1",
        ] {
            assert!(Decimal::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Decimal::parse("0.123456789"), Err(DecimalError::TooPrecise));
        assert_eq!(Decimal::parse(&"9".repeat(21)), Err(DecimalError::TooLarge));
    }

    #[test]
    fn division_rounds_half_away_from_zero() {
        assert_eq!(d("1").div_round(3).unwrap().to_string(), "0.33333333");
        assert_eq!(d("2").div_round(3).unwrap().to_string(), "0.66666667");
        assert_eq!(d("-2").div_round(3).unwrap().to_string(), "-0.66666667");
        assert!(d("1").div_round(0).is_none());
    }

    proptest! {
        #[test]
        fn printing_then_parsing_gives_the_same_amount(units in -(10i128.pow(28))..10i128.pow(28)) {
            let a = Decimal(units);
            prop_assert_eq!(Decimal::parse(&a.to_string()).unwrap(), a);
        }

        #[test]
        fn well_formed_strings_keep_their_value(int in "[0-9]{1,20}", frac in "[0-9]{0,8}") {
            let text = if frac.is_empty() { int.clone() } else { format!("{int}.{frac}") };
            let a = Decimal::parse(&text).unwrap();
            // Same value as the text, compared digit by digit.
            let int_trim = int.trim_start_matches('0');
            let shown = a.to_string();
            let (si, sf) = shown.split_once('.').unwrap();
            prop_assert_eq!(si, if int_trim.is_empty() { "0" } else { int_trim });
            prop_assert_eq!(sf.trim_end_matches('0'), frac.trim_end_matches('0'));
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,40}") {
            let _ = Decimal::parse(&s);
        }
    }
}
