//! Catalog and affinity rows: reading them, the processor's incremental updates, and the
//! full rebuild. The counting rules live in `engine::affinity` (`tally_order`,
//! `tally_transition`); this file only decides which rows they touch, so an incremental
//! update and a rebuild count the same things by construction.
//!
//! Incremental: an [`AffinityBatch`] reads rows from the processor's snapshot on first
//! touch, keeps them decoded while a batch of orders is applied, and hands the final rows
//! to the write transaction, which only copies bytes.
//!
//! Rebuild: orders are read once into a compact form and counted in one pass, each pair
//! count appended to a temporary file per slice of antecedents; each slice is then read
//! back, sorted and compared with the stored rows in key order (bounded memory). The
//! nightly check shares that read and count (`Recount`) and only compares, a sample of
//! antecedents' pairs and every product's item counts, writing nothing.

use std::collections::{BTreeSet, HashMap, HashSet};

use redb::{Durability, ReadableDatabase, ReadableTable};

use super::records::{self, ItemRow, PairRow, PairingRow};
use super::tables::*;
use super::{Changes, Error, Snapshot, Storage};
use crate::engine::affinity::{
    may_rank, tally_order, tally_transition, Evidence, Feedback, Kind, Leaders, Month, Monthly,
    OrderEvidence, ProductNo, Tally, TOTAL,
};
use crate::engine::catalog::{product_key, uncatalogued_key, Variant};
use crate::engine::history::OrderState;
use crate::engine::{LineItem, Order, Timestamp};

const C_NEXT_PRODUCT: &str = "affinity.next_product";

impl Snapshot {
    pub fn variant(&self, store: &str, key: &str) -> Result<Option<Variant>, Error> {
        self.catalog
            .get((store, key))?
            .map(|v| records::decode_variant(v.value()))
            .transpose()
    }

    /// The store's first catalog entry that could be offered (active, eligible, priced):
    /// (catalog key, variant). For a test send when no plan has an offer yet.
    pub fn an_offerable_variant(&self, store: &str) -> Result<Option<(String, Variant)>, Error> {
        for item in self.catalog.range((store, "")..)? {
            let (k, v) = item?;
            let (s, key) = k.value();
            if s != store {
                break;
            }
            let v = records::decode_variant(v.value())?;
            if v.active && v.upsell_eligible && v.price.is_some() {
                return Ok(Some((key.to_string(), v)));
            }
        }
        Ok(None)
    }

    pub(crate) fn catalog_key_of(
        &self,
        store: &str,
        id_key: &str,
    ) -> Result<Option<String>, Error> {
        Ok(self
            .catalog_ids
            .get((store, id_key))?
            .map(|v| v.value().to_string()))
    }

    /// The catalog keys of a product's variants (those sharing its handle).
    fn handle_members(&self, store: &str, handle: &str) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        for item in self.handles.range((store, handle, "")..)? {
            let (k, _) = item?;
            let (s, h, key) = k.value();
            if s != store || h != handle {
                break;
            }
            out.push(key.to_string());
        }
        Ok(out)
    }

    /// The catalog entry a line item names (by variant id, else SKU), if known.
    pub fn variant_of_line(
        &self,
        store: &str,
        line: &LineItem,
    ) -> Result<Option<(String, Variant)>, Error> {
        let mut key = None;
        if let Some(v) = &line.variant_id {
            key = self.catalog_key_of(store, &format!("variant:{v}"))?;
        }
        if key.is_none() {
            key = line
                .sku
                .as_deref()
                .filter(|s| !s.trim().is_empty())
                .map(|s| format!("sku:{s}"));
        }
        let Some(key) = key else { return Ok(None) };
        Ok(self.variant(store, &key)?.map(|v| (key, v)))
    }

    /// The product key affinity counts a line under (see `engine::catalog`).
    pub fn line_product_key(&self, store: &str, line: &LineItem) -> Result<Option<String>, Error> {
        Ok(self.line_product(store, line)?.map(|(key, _)| key))
    }

    /// A line's product key with its catalog entry, where the catalog knows the line.
    pub fn line_product(
        &self,
        store: &str,
        line: &LineItem,
    ) -> Result<Option<(String, Option<Variant>)>, Error> {
        match self.variant_of_line(store, line)? {
            Some((_, v)) => {
                let n = match &v.handle {
                    Some(h) => self.handle_members(store, h)?.len(),
                    None => 1,
                };
                Ok(product_key(&v, n).map(|key| (key, Some(v))))
            }
            None => Ok(uncatalogued_key(line).map(|key| (key, None))),
        }
    }

    pub fn product_no(&self, store: &str, key: &str) -> Result<Option<ProductNo>, Error> {
        Ok(self.product_nos.get((store, key))?.map(|v| v.value()))
    }

    pub fn product_key_of(&self, store: &str, no: ProductNo) -> Result<Option<String>, Error> {
        Ok(self
            .product_keys
            .get((store, no))?
            .map(|v| v.value().to_string()))
    }

    fn next_product_no(&self, store: &str) -> Result<ProductNo, Error> {
        Ok(self
            .counters
            .get((store, C_NEXT_PRODUCT))?
            .map_or(0, |v| v.value() as ProductNo))
    }

    pub fn item_row(&self, store: &str, kind: Kind, p: ProductNo) -> Result<ItemRow, Error> {
        Ok(self
            .items
            .get((store, kind.code(), p))?
            .map(|v| records::decode_item(v.value()))
            .transpose()?
            .unwrap_or_default())
    }

    pub fn pair_row(
        &self,
        store: &str,
        kind: Kind,
        a: ProductNo,
        b: ProductNo,
    ) -> Result<PairRow, Error> {
        Ok(self
            .pairs
            .get((store, kind.code(), a, b))?
            .map(|v| records::decode_pair(v.value()))
            .transpose()?
            .unwrap_or_default())
    }

    /// An item row's counts, without decoding its leader list.
    pub fn item_sides(
        &self,
        store: &str,
        kind: Kind,
        p: ProductNo,
    ) -> Result<records::ItemSides, Error> {
        Ok(self
            .items
            .get((store, kind.code(), p))?
            .map(|v| records::decode_item_sides(v.value()))
            .transpose()?
            .unwrap_or_default())
    }

    /// Every product's item row of one kind (not the totals row), by product number.
    pub fn item_rows(&self, store: &str, kind: Kind) -> Result<Vec<(ProductNo, ItemRow)>, Error> {
        let k = kind.code();
        let mut out = Vec::new();
        for item in self.items.range((store, k, 0)..(store, k, TOTAL))? {
            let (key, v) = item?;
            out.push((key.value().2, records::decode_item(v.value())?));
        }
        Ok(out)
    }

    /// Every pair of one antecedent, by consequent number.
    pub fn pairs_of(
        &self,
        store: &str,
        kind: Kind,
        a: ProductNo,
    ) -> Result<Vec<(ProductNo, PairRow)>, Error> {
        let k = kind.code();
        let mut out = Vec::new();
        for item in self
            .pairs
            .range((store, k, a, 0)..=(store, k, a, ProductNo::MAX))?
        {
            let (key, v) = item?;
            out.push((key.value().3, records::decode_pair(v.value())?));
        }
        Ok(out)
    }

    fn evidence(&self, store: &str, order: &str) -> Result<Option<OrderEvidence>, Error> {
        self.evidence
            .get((store, order))?
            .map(|v| records::decode_evidence(v.value()))
            .transpose()
    }

    fn timeline(&self, store: &str, customer: u64) -> Result<BTreeSet<(i64, String)>, Error> {
        let mut out = BTreeSet::new();
        let range = (store, customer, i64::MIN, "")..(store, customer + 1, i64::MIN, "");
        for item in self.timeline.range(range)? {
            let (k, _) = item?;
            let (_, _, at, id) = k.value();
            out.insert((at, id.to_string()));
        }
        Ok(out)
    }

    /// Manual pairings of a product key: (consequent key, pairing), best priority first.
    pub fn pairings_of(
        &self,
        store: &str,
        antecedent: &str,
    ) -> Result<Vec<(String, PairingRow)>, Error> {
        let mut out = Vec::new();
        for item in self.pairings.range((store, antecedent, "")..)? {
            let (k, v) = item?;
            let (s, a, b) = k.value();
            if s != store || a != antecedent {
                break;
            }
            out.push((b.to_string(), records::decode_pairing(v.value())?));
        }
        out.sort_by_key(|(b, p)| (std::cmp::Reverse(p.priority), b.clone()));
        Ok(out)
    }

    /// Offer feedback for A → each B, summed over recipes.
    pub fn feedback_from(
        &self,
        store: &str,
        a: ProductNo,
    ) -> Result<HashMap<ProductNo, Feedback>, Error> {
        let mut out: HashMap<ProductNo, Feedback> = HashMap::new();
        for item in self.feedback.range((store, a, 0, "")..)? {
            let (k, v) = item?;
            let (s, x, b, _) = k.value();
            if s != store || x != a {
                break;
            }
            let f = records::decode_feedback(v.value())?;
            let sum = out.entry(b).or_default();
            sum.offered += f.offered;
            sum.clicked += f.clicked;
            sum.accepted += f.accepted;
            sum.declined += f.declined;
            sum.refunded += f.refunded;
        }
        Ok(out)
    }
}

/// What an order contributes, before its products are numbered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contribution {
    pub at: Timestamp,
    pub customer: Option<u64>,
    /// Product keys, distinct and sorted.
    pub keys: Vec<String>,
}

/// Product keys of line items already looked up, by what a line names its product with
/// (variant id, SKU, product id): a rebuild keys millions of lines of a few thousand
/// products. Valid for one snapshot and store.
#[derive(Default)]
pub struct LineKeys {
    keys: rustc_hash::FxHashMap<Vec<u8>, Option<String>>,
    /// The names of the line being looked up, each absent or length-prefixed (so the
    /// bytes are unambiguous), reused.
    names: Vec<u8>,
}

impl LineKeys {
    fn key(
        &mut self,
        snap: &Snapshot,
        store: &str,
        line: &LineItem,
    ) -> Result<Option<String>, Error> {
        self.names.clear();
        for name in [&line.variant_id, &line.sku, &line.product_id] {
            match name {
                Some(n) => {
                    self.names.push(1);
                    self.names
                        .extend_from_slice(&(n.len() as u64).to_le_bytes());
                    self.names.extend_from_slice(n.as_bytes());
                }
                None => self.names.push(0),
            }
        }
        if let Some(k) = self.keys.get(self.names.as_slice()) {
            return Ok(k.clone());
        }
        let k = snap.line_product_key(store, line)?;
        self.keys.insert(self.names.clone(), k.clone());
        Ok(k)
    }
}

/// An order's contribution as the catalog in `snap` keys it: `None` when its content is
/// unknown, it was cancelled or voided, or it names no product. Guest orders count for
/// same-order evidence; only orders with a customer make next-order evidence.
pub fn contribution(
    snap: &Snapshot,
    store: &str,
    state: &OrderState,
    line_keys: &mut LineKeys,
) -> Result<Option<Contribution>, Error> {
    let Some(order) = &state.order else {
        return Ok(None);
    };
    if order.cancelled_at.is_some() || order.financial_status.as_deref() == Some("voided") {
        return Ok(None);
    }
    let mut keys = Vec::with_capacity(order.lines.len());
    for line in &order.lines {
        if let Some(k) = line_keys.key(snap, store, line)? {
            keys.push(k);
        }
    }
    if keys.is_empty() {
        return Ok(None);
    }
    keys.sort_unstable();
    keys.dedup();
    Ok(Some(Contribution {
        at: order.created_at,
        customer: state.customer,
        keys,
    }))
}

/// Catalog facts a live order teaches: the platform ids of a known SKU, or a new entry for
/// a SKU the catalog lacks (so an offer of it can link somewhere). Never changes a product
/// key: keys come from SKUs and handles, which line items do not carry.
fn learned(existing: Option<Variant>, line: &LineItem) -> Option<Variant> {
    let sku = line.sku.as_deref().filter(|s| !s.trim().is_empty())?;
    let is_new = existing.is_none();
    let mut v = match existing {
        Some(v) => v,
        None => Variant {
            sku: Some(sku.to_string()),
            title: line.title.clone(),
            variant_title: line.variant_title.clone(),
            vendor: line.vendor.clone(),
            price: Some(line.unit_price),
            gift_card: line.gift_card,
            requires_shipping: line.requires_shipping,
            upsell_eligible: !line.gift_card,
            ..Variant::new()
        },
    };
    let before = v.clone();
    if line.product_id.is_some() {
        v.product_id.clone_from(&line.product_id);
    }
    if line.variant_id.is_some() {
        v.variant_id.clone_from(&line.variant_id);
    }
    (is_new || v != before).then_some(v)
}

/// A customer's counted orders: (time ms, order id).
type Timeline = BTreeSet<(i64, String)>;
/// A row change: the key, and the bytes to write (`None`: delete).
type PairWrite = (String, u8, ProductNo, ProductNo, Option<Vec<u8>>);
/// A catalog key and what to set on its entry.
pub type CatalogPatchFn<'a> = (String, Box<dyn Fn(&mut Variant) + 'a>);

#[derive(Default)]
struct StoreBatch {
    items: HashMap<(Kind, ProductNo), ItemRow>,
    pairs: HashMap<(Kind, ProductNo, ProductNo), PairRow>,
    evidence: HashMap<String, Option<OrderEvidence>>,
    /// Each touched customer's timeline as loaded, and as it is now.
    timelines: HashMap<u64, (Timeline, Timeline)>,
    products: HashMap<String, ProductNo>,
    next_product: Option<ProductNo>,
    rescan: HashSet<(Kind, ProductNo)>,
    catalog: HashMap<String, Variant>,
}

/// One processor batch's affinity and catalog changes, on top of a snapshot.
pub struct AffinityBatch<'s> {
    snap: &'s Snapshot,
    window_ms: i64,
    stores: HashMap<String, StoreBatch>,
}

struct Ctx<'a> {
    snap: &'a Snapshot,
    store: &'a str,
    b: &'a mut StoreBatch,
    error: Option<Error>,
}

impl Ctx<'_> {
    fn keep<T: Default>(&mut self, r: Result<T, Error>) -> T {
        r.unwrap_or_else(|e| {
            self.error.get_or_insert(e);
            T::default()
        })
    }

    fn item(&mut self, kind: Kind, p: ProductNo) -> &mut ItemRow {
        if !self.b.items.contains_key(&(kind, p)) {
            let row = self.snap.item_row(self.store, kind, p);
            let row = self.keep(row);
            self.b.items.insert((kind, p), row);
        }
        self.b.items.get_mut(&(kind, p)).expect("inserted above")
    }

    fn evidence(&mut self, order: &str) -> Option<OrderEvidence> {
        if let Some(e) = self.b.evidence.get(order) {
            return e.clone();
        }
        let e = self.snap.evidence(self.store, order);
        self.keep(e)
    }

    fn timeline(&mut self, customer: u64) -> &mut BTreeSet<(i64, String)> {
        if !self.b.timelines.contains_key(&customer) {
            let t = self.snap.timeline(self.store, customer);
            let t = self.keep(t);
            self.b.timelines.insert(customer, (t.clone(), t));
        }
        &mut self
            .b
            .timelines
            .get_mut(&customer)
            .expect("inserted above")
            .1
    }

    /// The neighbours of (at, id) in a customer's timeline, with their evidence.
    fn neighbours(
        &mut self,
        customer: u64,
        at: i64,
        id: &str,
    ) -> (Option<OrderEvidence>, Option<OrderEvidence>) {
        use std::ops::Bound::{Excluded, Unbounded};
        let me = (at, id.to_string());
        let t = self.timeline(customer);
        let prev = t.range(..me.clone()).next_back().map(|x| x.1.clone());
        let next = t
            .range((Excluded(me), Unbounded))
            .next()
            .map(|x| x.1.clone());
        (
            prev.and_then(|p| self.evidence(&p)),
            next.and_then(|n| self.evidence(&n)),
        )
    }

    fn set_order(&mut self, order: &str, new: Option<OrderEvidence>, window_ms: i64) {
        let old = self.evidence(order);
        if old == new {
            return;
        }
        if let Some(o) = &old {
            tally_order(self, o, -1);
            if let Some(c) = o.customer {
                let (prev, next) = self.neighbours(c, o.at.0, order);
                if let Some(p) = &prev {
                    tally_transition(self, p, o, window_ms, -1);
                }
                if let Some(n) = &next {
                    tally_transition(self, o, n, window_ms, -1);
                }
                if let (Some(p), Some(n)) = (&prev, &next) {
                    tally_transition(self, p, n, window_ms, 1);
                }
                self.timeline(c).remove(&(o.at.0, order.to_string()));
            }
        }
        if let Some(e) = &new {
            tally_order(self, e, 1);
            if let Some(c) = e.customer {
                let (prev, next) = self.neighbours(c, e.at.0, order);
                if let (Some(p), Some(n)) = (&prev, &next) {
                    tally_transition(self, p, n, window_ms, -1);
                }
                if let Some(p) = &prev {
                    tally_transition(self, p, e, window_ms, 1);
                }
                if let Some(n) = &next {
                    tally_transition(self, e, n, window_ms, 1);
                }
                self.timeline(c).insert((e.at.0, order.to_string()));
            }
        }
        self.b.evidence.insert(order.to_string(), new);
    }

    fn number(&mut self, key: &str) -> ProductNo {
        if let Some(&n) = self.b.products.get(key) {
            return n;
        }
        let found = self.snap.product_no(self.store, key);
        if let Some(n) = self.keep(found) {
            self.b.products.insert(key.to_string(), n);
            return n;
        }
        let next = match self.b.next_product {
            Some(n) => n,
            None => {
                let n = self.snap.next_product_no(self.store);
                self.keep(n)
            }
        };
        self.b.next_product = Some(next + 1);
        self.b.products.insert(key.to_string(), next);
        next
    }
}

impl Tally for Ctx<'_> {
    fn item(&mut self, kind: Kind, product: ProductNo, antecedent: bool, month: Month, n: i64) {
        let row = Ctx::item(self, kind, product);
        if !antecedent {
            row.consequent.add(month, n);
            return;
        }
        let old = row.antecedent.total();
        row.antecedent.add(month, n);
        let new = row.antecedent.total();
        // The totals row's leaders are the store's most bought products.
        if kind == Kind::SameOrder
            && product != TOTAL
            && !Ctx::item(self, kind, TOTAL)
                .leaders
                .update(product, old, new)
        {
            self.b.rescan.insert((kind, TOTAL));
        }
    }

    fn pair(&mut self, kind: Kind, a: ProductNo, b: ProductNo, month: Month, n: i64, gap: i64) {
        if !self.b.pairs.contains_key(&(kind, a, b)) {
            let row = self.snap.pair_row(self.store, kind, a, b);
            let row = self.keep(row);
            self.b.pairs.insert((kind, a, b), row);
        }
        let row = self.b.pairs.get_mut(&(kind, a, b)).expect("inserted above");
        let old = row.months.total();
        row.months.add(month, n);
        row.gap_secs = (row.gap_secs as i64 + n * gap).max(0) as u64;
        let new = row.months.total();
        if !Ctx::item(self, kind, a).leaders.update(b, old, new) {
            self.b.rescan.insert((kind, a));
        }
    }
}

impl<'s> AffinityBatch<'s> {
    pub fn new(snap: &'s Snapshot, window_ms: i64) -> AffinityBatch<'s> {
        AffinityBatch {
            snap,
            window_ms,
            stores: HashMap::new(),
        }
    }

    fn ctx<'a>(&'a mut self, store: &'a str) -> Ctx<'a> {
        Ctx {
            snap: self.snap,
            store,
            b: self.stores.entry(store.to_string()).or_default(),
            error: None,
        }
    }

    /// Records catalog facts a live order's line items teach.
    pub fn learn(&mut self, store: &str, order: &Order) -> Result<(), Error> {
        for line in &order.lines {
            let Some(sku) = line.sku.as_deref().filter(|s| !s.trim().is_empty()) else {
                continue;
            };
            let key = format!("sku:{sku}");
            let b = self.stores.entry(store.to_string()).or_default();
            let existing = match b.catalog.get(&key) {
                Some(v) => Some(v.clone()),
                None => self.snap.variant(store, &key)?,
            };
            if let Some(v) = learned(existing, line) {
                b.catalog.insert(key, v);
            }
        }
        Ok(())
    }

    /// Sets what an order contributes now (`None`: nothing, it was cancelled or deleted),
    /// taking back what it contributed before. Idempotent.
    pub fn set_order(
        &mut self,
        store: &str,
        order_id: &str,
        now: Option<&Contribution>,
    ) -> Result<(), Error> {
        let window = self.window_ms;
        let mut ctx = self.ctx(store);
        let new = now.map(|c| OrderEvidence {
            at: c.at,
            customer: c.customer,
            products: {
                let mut p: Vec<ProductNo> = c.keys.iter().map(|k| ctx.number(k)).collect();
                p.sort_unstable();
                p
            },
        });
        ctx.set_order(order_id, new, window);
        match ctx.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Encodes the final rows into `changes`.
    pub fn into_changes(mut self, changes: &mut Changes) -> Result<(), Error> {
        for (store, b) in self.stores.iter_mut() {
            for (kind, a) in std::mem::take(&mut b.rescan) {
                let mut counts: HashMap<ProductNo, u64> = HashMap::new();
                if a == TOTAL {
                    for (p, r) in self.snap.item_rows(store, kind)? {
                        counts.insert(p, r.antecedent.total());
                    }
                    for (&(k, p), r) in &b.items {
                        if k == kind && p != TOTAL {
                            counts.insert(p, r.antecedent.total());
                        }
                    }
                } else {
                    for (p, r) in self.snap.pairs_of(store, kind, a)? {
                        counts.insert(p, r.months.total());
                    }
                    for (&(k, x, y), r) in &b.pairs {
                        if k == kind && x == a {
                            counts.insert(y, r.months.total());
                        }
                    }
                }
                let row = b.items.entry((kind, a)).or_default();
                row.leaders = Leaders::from_counts(counts);
            }
        }
        let c = &mut changes.affinity;
        for (store, b) in self.stores {
            for ((kind, p), row) in b.items {
                let bytes = (!row.is_empty())
                    .then(|| records::encode_item(&row))
                    .transpose()?;
                c.items.push((store.clone(), kind.code(), p, bytes));
            }
            for ((kind, x, y), row) in b.pairs {
                let bytes = (!row.months.0.is_empty())
                    .then(|| records::encode_pair(&row))
                    .transpose()?;
                c.pairs.push((store.clone(), kind.code(), x, y, bytes));
            }
            for (order, ev) in b.evidence {
                let bytes = ev.as_ref().map(records::encode_evidence).transpose()?;
                c.evidence.push((store.clone(), order, bytes));
            }
            for (customer, (before, after)) in b.timelines {
                for (at, id) in before.difference(&after) {
                    c.timeline
                        .push((store.clone(), customer, *at, id.clone(), false));
                }
                for (at, id) in after.difference(&before) {
                    c.timeline
                        .push((store.clone(), customer, *at, id.clone(), true));
                }
            }
            for (key, no) in b.products {
                if self.snap.product_no(&store, &key)?.is_none() {
                    c.products.push((store.clone(), key, no));
                }
            }
            if let Some(n) = b.next_product {
                c.next_product.push((store.clone(), n));
            }
            for (key, v) in b.catalog {
                c.catalog.push((store.clone(), key, v));
            }
        }
        Ok(())
    }
}

/// Encoded affinity and catalog rows for the processor's write transaction. `None` bytes
/// delete the row.
#[derive(Default)]
pub struct AffinityChanges {
    items: Vec<(String, u8, ProductNo, Option<Vec<u8>>)>,
    pairs: Vec<PairWrite>,
    evidence: Vec<(String, String, Option<Vec<u8>>)>,
    timeline: Vec<(String, u64, i64, String, bool)>,
    products: Vec<(String, String, ProductNo)>,
    next_product: Vec<(String, ProductNo)>,
    catalog: Vec<(String, String, Variant)>,
}

impl AffinityChanges {
    /// Rows this writes or removes.
    pub fn rows(&self) -> usize {
        self.items.len()
            + self.pairs.len()
            + self.evidence.len()
            + self.timeline.len()
            + self.products.len()
            + self.next_product.len()
            + self.catalog.len()
    }

    pub(super) fn write(&self, tx: &redb::WriteTransaction) -> Result<(), Error> {
        let mut items = tx.open_table(AFF_ITEMS)?;
        for (s, k, p, bytes) in &self.items {
            match bytes {
                Some(b) => items.insert((s.as_str(), *k, *p), b.as_slice())?,
                None => items.remove((s.as_str(), *k, *p))?,
            };
        }
        let mut pairs = tx.open_table(AFF_PAIRS)?;
        for (s, k, a, b, bytes) in &self.pairs {
            match bytes {
                Some(x) => pairs.insert((s.as_str(), *k, *a, *b), x.as_slice())?,
                None => pairs.remove((s.as_str(), *k, *a, *b))?,
            };
        }
        let mut ev = tx.open_table(AFF_ORDERS)?;
        for (s, o, bytes) in &self.evidence {
            match bytes {
                Some(b) => ev.insert((s.as_str(), o.as_str()), b.as_slice())?,
                None => ev.remove((s.as_str(), o.as_str()))?,
            };
        }
        let mut tl = tx.open_table(TIMELINE)?;
        for (s, c, at, id, insert) in &self.timeline {
            let key = (s.as_str(), *c, *at, id.as_str());
            if *insert {
                tl.insert(key, ())?;
            } else {
                tl.remove(key)?;
            }
        }
        write_products(tx, &self.products, &self.next_product)?;
        write_catalog(tx, &self.catalog)?;
        Ok(())
    }
}

fn write_products(
    tx: &redb::WriteTransaction,
    products: &[(String, String, ProductNo)],
    next: &[(String, ProductNo)],
) -> Result<(), Error> {
    let mut nos = tx.open_table(PRODUCT_NOS)?;
    let mut keys = tx.open_table(PRODUCT_KEYS)?;
    for (s, key, no) in products {
        nos.insert((s.as_str(), key.as_str()), *no)?;
        keys.insert((s.as_str(), *no), key.as_str())?;
    }
    let mut counters = tx.open_table(COUNTERS)?;
    for (s, n) in next {
        counters.insert((s.as_str(), C_NEXT_PRODUCT), i64::from(*n))?;
    }
    Ok(())
}

/// Upserts catalog entries and their indexes.
fn write_catalog(
    tx: &redb::WriteTransaction,
    entries: &[(String, String, Variant)],
) -> Result<(), Error> {
    let mut cat = tx.open_table(CATALOG)?;
    let mut ids = tx.open_table(CATALOG_IDS)?;
    let mut handles = tx.open_table(CATALOG_HANDLES)?;
    for (s, key, v) in entries {
        let old = cat
            .get((s.as_str(), key.as_str()))?
            .map(|x| records::decode_variant(x.value()))
            .transpose()?;
        if let Some(h) = old.as_ref().and_then(|o| o.handle.as_deref()) {
            handles.remove((s.as_str(), h, key.as_str()))?;
        }
        cat.insert(
            (s.as_str(), key.as_str()),
            records::encode_variant(v)?.as_slice(),
        )?;
        if let Some(h) = &v.handle {
            handles.insert((s.as_str(), h.as_str(), key.as_str()), ())?;
        }
        if let Some(id) = &v.variant_id {
            ids.insert((s.as_str(), format!("variant:{id}").as_str()), key.as_str())?;
        }
    }
    Ok(())
}

/// Orders of one store in compact form for a rebuild: ~40 bytes an order.
#[derive(Default)]
struct Compact {
    at: Vec<i64>,
    customer: Vec<u64>,
    has_customer: Vec<bool>,
    prod_end: Vec<u32>,
    prods: Vec<ProductNo>,
    id_end: Vec<u32>,
    ids: String,
}

impl Compact {
    fn len(&self) -> usize {
        self.at.len()
    }

    fn products(&self, i: usize) -> &[ProductNo] {
        let start = if i == 0 {
            0
        } else {
            self.prod_end[i - 1] as usize
        };
        &self.prods[start..self.prod_end[i] as usize]
    }

    fn id(&self, i: usize) -> &str {
        let start = if i == 0 {
            0
        } else {
            self.id_end[i - 1] as usize
        };
        &self.ids[start..self.id_end[i] as usize]
    }

    fn evidence(&self, i: usize) -> OrderEvidence {
        let mut e = OrderEvidence::default();
        self.evidence_into(i, &mut e);
        e
    }

    /// Order `i`'s evidence into `e`, reusing its buffer: a rebuild reads every order once
    /// per slice.
    fn evidence_into(&self, i: usize, e: &mut OrderEvidence) {
        e.at = Timestamp(self.at[i]);
        e.customer = self.has_customer[i].then_some(self.customer[i]);
        e.products.clear();
        e.products.extend_from_slice(self.products(i));
    }
}

/// What a rebuild did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Rebuilt {
    pub orders: u64,
    pub transitions: u64,
    pub products: u64,
    pub pairs: u64,
    pub passes: u32,
    /// Rows written or removed: few when the counts did not change.
    pub changed: u64,
    /// Milliseconds spent reading orders, counting in memory, and writing rows.
    pub read_ms: u64,
    pub count_ms: u64,
    pub write_ms: u64,
}

/// The rebuild's one pass over every order: item counts in memory (a few per product and
/// month), and every pair count as one packed entry (see [`pack_pair`]) appended to the
/// file of its antecedent's slice. Each slice is then read back, sorted (which groups a
/// row's months in key order) and written, so memory holds one slice, and the orders are
/// read once however many slices there are. Sorting packed entries also beats a hash map
/// of running sums, which misses the cache on nearly every increment.
struct Spill {
    items: HashMap<(Kind, ProductNo), ItemRow>,
    /// Each product's slice, or [`SKIPPED`] for antecedents whose pairs are not counted.
    slice_of: Vec<u32>,
    files: Vec<std::io::BufWriter<std::fs::File>>,
    error: Option<std::io::Error>,
}

impl Tally for Spill {
    fn item(&mut self, kind: Kind, product: ProductNo, antecedent: bool, month: Month, n: i64) {
        let row = self.items.entry((kind, product)).or_default();
        if antecedent {
            row.antecedent.add(month, n);
        } else {
            row.consequent.add(month, n);
        }
    }

    fn pair(&mut self, kind: Kind, a: ProductNo, b: ProductNo, month: Month, n: i64, gap: i64) {
        use std::io::Write;
        // A rebuild only adds.
        debug_assert_eq!(n, 1);
        let slice = self.slice_of[a as usize];
        if slice == SKIPPED {
            return;
        }
        let file = &mut self.files[slice as usize];
        if let Err(e) = file.write_all(&pack_pair(kind, a, b, month, gap).to_le_bytes()) {
            self.error.get_or_insert(e);
        }
    }
}

/// A slice's pair counts, read back from its file into `out` (cleared first).
fn read_spilled(
    file: std::io::BufWriter<std::fs::File>,
    out: &mut Vec<u128>,
) -> std::io::Result<()> {
    use std::io::{Read, Seek};
    let mut file = file.into_inner().map_err(|e| e.into_error())?;
    let len = file.seek(std::io::SeekFrom::End(0))?;
    file.rewind()?;
    out.clear();
    out.reserve_exact((len / 16) as usize);
    let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
    let mut entry = [0u8; 16];
    for _ in 0..len / 16 {
        reader.read_exact(&mut entry)?;
        out.push(u128::from_le_bytes(entry));
    }
    Ok(())
}

const MONTH_BITS: u32 = 24;
const GAP_BITS: u32 = 39;

/// One pair count as a number whose order is the pairs table's key order, then month:
/// kind (1 bit), antecedent (32), consequent (32), month (24: months since 1970; chrono's
/// last year is 262,143, month 3.1M), gap in seconds (39: the window is at most 3,650 days,
/// 3.2e8 s).
fn pack_pair(kind: Kind, a: ProductNo, b: ProductNo, month: Month, gap: i64) -> u128 {
    let month = u128::from(month.min((1 << MONTH_BITS) - 1));
    let gap = gap.clamp(0, (1 << GAP_BITS) - 1) as u128;
    (u128::from(kind.code()) << 127)
        | (u128::from(a) << 95)
        | (u128::from(b) << 63)
        | (month << GAP_BITS)
        | gap
}

/// The row (kind code, antecedent, consequent) and month of a packed pair count.
fn unpack_pair(x: u128) -> ((u8, ProductNo, ProductNo), Month, u64) {
    let row = ((x >> 127) as u8, (x >> 95) as u32, (x >> 63) as u32);
    let month = ((x >> GAP_BITS) & ((1 << MONTH_BITS) - 1)) as Month;
    (row, month, (x & ((1 << GAP_BITS) - 1)) as u64)
}

/// Most pair counts held in memory at once during a rebuild (16 bytes each).
const SLICE_ENTRIES: u64 = 1_000_000;

/// A slice number meaning "not counted": the antecedent is outside a check's sample.
const SKIPPED: u32 = u32::MAX;

/// One encoded pair row, keyed (kind code, antecedent, consequent).
type PairRowBytes = Result<((u8, ProductNo, ProductNo), Vec<u8>), Error>;
/// What a recount does with one slice of antecedents (bounds) and its pair rows, in key
/// order: a rebuild writes the differences, a check compares.
type SliceRows<'a> = dyn FnMut((ProductNo, ProductNo), &mut dyn Iterator<Item = PairRowBytes>) -> Result<(), Error>
    + 'a;

/// A store's counted orders read once from a snapshot: the read phase that
/// [`Storage::rebuild_affinity`] and [`Storage::check_affinity`] share.
struct Recount {
    orders: Compact,
    /// Product keys the snapshot had not numbered yet, with the numbers given to them.
    new_products: Vec<(String, String, ProductNo)>,
    next_no: ProductNo,
    /// Indices of the orders that have a customer: each customer's orders in time order.
    seq: Vec<u32>,
    /// A customer's order followed by their next one.
    transitions: Vec<(u32, u32)>,
    read_ms: u64,
}

/// What counting produced besides the pair rows it handed over.
struct Counted {
    /// Every item row, by (kind, product); leaders only for the antecedents counted.
    items: HashMap<(Kind, ProductNo), ItemRow>,
    transitions: u64,
    pairs: u64,
    passes: u32,
    count_ms: u64,
}

impl Recount {
    fn read(snap: &Snapshot, store: &str) -> Result<Recount, Error> {
        let started = std::time::Instant::now();
        let mut orders = Compact::default();
        let mut numbers: rustc_hash::FxHashMap<String, ProductNo> = Default::default();
        let mut next_no = snap.next_product_no(store)?;
        let mut new_products = Vec::new();
        let mut line_keys = LineKeys::default();
        for item in snap.orders.range((store, "")..)? {
            let (k, v) = item?;
            let (s, id) = k.value();
            if s != store {
                break;
            }
            let state = records::decode_order(v.value())?;
            let Some(c) = contribution(snap, store, &state, &mut line_keys)? else {
                continue;
            };
            let mut prods = Vec::with_capacity(c.keys.len());
            for key in c.keys {
                let no = match numbers.get(&key) {
                    Some(&n) => n,
                    None => {
                        let n = match snap.product_no(store, &key)? {
                            Some(n) => n,
                            None => {
                                next_no += 1;
                                new_products.push((store.to_string(), key.clone(), next_no - 1));
                                next_no - 1
                            }
                        };
                        numbers.insert(key, n);
                        n
                    }
                };
                prods.push(no);
            }
            prods.sort_unstable();
            orders.at.push(c.at.0);
            orders.customer.push(c.customer.unwrap_or(0));
            orders.has_customer.push(c.customer.is_some());
            orders.prods.extend_from_slice(&prods);
            orders.prod_end.push(orders.prods.len() as u32);
            orders.ids.push_str(id);
            orders.id_end.push(orders.ids.len() as u32);
        }
        drop(numbers);
        // Each customer's orders in time order (ties by order id), as the timeline keeps them.
        // Orders were read in id order, so an order's index orders ties like its id does,
        // and the sort compares integers, not strings.
        let mut seq: Vec<u32> = (0..orders.len() as u32)
            .filter(|&i| orders.has_customer[i as usize])
            .collect();
        seq.sort_unstable_by_key(|&i| {
            let i = i as usize;
            (orders.customer[i], orders.at[i], i)
        });
        let transitions: Vec<(u32, u32)> = seq
            .windows(2)
            .filter(|w| orders.customer[w[0] as usize] == orders.customer[w[1] as usize])
            .map(|w| (w[0], w[1]))
            .collect();
        Ok(Recount {
            orders,
            new_products,
            next_no,
            seq,
            transitions,
            read_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Counts every order once: item rows in memory, and the pair counts of the
    /// antecedents `keep` admits as packed entries in a temporary file (in `dir`) per
    /// slice of antecedents. Each slice is then read back, sorted, and handed to `slice`
    /// as encoded rows in key order, made as they are consumed, so memory holds one slice.
    fn count(
        &self,
        window_ms: i64,
        dir: &std::path::Path,
        keep: &dyn Fn(ProductNo) -> bool,
        slice: &mut SliceRows<'_>,
    ) -> Result<Counted, Error> {
        let count_started = std::time::Instant::now();
        let orders = &self.orders;
        let next_no = self.next_no;
        // Slices: contiguous ranges of antecedents, each with at most SLICE_ENTRIES of work
        // (one product with more gets a slice of its own), so that each slice's rows are a
        // key range that can be compared with what is stored.
        let mut work: Vec<u64> = vec![0; next_no as usize];
        for i in 0..orders.len() {
            let k = orders.products(i).len() as u64;
            for &a in orders.products(i) {
                work[a as usize] += k;
            }
        }
        for &(x, y) in &self.transitions {
            let k = orders.products(y as usize).len() as u64;
            for &a in orders.products(x as usize) {
                work[a as usize] += k;
            }
        }
        let mut bounds: Vec<(ProductNo, ProductNo)> = Vec::new();
        let (mut lo, mut sum) = (0 as ProductNo, 0u64);
        for (a, &w) in work.iter().enumerate() {
            let w = if keep(a as ProductNo) { w } else { 0 };
            if sum > 0 && sum + w > SLICE_ENTRIES {
                bounds.push((lo, a as ProductNo));
                (lo, sum) = (a as ProductNo, 0);
            }
            sum += w;
        }
        if next_no > lo {
            bounds.push((lo, next_no));
        }
        drop(work);

        // One pass over the orders; then each slice of antecedents from its file.
        let mut counting = std::time::Duration::ZERO;
        let spill_error = |source| Error::Spill {
            dir: dir.to_path_buf(),
            source,
        };
        let mut spill = Spill {
            items: HashMap::new(),
            slice_of: vec![0; next_no as usize],
            files: Vec::with_capacity(bounds.len()),
            error: None,
        };
        for (n, &(lo, hi)) in bounds.iter().enumerate() {
            for a in lo..hi {
                spill.slice_of[a as usize] = if keep(a) { n as u32 } else { SKIPPED };
            }
            let file = tempfile::tempfile_in(dir).map_err(spill_error)?;
            spill
                .files
                .push(std::io::BufWriter::with_capacity(1 << 16, file));
        }
        let (mut from, mut to) = (OrderEvidence::default(), OrderEvidence::default());
        for i in 0..orders.len() {
            orders.evidence_into(i, &mut from);
            tally_order(&mut spill, &from, 1);
        }
        for &(x, y) in &self.transitions {
            orders.evidence_into(x as usize, &mut from);
            orders.evidence_into(y as usize, &mut to);
            tally_transition(&mut spill, &from, &to, window_ms, 1);
        }
        if let Some(e) = spill.error.take() {
            return Err(spill_error(e));
        }
        let mut out = Counted {
            transitions: spill
                .items
                .get(&(Kind::NextOrder, TOTAL))
                .map_or(0, |r| r.antecedent.total()),
            items: spill.items,
            pairs: 0,
            passes: bounds.len() as u32,
            count_ms: 0,
        };
        counting += count_started.elapsed();
        // The pair counts of one slice, its allocation reused by the next.
        let mut entries = Vec::new();
        for (file, &bound) in spill.files.into_iter().zip(&bounds) {
            let count_started = std::time::Instant::now();
            read_spilled(file, &mut entries).map_err(spill_error)?;
            entries.sort_unstable();
            counting += count_started.elapsed();
            // Rows are made from the sorted counts as they are consumed, never all held.
            // One antecedent's pair counts while its rows go by (they are contiguous),
            // made into its leaders when the next one starts.
            let items = &mut out.items;
            let mut counts: ((Kind, ProductNo), Vec<(ProductNo, u64)>) =
                ((Kind::SameOrder, TOTAL), Vec::new());
            let mut settle = |counts: &mut ((Kind, ProductNo), Vec<(ProductNo, u64)>)| {
                if !counts.1.is_empty() {
                    items.entry(counts.0).or_default().leaders =
                        Leaders::from_counts(counts.1.drain(..));
                }
            };
            let mut i = 0;
            let pairs = &mut out.pairs;
            let mut want = std::iter::from_fn(|| {
                let (key, _, _) = unpack_pair(*entries.get(i)?);
                let mut row = PairRow::default();
                let mut gaps = 0;
                while let Some((k, month, gap)) = entries.get(i).map(|&x| unpack_pair(x)) {
                    if k != key {
                        break;
                    }
                    match row.months.0.last_mut() {
                        Some((m, n)) if *m == month => *n += 1,
                        _ => row.months.0.push((month, 1)),
                    }
                    gaps += gap;
                    i += 1;
                }
                row.gap_secs = gaps;
                let kind = Kind::from_code(key.0).expect("packed from a Kind");
                if counts.0 != (kind, key.1) {
                    settle(&mut counts);
                    counts.0 = (kind, key.1);
                }
                counts.1.push((key.2, row.months.total()));
                *pairs += 1;
                Some(records::encode_pair(&row).map(|bytes| (key, bytes)))
            });
            slice(bound, &mut want)?;
            // Whatever the consumer left unread still counts (and makes leaders).
            want.by_ref().for_each(drop);
            settle(&mut counts);
        }
        let popular = out
            .items
            .iter()
            .filter(|(k, _)| k.0 == Kind::SameOrder && k.1 != TOTAL)
            .map(|(k, r)| (k.1, r.antecedent.total()))
            .collect::<Vec<_>>();
        if !popular.is_empty() {
            out.items
                .entry((Kind::SameOrder, TOTAL))
                .or_default()
                .leaders = Leaders::from_counts(popular);
        }
        out.count_ms = counting.as_millis() as u64;
        Ok(out)
    }
}

/// What an affinity check found (see [`Storage::check_affinity`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Checked {
    /// Counted orders recounted.
    pub orders: u64,
    /// Antecedent products whose pair rows were compared (the sample).
    pub sampled_products: u64,
    /// Item rows compared (every product's; leader lists only for the sample).
    pub item_rows: u64,
    /// Pair rows compared.
    pub pair_rows: u64,
    /// Rows whose stored counts differ from the recount (missing on either side included).
    pub mismatched: u64,
    /// The first few rows that differ, described.
    pub examples: Vec<String>,
}

impl Checked {
    /// How many differing rows a check describes.
    const EXAMPLES: usize = 5;

    fn differ(&mut self, what: String) {
        self.mismatched += 1;
        if self.examples.len() < Self::EXAMPLES {
            self.examples.push(what);
        }
    }
}

impl Storage {
    /// Recomputes one store's affinity from its stored orders and the catalog as it is
    /// now, replacing what was there in one transaction. Callers hold the apply lock.
    pub fn rebuild_affinity(&self, store: &str, window_ms: i64) -> Result<Rebuilt, Error> {
        // Read phase, from a snapshot: no lock held.
        let started = std::time::Instant::now();
        let snap = self.snapshot()?;
        let recount = Recount::read(&snap, store)?;
        let orders = &recount.orders;
        let mut out = Rebuilt {
            orders: orders.len() as u64,
            read_ms: recount.read_ms,
            ..Rebuilt::default()
        };

        // Write phase, in one transaction: rows are compared with what the snapshot holds
        // (nobody else writes them: callers hold the apply lock) and only differences are
        // written, so recounting an unchanged history writes next to nothing.
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            write_products(
                &tx,
                &recount.new_products,
                &[(store.to_string(), recount.next_no)],
            )?;
            out.products = recount.new_products.len() as u64;

            let mut items_t = tx.open_table(AFF_ITEMS)?;
            let mut pairs_t = tx.open_table(AFF_PAIRS)?;
            let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
            let mut changed = 0;
            let counted = recount.count(window_ms, dir, &|_| true, &mut |(lo, hi), want| {
                // Stored rows of this slice: both kinds, antecedents lo..hi (hi > lo).
                let mut have = Vec::new();
                for kind in Kind::ALL {
                    let k = kind.code();
                    have.push(
                        snap.pairs
                            .range((store, k, lo, 0)..=(store, k, hi - 1, u32::MAX))?,
                    );
                }
                let have = have.into_iter().flatten().map(|item| {
                    let (key, v) = item?;
                    let (_, k, a, b) = key.value();
                    Ok(((k, a, b), v.value().to_vec()))
                });
                changed += sync_rows(have, want, |&(k, a, b), bytes| {
                    match bytes {
                        Some(x) => pairs_t.insert((store, k, a, b), x)?,
                        None => pairs_t.remove((store, k, a, b))?,
                    };
                    Ok(())
                })?;
                Ok(())
            })?;
            out.changed += changed;
            out.transitions = counted.transitions;
            out.pairs = counted.pairs;
            out.passes = counted.passes;
            out.count_ms = counted.count_ms;
            let mut want = Vec::with_capacity(counted.items.len());
            for ((kind, p), row) in counted.items {
                want.push(((kind.code(), p), records::encode_item(&row)?));
            }
            want.sort_unstable_by_key(|w| w.0);
            let have = snap
                .items
                .range((store, 0u8, 0u32)..=(store, u8::MAX, u32::MAX))?
                .map(|item| {
                    let (key, v) = item?;
                    let (_, k, p) = key.value();
                    Ok(((k, p), v.value().to_vec()))
                });
            out.changed += sync_rows(have, want.into_iter().map(Ok), |&(k, p), bytes| {
                match bytes {
                    Some(x) => items_t.insert((store, k, p), x)?,
                    None => items_t.remove((store, k, p))?,
                };
                Ok(())
            })?;

            // Evidence in order-id order (as orders were read), the timeline in its own.
            let want = (0..orders.len()).map(|i| {
                let bytes = records::encode_evidence(&orders.evidence(i))?;
                Ok((orders.id(i).to_string(), bytes))
            });
            let have = snap
                .evidence
                .range((store, "")..(store_after(store).as_str(), ""))?
                .map(|item| {
                    let (key, v) = item?;
                    Ok((key.value().1.to_string(), v.value().to_vec()))
                });
            let mut ev = tx.open_table(AFF_ORDERS)?;
            out.changed += sync_rows(have, want, |id, bytes| {
                match bytes {
                    Some(x) => ev.insert((store, id.as_str()), x)?,
                    None => ev.remove((store, id.as_str()))?,
                };
                Ok(())
            })?;
            drop(ev);

            let want = recount.seq.iter().map(|&i| {
                let i = i as usize;
                let key = (orders.customer[i], orders.at[i], orders.id(i).to_string());
                Ok((key, Vec::new()))
            });
            let have = snap
                .timeline
                .range(
                    (store, 0u64, i64::MIN, "")..(store_after(store).as_str(), 0u64, i64::MIN, ""),
                )?
                .map(|item| {
                    let (key, _) = item?;
                    let (_, c, at, id) = key.value();
                    Ok(((c, at, id.to_string()), Vec::new()))
                });
            let mut tl = tx.open_table(TIMELINE)?;
            out.changed += sync_rows(have, want, |(c, at, id), bytes| {
                match bytes {
                    Some(_) => tl.insert((store, *c, *at, id.as_str()), ())?,
                    None => tl.remove((store, *c, *at, id.as_str()))?,
                };
                Ok(())
            })?;
        }
        tx.commit()?;
        out.write_ms =
            (started.elapsed().as_millis() as u64).saturating_sub(out.read_ms + out.count_ms);
        Ok(out)
    }

    /// Recounts one store's affinity the way a rebuild does, writing nothing, and compares
    /// the result with the stored (incrementally kept) rows: every product's item row,
    /// and every pair row of a sample of antecedents, drawn in an order that `seed` shuffles
    /// until they hold at least `pair_rows` stored rows (all of them in a small store). Only
    /// the sample's pair counts are spilled and sorted, so a check costs about the read
    /// phase of a rebuild. Takes the apply lock just to take its snapshot, so orders and
    /// counts agree (callers must not hold it).
    pub fn check_affinity(
        &self,
        store: &str,
        window_ms: i64,
        seed: u64,
        pair_rows: usize,
    ) -> Result<Checked, Error> {
        let snap = {
            let _applying = self.apply_lock();
            self.snapshot()?
        };
        let recount = Recount::read(&snap, store)?;
        // The sample: products in an order shuffled by the seed, until enough stored rows.
        let mut sample = vec![false; recount.next_no as usize];
        let mut order: Vec<ProductNo> = (0..recount.next_no).collect();
        order.sort_unstable_by_key(|&p| (mix(seed ^ u64::from(p)), p));
        let mut stored = 0;
        let mut out = Checked {
            orders: recount.orders.len() as u64,
            ..Checked::default()
        };
        for p in order {
            if stored >= pair_rows {
                break;
            }
            sample[p as usize] = true;
            out.sampled_products += 1;
            for kind in Kind::ALL {
                let k = kind.code();
                for item in snap
                    .pairs
                    .range((store, k, p, 0)..=(store, k, p, ProductNo::MAX))?
                {
                    item?;
                    stored += 1;
                }
            }
        }
        let sampled = |p: ProductNo| sample.get(p as usize).copied().unwrap_or(false);
        let name = |p: ProductNo| -> Result<String, Error> {
            if p == TOTAL {
                return Ok("(all orders)".into());
            }
            Ok(snap
                .product_key_of(store, p)?
                .unwrap_or_else(|| format!("product #{p} (numbered by the recount)")))
        };
        let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
        let mut found = Vec::new();
        let counted = recount.count(window_ms, dir, &sampled, &mut |(lo, hi), want| {
            let mut have = Vec::new();
            for kind in Kind::ALL {
                let k = kind.code();
                for a in (lo..hi).filter(|&a| sampled(a)) {
                    have.push(
                        snap.pairs
                            .range((store, k, a, 0)..=(store, k, a, ProductNo::MAX))?,
                    );
                }
            }
            let have = have.into_iter().flatten().map(|item| {
                let (key, v) = item?;
                let (_, k, a, b) = key.value();
                Ok(((k, a, b), v.value().to_vec()))
            });
            let mut compared = 0u64;
            let want = want.inspect(|_| compared += 1);
            let mut stored_only = 0u64;
            sync_rows(have, want, |&key, bytes| {
                if bytes.is_none() {
                    stored_only += 1;
                }
                found.push((key, bytes.map(<[u8]>::to_vec)));
                Ok(())
            })?;
            out.pair_rows += compared + stored_only;
            Ok(())
        })?;
        for ((k, a, b), bytes) in found {
            let kind = Kind::from_code(k).map_or("?", Kind::as_str);
            let stored = snap.pairs.get((store, k, a, b))?;
            let stored = match stored {
                Some(v) => records::decode_pair(v.value())?.months.total(),
                None => 0,
            };
            let recounted = match bytes {
                Some(x) => records::decode_pair(&x)?.months.total(),
                None => 0,
            };
            let what = format!(
                "{kind} pair {} -> {}: stored {stored}, recounted {recounted}",
                name(a)?,
                name(b)?
            );
            out.differ(what);
        }

        let mut items = counted.items;
        for item in snap
            .items
            .range((store, 0u8, 0u32)..=(store, u8::MAX, u32::MAX))?
        {
            let (key, v) = item?;
            let (_, k, p) = key.value();
            let Some(kind) = Kind::from_code(k) else {
                continue;
            };
            let mut stored = records::decode_item(v.value())?;
            if p != TOTAL && !sampled(p) {
                // Leaders come from pair counts, recounted only for the sample.
                stored.leaders = Leaders::default();
            }
            let recounted = items.remove(&(kind, p)).unwrap_or_default();
            out.item_rows += 1;
            if stored != recounted {
                let what = item_difference(kind, &name(p)?, &stored, &recounted);
                out.differ(what);
            }
        }
        let mut rest: Vec<_> = items.into_iter().filter(|(_, r)| !r.is_empty()).collect();
        rest.sort_unstable_by_key(|(k, _)| (k.0.code(), k.1));
        for ((kind, p), recounted) in rest {
            out.item_rows += 1;
            let what = item_difference(kind, &name(p)?, &ItemRow::default(), &recounted);
            out.differ(what);
        }
        Ok(out)
    }
}

/// One item row's difference, in words.
fn item_difference(kind: Kind, product: &str, stored: &ItemRow, recounted: &ItemRow) -> String {
    let sides = |r: &ItemRow| (r.antecedent.total(), r.consequent.total());
    if sides(stored) == sides(recounted) {
        format!(
            "{} item {product}: same totals, but the months or the leader list differ",
            kind.as_str()
        )
    } else {
        let (s, r) = (sides(stored), sides(recounted));
        format!(
            "{} item {product}: stored {}/{}, recounted {}/{} (as antecedent/consequent)",
            kind.as_str(),
            s.0,
            s.1,
            r.0,
            r.1
        )
    }
}

/// A 64-bit mix (splitmix64's finalizer): the check's shuffle of products.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Makes stored rows equal to `want`: both in key order, `have` as stored. Calls `put`
/// with the bytes of each row that is new or different, and with `None` for each stored
/// row not wanted. Streams both sides. Returns how many rows it changed.
fn sync_rows<K: Ord>(
    have: impl Iterator<Item = Result<(K, Vec<u8>), Error>>,
    want: impl Iterator<Item = Result<(K, Vec<u8>), Error>>,
    mut put: impl FnMut(&K, Option<&[u8]>) -> Result<(), Error>,
) -> Result<u64, Error> {
    let mut changed = 0;
    let mut have = have.peekable();
    for w in want {
        let (k, v) = w?;
        let mut same = false;
        while let Some(h) = have.next_if(|h| h.as_ref().map_or(true, |(old, _)| *old <= k)) {
            let (old, bytes) = h?;
            if old == k {
                same = bytes == v;
                break;
            }
            put(&old, None)?;
            changed += 1;
        }
        if !same {
            put(&k, Some(&v))?;
            changed += 1;
        }
    }
    for h in have {
        put(&h?.0, None)?;
        changed += 1;
    }
    Ok(changed)
}

/// The smallest string after every string that starts with `store` as a whole tuple
/// component: `store` followed by U+0000 sorts right after `store` itself.
fn store_after(store: &str) -> String {
    format!("{store}\u{0}")
}

/// How counts are read: decay, the current month, tier thresholds.
#[derive(Clone, Copy, Debug)]
pub struct ReadSettings {
    pub decay: crate::engine::affinity::Decay,
    pub now: Month,
    pub thresholds: crate::engine::affinity::Thresholds,
}

/// One rule with its product keys and titles, as `affinity show` and `export` print it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RuleRow {
    pub antecedent: String,
    pub antecedent_title: String,
    pub consequent: String,
    pub consequent_title: String,
    #[serde(flatten)]
    pub rule: crate::engine::affinity::Rule,
}

/// Product keys, titles and weighted item counts, each read once per call.
struct Names<'a> {
    snap: &'a Snapshot,
    store: &'a str,
    rs: &'a ReadSettings,
    keys: HashMap<ProductNo, String>,
    titles: HashMap<ProductNo, String>,
    /// (antecedent, consequent) counts of an item row, weighted.
    sides: HashMap<(Kind, ProductNo), (f64, f64)>,
}

impl<'a> Names<'a> {
    fn new(snap: &'a Snapshot, store: &'a str, rs: &'a ReadSettings) -> Names<'a> {
        Names {
            snap,
            store,
            rs,
            keys: HashMap::new(),
            titles: HashMap::new(),
            sides: HashMap::new(),
        }
    }

    fn key(&mut self, no: ProductNo) -> Result<String, Error> {
        if let Some(k) = self.keys.get(&no) {
            return Ok(k.clone());
        }
        let key = self
            .snap
            .product_key_of(self.store, no)?
            .unwrap_or_else(|| format!("#{no}"));
        self.keys.insert(no, key.clone());
        Ok(key)
    }

    fn title(&mut self, no: ProductNo) -> Result<String, Error> {
        if let Some(t) = self.titles.get(&no) {
            return Ok(t.clone());
        }
        let key = self.key(no)?;
        let title = self.snap.title_of(self.store, &key)?.unwrap_or_default();
        self.titles.insert(no, title.clone());
        Ok(title)
    }

    fn side(&mut self, kind: Kind, no: ProductNo) -> Result<(f64, f64), Error> {
        if let Some(s) = self.sides.get(&(kind, no)) {
            return Ok(*s);
        }
        let row = self.snap.item_sides(self.store, kind, no)?;
        Ok(self.remember_side(kind, no, &row.antecedent, &row.consequent))
    }

    /// Weighs and keeps the counts of an item row the caller has read anyway.
    fn remember_side(
        &mut self,
        kind: Kind,
        no: ProductNo,
        antecedent: &Monthly,
        consequent: &Monthly,
    ) -> (f64, f64) {
        let (d, now) = (self.rs.decay, self.rs.now);
        let s = (antecedent.weighted(d, now), consequent.weighted(d, now));
        self.sides.insert((kind, no), s);
        s
    }

    fn rule(
        &mut self,
        kind: Kind,
        a: ProductNo,
        b: ProductNo,
        pair: &PairRow,
    ) -> Result<crate::engine::affinity::Rule, Error> {
        let antecedent = self.side(kind, a)?.0;
        let consequent = match kind {
            Kind::SameOrder => self.side(kind, b)?.0,
            Kind::NextOrder => self.side(kind, b)?.1,
        };
        let total = self.side(kind, TOTAL)?.0;
        let rs = self.rs;
        Ok(crate::engine::affinity::rule(
            kind,
            &pair.months,
            pair.gap_secs,
            crate::engine::affinity::Sides {
                antecedent,
                consequent,
                total,
            },
            rs.decay,
            rs.now,
            &rs.thresholds,
        ))
    }

    /// The rule when it may rank, reading B's side only then: most of a popular product's
    /// pairs are weak.
    fn ranking_rule(
        &mut self,
        kind: Kind,
        a: ProductNo,
        b: ProductNo,
        pair: &PairRow,
    ) -> Result<Option<crate::engine::affinity::Rule>, Error> {
        let antecedent = self.side(kind, a)?.0;
        let rs = self.rs;
        if !may_rank(&pair.months, antecedent, rs.decay, rs.now, &rs.thresholds) {
            return Ok(None);
        }
        Ok(Some(self.rule(kind, a, b, pair)?).filter(|r| r.ranks()))
    }

    /// A rule with its product keys and titles.
    fn row(
        &mut self,
        kind: Kind,
        a: ProductNo,
        b: ProductNo,
        pair: &PairRow,
    ) -> Result<RuleRow, Error> {
        Ok(RuleRow {
            rule: self.rule(kind, a, b, pair)?,
            antecedent: self.key(a)?,
            antecedent_title: self.title(a)?,
            consequent: self.key(b)?,
            consequent_title: self.title(b)?,
        })
    }
}

impl Snapshot {
    /// A catalog entry for a product key: the SKU's, else the first variant of the handle.
    pub fn variant_of_key(&self, store: &str, key: &str) -> Result<Option<Variant>, Error> {
        if let Some(v) = self.variant(store, &format!("sku:{key}"))? {
            return Ok(Some(v));
        }
        match self.handle_members(store, key)?.first() {
            Some(first) => self.variant(store, first),
            None => Ok(None),
        }
    }

    pub fn title_of(&self, store: &str, key: &str) -> Result<Option<String>, Error> {
        Ok(self.variant_of_key(store, key)?.map(|v| v.title))
    }

    /// A product key as given, or the product key of a SKU or platform id the user typed.
    pub fn resolve_product(&self, store: &str, input: &str) -> Result<Option<String>, Error> {
        if self.product_no(store, input)?.is_some() {
            return Ok(Some(input.to_string()));
        }
        for id in [format!("variant:{input}"), format!("product:{input}")] {
            if self.product_no(store, &id)?.is_some() {
                return Ok(Some(id));
            }
        }
        let line = LineItem {
            id: String::new(),
            product_id: None,
            variant_id: Some(input.to_string()),
            sku: Some(input.to_string()),
            quantity: 1,
            unit_price: 0,
            title: String::new(),
            variant_title: None,
            vendor: None,
            gift_card: false,
            requires_shipping: true,
        };
        if self.variant_of_line(store, &line)?.is_some() {
            return self.line_product_key(store, &line);
        }
        Ok(None)
    }

    /// Every rule from one product, both kinds, strongest first.
    pub fn rules_from(
        &self,
        store: &str,
        key: &str,
        rs: &ReadSettings,
    ) -> Result<Vec<RuleRow>, Error> {
        let Some(a) = self.product_no(store, key)? else {
            return Ok(Vec::new());
        };
        let mut names = Names::new(self, store, rs);
        let mut out = Vec::new();
        for kind in Kind::ALL {
            for (b, pair) in self.pairs_of(store, kind, a)? {
                out.push(names.row(kind, a, b, &pair)?);
            }
        }
        out.sort_by(|x, y| {
            (x.rule.kind, std::cmp::Reverse(x.rule.tier))
                .cmp(&(y.rule.kind, std::cmp::Reverse(y.rule.tier)))
                .then(y.rule.confidence.total_cmp(&x.rule.confidence))
                .then(x.consequent.cmp(&y.consequent))
        });
        Ok(out)
    }

    /// Every rule of a store, in key order, to `each`.
    pub fn export_rules(
        &self,
        store: &str,
        rs: &ReadSettings,
        mut each: impl FnMut(RuleRow) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        let mut names = Names::new(self, store, rs);
        let mut n = 0;
        let range = (store, 0u8, 0u32, 0u32)..=(store, u8::MAX, u32::MAX, u32::MAX);
        for item in self.pairs.range(range)? {
            let (k, v) = item?;
            let (_, kind, a, b) = k.value();
            let Some(kind) = Kind::from_code(kind) else {
                continue;
            };
            let pair = records::decode_pair(v.value())?;
            each(names.row(kind, a, b, &pair)?)?;
            n += 1;
        }
        Ok(n)
    }

    /// Ranked offers for a basket of product keys, each with its evidence: manual
    /// pairings, the leaders of each basket product (both kinds), then category and
    /// popularity from the store's most bought products.
    pub fn candidates(
        &self,
        store: &str,
        basket: &[String],
        rs: &ReadSettings,
        limit: usize,
    ) -> Result<Vec<crate::engine::affinity::Candidate>, Error> {
        CandidateReader::new(self, store, rs).candidates(basket, limit)
    }
}

/// Reads candidates for baskets of one store, remembering what it read per product: one
/// basket (the planner) reads what it always read; many (`replay`) read each product once.
pub struct CandidateReader<'a> {
    names: Names<'a>,
    /// Per basket product: the evidence it brings (manual pairings, affinity leaders).
    evidence: rustc_hash::FxHashMap<String, Listed>,
    /// Catalog category per product key, where it has one.
    categories: rustc_hash::FxHashMap<String, Option<String>>,
    /// The store's most bought products with their weighted orders and category.
    popular: Option<Vec<(String, f64, Option<String>)>>,
}

/// One basket product's evidence, with the products it names best first.
struct Listed {
    all: Vec<(String, Evidence)>,
    /// Per product named (that its evidence can rank), the index of its best entry, in
    /// rank order: group, then score, then product.
    ranked: Vec<usize>,
}

impl Listed {
    fn new(all: Vec<(String, Evidence)>) -> Listed {
        let mut best: rustc_hash::FxHashMap<&str, (usize, (u8, f64))> = Default::default();
        for (i, (p, e)) in all.iter().enumerate() {
            let Some(k) = e.sort_key() else { continue };
            let better = |old: &(u8, f64)| k.0.cmp(&old.0).then(old.1.total_cmp(&k.1)).is_lt();
            match best.get(p.as_str()) {
                Some((_, old)) if !better(old) => {}
                _ => {
                    best.insert(p, (i, k));
                }
            }
        }
        let mut ranked: Vec<(usize, (u8, f64))> = best.into_values().collect();
        ranked.sort_by(|(i, a), (j, b)| {
            a.0.cmp(&b.0)
                .then(b.1.total_cmp(&a.1))
                .then_with(|| all[*i].0.cmp(&all[*j].0))
        });
        let ranked = ranked.into_iter().map(|(i, _)| i).collect();
        Listed { all, ranked }
    }
}

impl<'a> CandidateReader<'a> {
    pub fn new(snap: &'a Snapshot, store: &'a str, rs: &'a ReadSettings) -> CandidateReader<'a> {
        CandidateReader {
            names: Names::new(snap, store, rs),
            evidence: Default::default(),
            categories: Default::default(),
            popular: None,
        }
    }

    /// [`Snapshot::candidates`] for one basket.
    ///
    /// Only evidence that can matter is weighed: a product ranks by its best evidence,
    /// so one outside the best `limit` (basket excluded) of every list naming it (each
    /// basket product's list, and the popular list) is beaten by `limit` others and
    /// cannot rank. The products inside are weighed with all their evidence: the same
    /// result as weighing everything, without cloning hundreds of entries per basket.
    pub fn candidates(
        &mut self,
        basket: &[String],
        limit: usize,
    ) -> Result<Vec<crate::engine::affinity::Candidate>, Error> {
        let mut categories = BTreeSet::new();
        for key in basket {
            if !self.evidence.contains_key(key) {
                let e = Listed::new(self.read_evidence(key)?);
                self.evidence.insert(key.clone(), e);
            }
            if let Some(c) = self.category(key)? {
                categories.insert(c);
            }
        }
        if self.popular.is_none() {
            let mut popular = Vec::new();
            let (snap, store) = (self.names.snap, self.names.store);
            for (p, _) in snap.item_row(store, Kind::SameOrder, TOTAL)?.leaders.0 {
                let orders = self.names.side(Kind::SameOrder, p)?.0;
                let key = self.names.key(p)?;
                let category = self.category(&key)?;
                popular.push((key, orders, category));
            }
            self.popular = Some(popular);
        }
        let exclude: BTreeSet<String> = basket.iter().cloned().collect();
        let popular = self.popular.as_deref().unwrap_or_default();
        let in_category = |c: &Option<String>| c.as_ref().is_some_and(|c| categories.contains(c));
        let mut keep: rustc_hash::FxHashSet<&str> = Default::default();
        for key in basket {
            let l = &self.evidence[key];
            let best = l
                .ranked
                .iter()
                .map(|&i| l.all[i].0.as_str())
                .filter(|p| !exclude.contains(*p))
                .take(limit);
            keep.extend(best);
        }
        // The popular list for this basket: in one of its categories first, then by orders.
        let mut pop: Vec<(u8, f64, &str)> = popular
            .iter()
            .filter(|(key, _, _)| !exclude.contains(key))
            .map(|(key, orders, c)| (if in_category(c) { 4 } else { 5 }, *orders, key.as_str()))
            .collect();
        let order = |a: &(u8, f64, &str), b: &(u8, f64, &str)| {
            a.0.cmp(&b.0)
                .then(b.1.total_cmp(&a.1))
                .then_with(|| a.2.cmp(b.2))
        };
        if pop.len() > limit {
            if limit > 0 {
                pop.select_nth_unstable_by(limit - 1, order);
            }
            pop.truncate(limit);
        }
        keep.extend(pop.iter().map(|p| p.2));
        let mut found: Vec<(String, Evidence)> = Vec::new();
        for key in basket {
            for (p, e) in &self.evidence[key].all {
                if keep.contains(p.as_str()) {
                    found.push((p.clone(), e.clone()));
                }
            }
        }
        for (key, orders, category) in popular {
            if !keep.contains(key.as_str()) {
                continue;
            }
            if let (true, Some(c)) = (in_category(category), category) {
                found.push((
                    key.clone(),
                    Evidence::Category {
                        category: c.clone(),
                        orders: *orders,
                    },
                ));
            }
            found.push((key.clone(), Evidence::Popularity { orders: *orders }));
        }
        Ok(crate::engine::affinity::rank(found, &exclude, limit))
    }

    fn category(&mut self, key: &str) -> Result<Option<String>, Error> {
        if let Some(c) = self.categories.get(key) {
            return Ok(c.clone());
        }
        let c = self
            .names
            .snap
            .variant_of_key(self.names.store, key)?
            .and_then(|v| v.product_type)
            .filter(|c| !c.is_empty());
        self.categories.insert(key.to_string(), c.clone());
        Ok(c)
    }

    /// What one basket product brings: its manual pairings and its affinity leaders.
    fn read_evidence(&mut self, key: &str) -> Result<Vec<(String, Evidence)>, Error> {
        use crate::engine::affinity::{could_rank, FEEDBACK_PRIOR, FEEDBACK_STRENGTH};
        let (snap, store, rs) = (self.names.snap, self.names.store, self.names.rs);
        let names = &mut self.names;
        let mut found = Vec::new();
        for (b, p) in snap.pairings_of(store, key)? {
            found.push((
                b,
                Evidence::Manual {
                    from: key.to_string(),
                    priority: p.priority,
                    mode: p.mode,
                },
            ));
        }
        let Some(a) = snap.product_no(store, key)? else {
            return Ok(found);
        };
        let feedback = snap.feedback_from(store, a)?;
        for kind in Kind::ALL {
            let row = snap.item_row(store, kind, a)?;
            let antecedent = names
                .remember_side(kind, a, &row.antecedent, &row.consequent)
                .0;
            for (b, exact) in row.leaders.0 {
                // Leaders come most orders first: once one cannot rank, none after can.
                if !could_rank(exact, antecedent, &rs.thresholds) {
                    break;
                }
                let pair = snap.pair_row(store, kind, a, b)?;
                let Some(rule) = names.ranking_rule(kind, a, b, &pair)? else {
                    continue;
                };
                let conversion = feedback
                    .get(&b)
                    .copied()
                    .unwrap_or_default()
                    .conversion(FEEDBACK_PRIOR, FEEDBACK_STRENGTH);
                found.push((
                    names.key(b)?,
                    Evidence::Affinity {
                        from: key.to_string(),
                        rule,
                        conversion,
                    },
                ));
            }
        }
        Ok(found)
    }
}

/// What a catalog upsert did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CatalogWrite {
    pub created: u64,
    pub updated: u64,
    /// Product keys of existing entries changed (a handle now folds variants), so counts
    /// kept under the old keys need a rebuild.
    pub keys_changed: bool,
}

impl Storage {
    /// Upserts catalog entries in one transaction: `(catalog key, patch)`; each patch sets
    /// only what it says. Either all are written or none.
    pub fn upsert_catalog(
        &self,
        store: &str,
        entries: &[CatalogPatchFn<'_>],
    ) -> Result<CatalogWrite, Error> {
        let snap = self.snapshot()?;
        let mut out = CatalogWrite::default();
        // Each entry touched, as stored before and as patched.
        let mut old: HashMap<String, Option<Variant>> = HashMap::new();
        let mut merged: HashMap<String, Variant> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        for (key, patch) in entries {
            if !merged.contains_key(key) {
                let existing = snap.variant(store, key)?;
                if existing.is_some() {
                    out.updated += 1;
                } else {
                    out.created += 1;
                }
                merged.insert(key.clone(), existing.clone().unwrap_or_else(Variant::new));
                old.insert(key.clone(), existing);
                order.push(key.clone());
            }
            patch(merged.get_mut(key).expect("inserted above"));
        }
        // The variants of every handle touched (before or after), before and after.
        let mut members: HashMap<String, (BTreeSet<String>, BTreeSet<String>)> = HashMap::new();
        for key in &order {
            let before = old[key].as_ref().and_then(|v| v.handle.clone());
            for h in [before, merged[key].handle.clone()].into_iter().flatten() {
                if let std::collections::hash_map::Entry::Vacant(e) = members.entry(h) {
                    let m: BTreeSet<String> =
                        snap.handle_members(store, e.key())?.into_iter().collect();
                    e.insert((m.clone(), m));
                }
            }
        }
        for key in &order {
            if let Some(h) = old[key].as_ref().and_then(|v| v.handle.as_ref()) {
                members.get_mut(h).expect("collected above").1.remove(key);
            }
            if let Some(h) = &merged[key].handle {
                members
                    .get_mut(h)
                    .expect("collected above")
                    .1
                    .insert(key.clone());
            }
        }
        // Counts kept under a product key that now folds differently need a rebuild: check
        // every entry touched and every other variant of a touched handle.
        let size = |v: &Variant, after: bool| {
            v.handle
                .as_ref()
                .and_then(|h| members.get(h))
                .map_or(1, |(b, a)| if after { a.len() } else { b.len() })
        };
        let mut affected: BTreeSet<String> = order.iter().cloned().collect();
        for (b, a) in members.values() {
            affected.extend(b.iter().chain(a).cloned());
        }
        for key in &affected {
            let before = match old.get(key) {
                Some(o) => o.clone(),
                None => snap.variant(store, key)?,
            };
            let after = merged.get(key).cloned().or_else(|| before.clone());
            let was = before.as_ref().and_then(|v| product_key(v, size(v, false)));
            let now = after.as_ref().and_then(|v| product_key(v, size(v, true)));
            if let Some(k) = was.as_deref().filter(|_| was != now) {
                if snap.product_no(store, k)?.is_some() {
                    out.keys_changed = true;
                }
            }
        }
        drop(snap);
        let rows: Vec<(String, String, Variant)> = order
            .into_iter()
            .map(|k| {
                let v = merged.remove(&k).expect("merged above");
                (store.to_string(), k, v)
            })
            .collect();
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        write_catalog(&tx, &rows)?;
        tx.commit()?;
        Ok(out)
    }

    /// Replaces a store's manual pairings with these, in one transaction.
    pub fn replace_pairings(
        &self,
        store: &str,
        pairings: &[(String, String, PairingRow)],
    ) -> Result<(), Error> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            let mut t = tx.open_table(PAIRINGS)?;
            t.retain_in(
                (store, "", "")..(store_after(store).as_str(), "", ""),
                |_, _| false,
            )?;
            for (a, b, row) in pairings {
                t.insert(
                    (store, a.as_str(), b.as_str()),
                    records::encode_pairing(row)?.as_slice(),
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Marks (Some) or clears (None) an import in progress for a store, durably.
    pub fn set_import_marker(&self, store: &str, what: Option<&str>) -> Result<(), Error> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            let mut meta = tx.open_table(META)?;
            let key = format!("import:{store}");
            match what {
                Some(w) => {
                    meta.insert(key.as_str(), w.as_bytes())?;
                }
                None => {
                    meta.remove(key.as_str())?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// An import that started and did not finish, if any: what it was.
    pub fn import_marker(&self, store: &str) -> Result<Option<String>, Error> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        let key = format!("import:{store}");
        let v = meta
            .get(key.as_str())?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned());
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_rows_writes_only_differences() {
        let rows = |r: &[(u32, u8)]| -> Vec<Result<(u32, Vec<u8>), Error>> {
            r.iter().map(|&(k, v)| Ok((k, vec![v]))).collect()
        };
        let have = rows(&[(1, 1), (2, 2), (4, 4), (6, 6), (9, 9)]);
        let want = rows(&[(0, 0), (2, 2), (4, 5), (7, 7), (9, 9)]);
        let mut puts = Vec::new();
        let n = sync_rows(have.into_iter(), want.into_iter(), |k, v| {
            puts.push((*k, v.map(<[u8]>::to_vec)));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            puts,
            vec![
                (0, Some(vec![0])),
                (1, None),
                (4, Some(vec![5])),
                (6, None),
                (7, Some(vec![7])),
            ]
        );
        assert_eq!(n, 5);

        // Into nothing: everything is written; onto itself: nothing.
        let all = rows(&[(1, 1), (2, 2)]);
        let n = sync_rows(std::iter::empty(), all.into_iter(), |_, _| Ok(())).unwrap();
        assert_eq!(n, 2);
        let n = sync_rows(
            rows(&[(1, 1)]).into_iter(),
            rows(&[(1, 1)]).into_iter(),
            |_, _| panic!("nothing to write"),
        )
        .unwrap();
        assert_eq!(n, 0);
    }
}
