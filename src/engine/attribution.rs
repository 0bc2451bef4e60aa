//! Attribution: which touch earned a later order. A customer's later order that contains
//! the product an earlier order's plan offered converts that offer when it comes within
//! the window of an engagement with it: a click on one of its messages (7 days by
//! default) or an acceptance of the offer (24 hours). The last engagement before the
//! order gets the credit; every engagement inside the window is recorded as contributing.
//! A refund of the converting order worth at least the credited revenue, or its
//! cancellation, reverses the credit. Pure: the planner gathers the engagements.

use serde::{Deserialize, Serialize};

use super::model::Timestamp;
use super::plan::{Channel, TouchKind};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// How long after an engagement a purchase still counts as its conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    pub click_ms: i64,
    pub accept_ms: i64,
}

impl Default for Windows {
    fn default() -> Windows {
        Windows {
            click_ms: 7 * DAY,
            accept_ms: 24 * HOUR,
        }
    }
}

/// What the customer did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engaged {
    /// Opened a link of a message (or the offer page it leads to).
    Click,
    /// Took the offer: on the thank-you page, or on the offer page a message led to.
    Accept,
}

/// One engagement with an offer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Engagement {
    /// The touch it came through; `None` for the thank-you page (shown, not scheduled).
    pub touch: Option<u64>,
    pub kind: TouchKind,
    pub channel: Channel,
    pub what: Engaged,
    pub at: Timestamp,
}

impl Engagement {
    /// The engagement still counts for a purchase at `t`: it came before, within its
    /// window (both ends included).
    pub fn counts_at(&self, t: Timestamp, w: &Windows) -> bool {
        let window = match self.what {
            Engaged::Click => w.click_ms,
            Engaged::Accept => w.accept_ms,
        };
        // Order times come in whole seconds: an engagement in the order's second is before it.
        self.at.0 <= t.0 + 999 && t.0 - self.at.0 <= window
    }
}

/// The engagements that earn a purchase at `t`, oldest first (the credited one last), or
/// none.
pub fn contributing(engagements: &[Engagement], t: Timestamp, w: &Windows) -> Vec<Engagement> {
    let mut out: Vec<Engagement> = engagements
        .iter()
        .filter(|e| e.counts_at(t, w))
        .cloned()
        .collect();
    // Ties: the acceptance after the click that led to it.
    out.sort_by_key(|e| (e.at, e.what == Engaged::Accept));
    out
}

/// One offer's conversion, as stored under the offering order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conversion {
    /// The order whose plan made the offer.
    pub offer_order: String,
    /// The later order that bought it.
    pub order: String,
    pub customer: u64,
    /// When the converting order was placed.
    pub at: Timestamp,
    pub product: String,
    /// The recipe of the offer, for the feedback counters and the report.
    pub recipe: String,
    /// What the converting order paid for the offered product, in the store's currency's
    /// minor units (`None`: another currency without a configured rate).
    pub revenue: Option<i64>,
    /// Every engagement that earned it, oldest first; the last one has the credit.
    pub contributing: Vec<Engagement>,
    pub reversed: Option<Reversal>,
}

impl Conversion {
    /// The engagement with the credit (the last).
    pub fn credited(&self) -> &Engagement {
        self.contributing
            .last()
            .expect("a conversion has an engagement")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reversal {
    pub at: Timestamp,
    pub why: String,
}

/// Whether the converting order's state takes the credit back: cancelled, or refunded by
/// at least what it paid for the offered product (refunds name amounts on every platform,
/// lines only on some, so the amount decides). `refunded` is the order's refunded total
/// in its own currency; `paid` what it paid for the product, in the same.
pub fn reversal(
    cancelled_at: Option<Timestamp>,
    refunded: i64,
    paid: i64,
    refund_at: Timestamp,
) -> Option<Reversal> {
    if let Some(at) = cancelled_at {
        return Some(Reversal {
            at,
            why: "the converting order was cancelled".into(),
        });
    }
    (refunded > 0 && refunded >= paid).then(|| Reversal {
        at: refund_at,
        why: "the converting order was refunded".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(what: Engaged, at: i64) -> Engagement {
        Engagement {
            touch: (what == Engaged::Click).then_some(7),
            kind: TouchKind::Touch1,
            channel: Channel::Email,
            what,
            at: Timestamp(at),
        }
    }

    #[test]
    fn windows_include_their_edges_and_nothing_past_them() {
        let w = Windows::default();
        let click = e(Engaged::Click, 1_000);
        assert!(click.counts_at(Timestamp(1_000), &w), "the same instant");
        assert!(click.counts_at(Timestamp(1_000 + 7 * DAY), &w), "7 days on");
        assert!(!click.counts_at(Timestamp(1_000 + 7 * DAY + 1), &w));
        // A click at 1.5 s and an order stamped 1 s (whole seconds): the same second.
        let mid = e(Engaged::Click, 1_500);
        assert!(
            mid.counts_at(Timestamp(1_000), &w),
            "an order in the click's second"
        );
        assert!(
            !mid.counts_at(Timestamp(0), &w),
            "a purchase a second before the click"
        );
        let accept = e(Engaged::Accept, 1_000);
        assert!(accept.counts_at(Timestamp(1_000 + 24 * HOUR), &w));
        assert!(!accept.counts_at(Timestamp(1_000 + 24 * HOUR + 1), &w));
    }

    #[test]
    fn the_last_engagement_has_the_credit() {
        let w = Windows::default();
        let all = [
            e(Engaged::Click, 5 * DAY),
            e(Engaged::Click, 0),
            e(Engaged::Accept, 5 * DAY),
            e(Engaged::Click, 9 * DAY), // after the purchase
        ];
        let got = contributing(&all, Timestamp(6 * DAY), &w);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].at, Timestamp(0));
        assert_eq!(got[2].what, Engaged::Accept, "the accept the click led to");
        // Eight days on: the first click and the accept are out of their windows.
        let got = contributing(&all, Timestamp(8 * DAY), &w);
        assert_eq!(got, vec![e(Engaged::Click, 5 * DAY)]);
        assert!(contributing(&all, Timestamp(20 * DAY), &w).is_empty());
    }

    #[test]
    fn refunds_of_at_least_the_product_or_a_cancellation_reverse() {
        let t = Timestamp(5);
        assert_eq!(reversal(None, 0, 1900, t), None);
        assert_eq!(reversal(None, 500, 1900, t), None, "a smaller refund");
        assert!(reversal(None, 1900, 1900, t).is_some());
        let r = reversal(Some(Timestamp(3)), 0, 1900, t).unwrap();
        assert_eq!(r.at, Timestamp(3));
        assert!(r.why.contains("cancelled"));
    }
}
