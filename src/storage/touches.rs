//! Durable touch timers: one record per planned touch, indexed by (due time, touch id)
//! while it is pending, and by order so a plan's revision can replace its pending touches.
//! Every state change is a committed transaction (issue 6; the scheduler that fires them
//! is built on these).

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::tables::*;
use super::{codec, Error, Snapshot};
use crate::engine::lifecycle::{PlanRecord, Status};
use crate::engine::plan::{Channel, TouchKind};
use crate::engine::Timestamp;

const TOUCH_V1: u8 = 1;
const NEXT_TOUCH_ID: &str = "next_touch_id";

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

fn encode(r: &TouchRecord) -> Result<Vec<u8>, Error> {
    codec::encode(TOUCH_V1, r)
}

fn decode(b: &[u8]) -> Result<TouchRecord, Error> {
    codec::decode("touch record", TOUCH_V1, b)
}

/// The touches a plan wants pending: none while held out or once the sequence is over;
/// the thank-you page is served, not scheduled; what was sent stays sent.
fn wanted(store: &str, rec: &PlanRecord) -> Vec<TouchRecord> {
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
            carries_offer: has_offer
                && matches!(
                    t.kind,
                    TouchKind::Touch1 | TouchKind::Sms | TouchKind::Touch2 | TouchKind::Touch3
                ),
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
) -> Result<(), Error> {
    if rec.status != Status::Active {
        return Ok(());
    }
    let mut by_order = tx.open_table(ORDER_TOUCHES)?;
    let mut touches = tx.open_table(TOUCHES)?;
    let mut timers = tx.open_table(TIMERS)?;
    let mut pending: Vec<(u64, TouchRecord)> = Vec::new();
    for item in by_order
        .range((store, rec.order_id.as_str(), 0u64)..=(store, rec.order_id.as_str(), u64::MAX))?
    {
        let id = item?.0.value().2;
        if let Some(t) = touches.get(id)? {
            let t = decode(t.value())?;
            if t.state.pending() {
                pending.push((id, t));
            }
        }
    }
    let want = wanted(store, rec);
    let key = |t: &TouchRecord| (t.kind, t.planned_due, t.channel, t.carries_offer);
    let have: Vec<_> = pending.iter().map(|(_, t)| key(t)).collect();
    if have == want.iter().map(key).collect::<Vec<_>>() {
        return Ok(());
    }
    for (id, mut t) in pending {
        timers.remove((t.due_at.0, id))?;
        t.state = TouchState::Skipped {
            reason: format!("replaced by plan revision {}", rec.revision),
        };
        touches.insert(id, encode(&t)?.as_slice())?;
    }
    let mut meta = tx.open_table(META)?;
    let mut next = meta.get(NEXT_TOUCH_ID)?.map_or(1, |v| {
        u64::from_le_bytes(v.value().try_into().unwrap_or([0; 8])).max(1)
    });
    for t in want {
        let id = next;
        next += 1;
        touches.insert(id, encode(&t)?.as_slice())?;
        timers.insert((t.due_at.0, id), ())?;
        by_order.insert((store, rec.order_id.as_str(), id), ())?;
    }
    meta.insert(NEXT_TOUCH_ID, &next.to_le_bytes()[..])?;
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
            if let Some(t) = self.touches.get(id)? {
                out.push((id, decode(t.value())?));
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
        let mut out = Vec::new();
        for item in self
            .timers
            .range((i64::MIN, 0u64)..(until.0, 0u64))?
            .take(limit)
        {
            let (due, id) = item?.0.value();
            out.push((Timestamp(due), id));
        }
        Ok(out)
    }

    /// How many touches are pending.
    pub fn pending_touches(&self) -> Result<u64, Error> {
        use redb::ReadableTableMetadata;
        Ok(self.timers.len()?)
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
        Order {
            id: "9001".into(),
            name: "#9001".into(),
            created_at: Timestamp(T0),
            updated_at: Timestamp(T0),
            currency: Currency::parse("USD").unwrap(),
            total: 5400,
            subtotal: 5400,
            financial_status: Some("paid".into()),
            cancelled_at: None,
            email: None,
            phone: None,
            customer: None,
            lines: vec![],
            tags: vec![],
            discount_codes: vec![],
            shipping: None,
            billing: None,
            refunds: vec![],
        }
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
        })
        .unwrap();
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
                "1 touch1 skipped",
                "2 touch2 skipped",
                "3 winback skipped",
                "4 touch1 scheduled",
                "5 touch2 scheduled",
                "6 winback scheduled"
            ]
        );
        assert_eq!(s.snapshot().unwrap().pending_touches().unwrap(), 3);
        // Ended by a newer purchase: the timers stay, to be skipped at their time.
        let mut ended = rec.clone();
        crate::engine::lifecycle::end(&mut ended, "9002", Timestamp(T0 + 2));
        write(&s, &ended);
        assert_eq!(s.snapshot().unwrap().pending_touches().unwrap(), 3);
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
