//! Time as a value: the service reads its clock through this trait (a test or demo clock
//! slots in here). The engine never reads a clock; it is handed `now`.

use crate::engine::Timestamp;

pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;

    /// How many times faster than real time this clock runs (1 but for the demo's).
    fn scale(&self) -> f64 {
        1.0
    }
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp(chrono::Utc::now().timestamp_millis())
    }
}

/// A clock the tests set and move by hand.
#[derive(Default)]
pub struct TestClock(std::sync::atomic::AtomicI64);

impl TestClock {
    pub fn at(t: Timestamp) -> TestClock {
        TestClock(std::sync::atomic::AtomicI64::new(t.0))
    }

    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// The demo's fast clock (`serve --time-scale N`): virtual time runs N times faster than
/// real time, from where it stood when the service last ran. Its position is kept in a
/// file as a lease: before handing out a time past the stored position, the clock stores
/// a position one real second ahead and syncs it, so after any restart, even `kill -9`,
/// virtual time resumes at or after every time it handed out, never before.
pub struct ScaledClock {
    scale: f64,
    path: std::path::PathBuf,
    state: std::sync::Mutex<Scaled>,
}

struct Scaled {
    /// Virtual time at `started`.
    base: i64,
    started: std::time::Instant,
    /// The stored position: no time at or past it is handed out before a new one is stored.
    lease: i64,
    /// The last time handed out (never decreases).
    last: i64,
}

impl ScaledClock {
    /// Resumes from the position in `path`, or starts at the real time now.
    pub fn open(path: &std::path::Path, scale: f64) -> std::io::Result<ScaledClock> {
        if !(scale.is_finite() && scale >= 1.0) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("time scale {scale} must be a number of at least 1"),
            ));
        }
        let base = match std::fs::read_to_string(path) {
            Ok(text) => text.trim().parse::<i64>().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} does not hold a clock position ({text:?}); delete it to start the demo clock at the real time",
                        path.display()
                    ),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SystemClock.now().0,
            Err(e) => return Err(e),
        };
        let clock = ScaledClock {
            scale,
            path: path.to_path_buf(),
            state: std::sync::Mutex::new(Scaled {
                base,
                started: std::time::Instant::now(),
                lease: base,
                last: base,
            }),
        };
        let mut s = clock.state.lock().unwrap_or_else(|p| p.into_inner());
        clock.extend(&mut s, base)?;
        drop(s);
        Ok(clock)
    }

    fn extend(&self, s: &mut Scaled, from: i64) -> std::io::Result<()> {
        let lease = from + (1000.0 * self.scale) as i64;
        let tmp = self.path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(lease.to_string().as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        s.lease = lease;
        Ok(())
    }
}

impl Clock for ScaledClock {
    fn scale(&self) -> f64 {
        self.scale
    }

    fn now(&self) -> Timestamp {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = s.started.elapsed().as_secs_f64() * 1000.0 * self.scale;
        let mut t = (s.base + elapsed as i64).max(s.last);
        if t >= s.lease {
            if let Err(e) = self.extend(&mut s, t) {
                // Without a stored position the clock may not move past the last one.
                log::error!(
                    "clock: cannot store its position in {} ({e}); time stands still until it can",
                    self.path.display()
                );
                t = (s.lease - 1).max(s.last);
            }
        }
        s.last = t;
        Timestamp(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scaled_clock_runs_fast_and_never_backwards_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clock");
        let day = 86_400_000;
        let mut seen = 0;
        for _ in 0..3 {
            // Each "run" reads a few times and is dropped without any shutdown (as kill -9).
            let c = ScaledClock::open(&path, 86_400.0).unwrap();
            let first = c.now().0;
            assert!(
                first >= seen,
                "started at {first}, before {seen} handed out earlier"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
            let later = c.now().0;
            // 50 ms at a day per second is over an hour of virtual time.
            assert!(later - first >= day / 20 - day / 100, "{}", later - first);
            seen = later;
        }
        std::fs::write(&path, "yesterday").unwrap();
        let err = ScaledClock::open(&path, 10.0).err().unwrap();
        assert!(err.to_string().contains("delete it"), "{err}");
        assert!(ScaledClock::open(&path, 0.5).is_err());
    }

    #[test]
    fn the_test_clock_moves_only_by_hand() {
        let c = TestClock::at(Timestamp(5));
        c.advance(10);
        assert_eq!(c.now(), Timestamp(15));
        c.set(Timestamp(1));
        assert_eq!(c.now(), Timestamp(1));
    }
}
