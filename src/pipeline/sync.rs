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

/// The stores' APIs, over one agent with the `[outbound]` timeouts; giving up at once
/// when `stop` (the service's) is set.
pub fn apis(config: &Config, stop: Option<Arc<AtomicBool>>) -> Apis {
    let agent = crate::outbound::agent(config.outbound.connect_timeout, config.outbound.timeout);
    config
        .stores
        .iter()
        .filter_map(|s| {
            let api = Api::of(s, agent.clone())?;
            let api = match &stop {
                Some(stop) => api.stopping_with(stop.clone()),
                None => api,
            };
            Some((s.id.clone(), Arc::new(api)))
        })
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
    /// Orders listed whose completion failed (BigCommerce: deleted meanwhile): passed over.
    pub skipped: usize,
    /// What failed after the orders were fed in (the subscriptions, the catalog).
    pub problems: Vec<String>,
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

/// Syncs one store: the orders changed since the last successful listing, then the
/// webhook subscriptions, then the catalog. Each part's failure is its own: orders that
/// were listed and fed in count even when the catalog then fails. The outcome (and what
/// failed) is kept for the status page. `Err` when the orders could not be listed, or a
/// sync of the store is already running.
pub fn sync_store(
    storage: &Storage,
    config: &Config,
    store: &StoreConfig,
    api: &Api,
    clock: &dyn Clock,
) -> Result<Synced, String> {
    let Ok(_one) = api.syncing.try_lock() else {
        return Err(format!("a sync of store {} is already running", store.id));
    };
    let started = clock.now();
    let mut state = storage.sync_state(&store.id).map_err(|e| e.to_string())?;
    let since = state
        .orders_through
        .unwrap_or(Timestamp(started.0 - FIRST_LOOKBACK_MS));
    let result = reconcile(storage, store, api, since, clock).map(|mut s| {
        match reconcile_subscriptions(api, store, &config.public_url, false) {
            Ok(topics) => {
                s.missing_subscriptions = topics
                    .into_iter()
                    .filter(|t| t.action != "ok")
                    .map(|t| t.topic)
                    .collect();
                state.missing_topics = s.missing_subscriptions.clone();
                state.subscriptions_at = Some(clock.now());
            }
            Err(e) => s.problems.push(format!("the webhook subscriptions: {e}")),
        }
        match api
            .products(store.currency)
            .map_err(|e| e.to_string())
            .and_then(|patches| refresh_catalog(storage, config, &store.id, patches))
        {
            Ok(n) => {
                s.catalog_variants = n;
                state.catalog_variants = n as u64;
            }
            Err(e) => s.problems.push(format!("the catalog: {e}")),
        }
        s
    });
    let now = clock.now();
    match &result {
        Ok(s) => {
            state.orders_through = Some(since.max(Timestamp(started.0 - OVERLAP_MS)));
            if s.problems.is_empty() {
                state.last_ok_at = Some(now);
                state.last_error = None;
            } else {
                let why = s.problems.join("; ");
                log::error!("store {}: sync partly failed: {why}", store.id);
                state.last_error = Some((now, why));
            }
            if s.missed > 0 {
                state.last_found = Some((now, s.missed as u64));
                state.found_total += s.missed as u64;
                log::warn!(
                    "store {}: reconciliation found {} order(s) whose webhooks never came (and {} newer version(s)); they are processed now",
                    store.id, s.missed, s.updated
                );
            }
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

/// Events committed per transaction while feeding orders in (the writer waits for at most
/// one such commit).
const FEED_CHUNK: usize = 256;

/// Lists the orders changed since `since` and feeds in those the appliance has not seen,
/// or has an older version of. An order whose completion fails (deleted meanwhile) is
/// passed over with a warning; the next sync lists it again if it still changed.
fn reconcile(
    storage: &Storage,
    store: &StoreConfig,
    api: &Api,
    since: Timestamp,
    clock: &dyn Clock,
) -> Result<Synced, String> {
    let err = |e: crate::storage::Error| e.to_string();
    let received = storage.last_seq().map_err(err)?;
    let orders = api.orders_since(since).map_err(|e| e.to_string())?;
    // What was received before the listing is applied first, so that it counts as seen.
    let deadline = Instant::now() + SETTLE;
    while storage.processed_seq().map_err(err)? < received && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Orders still waiting for the processor (it is behind: an import, a rebuild) are on
    // their way, not missed.
    let processed = storage.processed_seq().map_err(err)?;
    let waiting: std::collections::HashSet<String> = storage
        .event_heads_after(processed, 100_000)
        .map_err(err)?
        .into_iter()
        .filter(|(_, h)| h.store == store.id)
        .filter_map(|(_, h)| match h.parsed {
            crate::storage::records::ParsedRecord::Event(e) => Some(e.order_id().to_string()),
            _ => None,
        })
        .collect();
    let snap = storage.snapshot().map_err(err)?;
    let mut out = Synced {
        store: store.id.clone(),
        listed: orders.len(),
        ..Synced::default()
    };
    let mut feed = Vec::new();
    for o in orders {
        let known = snap
            .order(&store.id, &o.id)
            .map_err(err)?
            .and_then(|s| s.order.map(|k| k.updated_at));
        let missed = match known {
            Some(at) if at >= o.updated_at => continue,
            _ if waiting.contains(&o.id) => continue,
            Some(_) => false,
            None => true,
        };
        feed.push((o, missed));
    }
    drop(snap);
    for chunk in feed.chunks(FEED_CHUNK) {
        let now = clock.now();
        let mut events = Vec::with_capacity(chunk.len());
        let mut kinds = Vec::with_capacity(chunk.len());
        for (listed, missed) in chunk {
            // BigCommerce's list leaves out products and refunds: fetched now.
            let o = if listed.complete {
                listed.clone()
            } else {
                match api.order(&listed.id) {
                    Ok(o) => o,
                    Err(crate::outbound::platform::ApiError::Interrupted { .. }) => {
                        return Err("the service is stopping".into())
                    }
                    Err(e) => {
                        log::warn!(
                            "store {}: order {} listed but not fetched: {e}",
                            store.id,
                            listed.id
                        );
                        out.skipped += 1;
                        continue;
                    }
                }
            };
            let key = format!("api:{}:{}", o.id, o.updated_at.0);
            let rec = record(store, &o, Source::Reconciled, key, now);
            events.push(NewEvent::encode(&rec).map_err(err)?);
            kinds.push(*missed);
        }
        let committed = storage.commit_deliveries(&events, &[], now).map_err(err)?;
        // A version already stored (an earlier sync's overlap) is not found again.
        for (c, missed) in committed.iter().zip(kinds) {
            if matches!(c, Committed::Stored(_)) {
                if missed {
                    out.missed += 1;
                } else {
                    out.updated += 1;
                }
            }
        }
    }
    Ok(out)
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

/// The key of an order fetched for the request made at `requested`.
fn fetched_key(order: &str, requested: Timestamp) -> String {
    format!("fetched:{order}:{}", requested.0)
}

/// The request a fetched order's key answers (see [`fetched_key`]).
pub fn fetched_for(key: &str) -> Option<Timestamp> {
    key.strip_prefix("fetched:")?
        .rsplit_once(':')?
        .1
        .parse()
        .ok()
        .map(Timestamp)
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

/// Requests the fetcher holds at most (orders are always taken).
const MAX_WAITING: usize = 10_000;

/// Runs the fetcher until `stopping`: fetches every order whose state asks for it (the
/// processor sends their ids; at start, every such order of the stores with an API).
pub fn run_fetcher(
    storage: Arc<Storage>,
    config: Arc<Config>,
    apis: Apis,
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
            // A flood of catalog notices beyond this waits for the sync, which refreshes
            // the whole catalog anyway.
            Ok(r) if due.len() >= MAX_WAITING && matches!(r.1, Fetch::Catalog(_)) => {}
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
                // A catalog entry is refreshed by the next sync anyway: given up after the
                // short waits (an order is tried until it is fetched).
                Err(e)
                    if matches!(r.1, Fetch::Catalog(_)) && due.get(&r).map_or(0, |d| d.1) >= 2 =>
                {
                    log::warn!(
                        "store {}: refreshing {:?} failed ({e}); the next sync refreshes it",
                        r.0,
                        r.1
                    );
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
    apis: &Apis,
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
    apis: &Apis,
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
    let key = fetched_key(order, requested);
    let rec = record(cfg, &o, Source::Fetched, key, now);
    let event = NewEvent::encode(&rec).map_err(|e| e.to_string())?;
    storage
        .commit_deliveries(&[event], &[], now)
        .map_err(|e| e.to_string())?;
    Ok(())
}
