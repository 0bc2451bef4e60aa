//! Time as a value: a real clock for the service and a settable one for tests. The engine
//! never reads a clock; it is handed `now`.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::engine::Timestamp;

pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp(chrono::Utc::now().timestamp_millis())
    }
}

/// A clock that only moves when told to.
pub struct TestClock(AtomicI64);

impl TestClock {
    pub fn new(start: Timestamp) -> TestClock {
        TestClock(AtomicI64::new(start.0))
    }

    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}
