//! Configuration: TOML read into a raw form, validated once into [`Config`] with real
//! types, and passed explicitly. Errors name the key and say what to do.
//!
//! Where it comes from: `--config PATH`, else `/etc/upsell-appliance/config.toml` if it
//! exists, else the embedded demo (data in `./upsell-data`, secrets generated there once).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::engine::{Currency, Platform};

pub const SYSTEM_CONFIG: &str = "/etc/upsell-appliance/config.toml";
const DEMO_CONFIG: &str = include_str!("../assets/demo-config.toml");
const TEMPLATE: &str = include_str!("../assets/config-template.toml");
const PLACEHOLDER: &str = "REPLACE_ME";
/// What to do about a config without stores.
pub const NO_STORES: &str = "no stores yet: add a [[stores]] table (id, platform, domain; its webhook_secrets in the secrets file) and restart the service; README \"Install on a VPS\" shows one";

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub public_url: String,
    pub data_dir: PathBuf,
    pub admin_token: String,
    pub cache_size_mb: usize,
    pub max_body_bytes: usize,
    pub http_workers: usize,
    /// Threads that decide and send due touches.
    pub touch_workers: usize,
    pub outbound: OutboundConfig,
    /// Message templates that replace the built-in ones (same file names).
    pub templates_dir: Option<PathBuf>,
    pub stores: Vec<StoreConfig>,
    pub affinity: AffinityConfig,
    pub measurement: MeasurementConfig,
    pub jobs: JobsConfig,
    /// Which log records are written (`logging`): a level or `module=level` directives;
    /// `RUST_LOG` overrides it.
    pub log: String,
    /// Where this configuration came from, for messages.
    pub origin: Origin,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    Demo,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Demo => f.write_str("the built-in demo config"),
        }
    }
}

/// `[affinity]`: how product affinity is counted and read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AffinityConfig {
    /// Next-order evidence: the longest gap between a customer's orders that counts.
    pub next_order_window_days: u32,
    /// Evidence loses half its weight in this many days (0 = no decay).
    pub half_life_days: u32,
    pub thresholds: crate::engine::affinity::Thresholds,
}

impl Default for AffinityConfig {
    fn default() -> AffinityConfig {
        AffinityConfig {
            next_order_window_days: 90,
            half_life_days: 180,
            thresholds: Default::default(),
        }
    }
}

impl AffinityConfig {
    pub fn window_ms(&self) -> i64 {
        i64::from(self.next_order_window_days) * 86_400_000
    }

    pub fn decay(&self) -> crate::engine::affinity::Decay {
        match self.half_life_days {
            0 => crate::engine::affinity::Decay::None,
            d => crate::engine::affinity::Decay::HalfLife { days: f64::from(d) },
        }
    }
}

/// `[measurement]`: how conversions are attributed and when the lift report gives a
/// verdict.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeasurementConfig {
    pub windows: crate::engine::attribution::Windows,
    /// Below this many holdout orders the report says how many more it needs.
    pub min_holdout_orders: u64,
}

impl Default for MeasurementConfig {
    fn default() -> MeasurementConfig {
        MeasurementConfig {
            windows: Default::default(),
            min_holdout_orders: 100,
        }
    }
}

/// Where a store's messages go (`[stores.channels]`).
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelsConfig {
    /// Email touches: `outbox` (default), `klaviyo` or `webhook`.
    pub email: Route,
    /// SMS touches: `outbox` (default), `klaviyo` or `webhook`.
    pub sms: Route,
    pub klaviyo: Option<KlaviyoConfig>,
    pub webhook: Option<WebhookConfig>,
    pub twilio: Option<TwilioConfig>,
    pub postmark: Option<PostmarkConfig>,
    /// Every touch sent to a customer also goes to the webhook (for the store's systems).
    pub also_webhook: bool,
    /// Routes for particular touch kinds, over `email` / `sms` (e.g. the review request
    /// through the webhook to the store's review app).
    pub kinds: std::collections::BTreeMap<crate::engine::plan::TouchKind, Route>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TwilioConfig {
    pub account_sid: String,
    pub auth_token: crate::outbound::Secret,
    /// An E.164 sender number, or a Messaging Service SID (`MG...`).
    pub from: String,
    pub base_url: String,
    /// Requests a second at most (a token bucket shared by the workers).
    pub rate_per_second: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PostmarkConfig {
    pub server_token: crate::outbound::Secret,
    pub from: String,
    pub message_stream: String,
    pub base_url: String,
    /// Requests a second at most (a token bucket shared by the workers).
    pub rate_per_second: f64,
}

/// A channel a kind of message is routed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Outbox,
    Klaviyo,
    Webhook,
    Twilio,
    Postmark,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Outbox => "outbox",
            Route::Klaviyo => "klaviyo",
            Route::Webhook => "webhook",
            Route::Twilio => "twilio",
            Route::Postmark => "postmark",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct KlaviyoConfig {
    pub api_key: crate::outbound::Secret,
    /// Metric name per touch kind, over the defaults ("Upsell Touch 1", ...).
    pub metrics: std::collections::BTreeMap<String, String>,
    /// `https://a.klaviyo.com` unless set (a test double).
    pub base_url: String,
    /// Requests a second at most (a token bucket shared by the workers).
    pub rate_per_second: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WebhookConfig {
    pub url: String,
    pub secrets: Vec<crate::outbound::Secret>,
    /// Requests a second at most (a token bucket shared by the workers).
    pub rate_per_second: f64,
}

/// `[outbound]`: the providers' HTTP client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundConfig {
    pub connect_timeout: std::time::Duration,
    pub timeout: std::time::Duration,
}

/// `[jobs]`: scheduled maintenance. Schedules are read in UTC (the config has no global
/// time zone; stores each have their own).
#[derive(Clone, Debug)]
pub struct JobsConfig {
    /// When raw webhook bodies past `payload_retention_days` are removed.
    pub purge: Cron,
    /// When a sample of the incremental affinity counts is compared with a recount.
    pub affinity_check: Cron,
    /// When each store with `[stores.api]` is synced: orders the webhooks missed, the
    /// catalog with prices and stock, the webhook subscriptions' health.
    pub sync: Cron,
    pub payload_retention_days: u32,
}

impl JobsConfig {
    pub fn retention_ms(&self) -> i64 {
        i64::from(self.payload_retention_days) * 86_400_000
    }
}

/// A cron schedule from the config, in UTC: crontab's five fields (minute, hour, day of
/// month, month, day of week), or the `cron` crate's six or seven (seconds first, a year
/// last), or `@daily`, `@hourly`, `@weekly`, `@monthly`, `@yearly`.
#[derive(Clone, Debug)]
pub struct Cron {
    text: String,
    schedule: cron::Schedule,
}

impl Cron {
    /// Reads the schedule of config key `key`; the error names the key, says what is wrong
    /// and shows a valid schedule.
    pub fn parse(key: &str, text: &str) -> Result<Cron, String> {
        let example = "e.g. \"17 3 * * *\" (every day at 03:17 UTC) or \"0 */6 * * Mon-Fri\"";
        let bad = |why: String| format!("{key} = {text:?} {why}; {example}");
        let fields: Vec<&str> = text.split_whitespace().collect();
        let full = match fields.len() {
            1 if fields[0].starts_with('@') => fields[0].to_string(),
            5 => format!("0 {}", fields.join(" ")),
            6 | 7 => fields.join(" "),
            n => {
                return Err(bad(format!(
                    "has {n} field{}; write minute hour day-of-month month day-of-week (UTC)",
                    if n == 1 { "" } else { "s" }
                )))
            }
        };
        // Crontab counts days of the week from 0 = Sunday, the cron crate from 1 = Sunday:
        // a number would silently mean another day, so only names are taken.
        let days_of_week = full.split(' ').nth(5).unwrap_or("");
        if days_of_week.bytes().any(|b| b.is_ascii_digit()) {
            return Err(bad(format!(
                "gives days of the week as numbers ({days_of_week}), which mean different days in different cron dialects; write names such as Mon, Mon-Fri or Sat,Sun"
            )));
        }
        let schedule = cron::Schedule::from_str(&full).map_err(|e| {
            // The crate shows the input with a caret, then what is wrong (and calls its
            // inclusive maximum "less than").
            let text = e.to_string();
            let why = text
                .lines()
                .last()
                .unwrap_or("")
                .trim()
                .trim_end_matches('.');
            bad(format!(
                "is not a cron schedule: {}",
                why.replace("must be less than", "must be at most")
            ))
        })?;
        if schedule.upcoming(chrono::Utc).next().is_none() {
            return Err(bad("never fires".into()));
        }
        Ok(Cron {
            text: text.trim().to_string(),
            schedule,
        })
    }

    /// The first time the schedule fires after `t` (not at `t`).
    pub fn next_after(&self, t: crate::engine::Timestamp) -> Option<crate::engine::Timestamp> {
        let at = chrono::DateTime::from_timestamp_millis(t.0)?;
        let next = self.schedule.after(&at).next()?;
        Some(crate::engine::Timestamp(next.timestamp_millis()))
    }

    /// The schedule as written in the config.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Whether a store's touches reach customers (`mode` per store).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Everything runs, but every touch goes to the outbox file, whatever the channels
    /// say: nothing reaches a customer. The default, so a new store is tried out first.
    DryRun,
    /// Touches go through the configured channels.
    Live,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::DryRun => "dry_run",
            Mode::Live => "live",
        }
    }
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub id: String,
    /// `dry_run` (default) or `live`: whether touches reach customers.
    pub mode: Mode,
    /// The store's name as customers know it, in messages (default: the id).
    pub name: String,
    pub platform: Platform,
    pub domain: String,
    pub webhook_secrets: Vec<String>,
    /// BigCommerce only: the custom header the webhook subscription sends, whose value must
    /// be one of `webhook_secrets` (BigCommerce documents no signature).
    pub webhook_secret_header: String,
    pub currency: Currency,
    pub timezone: chrono_tz::Tz,
    /// `[stores.offers]`: how offers are decided.
    pub offers: crate::engine::plan::Policy,
    /// `[stores.touches]`: the rules a due touch is decided by (caps, quiet hours, grace).
    pub rules: crate::engine::due::Rules,
    pub delivery: crate::engine::due::DeliveryRules,
    /// `[stores.channels]`: where each kind of message goes.
    pub channels: ChannelsConfig,
    /// Opens of this store's emails are reported (`touch opened`, later the providers'
    /// webhooks), so an email without one was not opened and the engagement rule applies.
    pub opens_reported: bool,
    /// `[stores.projection]`: the rates `replay` projects revenue at.
    pub projection: Projection,
    /// `[stores.page]`: the thank-you page offer, its page and its checkout link.
    pub page: PageConfig,
    /// The Shopify app's client id (`aud` of the session tokens its checkout extension
    /// sends; its client secret is the first of `webhook_secrets`). Usually in
    /// `secrets_file`.
    pub shopify_client_id: Option<String>,
    /// `[stores.engagement]`: how the email provider's engagement webhook authenticates;
    /// `None`: no such intake.
    pub engagement: Option<IntakeAuth>,
    /// `[stores.helpdesk]`: how the help desk's ticket webhook authenticates.
    pub helpdesk: Option<IntakeAuth>,
    /// `[stores.carrier]`: how a carrier's or 3PL's delivery webhook authenticates.
    pub carrier: Option<IntakeAuth>,
    /// `[stores.api]`: the platform's admin API (connect, order fetches, sync); `None`:
    /// webhooks only.
    pub api: Option<ApiConfig>,
}

/// `[stores.api]`: how to call the store's platform.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Where the API is, without a trailing slash: `https://{domain}` (Shopify,
    /// WooCommerce) or `https://api.bigcommerce.com/stores/{store_hash}`.
    pub base_url: String,
    pub auth: ApiAuth,
    /// Shopify's Admin API version (`2026-10`).
    pub version: String,
}

/// A platform's credentials.
#[derive(Clone, Debug)]
pub enum ApiAuth {
    /// A Shopify app created in the admin before 2026: a static Admin API token (`shpat_`).
    ShopifyToken(crate::outbound::Secret),
    /// A Shopify Dev Dashboard app: the client credentials grant, tokens valid 24 h.
    ShopifyClient {
        client_id: String,
        client_secret: crate::outbound::Secret,
    },
    /// WooCommerce REST API keys (basic auth over HTTPS).
    WooCommerce {
        consumer_key: crate::outbound::Secret,
        consumer_secret: crate::outbound::Secret,
    },
    /// A BigCommerce API account's access token (`X-Auth-Token`).
    BigCommerce(crate::outbound::Secret),
}

/// How one of a store's intakes (`/webhooks/{store}/engagement`, `/helpdesk`,
/// `/delivery`) proves a request is the store's: senders that cannot sign (Postmark,
/// Gorgias) use HTTP basic auth (`user:password`, which they put in the URL), a secret
/// header or a secret last path segment; senders that can sign use an HMAC-SHA256 of the
/// body in `X-Upsell-Signature`. Any one configured way that matches lets a request in.
#[derive(Clone, Debug, Default)]
pub struct IntakeAuth {
    pub basic_auth: Option<crate::outbound::Secret>,
    pub path_secret: Option<crate::outbound::Secret>,
    /// (lower-cased header name, its value).
    pub header: Option<(String, crate::outbound::Secret)>,
    /// Keys of `X-Upsell-Signature`; several while rotating.
    pub hmac_secrets: Vec<crate::outbound::Secret>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawIntake {
    basic_auth: Option<String>,
    path_secret: Option<String>,
    secret_header: Option<String>,
    secret: Option<String>,
    #[serde(default)]
    hmac_secrets: Vec<String>,
}

/// The header a helpdesk's secret comes in unless `secret_header` names another.
pub const DEFAULT_SECRET_HEADER: &str = "x-upsell-secret";

/// `[stores.engagement]`, `[stores.helpdesk]`, `[stores.carrier]`: at least one way in,
/// each hard to guess; `ways` are the keys this intake takes.
fn intake(raw: RawIntake, key: &str, ways: &[&str]) -> Result<IntakeAuth, String> {
    use crate::outbound::Secret;
    let given = [
        ("basic_auth", raw.basic_auth.is_some()),
        ("path_secret", raw.path_secret.is_some()),
        ("secret", raw.secret.is_some()),
        ("secret_header", raw.secret_header.is_some()),
        ("hmac_secrets", !raw.hmac_secrets.is_empty()),
    ];
    if let Some((k, _)) = given.iter().find(|(k, set)| *set && !ways.contains(k)) {
        return Err(format!(
            "{key}.{k} is not a way into this intake; it takes {}",
            ways.join(", ")
        ));
    }
    let long = |s: &str| {
        s.len() >= 24
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    };
    if let Some(b) = &raw.basic_auth {
        match b.split_once(':') {
            Some((user, pass)) if !user.is_empty() && pass.len() >= 16 && !user.contains('@') => {}
            _ => {
                return Err(format!(
                    "{key}.basic_auth must be \"user:password\" with a password of 16 characters or more (e.g. `openssl rand -hex 16`)"
                ))
            }
        }
    }
    for (name, value) in [("path_secret", &raw.path_secret), ("secret", &raw.secret)] {
        if value.as_deref().is_some_and(|v| !long(v)) {
            return Err(format!(
                "{key}.{name} must be 24 or more characters of a-z, A-Z, 0-9, '-' or '_' (e.g. `openssl rand -hex 16`)"
            ));
        }
    }
    if let Some(i) = raw.hmac_secrets.iter().position(|s| s.len() < 24) {
        return Err(format!(
            "{key}.hmac_secrets[{i}] is shorter than 24 characters; use a long random one (e.g. `openssl rand -hex 32`)"
        ));
    }
    let header = match (raw.secret, raw.secret_header) {
        (Some(v), name) => {
            let name = name.unwrap_or_else(|| DEFAULT_SECRET_HEADER.into());
            if name.is_empty() || !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') {
                return Err(format!(
                    "{key}.secret_header = {name:?} is not a header name such as \"X-Upsell-Secret\""
                ));
            }
            Some((name.to_ascii_lowercase(), Secret::new(v)))
        }
        (None, Some(_)) => {
            return Err(format!(
                "{key}.secret_header names the header but {key}.secret, its value, is missing"
            ))
        }
        (None, None) => None,
    };
    if raw.basic_auth.is_none()
        && raw.path_secret.is_none()
        && header.is_none()
        && raw.hmac_secrets.is_empty()
    {
        return Err(format!(
            "{key} needs {} (one at least): the sender must prove it is yours",
            ways.join(" or ")
        ));
    }
    Ok(IntakeAuth {
        basic_auth: raw.basic_auth.map(Secret::new),
        path_secret: raw.path_secret.map(Secret::new),
        header,
        hmac_secrets: raw.hmac_secrets.into_iter().map(Secret::new).collect(),
    })
}

/// `[stores.page]`: the thank-you page offer as the customer sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PageConfig {
    /// The offer (its card, page and links) can be taken this many days after the order.
    pub offer_valid_days: i64,
    /// WooCommerce: the checkout page's path, where taking the offer leads.
    pub checkout_path: String,
    /// What each recipe's discount code takes off, in percent, so the card can show the
    /// price after it (the store's platform applies the code; this only describes it).
    pub discount_percent: std::collections::BTreeMap<crate::engine::plan::Recipe, u32>,
}

impl Default for PageConfig {
    fn default() -> PageConfig {
        PageConfig {
            offer_valid_days: 7,
            checkout_path: "/checkout/".into(),
            discount_percent: Default::default(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPage {
    offer_valid_days: Option<i64>,
    checkout_path: Option<String>,
    #[serde(default)]
    discount_percent: std::collections::BTreeMap<String, i64>,
}

/// `[stores.page]`; `offers` for the recipes' codes, which a percentage describes.
fn page(
    raw: RawPage,
    offers: &crate::engine::plan::Policy,
    key: &str,
) -> Result<PageConfig, String> {
    use crate::engine::plan::Recipe;
    let d = PageConfig::default();
    let offer_valid_days = in_range(
        &format!("{key}.offer_valid_days"),
        raw.offer_valid_days,
        d.offer_valid_days,
        1,
        90,
    )?;
    let checkout_path = match raw.checkout_path {
        None => d.checkout_path,
        Some(p)
            if p.starts_with('/')
                && p.bytes().all(|c| c.is_ascii_graphic() && !matches!(c, b'?' | b'#')) =>
        {
            p
        }
        Some(p) => {
            return Err(format!(
                "{key}.checkout_path = {p:?} must be a path such as \"/checkout/\" (ASCII, no spaces or query; percent-encode other characters)"
            ))
        }
    };
    let mut discount_percent = std::collections::BTreeMap::new();
    for (r, pct) in raw.discount_percent {
        let recipe = Recipe::parse(&r)
            .ok_or_else(|| format!("{key}.discount_percent: {r:?} is not a recipe"))?;
        if !(1..=99).contains(&pct) {
            return Err(format!(
                "{key}.discount_percent.{r} = {pct} must be a percentage from 1 to 99"
            ));
        }
        if !offers.discount_codes.contains_key(&recipe) {
            return Err(format!(
                "{key}.discount_percent.{r} describes a discount code, but offers.discount_codes has none for {r}"
            ));
        }
        discount_percent.insert(recipe, pct as u32);
    }
    Ok(PageConfig {
        offer_valid_days,
        checkout_path,
        discount_percent,
    })
}

/// How often an offer is taken, for `replay`'s projections (never for decisions).
/// Defaults: the middle of product.md's industry ranges.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Projection {
    /// Thank-you page offers accepted (5-8%).
    pub page_acceptance: f64,
    /// Offer emails clicked (12-18%).
    pub email_click_rate: f64,
    /// Offer SMS clicked (no industry figure in product.md: the email rate unless set).
    pub sms_click_rate: f64,
    /// Clicks that buy (4-8%).
    pub click_to_purchase: f64,
}

impl Default for Projection {
    fn default() -> Projection {
        Projection {
            page_acceptance: 0.065,
            email_click_rate: 0.15,
            sms_click_rate: 0.15,
            click_to_purchase: 0.06,
        }
    }
}

/// `[stores.projection]`: each a fraction from 0 to 1.
fn projection(raw: RawProjection, at: &str) -> Result<Projection, String> {
    let d = Projection::default();
    let rate = |v: Option<f64>, name: &str, default: f64| match v {
        None => Ok(default),
        Some(x) if (0.0..=1.0).contains(&x) => Ok(x),
        Some(x) => Err(format!(
            "{at}.{name} = {x} must be a fraction from 0 to 1 (0.065 is 6.5%)"
        )),
    };
    let email_click_rate = rate(raw.email_click_rate, "email_click_rate", d.email_click_rate)?;
    Ok(Projection {
        page_acceptance: rate(raw.page_acceptance, "page_acceptance", d.page_acceptance)?,
        email_click_rate,
        sms_click_rate: rate(raw.sms_click_rate, "sms_click_rate", email_click_rate)?,
        click_to_purchase: rate(
            raw.click_to_purchase,
            "click_to_purchase",
            d.click_to_purchase,
        )?,
    })
}

impl Config {
    pub fn store(&self, id: &str) -> Option<&StoreConfig> {
        self.stores.iter().find(|s| s.id == id)
    }

    /// Picks the store a command is about: the named one, or the only one.
    pub fn pick_store(&self, id: Option<&str>) -> Result<&StoreConfig, ConfigError> {
        match id {
            Some(id) => self.store(id).ok_or_else(|| {
                self.error(format!(
                    "no store with id {id:?}; configured: {}",
                    self.store_ids().join(", ")
                ))
            }),
            None if self.stores.len() == 1 => Ok(&self.stores[0]),
            None if self.stores.is_empty() => Err(self.error(NO_STORES.into())),
            None => Err(self.error(format!(
                "this config has {} stores; say which with --store (one of: {})",
                self.stores.len(),
                self.store_ids().join(", ")
            ))),
        }
    }

    pub fn store_ids(&self) -> Vec<String> {
        self.stores.iter().map(|s| s.id.clone()).collect()
    }

    fn error(&self, message: String) -> ConfigError {
        ConfigError {
            origin: self.origin.clone(),
            message,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: Origin,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config {}: {}", self.origin, self.message)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    admin_listen: Option<String>,
    public_url: Option<String>,
    data_dir: Option<String>,
    admin_token: Option<String>,
    cache_size_mb: Option<i64>,
    max_body_kb: Option<i64>,
    http_workers: Option<i64>,
    touch_workers: Option<i64>,
    outbound: Option<RawOutbound>,
    templates_dir: Option<String>,
    log: Option<String>,
    #[allow(dead_code)] // consumed by the merge before deserializing
    secrets_file: Option<String>,
    #[serde(default)]
    stores: Vec<RawStore>,
    affinity: Option<RawAffinity>,
    measurement: Option<RawMeasurement>,
    jobs: Option<RawJobs>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMeasurement {
    click_window_days: Option<i64>,
    accept_window_hours: Option<i64>,
    min_holdout_orders: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawJobs {
    purge: Option<String>,
    affinity_check: Option<String>,
    sync: Option<String>,
    payload_retention_days: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAffinity {
    next_order_window_days: Option<i64>,
    half_life_days: Option<i64>,
    strong_confidence: Option<f64>,
    moderate_confidence: Option<f64>,
    min_pair_orders: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    id: Option<String>,
    mode: Option<String>,
    name: Option<String>,
    platform: Option<String>,
    domain: Option<String>,
    #[serde(default)]
    webhook_secrets: Vec<String>,
    currency: Option<String>,
    timezone: Option<String>,
    webhook_secret_header: Option<String>,
    offers: Option<RawOffers>,
    touches: Option<RawTouches>,
    channels: Option<RawChannels>,
    projection: Option<RawProjection>,
    page: Option<RawPage>,
    shopify_client_id: Option<String>,
    engagement: Option<RawIntake>,
    helpdesk: Option<RawIntake>,
    carrier: Option<RawIntake>,
    api: Option<RawApi>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApi {
    access_token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    consumer_key: Option<String>,
    consumer_secret: Option<String>,
    store_hash: Option<String>,
    base_url: Option<String>,
    version: Option<String>,
}

/// The Shopify Admin API version asked for when `[stores.api] version` is not set.
pub const SHOPIFY_API_VERSION: &str = "2026-10";

/// A set, non-blank value, trimmed.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// Reads `[stores.api]` for a store of `platform` at `domain`.
fn api(
    raw: RawApi,
    platform: Platform,
    domain: &str,
    shopify_client_id: Option<&str>,
    webhook_secrets: &[String],
    key: &str,
) -> Result<ApiConfig, String> {
    use crate::outbound::Secret;
    let allowed: &[&str] = match platform {
        Platform::Shopify => &[
            "access_token",
            "client_id",
            "client_secret",
            "base_url",
            "version",
        ],
        Platform::WooCommerce => &["consumer_key", "consumer_secret", "base_url"],
        Platform::BigCommerce => &["store_hash", "access_token", "base_url"],
    };
    for (name, value) in [
        ("access_token", &raw.access_token),
        ("client_id", &raw.client_id),
        ("client_secret", &raw.client_secret),
        ("consumer_key", &raw.consumer_key),
        ("consumer_secret", &raw.consumer_secret),
        ("store_hash", &raw.store_hash),
        ("version", &raw.version),
    ] {
        if value.is_some() && !allowed.contains(&name) {
            return Err(format!(
                "{key}.{name} is not for a {} store; it takes {}",
                platform.as_str(),
                allowed.join(", ")
            ));
        }
    }
    let need = |name: &str, v: &Option<String>, hint: &str| -> Result<Secret, String> {
        given(v)
            .map(Secret::new)
            .ok_or_else(|| format!("{key}.{name} is missing; {hint}"))
    };
    let (auth, default_base) = match platform {
        Platform::Shopify => {
            let auth = match (given(&raw.access_token), given(&raw.client_id).or(shopify_client_id)) {
                (Some(_), _) if raw.client_secret.is_some() => {
                    return Err(format!("{key} has both access_token and client_secret; give the static token (an app created in the admin before 2026) or the client credentials (a Dev Dashboard app), not both"))
                }
                (Some(token), _) => ApiAuth::ShopifyToken(Secret::new(token)),
                (None, Some(id)) => ApiAuth::ShopifyClient {
                    client_id: id.to_string(),
                    client_secret: match given(&raw.client_secret) {
                        Some(s) => Secret::new(s),
                        None => Secret::new(webhook_secrets.first().cloned().unwrap_or_default()),
                    },
                },
                (None, None) => return Err(format!("{key} needs access_token (the Admin API token of an app created in the admin before 2026, shpat_...) or client_id and client_secret (a Dev Dashboard app: Settings > Credentials; the secret defaults to the first of webhook_secrets, which is the same client secret)")),
            };
            (auth, format!("https://{domain}"))
        }
        Platform::WooCommerce => (
            ApiAuth::WooCommerce {
                consumer_key: need("consumer_key", &raw.consumer_key, "create a REST API key with Read/Write permission (WooCommerce > Settings > Advanced > REST API) and put its ck_... here")?,
                consumer_secret: need("consumer_secret", &raw.consumer_secret, "put the same REST API key's cs_... here")?,
            },
            format!("https://{domain}"),
        ),
        Platform::BigCommerce => {
            let hash = given(&raw.store_hash).ok_or_else(|| format!("{key}.store_hash is missing; it is the part after /stores/ in the API path of your API account (Settings > API > Store-level API accounts)"))?;
            if !hash.bytes().all(|c| c.is_ascii_alphanumeric()) {
                return Err(format!("{key}.store_hash = {hash:?} must be letters and digits only, such as \"abc123def\""));
            }
            let token = need("access_token", &raw.access_token, "put the API account's access token here (scopes: Orders read-only, Products read-only, Information & settings read-only; Webhooks need Orders)")?;
            (ApiAuth::BigCommerce(token), format!("https://api.bigcommerce.com/stores/{hash}"))
        }
    };
    let base_url = match given(&raw.base_url) {
        None => default_base,
        Some(u) => {
            let u = u.trim_end_matches('/');
            let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
                .iter()
                .any(|p| {
                    u.strip_prefix(p)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '/']))
                });
            if !u.starts_with("https://") && !loopback {
                return Err(format!("{key}.base_url = {u:?} must be an https:// URL (credentials never travel in the clear; plain http is only for a loopback test server)"));
            }
            u.to_string()
        }
    };
    let version = given(&raw.version)
        .unwrap_or(SHOPIFY_API_VERSION)
        .to_string();
    let v = version.as_bytes();
    if !(v.len() == 7
        && v[4] == b'-'
        && v.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || c.is_ascii_digit()))
    {
        return Err(format!("{key}.version = {version:?} is not a Shopify API version such as \"{SHOPIFY_API_VERSION}\""));
    }
    Ok(ApiConfig {
        base_url,
        auth,
        version,
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProjection {
    page_acceptance: Option<f64>,
    email_click_rate: Option<f64>,
    sms_click_rate: Option<f64>,
    click_to_purchase: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawChannels {
    email: Option<String>,
    sms: Option<String>,
    klaviyo: Option<RawKlaviyo>,
    webhook: Option<RawWebhook>,
    twilio: Option<RawTwilio>,
    postmark: Option<RawPostmark>,
    also_webhook: Option<bool>,
    #[serde(default)]
    kinds: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTwilio {
    account_sid: Option<String>,
    auth_token: Option<String>,
    from: Option<String>,
    base_url: Option<String>,
    rate_per_second: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostmark {
    server_token: Option<String>,
    from: Option<String>,
    message_stream: Option<String>,
    base_url: Option<String>,
    rate_per_second: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKlaviyo {
    api_key: Option<String>,
    #[serde(default)]
    metrics: std::collections::BTreeMap<String, String>,
    base_url: Option<String>,
    rate_per_second: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: Option<String>,
    #[serde(default)]
    secrets: Vec<String>,
    rate_per_second: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOutbound {
    connect_timeout_secs: Option<i64>,
    timeout_secs: Option<i64>,
}

/// `[stores.channels]`; `key` names the table in messages. Secrets are checked for form
/// and never repeated in a message.
fn channels(raw: RawChannels, key: &str) -> Result<ChannelsConfig, String> {
    use crate::outbound::Secret;
    let route = |k: &str, v: Option<String>| -> Result<Route, String> {
        match v.as_deref().unwrap_or("outbox") {
            "outbox" => Ok(Route::Outbox),
            "klaviyo" => Ok(Route::Klaviyo),
            "webhook" => Ok(Route::Webhook),
            "twilio" if k == "sms" => Ok(Route::Twilio),
            "postmark" if k == "email" => Ok(Route::Postmark),
            other => Err(format!(
                "{key}.{k} = {other:?} is not a channel for {k}; use outbox, klaviyo, webhook or {}",
                if k == "sms" { "twilio" } else { "postmark" }
            )),
        }
    };
    let email = route("email", raw.email)?;
    let sms = route("sms", raw.sms)?;
    let rate = |table: &str, v: Option<f64>, default: f64| -> Result<f64, String> {
        let v = v.unwrap_or(default);
        if !(0.1..=10_000.0).contains(&v) {
            return Err(format!(
                "{key}.{table}.rate_per_second = {v} is out of range; use 0.1 to 10000 (the provider's limit for the account)"
            ));
        }
        Ok(v)
    };
    let klaviyo = match raw.klaviyo {
        None => None,
        Some(k) => {
            let api_key = k.api_key.unwrap_or_default();
            if api_key.trim().is_empty() || api_key.starts_with(PLACEHOLDER) {
                return Err(format!(
                    "{key}.klaviyo.api_key is missing; put the account's private API key there (Klaviyo > Settings > API keys), or in secrets_file"
                ));
            }
            let kinds = [
                "touch1",
                "sms",
                "touch2",
                "review",
                "touch3",
                "winback",
                "anticipation",
            ];
            if let Some(bad) = k.metrics.keys().find(|m| !kinds.contains(&m.as_str())) {
                return Err(format!(
                    "{key}.klaviyo.metrics.{bad} is not a touch kind; use {}",
                    kinds.join(", ")
                ));
            }
            Some(KlaviyoConfig {
                rate_per_second: rate("klaviyo", k.rate_per_second, 10.0)?,
                api_key: Secret::new(api_key.trim()),
                metrics: k.metrics,
                base_url: k
                    .base_url
                    .unwrap_or_else(|| crate::outbound::klaviyo::BASE_URL.into()),
            })
        }
    };
    let webhook = match raw.webhook {
        None => None,
        Some(w) => {
            let url = w.url.unwrap_or_default();
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(format!(
                    "{key}.webhook.url = {url:?} is not an http(s) URL such as \"https://hooks.zapier.com/hooks/catch/1/abc\""
                ));
            }
            if w.secrets.is_empty() {
                return Err(format!(
                    "{key}.webhook.secrets is empty; add a signing secret such as \"whsec_\" followed by `openssl rand -base64 32`"
                ));
            }
            for (i, sec) in w.secrets.iter().enumerate() {
                crate::outbound::webhook::check_secret(sec)
                    .map_err(|e| format!("{key}.webhook.secrets[{i}] {e}"))?;
            }
            Some(WebhookConfig {
                rate_per_second: rate("webhook", w.rate_per_second, 10.0)?,
                url,
                secrets: w.secrets.into_iter().map(Secret::new).collect(),
            })
        }
    };
    let secret =
        |table: &str, field: &str, v: Option<String>, hint: &str| -> Result<Secret, String> {
            let v = v.unwrap_or_default();
            if v.trim().is_empty() || v.starts_with(PLACEHOLDER) {
                return Err(format!("{key}.{table}.{field} is missing; {hint}"));
            }
            Ok(Secret::new(v.trim()))
        };
    let twilio = match raw.twilio {
        None => None,
        Some(t) => {
            let sid = t.account_sid.unwrap_or_default();
            if !(sid.starts_with("AC") && sid.len() == 34) {
                return Err(format!(
                    "{key}.twilio.account_sid = {sid:?} is not an Account SID (AC followed by 32 characters, from the Twilio console)"
                ));
            }
            let from = t.from.unwrap_or_default();
            if !(crate::outbound::twilio::is_e164(&from) || from.starts_with("MG")) {
                return Err(format!(
                    "{key}.twilio.from = {from:?} is neither an E.164 number such as \"+16175550100\" nor a Messaging Service SID (MG...)"
                ));
            }
            Some(TwilioConfig {
                rate_per_second: rate("twilio", t.rate_per_second, 1.0)?,
                auth_token: secret(
                    "twilio",
                    "auth_token",
                    t.auth_token,
                    "put the account's Auth Token there, or in secrets_file",
                )?,
                account_sid: sid,
                from,
                base_url: t
                    .base_url
                    .unwrap_or_else(|| crate::outbound::twilio::BASE_URL.into()),
            })
        }
    };
    let postmark = match raw.postmark {
        None => None,
        Some(p) => {
            let from = p.from.unwrap_or_default();
            if !from.contains('@') {
                return Err(format!(
                    "{key}.postmark.from = {from:?} is not a sender address such as \"Coffee Co <hello@coffee.example>\" (a confirmed Postmark sender signature)"
                ));
            }
            Some(PostmarkConfig {
                rate_per_second: rate("postmark", p.rate_per_second, 10.0)?,
                server_token: secret("postmark", "server_token", p.server_token, "put the server's API token there (Postmark > Servers > API Tokens), or in secrets_file")?,
                from,
                message_stream: p.message_stream.unwrap_or_else(|| "outbound".into()),
                base_url: p.base_url.unwrap_or_else(|| crate::outbound::postmark::BASE_URL.into()),
            })
        }
    };
    // A route to a provider needs that provider's table.
    let needs_table = |k: &str, r: Route| -> Result<(), String> {
        let missing = match r {
            Route::Klaviyo => klaviyo.is_none(),
            Route::Webhook => webhook.is_none(),
            Route::Twilio => twilio.is_none(),
            Route::Postmark => postmark.is_none(),
            Route::Outbox => false,
        };
        if missing {
            return Err(format!(
                "{key}.{k} = \"{}\" needs a [{key}.{}] table with its settings",
                r.as_str(),
                r.as_str()
            ));
        }
        Ok(())
    };
    needs_table("email", email)?;
    needs_table("sms", sms)?;
    let mut kinds = std::collections::BTreeMap::new();
    for (k, v) in raw.kinds {
        use crate::engine::plan::TouchKind;
        let kind = TouchKind::parse(&k).filter(|k| k.is_customer_message()).ok_or_else(|| {
            format!(
                "{key}.kinds.{k} is not a touch kind; use touch1, sms, touch2, review, touch3, winback or anticipation"
            )
        })?;
        let medium = if kind == TouchKind::Sms {
            "sms"
        } else {
            "email"
        };
        let r = route(medium, Some(v))
            .map_err(|e| e.replace(&format!("{key}.{medium} ="), &format!("{key}.kinds.{k} =")))?;
        needs_table(&format!("kinds.{k}"), r)?;
        kinds.insert(kind, r);
    }
    let also_webhook = raw.also_webhook.unwrap_or(false);
    if also_webhook && webhook.is_none() {
        return Err(format!(
            "{key}.also_webhook = true needs a [{key}.webhook] table with its url and secrets"
        ));
    }
    Ok(ChannelsConfig {
        email,
        sms,
        klaviyo,
        webhook,
        twilio,
        postmark,
        also_webhook,
        kinds,
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTouches {
    emails_per_week: Option<i64>,
    sms_per_week: Option<i64>,
    messages_per_week: Option<i64>,
    sms_quiets_email_hours: Option<i64>,
    quiet_from_hour: Option<i64>,
    quiet_until_hour: Option<i64>,
    grace_touch1_minutes: Option<i64>,
    grace_sms_minutes: Option<i64>,
    grace_later_hours: Option<i64>,
    page_signal_minutes: Option<i64>,
    delivery_events: Option<bool>,
    transit_days: Option<i64>,
    opens_reported: Option<bool>,
}

/// `[stores.touches]` into the due-time rules; `key` names the table in messages.
fn touch_rules(
    raw: RawTouches,
    stock_threshold: i64,
    key: &str,
) -> Result<(crate::engine::due::Rules, crate::engine::due::DeliveryRules), String> {
    use crate::engine::due::{Caps, DeliveryRules, Grace, Rules};
    let (d, c, g) = (Rules::default(), Caps::default(), Grace::default());
    let r = |k: &str, v: Option<i64>, default: i64, lo: i64, hi: i64| {
        in_range(&format!("{key}.{k}"), v, default, lo, hi)
    };
    const MIN: i64 = 60_000;
    let rules = Rules {
        caps: Caps {
            emails_per_week: r(
                "emails_per_week",
                raw.emails_per_week,
                c.emails_per_week as i64,
                1,
                100,
            )? as usize,
            sms_per_week: r(
                "sms_per_week",
                raw.sms_per_week,
                c.sms_per_week as i64,
                1,
                100,
            )? as usize,
            messages_per_week: r(
                "messages_per_week",
                raw.messages_per_week,
                c.messages_per_week as i64,
                1,
                100,
            )? as usize,
            sms_quiets_email_hours: r(
                "sms_quiets_email_hours",
                raw.sms_quiets_email_hours,
                c.sms_quiets_email_hours,
                0,
                168,
            )?,
        },
        quiet_from: r(
            "quiet_from_hour",
            raw.quiet_from_hour,
            d.quiet_from as i64,
            0,
            23,
        )? as u32,
        quiet_until: r(
            "quiet_until_hour",
            raw.quiet_until_hour,
            d.quiet_until as i64,
            0,
            23,
        )? as u32,
        grace: Grace {
            page: g.page,
            touch1: r(
                "grace_touch1_minutes",
                raw.grace_touch1_minutes,
                g.touch1 / MIN,
                1,
                7 * 1440,
            )? * MIN,
            sms: r(
                "grace_sms_minutes",
                raw.grace_sms_minutes,
                g.sms / MIN,
                1,
                7 * 1440,
            )? * MIN,
            later: r(
                "grace_later_hours",
                raw.grace_later_hours,
                g.later / (60 * MIN),
                1,
                60 * 24,
            )? * 60
                * MIN,
        },
        page_signal_buffer_ms: r(
            "page_signal_minutes",
            raw.page_signal_minutes,
            d.page_signal_buffer_ms / MIN,
            0,
            1440,
        )? * MIN,
        stock_threshold,
        ..d
    };
    let delivery = DeliveryRules {
        events: raw
            .delivery_events
            .unwrap_or(DeliveryRules::default().events),
        transit_days: r(
            "transit_days",
            raw.transit_days,
            DeliveryRules::default().transit_days,
            0,
            90,
        )?,
    };
    Ok((rules, delivery))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOffers {
    recipes: Option<Vec<String>>,
    welcome_floor: Option<String>,
    min_order_value: Option<String>,
    #[serde(default)]
    discount_codes: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    unique_codes: std::collections::BTreeMap<String, i64>,
    #[serde(default)]
    urgency: Vec<String>,
    stock_threshold: Option<i64>,
    price_window: Option<Vec<i64>>,
    min_rating: Option<f64>,
    b2b_tags: Option<Vec<String>>,
    vip_tags: Option<Vec<String>>,
    refund_cooldown_days: Option<i64>,
    email_consent: Option<String>,
    holdout_percent: Option<f64>,
    #[serde(default)]
    experiments: Vec<RawExperiment>,
    #[serde(default)]
    exchange_rates: std::collections::BTreeMap<String, f64>,
    replenish_lead_days: Option<i64>,
    max_order_age_days: Option<i64>,
    cadence: Option<RawCadence>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExperiment {
    name: String,
    variants: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCadence {
    touch1_minutes: Option<i64>,
    sms_minutes: Option<i64>,
    touch2_days: Option<i64>,
    touch2_days_after_delivery: Option<i64>,
    review_days_after_delivery: Option<i64>,
    expected_delivery_days: Option<i64>,
    touch3_days: Option<i64>,
    winback_days: Option<i64>,
    anticipation_days: Option<i64>,
}

/// An integer setting, or its default, if within `lo..=hi`; else what to write.
fn in_range(key: &str, v: Option<i64>, default: i64, lo: i64, hi: i64) -> Result<i64, String> {
    let v = v.unwrap_or(default);
    if v < lo || v > hi {
        return Err(format!("{key} = {v} is out of range; use {lo} to {hi}"));
    }
    Ok(v)
}

/// `[stores.offers]` into a policy; `key` names the table in messages.
fn offers(
    raw: RawOffers,
    currency: Currency,
    key: &str,
) -> Result<crate::engine::plan::Policy, String> {
    use crate::engine::plan::{EmailConsent, Experiment, Policy, Recipe};
    let mut p = Policy::default();
    let names = Recipe::ALL.map(Recipe::as_str).join(", ");
    let recipe = |k: &str, r: &str| {
        Recipe::parse(r)
            .ok_or_else(|| format!("{key}.{k}: {r:?} is not a recipe; use one of {names}"))
    };
    if let Some(list) = raw.recipes {
        p.recipes.clear();
        for r in &list {
            let r = recipe("recipes", r)?;
            if p.recipes.contains(&r) {
                return Err(format!("{key}.recipes lists {} twice", r.as_str()));
            }
            p.recipes.push(r);
        }
    }
    let money = |k: &str, v: Option<String>| -> Result<Option<i64>, String> {
        v.map(|v| {
            currency.parse_minor(v.trim()).map_err(|e| {
                format!(
                    "{key}.{k} = {v:?}: {e}; write an amount in {} such as \"25.00\"",
                    currency.as_str()
                )
            })
        })
        .transpose()
    };
    if let Some(v) = money("welcome_floor", raw.welcome_floor)? {
        p.welcome_floor = v;
    }
    if let Some(v) = money("min_order_value", raw.min_order_value)? {
        p.min_order_value = v;
    }
    for (r, code) in raw.discount_codes {
        let r = recipe("discount_codes", &r)?;
        if code.trim().is_empty() {
            return Err(format!("{key}.discount_codes.{} is empty", r.as_str()));
        }
        p.discount_codes.insert(r, code);
    }
    for (r, pct) in raw.unique_codes {
        let r = recipe("unique_codes", &r)?;
        if p.discount_codes.contains_key(&r) {
            return Err(format!(
                "{key}.unique_codes.{0} and {key}.discount_codes.{0} both give {0} offers a code; keep one",
                r.as_str()
            ));
        }
        if !(1..=90).contains(&pct) {
            return Err(format!(
                "{key}.unique_codes.{} = {pct} is the percentage off each offer's own code: 1 to 90",
                r.as_str()
            ));
        }
        p.unique_codes.insert(r, pct as u8);
    }
    for r in &raw.urgency {
        p.urgency.insert(recipe("urgency", r)?);
    }
    let ranged = |k: &str, v: Option<i64>, default: i64, lo: i64, hi: i64| {
        in_range(&format!("{key}.{k}"), v, default, lo, hi)
    };
    p.stock_threshold = ranged("stock_threshold", raw.stock_threshold, 10, 0, 1_000_000)?;
    if let Some(w) = raw.price_window {
        let ok = w.len() == 3
            && w[0] >= 0
            && w[0] <= w[1]
            && w[1] <= 1000
            && w[2] >= w[0]
            && w[2] <= w[1];
        if !ok {
            return Err(format!("{key}.price_window = {w:?} must be [least %, most %, preferred at or under %] with least <= preferred <= most, e.g. [25, 50, 40]"));
        }
        p.price_window = (w[0] as u32, w[1] as u32, w[2] as u32);
    }
    if let Some(r) = raw.min_rating {
        if !(0.0..=5.0).contains(&r) {
            return Err(format!(
                "{key}.min_rating = {r} must be between 0 and 5 stars"
            ));
        }
        p.min_rating = Some((r * 100.0).round() as u16);
    }
    if let Some(t) = raw.b2b_tags {
        p.b2b_tags = t;
    }
    if let Some(t) = raw.vip_tags {
        p.vip_tags = t;
    }
    p.refund_cooldown_days = ranged(
        "refund_cooldown_days",
        raw.refund_cooldown_days,
        30,
        0,
        3650,
    )?;
    p.email_consent = match raw.email_consent.as_deref() {
        None | Some("soft_opt_in") => EmailConsent::SoftOptIn,
        Some("required") => EmailConsent::Required,
        Some(o) => return Err(format!("{key}.email_consent = {o:?}: use \"required\" or \"soft_opt_in\" (consent is always required for EU, UK and Canadian addresses)")),
    };
    let holdout = raw.holdout_percent.unwrap_or(10.0);
    if !(0.0..=50.0).contains(&holdout) {
        return Err(format!(
            "{key}.holdout_percent = {holdout} must be between 0 and 50 (10-20 is usual)"
        ));
    }
    p.holdout_basis_points = (holdout * 100.0).round() as u32;
    for (i, e) in raw.experiments.into_iter().enumerate() {
        if e.name.trim().is_empty() || e.variants.len() < 2 {
            return Err(format!(
                "{key}.experiments[{i}] needs a name and at least two variants"
            ));
        }
        p.experiments.push(Experiment {
            name: e.name,
            variants: e.variants,
        });
    }
    for (code, rate) in raw.exchange_rates {
        let c = Currency::parse(&code).map_err(|e| format!("{key}.exchange_rates.{code}: {e}"))?;
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!(
                "{key}.exchange_rates.{code} = {rate} must be a positive number of {code} per {}",
                currency.as_str()
            ));
        }
        p.exchange_rates.insert(c, rate);
    }
    p.replenish_lead_days = ranged("replenish_lead_days", raw.replenish_lead_days, 3, 0, 365)?;
    p.max_order_age_days = ranged("max_order_age_days", raw.max_order_age_days, 7, 1, 3650)?;
    let c = raw.cadence.unwrap_or_default();
    let d = crate::engine::plan::Cadence::default();
    let ck = |k: &str, v: Option<i64>, default: i64, hi: i64| {
        ranged(&format!("cadence.{k}"), v, default, 0, hi)
    };
    p.cadence = crate::engine::plan::Cadence {
        touch1_minutes: ck(
            "touch1_minutes",
            c.touch1_minutes,
            d.touch1_minutes,
            7 * 1440,
        )?,
        sms_minutes: ck("sms_minutes", c.sms_minutes, d.sms_minutes, 7 * 1440)?,
        touch2_days: ck("touch2_days", c.touch2_days, d.touch2_days, 365)?,
        touch2_days_after_delivery: ck(
            "touch2_days_after_delivery",
            c.touch2_days_after_delivery,
            d.touch2_days_after_delivery,
            365,
        )?,
        review_days_after_delivery: ck(
            "review_days_after_delivery",
            c.review_days_after_delivery,
            d.review_days_after_delivery,
            365,
        )?,
        expected_delivery_days: ck(
            "expected_delivery_days",
            c.expected_delivery_days,
            d.expected_delivery_days,
            365,
        )?,
        touch3_durable_days: ck("touch3_days", c.touch3_days, d.touch3_durable_days, 365)?,
        winback_days: ck("winback_days", c.winback_days, d.winback_days, 3650)?,
        anticipation_days: match ck("anticipation_days", c.anticipation_days, 0, 365)? {
            0 => None,
            n => Some(n),
        },
    };
    Ok(p)
}

/// Loads the configuration the way every subcommand does.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => load_file(p),
        None if Path::new(SYSTEM_CONFIG).exists() => load_file(Path::new(SYSTEM_CONFIG)),
        None => load_demo(),
    }
}

pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let origin = Origin::File(path.to_path_buf());
    let err = |message: String| ConfigError {
        origin: origin.clone(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        err(format!(
            "cannot read it ({e}); create one with `upsell-appliance init --config {}`",
            path.display()
        ))
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base, origin.clone())
}

fn load_demo() -> Result<Config, ConfigError> {
    let origin = Origin::Demo;
    let secrets = Path::new("upsell-data/demo-secrets.toml");
    if !secrets.exists() {
        let text = format!(
            "# Generated once for the demo store; delete ./upsell-data to start over.\n\
             admin_token = \"{}\"\n\n[[stores]]\nid = \"demo\"\nwebhook_secrets = [\"{}\"]\n",
            random_token(),
            random_token()
        );
        write_private(secrets, &text).map_err(|e| ConfigError {
            origin: origin.clone(),
            message: format!(
                "cannot write demo secrets to {} ({e}); run from a writable directory or pass --config",
                secrets.display()
            ),
        })?;
    }
    parse(DEMO_CONFIG, Path::new("."), origin)
}

/// Parses and validates configuration text. Relative paths resolve against `base`.
pub fn parse(text: &str, base: &Path, origin: Origin) -> Result<Config, ConfigError> {
    let err = |message: String| ConfigError {
        origin: origin.clone(),
        message,
    };
    let mut table: toml::Table =
        toml::from_str(text).map_err(|e| err(toml_message(&e, Some(text))))?;
    if let Some(secrets) = table.get("secrets_file") {
        let file = secrets
            .as_str()
            .ok_or_else(|| err("secrets_file must be a path string".into()))?;
        let path = base.join(file);
        let stext = std::fs::read_to_string(&path).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                "; it is readable by root and the service's group only: run the command with sudo"
            } else {
                ""
            };
            err(format!(
                "secrets_file {}: cannot read it ({e}){hint}",
                path.display()
            ))
        })?;
        let stable: toml::Table = toml::from_str(&stext).map_err(|e| {
            err(format!(
                "secrets_file {}: {}",
                path.display(),
                toml_message(&e, Some(&stext))
            ))
        })?;
        merge(&mut table, stable)
            .map_err(|m| err(format!("secrets_file {}: {m}", path.display())))?;
    }
    let raw: RawConfig = table
        .try_into()
        .map_err(|e: toml::de::Error| err(toml_message(&e, None)))?;
    validate(raw, base, origin.clone()).map_err(err)
}

/// A TOML error as its line and message, without the quoted source line (which, in the
/// secrets file, could show a secret).
fn toml_message(e: &toml::de::Error, text: Option<&str>) -> String {
    let line = e
        .span()
        .zip(text)
        .map(|(span, t)| t[..span.start.min(t.len())].matches('\n').count() + 1);
    match line {
        Some(l) => format!("TOML parse error at line {l}: {}", e.message().trim()),
        None => e.message().trim().to_string(),
    }
}

/// Merges a secrets table over the config: top-level keys replace, stores merge by id.
fn merge(config: &mut toml::Table, secrets: toml::Table) -> Result<(), String> {
    for (key, value) in secrets {
        if key != "stores" {
            config.insert(key, value);
            continue;
        }
        let toml::Value::Array(items) = value else {
            return Err("stores must be an array of tables ([[stores]])".into());
        };
        let Some(toml::Value::Array(stores)) = config.get_mut("stores") else {
            return Err("has [[stores]] but the config has none".into());
        };
        for item in items {
            let toml::Value::Table(item) = item else {
                return Err("stores must be an array of tables ([[stores]])".into());
            };
            let id = item
                .get("id")
                .and_then(|v| v.as_str())
                .ok_or("every [[stores]] entry needs the id of the store it adds secrets to")?
                .to_string();
            let target = stores
                .iter_mut()
                .filter_map(|s| s.as_table_mut())
                .find(|s| s.get("id").and_then(|v| v.as_str()) == Some(id.as_str()))
                .ok_or_else(|| format!("store {id:?} is not in the config"))?;
            merge_tables(target, item);
        }
    }
    Ok(())
}

/// Puts `from`'s keys into `into`; a table both have is merged key by key (a store's
/// `[stores.api]` may hold its store hash in the config and its token in the secrets file).
fn merge_tables(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge_tables(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn validate(raw: RawConfig, base: &Path, origin: Origin) -> Result<Config, String> {
    let addr = |key: &str, v: Option<String>, default: &str| -> Result<SocketAddr, String> {
        let v = v.unwrap_or_else(|| default.to_string());
        SocketAddr::from_str(&v)
            .map_err(|_| format!("{key} = {v:?} is not an address such as \"127.0.0.1:8080\""))
    };
    let listen = addr("listen", raw.listen, "127.0.0.1:8080")?;
    let admin_listen = addr("admin_listen", raw.admin_listen, "127.0.0.1:8081")?;
    if listen == admin_listen && listen.port() != 0 {
        return Err("listen and admin_listen are the same address; give the admin API its own (loopback) port".into());
    }
    let public_url = raw
        .public_url
        .unwrap_or_else(|| format!("http://{listen}"))
        .trim_end_matches('/')
        .to_string();
    if !(public_url.starts_with("https://") || public_url.starts_with("http://")) {
        return Err(format!(
            "public_url = {public_url:?} must start with https:// (how platforms and customers reach this appliance)"
        ));
    }
    let data_dir = match raw.data_dir {
        Some(d) if d.trim().is_empty() => return Err("data_dir is empty".into()),
        Some(d) => base.join(d),
        None => PathBuf::from("/var/lib/upsell-appliance"),
    };
    let templates_dir = match raw.templates_dir {
        Some(d) if d.trim().is_empty() => return Err("templates_dir is empty".into()),
        Some(d) => {
            let dir = base.join(d);
            if !dir.is_dir() {
                return Err(format!(
                    "templates_dir = {}: no such directory; create it with the templates to change (email_subject.txt, email.html, email.txt, sms.txt)",
                    dir.display()
                ));
            }
            Some(dir)
        }
        None => None,
    };
    // Templates load and an SMS with a typical offer fits one segment, or the config is
    // refused here rather than a message at its due time.
    crate::outbound::templates::Templates::load(templates_dir.as_deref())
        .and_then(|t| t.check(&public_url))
        .map_err(|e| match &templates_dir {
            Some(d) => format!("templates_dir = {}: {e}", d.display()),
            None => e,
        })?;
    let log = raw
        .log
        .unwrap_or_else(|| crate::logging::DEFAULT.to_string());
    crate::logging::check(&log).map_err(|e| format!("log = {log:?}: {e}"))?;
    let admin_token = raw.admin_token.unwrap_or_default();
    if admin_token.trim().is_empty() {
        return Err("admin_token is missing; set a long random string (`upsell-appliance init` generates one)".into());
    }
    if admin_token.len() < 16 || admin_token.starts_with(PLACEHOLDER) {
        return Err("admin_token is too short or still the placeholder; use at least 16 random characters (e.g. `openssl rand -hex 32`)".into());
    }
    let cache_size_mb = in_range("cache_size_mb", raw.cache_size_mb, 16, 1, 65_536)? as usize;
    let max_body_bytes =
        in_range("max_body_kb", raw.max_body_kb, 2048, 1, 1_048_576)? as usize * 1024;
    let http_workers = in_range("http_workers", raw.http_workers, 4, 1, 256)? as usize;
    let touch_workers = in_range("touch_workers", raw.touch_workers, 2, 1, 64)? as usize;
    let o = raw.outbound.unwrap_or_default();
    let outbound = OutboundConfig {
        connect_timeout: std::time::Duration::from_secs(in_range(
            "outbound.connect_timeout_secs",
            o.connect_timeout_secs,
            5,
            1,
            60,
        )? as u64),
        timeout: std::time::Duration::from_secs(in_range(
            "outbound.timeout_secs",
            o.timeout_secs,
            20,
            1,
            300,
        )? as u64),
    };
    let a = raw.affinity.unwrap_or_default();
    let fraction = |key: &str, v: Option<f64>, default: f64| -> Result<f64, String> {
        let v = v.unwrap_or(default);
        if !(v > 0.0 && v <= 1.0) {
            return Err(format!(
                "affinity.{key} = {v} must be a fraction above 0 and at most 1 (0.10 = 10%)"
            ));
        }
        Ok(v)
    };
    let affinity = AffinityConfig {
        next_order_window_days: in_range(
            "affinity.next_order_window_days",
            a.next_order_window_days,
            90,
            1,
            3650,
        )? as u32,
        half_life_days: in_range("affinity.half_life_days", a.half_life_days, 180, 0, 36_500)?
            as u32,
        thresholds: crate::engine::affinity::Thresholds {
            strong: fraction("strong_confidence", a.strong_confidence, 0.10)?,
            moderate: fraction("moderate_confidence", a.moderate_confidence, 0.04)?,
            min_pair_orders: in_range(
                "affinity.min_pair_orders",
                a.min_pair_orders,
                3,
                1,
                1_000_000,
            )? as u64,
        },
    };
    let m = raw.measurement.unwrap_or_default();
    let measurement = MeasurementConfig {
        windows: crate::engine::attribution::Windows {
            click_ms: in_range(
                "measurement.click_window_days",
                m.click_window_days,
                7,
                1,
                90,
            )? * 86_400_000,
            accept_ms: in_range(
                "measurement.accept_window_hours",
                m.accept_window_hours,
                24,
                1,
                720,
            )? * 3_600_000,
        },
        min_holdout_orders: in_range(
            "measurement.min_holdout_orders",
            m.min_holdout_orders,
            100,
            2,
            1_000_000,
        )? as u64,
    };
    if affinity.thresholds.moderate > affinity.thresholds.strong {
        return Err("affinity.moderate_confidence is above affinity.strong_confidence; moderate must be the lower bar".into());
    }
    let j = raw.jobs.unwrap_or_default();
    let jobs = JobsConfig {
        purge: Cron::parse("jobs.purge", j.purge.as_deref().unwrap_or("17 3 * * *"))?,
        affinity_check: Cron::parse(
            "jobs.affinity_check",
            j.affinity_check.as_deref().unwrap_or("43 2 * * *"),
        )?,
        sync: Cron::parse("jobs.sync", j.sync.as_deref().unwrap_or("@hourly"))?,
        payload_retention_days: in_range(
            "jobs.payload_retention_days",
            j.payload_retention_days,
            90,
            1,
            36_500,
        )? as u32,
    };
    // No stores is a valid start (the package installs a config without any): the service
    // runs and answers every webhook 404 until one is added; check-config and serve say so.
    let mut stores: Vec<StoreConfig> = Vec::new();
    for (i, s) in raw.stores.into_iter().enumerate() {
        let key = |k: &str| format!("stores[{i}].{k}");
        let id = s.id.ok_or_else(|| format!("{} is missing", key("id")))?;
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
        {
            return Err(format!(
                "{} = {id:?} must be 1-64 characters of a-z, 0-9, '-' or '_' (it is used in URLs)",
                key("id")
            ));
        }
        if stores.iter().any(|o| o.id == id) {
            return Err(format!(
                "{} = {id:?} is used by two stores; ids must be unique",
                key("id")
            ));
        }
        let mode = match s.mode.as_deref() {
            None | Some("dry_run") => Mode::DryRun,
            Some("live") => Mode::Live,
            Some(m) => {
                return Err(format!(
                    "{} = {m:?} (store {id}) is not a mode; use \"dry_run\" (touches go to the outbox only) or \"live\" (touches reach customers)",
                    key("mode")
                ))
            }
        };
        let platform = match s.platform.as_deref() {
            Some("shopify") => Platform::Shopify,
            Some("woocommerce") => Platform::WooCommerce,
            Some("bigcommerce") => Platform::BigCommerce,
            Some(p) => {
                return Err(format!(
                    "{} = {p:?} is not one of shopify, woocommerce, bigcommerce",
                    key("platform")
                ))
            }
            None => {
                return Err(format!(
                    "{} is missing (shopify, woocommerce or bigcommerce)",
                    key("platform")
                ))
            }
        };
        let domain = s.domain.unwrap_or_default();
        if domain.trim().is_empty() {
            return Err(format!(
                "{} is missing (the store's domain, e.g. example.myshopify.com)",
                key("domain")
            ));
        }
        // It goes into links, redirects and headers: a plain host name (an international
        // one in its xn-- form), no scheme or path.
        if !domain
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':'))
        {
            return Err(format!(
                "{} = {domain:?} must be a host name such as \"example.myshopify.com\" (no https://, no path; an international name in its xn-- form)",
                key("domain")
            ));
        }
        if s.webhook_secrets.is_empty() {
            return Err(format!(
                "{} is empty; for Shopify put the app's client secret there (Settings > Apps > Develop apps > API credentials)",
                key("webhook_secrets")
            ));
        }
        for (j, secret) in s.webhook_secrets.iter().enumerate() {
            if secret.starts_with(PLACEHOLDER) {
                return Err(format!(
                    "{}[{j}] still holds the placeholder from `init`; replace it with the platform's webhook secret (for Shopify, the app's client secret)",
                    key("webhook_secrets")
                ));
            }
            if secret.trim().is_empty() {
                return Err(format!("{}[{j}] is empty", key("webhook_secrets")));
            }
        }
        let currency = s.currency.unwrap_or_else(|| "USD".into());
        let currency =
            Currency::parse(&currency).map_err(|e| format!("{}: {e}", key("currency")))?;
        let tz = s.timezone.unwrap_or_else(|| "UTC".into());
        let timezone = chrono_tz::Tz::from_str(&tz).map_err(|_| {
            format!(
                "{} = {tz:?} is not an IANA time zone such as \"America/New_York\"",
                key("timezone")
            )
        })?;
        let webhook_secret_header = match (platform, s.webhook_secret_header) {
            (Platform::BigCommerce, h) => {
                let h = h.unwrap_or_else(|| "X-Webhook-Secret".into());
                if h.is_empty() || !h.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') {
                    return Err(format!(
                        "{} = {h:?} is not a header name such as \"X-Webhook-Secret\"",
                        key("webhook_secret_header")
                    ));
                }
                h.to_ascii_lowercase()
            }
            (_, Some(_)) => {
                return Err(format!(
                "{} is only for bigcommerce stores (Shopify and WooCommerce sign their webhooks)",
                key("webhook_secret_header")
            ))
            }
            (_, None) => String::new(),
        };
        let offers = offers(s.offers.unwrap_or_default(), currency, &key("offers"))?;
        let channels = channels(s.channels.unwrap_or_default(), &key("channels"))?;
        let touches = s.touches.unwrap_or_default();
        let opens_reported = touches.opens_reported.unwrap_or(false);
        let (rules, delivery) = touch_rules(touches, offers.stock_threshold, &key("touches"))?;
        let projection = projection(s.projection.unwrap_or_default(), &key("projection"))?;
        let page = page(s.page.unwrap_or_default(), &offers, &key("page"))?;
        let shopify_client_id = match (platform, s.shopify_client_id) {
            (_, None) => None,
            (Platform::Shopify, Some(c)) if !c.trim().is_empty() => Some(c.trim().to_string()),
            (Platform::Shopify, Some(_)) => {
                return Err(format!("{} is empty", key("shopify_client_id")))
            }
            (_, Some(_)) => {
                return Err(format!(
                    "{} is only for shopify stores (their checkout extension's session tokens)",
                    key("shopify_client_id")
                ))
            }
        };
        let engagement = s
            .engagement
            .map(|e| intake(e, &key("engagement"), &["basic_auth", "path_secret"]))
            .transpose()?;
        let helpdesk = s
            .helpdesk
            .map(|e| {
                let ways = ["basic_auth", "secret", "secret_header", "hmac_secrets"];
                intake(e, &key("helpdesk"), &ways)
            })
            .transpose()?;
        let carrier = s
            .carrier
            .map(|e| intake(e, &key("carrier"), &["hmac_secrets"]))
            .transpose()?;
        let api = s
            .api
            .map(|a| {
                let client_id = shopify_client_id.as_deref();
                api(
                    a,
                    platform,
                    &domain,
                    client_id,
                    &s.webhook_secrets,
                    &key("api"),
                )
            })
            .transpose()?;
        if !offers.unique_codes.is_empty() {
            if platform == Platform::BigCommerce {
                return Err(format!("{} is for shopify and woocommerce stores (their APIs make single-use codes); give a bigcommerce store a static code in discount_codes", key("offers.unique_codes")));
            }
            if api.is_none() {
                return Err(format!("{} needs [stores.api]: each offer's code is made through the platform's API (README \"Platform APIs\")", key("offers.unique_codes")));
            }
        }
        stores.push(StoreConfig {
            api,
            projection,
            page,
            shopify_client_id,
            engagement,
            helpdesk,
            carrier,
            mode,
            name: s
                .name
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| id.clone()),
            offers,
            rules,
            delivery,
            channels,
            opens_reported,
            id,
            platform,
            domain,
            webhook_secrets: s.webhook_secrets,
            webhook_secret_header,
            currency,
            timezone,
        });
    }
    Ok(Config {
        listen,
        admin_listen,
        public_url,
        data_dir,
        admin_token,
        cache_size_mb,
        max_body_bytes,
        http_workers,
        touch_workers,
        outbound,
        templates_dir,
        stores,
        affinity,
        measurement,
        jobs,
        log,
        origin,
    })
}

/// The commented configuration `init` writes, with a fresh admin token.
pub fn template() -> String {
    TEMPLATE.replace("{ADMIN_TOKEN}", &random_token())
}

/// 32 random bytes as hex.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random source is available");
    crate::engine::hex(&b)
}

/// Writes a file readable only by its owner, refusing to replace an existing one.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::plan::{EmailConsent, Recipe};

    fn with_offers(offers: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "admin_token = \"0123456789abcdef0123\"\n[[stores]]\nid = \"s\"\nplatform = \"shopify\"\ndomain = \"s.myshopify.com\"\nwebhook_secrets = [\"x\"]\ncurrency = \"EUR\"\n[stores.offers]\n{offers}"
        );
        parse(&text, Path::new("/"), Origin::Demo)
    }

    #[test]
    fn offers_are_read_into_the_store_policy() {
        let c = with_offers(
            "recipes = [\"cross_sell\", \"welcome\"]\nwelcome_floor = \"30.00\"\ndiscount_codes = { welcome = \"HI10\" }\nprice_window = [20, 60, 30]\nmin_rating = 3.5\nemail_consent = \"required\"\nholdout_percent = 15\nexchange_rates = { USD = 1.08 }\n[stores.offers.cadence]\ntouch1_minutes = 30\nanticipation_days = 2\n",
        )
        .unwrap();
        let p = &c.stores[0].offers;
        assert_eq!(p.recipes, [Recipe::CrossSell, Recipe::Welcome]);
        assert_eq!(p.welcome_floor, 3000);
        assert_eq!(p.discount_codes[&Recipe::Welcome], "HI10");
        assert_eq!(p.price_window, (20, 60, 30));
        assert_eq!(p.min_rating, Some(350));
        assert_eq!(p.email_consent, EmailConsent::Required);
        assert_eq!(p.holdout_basis_points, 1500);
        assert_eq!(p.exchange_rates[&Currency::parse("USD").unwrap()], 1.08);
        assert_eq!(p.cadence.touch1_minutes, 30);
        assert_eq!(p.cadence.anticipation_days, Some(2));
        assert_eq!(p.cadence.touch2_days, 4, "unset keys keep their defaults");
    }

    #[test]
    fn bad_offers_name_the_key_and_what_to_write() {
        for (offers, says) in [
            ("recipes = [\"upsell\"]", "stores[0].offers.recipes: \"upsell\" is not a recipe; use one of welcome, replenishment, upgrade, bundle, cross_sell"),
            ("recipes = [\"welcome\", \"welcome\"]", "lists welcome twice"),
            ("welcome_floor = \"12.345\"", "stores[0].offers.welcome_floor = \"12.345\""),
            ("price_window = [50, 25, 40]", "must be [least %, most %, preferred"),
            ("holdout_percent = 80", "between 0 and 50"),
            ("email_consent = \"maybe\"", "use \"required\" or \"soft_opt_in\""),
            ("exchange_rates = { USD = 0 }", "must be a positive number of USD per EUR"),
            ("[stores.offers.cadence]\ntouch2_days = -1", "cadence.touch2_days = -1 is out of range"),
            ("typo = 1", "unknown field `typo`"),
        ] {
            let err = with_offers(offers).unwrap_err().to_string();
            assert!(err.contains(says), "{offers}: {err}");
        }
    }

    #[test]
    fn touch_rules_are_read_and_checked() {
        let c = with_offers(
            "[stores.touches]
emails_per_week = 3
quiet_from_hour = 20
grace_touch1_minutes = 60
delivery_events = false
transit_days = 6
",
        )
        .unwrap();
        let s = &c.stores[0];
        assert_eq!(s.rules.caps.emails_per_week, 3);
        assert_eq!(
            s.rules.caps.sms_per_week, 1,
            "unset keys keep their defaults"
        );
        assert_eq!(s.rules.quiet_from, 20);
        assert_eq!(s.rules.grace.touch1, 3_600_000);
        assert_eq!(s.rules.stock_threshold, s.offers.stock_threshold);
        assert!(!s.delivery.events);
        assert_eq!(s.delivery.transit_days, 6);
        for (touches, says) in [
            (
                "quiet_until_hour = 24",
                "stores[0].touches.quiet_until_hour = 24 is out of range; use 0 to 23",
            ),
            ("emails_per_week = 0", "emails_per_week = 0 is out of range"),
            ("delivery_events = \"no\"", "invalid type"),
            ("grace = 1", "unknown field `grace`"),
        ] {
            let err = with_offers(&format!("[stores.touches]\n{touches}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{touches}: {err}");
        }
    }

    #[test]
    fn intakes_take_their_own_ways_in_and_say_what_is_wrong() {
        let ok = with_offers(
            "[stores.helpdesk]\nsecret = \"helpdesk-secret-0123456789abcdef\"\nsecret_header = \"X-Gorgias-Key\"\n[stores.carrier]\nhmac_secrets = [\"carrier-hmac-key-0123456789abcdef\"]\n",
        )
        .unwrap();
        let s = &ok.stores[0];
        let (name, _) = s.helpdesk.as_ref().unwrap().header.as_ref().unwrap();
        assert_eq!(name, "x-gorgias-key", "header names compare lower-cased");
        assert_eq!(s.carrier.as_ref().unwrap().hmac_secrets.len(), 1);
        for (table, says) in [
            (
                "[stores.helpdesk]",
                "stores[0].helpdesk needs basic_auth or secret or secret_header or hmac_secrets",
            ),
            (
                "[stores.helpdesk]\nsecret = \"short\"",
                "stores[0].helpdesk.secret must be 24 or more",
            ),
            (
                "[stores.helpdesk]\nsecret_header = \"X-Key\"",
                "stores[0].helpdesk.secret, its value, is missing",
            ),
            (
                "[stores.carrier]\nbasic_auth = \"a:0123456789abcdef0\"",
                "stores[0].carrier.basic_auth is not a way into this intake; it takes hmac_secrets",
            ),
            (
                "[stores.carrier]\nhmac_secrets = [\"short\"]",
                "stores[0].carrier.hmac_secrets[0] is shorter than 24",
            ),
            (
                "[stores.engagement]\nsecret = \"helpdesk-secret-0123456789abcdef\"",
                "engagement.secret is not a way into this intake",
            ),
        ] {
            let err = with_offers(table).unwrap_err().to_string();
            assert!(err.contains(says), "{table}: {err}");
        }
    }

    fn with_jobs(jobs: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "admin_token = \"0123456789abcdef0123\"\n[jobs]\n{jobs}\n[[stores]]\nid = \"s\"\nplatform = \"shopify\"\ndomain = \"s.myshopify.com\"\nwebhook_secrets = [\"x\"]\n"
        );
        parse(&text, Path::new("/"), Origin::Demo)
    }

    fn at(rfc3339: &str) -> crate::engine::Timestamp {
        crate::engine::Timestamp(
            chrono::DateTime::parse_from_rfc3339(rfc3339)
                .unwrap()
                .timestamp_millis(),
        )
    }

    #[test]
    fn jobs_default_to_nightly_utc_schedules_and_90_days() {
        let j = with_jobs("").unwrap().jobs;
        assert_eq!(j.purge.as_str(), "17 3 * * *");
        assert_eq!(j.affinity_check.as_str(), "43 2 * * *");
        assert_eq!(j.payload_retention_days, 90);
        let next = |c: &Cron, t: &str| c.next_after(at(t)).unwrap().to_rfc3339();
        assert_eq!(
            next(&j.purge, "2026-11-22T01:00:00Z"),
            "2026-11-22T03:17:00Z"
        );
        // Strictly after: a run at its slot is next due a day later.
        assert_eq!(
            next(&j.purge, "2026-11-22T03:17:00Z"),
            "2026-11-23T03:17:00Z"
        );
        assert_eq!(
            next(&j.affinity_check, "2026-12-31T23:59:59Z"),
            "2027-01-01T02:43:00Z"
        );
    }

    #[test]
    fn cron_schedules_take_crontab_fields_names_seconds_and_shorthands() {
        let next = |expr: &str, t: &str| {
            Cron::parse("k", expr)
                .unwrap()
                .next_after(at(t))
                .unwrap()
                .to_rfc3339()
        };
        // 2026-11-22 is a Sunday.
        assert_eq!(
            next("0 */6 * * Mon-Fri", "2026-11-22T10:00:00Z"),
            "2026-11-23T00:00:00Z"
        );
        assert_eq!(
            next("30 4 1 * *", "2026-11-22T00:00:00Z"),
            "2026-12-01T04:30:00Z"
        );
        assert_eq!(
            next("15 30 4 * * Sun", "2026-11-22T05:00:00Z"),
            "2026-11-29T04:30:15Z"
        );
        assert_eq!(
            next("@daily", "2026-11-22T05:00:00Z"),
            "2026-11-23T00:00:00Z"
        );
        assert_eq!(
            next("  5 * * * *  ", "2026-11-22T05:05:00Z"),
            "2026-11-22T06:05:00Z"
        );
    }

    #[test]
    fn bad_cron_schedules_name_the_key_what_is_wrong_and_an_example() {
        for (jobs, says) in [
            ("purge = \"61 3 * * *\"", "jobs.purge = \"61 3 * * *\" is not a cron schedule: Minutes must be at most 59. ('61' specified.);"),
            ("purge = \"daily\"", "jobs.purge = \"daily\" has 1 field; write minute hour day-of-month month day-of-week (UTC)"),
            ("affinity_check = \"3 * * *\"", "jobs.affinity_check = \"3 * * *\" has 4 fields"),
            ("affinity_check = \"0 3 * * 1\"", "gives days of the week as numbers (1)"),
            ("purge = \"0 0 30 Feb *\"", "never fires"),
            ("purge = \"\"", "has 0 fields"),
            ("payload_retention_days = 0", "jobs.payload_retention_days = 0 is out of range; use 1 to 36500"),
            ("purge_at = \"17 3 * * *\"", "unknown field `purge_at`"),
        ] {
            let err = with_jobs(jobs).unwrap_err().to_string();
            assert!(err.contains(says), "{jobs}: {err}");
            if err.contains("cron") || err.contains("fields") || err.contains("numbers") {
                assert!(err.contains("e.g. \"17 3 * * *\""), "{jobs}: {err}");
            }
        }
    }

    #[test]
    fn channels_are_routed_and_their_secrets_checked_without_being_shown() {
        let c = with_offers(
            "[stores.channels]\nemail = \"klaviyo\"\nsms = \"webhook\"\n[stores.channels.klaviyo]\napi_key = \"pk_live_abcdef\"\nmetrics = { touch1 = \"Thanks 1\" }\n[stores.channels.webhook]\nurl = \"https://hooks.example.com/u\"\nsecrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]\n",
        )
        .unwrap();
        let ch = &c.stores[0].channels;
        assert_eq!((ch.email, ch.sms), (Route::Klaviyo, Route::Webhook));
        let c = with_offers(
            "[stores.channels]\nkinds = { review = \"webhook\" }\n[stores.channels.webhook]\nurl = \"https://hooks.example.com/u\"\nsecrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.stores[0].channels.kinds[&crate::engine::plan::TouchKind::Review],
            Route::Webhook
        );
        assert_eq!(ch.klaviyo.as_ref().unwrap().metrics["touch1"], "Thanks 1");
        assert!(
            !format!("{c:?}").contains("pk_live_abcdef"),
            "no secret in Debug"
        );
        for (channels, says) in [
            (
                "email = \"mailchimp\"",
                "channels.email = \"mailchimp\" is not a channel for email; use outbox, klaviyo, webhook or postmark",
            ),
            (
                "email = \"klaviyo\"",
                "channels.email = \"klaviyo\" needs a [stores[0].channels.klaviyo] table",
            ),
            (
                "[stores.channels.klaviyo]\nmetrics = {}",
                "klaviyo.api_key is missing",
            ),
            (
                "[stores.channels.klaviyo]\napi_key = \"k\"\nmetrics = { touch9 = \"x\" }",
                "metrics.touch9 is not a touch kind",
            ),
            (
                "[stores.channels.webhook]\nurl = \"ftp://x\"\nsecrets = []",
                "is not an http(s) URL",
            ),
            (
                "[stores.channels.webhook]\nurl = \"https://x\"\nsecrets = [\"whsec_c2VjcmV0\"]",
                "secrets[0] holds 6 bytes",
            ),
        ] {
            let err = with_offers(&format!("[stores.channels]\n{channels}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{channels}: {err}");
            assert!(!err.contains("c2VjcmV0"), "{err}");
        }
    }

    #[test]
    fn a_store_is_a_dry_run_unless_its_mode_says_live() {
        let store = "admin_token = \"0123456789abcdef0123\"\n[[stores]]\nid = \"s\"\nplatform = \"shopify\"\ndomain = \"s.myshopify.com\"\nwebhook_secrets = [\"x\"]\n";
        let mode = |line: &str| {
            parse(&format!("{store}{line}"), Path::new("/"), Origin::Demo)
                .map(|c| c.stores[0].mode)
                .map_err(|e| e.to_string())
        };
        assert_eq!(mode(""), Ok(Mode::DryRun));
        assert_eq!(mode("mode = \"dry_run\""), Ok(Mode::DryRun));
        assert_eq!(mode("mode = \"live\""), Ok(Mode::Live));
        assert_eq!(
            mode("mode = \"Live\""),
            Err("config the built-in demo config: stores[0].mode = \"Live\" (store s) is not a mode; use \"dry_run\" (touches go to the outbox only) or \"live\" (touches reach customers)".into())
        );
        // The demo and the template `init` writes start as dry runs.
        assert!(DEMO_CONFIG.contains("\nmode = \"dry_run\""));
        assert!(TEMPLATE.contains("\nmode = \"dry_run\""));
    }

    #[test]
    fn a_template_rendering_an_sms_over_one_segment_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let base = "admin_token = \"0123456789abcdef0123\"\n[[stores]]\nid = \"s\"\nplatform = \"shopify\"\ndomain = \"s.myshopify.com\"\nwebhook_secrets = [\"x\"]\n";
        let with_dir = format!("templates_dir = \"{}\"\n{base}", dir.path().display());
        // An override that fits: accepted.
        std::fs::write(
            dir.path().join("sms.txt"),
            "{{ store_name }}: {{ links.click }}",
        )
        .unwrap();
        assert!(parse(&with_dir, Path::new("/"), Origin::Demo).is_ok());
        // One that renders over 160 characters with a typical offer: refused, saying so.
        std::fs::write(
            dir.path().join("sms.txt"),
            "{{ store_name }} thanks you for your order! Add {{ offer.title }} for {{ offer.price }} {{ offer.currency }} with code {{ offer.discount_code }}: {{ links.click }}",
        )
        .unwrap();
        let err = parse(&with_dir, Path::new("/"), Origin::Demo)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("templates_dir") && err.contains("over the 160"),
            "{err}"
        );
        // A template that does not parse: named.
        std::fs::write(dir.path().join("email.html"), "{% if %}").unwrap();
        let err = parse(&with_dir, Path::new("/"), Origin::Demo)
            .unwrap_err()
            .to_string();
        assert!(err.contains("template email.html"), "{err}");
        // No such directory.
        let err = parse(
            &format!("templates_dir = \"/nonexistent/t\"\n{base}"),
            Path::new("/"),
            Origin::Demo,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no such directory"), "{err}");
    }

    #[test]
    fn platform_api_credentials_are_read_per_platform_and_merged_from_the_secrets_file() {
        let store = |platform: &str, domain: &str, api: &str| {
            format!("admin_token = \"0123456789abcdef0123\"\n[[stores]]\nid = \"s\"\nplatform = \"{platform}\"\ndomain = \"{domain}\"\nwebhook_secrets = [\"client-secret-1\"]\nshopify_client_id = \"cid\"\n[stores.api]\n{api}")
        };
        let ok = |text: String| {
            let text = if text.contains("\"shopify\"") {
                text
            } else {
                text.replace("shopify_client_id = \"cid\"\n", "")
            };
            parse(&text, Path::new("/"), Origin::Demo).unwrap().stores[0]
                .api
                .clone()
                .unwrap()
        };
        let err = |text: String| {
            parse(&text, Path::new("/"), Origin::Demo)
                .unwrap_err()
                .to_string()
        };
        // A Dev Dashboard app: the client id of the store, the secret its webhooks are signed with.
        let a = ok(store("shopify", "s.myshopify.com", ""));
        assert_eq!(a.base_url, "https://s.myshopify.com");
        assert_eq!(a.version, SHOPIFY_API_VERSION);
        match a.auth {
            ApiAuth::ShopifyClient {
                client_id,
                client_secret,
            } => {
                assert_eq!(
                    (client_id.as_str(), client_secret.expose()),
                    ("cid", "client-secret-1")
                )
            }
            other => panic!("{other:?}"),
        }
        let a = ok(store(
            "shopify",
            "s.myshopify.com",
            "access_token = \"shpat_x\"\nversion = \"2026-07\"",
        ));
        assert!(matches!(a.auth, ApiAuth::ShopifyToken(_)));
        assert_eq!(a.version, "2026-07");
        assert!(!format!("{a:?}").contains("shpat_x"), "secrets never show");
        let a = ok(store(
            "bigcommerce",
            "x.mybigcommerce.com",
            "store_hash = \"abc123\"\naccess_token = \"t\"",
        ));
        assert_eq!(a.base_url, "https://api.bigcommerce.com/stores/abc123");
        let a = ok(store("woocommerce", "shop.example.com", "consumer_key = \"ck_1\"\nconsumer_secret = \"cs_1\"\nbase_url = \"http://127.0.0.1:9/\""));
        assert_eq!(a.base_url, "http://127.0.0.1:9");
        for (platform, api, want) in [
            (
                "woocommerce",
                "consumer_key = \"ck_1\"",
                "stores[0].api.consumer_secret is missing",
            ),
            (
                "woocommerce",
                "access_token = \"x\"",
                "stores[0].api.access_token is not for a woocommerce store",
            ),
            (
                "bigcommerce",
                "access_token = \"t\"",
                "stores[0].api.store_hash is missing",
            ),
            (
                "bigcommerce",
                "store_hash = \"ab/c\"\naccess_token = \"t\"",
                "letters and digits only",
            ),
            (
                "shopify",
                "access_token = \"a\"\nclient_secret = \"b\"",
                "not both",
            ),
            (
                "shopify",
                "access_token = \"a\"\nbase_url = \"http://api.example.com\"",
                "must be an https:// URL",
            ),
            (
                "shopify",
                "access_token = \"a\"\nversion = \"latest\"",
                "not a Shopify API version",
            ),
        ] {
            let e =
                err(store(platform, "s.example.com", api)
                    .replace("shopify_client_id = \"cid\"\n", ""));
            assert!(e.contains(want), "{api}: {e}");
        }
        // The store hash in the config, the token in the secrets file: both are read.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("secrets.toml"),
            "[[stores]]\nid = \"s\"\n[stores.api]\naccess_token = \"from-secrets\"\n",
        )
        .unwrap();
        let text = format!(
            "secrets_file = \"secrets.toml\"\n{}",
            store(
                "bigcommerce",
                "x.mybigcommerce.com",
                "store_hash = \"abc123\""
            )
            .replace("shopify_client_id = \"cid\"\n", "")
        );
        let c = parse(&text, dir.path(), Origin::Demo).unwrap();
        match &c.stores[0].api.as_ref().unwrap().auth {
            ApiAuth::BigCommerce(t) => assert_eq!(t.expose(), "from-secrets"),
            other => panic!("{other:?}"),
        }
        // Offers' own codes: a percentage per recipe, through an API that makes them.
        let with = |platform: &str, api: &str, offers: &str| {
            let text = format!(
                "{}\n[stores.offers]\n{offers}",
                store(platform, "s.example.com", api).replace("shopify_client_id = \"cid\"\n", "")
            );
            parse(&text, Path::new("/"), Origin::Demo)
                .map(|c| c.stores[0].offers.unique_codes.clone())
        };
        let shop = "access_token = \"a\"";
        let ok = with("shopify", shop, "unique_codes = { welcome = 15 }").unwrap();
        assert_eq!(ok.get(&crate::engine::plan::Recipe::Welcome), Some(&15));
        for (platform, api, offers, want) in [
            (
                "shopify",
                shop,
                "unique_codes = { welcome = 95 }",
                "1 to 90",
            ),
            (
                "shopify",
                shop,
                "discount_codes = { welcome = \"W\" }\nunique_codes = { welcome = 10 }",
                "keep one",
            ),
            (
                "bigcommerce",
                "store_hash = \"abc\"\naccess_token = \"t\"",
                "unique_codes = { welcome = 10 }",
                "give a bigcommerce store a static code",
            ),
        ] {
            let e = with(platform, api, offers).unwrap_err().to_string();
            assert!(e.contains(want), "{offers}: {e}");
        }
    }
}
