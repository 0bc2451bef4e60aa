//! Privacy requests: everything held about one customer (their footprint, which an export
//! shows), erasing their personal data, and removing a whole store.
//!
//! Personal data lives in customer records, the orders' contact fields, the raw bodies and
//! normalized heads of their events, and a few rows keyed by contact (tickets, suppression
//! entries). Erasing scrubs or removes those and keeps the anonymous rest (line items,
//! totals, the opaque customer id), so affinity counts and the lift report do not change.
//! redb writes copy-on-write: the freed pages keep the old bytes until reused, and only a
//! rewrite of the file (`Storage::compact`, service stopped) removes them.

use std::collections::BTreeSet;

use redb::{Durability, ReadableTable, ReadableTableMetadata};

use super::plans::SuppressionRow;
use super::records::{self, EventHead, ParsedRecord};
use super::tables::*;
use super::touches::TouchRecord;
use super::{codec, Error, Snapshot, Storage};
use crate::engine::history::{normalize_email, Customer, CustomerId, OrderState};
use crate::engine::lifecycle::PlanRecord;
use crate::engine::{Event, Order, Person, PrivacyRequest, Timestamp};

/// The name of the store key that erased contacts' suppression entries are hashed with.
pub(super) const ERASE_KEY: &str = "erase_key";
/// What erased text becomes.
const ERASED: &str = "[erased]";
pub const C_ERASED: &str = "privacy.erased";
pub const C_EXPORTED: &str = "privacy.exported";
pub const C_LAST_PRIVACY: &str = "privacy.last_at_ms";

/// A store's privacy requests so far, for the status.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PrivacyFigures {
    pub erased: i64,
    pub exported: i64,
    pub last_at: Option<String>,
    /// Export files waiting in the data directory to be handed over.
    pub exports: Vec<ExportFile>,
}

/// Whom a privacy request is about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// Normalized email addresses.
    pub emails: BTreeSet<String>,
    /// Phone numbers as given, and as digits only.
    pub phones: BTreeSet<String>,
    /// The platform's customer ids.
    pub platform_ids: BTreeSet<String>,
    /// Orders named as theirs (the platform's order ids).
    pub orders: BTreeSet<String>,
}

impl Identity {
    /// Whom a platform's request names.
    pub fn of(person: &Person, orders: &[String]) -> Identity {
        let mut id = Identity::default();
        id.add_email(person.email.as_deref());
        id.add_phone(person.phone.as_deref());
        id.platform_ids.extend(person.platform_id.clone());
        id.orders.extend(orders.iter().cloned());
        id
    }

    /// Whom the command line names: an email address, a phone number with its country
    /// code, or the platform's customer id.
    pub fn parse(who: &str) -> Result<Identity, String> {
        let t = who.trim();
        let mut id = Identity::default();
        if let Some((user, domain)) = t.split_once('@') {
            id.add_email(Some(t));
            if user.is_empty() || domain.is_empty() || id.emails.is_empty() {
                return Err(format!("{t:?} is not an email address"));
            }
        } else if t.starts_with('+') {
            id.add_phone(Some(t));
            if digits(t).len() < 7 {
                return Err(format!("{t:?} is not a phone number (+ and 7-15 digits)"));
            }
        } else if !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            id.platform_ids.insert(t.to_string());
        } else {
            return Err(format!(
                "{t:?} is neither an email address, a phone number with its country code (+15551234567) nor the platform's customer id"
            ));
        }
        Ok(id)
    }

    fn add_email(&mut self, e: Option<&str>) {
        self.emails.extend(e.and_then(normalize_email));
    }

    fn add_phone(&mut self, p: Option<&str>) {
        if let Some(p) = p.map(str::trim).filter(|p| digits(p).len() >= 7) {
            self.phones.insert(p.to_string());
            self.phones.insert(digits(p));
        }
    }

    /// What the customer's own record adds: addresses they had before, their platform ids.
    fn widen(&mut self, c: &Customer) {
        self.add_email(c.email.as_deref());
        self.add_phone(c.phone.as_deref());
        self.platform_ids.extend(c.platform_ids.iter().cloned());
    }

    /// The keys rows about a contact are stored under (`email:…`, `phone:+…`).
    pub fn contact_keys(&self) -> Vec<String> {
        let emails = self.emails.iter().map(|e| format!("email:{e}"));
        let phones = self
            .phones
            .iter()
            .filter_map(|p| super::plans::suppression_key(p).ok());
        let mut keys: Vec<String> = emails.chain(phones).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// The customer-lookup keys that can name them.
    fn lookup_keys(&self) -> Vec<String> {
        let emails = self.emails.iter().map(|e| format!("email:{e}"));
        let ids = self.platform_ids.iter().map(|i| format!("id:{i}"));
        emails.chain(ids).collect()
    }

    fn has_email(&self, e: Option<&str>) -> bool {
        e.and_then(normalize_email)
            .is_some_and(|e| self.emails.contains(&e))
    }

    fn has_phone(&self, p: Option<&str>) -> bool {
        let Some(d) = p.map(digits).filter(|d| d.len() >= 7) else {
            return false;
        };
        // Stored as the platforms send them: with or without the country code. Without
        // it, a national number of at least 10 digits still names one line; a shorter one
        // is the tail of too many others to count.
        let tail = |long: &str, short: &str| short.len() >= 10 && long.ends_with(short);
        self.phones
            .iter()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
            .any(|p| *p == d || tail(p, &d) || tail(&d, p))
    }

    /// Whether an order names them: its id, customer id, email, or phone. A phone is
    /// shared by a household more often than an address: it decides only for an order
    /// without an email of its own, or when nothing else names them.
    fn names_order(&self, o: &Order) -> bool {
        let c = o.customer.as_ref();
        let by_phone =
            o.contact_email().is_none() || (self.emails.is_empty() && self.platform_ids.is_empty());
        self.orders.contains(&o.id)
            || c.and_then(|c| c.platform_id.as_ref())
                .is_some_and(|i| self.platform_ids.contains(i))
            || self.has_email(o.email.as_deref())
            || self.has_email(c.and_then(|c| c.email.as_deref()))
            || (by_phone
                && (self.has_phone(o.phone.as_deref())
                    || self.has_phone(c.and_then(|c| c.phone.as_deref()))))
    }

    fn names_person(&self, p: &Person) -> bool {
        p.platform_id
            .as_ref()
            .is_some_and(|i| self.platform_ids.contains(i))
            || self.has_email(p.email.as_deref())
            || self.has_phone(p.phone.as_deref())
    }

    /// The texts to find in raw bodies and notes: the addresses, and with `phones` the
    /// phone numbers.
    fn needles(&self, phones: bool) -> impl Iterator<Item = &String> {
        let phones = self.phones.iter().filter(move |p| phones && p.len() >= 7);
        self.emails.iter().chain(phones)
    }

    /// Where their addresses (and with `phones` their phone numbers) stand in `text`
    /// (ASCII lower-cased), as whole tokens: `an@example.com` is not found inside
    /// `joan@example.com`, nor a number inside a longer one. (start, end), in order.
    fn found(&self, text: &[u8], phones: bool) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for n in self.needles(phones) {
            let n = n.as_bytes();
            let numeric = n.iter().all(u8::is_ascii_digit);
            let part = |b: u8| {
                if numeric {
                    b.is_ascii_digit()
                } else {
                    b.is_ascii_alphanumeric() || b"._%+-".contains(&b)
                }
            };
            let mut at = 0;
            while at + n.len() <= text.len() {
                let end = at + n.len();
                let whole = &text[at..end] == n
                    && (at == 0 || !part(text[at - 1]))
                    && text.get(end).is_none_or(|&b| !part(b));
                if whole {
                    out.push((at, end));
                    at = end;
                } else {
                    at += 1;
                }
            }
        }
        // Overlapping finds (a number as given and its digits) are one.
        out.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::new();
        for (start, end) in out {
            match merged.last_mut() {
                Some(last) if start < last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged
    }

    /// Whether raw bytes are about them: they hold one of their addresses
    /// (case-insensitive), or, for someone known by no address, their phone number (a
    /// household shares a number; see `names_order`). Platform ids are not looked for in
    /// bodies (an id is a number like any other there).
    pub fn in_bytes(&self, body: &[u8]) -> bool {
        let phones = self.emails.is_empty();
        !self.found(&body.to_ascii_lowercase(), phones).is_empty()
    }

    /// Whether a stored event is about them: an event of one of `orders` (theirs), an
    /// order naming them, a privacy request naming them, or a raw body holding their
    /// address (a refund or fulfillment of an order never received, an ignored topic).
    fn names_event(&self, orders: &BTreeSet<String>, h: &EventHead, body: Option<&[u8]>) -> bool {
        let in_body = || body.is_some_and(|b| self.in_bytes(b));
        match &h.parsed {
            ParsedRecord::Event(Event::Order { order, .. }) => {
                orders.contains(&order.id) || self.names_order(order)
            }
            ParsedRecord::Event(e) => orders.contains(e.order_id()) || in_body(),
            ParsedRecord::Privacy(
                PrivacyRequest::Export { person, .. } | PrivacyRequest::Erase { person, .. },
            ) => self.names_person(person),
            ParsedRecord::Privacy(PrivacyRequest::EraseStore) => false,
            ParsedRecord::Ignored | ParsedRecord::Unparseable(_) => in_body(),
        }
    }

    /// `text` with their addresses and phone numbers replaced by "[erased]".
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        // ASCII lower-casing keeps byte offsets; from the end, so earlier ones stay put.
        for (start, end) in self
            .found(text.to_ascii_lowercase().as_bytes(), true)
            .into_iter()
            .rev()
        {
            if out.is_char_boundary(start) && out.is_char_boundary(end) {
                out.replace_range(start..end, ERASED);
            }
        }
        out
    }
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// An order with its contact fields gone: no email, phone, customer reference, addresses or
/// tags; its lines, totals, dates and discount codes stay (affinity and the lift report
/// count them).
pub fn scrub_order(o: &mut Order) {
    o.email = None;
    o.phone = None;
    o.customer = None;
    o.shipping = None;
    o.billing = None;
    o.tags.clear();
}

/// A customer record with nothing personal left: the opaque id and the counts stay.
fn scrub_customer(c: &mut Customer) {
    c.platform_ids.clear();
    c.email = None;
    c.phone = None;
    c.tags.clear();
    c.contact_from = None;
}

/// An event head with their personal data gone.
fn scrub_head(h: &mut EventHead, id: &Identity) {
    match &mut h.parsed {
        ParsedRecord::Event(Event::Order { order, .. }) => scrub_order(order),
        ParsedRecord::Privacy(
            PrivacyRequest::Export { person, .. } | PrivacyRequest::Erase { person, .. },
        ) => *person = Person::default(),
        ParsedRecord::Unparseable(why) => *why = id.scrub(why),
        _ => {}
    }
    for (_, v) in &mut h.headers {
        *v = id.scrub(v);
    }
}

/// Everything held about one customer of one store.
#[derive(Clone, Debug, Default)]
pub struct Footprint {
    pub store: String,
    /// Whom it was looked up for, with what their records added.
    pub identity: Identity,
    pub customers: Vec<Customer>,
    /// Customer-lookup keys naming them.
    pub lookups: Vec<String>,
    pub orders: Vec<(String, OrderState)>,
    pub plans: Vec<PlanRecord>,
    pub touches: Vec<(u64, TouchRecord)>,
    /// (contact key, ticket).
    pub tickets: Vec<(String, super::intake::TimedTicket)>,
    /// Touch ids of recovery notices about them.
    pub notices: Vec<u64>,
    /// (key as stored, entry): by their contact, or erased before (hashed).
    pub suppressions: Vec<(String, SuppressionRow)>,
    /// Events about them: (sequence number, head, raw body if still kept).
    pub events: Vec<(u64, EventHead, Option<Vec<u8>>)>,
    /// The platform ids of every order found theirs, applied or not yet.
    pub order_ids: BTreeSet<String>,
    /// The last event sequence number the search saw: the erase looks again at what was
    /// committed after it.
    pub seen_through: u64,
}

impl Footprint {
    /// Whether nothing personal is held (an erased customer's hashed suppression entry is
    /// not: it names no one).
    pub fn is_empty(&self) -> bool {
        self.customers.is_empty()
            && self.lookups.is_empty()
            && self.orders.is_empty()
            && self.tickets.is_empty()
            && self.notices.is_empty()
            && self.events.is_empty()
            && self
                .suppressions
                .iter()
                .all(|(k, _)| k.starts_with("erased:"))
    }
}

/// What an erase did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Erased {
    pub customers: usize,
    pub orders: usize,
    pub events: usize,
    /// Touches not yet sent that will not be.
    pub touches_cancelled: usize,
    pub tickets: usize,
    /// Suppression entries kept under a keyed hash, so the customer stays unsubscribed.
    pub suppressions_hashed: usize,
}

/// The key an erased contact's suppression entry is kept under: a keyed hash of its
/// contact key, which finds the entry again when the same address comes back and names
/// no one otherwise.
pub fn erased_key(secret: &[u8], key: &str) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret)
        .expect("HMAC accepts keys of any length");
    mac.update(key.as_bytes());
    format!(
        "erased:{}",
        crate::engine::hex(&mac.finalize().into_bytes())
    )
}

impl Snapshot {
    /// The store's key for hashing erased contacts, if one was ever erased.
    pub fn erase_key(&self, store: &str) -> Result<Option<Vec<u8>>, Error> {
        self.store_key(store, ERASE_KEY)
    }

    /// Everything held about `who` in `store`. Reads every order of the store and every
    /// event head (twice): seconds for a million, which a privacy request can afford.
    pub fn footprint(&self, store: &str, who: &Identity) -> Result<Footprint, Error> {
        let mut id = who.clone();
        let mut fp = Footprint {
            store: store.to_string(),
            ..Footprint::default()
        };
        // Customers by their lookups, then their orders; an order found by what the
        // request names (a phone, an order id) may name a customer the lookups did not:
        // theirs too, and what their record adds is looked for again.
        let mut ids = BTreeSet::<CustomerId>::new();
        for key in id.lookup_keys() {
            ids.extend(self.lookup.get((store, key.as_str()))?.map(|v| v.value()));
        }
        let mut loaded = BTreeSet::new();
        let mut orders;
        loop {
            let new: Vec<CustomerId> = ids.difference(&loaded).copied().collect();
            for c in new {
                loaded.insert(c);
                if let Some(c) = self.customer(store, c)? {
                    id.widen(&c);
                    fp.customers.push(c);
                }
            }
            orders = id.orders.clone();
            fp.orders.clear();
            for item in self.orders.range((store, "")..)? {
                let (k, v) = item?;
                let (s, oid) = k.value();
                if s != store {
                    break;
                }
                let state = records::decode_order(v.value())?;
                let theirs = state.customer.is_some_and(|c| ids.contains(&c))
                    || id.orders.contains(oid)
                    || state.order.as_ref().is_some_and(|o| id.names_order(o));
                if theirs {
                    ids.extend(state.customer);
                    orders.insert(oid.to_string());
                    fp.orders.push((oid.to_string(), state));
                }
            }
            if ids == loaded {
                break;
            }
        }
        for item in self.lookup.range((store, "")..)? {
            let (k, v) = item?;
            let (s, key) = k.value();
            if s != store {
                break;
            }
            if ids.contains(&v.value()) {
                fp.lookups.push(key.to_string());
                // An address they had before names their older rows (tickets, entries).
                id.add_email(key.strip_prefix("email:"));
            }
        }
        for (_, state) in &fp.orders {
            if let Some(o) = &state.order {
                id.add_email(o.contact_email());
                id.add_phone(o.phone.as_deref());
            }
        }
        // Orders only the event log knows yet (not applied), named by their content.
        for item in self.events.iter()? {
            let (_, v) = item?;
            let h = records::EventRecord::decode_head(v.value())?;
            if h.store != store {
                continue;
            }
            if let ParsedRecord::Event(Event::Order { order, .. }) = &h.parsed {
                if id.names_order(order) {
                    orders.insert(order.id.clone());
                }
            }
        }
        for item in self.events.iter()? {
            let (k, v) = item?;
            let seq = k.value();
            fp.seen_through = seq;
            let h = records::EventRecord::decode_head(v.value())?;
            if h.store != store {
                continue;
            }
            let body = self
                .bodies
                .get(seq)?
                .map(|b| codec::decode_body("event body", records::BODY_V1, b.value()))
                .transpose()?;
            if id.names_event(&orders, &h, body.as_deref()) {
                fp.events.push((seq, h, body));
            }
        }
        for o in &orders {
            fp.plans.extend(self.plan(store, o)?);
            fp.touches.extend(self.touches_of(store, o)?);
        }
        let keys = id.contact_keys();
        for item in self.recovery_notices.iter()? {
            let (k, v) = item?;
            let n: super::intake::RecoveryNotice = super::intake::decode_notice(v.value())?;
            if keys.contains(&n.contact) {
                let tid = k.value();
                if let Some(t) = self.touch(tid)?.filter(|t| t.store == store) {
                    fp.notices.push(tid);
                    fp.touches.push((tid, t));
                }
            }
        }
        let secret = self.erase_key(store)?;
        for key in &keys {
            for (_, t) in self.timed_tickets(store, Some(key))? {
                fp.tickets.push((key.clone(), t));
            }
            if let Some(row) = self.suppression(store, key)? {
                fp.suppressions.push((key.clone(), row));
            }
            if let Some(s) = &secret {
                let hashed = erased_key(s, key);
                if let Some(row) = self.suppression(store, &hashed)? {
                    fp.suppressions.push((hashed, row));
                }
            }
        }
        fp.identity = id;
        fp.order_ids = orders;
        Ok(fp)
    }
}

impl Storage {
    /// Erases what `fp` found, in one durable transaction: the customer records and their
    /// orders lose every personal field, their events' raw bodies are deleted and the heads
    /// scrubbed, their tickets and recovery notices go, touches not yet sent are cancelled,
    /// and their suppression entries are kept under a keyed hash (an unsubscribed customer
    /// stays unsubscribed if they come back). Rows are read again inside the transaction,
    /// so what changed since the footprint was taken is erased as it is now. `processed`:
    /// the privacy request's own sequence number, when the processor applies one (the
    /// cursor moves with the effects).
    pub fn erase(
        &self,
        fp: &Footprint,
        now: Timestamp,
        processed: Option<u64>,
    ) -> Result<Erased, Error> {
        let store = fp.store.as_str();
        let id = &fp.identity;
        let keys = id.contact_keys();
        let secret = self.store_key(store, ERASE_KEY)?;
        let mut done = Erased::default();
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            let mut customers = tx.open_table(CUSTOMERS)?;
            for c in &fp.customers {
                let row = customers.get((store, c.id))?.map(|v| v.value().to_vec());
                if let Some(bytes) = row {
                    let mut c = records::decode_customer(&bytes)?;
                    scrub_customer(&mut c);
                    customers.insert((store, c.id), records::encode_customer(&c)?.as_slice())?;
                    done.customers += 1;
                }
            }
            let mut lookup = tx.open_table(CUSTOMER_LOOKUP)?;
            for key in &fp.lookups {
                lookup.remove((store, key.as_str()))?;
            }
            let mut orders = tx.open_table(ORDERS)?;
            for (oid, _) in &fp.orders {
                let row = orders
                    .get((store, oid.as_str()))?
                    .map(|v| v.value().to_vec());
                if let Some(bytes) = row {
                    let mut state = records::decode_order(&bytes)?;
                    if let Some(o) = &mut state.order {
                        scrub_order(o);
                    }
                    orders.insert(
                        (store, oid.as_str()),
                        records::encode_order(&state)?.as_slice(),
                    )?;
                    done.orders += 1;
                }
            }
            let mut plans = tx.open_table(PLANS)?;
            for p in &fp.plans {
                let key = (store, p.order_id.as_str());
                let row = plans.get(key)?.map(|v| v.value().to_vec());
                if let Some(bytes) = row {
                    let mut rec = super::plans::decode_plan(&bytes)?;
                    for line in rec.history.iter_mut().chain(rec.plan.reasons.iter_mut()) {
                        *line = id.scrub(line);
                    }
                    plans.insert(key, super::plans::encode_plan(&rec)?.as_slice())?;
                }
            }
            let mut events = tx.open_table(EVENTS)?;
            let mut bodies = tx.open_table(BODIES)?;
            let mut quarantine = tx.open_table(QUARANTINE)?;
            // What the writer committed while the search ran, about them too.
            let mut seqs: Vec<u64> = fp.events.iter().map(|(seq, _, _)| *seq).collect();
            let mut orders = fp.order_ids.clone();
            for item in events.range(fp.seen_through.saturating_add(1)..)? {
                let (k, v) = item?;
                let h = records::EventRecord::decode_head(v.value())?;
                if h.store != store {
                    continue;
                }
                let body = bodies
                    .get(k.value())?
                    .map(|b| codec::decode_body("event body", records::BODY_V1, b.value()))
                    .transpose()?;
                if id.names_event(&orders, &h, body.as_deref()) {
                    if let ParsedRecord::Event(Event::Order { order, .. }) = &h.parsed {
                        orders.insert(order.id.clone());
                    }
                    seqs.push(k.value());
                }
            }
            for seq in &seqs {
                let row = events.get(*seq)?.map(|v| v.value().to_vec());
                if let Some(bytes) = row {
                    let mut h = records::EventRecord::decode_head(&bytes)?;
                    scrub_head(&mut h, id);
                    events.insert(*seq, codec::encode(records::EVENT_V1, &h)?.as_slice())?;
                }
                bodies.remove(*seq)?;
                // Without its body it can never be parsed again.
                quarantine.remove(*seq)?;
                done.events += 1;
            }
            drop((events, bodies, quarantine));
            // Rows kept by contact are read here, inside the transaction: an intake may
            // have written one (a ticket, a recovery notice, an unsubscribe) while the
            // search ran.
            let mut touch_ids: Vec<u64> = fp.touches.iter().map(|(i, _)| *i).collect();
            let mut tickets = tx.open_table(TICKETS)?;
            for key in &keys {
                let mut theirs = Vec::new();
                for item in tickets.range((store, key.as_str(), "")..)? {
                    let (k, _) = item?;
                    let (s, contact, ticket) = k.value();
                    if s != store || contact != key {
                        break;
                    }
                    theirs.push(ticket.to_string());
                }
                for ticket in theirs {
                    tickets.remove((store, key.as_str(), ticket.as_str()))?;
                    done.tickets += 1;
                }
            }
            drop(tickets);
            let mut notices = tx.open_table(RECOVERY_NOTICES)?;
            let touches = tx.open_table(TOUCHES)?;
            let mut gone = Vec::new();
            for item in notices.iter()? {
                let (k, v) = item?;
                let n = super::intake::decode_notice(v.value())?;
                let of_store = touches
                    .get(k.value())?
                    .map(|t| super::touches::decode(t.value()))
                    .transpose()?
                    .is_some_and(|t| t.store == store);
                if of_store && keys.contains(&n.contact) {
                    gone.push(k.value());
                }
            }
            drop(touches);
            for n in gone {
                notices.remove(n)?;
                touch_ids.push(n);
            }
            drop(notices);
            touch_ids.sort_unstable();
            touch_ids.dedup();
            done.touches_cancelled = super::touches::erase_in(&tx, &touch_ids, id)?;
            let mut rows = Vec::new();
            let mut sup = tx.open_table(SUPPRESSIONS)?;
            for key in &keys {
                let old = sup
                    .remove((store, key.as_str()))?
                    .map(|v| v.value().to_vec());
                if let Some(bytes) = old {
                    let mut row = super::plans::decode_suppression(&bytes)?;
                    if let crate::engine::plan::Suppressed::Manual(note) = &mut row.reason {
                        *note = id.scrub(note);
                    }
                    row.source = id.scrub(&row.source);
                    rows.push((erased_key(&secret, key), row));
                }
            }
            drop(sup);
            done.suppressions_hashed = rows.len();
            super::plans::suppress_in(&tx, store, &rows)?;
            request_done(&tx, store, C_ERASED, now, processed)?;
        }
        tx.commit()?;
        Ok(done)
    }

    /// Counts a written export, and moves the processor's cursor past the request that
    /// asked for it (when the processor applied one).
    pub fn exported(
        &self,
        store: &str,
        now: Timestamp,
        processed: Option<u64>,
    ) -> Result<(), Error> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        request_done(&tx, store, C_EXPORTED, now, processed)?;
        tx.commit()?;
        Ok(())
    }

    /// Removes every row of `store` from every table, in one durable transaction: what the
    /// platform asks when the store uninstalls the app (`shop/redact`). Sequence numbers of
    /// its removed events are never handed out again. Returns how many rows went.
    pub fn erase_store(&self, store: &str, processed: Option<u64>) -> Result<u64, Error> {
        // Rows keyed by event sequence number or touch id are found by their record:
        // decoded from a snapshot, without holding the write lock the webhooks need, and
        // then only what came after it.
        let event_store = |b: &[u8]| Ok(records::EventRecord::decode_head(b)?.store);
        let touch_store = |b: &[u8]| Ok(super::touches::decode(b)?.store);
        let (mut seqs, mut ids) = {
            let snap = self.snapshot()?;
            (
                records_of(&snap.events, 0, store, event_store)?,
                records_of(&snap.touches, 0, store, touch_store)?,
            )
        };
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        let mut removed = 0u64;
        {
            let mut events = tx.open_table(EVENTS)?;
            let next = super::next_seq(&events, &tx.open_table(META)?)?;
            seqs.0
                .extend(records_of(&events, seqs.1, store, event_store)?.0);
            let seqs = seqs.0;
            for &seq in &seqs {
                events.remove(seq)?;
            }
            tx.open_table(META)?
                .insert(super::NEXT_SEQ, &next.to_le_bytes()[..])?;
            removed += seqs.len() as u64;
            removed += retain(&mut tx.open_table(BODIES)?, |k, _| !seqs.contains(&k))?;
            removed += retain(&mut tx.open_table(QUARANTINE)?, |k, _| !seqs.contains(&k))?;
            let mut touches = tx.open_table(TOUCHES)?;
            ids.0
                .extend(records_of(&touches, ids.1, store, touch_store)?.0);
            let ids = ids.0;
            for &id in &ids {
                touches.remove(id)?;
            }
            drop(touches);
            removed += ids.len() as u64;
            let gone = |i: u64| ids.contains(&i);
            removed += retain(&mut tx.open_table(TIMERS)?, |k, _| !gone(k.1))?;
            removed += retain(&mut tx.open_table(SENDING)?, |k, _| !gone(k))?;
            removed += retain(&mut tx.open_table(ATTEMPTS)?, |k, _| !gone(k))?;
            removed += retain(&mut tx.open_table(RECEIPTS)?, |k, _| !gone(k))?;
            removed += retain(&mut tx.open_table(MIRRORS)?, |k, v| !gone(k) && !gone(v))?;
            removed += retain(&mut tx.open_table(RESENT)?, |k, _| !gone(k))?;
            removed += retain(&mut tx.open_table(CLICKS)?, |k, _| !gone(k.0))?;
            removed += retain(&mut tx.open_table(OPENS)?, |k, _| !gone(k))?;
            removed += retain(&mut tx.open_table(RECOVERY_NOTICES)?, |k, _| !gone(k))?;
            removed += retain(&mut tx.open_table(PAUSED)?, |k, _| k != store)?;
            removed += retain(&mut tx.open_table(SYNC)?, |k, _| k != store)?;
            // Rows keyed by store first.
            macro_rules! by_store {
                ($($t:ident),*) => {$(
                    removed += retain(&mut tx.open_table($t)?, |k, _| k.0 != store)?;
                )*};
            }
            by_store!(
                CODES,
                DEDUPE,
                ORDERS,
                CUSTOMERS,
                CUSTOMER_LOOKUP,
                COUNTERS,
                CATALOG,
                CATALOG_IDS,
                CATALOG_HANDLES,
                PRODUCT_NOS,
                PRODUCT_KEYS,
                AFF_ITEMS,
                AFF_PAIRS,
                AFF_ORDERS,
                TIMELINE,
                PAIRINGS,
                FEEDBACK,
                PLANS,
                PLAN_QUEUE,
                SUPPRESSIONS,
                STORE_KEYS,
                CUSTOMER_REFUNDS,
                ORDER_VALUES,
                ORDER_TOUCHES,
                PENDING_COUNTS,
                OUTCOME_COUNTS,
                SENT_LOG,
                TICKETS,
                OFFER_RESPONSES,
                DEAD_LETTERS,
                DISABLED,
                DELIVERIES,
                CONVERSIONS
            );
            if let Some(seq) = processed {
                // The store's events after the request went too: with none of another
                // store left after it, the cursor is at the end.
                let rest = events.range(seq + 1..)?.next().is_some();
                set_processed(&tx, if rest { seq } else { seq.max(next - 1) })?;
            }
        }
        tx.commit()?;
        Ok(removed)
    }
}

impl Storage {
    /// Puts the stored event at `seq`, which the processor could not apply, into
    /// quarantine with `why`, and moves the processor's cursor past it, in one durable
    /// transaction. `quarantine replay` parses it again and, under a new sequence number,
    /// the processor tries it again.
    /// One whose body is gone (purged after `payload_retention_days`, or erased with the
    /// person it named) could never be parsed again: it is passed over instead. Returns
    /// whether it was kept.
    pub fn set_aside(&self, seq: u64, why: &str) -> Result<bool, Error> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        let kept = tx.open_table(BODIES)?.get(seq)?.is_some();
        if kept {
            let mut events = tx.open_table(EVENTS)?;
            let row = events.get(seq)?.map(|v| v.value().to_vec());
            let mut h = records::EventRecord::decode_head(&row.ok_or(Error::Purged(seq))?)?;
            h.parsed = ParsedRecord::Unparseable(why.to_string());
            events.insert(seq, codec::encode(records::EVENT_V1, &h)?.as_slice())?;
            tx.open_table(QUARANTINE)?.insert(seq, h.store.as_str())?;
            let mut counters = tx.open_table(COUNTERS)?;
            super::add(&mut counters, &h.store, super::C_ACCEPTED, -1)?;
            super::add(&mut counters, &h.store, super::C_QUARANTINED, 1)?;
        }
        set_processed(&tx, seq)?;
        tx.commit()?;
        Ok(kept)
    }
}

/// Counts a privacy request of `kind` done for `store`, and moves the processor's cursor
/// past the request when the processor applied one.
fn request_done(
    tx: &redb::WriteTransaction,
    store: &str,
    kind: &str,
    now: Timestamp,
    processed: Option<u64>,
) -> Result<(), Error> {
    let mut counters = tx.open_table(COUNTERS)?;
    super::add(&mut counters, store, kind, 1)?;
    counters.insert((store, C_LAST_PRIVACY), now.0)?;
    match processed {
        Some(seq) => set_processed(tx, seq),
        None => Ok(()),
    }
}

fn set_processed(tx: &redb::WriteTransaction, seq: u64) -> Result<(), Error> {
    tx.open_table(META)?
        .insert("processed_seq", &seq.to_le_bytes()[..])?;
    Ok(())
}

/// The keys after `after` of a table keyed by number (events, touches) whose record names
/// `store` (`store_of` reads it), and the last key looked at.
fn records_of(
    t: &impl ReadableTable<u64, &'static [u8]>,
    after: u64,
    store: &str,
    store_of: impl Fn(&[u8]) -> Result<String, Error>,
) -> Result<(BTreeSet<u64>, u64), Error> {
    let (mut keys, mut last) = (BTreeSet::new(), after);
    for item in t.range(after.saturating_add(1)..)? {
        let (k, v) = item?;
        last = k.value();
        if store_of(v.value())? == store {
            keys.insert(last);
        }
    }
    Ok((keys, last))
}

/// Removes the rows `keep` refuses; returns how many.
fn retain<K: redb::Key + 'static, V: redb::Value + 'static>(
    t: &mut redb::Table<'_, K, V>,
    mut keep: impl for<'f> FnMut(K::SelfType<'f>, V::SelfType<'f>) -> bool,
) -> Result<u64, Error> {
    let before = t.len()?;
    t.retain(|k, v| keep(k, v))?;
    Ok(before - t.len()?)
}

/// An export file on disk.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExportFile {
    pub path: String,
    pub bytes: u64,
    pub written_at: String,
}

/// The export files of a store (`<store>-data-request-…`), newest first.
pub fn exports(dir: &std::path::Path, store: &str) -> Vec<ExportFile> {
    let mut out: Vec<(std::time::SystemTime, ExportFile)> = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if !name.starts_with(&format!("{store}-data-request-")) || !name.ends_with(".json") {
            continue;
        }
        let at = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
        let ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        out.push((
            at,
            ExportFile {
                path: entry.path().display().to_string(),
                bytes: meta.len(),
                written_at: Timestamp(ms).to_rfc3339(),
            },
        ));
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.0));
    out.into_iter().map(|(_, f)| f).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_parse_and_match() {
        let id = Identity::parse(" Jane@Example.com ").unwrap();
        assert!(id.emails.contains("jane@example.com"));
        let id = Identity::parse("+1 555 625 1199").unwrap();
        assert!(id.has_phone(Some("555-625-1199")));
        assert!(id.has_phone(Some("+15556251199")));
        assert!(!id.has_phone(Some("+15556251198")));
        // A short number is not taken for the tail of a longer one.
        assert!(!id.has_phone(Some("6251199")));
        let short = Identity::parse("+6831234").unwrap();
        assert!(short.has_phone(Some("+683 1234")));
        assert!(!short.has_phone(Some("+1 555 683 1234")));
        assert_eq!(
            Identity::parse("7003").unwrap().platform_ids,
            BTreeSet::from(["7003".to_string()])
        );
        // Someone known by no address (a platform id and a phone): the phone finds their
        // bodies; with an address, the phone alone does not (a household shares it).
        let mut by_phone = Identity::parse("7003").unwrap();
        by_phone.add_phone(Some("+15556251199"));
        assert!(by_phone.in_bytes(br#"{"phone":"+15556251199"}"#));
        let mut with_email = Identity::parse("jane@example.com").unwrap();
        with_email.add_phone(Some("+15556251199"));
        assert!(!with_email.in_bytes(br#"{"phone":"+15556251199"}"#));
        for bad in ["", "jane@", "+12", "a b"] {
            assert!(Identity::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scrub_replaces_every_spelling_of_their_contacts() {
        let mut id = Identity::parse("jane@example.com").unwrap();
        id.add_phone(Some("+15556251199"));
        assert_eq!(
            id.scrub("To JANE@example.com and jane@example.com, +15556251199 (ok)"),
            "To [erased] and [erased], [erased] (ok)"
        );
        assert!(id.in_bytes(br#"{"email":"Jane@Example.COM"}"#));
        assert!(!id.in_bytes(br#"{"email":"john@example.com"}"#));
        // Whole addresses and numbers only: not inside someone else's.
        assert!(!id.in_bytes(br#"{"email":"mary.jane@example.com"}"#));
        assert!(!id.in_bytes(br#"{"email":"jane@example.com.au"}"#));
        assert!(!id.in_bytes(br#"{"id":155562511990}"#));
        assert_eq!(id.scrub("mary.jane@example.com"), "mary.jane@example.com");
    }
}
