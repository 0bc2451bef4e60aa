//! Offer plans and what deciding them reads: the planning queue, the suppression list,
//! each store's holdout salt, customers' latest refunds and the order-value histogram.

use redb::{Durability, ReadableTable};
use serde::{Deserialize, Serialize};

use super::tables::*;
use super::{codec, Error, Snapshot, Storage};
use crate::engine::due::Anchors;
use crate::engine::lifecycle::PlanRecord;
use crate::engine::plan::Suppressed;
use crate::engine::Timestamp;

const PLAN_V1: u8 = 1;
const SUPPRESSION_V1: u8 = 1;
const SALT: &str = "holdout_salt";
const LINK_KEY: &str = "link_key";

/// One entry of the suppression list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppressionRow {
    pub reason: Suppressed,
    pub at: Timestamp,
    /// Where it came from: "cli", "import <file>", "unsubscribe link", ...
    pub source: String,
}

/// The suppression-list key of an email address or phone number, or what is wrong with it.
pub fn suppression_key(input: &str) -> Result<String, String> {
    let t = input.trim();
    if t.contains('@') {
        return crate::engine::history::normalize_email(t)
            .map(|e| format!("email:{e}"))
            .ok_or_else(|| format!("{t:?} is not an email address"));
    }
    phone_key(t)
        .map(|p| format!("phone:{p}"))
        .ok_or_else(|| format!("{t:?} is neither an email address nor a phone number with its country code (+ and 7-15 digits, e.g. +15551234567, as the platforms send them)"))
}

/// A customer's (email, phone): their own, else the order's.
pub fn contact_of<'a>(
    customer: Option<&'a crate::engine::history::Customer>,
    order: Option<&'a crate::engine::Order>,
) -> (Option<&'a str>, Option<&'a str>) {
    let email = customer
        .and_then(|c| c.email.as_deref())
        .or_else(|| order.and_then(|o| o.contact_email()));
    let phone = customer
        .and_then(|c| c.phone.as_deref())
        .or_else(|| order.and_then(|o| o.phone.as_deref()));
    (email, phone)
}

/// The suppression-list keys a customer is known by: their email and phone, else the
/// order's.
pub fn contact_keys(
    customer: Option<&crate::engine::history::Customer>,
    order: Option<&crate::engine::Order>,
) -> Vec<String> {
    let (email, phone) = contact_of(customer, order);
    [email, phone]
        .into_iter()
        .flatten()
        .filter_map(|c| suppression_key(c).ok())
        .collect()
}

/// A phone number in E.164 form (`+` and digits, separators dropped), the form the
/// platforms send; a number without its country code could never match one.
fn phone_key(t: &str) -> Option<String> {
    let rest = t.strip_prefix('+')?;
    let digits: String = rest
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
        .collect();
    (digits.len() >= 7 && digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("+{digits}"))
}

/// The histogram bucket of an order total: 5% wide, so the median read from it is within
/// 5% of the true one.
pub fn value_bucket(total: i64) -> Option<u16> {
    (total > 0).then(|| ((total as f64).ln() / 1.05f64.ln()).floor() as u16)
}

fn bucket_floor(b: u16) -> i64 {
    1.05f64.powi(i32::from(b)).ceil() as i64
}

/// The processor's planning-related rows for one batch, written in its transaction.
#[derive(Default)]
pub struct PlanChanges {
    queue: Vec<(String, String, i64)>,
    refunds: Vec<(String, u64, i64)>,
    values: Vec<(String, u16, i64)>,
    anchors: Vec<(String, String, Anchors)>,
}

impl PlanChanges {
    /// Asks the planner to look at an order again; `refund_at` when a refund arrived.
    pub fn enqueue(&mut self, store: &str, order: &str, refund_at: Option<Timestamp>) {
        self.queue
            .push((store.into(), order.into(), refund_at.map_or(0, |t| t.0)));
    }

    /// An order's delivery facts changed: its delivery-anchored touches move.
    pub fn reanchor(&mut self, store: &str, order: &str, anchors: Anchors) {
        self.anchors.push((store.into(), order.into(), anchors));
    }

    pub fn refund(&mut self, store: &str, customer: u64, at: Timestamp) {
        self.refunds.push((store.into(), customer, at.0));
    }

    /// An order's counted total changed from `before` to `after`.
    pub fn order_value(&mut self, store: &str, before: Option<i64>, after: Option<i64>) {
        if before == after {
            return;
        }
        for (v, delta) in [(before, -1), (after, 1)] {
            if let Some(b) = v.and_then(value_bucket) {
                self.values.push((store.into(), b, delta));
            }
        }
    }

    /// Writes the rows; the timers it moved are added to `timers`.
    pub(super) fn write(
        &self,
        tx: &redb::WriteTransaction,
        timers: &mut Vec<super::touches::TimerKey>,
    ) -> Result<(), Error> {
        for (store, order, a) in &self.anchors {
            super::touches::reanchor(tx, store, order, a, timers)?;
        }
        let mut queue = tx.open_table(PLAN_QUEUE)?;
        for (store, order, at) in &self.queue {
            let k = (store.as_str(), order.as_str());
            let cur = queue.get(k)?.map_or(0, |v| v.value());
            queue.insert(k, cur.max(*at))?;
        }
        let mut refunds = tx.open_table(CUSTOMER_REFUNDS)?;
        for (store, customer, at) in &self.refunds {
            let k = (store.as_str(), *customer);
            let cur = refunds.get(k)?.map_or(0, |v| v.value());
            refunds.insert(k, cur.max(*at))?;
        }
        let mut values = tx.open_table(ORDER_VALUES)?;
        for (store, b, delta) in &self.values {
            let k = (store.as_str(), *b);
            let cur = values.get(k)?.map_or(0, |v| v.value());
            let next = (cur as i64 + delta).max(0) as u64;
            if next == 0 {
                values.remove(k)?;
            } else {
                values.insert(k, next)?;
            }
        }
        Ok(())
    }
}

pub fn encode_plan(rec: &PlanRecord) -> Result<Vec<u8>, Error> {
    codec::encode(PLAN_V1, rec)
}

pub fn decode_plan(bytes: &[u8]) -> Result<PlanRecord, Error> {
    codec::decode("plan record", PLAN_V1, bytes)
}

/// An order's plan record as a write transaction sees it.
pub fn stored_plan(
    tx: &redb::WriteTransaction,
    store: &str,
    order: &str,
) -> Result<Option<PlanRecord>, Error> {
    tx.open_table(PLANS)?
        .get((store, order))?
        .map(|v| decode_plan(v.value()))
        .transpose()
}

impl Snapshot {
    pub fn plan(&self, store: &str, order: &str) -> Result<Option<PlanRecord>, Error> {
        self.plans
            .get((store, order))?
            .map(|v| decode_plan(v.value()))
            .transpose()
    }

    /// Every plan of a store, in order-id order, read one at a time.
    pub fn store_plans<'s>(
        &'s self,
        store: &'s str,
    ) -> Result<impl Iterator<Item = Result<PlanRecord, Error>> + 's, Error> {
        let range = self.plans.range((store, "")..)?;
        Ok(range.map_while(move |item| match item {
            Err(e) => Some(Err(e.into())),
            Ok((k, v)) => (k.value().0 == store).then(|| decode_plan(v.value())),
        }))
    }

    /// A customer's counted orders placed from `from` to `to` (both in), oldest first:
    /// (order time ms, id).
    pub fn customer_orders_between(
        &self,
        store: &str,
        customer: u64,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, String)>, Error> {
        let mut out = Vec::new();
        for item in self
            .timeline
            .range((store, customer, from, "")..=(store, customer, to, "\u{10FFFF}"))?
        {
            let (k, _) = item?;
            let (_, _, at, id) = k.value();
            out.push((at, id.to_string()));
        }
        Ok(out)
    }

    /// Orders waiting to be planned, in key order, with their latest refund time (0: none).
    pub fn plan_queue(&self, limit: usize) -> Result<Vec<(String, String, i64)>, Error> {
        let mut out = Vec::new();
        for item in self.plan_queue.iter()?.take(limit) {
            let (k, v) = item?;
            let (s, o) = k.value();
            out.push((s.to_string(), o.to_string(), v.value()));
        }
        Ok(out)
    }

    /// Whether an order waits to be planned.
    pub fn queued(&self, store: &str, order: &str) -> Result<bool, Error> {
        Ok(self.plan_queue.get((store, order))?.is_some())
    }

    /// Why the first of `keys` on the suppression list is there, if one is.
    pub fn suppressed(&self, store: &str, keys: &[String]) -> Result<Option<Suppressed>, Error> {
        for key in keys {
            if let Some(row) = self.suppression_of(store, key)? {
                return Ok(Some(row.reason));
            }
        }
        Ok(None)
    }

    /// A contact's suppression entry: under its key, or under the keyed hash an erase
    /// left it under (the customer's data is gone, their unsubscribe is not).
    pub fn suppression_of(&self, store: &str, key: &str) -> Result<Option<SuppressionRow>, Error> {
        if let Some(row) = self.suppression(store, key)? {
            return Ok(Some(row));
        }
        match self.erase_key(store)? {
            Some(secret) => self.suppression(store, &super::privacy::erased_key(&secret, key)),
            None => Ok(None),
        }
    }

    /// A store's whole suppression list: (key, entry).
    pub fn suppression_list(&self, store: &str) -> Result<Vec<(String, SuppressionRow)>, Error> {
        let mut out = Vec::new();
        for item in self.suppressions.range((store, "")..)? {
            let (k, v) = item?;
            let (s, key) = k.value();
            if s != store {
                break;
            }
            out.push((key.to_string(), decode_suppression(v.value())?));
        }
        Ok(out)
    }

    /// The store's holdout salt, if the service has made it yet (it does when it first
    /// plans an order).
    pub fn salt(&self, store: &str) -> Result<Option<Vec<u8>>, Error> {
        self.store_key(store, SALT)
    }

    pub fn suppression(&self, store: &str, key: &str) -> Result<Option<SuppressionRow>, Error> {
        self.suppressions
            .get((store, key))?
            .map(|v| decode_suppression(v.value()))
            .transpose()
    }

    /// A per-store secret by name, if generated yet.
    pub fn store_key(&self, store: &str, name: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self
            .store_keys
            .get((store, name))?
            .map(|v| v.value().to_vec()))
    }

    pub fn last_refund(&self, store: &str, customer: u64) -> Result<Option<Timestamp>, Error> {
        Ok(self
            .refunds
            .get((store, customer))?
            .map(|v| Timestamp(v.value())))
    }

    /// The store's median and 80th-percentile order total (minor units, store currency),
    /// to within 5%; `None` before the first counted order.
    pub fn order_value_quantiles(&self, store: &str) -> Result<(Option<i64>, Option<i64>), Error> {
        let mut buckets = Vec::new();
        for item in self.order_values.range((store, 0u16)..=(store, u16::MAX))? {
            let (k, v) = item?;
            buckets.push((k.value().1, v.value()));
        }
        let total: u64 = buckets.iter().map(|b| b.1).sum();
        let at = |q: f64| {
            let want = (total as f64 * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            buckets.iter().find_map(|&(b, n)| {
                seen += n;
                (seen >= want).then(|| bucket_floor(b))
            })
        };
        Ok((at(0.5), at(0.8)))
    }

    /// A customer's counted orders, newest first, at most `limit`: (order time ms, id);
    /// with `before`, only those placed before that (time ms, order id).
    pub fn customer_orders(
        &self,
        store: &str,
        customer: u64,
        before: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, Error> {
        let mut out = Vec::new();
        let from = (store, customer, i64::MIN, "");
        let range = match before {
            Some((at, id)) => self.timeline.range(from..(store, customer, at, id))?,
            None => self
                .timeline
                .range(from..=(store, customer, i64::MAX, "\u{10FFFF}"))?,
        };
        for item in range.rev().take(limit) {
            let (k, _) = item?;
            let (_, _, at, id) = k.value();
            out.push((at, id.to_string()));
        }
        Ok(out)
    }

    /// Every bundle of the store with its members' product keys, from one scan of its
    /// catalog.
    pub fn bundles(
        &self,
        store: &str,
    ) -> Result<std::collections::BTreeMap<String, Vec<String>>, Error> {
        let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for item in self.catalog.range((store, "")..)? {
            let (k, v) = item?;
            if k.value().0 != store {
                break;
            }
            let v = super::records::decode_variant(v.value())?;
            let (Some(sku), false) = (v.sku.as_deref(), v.bundles.is_empty()) else {
                continue;
            };
            let key = self
                .resolve_product(store, sku)?
                .unwrap_or_else(|| sku.to_string());
            for id in &v.bundles {
                let members = out.entry(id.clone()).or_default();
                if !members.contains(&key) {
                    members.push(key.clone());
                }
            }
        }
        Ok(out)
    }

    /// Finds a plan by platform order id, else by order name (`#1042` or `1042`).
    pub fn find_plan(&self, store: &str, order: &str) -> Result<Option<PlanRecord>, Error> {
        if let Some(p) = self.plan(store, order)? {
            return Ok(Some(p));
        }
        let name = order.trim();
        let with_hash = if name.starts_with('#') {
            name.to_string()
        } else {
            format!("#{name}")
        };
        for item in self.plans.range((store, "")..)? {
            let (k, v) = item?;
            if k.value().0 != store {
                break;
            }
            let rec = decode_plan(v.value())?;
            if rec.order_name == name || rec.order_name == with_hash {
                return Ok(Some(rec));
            }
        }
        Ok(None)
    }

    /// The store's last plan (in order-id order) that carries an offer, for a test send.
    pub fn a_plan_with_an_offer(&self, store: &str) -> Result<Option<PlanRecord>, Error> {
        for item in self.plans.range((store, "")..)?.rev() {
            let (k, v) = item?;
            if k.value().0 != store {
                continue;
            }
            let rec = decode_plan(v.value())?;
            if rec.plan.offer.is_some() {
                return Ok(Some(rec));
            }
        }
        Ok(None)
    }
}

/// What one planning pass writes: plan records, and the queue entries it handled.
#[derive(Default)]
pub struct PlanWrites {
    pub plans: Vec<(String, PlanRecord)>,
    pub done: Vec<(String, String)>,
    /// (store, order, anchors): delivery-anchored touches to move once scheduled.
    pub anchors: Vec<(String, String, Anchors)>,
    /// Conversions found (or taken back) in the pass.
    pub conversions: Vec<(String, crate::engine::attribution::Conversion)>,
}

impl Storage {
    /// Writes a planning pass in one transaction. Not synced by itself, like the
    /// processor's batches: a crash before the next durable commit leaves the queue
    /// entries in place, and planning them again changes nothing.
    pub fn write_plans(&self, w: &PlanWrites) -> Result<(), Error> {
        let mut timers = Vec::new();
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::None)?;
        {
            let mut plans = tx.open_table(PLANS)?;
            let mut again = Vec::new();
            for (store, rec) in &w.plans {
                let key = (store.as_str(), rec.order_id.as_str());
                // The scheduler (or the thank-you page) may have recorded a send since the
                // planner's snapshot: what went out stays out.
                let stored = plans
                    .get(key)?
                    .map(|v| decode_plan(v.value()))
                    .transpose()?;
                let mut rec = rec.clone();
                if let Some(stored) = stored {
                    let new_sends = stored.sent.iter().any(|k| !rec.sent.contains(k));
                    if new_sends && rec.revision != stored.revision {
                        // The planner revised a plan it thought unseen, and the customer
                        // has seen it meanwhile: plan the order again from what is stored
                        // (a seen plan is only adjusted, never replaced).
                        again.push((store.clone(), rec.order_id.clone()));
                        continue;
                    }
                    for kind in stored.sent {
                        if !rec.sent.contains(&kind) {
                            rec.sent.push(kind);
                        }
                    }
                }
                plans.insert(key, encode_plan(&rec)?.as_slice())?;
                super::touches::sync(&tx, store, &rec, &mut timers)?;
            }
            for (store, order, a) in &w.anchors {
                super::touches::reanchor(&tx, store, order, a, &mut timers)?;
            }
            drop(plans);
            for (store, c) in &w.conversions {
                super::conversions::write_in(&tx, store, c)?;
            }
            let mut queue = tx.open_table(PLAN_QUEUE)?;
            for (store, order) in &w.done {
                if !again.contains(&(store.clone(), order.clone())) {
                    queue.remove((store.as_str(), order.as_str()))?;
                }
            }
            for (store, order) in &again {
                let key = (store.as_str(), order.as_str());
                if queue.get(key)?.is_none() {
                    queue.insert(key, 0)?;
                }
            }
        }
        tx.commit()?;
        self.timer_feed.push(&timers);
        Ok(())
    }

    /// The store's holdout salt, generated (32 random bytes) and stored durably the first
    /// time. Kept in the database, not the config: regenerating the config must not
    /// reshuffle who is held out.
    pub fn salt(&self, store: &str) -> Result<Vec<u8>, Error> {
        self.store_key(store, SALT)
    }

    /// Sets the store's holdout salt before anything was planned with one, so who is held
    /// out is known in advance (the report's fixtures). Refuses to replace a salt: that
    /// would reshuffle the groups.
    #[doc(hidden)]
    pub fn seed_salt(&self, store: &str, salt: &[u8]) -> Result<(), Error> {
        let tx = self.db.begin_write()?;
        {
            let mut keys = tx.open_table(STORE_KEYS)?;
            if keys.get((store, SALT))?.is_some() {
                return Err(Error::Codec(format!(
                    "store {store} already has a holdout salt"
                )));
            }
            keys.insert((store, SALT), salt)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The store's key for signing the links in messages (generated like the salt), so
    /// links sent before a restart or a config change keep working.
    pub fn link_key(&self, store: &str) -> Result<Vec<u8>, Error> {
        self.store_key(store, LINK_KEY)
    }

    /// A per-store secret by name: 32 random bytes generated and stored durably the first
    /// time.
    pub(super) fn store_key(&self, store: &str, name: &str) -> Result<Vec<u8>, Error> {
        if let Some(s) = self.snapshot()?.store_key(store, name)? {
            return Ok(s);
        }
        let tx = self.db.begin_write()?;
        let key = {
            let mut keys = tx.open_table(STORE_KEYS)?;
            let existing = keys.get((store, name))?.map(|v| v.value().to_vec());
            match existing {
                Some(s) => s,
                None => {
                    let mut b = [0u8; 32];
                    getrandom::fill(&mut b)
                        .map_err(|e| Error::Codec(format!("the OS random source failed: {e}")))?;
                    keys.insert((store, name), &b[..])?;
                    b.to_vec()
                }
            }
        };
        tx.commit()?;
        Ok(key)
    }

    /// Adds entries to a store's suppression list in one durable transaction (all or
    /// none). Returns how many were new.
    pub fn suppress(&self, store: &str, rows: &[(String, SuppressionRow)]) -> Result<usize, Error> {
        let tx = self.db.begin_write()?;
        let new = suppress_in(&tx, store, rows)?;
        tx.commit()?;
        Ok(new)
    }

    /// Removes an entry (also one kept under an erased contact's hash); returns whether
    /// there was one.
    pub fn unsuppress(&self, store: &str, key: &str) -> Result<bool, Error> {
        let hashed = self
            .snapshot()?
            .erase_key(store)?
            .map(|secret| super::privacy::erased_key(&secret, key));
        let tx = self.db.begin_write()?;
        let was = {
            let mut t = tx.open_table(SUPPRESSIONS)?;
            let plain = t.remove((store, key))?.is_some();
            let erased = match &hashed {
                Some(h) => t.remove((store, h.as_str()))?.is_some(),
                None => false,
            };
            plain || erased
        };
        tx.commit()?;
        Ok(was)
    }
}

pub(super) fn decode_suppression(bytes: &[u8]) -> Result<SuppressionRow, Error> {
    codec::decode("suppression", SUPPRESSION_V1, bytes)
}

/// [`Storage::suppress`] inside a write transaction. Returns how many entries were new.
pub fn suppress_in(
    tx: &redb::WriteTransaction,
    store: &str,
    rows: &[(String, SuppressionRow)],
) -> Result<usize, Error> {
    let mut new = 0;
    let mut t = tx.open_table(SUPPRESSIONS)?;
    let secret = tx
        .open_table(STORE_KEYS)?
        .get((store, super::privacy::ERASE_KEY))?
        .map(|v| v.value().to_vec());
    for (key, row) in rows {
        // A contact whose data was erased keeps one entry, under its hash: an unsubscribe
        // arriving after the erase (a touch that was already on its way) must not write
        // the address back in the clear.
        let hashed = secret
            .as_deref()
            .filter(|_| !key.starts_with("erased:"))
            .map(|s| super::privacy::erased_key(s, key));
        let (key, hidden) = match hashed {
            Some(h) if t.get((store, h.as_str()))?.is_some() => (h, true),
            _ => (key.clone(), false),
        };
        let old: Option<SuppressionRow> = t
            .get((store, key.as_str()))?
            .map(|v| decode_suppression(v.value()))
            .transpose()?;
        let row = match old {
            None => {
                new += 1;
                row.clone()
            }
            // The customer's own unsubscribe or complaint outranks a note, and the
            // entry keeps its first date.
            Some(old) => SuppressionRow {
                reason: match (&old.reason, &row.reason) {
                    // A new note could quote the erased address: the scrubbed one stays.
                    (Suppressed::Manual(_), Suppressed::Manual(_)) if hidden => old.reason,
                    (Suppressed::Manual(_), _) => row.reason.clone(),
                    (_, Suppressed::Manual(_)) => old.reason.clone(),
                    _ => row.reason.clone(),
                },
                at: old.at.min(row.at),
                source: old.source,
            },
        };
        let bytes = codec::encode(SUPPRESSION_V1, &row)?;
        t.insert((store, key.as_str()), bytes.as_slice())?;
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suppression_keys_normalize_and_reject() {
        assert_eq!(
            suppression_key(" Ann@Example.COM ").unwrap(),
            "email:ann@example.com"
        );
        assert_eq!(
            suppression_key("+1 (555) 123-4567").unwrap(),
            "phone:+15551234567"
        );
        assert!(suppression_key("12").unwrap_err().contains("neither"));
        assert!(
            suppression_key("555 123 4567").is_err(),
            "without its country code a number never matches what platforms send"
        );
        assert!(suppression_key("a@").unwrap_err().contains("not an email"));
    }

    #[test]
    fn buckets_are_five_percent_wide() {
        for v in [1i64, 99, 1000, 5400, 123_456] {
            let b = value_bucket(v).unwrap();
            let lo = bucket_floor(b);
            assert!(
                lo <= v + 1 && (v as f64) < lo as f64 * 1.05 + 1.0,
                "{v}: {lo}"
            );
        }
        assert_eq!(value_bucket(0), None);
    }
}
