//! BigCommerce webhooks: a shared-secret header check and the thin `store/order/*`
//! payloads, which carry only the order id and become a request to fetch the order.
//!
//! Wire facts: no documented signature; the subscription's custom `headers` object is sent
//! on every callback, so each store configures a secret header. Payload: `{store_id,
//! producer, scope, data: {type, id}, hash, created_at}`. Dedupe on `hash`. Only HTTP 200
//! counts, with no body wanted. Retries run for ~48 h, then the hook is deactivated.

use serde::Deserialize;

use super::wire::{non_empty, null_default, Decimal, Id};
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

/// Normalizes a stored body (the secret header was checked when it arrived, or it is an
/// order fetched through the API under [`FETCHED`]).
pub fn normalize_body(topic: &str, body: &[u8]) -> Parsed {
    if topic == FETCHED {
        return match parse_fetched(body) {
            Ok(order) => Parsed::Event(Event::Order {
                topic: OrderTopic::Updated,
                order: Box::new(order),
            }),
            Err(why) => Parsed::Unparseable(format!("{FETCHED}: {why}")),
        };
    }
    match serde_json::from_slice::<Wire>(body) {
        Ok(w) => normalize(&w),
        Err(e) => Parsed::Unparseable(format!("BigCommerce webhook JSON: {e}")),
    }
}

/// The topic of an order fetched through the V2 Orders API: its body is `{"order": <V2
/// order>, "products": [<V2 order products>], "refunds": [<V3 refunds>]}`.
pub const FETCHED: &str = "store/order/fetched";

#[derive(Deserialize)]
struct Fetched {
    order: FetchedOrder,
    #[serde(default, deserialize_with = "null_default")]
    products: Vec<FetchedLine>,
    #[serde(default, deserialize_with = "null_default")]
    refunds: Vec<FetchedRefund>,
}

#[derive(Deserialize)]
struct FetchedOrder {
    id: Id,
    date_created: String,
    date_modified: Option<String>,
    #[serde(default)]
    status_id: u32,
    currency_code: String,
    total_inc_tax: Decimal,
    subtotal_inc_tax: Option<Decimal>,
    #[serde(default, deserialize_with = "null_default")]
    customer_id: u64,
    billing_address: Option<FetchedAddress>,
    #[serde(default)]
    is_deleted: bool,
}

#[derive(Deserialize)]
struct FetchedAddress {
    email: Option<String>,
    phone: Option<String>,
    country_iso2: Option<String>,
    state: Option<String>,
    zip: Option<String>,
}

#[derive(Deserialize)]
struct FetchedLine {
    id: Id,
    #[serde(default, deserialize_with = "null_default")]
    product_id: u64,
    #[serde(default, deserialize_with = "null_default")]
    variant_id: u64,
    sku: Option<String>,
    quantity: u32,
    price_inc_tax: Decimal,
    name: Option<String>,
}

#[derive(Deserialize)]
struct FetchedRefund {
    id: Id,
    total_amount: Decimal,
}

/// BigCommerce's order times: RFC 2822 ("Tue, 20 Nov 2012 00:00:00 +0000").
fn parse_rfc2822(field: &str, s: &str) -> Result<Timestamp, String> {
    chrono::DateTime::parse_from_rfc2822(s.trim())
        .map(|t| Timestamp(t.timestamp_millis()))
        .map_err(|e| format!("{field}: {s:?} is not an RFC 2822 time ({e})"))
}

/// When a fetched order last changed (what reconciliation compares).
pub fn fetched_updated_at(body: &[u8]) -> Result<Timestamp, String> {
    #[derive(Deserialize)]
    struct Times {
        order: TimesOrder,
    }
    #[derive(Deserialize)]
    struct TimesOrder {
        date_created: String,
        date_modified: Option<String>,
    }
    let t: Times = serde_json::from_slice(body).map_err(|e| format!("order JSON: {e}"))?;
    match &t.order.date_modified {
        Some(m) => parse_rfc2822("date_modified", m),
        None => parse_rfc2822("date_created", &t.order.date_created),
    }
}

fn parse_fetched(body: &[u8]) -> Result<Order, String> {
    let f: Fetched = serde_json::from_slice(body).map_err(|e| format!("order JSON: {e}"))?;
    let o = f.order;
    let currency = super::wire::currency(&o.currency_code)?;
    let money = |field: &str, d: &Decimal| super::wire::minor(currency, field, d);
    let created_at = parse_rfc2822("date_created", &o.date_created)?;
    let updated_at = match &o.date_modified {
        Some(m) => parse_rfc2822("date_modified", m)?,
        None => created_at,
    };
    // Status ids: 2 Shipped, 3 Partially Shipped, 8 Awaiting Pickup, 9 Awaiting Shipment,
    // 10 Completed, 11 Awaiting Fulfillment are paid; 4 Refunded, 14 Partially Refunded;
    // 5 Cancelled and 6 Declined end it; the rest (0 Incomplete, 1 Pending, 7 Awaiting
    // Payment, 12 Manual Verification Required, 13 Disputed) wait.
    let status = match o.status_id {
        2 | 3 | 8 | 9 | 10 | 11 => "paid",
        14 => "partially_refunded",
        4 => "refunded",
        5 | 6 => "voided",
        _ => "pending",
    };
    let gone = o.is_deleted || matches!(o.status_id, 5 | 6);
    let mut lines = Vec::with_capacity(f.products.len());
    for (i, l) in f.products.into_iter().enumerate() {
        let price = money(&format!("products[{i}].price_inc_tax"), &l.price_inc_tax)?;
        lines.push(super::wire::plain_line(
            l.id.0,
            l.product_id,
            l.variant_id,
            l.sku,
            l.quantity,
            price,
            l.name,
        ));
    }
    let mut refunds = Vec::with_capacity(f.refunds.len());
    for (i, r) in f.refunds.iter().enumerate() {
        refunds.push((
            r.id.0.clone(),
            money(&format!("refunds[{i}].total_amount"), &r.total_amount)?.abs(),
        ));
    }
    let billing = o.billing_address.as_ref();
    let email = billing.and_then(|b| non_empty(b.email.clone()));
    let phone = billing.and_then(|b| non_empty(b.phone.clone()));
    let customer = (o.customer_id != 0 || email.is_some()).then(|| CustomerRef {
        platform_id: (o.customer_id != 0).then(|| o.customer_id.to_string()),
        email: email.clone(),
        phone: phone.clone(),
        ..CustomerRef::default()
    });
    let region = billing.map(|b| Region {
        country: non_empty(b.country_iso2.clone()),
        province: non_empty(b.state.clone()),
        zip: non_empty(b.zip.clone()),
    });
    let subtotal = match &o.subtotal_inc_tax {
        Some(d) => money("subtotal_inc_tax", d)?,
        None => lines
            .iter()
            .map(|l| l.unit_price * i64::from(l.quantity))
            .sum(),
    };
    Ok(Order {
        name: format!("#{}", o.id.0),
        id: o.id.0,
        created_at,
        updated_at,
        currency,
        total: money("total_inc_tax", &o.total_inc_tax)?,
        subtotal,
        financial_status: Some(status.to_string()),
        cancelled_at: gone.then_some(updated_at),
        email,
        phone,
        customer,
        lines,
        tags: vec![],
        discount_codes: vec![],
        shipping: region.clone(),
        billing: region,
        refunds,
    })
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
    fn a_fetched_order_reads_like_any_order() {
        let body = br#"{"order":{"id":250,"date_created":"Thu, 19 Nov 2026 10:00:00 +0000",
            "date_modified":"Thu, 19 Nov 2026 10:05:00 +0000","status_id":11,"currency_code":"USD",
            "total_inc_tax":"54.0000","subtotal_inc_tax":"50.0000","customer_id":9,
            "billing_address":{"email":"Ann@Example.com","phone":"+15551230000","country_iso2":"US","state":"Texas","zip":"78701"}},
            "products":[{"id":1,"product_id":77,"variant_id":0,"sku":"MUG","name":"Mug","quantity":2,"price_inc_tax":"25.0000"}],
            "refunds":[{"id":3,"total_amount":"5.00"}]}"#;
        assert_eq!(fetched_updated_at(body), Ok(Timestamp(1_795_082_700_000)));
        let Parsed::Event(Event::Order { order, .. }) = normalize_body(FETCHED, body) else {
            panic!("{:?}", normalize_body(FETCHED, body))
        };
        assert_eq!((order.id.as_str(), order.name.as_str()), ("250", "#250"));
        assert_eq!((order.total, order.subtotal), (5400, 5000));
        assert!(crate::engine::plan::paid(&order));
        assert_eq!(order.lines[0].product_id.as_deref(), Some("77"));
        assert_eq!(order.lines[0].variant_id, None);
        assert_eq!(
            (order.lines[0].unit_price, order.lines[0].quantity),
            (2500, 2)
        );
        assert_eq!(order.refunds, vec![("3".to_string(), 500)]);
        assert_eq!(order.customer.unwrap().platform_id.as_deref(), Some("9"));
        let cancelled =
            String::from_utf8_lossy(body).replace("\"status_id\":11", "\"status_id\":5");
        let Parsed::Event(Event::Order { order, .. }) =
            normalize_body(FETCHED, cancelled.as_bytes())
        else {
            panic!()
        };
        assert!(order.cancelled_at.is_some());
        assert!(matches!(
            normalize_body(FETCHED, b"{}"),
            Parsed::Unparseable(_)
        ));
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
