//! Shopify webhooks: HMAC verification over the raw body, delivery identity, and
//! normalization of the order, refund, fulfillment and delivery topics.
//!
//! Wire facts: `X-Shopify-Hmac-Sha256` is base64 HMAC-SHA256 of the raw body keyed with the
//! app's client secret (several during a rotation); dedupe on `X-Shopify-Event-Id`, else
//! `X-Shopify-Webhook-Id`; money comes as decimal strings; ids as numbers.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::wire::{non_empty, null_default, parse_time, split_tags, Decimal, Id};
use super::{Headers, Inbound, Parsed, VerifyError};
use crate::engine::*;

pub const SIGNATURE_HEADER: &str = "x-shopify-hmac-sha256";
pub const TOPIC_HEADER: &str = "x-shopify-topic";

/// Checks the body's signature against every configured secret, in constant time.
pub fn verify(headers: &Headers, body: &[u8], secrets: &[String]) -> Result<(), VerifyError> {
    super::verify_hmac(headers, "X-Shopify-Hmac-Sha256", body, secrets)
}

/// Signs a body the way Shopify does (for tests, benchmarks and the README's curl example).
pub fn sign(body: &[u8], secret: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Verifies and normalizes one delivery. The caller has already capped the body size.
/// `domain`: the store's configured shop domain, which a privacy request must name.
pub fn receive(
    headers: Headers,
    body: Vec<u8>,
    secrets: &[String],
    domain: &str,
) -> Result<Inbound, VerifyError> {
    verify(&headers, &body, secrets)?;
    let topic = headers
        .get(TOPIC_HEADER)
        .ok_or(VerifyError::MissingHeader("X-Shopify-Topic"))?
        .trim()
        .to_ascii_lowercase();
    let dedupe_key = dedupe_key(&headers, &topic, &body);
    let parsed = normalize(&topic, &body, Some(domain));
    let kept = headers.keep(|k| k.starts_with("x-shopify-") && k != SIGNATURE_HEADER);
    Ok(Inbound {
        topic,
        dedupe_key,
        headers: kept,
        body,
        parsed,
    })
}

/// The delivery's identity: the event id, else the webhook id, else a hash of topic and body.
pub fn dedupe_key(headers: &Headers, topic: &str, body: &[u8]) -> String {
    let nonempty = |h| headers.get(h).map(str::trim).filter(|v| !v.is_empty());
    if let Some(id) = nonempty("x-shopify-event-id") {
        format!("event:{id}")
    } else if let Some(id) = nonempty("x-shopify-webhook-id") {
        format!("webhook:{id}")
    } else {
        super::body_key(topic, body)
    }
}

/// Normalizes a verified body for its topic. `shop`: the configured shop domain; a privacy
/// request naming another shop is not applied (one app may serve several shops, and a
/// `shop/redact` for one must not remove another).
pub fn normalize(topic: &str, body: &[u8], shop: Option<&str>) -> Parsed {
    let order_topic = match topic {
        "orders/create" => Some(OrderTopic::Created),
        "orders/paid" => Some(OrderTopic::Paid),
        "orders/updated" => Some(OrderTopic::Updated),
        "orders/cancelled" => Some(OrderTopic::Cancelled),
        _ => None,
    };
    let result = if let Some(topic) = order_topic {
        parse_order(body).map(|mut order| {
            // `orders/paid` says the order is paid even when its body leaves the status out.
            if topic == OrderTopic::Paid && order.financial_status.is_none() {
                order.financial_status = Some("paid".into());
            }
            Event::Order {
                topic,
                order: Box::new(order),
            }
        })
    } else {
        match topic {
            "refunds/create" => parse_refund(body).map(Event::Refund),
            "fulfillments/create" | "fulfillments/update" => {
                parse_fulfillment(body).map(Event::Fulfillment)
            }
            "fulfillment_events/create" => parse_delivery(body).map(Event::Delivery),
            "products/create" | "products/update" | "inventory_levels/update" => {
                parse_catalog(topic, body).map(Event::Catalog)
            }
            "customers/data_request" | "customers/redact" | "shop/redact" => {
                return match parse_privacy(topic, body, shop) {
                    Ok(r) => Parsed::Privacy(Box::new(r)),
                    Err(why) => Parsed::Unparseable(format!("{topic}: {why}")),
                };
            }
            _ => return Parsed::Ignored,
        }
    };
    match result {
        Ok(e) => Parsed::Event(e),
        Err(why) => Parsed::Unparseable(format!("{topic}: {why}")),
    }
}

#[derive(Deserialize)]
struct WireOrder {
    id: Id,
    name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    created_at: String,
    updated_at: Option<String>,
    processed_at: Option<String>,
    cancelled_at: Option<String>,
    currency: String,
    total_price: Decimal,
    subtotal_price: Option<Decimal>,
    financial_status: Option<String>,
    tags: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    discount_codes: Vec<WireDiscount>,
    customer: Option<WireCustomer>,
    #[serde(default, deserialize_with = "null_default")]
    line_items: Vec<WireLine>,
    shipping_address: Option<WireAddress>,
    billing_address: Option<WireAddress>,
}

/// The body of Shopify's mandatory privacy topics: `customer` and the order ids for the
/// two customer topics, nothing the appliance needs for `shop/redact`.
#[derive(Deserialize)]
struct WirePrivacy {
    shop_domain: Option<String>,
    customer: Option<WirePerson>,
    #[serde(default, deserialize_with = "null_default")]
    orders_requested: Vec<Id>,
    #[serde(default, deserialize_with = "null_default")]
    orders_to_redact: Vec<Id>,
    data_request: Option<WireDataRequest>,
}

#[derive(Deserialize)]
struct WirePerson {
    id: Option<Id>,
    email: Option<String>,
    phone: Option<String>,
}

#[derive(Deserialize)]
struct WireDataRequest {
    id: Option<Id>,
}

fn parse_privacy(topic: &str, body: &[u8], shop: Option<&str>) -> Result<PrivacyRequest, String> {
    let w: WirePrivacy =
        serde_json::from_slice(body).map_err(|e| format!("privacy request JSON: {e}"))?;
    let named = w.shop_domain.as_deref().map(str::trim).unwrap_or("");
    if let Some(shop) = shop.filter(|s| !named.is_empty() && !named.eq_ignore_ascii_case(s)) {
        return Err(format!(
            "the request is for shop {named:?}, but this store's domain is {shop:?}: not applied. If the store's domain changed, correct `domain` in the configuration, restart, and run `upsell-appliance quarantine replay`"
        ));
    }
    if topic == "shop/redact" {
        return Ok(PrivacyRequest::EraseStore);
    }
    let c = w.customer.ok_or("no customer: the request names no one")?;
    let person = Person {
        platform_id: c.id.map(|i| i.0),
        email: non_empty(c.email),
        phone: non_empty(c.phone),
    };
    if person == Person::default() {
        return Err("customer has no id, email or phone: the request names no one".into());
    }
    let ids = |v: Vec<Id>| v.into_iter().map(|i| i.0).collect();
    Ok(if topic == "customers/redact" {
        PrivacyRequest::Erase {
            person,
            orders: ids(w.orders_to_redact),
        }
    } else {
        PrivacyRequest::Export {
            person,
            orders: ids(w.orders_requested),
            request: w.data_request.and_then(|d| d.id).map(|i| i.0),
        }
    })
}

#[derive(Deserialize)]
struct WireDiscount {
    code: Option<String>,
}

#[derive(Deserialize)]
struct WireCustomer {
    id: Option<Id>,
    email: Option<String>,
    phone: Option<String>,
    tags: Option<String>,
    email_marketing_consent: Option<WireConsent>,
    sms_marketing_consent: Option<WireConsent>,
}

#[derive(Deserialize)]
struct WireConsent {
    state: Option<String>,
}

#[derive(Deserialize)]
struct WireLine {
    id: Id,
    product_id: Option<Id>,
    variant_id: Option<Id>,
    sku: Option<String>,
    quantity: u32,
    price: Decimal,
    title: Option<String>,
    variant_title: Option<String>,
    vendor: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    gift_card: bool,
    #[serde(default, deserialize_with = "null_default")]
    requires_shipping: bool,
}

#[derive(Deserialize)]
struct WireAddress {
    country_code: Option<String>,
    country: Option<String>,
    province_code: Option<String>,
    province: Option<String>,
    zip: Option<String>,
}

fn consent(c: Option<WireConsent>) -> Consent {
    match c.and_then(|c| c.state).as_deref() {
        Some("subscribed") => Consent::Subscribed,
        Some("unsubscribed") | Some("redacted") => Consent::Unsubscribed,
        Some("not_subscribed") | Some("pending") | Some("invalid") => Consent::NotSubscribed,
        _ => Consent::Unknown,
    }
}

fn region(a: Option<WireAddress>) -> Option<Region> {
    a.map(|a| Region {
        country: non_empty(a.country_code.or(a.country)),
        province: non_empty(a.province_code.or(a.province)),
        zip: non_empty(a.zip),
    })
}

fn parse_order(body: &[u8]) -> Result<Order, String> {
    let w: WireOrder = serde_json::from_slice(body).map_err(|e| format!("order JSON: {e}"))?;
    let currency = super::wire::currency(&w.currency)?;
    let money = |field: &str, d: &Decimal| super::wire::minor(currency, field, d);
    let created_at = parse_time("created_at", &w.created_at)?;
    let updated_at = match w.updated_at.as_deref().or(w.processed_at.as_deref()) {
        Some(t) => parse_time("updated_at", t)?,
        None => created_at,
    };
    let cancelled_at = match w.cancelled_at.as_deref() {
        Some(t) => Some(parse_time("cancelled_at", t)?),
        None => None,
    };
    let mut lines = Vec::with_capacity(w.line_items.len());
    for (i, l) in w.line_items.into_iter().enumerate() {
        lines.push(LineItem {
            unit_price: money(&format!("line_items[{i}].price"), &l.price)?,
            id: l.id.0,
            product_id: l.product_id.map(|i| i.0),
            variant_id: l.variant_id.map(|i| i.0),
            sku: non_empty(l.sku),
            quantity: l.quantity,
            title: l.title.unwrap_or_default(),
            variant_title: non_empty(l.variant_title),
            vendor: non_empty(l.vendor),
            gift_card: l.gift_card,
            requires_shipping: l.requires_shipping,
        });
    }
    let total = money("total_price", &w.total_price)?;
    let subtotal = match &w.subtotal_price {
        Some(d) => money("subtotal_price", d)?,
        None => total,
    };
    let name = w.name.unwrap_or_else(|| format!("#{}", w.id.0));
    Ok(Order {
        id: w.id.0,
        name,
        created_at,
        updated_at,
        currency,
        total,
        subtotal,
        financial_status: non_empty(w.financial_status),
        cancelled_at,
        email: non_empty(w.email),
        phone: non_empty(w.phone),
        customer: w.customer.map(|c| CustomerRef {
            platform_id: c.id.map(|i| i.0),
            email: non_empty(c.email),
            phone: non_empty(c.phone),
            tags: split_tags(c.tags.as_deref()),
            email_consent: consent(c.email_marketing_consent),
            sms_consent: consent(c.sms_marketing_consent),
        }),
        lines,
        tags: split_tags(w.tags.as_deref()),
        discount_codes: w
            .discount_codes
            .into_iter()
            .filter_map(|d| non_empty(d.code))
            .collect(),
        shipping: region(w.shipping_address),
        billing: region(w.billing_address),
        // Shopify reports refunds as refunds/create deliveries (same ids).
        refunds: vec![],
    })
}

#[derive(Deserialize)]
struct WireRefund {
    id: Id,
    order_id: Id,
    created_at: String,
    #[serde(default, deserialize_with = "null_default")]
    refund_line_items: Vec<WireRefundLine>,
    #[serde(default, deserialize_with = "null_default")]
    transactions: Vec<WireTransaction>,
}

#[derive(Deserialize)]
struct WireRefundLine {
    line_item_id: Id,
    quantity: u32,
    subtotal: Option<Decimal>,
}

#[derive(Deserialize)]
struct WireTransaction {
    amount: Decimal,
    kind: Option<String>,
    status: Option<String>,
    currency: Option<String>,
}

fn parse_refund(body: &[u8]) -> Result<Refund, String> {
    let w: WireRefund = serde_json::from_slice(body).map_err(|e| format!("refund JSON: {e}"))?;
    let refunds: Vec<&WireTransaction> = w
        .transactions
        .iter()
        .filter(|t| t.kind.as_deref() == Some("refund") && t.status.as_deref() != Some("failure"))
        .filter(|t| !matches!(t.status.as_deref(), Some("error") | Some("pending")))
        .collect();
    let currency = refunds
        .iter()
        .find_map(|t| t.currency.as_deref())
        .map(Currency::parse)
        .transpose()
        .map_err(|e| format!("transactions.currency: {e}"))?;
    // Shopify's refund transactions carry their currency; one without it is read with the
    // common two decimals.
    let cur = currency.unwrap_or(Currency::parse("USD").expect("valid code"));
    let mut amount = 0i64;
    if refunds.is_empty() {
        for (i, l) in w.refund_line_items.iter().enumerate() {
            if let Some(s) = &l.subtotal {
                amount += cur
                    .parse_minor(&s.0)
                    .map_err(|e| format!("refund_line_items[{i}].subtotal: {e}"))?;
            }
        }
    } else {
        for (i, t) in refunds.iter().enumerate() {
            amount += cur
                .parse_minor(&t.amount.0)
                .map_err(|e| format!("transactions[{i}].amount: {e}"))?;
        }
    }
    Ok(Refund {
        id: w.id.0,
        order_id: w.order_id.0,
        created_at: parse_time("created_at", &w.created_at)?,
        currency,
        amount,
        lines: w
            .refund_line_items
            .into_iter()
            .map(|l| (l.line_item_id.0, l.quantity))
            .collect(),
    })
}

#[derive(Deserialize)]
struct WireFulfillment {
    id: Id,
    order_id: Id,
    status: Option<String>,
    shipment_status: Option<String>,
    created_at: String,
    updated_at: Option<String>,
}

fn parse_fulfillment(body: &[u8]) -> Result<Fulfillment, String> {
    let w: WireFulfillment =
        serde_json::from_slice(body).map_err(|e| format!("fulfillment JSON: {e}"))?;
    let at = match &w.updated_at {
        Some(t) => parse_time("updated_at", t)?,
        None => parse_time("created_at", &w.created_at)?,
    };
    Ok(Fulfillment {
        id: w.id.0,
        order_id: w.order_id.0,
        status: w.status.unwrap_or_else(|| "unknown".into()),
        shipment_status: non_empty(w.shipment_status),
        at,
    })
}

#[derive(Deserialize)]
struct WireFulfillmentEvent {
    fulfillment_id: Option<Id>,
    order_id: Id,
    status: String,
    happened_at: Option<String>,
    created_at: Option<String>,
    estimated_delivery_at: Option<String>,
}

/// The product (`products/*`) or inventory item (`inventory_levels/update`) a catalog
/// webhook is about; what it says of it is fetched through the API.
fn parse_catalog(topic: &str, body: &[u8]) -> Result<CatalogNotice, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("{topic} JSON: {e}"))?;
    let (field, make): (&str, fn(String) -> CatalogNotice) = match topic {
        "inventory_levels/update" => ("inventory_item_id", CatalogNotice::InventoryItem),
        _ => ("id", CatalogNotice::Product),
    };
    super::wire::text(v.get(field))
        .map(make)
        .ok_or_else(|| format!("{field} is missing"))
}

fn parse_delivery(body: &[u8]) -> Result<DeliveryEvent, String> {
    let w: WireFulfillmentEvent =
        serde_json::from_slice(body).map_err(|e| format!("fulfillment event JSON: {e}"))?;
    let at = match w.happened_at.as_deref().or(w.created_at.as_deref()) {
        Some(t) => parse_time("happened_at", t)?,
        None => return Err("happened_at: missing (and no created_at)".into()),
    };
    let estimated_at = match w.estimated_delivery_at.as_deref() {
        Some(t) => Some(parse_time("estimated_delivery_at", t)?),
        None => None,
    };
    let status = match w.status.as_str() {
        "delivered" => DeliveryStatus::Delivered,
        "in_transit" | "out_for_delivery" | "ready_for_pickup" => DeliveryStatus::InTransit,
        "confirmed" | "label_printed" | "label_purchased" | "picked_up" => DeliveryStatus::Shipped,
        "delayed" => DeliveryStatus::Delayed,
        "failure" | "attempted_delivery" => DeliveryStatus::Failed,
        _ => DeliveryStatus::Other,
    };
    Ok(DeliveryEvent {
        order_id: w.order_id.0,
        fulfillment_id: w.fulfillment_id.map(|i| i.0),
        status,
        at,
        estimated_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_webhooks_name_what_to_fetch() {
        let p = normalize(
            "products/update",
            br#"{"id": 632910392, "title": "Kit"}"#,
            None,
        );
        assert_eq!(
            p,
            Parsed::Event(Event::Catalog(CatalogNotice::Product("632910392".into())))
        );
        let body =
            br#"{"inventory_item_id": 271878346596884015, "location_id": 1, "available": 0}"#;
        let p = normalize("inventory_levels/update", body, None);
        assert_eq!(
            p,
            Parsed::Event(Event::Catalog(CatalogNotice::InventoryItem(
                "271878346596884015".into()
            )))
        );
        assert!(matches!(
            normalize("products/update", b"{}", None),
            Parsed::Unparseable(_)
        ));
    }

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        Headers::from_pairs(pairs)
    }

    #[test]
    fn verifies_against_any_secret_and_nothing_else() {
        let body = br#"{"id":1}"#;
        let sig = sign(body, "new");
        let h = headers(&[("X-Shopify-Hmac-Sha256", &sig)]);
        assert_eq!(verify(&h, body, &["old".into(), "new".into()]), Ok(()));
        assert_eq!(
            verify(&h, body, &["old".into()]),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify(&headers(&[]), body, &["new".into()]),
            Err(VerifyError::MissingSignature("X-Shopify-Hmac-Sha256"))
        );
        let hexsig = headers(&[("x-shopify-hmac-sha256", "zz!")]);
        assert_eq!(
            verify(&hexsig, body, &["new".into()]),
            Err(VerifyError::MalformedSignature("X-Shopify-Hmac-Sha256"))
        );
    }

    #[test]
    fn delivery_identity_prefers_event_id() {
        let both = headers(&[("x-shopify-event-id", "e"), ("x-shopify-webhook-id", "w")]);
        assert_eq!(dedupe_key(&both, "orders/paid", b"{}"), "event:e");
        let wh = headers(&[("x-shopify-webhook-id", "w")]);
        assert_eq!(dedupe_key(&wh, "orders/paid", b"{}"), "webhook:w");
        let none = dedupe_key(&headers(&[]), "orders/paid", b"{}");
        assert!(none.starts_with("body:") && none.len() == 5 + 64);
        assert_ne!(none, dedupe_key(&headers(&[]), "orders/updated", b"{}"));
    }

    #[test]
    fn reads_the_three_privacy_topics() {
        let redact = br#"{"shop_id":954889,"shop_domain":"s.myshopify.com","customer":{"id":191167,
            "email":"john@example.com","phone":"555-625-1199"},"orders_to_redact":[299938,280263]}"#;
        let person = Person {
            platform_id: Some("191167".into()),
            email: Some("john@example.com".into()),
            phone: Some("555-625-1199".into()),
        };
        assert_eq!(
            normalize("customers/redact", redact, None),
            Parsed::Privacy(Box::new(PrivacyRequest::Erase {
                person: person.clone(),
                orders: vec!["299938".into(), "280263".into()],
            }))
        );
        let request =
            br#"{"shop_id":954889,"shop_domain":"s.myshopify.com","orders_requested":[299938],
            "customer":{"id":191167,"email":"john@example.com","phone":"555-625-1199"},
            "data_request":{"id":9999}}"#;
        assert_eq!(
            normalize("customers/data_request", request, None),
            Parsed::Privacy(Box::new(PrivacyRequest::Export {
                person,
                orders: vec!["299938".into()],
                request: Some("9999".into()),
            }))
        );
        let shop = br#"{"shop_id":954889,"shop_domain":"s.myshopify.com"}"#;
        for domain in [None, Some("s.myshopify.com"), Some("S.MyShopify.com")] {
            assert_eq!(
                normalize("shop/redact", shop, domain),
                Parsed::Privacy(Box::new(PrivacyRequest::EraseStore))
            );
        }
        // A request for another shop served by the same app is not applied here.
        for (topic, body) in [("shop/redact", &shop[..]), ("customers/redact", redact)] {
            let Parsed::Unparseable(why) = normalize(topic, body, Some("other.myshopify.com"))
            else {
                panic!("{topic}")
            };
            assert!(why.contains("\"s.myshopify.com\""), "{why}");
        }
        // One that names no one is kept in quarantine, not guessed at.
        let Parsed::Unparseable(why) = normalize("customers/redact", br#"{"customer":{}}"#, None)
        else {
            panic!()
        };
        assert!(why.contains("names no one"), "{why}");
    }

    #[test]
    fn normalizes_each_topic() {
        let fulfillment = br#"{"id":5,"order_id":9,"status":"success","shipment_status":null,
            "created_at":"2026-11-21T10:00:00Z","updated_at":"2026-11-21T11:00:00Z"}"#;
        let Parsed::Event(Event::Fulfillment(f)) =
            normalize("fulfillments/create", fulfillment, None)
        else {
            panic!()
        };
        assert_eq!(
            (f.id.as_str(), f.order_id.as_str(), f.status.as_str()),
            ("5", "9", "success")
        );
        let refund = br#"{"id":"7","order_id":9,"created_at":"2026-11-21T10:00:00Z",
            "refund_line_items":[{"line_item_id":3,"quantity":1,"subtotal":"4.00"}],
            "transactions":[{"amount":"4.50","kind":"refund","status":"success","currency":"EUR"}]}"#;
        let Parsed::Event(Event::Refund(r)) = normalize("refunds/create", refund, None) else {
            panic!()
        };
        assert_eq!(
            (r.amount, r.lines.clone()),
            (450, vec![("3".to_string(), 1)])
        );
        let delivered = br#"{"order_id":9,"fulfillment_id":5,"status":"delivered","happened_at":"2026-11-24T10:00:00Z"}"#;
        let Parsed::Event(Event::Delivery(d)) =
            normalize("fulfillment_events/create", delivered, None)
        else {
            panic!()
        };
        assert_eq!(d.status, DeliveryStatus::Delivered);
        assert_eq!(normalize("app/uninstalled", b"{}", None), Parsed::Ignored);
        let Parsed::Unparseable(why) = normalize(
            "orders/paid",
            br#"{"id":1,"created_at":"yesterday","currency":"USD","total_price":"1"}"#,
            None,
        ) else {
            panic!()
        };
        assert!(
            why.contains("created_at: \"yesterday\" is not an RFC 3339 time"),
            "{why}"
        );
    }
}
