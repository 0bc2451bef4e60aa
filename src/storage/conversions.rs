//! Conversions of offers (`engine::attribution`): found by the planner when it plans a
//! customer's later order, written in its pass's transaction together with the plans, and
//! read by `explain` and the lift report. The affinity feedback counters change in the
//! same transaction as the conversion, once each way.

use redb::ReadableTable;

use super::tables::*;
use super::{codec, Error, Snapshot};
use crate::engine::attribution::{Conversion, Engaged, Engagement};
use crate::engine::plan::{Channel, TouchKind};

const CONVERSION_V1: u8 = 1;
/// A refund within this long of the conversion lowers the pair's feedback
/// (`Feedback::refunded`).
const REFUND_FEEDBACK_MS: i64 = 30 * 86_400_000;

fn decode(bytes: &[u8]) -> Result<Conversion, Error> {
    codec::decode("conversion", CONVERSION_V1, bytes)
}

impl Snapshot {
    /// The conversion of the offer `offer_order`'s plan made, if any.
    pub fn conversion(&self, store: &str, offer_order: &str) -> Result<Option<Conversion>, Error> {
        self.conversions
            .get((store, offer_order))?
            .map(|v| decode(v.value()))
            .transpose()
    }

    /// Every conversion of a store.
    pub fn store_conversions(&self, store: &str) -> Result<Vec<Conversion>, Error> {
        let mut out = Vec::new();
        for item in self.conversions.range((store, "")..)? {
            let (k, v) = item?;
            if k.value().0 != store {
                break;
            }
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// How the customer engaged with an order's offer: clicks on the messages that carry
    /// it, and an acceptance (through the message whose offer page it came from, else the
    /// thank-you page). Oldest first.
    pub fn engagements(&self, store: &str, order: &str) -> Result<Vec<Engagement>, Error> {
        let touches = self.touches_of(store, order)?;
        let mut out = Vec::new();
        for (id, t) in touches.iter().filter(|(_, t)| t.carries_offer) {
            for (at, _) in self.clicks(*id)? {
                out.push(Engagement {
                    touch: Some(*id),
                    kind: t.kind,
                    channel: t.channel,
                    what: Engaged::Click,
                    at,
                });
            }
        }
        if let Some(r) = self.offer_response(store, order)?.filter(|r| r.accepted) {
            let via = r.via.and_then(|v| touches.iter().find(|(id, _)| *id == v));
            out.push(Engagement {
                touch: via.map(|(id, _)| *id),
                kind: via.map_or(TouchKind::Page, |(_, t)| t.kind),
                channel: via.map_or(Channel::Page, |(_, t)| t.channel),
                what: Engaged::Accept,
                at: r.at,
            });
        }
        out.sort_by_key(|e| e.at);
        Ok(out)
    }
}

/// Writes a conversion the planner found, or its reversal, inside the planner's
/// transaction. An offer converts once: the first converting order stands, and a later
/// one changes nothing but that order's own reversal. A new conversion counts as an
/// acceptance in the feedback (unless the thank-you page's acceptance already did), a
/// reversal within 30 days as a refund; both are written into the offer's plan history.
pub(super) fn write_in(
    tx: &redb::WriteTransaction,
    store: &str,
    c: &Conversion,
) -> Result<(), Error> {
    let key = (store, c.offer_order.as_str());
    let old = tx
        .open_table(CONVERSIONS)?
        .get(key)?
        .map(|v| decode(v.value()))
        .transpose()?;
    let credited = c.credited();
    let via = match credited.channel {
        Channel::Page => "the thank-you page".to_string(),
        ch => format!("the {} {}", credited.kind.as_str(), ch.as_str()),
    };
    let what = match credited.what {
        Engaged::Click => "click",
        Engaged::Accept => "acceptance",
    };
    let (at, note, accepted) = match (&old, &c.reversed) {
        (None, None) => (
            c.at,
            format!(
                "converted: order {} bought {} (credit: {what} on {via})",
                c.order, c.product
            ),
            true,
        ),
        (Some(o), Some(r)) if o.order == c.order && o.reversed.is_none() => (
            r.at,
            format!(
                "the conversion by order {} was taken back: {}",
                c.order, r.why
            ),
            false,
        ),
        _ => return Ok(()),
    };
    tx.open_table(CONVERSIONS)?
        .insert(key, codec::encode(CONVERSION_V1, c)?.as_slice())?;
    let Some(mut rec) = super::plans::stored_plan(tx, store, &c.offer_order)? else {
        return Ok(());
    };
    rec.history.push(format!("{} {note}", at.to_rfc3339()));
    tx.open_table(PLANS)?
        .insert(key, super::plans::encode_plan(&rec)?.as_slice())?;
    if accepted {
        let page_counted = tx
            .open_table(OFFER_RESPONSES)?
            .get(key)?
            .map(|v| super::intake::decode_response(v.value()))
            .transpose()?
            .is_some_and(|r| r.accepted);
        if !page_counted {
            super::intake::count_feedback(tx, store, &rec, |f| f.accepted += 1)?;
        }
    } else if c
        .reversed
        .as_ref()
        .is_some_and(|r| r.at.0 - c.at.0 <= REFUND_FEEDBACK_MS)
    {
        super::intake::count_feedback(tx, store, &rec, |f| f.refunded += 1)?;
    }
    Ok(())
}
