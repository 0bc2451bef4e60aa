//! Fires due touches. The durable timers (`storage::touches`) hold every pending touch;
//! this module keeps only the near horizon in memory:
//!
//! - The `scheduler` thread holds a wheel: the timer keys due in the next [`HORIZON`] (at
//!   most [`WHEEL_MAX`] of them), refilled by range scans as time moves and told of timers
//!   written inside the loaded range (a new order's, a deferral's) by the storage's timer
//!   feed. It sleeps until the next due time (or [`TICK`], so a test clock set by hand is
//!   noticed) and hands due touches to the workers over crossbeam channels.
//! - `touches-N` workers decide again with `engine::due::on_due`, record deferrals and
//!   skips, and send the rest through the outbox: marked `sending` durably, appended and
//!   synced, then recorded `sent`. Each customer's touches always go to the same worker, so
//!   the caps see every earlier decision.
//!
//! At start, touches left in `sending` by a crash are reconciled against the outbox's tail,
//! so each touch goes out exactly once; touches that fell due while stopped are counted and
//! the misfire policy's outcome is logged and kept for `/api/status`.
//!
//! A paused store's touches (`pipeline::pause`) are neither decided nor sent: the wheel
//! holds them back (remembering the earliest due time per store and loading again from
//! there once the store is resumed), a worker hands back those that reach it, and one
//! caught between its decision and its send is put back at its due time unchanged. After
//! `resume` they are decided like any late touch: the misfire policy applies.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;

use crate::clock::Clock;
use crate::config::{Config, Mode};
use crate::engine::due::{on_due, Action, Rules, State};
use crate::engine::lifecycle::PlanRecord;
use crate::engine::plan::{Channel, Offer, Recipe};
use crate::engine::Timestamp;
use crate::outbound::outbox::{Outbox, OutboxLine};
use crate::outbound::templates::Templates;
use crate::outbound::{LinkKeys, Links, Message, Outcome, Router};
use crate::pipeline::pause::Pauses;
use crate::storage::plans::{contact_keys, contact_of, suppression_key, SuppressionRow};
use crate::storage::touches::{Receipt, Settle, TimerKey, TouchRecord};
use crate::storage::{Error, Snapshot, Storage};

/// Touches a worker decides in one round (three syncs: sending, the outbox, sent).
const BATCH: usize = 1024;
/// Touches handed to workers and not yet reported back, at most (per worker).
const IN_FLIGHT: usize = 2 * BATCH;
/// How far ahead, in clock time, the wheel holds timers.
const HORIZON: i64 = 10 * 60_000;
/// Most timer keys held in memory (16 bytes each, plus the tree's overhead).
const WHEEL_MAX: usize = 100_000;
/// How much of the outbox's tail a reconciliation reads (well over one round's lines).
const TAIL_BYTES: u64 = 8 << 20;
/// Longest sleep between two looks at the clock (real time).
const TICK: Duration = Duration::from_millis(50);
/// Pause after a failed round before the next (real time).
const BACKOFF: Duration = Duration::from_secs(1);
/// The scheduler's own latency, in real time: a touch this late is not stale.
const LATENCY: Duration = Duration::from_millis(1100);
const WEEK: i64 = 7 * 86_400_000;
/// How soon a touch whose offer's code the platform did not make is tried again.
const CODE_RETRY_MS: i64 = 5 * 60_000;

/// What a round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Round {
    pub sent: usize,
    pub deferred: usize,
    pub skipped: usize,
}

impl Round {
    fn add(&mut self, o: Round) {
        self.sent += o.sent;
        self.deferred += o.deferred;
        self.skipped += o.skipped;
    }

    fn total(&self) -> usize {
        self.sent + self.deferred + self.skipped
    }
}

/// What the scheduler tells `/api/status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub started_at: Option<String>,
    /// Touches that fell due while the service was stopped.
    pub late_at_start: u64,
    /// What became of those so far (the misfire policy: fired within grace, skipped as
    /// stale beyond it, deferred by the other rules).
    pub late_outcome: Round,
    /// Since start.
    pub decided: Round,
    pub in_memory: usize,
    pub last_error: Option<String>,
}

pub type SharedReport = Arc<Mutex<Report>>;

/// The scheduler's threads, to join at shutdown.
pub struct Scheduler {
    wheel: JoinHandle<()>,
}

/// How long a stop waits for a provider request in flight.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

impl Scheduler {
    /// Joins the wheel thread, which joins its workers once their round is recorded (the
    /// touches not yet sent are put back). A request still in flight after
    /// [`STOP_GRACE`] is left: its touch stays in `sending` and is settled at the next
    /// start. `Ok(false)` then.
    pub fn join(self) -> std::thread::Result<bool> {
        let deadline = Instant::now() + STOP_GRACE;
        while !self.wheel.is_finished() {
            if Instant::now() >= deadline {
                log::warn!(
                    "scheduler: a provider request is still in flight after {STOP_GRACE:?}; stopping without it (its touch is settled at the next start)"
                );
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.wheel.join().map(|_| true)
    }
}

/// Reconciles what a crash left in `sending`, then starts the wheel and `workers` workers.
#[allow(clippy::too_many_arguments)]
pub fn start(
    storage: Arc<Storage>,
    config: Arc<Config>,
    clock: Arc<dyn Clock>,
    outbox: Outbox,
    link_keys: Arc<LinkKeys>,
    pauses: Arc<Pauses>,
    apis: Arc<super::sync::Apis>,
    report: SharedReport,
    stop: Arc<AtomicBool>,
) -> std::io::Result<Scheduler> {
    let outbox = Arc::new(Mutex::new(outbox));
    let started = clock.now();
    let wheel = std::thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || {
            // The config's check loaded these templates already; one changed since that no
            // longer loads is reported, and the built-in ones are used.
            let templates = Templates::load(config.templates_dir.as_deref()).unwrap_or_else(|e| {
                log::warn!("scheduler: {e}; using the built-in templates");
                Templates::load(None).expect("the built-in templates load")
            });
            let router = Arc::new(Router::new(&config, Arc::new(templates)));
            match reconcile_all(&storage, &outbox, &router, started) {
                Ok((0, 0)) => {}
                Ok((sent, again)) => log::info!(
                    "scheduler: {sent} touches interrupted while sending were in the outbox (recorded sent), {again} were not (sent again)"
                ),
                Err(e) => log::error!("scheduler: reconciling touches left in sending: {e}"),
            }
            let late = storage
                .snapshot()
                .and_then(|s| s.count_due_before(started))
                .unwrap_or(0);
            if late > 0 {
                log::info!(
                    "scheduler: {late} touches fell due while the service was stopped; deciding them now (misfire policy)"
                );
            }
            {
                let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
                r.started_at = Some(started.to_rfc3339());
                r.late_at_start = late;
            }
            let (done_tx, done_rx) = crossbeam_channel::unbounded();
            let mut workers = Vec::new();
            let mut queues = Vec::new();
            for n in 0..config.touch_workers.max(1) {
                let (tx, rx) = crossbeam_channel::unbounded::<Vec<u64>>();
                let w = Worker {
                    storage: storage.clone(),
                    config: config.clone(),
                    clock: clock.clone(),
                    outbox: outbox.clone(),
                    router: router.clone(),
                    link_keys: link_keys.clone(),
                    pauses: pauses.clone(),
                    apis: apis.clone(),
                    started,
                    stop: stop.clone(),
                };
                let done = done_tx.clone();
                match std::thread::Builder::new()
                    .name(format!("touches-{n}"))
                    .spawn(move || w.run(rx, done))
                {
                    Ok(h) => {
                        workers.push(h);
                        queues.push(tx);
                    }
                    Err(e) => log::error!("scheduler: cannot start worker {n}: {e}"),
                }
            }
            drop(done_tx);
            if queues.is_empty() {
                log::error!("scheduler: no workers; touches are not sent");
            } else {
                Wheel::new(storage, clock, pauses, report, queues, done_rx, late).run(&stop);
            }
            for w in workers {
                let _ = w.join();
            }
        })?;
    Ok(Scheduler { wheel })
}

/// Touches left in `sending` (all of them: run before any worker starts).
fn reconcile_all(
    storage: &Storage,
    outbox: &Mutex<Outbox>,
    router: &Router,
    now: Timestamp,
) -> Result<(usize, usize), Error> {
    let ids = storage.snapshot()?.sending()?;
    reconcile(storage, outbox, router, &ids, now)
}

/// Of `ids`, those still in `sending`: recorded sent if the outbox has them, else due again
/// now (at most once more through a provider without an idempotency key).
fn reconcile(
    storage: &Storage,
    outbox: &Mutex<Outbox>,
    router: &Router,
    ids: &[u64],
    now: Timestamp,
) -> Result<(usize, usize), Error> {
    if ids.is_empty() {
        return Ok((0, 0));
    }
    let snap = storage.snapshot()?;
    let mut unkeyed = HashMap::new();
    for &id in ids {
        if let Some(t) = snap.touch(id)? {
            if let Some(ch) = router.route(&t.store, t.channel, t.kind) {
                if !ch.idempotent() {
                    unkeyed.insert(id, ch.name());
                }
            }
        }
    }
    let mut outbox = outbox.lock().unwrap_or_else(|p| p.into_inner());
    let delivered = outbox
        .recent_ids(TAIL_BYTES)
        .map_err(|e| Error::Codec(format!("reading {}: {e}", outbox.path().display())))?;
    storage.reconcile_sending(ids, &delivered, &unkeyed, now)
}

/// A worker's report on one round.
struct Done {
    ids: Vec<u64>,
    result: Result<Round, String>,
    /// Of those decided, the ones that fell due while the service was stopped.
    late: Round,
    /// Not decided: their store is paused (back to the wheel, which holds them).
    held: Vec<TimerKey>,
}

/// The in-memory near horizon, and the dispatch to workers.
struct Wheel {
    storage: Arc<Storage>,
    clock: Arc<dyn Clock>,
    pauses: Arc<Pauses>,
    report: SharedReport,
    queues: Vec<Sender<Vec<u64>>>,
    done: Receiver<Done>,
    due: BTreeSet<TimerKey>,
    /// Every pending timer with a key below this is in `due`, `parked` or at a worker.
    loaded: TimerKey,
    /// Touches at a worker, per worker.
    in_flight: HashMap<u64, usize>,
    busy: Vec<usize>,
    /// Keys popped while their touch was at a worker: back into `due` when it reports.
    parked: Vec<TimerKey>,
    /// Per paused store, the earliest due time of the keys popped and not dispatched:
    /// loaded again from there once the store is resumed.
    held: HashMap<String, i64>,
    /// Touches that fell due while stopped and are not decided yet.
    late_left: u64,
    paused_until: Option<Instant>,
    /// Due touches wait for a worker to report back.
    blocked: bool,
}

impl Wheel {
    fn new(
        storage: Arc<Storage>,
        clock: Arc<dyn Clock>,
        pauses: Arc<Pauses>,
        report: SharedReport,
        queues: Vec<Sender<Vec<u64>>>,
        done: Receiver<Done>,
        late: u64,
    ) -> Wheel {
        let n = queues.len();
        Wheel {
            storage,
            clock,
            pauses,
            report,
            queues,
            done,
            due: BTreeSet::new(),
            loaded: (i64::MIN, 0),
            in_flight: HashMap::new(),
            busy: vec![0; n],
            parked: Vec::new(),
            held: HashMap::new(),
            late_left: late,
            paused_until: None,
            blocked: false,
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = self.step() {
                // Keys taken from the feed or popped for dispatch may be lost with the
                // error: the wheel reloads everything due from the index.
                self.loaded = (i64::MIN, 0);
                self.failed(format!("scheduler: {e}; retrying in {BACKOFF:?}"));
            }
            self.wait();
        }
        // Dropping the queues ends the workers once their round is recorded.
    }

    /// Learns of new timers, refills, and dispatches what is due.
    fn step(&mut self) -> Result<(), Error> {
        if self.paused_until.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        self.paused_until = None;
        let now = self.clock.now().0;
        // The feed is taken before the snapshot, so every key in it is in the snapshot
        // too: one beyond the loaded range is found by the refill below, whatever time it
        // covers. (Taken after, a key committed between the two was neither: the refill's
        // snapshot lacked it and the feed dropped it as beyond the range, and it was never
        // fired.) A key written after the snapshot is in the next feed, below the range
        // then if the refill went past it. A failed read loses nothing: the wheel reloads.
        let feed = self.storage.take_new_timers();
        let snap = self.storage.snapshot()?;
        for k in feed.keys {
            if k < self.loaded {
                self.due.insert(k);
            }
        }
        if let Some(from) = feed.rescan_from {
            let keys = snap.timers_between((from, 0), self.loaded, usize::MAX)?;
            self.due.extend(keys);
        }
        // A resumed store's held keys: the refill below loads them again (a bounded
        // scan, unlike the rescan above: a long pause may hold more than the wheel).
        let pauses = &self.pauses;
        let mut resumed = None;
        self.held.retain(|store, from| {
            let back = !pauses.is_paused(store);
            if back {
                resumed = Some(resumed.map_or(*from, |r: i64| r.min(*from)));
            }
            !back
        });
        if let Some(from) = resumed {
            self.loaded = self.loaded.min((from, 0));
        }
        let end = (now.saturating_add(HORIZON), 0);
        if self.loaded < end && self.due.len() < WHEEL_MAX {
            let room = WHEEL_MAX - self.due.len();
            let keys = snap.timers_between(self.loaded, end, room)?;
            self.loaded = match keys.last() {
                Some(&(due, id)) if keys.len() == room => (due, id + 1),
                _ => end,
            };
            self.due.extend(keys);
        }
        self.dispatch(&snap, now)
    }

    /// Hands the due touches to their workers, in due order, until the next one's worker
    /// is full (it reports back before more go its way).
    fn dispatch(&mut self, snap: &Snapshot, now: i64) -> Result<(), Error> {
        let n = self.queues.len();
        let mut batches: Vec<Vec<u64>> = vec![Vec::new(); n];
        self.blocked = false;
        while let Some(&key) = self.due.first() {
            if key.0 > now {
                break;
            }
            let id = key.1;
            if self.in_flight.contains_key(&id) {
                self.due.pop_first();
                self.parked.push(key);
                continue;
            }
            let t = match snap.touch(id) {
                Ok(Some(t)) => t,
                Ok(None) => {
                    self.due.pop_first();
                    continue;
                }
                Err(e) => {
                    // A record that cannot be read must not stall every touch behind it.
                    self.due.pop_first();
                    log::error!(
                        "scheduler: touch {id} cannot be read ({e}); left pending, not sent"
                    );
                    continue;
                }
            };
            if !t.state.pending() || t.due_at.0 != key.0 {
                // Sent, skipped or moved since this key was loaded: its current key (if
                // any) is in the wheel or beyond it.
                self.due.pop_first();
                continue;
            }
            if self.pauses.is_paused(&t.store) {
                self.due.pop_first();
                let from = self.held.entry(t.store).or_insert(key.0);
                *from = (*from).min(key.0);
                continue;
            }
            let w = shard(&t, n);
            if self.busy[w] + batches[w].len() >= IN_FLIGHT {
                self.blocked = true;
                break;
            }
            self.due.pop_first();
            batches[w].push(id);
        }
        for (w, ids) in batches.into_iter().enumerate() {
            if ids.is_empty() {
                continue;
            }
            for &id in &ids {
                self.in_flight.insert(id, w);
            }
            self.busy[w] += ids.len();
            if self.queues[w].send(ids).is_err() {
                return Err(Error::Codec(format!("touch worker {w} has stopped")));
            }
        }
        Ok(())
    }

    /// Sleeps until the next due time, a worker's report, or a tick.
    fn wait(&mut self) {
        let now = self.clock.now().0;
        let mut sleep = TICK;
        if let (Some(&(due, _)), false) = (self.due.first(), self.blocked) {
            let real_ms = ((due - now).max(0) as f64 / self.clock.scale()) as u64;
            sleep = sleep.min(Duration::from_millis(real_ms));
        }
        if let Some(t) = self.paused_until {
            sleep = t.saturating_duration_since(Instant::now()).min(TICK);
        }
        let mut first = true;
        loop {
            let got = if first {
                self.done.recv_timeout(sleep).ok()
            } else {
                self.done.try_recv().ok()
            };
            first = false;
            let Some(d) = got else { break };
            self.finished(d);
        }
    }

    fn finished(&mut self, d: Done) {
        for id in &d.ids {
            if let Some(w) = self.in_flight.remove(id) {
                self.busy[w] -= 1;
            }
        }
        // Back into the wheel: `dispatch` holds them while their store is paused.
        self.due.extend(d.held);
        if !self.parked.is_empty() {
            let parked = std::mem::take(&mut self.parked);
            for k in parked {
                if self.in_flight.contains_key(&k.1) {
                    self.parked.push(k);
                } else {
                    self.due.insert(k);
                }
            }
        }
        let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
        r.in_memory = self.due.len();
        match d.result {
            Ok(round) => {
                r.decided.add(round);
                if d.late.total() > 0 {
                    r.late_outcome.add(d.late);
                    self.late_left = self.late_left.saturating_sub(d.late.total() as u64);
                    if self.late_left == 0 {
                        let o = r.late_outcome;
                        log::info!(
                            "scheduler: of {} touches that fell due while stopped, {} fired, {} deferred, {} skipped (misfire policy)",
                            r.late_at_start, o.sent, o.deferred, o.skipped
                        );
                    }
                }
            }
            Err(e) => {
                drop(r);
                // The round's touches are pending again (or reconciled): back into the
                // wheel at their keys as they stand, after a pause.
                if let Ok(snap) = self.storage.snapshot() {
                    for id in &d.ids {
                        if let Ok(Some(t)) = snap.touch(*id) {
                            if t.state.pending() && (t.due_at.0, *id) < self.loaded {
                                self.due.insert((t.due_at.0, *id));
                            }
                        }
                    }
                }
                self.failed(e);
            }
        }
    }

    fn failed(&mut self, e: String) {
        log::error!("{e}");
        self.report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_error = Some(e);
        self.paused_until = Some(Instant::now() + BACKOFF);
    }
}

/// The worker a touch goes to: by customer (so one worker sees all of a customer's
/// messages and the caps hold), else by order.
fn shard(t: &TouchRecord, n: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.store.hash(&mut h);
    match t.customer {
        Some(c) => c.hash(&mut h),
        None => t.order.hash(&mut h),
    }
    (h.finish() % n as u64) as usize
}

struct Worker {
    storage: Arc<Storage>,
    config: Arc<Config>,
    clock: Arc<dyn Clock>,
    outbox: Arc<Mutex<Outbox>>,
    router: Arc<Router>,
    link_keys: Arc<LinkKeys>,
    pauses: Arc<Pauses>,
    /// The stores' platform APIs: offers' own discount codes are made through them.
    apis: Arc<super::sync::Apis>,
    started: Timestamp,
    /// Set at shutdown: the round's touches not yet sent are put back, due at once.
    stop: Arc<AtomicBool>,
}

impl Worker {
    fn run(self, rx: Receiver<Vec<u64>>, done: Sender<Done>) {
        while let Ok(mut ids) = rx.recv() {
            // Whatever queued up meanwhile goes in the same round.
            while ids.len() < BATCH {
                match rx.try_recv() {
                    Ok(more) => ids.extend(more),
                    Err(_) => break,
                }
            }
            let mut late = Round::default();
            let mut held = Vec::new();
            let result = self.fire(&ids, &mut late, &mut held).map_err(|e| {
                // What this round left in `sending` is settled against the outbox now.
                if let Err(e) = reconcile(
                    &self.storage,
                    &self.outbox,
                    &self.router,
                    &ids,
                    self.clock.now(),
                ) {
                    log::error!("scheduler: reconciling touches left in sending: {e}");
                }
                format!("scheduler: {e}; retrying in {BACKOFF:?}")
            });
            let report = Done {
                ids,
                result,
                late,
                held,
            };
            if done.send(report).is_err() {
                return;
            }
        }
    }

    /// Decides and records the touches `ids` that are pending and due by the clock's now.
    /// `late` counts the outcome of those that fell due before `started`; `held` gets the
    /// keys of those not decided because their store is paused.
    fn fire(
        &self,
        ids: &[u64],
        late: &mut Round,
        held: &mut Vec<TimerKey>,
    ) -> Result<Round, Error> {
        let (storage, config, clock, outbox, started) = (
            self.storage.as_ref(),
            self.config.as_ref(),
            self.clock.as_ref(),
            self.outbox.as_ref(),
            self.started,
        );
        let now = clock.now();
        // A second of real time: from the webhook to the plan, and between two rounds.
        let latency_ms = (LATENCY.as_secs_f64() * 1000.0 * clock.scale()) as i64;
        let snap = storage.snapshot()?;
        let mut round = Round::default();
        let mut settle = Vec::new();
        let mut send = Vec::new();
        // The offer each touch being sent carries, from the plan read to decide it.
        let mut offers: HashMap<u64, Option<Offer>> = HashMap::new();
        // Messages decided in this round count for the caps of the next ones.
        let mut overlay: HashMap<(String, u64), Vec<(Timestamp, Channel)>> = HashMap::new();
        let mut late_ids = HashSet::new();
        // Contact, order name and recipe of each touch being sent, for the providers.
        let mut messages: HashMap<u64, (Contact, String, Option<Recipe>)> = HashMap::new();
        let mut m_image: HashMap<u64, Option<String>> = HashMap::new();
        for &id in ids {
            let Some(t) = snap.touch(id)? else { continue };
            if !t.state.pending() || t.due_at > now {
                continue;
            }
            if self.pauses.is_paused(&t.store) {
                // Left pending, its due time unchanged: decided after `resume`.
                held.push((t.due_at.0, id));
                continue;
            }
            let was_late = t.due_at < started;
            if was_late {
                late_ids.insert(id);
            }
            let plan = snap.plan(&t.store, &t.order)?;
            let (mut action, contact) = decide(
                &snap,
                config,
                latency_ms,
                id,
                &t,
                plan.as_ref(),
                &overlay,
                now,
            )?;
            if snap.mirror_of(id)?.is_some() {
                // A copy for the store's webhook of a message already sent: it goes, whatever
                // the rules say about messaging the customer now.
                action = Action::Send;
            }
            // A touch a provider has not taken: within its kind's grace from the first
            // attempt, or skipped rather than arriving days late.
            if let (Action::Send, Some((failed, first))) = (&action, snap.attempts(id)?) {
                let grace = config
                    .store(&t.store)
                    .map_or(0, |s| s.rules.grace.of(t.kind))
                    .max(latency_ms);
                if now.0 - first.0 > grace {
                    action = Action::Skip {
                        code: "stale",
                        reason: format!(
                            "stale: due {}, still not taken by the provider ({failed} attempts failed), over the grace for {}",
                            first.to_rfc3339(),
                            t.kind.as_str()
                        ),
                    };
                }
            }
            match action {
                Action::Send => {
                    let mut offer = plan
                        .as_ref()
                        .and_then(|p| p.plan.offer.clone())
                        .filter(|_| t.carries_offer);
                    let (name, recipe) = plan.as_ref().map_or((String::new(), None), |p| {
                        (p.order_name.clone(), p.plan.recipe)
                    });
                    if let (Some(o), Some(store)) = (offer.as_mut(), config.store(&t.store)) {
                        let key = self.link_keys.get(&t.store).map_or(&[][..], Vec::as_slice);
                        let api = self.apis.get(&t.store).map(|a| a.as_ref());
                        match super::codes::for_offer(
                            storage, &snap, store, api, key, &t.order, o, recipe, now,
                        ) {
                            Ok(Some(code)) => o.discount_code = Some(code),
                            Ok(None) => {}
                            // Refused for good (credentials, scopes): sent without it,
                            // and the log says why.
                            Err(e) if e.permanent => log::warn!(
                                "store {}: touch {id} goes without its offer's own discount code: {}",
                                t.store,
                                e.why
                            ),
                            // The platform did not answer: not sent without the code it
                            // promises; tried again like a provider that did not take it,
                            // so the touch's grace ends the tries (skipped as stale).
                            Err(e) => {
                                round.deferred += 1;
                                late.deferred += usize::from(was_late);
                                settle.push((
                                    (t.due_at.0, id),
                                    Settle::Retry {
                                        until: Timestamp(now.0 + CODE_RETRY_MS),
                                        reason: format!(
                                            "the offer's discount code could not be made: {}",
                                            e.why
                                        ),
                                        due: t.due_at,
                                        via: store.platform.as_str(),
                                    },
                                ));
                                continue;
                            }
                        }
                    }
                    messages.insert(id, (contact, name, recipe));
                    let image = match &offer {
                        Some(o) => snap
                            .variant_of_key(&t.store, &o.product)?
                            .and_then(|v| v.image_url),
                        None => None,
                    };
                    m_image.insert(id, image);
                    offers.insert(id, offer);
                    // A notice to the store is no message to the customer (the caps).
                    if let (Some(c), false) = (
                        t.customer,
                        t.kind == crate::engine::plan::TouchKind::Recovery,
                    ) {
                        overlay
                            .entry((t.store.clone(), c))
                            .or_default()
                            .push((now, t.channel));
                    }
                    send.push((t.due_at.0, id));
                }
                Action::Defer {
                    until,
                    reason,
                    code,
                } => {
                    round.deferred += 1;
                    late.deferred += usize::from(was_late);
                    settle.push((
                        (t.due_at.0, id),
                        Settle::Defer {
                            until,
                            reason,
                            code,
                        },
                    ));
                }
                Action::Skip { reason, code } => {
                    round.skipped += 1;
                    late.skipped += usize::from(was_late);
                    settle.push(((t.due_at.0, id), Settle::Skip { reason, code }));
                }
            }
        }
        storage.settle(&settle)?;
        if send.is_empty() {
            return Ok(round);
        }
        let sending = storage.begin_sending(&send)?;
        let mut lines = Vec::new();
        let mut receipts = Vec::new();
        let mut outcomes = Vec::new();
        // Messages sent through a provider, to copy to stores' webhooks (`also_webhook`).
        let mut mirror: Vec<u64> = Vec::new();
        let mut sent_now: Vec<u64> = Vec::new();
        // A touch whose store was paused after it was decided: back, at its due time.
        let paused = |id: u64, t: &TouchRecord| {
            (
                (t.due_at.0, id),
                Settle::Defer {
                    until: t.due_at,
                    reason: "sending is paused (upsell-appliance pause)".into(),
                    code: "paused",
                },
            )
        };
        // The outbox's lines first, each counted in flight for its store's pause until the
        // file is synced; then the providers, one request at a time (a slow provider does
        // not hold a pause back for a whole round).
        let mut writing = Vec::new();
        let mut providers = Vec::new();
        for (id, t) in &sending {
            let offer = offers.remove(id).flatten();
            let key = self.link_keys.get(&t.store).map_or(&[][..], Vec::as_slice);
            let links = Links::of(&config.public_url, key, &t.store, *id, offer.is_some());
            if let Some(channel) = self.router.route(&t.store, t.channel, t.kind) {
                providers.push((id, t, offer, links, channel));
                continue;
            }
            match self.pauses.enter(&t.store) {
                Some(s) => {
                    writing.push(s);
                    let ticket = messages.get(id).and_then(|m| m.0.ticket.as_ref());
                    lines.push(line(*id, t, offer.as_ref(), links, ticket, now));
                    receipts.push((*id, Receipt::outbox()));
                }
                None => outcomes.push(paused(*id, t)),
            }
        }
        if !lines.is_empty() {
            let mut outbox = outbox.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = outbox.send(&lines) {
                return Err(Error::Codec(format!(
                    "writing {}: {e} ({} touches to reconcile)",
                    outbox.path().display(),
                    lines.len()
                )));
            }
        }
        drop(writing);
        for (id, t, offer, links, channel) in providers {
            if self.stop.load(Ordering::Relaxed) {
                // Stopping: what a provider has not been asked yet waits for the next start
                // (the request in flight finished; no new one starts).
                outcomes.push((
                    (t.due_at.0, *id),
                    Settle::Defer {
                        until: now,
                        reason: "the service stopped before sending it".into(),
                        code: "interrupted",
                    },
                ));
                continue;
            }
            if let Some(why) = snap.disabled(&t.store, channel.name())? {
                let reason = format!("the {} endpoint is disabled: {why}", channel.name());
                outcomes.push((
                    (t.due_at.0, *id),
                    Settle::Dead {
                        reason,
                        disable: None,
                        via: Some(channel.name()),
                    },
                ));
                continue;
            }
            let (contact, order_name, recipe) = messages.remove(id).unwrap_or_default();
            // This send's own time: a rate-limited round can run long, and a receiver
            // checks a webhook's timestamp.
            let at = clock.now();
            let m = Message {
                touch_id: *id,
                store: t.store.clone(),
                kind: t.kind,
                medium: t.channel,
                order_id: t.order.clone(),
                order_name,
                customer: t.customer,
                email: contact.email,
                phone: contact.phone,
                recipe,
                offer,
                image_url: m_image.remove(id).flatten(),
                due_at: t.due_at,
                at,
                links,
                ticket: contact.ticket,
            };
            let Some(in_flight) = self.pauses.enter(&t.store) else {
                outcomes.push(paused(*id, t));
                continue;
            };
            let started = std::time::Instant::now();
            let outcome = channel.send(&m);
            drop(in_flight);
            let key = (t.due_at.0, *id);
            let dead = |reason: String, disable: Option<&'static str>| Settle::Dead {
                reason,
                disable,
                via: Some(channel.name()),
            };
            let mut opt_out = None;
            let recorded = match outcome {
                Outcome::Sent { message_id } => Ok(Receipt {
                    channel: channel.name().into(),
                    message_id,
                    latency_us: started.elapsed().as_micros() as u64,
                    retries: 0,
                }),
                Outcome::Retry { after, reason } => {
                    let failed = snap.attempts(*id)?.map_or(0, |a| a.0);
                    Err(match crate::outbound::retry_wait(*id, failed, after) {
                        Some(wait) => Settle::Retry {
                            until: Timestamp(at.0 + (wait.as_millis() as i64)),
                            reason,
                            due: t.due_at,
                            via: channel.name(),
                        },
                        None => dead(
                            format!("gave up after {} attempts: {reason}", failed + 1),
                            None,
                        ),
                    })
                }
                Outcome::Dead { reason } => Err(dead(reason, None)),
                Outcome::Gone { reason } => Err(dead(reason, Some(channel.name()))),
                Outcome::Unsubscribed { reason } => {
                    // The provider knows the customer opted out (an SMS STOP): on our list
                    // too, so no later touch tries.
                    let contact = if t.channel == Channel::Sms {
                        &m.phone
                    } else {
                        &m.email
                    };
                    opt_out = contact.as_deref().and_then(|c| suppression_key(c).ok());
                    Err(Settle::Skip {
                        reason,
                        code: "unsubscribed",
                    })
                }
            };
            if let Some(k) = opt_out {
                let row = SuppressionRow {
                    reason: crate::engine::plan::Suppressed::Unsubscribed,
                    at,
                    source: "provider (recipient opted out)".into(),
                };
                storage.suppress(&t.store, &[(k, row)])?;
            }
            let sent = recorded.is_ok();
            if channel.idempotent() {
                // A resend after a failure later in the round carries the same key: the
                // provider drops it. Recorded with the round.
                match recorded {
                    Ok(r) => receipts.push((*id, r)),
                    Err(s) => outcomes.push((key, s)),
                }
            } else {
                // No key to drop a resend: recorded now, so nothing later in this round (an
                // error, a crash, a stop) can send it again.
                match recorded {
                    Ok(r) => {
                        storage.finish_sent_via(&[(*id, r)], at)?;
                        sent_now.push(*id);
                    }
                    Err(s) => storage.settle(&[(key, s)])?,
                }
                round.sent += usize::from(sent);
            }
            // A copy for the store's webhook, unless the message went there already.
            if sent && channel.name() != "webhook" {
                mirror.push(*id);
            }
        }
        storage.finish_sent_via(&receipts, now)?;
        // Stores with `also_webhook` get a copy of each message sent to a customer (not of
        // a copy, nor of one that went to the webhook). Not in a dry run: its outbox line
        // is the whole record, and the webhook is the store's live system.
        mirror.extend(
            receipts
                .iter()
                .filter(|(_, r)| r.channel == "outbox")
                .map(|(id, _)| *id),
        );
        mirror.retain(|id| {
            sending.iter().any(|(i, t)| {
                i == id
                    && t.channel != Channel::Webhook
                    && config
                        .store(&t.store)
                        .is_some_and(|s| s.channels.also_webhook && s.mode == Mode::Live)
            }) && snap.mirror_of(*id).ok().flatten().is_none()
        });
        storage.mirror(&mirror, now)?;
        storage.settle(&outcomes)?;
        round.sent += receipts.len();
        round.deferred += outcomes
            .iter()
            .filter(|(_, s)| matches!(s, Settle::Retry { .. }))
            .count();
        late.sent += receipts
            .iter()
            .map(|(id, _)| *id)
            .chain(sent_now)
            .filter(|id| late_ids.contains(id))
            .count();
        Ok(round)
    }
}

/// Loads what `on_due` reads for one touch and asks it.
#[allow(clippy::too_many_arguments)]
fn decide(
    snap: &Snapshot,
    config: &Config,
    latency_ms: i64,
    id: u64,
    t: &TouchRecord,
    plan: Option<&PlanRecord>,
    overlay: &HashMap<(String, u64), Vec<(Timestamp, Channel)>>,
    now: Timestamp,
) -> Result<(Action, Contact), Error> {
    let Some(store) = config.store(&t.store) else {
        let skip = Action::Skip {
            code: "store_removed",
            reason: format!("store {} is no longer configured", t.store),
        };
        return Ok((skip, Contact::default()));
    };
    if t.kind == crate::engine::plan::TouchKind::Recovery {
        // The store's notice that a person should follow up: not marketing, so none of the
        // rules for messaging the customer apply.
        let Some(n) = snap.recovery_notice(id)? else {
            let skip = Action::Skip {
                code: "plan_gone",
                reason: "its recovery notice is gone".into(),
            };
            return Ok((skip, Contact::default()));
        };
        let contact = Contact {
            email: n.contact.strip_prefix("email:").map(str::to_string),
            phone: n.contact.strip_prefix("phone:").map(str::to_string),
            ticket: Some(crate::outbound::TicketNote {
                id: n.ticket,
                csat: n.csat,
            }),
        };
        return Ok((Action::Send, contact));
    }
    let Some(plan) = plan else {
        let skip = Action::Skip {
            code: "plan_gone",
            reason: "its plan is gone".into(),
        };
        return Ok((skip, Contact::default()));
    };
    let order = snap.order(&t.store, &t.order)?;
    let customer = match t.customer {
        Some(id) => snap.customer(&t.store, id)?,
        None => None,
    };
    let keys = contact_keys(
        customer.as_ref(),
        order.as_ref().and_then(|o| o.order.as_ref()),
    );
    let suppressed = snap.suppressed(&t.store, &keys)?;
    let mut tickets = Vec::new();
    for key in &keys {
        tickets.extend(snap.tickets(&t.store, key)?);
    }
    let page_offer_accepted = snap
        .offer_response(&t.store, &t.order)?
        .is_some_and(|r| r.accepted);
    let facts = snap.delivery(&t.store, &t.order, order.as_ref())?;
    let delivered_at = facts.delivered(&store.delivery);
    let delivery_failed_at = facts.failed();
    let offer_stock = match &plan.plan.offer {
        Some(o) => snap
            .variant_of_key(&t.store, &o.product)?
            .and_then(|v| v.inventory),
        None => None,
    };
    let mut sent = match t.customer {
        Some(c) => snap.sent_messages(&t.store, c, Timestamp(now.0 - WEEK))?,
        None => Vec::new(),
    };
    if let Some(c) = t.customer {
        sent.extend(overlay.get(&(t.store.clone(), c)).into_iter().flatten());
    }
    // The engagement rule, where opens are known: the customer's last 4 emails, opened?
    let recent_opens = match (store.opens_reported, t.customer) {
        (true, Some(c)) => Some(
            snap.recent_emails(&t.store, c, 4)?
                .into_iter()
                .map(|id| snap.opened(id).map(|o| o.is_some()))
                .collect::<Result<Vec<bool>, Error>>()?,
        ),
        _ => None,
    };
    // Quiet hours in the customer's zone: the shipping address's, else the store's.
    let tz = crate::engine::tz::of_order(
        order.as_ref().and_then(|o| o.order.as_ref()),
        store.timezone,
    );
    let state = State {
        status: &plan.status,
        refunded_at: plan.refunded_at,
        suppressed: suppressed.as_ref(),
        page_offer_accepted,
        tickets: &tickets,
        recent_opens: recent_opens.as_deref(),
        offer_stock,
        delivered_at,
        delivery_failed_at,
        sent: &sent,
        tz,
    };
    let touch = t.due(plan.order_at);
    let rules = Rules {
        latency_ms,
        ..store.rules.clone()
    };
    let order = order.as_ref().and_then(|o| o.order.as_ref());
    let (email, phone) = contact_of(customer.as_ref(), order);
    let contact = Contact {
        email: email.map(str::to_string),
        phone: phone.map(str::to_string),
        ticket: None,
    };
    Ok((on_due(&touch, &state, &rules, now), contact))
}

/// Who a message goes to: for the providers (never written to the outbox).
#[derive(Clone, Debug, Default)]
struct Contact {
    email: Option<String>,
    phone: Option<String>,
    /// A `recovery` notice's ticket.
    ticket: Option<crate::outbound::TicketNote>,
}

/// The outbox line of a touch (README "Outbox").
fn line(
    id: u64,
    t: &TouchRecord,
    offer: Option<&Offer>,
    links: Links,
    ticket: Option<&crate::outbound::TicketNote>,
    now: Timestamp,
) -> OutboxLine {
    OutboxLine {
        touch_id: id.to_string(),
        store: t.store.clone(),
        order: t.order.clone(),
        customer: t.customer,
        kind: t.kind.as_str().into(),
        channel: t.channel.as_str().into(),
        due_at: t.due_at.to_rfc3339(),
        sent_at: now.to_rfc3339(),
        offer: offer.map(crate::outbound::offer_json),
        // A notice to the store carries no links for a customer.
        links: (t.kind != crate::engine::plan::TouchKind::Recovery).then_some(links),
        ticket: ticket.and_then(|t| serde_json::to_value(t).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::lifecycle::Status;
    use crate::engine::plan::{Plan, Touch, TouchKind};
    use crate::storage::plans::PlanWrites;

    const T0: i64 = 1_795_186_800_000;
    const DAY: i64 = 86_400_000;

    fn config(opens_reported: bool) -> Config {
        crate::config::parse(
            &format!(
                "admin_token = \"0123456789abcdef0123\"\n[[stores]]\nid = \"s\"\nplatform = \"shopify\"\ndomain = \"s.myshopify.com\"\nwebhook_secrets = [\"x\"]\n[stores.touches]\nopens_reported = {opens_reported}\nemails_per_week = 100\nmessages_per_week = 100\n"
            ),
            std::path::Path::new("/"),
            crate::config::Origin::Demo,
        )
        .unwrap()
    }

    /// Order `n` of customer 7 with one email touch of `kind` due at `due`.
    fn record(n: u64, kind: TouchKind, due: i64) -> (String, PlanRecord) {
        let rec = PlanRecord {
            order_id: n.to_string(),
            order_name: format!("#{n}"),
            customer: Some(7),
            order_at: Timestamp(due - DAY),
            first_planned_at: Timestamp(due - DAY),
            revision: 1,
            plan: Plan {
                recipe: None,
                offer: None,
                holdout: false,
                variants: vec![],
                touches: vec![Touch {
                    kind,
                    channel: Channel::Email,
                    due_at: Timestamp(due),
                    after_delivery: false,
                }],
                reasons: vec![],
            },
            sent: vec![],
            status: Status::Active,
            refunded_at: None,
            history: vec![],
        };
        ("s".to_string(), rec)
    }

    /// Four emails already sent to customer 7; touch-2 of a fifth order due: skipped for
    /// want of opens where opens are reported, sent where they are not or one was opened.
    fn touch2_after_four_unopened(opens_reported: bool, open_one: bool) -> String {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), &Default::default()).unwrap();
        let plans = (1..=4)
            .map(|n| record(n, TouchKind::Touch1, T0 + n as i64 * DAY))
            .chain([record(5, TouchKind::Touch2, T0 + 10 * DAY)])
            .collect();
        storage
            .write_plans(&PlanWrites {
                plans,
                ..Default::default()
            })
            .unwrap();
        for id in 1..=4 {
            storage
                .begin_sending(&[(T0 + id as i64 * DAY, id)])
                .unwrap();
            storage
                .finish_sent(&[id], Timestamp(T0 + id as i64 * DAY))
                .unwrap();
        }
        if open_one {
            storage.set_opened(2, Timestamp(T0 + 3 * DAY)).unwrap();
        }
        let config = Arc::new(config(opens_reported));
        let worker = Worker {
            storage: storage.clone(),
            router: Arc::new(Router::new(
                &config,
                Arc::new(Templates::load(None).unwrap()),
            )),
            link_keys: Arc::new(LinkKeys::new()),
            apis: Arc::default(),
            pauses: Arc::new(Pauses::load(&storage, &config.store_ids()).unwrap()),
            stop: Arc::new(AtomicBool::new(false)),
            config,
            clock: Arc::new(crate::clock::TestClock::at(Timestamp(T0 + 10 * DAY))),
            outbox: Arc::new(Mutex::new(Outbox::open(dir.path()).unwrap())),
            started: Timestamp(T0),
        };
        worker
            .fire(&[5], &mut Round::default(), &mut Vec::new())
            .unwrap();
        let t = storage.snapshot().unwrap().touch(5).unwrap().unwrap();
        match t.state {
            crate::storage::touches::TouchState::Skipped { reason } => reason,
            s => s.as_str().to_string(),
        }
    }

    #[test]
    fn a_paused_stores_due_touch_is_handed_back_undecided() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), &Default::default()).unwrap();
        storage
            .write_plans(&PlanWrites {
                plans: vec![record(1, TouchKind::Touch1, T0)],
                ..Default::default()
            })
            .unwrap();
        let config = Arc::new(config(false));
        let pauses = Arc::new(Pauses::load(&storage, &config.store_ids()).unwrap());
        pauses
            .set("s", true, Duration::ZERO, || Ok::<_, ()>(()))
            .unwrap();
        let worker = Worker {
            storage: storage.clone(),
            router: Arc::new(Router::new(
                &config,
                Arc::new(Templates::load(None).unwrap()),
            )),
            link_keys: Arc::new(LinkKeys::new()),
            apis: Arc::default(),
            pauses: pauses.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            config,
            clock: Arc::new(crate::clock::TestClock::at(Timestamp(T0 + DAY))),
            outbox: Arc::new(Mutex::new(Outbox::open(dir.path()).unwrap())),
            started: Timestamp(T0),
        };
        let mut held = Vec::new();
        let round = worker.fire(&[1], &mut Round::default(), &mut held).unwrap();
        assert_eq!((round, held), (Round::default(), vec![(T0, 1)]));
        let t = storage.snapshot().unwrap().touch(1).unwrap().unwrap();
        assert_eq!((t.state.as_str(), t.due_at), ("scheduled", Timestamp(T0)));
        // Resumed: decided by the misfire policy (a day late is past touch-1's grace).
        pauses
            .set("s", false, Duration::ZERO, || Ok::<_, ()>(()))
            .unwrap();
        let mut held = Vec::new();
        let round = worker.fire(&[1], &mut Round::default(), &mut held).unwrap();
        assert_eq!((round.skipped, held.len()), (1, 0));
    }

    #[test]
    fn the_engagement_rule_applies_only_where_opens_are_reported() {
        assert_eq!(
            touch2_after_four_unopened(true, false),
            "no opens on the customer's last 4 emails"
        );
        assert_eq!(touch2_after_four_unopened(true, true), "sent");
        assert_eq!(touch2_after_four_unopened(false, false), "sent");
    }
}
