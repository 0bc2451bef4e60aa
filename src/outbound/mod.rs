//! Channels that deliver due touches: the outbox file (the default for the demo and dry
//! runs), Klaviyo, Twilio, Postmark and signed webhooks (issue 7). The only module that
//! imports ureq for the providers: one [`Channel`] adapter per provider, each turning a
//! [`Message`] into one HTTP request and the answer into an [`Outcome`].

pub mod klaviyo;
pub mod outbox;
pub mod platform;
pub mod postmark;
pub mod templates;
pub mod twilio;
pub mod webhook;

use std::time::Duration;

use crate::engine::plan::{Channel as Medium, Offer, Recipe, TouchKind};
use crate::engine::Timestamp;

/// An offer as messages carry it and `explain` shows it: the price a decimal string in
/// the offer's (the order's) currency.
pub fn offer_json(o: &Offer) -> serde_json::Value {
    serde_json::json!({
        "product": o.product, "sku": o.sku, "variant_id": o.variant_id, "title": o.title,
        "price": o.currency.format_minor(o.price), "currency": o.currency.as_str(),
        "discount_code": o.discount_code,
    })
}

/// A secret from the configuration (API key, token, signing secret): its `Debug` and
/// `Display` never show it, so it cannot reach a log, the status page or an error.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// One touch, ready to go out: what every channel may need.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// The idempotency key (Klaviyo `unique_id`, `webhook-id`): the same on every attempt.
    pub touch_id: u64,
    pub store: String,
    pub kind: TouchKind,
    pub medium: Medium,
    pub order_id: String,
    pub order_name: String,
    pub customer: Option<u64>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub recipe: Option<Recipe>,
    pub offer: Option<Offer>,
    /// The offered product's image, where the catalog has one.
    pub image_url: Option<String>,
    pub due_at: Timestamp,
    /// When this attempt is made (the scheduler's clock).
    pub at: Timestamp,
    pub links: Links,
    /// A `recovery` notice's ticket.
    pub ticket: Option<TicketNote>,
}

/// The support ticket a `recovery` notice is about.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TicketNote {
    pub id: String,
    /// The poor rating (1-2).
    pub csat: u8,
}

/// The links a message carries: the offer page link (when it carries an offer; the page
/// records the click) and the unsubscribe link, both under `public_url` and signed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Links {
    pub click: Option<String>,
    pub unsubscribe: String,
}

impl Links {
    pub fn of(public_url: &str, key: &[u8], store: &str, touch: u64, has_offer: bool) -> Links {
        use crate::engine::links::{url, Link};
        Links {
            click: has_offer.then(|| url(public_url, key, Link::Offer, store, touch)),
            unsubscribe: url(public_url, key, Link::Unsubscribe, store, touch),
        }
    }
}

/// Each store's link-signing key (`Storage::link_key`), loaded at start.
pub type LinkKeys = std::collections::HashMap<String, Vec<u8>>;

/// What a provider's answer means for the touch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted: the provider's message id where it gives one.
    Sent { message_id: Option<String> },
    /// Worth another attempt (5xx, 408, 429, a timeout, no connection); `after` is the
    /// provider's `Retry-After` where it gave one.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Refused for good (other 4xx): the provider's answer says why.
    Dead { reason: String },
    /// The endpoint is gone (a webhook endpoint's 410, Standard Webhooks' signal): it is
    /// disabled until the owner acts. (A provider API's 410 is just a refusal.)
    Gone { reason: String },
    /// The recipient opted out at the provider (an SMS STOP): suppressed, not sent.
    Unsubscribed { reason: String },
}

/// A way out for touches.
pub trait Channel: Send + Sync {
    /// The name in config, logs and the status (`klaviyo`, `webhook`, ...).
    fn name(&self) -> &'static str;
    fn send(&self, m: &Message) -> Outcome;
    /// The provider drops a repeat of the same touch (Klaviyo `unique_id`, `webhook-id`),
    /// so sending again after a crash cannot duplicate it.
    fn idempotent(&self) -> bool {
        true
    }
}

/// Each store's provider channels, built once from the configuration.
pub struct Router {
    stores: std::collections::HashMap<String, StoreChannels>,
}

struct StoreChannels {
    /// `mode = "live"`: a dry run routes every touch to the outbox.
    live: bool,
    email: crate::config::Route,
    sms: crate::config::Route,
    kinds: std::collections::BTreeMap<TouchKind, crate::config::Route>,
    klaviyo: Option<klaviyo::Klaviyo>,
    webhook: Option<webhook::Webhook>,
    twilio: Option<twilio::Twilio>,
    postmark: Option<postmark::Postmark>,
}

impl Router {
    pub fn new(
        config: &crate::config::Config,
        templates: std::sync::Arc<templates::Templates>,
    ) -> Router {
        let agent = agent(config.outbound.connect_timeout, config.outbound.timeout);
        let stores = config
            .stores
            .iter()
            .map(|s| {
                let c = &s.channels;
                let channels = StoreChannels {
                    live: s.mode == crate::config::Mode::Live,
                    email: c.email,
                    sms: c.sms,
                    kinds: c.kinds.clone(),
                    klaviyo: c.klaviyo.as_ref().map(|k| klaviyo::Klaviyo {
                        base_url: k.base_url.clone(),
                        api_key: k.api_key.clone(),
                        metrics: k.metrics.clone(),
                        limit: RateLimit::new(k.rate_per_second),
                        agent: agent.clone(),
                    }),
                    webhook: c.webhook.as_ref().map(|w| webhook::Webhook {
                        url: w.url.clone(),
                        secrets: w.secrets.clone(),
                        limit: RateLimit::new(w.rate_per_second),
                        agent: agent.clone(),
                    }),
                    twilio: c.twilio.as_ref().map(|t| twilio::Twilio {
                        base_url: t.base_url.clone(),
                        account_sid: t.account_sid.clone(),
                        auth_token: t.auth_token.clone(),
                        from: t.from.clone(),
                        store_name: s.name.clone(),
                        templates: templates.clone(),
                        limit: RateLimit::new(t.rate_per_second),
                        agent: agent.clone(),
                    }),
                    postmark: c.postmark.as_ref().map(|p| postmark::Postmark {
                        base_url: p.base_url.clone(),
                        server_token: p.server_token.clone(),
                        from: p.from.clone(),
                        message_stream: p.message_stream.clone(),
                        store_name: s.name.clone(),
                        templates: templates.clone(),
                        limit: RateLimit::new(p.rate_per_second),
                        agent: agent.clone(),
                    }),
                };
                (s.id.clone(), channels)
            })
            .collect();
        Router { stores }
    }

    /// The channel a touch of `kind` on `medium` of `store` goes through (the kind's own
    /// route where the store set one, else the medium's); `None`: the outbox, which is
    /// where every touch of a store in `dry_run` goes.
    pub fn route(&self, store: &str, medium: Medium, kind: TouchKind) -> Option<&dyn Channel> {
        if !self.stores.get(store)?.live {
            return None;
        }
        self.route_configured(store, medium, kind)
    }

    /// The route the store's `[stores.channels]` names, whatever its mode: only for
    /// `send-test`, which sends to the operator, never to a customer, so it really sends
    /// in a dry run too (that is its purpose). Touches go by [`Router::route`].
    pub fn route_configured(
        &self,
        store: &str,
        medium: Medium,
        kind: TouchKind,
    ) -> Option<&dyn Channel> {
        use crate::config::Route;
        let s = self.stores.get(store)?;
        let route = match medium {
            Medium::Webhook => Route::Webhook,
            Medium::Page => Route::Outbox,
            _ if s.kinds.contains_key(&kind) => s.kinds[&kind],
            Medium::Email => s.email,
            Medium::Sms => s.sms,
        };
        match route {
            Route::Outbox => None,
            Route::Klaviyo => s.klaviyo.as_ref().map(|k| k as &dyn Channel),
            Route::Webhook => s.webhook.as_ref().map(|w| w as &dyn Channel),
            Route::Twilio => s.twilio.as_ref().map(|t| t as &dyn Channel),
            Route::Postmark => s.postmark.as_ref().map(|p| p as &dyn Channel),
        }
    }
}

/// A token bucket: at most `rate` requests a second to one provider account, in bursts of
/// up to `burst` (by default one second's worth); shared by every worker sending to it.
pub struct RateLimit {
    rate: f64,
    burst: f64,
    state: std::sync::Mutex<(f64, std::time::Instant)>,
}

impl RateLimit {
    pub fn new(rate: f64) -> RateLimit {
        Self::with_burst(rate, rate)
    }

    /// A bucket that holds `burst` requests and refills at `rate` a second (Shopify's REST
    /// leaky bucket: 40, leaking 2 a second).
    pub fn with_burst(rate: f64, burst: f64) -> RateLimit {
        let rate = rate.max(0.01);
        let burst = burst.max(1.0);
        RateLimit {
            rate,
            burst,
            state: std::sync::Mutex::new((burst, std::time::Instant::now())),
        }
    }

    /// Waits until a request may go.
    pub fn acquire(&self) {
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let now = std::time::Instant::now();
                s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.burst);
                s.1 = now;
                if s.0 >= 1.0 {
                    s.0 -= 1.0;
                    return;
                }
                (1.0 - s.0) / self.rate
            };
            std::thread::sleep(Duration::from_secs_f64(wait));
        }
    }
}

/// Waits between failed attempts: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (Standard
/// Webhooks' schedule); after the last, the touch is dead.
pub const RETRY_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(300),
    Duration::from_secs(1800),
    Duration::from_secs(7200),
    Duration::from_secs(18_000),
    Duration::from_secs(36_000),
    Duration::from_secs(36_000),
];

/// The wait before attempt `failed + 1` of touch `id`: the schedule's step, ±10% (a fixed
/// hash of the touch spreads retries that failed together), at least `retry_after`.
/// `None` once the schedule is used up.
pub fn retry_wait(id: u64, failed: u32, retry_after: Option<Duration>) -> Option<Duration> {
    let step = *RETRY_SCHEDULE.get(failed as usize)?;
    let mut h = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(failed);
    h ^= h >> 29;
    let jitter = 0.9 + (h % 1000) as f64 / 5000.0;
    Some(step.mul_f64(jitter).max(retry_after.unwrap_or_default()))
}

/// The one HTTP agent for providers: connect and global timeouts always set (ureq has
/// none by default), status codes read by us, not turned into errors.
pub fn agent(connect: Duration, global: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(connect))
        .timeout_global(Some(global))
        .http_status_as_error(false)
        // A provider's redirect is an answer to read, never to follow (it would carry
        // the request's credentials elsewhere and turn a POST into a GET).
        .max_redirects(0)
        .user_agent(concat!("upsell-appliance/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// Longest provider error body kept in a reason.
const REASON_BODY: usize = 300;

/// The outcome of an HTTP answer: `status`, its `Retry-After` header and body.
pub fn classify(
    provider: &str,
    status: u16,
    retry_after: Option<&str>,
    body: &str,
    message_id: Option<String>,
) -> Outcome {
    let body: String = body.trim().chars().take(REASON_BODY).collect();
    let reason = format!("{provider} answered {status}: {body}");
    match status {
        200..=299 => Outcome::Sent { message_id },
        408 | 429 | 500..=599 => Outcome::Retry {
            after: retry_after.and_then(parse_retry_after),
            reason,
        },
        _ => Outcome::Dead { reason },
    }
}

/// `Retry-After` as seconds (the form providers use; an HTTP date is not honoured).
fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.min(86_400)))
}

/// The outcome of a request that got no answer (timeout, refused, reset).
pub fn unanswered(provider: &str, e: &ureq::Error) -> Outcome {
    Outcome::Retry {
        after: None,
        reason: format!("{provider}: no answer ({e})"),
    }
}

/// A provider's answer: (status, `Retry-After`, body up to 64 KB), or the outcome of
/// getting none.
pub fn read_answer(
    provider: &str,
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, Option<String>, String), Outcome> {
    let mut resp = result.map_err(|e| unanswered(provider, &e))?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .unwrap_or_default();
    Ok((status, retry_after, body))
}

/// Classifies a provider's answer; `id_of` picks the provider's message id from a 2xx
/// body.
pub fn exchange(
    provider: &str,
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    id_of: impl Fn(&str) -> Option<String>,
) -> Outcome {
    let (status, retry_after, body) = match read_answer(provider, result) {
        Ok(a) => a,
        Err(o) => return o,
    };
    let id = (200..300).contains(&status).then(|| id_of(&body)).flatten();
    classify(provider, status, retry_after.as_deref(), &body, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_by_status() {
        let c = |s, ra| classify("p", s, ra, " nope ", None);
        assert_eq!(c(202, None), Outcome::Sent { message_id: None });
        for s in [408, 429, 500, 502, 503] {
            assert!(matches!(c(s, None), Outcome::Retry { .. }), "{s}");
        }
        assert_eq!(
            c(429, Some("7")),
            Outcome::Retry {
                after: Some(Duration::from_secs(7)),
                reason: "p answered 429: nope".into()
            }
        );
        assert_eq!(
            c(400, None),
            Outcome::Dead {
                reason: "p answered 400: nope".into()
            }
        );
        assert!(
            matches!(c(410, None), Outcome::Dead { .. }),
            "Gone is the webhook's own reading"
        );
        assert!(matches!(c(401, None), Outcome::Dead { .. }));
    }

    #[test]
    fn retries_follow_the_schedule_with_jitter_and_retry_after() {
        let w = |n, ra| retry_wait(7, n, ra).map(|d| d.as_secs_f64());
        let first = w(0, None).unwrap();
        assert!((4.5..=5.5).contains(&first), "{first}");
        let last = w(6, None).unwrap();
        assert!((32_400.0..=39_600.0).contains(&last), "{last}");
        assert_eq!(w(7, None), None, "the schedule is used up: dead");
        assert_eq!(w(0, Some(Duration::from_secs(60))), Some(60.0));
        assert_ne!(retry_wait(7, 1, None), retry_wait(8, 1, None), "spread");
    }

    #[test]
    fn the_rate_limit_spaces_requests() {
        let r = RateLimit::new(50.0);
        let t = std::time::Instant::now();
        for _ in 0..75 {
            r.acquire();
        }
        // 50 at once (the burst), then 25 more at 50/s: about half a second.
        let took = t.elapsed().as_secs_f64();
        assert!((0.4..1.5).contains(&took), "{took}");
    }

    #[test]
    fn the_agent_speaks_https() {
        // Nothing listens there: the error is about connecting, not a missing TLS stack.
        let a = agent(Duration::from_millis(300), Duration::from_secs(1));
        let e = a
            .post("https://127.0.0.1:9/api/events/")
            .send_empty()
            .unwrap_err();
        assert!(!matches!(e, ureq::Error::TlsRequired), "{e}");
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("pk_live_123");
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
    }
}
