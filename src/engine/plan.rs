//! The offer decision: for one paid order, which recipe applies, which single product to
//! offer (or why none), who is held out, and which touches to plan when. Pure: every input
//! is a value the processor loaded, `now` is a parameter, and every choice and every
//! rejected alternative carries a written reason, so `explain` can show the whole decision.

use std::collections::{BTreeMap, BTreeSet};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::affinity::{Candidate, Evidence, Kind, Tier};
use super::catalog::Variant;
use super::model::{Consent, Order, Timestamp};
use super::money::Currency;

/// The recipes, in their default priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recipe {
    Welcome,
    Replenishment,
    Upgrade,
    Bundle,
    CrossSell,
}

impl Recipe {
    pub const ALL: [Recipe; 5] = [
        Recipe::Welcome,
        Recipe::Replenishment,
        Recipe::Upgrade,
        Recipe::Bundle,
        Recipe::CrossSell,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Recipe::Welcome => "welcome",
            Recipe::Replenishment => "replenishment",
            Recipe::Upgrade => "upgrade",
            Recipe::Bundle => "bundle",
            Recipe::CrossSell => "cross_sell",
        }
    }

    pub fn parse(s: &str) -> Option<Recipe> {
        Recipe::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Email consent policy for addresses outside the EU, UK and Canada (inside them consent
/// is always required).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmailConsent {
    /// Only customers who subscribed.
    Required,
    /// Existing customers unless they declined (unsubscribed).
    SoftOptIn,
}

/// When each touch goes out, from the order (or delivery). Defaults from product.md.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cadence {
    pub touch1_minutes: i64,
    pub sms_minutes: i64,
    pub touch2_days: i64,
    /// Touch-2 moves to this many days after delivery once a delivery is known.
    pub touch2_days_after_delivery: i64,
    pub review_days_after_delivery: i64,
    /// Used for the review's provisional due time while delivery is unknown.
    pub expected_delivery_days: i64,
    pub touch3_durable_days: i64,
    pub winback_days: i64,
    /// Delivery anticipation, days after the order; `None` (the default) plans none.
    pub anticipation_days: Option<i64>,
}

impl Default for Cadence {
    fn default() -> Cadence {
        Cadence {
            touch1_minutes: 20,
            sms_minutes: 240,
            touch2_days: 4,
            touch2_days_after_delivery: 2,
            review_days_after_delivery: 10,
            expected_delivery_days: 5,
            touch3_durable_days: 35,
            winback_days: 90,
            anticipation_days: None,
        }
    }
}

/// An A/B experiment: each customer gets one of its variants, the same one every time.
#[derive(Clone, Debug, PartialEq)]
pub struct Experiment {
    pub name: String,
    pub variants: Vec<String>,
}

/// One store's decision policy (from its configuration).
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Enabled recipes, in priority order.
    pub recipes: Vec<Recipe>,
    /// The welcome upsell's least order value (minor units), under the store's median.
    pub welcome_floor: i64,
    /// Orders below this value (minor units) are never messaged.
    pub min_order_value: i64,
    pub discount_codes: BTreeMap<Recipe, String>,
    /// Recipes whose offers carry a code of their own, made through the platform's API
    /// when the first message carrying it goes (`pipeline::codes`): the percentage off.
    pub unique_codes: BTreeMap<Recipe, u8>,
    /// Recipes whose messages may carry urgency (none by default).
    pub urgency: BTreeSet<Recipe>,
    pub stock_threshold: i64,
    /// The add-on's price as a percentage of what was bought: at least, at most, and the
    /// share at or under which it ranks higher.
    pub price_window: (u32, u32, u32),
    /// Hundredths of a star; products rated lower are never offered.
    pub min_rating: Option<u16>,
    pub b2b_tags: Vec<String>,
    pub vip_tags: Vec<String>,
    pub refund_cooldown_days: i64,
    pub email_consent: EmailConsent,
    /// Hundredths of a percent of customers held out (1000 = 10%).
    pub holdout_basis_points: u32,
    pub experiments: Vec<Experiment>,
    pub cadence: Cadence,
    pub replenish_lead_days: i64,
    /// Units of an order currency per unit of the catalog currency, for stores that sell
    /// in several currencies: an offer's price is always stated in the order's currency.
    pub exchange_rates: BTreeMap<Currency, f64>,
    /// Orders older than this when first seen (a late webhook, an edit months later) get
    /// no touches: the moment has passed.
    pub max_order_age_days: i64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            recipes: Recipe::ALL.to_vec(),
            welcome_floor: 0,
            min_order_value: 0,
            discount_codes: BTreeMap::new(),
            unique_codes: BTreeMap::new(),
            urgency: BTreeSet::new(),
            stock_threshold: 10,
            price_window: (25, 50, 40),
            min_rating: None,
            b2b_tags: vec!["wholesale".into(), "b2b".into()],
            vip_tags: vec!["vip".into()],
            refund_cooldown_days: 30,
            email_consent: EmailConsent::SoftOptIn,
            holdout_basis_points: 1000,
            experiments: Vec::new(),
            cadence: Cadence::default(),
            replenish_lead_days: 3,
            exchange_rates: BTreeMap::new(),
            max_order_age_days: 7,
        }
    }
}

/// Why a customer is on the suppression list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Suppressed {
    Unsubscribed,
    Complained,
    Manual(String),
}

/// The customer as known before this order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Shopper {
    /// Who the holdout and A/B groups are keyed on: the customer record (a guest who later
    /// opens an account resolves to the same one by email, and it outlives a changed email),
    /// else a guest's normalized email; `None` keys on the order.
    pub identity: Option<String>,
    pub prior_orders: u32,
    /// Product keys bought in earlier orders.
    pub bought: BTreeSet<String>,
    /// Purchases per category in earlier orders.
    pub categories: BTreeMap<String, u32>,
    pub tags: Vec<String>,
    pub email: bool,
    pub phone: bool,
    pub email_consent: Consent,
    pub sms_consent: Consent,
    pub last_refund_at: Option<Timestamp>,
    pub suppressed: Option<Suppressed>,
}

/// One line of the order, keyed as affinity and the catalog key it.
#[derive(Clone, Debug, PartialEq)]
pub struct BasketLine {
    pub product: String,
    pub quantity: u32,
    pub unit_price: i64,
    pub gift_card: bool,
}

/// Everything `plan` decides from.
pub struct PlanInput<'a> {
    pub store: &'a str,
    /// The store's secret salt for group assignment (kept in the database).
    pub salt: &'a [u8],
    pub policy: &'a Policy,
    /// The store's catalog currency.
    pub currency: Currency,
    pub order: &'a Order,
    pub basket: &'a [BasketLine],
    pub shopper: &'a Shopper,
    /// Catalog entries by product key: the basket's, the candidates', upgrade targets and
    /// bundle members.
    pub catalog: &'a BTreeMap<String, std::sync::Arc<Variant>>,
    /// Affinity candidates for the basket, best first.
    pub candidates: &'a [Candidate],
    /// Product keys per bundle id.
    pub bundles: &'a BTreeMap<String, Vec<String>>,
    /// The store's median and 80th-percentile order value (minor units), where known.
    pub median_order: Option<i64>,
    pub top_fifth_order: Option<i64>,
    pub now: Timestamp,
    /// When the order was first planned: the age limit counts up to then, so a plan is
    /// not dropped when the order is edited weeks later.
    pub seen_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TouchKind {
    Page,
    Touch1,
    Sms,
    Touch2,
    Review,
    Touch3,
    Winback,
    Anticipation,
    /// Not a message to the customer: the store's notice that a customer rated a support
    /// ticket poorly and a person should follow up (`customer.recovery_needed`, to the
    /// store's webhook). Never decided by the marketing rules.
    Recovery,
}

impl TouchKind {
    pub const ALL: [TouchKind; 9] = [
        TouchKind::Page,
        TouchKind::Touch1,
        TouchKind::Sms,
        TouchKind::Touch2,
        TouchKind::Review,
        TouchKind::Touch3,
        TouchKind::Winback,
        TouchKind::Anticipation,
        TouchKind::Recovery,
    ];

    pub fn parse(s: &str) -> Option<TouchKind> {
        TouchKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TouchKind::Page => "page",
            TouchKind::Touch1 => "touch1",
            TouchKind::Sms => "sms",
            TouchKind::Touch2 => "touch2",
            TouchKind::Review => "review",
            TouchKind::Touch3 => "touch3",
            TouchKind::Winback => "winback",
            TouchKind::Anticipation => "anticipation",
            TouchKind::Recovery => "recovery",
        }
    }

    /// A message to the customer that a store may route and `send-test` may render (not the
    /// thank-you page, not the store's recovery notice).
    pub fn is_customer_message(self) -> bool {
        !matches!(self, TouchKind::Page | TouchKind::Recovery)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Page,
    Email,
    Sms,
    Webhook,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Page => "page",
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Webhook => "webhook",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Touch {
    pub kind: TouchKind,
    pub channel: Channel,
    pub due_at: Timestamp,
    /// Moves with the delivery date once it is known (the scheduler re-anchors it).
    pub after_delivery: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    pub product: String,
    pub sku: Option<String>,
    pub variant_id: Option<String>,
    pub title: String,
    /// Minor units of `currency`, the order's.
    pub price: i64,
    pub currency: Currency,
    pub discount_code: Option<String>,
    /// Show a trust element (reviews, guarantee): a first-time buyer.
    pub trust: bool,
    pub urgency: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub recipe: Option<Recipe>,
    pub offer: Option<Offer>,
    pub holdout: bool,
    /// (experiment, variant) for each experiment.
    pub variants: Vec<(String, String)>,
    pub touches: Vec<Touch>,
    /// Every decision and every rejected alternative, in the order they were made.
    pub reasons: Vec<String>,
}

const MINUTE: i64 = 60_000;
/// A same-order pair counts as a frequent bundle from this lift on.
const FREQUENT_BUNDLE_LIFT: f64 = 2.0;
const DAY: i64 = 86_400_000;

/// Decides the offer and the touches for one order.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    plan_coded(input).0
}

/// Why an order got fewer touches than its recipe would give, as rule codes (for counts:
/// `replay`); the plan's reasons say the same in words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Codes {
    /// Nothing for this order: ineligible (`cancelled`, `not_paid`, `too_old`,
    /// `no_products`, `gift_cards_only`), `holdout`, or suppressed (`unsubscribed`,
    /// `complained`, `suppressed`, `b2b`, `vip`, `refund_cooldown`, `under_min_value`).
    pub stop: Option<&'static str>,
    /// No email touches: `no_email`, `email_unsubscribed`, `no_email_consent`.
    pub no_email: Option<&'static str>,
    /// No SMS: `no_phone`, `no_sms_consent`.
    pub no_sms: Option<&'static str>,
}

/// [`plan`], with the rule codes of what it left out.
pub fn plan_coded(input: &PlanInput<'_>) -> (Plan, Codes) {
    let mut why = Vec::new();
    let mut codes = Codes::default();
    let identity = input
        .shopper
        .identity
        .clone()
        .unwrap_or_else(|| format!("order:{}", input.order.id));
    let holdout = bucket(input.salt, &["holdout", input.store, &identity], 10_000)
        < u64::from(input.policy.holdout_basis_points);
    let variants = input
        .policy
        .experiments
        .iter()
        .filter(|e| !e.variants.is_empty())
        .map(|e| {
            let i = bucket(
                input.salt,
                &["ab", input.store, &e.name, &identity],
                e.variants.len() as u64,
            );
            (e.name.clone(), e.variants[i as usize].clone())
        })
        .collect::<Vec<_>>();
    for (e, v) in &variants {
        why.push(format!("experiment {e}: variant {v}"));
    }

    let ineligible = ineligible(input);
    let (recipe, offer) = match &ineligible {
        Some((code, reason)) => {
            codes.stop = Some(code);
            why.push(format!("no offer and no touches: {reason}"));
            (None, None)
        }
        None => choose(input, &mut why),
    };
    let mut plan = Plan {
        recipe,
        offer,
        holdout,
        variants,
        touches: Vec::new(),
        reasons: Vec::new(),
    };
    if ineligible.is_none() {
        if holdout {
            codes.stop = Some("holdout");
            why.push(format!(
                "holdout: this customer is in the {}% control group; no touches (the offer is kept for measurement)",
                f64::from(input.policy.holdout_basis_points) / 100.0
            ));
        } else if let Some((code, stop)) = suppression(input) {
            codes.stop = Some(code);
            why.push(format!("no touches: {stop}"));
        } else {
            plan.touches = touches(input, recipe, plan.offer.is_some(), &mut why, &mut codes);
        }
    }
    plan.reasons = why;
    (plan, codes)
}

/// A keyed hash of `parts` into `0..n`: the same every time for the same salt.
fn bucket(salt: &[u8], parts: &[&str], n: u64) -> u64 {
    let mut mac = Hmac::<Sha256>::new_from_slice(salt).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p.as_bytes());
        mac.update(&[0]);
    }
    let bytes = mac.finalize().into_bytes();
    let x = u64::from_le_bytes(bytes[..8].try_into().expect("32 bytes"));
    x % n.max(1)
}

/// The order's total in the store's currency (what the median, the top fifth and the
/// configured amounts are in); `None` for another currency without a configured rate.
fn store_value(input: &PlanInput<'_>) -> Option<i64> {
    super::money::convert(
        input.order.total,
        input.order.currency,
        input.currency,
        &input.policy.exchange_rates,
    )
}

/// The value of what was bought that counts for offers: gift cards excluded.
fn bought_value(basket: &[BasketLine]) -> i64 {
    basket
        .iter()
        .filter(|l| !l.gift_card)
        .map(|l| l.unit_price * i64::from(l.quantity))
        .sum()
}

fn money(minor: i64, currency: Currency) -> String {
    format!("{} {}", currency.format_minor(minor), currency.as_str())
}

/// Whether the platform says the order is paid (Shopify's financial status, WooCommerce's
/// order status).
pub fn paid(order: &Order) -> bool {
    order.financial_status.as_deref().is_some_and(|s| {
        matches!(
            s.to_ascii_lowercase().as_str(),
            "paid" | "partially_paid" | "partially_refunded" | "processing" | "completed"
        )
    })
}

/// Why an order gets nothing at all, if so: (rule code, reason).
fn ineligible(input: &PlanInput<'_>) -> Option<(&'static str, String)> {
    if input.order.cancelled_at.is_some() {
        return Some(("cancelled", "the order is cancelled".into()));
    }
    if !paid(input.order) {
        return Some((
            "not_paid",
            format!(
                "the order is not paid (status {}); it is planned when it is",
                input.order.financial_status.as_deref().unwrap_or("unknown")
            ),
        ));
    }
    let age_days = (input.seen_at.0 - input.order.created_at.0) / DAY;
    if age_days > input.policy.max_order_age_days {
        return Some((
            "too_old",
            format!(
                "the order is {age_days} days old, over the {}-day limit for following up",
                input.policy.max_order_age_days
            ),
        ));
    }
    if input.basket.is_empty() {
        return Some((
            "no_products",
            "no line of the order is a product (custom items only)".into(),
        ));
    }
    if input.basket.iter().all(|l| l.gift_card) {
        return Some(("gift_cards_only", "the order holds only gift cards".into()));
    }
    None
}

/// The first enabled recipe that applies and finds an offer passing its filters.
fn choose(input: &PlanInput<'_>, why: &mut Vec<String>) -> (Option<Recipe>, Option<Offer>) {
    let rate = match exchange_rate(input) {
        Ok(rate) => rate,
        Err(reason) => {
            why.push(format!("no offer: {reason}"));
            return (None, None);
        }
    };
    if let Some(r) = rate {
        why.push(format!(
            "prices converted from {} at {r} {} per {}",
            input.currency.as_str(),
            input.order.currency.as_str(),
            input.currency.as_str()
        ));
    }
    // Welcome and cross-sell weigh the same candidates through the same filters.
    let mut candidates_failed = false;
    for &recipe in &input.policy.recipes {
        let picked = match recipe {
            Recipe::Welcome => welcome(input, why),
            Recipe::Replenishment => replenishment(input, why),
            Recipe::Upgrade => upgrade(input, why),
            Recipe::Bundle => bundle(input, why),
            Recipe::CrossSell if candidates_failed => {
                why.push(
                    "recipe cross_sell: the same candidates and filters as welcome; none passed"
                        .into(),
                );
                continue;
            }
            Recipe::CrossSell => Some(candidate_keys(input)),
        };
        let Some(products) = picked else {
            continue;
        };
        if let Some((offer, evidence)) = first_passing(input, recipe, &products, rate, why) {
            why.push(format!(
                "recipe {}: offer {} ({}) at {}: {evidence}",
                recipe.as_str(),
                offer.product,
                offer.title,
                money(offer.price, offer.currency)
            ));
            return (Some(recipe), Some(offer));
        }
        candidates_failed |= recipe == Recipe::Welcome;
        why.push(format!(
            "recipe {}: applies, but no product passed its filters",
            recipe.as_str()
        ));
    }
    why.push("no offer: no enabled recipe found a product to offer".into());
    (None, None)
}

/// The rate from the catalog's currency to the order's: `None` when they are the same.
fn exchange_rate(input: &PlanInput<'_>) -> Result<Option<f64>, String> {
    let (from, to) = (input.currency, input.order.currency);
    if from == to {
        return Ok(None);
    }
    match input.policy.exchange_rates.get(&to) {
        Some(&r) => Ok(Some(r)),
        None => Err(format!(
            "the order is in {}, the catalog in {}, and no exchange rate is configured (set offers.exchange_rates.{} in the store's config)",
            to.as_str(),
            from.as_str(),
            to.as_str()
        )),
    }
}

/// A catalog price in the order's currency.
fn convert(price: i64, rate: Option<f64>, from: Currency, to: Currency) -> i64 {
    let Some(rate) = rate else {
        return price;
    };
    let scale = 10f64.powi(to.exponent() as i32 - from.exponent() as i32);
    (price as f64 * rate * scale).round() as i64
}

/// A product a recipe proposes: its key, why, and its rank group (the add-on price
/// preference reorders only within a group: it never outranks a store's own pairing).
struct Proposal<'a> {
    product: &'a str,
    why: Why<'a>,
    group: u8,
}

/// Why a product was proposed; written out only when a reason needs it.
enum Why<'a> {
    Candidate(&'a Candidate),
    Text(String),
}

impl std::fmt::Display for Why<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Candidate(c) => f.write_str(&describe(c)),
            Why::Text(t) => f.write_str(t),
        }
    }
}

fn proposal(product: &str, why: String) -> Proposal<'_> {
    Proposal {
        product,
        why: Why::Text(why),
        group: 0,
    }
}

fn candidate_keys<'a>(input: &PlanInput<'a>) -> Vec<Proposal<'a>> {
    input
        .candidates
        .iter()
        .map(|c| Proposal {
            product: &c.product,
            why: Why::Candidate(c),
            group: c.group,
        })
        .collect()
}

/// The evidence of a candidate, in a few words.
fn describe(c: &Candidate) -> String {
    let Some(e) = c.evidence.first() else {
        return "no evidence".into();
    };
    match e {
        Evidence::Affinity { from, rule, .. } => format!(
            "{} with {from}: confidence {:.0}%, lift {:.1}, {}",
            match rule.kind {
                Kind::SameOrder => "bought together",
                Kind::NextOrder => "bought next",
            },
            rule.confidence * 100.0,
            rule.lift,
            rule.tier.map_or("untiered", Tier::as_str)
        ),
        Evidence::Manual { from, mode, .. } => {
            format!("manual pairing with {from} ({})", mode.as_str())
        }
        Evidence::Category { category, .. } => format!("popular in {category}"),
        Evidence::Popularity { .. } => "among the store's most bought".into(),
    }
}

/// The products a recipe proposes, best first; `None` when the recipe does not apply.
type Picked<'a> = Option<Vec<Proposal<'a>>>;

fn welcome<'a>(input: &PlanInput<'a>, why: &mut Vec<String>) -> Picked<'a> {
    if input.shopper.prior_orders > 0 {
        why.push(format!(
            "recipe welcome: not a first order ({} before)",
            input.shopper.prior_orders
        ));
        return None;
    }
    let threshold = input
        .median_order
        .unwrap_or(0)
        .max(input.policy.welcome_floor);
    let Some(value) = store_value(input) else {
        why.push(format!(
            "recipe welcome: the order is in {} and no exchange rate is configured, so its value cannot be compared with the store's median",
            input.order.currency.as_str()
        ));
        return None;
    };
    if value < threshold {
        why.push(format!(
            "recipe welcome: first order of {} is under the threshold {}",
            money(value, input.currency),
            money(threshold, input.currency)
        ));
        return None;
    }
    why.push(format!(
        "recipe welcome: first order of {} is at or over the threshold {}{}",
        money(value, input.currency),
        money(threshold, input.currency),
        if input
            .median_order
            .is_some_and(|m| m >= input.policy.welcome_floor)
        {
            " (the store's median order)"
        } else {
            " (the configured floor)"
        }
    ));
    Some(candidate_keys(input))
}

/// The consumable in the order that runs out first: its line, how many days it lasts,
/// and when to remind (the lead time before it runs out, at least a day after the order).
fn depletion<'a>(input: &PlanInput<'a>) -> Option<(&'a BasketLine, i64, Timestamp)> {
    let (lasts, line) = input
        .basket
        .iter()
        .filter_map(|l| {
            let days = input.catalog.get(&l.product)?.consumable_days?;
            Some((i64::from(l.quantity.max(1)) * i64::from(days), l))
        })
        .min_by(|x, y| (x.0, &x.1.product).cmp(&(y.0, &y.1.product)))?;
    let lead = input.policy.replenish_lead_days;
    let due = Timestamp(
        input
            .order
            .created_at
            .0
            .saturating_add((lasts - lead).max(1).saturating_mul(DAY)),
    );
    Some((line, lasts, due))
}

fn replenishment<'a>(input: &PlanInput<'a>, why: &mut Vec<String>) -> Picked<'a> {
    let Some((line, lasts, _)) = depletion(input) else {
        why.push("recipe replenishment: nothing in the order is a consumable".into());
        return None;
    };
    let lead = input.policy.replenish_lead_days;
    why.push(format!(
        "recipe replenishment: {} runs out after {lasts} days ({} × {} days); remind {lead} days before",
        line.product,
        line.quantity,
        lasts / i64::from(line.quantity.max(1))
    ));
    Some(vec![proposal(
        &line.product,
        "the same product, to reorder".into(),
    )])
}

fn category_of<'a>(input: &PlanInput<'a>, product: &str) -> Option<&'a str> {
    input
        .catalog
        .get(product)?
        .product_type
        .as_deref()
        .filter(|c| !c.is_empty())
}

fn upgrade<'a>(input: &PlanInput<'a>, why: &mut Vec<String>) -> Picked<'a> {
    let mut out = Vec::new();
    for line in input.basket.iter().filter(|l| !l.gift_card) {
        let Some(category) = category_of(input, &line.product) else {
            continue;
        };
        let before = input.shopper.categories.get(category).copied().unwrap_or(0);
        let Some(to) = input.catalog[&line.product].upgrade_to.as_deref() else {
            continue;
        };
        if before + 1 < 3 {
            why.push(format!(
                "recipe upgrade: purchase {} in {category}, not yet the 3rd",
                before + 1
            ));
            continue;
        }
        out.push(proposal(
            to,
            format!(
                "premium tier of {} (purchase {} in {category})",
                line.product,
                before + 1
            ),
        ));
    }
    if out.is_empty() {
        why.push("recipe upgrade: no 3rd+ purchase in a category with a premium tier".into());
        return None;
    }
    Some(out)
}

fn bundle<'a>(input: &PlanInput<'a>, why: &mut Vec<String>) -> Picked<'a> {
    let in_order: BTreeSet<&str> = input.basket.iter().map(|l| l.product.as_str()).collect();
    let mut out: Vec<Proposal<'a>> = Vec::new();
    for line in input.basket {
        let Some(v) = input.catalog.get(&line.product) else {
            continue;
        };
        for id in &v.bundles {
            for member in input.bundles.get(id).into_iter().flatten() {
                if !in_order.contains(member.as_str()) && !out.iter().any(|p| p.product == member) {
                    out.push(proposal(
                        member,
                        format!("completes bundle {id} with {}", line.product),
                    ));
                }
            }
        }
    }
    // Frequent bundles: pairs bought together often and far more than chance (a strong
    // confidence alone is met by any best-seller).
    for c in input.candidates {
        let strong_pair = c.evidence.iter().any(|e| {
            matches!(e, Evidence::Affinity { rule, .. }
                if rule.kind == Kind::SameOrder
                    && rule.tier == Some(Tier::Strong)
                    && rule.lift >= FREQUENT_BUNDLE_LIFT)
        });
        if strong_pair && !out.iter().any(|p| p.product == c.product) {
            out.push(Proposal {
                product: &c.product,
                why: Why::Text(format!("frequent bundle: {}", describe(c))),
                group: 0,
            });
        }
    }
    if out.is_empty() {
        why.push("recipe bundle: nothing in the order is part of a bundle".into());
        return None;
    }
    Some(out)
}

/// The first product that passes the recipe's filters, in the order given, except that
/// add-ons at or under the preferred share of what was bought come first. Every product
/// rejected gets a reason.
fn first_passing(
    input: &PlanInput<'_>,
    recipe: Recipe,
    products: &[Proposal<'_>],
    rate: Option<f64>,
    why: &mut Vec<String>,
) -> Option<(Offer, String)> {
    let windowed = matches!(recipe, Recipe::Welcome | Recipe::CrossSell);
    let value = bought_value(input.basket);
    let currency = input.order.currency;
    let (low, high, preferred) = input.policy.price_window;
    let first_time = input.shopper.prior_orders == 0;
    let top_buyer = match (input.top_fifth_order, store_value(input)) {
        (Some(top), Some(value)) => value >= top,
        _ => false,
    };
    // (rank group, cheap add-on, product, its catalog entry, its price).
    let mut passing: Vec<(u8, bool, &Proposal<'_>, &Variant, i64)> = Vec::new();
    for proposal in products {
        let Proposal { product, group, .. } = proposal;
        // Only the first rank group that has a passing product competes, and in it the
        // first add-on at or under the preferred share wins: nothing after can change that.
        if let Some((first, ..)) = passing.first() {
            if *group != *first || passing.iter().any(|p| p.1) {
                break;
            }
        }
        let product = *product;
        let rejected = |why: &mut Vec<String>, reason: String| {
            why.push(format!(
                "candidate {product} rejected for {}: {reason}",
                recipe.as_str()
            ));
        };
        let Some(v) = input.catalog.get(product) else {
            rejected(why, "not in the catalog (no price to offer)".into());
            continue;
        };
        let Some(price) = v.price else {
            rejected(why, "the catalog has no price for it".into());
            continue;
        };
        let price = convert(price, rate, input.currency, currency);
        if let Some(reason) = unfit(input, recipe, product, v) {
            rejected(why, reason);
            continue;
        }
        let mut cheap = false;
        if windowed && value > 0 {
            let share = price as f64 * 100.0 / value as f64;
            if share < f64::from(low) || share > f64::from(high) {
                rejected(
                    why,
                    format!(
                        "{} is {share:.0}% of the {} bought, outside {low}-{high}%",
                        money(price, currency),
                        money(value, currency)
                    ),
                );
                continue;
            }
            cheap = share <= f64::from(preferred);
        }
        passing.push((*group, cheap, proposal, v, price));
    }
    // The first that passed, unless one of its rank group is a cheaper add-on.
    let first_group = passing.first()?.0;
    let pick = passing
        .iter()
        .take_while(|p| p.0 == first_group)
        .position(|p| p.1)
        .unwrap_or(0);
    if pick > 0 {
        why.push(format!(
            "{} ranked above {}: at most {preferred}% of what was bought",
            passing[pick].2.product, passing[0].2.product
        ));
    }
    let (_, _, proposal, v, price) = passing[pick];
    let offer = Offer {
        product: proposal.product.to_string(),
        sku: v.sku.clone(),
        variant_id: v.variant_id.clone(),
        title: v.title.clone(),
        price,
        currency,
        discount_code: input.policy.discount_codes.get(&recipe).cloned(),
        trust: first_time,
        urgency: input.policy.urgency.contains(&recipe) && !top_buyer,
    };
    Some((offer, proposal.why.to_string()))
}

/// Why a product may not be offered by `recipe`, if it may not.
fn unfit(input: &PlanInput<'_>, recipe: Recipe, product: &str, v: &Variant) -> Option<String> {
    if v.gift_card {
        return Some("a gift card".into());
    }
    if v.digital() {
        return Some("digital (nothing to ship alongside)".into());
    }
    if !v.upsell_eligible {
        return Some("marked not upsell-eligible".into());
    }
    if !v.active {
        return Some("not published".into());
    }
    if let Some(n) = v.inventory.filter(|&n| n < input.policy.stock_threshold) {
        return Some(format!(
            "{n} in stock, under the threshold of {}",
            input.policy.stock_threshold
        ));
    }
    if let (Some(r), Some(min)) = (v.rating, input.policy.min_rating) {
        if r < min {
            return Some(format!(
                "rated {:.2}, under the minimum {:.2}",
                f64::from(r) / 100.0,
                f64::from(min) / 100.0
            ));
        }
    }
    // Replenishment offers the same product again: these two filters contradict it.
    if recipe != Recipe::Replenishment {
        if input.basket.iter().any(|l| l.product == product) {
            return Some("already in this order".into());
        }
        if input.shopper.bought.contains(product) {
            return Some("already bought by this customer".into());
        }
    }
    None
}

/// Why this customer gets no touches at all, if so.
fn suppression(input: &PlanInput<'_>) -> Option<(&'static str, String)> {
    let s = input.shopper;
    if let Some(reason) = &s.suppressed {
        return Some(match reason {
            Suppressed::Unsubscribed => ("unsubscribed", "the customer unsubscribed".into()),
            Suppressed::Complained => (
                "complained",
                "the customer complained (marked as spam)".into(),
            ),
            Suppressed::Manual(r) => ("suppressed", format!("suppressed by the store: {r}")),
        });
    }
    let tags: Vec<String> = s
        .tags
        .iter()
        .chain(&input.order.tags)
        .map(|t| t.trim().to_lowercase())
        .collect();
    for (code, kind, list) in [
        ("b2b", "wholesale/B2B", &input.policy.b2b_tags),
        ("vip", "VIP", &input.policy.vip_tags),
    ] {
        if let Some(t) = list.iter().find(|t| tags.contains(&t.to_lowercase())) {
            return Some((
                code,
                format!("{kind} customer (tag {t:?}), handled by people"),
            ));
        }
    }
    if let Some(at) = s.last_refund_at {
        let until = at.0 + input.policy.refund_cooldown_days * DAY;
        if input.now.0 < until {
            return Some((
                "refund_cooldown",
                format!(
                    "refund cool-down: a refund on {} pauses offers for {} days",
                    at.to_rfc3339(),
                    input.policy.refund_cooldown_days
                ),
            ));
        }
    }
    match store_value(input) {
        Some(value) if value < input.policy.min_order_value => Some((
            "under_min_value",
            format!(
                "order value {} is under the minimum {}",
                money(value, input.currency),
                money(input.policy.min_order_value, input.currency)
            ),
        )),
        _ => None,
    }
}

/// Countries whose law requires consent before marketing email.
const CONSENT_COUNTRIES: [&str; 30] = [
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV",
    "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE", "GB", "UK", "CA",
];

/// Whether email may be sent, and why not: (rule code, reason).
fn email_allowed(input: &PlanInput<'_>) -> Result<&'static str, (&'static str, String)> {
    let s = input.shopper;
    if !s.email {
        return Err(("no_email", "no email address".into()));
    }
    let country = input
        .order
        .shipping
        .as_ref()
        .or(input.order.billing.as_ref())
        .and_then(|r| r.country.as_deref())
        .map(str::to_ascii_uppercase);
    let required = input.policy.email_consent == EmailConsent::Required
        || country
            .as_deref()
            .is_some_and(|c| CONSENT_COUNTRIES.contains(&c));
    match (s.email_consent, required) {
        (Consent::Subscribed, _) => Ok("subscribed to email"),
        (Consent::Unsubscribed, _) => Err(("email_unsubscribed", "unsubscribed from email".into())),
        (_, true) => Err((
            "no_email_consent",
            match country {
                Some(c) if CONSENT_COUNTRIES.contains(&c.as_str()) => {
                    format!("ships to {c}, where email needs consent, and none was given")
                }
                _ => "the store requires email consent, and none was given".into(),
            },
        )),
        (_, false) => Ok("soft opt-in: an existing customer who did not decline"),
    }
}

fn touches(
    input: &PlanInput<'_>,
    recipe: Option<Recipe>,
    has_offer: bool,
    why: &mut Vec<String>,
    codes: &mut Codes,
) -> Vec<Touch> {
    let c = &input.policy.cadence;
    let at = input.order.created_at.0;
    let email = email_allowed(input);
    let sms = match (input.shopper.phone, input.shopper.sms_consent) {
        (false, _) => Err(("no_phone", "no phone number")),
        (true, Consent::Subscribed) => Ok(()),
        (true, _) => Err(("no_sms_consent", "no SMS consent")),
    };
    match &email {
        Ok(r) => why.push(format!("email: {r}")),
        Err((code, r)) => {
            codes.no_email = Some(code);
            why.push(format!("no email touches: {r}"));
        }
    }
    if let Err((code, r)) = sms {
        codes.no_sms = Some(code);
        why.push(format!("no SMS: {r}"));
    }
    let ships = input.order.lines.iter().any(|l| l.requires_shipping);
    let consumable_at = depletion(input).map(|d| d.2);
    let mut out = Vec::new();
    let mut add = |kind, channel, due: i64, after_delivery| {
        out.push(Touch {
            kind,
            channel,
            due_at: Timestamp(due),
            after_delivery,
        })
    };
    match recipe {
        Some(Recipe::Replenishment) => {
            let due = consumable_at.map_or(at, |t| t.0);
            if email.is_ok() {
                add(TouchKind::Touch3, Channel::Email, due, false);
            }
            // The SMS follows the email (as after the order): sent together, the SMS
            // would hold the email for 48 hours under the default caps.
            if sms.is_ok() {
                add(
                    TouchKind::Sms,
                    Channel::Sms,
                    due + c.sms_minutes * MINUTE,
                    false,
                );
            }
        }
        Some(r) if has_offer => {
            // The thank-you page offer is not a message: consent does not gate it.
            if r != Recipe::Upgrade {
                add(TouchKind::Page, Channel::Page, at, false);
            }
            if email.is_ok() {
                add(
                    TouchKind::Touch1,
                    Channel::Email,
                    at + c.touch1_minutes * MINUTE,
                    false,
                );
            }
            if sms.is_ok() && r != Recipe::Upgrade {
                add(
                    TouchKind::Sms,
                    Channel::Sms,
                    at + c.sms_minutes * MINUTE,
                    false,
                );
            }
            if email.is_ok() {
                add(
                    TouchKind::Touch2,
                    Channel::Email,
                    at + c.touch2_days * DAY,
                    false,
                );
            }
        }
        _ => {}
    }
    if email.is_ok() {
        // Never before delivery: until it is known, a provisional time that moves with it.
        if ships {
            add(
                TouchKind::Review,
                Channel::Email,
                at + (c.expected_delivery_days + c.review_days_after_delivery) * DAY,
                true,
            );
        } else {
            add(
                TouchKind::Review,
                Channel::Email,
                at + c.review_days_after_delivery * DAY,
                false,
            );
        }
        match (recipe, consumable_at) {
            (Some(Recipe::Replenishment), _) => {}
            (_, Some(t)) => add(TouchKind::Touch3, Channel::Email, t.0, false),
            (Some(_), None) if has_offer => add(
                TouchKind::Touch3,
                Channel::Email,
                at + c.touch3_durable_days * DAY,
                false,
            ),
            _ => add(
                TouchKind::Winback,
                Channel::Email,
                at + c.winback_days * DAY,
                false,
            ),
        }
        if let (Some(days), true) = (c.anticipation_days, ships) {
            add(
                TouchKind::Anticipation,
                Channel::Email,
                at + days * DAY,
                false,
            );
        }
    }
    out.sort_by_key(|t| (t.due_at, t.kind));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::affinity::{PairingMode, Rule};
    use crate::engine::model::{LineItem, Region};

    const T0: i64 = 1_768_039_200_000; // 2026-01-10T10:00:00Z

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    fn product(title: &str, category: &str, price: i64) -> Variant {
        Variant {
            sku: Some(title.to_uppercase()),
            title: title.into(),
            product_type: Some(category.into()),
            price: Some(price),
            inventory: Some(50),
            ..Variant::new()
        }
    }

    /// MUG costs 20.00; its add-ons sit at 30% (SPOON), 40% (COASTER), 50% (LID) and
    /// outside the window (KETTLE at 150%, STRAW at 10%).
    fn catalog() -> BTreeMap<String, Variant> {
        let mut c = BTreeMap::new();
        let mut add = |key: &str, v: Variant| {
            c.insert(key.to_string(), v);
        };
        add(
            "MUG",
            Variant {
                upgrade_to: Some("MUG-PRO".into()),
                bundles: vec!["brew".into()],
                ..product("Mug", "Kitchen", 2000)
            },
        );
        add("MUG-PRO", product("Mug Pro", "Kitchen", 4000));
        add("SPOON", product("Spoon", "Kitchen", 600));
        add("COASTER", product("Coaster", "Kitchen", 800));
        add("LID", product("Lid", "Kitchen", 1000));
        add("STRAW", product("Straw", "Kitchen", 200));
        add(
            "KETTLE",
            Variant {
                bundles: vec!["brew".into()],
                ..product("Kettle", "Kitchen", 3000)
            },
        );
        add(
            "GIFT",
            Variant {
                gift_card: true,
                ..product("Gift card", "Gift", 2500)
            },
        );
        add(
            "EBOOK",
            Variant {
                requires_shipping: false,
                ..product("Ebook", "Books", 700)
            },
        );
        add(
            "LOW",
            Variant {
                inventory: Some(3),
                ..product("Low stock", "Kitchen", 700)
            },
        );
        add(
            "MEH",
            Variant {
                rating: Some(250),
                ..product("Poorly rated", "Kitchen", 700)
            },
        );
        add(
            "BEANS",
            Variant {
                consumable_days: Some(30),
                ..product("Beans", "Coffee", 1500)
            },
        );
        c
    }

    fn line(key: &str, price: i64, quantity: u32) -> LineItem {
        LineItem {
            id: format!("l-{key}"),
            product_id: None,
            variant_id: None,
            sku: Some(key.into()),
            quantity,
            unit_price: price,
            title: key.into(),
            variant_title: None,
            vendor: None,
            gift_card: key == "GIFT",
            requires_shipping: key != "EBOOK" && key != "GIFT",
        }
    }

    fn order(lines: &[(&str, i64, u32)]) -> Order {
        let lines: Vec<LineItem> = lines.iter().map(|&(k, p, q)| line(k, p, q)).collect();
        let total = lines
            .iter()
            .map(|l| l.unit_price * i64::from(l.quantity))
            .sum();
        Order {
            email: Some("ann@example.com".into()),
            lines,
            shipping: Some(Region {
                country: Some("US".into()),
                ..Region::default()
            }),
            ..Order::sample("1001", Timestamp(T0), total)
        }
    }

    fn rule(tier: Tier, confidence: f64) -> Rule {
        Rule {
            kind: Kind::SameOrder,
            pair_orders: 40.0,
            antecedent_orders: 100.0,
            consequent_orders: 120.0,
            total_orders: 1000.0,
            exact_pair_orders: 40,
            support: 0.04,
            confidence,
            lift: 3.3,
            mean_gap_days: None,
            tier: Some(tier),
        }
    }

    fn affinity(product: &str, tier: Tier, confidence: f64) -> Candidate {
        Candidate {
            product: product.into(),
            group: 1,
            score: confidence,
            evidence: vec![Evidence::Affinity {
                from: "MUG".into(),
                rule: rule(tier, confidence),
                conversion: 0.05,
            }],
        }
    }

    fn popular(product: &str) -> Candidate {
        Candidate {
            product: product.into(),
            group: 5,
            score: 10.0,
            evidence: vec![Evidence::Popularity { orders: 10.0 }],
        }
    }

    /// One decision's inputs, defaulting to: a returning customer (one order before)
    /// who subscribed to email, buying one MUG, no holdout, every recipe enabled.
    struct Case {
        order: Order,
        shopper: Shopper,
        policy: Policy,
        candidates: Vec<Candidate>,
        catalog: BTreeMap<String, Variant>,
        bundles: BTreeMap<String, Vec<String>>,
        median: Option<i64>,
        top_fifth: Option<i64>,
    }

    fn case() -> Case {
        Case {
            order: order(&[("MUG", 2000, 1)]),
            shopper: Shopper {
                identity: Some("ann@example.com".into()),
                prior_orders: 1,
                email: true,
                email_consent: Consent::Subscribed,
                ..Shopper::default()
            },
            policy: Policy {
                holdout_basis_points: 0,
                ..Policy::default()
            },
            candidates: vec![
                affinity("KETTLE", Tier::Moderate, 0.4),
                affinity("LID", Tier::Moderate, 0.3),
                affinity("COASTER", Tier::Moderate, 0.2),
                affinity("SPOON", Tier::Moderate, 0.1),
            ],
            catalog: catalog(),
            bundles: BTreeMap::new(),
            median: Some(1500),
            top_fifth: Some(5000),
        }
    }

    fn decide(c: &Case) -> Plan {
        let basket: Vec<BasketLine> = c
            .order
            .lines
            .iter()
            .filter(|l| l.sku.is_some())
            .map(|l| BasketLine {
                product: l.sku.clone().unwrap(),
                quantity: l.quantity,
                unit_price: l.unit_price,
                gift_card: l.gift_card,
            })
            .collect();
        let catalog: BTreeMap<String, std::sync::Arc<Variant>> = c
            .catalog
            .iter()
            .map(|(k, v)| (k.clone(), std::sync::Arc::new(v.clone())))
            .collect();
        plan(&PlanInput {
            store: "demo",
            salt: b"salt",
            policy: &c.policy,
            currency: usd(),
            order: &c.order,
            basket: &basket,
            shopper: &c.shopper,
            catalog: &catalog,
            candidates: &c.candidates,
            bundles: &c.bundles,
            median_order: c.median,
            top_fifth_order: c.top_fifth,
            now: Timestamp(T0),
            seen_at: Timestamp(T0),
        })
    }

    /// A plan as a store owner reads it: recipe, offer, touches (hours after the order),
    /// then every reason.
    fn render(p: &Plan) -> String {
        let mut out = String::new();
        let recipe = p.recipe.map_or("none", Recipe::as_str);
        out += &format!("recipe {recipe}");
        if p.holdout {
            out += " (holdout)";
        }
        out += "\n";
        match &p.offer {
            Some(o) => {
                out += &format!("offer {} {}", o.product, money(o.price, o.currency));
                for (on, flag) in [(o.trust, "trust"), (o.urgency, "urgency")] {
                    if on {
                        out += &format!(" +{flag}");
                    }
                }
                if let Some(code) = &o.discount_code {
                    out += &format!(" code {code}");
                }
                out += "\n";
            }
            None => out += "no offer\n",
        }
        for t in &p.touches {
            let after = (t.due_at.0 - T0) / MINUTE;
            let after = match (after % 1440, after % 60) {
                _ if after == 0 => "0".to_string(),
                (0, _) => format!("{}d", after / 1440),
                (_, 0) => format!("{}h", after / 60),
                _ => format!("{after}m"),
            };
            out += &format!(
                "  {} {} +{after}{}\n",
                t.kind.as_str(),
                t.channel.as_str(),
                if t.after_delivery {
                    " (after delivery)"
                } else {
                    ""
                }
            );
        }
        for r in &p.reasons {
            out += &format!("- {r}\n");
        }
        out
    }

    /// Every case: a name, how it differs from the default case, and what it must print.
    fn cases() -> Vec<(&'static str, Case)> {
        let mut out = Vec::new();
        let mut add = |name, f: &dyn Fn(&mut Case)| {
            let mut c = case();
            f(&mut c);
            out.push((name, c));
        };
        add("cross_sell_prefers_add_on_at_most_40_percent", &|_| {});
        add("welcome_first_order_over_median", &|c| {
            c.shopper.prior_orders = 0;
            c.policy
                .discount_codes
                .insert(Recipe::Welcome, "WELCOME10".into());
        });
        add(
            "welcome_and_cross_sell_share_one_look_at_candidates",
            &|c| {
                c.shopper.prior_orders = 0;
                c.candidates = vec![popular("STRAW"), popular("GIFT")];
            },
        );
        add("welcome_not_under_threshold", &|c| {
            c.shopper.prior_orders = 0;
            c.median = Some(2500);
        });
        add("replenishment_of_a_consumable", &|c| {
            c.order = order(&[("BEANS", 1500, 2)]);
            c.shopper.phone = true;
            c.shopper.sms_consent = Consent::Subscribed;
        });
        add("replenishment_offers_what_was_bought_before", &|c| {
            c.order = order(&[("BEANS", 1500, 1)]);
            c.shopper.bought.insert("BEANS".into());
            c.policy.replenish_lead_days = 5;
        });
        add("upgrade_on_third_purchase_in_category", &|c| {
            c.shopper.categories.insert("Kitchen".into(), 2);
        });
        add("upgrade_not_before_third", &|c| {
            c.shopper.categories.insert("Kitchen".into(), 1);
            c.policy.recipes = vec![Recipe::Upgrade];
        });
        add("bundle_completion_configured", &|c| {
            c.bundles.insert(
                "brew".into(),
                vec!["MUG".into(), "KETTLE".into(), "LID".into()],
            );
            c.policy.recipes = vec![Recipe::Bundle, Recipe::CrossSell];
        });
        add("bundle_frequent_pair_skips_price_window", &|c| {
            c.candidates[0] = affinity("KETTLE", Tier::Strong, 0.4);
            c.policy.recipes = vec![Recipe::Bundle];
        });
        add("bundle_best_seller_is_not_a_frequent_bundle", &|c| {
            let mut best_seller = affinity("KETTLE", Tier::Strong, 0.4);
            if let Evidence::Affinity { rule, .. } = &mut best_seller.evidence[0] {
                rule.lift = 1.1;
            }
            c.candidates[0] = best_seller;
            c.policy.recipes = vec![Recipe::Bundle];
        });
        add("filters_reject_each_kind", &|c| {
            c.candidates = ["GIFT", "EBOOK", "LOW", "MEH", "MUG", "STRAW", "NOPE", "LID"]
                .into_iter()
                .map(popular)
                .collect();
            c.policy.min_rating = Some(300);
        });
        add("already_bought_is_rejected_except_replenishment", &|c| {
            c.shopper.bought.insert("COASTER".into());
            c.shopper.bought.insert("SPOON".into());
        });
        add("gift_cards_only", &|c| {
            c.order = order(&[("GIFT", 2500, 1)])
        });
        add("suppressed_unsubscribed", &|c| {
            c.shopper.suppressed = Some(Suppressed::Unsubscribed)
        });
        add("suppressed_manual", &|c| {
            c.shopper.suppressed = Some(Suppressed::Manual("asked by phone".into()))
        });
        add("suppressed_complained", &|c| {
            c.shopper.suppressed = Some(Suppressed::Complained)
        });
        add("under_min_order_value", &|c| {
            c.policy.min_order_value = 2500
        });
        add("b2b_tag", &|c| c.shopper.tags = vec!["Wholesale".into()]);
        add("vip_tag_on_order", &|c| c.order.tags = vec!["VIP".into()]);
        add("refund_cool_down", &|c| {
            c.shopper.last_refund_at = Some(Timestamp(T0 - 5 * DAY))
        });
        add("refund_cool_down_over", &|c| {
            c.shopper.last_refund_at = Some(Timestamp(T0 - 31 * DAY))
        });
        add("consent_eu_requires_subscription", &|c| {
            c.shopper.email_consent = Consent::Unknown;
            c.order.shipping = Some(Region {
                country: Some("de".into()),
                ..Region::default()
            });
        });
        add("consent_us_soft_opt_in", &|c| {
            c.shopper.email_consent = Consent::Unknown
        });
        add("consent_required_by_store", &|c| {
            c.shopper.email_consent = Consent::NotSubscribed;
            c.policy.email_consent = EmailConsent::Required;
        });
        add("sms_with_consent", &|c| {
            c.shopper.phone = true;
            c.shopper.sms_consent = Consent::Subscribed;
        });
        add("top_fifth_gets_no_urgency", &|c| {
            c.policy.urgency.insert(Recipe::CrossSell);
            c.order = order(&[("MUG", 2000, 3)]);
            c.top_fifth = Some(5000);
        });
        add("urgency_where_configured", &|c| {
            c.policy.urgency.insert(Recipe::CrossSell);
        });
        add("multi_currency_without_rate_offers_nothing", &|c| {
            c.order.currency = Currency::parse("EUR").unwrap();
        });
        add("multi_currency_prices_in_order_currency", &|c| {
            let eur = Currency::parse("EUR").unwrap();
            c.order.currency = eur;
            c.policy.exchange_rates.insert(eur, 0.9);
        });
        add("multi_currency_welcome_compares_in_store_currency", &|c| {
            let eur = Currency::parse("EUR").unwrap();
            c.shopper.prior_orders = 0;
            c.order.currency = eur;
            c.policy.exchange_rates.insert(eur, 0.9);
        });
        add("multi_currency_to_zero_decimal_currency", &|c| {
            let jpy = Currency::parse("JPY").unwrap();
            c.order = order(&[("MUG", 3000, 1)]);
            c.order.currency = jpy;
            c.policy.exchange_rates.insert(jpy, 150.0);
        });
        add("not_paid_yet", &|c| {
            c.order.financial_status = Some("pending".into())
        });
        add("too_old_to_follow_up", &|c| {
            c.order.created_at = Timestamp(T0 - 8 * DAY)
        });
        add("new_store_manual_then_category_then_popularity", &|c| {
            c.candidates = vec![
                Candidate {
                    product: "LID".into(),
                    group: 0,
                    score: 1.0,
                    evidence: vec![Evidence::Manual {
                        from: "MUG".into(),
                        priority: 1,
                        mode: PairingMode::Override,
                    }],
                },
                Candidate {
                    product: "COASTER".into(),
                    group: 4,
                    score: 3.0,
                    evidence: vec![Evidence::Category {
                        category: "Kitchen".into(),
                        orders: 3.0,
                    }],
                },
                popular("SPOON"),
            ];
            c.shopper.prior_orders = 0;
            c.median = None;
        });
        add("cancelled_order", &|c| {
            c.order.cancelled_at = Some(Timestamp(T0))
        });
        add("custom_items_only", &|c| c.order.lines[0].sku = None);
        add("digital_order_review_without_delivery", &|c| {
            c.order = order(&[("EBOOK", 700, 1)]);
            c.candidates = vec![popular("STRAW")];
        });
        out
    }

    /// Every case against its expected plan in `testdata/plans.txt`. After a deliberate
    /// change, `UPDATE_SNAPSHOTS=1 cargo test --lib plans_match` rewrites the file: review
    /// its diff like code.
    #[test]
    fn plans_match_snapshots() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/engine/testdata/plans.txt");
        let got: Vec<(String, String)> = cases()
            .iter()
            .map(|(name, c)| (name.to_string(), render(&decide(c))))
            .collect();
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            let text: String = got.iter().map(|(n, r)| format!("=== {n}\n{r}\n")).collect();
            std::fs::write(path, text).unwrap();
            return;
        }
        let want = std::fs::read_to_string(path).unwrap();
        let want: BTreeMap<&str, &str> = want
            .split("=== ")
            .filter(|s| !s.is_empty())
            .map(|s| s.split_once('\n').unwrap())
            .collect();
        for (name, render) in &got {
            check(name, render, want.get(name.as_str()).copied());
        }
        assert_eq!(want.len(), got.len(), "snapshot cases without a test case");
    }

    #[track_caller]
    fn check(name: &str, got: &str, want: Option<&str>) {
        let want =
            want.unwrap_or_else(|| panic!("no snapshot for {name}; see plans_match_snapshots"));
        assert_eq!(
            got.trim_end(),
            want.trim_end(),
            "case {name}: the plan differs from its snapshot\n--- got ---\n{got}\n--- want ---\n{want}"
        );
    }

    #[test]
    fn holdout_is_stable_keyed_and_about_ten_percent() {
        let mut c = case();
        c.policy.holdout_basis_points = 1000;
        c.policy.experiments = vec![Experiment {
            name: "discount".into(),
            variants: vec!["none".into(), "10%".into()],
        }];
        let mut held = 0;
        let mut tens = 0;
        for i in 0..10_000 {
            c.shopper.identity = Some(format!("c{i}@example.com"));
            let p = decide(&c);
            if p.holdout {
                held += 1;
                assert!(
                    p.touches.is_empty(),
                    "holdout gets no touches, the page included"
                );
                assert!(p.offer.is_some(), "the offer is kept for measurement");
            }
            if p.variants == [("discount".to_string(), "10%".to_string())] {
                tens += 1;
            }
        }
        assert!((900..=1100).contains(&held), "{held} of 10,000 held out");
        assert!(
            (4800..=5200).contains(&tens),
            "{tens} of 10,000 in variant 10%"
        );

        // The same customer is in the same group on every order: a guest and the account
        // they open later resolve to one customer record, which the identity names.
        c.shopper.identity = Some("customer:42".into());
        let first = decide(&c);
        c.shopper.prior_orders = 4;
        c.order.id = "2002".into();
        let later = decide(&c);
        assert_eq!(first.holdout, later.holdout);
        assert_eq!(first.variants, later.variants);

        // Another store's salt reshuffles: groups are not guessable across stores.
        let a: Vec<bool> = (0..200)
            .map(|i| bucket(b"salt", &["holdout", "demo", &format!("c{i}")], 10) == 0)
            .collect();
        let b: Vec<bool> = (0..200)
            .map(|i| bucket(b"pepper", &["holdout", "demo", &format!("c{i}")], 10) == 0)
            .collect();
        assert_ne!(a, b);
    }
}
