//! Scheduled jobs (`[jobs]`, cron schedules in UTC): the daily purge of raw webhook bodies
//! past their retention, and the nightly affinity check (the incremental counts of a
//! sample against a recount). One thread reads the service's clock every 200 ms of real
//! time, so a test clock or `serve --time-scale` drives the jobs like the scheduler, and
//! runs each job once its slot has come. Slots that passed while the service was stopped,
//! or while a job ran, are not made up: the job runs once and waits for its next slot. A
//! job that fails (or panics) is logged and tried again at its next slot; it never stops
//! the service.
//!
//! Decides nothing about orders or touches, and writes nothing but the purge's removals.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::config::{Config, Cron};
use crate::engine::Timestamp;
use crate::storage::affinity::Checked;
use crate::storage::{Error, Storage};

const POLL: Duration = Duration::from_millis(200);
/// Bodies looked at per purge transaction: the writer waits for at most one such removal.
/// Measured in a debug build: removing 1,000 bodies took 0.11-0.13 s, 10,000 in one
/// transaction 3.2-4.8 s (a transaction costs more per row as it grows).
const PURGE_BATCH: usize = 1_000;
/// Stored pair rows the affinity check compares per store (at least; whole antecedents).
const CHECK_PAIR_ROWS: usize = 1_000;
const DAY_MS: i64 = 86_400_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    Purge,
    AffinityCheck,
    /// Each store with `[stores.api]`: reconciliation and the subscriptions' health
    /// (`pipeline::sync`; its outcome is kept in the database, per store).
    Sync,
}

impl Job {
    pub const ALL: [Job; 3] = [Job::Purge, Job::AffinityCheck, Job::Sync];

    pub fn as_str(self) -> &'static str {
        match self {
            Job::Purge => "purge",
            Job::AffinityCheck => "affinity_check",
            Job::Sync => "sync",
        }
    }

    fn schedule(self, config: &Config) -> &Cron {
        match self {
            Job::Purge => &config.jobs.purge,
            Job::AffinityCheck => &config.jobs.affinity_check,
            Job::Sync => &config.jobs.sync,
        }
    }
}

/// What the last purge did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Purged {
    /// Bodies of events received before this were removed.
    pub before: Timestamp,
    pub removed: u64,
    /// Bodies still stored, and how many of them are quarantined deliveries'.
    pub kept: u64,
    pub quarantined: u64,
    /// The service began stopping before the purge was done (it goes on at the next slot).
    pub interrupted: bool,
}

/// What one store's affinity check found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoreCheck {
    pub store: String,
    /// `None` when the store was skipped (an unfinished import), with why in `skipped`.
    pub checked: Option<Checked>,
    pub skipped: Option<String>,
}

/// A job's last run: when, and what it did or why it failed.
#[derive(Clone, Debug)]
pub struct LastRun<T> {
    pub at: Timestamp,
    pub outcome: Result<T, String>,
}

/// The jobs' last results, for the status page to show (kept in memory).
#[derive(Default)]
pub struct Status {
    purge: Mutex<Option<LastRun<Purged>>>,
    affinity_check: Mutex<Option<LastRun<Vec<StoreCheck>>>>,
}

impl Status {
    pub fn last_purge(&self) -> Option<LastRun<Purged>> {
        lock(&self.purge).clone()
    }

    pub fn last_affinity_check(&self) -> Option<LastRun<Vec<StoreCheck>>> {
        lock(&self.affinity_check).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The jobs and when each runs next.
pub struct Jobs {
    storage: Arc<Storage>,
    config: Arc<Config>,
    status: Arc<Status>,
    /// The stores' platform APIs (for the sync).
    apis: super::sync::Apis,
    next: Vec<(Job, Option<Timestamp>)>,
}

impl Jobs {
    /// Each job's first slot is the first after `now`.
    pub fn new(
        storage: Arc<Storage>,
        config: Arc<Config>,
        status: Arc<Status>,
        apis: super::sync::Apis,
        now: Timestamp,
    ) -> Jobs {
        let next = Job::ALL
            .into_iter()
            .map(|job| (job, job.schedule(&config).next_after(now)))
            .collect();
        Jobs {
            storage,
            config,
            status,
            apis,
            next,
        }
    }

    /// When `job` runs next (`None`: its schedule has no later slot).
    pub fn next(&self, job: Job) -> Option<Timestamp> {
        self.next.iter().find(|(j, _)| *j == job).and_then(|n| n.1)
    }

    /// Runs every job whose slot has come by the clock's now, each once, and returns them.
    /// A job's next slot is the first after the clock's time when it finished.
    pub fn tick(&mut self, clock: &dyn Clock, stop: &AtomicBool) -> Vec<Job> {
        let mut ran = Vec::new();
        for i in 0..self.next.len() {
            let (job, at) = self.next[i];
            let now = clock.now();
            if at.is_none_or(|at| now < at) {
                continue;
            }
            let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.run(job, now, clock, stop)
            }));
            if done.is_err() {
                log::error!(
                    "jobs: {} panicked; it runs again at its next slot",
                    job.as_str()
                );
            }
            self.next[i].1 = job.schedule(&self.config).next_after(clock.now());
            ran.push(job);
        }
        ran
    }

    fn run(&self, job: Job, now: Timestamp, clock: &dyn Clock, stop: &AtomicBool) {
        match job {
            Job::Sync => {
                for store in &self.config.stores {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Some(api) = self.apis.get(&store.id) {
                        // The outcome and any error are kept for the status page.
                        let _ =
                            super::sync::sync_store(&self.storage, &self.config, store, api, clock);
                    }
                }
            }
            Job::Purge => {
                let outcome = purge(&self.storage, &self.config, now, stop);
                match &outcome {
                    // Nothing to purge is not news (on a demo clock it would be every second).
                    Ok(p) if p.removed == 0 && !p.interrupted => {}
                    Ok(p) => log::info!(
                        "jobs: purge removed {} raw payloads received before {} (kept {}, {} of them quarantined, which keep their bodies whatever their age){}",
                        p.removed,
                        p.before.to_rfc3339(),
                        p.kept,
                        p.quarantined,
                        if p.interrupted { "; stopped early as the service stops, goes on at the next slot" } else { "" }
                    ),
                    Err(e) => log::error!("jobs: purge failed: {e}; it runs again at its next slot"),
                }
                *lock(&self.status.purge) = Some(LastRun {
                    at: now,
                    outcome: outcome.map_err(|e| e.to_string()),
                });
            }
            Job::AffinityCheck => {
                let outcome = affinity_check(&self.storage, &self.config, now);
                if let Err(e) = &outcome {
                    log::error!("jobs: affinity check failed: {e}; it runs again at its next slot");
                }
                *lock(&self.status.affinity_check) = Some(LastRun {
                    at: now,
                    outcome: outcome.map_err(|e| e.to_string()),
                });
            }
        }
    }
}

/// Runs until `stop` is set.
pub fn run(
    storage: Arc<Storage>,
    config: Arc<Config>,
    clock: Arc<dyn Clock>,
    status: Arc<Status>,
    apis: super::sync::Apis,
    stop: Arc<AtomicBool>,
) {
    let mut jobs = Jobs::new(storage, config, status, apis, clock.now());
    while !stop.load(Ordering::Relaxed) {
        jobs.tick(clock.as_ref(), &stop);
        std::thread::sleep(POLL);
    }
}

/// Removes raw bodies older than the retention, in bounded batches, until none is left
/// or the service stops.
fn purge(
    storage: &Storage,
    config: &Config,
    now: Timestamp,
    stop: &AtomicBool,
) -> Result<Purged, Error> {
    let before = Timestamp(now.0 - config.jobs.retention_ms());
    let (mut removed, mut after) = (0, 0);
    let mut interrupted = false;
    loop {
        let batch = storage.purge_bodies(before, after, PURGE_BATCH)?;
        removed += batch.removed;
        after = batch.last;
        if batch.done {
            break;
        }
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
    }
    let (kept, quarantined) = storage.stored_bodies()?;
    Ok(Purged {
        before,
        removed,
        kept,
        quarantined,
        interrupted,
    })
}

/// Checks every store's affinity counts: a sample that changes daily (seeded by the day),
/// so that night after night every product gets its turn. Each store's result is logged.
fn affinity_check(
    storage: &Storage,
    config: &Config,
    now: Timestamp,
) -> Result<Vec<StoreCheck>, Error> {
    let seed = now.0.div_euclid(DAY_MS) as u64;
    let mut out = Vec::new();
    for store in &config.stores {
        let id = &store.id;
        if let Some(import) = storage.import_marker(id)? {
            let why = format!(
                "an import ({import}) is unfinished, so its orders are not counted yet; run it again to complete it"
            );
            log::warn!("jobs: affinity check of store {id} skipped: {why}");
            out.push(StoreCheck {
                store: id.clone(),
                checked: None,
                skipped: Some(why),
            });
            continue;
        }
        let started = Instant::now();
        let c = storage.check_affinity(id, config.affinity.window_ms(), seed, CHECK_PAIR_ROWS)?;
        let summary = format!(
            "{} of {} rows differ ({} item rows, {} pair rows of {} sampled products; recounted from {} orders in {} ms)",
            c.mismatched,
            c.item_rows + c.pair_rows,
            c.item_rows,
            c.pair_rows,
            c.sampled_products,
            c.orders,
            started.elapsed().as_millis()
        );
        if c.mismatched == 0 {
            log::info!("jobs: affinity check of store {id}: {summary}");
        } else {
            log::error!(
                "jobs: affinity check of store {id}: {summary}; e.g. {}; `upsell-appliance affinity rebuild --store {id}` recounts them (incremental counts should always equal a recount: please report this)",
                c.examples.join("; ")
            );
        }
        out.push(StoreCheck {
            store: id.clone(),
            checked: Some(c),
            skipped: None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TestClock;

    fn at(rfc3339: &str) -> Timestamp {
        Timestamp(
            chrono::DateTime::parse_from_rfc3339(rfc3339)
                .unwrap()
                .timestamp_millis(),
        )
    }

    #[test]
    fn jobs_run_once_at_each_slot_as_the_clock_moves_and_do_not_make_up_missed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "data_dir = {:?}\nadmin_token = \"0123456789abcdef0123\"\n[jobs]\npurge = \"17 3 * * *\"\naffinity_check = \"43 2 * * *\"\nsync = \"0 0 1 1 *\"\n[[stores]]\nid = \"s\"\nplatform = \"shopify\"\ndomain = \"s.myshopify.com\"\nwebhook_secrets = [\"x\"]\n",
            dir.path().display()
        );
        let config = crate::config::parse(&text, dir.path(), crate::config::Origin::Demo).unwrap();
        let storage = Storage::open(dir.path(), &Default::default()).unwrap();
        let clock = TestClock::at(at("2026-11-22T00:00:00Z"));
        let status = Arc::new(Status::default());
        let mut jobs = Jobs::new(
            storage,
            Arc::new(config),
            status.clone(),
            Default::default(),
            clock.now(),
        );
        let stop = AtomicBool::new(false);
        let next = |jobs: &Jobs, job| jobs.next(job).unwrap().to_rfc3339();
        assert_eq!(next(&jobs, Job::Purge), "2026-11-22T03:17:00Z");
        assert_eq!(next(&jobs, Job::AffinityCheck), "2026-11-22T02:43:00Z");

        assert_eq!(jobs.tick(&clock, &stop), []);
        clock.set(at("2026-11-22T02:42:59Z"));
        assert_eq!(jobs.tick(&clock, &stop), []);
        clock.set(at("2026-11-22T02:43:00Z"));
        assert_eq!(jobs.tick(&clock, &stop), [Job::AffinityCheck]);
        assert_eq!(jobs.tick(&clock, &stop), [], "once per slot");
        assert_eq!(next(&jobs, Job::AffinityCheck), "2026-11-23T02:43:00Z");
        let check = status.last_affinity_check().unwrap();
        assert_eq!(check.at, at("2026-11-22T02:43:00Z"));
        let stores = check.outcome.unwrap();
        assert_eq!(stores[0].checked.as_ref().unwrap().mismatched, 0);

        clock.set(at("2026-11-22T03:20:00Z"));
        assert_eq!(jobs.tick(&clock, &stop), [Job::Purge]);
        let purged = status.last_purge().unwrap().outcome.unwrap();
        assert_eq!(purged.before.to_rfc3339(), "2026-08-24T03:20:00Z");
        assert_eq!(purged.removed, 0);

        // Three days stopped (or a clock jump): each job runs once, then waits its slot.
        clock.set(at("2026-11-25T12:00:00Z"));
        assert_eq!(jobs.tick(&clock, &stop), [Job::Purge, Job::AffinityCheck]);
        assert_eq!(jobs.tick(&clock, &stop), []);
        assert_eq!(next(&jobs, Job::Purge), "2026-11-26T03:17:00Z");
        assert_eq!(next(&jobs, Job::AffinityCheck), "2026-11-26T02:43:00Z");
    }
}
