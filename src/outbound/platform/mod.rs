//! The platforms' admin APIs (`[stores.api]`): checking credentials and registering the
//! webhook subscriptions (`connect`), fetching BigCommerce's orders after their thin
//! webhooks, and listing what changed since the last sync (orders the webhooks missed,
//! the catalog). One [`Api`] per store, over the outbound module's ureq agent: timeouts,
//! retries with backoff, `Retry-After`, a client-side leaky bucket per platform, and
//! Shopify's short-lived tokens refreshed before they expire.
//!
//! Returns what the platform said in the shapes the rest of the appliance already reads:
//! an order is the same JSON its webhook carries (BigCommerce: the order and its products
//! side by side), so `ingest` normalizes it and the pipeline takes it like a webhook.

pub mod bigcommerce;
pub mod shopify;
pub mod woocommerce;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{RateLimit, Secret};
use crate::config::{ApiAuth, ApiConfig, StoreConfig};
use crate::engine::{percent_encode, Currency, Platform, Timestamp};
use crate::import::CatalogPatch;

/// Attempts of one call before it fails (429, 5xx, no answer): the waits between them
/// grow from [`Api::retry_base`] (1 s, 2 s, 4 s, 8 s), or what `Retry-After` says.
const TRIES: u32 = 5;
/// The longest wait a `Retry-After` or a quota reset may impose on one call.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// What of an error answer's body goes into the error.
const ERROR_BODY: usize = 300;
/// The most pages one list may have (250 items each on Shopify and BigCommerce).
const MAX_PAGES: usize = 2_000;

/// Why a platform call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{platform} refused the credentials ({status}): {body}; check [stores.api] of store {store} (and the app's access scopes)")]
    Credentials {
        platform: &'static str,
        store: String,
        status: u16,
        body: String,
    },
    #[error("{platform} answered {status} to {what}: {body}")]
    Refused {
        platform: &'static str,
        what: String,
        status: u16,
        body: String,
    },
    #[error("{platform} did not answer {what} after {TRIES} attempts: {reason}")]
    Unavailable {
        platform: &'static str,
        what: String,
        reason: String,
    },
    #[error("{platform}: not asked, the service is stopping")]
    Interrupted { platform: &'static str },
    #[error("{platform}'s answer to {what} is not what its API documents: {why}")]
    Malformed {
        platform: &'static str,
        what: String,
        why: String,
    },
}

impl ApiError {
    /// A 404: the thing asked for does not exist (an order deleted, a code never made).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Refused { status: 404, .. })
    }
}

/// One answer: status, body and the headers pagination and quotas are read from.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A webhook subscription as the platform lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Subscription {
    pub id: String,
    pub topic: String,
    pub address: String,
    /// WooCommerce disables a webhook after 5 failed deliveries, BigCommerce deactivates
    /// one after ~48 h of them.
    pub active: bool,
}

/// An order as its platform's API returned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiOrder {
    pub id: String,
    pub updated_at: Timestamp,
    /// The topic its body reads as (`orders/updated`, `order.updated`,
    /// `store/order/fetched`).
    pub topic: &'static str,
    /// The order's JSON as its webhook carries it (BigCommerce: `{order, products}`).
    pub body: Vec<u8>,
    /// Everything about the order is in `body` (BigCommerce's list leaves out its products
    /// and refunds: [`Api::order`] fetches them).
    pub complete: bool,
}

/// A store's platform API.
pub struct Api {
    pub store: String,
    pub platform: Platform,
    config: ApiConfig,
    agent: ureq::Agent,
    limit: RateLimit,
    /// Shopify client credentials: the current token and when to exchange it again.
    token: Mutex<Option<(Secret, Instant)>>,
    /// BigCommerce: no call before this (its quota ran out until then).
    quota_reset: Mutex<Option<Instant>>,
    /// The first wait between attempts (tests shorten it).
    pub retry_base: Duration,
    /// Set when the service stops: no new attempt, no more waiting.
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Held while the store syncs: one sync at a time (the job, the command).
    pub syncing: Mutex<()>,
}

impl Api {
    /// The store's API, when `[stores.api]` is configured.
    pub fn of(store: &StoreConfig, agent: ureq::Agent) -> Option<Api> {
        let config = store.api.clone()?;
        // Shopify's REST bucket holds 40 calls and leaks 2 a second; BigCommerce's
        // smallest plan allows 150 per 30 s; WooCommerce is the store's own server.
        let limit = match store.platform {
            Platform::Shopify => RateLimit::with_burst(2.0, 40.0),
            Platform::BigCommerce => RateLimit::with_burst(5.0, 20.0),
            Platform::WooCommerce => RateLimit::with_burst(5.0, 5.0),
        };
        Some(Api {
            store: store.id.clone(),
            platform: store.platform,
            config,
            agent,
            limit,
            token: Mutex::new(None),
            quota_reset: Mutex::new(None),
            retry_base: Duration::from_secs(1),
            stop: None,
            syncing: Mutex::new(()),
        })
    }

    /// The same API, giving up at once when `stop` is set (the service's).
    pub fn stopping_with(mut self, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Api {
        self.stop = Some(stop);
        self
    }

    /// `base_url` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.base_url)
    }

    /// GET `url` (absolute: a pagination link is one), retried as [`Api::call`] says.
    pub fn get(&self, what: &str, url: &str) -> Result<Reply, ApiError> {
        self.call("GET", what, url, None)
    }

    /// GET `url` and read its JSON body.
    pub fn get_json(&self, what: &str, url: &str) -> Result<serde_json::Value, ApiError> {
        let reply = self.get(what, url)?;
        self.json(what, &reply)
    }

    /// The next page of a cursor-paged list (Shopify's `Link: <...>; rel="next"`), which
    /// must be under `base_url`: the credentials go with it.
    pub fn next_url(&self, what: &str, reply: &Reply) -> Result<Option<String>, ApiError> {
        match next_link(reply.header("link")) {
            Some(u) if u.starts_with(&format!("{}/", self.config.base_url)) => Ok(Some(u)),
            Some(u) => {
                Err(self.malformed(what, format!("the next page {u:?} is not under base_url")))
            }
            None => Ok(None),
        }
    }

    /// The JSON of an answer's body (an empty body, BigCommerce's 204, is `null`).
    pub fn json(&self, what: &str, reply: &Reply) -> Result<serde_json::Value, ApiError> {
        if reply.body.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&reply.body).map_err(|e| self.malformed(what, e.to_string()))
    }

    pub fn malformed(&self, what: &str, why: impl Into<String>) -> ApiError {
        ApiError::Malformed {
            platform: self.platform.name(),
            what: what.to_string(),
            why: why.into(),
        }
    }

    /// One call with its retries: a 429, a 5xx, a 408 or no answer is tried again (after
    /// `Retry-After` where given), a Shopify 401 once more with a fresh token; any other
    /// 4xx is the platform's refusal. A POST that may have been carried out is not sent
    /// again (a second webhook subscription, a second price rule): only a 429, which says
    /// it was not.
    pub fn call(
        &self,
        method: &str,
        what: &str,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, ApiError> {
        let payload = body.map_or(Payload::None, Payload::Json);
        self.attempts(method, what, url, payload, true, method != "POST")
    }

    /// The attempts of one request (see [`Api::call`]). `signed`: with the store's
    /// credentials (the token exchange is not); `repeatable`: sent again after a 5xx or no
    /// answer, not only after a 429.
    fn attempts(
        &self,
        method: &str,
        what: &str,
        url: &str,
        payload: Payload<'_>,
        signed: bool,
        repeatable: bool,
    ) -> Result<Reply, ApiError> {
        let mut fresh_token = false;
        let mut last = String::new();
        // The wait before the next attempt: the backoff, unless the platform said how long.
        let mut wait = None;
        for attempt in 0..TRIES {
            if attempt > 0 {
                let backoff = self.retry_base * 2u32.pow(attempt - 1);
                self.pause(wait.take().unwrap_or(backoff).min(MAX_WAIT))?;
            }
            self.stopping()?;
            self.wait_for_quota()?;
            self.limit.acquire();
            let auth = if signed {
                self.authorization()?
            } else {
                Vec::new()
            };
            let reply = match self.send(method, url, &auth, &payload) {
                Ok(r) => r,
                Err(e) => {
                    last = format!("no answer ({e})");
                    if !repeatable {
                        break;
                    }
                    continue;
                }
            };
            self.note_quota(&reply);
            match reply.status {
                200..=299 => return Ok(reply),
                401 if signed
                    && !fresh_token
                    && matches!(self.config.auth, ApiAuth::ShopifyClient { .. }) =>
                {
                    // Revoked or expired early: exchange the credentials again, once.
                    *lock(&self.token) = None;
                    fresh_token = true;
                    last = "401 with a token that was still valid".into();
                }
                401 | 403 => {
                    return Err(ApiError::Credentials {
                        platform: self.platform.name(),
                        store: self.store.clone(),
                        status: reply.status,
                        body: excerpt(&reply.body),
                    })
                }
                408 | 429 | 500..=599 => {
                    last = format!("{} {}", reply.status, excerpt(&reply.body));
                    if !repeatable && reply.status != 429 {
                        break;
                    }
                    wait = reply
                        .header("retry-after")
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .map(|after| Duration::from_secs_f64(after.clamp(0.0, 3600.0)));
                }
                status => {
                    return Err(ApiError::Refused {
                        platform: self.platform.name(),
                        what: what.to_string(),
                        status,
                        body: excerpt(&reply.body),
                    })
                }
            }
        }
        Err(ApiError::Unavailable {
            platform: self.platform.name(),
            what: what.to_string(),
            reason: last,
        })
    }

    /// An error when the service is stopping: what is in flight is not waited for (the
    /// next start, or the next sync, does it again).
    fn stopping(&self) -> Result<(), ApiError> {
        match &self.stop {
            Some(stop) if stop.load(std::sync::atomic::Ordering::Relaxed) => {
                Err(ApiError::Interrupted {
                    platform: self.platform.name(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Sleeps `d`, a tenth of a second at a time, while the service is not stopping.
    fn pause(&self, d: Duration) -> Result<(), ApiError> {
        let until = Instant::now() + d;
        loop {
            self.stopping()?;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
    }

    /// Checks a list's page: the service is not stopping, and the list is not endless (a
    /// proxy or a platform that ignores the page asked for would repeat it for ever).
    pub fn next_page(&self, what: &str, page: usize) -> Result<(), ApiError> {
        self.stopping()?;
        if page > MAX_PAGES {
            return Err(self.malformed(
                what,
                format!("more than {MAX_PAGES} pages: the platform keeps answering with more"),
            ));
        }
        Ok(())
    }

    fn send(
        &self,
        method: &str,
        url: &str,
        auth: &[(&'static str, String)],
        payload: &Payload<'_>,
    ) -> Result<Reply, ureq::Error> {
        let result = if method == "GET" {
            let mut rq = self.agent.get(url).header("accept", "application/json");
            for (k, v) in auth {
                rq = rq.header(*k, v);
            }
            rq.call()
        } else {
            let mut rq = match method {
                "POST" => self.agent.post(url),
                "PUT" => self.agent.put(url),
                other => unreachable!("no {other} calls"),
            }
            .header("accept", "application/json");
            for (k, v) in auth {
                rq = rq.header(*k, v);
            }
            match payload {
                Payload::Form(form) => rq.send_form(form.iter().copied()),
                Payload::Json(v) => rq
                    .header("content-type", "application/json")
                    .send(&serde_json::to_vec(v).expect("JSON values serialize")[..]),
                Payload::None => rq.send_empty(),
            }
        };
        let mut resp = result?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()?;
        Ok(Reply {
            status,
            body,
            headers,
        })
    }

    /// The headers that authenticate a call (exchanging Shopify client credentials for a
    /// token when there is none or it is about to expire).
    fn authorization(&self) -> Result<Vec<(&'static str, String)>, ApiError> {
        use base64::Engine as _;
        Ok(match &self.config.auth {
            ApiAuth::ShopifyToken(t) => vec![("x-shopify-access-token", t.expose().to_string())],
            ApiAuth::ShopifyClient { .. } => {
                vec![("x-shopify-access-token", self.token()?.expose().to_string())]
            }
            ApiAuth::WooCommerce {
                consumer_key,
                consumer_secret,
            } => {
                let pair = format!("{}:{}", consumer_key.expose(), consumer_secret.expose());
                let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
                vec![("authorization", format!("Basic {b64}"))]
            }
            ApiAuth::BigCommerce(t) => vec![("x-auth-token", t.expose().to_string())],
        })
    }

    /// Shopify's client credentials grant: a token valid `expires_in` seconds (24 h),
    /// exchanged again when a tenth of its life (at most 5 minutes) is left.
    fn token(&self) -> Result<Secret, ApiError> {
        let ApiAuth::ShopifyClient {
            client_id,
            client_secret,
        } = &self.config.auth
        else {
            unreachable!("only client credentials have tokens")
        };
        let mut held = lock(&self.token);
        if let Some((token, refresh_at)) = held.as_ref() {
            if Instant::now() < *refresh_at {
                return Ok(token.clone());
            }
        }
        let what = "the client credentials grant";
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", client_id.as_str()),
            ("client_secret", client_secret.expose()),
        ];
        let url = self.url("/admin/oauth/access_token");
        let reply = self
            .attempts("POST", what, &url, Payload::Form(&form), false, true)
            .map_err(|e| match e {
                // Any refusal of the grant is the credentials' (400 invalid_client).
                ApiError::Refused { status, body, .. } => ApiError::Credentials {
                    platform: self.platform.name(),
                    store: self.store.clone(),
                    status,
                    body,
                },
                e => e,
            })?;
        #[derive(serde::Deserialize)]
        struct Granted {
            access_token: String,
            expires_in: Option<u64>,
        }
        let g: Granted =
            serde_json::from_slice(&reply.body).map_err(|e| self.malformed(what, e.to_string()))?;
        let life = Duration::from_secs(g.expires_in.unwrap_or(86_399));
        let refresh_at = Instant::now() + life - (life / 10).min(Duration::from_secs(300));
        let token = Secret::new(g.access_token);
        *held = Some((token.clone(), refresh_at));
        log::info!(
            "store {}: Shopify access token exchanged, valid {life:?}",
            self.store
        );
        Ok(token)
    }

    /// BigCommerce says how many calls are left in its window and when it resets: when
    /// none are, the next call waits for the reset.
    fn note_quota(&self, reply: &Reply) {
        let left = reply
            .header("x-rate-limit-requests-left")
            .and_then(|v| v.trim().parse::<i64>().ok());
        let reset_ms = reply
            .header("x-rate-limit-time-reset-ms")
            .and_then(|v| v.trim().parse::<u64>().ok());
        match (left, reset_ms) {
            (Some(left), Some(ms)) if left <= 0 => {
                let wait = Duration::from_millis(ms).min(MAX_WAIT);
                *lock(&self.quota_reset) = Some(Instant::now() + wait);
            }
            (Some(_), _) => *lock(&self.quota_reset) = None,
            _ => {}
        }
    }

    /// Waits until BigCommerce's quota window resets (every caller, not just the first).
    fn wait_for_quota(&self) -> Result<(), ApiError> {
        let until = *lock(&self.quota_reset);
        match until {
            Some(until) => self.pause(until.saturating_duration_since(Instant::now())),
            None => Ok(()),
        }
    }

    /// Whether the credentials work: the shop's name as the platform knows it.
    pub fn check(&self) -> Result<String, ApiError> {
        match self.platform {
            Platform::Shopify => shopify::check(self),
            Platform::WooCommerce => woocommerce::check(self),
            Platform::BigCommerce => bigcommerce::check(self),
        }
    }

    /// The webhook subscriptions the platform holds for this app (or API key).
    pub fn subscriptions(&self) -> Result<Vec<Subscription>, ApiError> {
        match self.platform {
            Platform::Shopify => shopify::subscriptions(self),
            Platform::WooCommerce => woocommerce::subscriptions(self),
            Platform::BigCommerce => bigcommerce::subscriptions(self),
        }
    }

    /// Orders created or changed at or after `since`, oldest change first where the
    /// platform sorts so.
    pub fn orders_since(&self, since: Timestamp) -> Result<Vec<ApiOrder>, ApiError> {
        match self.platform {
            Platform::Shopify => shopify::orders_since(self, since),
            Platform::WooCommerce => woocommerce::orders_since(self, since),
            Platform::BigCommerce => bigcommerce::orders_since(self, since),
        }
    }

    /// Every product the platform lists (published or not), as catalog patches: one per
    /// variant, prices read in `currency` (the store's).
    pub fn products(&self, currency: Currency) -> Result<Vec<CatalogPatch>, ApiError> {
        match self.platform {
            Platform::Shopify => shopify::products(self, currency),
            Platform::WooCommerce => woocommerce::products(self, currency),
            Platform::BigCommerce => bigcommerce::products(self, currency),
        }
    }

    /// What a catalog webhook is about, as the platform says it is now (Shopify only; a
    /// product gone meanwhile is nothing).
    pub fn catalog_of(
        &self,
        notice: &crate::engine::CatalogNotice,
        currency: Currency,
    ) -> Result<Vec<CatalogPatch>, ApiError> {
        match self.platform {
            Platform::Shopify => shopify::catalog_of(self, notice, currency),
            _ => Ok(Vec::new()),
        }
    }

    /// Whether the store has a discount code of this name (a recipe's static code in
    /// `discount_codes`, checked at `connect`).
    pub fn code_exists(&self, code: &str) -> Result<bool, ApiError> {
        let what = format!("the discount code {code:?}");
        let q = percent_encode(code);
        let found = match self.platform {
            // Shopify answers a lookup with a redirect to the code, or 404.
            Platform::Shopify => {
                let url = self.url(&format!(
                    "/admin/api/{}/discount_codes/lookup.json?code={q}",
                    self.config.version
                ));
                match self.get(&what, &url) {
                    Ok(_) | Err(ApiError::Refused { status: 303, .. }) => true,
                    Err(ApiError::Refused { status: 404, .. }) => false,
                    Err(e) => return Err(e),
                }
            }
            Platform::WooCommerce => {
                let url = self.url(&format!("/wp-json/wc/v3/coupons?code={q}"));
                let v = self.get_json(&what, &url)?;
                v.as_array().is_some_and(|l| {
                    l.iter().any(|c| {
                        c["code"]
                            .as_str()
                            .is_some_and(|x| x.eq_ignore_ascii_case(code))
                    })
                })
            }
            Platform::BigCommerce => {
                let v = self.get_json(&what, &self.url(&format!("/v2/coupons?code={q}")))?;
                v.as_array().is_some_and(|l| !l.is_empty())
            }
        };
        Ok(found)
    }

    /// Makes a single-use code: `percent` off the offered product (the whole order where
    /// its ids are not known), valid until `expires_at`. A code that exists already (made
    /// before a crash kept us from recording it) counts as made: the name is the offer's.
    pub fn create_code(&self, c: &NewCode<'_>) -> Result<(), ApiError> {
        match self.platform {
            Platform::Shopify => {
                if self.code_exists(c.code)? {
                    return Ok(());
                }
                shopify::create_code(self, c)
            }
            Platform::WooCommerce => woocommerce::create_code(self, c),
            Platform::BigCommerce => Err(self.malformed(
                "a unique code",
                "BigCommerce codes are not made through the API (config refuses unique_codes for it)",
            )),
        }
    }

    /// One order as it is now (BigCommerce's thin webhooks need it).
    pub fn order(&self, id: &str) -> Result<ApiOrder, ApiError> {
        match self.platform {
            Platform::BigCommerce => bigcommerce::order(self, id),
            Platform::Shopify => shopify::order(self, id),
            Platform::WooCommerce => woocommerce::order(self, id),
        }
    }
}

/// What a request carries.
enum Payload<'a> {
    None,
    Json(&'a serde_json::Value),
    /// Form-encoded (Shopify's token exchange).
    Form(&'a [(&'a str, &'a str)]),
}

/// A single-use discount code to make.
#[derive(Clone, Debug)]
pub struct NewCode<'a> {
    pub code: &'a str,
    pub percent: u8,
    pub starts_at: Timestamp,
    pub expires_at: Timestamp,
    pub product_id: Option<&'a str>,
    pub variant_id: Option<&'a str>,
    /// What the platform's admin shows beside it.
    pub note: String,
}

/// The topics the appliance needs a platform to send, as that platform names them.
pub fn topics(platform: Platform) -> &'static [&'static str] {
    match platform {
        Platform::Shopify => shopify::TOPICS,
        Platform::WooCommerce => woocommerce::TOPICS,
        Platform::BigCommerce => bigcommerce::TOPICS,
    }
}

/// What to do about a store without `[stores.api]`, when something needs its platform.
pub fn no_api(store: &StoreConfig) -> String {
    format!(
        "store {} has no [stores.api]: add the {} API credentials to it (best in secrets_file; README \"Connect a store\")",
        store.id,
        store.platform.name()
    )
}

/// The secret a subscription made or repaired here is given (WooCommerce signs with it,
/// BigCommerce sends it in the secret header): the first of `webhook_secrets`, the current
/// one during a rotation.
fn signing_secret(store: &StoreConfig) -> &str {
    store
        .webhook_secrets
        .first()
        .map(String::as_str)
        .unwrap_or_default()
}

/// Where a store's platform webhooks go.
pub fn webhook_address(public_url: &str, store: &str) -> String {
    format!("{}/webhooks/{store}", public_url.trim_end_matches('/'))
}

/// What `connect` found and did for one topic.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TopicState {
    pub topic: String,
    /// `ok` (there, active, pointing here), `created`, `repaired` (pointed elsewhere or
    /// was disabled), `missing` (only looked at, not changed).
    pub action: &'static str,
    pub id: Option<String>,
}

/// Each needed topic's subscription as the platform holds it: what is fine, what is
/// missing, disabled or pointing elsewhere. `fix`: create and repair them.
pub fn reconcile_subscriptions(
    api: &Api,
    store: &StoreConfig,
    public_url: &str,
    fix: bool,
) -> Result<Vec<TopicState>, ApiError> {
    let address = webhook_address(public_url, &store.id);
    let held = api.subscriptions()?;
    let mut out = Vec::new();
    for topic in topics(api.platform) {
        let same_topic: Vec<&Subscription> = held.iter().filter(|s| s.topic == *topic).collect();
        let exact = same_topic.iter().find(|s| s.address == address);
        let state = match exact {
            Some(s) if s.active => TopicState {
                topic: topic.to_string(),
                action: "ok",
                id: Some(s.id.clone()),
            },
            // Disabled, or pointing at this store's path on an old address: repair it.
            found => {
                let ours = found.copied().or_else(|| {
                    let path = format!("/webhooks/{}", store.id);
                    same_topic
                        .iter()
                        .copied()
                        .find(|s| s.address.ends_with(&path))
                });
                let (action, id) = match (fix, ours) {
                    (false, _) => ("missing", ours.map(|s| s.id.clone())),
                    (true, Some(s)) => {
                        repair(api, store, s, &address)?;
                        ("repaired", Some(s.id.clone()))
                    }
                    (true, None) => ("created", Some(create(api, store, topic, &address)?)),
                };
                TopicState {
                    topic: topic.to_string(),
                    action,
                    id,
                }
            }
        };
        out.push(state);
    }
    Ok(out)
}

fn create(api: &Api, store: &StoreConfig, topic: &str, address: &str) -> Result<String, ApiError> {
    match api.platform {
        Platform::Shopify => shopify::subscribe(api, topic, address),
        Platform::WooCommerce => woocommerce::subscribe(api, store, topic, address),
        Platform::BigCommerce => bigcommerce::subscribe(api, store, topic, address),
    }
}

fn repair(api: &Api, store: &StoreConfig, s: &Subscription, address: &str) -> Result<(), ApiError> {
    match api.platform {
        Platform::Shopify => shopify::repoint(api, &s.id, address),
        Platform::WooCommerce => woocommerce::repoint(api, store, &s.id, address),
        Platform::BigCommerce => bigcommerce::repoint(api, store, &s.id, address),
    }
}

/// The start of an error body, for messages.
pub fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .trim()
        .chars()
        .take(ERROR_BODY)
        .collect()
}

/// The URL of a `Link` header's `rel="next"` (Shopify's cursor pagination).
fn next_link(link: Option<&str>) -> Option<String> {
    link?.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

/// An id field that may be a JSON number or a string.
pub fn id_of(v: &serde_json::Value) -> Option<String> {
    crate::ingest::wire::text(Some(v))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_finds_the_next_page_among_others() {
        let link = r#"<https://s.myshopify.com/admin/api/2026-10/orders.json?limit=250&page_info=abc>; rel="previous", <https://s.myshopify.com/admin/api/2026-10/orders.json?limit=250&page_info=def>; rel="next""#;
        assert_eq!(
            next_link(Some(link)).as_deref(),
            Some("https://s.myshopify.com/admin/api/2026-10/orders.json?limit=250&page_info=def")
        );
        assert_eq!(next_link(Some(r#"<https://x/a>; rel="previous""#)), None);
        assert_eq!(next_link(None), None);
    }
}
