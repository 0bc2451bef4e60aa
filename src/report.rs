//! The lift report (issue 10): what the automation earned, measured against the holdout
//! group, per store and recipe, over the orders placed in a period.
//!
//! The unit is a planned order (an order that came by webhook, paid and not cancelled):
//! its plan says whether its customer is held out and which recipe its offer came from
//! (holdout plans keep both, for this). Each outcome is measured the same way for both
//! groups, from orders alone, so the difference is what the touches caused:
//!
//! - **AOV**: the order's value with its add-ons. An order of the same customer within
//!   the acceptance window (24 h) that contains the order's offered product is its add-on
//!   (the thank-you page's offer leads to a new checkout); it joins the order's value and
//!   is not an order of its own.
//! - **Upsell revenue**: what the customer paid for the order's offered product in later
//!   orders within the click window (7 days).
//! - **Revenue per message**: the treated group's upsell revenue beyond the holdout's, per
//!   message sent (and, beside it, last-click attributed revenue per message).
//! - **Repeat purchase within 30/60/90 days**: another order (not an add-on) within that
//!   many days, among orders at least that old.
//! - **Unsubscribe rate**: the customer unsubscribed or complained within 30 days.
//!
//! Means are compared with Welch's interval, rates with Newcombe's (`engine::lift`).
//! Orders in another currency without a configured rate count for rates, not money.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::config::{Config, StoreConfig};
use crate::engine::lift::{self, Interval, Summary};
use crate::engine::plan::{Suppressed, TouchKind};
use crate::engine::{Order, Timestamp};
use crate::storage::{Error, Snapshot};

const DAY: i64 = 86_400_000;
const WEEK: i64 = 7 * DAY;
/// 1970-01-01 was a Thursday: weeks start on the Monday after it, less a week.
const MONDAY: i64 = 4 * DAY;
const UNSUBSCRIBE_DAYS: i64 = 30;
const REPEAT_DAYS: [i64; 3] = [30, 60, 90];

/// The orders a report covers: placed at or after `since`, before `until` (its "now").
#[derive(Clone, Copy, Debug)]
pub struct Period {
    pub since: Timestamp,
    pub until: Timestamp,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub store: String,
    pub currency: String,
    pub since: String,
    pub until: String,
    pub min_holdout_orders: u64,
    pub orders: Orders,
    /// "all" first, then each recipe with orders in the period.
    pub recipes: Vec<RecipeLift>,
    pub weeks: Vec<Week>,
    /// The treated group's offers, per recipe: planned → sent → clicked → converted.
    pub funnel: Vec<Funnel>,
}

#[derive(Debug, Default, Serialize)]
pub struct Orders {
    pub treated: u64,
    pub holdout: u64,
    /// Folded into the order they were an add-on to.
    pub add_ons: u64,
    /// Left out of money figures: another currency without a configured rate.
    pub without_rate: u64,
}

#[derive(Debug, Serialize)]
pub struct RecipeLift {
    pub recipe: String,
    pub treated_orders: u64,
    pub holdout_orders: u64,
    pub aov: MeanLift,
    pub upsell_revenue: MeanLift,
    pub revenue_per_message: PerMessage,
    pub repeat: Vec<RateLift>,
    pub unsubscribe: RateLift,
}

/// A mean per group, in the store's currency (major units).
#[derive(Debug, Serialize)]
pub struct MeanLift {
    pub treated: Mean,
    pub holdout: Mean,
    /// Treated minus holdout, with its 95% interval.
    pub difference: Option<Ci>,
    /// The difference as a share of the holdout's mean.
    pub relative: Option<f64>,
    pub verdict: String,
}

#[derive(Debug, Serialize)]
pub struct Mean {
    pub n: u64,
    pub mean: Option<f64>,
    pub total: f64,
}

/// A rate per group, with Wilson intervals; the difference in percentage points.
#[derive(Debug, Serialize)]
pub struct RateLift {
    /// The window in days (repeat purchase, unsubscribes).
    pub days: i64,
    pub treated: Rate,
    pub holdout: Rate,
    pub difference: Option<Ci>,
    pub verdict: String,
}

#[derive(Debug, Serialize)]
pub struct Rate {
    pub n: u64,
    pub x: u64,
    pub rate: Option<f64>,
    pub low: Option<f64>,
    pub high: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct PerMessage {
    pub messages: u64,
    /// Revenue of the treated group's conversions (last click, not taken back).
    pub attributed_revenue: f64,
    pub attributed_per_message: Option<f64>,
    /// The treated group's upsell revenue beyond the holdout's, per message.
    pub incremental_per_message: Option<Ci>,
    pub verdict: String,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Ci {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

impl From<Interval> for Ci {
    fn from(i: Interval) -> Ci {
        Ci {
            estimate: round(i.estimate),
            low: round(i.low),
            high: round(i.high),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Week {
    /// The Monday it starts (UTC).
    pub start: String,
    pub treated_orders: u64,
    pub holdout_orders: u64,
    pub treated_aov: Option<f64>,
    pub holdout_aov: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Funnel {
    pub recipe: String,
    pub planned: u64,
    pub sent: u64,
    pub clicked: u64,
    pub converted: u64,
    pub converted_revenue: f64,
}

/// One planned order, measured.
struct Unit {
    recipe: Option<String>,
    holdout: bool,
    at: Timestamp,
    /// With add-ons, store currency minor units.
    value: Option<i64>,
    upsell: Option<i64>,
    /// Another order within each of `REPEAT_DAYS`, if the order is that old.
    repeat: [Option<bool>; 3],
    unsubscribed: bool,
    messages: u64,
    /// Funnel steps of its offer.
    offered: bool,
    sent: bool,
    clicked: bool,
    converted: Option<i64>,
}

/// Another order of the same customer, as far as a unit needs it.
struct Other {
    at: i64,
    id: String,
    /// Its total in the store's currency.
    value: Option<i64>,
    /// (product key, what it paid for it in the store's currency).
    paid: Vec<(String, Option<i64>)>,
}

impl Other {
    fn read(
        snap: &Snapshot,
        store: &str,
        at: i64,
        id: String,
        o: Order,
        in_store: &dyn Fn(i64, &Order) -> Option<i64>,
    ) -> Result<Other, Error> {
        let mut paid = Vec::new();
        for line in &o.lines {
            if let Some(key) = snap.line_product_key(store, line)? {
                paid.push((
                    key,
                    in_store(line.unit_price * i64::from(line.quantity), &o),
                ));
            }
        }
        Ok(Other {
            at,
            id,
            value: in_store(o.total, &o),
            paid,
        })
    }

    /// What it paid for `product`, if it bought it (`Some(None)`: at no known rate).
    fn paid_for(&self, product: &str) -> Option<Option<i64>> {
        let lines: Vec<Option<i64>> = self
            .paid
            .iter()
            .filter(|(k, _)| k == product)
            .map(|(_, v)| *v)
            .collect();
        (!lines.is_empty()).then(|| lines.into_iter().sum())
    }
}

/// Rounds money and rates for the report (cents, or 1e-4 of a rate).
fn round(x: f64) -> f64 {
    // + 0.0: no "-0" (an empty f64 sum is -0.0).
    (x * 10_000.0).round() / 10_000.0 + 0.0
}

/// The report of `store` over `period`.
pub fn run(
    snap: &Snapshot,
    config: &Config,
    store: &StoreConfig,
    period: Period,
) -> Result<Report, Error> {
    let id = store.id.as_str();
    let rates = &store.offers.exchange_rates;
    let in_store = |minor: i64, o: &Order| {
        crate::engine::money::convert(minor, o.currency, store.currency, rates)
    };
    let windows = config.measurement.windows;
    let suppressions: HashMap<String, (Suppressed, Timestamp)> = snap
        .suppression_list(id)?
        .into_iter()
        .map(|(k, r)| (k, (r.reason, r.at)))
        .collect();
    let conversions: HashMap<String, crate::engine::attribution::Conversion> = snap
        .store_conversions(id)?
        .into_iter()
        .map(|c| (c.offer_order.clone(), c))
        .collect();

    let mut orders = Orders::default();
    let mut units = Vec::new();
    let longest = REPEAT_DAYS[REPEAT_DAYS.len() - 1] * DAY;
    for rec in snap.store_plans(id)? {
        let rec = rec?;
        if rec.order_at < period.since || rec.order_at >= period.until {
            continue;
        }
        let Some(state) = snap.order(id, &rec.order_id)? else {
            continue;
        };
        let Some(order) = state.order.as_ref() else {
            continue;
        };
        if !crate::engine::plan::paid(order) || order.cancelled_at.is_some() {
            continue;
        }
        let t = order.created_at.0;
        // The customer's other orders from a day before this one (what it may be an
        // add-on to) to the longest repeat window after it.
        let mut around = Vec::new();
        if let Some(c) = state.customer {
            for (at, oid) in
                snap.customer_orders_between(id, c, t - windows.accept_ms, t + longest)?
            {
                if oid == order.id {
                    continue;
                }
                let o = snap.order(id, &oid)?.and_then(|s| s.order);
                if let Some(o) =
                    o.filter(|o| crate::engine::plan::paid(o) && o.cancelled_at.is_none())
                {
                    around.push(Other::read(snap, id, at, oid, o, &in_store)?);
                }
            }
        }
        // An add-on of an earlier order is measured there.
        let mut keys = Vec::new();
        for line in &order.lines {
            keys.extend(snap.line_product_key(id, line)?);
        }
        let mut add_on = false;
        for o in around.iter().filter(|o| o.at <= t) {
            if let Some(offer) = snap.plan(id, &o.id)?.and_then(|p| p.plan.offer) {
                add_on |= keys.contains(&offer.product);
            }
        }
        if add_on {
            orders.add_ons += 1;
            continue;
        }
        let offered = rec.plan.offer.as_ref().map(|o| o.product.as_str());
        let later: Vec<&Other> = around.iter().filter(|o| o.at >= t).collect();
        let paid_for = |o: &Other| offered.and_then(|p| o.paid_for(p));
        let is_add_on = |o: &Other| o.at - t <= windows.accept_ms && paid_for(o).is_some();
        let mut value = in_store(order.total, order);
        for o in later.iter().filter(|o| is_add_on(o)) {
            value = value.zip(o.value).map(|(a, b)| a + b);
        }
        if value.is_none() {
            orders.without_rate += 1;
        }
        let upsell = offered.and_then(|_| {
            later
                .iter()
                .filter(|o| o.at - t <= windows.click_ms)
                .filter_map(|o| paid_for(o))
                .sum::<Option<i64>>()
        });
        let mut repeat = [None; 3];
        for (i, days) in REPEAT_DAYS.iter().enumerate() {
            if t + days * DAY <= period.until.0 {
                repeat[i] = Some(
                    later
                        .iter()
                        .any(|o| o.at > t && o.at - t <= days * DAY && !is_add_on(o)),
                );
            }
        }
        let customer = match state.customer {
            Some(c) => snap.customer(id, c)?,
            None => None,
        };
        let unsubscribed = crate::storage::plans::contact_keys(customer.as_ref(), Some(order))
            .iter()
            .filter_map(|k| suppressions.get(k))
            .any(|(why, at)| {
                matches!(why, Suppressed::Unsubscribed | Suppressed::Complained)
                    && at.0 >= t
                    && at.0 - t <= UNSUBSCRIBE_DAYS * DAY
            });
        let messages = rec.sent.iter().filter(|k| **k != TouchKind::Page).count() as u64;
        let carries = |k: &TouchKind| {
            *k == TouchKind::Page || crate::storage::touches::message_carries_offer(*k)
        };
        let treated_offer = offered.is_some() && !rec.plan.holdout;
        let clicked = treated_offer && !snap.engagements(id, &rec.order_id)?.is_empty();
        let converted = conversions
            .get(&rec.order_id)
            .filter(|c| c.reversed.is_none())
            .map(|c| c.revenue.unwrap_or(0));
        if rec.plan.holdout {
            orders.holdout += 1;
        } else {
            orders.treated += 1;
        }
        units.push(Unit {
            recipe: rec.plan.recipe.map(|r| r.as_str().to_string()),
            holdout: rec.plan.holdout,
            at: order.created_at,
            value,
            upsell,
            repeat,
            unsubscribed,
            messages,
            offered: offered.is_some(),
            sent: treated_offer && rec.sent.iter().any(carries),
            clicked,
            converted,
        });
    }

    let money = Money {
        exp: store.currency.exponent(),
        code: store.currency.as_str().to_string(),
    };
    let min = config.measurement.min_holdout_orders;
    let mut recipes = vec![lift_of("all", units.iter(), &money, min)];
    let mut names: Vec<&str> = units.iter().filter_map(|u| u.recipe.as_deref()).collect();
    names.sort_unstable();
    names.dedup();
    for name in &names {
        let of = units.iter().filter(|u| u.recipe.as_deref() == Some(*name));
        recipes.push(lift_of(name, of, &money, min));
    }
    let funnel = names
        .iter()
        .map(|name| {
            let mut f = Funnel {
                recipe: name.to_string(),
                ..Default::default()
            };
            for u in units
                .iter()
                .filter(|u| !u.holdout && u.offered && u.recipe.as_deref() == Some(*name))
            {
                f.planned += 1;
                f.sent += u64::from(u.sent);
                f.clicked += u64::from(u.clicked);
                if let Some(r) = u.converted {
                    f.converted += 1;
                    f.converted_revenue += money.major(r);
                }
            }
            f.converted_revenue = round(f.converted_revenue);
            f
        })
        .collect();
    Ok(Report {
        store: id.to_string(),
        currency: money.code.clone(),
        since: period.since.to_rfc3339(),
        until: period.until.to_rfc3339(),
        min_holdout_orders: min,
        orders,
        recipes,
        weeks: weeks(&units, period, &money),
        funnel,
    })
}

struct Money {
    exp: u32,
    code: String,
}

impl Money {
    fn major(&self, minor: i64) -> f64 {
        minor as f64 / 10f64.powi(self.exp as i32)
    }

    fn show(&self, major: f64) -> String {
        format!("{} {:.*}", self.code, self.exp as usize, major)
    }
}

fn percent_points(x: f64) -> String {
    format!("{:.1} percentage points", x * 100.0)
}

fn lift_of<'u>(
    name: &str,
    units: impl Iterator<Item = &'u Unit> + Clone,
    money: &Money,
    min: u64,
) -> RecipeLift {
    let group = |holdout: bool| units.clone().filter(move |u| u.holdout == holdout);
    let mean_lift = |pick: &dyn Fn(&Unit) -> Option<i64>| {
        let summary = |holdout: bool| {
            let mut s = Summary::default();
            let mut total = 0.0;
            for v in group(holdout).filter_map(pick) {
                s.add(money.major(v));
                total += money.major(v);
            }
            (s, total)
        };
        let ((t, t_total), (h, h_total)) = (summary(false), summary(true));
        let interval = lift::welch(&t, &h);
        let side = |s: &Summary, total: f64| Mean {
            n: s.n,
            mean: (s.n > 0).then(|| round(s.mean)),
            total: round(total),
        };
        MeanLift {
            treated: side(&t, t_total),
            holdout: side(&h, h_total),
            difference: interval.map(Ci::from),
            relative: (h.n > 0 && h.mean != 0.0 && t.n > 0)
                .then(|| round((t.mean - h.mean) / h.mean)),
            verdict: lift::verdict(interval, h.n, min, |x| money.show(x)),
        }
    };
    let rate_lift = |days: i64, pick: &dyn Fn(&Unit) -> Option<bool>| {
        let count = |holdout: bool| {
            let v: Vec<bool> = group(holdout).filter_map(pick).collect();
            (v.iter().filter(|b| **b).count() as u64, v.len() as u64)
        };
        let ((tx, tn), (hx, hn)) = (count(false), count(true));
        let rate = |x: u64, n: u64| {
            let w = lift::wilson(x, n);
            Rate {
                n,
                x,
                rate: (n > 0).then(|| round(x as f64 / n as f64)),
                low: w.map(|w| round(w.0)),
                high: w.map(|w| round(w.1)),
            }
        };
        let interval = lift::newcombe(tx, tn, hx, hn);
        RateLift {
            days,
            treated: rate(tx, tn),
            holdout: rate(hx, hn),
            difference: interval.map(Ci::from),
            verdict: lift::verdict(interval, hn, min, percent_points),
        }
    };
    let upsell = mean_lift(&|u| u.upsell);
    let treated_n = group(false).count() as u64;
    let messages: u64 = group(false).map(|u| u.messages).sum();
    let attributed: f64 = group(false)
        .filter_map(|u| u.converted)
        .map(|r| money.major(r))
        .sum();
    // The upsell difference per order with an offer, over those orders, per message.
    let per_message = upsell.difference.filter(|_| messages > 0).map(|d| {
        let k = upsell.treated.n as f64 / messages as f64;
        Ci {
            estimate: round(d.estimate * k),
            low: round(d.low * k),
            high: round(d.high * k),
        }
    });
    let per_message_verdict = if messages == 0 {
        "no messages were sent".to_string()
    } else {
        lift::verdict(
            per_message.map(|c| Interval {
                estimate: c.estimate,
                low: c.low,
                high: c.high,
            }),
            upsell.holdout.n,
            min,
            |x| money.show(x),
        )
    };
    RecipeLift {
        recipe: name.to_string(),
        treated_orders: treated_n,
        holdout_orders: group(true).count() as u64,
        aov: mean_lift(&|u| u.value),
        revenue_per_message: PerMessage {
            messages,
            attributed_revenue: round(attributed),
            attributed_per_message: (messages > 0).then(|| round(attributed / messages as f64)),
            incremental_per_message: per_message,
            verdict: per_message_verdict,
        },
        upsell_revenue: upsell,
        repeat: REPEAT_DAYS
            .iter()
            .enumerate()
            .map(|(i, d)| rate_lift(*d, &|u: &Unit| u.repeat[i]))
            .collect(),
        unsubscribe: rate_lift(UNSUBSCRIBE_DAYS, &|u: &Unit| Some(u.unsubscribed)),
    }
}

/// Orders and AOV per week (Monday to Sunday, UTC) over the period, treated and holdout.
fn weeks(units: &[Unit], period: Period, money: &Money) -> Vec<Week> {
    let week_of = |t: Timestamp| (t.0 - MONDAY).div_euclid(WEEK);
    let mut by: BTreeMap<i64, [(u64, Summary); 2]> = BTreeMap::new();
    if period.until > period.since {
        for w in week_of(period.since)..=week_of(Timestamp(period.until.0 - 1)) {
            by.insert(w, Default::default());
        }
    }
    for u in units {
        let slot = &mut by.entry(week_of(u.at)).or_default()[usize::from(u.holdout)];
        slot.0 += 1;
        if let Some(v) = u.value {
            slot.1.add(money.major(v));
        }
    }
    by.into_iter()
        .map(|(w, [t, h])| Week {
            start: Timestamp(w * WEEK + MONDAY).to_rfc3339()[..10].to_string(),
            treated_orders: t.0,
            holdout_orders: h.0,
            treated_aov: (t.1.n > 0).then(|| round(t.1.mean)),
            holdout_aov: (h.1.n > 0).then(|| round(h.1.mean)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(holdout: bool, value: i64, upsell: i64, repeat: bool, messages: u64) -> Unit {
        Unit {
            recipe: Some("welcome".into()),
            holdout,
            at: Timestamp(0),
            value: Some(value),
            upsell: Some(upsell),
            repeat: [Some(repeat), None, None],
            unsubscribed: false,
            messages,
            offered: true,
            sent: !holdout,
            clicked: false,
            converted: None,
        }
    }

    fn usd() -> Money {
        Money {
            exp: 2,
            code: "USD".into(),
        }
    }

    #[test]
    fn equal_groups_show_no_difference_and_zero_conversions_no_lift() {
        let units: Vec<Unit> = (0..8)
            .map(|i| unit(i % 2 == 0, 5_000 + 100 * (i / 2), 0, i % 4 < 2, 1))
            .collect();
        let l = lift_of("welcome", units.iter(), &usd(), 4);
        // Same values on both sides: the difference is exactly zero.
        let d = l.aov.difference.unwrap();
        assert_eq!((d.estimate, l.aov.relative), (0.0, Some(0.0)));
        assert!(d.low < 0.0 && d.high > 0.0);
        assert!(
            l.aov.verdict.starts_with("no difference shown yet"),
            "{}",
            l.aov.verdict
        );
        // No upsell on either side: zero, without spread.
        let u = l.upsell_revenue.difference.unwrap();
        assert_eq!((u.estimate, u.low, u.high), (0.0, 0.0, 0.0));
        assert_eq!(
            l.upsell_revenue.relative, None,
            "no relative change of nothing"
        );
        // Repeat 2 of 4 on each side: Newcombe's interval is symmetric around 0.
        let r = l.repeat[0].difference.unwrap();
        assert_eq!(r.estimate, 0.0);
        assert!((r.low + r.high).abs() < 1e-9, "{r:?}");
        assert_eq!(l.repeat[1].treated.n, 0, "no order is 60 days old");
        assert!(l.repeat[1].difference.is_none());
    }

    /// Treated 60, 70, 80 against holdout 50, 50, 60. By hand: variances 100 and 33.3,
    /// standard error sqrt(100/3 + 33.3/3) = 6.67, Welch's df = 44.4² / (33.3²/2 + 11.1²/2)
    /// = 3.2, t(0.975, 3.2) = 3.073 (scipy), so 16.67 ± 20.49. One message per treated order.
    #[test]
    fn a_small_sample_against_hand_computed_welch() {
        let mut units: Vec<Unit> = [6_000, 7_000, 8_000]
            .iter()
            .map(|v| unit(false, *v, *v / 10, true, 1))
            .collect();
        units.extend(
            [5_000, 5_000, 6_000]
                .iter()
                .map(|v| unit(true, *v, 0, false, 0)),
        );
        let l = lift_of("welcome", units.iter(), &usd(), 3);
        let d = l.aov.difference.unwrap();
        assert!((d.estimate - 16.6667).abs() < 1e-3, "{d:?}");
        assert!(
            (d.low - -3.8189).abs() < 2e-3 && (d.high - 37.1522).abs() < 2e-3,
            "{d:?}"
        );
        assert_eq!(
            l.aov.verdict,
            "no difference shown yet (95% CI USD -3.82 to USD 37.15 includes zero)"
        );
        // Below the minimum the verdict says how many more holdout orders it needs.
        let short = lift_of("welcome", units.iter(), &usd(), 10);
        assert_eq!(
            short.aov.verdict,
            "not enough data yet: 7 more holdout orders needed"
        );
        // Revenue per message: upsell 7.00 per treated order more than none, 3 messages
        // for 3 orders.
        let p = &l.revenue_per_message;
        assert_eq!(p.messages, 3);
        let ci = p.incremental_per_message.unwrap();
        assert!((ci.estimate - 7.0).abs() < 1e-9, "{ci:?}");
        // Every treated customer came back, no holdout one did: a clear verdict.
        assert!(
            l.repeat[0]
                .verdict
                .starts_with("treated is higher by 100.0 percentage points"),
            "{}",
            l.repeat[0].verdict
        );
    }
}
