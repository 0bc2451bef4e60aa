//! State that decisions at a touch's due time read and that later intakes (help desk,
//! thank-you page, email engagement, carriers) will write; until then the CLI and the
//! admin API set it: support tickets, page-offer responses, deliveries told by hand.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::tables::*;
use super::{codec, Error, Snapshot, Storage};
use crate::engine::due::Ticket;
use crate::engine::Timestamp;

/// `TicketRow` without `updated_at` and `cleared_at`.
const TICKET_V1: u8 = 1;
const TICKET_V2: u8 = 2;
const NOTICE_V1: u8 = 1;
/// `OfferResponse` without `via`.
const RESPONSE_V1: u8 = 1;
const RESPONSE_V2: u8 = 2;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct TicketRow {
    open: bool,
    csat: Option<u8>,
    opened_at: Timestamp,
    closed_at: Option<Timestamp>,
    /// When the help desk says it last changed: an older report changes nothing.
    updated_at: Timestamp,
    /// When a person cleared its poor rating (`customer clear`).
    cleared_at: Option<Timestamp>,
    /// When the store was notified of its poor rating: once per ticket, whatever reopens,
    /// re-ratings or repeated reports follow.
    notified_at: Option<Timestamp>,
}

impl TicketRow {
    fn needs_recovery(&self) -> bool {
        crate::engine::due::needs_recovery(self.open, self.csat, self.cleared_at.is_some())
    }
}

/// The ticket rows of a store, or of one contact of it: (contact, ticket id, row).
fn ticket_rows(
    t: &impl ReadableTable<(&'static str, &'static str, &'static str), &'static [u8]>,
    store: &str,
    contact: Option<&str>,
) -> Result<Vec<(String, String, TicketRow)>, Error> {
    let mut out = Vec::new();
    for item in t.range((store, contact.unwrap_or(""), "")..)? {
        let (k, v) = item?;
        let (s, c, id) = k.value();
        if s != store || contact.is_some_and(|want| want != c) {
            break;
        }
        out.push((c.to_string(), id.to_string(), decode_ticket(v.value())?));
    }
    Ok(out)
}

/// Brings a contact's touches that wait for a ticket (`ids`) forward to `now`, when none of
/// their tickets holds them back any more (open, or poorly rated and not cleared). Returns
/// how many came forward.
fn resume_if_free(
    tx: &redb::WriteTransaction,
    tickets: &redb::Table<'_, (&'static str, &'static str, &'static str), &'static [u8]>,
    store: &str,
    contact: &str,
    ids: &[u64],
    now: Timestamp,
    written: &mut Vec<super::touches::TimerKey>,
) -> Result<usize, Error> {
    let rows = ticket_rows(tickets, store, Some(contact))?;
    if rows.iter().any(|(_, _, r)| r.open || r.needs_recovery()) {
        return Ok(0);
    }
    super::touches::bring_forward_ticket_waits(tx, ids, now, written)
}

/// A ticket row of either stored version.
fn decode_ticket(bytes: &[u8]) -> Result<TicketRow, Error> {
    #[derive(Deserialize)]
    struct V1 {
        open: bool,
        csat: Option<u8>,
        opened_at: Timestamp,
        closed_at: Option<Timestamp>,
    }
    if bytes.first() == Some(&TICKET_V1) {
        let v: V1 = codec::decode("ticket", TICKET_V1, bytes)?;
        return Ok(TicketRow {
            updated_at: v.closed_at.unwrap_or(v.opened_at),
            open: v.open,
            csat: v.csat,
            opened_at: v.opened_at,
            closed_at: v.closed_at,
            cleared_at: None,
            notified_at: None,
        });
    }
    codec::decode("ticket", TICKET_V2, bytes)
}

/// A ticket as the help desk (or `customer ticket-open|ticket-close`) reports it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketChange {
    /// The customer's contact key (`email:...`).
    pub contact: String,
    pub ticket: String,
    pub open: bool,
    pub csat: Option<u8>,
    /// When it changed (the help desk's time, else the receipt's).
    pub at: Timestamp,
}

/// What applying ticket reports did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TicketsApplied {
    /// Reports that changed a ticket.
    pub changed: usize,
    /// Reports older than what is stored, or repeating it: nothing changed.
    pub unchanged: usize,
    /// Touches that waited for a ticket and were brought forward to now (their customer
    /// has no open ticket left).
    pub resumed: usize,
    /// Recovery notices scheduled (a new poor rating).
    pub recovery: usize,
}

/// What a `recovery` notice is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryNotice {
    pub contact: String,
    pub ticket: String,
    pub csat: u8,
    pub at: Timestamp,
}

pub(super) fn decode_notice(bytes: &[u8]) -> Result<RecoveryNotice, Error> {
    codec::decode("recovery notice", NOTICE_V1, bytes)
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
    pub cleared_at: Option<Timestamp>,
}

impl TimedTicket {
    /// How `customer show` and an export tell it.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"ticket": self.ticket.id, "open": self.ticket.open,
            "csat": self.ticket.csat, "opened_at": self.opened_at.to_rfc3339(),
            "closed_at": self.closed_at.map(|c| c.to_rfc3339()),
            "cleared_at": self.cleared_at.map(|c| c.to_rfc3339())})
    }

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
            cleared: self.cleared_at.is_some_and(|c| c <= t),
        })
    }
}

impl Snapshot {
    /// Every ticket of a store with its times: (contact, ticket).
    pub fn store_tickets(&self, store: &str) -> Result<Vec<(String, TimedTicket)>, Error> {
        self.timed_tickets(store, None)
    }

    /// A store's tickets, or one contact's: (contact, ticket).
    pub fn timed_tickets(
        &self,
        store: &str,
        contact: Option<&str>,
    ) -> Result<Vec<(String, TimedTicket)>, Error> {
        Ok(ticket_rows(&self.tickets, store, contact)?
            .into_iter()
            .map(|(c, id, row)| {
                let ticket = Ticket {
                    id,
                    open: row.open,
                    csat: row.csat,
                    cleared: row.cleared_at.is_some(),
                };
                let timed = TimedTicket {
                    ticket,
                    opened_at: row.opened_at,
                    closed_at: row.closed_at,
                    cleared_at: row.cleared_at,
                };
                (c, timed)
            })
            .collect())
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

    /// What a `recovery` notice (touch `id`) is about.
    pub fn recovery_notice(&self, id: u64) -> Result<Option<RecoveryNotice>, Error> {
        self.recovery_notices
            .get(id)?
            .map(|v| decode_notice(v.value()))
            .transpose()
    }

    /// The customer a contact key (`email:...`) names in a store, if known, and the pending
    /// touches of their newest orders.
    fn contact_touches(
        &self,
        store: &str,
        contact: &str,
    ) -> Result<(Option<u64>, String, Vec<u64>), Error> {
        let Some(email) = contact.strip_prefix("email:") else {
            return Ok((None, String::new(), Vec::new()));
        };
        let lookup = super::Lookup::Email(email.to_string());
        let Some(customer) = self.find_customer(store, &lookup)? else {
            return Ok((None, String::new(), Vec::new()));
        };
        let orders = self.customer_orders(store, customer, None, 20)?;
        let mut ids = Vec::new();
        for (_, order) in &orders {
            for (id, t) in self.touches_of(store, order)? {
                if t.state.pending() {
                    ids.push(id);
                }
            }
        }
        let latest = orders.first().map(|(_, o)| o.clone()).unwrap_or_default();
        Ok((Some(customer), latest, ids))
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
    /// Applies ticket reports in one durable transaction (all or none). Per ticket: a
    /// report older than the one stored changes nothing; a closed ticket keeps a rating it
    /// got earlier when a later report has none. When a contact's last open ticket closes
    /// without a poor rating, their touches that waited for it are brought forward to
    /// `now`, to be decided at once (caps and quiet hours still apply: the next allowed
    /// slot). A ticket newly closed with a rating of 1-2 schedules a `recovery` notice to
    /// the store's webhook, and its customer gets no marketing until `customer clear`.
    pub fn apply_tickets(
        &self,
        store: &str,
        changes: &[TicketChange],
        now: Timestamp,
    ) -> Result<TicketsApplied, Error> {
        let snap = self.snapshot()?;
        let mut contacts: Vec<&str> = changes.iter().map(|c| c.contact.as_str()).collect();
        contacts.sort_unstable();
        contacts.dedup();
        let mut found = std::collections::HashMap::new();
        for c in contacts {
            found.insert(c, snap.contact_touches(store, c)?);
        }
        drop(snap);
        let mut out = TicketsApplied::default();
        let mut written = Vec::new();
        let tx = self.db.begin_write()?;
        {
            let mut resume = Vec::new();
            let mut notices = Vec::new();
            {
                let mut t = tx.open_table(TICKETS)?;
                for ch in changes {
                    let key = (store, ch.contact.as_str(), ch.ticket.as_str());
                    let old = t.get(key)?.map(|v| decode_ticket(v.value())).transpose()?;
                    if old.as_ref().is_some_and(|o| o.updated_at > ch.at) {
                        out.unchanged += 1;
                        continue;
                    }
                    let was_open = old.as_ref().is_some_and(|o| o.open);
                    // A rating stays with the ticket (Gorgias keeps one survey per ticket)
                    // until a new one comes; so do a person's clearing and the notice.
                    let row = TicketRow {
                        open: ch.open,
                        csat: ch.csat.or(old.as_ref().and_then(|o| o.csat)),
                        opened_at: old.as_ref().map_or(ch.at, |o| o.opened_at),
                        closed_at: match &old {
                            _ if ch.open => None,
                            Some(o) if !o.open => o.closed_at,
                            _ => Some(ch.at),
                        },
                        updated_at: ch.at,
                        cleared_at: old.as_ref().and_then(|o| o.cleared_at),
                        notified_at: old.as_ref().and_then(|o| o.notified_at),
                    };
                    let same = old.as_ref().is_some_and(|o| {
                        (o.open, o.csat, o.closed_at) == (row.open, row.csat, row.closed_at)
                    });
                    if same {
                        out.unchanged += 1;
                    } else {
                        out.changed += 1;
                    }
                    let notify = row.needs_recovery() && row.notified_at.is_none();
                    let row = TicketRow {
                        notified_at: if notify { Some(now) } else { row.notified_at },
                        ..row
                    };
                    t.insert(key, codec::encode(TICKET_V2, &row)?.as_slice())?;
                    if notify {
                        notices.push((ch, row.csat.unwrap_or_default()));
                    } else if was_open && !row.open && !row.needs_recovery() {
                        resume.push(ch.contact.as_str());
                    }
                }
                // Resumed only when nothing of the contact's still holds them back.
                resume.sort_unstable();
                resume.dedup();
                for c in resume {
                    out.resumed +=
                        resume_if_free(&tx, &t, store, c, &found[c].2, now, &mut written)?;
                }
            }
            for (ch, csat) in notices {
                let (customer, order, _) = &found[ch.contact.as_str()];
                let id = super::touches::schedule_notice(
                    &tx,
                    store,
                    crate::engine::plan::TouchKind::Recovery,
                    *customer,
                    order,
                    now,
                    &mut written,
                )?;
                let notice = RecoveryNotice {
                    contact: ch.contact.clone(),
                    ticket: ch.ticket.clone(),
                    csat,
                    at: ch.at,
                };
                tx.open_table(RECOVERY_NOTICES)?
                    .insert(id, codec::encode(NOTICE_V1, &notice)?.as_slice())?;
                out.recovery += 1;
            }
        }
        tx.commit()?;
        self.timer_feed.push(&written);
        Ok(out)
    }

    /// A person has followed up on the contact's poorly rated tickets (`customer clear`):
    /// marketing may reach them again, and their touches still waiting for a ticket are
    /// brought forward to `now` (as when a ticket closes well). Returns the tickets cleared
    /// (none: the contact was not on the recovery path) and how many touches came forward.
    pub fn clear_recovery(
        &self,
        store: &str,
        contact: &str,
        now: Timestamp,
    ) -> Result<(Vec<String>, usize), Error> {
        let (_, _, ids) = self.snapshot()?.contact_touches(store, contact)?;
        let tx = self.db.begin_write()?;
        let mut cleared = Vec::new();
        let mut written = Vec::new();
        let mut resumed = 0;
        {
            let mut t = tx.open_table(TICKETS)?;
            let rows = ticket_rows(&t, store, Some(contact))?;
            for (_, id, row) in rows.into_iter().filter(|(_, _, r)| r.needs_recovery()) {
                let row = TicketRow {
                    cleared_at: Some(now),
                    ..row
                };
                t.insert(
                    (store, contact, id.as_str()),
                    codec::encode(TICKET_V2, &row)?.as_slice(),
                )?;
                cleared.push(id);
            }
            if !cleared.is_empty() {
                resumed = resume_if_free(&tx, &t, store, contact, &ids, now, &mut written)?;
            }
        }
        tx.commit()?;
        self.timer_feed.push(&written);
        Ok((cleared, resumed))
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

    /// A ticket stored before reports were ordered and ratings cleared still reads (its
    /// last change is when it closed, else opened); the new shape's bytes are pinned.
    #[test]
    fn golden_tickets_of_both_versions() {
        #[derive(Serialize)]
        struct V1 {
            open: bool,
            csat: Option<u8>,
            opened_at: Timestamp,
            closed_at: Option<Timestamp>,
        }
        let old = codec::encode(
            TICKET_V1,
            &V1 {
                open: false,
                csat: Some(2),
                opened_at: Timestamp(5),
                closed_at: Some(Timestamp(9)),
            },
        )
        .unwrap();
        let row = decode_ticket(&old).unwrap();
        assert_eq!((row.updated_at, row.cleared_at), (Timestamp(9), None));
        assert!(row.needs_recovery());
        let new = TicketRow {
            cleared_at: Some(Timestamp(12)),
            ..row
        };
        let bytes = codec::encode(TICKET_V2, &new).unwrap();
        assert_eq!(bytes, [2, 0, 1, 2, 10, 1, 18, 18, 1, 24, 0]);
        assert_eq!(decode_ticket(&bytes).unwrap(), new);
        assert!(!new.needs_recovery(), "cleared");
    }

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

    #[test]
    fn golden_recovery_notice() {
        let n = RecoveryNotice {
            contact: "email:a@b.c".into(),
            ticket: "T1".into(),
            csat: 2,
            at: Timestamp(7),
        };
        let bytes = codec::encode(NOTICE_V1, &n).unwrap();
        assert_eq!(
            bytes,
            [1, 11, 101, 109, 97, 105, 108, 58, 97, 64, 98, 46, 99, 2, 84, 49, 2, 14]
        );
        assert_eq!(decode_notice(&bytes).unwrap(), n);
    }
}
