//! Product affinity maths, pure: which products are bought together or next, and how
//! strongly. Storage keeps exact integer counts per calendar month; decay is applied
//! only when reading (by the age of each month), so an incremental update and a full
//! rebuild always agree exactly and no job ever rewrites counts.
//!
//! Measures are the textbook association-rule ones (product.md, "Product affinity"):
//! support(A,B) = orders with both / all orders; confidence(A→B) = orders with both /
//! orders with A; lift = confidence / support(B).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::Timestamp;

/// Months since 1970-01 (UTC): the bucket a count is kept in.
pub type Month = u32;

/// The month an order falls in.
pub fn month_of(t: Timestamp) -> Month {
    use chrono::Datelike;
    let d = chrono::DateTime::from_timestamp_millis(t.0).unwrap_or_default();
    ((d.year() - 1970).max(0) as u32) * 12 + d.month0()
}

/// Mean length of a month in days (for the age of a bucket).
const MONTH_DAYS: f64 = 365.2425 / 12.0;

/// How old evidence is weighted when read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decay {
    /// Exact counts (`--decay none`).
    None,
    /// Weight 0.5 ^ (age in days / half-life); a month's age is counted from its middle
    /// to the middle of the current month, so this month weighs 1.
    HalfLife { days: f64 },
}

impl Decay {
    /// What one month of age multiplies a count by.
    fn per_month(self) -> f64 {
        match self {
            Decay::None => 1.0,
            Decay::HalfLife { days } => 0.5f64.powf(MONTH_DAYS / days),
        }
    }

    pub fn weight(self, month: Month, now: Month) -> f64 {
        age_weight(self.per_month(), month, now)
    }
}

fn age_weight(per_month: f64, month: Month, now: Month) -> f64 {
    per_month.powi(i32::try_from(now.saturating_sub(month)).unwrap_or(i32::MAX))
}

/// Exact counts per month, oldest first; what storage keeps for every counted thing
/// (a product's orders, a pair's orders, all orders).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Monthly(pub Vec<(Month, u64)>);

impl Monthly {
    /// Adds `n` (negative to remove evidence) in `month`; a month that reaches zero is
    /// dropped, so adding and removing the same orders leaves what was there before.
    pub fn add(&mut self, month: Month, n: i64) {
        match self.0.binary_search_by_key(&month, |(m, _)| *m) {
            Ok(i) => {
                let v = (self.0[i].1 as i64 + n).max(0) as u64;
                if v == 0 {
                    self.0.remove(i);
                } else {
                    self.0[i].1 = v;
                }
            }
            Err(i) if n > 0 => self.0.insert(i, (month, n as u64)),
            Err(_) => {}
        }
    }

    /// The exact count, whatever the age.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }

    /// The count weighted by age.
    pub fn weighted(&self, decay: Decay, now: Month) -> f64 {
        let per_month = decay.per_month();
        self.0
            .iter()
            .map(|&(m, n)| n as f64 * age_weight(per_month, m, now))
            .sum()
    }
}

/// Support, confidence and lift of A → B.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measures {
    pub support: f64,
    pub confidence: f64,
    pub lift: f64,
}

/// The measures from (possibly weighted) counts: orders with both, orders with A,
/// orders with B, all orders. `None` when a denominator is zero.
pub fn measures(pair: f64, antecedent: f64, consequent: f64, total: f64) -> Option<Measures> {
    if antecedent <= 0.0 || consequent <= 0.0 || total <= 0.0 {
        return None;
    }
    let support = pair / total;
    let confidence = pair / antecedent;
    let lift = confidence / (consequent / total);
    Some(Measures {
        support,
        confidence,
        lift,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Below the moderate threshold: never offered on affinity alone.
    Weak,
    Moderate,
    Strong,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Strong => "strong",
            Tier::Moderate => "moderate",
            Tier::Weak => "weak",
        }
    }
}

/// Tier thresholds on confidence, and the least number of orders with both products
/// before a pair counts at all. Configuration; these are the defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    pub strong: f64,
    pub moderate: f64,
    pub min_pair_orders: u64,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            strong: 0.10,
            moderate: 0.04,
            min_pair_orders: 3,
        }
    }
}

impl Thresholds {
    /// The tier of a pair with `confidence`, or `None` when it has fewer than
    /// `min_pair_orders` orders (exact count, not weighted: decay must not make a pair
    /// appear or vanish on its own).
    pub fn tier(&self, confidence: f64, pair_orders: u64) -> Option<Tier> {
        if pair_orders < self.min_pair_orders {
            None
        } else if confidence >= self.strong {
            Some(Tier::Strong)
        } else if confidence >= self.moderate {
            Some(Tier::Moderate)
        } else {
            Some(Tier::Weak)
        }
    }
}

/// The distinct products of one order, and its ordered pairs (A, B), A ≠ B, each once
/// however many lines or units carry them: an order is one piece of evidence.
pub fn order_pairs<K: Ord + Clone>(products: &[K]) -> (Vec<K>, Vec<(K, K)>) {
    let distinct: Vec<K> = products
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut pairs = Vec::with_capacity(distinct.len() * distinct.len().saturating_sub(1));
    for a in &distinct {
        for b in &distinct {
            if a != b {
                pairs.push((a.clone(), b.clone()));
            }
        }
    }
    (distinct, pairs)
}

/// The two kinds of evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A and B in the same order.
    SameOrder,
    /// A in a customer's order, B in that customer's next order, within the window.
    NextOrder,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::SameOrder, Kind::NextOrder];

    pub fn code(self) -> u8 {
        match self {
            Kind::SameOrder => 0,
            Kind::NextOrder => 1,
        }
    }

    pub fn from_code(c: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.code() == c)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SameOrder => "same_order",
            Kind::NextOrder => "next_order",
        }
    }
}

/// A product key interned to a number, per store. Numbers are never reused.
pub type ProductNo = u32;
/// The item number whose counts are the totals (all orders; all transitions).
pub const TOTAL: ProductNo = ProductNo::MAX;

/// What one counted order contributes: when, whose, and its distinct products, sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEvidence {
    pub at: Timestamp,
    pub customer: Option<u64>,
    pub products: Vec<ProductNo>,
}

/// Where counted evidence goes: storage rows, or a rebuild's tables in memory. `n` is +1
/// to add an order or a transition, -1 to take it back.
pub trait Tally {
    /// An item count: `antecedent` for the A side (a same-order product's order count;
    /// a next-order first order), else the B side (a next-order following order).
    fn item(&mut self, kind: Kind, product: ProductNo, antecedent: bool, month: Month, n: i64);
    /// A pair count, with the gap between the two orders (next-order only).
    fn pair(&mut self, kind: Kind, a: ProductNo, b: ProductNo, month: Month, n: i64, gap_secs: i64);
}

/// Counts one order's same-order evidence (`n` = +1) or takes it back (`n` = -1).
pub fn tally_order(t: &mut impl Tally, ev: &OrderEvidence, n: i64) {
    let m = month_of(ev.at);
    t.item(Kind::SameOrder, TOTAL, true, m, n);
    for &a in &ev.products {
        t.item(Kind::SameOrder, a, true, m, n);
        for &b in &ev.products {
            if a != b {
                t.pair(Kind::SameOrder, a, b, m, n, 0);
            }
        }
    }
}

/// Counts a customer's move from one order to their next (`to` is the following order),
/// if it came within `window_ms`. Kept in the month of the first order, so every count of
/// one transition carries the same decay weight and confidence never exceeds 1. A product
/// bought again (A → A) counts: that is replenishment evidence.
pub fn tally_transition(
    t: &mut impl Tally,
    from: &OrderEvidence,
    to: &OrderEvidence,
    window_ms: i64,
    n: i64,
) {
    let gap = to.at.0 - from.at.0;
    if !(0..=window_ms).contains(&gap) {
        return;
    }
    let m = month_of(from.at);
    t.item(Kind::NextOrder, TOTAL, true, m, n);
    for &a in &from.products {
        t.item(Kind::NextOrder, a, true, m, n);
    }
    for &b in &to.products {
        t.item(Kind::NextOrder, b, false, m, n);
    }
    for &a in &from.products {
        for &b in &to.products {
            t.pair(Kind::NextOrder, a, b, m, n, gap / 1000);
        }
    }
}

/// How many consequents each product keeps in its leader list.
pub const LEADERS: usize = 50;

/// A product's consequents with the most orders (exact counts), best first; ties by
/// product number. Candidates are read from here, so finding them costs a few lookups
/// however many products were ever bought with a popular one.
///
/// Invariant: the exact top `LEADERS` of all the product's pairs with a count above zero
/// (all of them when there are fewer).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaders(pub Vec<(ProductNo, u64)>);

impl Leaders {
    /// Builds the list from every pair count of one antecedent.
    pub fn from_counts(counts: impl IntoIterator<Item = (ProductNo, u64)>) -> Leaders {
        let rank = |&(b, n): &(ProductNo, u64)| (std::cmp::Reverse(n), b);
        let mut all: Vec<(ProductNo, u64)> = counts.into_iter().filter(|c| c.1 > 0).collect();
        if all.len() > LEADERS {
            all.select_nth_unstable_by_key(LEADERS - 1, rank);
            all.truncate(LEADERS);
        }
        all.sort_by_key(rank);
        // Rows of every product are held at once during a rebuild: keep 50, not the
        // room for all of a product's pairs.
        all.shrink_to_fit();
        Leaders(all)
    }

    /// Pair (A, `b`) went from `old` to `new` orders. Returns `false` when a leader fell
    /// while others wait outside the list: then the list must be rebuilt from all pairs.
    pub fn update(&mut self, b: ProductNo, old: u64, new: u64) -> bool {
        let rank = |&(p, n): &(ProductNo, u64)| (std::cmp::Reverse(n), p);
        match self.0.iter().position(|&(p, _)| p == b) {
            Some(i) => {
                if new < old && self.0.len() >= LEADERS {
                    return false;
                }
                if new == 0 {
                    self.0.remove(i);
                } else {
                    self.0[i].1 = new;
                }
            }
            None if new > old && new > 0 => {
                if self.0.len() < LEADERS {
                    self.0.push((b, new));
                } else if self.0.last().is_some_and(|w| rank(&(b, new)) < rank(w)) {
                    self.0.pop();
                    self.0.push((b, new));
                } else {
                    return true;
                }
            }
            None => return true,
        }
        self.0.sort_by_key(rank);
        true
    }
}

/// How a manual pairing (product → offer, with a priority) is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairingMode {
    /// Before anything learned from orders.
    Override,
    /// When orders have not shown a pair strong enough.
    Fallback,
}

impl PairingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PairingMode::Override => "override",
            PairingMode::Fallback => "fallback",
        }
    }
}

/// One association rule A → B as read: counts (weighted when decayed) and what follows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rule {
    pub kind: Kind,
    pub pair_orders: f64,
    pub antecedent_orders: f64,
    pub consequent_orders: f64,
    pub total_orders: f64,
    /// The exact count, whatever the decay: the minimum pair count is checked on it.
    pub exact_pair_orders: u64,
    pub support: f64,
    pub confidence: f64,
    pub lift: f64,
    /// Mean days from the first order to the next (next-order rules).
    pub mean_gap_days: Option<f64>,
    pub tier: Option<Tier>,
}

/// The weighted counts a rule reads besides its pair's: A's side, B's side, the total.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sides {
    pub antecedent: f64,
    pub consequent: f64,
    pub total: f64,
}

/// Reads a rule from its pair's stored counts and the weighted counts of its sides.
pub fn rule(
    kind: Kind,
    pair: &Monthly,
    gap_secs: u64,
    sides: Sides,
    decay: Decay,
    now: Month,
    thresholds: &Thresholds,
) -> Rule {
    let (p, a, c, t) = (
        pair.weighted(decay, now),
        sides.antecedent,
        sides.consequent,
        sides.total,
    );
    let m = measures(p, a, c, t).unwrap_or(Measures {
        support: 0.0,
        confidence: 0.0,
        lift: 0.0,
    });
    let exact = pair.total();
    Rule {
        kind,
        pair_orders: p,
        antecedent_orders: a,
        consequent_orders: c,
        total_orders: t,
        exact_pair_orders: exact,
        support: m.support,
        confidence: m.confidence,
        lift: m.lift,
        mean_gap_days: (kind == Kind::NextOrder && exact > 0)
            .then(|| gap_secs as f64 / exact as f64 / 86_400.0),
        tier: thresholds.tier(m.confidence, exact),
    }
}

impl Rule {
    /// Whether the rule may rank an offer: strong or moderate.
    pub fn ranks(&self) -> bool {
        self.tier >= Some(Tier::Moderate)
    }
}

/// Whether A → B may rank, judged from the pair and A's weighted orders alone: confidence
/// does not depend on B, so a reader can skip B's counts for pairs that cannot.
pub fn may_rank(
    pair: &Monthly,
    antecedent: f64,
    decay: Decay,
    now: Month,
    thresholds: &Thresholds,
) -> bool {
    antecedent > 0.0
        && thresholds.tier(pair.weighted(decay, now) / antecedent, pair.total())
            >= Some(Tier::Moderate)
}

/// Whether A → B could rank at all, judged from the pair's exact count before its months
/// are read: no month weighs more than 1, so the weighted count never exceeds the exact
/// one and confidence is at most exact / A's weighted orders. Leaders come most orders
/// first, so a reader stops at the first one that cannot.
pub fn could_rank(exact: u64, antecedent: f64, thresholds: &Thresholds) -> bool {
    antecedent > 0.0 && thresholds.tier(exact as f64 / antecedent, exact) >= Some(Tier::Moderate)
}

/// Why a product is a candidate. A candidate carries every reason found for it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Evidence {
    /// Learned from orders (same-order or next-order), from one product of the basket.
    Affinity {
        from: String,
        rule: Rule,
        /// The pair's offer history turned into a smoothed conversion estimate.
        conversion: f64,
    },
    /// The store's own pairing table.
    Manual {
        from: String,
        priority: i32,
        mode: PairingMode,
    },
    /// Among the store's most bought products and in a category of the basket.
    Category { category: String, orders: f64 },
    /// Among the store's most bought products.
    Popularity { orders: f64 },
}

impl Evidence {
    /// Lower ranks first: a manual override, then what orders show (strong, then
    /// moderate), then a manual fallback, then category, then popularity. Weak pairs and
    /// pairs under the minimum count never rank on affinity.
    fn rank(&self) -> Option<u8> {
        match self {
            Evidence::Manual {
                mode: PairingMode::Override,
                ..
            } => Some(0),
            Evidence::Affinity { rule, .. } => match rule.tier {
                Some(Tier::Strong) => Some(1),
                Some(Tier::Moderate) => Some(2),
                _ => None,
            },
            Evidence::Manual { .. } => Some(3),
            Evidence::Category { .. } => Some(4),
            Evidence::Popularity { .. } => Some(5),
        }
    }

    /// How this evidence alone ranks a product: (group, score), lower group first, higher
    /// score first; `None` when it cannot rank one (a weak pair).
    pub fn sort_key(&self) -> Option<(u8, f64)> {
        self.rank().map(|r| (r, self.score(FEEDBACK_PRIOR)))
    }

    fn score(&self, prior: f64) -> f64 {
        match self {
            Evidence::Manual { priority, .. } => f64::from(*priority),
            // Feedback moves a pair up or down, within a factor of two: smoothed, never a flip.
            Evidence::Affinity {
                rule, conversion, ..
            } => rule.confidence * (conversion / prior).clamp(0.5, 2.0),
            Evidence::Category { orders, .. } | Evidence::Popularity { orders } => *orders,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Candidate {
    pub product: String,
    /// The rank group of its best evidence (0 best), then its score within the group.
    pub group: u8,
    pub score: f64,
    pub evidence: Vec<Evidence>,
}

/// The conversion a pair is assumed to have before any offer of it was made, and how many
/// offers that assumption weighs.
pub const FEEDBACK_PRIOR: f64 = 0.05;
pub const FEEDBACK_STRENGTH: f64 = 20.0;

/// Ranks candidates from their evidence: `(product, evidence)` in any order, several per
/// product allowed. Products in `exclude` (the basket) never appear. Best first.
pub fn rank(
    found: Vec<(String, Evidence)>,
    exclude: &BTreeSet<String>,
    limit: usize,
) -> Vec<Candidate> {
    // The final sort orders every candidate (products are distinct), so the map's order
    // does not matter: a hash map is the cheaper one.
    let mut by: rustc_hash::FxHashMap<String, Vec<Evidence>> = Default::default();
    by.reserve(found.len());
    for (p, e) in found {
        if !exclude.contains(&p) {
            by.entry(p).or_default().push(e);
        }
    }
    let mut out: Vec<Candidate> = by
        .into_iter()
        .filter_map(|(product, evidence)| {
            let (group, score) = evidence
                .iter()
                .filter_map(|e| e.rank().map(|r| (r, e.score(FEEDBACK_PRIOR))))
                .min_by(|x, y| x.0.cmp(&y.0).then(y.1.total_cmp(&x.1)))?;
            Some(Candidate {
                product,
                group,
                score,
                evidence,
            })
        })
        .collect();
    out.sort_by(|x, y| {
        x.group
            .cmp(&y.group)
            .then(y.score.total_cmp(&x.score))
            .then(x.product.cmp(&y.product))
    });
    out.truncate(limit);
    out
}

/// What became of the offers of B after A under one recipe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    pub offered: u64,
    pub clicked: u64,
    pub accepted: u64,
    pub declined: u64,
    /// Accepted, then the upsold item was refunded within 30 days.
    pub refunded: u64,
}

/// An explicit decline weighs this much more than an offer that was ignored.
const DECLINE_WEIGHT: f64 = 0.25;
/// A refund of an accepted offer takes back its success and weighs this much more.
const REFUND_WEIGHT: f64 = 1.0;

impl Feedback {
    /// The smoothed conversion rate: a Beta prior with mean `prior` worth `strength`
    /// offers, updated by what happened. An acceptance raises it, a decline lowers it a
    /// little, a refund lowers it more; a handful of events never flips it.
    pub fn conversion(&self, prior: f64, strength: f64) -> f64 {
        let wins = self.accepted.saturating_sub(self.refunded) as f64;
        let trials = self.offered.max(self.accepted) as f64
            + DECLINE_WEIGHT * self.declined as f64
            + REFUND_WEIGHT * self.refunded as f64;
        ((wins + strength * prior) / (trials + strength)).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// 10 orders: A in 5, B in 4, both in 2. support 0.2, confidence(A→B) 0.4,
    /// confidence(B→A) 0.5, lift 0.4 / 0.4 = 1.0 either way.
    #[test]
    fn hand_computed_measures() {
        let ab = measures(2.0, 5.0, 4.0, 10.0).unwrap();
        assert!(close(ab.support, 0.2));
        assert!(close(ab.confidence, 0.4));
        assert!(close(ab.lift, 1.0));
        let ba = measures(2.0, 4.0, 5.0, 10.0).unwrap();
        assert!(close(ba.confidence, 0.5));
        assert!(close(ba.lift, 1.0));
        // 100 orders: A in 20, C in 5, both in 4: confidence 0.2, lift 0.2 / 0.05 = 4.
        let ac = measures(4.0, 20.0, 5.0, 100.0).unwrap();
        assert!(close(ac.support, 0.04));
        assert!(close(ac.confidence, 0.2));
        assert!(close(ac.lift, 4.0));
        assert!(measures(1.0, 0.0, 1.0, 1.0).is_none());
    }

    #[test]
    fn tiers_follow_confidence_after_the_minimum_count() {
        let t = Thresholds::default();
        assert_eq!(t.tier(0.10, 3), Some(Tier::Strong));
        assert_eq!(t.tier(0.099, 3), Some(Tier::Moderate));
        assert_eq!(t.tier(0.04, 3), Some(Tier::Moderate));
        assert_eq!(t.tier(0.039, 3), Some(Tier::Weak));
        assert_eq!(t.tier(0.9, 2), None, "below the minimum pair count");
    }

    /// The bound candidates stop on never stops early: whenever the months could rank,
    /// the exact count alone says it could, whatever the decay and however old or new
    /// (even future) the months are.
    #[test]
    fn could_rank_bounds_may_rank() {
        let t = Thresholds::default();
        let mut seed = 7u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..20_000 {
            let mut pair = Monthly::default();
            for _ in 0..1 + next(6) {
                pair.add(600 + next(30) as Month, 1 + next(20) as i64);
            }
            let antecedent = 1.0 + next(2_000) as f64 / 3.0;
            let decay = match next(3) {
                0 => Decay::None,
                d => Decay::HalfLife {
                    days: 30.0 * d as f64,
                },
            };
            let now = 600 + next(40) as Month;
            if may_rank(&pair, antecedent, decay, now, &t) {
                assert!(
                    could_rank(pair.total(), antecedent, &t),
                    "{pair:?} {antecedent}"
                );
            }
        }
    }

    #[test]
    fn decay_halves_after_one_half_life() {
        let d = Decay::HalfLife {
            days: MONTH_DAYS * 6.0,
        };
        assert!(close(d.weight(100, 100), 1.0));
        assert!(close(d.weight(94, 100), 0.5));
        assert!(close(d.weight(88, 100), 0.25));
        assert!(close(Decay::None.weight(0, 100), 1.0));
        let m = Monthly(vec![(94, 4), (100, 2)]);
        assert!(close(m.weighted(d, 100), 4.0));
        assert_eq!(m.total(), 6);
    }

    #[test]
    fn adding_and_removing_leaves_the_counts_as_they_were() {
        let mut m = Monthly::default();
        m.add(5, 2);
        m.add(3, 1);
        m.add(5, 1);
        assert_eq!(m, Monthly(vec![(3, 1), (5, 3)]));
        m.add(3, -1);
        m.add(5, -3);
        assert_eq!(m, Monthly::default());
        m.add(7, -1); // removing what is not there is a no-op, never negative
        assert_eq!(m, Monthly::default());
    }

    #[test]
    fn an_order_is_one_piece_of_evidence_per_pair() {
        let (distinct, pairs) = order_pairs(&["b", "a", "b", "c"]);
        assert_eq!(distinct, vec!["a", "b", "c"]);
        assert_eq!(pairs.len(), 6);
        assert!(pairs.contains(&("a", "b")) && pairs.contains(&("b", "a")));
        assert!(!pairs.iter().any(|(x, y)| x == y));
    }

    #[test]
    fn months_are_calendar_months_in_utc() {
        let jan_1970 = Timestamp(0);
        assert_eq!(month_of(jan_1970), 0);
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z").unwrap();
        assert_eq!(month_of(Timestamp(t.timestamp_millis())), 56 * 12 + 10);
    }

    #[test]
    fn feedback_moves_the_estimate_gently_and_in_the_right_direction() {
        let (prior, strength) = (0.05, 20.0);
        let none = Feedback::default();
        assert!(close(none.conversion(prior, strength), prior));
        let base = Feedback {
            offered: 20,
            ..Default::default()
        };
        let accepted = Feedback {
            accepted: 3,
            ..base
        };
        let declined = Feedback {
            declined: 3,
            ..base
        };
        let refunded = Feedback {
            accepted: 3,
            refunded: 3,
            ..base
        };
        let b = base.conversion(prior, strength);
        assert!(accepted.conversion(prior, strength) > b);
        assert!(declined.conversion(prior, strength) < b);
        assert!(refunded.conversion(prior, strength) < declined.conversion(prior, strength));
        // 1 accept in 1 offer does not make it a sure thing.
        let lucky = Feedback {
            offered: 1,
            accepted: 1,
            ..Default::default()
        };
        assert!(lucky.conversion(prior, strength) < 0.1);
        let odd = Feedback {
            offered: 0,
            accepted: 5,
            refunded: 9,
            ..Default::default()
        };
        let c = odd.conversion(prior, strength);
        assert!((0.0..=1.0).contains(&c));
    }
}
