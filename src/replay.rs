//! The store owner's dry run: what the appliance would have done with the store's own
//! history under the configuration as it is now.
//!
//! Every stored order (imported or live) is planned at the moment it was placed
//! (`engine::plan`, the customer as known then), and each of its touches is decided at
//! its due time (`engine::due::on_due`) with the state of that moment: a later order ends
//! the sequence, cancellations, refunds, deliveries, tickets, page-offer answers and
//! suppressions count from when they happened, and the caps count the replay's own
//! sends. A virtual clock jumps from event to event, up to `now`; touches due later are
//! reported as still pending.
//!
//! It reads one snapshot and writes nothing. Customers are independent (caps, sequences
//! and groups are per customer), so it runs customer by customer on up to two threads,
//! each customer a small simulation in time order; sums are integers, so the report is
//! the same whichever thread did which customer.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::config::{Config, StoreConfig};
use crate::engine::affinity::Month;
use crate::engine::due::{on_due, Action, DeliveryFacts, State, Ticket};
use crate::engine::history::{Customer, OrderState};
use crate::engine::lifecycle::{self, PlanRecord, Status};
use crate::engine::plan::{self, Channel, PlanInput, TouchKind};
use crate::engine::{Currency, Order, Timestamp};
use crate::pipeline::planner::{add_earlier, shopper_of, Reader};
use crate::storage::affinity::ReadSettings;
use crate::storage::intake::{OfferResponse, TimedTicket};
use crate::storage::plans::{contact_keys, SuppressionRow};
use crate::storage::touches::{wanted, TouchRecord};
use crate::storage::{Error, Snapshot};

const DAY: i64 = 86_400_000;
/// Earlier orders a customer's history is read from (as the planner reads it).
const HISTORY: usize = 50;
/// Customers a thread takes at a time.
const CHUNK: usize = 512;
/// Products listed in the report.
const TOP: usize = 10;

/// Which orders are planned: placed from `from` (inclusive) to `to` (exclusive). Orders
/// outside still count as history (an earlier order makes a repeat customer, a later one
/// ends a sequence).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
}

impl Window {
    fn contains(&self, t: i64) -> bool {
        self.from.is_none_or(|f| t >= f.0) && self.to.is_none_or(|e| t < e.0)
    }
}

/// What the replay found. Counts are of orders placed inside the window and of their
/// touches.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    pub store: String,
    pub from: Option<String>,
    pub to: Option<String>,
    /// The replay's end: touches due later are still pending.
    pub until: String,
    pub orders: Orders,
    /// Orders per recipe of their offer ("none": no offer).
    pub offers: BTreeMap<String, u64>,
    /// Orders that got no touches, by rule (holdout, unsubscribed, not_paid, ...).
    pub no_touches: BTreeMap<String, u64>,
    /// Orders that got no email touches (`no_email`, `no_email_consent`, ...) and no SMS.
    pub no_email: BTreeMap<String, u64>,
    pub no_sms: BTreeMap<String, u64>,
    pub touches: Touches,
    pub top_products: Vec<TopProduct>,
    /// Projected upsell revenue per order currency. Projections, not measurements.
    pub projection: Vec<ProjectionFigures>,
    /// What the replay could not know and what it assumed instead.
    pub assumptions: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Orders {
    /// Orders placed inside the window (each planned).
    pub seen: u64,
    pub customers: u64,
    pub with_offer: u64,
    /// Orders of customers in the holdout group (their offers are chosen, never sent).
    pub holdout: u64,
    /// Orders outside the window, read as history only.
    pub before_window: u64,
    pub after_window: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Touches {
    /// Touches planned, by kind (the thank-you page offer included).
    pub planned: BTreeMap<String, u64>,
    /// Sent (page: shown), by kind.
    pub sent: BTreeMap<String, u64>,
    /// Sent per channel and day after the order.
    pub by_channel_day: BTreeMap<String, BTreeMap<i64, u64>>,
    /// Skipped at the due time, by rule.
    pub skipped: BTreeMap<String, u64>,
    /// Touches deferred at least once, by rule (`frequency_cap`, `quiet_hours`, ...).
    pub deferred: BTreeMap<String, u64>,
    /// Deferrals, by rule (a touch may be deferred more than once). A wait that only a
    /// fact can end (`awaiting_delivery`, `ticket_open`, `delivery_failed`) counts once per fact, where the
    /// service would count each 6-hourly look.
    pub deferrals: BTreeMap<String, u64>,
    /// Due after the replay's end.
    pub pending_at_end: u64,
    /// Held at the end by a rule nothing in the history would lift (a review waiting for
    /// a delivery the history does not have, a ticket still open).
    pub waiting_at_end: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TopProduct {
    pub product: String,
    pub title: String,
    /// Orders whose offer it was.
    pub offers: u64,
    /// Messages and page views that carried it.
    pub sent: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProjectionFigures {
    pub currency: String,
    /// Orders that got touches (not held out, not suppressed) and their value.
    pub treated_orders: u64,
    pub treated_value: String,
    /// Expected upsell revenue: each offer shown or sent, times its price, times the
    /// configured rate for its channel.
    pub upsell_revenue: String,
    pub page_revenue: String,
    pub email_revenue: String,
    pub sms_revenue: String,
    /// Upsell revenue / treated order value: the projected AOV lift (product.md's
    /// industry range: 15-28%).
    pub aov_lift: f64,
}

/// Replays the store's history up to `now`.
pub fn run(
    snap: &Snapshot,
    config: &Config,
    store: &StoreConfig,
    window: Window,
    now: Timestamp,
) -> Result<Report, Error> {
    let id = store.id.as_str();
    let mut assumptions = vec![
        "offers are chosen with today's catalog (prices, stock, ratings) and today's affinity model".to_string(),
        "a customer's tags and consents are as their record stands today, and the suppression list applies as it stands today (an imported list carries no dates)".to_string(),
        "orders outside --from/--to are replayed too (their messages count for the caps and a newer order ends a sequence) but not reported".to_string(),
        "email opens of replayed messages cannot be known: the engagement rule does not apply".to_string(),
        "an order's page offer is counted as shown when its plan has one (the thank-you page loads once)".to_string(),
    ];
    let salt = match snap.salt(id)? {
        Some(s) => s,
        None => {
            assumptions.push("this store has no holdout salt yet (the service makes it when it first plans an order): a stand-in group of the configured size is held out".into());
            format!("replay stand-in salt for {id}").into_bytes()
        }
    };
    let mut suppressions: HashMap<String, SuppressionRow> = HashMap::new();
    for (k, row) in snap.suppression_list(id)? {
        suppressions.insert(k, row);
    }
    let mut tickets: HashMap<String, Vec<TimedTicket>> = HashMap::new();
    for (contact, t) in snap.store_tickets(id)? {
        tickets.entry(contact).or_default().push(t);
    }
    let responses: HashMap<String, OfferResponse> =
        snap.store_offer_responses(id)?.into_iter().collect();
    let by_hand: HashMap<String, Timestamp> =
        snap.store_deliveries_by_hand(id)?.into_iter().collect();

    // Every order, grouped by customer in time order; a guest order is its own group.
    let mut ids = String::new();
    let mut index: Vec<(u64, i64, u32, u32)> = Vec::new();
    snap.each_order(id, |order, state| {
        let Some(o) = &state.order else { return };
        let start = ids.len() as u32;
        ids.push_str(order);
        index.push((
            state.customer.unwrap_or(GUEST),
            o.created_at.0,
            start,
            ids.len() as u32,
        ));
    })?;
    index.sort_unstable_by(|a, b| {
        (a.0, a.1)
            .cmp(&(b.0, b.1))
            .then_with(|| ids[a.2 as usize..a.3 as usize].cmp(&ids[b.2 as usize..b.3 as usize]))
    });
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < index.len() {
        let mut j = i + 1;
        if index[i].0 != GUEST {
            while j < index.len() && index[j].0 == index[i].0 {
                j += 1;
            }
        }
        groups.push((i, j));
        i = j;
    }

    let rs = ReadSettings {
        decay: config.affinity.decay(),
        now: crate::engine::affinity::month_of(now) as Month,
        thresholds: config.affinity.thresholds,
    };
    let shared = Shared {
        store,
        salt,
        window,
        until: now,
        suppressions,
        tickets,
        responses,
        by_hand,
    };
    let next = AtomicUsize::new(0);
    let total = Mutex::new(Counts::default());
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 2);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let result = (|| -> Result<Counts, Error> {
                    let mut sim = Sim {
                        shared: &shared,
                        snap,
                        reader: Reader::new(snap, id, &rs)?,
                        counts: Counts::default(),
                        scratch: Counts::default(),
                    };
                    loop {
                        let start = next.fetch_add(CHUNK, Ordering::Relaxed);
                        if start >= groups.len() || failed.lock().map_or(true, |f| f.is_some()) {
                            return Ok(sim.counts);
                        }
                        for &(a, b) in &groups[start..(start + CHUNK).min(groups.len())] {
                            let orders: Vec<&str> = index[a..b]
                                .iter()
                                .map(|e| &ids[e.2 as usize..e.3 as usize])
                                .collect();
                            let customer = (index[a].0 != GUEST).then_some(index[a].0);
                            match sim.load(customer, &orders) {
                                Ok(loaded) => sim.customer(customer, loaded)?,
                                // A damaged record: this customer is left out and said so;
                                // the rest of the history is still replayed.
                                Err(e) => {
                                    sim.counts.unreadable += 1;
                                    sim.counts.first_error.get_or_insert(e.to_string());
                                }
                            }
                        }
                    }
                })();
                match result {
                    Ok(c) => total.lock().unwrap_or_else(|p| p.into_inner()).add(c),
                    Err(e) => {
                        let mut f = failed.lock().unwrap_or_else(|p| p.into_inner());
                        f.get_or_insert(e);
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let counts = total.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(counts.report(store, window, now, assumptions))
}

/// The group key of an order without a customer.
const GUEST: u64 = u64::MAX;

/// What every thread reads.
struct Shared<'a> {
    store: &'a StoreConfig,
    salt: Vec<u8>,
    window: Window,
    until: Timestamp,
    suppressions: HashMap<String, SuppressionRow>,
    tickets: HashMap<String, Vec<TimedTicket>>,
    responses: HashMap<String, OfferResponse>,
    by_hand: HashMap<String, Timestamp>,
}

/// Integer sums, so merging in any order gives the same report.
#[derive(Default)]
struct Counts {
    orders: Orders,
    offers: BTreeMap<&'static str, u64>,
    no_touches: BTreeMap<&'static str, u64>,
    no_email: BTreeMap<&'static str, u64>,
    no_sms: BTreeMap<&'static str, u64>,
    planned: BTreeMap<&'static str, u64>,
    sent: BTreeMap<&'static str, u64>,
    by_channel_day: BTreeMap<(&'static str, i64), u64>,
    skipped: BTreeMap<&'static str, u64>,
    deferred: BTreeMap<&'static str, u64>,
    deferrals: BTreeMap<&'static str, u64>,
    pending_at_end: u64,
    waiting_at_end: BTreeMap<&'static str, u64>,
    /// product -> (title, offers, sent)
    products: HashMap<String, (String, u64, u64)>,
    money: BTreeMap<Currency, Money>,
    /// Customers left out because a record of theirs could not be read.
    unreadable: u64,
    first_error: Option<String>,
}

/// Per currency: treated orders and value (minor units), and expected revenue in minor
/// units times parts per million (page, email, SMS).
#[derive(Clone, Copy, Default)]
struct Money {
    treated: u64,
    treated_value: i64,
    page: i128,
    email: i128,
    sms: i128,
}

fn bump<K: Ord>(m: &mut BTreeMap<K, u64>, k: K, n: u64) {
    *m.entry(k).or_default() += n;
}

impl Counts {
    fn add(&mut self, o: Counts) {
        let (a, b) = (&mut self.orders, o.orders);
        a.seen += b.seen;
        a.customers += b.customers;
        a.with_offer += b.with_offer;
        a.holdout += b.holdout;
        a.before_window += b.before_window;
        a.after_window += b.after_window;
        for (mine, theirs) in [
            (&mut self.offers, o.offers),
            (&mut self.no_touches, o.no_touches),
            (&mut self.no_email, o.no_email),
            (&mut self.no_sms, o.no_sms),
            (&mut self.planned, o.planned),
            (&mut self.sent, o.sent),
            (&mut self.skipped, o.skipped),
            (&mut self.deferred, o.deferred),
            (&mut self.deferrals, o.deferrals),
            (&mut self.waiting_at_end, o.waiting_at_end),
        ] {
            for (k, n) in theirs {
                bump(mine, k, n);
            }
        }
        for (k, n) in o.by_channel_day {
            bump(&mut self.by_channel_day, k, n);
        }
        self.pending_at_end += o.pending_at_end;
        self.unreadable += o.unreadable;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        for (p, (title, offers, sent)) in o.products {
            let e = self.products.entry(p).or_insert((title, 0, 0));
            e.1 += offers;
            e.2 += sent;
        }
        for (c, m) in o.money {
            let e = self.money.entry(c).or_default();
            e.treated += m.treated;
            e.treated_value += m.treated_value;
            e.page += m.page;
            e.email += m.email;
            e.sms += m.sms;
        }
    }

    fn report(
        self,
        store: &StoreConfig,
        window: Window,
        until: Timestamp,
        mut assumptions: Vec<String>,
    ) -> Report {
        let strings = |m: BTreeMap<&'static str, u64>| -> BTreeMap<String, u64> {
            m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
        };
        let mut by_channel_day: BTreeMap<String, BTreeMap<i64, u64>> = BTreeMap::new();
        for ((channel, day), n) in self.by_channel_day {
            *by_channel_day
                .entry(channel.to_string())
                .or_default()
                .entry(day)
                .or_default() += n;
        }
        let mut top: Vec<(String, (String, u64, u64))> = self.products.into_iter().collect();
        top.sort_by(|a, b| b.1 .1.cmp(&a.1 .1).then_with(|| a.0.cmp(&b.0)));
        let top_products = top
            .into_iter()
            .take(TOP)
            .map(|(product, (title, offers, sent))| TopProduct {
                product,
                title,
                offers,
                sent,
            })
            .collect();
        let p = &store.projection;
        let projection = self
            .money
            .into_iter()
            .map(|(c, m)| {
                let minor = |x: i128| (x / 1_000_000) as i64;
                let upsell = minor(m.page + m.email + m.sms);
                ProjectionFigures {
                    currency: c.as_str().to_string(),
                    treated_orders: m.treated,
                    treated_value: c.format_minor(m.treated_value),
                    upsell_revenue: c.format_minor(upsell),
                    page_revenue: c.format_minor(minor(m.page)),
                    email_revenue: c.format_minor(minor(m.email)),
                    sms_revenue: c.format_minor(minor(m.sms)),
                    aov_lift: if m.treated_value > 0 {
                        (upsell as f64 / m.treated_value as f64 * 10_000.0).round() / 10_000.0
                    } else {
                        0.0
                    },
                }
            })
            .collect();
        if self.unreadable > 0 {
            assumptions.push(format!(
                "{} customers were left out: a record of theirs could not be read (the first: {})",
                self.unreadable,
                self.first_error.as_deref().unwrap_or("unknown")
            ));
        }
        assumptions.push(format!(
            "projected at: page offers accepted {:.1}%, emails clicked {:.1}%, SMS clicked {:.1}%, clicks that buy {:.1}% ([stores.projection]; each message counted on its own)",
            p.page_acceptance * 100.0,
            p.email_click_rate * 100.0,
            p.sms_click_rate * 100.0,
            p.click_to_purchase * 100.0
        ));
        Report {
            store: store.id.clone(),
            from: window.from.map(Timestamp::to_rfc3339),
            to: window.to.map(Timestamp::to_rfc3339),
            until: until.to_rfc3339(),
            orders: self.orders,
            offers: strings(self.offers),
            no_touches: strings(self.no_touches),
            no_email: strings(self.no_email),
            no_sms: strings(self.no_sms),
            touches: Touches {
                planned: strings(self.planned),
                sent: strings(self.sent),
                by_channel_day,
                skipped: strings(self.skipped),
                deferred: strings(self.deferred),
                deferrals: strings(self.deferrals),
                pending_at_end: self.pending_at_end,
                waiting_at_end: strings(self.waiting_at_end),
            },
            top_products,
            projection,
            assumptions,
        }
    }
}

/// One thread's replay.
struct Sim<'a> {
    shared: &'a Shared<'a>,
    snap: &'a Snapshot,
    reader: Reader<'a>,
    counts: Counts,
    /// Where what orders outside the window do is counted (and not reported).
    scratch: Counts,
}

/// What happens in a customer's history, in time order; at one moment facts come before
/// decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Placed(usize),
    Cancelled(usize),
    Refunded(usize),
    /// A delivery fact of an order became known.
    Delivery(usize),
    /// A touch falls due (index into the touches).
    Due(usize),
}

/// A customer's record and orders, read before their replay.
struct Loaded {
    record: Option<Customer>,
    orders: Vec<Placed>,
}

/// A customer during their replay.
struct Person {
    record: Option<Customer>,
    id: Option<u64>,
    touches: Vec<SimTouch>,
    /// Messages sent to them, in time order, for the caps.
    sent: Vec<(Timestamp, Channel)>,
    last_refund: Option<Timestamp>,
    /// Their orders placed so far and not cancelled.
    earlier: u32,
    /// Orders whose sequence may still run.
    active: Vec<usize>,
    /// Counted among the customers in the window.
    counted: bool,
}

/// An order in the replay.
struct Placed {
    /// Placed inside the window: reported.
    inside: bool,
    state: OrderState,
    contacts: Vec<String>,
    refund_at: Option<i64>,
    placed: bool,
    cancelled: bool,
    /// Its products with their categories (read once placed, for later orders' history).
    products: Vec<(String, Option<String>)>,
    plan: Option<PlanRecord>,
    /// Its touches (indexes into the customer's).
    touches: Vec<usize>,
}

struct SimTouch {
    order: usize,
    rec: TouchRecord,
    done: bool,
    deferred_by: Vec<&'static str>,
}

/// Rules whose deferral only a fact can lift: the replay jumps to the first recheck after
/// the next fact instead of rechecking every few hours in between.
const WAIT_FOR_FACT: [&str; 3] = ["awaiting_delivery", "ticket_open", "delivery_failed"];

impl Sim<'_> {
    /// A customer's record and orders; an error means a damaged record.
    fn load(&self, customer: Option<u64>, ids: &[&str]) -> Result<Loaded, Error> {
        let store = self.shared.store.id.as_str();
        let record: Option<Customer> = match customer {
            Some(c) => self.snap.customer(store, c)?,
            None => None,
        };
        let mut orders: Vec<Placed> = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(state) = self.snap.order(store, id)? else {
                continue;
            };
            let Some(o) = state.order.as_ref() else {
                continue;
            };
            // When a refund happened: as the live plan recorded it, else the order's last
            // update (an export does not date refunds; counting from the order is the
            // cautious reading).
            let refund_at = if refunded(&state, o) {
                let at = o.created_at.0;
                Some(
                    match self.snap.plan(store, &o.id)?.and_then(|r| r.refunded_at) {
                        Some(r) => r.0.max(at),
                        None => o.updated_at.0.max(at),
                    },
                )
            } else {
                None
            };
            let contacts = contact_keys(record.as_ref(), Some(o));
            orders.push(Placed {
                inside: self.shared.window.contains(o.created_at.0),
                state,
                contacts,
                refund_at,
                placed: false,
                cancelled: false,
                products: Vec::new(),
                plan: None,
                touches: Vec::new(),
            });
        }
        Ok(Loaded { record, orders })
    }

    fn customer(&mut self, customer: Option<u64>, loaded: Loaded) -> Result<(), Error> {
        let sh = self.shared;
        let Loaded { record, mut orders } = loaded;
        let mut queue: BinaryHeap<Reverse<(i64, Event)>> = BinaryHeap::new();
        // Moments something changed for this customer: a deferral that only a fact can
        // lift waits for the next of these.
        let mut facts: Vec<i64> = Vec::new();
        for (i, p) in orders.iter().enumerate() {
            let o = p.state.order.as_ref().expect("kept in load");
            let at = o.created_at.0;
            queue.push(Reverse((at, Event::Placed(i))));
            facts.push(at);
            if let Some(c) = o.cancelled_at {
                queue.push(Reverse((c.0.max(at), Event::Cancelled(i))));
                facts.push(c.0.max(at));
            }
            if let Some(r) = p.refund_at {
                queue.push(Reverse((r, Event::Refunded(i))));
                facts.push(r);
            }
            let f = self.delivery(p, o);
            for t in [f.shipped_at, f.delivered_at].into_iter().flatten() {
                queue.push(Reverse((t.0.max(at), Event::Delivery(i))));
                facts.push(t.0.max(at));
            }
            for c in &p.contacts {
                for t in sh.tickets.get(c).into_iter().flatten() {
                    facts.push(t.opened_at.0);
                    facts.extend(t.closed_at.map(|c| c.0));
                }
            }
            if let Some(r) = sh.responses.get(&o.id) {
                facts.push(r.at.0);
            }
        }
        facts.sort_unstable();
        let mut c = Person {
            record,
            id: customer,
            touches: Vec::new(),
            sent: Vec::new(),
            last_refund: None,
            earlier: 0,
            active: Vec::new(),
            counted: false,
        };
        while let Some(Reverse((t, event))) = queue.pop() {
            if t > sh.until.0 {
                break;
            }
            let now = Timestamp(t);
            let order = match event {
                Event::Placed(i)
                | Event::Cancelled(i)
                | Event::Refunded(i)
                | Event::Delivery(i) => i,
                Event::Due(k) => c.touches[k].order,
            };
            if let Event::Placed(i) = event {
                let at = orders[i].state.order.as_ref().map_or(0, |o| o.created_at.0);
                if orders[i].inside && !c.counted {
                    c.counted = true;
                    self.counts.orders.customers += 1;
                } else if !orders[i].inside {
                    if sh.window.from.is_some_and(|f| at < f.0) {
                        self.counts.orders.before_window += 1;
                    } else {
                        self.counts.orders.after_window += 1;
                    }
                }
            }
            // What an order outside the window does still happens (its messages count for
            // the caps, it ends sequences) but is counted apart and not reported.
            let inside = orders[order].inside;
            if !inside {
                std::mem::swap(&mut self.counts, &mut self.scratch);
            }
            let result = self.event(&mut orders, &mut c, &facts, &mut queue, event, now);
            if !inside {
                std::mem::swap(&mut self.counts, &mut self.scratch);
            }
            result?;
        }
        self.counts.pending_at_end += c
            .touches
            .iter()
            .filter(|t| !t.done && orders[t.order].inside)
            .count() as u64;
        Ok(())
    }

    fn event(
        &mut self,
        orders: &mut [Placed],
        c: &mut Person,
        facts: &[i64],
        queue: &mut BinaryHeap<Reverse<(i64, Event)>>,
        event: Event,
        now: Timestamp,
    ) -> Result<(), Error> {
        let sh = self.shared;
        match event {
            Event::Placed(i) => self.placed(orders, i, c, now, queue)?,
            Event::Cancelled(i) => {
                if orders[i].placed && !orders[i].cancelled {
                    c.earlier = c.earlier.saturating_sub(1);
                }
                orders[i].cancelled = true;
                if let Some(rec) = orders[i]
                    .plan
                    .as_mut()
                    .filter(|r| r.status == Status::Active)
                {
                    rec.status = Status::Cancelled { at: now };
                }
            }
            Event::Refunded(i) => {
                if c.id.is_some() {
                    c.last_refund = Some(c.last_refund.map_or(now, |r| r.max(now)));
                }
                if let Some(rec) = orders[i].plan.as_mut() {
                    lifecycle::refunded(rec, now);
                }
            }
            Event::Delivery(i) => {
                if orders[i].plan.is_none() {
                    return Ok(());
                }
                let o = orders[i].state.order.as_ref().expect("kept in load");
                let known = known_at(self.delivery(&orders[i], o), now);
                let a = crate::engine::due::anchors(
                    &known,
                    &sh.store.delivery,
                    &sh.store.offers.cadence,
                )
                .not_before(now);
                for &k in &orders[i].touches {
                    let st = &mut c.touches[k];
                    if st.done {
                        continue;
                    }
                    if let Some(to) = a
                        .of(st.rec.kind, st.rec.after_delivery)
                        .filter(|to| *to != st.rec.due_at)
                    {
                        st.rec.due_at = to;
                        queue.push(Reverse((to.0, Event::Due(k))));
                    }
                }
            }
            Event::Due(k) => {
                if c.touches[k].done || c.touches[k].rec.due_at != now {
                    return Ok(()); // moved since
                }
                self.due(orders, c, k, facts, now, queue)?;
            }
        }
        Ok(())
    }

    /// An order is placed: it is planned, ends the customer's running sequence if it
    /// starts one, and joins the history of their later orders.
    fn placed(
        &mut self,
        orders: &mut [Placed],
        i: usize,
        c: &mut Person,
        now: Timestamp,
        queue: &mut BinaryHeap<Reverse<(i64, Event)>>,
    ) -> Result<(), Error> {
        let sh = self.shared;
        let store = sh.store.id.as_str();
        // As it was when placed: paid (an export without a status counts as paid, a
        // refunded order was paid first), not cancelled, not refunded yet.
        let order = as_placed(orders[i].state.order.as_ref().expect("kept in load"));
        self.counts.orders.seen += 1;
        let inputs = self.reader.order_inputs(&order)?;
        let mut shopper = shopper_of(c.record.as_ref(), &order);
        if c.record.is_some() {
            // Earlier orders not cancelled by now, newest first (as the timeline).
            shopper.prior_orders = c.earlier;
            shopper.last_refund_at = c.last_refund;
            let earlier = (0..i)
                .rev()
                .filter(|&j| orders[j].placed && !orders[j].cancelled)
                .take(HISTORY);
            for j in earlier {
                add_earlier(&mut shopper, &orders[j].products);
            }
        }
        shopper.suppressed = suppressed(sh, &orders[i].contacts);
        let (fresh, codes) = plan::plan_coded(&PlanInput {
            store,
            salt: &sh.salt,
            policy: &sh.store.offers,
            currency: sh.store.currency,
            order: &order,
            basket: &inputs.basket,
            shopper: &shopper,
            catalog: &inputs.catalog,
            candidates: &inputs.candidates,
            bundles: &inputs.bundles,
            median_order: self.reader.median,
            top_fifth_order: self.reader.top_fifth,
            now,
            seen_at: now,
        });
        let n = &mut self.counts;
        let recipe = fresh.recipe.filter(|_| fresh.offer.is_some());
        bump(&mut n.offers, recipe.map_or("none", |r| r.as_str()), 1);
        if let Some(o) = &fresh.offer {
            n.orders.with_offer += 1;
            let e = n
                .products
                .entry(o.product.clone())
                .or_insert_with(|| (o.title.clone(), 0, 0));
            e.1 += 1;
        }
        if fresh.holdout {
            n.orders.holdout += 1;
        }
        if let Some(code) = codes.stop {
            bump(&mut n.no_touches, code, 1);
        }
        if let Some(code) = codes.no_email {
            bump(&mut n.no_email, code, 1);
        }
        if let Some(code) = codes.no_sms {
            bump(&mut n.no_sms, code, 1);
        }
        for t in &fresh.touches {
            bump(&mut n.planned, t.kind.as_str(), 1);
        }
        if !fresh.touches.is_empty() {
            let m = n.money.entry(order.currency).or_default();
            m.treated += 1;
            m.treated_value += order.total;
        }
        // Sequence exclusivity: a paid, live order ends the customer's older sequences.
        if c.id.is_some() && plan::paid(&order) {
            for j in c.active.drain(..) {
                if let Some(rec) = orders[j].plan.as_mut() {
                    lifecycle::end(rec, &order.id, now);
                }
            }
        }
        let rec = lifecycle::revise(None, fresh, &order, c.id, &inputs.basket, now);
        if rec.plan.touches.iter().any(|t| t.kind == TouchKind::Page) {
            // Shown on the thank-you page as the order completes (no timer).
            self.count_sent(&rec, TouchKind::Page, Channel::Page, now);
        }
        for r in wanted(store, &rec) {
            let k = c.touches.len();
            queue.push(Reverse((r.due_at.0, Event::Due(k))));
            orders[i].touches.push(k);
            c.touches.push(SimTouch {
                order: i,
                rec: r,
                done: false,
                deferred_by: Vec::new(),
            });
        }
        if rec.status == Status::Active {
            c.active.push(i);
        }
        orders[i].plan = Some(rec);
        orders[i].products = self.reader.products(&order)?;
        orders[i].placed = true;
        c.earlier += 1;
        Ok(())
    }

    /// A touch falls due: decided with the state of this moment.
    fn due(
        &mut self,
        orders: &[Placed],
        c: &mut Person,
        k: usize,
        facts: &[i64],
        now: Timestamp,
        queue: &mut BinaryHeap<Reverse<(i64, Event)>>,
    ) -> Result<(), Error> {
        let sh = self.shared;
        let (st, sent) = (&mut c.touches[k], &mut c.sent);
        let p = &orders[st.order];
        let rec = p.plan.as_ref().expect("touches come from plans");
        let o = p.state.order.as_ref().expect("kept above");
        let suppressed = suppressed(sh, &p.contacts);
        let tickets: Vec<Ticket> = p
            .contacts
            .iter()
            .flat_map(|c| sh.tickets.get(c).into_iter().flatten())
            .filter_map(|t| t.at(now))
            .collect();
        let page_offer_accepted = sh
            .responses
            .get(&o.id)
            .is_some_and(|r| r.accepted && r.at <= now);
        let offer_stock = match &rec.plan.offer {
            Some(offer) => self.reader.stock(&offer.product)?,
            None => None,
        };
        let delivery = known_at(self.delivery(p, o), now);
        let delivered_at = delivery.delivered(&sh.store.delivery);
        let delivery_failed_at = delivery.failed();
        let week = sent.partition_point(|(t, _)| t.0 <= now.0 - 7 * DAY);
        let state = State {
            status: &rec.status,
            refunded_at: rec.refunded_at.filter(|r| *r <= now),
            suppressed: suppressed.as_ref(),
            page_offer_accepted,
            tickets: &tickets,
            recent_opens: None,
            offer_stock,
            delivered_at,
            delivery_failed_at,
            sent: &sent[week..],
            tz: crate::engine::tz::of_order(Some(o), sh.store.timezone),
        };
        let action = on_due(&st.rec.due(rec.order_at), &state, &sh.store.rules, now);
        match action {
            Action::Send => {
                st.done = true;
                if rec.customer.is_some() {
                    sent.push((now, st.rec.channel));
                }
                self.count_sent(rec, st.rec.kind, st.rec.channel, now);
                if st.rec.carries_offer {
                    if let Some(offer) = &rec.plan.offer {
                        self.count_offer_sent(
                            &offer.product,
                            st.rec.channel,
                            offer.price,
                            offer.currency,
                        );
                    }
                }
            }
            Action::Skip { code, .. } => {
                st.done = true;
                bump(&mut self.counts.skipped, code, 1);
            }
            Action::Defer { until, code, .. } => {
                bump(&mut self.counts.deferrals, code, 1);
                if !st.deferred_by.contains(&code) {
                    st.deferred_by.push(code);
                    bump(&mut self.counts.deferred, code, 1);
                }
                let mut at = until.0;
                if WAIT_FOR_FACT.contains(&code) {
                    let next = facts[facts.partition_point(|&f| f <= now.0)..].first();
                    match next {
                        None => {
                            st.done = true;
                            bump(&mut self.counts.waiting_at_end, code, 1);
                            return Ok(());
                        }
                        Some(&f) if f > at => {
                            let step = sh.store.rules.recheck_ms.max(1);
                            at += (f - at + step - 1) / step * step;
                        }
                        Some(_) => {}
                    }
                }
                st.rec.due_at = Timestamp(at);
                queue.push(Reverse((at, Event::Due(k))));
            }
        }
        Ok(())
    }

    fn count_sent(&mut self, rec: &PlanRecord, kind: TouchKind, channel: Channel, now: Timestamp) {
        let c = &mut self.counts;
        bump(&mut c.sent, kind.as_str(), 1);
        let day = (now.0 - rec.order_at.0).div_euclid(DAY);
        bump(&mut c.by_channel_day, (channel.as_str(), day), 1);
        if kind == TouchKind::Page {
            if let Some(offer) = &rec.plan.offer {
                self.count_offer_sent(&offer.product, channel, offer.price, offer.currency);
            }
        }
    }

    fn count_offer_sent(
        &mut self,
        product: &str,
        channel: Channel,
        price: i64,
        currency: Currency,
    ) {
        let p = &self.shared.store.projection;
        let rate = match channel {
            Channel::Page => p.page_acceptance,
            Channel::Sms => p.sms_click_rate * p.click_to_purchase,
            Channel::Email | Channel::Webhook => p.email_click_rate * p.click_to_purchase,
        };
        let ppm = (rate * 1_000_000.0).round() as i128;
        let m = self.counts.money.entry(currency).or_default();
        let v = i128::from(price) * ppm;
        match channel {
            Channel::Page => m.page += v,
            Channel::Sms => m.sms += v,
            Channel::Email | Channel::Webhook => m.email += v,
        }
        if let Some(e) = self.counts.products.get_mut(product) {
            e.2 += 1;
        }
    }

    /// What the history says of an order's delivery (a delivery told by hand first).
    fn delivery(&self, p: &Placed, o: &Order) -> DeliveryFacts {
        p.state
            .delivery()
            .told_by_hand(self.shared.by_hand.get(&o.id).copied())
    }
}

/// The delivery facts known at `now`: a carrier's estimate counts from the shipment.
fn known_at(f: DeliveryFacts, now: Timestamp) -> DeliveryFacts {
    let shipped_at = f.shipped_at.filter(|t| *t <= now);
    DeliveryFacts {
        shipped_at,
        delivered_at: f.delivered_at.filter(|t| *t <= now),
        estimate: f.estimate.filter(|_| shipped_at.is_some()),
        failed_at: f.failed_at.filter(|t| *t <= now),
    }
}

/// The order as it was when placed (see `Sim::placed`).
fn as_placed(o: &Order) -> Order {
    let mut order = o.clone();
    order.cancelled_at = None;
    order.refunds.clear();
    let status = order
        .financial_status
        .as_deref()
        .map(str::to_ascii_lowercase);
    if matches!(
        status.as_deref(),
        None | Some("") | Some("refunded") | Some("partially_refunded")
    ) {
        order.financial_status = Some("paid".into());
    }
    order
}

/// Why a customer known by `contacts` is on the suppression list, if they are: as it
/// stands today.
fn suppressed(sh: &Shared<'_>, contacts: &[String]) -> Option<crate::engine::plan::Suppressed> {
    contacts
        .iter()
        .find_map(|c| sh.suppressions.get(c))
        .map(|s| s.reason.clone())
}

/// Whether an order was refunded (a refund event, or the status an export gives).
fn refunded(state: &OrderState, o: &Order) -> bool {
    let status = o.financial_status.as_deref().map(str::to_ascii_lowercase);
    !state.refunds.is_empty()
        || matches!(
            status.as_deref(),
            Some("refunded") | Some("partially_refunded")
        )
}
