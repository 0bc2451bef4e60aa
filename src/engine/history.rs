//! Customer history kept by counting orders ourselves (Shopify stopped sending
//! `orders_count`): applying one normalized event to an order's state and its customer.
//!
//! Pure and idempotent: applying the same event twice changes nothing, and an older
//! version of an order never replaces a newer one (deliveries come out of order).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::model::*;
use super::money::Currency;

/// Opaque internal customer id, unique within a store. Never derived from personal data.
pub type CustomerId = u64;

/// Everything known about one order, gathered from its events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    /// The latest version of the order; `None` while only later events (a refund that
    /// overtook its order) have arrived.
    pub order: Option<Order>,
    pub customer: Option<CustomerId>,
    pub source: Option<Source>,
    /// What this order currently adds to its customer's history.
    pub counted: Option<Counted>,
    pub refunds: Vec<(String, i64)>,
    pub fulfillments: Vec<Fulfillment>,
    pub shipped_at: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
    pub delivery_estimate: Option<Timestamp>,
    /// When a platform last said the order changed without sending it: the order must be
    /// fetched (the platform-API issue does that and clears this).
    pub fetch_requested: Option<Timestamp>,
    /// The latest failed delivery attempt a carrier reported.
    pub delivery_failed_at: Option<Timestamp>,
}

impl OrderState {
    /// What is known of the order's delivery.
    pub fn delivery(&self) -> super::due::DeliveryFacts {
        super::due::DeliveryFacts {
            shipped_at: self.shipped_at,
            delivered_at: self.delivered_at,
            estimate: self.delivery_estimate,
            failed_at: self.delivery_failed_at,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counted {
    pub total: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub id: CustomerId,
    pub platform_ids: Vec<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub tags: Vec<String>,
    pub email_consent: Consent,
    pub sms_consent: Consent,
    /// `updated_at` of the order version the contact details above came from.
    pub contact_from: Option<Timestamp>,
    pub order_count: u32,
    pub spent: i64,
    pub refunded: i64,
    pub currency: Option<Currency>,
    pub first_order_at: Option<Timestamp>,
    pub last_order_at: Option<Timestamp>,
    pub product_ids: BTreeSet<String>,
}

impl Customer {
    pub fn new(id: CustomerId) -> Customer {
        Customer {
            id,
            ..Customer::default()
        }
    }

    /// Lifetime value net of refunds, in minor units.
    pub fn lifetime_value(&self) -> i64 {
        self.spent - self.refunded
    }
}

/// What applying an event did, for counters and for the planner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The first version of this order.
    NewOrder,
    /// A newer version of a known order, or a new refund, fulfillment or delivery fact.
    Changed,
    /// Seen before, or older than what we have: nothing changed.
    Unchanged,
}

/// Normalizes an email for identity lookups: trimmed and lower-cased.
pub fn normalize_email(email: &str) -> Option<String> {
    let e = email.trim().to_ascii_lowercase();
    (e.contains('@') && e.len() >= 3).then_some(e)
}

/// Applies one event to its order's state and (when known) its customer.
pub fn apply(
    state: &mut OrderState,
    customer: Option<&mut Customer>,
    event: &Event,
    source: Source,
) -> Applied {
    match event {
        Event::Order { order, .. } => apply_order(state, customer, order, source),
        Event::Refund(r) => {
            if state.refunds.iter().any(|(id, _)| *id == r.id) {
                return Applied::Unchanged;
            }
            state.refunds.push((r.id.clone(), r.amount));
            if let (Some(c), Some(_)) = (customer, state.counted) {
                c.refunded += r.amount;
            }
            Applied::Changed
        }
        Event::Fulfillment(f) => {
            match state.fulfillments.iter_mut().find(|x| x.id == f.id) {
                Some(x) if x.at > f.at || x == f => return Applied::Unchanged,
                Some(x) => *x = f.clone(),
                None => state.fulfillments.push(f.clone()),
            }
            state.shipped_at = Some(state.shipped_at.map_or(f.at, |s| s.min(f.at)));
            Applied::Changed
        }
        Event::Catalog(_) => Applied::Unchanged,
        Event::Notice(n) => {
            if state.fetch_requested.is_some_and(|t| t >= n.at) {
                return Applied::Unchanged;
            }
            state.fetch_requested = Some(n.at);
            Applied::Changed
        }
        Event::Delivery(d) => {
            let before = (
                state.shipped_at,
                state.delivered_at,
                state.delivery_estimate,
                state.delivery_failed_at,
            );
            match d.status {
                DeliveryStatus::Delivered => {
                    state.delivered_at = Some(state.delivered_at.map_or(d.at, |x| x.min(d.at)))
                }
                DeliveryStatus::Shipped | DeliveryStatus::InTransit => {
                    state.shipped_at = Some(state.shipped_at.map_or(d.at, |x| x.min(d.at)))
                }
                DeliveryStatus::Failed => {
                    state.delivery_failed_at =
                        Some(state.delivery_failed_at.map_or(d.at, |x| x.max(d.at)))
                }
                _ => {}
            }
            if d.estimated_at.is_some() {
                state.delivery_estimate = d.estimated_at;
            }
            if before
                == (
                    state.shipped_at,
                    state.delivered_at,
                    state.delivery_estimate,
                    state.delivery_failed_at,
                )
            {
                Applied::Unchanged
            } else {
                Applied::Changed
            }
        }
    }
}

fn apply_order(
    state: &mut OrderState,
    customer: Option<&mut Customer>,
    order: &Order,
    source: Source,
) -> Applied {
    let first = state.order.is_none();
    if let Some(old) = &state.order {
        // An export row never replaces what the platform itself sent about the order.
        if order.updated_at < old.updated_at
            || old == order
            || (source == Source::Import && state.source.is_some_and(Source::live))
        {
            return Applied::Unchanged;
        }
    }
    state.order = Some(order.clone());
    state.source.get_or_insert(source);
    let new_refunds: Vec<(String, i64)> = order
        .refunds
        .iter()
        .filter(|(id, _)| !state.refunds.iter().any(|(seen, _)| seen == id))
        .cloned()
        .collect();
    let new_refunded: i64 = new_refunds.iter().map(|(_, a)| a).sum();
    state.refunds.extend(new_refunds);
    let Some(c) = customer else {
        return if first {
            Applied::NewOrder
        } else {
            Applied::Changed
        };
    };
    if c.contact_from.is_none_or(|t| order.updated_at >= t) {
        refresh_contact(c, order);
    }
    let now = order
        .cancelled_at
        .is_none()
        .then_some(Counted { total: order.total });
    match (state.counted, now) {
        (None, Some(n)) => {
            c.order_count += 1;
            c.spent += n.total;
            // Refunds that overtook their order count once the order does.
            c.refunded += state.refunds.iter().map(|(_, a)| a).sum::<i64>();
            c.currency.get_or_insert(order.currency);
            c.first_order_at = Some(
                c.first_order_at
                    .map_or(order.created_at, |t| t.min(order.created_at)),
            );
            c.last_order_at = Some(
                c.last_order_at
                    .map_or(order.created_at, |t| t.max(order.created_at)),
            );
            for line in &order.lines {
                if let Some(p) = &line.product_id {
                    c.product_ids.insert(p.clone());
                }
            }
        }
        (Some(o), None) => {
            c.order_count = c.order_count.saturating_sub(1);
            c.spent -= o.total;
            // Refunds new in this version were never added.
            c.refunded -= state.refunds.iter().map(|(_, a)| a).sum::<i64>() - new_refunded;
        }
        (Some(o), Some(n)) => {
            c.spent += n.total - o.total;
            c.refunded += new_refunded;
        }
        (None, None) => {}
    }
    state.counted = now;
    if first {
        Applied::NewOrder
    } else {
        Applied::Changed
    }
}

fn refresh_contact(c: &mut Customer, order: &Order) {
    c.contact_from = Some(order.updated_at);
    if let Some(email) = order.contact_email().and_then(normalize_email) {
        c.email = Some(email);
    }
    let cref = order.customer.as_ref();
    if let Some(phone) = cref.and_then(|r| r.phone.clone()).or(order.phone.clone()) {
        c.phone = Some(phone);
    }
    if let Some(r) = cref {
        if let Some(id) = &r.platform_id {
            if !c.platform_ids.contains(id) {
                c.platform_ids.push(id.clone());
            }
        }
        c.tags = r.tags.clone();
        if r.email_consent != Consent::Unknown {
            c.email_consent = r.email_consent;
        }
        if r.sms_consent != Consent::Unknown {
            c.sms_consent = r.sms_consent;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, total: i64, updated: i64) -> Event {
        Event::Order {
            topic: OrderTopic::Paid,
            order: Box::new(Order {
                updated_at: Timestamp(updated),
                email: Some("A@Example.com".into()),
                ..Order::sample(id, Timestamp(1_000), total)
            }),
        }
    }

    fn refund(id: &str, amount: i64) -> Event {
        Event::Refund(Refund {
            id: id.into(),
            order_id: "1".into(),
            created_at: Timestamp(5_000),
            currency: None,
            amount,
            lines: vec![],
        })
    }

    /// Applies events in order; returns what each did and the customer's
    /// (order count, spent, refunded).
    fn check(events: &[Event]) -> (Vec<Applied>, (u32, i64, i64)) {
        let mut state = OrderState::default();
        let mut c = Customer::new(1);
        let applied = events
            .iter()
            .map(|e| apply(&mut state, Some(&mut c), e, Source::Webhook))
            .collect();
        (applied, (c.order_count, c.spent, c.refunded))
    }

    use Applied::*;

    #[test]
    fn applying_twice_changes_nothing() {
        let e = order("1", 5000, 2_000);
        assert_eq!(
            check(&[e.clone(), e]),
            (vec![NewOrder, Unchanged], (1, 5000, 0))
        );
        let r = refund("r", 700);
        assert_eq!(
            check(&[order("1", 5000, 2_000), r.clone(), r]),
            (vec![NewOrder, Changed, Unchanged], (1, 5000, 700))
        );
    }

    #[test]
    fn an_edited_order_adjusts_spend_and_a_stale_one_is_ignored() {
        assert_eq!(
            check(&[
                order("1", 5000, 2_000),
                order("1", 6500, 3_000),
                order("1", 5000, 2_000)
            ]),
            (vec![NewOrder, Changed, Unchanged], (1, 6500, 0))
        );
    }

    #[test]
    fn a_refund_before_its_order_counts_once_the_order_does() {
        assert_eq!(
            check(&[refund("r", 700), order("1", 5000, 2_000)]),
            (vec![Changed, NewOrder], (1, 5000, 700))
        );
    }

    #[test]
    fn refunds_listed_in_an_order_count_once_whichever_way_they_come() {
        let mut with_refund = order("1", 5000, 3_000);
        if let Event::Order { order, .. } = &mut with_refund {
            order.refunds = vec![("r".into(), 700)];
        }
        assert_eq!(
            check(&[
                order("1", 5000, 2_000),
                with_refund.clone(),
                refund("r", 700)
            ]),
            (vec![NewOrder, Changed, Unchanged], (1, 5000, 700))
        );
        assert_eq!(
            check(&[refund("r", 700), with_refund]),
            (vec![Changed, NewOrder], (1, 5000, 700))
        );
    }

    #[test]
    fn contact_email_is_normalized() {
        let mut state = OrderState::default();
        let mut c = Customer::new(1);
        apply(&mut state, Some(&mut c), &order("1", 1, 1), Source::Import);
        assert_eq!(c.email.as_deref(), Some("a@example.com"));
        assert_eq!(state.source, Some(Source::Import));
        assert_eq!(normalize_email("  no-at-sign "), None);
    }
}
