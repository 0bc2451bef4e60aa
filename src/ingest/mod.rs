//! Platform adapters: request bytes and headers in, verified and normalized events out.
//!
//! Pure apart from the HMAC: no storage, no sockets, no clock (the receive time is a
//! parameter). Never imports tiny_http or redb.

pub mod bigcommerce;
pub mod carrier;
pub mod engagement;
pub mod helpdesk;
pub mod products;
pub mod shopify;
pub mod twilio;
pub(crate) mod wire;
pub mod woocommerce;

use crate::engine::Event;

/// Request headers as received, names lower-cased.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// Headers from (name, value) pairs, names lower-cased as received ones are.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Headers {
        Headers(
            pairs
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The headers whose (lower-cased) name passes `keep`: what an adapter stores with
    /// the raw body.
    pub fn keep(self, keep: impl Fn(&str) -> bool) -> Headers {
        Headers(self.0.into_iter().filter(|(k, _)| keep(k)).collect())
    }
}

/// The identity of a delivery that carries none of its own: a hash of topic and body, so
/// the same delivery retried is the same key.
pub fn body_key(topic: &str, body: &[u8]) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(topic.as_bytes());
    h.update([0]);
    h.update(body);
    let hex = crate::engine::hex(&h.finalize());
    format!("body:{hex}")
}

/// What a verified delivery turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    Event(Event),
    /// A verified topic we store but do not act on.
    Ignored,
    /// Signed correctly but we cannot read it: kept in quarantine, answered 2xx so the
    /// platform does not retry and finally drop the subscription.
    Unparseable(String),
    /// A privacy request: applied by the processor in its turn, like an event.
    Privacy(Box<crate::engine::PrivacyRequest>),
}

/// A verified delivery, ready for the durable commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    pub topic: String,
    /// The platform's delivery identity: the same delivery retried has the same key.
    pub dedupe_key: String,
    /// The platform's own headers worth keeping with the raw body.
    pub headers: Headers,
    pub body: Vec<u8>,
    pub parsed: Parsed,
}

/// Checks a base64 HMAC-SHA256 signature of `body` against every secret, in constant
/// time (Shopify and WooCommerce sign the same way, under different header names).
fn verify_hmac(
    headers: &Headers,
    header: &'static str,
    body: &[u8],
    secrets: &[String],
) -> Result<(), VerifyError> {
    use base64::Engine as _;
    let sig = headers
        .get(header)
        .ok_or(VerifyError::MissingSignature(header))?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(sig.trim())
        .map_err(|_| VerifyError::MalformedSignature(header))?;
    if secrets
        .iter()
        .any(|s| signed_with(s.as_bytes(), body, &sig))
    {
        return Ok(());
    }
    Err(VerifyError::BadSignature)
}

/// Whether `sig` is the HMAC-SHA256 of `body` under `secret` (compared in constant time).
fn signed_with(secret: &[u8], body: &[u8], sig: &[u8]) -> bool {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret)
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    mac.verify_slice(sig).is_ok()
}

pub use crate::engine::constant_time_eq;

/// The header a generic sender signs an intake's body in: HMAC-SHA256 of the raw body,
/// base64 or hex, optionally prefixed `sha256=`.
pub const SIGNATURE_HEADER: &str = "x-upsell-signature";

/// Whether a request to one of a store's intakes (engagement, helpdesk, carrier) proves
/// it is the store's, by any way `auth` configures: basic auth, the secret header, the
/// secret last path segment (`path_secret`, as given in the URL) or a signature of `body`.
pub fn intake_authorised(
    auth: &crate::config::IntakeAuth,
    headers: &Headers,
    path_secret: Option<&str>,
    body: &[u8],
) -> bool {
    use base64::Engine as _;
    let eq = |a: &str, b: &str| constant_time_eq(a.as_bytes(), b.as_bytes());
    // A URL with a secret segment is judged by it alone: a wrong one is a wrong URL.
    if let Some(given) = path_secret {
        return auth
            .path_secret
            .as_ref()
            .is_some_and(|want| eq(want.expose(), given));
    }
    if let Some(want) = &auth.basic_auth {
        let given = headers
            .get("authorization")
            .and_then(|h| h.strip_prefix("Basic ").map(str::trim))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok());
        if given.is_some_and(|g| eq(want.expose(), &g)) {
            return true;
        }
    }
    if let Some((name, want)) = &auth.header {
        if headers
            .get(name)
            .is_some_and(|g| eq(want.expose(), g.trim()))
        {
            return true;
        }
    }
    let Some(sig) = headers.get(SIGNATURE_HEADER) else {
        return false;
    };
    let sig = sig.trim();
    let sig = sig.strip_prefix("sha256=").unwrap_or(sig);
    // Hex or base64: either reading that decodes is tried.
    let hex = (sig.len() == 64)
        .then(|| {
            (0..32)
                .map(|i| u8::from_str_radix(&sig[2 * i..2 * i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()
        })
        .flatten();
    let b64 = base64::engine::general_purpose::STANDARD.decode(sig).ok();
    auth.hmac_secrets.iter().any(|secret| {
        [&hex, &b64]
            .into_iter()
            .flatten()
            .any(|given| signed_with(secret.expose().as_bytes(), body, given))
    })
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing {0} header: the request is not signed")]
    MissingSignature(&'static str),
    #[error("{0} header is not valid base64")]
    MalformedSignature(&'static str),
    #[error("signature does not match any configured webhook secret")]
    BadSignature,
    #[error("missing {0} header")]
    MissingHeader(&'static str),
}

/// Runs this build's parser again on a stored body (quarantine replay after an upgrade).
/// `shop`: the store's configured domain, when it is still configured.
pub fn reparse(
    platform: crate::engine::Platform,
    topic: &str,
    body: &[u8],
    shop: Option<&str>,
) -> Parsed {
    use crate::engine::Platform;
    if topic.starts_with(carrier::TOPIC_PREFIX) {
        return carrier::normalize(body);
    }
    match platform {
        Platform::Shopify => shopify::normalize(topic, body, shop),
        Platform::WooCommerce => woocommerce::normalize(topic, body),
        Platform::BigCommerce => bigcommerce::normalize_body(topic, body),
    }
}
