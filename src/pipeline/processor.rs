//! Applies committed events to order state and customer history, in commit order, in its
//! own transactions, after the webhook was answered. Idempotent: the cursor moves in the
//! same transaction as the effects, and applying an event twice changes nothing.
//!
//! Later issues hang affinity updates and touch planning here; never on the path before
//! the 2xx.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::engine::history::{self, normalize_email, Applied, Customer};
use crate::engine::{Event, Order};
use crate::storage::records::{EventHead, ParsedRecord};
use crate::storage::{Error, Lookup, ProcessTx, Storage};

/// Events applied per transaction.
const CHUNK: usize = 512;
/// Least time between catch-ups. Under load the processor then takes the database's one
/// write lock for a few large transactions instead of one small one after every group
/// commit, which would halve the writer's commit rate.
const SPACING: Duration = Duration::from_millis(50);

/// Runs until the wake-up channel closes, then catches up once more and returns.
pub fn run(storage: Arc<Storage>, wake: Receiver<u64>) {
    loop {
        let started = Instant::now();
        if let Err(e) = catch_up(&storage) {
            eprintln!("processor: {e}; retrying in 1 s");
            std::thread::sleep(Duration::from_secs(1));
        }
        std::thread::sleep(SPACING.saturating_sub(started.elapsed()));
        match wake.recv_timeout(Duration::from_secs(1)) {
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    if let Err(e) = catch_up(&storage) {
        eprintln!("processor: {e}; the remaining events are applied at the next start");
    }
}

/// Applies every committed event not yet applied. Returns how many were read.
pub fn catch_up(storage: &Storage) -> Result<usize, Error> {
    let mut total = 0;
    loop {
        let from = storage.processed_seq()?;
        let events = storage.event_heads_after(from, CHUNK)?;
        let Some(&(last, _)) = events.last() else {
            return Ok(total);
        };
        storage.process(|tx| {
            for (_, head) in &events {
                apply(tx, head)?;
            }
            tx.set_processed(last)
        })?;
        total += events.len();
    }
}

fn apply(tx: &mut ProcessTx<'_>, head: &EventHead) -> Result<(), Error> {
    let ParsedRecord::Event(event) = &head.parsed else {
        return Ok(());
    };
    let store = head.store.as_str();
    let order_id = event.order_id();
    let mut state = tx.order(store, order_id)?.unwrap_or_default();
    let mut customer = match (state.customer, event) {
        (Some(id), _) => tx.customer(store, id)?,
        (None, Event::Order { order, .. }) => resolve(tx, store, order)?,
        (None, _) => None,
    };
    if history::apply(&mut state, customer.as_mut(), event, head.source) == Applied::Unchanged {
        return Ok(());
    }
    if let Some(c) = &customer {
        state.customer = Some(c.id);
        tx.put_customer(store, c)?;
        // Only this order's identifiers can be new: link those.
        if let Event::Order { order, .. } = event {
            for lookup in lookups(order) {
                tx.link_customer(store, &lookup, c.id)?;
            }
        }
    }
    tx.put_order(store, order_id, &state)
}

/// The identifiers an order names its customer by, strongest first.
fn lookups(order: &Order) -> Vec<Lookup> {
    let platform_id = order.customer.as_ref().and_then(|c| c.platform_id.clone());
    let email = order.contact_email().and_then(normalize_email);
    platform_id
        .map(Lookup::PlatformId)
        .into_iter()
        .chain(email.map(Lookup::Email))
        .collect()
}

/// Finds the order's customer by platform id, else by email, else makes a new one. An
/// order with neither has no customer.
fn resolve(tx: &mut ProcessTx<'_>, store: &str, order: &Order) -> Result<Option<Customer>, Error> {
    let lookups = lookups(order);
    for lookup in &lookups {
        if let Some(id) = tx.find_customer(store, lookup)? {
            return tx.customer(store, id);
        }
    }
    if lookups.is_empty() {
        return Ok(None);
    }
    tx.new_customer(store).map(Some)
}
