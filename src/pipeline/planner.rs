//! Plans offers for the orders the processor queued: loads what `engine::plan` decides
//! from (the basket as product keys, the customer's history, the suppression list,
//! affinity candidates, the catalog, the store's order values), calls it, applies the
//! plan's lifecycle (replace before the first send, adjust after, cancel, refund, end the
//! customer's older sequence) and stores the records. Runs on the processor thread after
//! each batch, never before a webhook's 2xx; imported orders are never planned.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::clock::Clock;
use crate::config::{Config, StoreConfig};
use crate::engine::affinity::Month;
use crate::engine::history::{normalize_email, Customer};
use crate::engine::lifecycle::{self, PlanRecord};
use crate::engine::plan::{self, BasketLine, PlanInput, Shopper};
use crate::engine::{Order, Source, Timestamp};
use crate::storage::affinity::ReadSettings;
use crate::storage::plans::{contact_keys, PlanWrites};
use crate::storage::{Error, Snapshot, Storage};

/// What planning needs besides the database.
pub struct Planning {
    pub config: Arc<Config>,
    pub clock: Arc<dyn Clock>,
}

/// Affinity candidates read per order.
const CANDIDATES: usize = 20;
/// Earlier orders read per customer for what they bought.
const HISTORY: usize = 50;
/// Queue entries planned per transaction.
const CHUNK: usize = 256;

/// Plans every queued order. Returns how many were planned.
pub fn plan_pending(storage: &Storage, planning: &Planning) -> Result<usize, Error> {
    let mut total = 0;
    let mut salts: HashMap<String, Vec<u8>> = HashMap::new();
    loop {
        let snap = storage.snapshot()?;
        let queue = snap.plan_queue(CHUNK)?;
        if queue.is_empty() {
            return Ok(total);
        }
        for (store, _, _) in &queue {
            if !salts.contains_key(store) && planning.config.store(store).is_some() {
                salts.insert(store.clone(), storage.salt(store)?);
            }
        }
        let now = planning.clock.now();
        let mut pass = Pass {
            snap: &snap,
            config: &planning.config,
            now,
            records: BTreeMap::new(),
            values: HashMap::new(),
            anchors: Vec::new(),
        };
        let mut done = Vec::new();
        for (store, order, refund_at) in &queue {
            done.push((store.clone(), order.clone()));
            let (Some(cfg), Some(salt)) = (planning.config.store(store), salts.get(store)) else {
                continue; // a store no longer configured: nothing to plan
            };
            // One order that cannot be planned (a damaged record) must not stall history
            // for every store: it is reported and left unplanned.
            match pass.plan_order(cfg, salt, order, *refund_at) {
                Ok(()) => total += 1,
                Err(e) => eprintln!("planner: store {store}, order {order}: {e}; not planned"),
            }
        }
        let writes = PlanWrites {
            plans: pass
                .records
                .into_iter()
                .map(|((store, _), rec)| (store, rec))
                .collect(),
            done,
            anchors: pass.anchors,
        };
        storage.write_plans(&writes)?;
    }
}

/// One planning transaction's work: the records it changed, over the snapshot.
struct Pass<'a> {
    snap: &'a Snapshot,
    config: &'a Config,
    now: Timestamp,
    records: BTreeMap<(String, String), PlanRecord>,
    values: HashMap<String, (Option<i64>, Option<i64>)>,
    /// Orders planned after their delivery facts arrived: where their delivery-anchored
    /// touches go.
    anchors: Vec<(String, String, crate::engine::due::Anchors)>,
}

impl Pass<'_> {
    fn record(&self, store: &str, order: &str) -> Result<Option<PlanRecord>, Error> {
        match self.records.get(&(store.to_string(), order.to_string())) {
            Some(r) => Ok(Some(r.clone())),
            None => self.snap.plan(store, order),
        }
    }

    fn plan_order(
        &mut self,
        cfg: &StoreConfig,
        salt: &[u8],
        order_id: &str,
        refund_at: i64,
    ) -> Result<(), Error> {
        let store = cfg.id.as_str();
        let Some(state) = self.snap.order(store, order_id)? else {
            return Ok(());
        };
        let (Some(order), Some(Source::Webhook)) = (&state.order, state.source) else {
            return Ok(()); // only a refund so far, or an imported order
        };
        let customer = match state.customer {
            Some(id) => self.snap.customer(store, id)?,
            None => None,
        };
        let loaded = load(self.snap, cfg, order, customer.as_ref())?;
        if !self.values.contains_key(store) {
            let q = self.snap.order_value_quantiles(store)?;
            self.values.insert(store.to_string(), q);
        }
        let (median, top_fifth) = self.values[store];
        let rs = ReadSettings {
            decay: self.config.affinity.decay(),
            now: crate::engine::affinity::month_of(self.now) as Month,
            thresholds: self.config.affinity.thresholds,
        };
        let keys: Vec<String> = loaded.basket.iter().map(|l| l.product.clone()).collect();
        let candidates = self.snap.candidates(store, &keys, &rs, CANDIDATES)?;
        let mut catalog = loaded.catalog;
        for c in &candidates {
            if !catalog.contains_key(&c.product) {
                if let Some(v) = self.snap.variant_of_key(store, &c.product)? {
                    catalog.insert(c.product.clone(), v);
                }
            }
        }
        let bundle_ids: BTreeSet<String> = loaded
            .basket
            .iter()
            .filter_map(|l| catalog.get(&l.product))
            .flat_map(|v| v.bundles.iter().cloned())
            .collect();
        let bundles = self.snap.bundle_members(store, &bundle_ids)?;
        for key in bundles.values().flatten() {
            if !catalog.contains_key(key) {
                if let Some(v) = self.snap.variant_of_key(store, key)? {
                    catalog.insert(key.clone(), v);
                }
            }
        }
        let old = self.record(store, order_id)?;
        let seen_at = old.as_ref().map_or(self.now, |r| r.first_planned_at);
        let fresh = plan::plan(&PlanInput {
            store,
            salt,
            policy: &cfg.offers,
            currency: cfg.currency,
            order,
            basket: &loaded.basket,
            shopper: &loaded.shopper,
            catalog: &catalog,
            candidates: &candidates,
            bundles: &bundles,
            median_order: median,
            top_fifth_order: top_fifth,
            now: self.now,
            seen_at,
        });
        let mut rec =
            lifecycle::revise(old, fresh, order, state.customer, &loaded.basket, self.now);
        if refund_at > 0 {
            lifecycle::refunded(&mut rec, Timestamp(refund_at));
        } else if !state.refunds.is_empty() && rec.refunded_at.is_none() {
            // A refund that overtook its order: its time is not kept, the order's is.
            lifecycle::refunded(&mut rec, order.updated_at);
        }
        // Only a paid, live order starts a sequence: a pending one that may be voided
        // must not end the customer's running one. Ending is idempotent, so this runs on
        // every re-plan and catches the moment an order becomes paid.
        let starts = plan::paid(order) && order.cancelled_at.is_none();
        if starts && rec.status == lifecycle::Status::Active {
            if let Some(c) = state.customer {
                self.exclusive(store, c, &mut rec)?;
            }
        }
        let delivery = self.snap.delivery(store, order_id, Some(&state))?;
        if delivery != Default::default() {
            let a = crate::engine::due::anchors(&delivery, &cfg.delivery, &cfg.offers.cadence)
                .not_before(self.now);
            self.anchors
                .push((store.to_string(), order_id.to_string(), a));
        }
        self.records
            .insert((store.to_string(), order_id.to_string()), rec);
        Ok(())
    }

    /// Sequence exclusivity: the customer's newest order runs its sequence; every older
    /// one still running ends. A late webhook for an older order ends its own at once.
    fn exclusive(&mut self, store: &str, customer: u64, rec: &mut PlanRecord) -> Result<(), Error> {
        for (_, other_id) in self.snap.customer_orders(store, customer, None, HISTORY)? {
            if other_id == rec.order_id {
                continue;
            }
            let Some(mut other) = self.record(store, &other_id)? else {
                continue;
            };
            let newer = (other.order_at, &other.order_id) > (rec.order_at, &rec.order_id);
            if newer {
                if other.status == lifecycle::Status::Active {
                    lifecycle::end(rec, &other.order_id, self.now);
                }
            } else if lifecycle::end(&mut other, &rec.order_id, self.now) {
                self.records
                    .insert((store.to_string(), other_id.clone()), other);
            }
        }
        Ok(())
    }
}

/// The order's basket and catalog entries, and the customer as known before it.
struct Loaded {
    basket: Vec<BasketLine>,
    catalog: BTreeMap<String, crate::engine::catalog::Variant>,
    shopper: Shopper,
}

fn load(
    snap: &Snapshot,
    cfg: &StoreConfig,
    order: &Order,
    customer: Option<&Customer>,
) -> Result<Loaded, Error> {
    let store = cfg.id.as_str();
    let mut basket = Vec::new();
    let mut catalog = BTreeMap::new();
    for line in &order.lines {
        let Some((key, variant)) = snap.line_product(store, line)? else {
            continue;
        };
        let gift_card = line.gift_card || variant.as_ref().is_some_and(|v| v.gift_card);
        if let Some(mut v) = variant {
            resolve_upgrade(snap, store, &mut v, &mut catalog)?;
            catalog.insert(key.clone(), v);
        }
        basket.push(BasketLine {
            product: key,
            quantity: line.quantity,
            unit_price: line.unit_price,
            gift_card,
        });
    }
    let mut shopper = Shopper::default();
    if let Some(c) = customer {
        // Groups are keyed on the customer record, which outlives a changed email or phone
        // and which a guest's later account resolves to (by email).
        shopper.identity = Some(format!("customer:{}", c.id));
        let before = (order.created_at.0, order.id.as_str());
        let earlier = snap.customer_orders(store, c.id, Some(before), usize::MAX)?;
        shopper.prior_orders = earlier.len() as u32;
        shopper.tags = c.tags.clone();
        shopper.email = c.email.is_some();
        shopper.phone = c.phone.is_some();
        shopper.email_consent = c.email_consent;
        shopper.sms_consent = c.sms_consent;
        shopper.last_refund_at = snap.last_refund(store, c.id)?;
        for (_, other) in earlier.into_iter().take(HISTORY) {
            let Some(o) = snap.order(store, &other)?.and_then(|s| s.order) else {
                continue;
            };
            let mut categories = BTreeSet::new();
            for line in &o.lines {
                if let Some((key, variant)) = snap.line_product(store, line)? {
                    if let Some(cat) = variant
                        .and_then(|v| v.product_type)
                        .filter(|c| !c.is_empty())
                    {
                        categories.insert(cat);
                    }
                    shopper.bought.insert(key);
                }
            }
            for cat in categories {
                *shopper.categories.entry(cat).or_default() += 1;
            }
        }
    } else {
        shopper.identity = order
            .contact_email()
            .and_then(normalize_email)
            .map(|e| format!("email:{e}"));
        shopper.email = order.contact_email().is_some();
        shopper.phone = order.phone.is_some();
    }
    shopper.suppressed = snap.suppressed(store, &contact_keys(customer, Some(order)))?;
    Ok(Loaded {
        basket,
        catalog,
        shopper,
    })
}

/// Points a variant's `upgrade_to` (a SKU or product key as the store wrote it) at the
/// target's product key, and loads the target's catalog entry.
fn resolve_upgrade(
    snap: &Snapshot,
    store: &str,
    v: &mut crate::engine::catalog::Variant,
    catalog: &mut BTreeMap<String, crate::engine::catalog::Variant>,
) -> Result<(), Error> {
    let Some(to) = v.upgrade_to.clone() else {
        return Ok(());
    };
    let key = snap.resolve_product(store, &to)?.unwrap_or(to);
    if let Some(target) = snap.variant_of_key(store, &key)? {
        catalog.insert(key.clone(), target);
    }
    v.upgrade_to = Some(key);
    Ok(())
}
