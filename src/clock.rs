//! Time as a value: the service reads its clock through this trait (a test or demo clock
//! slots in here). The engine never reads a clock; it is handed `now`.

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
