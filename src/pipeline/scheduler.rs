//! Fires due touches (issue 6, first version): every 100 ms (real time) it reads the
//! touches due by the clock's now from the durable due index, decides again for each with
//! `engine::due::on_due`, records deferrals and skips, and sends the rest through the
//! outbox: marked `sending` durably, appended and synced, then recorded `sent`. At start it
//! reconciles touches left in `sending` by a crash against the outbox's tail, so each
//! touch goes out exactly once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::engine::lifecycle::PlanRecord;

use crate::clock::Clock;
use crate::config::Config;
use crate::engine::due::{on_due, Action, Due, Rules, State};
use crate::engine::plan::{Channel, Offer};
use crate::engine::Timestamp;
use crate::outbound::outbox::{Outbox, OutboxLine};
use crate::storage::plans::contact_keys;
use crate::storage::touches::{Settle, TouchRecord};
use crate::storage::{Error, Snapshot, Storage};

/// Touches decided per round.
const BATCH: usize = 1024;
/// How much of the outbox's tail a reconciliation reads (well over one round's lines).
const TAIL_BYTES: u64 = 8 << 20;
const POLL: Duration = Duration::from_millis(100);
/// The scheduler's own latency, in real time: a touch this late is not stale.
const LATENCY: Duration = Duration::from_millis(1100);
const WEEK: i64 = 7 * 86_400_000;

/// What a round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub sent: usize,
    pub deferred: usize,
    pub skipped: usize,
}

/// Runs until `stop` is set: reconciles, reports what fell due while stopped, then fires.
pub fn run(
    storage: Arc<Storage>,
    config: Arc<Config>,
    clock: Arc<dyn Clock>,
    mut outbox: Outbox,
    stop: Arc<AtomicBool>,
) {
    let started = clock.now();
    match reconcile(&storage, &mut outbox, started) {
        Ok((0, 0)) => {}
        Ok((sent, again)) => eprintln!(
            "scheduler: {sent} touches interrupted while sending were in the outbox (recorded sent), {again} were not (sent again)"
        ),
        Err(e) => eprintln!("scheduler: reconciling touches left in sending: {e}"),
    }
    let mut late = storage
        .snapshot()
        .and_then(|s| s.due_before(started, usize::MAX))
        .map(|v| v.len())
        .unwrap_or(0);
    let mut catch_up = Round::default();
    while !stop.load(Ordering::Relaxed) {
        match fire_due(&storage, &config, clock.as_ref(), &mut outbox) {
            Ok(r) => {
                if late > 0 {
                    catch_up.sent += r.sent;
                    catch_up.deferred += r.deferred;
                    catch_up.skipped += r.skipped;
                    let done = r.sent + r.deferred + r.skipped;
                    if done == 0 || done >= late {
                        eprintln!(
                            "scheduler: {late} touches came due while stopped: {} fired, {} deferred, {} skipped (misfire policy)",
                            catch_up.sent, catch_up.deferred, catch_up.skipped
                        );
                        late = 0;
                    } else {
                        late -= done;
                    }
                }
                if r == Round::default() {
                    std::thread::sleep(POLL);
                }
            }
            Err(e) => {
                eprintln!("scheduler: {e}; retrying in 1 s");
                std::thread::sleep(Duration::from_secs(1));
                // Touches a failed round left in `sending` are settled against the outbox
                // before the next one, not only at the next start.
                if let Err(e) = reconcile(&storage, &mut outbox, clock.now()) {
                    eprintln!("scheduler: reconciling touches left in sending: {e}");
                }
            }
        }
    }
}

/// Touches left in `sending`: recorded sent if the outbox has them, else due again now.
pub fn reconcile(
    storage: &Storage,
    outbox: &mut Outbox,
    now: Timestamp,
) -> Result<(usize, usize), Error> {
    if storage.snapshot()?.sending()?.is_empty() {
        return Ok((0, 0));
    }
    let delivered = outbox
        .recent_ids(TAIL_BYTES)
        .map_err(|e| Error::Codec(format!("reading {}: {e}", outbox.path().display())))?;
    storage.reconcile_sending(&delivered, now)
}

/// One round: every touch due now (at most [`BATCH`]), decided and recorded.
pub fn fire_due(
    storage: &Storage,
    config: &Config,
    clock: &dyn Clock,
    outbox: &mut Outbox,
) -> Result<Round, Error> {
    let now = clock.now();
    // A second of real time: from the webhook to the plan, and between two rounds.
    let latency_ms = (LATENCY.as_secs_f64() * 1000.0 * clock.scale()) as i64;
    let snap = storage.snapshot()?;
    let due = snap.due_before(Timestamp(now.0 + 1), BATCH)?;
    if due.is_empty() {
        return Ok(Round::default());
    }
    let mut round = Round::default();
    let mut settle = Vec::new();
    let mut send = Vec::new();
    // The offer each touch being sent carries, from the plan read to decide it.
    let mut offers: HashMap<u64, Option<Offer>> = HashMap::new();
    // Messages decided in this round count for the caps of the next ones.
    let mut overlay: HashMap<(String, u64), Vec<(Timestamp, Channel)>> = HashMap::new();
    for (_, id) in due {
        let Some(t) = snap.touch(id)? else { continue };
        let plan = snap.plan(&t.store, &t.order)?;
        let action = decide(&snap, config, latency_ms, &t, plan.as_ref(), &overlay, now)?;
        match action {
            Action::Send => {
                let offer = plan.and_then(|p| p.plan.offer).filter(|_| t.carries_offer);
                offers.insert(id, offer);
                if let Some(c) = t.customer {
                    overlay
                        .entry((t.store.clone(), c))
                        .or_default()
                        .push((now, t.channel));
                }
                send.push(id);
            }
            Action::Defer { until, reason } => {
                round.deferred += 1;
                settle.push((id, Settle::Defer { until, reason }));
            }
            Action::Skip { reason } => {
                round.skipped += 1;
                settle.push((id, Settle::Skip { reason }));
            }
        }
    }
    storage.settle(&settle)?;
    let sending = storage.begin_sending(&send)?;
    let mut lines = Vec::with_capacity(sending.len());
    for (id, t) in &sending {
        let offer = offers.remove(id).flatten();
        lines.push(line(*id, t, offer.as_ref(), now));
    }
    if let Err(e) = outbox.send(&lines) {
        // Some lines may be durable: the ones that are count as sent, the rest are due
        // again; nothing is lost and nothing goes out twice.
        let (sent, _) = reconcile(storage, outbox, now)?;
        return Err(Error::Codec(format!(
            "writing {}: {e} ({sent} of {} touches made it)",
            outbox.path().display(),
            lines.len()
        )));
    }
    let ids: Vec<u64> = sending.iter().map(|(id, _)| *id).collect();
    storage.finish_sent(&ids, now)?;
    round.sent = ids.len();
    Ok(round)
}

/// Loads what `on_due` reads for one touch and asks it.
fn decide(
    snap: &Snapshot,
    config: &Config,
    latency_ms: i64,
    t: &TouchRecord,
    plan: Option<&PlanRecord>,
    overlay: &HashMap<(String, u64), Vec<(Timestamp, Channel)>>,
    now: Timestamp,
) -> Result<Action, Error> {
    let Some(store) = config.store(&t.store) else {
        return Ok(Action::Skip {
            reason: format!("store {} is no longer configured", t.store),
        });
    };
    let Some(plan) = plan else {
        return Ok(Action::Skip {
            reason: "its plan is gone".into(),
        });
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
    let delivered_at = order
        .as_ref()
        .and_then(|o| o.delivered_at)
        .or(snap.delivered_by_hand(&t.store, &t.order)?);
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
    let state = State {
        status: &plan.status,
        refunded_at: plan.refunded_at,
        suppressed: suppressed.as_ref(),
        page_offer_accepted,
        tickets: &tickets,
        recent_opens: None,
        offer_stock,
        delivered_at,
        sent: &sent,
        tz: store.timezone,
    };
    let touch = Due {
        kind: t.kind,
        channel: t.channel,
        due_at: t.due_at,
        order_at: plan.order_at,
        after_delivery: t.after_delivery,
        carries_offer: t.carries_offer,
    };
    let rules = Rules {
        stock_threshold: store.offers.stock_threshold,
        latency_ms,
        ..Rules::default()
    };
    Ok(on_due(&touch, &state, &rules, now))
}

/// The outbox line of a touch (README "Outbox").
fn line(id: u64, t: &TouchRecord, offer: Option<&Offer>, now: Timestamp) -> OutboxLine {
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
    }
}
