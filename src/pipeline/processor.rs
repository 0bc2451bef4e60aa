//! Applies committed events to order state and customer history, in commit order, in its
//! own transactions, after the webhook was answered. Idempotent: the cursor moves in the
//! same transaction as the effects, and applying an event twice changes nothing.
//!
//! A batch is computed from a read snapshot and written in one short transaction, so the
//! database's single write lock, which the writer needs for every group commit, is held
//! only to copy bytes.
//!
//! Later issues hang affinity updates and touch planning here; never on the path before
//! the 2xx.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use std::collections::HashMap;

use crate::engine::history::{self, normalize_email, Applied, Customer, CustomerId, OrderState};
use crate::engine::{Event, Order, Source};
use crate::storage::affinity::{contribution, AffinityBatch, LineKeys};
use crate::storage::records::{EventHead, ParsedRecord};
use crate::storage::{Changes, Error, Lookup, Snapshot, Storage};

use super::planner::{self, Planning};

/// What the processor needs from the configuration.
#[derive(Clone)]
pub struct Settings {
    /// Next-order evidence: the longest gap between a customer's orders that counts.
    pub next_order_window_ms: i64,
    /// How to plan offers for live orders; `None` plans nothing (tools and benchmarks).
    pub planning: Option<Arc<Planning>>,
    /// The privacy request that failed last and how many times in a row (see
    /// `PRIVACY_TRIES`).
    pub privacy_failures: Arc<std::sync::Mutex<(u64, u32)>>,
    /// Where orders a webhook said changed (BigCommerce's notices) are sent to be fetched.
    pub fetch: Option<crossbeam_channel::Sender<super::sync::FetchRequest>>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            next_order_window_ms: 90 * 86_400_000,
            planning: None,
            privacy_failures: Arc::default(),
            fetch: None,
        }
    }
}

impl Settings {
    /// The service's settings: affinity from `[affinity]`, offers from each store's
    /// `[stores.offers]`, time from `clock`.
    pub fn service(
        config: Arc<crate::config::Config>,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> Settings {
        Settings {
            next_order_window_ms: config.affinity.window_ms(),
            planning: Some(Arc::new(Planning { config, clock })),
            privacy_failures: Arc::default(),
            fetch: None,
        }
    }
}

/// Events applied per transaction.
const CHUNK: usize = 512;
/// Least time between catch-ups. Under load the processor then takes the database's one
/// write lock for a few large transactions instead of one small one after every group
/// commit, which would halve the writer's commit rate.
const SPACING: Duration = Duration::from_millis(50);

/// How many times in a row a privacy request may fail (about a second apart) before it is
/// set aside in quarantine, so that one that cannot succeed (an export directory it cannot
/// write, a row it cannot read) does not hold up every store's events behind it.
pub const PRIVACY_TRIES: u32 = 5;

/// How long the processor may keep catching up once the service is stopping; what is
/// left is applied at the next start (the events are durable in the log).
const FINAL_CATCH_UP: Duration = Duration::from_secs(2);

/// Runs until the wake-up channel closes, then catches up for a bounded time and returns.
/// Once `stopping` is set, a catch-up in progress ends at its next chunk.
pub fn run(
    storage: Arc<Storage>,
    settings: Settings,
    wake: Receiver<u64>,
    stopping: Arc<AtomicBool>,
) {
    loop {
        let started = Instant::now();
        if let Err(e) = catch_up(&storage, &settings, &|| !stopping.load(Ordering::Relaxed)) {
            log::error!("processor: {e}; retrying in 1 s");
            std::thread::sleep(Duration::from_secs(1));
        }
        std::thread::sleep(SPACING.saturating_sub(started.elapsed()));
        match wake.recv_timeout(Duration::from_secs(1)) {
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let until = Instant::now() + FINAL_CATCH_UP;
    if let Err(e) = catch_up(&storage, &settings, &|| Instant::now() < until) {
        log::warn!("processor: {e}; the remaining events are applied at the next start");
    }
}

/// What a catch-up did.
#[derive(Clone, Copy, Debug, Default)]
pub struct CatchUp {
    /// Events applied.
    pub events: usize,
    /// Time spent on the affinity model: computing its rows and writing them, not the
    /// commit.
    pub affinity: Duration,
    /// Affinity and catalog rows written or removed.
    pub affinity_rows: usize,
    /// Orders planned (or planned again).
    pub planned: usize,
}

/// Applies every committed event not yet applied, in chunks, while `go_on` says so.
pub fn catch_up(
    storage: &Storage,
    settings: &Settings,
    go_on: &dyn Fn() -> bool,
) -> Result<CatchUp, Error> {
    let mut total = CatchUp::default();
    loop {
        // One applier at a time: an import or a rebuild waits for this chunk, and the other
        // way round.
        let _applying = storage.apply_lock();
        let snap = storage.snapshot()?;
        let from = snap.processed_seq()?;
        let mut events = storage.event_heads_after(from, CHUNK)?;
        // A privacy request is applied by itself, in its turn: the events before it first.
        let first_request = events
            .iter()
            .position(|(_, h)| matches!(h.parsed, ParsedRecord::Privacy(_)));
        if let Some(at) = first_request {
            if at == 0 {
                let (seq, head) = &events[0];
                if let ParsedRecord::Privacy(request) = &head.parsed {
                    let now = settings.planning.as_ref().map_or_else(
                        || crate::clock::Clock::now(&crate::clock::SystemClock),
                        |p| p.clock.now(),
                    );
                    apply_request(storage, settings, *seq, head, request, now)?;
                    total.events += 1;
                }
                if !go_on() {
                    return Ok(total);
                }
                continue;
            }
            events.truncate(at);
        }
        let Some(&(last, _)) = events.last() else {
            // Orders queued before a crash (the queue is in the processor's commits).
            plan(storage, settings, &mut total)?;
            return Ok(total);
        };
        let mut batch = Batch::new(&snap);
        if let Some(p) = &settings.planning {
            for s in &p.config.stores {
                batch.currencies.insert(s.id.clone(), s.currency);
            }
        }
        for (_, head) in &events {
            batch.apply(head)?;
        }
        let (changes, computing) = batch.into_changes(last, settings)?;
        let writing = storage.apply_changes(&changes)?;
        if let Some(fetch) = &settings.fetch {
            use super::sync::Fetch;
            for (_, head) in &events {
                let what = match &head.parsed {
                    ParsedRecord::Event(Event::Notice(n)) => Fetch::Order(n.order_id.clone()),
                    ParsedRecord::Event(Event::Catalog(c)) => Fetch::Catalog(c.clone()),
                    _ => continue,
                };
                // Full or gone: the fetcher finds orders at its next start, the sync anyway.
                let _ = fetch.try_send((head.store.clone(), what));
            }
        }
        total.events += events.len();
        total.affinity += computing + writing;
        total.affinity_rows += changes.affinity.rows();
        plan(storage, settings, &mut total)?;
        if (events.len() < CHUNK && first_request.is_none()) || !go_on() {
            return Ok(total);
        }
    }
}

/// Applies a privacy request; after `PRIVACY_TRIES` failures in a row, sets it aside in
/// quarantine (the status page says so; `quarantine replay` tries it again).
fn apply_request(
    storage: &Storage,
    settings: &Settings,
    seq: u64,
    head: &EventHead,
    request: &crate::engine::PrivacyRequest,
    now: crate::engine::Timestamp,
) -> Result<(), Error> {
    let Err(e) = crate::privacy::apply(storage, seq, head, request, now) else {
        return Ok(());
    };
    let tries = {
        let mut failures = settings
            .privacy_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *failures = match *failures {
            (s, n) if s == seq => (seq, n + 1),
            _ => (seq, 1),
        };
        failures.1
    };
    if tries < PRIVACY_TRIES {
        return Err(e);
    }
    let why = format!(
        "{} privacy request not applied after {tries} tries: {e}. Fix the cause, then run `upsell-appliance quarantine replay --store {}`",
        head.topic, head.store
    );
    if storage.set_aside(seq, &why)? {
        log::error!("store {}: event {seq}: {why}", head.store);
    } else {
        log::error!(
            "store {}: event {seq}: {why}; its body is gone, so it cannot be tried again: passed over",
            head.store
        );
    }
    Ok(())
}

fn plan(storage: &Storage, settings: &Settings, total: &mut CatchUp) -> Result<(), Error> {
    if let Some(p) = &settings.planning {
        total.planned += planner::plan_pending(storage, p)?;
    }
    Ok(())
}

/// Applies imported orders (`Source::Import`) to order state and customer history in one
/// transaction, like live orders but without touching affinity (the import rebuilds it
/// once at the end) and without planning anything. Returns how many orders were new.
/// Callers hold the apply lock.
pub fn apply_imported(
    storage: &Storage,
    store: &str,
    currency: crate::engine::Currency,
    orders: &[Order],
) -> Result<usize, Error> {
    let snap = storage.snapshot()?;
    let processed = snap.processed_seq()?;
    let mut batch = Batch::new(&snap);
    batch.affinity = false;
    batch.currencies.insert(store.to_string(), currency);
    for order in orders {
        let head = EventHead {
            store: store.to_string(),
            platform: crate::engine::Platform::Shopify,
            source: Source::Import,
            received_at: order.created_at,
            topic: "import".into(),
            dedupe_key: String::new(),
            headers: Vec::new(),
            parsed: ParsedRecord::Event(Event::Order {
                topic: crate::engine::OrderTopic::Paid,
                order: Box::new(order.clone()),
            }),
        };
        batch.apply(&head)?;
    }
    let new = batch
        .orders
        .iter()
        .filter(|(key, state)| batch.newly_known(key, state))
        .count();
    storage.apply_changes(&batch.into_changes(processed, &Settings::default())?.0)?;
    Ok(new)
}

/// One batch of events applied in memory on top of a snapshot: each order and customer
/// is read once and written once, and the write transaction only copies bytes.
struct Batch<'s> {
    snap: &'s Snapshot,
    orders: HashMap<(String, String), OrderState>,
    /// Orders whose content was already known before this batch.
    known_before: std::collections::HashSet<(String, String)>,
    /// What each order counted for before this batch, for the order-value histogram.
    counted_before: HashMap<(String, String), Option<i64>>,
    /// Live orders to plan (again), with the time of a refund this batch saw.
    replan: HashMap<(String, String), Option<crate::engine::Timestamp>>,
    /// (store, customer, time) of refunds.
    refunds: Vec<(String, CustomerId, crate::engine::Timestamp)>,
    /// Orders whose delivery facts changed: their delivery-anchored touches move.
    reanchor: std::collections::HashSet<(String, String)>,
    /// Each store's currency: only orders in it count for the store's order values.
    currencies: HashMap<String, crate::engine::Currency>,
    customers: HashMap<(String, CustomerId), Customer>,
    links: HashMap<(String, Lookup), CustomerId>,
    next_ids: HashMap<String, CustomerId>,
    /// Live orders whose line items may teach the catalog ids.
    learn: Vec<(String, Order)>,
    /// Whether to update affinity incrementally (an import rebuilds it instead).
    affinity: bool,
}

impl<'s> Batch<'s> {
    fn new(snap: &'s Snapshot) -> Batch<'s> {
        Batch {
            snap,
            orders: HashMap::new(),
            known_before: Default::default(),
            counted_before: HashMap::new(),
            replan: HashMap::new(),
            refunds: Vec::new(),
            reanchor: Default::default(),
            currencies: HashMap::new(),
            customers: HashMap::new(),
            links: HashMap::new(),
            next_ids: HashMap::new(),
            learn: Vec::new(),
            affinity: true,
        }
    }

    fn apply(&mut self, head: &EventHead) -> Result<(), Error> {
        let event = match &head.parsed {
            ParsedRecord::Event(Event::Catalog(_)) => return Ok(()), // the fetcher's
            ParsedRecord::Event(e) => e,
            _ => return Ok(()),
        };
        let store = head.store.as_str();
        let key = (store.to_string(), event.order_id().to_string());
        let mut state = match self.orders.get(&key) {
            Some(s) => s.clone(),
            None => {
                let loaded = self.snap.order(store, &key.1)?.unwrap_or_default();
                if loaded.order.is_some() {
                    self.known_before.insert(key.clone());
                }
                self.counted_before
                    .insert(key.clone(), loaded.counted.map(|c| c.total));
                loaded
            }
        };
        let mut customer = match (state.customer, event) {
            (Some(id), _) => self.customer(store, id)?,
            (None, Event::Order { order, .. }) => self.resolve(store, order)?,
            (None, _) => None,
        };
        let refunds_before = state.refunds.len();
        let had_customer = state.customer.is_some();
        // A fetch answers the requests made up to when it was asked for (its key says when):
        // a notice that came while it was under way asks again.
        let fetched = head.source == Source::Fetched
            && super::sync::fetched_for(&head.dedupe_key)
                .is_some_and(|asked| state.fetch_requested.is_some_and(|r| r <= asked));
        if fetched {
            state.fetch_requested = None;
        }
        if history::apply(&mut state, customer.as_mut(), event, head.source) == Applied::Unchanged {
            if fetched {
                self.orders.insert(key, state);
            }
            return Ok(());
        }
        let refund_at = match event {
            _ if state.refunds.len() == refunds_before => None,
            Event::Refund(r) => Some(r.created_at),
            Event::Order { order, .. } => Some(order.updated_at),
            _ => Some(head.received_at),
        };
        // A refund that overtook its order counts for the customer once the order names
        // them (its own time is not kept: the order's is used).
        let refund_at_customer = match (refund_at, event) {
            (None, Event::Order { order, .. }) if !had_customer && !state.refunds.is_empty() => {
                Some(order.updated_at)
            }
            (at, _) => at,
        };
        if let (Some(at), Some(c)) = (refund_at_customer, &customer) {
            self.refunds.push((store.to_string(), c.id, at));
        }
        if head.source.live() && matches!(event, Event::Order { .. } | Event::Refund(_)) {
            let entry = self.replan.entry(key.clone()).or_default();
            *entry = (*entry).max(refund_at);
        }
        if matches!(event, Event::Fulfillment(_) | Event::Delivery(_)) {
            self.reanchor.insert(key.clone());
        }
        if let (Event::Order { order, .. }, true) = (event, head.source.live()) {
            self.learn.push((store.to_string(), (**order).clone()));
        }
        if let Some(c) = customer {
            state.customer = Some(c.id);
            // Only this order's identifiers can be new: link those (first owner keeps one).
            if let Event::Order { order, .. } = event {
                for lookup in lookups(order) {
                    if self.find(store, &lookup)?.is_none() {
                        self.links.insert((store.to_string(), lookup), c.id);
                    }
                }
            }
            self.customers.insert((store.to_string(), c.id), c);
        }
        self.orders.insert(key, state);
        Ok(())
    }

    /// Whether this batch saw the order's content for the first time.
    fn newly_known(&self, key: &(String, String), state: &OrderState) -> bool {
        state.order.is_some() && !self.known_before.contains(key)
    }

    fn customer(&self, store: &str, id: CustomerId) -> Result<Option<Customer>, Error> {
        match self.customers.get(&(store.to_string(), id)) {
            Some(c) => Ok(Some(c.clone())),
            None => self.snap.customer(store, id),
        }
    }

    fn find(&self, store: &str, lookup: &Lookup) -> Result<Option<CustomerId>, Error> {
        match self.links.get(&(store.to_string(), lookup.clone())) {
            Some(id) => Ok(Some(*id)),
            None => self.snap.find_customer(store, lookup),
        }
    }

    /// Finds the order's customer by platform id, else by email, else makes a new one.
    /// An order with neither has no customer.
    fn resolve(&mut self, store: &str, order: &Order) -> Result<Option<Customer>, Error> {
        let lookups = lookups(order);
        for lookup in &lookups {
            if let Some(id) = self.find(store, lookup)? {
                return self.customer(store, id);
            }
        }
        if lookups.is_empty() {
            return Ok(None);
        }
        let id = match self.next_ids.get(store) {
            Some(id) => *id,
            None => self.snap.next_customer_id(store)?,
        };
        self.next_ids.insert(store.to_string(), id + 1);
        Ok(Some(Customer::new(id)))
    }

    /// The batch's rows, and how long computing the affinity rows took.
    fn into_changes(
        self,
        processed: u64,
        settings: &Settings,
    ) -> Result<(Changes, Duration), Error> {
        let started = Instant::now();
        let mut changes = Changes::new(processed);
        let mut affinity = AffinityBatch::new(self.snap, settings.next_order_window_ms);
        for (store, order) in &self.learn {
            affinity.learn(store, order)?;
        }
        if self.affinity {
            let mut line_keys: HashMap<&str, LineKeys> = HashMap::new();
            for ((store, id), state) in &self.orders {
                let keys = line_keys.entry(store).or_default();
                let now = contribution(self.snap, store, state, keys)?;
                affinity.set_order(store, id, now.as_ref())?;
            }
        }
        affinity.into_changes(&mut changes)?;
        let computing = started.elapsed();
        for (key, state) in &self.orders {
            changes.put_order(&key.0, &key.1, state, self.newly_known(key, state))?;
            // Only orders in the store's currency count (unknown currency: all do).
            let in_store_currency = state
                .order
                .as_ref()
                .is_none_or(|o| self.currencies.get(&key.0).is_none_or(|c| *c == o.currency));
            let before = self.counted_before.get(key).copied().flatten();
            let after = state.counted.map(|c| c.total);
            if in_store_currency {
                changes.plans.order_value(&key.0, before, after);
            }
        }
        for ((store, order), refund_at) in &self.replan {
            changes.plans.enqueue(store, order, *refund_at);
        }
        for (store, customer, at) in &self.refunds {
            changes.plans.refund(store, *customer, *at);
        }
        if let Some(planning) = &settings.planning {
            for key in &self.reanchor {
                let (Some(cfg), Some(state)) =
                    (planning.config.store(&key.0), self.orders.get(key))
                else {
                    continue;
                };
                let facts = self.snap.delivery(&key.0, &key.1, Some(state))?;
                let anchors =
                    crate::engine::due::anchors(&facts, &cfg.delivery, &cfg.offers.cadence)
                        .not_before(planning.clock.now());
                changes.plans.reanchor(&key.0, &key.1, anchors);
            }
        }
        for ((store, _), c) in &self.customers {
            changes.put_customer(store, c)?;
        }
        for ((store, lookup), id) in &self.links {
            changes.link(store, lookup, *id);
        }
        for (store, next) in &self.next_ids {
            changes.set_next_customer_id(store, *next);
        }
        Ok((changes, computing))
    }
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
