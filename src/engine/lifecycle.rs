//! What happens to a stored plan after it was made: the order is edited (upsell apps edit
//! orders within the hour), cancelled or refunded, or the customer buys again (a new
//! purchase ends the running sequence). Pure: the processor loads the record, calls one of
//! these, and stores the result; every change is written into the record's history.

use serde::{Deserialize, Serialize};

use super::model::Timestamp;
use super::plan::{BasketLine, Plan, TouchKind};

/// One order's plan as stored, with what became of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanRecord {
    pub order_id: String,
    pub order_name: String,
    pub customer: Option<u64>,
    /// When the order was placed: sequences end in order-time order.
    pub order_at: Timestamp,
    /// When the order was first planned (the age limit counts to then).
    pub first_planned_at: Timestamp,
    /// 1 for the first plan; each replacement adds one.
    pub revision: u32,
    pub plan: Plan,
    /// Touches already sent (the scheduler adds them); once one is, the plan is only
    /// adjusted, never replaced.
    pub sent: Vec<TouchKind>,
    pub status: Status,
    pub refunded_at: Option<Timestamp>,
    /// What happened to the plan, oldest first, each line starting with its time.
    pub history: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Its remaining touches go out as planned.
    Active,
    /// The order was cancelled: nothing more goes out.
    Cancelled { at: Timestamp },
    /// The customer bought again: that order's sequence replaces this one.
    Ended { at: Timestamp, by_order: String },
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Cancelled { .. } => "cancelled",
            Status::Ended { .. } => "ended",
        }
    }
}

/// The touches that carry the offer itself (the review, the reminder and the win-back do
/// not).
fn carries_offer(kind: TouchKind) -> bool {
    matches!(
        kind,
        TouchKind::Page | TouchKind::Touch1 | TouchKind::Sms | TouchKind::Touch2
    )
}

/// The record after a (new version of the) order was planned again: `fresh` is what
/// `plan` decided for the order as it is now, `basket` its lines.
pub fn revise(
    old: Option<PlanRecord>,
    fresh: Plan,
    order: &super::model::Order,
    customer: Option<u64>,
    basket: &[BasketLine],
    now: Timestamp,
) -> PlanRecord {
    let at = now.to_rfc3339();
    let Some(mut rec) = old else {
        let mut rec = PlanRecord {
            order_id: order.id.clone(),
            order_name: order.name.clone(),
            customer,
            order_at: order.created_at,
            first_planned_at: now,
            revision: 1,
            plan: fresh,
            sent: Vec::new(),
            status: Status::Active,
            refunded_at: None,
            history: vec![format!("{at} planned")],
        };
        if let Some(t) = order.cancelled_at {
            rec.status = Status::Cancelled { at: t };
        }
        return rec;
    };
    rec.order_name = order.name.clone();
    rec.customer = rec.customer.or(customer);
    if let Some(t) = order.cancelled_at {
        if rec.status == Status::Active {
            rec.status = Status::Cancelled { at: t };
            rec.history.push(format!(
                "{at} the order was cancelled: nothing more goes out"
            ));
        }
        return rec;
    }
    if let Status::Ended { by_order, .. } = &rec.status {
        rec.history.push(format!(
            "{at} the order changed; the plan stays ended (order {by_order} started a newer sequence)"
        ));
        return rec;
    }
    if rec.sent.is_empty() {
        if same_decision(&rec.plan, &fresh) {
            return rec;
        }
        rec.revision += 1;
        rec.plan = fresh;
        rec.status = Status::Active;
        rec.history.push(format!(
            "{at} the order changed before anything was sent: plan replaced (revision {})",
            rec.revision
        ));
        return rec;
    }
    // Something went out: the customer has seen this plan, so it is only adjusted.
    let added = rec
        .plan
        .offer
        .as_ref()
        .filter(|o| basket.iter().any(|l| l.product == o.product))
        .map(|o| o.product.clone());
    match added {
        Some(product) => {
            rec.plan.offer = None;
            let sent = rec.sent.clone();
            rec.plan
                .touches
                .retain(|t| !carries_offer(t.kind) || sent.contains(&t.kind));
            rec.revision += 1;
            rec.history.push(format!(
                "{at} the order changed after the first send: {product} is in it now, so it is no longer offered (revision {})",
                rec.revision
            ));
        }
        None => rec.history.push(format!(
            "{at} the order changed after the first send: the plan is kept"
        )),
    }
    rec
}

/// Whether two plans decide the same (their reasons may differ in live figures such as a
/// confidence that moved with the latest orders).
fn same_decision(a: &Plan, b: &Plan) -> bool {
    a.recipe == b.recipe
        && a.offer == b.offer
        && a.holdout == b.holdout
        && a.variants == b.variants
        && a.touches == b.touches
}

/// Ends `rec`'s sequence because the same customer placed `by_order`, unless it already
/// ended. Returns whether it changed.
pub fn end(rec: &mut PlanRecord, by_order: &str, now: Timestamp) -> bool {
    if rec.status != Status::Active || rec.order_id == by_order {
        return false;
    }
    rec.status = Status::Ended {
        at: now,
        by_order: by_order.to_string(),
    };
    rec.history.push(format!(
        "{} the customer bought again (order {by_order}): this sequence ends, its remaining touches are skipped",
        now.to_rfc3339()
    ));
    true
}

/// Marks a refund on the order (the scheduler re-checks refunds before each touch).
pub fn refunded(rec: &mut PlanRecord, at: Timestamp) -> bool {
    if rec.refunded_at.is_some_and(|t| t >= at) {
        return false;
    }
    rec.refunded_at = Some(at);
    rec.history.push(format!("{} refund", at.to_rfc3339()));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::Order;
    use crate::engine::plan::{Channel, Offer, Recipe, Touch};
    use crate::engine::Currency;

    const T0: i64 = 1_790_000_000_000;

    fn order(id: &str) -> Order {
        Order::sample(id, Timestamp(T0), 2000)
    }

    fn plan(offer: &str) -> Plan {
        let touch = |kind, channel, minutes: i64| Touch {
            kind,
            channel,
            due_at: Timestamp(T0 + minutes * 60_000),
            after_delivery: false,
        };
        Plan {
            recipe: Some(Recipe::CrossSell),
            offer: Some(Offer {
                product: offer.into(),
                sku: Some(offer.into()),
                variant_id: None,
                title: offer.into(),
                price: 800,
                currency: Currency::parse("USD").unwrap(),
                discount_code: None,
                trust: false,
                urgency: false,
            }),
            holdout: false,
            variants: vec![],
            touches: vec![
                touch(TouchKind::Page, Channel::Page, 0),
                touch(TouchKind::Touch1, Channel::Email, 20),
                touch(TouchKind::Touch2, Channel::Email, 5760),
                touch(TouchKind::Review, Channel::Email, 21600),
            ],
            reasons: vec![format!("offer {offer}")],
        }
    }

    fn line(product: &str) -> BasketLine {
        BasketLine {
            product: product.into(),
            quantity: 1,
            unit_price: 800,
            gift_card: false,
        }
    }

    fn kinds(rec: &PlanRecord) -> Vec<&'static str> {
        rec.plan.touches.iter().map(|t| t.kind.as_str()).collect()
    }

    #[test]
    fn an_update_before_the_first_send_replaces_the_plan() {
        let o = order("1");
        let first = revise(None, plan("COASTER"), &o, Some(7), &[], Timestamp(T0));
        assert_eq!((first.revision, first.status.clone()), (1, Status::Active));
        // Same decision again (a duplicate update, or only a live figure in a reason
        // moved): nothing changes.
        let mut again = plan("COASTER");
        again.reasons = vec!["offer COASTER (confidence now 21%)".into()];
        let same = revise(
            Some(first.clone()),
            again,
            &o,
            Some(7),
            &[],
            Timestamp(T0 + 1),
        );
        assert_eq!(same, first);
        let replaced = revise(
            Some(first),
            plan("LID"),
            &o,
            Some(7),
            &[line("COASTER")],
            Timestamp(T0 + 60_000),
        );
        assert_eq!(replaced.revision, 2);
        assert_eq!(replaced.plan.offer.unwrap().product, "LID");
        assert!(replaced.history[1].contains("plan replaced (revision 2)"));
    }

    #[test]
    fn an_update_after_the_first_send_only_adjusts_it() {
        let o = order("1");
        let mut rec = revise(None, plan("COASTER"), &o, Some(7), &[], Timestamp(T0));
        rec.sent.push(TouchKind::Page);
        // The new decision is not taken: the customer has seen the old offer.
        let kept = revise(
            Some(rec.clone()),
            plan("LID"),
            &o,
            Some(7),
            &[line("MUG")],
            Timestamp(T0 + 1),
        );
        assert_eq!(kept.plan.offer.as_ref().unwrap().product, "COASTER");
        assert_eq!(kept.revision, 1);
        assert!(kept.history[1].ends_with("the plan is kept"));
        // The customer added the offered product (the page offer was accepted): it is no
        // longer offered; the sent page stays on record, the review still goes out.
        let adjusted = revise(
            Some(rec),
            plan("LID"),
            &o,
            Some(7),
            &[line("MUG"), line("COASTER")],
            Timestamp(T0 + 2),
        );
        assert_eq!(adjusted.plan.offer, None);
        assert_eq!(kinds(&adjusted), ["page", "review"]);
        assert_eq!(adjusted.revision, 2);
        assert!(adjusted.history[1].contains("COASTER is in it now"));
    }

    #[test]
    fn cancellation_cancels_and_stays_cancelled() {
        let mut o = order("1");
        let rec = revise(None, plan("COASTER"), &o, None, &[], Timestamp(T0));
        o.cancelled_at = Some(Timestamp(T0 + 5));
        let cancelled = revise(Some(rec), plan("LID"), &o, None, &[], Timestamp(T0 + 9));
        assert_eq!(
            cancelled.status,
            Status::Cancelled {
                at: Timestamp(T0 + 5)
            }
        );
        assert_eq!(cancelled.plan.offer.as_ref().unwrap().product, "COASTER");
        // A cancelled order seen first is stored cancelled.
        let first = revise(None, plan("LID"), &o, None, &[], Timestamp(T0));
        assert_eq!(first.status.as_str(), "cancelled");
    }

    #[test]
    fn a_new_purchase_ends_the_running_sequence_once() {
        let mut older = revise(
            None,
            plan("COASTER"),
            &order("1"),
            Some(7),
            &[],
            Timestamp(T0),
        );
        assert!(end(&mut older, "2", Timestamp(T0 + 9)));
        assert!(!end(&mut older, "3", Timestamp(T0 + 10)), "ends once");
        assert_eq!(
            older.status,
            Status::Ended {
                at: Timestamp(T0 + 9),
                by_order: "2".into()
            }
        );
        // An edit of the ended order does not bring its sequence back.
        let edited = revise(
            Some(older),
            plan("LID"),
            &order("1"),
            Some(7),
            &[],
            Timestamp(T0 + 11),
        );
        assert_eq!(edited.status.as_str(), "ended");
        assert_eq!(edited.plan.offer.unwrap().product, "COASTER");
        // An order never ends its own sequence.
        let mut own = revise(None, plan("LID"), &order("2"), Some(7), &[], Timestamp(T0));
        assert!(!end(&mut own, "2", Timestamp(T0)));
    }

    #[test]
    fn refunds_are_marked_once() {
        let mut rec = revise(None, plan("COASTER"), &order("1"), None, &[], Timestamp(T0));
        assert!(refunded(&mut rec, Timestamp(T0 + 5)));
        assert!(!refunded(&mut rec, Timestamp(T0 + 5)));
        assert_eq!(rec.refunded_at, Some(Timestamp(T0 + 5)));
    }
}
