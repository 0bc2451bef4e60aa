//! The product's pure core: the normalized commerce model and the decisions made on it.
//!
//! Nothing in here does I/O, reads a clock, spawns a thread or knows redb, tiny_http or
//! ureq: time is a parameter and every input is a value. Most tests live here.

pub mod affinity;
pub mod catalog;
pub mod due;
pub mod history;
pub mod lifecycle;
pub mod links;
pub mod model;
pub mod money;
pub mod plan;
pub mod tz;

pub use model::*;
pub use money::{Currency, MoneyError};

/// Compares secrets (signatures, tokens) without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
