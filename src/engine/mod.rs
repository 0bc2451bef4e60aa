//! The product's pure core: the normalized commerce model and the decisions made on it.
//!
//! Nothing in here does I/O, reads a clock, spawns a thread or knows redb, tiny_http or
//! ureq: time is a parameter and every input is a value. Most tests live here.

pub mod affinity;
pub mod attribution;
pub mod catalog;
pub mod due;
pub mod history;
pub mod lifecycle;
pub mod lift;
pub mod links;
pub mod model;
pub mod money;
pub mod offer;
pub mod plan;
pub mod tz;

pub use model::*;
pub use money::{Currency, MoneyError};

/// Lower-case hex of bytes (digests, tokens, golden records).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares secrets (signatures, tokens) without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Percent-encodes everything but RFC 3986's unreserved characters: safe in a URL's path,
/// query and a form body alike.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            super::percent_encode("2026-11-20T10:00:00+00:00"),
            "2026-11-20T10%3A00%3A00%2B00%3A00"
        );
    }
}
