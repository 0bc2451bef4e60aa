//! Lenient serde helpers for platform JSON: ids that come as numbers or strings, decimals
//! that come as strings or numbers, and nulls where a list or text was expected.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A platform id given as a JSON number or string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Id(pub String);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an id (number or string)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
                Ok(Id(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Id, E> {
                Ok(Id(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
                if v.is_empty() {
                    return Err(E::custom("empty id"));
                }
                Ok(Id(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A decimal amount given as a JSON string ("19.99") or number (19.99).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal(pub String);

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Decimal;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a decimal amount (string or number)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
                Ok(Decimal(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
                Ok(Decimal(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Decimal, E> {
                Ok(Decimal(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
                Ok(Decimal(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The order's currency, or why not.
pub fn currency(code: &str) -> Result<crate::engine::Currency, String> {
    crate::engine::Currency::parse(code).map_err(|e| format!("currency: {e}"))
}

/// A decimal amount in minor units of `currency`; errors name the field.
pub fn minor(currency: crate::engine::Currency, field: &str, d: &Decimal) -> Result<i64, String> {
    currency
        .parse_minor(&d.0)
        .map_err(|e| format!("{field}: {e}"))
}

/// `null` or missing becomes the type's default (an empty list, say).
pub fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Parses an RFC 3339 time ("2026-11-21T10:00:00-05:00") into UTC milliseconds.
pub fn parse_time(field: &str, s: &str) -> Result<crate::engine::Timestamp, String> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .map(|t| crate::engine::Timestamp(t.timestamp_millis()))
        .map_err(|e| format!("{field}: {s:?} is not an RFC 3339 time ({e})"))
}

/// Parses a GMT time without an offset ("2026-11-21T15:00:00", WooCommerce's `*_gmt`
/// fields); an RFC 3339 time with an offset is accepted too.
pub fn parse_gmt(field: &str, s: &str) -> Result<crate::engine::Timestamp, String> {
    let t = s.trim();
    for form in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(naive) = chrono::NaiveDateTime::parse_from_str(t, form) {
            return Ok(crate::engine::Timestamp(naive.and_utc().timestamp_millis()));
        }
    }
    parse_time(field, t)
}

/// A line of a platform that says only this much about it (WooCommerce, BigCommerce):
/// ids of 0 mean none (a custom line), and it ships.
pub fn plain_line(
    id: String,
    product_id: u64,
    variant_id: u64,
    sku: Option<String>,
    quantity: u32,
    unit_price: i64,
    title: Option<String>,
) -> crate::engine::LineItem {
    crate::engine::LineItem {
        id,
        product_id: (product_id != 0).then(|| product_id.to_string()),
        variant_id: (variant_id != 0).then(|| variant_id.to_string()),
        sku: non_empty(sku),
        quantity,
        unit_price,
        title: title.unwrap_or_default(),
        variant_title: None,
        vendor: None,
        gift_card: false,
        requires_shipping: true,
    }
}

/// Splits a comma-separated tag string, trimming and dropping empties.
pub fn split_tags(s: Option<&str>) -> Vec<String> {
    s.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// Treats empty strings like absent ones.
/// A JSON string or number as text; `None` for null, absent or blank (a template variable
/// the sender has no value for renders empty).
pub fn text(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}
