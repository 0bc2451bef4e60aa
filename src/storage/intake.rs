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
const RESPONSE_V1: u8 = 1;

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
            out.push((
                order.to_string(),
                codec::decode("offer response", RESPONSE_V1, v.value())?,
            ));
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
            .map(|v| codec::decode("offer response", RESPONSE_V1, v.value()))
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

    pub fn set_offer_response(
        &self,
        store: &str,
        order: &str,
        response: &OfferResponse,
    ) -> Result<(), Error> {
        let tx = self.db.begin_write()?;
        tx.open_table(OFFER_RESPONSES)?.insert(
            (store, order),
            codec::encode(RESPONSE_V1, response)?.as_slice(),
        )?;
        tx.commit()?;
        Ok(())
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
