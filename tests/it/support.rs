//! Test harness: the real service started in-process on 127.0.0.1:0 with a temporary data
//! dir, a plain HTTP client, and Shopify signing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use upsell_appliance::app::{self, Options, Running};
use upsell_appliance::config::{self, Config, Origin};
use upsell_appliance::ingest::shopify;
use upsell_appliance::storage::Faults;

pub const SECRET: &str = "shpss_test_secret_0123456789abcdef";
pub const OLD_SECRET: &str = "shpss_old_secret_0123456789abcdef";
pub const TOKEN: &str = "admin-token-0123456789abcdef0123";
pub const STORE: &str = "main";
pub const WOO_STORE: &str = "woo";
pub const WOO_SECRET: &str = "woo_webhook_secret_0123456789";
pub const BC_STORE: &str = "bc";
pub const BC_SECRET: &str = "bc_shared_secret_0123456789";

/// A config for tests: ports chosen by the OS, the given data dir, one Shopify store.
pub fn config_text(data_dir: &Path, listen: &str, admin_listen: &str) -> String {
    config_text_with(data_dir, listen, admin_listen, "")
}

/// [`config_text`] with `shopify_extra` (top-level keys such as `mode`, then TOML tables
/// such as `[stores.channels]`) added to the Shopify store.
pub fn config_text_with(
    data_dir: &Path,
    listen: &str,
    admin_listen: &str,
    shopify_extra: &str,
) -> String {
    format!(
        r#"
listen = "{listen}"
admin_listen = "{admin_listen}"
public_url = "https://upsell.example.com"
data_dir = "{}"
admin_token = "{TOKEN}"
max_body_kb = 256

[[stores]]
id = "{STORE}"
platform = "shopify"
domain = "test-store.myshopify.com"
webhook_secrets = ["{SECRET}", "{OLD_SECRET}"]
currency = "USD"
timezone = "America/Toronto"
{shopify_extra}

[stores.offers]
# Plans in tests must not depend on the random salt's holdout draw.
holdout_percent = 0

[[stores]]
id = "{WOO_STORE}"
platform = "woocommerce"
domain = "shop.example.com"
webhook_secrets = ["{WOO_SECRET}"]
currency = "EUR"
timezone = "Europe/Berlin"

[[stores]]
id = "{BC_STORE}"
platform = "bigcommerce"
domain = "store-abc123.mybigcommerce.com"
webhook_secrets = ["{BC_SECRET}"]
webhook_secret_header = "X-Upsell-Secret"
"#,
        data_dir.display()
    )
}

pub fn test_config(data_dir: &Path) -> Config {
    config::parse(
        &config_text(data_dir, "127.0.0.1:0", "127.0.0.1:0"),
        Path::new("/"),
        Origin::Demo,
    )
    .expect("test config is valid")
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(20)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// Posts a signed `orders/paid` delivery with `event` as its id to the test store of a
/// service at `addr` (a `serve` subprocess); the status, or `None` without an answer.
pub fn post_paid(agent: &ureq::Agent, addr: &str, event: &str, body: &[u8]) -> Option<u16> {
    agent
        .post(&format!("http://{addr}/webhooks/{STORE}"))
        .header("X-Shopify-Topic", "orders/paid")
        .header("X-Shopify-Hmac-Sha256", &shopify::sign(body, SECRET))
        .header("X-Shopify-Event-Id", event)
        .send(body)
        .ok()
        .map(|r| r.status().as_u16())
}

/// An agent that shows redirects instead of following them.
pub fn no_redirects() -> ureq::Agent {
    ureq::Agent::config_builder()
        .max_redirects(0)
        .http_status_as_error(false)
        .build()
        .into()
}

/// Imports the demo store's catalog and order history (`assets/demo`) into `store`.
pub fn import_demo(storage: &upsell_appliance::storage::Storage, config: &Config, store: &str) {
    let assets = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo"));
    upsell_appliance::ops::import_catalog(storage, config, store, &assets.join("catalog.csv"))
        .unwrap();
    upsell_appliance::ops::import_orders(
        storage,
        config,
        store,
        &assets.join("orders.csv"),
        false,
        &mut |_| {},
    )
    .unwrap();
}

pub struct TestServer {
    pub running: Option<Running>,
    pub data_dir: PathBuf,
    pub agent: ureq::Agent,
    _tmp: Option<tempfile::TempDir>,
}

impl TestServer {
    pub fn start() -> TestServer {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = TestServer::start_in(tmp.path(), Faults::default());
        s._tmp = Some(tmp);
        s
    }

    pub fn start_in(data_dir: &Path, faults: Faults) -> TestServer {
        TestServer::start_with(
            data_dir,
            Options {
                faults,
                clock: Arc::new(upsell_appliance::clock::SystemClock),
                io_timeout: app::IO_TIMEOUT,
            },
        )
    }

    pub fn start_with(data_dir: &Path, options: Options) -> TestServer {
        TestServer::start_config(test_config(data_dir), data_dir, options)
    }

    pub fn start_config(config: Config, data_dir: &Path, options: Options) -> TestServer {
        let running = app::start(config, options).expect("service starts");
        TestServer {
            running: Some(running),
            data_dir: data_dir.to_path_buf(),
            agent: agent(),
            _tmp: None,
        }
    }

    /// Starts on `clock` with the demo catalog and history imported into the Shopify store.
    pub fn start_demo(
        data_dir: &Path,
        clock: Arc<dyn upsell_appliance::clock::Clock>,
    ) -> TestServer {
        let s = TestServer::start_with(
            data_dir,
            Options {
                clock,
                ..Options::default()
            },
        );
        import_demo(&s.running().storage, &test_config(data_dir), STORE);
        s
    }

    /// [`TestServer::start_demo`] with `shopify_extra` added to the Shopify store's config.
    pub fn start_demo_with(
        data_dir: &Path,
        clock: Arc<dyn upsell_appliance::clock::Clock>,
        shopify_extra: &str,
    ) -> TestServer {
        let config = config::parse(
            &config_text_with(data_dir, "127.0.0.1:0", "127.0.0.1:0", shopify_extra),
            Path::new("/"),
            Origin::Demo,
        )
        .expect("test config is valid");
        let s = TestServer::start_config(
            config.clone(),
            data_dir,
            Options {
                clock,
                ..Options::default()
            },
        );
        import_demo(&s.running().storage, &config, STORE);
        s
    }

    /// `GET /api/explain` for an order of the Shopify store: the status and the answer.
    pub fn explain(&self, order: &str) -> (u16, serde_json::Value) {
        let (code, body) = self.admin_get(&format!("/api/explain?store={STORE}&order={order}"));
        (code, serde_json::from_str(&body).unwrap())
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.running().public_addr, path)
    }

    /// Posts a Shopify webhook signed with the current secret.
    pub fn webhook(&self, topic: &str, event_id: &str, body: &[u8]) -> u16 {
        let sig = shopify::sign(body, SECRET);
        self.post(
            &format!("/webhooks/{STORE}"),
            &[
                ("X-Shopify-Topic", topic),
                ("X-Shopify-Hmac-Sha256", &sig),
                ("X-Shopify-Event-Id", event_id),
                ("X-Shopify-Webhook-Id", &format!("wh-{event_id}")),
                ("X-Shopify-Shop-Domain", "test-store.myshopify.com"),
                ("X-Shopify-API-Version", "2026-10"),
            ],
            body,
        )
        .0
    }

    /// Posts a WooCommerce webhook signed with the store's secret.
    pub fn woo_webhook(&self, topic: &str, delivery: Option<&str>, body: &[u8]) -> u16 {
        use base64::Engine as _;
        use hmac::Mac as _;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(WOO_SECRET.as_bytes()).unwrap();
        mac.update(body);
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let mut headers = vec![
            ("X-WC-Webhook-Source", "https://shop.example.com/"),
            ("X-WC-Webhook-Topic", topic),
            ("X-WC-Webhook-Resource", "order"),
            ("X-WC-Webhook-Signature", sig.as_str()),
            ("X-WC-Webhook-ID", "3"),
        ];
        if let Some(d) = delivery {
            headers.push(("X-WC-Webhook-Delivery-ID", d));
        }
        self.post(&format!("/webhooks/{WOO_STORE}"), &headers, body)
            .0
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
        let mut rq = self.agent.post(&self.url(path));
        for (k, v) in headers {
            rq = rq.header(*k, *v);
        }
        let mut resp = rq.send(body).expect("request completes");
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap_or_default())
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let mut resp = self
            .agent
            .get(&self.url(path))
            .call()
            .expect("request completes");
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap_or_default())
    }

    /// A GET on the admin listener with the admin token.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.running().admin_addr);
        let auth = format!("Bearer {TOKEN}");
        let mut resp = self
            .agent
            .get(&url)
            .header("Authorization", &auth)
            .call()
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap_or_default())
    }

    /// An empty POST on the admin listener with the admin token.
    pub fn admin_post(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.running().admin_addr);
        let auth = format!("Bearer {TOKEN}");
        let mut resp = self
            .agent
            .post(&url)
            .header("Authorization", &auth)
            .send_empty()
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap_or_default())
    }

    /// `GET /api/status` on the admin listener.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.admin_get("/api/status");
        assert_eq!(code, 200);
        serde_json::from_str(&body).unwrap()
    }

    /// The Shopify store's webhook, order and customer figures. Its touch figures move on
    /// their own as the scheduler decides touches, so they are left out (read `status()`).
    pub fn store_status(&self) -> serde_json::Value {
        let mut v = self.status()["stores"][0].clone();
        v.as_object_mut().map(|o| o.remove("touches"));
        v
    }

    pub fn woo_status(&self) -> serde_json::Value {
        self.status()["stores"][1].clone()
    }

    /// Waits until the processor has applied every stored event.
    pub fn wait_processed(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.status();
            if s["events"]["stored"] == s["events"]["processed"] {
                return;
            }
            assert!(Instant::now() < deadline, "processor did not catch up: {s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().expect("clean shutdown");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.shutdown();
        }
    }
}
