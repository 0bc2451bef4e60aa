//! Pausing a store's sending without a restart (`upsell-appliance pause|resume`): per store
//! a flag that the scheduler reads before it decides a touch and again right before each
//! send, and a count of sends in flight, so that when `pause` returns nothing more is sent.
//! The durable side is `storage::pause`, written before the flag is set (so a restart keeps
//! the pause); this is loaded from it at start.
//!
//! Due times are never changed by a pause: a touch held back is decided when the store is
//! resumed, by the misfire policy like any late touch (within its grace it goes, beyond it
//! is skipped as stale).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use crate::storage::{Error, Storage};

/// How long `pause` waits for the sends in flight. A provider request ends within
/// `[outbound] timeout_secs` (20 s by default) plus the provider's rate-limit wait; this
/// keeps the answer within the CLI's 30 s, and says so if a send was still in flight.
pub const WAIT: Duration = Duration::from_secs(25);

/// Every configured store's pause state, shared by the admin API and the scheduler.
pub struct Pauses {
    stores: HashMap<String, Gate>,
}

#[derive(Default)]
struct Gate {
    /// Held while a pause or resume writes its row and sets the flag: two at once would
    /// otherwise leave the row and the flag disagreeing.
    change: std::sync::Mutex<()>,
    paused: AtomicBool,
    /// Sends between [`Pauses::enter`] and the drop of its [`Sending`].
    in_flight: AtomicUsize,
}

/// Held while one message is handed to its channel: a provider request until its answer, an
/// outbox line until the file is synced. A pause waits for these.
pub struct Sending<'a>(Option<&'a AtomicUsize>);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.0 {
            n.fetch_sub(1, SeqCst);
        }
    }
}

impl Pauses {
    /// The stores' pauses as the database has them.
    pub fn load(storage: &Storage, stores: &[String]) -> Result<Pauses, Error> {
        let snap = storage.snapshot()?;
        let mut map = HashMap::new();
        for id in stores {
            let gate = Gate::default();
            gate.paused.store(snap.paused(id)?.is_some(), SeqCst);
            map.insert(id.clone(), gate);
        }
        Ok(Pauses { stores: map })
    }

    pub fn is_paused(&self, store: &str) -> bool {
        self.stores
            .get(store)
            .is_some_and(|g| g.paused.load(SeqCst))
    }

    /// Permission to send one message of `store` now; `None` while it is paused. Counted in
    /// flight first and the flag read after, so a pause that sets the flag either is seen
    /// here or sees this send in flight and waits for it.
    pub fn enter(&self, store: &str) -> Option<Sending<'_>> {
        let Some(g) = self.stores.get(store) else {
            // Not configured (any more): its touches are skipped, not sent.
            return Some(Sending(None));
        };
        g.in_flight.fetch_add(1, SeqCst);
        let sending = Sending(Some(&g.in_flight));
        (!g.paused.load(SeqCst)).then_some(sending)
    }

    /// Pauses or resumes `store`'s sending: `write` makes it durable, then the flag
    /// follows, the two under the store's lock so a pause and a resume at once cannot
    /// leave them disagreeing. A pause then waits, up to `wait`, until no send of the
    /// store is in flight. Returns what `write` gave and how many sends still are in
    /// flight (0: nothing more is sent from now on).
    pub fn set<T, E>(
        &self,
        store: &str,
        paused: bool,
        wait: Duration,
        write: impl FnOnce() -> Result<T, E>,
    ) -> Result<(T, usize), E> {
        let Some(g) = self.stores.get(store) else {
            return write().map(|v| (v, 0));
        };
        let v = {
            let _change = g.change.lock().unwrap_or_else(|p| p.into_inner());
            let v = write()?;
            g.paused.store(paused, SeqCst);
            v
        };
        let deadline = Instant::now() + wait;
        loop {
            let n = g.in_flight.load(SeqCst);
            if !paused || n == 0 || Instant::now() >= deadline {
                return Ok((v, if paused { n } else { 0 }));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Result<(), ()> {
        Ok(())
    }

    fn pauses() -> Pauses {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), &Default::default()).unwrap();
        Pauses::load(&storage, &["a".into(), "b".into()]).unwrap()
    }

    #[test]
    fn a_pause_waits_for_the_send_in_flight_and_lets_no_new_one_start() {
        let p = std::sync::Arc::new(pauses());
        let sending = p.enter("a").expect("not paused");
        let (p2, started) = (p.clone(), Instant::now());
        let pause = std::thread::spawn(move || p2.set("a", true, WAIT, ok).unwrap().1);
        std::thread::sleep(Duration::from_millis(100));
        assert!(p.enter("a").is_none(), "no new send once the flag is set");
        assert!(p.enter("b").is_some(), "other stores send on");
        assert!(
            !pause.is_finished(),
            "the pause waits for the send in flight"
        );
        drop(sending);
        assert_eq!(pause.join().unwrap(), 0);
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(p.is_paused("a") && !p.is_paused("b"));
        // Bounded: a send that does not finish is reported, not waited for forever.
        p.set("a", false, WAIT, ok).unwrap();
        let stuck = p.enter("a").unwrap();
        assert_eq!(
            p.set("a", true, Duration::from_millis(30), ok).unwrap().1,
            1
        );
        drop(stuck);
        p.set("a", false, WAIT, ok).unwrap();
        assert!(p.enter("a").is_some() && !p.is_paused("a"));
    }
}
