//! Group commit. HTTP workers verify and parse, then send a [`Job`] here and go back to
//! their next request; this thread takes everything waiting, commits it in one durable
//! transaction, and only then runs each job's reply. A batch grows with the load, not with
//! the worker count, so one fsync serves many webhooks on a slow disk.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::engine::Timestamp;
use crate::metrics::Commits;
use crate::storage::{Committed, NewEvent, Storage, C_REJECTED};

/// The most deliveries one transaction takes.
pub const MAX_BATCH: usize = 1024;

/// How a job ended, as its reply sees it.
pub type Outcome = Result<(), CommitFailed>;

#[derive(Debug, Clone, thiserror::Error)]
#[error("could not commit to the database: {0}")]
pub struct CommitFailed(pub String);

pub type Reply = Box<dyn FnOnce(Outcome) + Send>;

/// Replies of one commit, run by the responder thread so that writing responses to
/// sockets overlaps the next commit instead of delaying it.
pub type Answers = Vec<(Reply, Outcome)>;

/// Runs replies until the writer is gone.
pub fn respond(answers: Receiver<Answers>) {
    for batch in answers {
        respond_now(batch);
    }
}

pub enum Job {
    /// Store one verified delivery, then reply.
    Deliver(NewEvent, Reply),
    /// Prove the disk takes a durable commit, then reply (`/healthz`).
    Probe(Reply),
}

/// Deliveries refused before the commit path (bad signatures), per store, added to the
/// next commit so they cost no transaction of their own.
pub struct Rejections {
    counts: Vec<(String, AtomicI64)>,
}

impl Rejections {
    pub fn new(stores: &[String]) -> Rejections {
        Rejections {
            counts: stores
                .iter()
                .map(|s| (s.clone(), AtomicI64::new(0)))
                .collect(),
        }
    }

    pub fn add(&self, store: &str) {
        if let Some((_, n)) = self.counts.iter().find(|(s, _)| s == store) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn take(&self) -> Vec<(String, &'static str, i64)> {
        self.counts
            .iter()
            .filter_map(|(s, n)| {
                let v = n.swap(0, Ordering::Relaxed);
                (v != 0).then(|| (s.clone(), C_REJECTED, v))
            })
            .collect()
    }

    fn give_back(&self, taken: Vec<(String, &'static str, i64)>) {
        for (s, _, v) in taken {
            if let Some((_, n)) = self.counts.iter().find(|(x, _)| *x == s) {
                n.fetch_add(v, Ordering::Relaxed);
            }
        }
    }
}

/// Shared view of the writer's health: false after a failed commit until one succeeds.
#[derive(Default)]
pub struct Health {
    pub writable: AtomicBool,
}

/// Runs the writer until every sender is dropped, or `stop` fires (or is dropped), and
/// then commits what is queued. A job sent after that fails to send, and its sender
/// answers 503: only HTTP workers the shutdown gave up on can still be sending.
#[allow(clippy::too_many_arguments)]
pub fn run(
    storage: Arc<Storage>,
    jobs: Receiver<Job>,
    stop: Receiver<()>,
    rejections: Arc<Rejections>,
    health: Arc<Health>,
    commits: Arc<Commits>,
    committed: Sender<u64>,
    answers: Sender<Answers>,
    now: impl Fn() -> Timestamp,
) {
    health.writable.store(true, Ordering::Relaxed);
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut stopping = false;
    loop {
        if !stopping {
            crossbeam_channel::select! {
                recv(jobs) -> job => match job {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                },
                recv(stop) -> _ => stopping = true,
                default(Duration::from_secs(1)) => {
                    flush_rejections(&storage, &rejections, now());
                    continue;
                }
            }
        }
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            break; // stopping, and nothing is queued
        }
        let answered = commit(
            &storage,
            &mut batch,
            &rejections,
            &health,
            &commits,
            &committed,
            now(),
        );
        if let Err(crossbeam_channel::SendError(answered)) = answers.send(answered) {
            respond_now(answered);
        }
    }
    flush_rejections(&storage, &rejections, now());
}

/// Commits rejection counts that are waiting for a commit (when idle, and at the end).
fn flush_rejections(storage: &Storage, rejections: &Rejections, now: Timestamp) {
    let extra = rejections.take();
    if !extra.is_empty() {
        if let Err(e) = storage.commit_deliveries(&[], &extra, now) {
            log::error!("writer: {e}");
            rejections.give_back(extra);
        }
    }
}

fn commit(
    storage: &Storage,
    batch: &mut Vec<Job>,
    rejections: &Rejections,
    health: &Health,
    commits: &Commits,
    committed: &Sender<u64>,
    now: Timestamp,
) -> Answers {
    let requests = batch.len();
    let mut events = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    for job in batch.drain(..) {
        match job {
            Job::Deliver(ev, reply) => {
                events.push(ev);
                replies.push(reply);
            }
            Job::Probe(reply) => replies.push(reply),
        }
    }
    let extra = rejections.take();
    let started = Instant::now();
    let result = storage.commit_deliveries(&events, &extra, now);
    commits.record(requests, started.elapsed());
    drop(events);
    let outcome = match result {
        Ok(committed_now) => {
            health.writable.store(true, Ordering::Relaxed);
            let last_stored = committed_now.iter().rev().find_map(|c| match c {
                Committed::Stored(s) => Some(*s),
                Committed::Duplicate(_) => None,
            });
            if let Some(last) = last_stored {
                // A full channel already holds a wake-up; the processor reads up to the end.
                let _ = committed.try_send(last);
            }
            Ok(())
        }
        Err(e) => {
            health.writable.store(false, Ordering::Relaxed);
            rejections.give_back(extra);
            let failed = CommitFailed(e.to_string());
            log::error!("writer: {failed}; answering 503 so platforms retry");
            Err(failed)
        }
    };
    replies.into_iter().map(|r| (r, outcome.clone())).collect()
}

fn respond_now(batch: Answers) {
    for (reply, outcome) in batch {
        reply(outcome);
    }
}
