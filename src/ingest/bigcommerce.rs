//! BigCommerce webhooks: a shared-secret header check and the thin `store/order/*`
//! payloads, which carry only the order id and become a request to fetch the order.
//!
//! Wire facts: no documented signature; the subscription's custom `headers` object is sent
//! on every callback, so each store configures a secret header. Payload: `{store_id,
//! producer, scope, data: {type, id}, hash, created_at}`. Dedupe on `hash`. Only HTTP 200
//! counts, with no body wanted. Retries run for ~48 h, then the hook is deactivated.

use serde::Deserialize;

use super::wire::Id;
use super::{Headers, Inbound, Parsed, VerifyError};
use crate::engine::*;

/// Checks the configured secret header against every configured secret, in constant time.
pub fn verify(headers: &Headers, header: &str, secrets: &[String]) -> Result<(), VerifyError> {
    let given = headers
        .get(header)
        .ok_or(VerifyError::MissingSignature("webhook secret"))?
        .trim()
        .as_bytes();
    if secrets
        .iter()
        .any(|s| super::constant_time_eq(given, s.as_bytes()))
    {
        Ok(())
    } else {
        Err(VerifyError::BadSignature)
    }
}

pub fn receive(
    headers: Headers,
    body: Vec<u8>,
    header: &str,
    secrets: &[String],
) -> Result<Inbound, VerifyError> {
    verify(&headers, header, secrets)?;
    let (topic, dedupe_key, parsed) = match serde_json::from_slice::<Wire>(&body) {
        Ok(w) => {
            let key = match w.hash.as_deref().map(str::trim).filter(|h| !h.is_empty()) {
                Some(h) => format!("hash:{h}"),
                None => super::body_key(&w.scope, &body),
            };
            let parsed = normalize(&w);
            (w.scope, key, parsed)
        }
        Err(e) => (
            "unknown".to_string(),
            super::body_key("unknown", &body),
            Parsed::Unparseable(format!("BigCommerce webhook JSON: {e}")),
        ),
    };
    // The secret header is not kept; nothing else BigCommerce sends is worth keeping.
    let kept = headers.keep(|k| k == "content-type" || k == "user-agent");
    Ok(Inbound {
        topic,
        dedupe_key,
        headers: kept,
        body,
        parsed,
    })
}

/// Normalizes a stored body (the secret header was checked when it arrived).
pub fn normalize_body(body: &[u8]) -> Parsed {
    match serde_json::from_slice::<Wire>(body) {
        Ok(w) => normalize(&w),
        Err(e) => Parsed::Unparseable(format!("BigCommerce webhook JSON: {e}")),
    }
}

#[derive(Deserialize)]
struct Wire {
    scope: String,
    data: Option<WireData>,
    hash: Option<String>,
    created_at: Option<i64>,
}

#[derive(Deserialize)]
struct WireData {
    #[serde(rename = "type")]
    kind: Option<String>,
    id: Option<Id>,
}

fn normalize(w: &Wire) -> Parsed {
    if !w.scope.starts_with("store/order/") {
        return Parsed::Ignored;
    }
    let Some(WireData { id: Some(id), kind }) = &w.data else {
        return Parsed::Unparseable(format!("{}: data.id is missing", w.scope));
    };
    if kind.as_deref().is_some_and(|k| k != "order") {
        return Parsed::Unparseable(format!("{}: data.type is not \"order\"", w.scope));
    }
    let Some(at) = w.created_at else {
        return Parsed::Unparseable(format!("{}: created_at is missing", w.scope));
    };
    Parsed::Event(Event::Notice(OrderNotice {
        order_id: id.0.clone(),
        scope: w.scope.clone(),
        at: Timestamp(at.saturating_mul(1000)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        Headers::from_pairs(pairs)
    }

    #[test]
    fn secret_header_must_match_one_secret() {
        let secrets = vec!["old-secret".to_string(), "new-secret".to_string()];
        let ok = h(&[("x-webhook-secret", "new-secret")]);
        assert_eq!(verify(&ok, "x-webhook-secret", &secrets), Ok(()));
        let bad = h(&[("x-webhook-secret", "nope")]);
        assert_eq!(
            verify(&bad, "x-webhook-secret", &secrets),
            Err(VerifyError::BadSignature)
        );
        assert!(verify(&h(&[]), "x-webhook-secret", &secrets).is_err());
    }

    #[test]
    fn thin_order_payload_becomes_a_fetch_notice() {
        let body = br#"{"store_id":"1025646","producer":"stores/abc123","scope":"store/order/created",
            "data":{"type":"order","id":250},"hash":"dd70c0976e06b67aaf671e73f49dcb79230ebf9d","created_at":1763650800}"#;
        let secrets = vec!["s".to_string()];
        let inbound = receive(
            h(&[("x-webhook-secret", "s")]),
            body.to_vec(),
            "x-webhook-secret",
            &secrets,
        )
        .unwrap();
        assert_eq!(
            inbound.dedupe_key,
            "hash:dd70c0976e06b67aaf671e73f49dcb79230ebf9d"
        );
        assert_eq!(inbound.topic, "store/order/created");
        let Parsed::Event(Event::Notice(n)) = inbound.parsed else {
            panic!()
        };
        assert_eq!(
            (n.order_id.as_str(), n.at),
            ("250", Timestamp(1_763_650_800_000))
        );
        assert!(
            inbound.headers.0.is_empty(),
            "the secret header is not stored"
        );
    }
}
