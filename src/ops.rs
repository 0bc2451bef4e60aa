//! Operations on one store's data that the CLI runs either against the database file (no
//! service running) or inside the service through the admin API: affinity rebuild, show
//! and export, and the CSV imports. Each returns a value (JSON for scripts) or writes a
//! stream, the same in both places.
//!
//! Nothing here knows HTTP or the command line.

use std::io::Write;

use serde_json::json;

use crate::config::{AffinityConfig, Config};
use crate::engine::affinity::{month_of, Decay, Month};
use crate::engine::plan::Suppressed;
use crate::engine::Timestamp;
use crate::storage::affinity::{ReadSettings, RuleRow};
use crate::storage::plans::{suppression_key, SuppressionRow};
use crate::storage::touches::TouchState;
use crate::storage::{self, Storage};

/// How many candidates `affinity show` lists.
const SHOW_CANDIDATES: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{0}")]
    Storage(#[from] storage::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("writing the output: {0}")]
    Io(#[from] std::io::Error),
}

/// `--decay none|config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecayChoice {
    None,
    Config,
}

impl DecayChoice {
    pub fn parse(s: &str) -> Result<DecayChoice, OpsError> {
        match s {
            "none" => Ok(DecayChoice::None),
            "config" => Ok(DecayChoice::Config),
            _ => Err(OpsError::Invalid(format!(
                "decay {s:?} is not known; use none (exact counts) or config (the configured half-life)"
            ))),
        }
    }

    fn decay(self, a: &AffinityConfig) -> Decay {
        match self {
            DecayChoice::None => Decay::None,
            DecayChoice::Config => a.decay(),
        }
    }
}

/// `--format csv|json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, OpsError> {
        match s {
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            _ => Err(OpsError::Invalid(format!(
                "format {s:?} is not known; use csv or json"
            ))),
        }
    }
}

fn settings(config: &Config, decay: DecayChoice, now: Timestamp) -> ReadSettings {
    ReadSettings {
        decay: decay.decay(&config.affinity),
        now: month_of(now) as Month,
        thresholds: config.affinity.thresholds,
    }
}

/// Recomputes a store's affinity from its stored orders. Holds the apply lock, so the
/// processor waits (it resumes where it was; nothing is lost).
pub fn affinity_rebuild(
    storage: &Storage,
    config: &Config,
    store: &str,
) -> Result<serde_json::Value, OpsError> {
    let started = std::time::Instant::now();
    let _applying = storage.apply_lock();
    let r = storage.rebuild_affinity(store, config.affinity.window_ms())?;
    Ok(json!({
        "store": store, "orders": r.orders, "transitions": r.transitions,
        "new_products": r.products, "pairs": r.pairs, "passes": r.passes, "changed": r.changed,
        "seconds": started.elapsed().as_secs_f64(),
        "read_ms": r.read_ms, "count_ms": r.count_ms, "write_ms": r.write_ms,
    }))
}

/// What is known about one product: its rules both ways and its ranked candidates.
pub fn affinity_show(
    storage: &Storage,
    config: &Config,
    store: &str,
    product: &str,
    now: Timestamp,
) -> Result<serde_json::Value, OpsError> {
    let snap = storage.snapshot()?;
    let key = snap.resolve_product(store, product)?.ok_or_else(|| {
        OpsError::Invalid(format!(
            "no product {product:?} in store {store}: give a SKU, a product handle or a product key from `affinity export`"
        ))
    })?;
    let rs = settings(config, DecayChoice::Config, now);
    let rules = snap.rules_from(store, &key, &rs)?;
    let candidates = snap.candidates(store, std::slice::from_ref(&key), &rs, SHOW_CANDIDATES)?;
    Ok(json!({
        "store": store, "product": key, "title": snap.title_of(store, &key)?,
        "rules": rules, "candidates": candidates,
    }))
}

/// The export contract's columns, in order.
pub const EXPORT_COLUMNS: [&str; 13] = [
    "antecedent",
    "antecedent_title",
    "consequent",
    "consequent_title",
    "kind",
    "pair_orders",
    "antecedent_orders",
    "consequent_orders",
    "total_orders",
    "support",
    "confidence",
    "lift",
    "tier",
];

/// Writes every rule of a store as CSV (header first) or JSON lines. Returns the count.
pub fn affinity_export(
    storage: &Storage,
    config: &Config,
    store: &str,
    format: Format,
    decay: DecayChoice,
    now: Timestamp,
    out: &mut dyn Write,
) -> Result<u64, OpsError> {
    let snap = storage.snapshot()?;
    let rs = settings(config, decay, now);
    let (mut csv, mut json_out) = match format {
        Format::Csv => (Some(csv::Writer::from_writer(out)), None),
        Format::Json => (None, Some(out)),
    };
    if let Some(w) = csv.as_mut() {
        w.write_record(EXPORT_COLUMNS)
            .map_err(|e| OpsError::Io(e.into()))?;
    }
    let count = |x: f64| match decay {
        DecayChoice::None => format!("{}", x.round() as u64),
        DecayChoice::Config => format!("{x:.4}"),
    };
    let mut failed: Option<OpsError> = None;
    let n = snap.export_rules(store, &rs, |row: RuleRow| {
        let r = &row.rule;
        let result = match (csv.as_mut(), json_out.as_mut()) {
            (Some(w), _) => w
                .write_record([
                    row.antecedent.as_str(),
                    row.antecedent_title.as_str(),
                    row.consequent.as_str(),
                    row.consequent_title.as_str(),
                    r.kind.as_str(),
                    &count(r.pair_orders),
                    &count(r.antecedent_orders),
                    &count(r.consequent_orders),
                    &count(r.total_orders),
                    &format!("{:.6}", r.support),
                    &format!("{:.6}", r.confidence),
                    &format!("{:.4}", r.lift),
                    r.tier.map_or("", |t| t.as_str()),
                ])
                .map_err(|e| OpsError::Io(e.into())),
            (None, Some(w)) => {
                let counts = |x: f64| match decay {
                    DecayChoice::None => json!(x.round() as u64),
                    DecayChoice::Config => json!(x),
                };
                let v = json!({
                    "antecedent": row.antecedent, "antecedent_title": row.antecedent_title,
                    "consequent": row.consequent, "consequent_title": row.consequent_title,
                    "kind": r.kind.as_str(), "pair_orders": counts(r.pair_orders),
                    "antecedent_orders": counts(r.antecedent_orders),
                    "consequent_orders": counts(r.consequent_orders),
                    "total_orders": counts(r.total_orders), "support": r.support,
                    "confidence": r.confidence, "lift": r.lift,
                    "tier": r.tier.map(|t| t.as_str()), "mean_gap_days": r.mean_gap_days,
                });
                w.write_all(format!("{v}\n").as_bytes())
                    .map_err(OpsError::Io)
            }
            (None, None) => Ok(()),
        };
        if let Err(e) = result {
            failed.get_or_insert(e);
            return Err(storage::Error::Codec("output closed".into()));
        }
        Ok(())
    });
    if let Some(e) = failed {
        return Err(e);
    }
    let n = n?;
    if let Some(mut w) = csv {
        w.flush()?;
    }
    if let Some(w) = json_out {
        w.flush()?;
    }
    Ok(n)
}

/// How far an import has got, for a progress bar or progress lines.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// "checking", "importing" or "rebuilding affinity".
    pub phase: &'static str,
    pub bytes: u64,
    pub total_bytes: u64,
    pub orders: u64,
}

/// Orders applied per transaction during an import.
const IMPORT_BATCH: usize = 2_000;
/// Row errors listed in full; the rest are counted.
const LIST_ERRORS: usize = 20;

fn open_file(path: &std::path::Path) -> Result<(std::fs::File, u64), OpsError> {
    let f = std::fs::File::open(path)
        .map_err(|e| OpsError::Invalid(format!("cannot open {}: {e}", path.display())))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((f, len))
}

fn file_error(path: &std::path::Path, e: crate::import::FileError) -> OpsError {
    OpsError::Invalid(format!("{}: {e}; nothing was imported", path.display()))
}

/// `skippable`: the import takes `--skip-bad-rows` (orders only).
fn rejected(
    path: &std::path::Path,
    errors: &[crate::import::RowError],
    total: u64,
    skippable: bool,
) -> OpsError {
    let mut m = format!(
        "{}: {total} row{} rejected; nothing was imported:\n",
        path.display(),
        if total == 1 { "" } else { "s" }
    );
    for e in errors {
        m.push_str(&format!("  {e}\n"));
    }
    if total > errors.len() as u64 {
        m.push_str(&format!("  ... and {} more\n", total - errors.len() as u64));
    }
    m.push_str(if skippable {
        "fix them and run the import again, or pass --skip-bad-rows to import the rest"
    } else {
        "fix them and run the import again"
    });
    OpsError::Invalid(m)
}

/// Reads a small import file whole with `read`: its rows, or, if any row is refused, an
/// error listing them (such imports are all rows or none).
fn read_whole<T>(
    path: &std::path::Path,
    read: impl FnOnce(
        std::io::BufReader<std::fs::File>,
    ) -> Result<(Vec<T>, Vec<crate::import::RowError>), crate::import::FileError>,
) -> Result<Vec<T>, OpsError> {
    let (f, _) = open_file(path)?;
    let (rows, errors) = read(std::io::BufReader::new(f)).map_err(|e| file_error(path, e))?;
    if !errors.is_empty() {
        let n = errors.len() as u64;
        return Err(rejected(
            path,
            &errors[..errors.len().min(LIST_ERRORS)],
            n,
            false,
        ));
    }
    Ok(rows)
}

/// The currency of a store in the config.
fn store_currency(config: &Config, store: &str) -> Result<crate::engine::Currency, OpsError> {
    config
        .store(store)
        .map(|s| s.currency)
        .ok_or_else(|| OpsError::Invalid(format!("no store {store:?} in the config")))
}

/// Imports order history from a Shopify orders export or the native orders CSV.
///
/// Two passes: the first reads the whole file and checks every row (nothing is written
/// if one is bad, unless `skip_bad_rows`); the second applies orders in batches of
/// 2,000, each its own transaction, then rebuilds the store's affinity once. A marker
/// records the import while it runs (nothing shows it yet: `status` should); if it is
/// interrupted, running the same import again completes it (applying an order twice
/// changes nothing).
pub fn import_orders(
    storage: &Storage,
    config: &Config,
    store: &str,
    path: &std::path::Path,
    skip_bad_rows: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<serde_json::Value, OpsError> {
    use std::collections::HashSet;
    let currency = store_currency(config, store)?;
    // Pass 1: check everything.
    let (f, total_bytes) = open_file(path)?;
    let mut reader = crate::import::OrdersReader::new(std::io::BufReader::new(f), currency)
        .map_err(|e| file_error(path, e))?;
    let format = match reader.format() {
        crate::import::OrdersFormat::Shopify => "shopify",
        crate::import::OrdersFormat::Native => "native",
    };
    let snap = storage.snapshot()?;
    let mut errors = Vec::new();
    let mut error_count = 0u64;
    let (mut orders, mut lines) = (0u64, 0u64);
    let mut customers: HashSet<u64> = HashSet::new();
    let mut skus: std::collections::HashMap<String, bool> = Default::default();
    let mut unknown_lines = 0u64;
    let hash = |s: &str| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        s.hash(&mut h);
        h.finish()
    };
    while let Some(item) = reader.next() {
        match item {
            Ok(o) => {
                orders += 1;
                lines += o.order.lines.len() as u64;
                let who = o
                    .order
                    .customer
                    .as_ref()
                    .and_then(|c| c.platform_id.clone())
                    .or_else(|| o.order.contact_email().map(|e| e.to_ascii_lowercase()));
                if let Some(w) = who {
                    customers.insert(hash(&w));
                }
                for l in &o.order.lines {
                    if snap.variant_of_line(store, l)?.is_some() {
                        continue;
                    }
                    let key = l.sku.clone().unwrap_or_default();
                    unknown_lines += 1;
                    skus.entry(key).or_insert(false);
                }
            }
            Err(e) => {
                error_count += 1;
                if errors.len() < LIST_ERRORS {
                    errors.push(e);
                }
            }
        }
        if orders % 10_000 == 0 {
            progress(Progress {
                phase: "checking",
                bytes: reader.position(),
                total_bytes,
                orders,
            });
        }
    }
    drop(snap);
    if error_count > 0 && !skip_bad_rows {
        return Err(rejected(path, &errors, error_count, true));
    }
    // Pass 2: apply.
    let started = std::time::Instant::now();
    let _applying = storage.apply_lock();
    storage.set_import_marker(store, Some(&format!("orders from {}", path.display())))?;
    let (f, _) = open_file(path)?;
    let mut reader = crate::import::OrdersReader::new(std::io::BufReader::new(f), currency)
        .map_err(|e| file_error(path, e))?;
    let mut batch = Vec::with_capacity(IMPORT_BATCH);
    let (mut applied, mut new_orders) = (0u64, 0u64);
    loop {
        let item = reader.next();
        let done = item.is_none();
        if let Some(Ok(o)) = item {
            batch.push(o.order);
        }
        if batch.len() >= IMPORT_BATCH || (done && !batch.is_empty()) {
            new_orders +=
                crate::pipeline::processor::apply_imported(storage, store, currency, &batch)?
                    as u64;
            applied += batch.len() as u64;
            batch.clear();
            progress(Progress {
                phase: "importing",
                bytes: reader.position(),
                total_bytes,
                orders: applied,
            });
        }
        if done {
            break;
        }
    }
    progress(Progress {
        phase: "rebuilding affinity",
        bytes: total_bytes,
        total_bytes,
        orders: applied,
    });
    let rebuilt = storage.rebuild_affinity(store, config.affinity.window_ms())?;
    storage.sync()?;
    storage.set_import_marker(store, None)?;
    let mut unknown: Vec<String> = skus.into_keys().filter(|s| !s.is_empty()).collect();
    unknown.sort();
    let unknown_count = unknown.len();
    unknown.truncate(LIST_ERRORS);
    Ok(json!({
        "store": store, "file": path.display().to_string(), "format": format,
        "orders": orders, "new_orders": new_orders, "line_items": lines,
        "customers": customers.len(),
        "unknown_skus": unknown_count, "unknown_sku_examples": unknown,
        "uncatalogued_line_items": unknown_lines,
        "rejected": error_count,
        "rejected_rows": errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        "affinity": rebuilt,
        "seconds": started.elapsed().as_secs_f64(),
    }))
}

/// Imports a Shopify product export or the native catalog CSV: all rows or none. When the
/// import changes how variants fold into products, affinity is rebuilt.
pub fn import_catalog(
    storage: &Storage,
    config: &Config,
    store: &str,
    path: &std::path::Path,
) -> Result<serde_json::Value, OpsError> {
    let currency = store_currency(config, store)?;
    let (f, _) = open_file(path)?;
    let reader = crate::import::CatalogReader::new(std::io::BufReader::new(f), currency)
        .map_err(|e| file_error(path, e))?;
    let format = match reader.format() {
        crate::import::CatalogFormat::Shopify => "shopify",
        crate::import::CatalogFormat::Native => "native",
    };
    let ignored = reader.ignored_columns().to_vec();
    let mut patches = Vec::new();
    let mut errors = Vec::new();
    let mut error_count = 0u64;
    let mut positions: std::collections::HashMap<String, u32> = Default::default();
    for item in reader {
        match item {
            Ok(p) => {
                let key = match (&p.sku, &p.handle) {
                    (Some(s), _) => format!("sku:{s}"),
                    (None, Some(h)) => {
                        // A variant without a SKU: known by its handle and position.
                        let n = positions.entry(h.clone()).or_default();
                        *n += 1;
                        format!("handle:{h}#{n}")
                    }
                    (None, None) => continue,
                };
                patches.push((key, p));
            }
            Err(e) => {
                error_count += 1;
                if errors.len() < LIST_ERRORS {
                    errors.push(e);
                }
            }
        }
    }
    if error_count > 0 {
        return Err(rejected(path, &errors, error_count, false));
    }
    let _applying = storage.apply_lock();
    type Patch<'a> = Box<dyn Fn(&mut crate::engine::catalog::Variant) + 'a>;
    let entries: Vec<(String, Patch<'_>)> = patches
        .iter()
        .map(|(k, p)| {
            (
                k.clone(),
                Box::new(move |v: &mut _| p.apply(v)) as Patch<'_>,
            )
        })
        .collect();
    let w = storage.upsert_catalog(store, &entries)?;
    let rebuilt = if w.keys_changed {
        Some(storage.rebuild_affinity(store, config.affinity.window_ms())?)
    } else {
        None
    };
    Ok(json!({
        "store": store, "file": path.display().to_string(), "format": format,
        "rows": patches.len(), "created": w.created, "updated": w.updated,
        "ignored_columns": ignored,
        "affinity_rebuilt": rebuilt.map(|r| json!({"orders": r.orders, "pairs": r.pairs})),
    }))
}

/// Replaces a store's manual pairings with a CSV's: all rows or none.
pub fn import_pairings(
    storage: &Storage,
    store: &str,
    path: &std::path::Path,
) -> Result<serde_json::Value, OpsError> {
    use crate::engine::affinity::PairingMode;
    let rows = read_whole(path, crate::import::read_pairings)?;
    let snap = storage.snapshot()?;
    let mut out = Vec::new();
    for r in &rows {
        // A SKU of a catalogued variant is stored under its product key.
        let key = |k: &str| -> Result<String, OpsError> {
            Ok(snap
                .resolve_product(store, k)?
                .unwrap_or_else(|| k.to_string()))
        };
        out.push((
            key(&r.antecedent)?,
            key(&r.consequent)?,
            crate::storage::records::PairingRow {
                priority: r.priority,
                mode: match r.mode {
                    crate::import::PairingMode::Override => PairingMode::Override,
                    crate::import::PairingMode::Fallback => PairingMode::Fallback,
                },
            },
        ));
    }
    drop(snap);
    storage.replace_pairings(store, &out)?;
    Ok(json!({"store": store, "file": path.display().to_string(), "pairings": out.len()}))
}

/// Adds a suppression list CSV to a store's list: all rows or none.
pub fn import_suppressions(
    storage: &Storage,
    store: &str,
    path: &std::path::Path,
    name: &str,
    now: Timestamp,
) -> Result<serde_json::Value, OpsError> {
    let rows = read_whole(path, crate::import::suppressions::read_suppressions)?;
    let source = format!("import {name}");
    let entries: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.key.clone(),
                SuppressionRow {
                    reason: suppression_reason(r.reason.as_deref()),
                    at: now,
                    source: source.clone(),
                },
            )
        })
        .collect();
    let new = storage.suppress(store, &entries)?;
    Ok(json!({"store": store, "file": path.display().to_string(), "rows": rows.len(), "new": new}))
}

/// A reason as the CLI and CSV files give it.
pub fn suppression_reason(r: Option<&str>) -> Suppressed {
    match r.map(str::trim) {
        Some(r) if r.eq_ignore_ascii_case("unsubscribed") => Suppressed::Unsubscribed,
        Some(r) if r.eq_ignore_ascii_case("complained") => Suppressed::Complained,
        Some(r) if !r.is_empty() => Suppressed::Manual(r.to_string()),
        _ => Suppressed::Manual("suppressed by the store".into()),
    }
}

fn reason_json(r: &Suppressed) -> serde_json::Value {
    match r {
        Suppressed::Unsubscribed => json!({"reason": "unsubscribed"}),
        Suppressed::Complained => json!({"reason": "complained"}),
        Suppressed::Manual(m) => json!({"reason": "manual", "note": m}),
    }
}

fn contact_key(contact: &str) -> Result<String, OpsError> {
    suppression_key(contact).map_err(|e| {
        OpsError::Invalid(format!(
            "{e}; give the customer's email address or phone number"
        ))
    })
}

/// `customer suppress`: never message this contact again (durable before it returns).
pub fn customer_suppress(
    storage: &Storage,
    store: &str,
    contact: &str,
    reason: Option<&str>,
    now: Timestamp,
) -> Result<serde_json::Value, OpsError> {
    let key = contact_key(contact)?;
    let row = SuppressionRow {
        reason: suppression_reason(reason),
        at: now,
        source: "cli".into(),
    };
    let new = storage.suppress(store, &[(key.clone(), row.clone())])? == 1;
    Ok(
        json!({"store": store, "contact": key, "suppressed": true, "new": new,
        "reason": reason_json(&row.reason)}),
    )
}

/// `pause` (`pause = true`) or `resume`: the store's durable pause row, written before it
/// returns (the service then sets the scheduler's flag; without a service the next `serve`
/// reads it). A pause already in force keeps its time. `paused_since`: when the pause in
/// force (or, resuming, the one ended) began; `changed`: false when the store already was
/// in that state. `still_sending`: sends in flight that a pause did not see finish (the
/// service fills it in).
pub fn set_paused(
    storage: &Storage,
    store: &str,
    pause: bool,
    source: &str,
    now: Timestamp,
) -> Result<serde_json::Value, OpsError> {
    let row = crate::storage::pause::PauseRow {
        since: now,
        source: source.to_string(),
    };
    let before = storage.set_paused(store, pause.then_some(&row))?;
    let changed = before.is_some() != pause;
    let shown = if pause { before.or(Some(row)) } else { before };
    Ok(json!({"store": store, "paused": pause, "changed": changed,
        "paused_since": shown.as_ref().map(|r| r.since.to_rfc3339()),
        "paused_by": shown.map(|r| r.source), "still_sending": 0}))
}

/// `customer unsuppress`: takes a contact off the list.
pub fn customer_unsuppress(
    storage: &Storage,
    store: &str,
    contact: &str,
) -> Result<serde_json::Value, OpsError> {
    let key = contact_key(contact)?;
    let was = storage.unsuppress(store, &key)?;
    Ok(json!({"store": store, "contact": key, "suppressed": false, "was_suppressed": was}))
}

/// `customer show`: what the appliance knows of one contact: the suppression list, the
/// customer's history and consent, and the plans of their orders.
pub fn customer_show(
    storage: &Storage,
    store: &str,
    contact: &str,
) -> Result<serde_json::Value, OpsError> {
    let key = contact_key(contact)?;
    let snap = storage.snapshot()?;
    let suppression = snap.suppression_of(store, &key)?.map(|r| {
        let mut v = reason_json(&r.reason);
        v["at"] = json!(r.at.to_rfc3339());
        v["source"] = json!(r.source);
        v
    });
    let customer = match key.split_once(':') {
        Some(("email", e)) => storage.customer_by(store, &storage::Lookup::Email(e.into()))?,
        _ => None,
    };
    let customer_json = match &customer {
        None => serde_json::Value::Null,
        Some(c) => {
            let mut plans = Vec::new();
            for (at, order) in snap.customer_orders(store, c.id, None, 50)? {
                let p = snap.plan(store, &order)?;
                plans.push(json!({
                    "order": order, "at": Timestamp(at).to_rfc3339(),
                    "name": p.as_ref().map(|p| p.order_name.clone()),
                    "status": p.as_ref().map(|p| p.status.as_str()),
                    "recipe": p.as_ref().and_then(|p| p.plan.recipe).map(|r| r.as_str()),
                    "holdout": p.as_ref().map(|p| p.plan.holdout),
                }));
            }
            let money = |minor: i64| c.currency.map(|cur| cur.format_minor(minor));
            json!({
                "id": c.id, "orders": c.order_count, "spent": money(c.spent),
                "refunded": money(c.refunded),
                "currency": c.currency.map(|c| c.as_str().to_string()),
                "first_order_at": c.first_order_at.map(|t| t.to_rfc3339()),
                "last_order_at": c.last_order_at.map(|t| t.to_rfc3339()),
                "last_refund_at": snap.last_refund(store, c.id)?.map(|t| t.to_rfc3339()),
                "email_consent": format!("{:?}", c.email_consent).to_lowercase(),
                "sms_consent": format!("{:?}", c.sms_consent).to_lowercase(),
                "tags": c.tags, "plans": plans,
            })
        }
    };
    let tickets: Vec<_> = snap
        .timed_tickets(store, Some(&key))?
        .into_iter()
        .map(|(_, t)| {
            let mut v = t.json();
            v["needs_recovery"] = json!(t.ticket.needs_recovery());
            v
        })
        .collect();
    let recovery = tickets.iter().any(|t| t["needs_recovery"] == true);
    Ok(
        json!({"store": store, "contact": key, "suppressed": suppression,
        "tickets": tickets, "needs_recovery": recovery, "customer": customer_json}),
    )
}

/// `explain ORDER`: an order's plan and every reason behind it. The JSON is a contract
/// (README "explain").
pub fn explain(storage: &Storage, store: &str, order: &str) -> Result<serde_json::Value, OpsError> {
    let snap = storage.snapshot()?;
    let Some(rec) = snap.find_plan(store, order)? else {
        let known = snap
            .order(store, order)?
            .and_then(|s| s.order.map(|o| (o, s.source)));
        let why = match known {
            Some((_, Some(crate::engine::Source::Import))) => {
                "it was imported; imported orders are history and are never planned".to_string()
            }
            Some(_) if snap.queued(store, order)? => {
                "it is waiting to be planned; try again in a moment".to_string()
            }
            Some(_) => "it arrived before this version planned offers, and has not changed since"
                .to_string(),
            None => format!(
                "no order {order:?} in store {store}; give the platform order id or its name such as #1042"
            ),
        };
        return Err(OpsError::Invalid(format!(
            "no plan for order {order}: {why}"
        )));
    };
    let p = &rec.plan;
    let offer = p.offer.as_ref().map(|o| {
        let mut v = crate::outbound::offer_json(o);
        v["trust"] = json!(o.trust);
        v["urgency"] = json!(o.urgency);
        v
    });
    let timers = snap.touches_of(store, &rec.order_id)?;
    let touches: Vec<_> = p
        .touches
        .iter()
        .map(|t| {
            // The timer of this touch, if it has one (the page is served, not scheduled).
            let timer = timers
                .iter()
                .rev()
                .find(|(_, x)| x.kind == t.kind && x.planned_due == t.due_at);
            let (state, note) = match timer.map(|(_, x)| &x.state) {
                None => (None, None),
                Some(s) => (
                    Some(s.as_str()),
                    match s {
                        TouchState::Deferred { reason }
                        | TouchState::Skipped { reason }
                        | TouchState::Dead { reason } => Some(reason.clone()),
                        _ => None,
                    },
                ),
            };
            json!({"kind": t.kind.as_str(), "channel": t.channel.as_str(),
                "due_at": t.due_at.to_rfc3339(), "after_delivery": t.after_delivery,
                "sent": rec.sent.contains(&t.kind),
                "touch_id": timer.map(|(id, _)| id), "state": state, "state_reason": note,
                "timer_due_at": timer.map(|(_, x)| x.due_at.to_rfc3339())})
        })
        .collect();
    let variants: serde_json::Map<String, serde_json::Value> = p
        .variants
        .iter()
        .map(|(e, v)| (e.clone(), json!(v)))
        .collect();
    let (status_at, ended_by) = match &rec.status {
        crate::engine::lifecycle::Status::Active => (None, None),
        crate::engine::lifecycle::Status::Cancelled { at } => (Some(at.to_rfc3339()), None),
        crate::engine::lifecycle::Status::Ended { at, by_order } => {
            (Some(at.to_rfc3339()), Some(by_order.clone()))
        }
    };
    let response = snap
        .offer_response(store, &rec.order_id)?
        .map(|r| json!({"accepted": r.accepted, "at": r.at.to_rfc3339(), "via_touch": r.via}));
    let conversion = snap
        .conversion(store, &rec.order_id)?
        .map(|c| conversion_json(&c));
    // How the order reached us: a webhook, the sync (`reconciled`), a fetch after a thin
    // webhook (`fetched`).
    let source = snap
        .order(store, &rec.order_id)?
        .and_then(|s| s.source)
        .map(|s| s.as_str());
    Ok(json!({
        "store": store, "order": rec.order_id, "name": rec.order_name, "source": source,
        "recipe": p.recipe.map(|r| r.as_str()), "offer": offer, "holdout": p.holdout,
        "offer_response": response, "conversion": conversion,
        "variants": variants, "touches": touches, "reasons": p.reasons,
        "status": rec.status.as_str(), "status_at": status_at, "ended_by": ended_by,
        "revision": rec.revision, "refunded_at": rec.refunded_at.map(|t| t.to_rfc3339()),
        "history": rec.history,
    }))
}

/// A conversion as `explain` and the report show it.
pub fn conversion_json(c: &crate::engine::attribution::Conversion) -> serde_json::Value {
    let engagement = |e: &crate::engine::attribution::Engagement| {
        json!({"touch_id": e.touch, "kind": e.kind.as_str(), "channel": e.channel.as_str(),
            "what": e.what, "at": e.at.to_rfc3339()})
    };
    json!({
        "order": c.order, "at": c.at.to_rfc3339(), "product": c.product, "recipe": c.recipe,
        "revenue_minor": c.revenue,
        "credited": engagement(c.credited()),
        "contributing": c.contributing.iter().map(engagement).collect::<Vec<_>>(),
        "reversed": c.reversed.as_ref().map(|r| json!({"at": r.at.to_rfc3339(), "why": r.why})),
    })
}

/// `customer ticket-open|ticket-close`: a support ticket pauses the customer's touches
/// while open; closed with a poor rating (1-2) it routes them to a person.
pub fn customer_ticket(
    storage: &Storage,
    store: &str,
    contact: &str,
    ticket: &str,
    open: bool,
    csat: Option<u8>,
    now: Timestamp,
) -> Result<serde_json::Value, OpsError> {
    let key = contact_key(contact)?;
    let ticket = ticket.trim();
    if ticket.is_empty() {
        return Err(OpsError::Invalid(
            "--ticket is empty: give the help desk's ticket id".into(),
        ));
    }
    if let Some(c) = csat.filter(|c| !(1..=5).contains(c)) {
        return Err(OpsError::Invalid(format!(
            "--csat {c}: give a satisfaction rating from 1 to 5"
        )));
    }
    if open && csat.is_some() {
        return Err(OpsError::Invalid(
            "--csat goes with ticket-close (a rating comes when a ticket is closed)".into(),
        ));
    }
    let change = crate::storage::intake::TicketChange {
        contact: key.clone(),
        ticket: ticket.to_string(),
        open,
        csat,
        at: now,
    };
    let applied = storage.apply_tickets(store, &[change], now)?;
    let tickets = storage.snapshot()?.tickets(store, &key)?;
    Ok(
        json!({"store": store, "contact": key, "ticket": ticket, "open": open, "csat": csat,
        "open_tickets": tickets.iter().filter(|t| t.open).count(),
        "resumed": applied.resumed, "recovery": applied.recovery > 0,
        "needs_recovery": tickets.iter().any(|t| t.needs_recovery())}),
    )
}

/// `customer clear`: a person has followed up on the contact's poorly rated tickets, and
/// marketing may reach them again.
pub fn customer_clear(
    storage: &Storage,
    store: &str,
    contact: &str,
    now: Timestamp,
) -> Result<serde_json::Value, OpsError> {
    let key = contact_key(contact)?;
    let (cleared, resumed) = storage.clear_recovery(store, &key, now)?;
    Ok(json!({"store": store, "contact": key, "cleared": cleared, "resumed": resumed}))
}

/// Whom `customer export|erase` names: an email address, a phone number or the platform's
/// customer id.
fn identity(who: &str) -> Result<crate::storage::privacy::Identity, OpsError> {
    crate::storage::privacy::Identity::parse(who).map_err(|e| {
        OpsError::Invalid(format!(
            "{e}; give the customer's email address, phone number (+15551234567) or the platform's customer id"
        ))
    })
}

/// `customer export`: everything held about a customer, as JSON (see `privacy::export_json`).
pub fn customer_export(
    storage: &Storage,
    store: &str,
    who: &str,
    now: Timestamp,
) -> Result<serde_json::Value, OpsError> {
    let id = identity(who)?;
    let snap = storage.snapshot()?;
    let fp = snap.footprint(store, &id)?;
    let mut v = crate::privacy::export_json(&snap, &fp, now)?;
    if let Some(hint) = not_found_hint(who, &fp) {
        v["hint"] = json!(hint);
    }
    Ok(v)
}

/// When nothing is held about a bare number: it was read as the platform's customer id,
/// and may have been meant as a phone number.
fn not_found_hint(who: &str, fp: &crate::storage::privacy::Footprint) -> Option<String> {
    let who = who.trim();
    let bare_number = who.len() >= 7 && who.bytes().all(|b| b.is_ascii_digit());
    (fp.is_empty() && bare_number).then(|| {
        format!(
            "{who} was looked up as the platform's customer id; a phone number needs + and its country code (+{who} if it already has one)"
        )
    })
}

/// `customer erase`: what erasing the customer's personal data would remove, and with
/// `yes`, erases it (one durable transaction; see `Storage::erase`).
pub fn customer_erase(
    storage: &Storage,
    store: &str,
    who: &str,
    yes: bool,
    now: Timestamp,
) -> Result<serde_json::Value, OpsError> {
    let id = identity(who)?;
    // The processor must not apply an event of theirs between the look and the erase.
    let _applying = storage.apply_lock();
    let fp = storage.snapshot()?.footprint(store, &id)?;
    let found = json!({
        "customers": fp.customers.len(), "orders": fp.orders.len(),
        "events": fp.events.len(), "touches": fp.touches.len(),
        "tickets": fp.tickets.len(), "suppressions": fp.suppressions.len(),
    });
    if !yes || fp.is_empty() {
        return Ok(json!({"store": store, "who": who, "found": found,
            "held": !fp.is_empty(), "erased": null, "hint": not_found_hint(who, &fp)}));
    }
    let done = crate::privacy::erase(storage, &fp, now, None)?;
    Ok(json!({"store": store, "who": who, "found": found, "held": true, "erased": done}))
}

/// The order an intake names must exist: a platform order id or a name such as `#1042`.
fn known_order(storage: &Storage, store: &str, order: &str) -> Result<String, OpsError> {
    let snap = storage.snapshot()?;
    if let Some(p) = snap.find_plan(store, order)? {
        return Ok(p.order_id);
    }
    if snap.order(store, order)?.is_some() {
        return Ok(order.to_string());
    }
    Err(OpsError::Invalid(format!(
        "no order {order:?} in store {store}; give the platform order id or its name such as #1042"
    )))
}

/// `offer accept|decline ORDER`: what the customer did with the thank-you page offer
/// (an accepted one cancels touch-1).
pub fn offer_response(
    storage: &Storage,
    store: &str,
    order: &str,
    accepted: bool,
    now: Timestamp,
) -> Result<serde_json::Value, OpsError> {
    let id = known_order(storage, store, order)?;
    let (stored, changed) = storage.respond_to_offer(store, &id, accepted, None, now)?;
    Ok(
        json!({"store": store, "order": id, "accepted": stored.accepted,
        "at": stored.at.to_rfc3339(), "changed": changed}),
    )
}

/// The WooCommerce snippet of `store` with its values filled in: the public URL, the
/// store id and the key its thank-you pages sign offer tokens with (derived from the
/// store's link key, so it opens offers and nothing else).
pub fn offer_widget(
    storage: &Storage,
    config: &Config,
    store: &str,
) -> Result<serde_json::Value, OpsError> {
    let key = crate::engine::offer::order_token_key(&storage.link_key(store)?);
    let public_url = config.public_url.trim_end_matches('/');
    let snippet = include_str!("../assets/woocommerce/thank-you-offer.php")
        .replace("{{PUBLIC_URL}}", public_url)
        .replace("{{STORE}}", store)
        .replace("{{KEY}}", &key);
    // A store served over HTTPS will not load a script or fetch from plain HTTP.
    let warning = (!public_url.starts_with("https://")).then(|| {
        format!("public_url {public_url} is not https: a store's HTTPS thank-you page will not load the widget from it (mixed content); put the appliance behind TLS and set public_url to its https:// address")
    });
    Ok(
        json!({"store": store, "public_url": public_url, "key": key, "snippet": snippet,
        "warning": warning}),
    )
}

/// A touch of `store` by its id, as the CLI and the admin API give it.
fn known_touch(
    storage: &Storage,
    store: &str,
    id: &str,
) -> Result<(u64, crate::storage::touches::TouchRecord), OpsError> {
    let n: u64 = id.trim().parse().map_err(|_| {
        OpsError::Invalid(format!(
            "{id:?} is not a touch id; `explain ORDER` lists each touch's touch_id, the outbox line has it"
        ))
    })?;
    match storage.snapshot()?.touch(n)? {
        Some(t) if t.store == store => Ok((n, t)),
        _ => Err(OpsError::Invalid(format!(
            "no touch {n} in store {store}; `explain ORDER` lists each touch's touch_id"
        ))),
    }
}

/// `touch opened TOUCH [--at TIME]`: the customer opened that email (for stores whose
/// opens are reported; `opens_reported`).
pub fn touch_opened(
    storage: &Storage,
    store: &str,
    id: &str,
    at: Option<&str>,
    now: Timestamp,
) -> Result<serde_json::Value, OpsError> {
    let (n, t) = known_touch(storage, store, id)?;
    if t.channel != crate::engine::plan::Channel::Email
        || !matches!(t.state, crate::storage::touches::TouchState::Sent { .. })
    {
        return Err(OpsError::Invalid(format!(
            "touch {n} is a {} {} touch that is {}; only a sent email can be opened",
            t.kind.as_str(),
            t.channel.as_str(),
            t.state.as_str()
        )));
    }
    let at = match at {
        None => now,
        Some(text) => parse_time_arg(text)?,
    };
    storage.set_opened(n, at)?;
    Ok(json!({"store": store, "touch_id": n, "opened_at": at.to_rfc3339()}))
}

/// `touch resend TOUCH`: a copy of a touch, due now and decided like any other (the caps
/// may defer it; it is never dropped).
pub fn touch_resend(
    storage: &Storage,
    store: &str,
    id: &str,
    now: Timestamp,
) -> Result<serde_json::Value, OpsError> {
    let (n, t) = known_touch(storage, store, id)?;
    let new = storage
        .resend(n, now)?
        .ok_or_else(|| OpsError::Invalid(format!("touch {n} is gone")))?;
    Ok(
        json!({"store": store, "touch_id": n, "resend_touch_id": new,
        "order": t.order, "kind": t.kind.as_str(), "due_at": now.to_rfc3339()}),
    )
}

/// A dead letter as the CLI and the admin API show it.
fn dead_letter_json(
    snap: &crate::storage::Snapshot,
    id: u64,
    t: &crate::storage::touches::TouchRecord,
) -> Result<serde_json::Value, OpsError> {
    let reason = match &t.state {
        crate::storage::touches::TouchState::Dead { reason } => reason.clone(),
        s => s.as_str().to_string(),
    };
    Ok(
        json!({"touch_id": id, "store": t.store, "order": t.order, "kind": t.kind.as_str(),
        "channel": t.channel.as_str(), "due_at": t.due_at.to_rfc3339(), "reason": reason,
        "attempts": snap.attempts(id)?.map_or(0, |a| a.0)}),
    )
}

/// `deadletters list`: the store's dead letters, oldest first.
pub fn dead_letters(storage: &Storage, store: &str) -> Result<serde_json::Value, OpsError> {
    let snap = storage.snapshot()?;
    let items = snap
        .dead_letters(store)?
        .iter()
        .map(|(id, t)| dead_letter_json(&snap, *id, t))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json!({"store": store, "dead_letters": items}))
}

/// `deadletters show TOUCH`.
pub fn dead_letter(
    storage: &Storage,
    store: &str,
    id: &str,
) -> Result<serde_json::Value, OpsError> {
    let (n, t) = known_touch(storage, store, id)?;
    let snap = storage.snapshot()?;
    if !snap.dead_letters(store)?.iter().any(|(i, _)| *i == n) {
        return Err(OpsError::Invalid(format!(
            "touch {n} is not a dead letter (it is {}); `deadletters list` shows them",
            t.state.as_str()
        )));
    }
    dead_letter_json(&snap, n, &t)
}

/// `deadletters retry|drop TOUCH`.
pub fn settle_dead_letter(
    storage: &Storage,
    store: &str,
    id: &str,
    retry: bool,
    now: Timestamp,
) -> Result<serde_json::Value, OpsError> {
    let (n, t) = known_touch(storage, store, id)?;
    if !storage.settle_dead_letter(store, n, retry, now)? {
        return Err(OpsError::Invalid(format!(
            "touch {n} is not a dead letter (it is {}); `deadletters list` shows them",
            t.state.as_str()
        )));
    }
    Ok(
        json!({"store": store, "touch_id": n, "done": if retry { "retry" } else { "drop" },
        "at": now.to_rfc3339()}),
    )
}

/// `send-test --touch KIND --to CONTACT`: renders a real offer (the store's latest plan
/// with one, else a sample) as that touch and sends it through the channel the store routes
/// it to, in `dry_run` too (it goes to the operator, never to a customer). With the outbox
/// route nothing is sent: the rendered text is returned.
pub fn send_test(
    storage: &Storage,
    config: &crate::config::Config,
    store: &crate::config::StoreConfig,
    kind: &str,
    to: &str,
    now: Timestamp,
) -> Result<serde_json::Value, OpsError> {
    use crate::engine::plan::{Channel, TouchKind};
    use crate::outbound::{templates::Templates, Links, Message, Outcome, Router};
    let kind = TouchKind::parse(kind.trim()).filter(|k| k.is_customer_message()).ok_or_else(|| {
        OpsError::Invalid(format!(
            "--touch {kind:?} is not a touch kind; use touch1, sms, touch2, review, touch3, winback or anticipation"
        ))
    })?;
    let medium = if kind == TouchKind::Sms {
        Channel::Sms
    } else {
        Channel::Email
    };
    let to = to.trim();
    let (email, phone) = match medium {
        Channel::Sms if crate::outbound::twilio::is_e164(to) => (None, Some(to.to_string())),
        Channel::Sms => {
            return Err(OpsError::Invalid(format!(
                "--to {to:?}: an SMS needs a phone number in E.164 form such as +16175550100"
            )))
        }
        _ if to.contains('@') => (Some(to.to_string()), None),
        _ => {
            return Err(OpsError::Invalid(format!(
                "--to {to:?}: an email touch needs an email address"
            )))
        }
    };
    let snap = storage.snapshot()?;
    let plan = snap.a_plan_with_an_offer(&store.id)?;
    let templates = std::sync::Arc::new(
        Templates::load(config.templates_dir.as_deref()).map_err(OpsError::Invalid)?,
    );
    // A test send's id is outside the touch ids (high bit set): providers see a fresh
    // idempotency key each time, and its links lead to the "not valid" page.
    let mut id_bytes = [0u8; 8];
    getrandom::fill(&mut id_bytes).map_err(|e| OpsError::Invalid(format!("random source: {e}")))?;
    let touch_id = u64::from_le_bytes(id_bytes) | (1 << 63);
    let key = storage.link_key(&store.id)?;
    // The latest planned offer, else the catalog's first offerable product at its price.
    let offer = match plan.as_ref().and_then(|p| p.plan.offer.clone()) {
        Some(o) => Some(o),
        None => snap
            .an_offerable_variant(&store.id)?
            .map(|(key, v)| crate::engine::plan::Offer {
                product: key.strip_prefix("sku:").unwrap_or(&key).to_string(),
                sku: v.sku.clone(),
                variant_id: v.variant_id.clone(),
                title: v.title.clone(),
                price: v.price.unwrap_or_default(),
                currency: store.currency,
                discount_code: None,
                trust: false,
                urgency: false,
            }),
    };
    let m = Message {
        touch_id,
        store: store.id.clone(),
        kind,
        medium,
        order_id: plan.as_ref().map_or("test".into(), |p| p.order_id.clone()),
        order_name: plan
            .as_ref()
            .map_or("#TEST".into(), |p| p.order_name.clone()),
        customer: None,
        email,
        phone,
        recipe: plan.as_ref().and_then(|p| p.plan.recipe),
        links: Links::of(
            &config.public_url,
            &key,
            &store.id,
            touch_id,
            offer.is_some(),
        ),
        offer,
        image_url: None,
        due_at: now,
        at: now,
        ticket: None,
    };
    let router = Router::new(config, templates.clone());
    // The configured route even in a dry run: a test goes to the operator's own address.
    let Some(channel) = router.route_configured(&store.id, medium, kind) else {
        let t = &templates;
        let rendered = match medium {
            Channel::Sms => json!({"sms": t.sms(&m, &store.name).map_err(OpsError::Invalid)?}),
            _ => {
                let e = t.email(&m, &store.name).map_err(OpsError::Invalid)?;
                json!({"subject": e.subject, "text": e.text})
            }
        };
        return Ok(
            json!({"store": store.id, "touch": kind.as_str(), "channel": "outbox",
            "sent": false, "note": "this store routes it to the outbox: nothing was sent; here is what it says",
            "rendered": rendered}),
        );
    };
    let outcome = channel.send(&m);
    let (sent, detail) = match &outcome {
        Outcome::Sent { message_id } => (true, json!({"message_id": message_id})),
        Outcome::Retry { reason, .. } => (false, json!({"error": reason, "retryable": true})),
        Outcome::Dead { reason } | Outcome::Gone { reason } | Outcome::Unsubscribed { reason } => {
            (false, json!({"error": reason}))
        }
    };
    Ok(
        json!({"store": store.id, "touch": kind.as_str(), "channel": channel.name(),
        "to": to, "sent": sent, "result": detail,
        "offer": m.offer.as_ref().map(crate::outbound::offer_json)}),
    )
}

/// `replay --store ID [--from DATE] [--to DATE]`: the store's history as the appliance
/// would have handled it under today's configuration (see `crate::replay`).
pub fn replay(
    storage: &Storage,
    config: &crate::config::Config,
    store: &crate::config::StoreConfig,
    from: Option<&str>,
    to: Option<&str>,
    now: Timestamp,
) -> Result<serde_json::Value, OpsError> {
    let window = replay_window(from, to)?;
    let snap = storage.snapshot()?;
    let report = crate::replay::run(&snap, config, store, window, now)?;
    as_json(report)
}

/// A report as the JSON the CLI prints and the admin API answers.
fn as_json(report: impl serde::Serialize) -> Result<serde_json::Value, OpsError> {
    serde_json::to_value(report).map_err(|e| OpsError::Invalid(format!("encoding the report: {e}")))
}

/// A command line's date (from its start, or through its end with `end_of_day`, UTC) or
/// RFC 3339 time.
fn when(flag: &str, text: &str, end_of_day: bool) -> Result<Timestamp, OpsError> {
    let text = text.trim();
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let d = if end_of_day {
            d.succ_opt().unwrap_or(d)
        } else {
            d
        };
        let t = d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc();
        return Ok(Timestamp(t.timestamp_millis()));
    }
    crate::ingest::wire::parse_time(flag, text).map_err(|_| {
        OpsError::Invalid(format!(
            "{flag} {text:?} is not a date such as 2026-03-01 or a time such as 2026-03-01T00:00:00Z"
        ))
    })
}

/// `report --store ID [--since 30d|DATE] [--until DATE]`: measured lift against the
/// holdout group (see `crate::report`).
pub fn report(
    storage: &Storage,
    config: &crate::config::Config,
    store: &crate::config::StoreConfig,
    since: Option<&str>,
    until: Option<&str>,
    now: Timestamp,
) -> Result<serde_json::Value, OpsError> {
    as_json(report_of(storage, config, store, since, until, now)?)
}

/// [`report`] as the value (the status page draws it).
pub fn report_of(
    storage: &Storage,
    config: &crate::config::Config,
    store: &crate::config::StoreConfig,
    since: Option<&str>,
    until: Option<&str>,
    now: Timestamp,
) -> Result<crate::report::Report, OpsError> {
    // The moment the report is taken at: windows mature against it (a report of a past
    // period is the same whenever it is made).
    let until = match until.map(str::trim).filter(|s| !s.is_empty()) {
        Some(u) => when("--until", u, true)?,
        None => now,
    };
    let since = match since.map(str::trim).filter(|s| !s.is_empty()) {
        None => Timestamp(until.0 - 30 * 86_400_000),
        Some(s) => match ago_of(s) {
            Some(ms) => Timestamp(until.0 - ms),
            None => when("--since", s, false).map_err(|_| {
                OpsError::Invalid(format!(
                    "--since {s:?} is neither a span such as 30d, 12w or 48h nor a date such as 2026-03-01"
                ))
            })?,
        },
    };
    if since >= until {
        return Err(OpsError::Invalid(format!(
            "--since {} is not before --until {}: no order could be in that period",
            since.to_rfc3339(),
            until.to_rfc3339()
        )));
    }
    let snap = storage.snapshot()?;
    let period = crate::report::Period { since, until };
    Ok(crate::report::run(&snap, config, store, period)?)
}

/// A span such as `30d`, `12w` or `48h`, in ms.
fn ago_of(s: &str) -> Option<i64> {
    if !s.is_ascii() {
        return None;
    }
    let (n, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: i64 = n.parse().ok().filter(|n| *n > 0 && *n <= 100_000)?;
    let ms = match unit {
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return None,
    };
    Some(n * ms)
}

/// `--from` and `--to`: a date (from its start; `--to` through its end, UTC) or an RFC 3339
/// time.
fn replay_window(from: Option<&str>, to: Option<&str>) -> Result<crate::replay::Window, OpsError> {
    let window = crate::replay::Window {
        from: from
            .filter(|s| !s.trim().is_empty())
            .map(|s| when("--from", s, false))
            .transpose()?,
        to: to
            .filter(|s| !s.trim().is_empty())
            .map(|s| when("--to", s, true))
            .transpose()?,
    };
    if let (Some(f), Some(t)) = (window.from, window.to) {
        if f >= t {
            return Err(OpsError::Invalid(format!(
                "--from {} is not before --to {}: no order could be in that window",
                from.unwrap_or_default().trim(),
                to.unwrap_or_default().trim()
            )));
        }
    }
    Ok(window)
}

/// An RFC 3339 time given to `--at`.
fn parse_time_arg(text: &str) -> Result<Timestamp, OpsError> {
    crate::ingest::wire::parse_time("--at", text).map_err(|_| {
        OpsError::Invalid(format!(
            "--at {text:?} is not a time such as 2026-11-25T14:00:00Z"
        ))
    })
}

/// Syncs the store with its platform's API now (`upsell-appliance sync`, `POST
/// /api/sync`): what it found, and the store's sync as it now stands.
pub fn sync(
    storage: &Storage,
    config: &Config,
    store: &str,
    apis: &crate::pipeline::sync::Apis,
    clock: &dyn crate::clock::Clock,
) -> Result<serde_json::Value, OpsError> {
    let cfg = config
        .store(store)
        .ok_or_else(|| OpsError::Invalid(format!("no store {store:?} in the configuration")))?;
    let api = apis
        .get(store)
        .ok_or_else(|| OpsError::Invalid(crate::outbound::platform::no_api(cfg)))?;
    let since = storage.sync_state(store)?.orders_through;
    let synced = crate::pipeline::sync::sync_store(storage, config, cfg, api, clock)
        .map_err(|e| OpsError::Invalid(format!("the sync of store {store} failed: {e}")))?;
    Ok(serde_json::json!({
        "since": since.map(Timestamp::to_rfc3339),
        "synced": synced,
        "sync": crate::storage::sync::SyncView::from(storage.sync_state(store)?),
    }))
}

/// `order delivered ORDER [--at TIME]`: a delivery told by hand (for stores without
/// delivery events); the review request waits for one.
pub fn order_delivered(
    storage: &Storage,
    store: &crate::config::StoreConfig,
    order: &str,
    at: Option<&str>,
    now: Timestamp,
) -> Result<serde_json::Value, OpsError> {
    let cfg = store;
    let store = cfg.id.as_str();
    let id = known_order(storage, store, order)?;
    let at = match at {
        None => now,
        Some(text) => parse_time_arg(text)?,
    };
    // Moves the review request and touch-2 with the delivery.
    let facts = crate::engine::due::DeliveryFacts {
        delivered_at: Some(at),
        ..Default::default()
    };
    let anchors =
        crate::engine::due::anchors(&facts, &cfg.delivery, &cfg.offers.cadence).not_before(now);
    storage.set_delivered(store, &id, at, &anchors)?;
    Ok(json!({"store": store, "order": id, "delivered_at": at.to_rfc3339()}))
}
