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
use crate::engine::affinity::{Candidate, Month};
use crate::engine::attribution::{self, Conversion};
use crate::engine::catalog::Variant;
use crate::engine::history::{normalize_email, Customer};
use crate::engine::lifecycle::{self, PlanRecord};
use crate::engine::plan::{self, BasketLine, PlanInput, Shopper};
use crate::engine::{LineItem, Order, Source, Timestamp};
use crate::storage::affinity::{CandidateReader, ReadSettings};
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
        let rs = ReadSettings {
            decay: planning.config.affinity.decay(),
            now: crate::engine::affinity::month_of(now) as Month,
            thresholds: planning.config.affinity.thresholds,
        };
        let mut pass = Pass {
            snap: &snap,
            rs: &rs,
            now,
            windows: planning.config.measurement.windows,
            records: BTreeMap::new(),
            readers: HashMap::new(),
            anchors: Vec::new(),
            conversions: BTreeMap::new(),
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
                Err(e) => log::error!("planner: store {store}, order {order}: {e}; not planned"),
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
            conversions: pass
                .conversions
                .into_iter()
                .map(|((store, _), c)| (store, c))
                .collect(),
        };
        storage.write_plans(&writes)?;
    }
}

/// One planning transaction's work: the records it changed, over the snapshot.
struct Pass<'a> {
    snap: &'a Snapshot,
    rs: &'a ReadSettings,
    now: Timestamp,
    windows: attribution::Windows,
    records: BTreeMap<(String, String), PlanRecord>,
    /// What plans read, per store, remembered for the pass.
    readers: HashMap<String, Reader<'a>>,
    /// Orders planned after their delivery facts arrived: where their delivery-anchored
    /// touches go.
    anchors: Vec<(String, String, crate::engine::due::Anchors)>,
    /// Conversions found or taken back, by (store, offering order).
    conversions: BTreeMap<(String, String), Conversion>,
}

impl<'a> Pass<'a> {
    fn record(&self, store: &str, order: &str) -> Result<Option<PlanRecord>, Error> {
        match self.records.get(&(store.to_string(), order.to_string())) {
            Some(r) => Ok(Some(r.clone())),
            None => self.snap.plan(store, order),
        }
    }

    fn plan_order(
        &mut self,
        cfg: &'a StoreConfig,
        salt: &[u8],
        order_id: &str,
        refund_at: i64,
    ) -> Result<(), Error> {
        let store = cfg.id.as_str();
        let Some(state) = self.snap.order(store, order_id)? else {
            return Ok(());
        };
        let (Some(order), Some(true)) = (&state.order, state.source.map(Source::live)) else {
            return Ok(()); // only a refund so far, or an imported order
        };
        let customer = match state.customer {
            Some(id) => self.snap.customer(store, id)?,
            None => None,
        };
        let old = self.record(store, order_id)?;
        let seen_at = old.as_ref().map_or(self.now, |r| r.first_planned_at);
        let (snap, rs) = (self.snap, self.rs);
        let reader = match self.readers.entry(store.to_string()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Reader::new(snap, store, rs)?),
        };
        let inputs = reader.order_inputs(order)?;
        let mut shopper = shopper_of(customer.as_ref(), order);
        if let Some(c) = &customer {
            let before = (order.created_at.0, order.id.as_str());
            let earlier = snap.customer_orders(store, c.id, Some(before), usize::MAX)?;
            shopper.prior_orders = earlier.len() as u32;
            shopper.last_refund_at = snap.last_refund(store, c.id)?;
            for (_, other) in earlier.into_iter().take(HISTORY) {
                if let Some(o) = snap.order(store, &other)?.and_then(|s| s.order) {
                    add_earlier(&mut shopper, &reader.products(&o)?);
                }
            }
        }
        shopper.suppressed =
            snap.suppressed(store, &contact_keys(customer.as_ref(), Some(order)))?;
        let fresh = plan::plan(&PlanInput {
            store,
            salt,
            policy: &cfg.offers,
            currency: cfg.currency,
            order,
            basket: &inputs.basket,
            shopper: &shopper,
            catalog: &inputs.catalog,
            candidates: &inputs.candidates,
            bundles: &inputs.bundles,
            median_order: reader.median,
            top_fifth_order: reader.top_fifth,
            now: self.now,
            seen_at,
        });
        let mut rec =
            lifecycle::revise(old, fresh, order, state.customer, &inputs.basket, self.now);
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
        if let Some(c) = state.customer {
            let refund_at = Timestamp(if refund_at > 0 {
                refund_at
            } else {
                order.updated_at.0
            });
            let converting = Converting {
                order,
                customer: c,
                basket: &inputs.basket,
                live: starts,
                refunded: state.refunds.iter().map(|(_, a)| a).sum(),
                refund_at,
            };
            self.attribute(cfg, &converting)?;
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

    /// Attribution: the customer's earlier offers that `n` converts (it buys the offered
    /// product within the window of an engagement with the offer), or whose conversion by
    /// `n` its refund or cancellation takes back.
    fn attribute(&mut self, cfg: &StoreConfig, n: &Converting<'_>) -> Result<(), Error> {
        let store = cfg.id.as_str();
        let before = (n.order.created_at.0, n.order.id.as_str());
        // A purchase converts one offer: of the offers it could convert, the one with the
        // latest engagement (last click).
        let mut best: Option<Conversion> = None;
        let mut converted_one = false;
        for (_, o) in self
            .snap
            .customer_orders(store, n.customer, Some(before), HISTORY)?
        {
            let key = (store.to_string(), o.clone());
            let existing = match self.conversions.get(&key) {
                Some(c) => Some(c.clone()),
                None => self.snap.conversion(store, &o)?,
            };
            let mut conv = match existing {
                Some(c) if c.order == n.order.id => {
                    converted_one = true;
                    c
                }
                Some(_) => continue, // converted by another order: the first stands
                None => {
                    if !n.live {
                        continue;
                    }
                    let Some(rec) = self.record(store, &o)? else {
                        continue;
                    };
                    let (Some(offer), Some(recipe), false) =
                        (&rec.plan.offer, rec.plan.recipe, rec.plan.holdout)
                    else {
                        continue;
                    };
                    if !n.basket.iter().any(|l| l.product == offer.product) {
                        continue;
                    }
                    let all = self.snap.engagements(store, &o)?;
                    let contributing =
                        attribution::contributing(&all, n.order.created_at, &self.windows);
                    if contributing.is_empty() {
                        continue;
                    }
                    let candidate = Conversion {
                        offer_order: o.clone(),
                        order: n.order.id.clone(),
                        customer: n.customer,
                        at: n.order.created_at,
                        product: offer.product.clone(),
                        recipe: recipe.as_str().to_string(),
                        revenue: crate::engine::money::convert(
                            n.paid_for(&offer.product),
                            n.order.currency,
                            cfg.currency,
                            &cfg.offers.exchange_rates,
                        ),
                        contributing,
                        reversed: None,
                    };
                    if best
                        .as_ref()
                        .is_none_or(|b| candidate.credited().at > b.credited().at)
                    {
                        best = Some(candidate);
                    }
                    continue;
                }
            };
            if conv.reversed.is_none() {
                conv.reversed = n.reversal(&conv.product);
            }
            self.conversions.insert(key, conv);
        }
        // Only a purchase that converted nothing yet takes a new offer.
        if let (Some(conv), false) = (best, converted_one) {
            if n.reversal(&conv.product).is_none() {
                self.conversions
                    .insert((store.to_string(), conv.offer_order.clone()), conv);
            }
        }
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

/// A planned order as a possible conversion of its customer's earlier offers.
struct Converting<'o> {
    order: &'o Order,
    customer: u64,
    basket: &'o [BasketLine],
    /// Paid and not cancelled: only such an order converts.
    live: bool,
    /// Refunded so far, in the order's currency.
    refunded: i64,
    /// When its latest refund came.
    refund_at: Timestamp,
}

impl Converting<'_> {
    /// What the order paid for a product, in its currency.
    fn paid_for(&self, product: &str) -> i64 {
        self.basket
            .iter()
            .filter(|l| l.product == product)
            .map(|l| l.unit_price * i64::from(l.quantity))
            .sum()
    }

    /// Whether the order's state takes back a conversion of `product`.
    fn reversal(&self, product: &str) -> Option<attribution::Reversal> {
        attribution::reversal(
            self.order.cancelled_at,
            self.refunded,
            self.paid_for(product),
            self.refund_at,
        )
    }
}

/// What `plan` reads about an order besides its customer.
pub(crate) struct OrderInputs {
    pub basket: Vec<BasketLine>,
    /// Catalog entries by product key: the basket's, their upgrade targets, the
    /// candidates' and the bundle members'.
    pub catalog: BTreeMap<String, Arc<Variant>>,
    pub candidates: Vec<Candidate>,
    /// Members of the basket's bundles.
    pub bundles: BTreeMap<String, Vec<String>>,
}

/// Identifies what `Snapshot::line_product` reads of a line.
type LineId = (Option<String>, Option<String>, Option<String>);
/// A line's product key and catalog entry.
type LineProduct = (String, Option<Arc<Variant>>);

/// Reads what `plan` decides from for one store out of one snapshot, remembering catalog
/// and affinity reads: a planning pass meets the same products again and again, `replay`
/// a million times.
pub(crate) struct Reader<'a> {
    snap: &'a Snapshot,
    store: &'a str,
    /// Each line's product key and catalog entry (its upgrade target resolved to a key).
    lines: rustc_hash::FxHashMap<LineId, Option<LineProduct>>,
    variants: rustc_hash::FxHashMap<String, Option<Arc<Variant>>>,
    bundles: Option<BTreeMap<String, Vec<String>>>,
    candidates: CandidateReader<'a>,
    /// The store's median and 80th-percentile order value.
    pub median: Option<i64>,
    pub top_fifth: Option<i64>,
}

impl<'a> Reader<'a> {
    pub fn new(
        snap: &'a Snapshot,
        store: &'a str,
        rs: &'a ReadSettings,
    ) -> Result<Reader<'a>, Error> {
        let (median, top_fifth) = snap.order_value_quantiles(store)?;
        Ok(Reader {
            snap,
            store,
            lines: Default::default(),
            variants: Default::default(),
            bundles: None,
            candidates: CandidateReader::new(snap, store, rs),
            median,
            top_fifth,
        })
    }

    /// A line's product key and catalog entry, if it is a product.
    fn line(&mut self, line: &LineItem) -> Result<Option<LineProduct>, Error> {
        let id = (
            line.variant_id.clone(),
            line.sku.clone(),
            line.product_id.clone(),
        );
        if let Some(hit) = self.lines.get(&id) {
            return Ok(hit.clone());
        }
        let mut found = self.snap.line_product(self.store, line)?;
        if let Some((_, Some(v))) = &mut found {
            // `upgrade_to` as the store wrote it (a SKU or a product key) -> the target's key.
            if let Some(to) = v.upgrade_to.take() {
                v.upgrade_to = Some(self.snap.resolve_product(self.store, &to)?.unwrap_or(to));
            }
        }
        let found = found.map(|(key, v)| (key, v.map(Arc::new)));
        self.lines.insert(id, found.clone());
        Ok(found)
    }

    fn variant(&mut self, key: &str) -> Result<Option<Arc<Variant>>, Error> {
        if let Some(v) = self.variants.get(key) {
            return Ok(v.clone());
        }
        let v = self.snap.variant_of_key(self.store, key)?.map(Arc::new);
        self.variants.insert(key.to_string(), v.clone());
        Ok(v)
    }

    /// Units in stock of a product, where the catalog knows.
    pub fn stock(&mut self, key: &str) -> Result<Option<i64>, Error> {
        Ok(self.variant(key)?.and_then(|v| v.inventory))
    }

    /// The basket, the catalog entries involved, the candidates and the bundles.
    pub fn order_inputs(&mut self, order: &Order) -> Result<OrderInputs, Error> {
        let mut basket = Vec::new();
        let mut catalog = BTreeMap::new();
        for line in &order.lines {
            let Some((key, variant)) = self.line(line)? else {
                continue;
            };
            let gift_card = line.gift_card || variant.as_ref().is_some_and(|v| v.gift_card);
            if let Some(v) = variant {
                if let Some(to) = &v.upgrade_to {
                    if let Some(target) = self.variant(to)? {
                        catalog.insert(to.clone(), target);
                    }
                }
                catalog.insert(key.clone(), v);
            }
            basket.push(BasketLine {
                product: key,
                quantity: line.quantity,
                unit_price: line.unit_price,
                gift_card,
            });
        }
        let keys: Vec<String> = basket.iter().map(|l| l.product.clone()).collect();
        let candidates = self.candidates.candidates(&keys, CANDIDATES)?;
        for c in &candidates {
            if !catalog.contains_key(&c.product) {
                if let Some(v) = self.variant(&c.product)? {
                    catalog.insert(c.product.clone(), v);
                }
            }
        }
        let ids: BTreeSet<&String> = basket
            .iter()
            .filter_map(|l| catalog.get(&l.product))
            .flat_map(|v| v.bundles.iter())
            .collect();
        let mut bundles = BTreeMap::new();
        if !ids.is_empty() {
            if self.bundles.is_none() {
                self.bundles = Some(self.snap.bundles(self.store)?);
            }
            let all = self.bundles.as_ref().expect("loaded above");
            for id in ids {
                if let Some(members) = all.get(id) {
                    bundles.insert(id.clone(), members.clone());
                }
            }
        }
        for key in bundles.values().flatten() {
            if !catalog.contains_key(key) {
                if let Some(v) = self.variant(key)? {
                    catalog.insert(key.clone(), v);
                }
            }
        }
        Ok(OrderInputs {
            basket,
            catalog,
            candidates,
            bundles,
        })
    }

    /// An order's products with their categories, for the history of a later order.
    pub fn products(&mut self, order: &Order) -> Result<Vec<(String, Option<String>)>, Error> {
        let mut out = Vec::new();
        for line in &order.lines {
            if let Some((key, variant)) = self.line(line)? {
                let category = variant.and_then(|v| v.product_type.clone());
                out.push((key, category.filter(|c| !c.is_empty())));
            }
        }
        Ok(out)
    }
}

/// The customer as their record and this order tell, before any history: who the groups
/// are keyed on, tags, contacts and consents.
pub(crate) fn shopper_of(customer: Option<&Customer>, order: &Order) -> Shopper {
    let mut shopper = Shopper::default();
    match customer {
        Some(c) => {
            // Groups are keyed on the customer record, which outlives a changed email or
            // phone and which a guest's later account resolves to (by email).
            shopper.identity = Some(format!("customer:{}", c.id));
            shopper.tags = c.tags.clone();
            shopper.email = c.email.is_some();
            shopper.phone = c.phone.is_some();
            shopper.email_consent = c.email_consent;
            shopper.sms_consent = c.sms_consent;
        }
        None => {
            shopper.identity = order
                .contact_email()
                .and_then(normalize_email)
                .map(|e| format!("email:{e}"));
            shopper.email = order.contact_email().is_some();
            shopper.phone = order.phone.is_some();
        }
    }
    shopper
}

/// Adds one earlier order's products (with categories) to what the customer bought.
pub(crate) fn add_earlier(shopper: &mut Shopper, products: &[(String, Option<String>)]) {
    let mut categories = BTreeSet::new();
    for (key, category) in products {
        if let Some(c) = category {
            categories.insert(c);
        }
        shopper.bought.insert(key.clone());
    }
    for c in categories {
        *shopper.categories.entry(c.clone()).or_default() += 1;
    }
}
