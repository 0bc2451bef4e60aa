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
    pub stores: Vec<StoreConfig>,
    pub affinity: AffinityConfig,
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

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub id: String,
    pub platform: Platform,
    pub domain: String,
    pub webhook_secrets: Vec<String>,
    /// BigCommerce only: the custom header the webhook subscription sends, whose value must
    /// be one of `webhook_secrets` (BigCommerce documents no signature).
    pub webhook_secret_header: String,
    pub currency: Currency,
    pub timezone: chrono_tz::Tz,
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
    #[allow(dead_code)] // consumed by the merge before deserializing
    secrets_file: Option<String>,
    #[serde(default)]
    stores: Vec<RawStore>,
    affinity: Option<RawAffinity>,
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
    platform: Option<String>,
    domain: Option<String>,
    #[serde(default)]
    webhook_secrets: Vec<String>,
    currency: Option<String>,
    timezone: Option<String>,
    webhook_secret_header: Option<String>,
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
    let mut table: toml::Table = toml::from_str(text).map_err(|e| err(toml_message(&e)))?;
    if let Some(secrets) = table.get("secrets_file") {
        let file = secrets
            .as_str()
            .ok_or_else(|| err("secrets_file must be a path string".into()))?;
        let path = base.join(file);
        let stext = std::fs::read_to_string(&path).map_err(|e| {
            err(format!(
                "secrets_file {}: cannot read it ({e})",
                path.display()
            ))
        })?;
        let stable: toml::Table = toml::from_str(&stext).map_err(|e| {
            err(format!(
                "secrets_file {}: {}",
                path.display(),
                toml_message(&e)
            ))
        })?;
        merge(&mut table, stable)
            .map_err(|m| err(format!("secrets_file {}: {m}", path.display())))?;
    }
    let raw: RawConfig = table
        .try_into()
        .map_err(|e: toml::de::Error| err(toml_message(&e)))?;
    validate(raw, base, origin.clone()).map_err(err)
}

fn toml_message(e: &toml::de::Error) -> String {
    e.to_string().trim().replace('\n', " ").replace("  ", " ")
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
            for (k, v) in item {
                target.insert(k, v);
            }
        }
    }
    Ok(())
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
    let admin_token = raw.admin_token.unwrap_or_default();
    if admin_token.trim().is_empty() {
        return Err("admin_token is missing; set a long random string (`upsell-appliance init` generates one)".into());
    }
    if admin_token.len() < 16 || admin_token.starts_with(PLACEHOLDER) {
        return Err("admin_token is too short or still the placeholder; use at least 16 random characters (e.g. `openssl rand -hex 32`)".into());
    }
    let ranged =
        |key: &str, v: Option<i64>, default: i64, lo: i64, hi: i64| -> Result<usize, String> {
            let v = v.unwrap_or(default);
            if v < lo || v > hi {
                return Err(format!("{key} = {v} is out of range; use {lo} to {hi}"));
            }
            Ok(v as usize)
        };
    let cache_size_mb = ranged("cache_size_mb", raw.cache_size_mb, 16, 1, 65_536)?;
    let max_body_bytes = ranged("max_body_kb", raw.max_body_kb, 2048, 1, 1_048_576)? * 1024;
    let http_workers = ranged("http_workers", raw.http_workers, 4, 1, 256)?;
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
        next_order_window_days: ranged(
            "affinity.next_order_window_days",
            a.next_order_window_days,
            90,
            1,
            3650,
        )? as u32,
        half_life_days: ranged("affinity.half_life_days", a.half_life_days, 180, 0, 36_500)? as u32,
        thresholds: crate::engine::affinity::Thresholds {
            strong: fraction("strong_confidence", a.strong_confidence, 0.10)?,
            moderate: fraction("moderate_confidence", a.moderate_confidence, 0.04)?,
            min_pair_orders: ranged(
                "affinity.min_pair_orders",
                a.min_pair_orders,
                3,
                1,
                1_000_000,
            )? as u64,
        },
    };
    if affinity.thresholds.moderate > affinity.thresholds.strong {
        return Err("affinity.moderate_confidence is above affinity.strong_confidence; moderate must be the lower bar".into());
    }
    if raw.stores.is_empty() {
        return Err("no [[stores]] configured; add one (see `upsell-appliance init`)".into());
    }
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
        stores.push(StoreConfig {
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
        stores,
        affinity,
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
    b.iter().map(|x| format!("{x:02x}")).collect()
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
