//! Durable state in one redb file. The only module that imports redb or the byte codec.
//!
//! Methods are named for what the appliance means (`commit_deliveries`, `status`), not for
//! tables. The writer thread is the only appender of events; the processor is the only
//! writer of order and customer records.

pub mod affinity;
mod backend;
pub mod backup;
mod codec;
pub mod conversions;
pub mod intake;
pub mod pause;
pub mod plans;
pub mod privacy;
pub mod records;
pub mod sync;
mod tables;
pub mod touches;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};

pub use backend::Faults;
use records::{EventHead, EventRecord};
use tables::*;

use crate::engine::history::{Customer, CustomerId, OrderState};
use crate::engine::{Source, Timestamp};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database {0} is in use by another process (is `upsell-appliance serve` running with this data_dir?)")]
    Locked(PathBuf),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Redb(Box<redb::Error>),
    #[error("event {0}: its raw body is no longer stored (bodies older than [jobs] payload_retention_days are purged; the event's normalized form is kept)")]
    Purged(u64),
    #[error("stored record: {0}")]
    Codec(String),
    #[error("cannot keep the affinity rebuild's temporary counts in {dir}: {source} (a rebuild needs about 16 bytes per pair count there, ~200 MB per million orders; free some space and run it again)")]
    Spill {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the privacy export {path}: {source} (free space or fix the directory's permissions)")]
    Export {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("backup: {0}")]
    Backup(String),
    #[error("database {path} has schema version {found}, this build understands {expected}; upgrade upsell-appliance")]
    Schema {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Error {
                Error::Redb(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    redb::CompactionError
);

/// Opens (or creates) a database file for reading and writing, never through a symbolic
/// link: the data directory belongs to the service's user, and a command run as root must
/// not be led to open, write or chown a file elsewhere. `new`: it must not exist yet (and
/// is made readable by its owner only).
fn open_file(path: &Path, new: bool) -> Result<std::fs::File, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    if new {
        o.create_new(true).mode(0o600);
    } else {
        o.create(true).truncate(false);
    }
    o.open(path).map_err(|source| Error::DataDir {
        path: path.to_path_buf(),
        source,
    })
}

/// redb on `file`, with our backend; a file another process has open is [`Error::Locked`].
/// After an unclean stop redb first repairs the file, which on a large one takes minutes:
/// its progress is logged.
fn open_redb(file: std::fs::File, path: &Path, opts: &Options) -> Result<Database, Error> {
    let backend = backend::Backend::new(file, opts.faults.clone())?;
    let shown = std::cell::Cell::new(-1i64);
    let shown_path = path.to_path_buf();
    redb::Builder::new()
        .set_cache_size(opts.cache_size_mb.max(1) * 1024 * 1024)
        .set_repair_callback(move |session| {
            let tenth = (session.progress() * 10.0) as i64;
            if tenth > shown.get() {
                shown.set(tenth);
                log::warn!(
                    "database {}: repairing after an unclean stop, {}% done",
                    shown_path.display(),
                    tenth * 10
                );
            }
        })
        .create_with_backend(backend)
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::Locked(path.to_path_buf()),
            e => e.into(),
        })
}

/// How to open the database.
#[derive(Clone, Debug)]
pub struct Options {
    pub cache_size_mb: usize,
    /// Test and benchmark hooks: slow syncs, failing writes.
    pub faults: Faults,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            cache_size_mb: 16,
            faults: Faults::default(),
        }
    }
}

/// One delivery ready to store. The HTTP worker encodes it, so the writer's transaction,
/// which holds the database's one write lock, only copies bytes.
#[derive(Clone, Debug)]
pub struct NewEvent {
    store: String,
    dedupe_key: String,
    counter: &'static str,
    quarantined: bool,
    /// A platform delivery (not an order the platform's API returned): counted with the
    /// webhooks and their last arrival.
    webhook: bool,
    head: Vec<u8>,
    body: Vec<u8>,
}

impl NewEvent {
    pub fn encode(rec: &EventRecord) -> Result<NewEvent, Error> {
        let (head, body) = rec.encode()?;
        let quarantined = matches!(rec.head.parsed, records::ParsedRecord::Unparseable(_));
        Ok(NewEvent {
            store: rec.head.store.clone(),
            dedupe_key: rec.head.dedupe_key.clone(),
            counter: match (&rec.head.parsed, rec.head.source) {
                (records::ParsedRecord::Unparseable(_), _) => C_QUARANTINED,
                (_, Source::Reconciled) => C_RECONCILED,
                (_, Source::Fetched) => C_FETCHED,
                (records::ParsedRecord::Event(_) | records::ParsedRecord::Privacy(_), _) => {
                    C_ACCEPTED
                }
                (records::ParsedRecord::Ignored, _) => C_IGNORED,
            },
            quarantined,
            webhook: matches!(rec.head.source, Source::Webhook),
            head,
            body,
        })
    }
}

/// What the commit did with one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Committed {
    Stored(u64),
    Duplicate(u64),
}

/// What one [`Storage::purge_bodies`] batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeBatch {
    pub removed: u64,
    /// The last sequence number looked at: the next batch starts after it.
    pub last: u64,
    /// Nothing old enough is left after `last` (a batch that stopped at its limit is not).
    pub done: bool,
}

/// Per-store figures for `/api/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreStatus {
    pub id: String,
    /// `dry_run` or `live`: from the config (the admin report fills it in).
    #[serde(default)]
    pub mode: String,
    /// When sending was paused (`upsell-appliance pause`), while it is.
    #[serde(default)]
    pub paused_since: Option<String>,
    /// Through what it was paused.
    #[serde(default)]
    pub paused_by: Option<String>,
    pub webhooks: WebhookCounts,
    pub orders: i64,
    pub customers: i64,
    pub last_webhook_at: Option<String>,
    /// When a delivery was last refused for its signature (within a second or so: the
    /// count is written with the next commit).
    pub last_rejected_at: Option<String>,
    /// Deliveries in quarantine now (the `quarantined` counter also counts those since
    /// replayed).
    pub in_quarantine: i64,
    pub touches: TouchFigures,
    #[serde(default)]
    pub privacy: privacy::PrivacyFigures,
    /// Orders reconciliation fed in (their webhooks never came), and orders fetched after
    /// a thin webhook (BigCommerce).
    #[serde(default)]
    pub reconciled: i64,
    #[serde(default)]
    pub fetched: i64,
    /// The platform API sync, once one has run.
    #[serde(default)]
    pub sync: Option<sync::SyncView>,
}

/// A store's touches: pending by due day (UTC) and kind; sent by kind, deferred and
/// skipped by rule, since the start.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TouchFigures {
    pub pending: u64,
    pub pending_by_day: Vec<DayCount>,
    pub sent: std::collections::BTreeMap<String, u64>,
    pub deferred: std::collections::BTreeMap<String, u64>,
    pub skipped: std::collections::BTreeMap<String, u64>,
    /// Dead letters, by rule (`refused`).
    pub dead: std::collections::BTreeMap<String, u64>,
    /// Per channel since the start: sent, failed attempts retried, dead letters.
    pub channels: std::collections::BTreeMap<String, ChannelCounts>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChannelCounts {
    pub sent: u64,
    pub retried: u64,
    pub dead: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DayCount {
    /// YYYY-MM-DD (UTC).
    pub day: String,
    pub total: u64,
    pub kinds: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WebhookCounts {
    pub accepted: i64,
    pub duplicate: i64,
    pub rejected: i64,
    pub quarantined: i64,
    pub ignored: i64,
}

pub const C_ACCEPTED: &str = "webhooks.accepted";
pub const C_DUPLICATE: &str = "webhooks.duplicate";
pub const C_REJECTED: &str = "webhooks.rejected";
pub const C_QUARANTINED: &str = "webhooks.quarantined";
pub const C_IGNORED: &str = "webhooks.ignored";
/// Orders reconciliation found that the webhooks had not brought (or a newer version of).
pub const C_RECONCILED: &str = "api.reconciled";
/// Orders fetched because a webhook said they changed (BigCommerce).
pub const C_FETCHED: &str = "api.fetched";
const C_LAST_WEBHOOK: &str = "webhooks.last_at_ms";
const C_LAST_REJECTED: &str = "webhooks.last_rejected_at_ms";
const C_ORDERS: &str = "orders";
const C_CUSTOMERS: &str = "customers";
const C_NEXT_CUSTOMER: &str = "customers.next_id";

pub struct Storage {
    db: Database,
    path: PathBuf,
    /// Held by whoever applies orders (the processor, an import, a rebuild), so their
    /// snapshot-then-write batches never interleave.
    applying: std::sync::Mutex<()>,
    /// Timers written since the scheduler last looked (see [`touches::TimerFeed`]).
    pub(crate) timer_feed: touches::TimerFeed,
}

impl Storage {
    pub const FILE_NAME: &'static str = "upsell.redb";

    /// Opens (or creates) the database in `data_dir`.
    pub fn open(data_dir: &Path, opts: &Options) -> Result<Arc<Storage>, Error> {
        Self::open_owned(data_dir, opts).map(Arc::new)
    }

    fn open_owned(data_dir: &Path, opts: &Options) -> Result<Storage, Error> {
        std::fs::create_dir_all(data_dir).map_err(|source| Error::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(Self::FILE_NAME);
        let file = open_file(&path, false)?;
        let db = open_redb(file, &path, opts)?;
        let storage = Storage {
            db,
            path,
            applying: std::sync::Mutex::new(()),
            timer_feed: Default::default(),
        };
        storage.init_schema()?;
        Ok(storage)
    }

    /// Compacts the database file in `data_dir`, which must exist and not be open
    /// elsewhere ([`Error::Locked`] while a service runs), by rewriting it: every table is
    /// copied into a new file beside it, which then takes its name. The new file holds only
    /// live rows, so the space freed pages took is given back and the old bytes they still
    /// held (an erased customer's, see `privacy`) are gone from the database; redb's own
    /// in-place compaction moves pages but leaves freed ones as they were. Any failure
    /// before the rename leaves the file as it was. Returns its size in bytes before and
    /// after.
    pub fn compact(data_dir: &Path, opts: &Options) -> Result<(u64, u64), Error> {
        let path = data_dir.join(Self::FILE_NAME);
        let size = |path: &Path| {
            std::fs::metadata(path)
                .map(|m| m.len())
                .map_err(|source| Error::DataDir {
                    path: path.to_path_buf(),
                    source,
                })
        };
        let before = size(&path)?;
        let storage = Storage::open_owned(data_dir, opts)?;
        let tmp = data_dir.join(format!("{}.compacting", Self::FILE_NAME));
        let _ = std::fs::remove_file(&tmp);
        let copied = open_file(&tmp, true).and_then(|file| {
            backup::own_like(&file, data_dir)?;
            let mut db = open_redb(file, &tmp, opts)?;
            copy_all(&storage.db, &db)?;
            // The copy's own transaction leaves allocator slack at the end: packed, the
            // new file is as small as its rows allow.
            db.compact()?;
            Ok(())
        });
        let moved = copied.and_then(|()| {
            std::fs::rename(&tmp, &path).map_err(|source| Error::DataDir {
                path: path.clone(),
                source,
            })
        });
        if let Err(e) = moved {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        drop(storage);
        std::fs::File::open(data_dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| Error::DataDir {
                path: data_dir.to_path_buf(),
                source,
            })?;
        Ok((before, size(&path)?))
    }

    /// Where privacy exports are written: `exports/` in the data directory.
    pub fn exports_dir(&self) -> PathBuf {
        self.path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("exports")
    }

    /// Waits until no one else applies orders, and holds that until the guard drops.
    pub fn apply_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.applying.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fingerprint of every table: its name, entries and a SHA-256 of its keys and
    /// values. Proves that a read-only operation (`replay`) left the database as it was.
    pub fn digest(&self) -> Result<Vec<(String, u64, String)>, Error> {
        use redb::ReadableDatabase;
        fn one<K: redb::Key + 'static, V: redb::Value + 'static>(
            tx: &redb::ReadTransaction,
            def: redb::TableDefinition<'static, K, V>,
        ) -> Result<(String, u64, String), Error> {
            use redb::TableHandle;
            use sha2::Digest;
            let name = def.name().to_string();
            let t = match tx.open_table(def) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok((name, 0, String::new())),
                Err(e) => return Err(e.into()),
            };
            let mut h = sha2::Sha256::new();
            let mut n = 0;
            for item in t.iter()? {
                let (k, v) = item?;
                for bytes in [
                    K::as_bytes(&k.value()).as_ref(),
                    V::as_bytes(&v.value()).as_ref(),
                ] {
                    h.update((bytes.len() as u64).to_le_bytes());
                    h.update(bytes);
                }
                n += 1;
            }
            let hex = crate::engine::hex(&h.finalize());
            Ok((name, n, hex))
        }
        let tx = self.db.begin_read()?;
        let mut out = vec![one(&tx, META)?];
        macro_rules! digest {
            ($t:ident) => {
                out.push(one(&tx, $t)?);
            };
        }
        each_table!(digest);
        Ok(out)
    }

    /// Whether a database file exists in `data_dir` (without creating one).
    pub fn exists(data_dir: &Path) -> bool {
        data_dir.join(Self::FILE_NAME).exists()
    }

    fn init_schema(&self) -> Result<(), Error> {
        let tx = self.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let found = meta.get("schema_version")?.map(|v| read_u32(v.value()));
            match found {
                None => {
                    meta.insert("schema_version", &SCHEMA_VERSION.to_le_bytes()[..])?;
                }
                Some(v) if v == SCHEMA_VERSION => {}
                Some(found) => {
                    return Err(Error::Schema {
                        path: self.path.clone(),
                        found,
                        expected: SCHEMA_VERSION,
                    })
                }
            }
            macro_rules! create {
                ($t:ident) => {
                    tx.open_table($t)?;
                };
            }
            each_table!(create);
        }
        touches::count_pending_once(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// Stores a batch of deliveries in one durable transaction: new ones get the next
    /// sequence numbers, repeats are counted as duplicates and stored once. `extra` adds
    /// counter deltas (rejected deliveries) to the same commit.
    pub fn commit_deliveries(
        &self,
        events: &[NewEvent],
        extra: &[(String, &'static str, i64)],
        now: Timestamp,
    ) -> Result<Vec<Committed>, Error> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        let mut out = Vec::with_capacity(events.len());
        {
            let mut ev = tx.open_table(EVENTS)?;
            let mut bodies = tx.open_table(BODIES)?;
            let mut quarantine = tx.open_table(QUARANTINE)?;
            let mut dedupe = tx.open_table(DEDUPE)?;
            let mut counters = tx.open_table(COUNTERS)?;
            let mut next = next_seq(&ev, &tx.open_table(META)?)?;
            for e in events {
                let key = (e.store.as_str(), e.dedupe_key.as_str());
                let seen = dedupe.get(key)?.map(|v| v.value());
                let counter = if let Some(seq) = seen {
                    out.push(Committed::Duplicate(seq));
                    e.webhook.then_some(C_DUPLICATE)
                } else {
                    ev.insert(next, e.head.as_slice())?;
                    bodies.insert(next, e.body.as_slice())?;
                    if e.quarantined {
                        quarantine.insert(next, e.store.as_str())?;
                    }
                    dedupe.insert(key, next)?;
                    out.push(Committed::Stored(next));
                    next += 1;
                    Some(e.counter)
                };
                if let Some(counter) = counter {
                    add(&mut counters, &e.store, counter, 1)?;
                }
                if e.webhook {
                    counters.insert((e.store.as_str(), C_LAST_WEBHOOK), now.0)?;
                }
            }
            for (store, name, delta) in extra {
                add(&mut counters, store, name, *delta)?;
                if *name == C_REJECTED && *delta > 0 {
                    counters.insert((store.as_str(), C_LAST_REJECTED), now.0)?;
                }
            }
            // Every commit writes, so an otherwise empty one still proves the disk.
            tx.open_table(META)?
                .insert("last_commit_ms", &now.0.to_le_bytes()[..])?;
        }
        tx.commit()?;
        Ok(out)
    }

    /// The highest committed event sequence number (0 when there are none).
    pub fn last_seq(&self) -> Result<u64, Error> {
        let tx = self.db.begin_read()?;
        // Past events a store's removal took away too (their numbers are not reused).
        Ok(next_seq(&tx.open_table(EVENTS)?, &tx.open_table(META)?)? - 1)
    }

    /// Events with sequence numbers after `after`, in commit order, at most `limit`.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, EventRecord)>, Error> {
        let tx = self.db.begin_read()?;
        let bodies = tx.open_table(BODIES)?;
        self.scan_events(after, limit, |seq, head| {
            let body = bodies.get(seq)?.ok_or_else(|| Error::Purged(seq))?;
            EventRecord::decode(head, body.value())
        })
    }

    /// Like [`Storage::events_after`], without the raw bodies.
    pub fn event_heads_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, EventHead)>, Error> {
        self.scan_events(after, limit, |_, head| EventRecord::decode_head(head))
    }

    fn scan_events<T>(
        &self,
        after: u64,
        limit: usize,
        mut decode: impl FnMut(u64, &[u8]) -> Result<T, Error>,
    ) -> Result<Vec<(u64, T)>, Error> {
        let tx = self.db.begin_read()?;
        let ev = tx.open_table(EVENTS)?;
        let mut out = Vec::new();
        for item in ev.range(after.saturating_add(1)..)? {
            let (k, v) = item?;
            out.push((k.value(), decode(k.value(), v.value())?));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The stored event for a delivery key, if any.
    pub fn event_by_key(
        &self,
        store: &str,
        key: &str,
    ) -> Result<Option<(u64, EventRecord)>, Error> {
        let tx = self.db.begin_read()?;
        let dedupe = tx.open_table(DEDUPE)?;
        let Some(seq) = dedupe.get((store, key))?.map(|v| v.value()) else {
            return Ok(None);
        };
        let (ev, bodies) = (tx.open_table(EVENTS)?, tx.open_table(BODIES)?);
        let head = ev.get(seq)?.ok_or_else(|| missing_body(seq))?;
        let body = bodies.get(seq)?.ok_or_else(|| Error::Purged(seq))?;
        Ok(Some((
            seq,
            EventRecord::decode(head.value(), body.value())?,
        )))
    }

    /// Quarantined events, oldest first, optionally of one store.
    pub fn quarantined(&self, store: Option<&str>) -> Result<Vec<(u64, EventHead)>, Error> {
        let tx = self.db.begin_read()?;
        let (q, ev) = (tx.open_table(QUARANTINE)?, tx.open_table(EVENTS)?);
        let mut out = Vec::new();
        for item in q.iter()? {
            let (seq, s) = item?;
            if store.is_some_and(|want| want != s.value()) {
                continue;
            }
            let seq = seq.value();
            let head = ev.get(seq)?.ok_or_else(|| missing_body(seq))?;
            out.push((seq, EventRecord::decode_head(head.value())?));
        }
        Ok(out)
    }

    /// One stored event, head and body.
    pub fn event(&self, seq: u64) -> Result<Option<EventRecord>, Error> {
        let tx = self.db.begin_read()?;
        let (ev, bodies) = (tx.open_table(EVENTS)?, tx.open_table(BODIES)?);
        let Some(head) = ev.get(seq)? else {
            return Ok(None);
        };
        let body = bodies.get(seq)?.ok_or_else(|| Error::Purged(seq))?;
        EventRecord::decode(head.value(), body.value()).map(Some)
    }

    /// Runs `reparse` on every quarantined event (of one store, or all) in one durable
    /// transaction. One that now parses moves to the end of the event log under a new
    /// sequence number (so the processor applies it in turn) and leaves quarantine; one
    /// that still fails keeps its place with the new reason. Returns (old seq, new seq if
    /// released, what the parser said now).
    pub fn replay_quarantined(
        &self,
        store: Option<&str>,
        reparse: impl Fn(&EventHead, &[u8]) -> records::ParsedRecord,
    ) -> Result<Vec<(u64, Option<u64>, records::ParsedRecord)>, Error> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        let mut out = Vec::new();
        {
            let mut q = tx.open_table(QUARANTINE)?;
            let mut ev = tx.open_table(EVENTS)?;
            let mut bodies = tx.open_table(BODIES)?;
            let mut dedupe = tx.open_table(DEDUPE)?;
            let mut counters = tx.open_table(COUNTERS)?;
            let mut seqs = Vec::new();
            for item in q.iter()? {
                let (seq, s) = item?;
                if store.is_none_or(|want| want == s.value()) {
                    seqs.push(seq.value());
                }
            }
            let mut next = next_seq(&ev, &tx.open_table(META)?)?;
            for seq in seqs {
                let head = ev
                    .get(seq)?
                    .ok_or_else(|| missing_body(seq))?
                    .value()
                    .to_vec();
                let body = bodies
                    .get(seq)?
                    .ok_or_else(|| missing_body(seq))?
                    .value()
                    .to_vec();
                let mut rec = EventRecord::decode(&head, &body)?;
                let parsed = reparse(&rec.head, &rec.body);
                rec.head.parsed = parsed.clone();
                let (head_bytes, body_bytes) = rec.encode()?;
                let h = &rec.head;
                let released = match parsed {
                    records::ParsedRecord::Unparseable(_) => {
                        ev.insert(seq, head_bytes.as_slice())?;
                        None
                    }
                    ref p => {
                        ev.remove(seq)?;
                        bodies.remove(seq)?;
                        q.remove(seq)?;
                        ev.insert(next, head_bytes.as_slice())?;
                        bodies.insert(next, body_bytes.as_slice())?;
                        dedupe.insert((h.store.as_str(), h.dedupe_key.as_str()), next)?;
                        add(&mut counters, &h.store, C_QUARANTINED, -1)?;
                        let c = match p {
                            records::ParsedRecord::Event(_) | records::ParsedRecord::Privacy(_) => {
                                C_ACCEPTED
                            }
                            _ => C_IGNORED,
                        };
                        add(&mut counters, &h.store, c, 1)?;
                        next += 1;
                        Some(next - 1)
                    }
                };
                out.push((seq, released, parsed));
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Removes the raw bodies of events received before `before`, oldest first, looking at
    /// no more than `limit` bodies after sequence number `after`, and returns what it did
    /// (the next batch starts after `last`). Heads stay: they hold the normalized form
    /// that history rebuilds from. Quarantined events keep their bodies, whatever their
    /// age: a newer build parses them again (`quarantine replay`). Bodies are looked at in
    /// commit order and the batch ends at the first one young enough to keep, so a run
    /// touches little more than what it removes (a body that sits behind a younger one, as
    /// a replayed delivery does with its first receipt time, waits for it). The read holds
    /// no lock; the removal is one short transaction, made durable by the writer's next
    /// commit (a purge lost in a crash is done again).
    pub fn purge_bodies(
        &self,
        before: Timestamp,
        after: u64,
        limit: usize,
    ) -> Result<PurgeBatch, Error> {
        let mut batch = PurgeBatch {
            removed: 0,
            last: after,
            done: true,
        };
        let mut remove = Vec::new();
        {
            let tx = self.db.begin_read()?;
            let bodies = tx.open_table(BODIES)?;
            let (ev, q) = (tx.open_table(EVENTS)?, tx.open_table(QUARANTINE)?);
            for (looked, item) in bodies.range(after.saturating_add(1)..)?.enumerate() {
                if looked >= limit {
                    batch.done = false;
                    break;
                }
                let seq = item?.0.value();
                if q.get(seq)?.is_none() {
                    let Some(head) = ev.get(seq)? else {
                        batch.last = seq;
                        continue;
                    };
                    if EventRecord::decode_head(head.value())?.received_at >= before {
                        break;
                    }
                    remove.push(seq);
                }
                batch.last = seq;
            }
        }
        if !remove.is_empty() {
            let mut tx = self.db.begin_write()?;
            tx.set_durability(Durability::None)?;
            {
                let mut bodies = tx.open_table(BODIES)?;
                let q = tx.open_table(QUARANTINE)?;
                for &seq in &remove {
                    // Only new events are quarantined, never these; checked all the same.
                    if q.get(seq)?.is_none() && bodies.remove(seq)?.is_some() {
                        batch.removed += 1;
                    }
                }
            }
            tx.commit()?;
        }
        Ok(batch)
    }

    /// Raw bodies stored, and how many of them are quarantined deliveries'.
    pub fn stored_bodies(&self) -> Result<(u64, u64), Error> {
        let tx = self.db.begin_read()?;
        Ok((
            tx.open_table(BODIES)?.len()?,
            tx.open_table(QUARANTINE)?.len()?,
        ))
    }

    /// Number of stored events (deliveries, not counting duplicates).
    pub fn event_count(&self) -> Result<u64, Error> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(EVENTS)?.len()?)
    }

    /// The sequence number the processor has applied up to.
    pub fn processed_seq(&self) -> Result<u64, Error> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        Ok(meta
            .get("processed_seq")?
            .map_or(0, |v| read_u64(v.value())))
    }

    /// A consistent read-only view for the processor to compute its next batch from,
    /// without holding the write lock.
    pub fn snapshot(&self) -> Result<Snapshot, Error> {
        let tx = self.db.begin_read()?;
        Ok(Snapshot {
            meta: tx.open_table(META)?,
            orders: tx.open_table(ORDERS)?,
            customers: tx.open_table(CUSTOMERS)?,
            lookup: tx.open_table(CUSTOMER_LOOKUP)?,
            counters: tx.open_table(COUNTERS)?,
            catalog: tx.open_table(CATALOG)?,
            catalog_ids: tx.open_table(CATALOG_IDS)?,
            handles: tx.open_table(CATALOG_HANDLES)?,
            product_nos: tx.open_table(PRODUCT_NOS)?,
            product_keys: tx.open_table(PRODUCT_KEYS)?,
            items: tx.open_table(AFF_ITEMS)?,
            pairs: tx.open_table(AFF_PAIRS)?,
            evidence: tx.open_table(AFF_ORDERS)?,
            timeline: tx.open_table(TIMELINE)?,
            pairings: tx.open_table(PAIRINGS)?,
            feedback: tx.open_table(FEEDBACK)?,
            plans: tx.open_table(PLANS)?,
            plan_queue: tx.open_table(PLAN_QUEUE)?,
            suppressions: tx.open_table(SUPPRESSIONS)?,
            store_keys: tx.open_table(STORE_KEYS)?,
            refunds: tx.open_table(CUSTOMER_REFUNDS)?,
            order_values: tx.open_table(ORDER_VALUES)?,
            touches: tx.open_table(TOUCHES)?,
            timers: tx.open_table(TIMERS)?,
            order_touches: tx.open_table(ORDER_TOUCHES)?,
            sending: tx.open_table(SENDING)?,
            sent_log: tx.open_table(SENT_LOG)?,
            tickets: tx.open_table(TICKETS)?,
            recovery_notices: tx.open_table(RECOVERY_NOTICES)?,
            offer_responses: tx.open_table(OFFER_RESPONSES)?,
            opens: tx.open_table(OPENS)?,
            attempts: tx.open_table(ATTEMPTS)?,
            receipts: tx.open_table(RECEIPTS)?,
            disabled: tx.open_table(DISABLED)?,
            dead_letters: tx.open_table(DEAD_LETTERS)?,
            clicks: tx.open_table(CLICKS)?,
            resent: tx.open_table(RESENT)?,
            mirrors: tx.open_table(MIRRORS)?,
            deliveries: tx.open_table(DELIVERIES)?,
            paused: tx.open_table(PAUSED)?,
            conversions: tx.open_table(CONVERSIONS)?,
            events: tx.open_table(EVENTS)?,
            bodies: tx.open_table(BODIES)?,
        })
    }

    /// Writes a processor batch in one short transaction. Not synced by itself: the next
    /// durable commit carries it, and a crash before that only means the same events are
    /// applied again, which changes nothing. Only the processor writes these tables, so
    /// what it read from its snapshot is still current.
    /// Returns how long writing the affinity rows took (the processor reports the affinity
    /// model's cost apart from the rest).
    pub fn apply_changes(&self, changes: &Changes) -> Result<std::time::Duration, Error> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::None)?;
        {
            let mut orders = tx.open_table(ORDERS)?;
            let mut customers = tx.open_table(CUSTOMERS)?;
            let mut lookup = tx.open_table(CUSTOMER_LOOKUP)?;
            let mut counters = tx.open_table(COUNTERS)?;
            for (store, id, bytes, newly_known) in &changes.orders {
                orders.insert((store.as_str(), id.as_str()), bytes.as_slice())?;
                if *newly_known {
                    add(&mut counters, store, C_ORDERS, 1)?;
                }
            }
            for (store, id, bytes) in &changes.customers {
                if customers
                    .insert((store.as_str(), *id), bytes.as_slice())?
                    .is_none()
                {
                    add(&mut counters, store, C_CUSTOMERS, 1)?;
                }
            }
            for (store, key, id) in &changes.links {
                lookup.insert((store.as_str(), key.as_str()), *id)?;
            }
            for (store, next) in &changes.next_customer {
                counters.insert((store.as_str(), C_NEXT_CUSTOMER), *next as i64)?;
            }
            tx.open_table(META)?
                .insert("processed_seq", &changes.processed.to_le_bytes()[..])?;
        }
        let mut timers = Vec::new();
        changes.plans.write(&tx, &mut timers)?;
        let started = std::time::Instant::now();
        changes.affinity.write(&tx)?;
        let affinity = started.elapsed();
        tx.commit()?;
        self.timer_feed.push(&timers);
        Ok(affinity)
    }

    /// Makes every earlier commit durable (used at shutdown after processor commits).
    pub fn sync(&self) -> Result<(), Error> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.commit()?;
        Ok(())
    }

    /// Figures for the given stores, in the given order.
    pub fn status(&self, stores: &[&str]) -> Result<Vec<StoreStatus>, Error> {
        let tx = self.db.begin_read()?;
        let c = tx.open_table(COUNTERS)?;
        let get = |s: &str, n: &str| -> Result<i64, Error> {
            Ok(c.get((s, n))?.map_or(0, |v| v.value()))
        };
        let mut in_quarantine = std::collections::HashMap::<String, i64>::new();
        for item in tx.open_table(QUARANTINE)?.iter()? {
            *in_quarantine
                .entry(item?.1.value().to_string())
                .or_default() += 1;
        }
        let paused = tx.open_table(PAUSED)?;
        let syncs = tx.open_table(SYNC)?;
        let mut out = Vec::new();
        for &s in stores {
            let pause = pause::read(&paused, s)?;
            let time = |n: &str| -> Result<Option<String>, Error> {
                Ok(c.get((s, n))?.map(|v| Timestamp(v.value()).to_rfc3339()))
            };
            out.push(StoreStatus {
                id: s.to_string(),
                mode: String::new(),
                paused_since: pause.as_ref().map(|p| p.since.to_rfc3339()),
                paused_by: pause.map(|p| p.source),
                webhooks: WebhookCounts {
                    accepted: get(s, C_ACCEPTED)?,
                    duplicate: get(s, C_DUPLICATE)?,
                    rejected: get(s, C_REJECTED)?,
                    quarantined: get(s, C_QUARANTINED)?,
                    ignored: get(s, C_IGNORED)?,
                },
                orders: get(s, C_ORDERS)?,
                customers: get(s, C_CUSTOMERS)?,
                last_webhook_at: time(C_LAST_WEBHOOK)?,
                last_rejected_at: time(C_LAST_REJECTED)?,
                in_quarantine: in_quarantine.get(s).copied().unwrap_or(0),
                touches: touches::figures(&tx, s)?,
                privacy: privacy::PrivacyFigures {
                    erased: get(s, privacy::C_ERASED)?,
                    exported: get(s, privacy::C_EXPORTED)?,
                    last_at: time(privacy::C_LAST_PRIVACY)?,
                    exports: privacy::exports(&self.exports_dir(), s),
                },
                reconciled: get(s, C_RECONCILED)?,
                fetched: get(s, C_FETCHED)?,
                sync: sync::read(&syncs, s)?.map(sync::SyncView::from),
            });
        }
        Ok(out)
    }

    /// An order's state as the processor left it.
    pub fn order(&self, store: &str, order_id: &str) -> Result<Option<OrderState>, Error> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(ORDERS)?;
        t.get((store, order_id))?
            .map(|v| records::decode_order(v.value()))
            .transpose()
    }

    /// The customer an email or platform customer id resolves to.
    pub fn customer_by(&self, store: &str, lookup: &Lookup) -> Result<Option<Customer>, Error> {
        let tx = self.db.begin_read()?;
        let l = tx.open_table(CUSTOMER_LOOKUP)?;
        let Some(id) = l.get((store, lookup.key().as_str()))?.map(|v| v.value()) else {
            return Ok(None);
        };
        let c = tx.open_table(CUSTOMERS)?;
        c.get((store, id))?
            .map(|v| records::decode_customer(v.value()))
            .transpose()
    }
}

/// Copies every table of `from` into the new, empty `to`, in one transaction.
fn copy_all(from: &Database, to: &Database) -> Result<(), Error> {
    fn copy<K: redb::Key + 'static, V: redb::Value + 'static>(
        from: &redb::ReadTransaction,
        to: &redb::WriteTransaction,
        def: redb::TableDefinition<'static, K, V>,
    ) -> Result<(), Error> {
        let mut out = to.open_table(def)?;
        match from.open_table(def) {
            Ok(t) => {
                for item in t.iter()? {
                    let (k, v) = item?;
                    out.insert(k.value(), v.value())?;
                }
                Ok(())
            }
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
    let (r, w) = (from.begin_read()?, to.begin_write()?);
    macro_rules! each {
        ($t:ident) => {
            copy(&r, &w, $t)?;
        };
    }
    each!(META);
    each_table!(each);
    w.commit()?;
    Ok(())
}

/// Meta key: the least sequence number the next event may have, kept when the last events
/// were removed (`Storage::erase_store`), so a number is never handed out twice.
const NEXT_SEQ: &str = "next_seq";

/// The sequence number the next stored event gets.
fn next_seq(
    events: &impl ReadableTable<u64, &'static [u8]>,
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<u64, Error> {
    let after_last = events.last()?.map_or(1, |(k, _)| k.value() + 1);
    let floor = meta.get(NEXT_SEQ)?.map_or(0, |v| read_u64(v.value()));
    Ok(after_last.max(floor))
}

/// How a customer is found: by normalized email or by the platform's customer id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Lookup {
    Email(String),
    PlatformId(String),
}

impl Lookup {
    fn key(&self) -> String {
        match self {
            Lookup::Email(e) => format!("email:{e}"),
            Lookup::PlatformId(i) => format!("id:{i}"),
        }
    }
}

/// The processor's read-only view (see [`Storage::snapshot`]).
pub struct Snapshot {
    meta: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    orders: redb::ReadOnlyTable<(&'static str, &'static str), &'static [u8]>,
    customers: redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    lookup: redb::ReadOnlyTable<(&'static str, &'static str), u64>,
    counters: redb::ReadOnlyTable<(&'static str, &'static str), i64>,
    catalog: redb::ReadOnlyTable<(&'static str, &'static str), &'static [u8]>,
    catalog_ids: redb::ReadOnlyTable<(&'static str, &'static str), &'static str>,
    handles: redb::ReadOnlyTable<(&'static str, &'static str, &'static str), ()>,
    product_nos: redb::ReadOnlyTable<(&'static str, &'static str), u32>,
    product_keys: redb::ReadOnlyTable<(&'static str, u32), &'static str>,
    items: redb::ReadOnlyTable<(&'static str, u8, u32), &'static [u8]>,
    pairs: redb::ReadOnlyTable<(&'static str, u8, u32, u32), &'static [u8]>,
    evidence: redb::ReadOnlyTable<(&'static str, &'static str), &'static [u8]>,
    timeline: redb::ReadOnlyTable<(&'static str, u64, i64, &'static str), ()>,
    pairings: redb::ReadOnlyTable<(&'static str, &'static str, &'static str), &'static [u8]>,
    feedback: redb::ReadOnlyTable<(&'static str, u32, u32, &'static str), &'static [u8]>,
    plans: redb::ReadOnlyTable<(&'static str, &'static str), &'static [u8]>,
    plan_queue: redb::ReadOnlyTable<(&'static str, &'static str), i64>,
    suppressions: redb::ReadOnlyTable<(&'static str, &'static str), &'static [u8]>,
    store_keys: redb::ReadOnlyTable<(&'static str, &'static str), &'static [u8]>,
    refunds: redb::ReadOnlyTable<(&'static str, u64), i64>,
    order_values: redb::ReadOnlyTable<(&'static str, u16), u64>,
    touches: redb::ReadOnlyTable<u64, &'static [u8]>,
    timers: redb::ReadOnlyTable<(i64, u64), ()>,
    order_touches: redb::ReadOnlyTable<(&'static str, &'static str, u64), ()>,
    sending: redb::ReadOnlyTable<u64, ()>,
    sent_log: redb::ReadOnlyTable<(&'static str, u64, i64, u64), &'static str>,
    tickets: redb::ReadOnlyTable<(&'static str, &'static str, &'static str), &'static [u8]>,
    recovery_notices: redb::ReadOnlyTable<u64, &'static [u8]>,
    offer_responses: redb::ReadOnlyTable<(&'static str, &'static str), &'static [u8]>,
    opens: redb::ReadOnlyTable<u64, i64>,
    attempts: redb::ReadOnlyTable<u64, (u32, i64)>,
    receipts: redb::ReadOnlyTable<u64, &'static [u8]>,
    disabled: redb::ReadOnlyTable<(&'static str, &'static str), &'static str>,
    dead_letters: redb::ReadOnlyTable<(&'static str, u64), &'static str>,
    clicks: redb::ReadOnlyTable<(u64, i64), &'static str>,
    resent: redb::ReadOnlyTable<u64, ()>,
    mirrors: redb::ReadOnlyTable<u64, u64>,
    deliveries: redb::ReadOnlyTable<(&'static str, &'static str), i64>,
    paused: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    conversions: redb::ReadOnlyTable<(&'static str, &'static str), &'static [u8]>,
    events: redb::ReadOnlyTable<u64, &'static [u8]>,
    bodies: redb::ReadOnlyTable<u64, &'static [u8]>,
}

impl Snapshot {
    pub fn processed_seq(&self) -> Result<u64, Error> {
        Ok(self
            .meta
            .get("processed_seq")?
            .map_or(0, |v| read_u64(v.value())))
    }

    pub fn order(&self, store: &str, id: &str) -> Result<Option<OrderState>, Error> {
        self.orders
            .get((store, id))?
            .map(|v| records::decode_order(v.value()))
            .transpose()
    }

    /// Calls `f(id, state)` for every order record of a store (one that only a refund or a
    /// notice made has no `order` yet), in id order. Reads
    /// each record once (a million take a few seconds).
    pub fn each_order(
        &self,
        store: &str,
        mut f: impl FnMut(&str, &OrderState),
    ) -> Result<(), Error> {
        for item in self.orders.range((store, "")..)? {
            let (k, v) = item?;
            let (s, id) = k.value();
            if s != store {
                break;
            }
            f(id, &records::decode_order(v.value())?);
        }
        Ok(())
    }

    pub fn customer(&self, store: &str, id: CustomerId) -> Result<Option<Customer>, Error> {
        self.customers
            .get((store, id))?
            .map(|v| records::decode_customer(v.value()))
            .transpose()
    }

    pub fn find_customer(&self, store: &str, lookup: &Lookup) -> Result<Option<CustomerId>, Error> {
        Ok(self
            .lookup
            .get((store, lookup.key().as_str()))?
            .map(|v| v.value()))
    }

    /// The next unused opaque customer id of a store.
    pub fn next_customer_id(&self, store: &str) -> Result<CustomerId, Error> {
        let next = self
            .counters
            .get((store, C_NEXT_CUSTOMER))?
            .map_or(1, |v| v.value());
        Ok(next.max(1) as CustomerId)
    }
}

/// One processor batch's effects, encoded before the write transaction begins.
#[derive(Default)]
pub struct Changes {
    orders: Vec<(String, String, Vec<u8>, bool)>,
    customers: Vec<(String, CustomerId, Vec<u8>)>,
    links: Vec<(String, String, CustomerId)>,
    next_customer: Vec<(String, CustomerId)>,
    pub affinity: affinity::AffinityChanges,
    pub plans: plans::PlanChanges,
    processed: u64,
}

impl Changes {
    pub fn new(processed: u64) -> Changes {
        Changes {
            processed,
            ..Changes::default()
        }
    }

    /// `newly_known`: this batch saw the order itself for the first time (a refund or a
    /// notice can come first), which is when the store's order count goes up.
    pub fn put_order(
        &mut self,
        store: &str,
        id: &str,
        o: &OrderState,
        newly_known: bool,
    ) -> Result<(), Error> {
        self.orders.push((
            store.into(),
            id.into(),
            records::encode_order(o)?,
            newly_known,
        ));
        Ok(())
    }

    pub fn put_customer(&mut self, store: &str, c: &Customer) -> Result<(), Error> {
        self.customers
            .push((store.into(), c.id, records::encode_customer(c)?));
        Ok(())
    }

    /// Points a lookup at a customer; the caller checks it has no owner yet.
    pub fn link(&mut self, store: &str, lookup: &Lookup, id: CustomerId) {
        self.links.push((store.into(), lookup.key(), id));
    }

    pub fn set_next_customer_id(&mut self, store: &str, next: CustomerId) {
        self.next_customer.push((store.into(), next));
    }
}

fn add(
    t: &mut redb::Table<'_, (&'static str, &'static str), i64>,
    store: &str,
    name: &str,
    delta: i64,
) -> Result<(), Error> {
    let cur = t.get((store, name))?.map_or(0, |v| v.value());
    t.insert((store, name), cur + delta)?;
    Ok(())
}

fn missing_body(seq: u64) -> Error {
    Error::Codec(format!(
        "event {seq}: its head or body is missing from the database"
    ))
}

fn read_u32(b: &[u8]) -> u32 {
    b.try_into().map(u32::from_le_bytes).unwrap_or(0)
}

fn read_u64(b: &[u8]) -> u64 {
    b.try_into().map(u64::from_le_bytes).unwrap_or(0)
}
