//! Durable touch timers: one record per planned touch, indexed by (due time, touch id)
//! while it is pending, and by order so a plan's revision can replace its pending touches.
//! Every state change is a committed transaction (issue 6; the scheduler that fires them
//! is built on these).

use redb::{Durability, ReadableTable};
use serde::{Deserialize, Serialize};

use super::tables::*;
use super::{codec, DayCount, Error, Snapshot, Storage, TouchFigures};
use crate::engine::due::Anchors;
use crate::engine::lifecycle::{PlanRecord, Status};
use crate::engine::plan::{Channel, TouchKind};
use crate::engine::Timestamp;

const TOUCH_V1: u8 = 1;
const NEXT_TOUCH_ID: &str = "next_touch_id";
/// Timer keys the feed holds before it collapses them into "rescan from the earliest".
const FEED_MAX: usize = 65_536;

/// A timer's key: (due time ms, touch id).
pub type TimerKey = (i64, u64);

/// The timers written since the scheduler last looked, so its in-memory wheel learns of
/// touches that fall due inside the horizon it already loaded (a new order's, a
/// deferral's) without scanning. Filled after each commit that writes timers.
#[derive(Default)]
pub struct TimerFeed(std::sync::Mutex<Feed>);

/// What the scheduler takes from the feed.
#[derive(Debug, Default, PartialEq)]
pub struct Feed {
    pub keys: Vec<TimerKey>,
    /// Set when more keys were written than the feed holds (nobody took them, or a flood):
    /// every timer from this due time on may be new.
    pub rescan_from: Option<i64>,
}

impl TimerFeed {
    pub(super) fn push(&self, keys: &[TimerKey]) {
        if keys.is_empty() {
            return;
        }
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let earliest = keys.iter().map(|k| k.0).min();
        if f.rescan_from.is_some() || f.keys.len() + keys.len() > FEED_MAX {
            let from = f
                .keys
                .iter()
                .map(|k| k.0)
                .chain(earliest)
                .chain(f.rescan_from)
                .min();
            f.keys = Vec::new();
            f.rescan_from = from;
        } else {
            f.keys.extend_from_slice(keys);
        }
    }
}

/// Where a touch stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TouchState {
    Scheduled,
    /// Due again at the record's `due_at`.
    Deferred {
        reason: String,
    },
    /// Handed to a channel; not yet known to be sent (reconciled at start).
    Sending,
    Sent {
        at: Timestamp,
    },
    Skipped {
        reason: String,
    },
    /// The channel refused it for good.
    Dead {
        reason: String,
    },
}

impl TouchState {
    pub fn pending(&self) -> bool {
        matches!(self, TouchState::Scheduled | TouchState::Deferred { .. })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            TouchState::Scheduled => "scheduled",
            TouchState::Deferred { .. } => "deferred",
            TouchState::Sending => "sending",
            TouchState::Sent { .. } => "sent",
            TouchState::Skipped { .. } => "skipped",
            TouchState::Dead { .. } => "dead",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TouchRecord {
    pub store: String,
    pub order: String,
    pub customer: Option<u64>,
    pub kind: TouchKind,
    pub channel: Channel,
    /// When the plan put it.
    pub planned_due: Timestamp,
    /// When it is due now (a deferral moves it).
    pub due_at: Timestamp,
    pub after_delivery: bool,
    /// It carries the plan's offer (a stock check applies at the due time).
    pub carries_offer: bool,
    pub state: TouchState,
}

impl TouchRecord {
    /// The touch as `on_due` decides it; `order_at` is its plan's order time.
    pub fn due(&self, order_at: Timestamp) -> crate::engine::due::Due {
        crate::engine::due::Due {
            kind: self.kind,
            channel: self.channel,
            due_at: self.due_at,
            order_at,
            after_delivery: self.after_delivery,
            carries_offer: self.carries_offer,
        }
    }
}

fn encode(r: &TouchRecord) -> Result<Vec<u8>, Error> {
    codec::encode(TOUCH_V1, r)
}

pub(super) fn decode(b: &[u8]) -> Result<TouchRecord, Error> {
    codec::decode("touch record", TOUCH_V1, b)
}

/// A touch's record from any handle on the touches table.
fn read(
    touches: &impl ReadableTable<u64, &'static [u8]>,
    id: u64,
) -> Result<Option<TouchRecord>, Error> {
    touches.get(id)?.map(|v| decode(v.value())).transpose()
}

const DAY: i64 = 86_400_000;

/// The pending-timer index and its per-day counts, kept in step inside one transaction.
struct Timers<'t> {
    keys: redb::Table<'t, (i64, u64), ()>,
    counts: redb::Table<'t, (&'static str, i64, &'static str), u64>,
}

impl<'t> Timers<'t> {
    fn open(tx: &'t redb::WriteTransaction) -> Result<Timers<'t>, Error> {
        Ok(Timers {
            keys: tx.open_table(TIMERS)?,
            counts: tx.open_table(PENDING_COUNTS)?,
        })
    }

    /// `t` pending at its `due_at`.
    fn add(&mut self, id: u64, t: &TouchRecord) -> Result<(), Error> {
        if self.keys.insert((t.due_at.0, id), ())?.is_none() {
            self.count(t, 1)?;
        }
        Ok(())
    }

    /// `t` (as it was when added) no longer pending there.
    fn remove(&mut self, id: u64, t: &TouchRecord) -> Result<(), Error> {
        if self.keys.remove((t.due_at.0, id))?.is_some() {
            self.count(t, -1)?;
        }
        Ok(())
    }

    fn count(&mut self, t: &TouchRecord, delta: i64) -> Result<(), Error> {
        let k = (
            t.store.as_str(),
            t.due_at.0.div_euclid(DAY),
            t.kind.as_str(),
        );
        let n = self.counts.get(k)?.map_or(0, |v| v.value());
        match n.saturating_add_signed(delta) {
            0 => self.counts.remove(k)?,
            n => self.counts.insert(k, n)?,
        };
        Ok(())
    }
}

/// A store's touch figures for the status.
pub(super) fn figures(tx: &redb::ReadTransaction, store: &str) -> Result<TouchFigures, Error> {
    let mut f = TouchFigures::default();
    for item in tx
        .open_table(PENDING_COUNTS)?
        .range((store, i64::MIN, "")..=(store, i64::MAX, "~"))?
    {
        let (k, v) = item?;
        let (_, day, kind) = k.value();
        let n = v.value();
        let day = Timestamp(day * DAY).to_rfc3339()[..10].to_string();
        if f.pending_by_day.last().is_none_or(|d| d.day != day) {
            f.pending_by_day.push(DayCount {
                day,
                ..Default::default()
            });
        }
        let d = f.pending_by_day.last_mut().expect("pushed above");
        d.total += n;
        *d.kinds.entry(kind.to_string()).or_default() += n;
        f.pending += n;
    }
    for item in tx
        .open_table(OUTCOME_COUNTS)?
        .range((store, "", "")..=(store, "~", "~"))?
    {
        let (k, v) = item?;
        let (_, outcome, code) = k.value();
        if outcome == "channel" {
            if let Some((ch, what)) = code.split_once(':') {
                let c = f.channels.entry(ch.to_string()).or_default();
                match what {
                    "sent" => c.sent += v.value(),
                    "retried" => c.retried += v.value(),
                    _ => c.dead += v.value(),
                }
            }
            continue;
        }
        let map = match outcome {
            "sent" => &mut f.sent,
            "deferred" => &mut f.deferred,
            "dead" => &mut f.dead,
            _ => &mut f.skipped,
        };
        map.insert(code.to_string(), v.value());
    }
    Ok(f)
}

/// Counts the pending timers per day and kind, once: a database whose timers were written
/// before the counts were kept gets them here (at open).
pub(super) fn count_pending_once(tx: &redb::WriteTransaction) -> Result<(), Error> {
    const FLAG: &str = "pending_counts_v1";
    let mut meta = tx.open_table(META)?;
    if meta.get(FLAG)?.is_some() {
        return Ok(());
    }
    let touches = tx.open_table(TOUCHES)?;
    let keys: Vec<TimerKey> = {
        let timers = tx.open_table(TIMERS)?;
        let mut v = Vec::new();
        for item in timers.iter()? {
            v.push(item?.0.value());
        }
        v
    };
    let mut timers = Timers::open(tx)?;
    for (due, id) in keys {
        if let Some(t) = read(&touches, id)? {
            // Counted under the key the timer has (a stale record keeps its index entry).
            let t = TouchRecord {
                due_at: Timestamp(due),
                ..t
            };
            timers.count(&t, 1)?;
        }
    }
    meta.insert(FLAG, &[1u8][..])?;
    Ok(())
}

/// Counts one outcome of a touch of `store` under its rule `code`.
fn count_outcome(
    table: &mut redb::Table<'_, (&'static str, &'static str, &'static str), u64>,
    store: &str,
    outcome: &str,
    code: &str,
) -> Result<(), Error> {
    let n = table.get((store, outcome, code))?.map_or(0, |v| v.value());
    table.insert((store, outcome, code), n + 1)?;
    Ok(())
}

/// The next touch id, from any handle on the meta table.
fn next_id(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<u64, Error> {
    Ok(meta.get(NEXT_TOUCH_ID)?.map_or(1, |v| {
        u64::from_le_bytes(v.value().try_into().unwrap_or([0; 8])).max(1)
    }))
}

/// A notice to the store (not a message to the customer): a touch of `kind` for its
/// webhook, due at `now`, in `tx`. Not in any order's index (no plan replaces it).
/// Returns its id; its timer key goes to `written`.
pub(super) fn schedule_notice(
    tx: &redb::WriteTransaction,
    store: &str,
    kind: TouchKind,
    customer: Option<u64>,
    order: &str,
    now: Timestamp,
    written: &mut Vec<TimerKey>,
) -> Result<u64, Error> {
    let mut meta = tx.open_table(META)?;
    let id = next_id(&meta)?;
    meta.insert(NEXT_TOUCH_ID, &(id + 1).to_le_bytes()[..])?;
    let t = TouchRecord {
        store: store.to_string(),
        order: order.to_string(),
        customer,
        kind,
        channel: Channel::Webhook,
        planned_due: now,
        due_at: now,
        after_delivery: false,
        carries_offer: false,
        state: TouchState::Scheduled,
    };
    tx.open_table(TOUCHES)?.insert(id, encode(&t)?.as_slice())?;
    Timers::open(tx)?.add(id, &t)?;
    written.push((now.0, id));
    Ok(id)
}

/// Brings the touches `ids` that still wait for a support ticket (deferred with that
/// reason, due later than `now`) forward to `now`, where they are decided again.
pub(super) fn bring_forward_ticket_waits(
    tx: &redb::WriteTransaction,
    ids: &[u64],
    now: Timestamp,
    written: &mut Vec<TimerKey>,
) -> Result<usize, Error> {
    let mut touches = tx.open_table(TOUCHES)?;
    let mut timers = Timers::open(tx)?;
    let mut moved = 0;
    for &id in ids {
        let Some(t) = read(&touches, id)? else {
            continue;
        };
        let waits = matches!(&t.state, TouchState::Deferred { reason }
            if crate::engine::due::waits_for_ticket(reason));
        if !waits || t.due_at <= now {
            continue;
        }
        move_pending(&mut touches, &mut timers, id, t, now, written)?;
        moved += 1;
    }
    Ok(moved)
}

/// Touches of a customer whose data is erased: those not yet sent are cancelled (their
/// timers go), dead letters are dropped (nothing can be retried to no one), and every
/// reason that quotes their contact is scrubbed. Returns how many were cancelled.
pub(super) fn erase_in(
    tx: &redb::WriteTransaction,
    ids: &[u64],
    who: &super::privacy::Identity,
) -> Result<usize, Error> {
    let mut touches = tx.open_table(TOUCHES)?;
    let mut timers = Timers::open(tx)?;
    let mut outcomes = tx.open_table(OUTCOME_COUNTS)?;
    let mut dead = tx.open_table(DEAD_LETTERS)?;
    let mut attempts = tx.open_table(ATTEMPTS)?;
    let mut cancelled = 0;
    for &id in ids {
        let Some(mut t) = read(&touches, id)? else {
            continue;
        };
        if t.state.pending() {
            timers.remove(id, &t)?;
            attempts.remove(id)?;
            count_outcome(&mut outcomes, &t.store, "skipped", "erased")?;
            t.state = TouchState::Skipped {
                reason: "the customer's data was erased".into(),
            };
            cancelled += 1;
        }
        if let TouchState::Dead { reason } = &mut t.state {
            dead.remove((t.store.as_str(), id))?;
            *reason = who.scrub(reason);
        }
        if let TouchState::Skipped { reason } | TouchState::Deferred { reason } = &mut t.state {
            *reason = who.scrub(reason);
        }
        touches.insert(id, encode(&t)?.as_slice())?;
    }
    Ok(cancelled)
}

/// Moves the next touch id past every id the database a restore replaces may have used
/// (`at_least`) and then `gap` further: ids are in the links and idempotency keys of
/// messages already sent, also those sent after the backup was taken, which the restored
/// database does not know of, and must never name another touch.
pub(crate) fn skip_touch_ids(
    tx: &redb::WriteTransaction,
    at_least: u64,
    gap: u64,
) -> Result<u64, Error> {
    let mut meta = tx.open_table(META)?;
    let next = next_id(&meta)?.max(at_least).saturating_add(gap);
    meta.insert(NEXT_TOUCH_ID, &next.to_le_bytes()[..])?;
    Ok(next)
}

/// The next touch id of an open database.
pub(crate) fn next_touch_id_of(db: &redb::Database) -> Result<u64, Error> {
    use redb::ReadableDatabase;
    let tx = db.begin_read()?;
    let meta = tx.open_table(META)?;
    next_id(&meta)
}

/// What one engagement delivery writes (see [`Storage::record_engagement`]).
#[derive(Debug, Default)]
pub struct EngagementWrites {
    pub opens: Vec<(u64, Timestamp)>,
    pub clicks: Vec<(u64, Timestamp)>,
    pub suppressions: Vec<(String, super::plans::SuppressionRow)>,
}

fn click_in(
    tx: &redb::WriteTransaction,
    id: u64,
    at: Timestamp,
    device: &str,
) -> Result<(), Error> {
    // Keyed by the time: the same click reported again (a provider's retry) is one click.
    tx.open_table(CLICKS)?.insert((id, at.0), device)?;
    Ok(())
}

fn open_in(tx: &redb::WriteTransaction, id: u64, at: Timestamp) -> Result<(), Error> {
    let mut opens = tx.open_table(OPENS)?;
    let first = opens.get(id)?.map_or(at.0, |v| v.value().min(at.0));
    opens.insert(id, first)?;
    Ok(())
}

/// The messages that carry their plan's offer (the review, the win-back and the
/// anticipation note do not); the thank-you page shows it.
pub fn message_carries_offer(kind: TouchKind) -> bool {
    matches!(
        kind,
        TouchKind::Touch1 | TouchKind::Sms | TouchKind::Touch2 | TouchKind::Touch3
    )
}

/// The touches a plan wants pending: none while held out or once the sequence is over;
/// the thank-you page is served, not scheduled; what was sent stays sent.
/// The timers a plan record asks for (the thank-you page offer is shown, not sent: no
/// timer), as the planner schedules them.
pub fn wanted(store: &str, rec: &PlanRecord) -> Vec<TouchRecord> {
    if rec.plan.holdout || rec.status != Status::Active {
        return Vec::new();
    }
    let has_offer = rec.plan.offer.is_some();
    rec.plan
        .touches
        .iter()
        .filter(|t| t.kind != TouchKind::Page && !rec.sent.contains(&t.kind))
        .map(|t| TouchRecord {
            store: store.to_string(),
            order: rec.order_id.clone(),
            customer: rec.customer,
            kind: t.kind,
            channel: t.channel,
            planned_due: t.due_at,
            due_at: t.due_at,
            after_delivery: t.after_delivery,
            carries_offer: has_offer && message_carries_offer(t.kind),
            state: TouchState::Scheduled,
        })
        .collect()
}

/// Brings an order's pending touches in line with its plan record, inside the planner's
/// transaction. An ended or cancelled sequence keeps its timers: at the due time they are
/// skipped with that reason, which the record then shows.
pub(super) fn sync(
    tx: &redb::WriteTransaction,
    store: &str,
    rec: &PlanRecord,
    written: &mut Vec<TimerKey>,
) -> Result<(), Error> {
    if rec.status != Status::Active {
        return Ok(());
    }
    let mut by_order = tx.open_table(ORDER_TOUCHES)?;
    let mut touches = tx.open_table(TOUCHES)?;
    let mut timers = Timers::open(tx)?;
    let mut outcomes = tx.open_table(OUTCOME_COUNTS)?;
    let mut pending: Vec<(u64, TouchRecord)> = Vec::new();
    // Kinds already decided (the order's index holds only the current plan's touches).
    let mut done = Vec::new();
    for item in by_order
        .range((store, rec.order_id.as_str(), 0u64)..=(store, rec.order_id.as_str(), u64::MAX))?
    {
        let id = item?.0.value().2;
        let Some(t) = read(&touches, id)? else {
            continue;
        };
        if t.state.pending() {
            pending.push((id, t));
        } else {
            // Being sent, sent, skipped by a rule or dead: decided, never scheduled again.
            done.push(t.kind);
        }
    }
    let mut want = wanted(store, rec);
    want.retain(|t| !done.contains(&t.kind));
    let key = |t: &TouchRecord| (t.kind, t.planned_due, t.channel, t.carries_offer);
    let have: Vec<_> = pending.iter().map(|(_, t)| key(t)).collect();
    if have == want.iter().map(key).collect::<Vec<_>>() {
        return Ok(());
    }
    for (id, mut t) in pending {
        timers.remove(id, &t)?;
        // Replaced: out of the order's index (the record stays, with the reason).
        by_order.remove((store, rec.order_id.as_str(), id))?;
        count_outcome(&mut outcomes, store, "skipped", "replanned")?;
        t.state = TouchState::Skipped {
            reason: format!("replaced by plan revision {}", rec.revision),
        };
        touches.insert(id, encode(&t)?.as_slice())?;
    }
    let mut meta = tx.open_table(META)?;
    let mut next = next_id(&meta)?;
    for t in want {
        let id = next;
        next += 1;
        touches.insert(id, encode(&t)?.as_slice())?;
        timers.add(id, &t)?;
        written.push((t.due_at.0, id));
        by_order.insert((store, rec.order_id.as_str(), id), ())?;
    }
    meta.insert(NEXT_TOUCH_ID, &next.to_le_bytes()[..])?;
    Ok(())
}

/// Moves an order's pending delivery-anchored touches (the review request, touch-2) to
/// where `anchors` puts them, inside the caller's transaction. A touch waiting for the
/// delivery is scheduled again.
pub(super) fn reanchor(
    tx: &redb::WriteTransaction,
    store: &str,
    order: &str,
    anchors: &Anchors,
    written: &mut Vec<TimerKey>,
) -> Result<(), Error> {
    let by_order = tx.open_table(ORDER_TOUCHES)?;
    let mut touches = tx.open_table(TOUCHES)?;
    let mut timers = Timers::open(tx)?;
    let mut attempts = tx.open_table(ATTEMPTS)?;
    for item in by_order.range((store, order, 0u64)..=(store, order, u64::MAX))? {
        let id = item?.0.value().2;
        let Some(mut t) = read(&touches, id)?.filter(|t| t.state.pending()) else {
            continue;
        };
        let Some(to) = anchors
            .of(t.kind, t.after_delivery)
            .filter(|to| *to != t.due_at)
        else {
            continue;
        };
        t.state = TouchState::Scheduled;
        move_pending(&mut touches, &mut timers, id, t, to, written)?;
        // Moved: its grace counts from the new time.
        attempts.remove(id)?;
    }
    Ok(())
}

/// Moves pending touch `id` (its record `t`, with any new state) to `to`: its timer, its
/// record, and the key the scheduler's wheel learns it from.
fn move_pending(
    touches: &mut redb::Table<'_, u64, &'static [u8]>,
    timers: &mut Timers<'_>,
    id: u64,
    mut t: TouchRecord,
    to: Timestamp,
    written: &mut Vec<TimerKey>,
) -> Result<(), Error> {
    timers.remove(id, &t)?;
    t.due_at = to;
    touches.insert(id, encode(&t)?.as_slice())?;
    timers.add(id, &t)?;
    written.push((to.0, id));
    Ok(())
}

impl Snapshot {
    /// An order's touches, oldest first.
    pub fn touches_of(&self, store: &str, order: &str) -> Result<Vec<(u64, TouchRecord)>, Error> {
        let mut out = Vec::new();
        for item in self
            .order_touches
            .range((store, order, 0u64)..=(store, order, u64::MAX))?
        {
            let id = item?.0.value().2;
            if let Some(t) = read(&self.touches, id)? {
                out.push((id, t));
            }
        }
        Ok(out)
    }

    /// Pending touches due before `until`, earliest first, at most `limit`.
    pub fn due_before(
        &self,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<(Timestamp, u64)>, Error> {
        Ok(self
            .timers_between((i64::MIN, 0), (until.0, 0), limit)?
            .into_iter()
            .map(|(due, id)| (Timestamp(due), id))
            .collect())
    }

    /// Timer keys in `from..until`, in order, at most `limit`.
    pub fn timers_between(
        &self,
        from: TimerKey,
        until: TimerKey,
        limit: usize,
    ) -> Result<Vec<TimerKey>, Error> {
        let mut out = Vec::new();
        if from >= until {
            return Ok(out);
        }
        for item in self.timers.range(from..until)?.take(limit) {
            out.push(item?.0.value());
        }
        Ok(out)
    }

    /// How many touches are pending with a due time before `until`.
    pub fn count_due_before(&self, until: Timestamp) -> Result<u64, Error> {
        let mut n = 0;
        for item in self.timers.range((i64::MIN, 0u64)..(until.0, 0u64))? {
            item?;
            n += 1;
        }
        Ok(n)
    }

    /// How many touches are pending.
    pub fn pending_touches(&self) -> Result<u64, Error> {
        use redb::ReadableTableMetadata;
        Ok(self.timers.len()?)
    }
}

impl Snapshot {
    /// The id the next scheduled touch gets (one planning pass numbers its touches in
    /// order).
    pub fn next_touch_id(&self) -> Result<u64, Error> {
        next_id(&self.meta)
    }

    pub fn touch(&self, id: u64) -> Result<Option<TouchRecord>, Error> {
        read(&self.touches, id)
    }

    /// The customer's last `n` emails sent, newest first (touch ids).
    pub fn recent_emails(&self, store: &str, customer: u64, n: usize) -> Result<Vec<u64>, Error> {
        let mut out = Vec::new();
        for item in self
            .sent_log
            .range((store, customer, i64::MIN, 0u64)..=(store, customer, i64::MAX, u64::MAX))?
            .rev()
        {
            let (k, v) = item?;
            if v.value() == "email" {
                out.push(k.value().3);
                if out.len() == n {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Failed attempts so far and when the touch was due at the first of them, for a touch
    /// a provider has not taken yet.
    pub fn attempts(&self, id: u64) -> Result<Option<(u32, Timestamp)>, Error> {
        Ok(self
            .attempts
            .get(id)?
            .map(|v| (v.value().0, Timestamp(v.value().1))))
    }

    /// The clicks on touch `id`'s tracked link: (time, device class).
    pub fn clicks(&self, id: u64) -> Result<Vec<(Timestamp, String)>, Error> {
        let mut out = Vec::new();
        for item in self.clicks.range((id, i64::MIN)..=(id, i64::MAX))? {
            let (k, v) = item?;
            out.push((Timestamp(k.value().1), v.value().to_string()));
        }
        Ok(out)
    }

    /// How touch `id` went out.
    pub fn receipt(&self, id: u64) -> Result<Option<Receipt>, Error> {
        self.receipts
            .get(id)?
            .map(|v| codec::decode("receipt", RECEIPT_V1, v.value()))
            .transpose()
    }

    /// A store's dead letters, oldest first: (touch id, record).
    pub fn dead_letters(&self, store: &str) -> Result<Vec<(u64, TouchRecord)>, Error> {
        let mut out = Vec::new();
        for item in self.dead_letters.range((store, 0u64)..=(store, u64::MAX))? {
            let id = item?.0.value().1;
            if let Some(t) = self.touch(id)? {
                out.push((id, t));
            }
        }
        Ok(out)
    }

    /// The touch a webhook copy copies, if `id` is one.
    pub fn mirror_of(&self, id: u64) -> Result<Option<u64>, Error> {
        Ok(self.mirrors.get(id)?.map(|v| v.value()))
    }

    /// Why a channel of a store is disabled, if it is.
    pub fn disabled(&self, store: &str, channel: &str) -> Result<Option<String>, Error> {
        Ok(self
            .disabled
            .get((store, channel))?
            .map(|v| v.value().to_string()))
    }

    /// When the customer opened the email of touch `id`, if reported.
    pub fn opened(&self, id: u64) -> Result<Option<Timestamp>, Error> {
        Ok(self.opens.get(id)?.map(|v| Timestamp(v.value())))
    }

    /// Touches handed to a channel and not recorded as sent.
    pub fn sending(&self) -> Result<Vec<u64>, Error> {
        let mut out = Vec::new();
        for item in self.sending.iter()? {
            out.push(item?.0.value());
        }
        Ok(out)
    }

    /// A customer's messages since `since`: (when, channel).
    pub fn sent_messages(
        &self,
        store: &str,
        customer: u64,
        since: Timestamp,
    ) -> Result<Vec<(Timestamp, Channel)>, Error> {
        let mut out = Vec::new();
        for item in self
            .sent_log
            .range((store, customer, since.0, 0u64)..=(store, customer, i64::MAX, u64::MAX))?
        {
            let (k, v) = item?;
            let channel = match v.value() {
                "sms" => Channel::Sms,
                "webhook" => Channel::Webhook,
                "page" => Channel::Page,
                _ => Channel::Email,
            };
            out.push((Timestamp(k.value().2), channel));
        }
        Ok(out)
    }
}

/// What the scheduler decided for a due touch, to record.
#[derive(Clone, Debug, PartialEq)]
pub enum Settle {
    Defer {
        until: Timestamp,
        reason: String,
        code: &'static str,
    },
    Skip {
        reason: String,
        code: &'static str,
    },
    /// A provider did not take it: due again at `until`, one more failed attempt.
    Retry {
        until: Timestamp,
        reason: String,
        /// When the touch was due at this attempt: the first one's starts the grace
        /// beyond which it is skipped as stale rather than arriving late.
        due: Timestamp,
        /// The channel that failed, for the per-channel counts.
        via: &'static str,
    },
    /// Refused for good: a dead letter. `disable` names a channel of the touch's store to
    /// disable with this reason (a webhook endpoint that answered 410).
    Dead {
        reason: String,
        disable: Option<&'static str>,
        /// The channel that refused it, where one did.
        via: Option<&'static str>,
    },
}

/// How a touch went out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub channel: String,
    /// The provider's id for the message, where it gives one.
    pub message_id: Option<String>,
    /// From the request to the provider's answer.
    pub latency_us: u64,
    /// Failed attempts before this one.
    pub retries: u32,
}

const RECEIPT_V1: u8 = 1;

impl Receipt {
    /// Appended to the outbox file.
    pub fn outbox() -> Receipt {
        Receipt {
            channel: "outbox".into(),
            message_id: None,
            latency_us: 0,
            retries: 0,
        }
    }
}

impl Storage {
    /// Marks due touches as being sent, durably, before any is handed to a channel (so a
    /// crash leaves them in `sending`, to reconcile with the channel). Returns those that
    /// were still pending.
    /// Each touch is given with the due time it was decided at (its timer key): one moved
    /// since (a delivery re-anchored it) is left for its new time.
    pub fn begin_sending(&self, keys: &[TimerKey]) -> Result<Vec<(u64, TouchRecord)>, Error> {
        let tx = self.db.begin_write()?;
        let mut out = Vec::new();
        {
            let mut touches = tx.open_table(TOUCHES)?;
            let mut timers = Timers::open(&tx)?;
            let mut sending = tx.open_table(SENDING)?;
            for &(due, id) in keys {
                let Some(mut t) = read(&touches, id)? else {
                    continue;
                };
                if !t.state.pending() || t.due_at.0 != due {
                    continue;
                }
                timers.remove(id, &t)?;
                t.state = TouchState::Sending;
                touches.insert(id, encode(&t)?.as_slice())?;
                sending.insert(id, ())?;
                out.push((id, t));
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Records touches as sent at `at` (durably): their plans learn which kinds went out,
    /// their customers' message logs grow.
    pub fn finish_sent(&self, ids: &[u64], at: Timestamp) -> Result<(), Error> {
        let receipts: Vec<(u64, Receipt)> = ids.iter().map(|&id| (id, Receipt::outbox())).collect();
        self.finish_sent_via(&receipts, at)
    }

    /// [`Storage::finish_sent`] with how each went out (kept for `explain` and the
    /// status's per-channel counts).
    pub fn finish_sent_via(&self, sent: &[(u64, Receipt)], at: Timestamp) -> Result<(), Error> {
        let tx = self.db.begin_write()?;
        {
            let mut touches = tx.open_table(TOUCHES)?;
            let mut sending = tx.open_table(SENDING)?;
            let mut log = tx.open_table(SENT_LOG)?;
            let mut plans = tx.open_table(PLANS)?;
            let mut outcomes = tx.open_table(OUTCOME_COUNTS)?;
            let mut receipts = tx.open_table(RECEIPTS)?;
            let mut attempts = tx.open_table(ATTEMPTS)?;
            let mirrors = tx.open_table(MIRRORS)?;
            for (id, receipt) in sent {
                let id = *id;
                let Some(mut t) = read(&touches, id)? else {
                    continue;
                };
                if t.state != TouchState::Sending {
                    continue;
                }
                t.state = TouchState::Sent { at };
                touches.insert(id, encode(&t)?.as_slice())?;
                count_outcome(&mut outcomes, &t.store, "sent", t.kind.as_str())?;
                count_outcome(
                    &mut outcomes,
                    &t.store,
                    "channel",
                    &format!("{}:sent", receipt.channel),
                )?;
                let mut receipt = receipt.clone();
                receipt.retries = attempts.remove(id)?.map_or(0, |v| v.value().0);
                receipts.insert(id, codec::encode(RECEIPT_V1, &receipt)?.as_slice())?;
                sending.remove(id)?;
                // A copy for the store's webhook, or a notice to the store, is no message
                // to the customer: not in their log (the caps), nor in a plan.
                let mirror = mirrors.get(id)?.is_some();
                if mirror || t.kind == TouchKind::Recovery {
                    continue;
                }
                if let Some(c) = t.customer {
                    log.insert((t.store.as_str(), c, at.0, id), t.channel.as_str())?;
                }
                let key = (t.store.as_str(), t.order.as_str());
                let rec = plans
                    .get(key)?
                    .map(|v| super::plans::decode_plan(v.value()))
                    .transpose()?;
                if let Some(mut rec) = rec {
                    if !rec.sent.contains(&t.kind) {
                        rec.sent.push(t.kind);
                        plans.insert(key, super::plans::encode_plan(&rec)?.as_slice())?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Records deferrals (the touch is due again later) and skips. A pending touch is given
    /// with the due time it was decided at (its timer key): one moved since is left alone.
    pub fn settle(&self, decisions: &[(TimerKey, Settle)]) -> Result<(), Error> {
        let mut written = Vec::new();
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            let mut touches = tx.open_table(TOUCHES)?;
            let mut timers = Timers::open(&tx)?;
            let mut sending = tx.open_table(SENDING)?;
            let mut outcomes = tx.open_table(OUTCOME_COUNTS)?;
            let mut attempts = tx.open_table(ATTEMPTS)?;
            let mut disabled = tx.open_table(DISABLED)?;
            let mut dead = tx.open_table(DEAD_LETTERS)?;
            for ((due, id), d) in decisions {
                let Some(mut t) = read(&touches, *id)? else {
                    continue;
                };
                let moved = t.state.pending() && t.due_at.0 != *due;
                if moved || !(t.state.pending() || t.state == TouchState::Sending) {
                    continue;
                }
                timers.remove(*id, &t)?;
                sending.remove(*id)?;
                match d {
                    Settle::Defer {
                        until,
                        reason,
                        code,
                    } => {
                        count_outcome(&mut outcomes, &t.store, "deferred", code)?;
                        t.due_at = *until;
                        t.state = TouchState::Deferred {
                            reason: reason.clone(),
                        };
                        timers.add(*id, &t)?;
                        written.push((t.due_at.0, *id));
                    }
                    Settle::Skip { reason, code } => {
                        count_outcome(&mut outcomes, &t.store, "skipped", code)?;
                        t.state = TouchState::Skipped {
                            reason: reason.clone(),
                        };
                        attempts.remove(*id)?;
                    }
                    Settle::Retry {
                        until,
                        reason,
                        due,
                        via,
                    } => {
                        count_outcome(&mut outcomes, &t.store, "deferred", "provider_retry")?;
                        count_outcome(
                            &mut outcomes,
                            &t.store,
                            "channel",
                            &format!("{via}:retried"),
                        )?;
                        let (n, first) = attempts.get(*id)?.map_or((0, due.0), |v| v.value());
                        attempts.insert(*id, (n + 1, first))?;
                        t.due_at = *until;
                        t.state = TouchState::Deferred {
                            reason: format!("attempt {} failed: {reason}", n + 1),
                        };
                        timers.add(*id, &t)?;
                        written.push((t.due_at.0, *id));
                    }
                    Settle::Dead {
                        reason,
                        disable,
                        via,
                    } => {
                        count_outcome(&mut outcomes, &t.store, "dead", "refused")?;
                        if let Some(via) = via {
                            count_outcome(
                                &mut outcomes,
                                &t.store,
                                "channel",
                                &format!("{via}:dead"),
                            )?;
                        }
                        dead.insert((t.store.as_str(), *id), via.unwrap_or(""))?;
                        if let Some(ch) = disable {
                            disabled.insert((t.store.as_str(), *ch), reason.as_str())?;
                        }
                        t.state = TouchState::Dead {
                            reason: reason.clone(),
                        };
                        attempts.remove(*id)?;
                    }
                }
                touches.insert(*id, encode(&t)?.as_slice())?;
            }
        }
        tx.commit()?;
        self.timer_feed.push(&written);
        Ok(())
    }

    /// Records a click on touch `id`'s tracked link.
    pub fn record_click(&self, id: u64, at: Timestamp, device: &str) -> Result<(), Error> {
        let tx = self.db.begin_write()?;
        click_in(&tx, id, at, device)?;
        tx.commit()?;
        Ok(())
    }

    /// Records that the customer opened the email of touch `id` at `at` (the first open
    /// counts).
    pub fn set_opened(&self, id: u64, at: Timestamp) -> Result<(), Error> {
        let tx = self.db.begin_write()?;
        open_in(&tx, id, at)?;
        tx.commit()?;
        Ok(())
    }

    /// Engagement reported by a provider, all in one durable transaction (all or none):
    /// opens, clicks and suppressions of `store`.
    pub fn record_engagement(&self, store: &str, w: &EngagementWrites) -> Result<(), Error> {
        let tx = self.db.begin_write()?;
        for (id, at) in &w.opens {
            open_in(&tx, *id, *at)?;
        }
        for (id, at) in &w.clicks {
            click_in(&tx, *id, *at, "email")?;
        }
        super::plans::suppress_in(&tx, store, &w.suppressions)?;
        tx.commit()?;
        Ok(())
    }

    /// Copies of touches `ids` for the store's webhook (`also_webhook`), due at `now`:
    /// each goes out, is retried and can die on its own, without touching the original.
    pub fn mirror(&self, ids: &[u64], now: Timestamp) -> Result<(), Error> {
        self.copy_due_now(ids, now, true).map(|_| ())
    }

    /// A manual resend: a copy of touch `id`, due at `now`, decided like any other (the
    /// caps hold it if they must). Returns the new touch's id.
    pub fn resend(&self, id: u64, now: Timestamp) -> Result<Option<u64>, Error> {
        Ok(self.copy_due_now(&[id], now, false)?.pop())
    }

    /// New touches copying `ids` (those that exist), scheduled at `now`; `mirror` makes them
    /// webhook copies. Not in the order's index: a plan revision replaces the plan's own
    /// touches, never a copy. Returns the new ids.
    fn copy_due_now(&self, ids: &[u64], now: Timestamp, mirror: bool) -> Result<Vec<u64>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut new = Vec::new();
        let tx = self.db.begin_write()?;
        {
            let mut touches = tx.open_table(TOUCHES)?;
            let mut meta = tx.open_table(META)?;
            let mut mirrors = tx.open_table(MIRRORS)?;
            let mut notices = tx.open_table(RECOVERY_NOTICES)?;
            let mut timers = Timers::open(&tx)?;
            let mut next = next_id(&meta)?;
            for &id in ids {
                let Some(mut t) = read(&touches, id)? else {
                    continue;
                };
                let copy = next;
                next += 1;
                if mirror {
                    t.channel = Channel::Webhook;
                    mirrors.insert(copy, id)?;
                }
                // A resent notice is about the same ticket.
                let notice = notices.get(id)?.map(|v| v.value().to_vec());
                if let Some(n) = notice {
                    notices.insert(copy, n.as_slice())?;
                }
                t.planned_due = now;
                t.due_at = now;
                t.state = TouchState::Scheduled;
                touches.insert(copy, encode(&t)?.as_slice())?;
                timers.add(copy, &t)?;
                new.push(copy);
            }
            meta.insert(NEXT_TOUCH_ID, &next.to_le_bytes()[..])?;
        }
        tx.commit()?;
        let written: Vec<TimerKey> = new.iter().map(|&id| (now.0, id)).collect();
        self.timer_feed.push(&written);
        Ok(new)
    }

    /// Takes a dead letter back: `retry` schedules it again now (its grace counts anew
    /// from this attempt) and enables the channel that refused it, if disabled; otherwise
    /// it is dropped (skipped, with that reason).
    /// `false` when `id` is not a dead letter of `store`.
    pub fn settle_dead_letter(
        &self,
        store: &str,
        id: u64,
        retry: bool,
        now: Timestamp,
    ) -> Result<bool, Error> {
        let tx = self.db.begin_write()?;
        {
            let mut dead = tx.open_table(DEAD_LETTERS)?;
            let Some(via) = dead.remove((store, id))?.map(|v| v.value().to_string()) else {
                return Ok(false);
            };
            let mut touches = tx.open_table(TOUCHES)?;
            let Some(mut t) = read(&touches, id)? else {
                return Ok(false);
            };
            if retry {
                t.due_at = now;
                t.state = TouchState::Scheduled;
                Timers::open(&tx)?.add(id, &t)?;
                // The owner fixed what refused it: that channel, if disabled, is enabled.
                tx.open_table(DISABLED)?.remove((store, via.as_str()))?;
            } else {
                t.state = TouchState::Skipped {
                    reason: "dead letter dropped by the operator".into(),
                };
            }
            touches.insert(id, encode(&t)?.as_slice())?;
            tx.open_table(ATTEMPTS)?.remove(id)?;
        }
        tx.commit()?;
        if retry {
            self.timer_feed.push(&[(now.0, id)]);
        }
        Ok(true)
    }

    /// The timers written since the last call.
    pub fn take_new_timers(&self) -> Feed {
        std::mem::take(&mut *self.timer_feed.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// After a crash or a failed send: of the touches `ids` (those in `sending`; others
    /// are left alone), the ones the channel has (`delivered`) are recorded as sent, the
    /// others are due again at once. `unkeyed` names, for touches routed to a provider
    /// without an idempotency key, that provider: such a touch is sent again once (it may
    /// have gone out: a possible duplicate, logged), and a second interruption makes it a
    /// dead letter rather than a third send. Returns (recorded sent, due again, dead).
    pub fn reconcile_sending(
        &self,
        ids: &[u64],
        delivered: &std::collections::HashSet<String>,
        unkeyed: &std::collections::HashMap<u64, &'static str>,
        now: Timestamp,
    ) -> Result<(usize, usize), Error> {
        let snap = self.snapshot()?;
        let sending: std::collections::HashSet<u64> = snap.sending()?.into_iter().collect();
        let (sent, again): (Vec<u64>, Vec<u64>) = ids
            .iter()
            .filter(|id| sending.contains(id))
            .partition(|id| delivered.contains(&id.to_string()));
        self.finish_sent(&sent, now)?;
        let mut settle = Vec::new();
        let mut marked = Vec::new();
        for &id in &again {
            let s = match unkeyed.get(&id) {
                Some(ch) if snap.resent.get(id)?.is_some() => Settle::Dead {
                    via: Some(ch),
                    reason: format!(
                        "interrupted twice while sending through {ch}, which has no idempotency key: it may have gone out already, so it is not sent a third time"
                    ),
                    disable: None,
                },
                Some(ch) => {
                    log::warn!(
                        "scheduler: touch {id}: interrupted while sending through {ch}; sending it again once (a possible duplicate: {ch} has no idempotency key)"
                    );
                    marked.push(id);
                    Settle::Defer {
                        until: now,
                        reason: format!(
                            "interrupted while sending through {ch}; sent again once (a possible duplicate)"
                        ),
                        code: "interrupted",
                    }
                }
                None => Settle::Defer {
                    until: now,
                    reason: "interrupted while sending; sent again (with the same key where the channel has one)".into(),
                    code: "interrupted",
                },
            };
            settle.push(((now.0, id), s));
        }
        self.settle(&settle)?;
        if !marked.is_empty() {
            let tx = self.db.begin_write()?;
            {
                let mut t = tx.open_table(RESENT)?;
                for id in marked {
                    t.insert(id, ())?;
                }
            }
            tx.commit()?;
        }
        Ok((sent.len(), again.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::lifecycle::revise;
    use crate::engine::plan::{Offer, Plan, Recipe, Touch};
    use crate::engine::{Currency, Order};
    use crate::storage::plans::PlanWrites;
    use crate::storage::{Options, Storage};

    const T0: i64 = 1_795_186_800_000;

    fn order() -> Order {
        Order::sample("9001", Timestamp(T0), 5400)
    }

    fn plan(touch2_days: i64, holdout: bool) -> Plan {
        let t = |kind, channel, ms: i64| Touch {
            kind,
            channel,
            due_at: Timestamp(T0 + ms),
            after_delivery: false,
        };
        Plan {
            recipe: Some(Recipe::CrossSell),
            offer: Some(Offer {
                product: "SCALE".into(),
                sku: None,
                variant_id: None,
                title: "Scale".into(),
                price: 1900,
                currency: Currency::parse("USD").unwrap(),
                discount_code: None,
                trust: false,
                urgency: false,
            }),
            holdout,
            variants: vec![],
            touches: vec![
                t(TouchKind::Page, Channel::Page, 0),
                t(TouchKind::Touch1, Channel::Email, 20 * 60_000),
                t(TouchKind::Touch2, Channel::Email, touch2_days * 86_400_000),
                t(TouchKind::Winback, Channel::Email, 90 * 86_400_000),
            ],
            reasons: vec![],
        }
    }

    fn states(s: &Storage) -> Vec<String> {
        s.snapshot()
            .unwrap()
            .touches_of("demo", "9001")
            .unwrap()
            .into_iter()
            .map(|(id, t)| format!("{id} {} {}", t.kind.as_str(), t.state.as_str()))
            .collect()
    }

    fn write(s: &Storage, rec: &PlanRecord) {
        s.write_plans(&PlanWrites {
            plans: vec![("demo".into(), rec.clone())],
            done: vec![],
            anchors: vec![],
            conversions: vec![],
        })
        .unwrap();
    }

    #[test]
    fn a_plan_the_page_showed_meanwhile_is_planned_again_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &Options::default()).unwrap();
        let o = order();
        let rec = revise(None, plan(4, false), &o, Some(7), &[], Timestamp(T0));
        write(&s, &rec);
        // The planner's snapshot has nothing sent; it replaces the offer (an edit)...
        let mut other = plan(4, false);
        other.offer.as_mut().unwrap().product = "KETTLE".into();
        let replaced = revise(
            Some(rec.clone()),
            other,
            &o,
            Some(7),
            &[],
            Timestamp(T0 + 1),
        );
        assert_eq!(replaced.revision, 2);
        // ...while the thank-you page shows the stored one.
        assert!(s.offer_shown("demo", "9001", Timestamp(T0 + 2)).unwrap());
        let tx = s.db.begin_write().unwrap();
        tx.open_table(PLAN_QUEUE)
            .unwrap()
            .insert(("demo", "9001"), 0)
            .unwrap();
        tx.commit().unwrap();
        s.write_plans(&PlanWrites {
            plans: vec![("demo".into(), replaced)],
            done: vec![("demo".into(), "9001".into())],
            anchors: vec![],
            conversions: vec![],
        })
        .unwrap();
        // The offer the customer saw stays, and the order waits to be planned again.
        let snap = s.snapshot().unwrap();
        let stored = snap.plan("demo", "9001").unwrap().unwrap();
        assert_eq!(stored.plan.offer.as_ref().unwrap().product, "SCALE");
        assert_eq!(stored.sent, [TouchKind::Page]);
        assert!(snap.queued("demo", "9001").unwrap());
        // Planned again from the stored record, the seen plan is kept.
        let mut again = plan(4, false);
        again.offer.as_mut().unwrap().product = "KETTLE".into();
        let kept = revise(
            Some(stored.clone()),
            again,
            &o,
            Some(7),
            &[],
            Timestamp(T0 + 3),
        );
        assert_eq!(kept.plan.offer.unwrap().product, "SCALE");
    }

    #[test]
    fn a_plan_schedules_its_touches_and_a_revision_replaces_the_pending_ones() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &Options::default()).unwrap();
        let o = order();
        let rec = revise(None, plan(4, false), &o, Some(7), &[], Timestamp(T0));
        write(&s, &rec);
        assert_eq!(
            states(&s),
            [
                "1 touch1 scheduled",
                "2 touch2 scheduled",
                "3 winback scheduled"
            ]
        );
        // Written again unchanged (a crash before the queue row went): nothing new.
        write(&s, &rec);
        assert_eq!(s.snapshot().unwrap().pending_touches().unwrap(), 3);
        let due = s
            .snapshot()
            .unwrap()
            .due_before(Timestamp(T0 + 86_400_000), 10)
            .unwrap();
        assert_eq!(due, [(Timestamp(T0 + 20 * 60_000), 1)]);
        // A revision moves touch-2: the pending touches are replaced, with the reason.
        let rec = revise(
            Some(rec),
            plan(5, false),
            &o,
            Some(7),
            &[],
            Timestamp(T0 + 1),
        );
        write(&s, &rec);
        assert_eq!(
            states(&s),
            [
                "4 touch1 scheduled",
                "5 touch2 scheduled",
                "6 winback scheduled"
            ]
        );
        // The replaced ones keep their record, with the reason, out of the order's index.
        assert_eq!(
            s.snapshot().unwrap().touch(1).unwrap().unwrap().state,
            TouchState::Skipped {
                reason: "replaced by plan revision 2".into()
            }
        );
        assert_eq!(s.snapshot().unwrap().pending_touches().unwrap(), 3);
        // A kind skipped by a rule is decided: a later revision does not schedule it again.
        s.settle(&[(
            (T0 + 20 * 60_000, 4),
            Settle::Skip {
                reason: "stale".into(),
                code: "stale",
            },
        )])
        .unwrap();
        let rec = revise(
            Some(rec),
            plan(6, false),
            &o,
            Some(7),
            &[],
            Timestamp(T0 + 2),
        );
        write(&s, &rec);
        assert_eq!(
            states(&s),
            [
                "4 touch1 skipped",
                "7 touch2 scheduled",
                "8 winback scheduled"
            ]
        );
        // Ended by a newer purchase: the timers stay, to be skipped at their time.
        let mut ended = rec.clone();
        crate::engine::lifecycle::end(&mut ended, "9002", Timestamp(T0 + 2));
        write(&s, &ended);
        assert_eq!(s.snapshot().unwrap().pending_touches().unwrap(), 2);
    }

    #[test]
    fn a_crash_while_sending_is_reconciled_against_the_channel() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &Options::default()).unwrap();
        let rec = revise(None, plan(4, false), &order(), Some(7), &[], Timestamp(T0));
        write(&s, &rec);
        // Touches 1 and 2 were handed to the channel; only 1 reached it before the crash.
        let key = |id: u64| {
            let t = s.snapshot().unwrap().touch(id).unwrap().unwrap();
            (t.due_at.0, id)
        };
        let handed = s.begin_sending(&[key(1), key(2)]).unwrap();
        assert_eq!(handed.len(), 2);
        assert!(
            s.begin_sending(&[(T0 + 20 * 60_000, 1)])
                .unwrap()
                .is_empty(),
            "not twice"
        );
        let delivered = std::collections::HashSet::from(["1".to_string()]);
        let now = Timestamp(T0 + 4 * 86_400_000);
        let sending = s.snapshot().unwrap().sending().unwrap();
        assert_eq!(
            s.reconcile_sending(&sending, &delivered, &Default::default(), now)
                .unwrap(),
            (1, 1)
        );
        assert_eq!(
            states(&s),
            ["1 touch1 sent", "2 touch2 deferred", "3 winback scheduled"]
        );
        let snap = s.snapshot().unwrap();
        assert!(snap.sending().unwrap().is_empty());
        assert_eq!(
            snap.due_before(Timestamp(now.0 + 1), 10).unwrap(),
            [(now, 2)]
        );
        // The plan knows touch-1 went out, and the customer's log has it for the caps.
        assert_eq!(
            snap.plan("demo", "9001").unwrap().unwrap().sent,
            [TouchKind::Touch1]
        );
        assert_eq!(
            snap.sent_messages("demo", 7, Timestamp(T0)).unwrap(),
            [(now, Channel::Email)]
        );
    }

    #[test]
    fn a_revision_while_a_touch_is_being_sent_does_not_schedule_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &Options::default()).unwrap();
        let o = order();
        let rec = revise(None, plan(4, false), &o, Some(7), &[], Timestamp(T0));
        write(&s, &rec);
        // Touch-1 is handed to the channel; a revision (touch-2 moves) comes before `sent`.
        s.begin_sending(&[(T0 + 20 * 60_000, 1)]).unwrap();
        let rec = revise(
            Some(rec),
            plan(5, false),
            &o,
            Some(7),
            &[],
            Timestamp(T0 + 1),
        );
        write(&s, &rec);
        assert_eq!(
            states(&s),
            [
                "1 touch1 sending",
                "4 touch2 scheduled",
                "5 winback scheduled"
            ]
        );
        // A stale plan record written after the send keeps what went out.
        s.finish_sent(&[1], Timestamp(T0 + 2)).unwrap();
        write(&s, &rec);
        let snap = s.snapshot().unwrap();
        assert_eq!(
            snap.plan("demo", "9001").unwrap().unwrap().sent,
            [TouchKind::Touch1]
        );
        // Moved touches are not sent or settled at the key they were decided at.
        assert!(s
            .begin_sending(&[(T0 + 4 * 86_400_000, 4)])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_touch_without_an_idempotency_key_is_sent_again_at_most_once_after_crashes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &Options::default()).unwrap();
        let rec = revise(None, plan(4, false), &order(), Some(7), &[], Timestamp(T0));
        write(&s, &rec);
        let unkeyed = std::collections::HashMap::from([(1u64, "twilio")]);
        let none = std::collections::HashSet::new();
        let key = |s: &Storage| {
            let t = s.snapshot().unwrap().touch(1).unwrap().unwrap();
            (t.due_at.0, 1u64)
        };
        // First crash while sending: due again, once.
        s.begin_sending(&[key(&s)]).unwrap();
        s.reconcile_sending(&[1], &none, &unkeyed, Timestamp(T0 + 1))
            .unwrap();
        assert_eq!(states(&s)[0], "1 touch1 deferred");
        // Second crash while sending it again: a dead letter, not a third send.
        s.begin_sending(&[key(&s)]).unwrap();
        s.reconcile_sending(&[1], &none, &unkeyed, Timestamp(T0 + 2))
            .unwrap();
        assert_eq!(states(&s)[0], "1 touch1 dead");
        let snap = s.snapshot().unwrap();
        let dead = snap.dead_letters("demo").unwrap();
        assert_eq!(dead.len(), 1);
        assert!(
            matches!(&dead[0].1.state, TouchState::Dead { reason } if reason.contains("interrupted twice while sending through twilio")),
            "{:?}",
            dead[0].1.state
        );
    }

    #[test]
    fn holdout_plans_schedule_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &Options::default()).unwrap();
        let rec = revise(None, plan(4, true), &order(), None, &[], Timestamp(T0));
        write(&s, &rec);
        assert!(states(&s).is_empty());
    }
}
