//! Money as integer minor units: parsing the platforms' decimal strings exactly, never
//! through floats.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An ISO 4217 currency code, upper case.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Currency([u8; 3]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("currency {0:?} is not a three-letter ISO 4217 code such as \"USD\"")]
    BadCurrency(String),
    #[error("amount {0:?} is not a decimal number such as \"19.99\"")]
    BadAmount(String),
    #[error("amount {amount:?} has more decimals than {currency} allows ({exponent})")]
    TooPrecise {
        amount: String,
        currency: Currency,
        exponent: u32,
    },
    #[error("amount {0:?} is too large")]
    Overflow(String),
}

/// Currencies whose minor unit is not the usual hundredth.
const ZERO_DECIMALS: &[&str] = &[
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
    "VUV", "XAF", "XOF", "XPF",
];
const THREE_DECIMALS: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];

impl Currency {
    pub fn parse(code: &str) -> Result<Currency, MoneyError> {
        let b = code.as_bytes();
        if b.len() != 3 || !b.iter().all(|c| c.is_ascii_alphabetic()) {
            return Err(MoneyError::BadCurrency(code.to_string()));
        }
        Ok(Currency([
            b[0].to_ascii_uppercase(),
            b[1].to_ascii_uppercase(),
            b[2].to_ascii_uppercase(),
        ]))
    }

    pub fn as_str(&self) -> &str {
        // Only ever built from ASCII letters.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }

    /// Number of decimal digits in one major unit.
    pub fn exponent(&self) -> u32 {
        let s = self.as_str();
        if ZERO_DECIMALS.contains(&s) {
            0
        } else if THREE_DECIMALS.contains(&s) {
            3
        } else {
            2
        }
    }

    /// Parses a decimal string ("19.99", "20", "-3.5") into minor units.
    pub fn parse_minor(&self, amount: &str) -> Result<i64, MoneyError> {
        let bad = || MoneyError::BadAmount(amount.to_string());
        let s = amount.trim();
        let (neg, s) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (int, frac) = match s.split_once('.') {
            Some((i, f)) => (i, f),
            None => (s, ""),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(bad());
        }
        if !int.bytes().all(|c| c.is_ascii_digit()) || !frac.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        let exp = self.exponent();
        let frac = frac.trim_end_matches('0');
        if frac.len() > exp as usize {
            return Err(MoneyError::TooPrecise {
                amount: amount.to_string(),
                currency: *self,
                exponent: exp,
            });
        }
        let overflow = || MoneyError::Overflow(amount.to_string());
        let mut v: i64 = 0;
        for c in int.bytes() {
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add(i64::from(c - b'0')))
                .ok_or_else(overflow)?;
        }
        for i in 0..exp as usize {
            let d = frac.as_bytes().get(i).map_or(0, |c| i64::from(c - b'0'));
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add(d))
                .ok_or_else(overflow)?;
        }
        Ok(if neg { -v } else { v })
    }

    /// Formats minor units as a decimal string in this currency.
    pub fn format_minor(&self, minor: i64) -> String {
        let exp = self.exponent();
        if exp == 0 {
            return minor.to_string();
        }
        let scale = 10i64.pow(exp);
        let sign = if minor < 0 { "-" } else { "" };
        let abs = minor.unsigned_abs();
        format!(
            "{sign}{}.{:0width$}",
            abs / scale as u64,
            abs % scale as u64,
            width = exp as usize
        )
    }
}

/// `minor` units of `from` in minor units of `to`, at `rates` (units of an order currency
/// per unit of the store's); `None` for another currency without a rate.
pub fn convert(
    minor: i64,
    from: Currency,
    to: Currency,
    rates: &std::collections::BTreeMap<Currency, f64>,
) -> Option<i64> {
    if from == to {
        return Some(minor);
    }
    let rate = *rates.get(&from)?;
    let scale = 10f64.powi(to.exponent() as i32 - from.exponent() as i32);
    Some((minor as f64 / rate * scale).round() as i64)
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(cur: &str, amount: &str, expect: Result<i64, &str>) {
        let c = Currency::parse(cur).unwrap();
        let got = c.parse_minor(amount).map_err(|e| e.to_string());
        assert_eq!(got, expect.map_err(|e| e.to_string()), "{cur} {amount}");
    }

    #[test]
    fn parses_decimal_strings_exactly() {
        check("USD", "19.99", Ok(1999));
        check("usd", "20", Ok(2000));
        check("USD", "0.1", Ok(10));
        check("USD", "12.500", Ok(1250));
        check("USD", "-3.5", Ok(-350));
        check("USD", ".5", Ok(50));
        check("JPY", "1200", Ok(1200));
        check("KWD", "1.234", Ok(1234));
        check(
            "USD",
            "1.999",
            Err("amount \"1.999\" has more decimals than USD allows (2)"),
        );
        check(
            "JPY",
            "1.5",
            Err("amount \"1.5\" has more decimals than JPY allows (0)"),
        );
        check(
            "USD",
            "abc",
            Err("amount \"abc\" is not a decimal number such as \"19.99\""),
        );
        check(
            "USD",
            "",
            Err("amount \"\" is not a decimal number such as \"19.99\""),
        );
        check(
            "USD",
            "99999999999999999999",
            Err("amount \"99999999999999999999\" is too large"),
        );
    }

    #[test]
    fn formats_minor_units() {
        let usd = Currency::parse("USD").unwrap();
        assert_eq!(usd.format_minor(1999), "19.99");
        assert_eq!(usd.format_minor(-5), "-0.05");
        assert_eq!(Currency::parse("JPY").unwrap().format_minor(1200), "1200");
        assert_eq!(Currency::parse("KWD").unwrap().format_minor(1234), "1.234");
        assert!(Currency::parse("US").is_err());
    }
}
