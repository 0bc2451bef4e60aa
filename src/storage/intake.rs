//! State that decisions at a touch's due time read and that later intakes (help desk,
//! thank-you page, email engagement, carriers) will write; until then the CLI and the
//! admin API set it: support tickets, page-offer responses, deliveries told by hand.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::tables::*;
use super::{codec, Error, Snapshot, Storage};
use crate::engine::due::Ticket;
use crate::engine::Timestamp;

const TICKET_V1: u8 = 1;
/// `OfferResponse` without `via`.
const RESPONSE_V1: u8 = 1;
const RESPONSE_V2: u8 = 2;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct TicketRow {
    open: bool,
    csat: Option<u8>,
    opened_at: Timestamp,
    closed_at: Option<Timestamp>,
}

/// What the customer did with the thank-you page offer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferResponse {
    pub accepted: bool,
    pub at: Timestamp,
    /// The message touch whose offer page the answer came from; `None`: the thank-you
    /// page (and every answer stored before this was kept).
    pub via: Option<u64>,
}

/// An offer response of either stored version.
pub(super) fn decode_response(bytes: &[u8]) -> Result<OfferResponse, Error> {
    #[derive(Deserialize)]
    struct V1 {
        accepted: bool,
        at: Timestamp,
    }
    if bytes.first() == Some(&RESPONSE_V1) {
        let v: V1 = codec::decode("offer response", RESPONSE_V1, bytes)?;
        return Ok(OfferResponse {
            accepted: v.accepted,
            at: v.at,
            via: None,
        });
    }
    codec::decode("offer response", RESPONSE_V2, bytes)
}

/// A ticket with its times, for deciding as of a past moment (`replay`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedTicket {
    pub ticket: Ticket,
    pub opened_at: Timestamp,
    pub closed_at: Option<Timestamp>,
}

impl TimedTicket {
    /// The ticket as it stood at `t`, if it was opened by then.
    pub fn at(&self, t: Timestamp) -> Option<Ticket> {
        if self.opened_at > t {
            return None;
        }
        let closed = self.closed_at.is_some_and(|c| c <= t);
        Some(Ticket {
            id: self.ticket.id.clone(),
            open: !closed,
            csat: if closed { self.ticket.csat } else { None },
        })
    }
}

impl Snapshot {
    /// Every ticket of a store with its times: (contact, ticket).
    pub fn store_tickets(&self, store: &str) -> Result<Vec<(String, TimedTicket)>, Error> {
        self.timed_tickets(store, None)
    }

    /// A store's tickets, or one contact's: (contact, ticket).
    fn timed_tickets(
        &self,
        store: &str,
        contact: Option<&str>,
    ) -> Result<Vec<(String, TimedTicket)>, Error> {
        let mut out = Vec::new();
        for item in self.tickets.range((store, contact.unwrap_or(""), "")..)? {
            let (k, v) = item?;
            let (s, c, id) = k.value();
            if s != store || contact.is_some_and(|want| want != c) {
                break;
            }
            let row: TicketRow = codec::decode("ticket", TICKET_V1, v.value())?;
            out.push((
                c.to_string(),
                TimedTicket {
                    ticket: Ticket {
                        id: id.to_string(),
                        open: row.open,
                        csat: row.csat,
                    },
                    opened_at: row.opened_at,
                    closed_at: row.closed_at,
                },
            ));
        }
        Ok(out)
    }

    /// Every page-offer response of a store: (order, response).
    pub fn store_offer_responses(
        &self,
        store: &str,
    ) -> Result<Vec<(String, OfferResponse)>, Error> {
        let mut out = Vec::new();
        for item in self.offer_responses.range((store, "")..)? {
            let (k, v) = item?;
            let (s, order) = k.value();
            if s != store {
                break;
            }
            out.push((order.to_string(), decode_response(v.value())?));
        }
        Ok(out)
    }

    /// Every delivery told by hand in a store: (order, when).
    pub fn store_deliveries_by_hand(&self, store: &str) -> Result<Vec<(String, Timestamp)>, Error> {
        let mut out = Vec::new();
        for item in self.deliveries.range((store, "")..)? {
            let (k, v) = item?;
            let (s, order) = k.value();
            if s != store {
                break;
            }
            out.push((order.to_string(), Timestamp(v.value())));
        }
        Ok(out)
    }

    /// The tickets of a contact (a suppression-list key: `email:...` or `phone:...`).
    pub fn tickets(&self, store: &str, contact: &str) -> Result<Vec<Ticket>, Error> {
        Ok(self
            .timed_tickets(store, Some(contact))?
            .into_iter()
            .map(|(_, t)| t.ticket)
            .collect())
    }

    pub fn offer_response(&self, store: &str, order: &str) -> Result<Option<OfferResponse>, Error> {
        self.offer_responses
            .get((store, order))?
            .map(|v| decode_response(v.value()))
            .transpose()
    }

    /// What is known of an order's delivery: its events (`state`), with a delivery told by
    /// hand taking precedence.
    pub fn delivery(
        &self,
        store: &str,
        order: &str,
        state: Option<&crate::engine::history::OrderState>,
    ) -> Result<crate::engine::due::DeliveryFacts, Error> {
        let facts = state.map(|s| s.delivery()).unwrap_or_default();
        Ok(facts.told_by_hand(self.delivered_by_hand(store, order)?))
    }

    /// A delivery told by hand (`order delivered`).
    pub fn delivered_by_hand(&self, store: &str, order: &str) -> Result<Option<Timestamp>, Error> {
        Ok(self
            .deliveries
            .get((store, order))?
            .map(|v| Timestamp(v.value())))
    }
}

impl Storage {
    /// Opens a ticket, or closes it with an optional satisfaction rating (1-5).
    pub fn set_ticket(
        &self,
        store: &str,
        contact: &str,
        ticket: &str,
        open: bool,
        csat: Option<u8>,
        now: Timestamp,
    ) -> Result<(), Error> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(TICKETS)?;
            let old: Option<TicketRow> = t
                .get((store, contact, ticket))?
                .map(|v| codec::decode("ticket", TICKET_V1, v.value()))
                .transpose()?;
            let row = TicketRow {
                open,
                csat: if open { None } else { csat },
                opened_at: old.as_ref().map_or(now, |o| o.opened_at),
                closed_at: (!open).then_some(now),
            };
            t.insert(
                (store, contact, ticket),
                codec::encode(TICKET_V1, &row)?.as_slice(),
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records what the customer did with the offer of `order` and counts it in the
    /// affinity feedback of each of the order's products → the offered product, in one
    /// transaction. The first answer stands, except that a decline followed by an accept
    /// becomes an accept (the customer changed their mind; both are counted); an accept
    /// is never undone by a later decline. `via` is the message touch whose offer page
    /// the answer came from. Returns the stored answer and whether it changed.
    pub fn respond_to_offer(
        &self,
        store: &str,
        order: &str,
        accepted: bool,
        via: Option<u64>,
        now: Timestamp,
    ) -> Result<(OfferResponse, bool), Error> {
        let tx = self.db.begin_write()?;
        let (stored, changed) = {
            let mut t = tx.open_table(OFFER_RESPONSES)?;
            let old: Option<OfferResponse> = t
                .get((store, order))?
                .map(|v| decode_response(v.value()))
                .transpose()?;
            match old {
                Some(o) if o.accepted || !accepted => (o, false),
                _ => {
                    let new = OfferResponse {
                        accepted,
                        at: now,
                        via,
                    };
                    t.insert((store, order), codec::encode(RESPONSE_V2, &new)?.as_slice())?;
                    (new, true)
                }
            }
        };
        if changed {
            let rec = super::plans::stored_plan(&tx, store, order)?;
            // A purchase that converted the offer counted the acceptance already.
            let converted = tx.open_table(CONVERSIONS)?.get((store, order))?.is_some();
            if let (Some(rec), false) = (rec, accepted && converted) {
                count_feedback(&tx, store, &rec, |f| {
                    if accepted {
                        f.accepted += 1
                    } else {
                        f.declined += 1
                    }
                })?;
            }
        }
        tx.commit()?;
        Ok((stored, changed))
    }

    /// Records that the thank-you page showed the offer of `order` (the first time only):
    /// the page counts as sent in its plan (a later edit of the order no longer changes
    /// an offer the customer has seen) and as offered in the affinity feedback. Returns
    /// whether this was the first time.
    pub fn offer_shown(&self, store: &str, order: &str, now: Timestamp) -> Result<bool, Error> {
        use crate::engine::plan::TouchKind;
        let tx = self.db.begin_write()?;
        let Some(mut rec) = super::plans::stored_plan(&tx, store, order)? else {
            return Ok(false);
        };
        if rec.sent.contains(&TouchKind::Page) {
            return Ok(false);
        }
        rec.sent.push(TouchKind::Page);
        rec.history.push(format!(
            "{} the thank-you page showed the offer",
            now.to_rfc3339()
        ));
        tx.open_table(PLANS)?
            .insert((store, order), super::plans::encode_plan(&rec)?.as_slice())?;
        count_feedback(&tx, store, &rec, |f| f.offered += 1)?;
        tx.commit()?;
        Ok(true)
    }

    /// Records a delivery told by hand, and moves the order's delivery-anchored touches to
    /// `anchors` (computed from it) in the same transaction.
    pub fn set_delivered(
        &self,
        store: &str,
        order: &str,
        at: Timestamp,
        anchors: &crate::engine::due::Anchors,
    ) -> Result<(), Error> {
        let mut timers = Vec::new();
        let tx = self.db.begin_write()?;
        tx.open_table(DELIVERIES)?.insert((store, order), at.0)?;
        super::touches::reanchor(&tx, store, order, anchors, &mut timers)?;
        tx.commit()?;
        self.timer_feed.push(&timers);
        Ok(())
    }
}

/// Adds to the feedback counters of (each product of the order → the offered product,
/// under the plan's recipe). Only products the affinity model has numbered have counters
/// (the ones it can rank); others are left out.
pub(super) fn count_feedback(
    tx: &redb::WriteTransaction,
    store: &str,
    rec: &crate::engine::lifecycle::PlanRecord,
    add: impl Fn(&mut crate::engine::affinity::Feedback),
) -> Result<(), Error> {
    use super::records::{decode_evidence, decode_feedback, encode_feedback};
    let (Some(offer), Some(recipe)) = (&rec.plan.offer, rec.plan.recipe) else {
        return Ok(());
    };
    let b = tx
        .open_table(PRODUCT_NOS)?
        .get((store, offer.product.as_str()))?
        .map(|v| v.value());
    let evidence = tx
        .open_table(AFF_ORDERS)?
        .get((store, rec.order_id.as_str()))?
        .map(|v| decode_evidence(v.value()))
        .transpose()?;
    let (Some(b), Some(evidence)) = (b, evidence) else {
        return Ok(());
    };
    let mut table = tx.open_table(FEEDBACK)?;
    let mut products = evidence.products;
    products.sort_unstable();
    products.dedup();
    for a in products.into_iter().filter(|&a| a != b) {
        let key = (store, a, b, recipe.as_str());
        let mut f = table
            .get(key)?
            .map(|v| decode_feedback(v.value()))
            .transpose()?
            .unwrap_or_default();
        add(&mut f);
        table.insert(key, encode_feedback(&f)?.as_slice())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer stored before `via` was kept still reads, as the thank-you page's; the
    /// new shape's bytes are pinned.
    #[test]
    fn golden_offer_responses_of_both_versions() {
        #[derive(Serialize)]
        struct V1 {
            accepted: bool,
            at: Timestamp,
        }
        let old = codec::encode(
            RESPONSE_V1,
            &V1 {
                accepted: true,
                at: Timestamp(1_790_000_000_000),
            },
        )
        .unwrap();
        assert_eq!(
            decode_response(&old).unwrap(),
            OfferResponse {
                accepted: true,
                at: Timestamp(1_790_000_000_000),
                via: None
            }
        );
        let new = OfferResponse {
            accepted: false,
            at: Timestamp(5),
            via: Some(300),
        };
        let bytes = codec::encode(RESPONSE_V2, &new).unwrap();
        assert_eq!(bytes, [2, 0, 10, 1, 251, 44, 1]);
        assert_eq!(decode_response(&bytes).unwrap(), new);
    }
}
