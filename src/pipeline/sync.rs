//! The platforms' APIs feeding the pipeline: the sync job (`[jobs] sync`, hourly by
//! default, or `upsell-appliance sync`), which lists the orders changed since the last
//! successful sync and commits any the appliance has not seen (or a newer version of) as
//! events marked `reconciled`, and checks the webhook subscriptions; and the fetcher,
//! which completes BigCommerce's thin order webhooks by fetching each order.
//!
//! What either finds goes into the event log like a webhook and is applied, planned and
//! learnt from by the processor in its turn; the history's rules (a version is applied
//! once, an older one never replaces a newer one) make an order that arrives both ways
//! count once, whichever comes first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::clock::Clock;
use crate::config::{Config, StoreConfig};
use crate::engine::{Platform, Source, Timestamp};
use crate::outbound::platform::{reconcile_subscriptions, Api, ApiOrder};
use crate::storage::records::{EventHead, EventRecord};
use crate::storage::sync::SyncState;
use crate::storage::{Committed, NewEvent, Storage};

/// How far back the first sync of a store looks: beyond Shopify's 4 hours and
/// BigCommerce's 48 hours of webhook retries.
pub const FIRST_LOOKBACK_MS: i64 = 3 * 86_400_000;
/// Each sync lists again from this long before the last one started: the platform's
/// clock and ours differ, and an order may be committed there while we list.
pub const OVERLAP_MS: i64 = 15 * 60_000;
/// How long a sync waits for the processor to apply what was already received before it
/// decides which orders are missing (a webhook still in the queue is not a missed one).
const SETTLE: Duration = Duration::from_secs(10);

/// Each store's API, for the stores with `[stores.api]`.
pub type Apis = HashMap<String, Arc<Api>>;

/// The stores' APIs, over one agent with the `[outbound]` timeouts.
pub fn apis(config: &Config) -> Apis {
    let agent = crate::outbound::agent(config.outbound.connect_timeout, config.outbound.timeout);
    config
        .stores
        .iter()
        .filter_map(|s| Some((s.id.clone(), Arc::new(Api::of(s, agent.clone())?))))
        .collect()
}

/// What one store's sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Synced {
    pub store: String,
    /// Orders the platform listed as changed since the last sync.
    pub listed: usize,
    /// Orders the appliance had never seen, now fed in as `reconciled`.
    pub missed: usize,
    /// Orders it had an older version of.
    pub updated: usize,
    /// Topics the platform holds no active subscription to us for.
    pub missing_subscriptions: Vec<String>,
    /// Catalog entries refreshed from the platform's products (prices, stock, ids).
    pub catalog_variants: usize,
}

/// The records an order from the API is stored as: parsed like its webhook, marked with
/// where it came from, keyed so that the same version is stored once.
pub fn record(
    store: &StoreConfig,
    o: &ApiOrder,
    source: Source,
    key: String,
    now: Timestamp,
) -> EventRecord {
    let parsed = crate::ingest::reparse(store.platform, o.topic, &o.body, Some(&store.domain));
    EventRecord {
        head: EventHead {
            store: store.id.clone(),
            platform: store.platform,
            source,
            received_at: now,
            topic: o.topic.to_string(),
            dedupe_key: key,
            headers: vec![],
            parsed: super::record_of(parsed),
        },
        body: o.body.clone(),
    }
}

/// Syncs one store: the orders changed since the last successful sync, then the webhook
/// subscriptions. The outcome (or the error) is kept for the status page.
pub fn sync_store(
    storage: &Storage,
    config: &Config,
    store: &StoreConfig,
    api: &Api,
    clock: &dyn Clock,
) -> Result<Synced, String> {
    let started = clock.now();
    let mut state = storage.sync_state(&store.id).map_err(|e| e.to_string())?;
    let result = reconcile(storage, config, store, api, &state, clock);
    let now = clock.now();
    match &result {
        Ok(s) => {
            let since = state
                .orders_through
                .unwrap_or(Timestamp(started.0 - FIRST_LOOKBACK_MS));
            state.orders_through = Some(since.max(Timestamp(started.0 - OVERLAP_MS)));
            state.last_ok_at = Some(now);
            state.last_error = None;
            if s.missed > 0 {
                state.last_found = Some((now, s.missed as u64));
                state.found_total += s.missed as u64;
                log::warn!(
                    "store {}: reconciliation found {} order(s) whose webhooks never came (and {} newer version(s)); they are processed now",
                    store.id, s.missed, s.updated
                );
            }
            state.missing_topics = s.missing_subscriptions.clone();
            state.catalog_variants = s.catalog_variants as u64;
            state.subscriptions_at = Some(now);
            if !s.missing_subscriptions.is_empty() {
                log::warn!(
                    "store {}: {} holds no active webhook subscription for {}; run `upsell-appliance connect --store {}`",
                    store.id, store.platform.as_str(), s.missing_subscriptions.join(", "), store.id
                );
            }
        }
        Err(e) => {
            log::error!("store {}: sync failed: {e}", store.id);
            state.last_error = Some((now, e.clone()));
        }
    }
    storage
        .put_sync_state(&store.id, &state)
        .map_err(|e| e.to_string())?;
    result
}

fn reconcile(
    storage: &Storage,
    config: &Config,
    store: &StoreConfig,
    api: &Api,
    state: &SyncState,
    clock: &dyn Clock,
) -> Result<Synced, String> {
    let started = clock.now();
    let since = state
        .orders_through
        .unwrap_or(Timestamp(started.0 - FIRST_LOOKBACK_MS));
    let received = storage.last_seq().map_err(|e| e.to_string())?;
    let orders = api.orders_since(since).map_err(|e| e.to_string())?;
    // What was received before the listing is applied first, so that it counts as seen.
    let deadline = Instant::now() + SETTLE;
    while storage.processed_seq().map_err(|e| e.to_string())? < received
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let snap = storage.snapshot().map_err(|e| e.to_string())?;
    let now = clock.now();
    let mut records = Vec::new();
    let (mut missed, mut updated) = (Vec::new(), 0);
    for o in &orders {
        let known = snap
            .order(&store.id, &o.id)
            .map_err(|e| e.to_string())?
            .and_then(|s| s.order.map(|k| k.updated_at));
        match known {
            Some(at) if at >= o.updated_at => continue,
            Some(_) => updated += 1,
            None => missed.push(records.len()),
        }
        let key = format!("api:{}:{}", o.id, o.updated_at.0);
        records.push(record(store, o, Source::Reconciled, key, now));
    }
    drop(snap);
    let events = records
        .iter()
        .map(NewEvent::encode)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let committed = storage
        .commit_deliveries(&events, &[], now)
        .map_err(|e| e.to_string())?;
    // A version already stored (an earlier sync's overlap) is not found again.
    let missed = missed
        .iter()
        .filter(|&&i| matches!(committed[i], Committed::Stored(_)))
        .count();
    let subscriptions = reconcile_subscriptions(api, store, &config.public_url, false)
        .map_err(|e| e.to_string())?;
    let patches = api.products(store.currency).map_err(|e| e.to_string())?;
    let catalog_variants = refresh_catalog(storage, config, &store.id, patches)?;
    Ok(Synced {
        store: store.id.clone(),
        listed: orders.len(),
        missed,
        updated,
        catalog_variants,
        missing_subscriptions: subscriptions
            .into_iter()
            .filter(|t| t.action != "ok")
            .map(|t| t.topic)
            .collect(),
    })
}

/// Writes what the platform says of its products into the catalog: each variant under its
/// SKU, else under the key its variant id was learnt for, else its variant id. Only the
/// fields the platform knows change (cost, consumable days, upgrades, bundles, ratings stay
/// as imported). When a product's variants now fold differently, affinity is rebuilt, as
/// an import does. Returns how many entries were written.
pub fn refresh_catalog(
    storage: &Storage,
    config: &Config,
    store: &str,
    patches: Vec<crate::import::CatalogPatch>,
) -> Result<usize, String> {
    let err = |e: crate::storage::Error| e.to_string();
    let _applying = storage.apply_lock();
    let snap = storage.snapshot().map_err(err)?;
    let mut entries: Vec<crate::storage::affinity::CatalogPatchFn<'_>> = Vec::new();
    for p in &patches {
        let key = match (&p.sku, &p.variant_id) {
            (Some(sku), _) => format!("sku:{sku}"),
            (None, Some(id)) => snap
                .catalog_key_of(store, &format!("variant:{id}"))
                .map_err(err)?
                .unwrap_or_else(|| format!("variant:{id}")),
            // A simple product without a SKU: its order lines cannot name it either.
            (None, None) => continue,
        };
        entries.push((key, Box::new(move |v: &mut _| p.apply(v))));
    }
    drop(snap);
    let written = storage.upsert_catalog(store, &entries).map_err(err)?;
    if written.keys_changed {
        storage
            .rebuild_affinity(store, config.affinity.window_ms())
            .map_err(err)?;
    }
    Ok(entries.len())
}

/// What a webhook said changed without saying how.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Fetch {
    /// An order (BigCommerce): fetched and fed in as an event marked `fetched`.
    Order(String),
    /// A product or its stock (Shopify): its catalog entries are refreshed.
    Catalog(crate::engine::CatalogNotice),
}

/// Something to fetch for a store: (store, what).
pub type FetchRequest = (String, Fetch);

/// Waits between failed fetches of one order (after the API's own retries): 30 s, 2 min,
/// 10 min, then hourly until it succeeds or the service stops (the next start and the
/// next sync pick it up again).
const FETCH_BACKOFF: [Duration; 4] = [
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
    Duration::from_secs(3600),
];

/// Runs the fetcher until `stopping`: fetches every order whose state asks for it (the
/// processor sends their ids; at start, every such order of the stores with an API).
pub fn run_fetcher(
    storage: Arc<Storage>,
    config: Arc<Config>,
    apis: HashMap<String, Arc<Api>>,
    requests: Receiver<FetchRequest>,
    clock: Arc<dyn Clock>,
    stopping: Arc<AtomicBool>,
) {
    // (store, order) -> (when to try, failures so far)
    let mut due: HashMap<FetchRequest, (Instant, usize)> = HashMap::new();
    match waiting(&storage, &config, &apis) {
        Ok(found) => due.extend(found.into_iter().map(|r| (r, (Instant::now(), 0)))),
        Err(e) => log::error!("fetcher: cannot list the orders waiting for a fetch: {e}"),
    }
    while !stopping.load(Ordering::Relaxed) {
        match requests.recv_timeout(Duration::from_millis(500)) {
            Ok(r) => {
                due.entry(r).or_insert((Instant::now(), 0));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        let ready: Vec<FetchRequest> = due
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(r, _)| r.clone())
            .collect();
        for r in ready {
            if stopping.load(Ordering::Relaxed) {
                break;
            }
            match fetch(&storage, &config, &apis, &r, clock.now()) {
                Ok(()) => {
                    due.remove(&r);
                }
                Err(e) => {
                    let failures = due.get(&r).map_or(0, |d| d.1);
                    let wait = FETCH_BACKOFF[failures.min(FETCH_BACKOFF.len() - 1)];
                    log::warn!(
                        "store {}: fetching {:?} failed ({e}); trying again in {wait:?}",
                        r.0,
                        r.1
                    );
                    due.insert(r, (Instant::now() + wait, failures + 1));
                }
            }
        }
    }
}

/// Every order of the stores with an API whose state still asks for a fetch.
fn waiting(
    storage: &Storage,
    config: &Config,
    apis: &HashMap<String, Arc<Api>>,
) -> Result<Vec<FetchRequest>, crate::storage::Error> {
    let snap = storage.snapshot()?;
    let mut out = Vec::new();
    for s in &config.stores {
        if s.platform != Platform::BigCommerce || !apis.contains_key(&s.id) {
            continue;
        }
        snap.each_order(&s.id, |id, state| {
            if state.fetch_requested.is_some() {
                out.push((s.id.clone(), Fetch::Order(id.to_string())));
            }
        })?;
    }
    Ok(out)
}

/// Fetches one order if its state still asks for it, and commits what the API says as an
/// event marked `fetched` (keyed by the request, so a repeat of it is stored once); or
/// refreshes the catalog entries of a product or inventory item.
fn fetch(
    storage: &Storage,
    config: &Config,
    apis: &HashMap<String, Arc<Api>>,
    (store, what): &FetchRequest,
    now: Timestamp,
) -> Result<(), String> {
    let (Some(cfg), Some(api)) = (config.store(store), apis.get(store)) else {
        return Ok(()); // no API for it: the status page says webhooks only
    };
    let order = match what {
        Fetch::Order(id) => id,
        Fetch::Catalog(notice) => {
            let patches = api
                .catalog_of(notice, cfg.currency)
                .map_err(|e| e.to_string())?;
            refresh_catalog(storage, config, store, patches)?;
            return Ok(());
        }
    };
    let state = storage.order(store, order).map_err(|e| e.to_string())?;
    let Some(requested) = state.and_then(|s| s.fetch_requested) else {
        return Ok(()); // done meanwhile (a sync fetched it)
    };
    let o = match api.order(order) {
        Ok(o) => o,
        Err(e) if e.is_not_found() => {
            log::warn!(
                "store {store}: order {order} is gone from {} (deleted?); not fetched",
                cfg.platform.as_str()
            );
            return Ok(());
        }
        Err(e) => return Err(e.to_string()),
    };
    let key = format!("fetched:{order}:{}", requested.0);
    let rec = record(cfg, &o, Source::Fetched, key, now);
    let event = NewEvent::encode(&rec).map_err(|e| e.to_string())?;
    storage
        .commit_deliveries(&[event], &[], now)
        .map_err(|e| e.to_string())?;
    Ok(())
}
