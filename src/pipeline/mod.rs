//! The service's threads between the HTTP workers, the database and the channels: the
//! writer, which makes deliveries durable in group commits before anyone is answered; the
//! processor, which applies committed events to order and customer history in commit
//! order, and the planner it runs; the scheduler, which fires due touches; and the jobs
//! thread (purge, affinity check).
//!
//! Knows storage and the engine; never imports tiny_http (replies are closures the HTTP
//! side hands over) or ureq.

pub mod codes;
pub mod jobs;
pub mod pause;
pub mod planner;
pub mod processor;
pub mod scheduler;
pub mod sync;
pub mod writer;

use crate::ingest::Parsed;
use crate::storage::records::ParsedRecord;

/// What a parse result is stored as.
pub fn record_of(parsed: Parsed) -> ParsedRecord {
    match parsed {
        Parsed::Event(e) => ParsedRecord::Event(e),
        Parsed::Ignored => ParsedRecord::Ignored,
        Parsed::Unparseable(why) => ParsedRecord::Unparseable(why),
        Parsed::Privacy(r) => ParsedRecord::Privacy(*r),
    }
}
