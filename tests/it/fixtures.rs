//! Realistic Shopify payloads built from the wire facts in protocols.md: an `orders/paid`
//! with the fields Shopify really sends (about 12 KB with three lines), guests, gift cards
//! and custom line items, refunds and fulfillment events. Shared by the tests and the
//! ingest benchmark.

use serde_json::{json, Value};

pub struct OrderSpec {
    pub id: u64,
    pub customer_id: Option<u64>,
    pub email: String,
    pub lines: Vec<LineSpec>,
    pub updated_at: &'static str,
    pub cancelled: bool,
}

pub struct LineSpec {
    pub product_id: Option<u64>,
    pub title: &'static str,
    pub price: &'static str,
    pub quantity: u32,
    pub gift_card: bool,
}

impl OrderSpec {
    /// The same order by one of a thousand distinct customers.
    pub fn by_customer(id: u64) -> OrderSpec {
        let n = id % 1000;
        OrderSpec {
            customer_id: Some(7_000_000_000 + n),
            email: format!("customer{n}@example.com"),
            ..OrderSpec::three_lines(id)
        }
    }

    /// A paid order by a known customer with three catalog lines.
    pub fn three_lines(id: u64) -> OrderSpec {
        OrderSpec {
            id,
            customer_id: Some(7_000_000_000 + id % 1000),
            email: "jane.doe@example.com".into(),
            lines: vec![
                LineSpec {
                    product_id: Some(632910392),
                    title: "Pour-over Coffee Kit",
                    price: "54.00",
                    quantity: 1,
                    gift_card: false,
                },
                LineSpec {
                    product_id: Some(632910393),
                    title: "Single-Origin Beans 250 g",
                    price: "16.50",
                    quantity: 2,
                    gift_card: false,
                },
                LineSpec {
                    product_id: Some(632910394),
                    title: "Paper Filters (100)",
                    price: "6.00",
                    quantity: 3,
                    gift_card: false,
                },
            ],
            updated_at: "2026-11-20T10:05:00-05:00",
            cancelled: false,
        }
    }
}

fn address(name: &str) -> Value {
    json!({
        "first_name": name.split(' ').next().unwrap_or(""),
        "address1": "123 Amoebobacterieae St", "phone": "+1 (555) 555-0123", "city": "Ottawa",
        "zip": "K2P0V6", "province": "Ontario", "country": "Canada",
        "last_name": name.split(' ').nth(1).unwrap_or(""), "address2": "Apt 4",
        "company": null, "latitude": 45.41634, "longitude": -75.6868,
        "name": name, "country_code": "CA", "province_code": "ON"
    })
}

fn money_set(amount: &str) -> Value {
    json!({"shop_money": {"amount": amount, "currency_code": "USD"},
           "presentment_money": {"amount": amount, "currency_code": "USD"}})
}

fn line(i: usize, l: &LineSpec) -> Value {
    json!({
        "id": 866550311766439020u64 + i as u64,
        "admin_graphql_api_id": format!("gid://shopify/LineItem/{}", 866550311766439020u64 + i as u64),
        "attributed_staffs": [],
        "current_quantity": l.quantity,
        "fulfillable_quantity": l.quantity,
        "fulfillment_service": "manual",
        "fulfillment_status": null,
        "gift_card": l.gift_card,
        "grams": 567,
        "name": format!("{} - Default", l.title),
        "price": l.price,
        "price_set": money_set(l.price),
        "product_exists": l.product_id.is_some(),
        "product_id": l.product_id,
        "properties": [{"name": "Engraving", "value": ""}],
        "quantity": l.quantity,
        "requires_shipping": !l.gift_card,
        "sku": l.product_id.map(|p| format!("SKU-{p}")),
        "taxable": true,
        "title": l.title,
        "total_discount": "0.00",
        "total_discount_set": money_set("0.00"),
        "variant_id": l.product_id.map(|p| p + 1_000_000),
        "variant_inventory_management": "shopify",
        "variant_title": "Default",
        "vendor": "Acme Roasters",
        "tax_lines": [{"channel_liable": null, "price": "1.35", "price_set": money_set("1.35"), "rate": 0.13, "title": "HST"}],
        "duties": [],
        "product_has_variants": true,
        "origin_location": {"id": 4426850398u64, "country_code": "CA", "province_code": "ON", "name": "Acme Roasters Warehouse", "address1": "77 Industrial Pkwy", "address2": "Unit 3", "city": "Ottawa", "zip": "K1G 4K2"},
        "discount_allocations": [{"amount": "0.00", "amount_set": money_set("0.00"), "discount_application_index": 0}]
    })
}

/// An `orders/paid` body (serialized) for the spec.
pub fn order_json(s: &OrderSpec) -> Vec<u8> {
    let lines: Vec<Value> = s
        .lines
        .iter()
        .enumerate()
        .map(|(i, l)| line(i, l))
        .collect();
    let subtotal_cents: i64 = s
        .lines
        .iter()
        .map(|l| {
            let (a, b) = l.price.split_once('.').unwrap();
            (a.parse::<i64>().unwrap() * 100 + b.parse::<i64>().unwrap()) * l.quantity as i64
        })
        .sum();
    let subtotal = format!("{}.{:02}", subtotal_cents / 100, subtotal_cents % 100);
    let total_cents = subtotal_cents + 1000;
    let total = format!("{}.{:02}", total_cents / 100, total_cents % 100);
    let customer = s.customer_id.map(|id| {
        json!({
            "id": id, "email": s.email, "created_at": "2025-03-01T09:00:00-05:00",
            "updated_at": "2026-11-20T10:00:00-05:00", "first_name": "Jane", "last_name": "Doe",
            "state": "enabled", "note": null, "verified_email": true, "multipass_identifier": null,
            "tax_exempt": false, "phone": "+15555550123", "currency": "USD",
            "tags": "newsletter, coffee-club",
            "email_marketing_consent": {"state": "subscribed", "opt_in_level": "single_opt_in", "consent_updated_at": "2025-03-01T09:00:00-05:00"},
            "sms_marketing_consent": {"state": "not_subscribed", "opt_in_level": "single_opt_in", "consent_updated_at": null, "consent_collected_from": "OTHER"},
            "admin_graphql_api_id": format!("gid://shopify/Customer/{id}"),
            "default_address": address("Jane Doe")
        })
    });
    let v = json!({
        "id": s.id,
        "admin_graphql_api_id": format!("gid://shopify/Order/{}", s.id),
        "app_id": 580111,
        "browser_ip": "203.0.113.7",
        "buyer_accepts_marketing": true,
        "cancel_reason": if s.cancelled { json!("customer") } else { json!(null) },
        "cancelled_at": if s.cancelled { json!(s.updated_at) } else { json!(null) },
        "cart_token": "c1-7a9f0e2b8d",
        "checkout_id": 901414060u64,
        "checkout_token": "bd5a8aa1ecd019dd3520ff791ee3a24c",
        "client_details": {"accept_language": "en-US,en;q=0.9", "browser_height": 900, "browser_ip": "203.0.113.7", "browser_width": 1440, "session_hash": null, "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15"},
        "closed_at": null,
        "confirmation_number": "XPAV284CT",
        "confirmed": true,
        "contact_email": s.email,
        "created_at": "2026-11-20T10:00:00-05:00",
        "currency": "USD",
        "current_subtotal_price": subtotal,
        "current_subtotal_price_set": money_set(&subtotal),
        "current_total_discounts": "0.00",
        "current_total_price": total,
        "current_total_price_set": money_set(&total),
        "current_total_tax": "5.40",
        "customer_locale": "en-CA",
        "discount_codes": [{"code": "WELCOME10", "amount": "0.00", "type": "percentage"}],
        "email": s.email,
        "estimated_taxes": false,
        "financial_status": "paid",
        "fulfillment_status": null,
        "landing_site": "/collections/coffee?utm_source=newsletter&utm_medium=email",
        "name": format!("#{}", 1000 + s.id % 100000),
        "note": "Please leave at the side door.",
        "note_attributes": [{"name": "gift_message", "value": ""}, {"name": "how_did_you_hear", "value": "podcast"}],
        "number": s.id % 100000,
        "order_number": 1000 + s.id % 100000,
        "order_status_url": format!("https://demo-store.myshopify.com/548380009/orders/{}/authenticate?key=8b1a4c2e", s.id),
        "payment_gateway_names": ["shopify_payments"],
        "phone": null,
        "presentment_currency": "USD",
        "processed_at": "2026-11-20T10:00:00-05:00",
        "referring_site": "https://www.google.com/",
        "source_name": "web",
        "subtotal_price": subtotal,
        "subtotal_price_set": money_set(&subtotal),
        "tags": "first-order, newsletter",
        "tax_lines": [{"price": "5.40", "rate": 0.13, "title": "HST", "price_set": money_set("5.40"), "channel_liable": false}],
        "taxes_included": false,
        "test": false,
        "token": "1f1d1e6f9c7b4a3e8d2c0b9a8f7e6d5c",
        "total_discounts": "0.00",
        "total_line_items_price": subtotal,
        "total_outstanding": "0.00",
        "total_price": total,
        "total_price_set": money_set(&total),
        "total_shipping_price_set": money_set("10.00"),
        "total_tax": "5.40",
        "total_weight": 1701,
        "current_total_discounts_set": money_set("0.00"),
        "current_total_tax_set": money_set("5.40"),
        "current_total_additional_fees_set": null,
        "current_total_duties_set": null,
        "original_total_additional_fees_set": null,
        "original_total_duties_set": null,
        "total_discounts_set": money_set("0.00"),
        "total_line_items_price_set": money_set(&subtotal),
        "total_tax_set": money_set("5.40"),
        "total_cash_rounding_payment_adjustment_set": money_set("0.00"),
        "total_cash_rounding_refund_adjustment_set": money_set("0.00"),
        "total_tip_received": "0.00",
        "reference": null, "source_identifier": null, "source_url": null, "location_id": null,
        "merchant_of_record_app_id": null, "device_id": null, "po_number": null,
        "merchant_business_entity_id": "MTU0ODM4MDAwOQ", "company": null,
        "checkout_token_v2": "c1-7a9f0e2b8d4c6e1f3a5b7d9c0e2f4a6b",
        "duties_included": false,
        "email_marketing_consent_snapshot": {"state": "subscribed", "opt_in_level": "single_opt_in"},
        "updated_at": s.updated_at,
        "user_id": null,
        "billing_address": address("Jane Doe"),
        "customer": customer,
        "discount_applications": [{"target_type": "line_item", "type": "discount_code", "value": "0.0", "value_type": "percentage", "allocation_method": "across", "target_selection": "all", "code": "WELCOME10"}],
        "fulfillments": [],
        "line_items": lines,
        "payment_terms": null,
        "refunds": [],
        "shipping_address": address("Jane Doe"),
        "shipping_lines": [{"id": 271878346596884015u64, "carrier_identifier": null, "code": "Standard", "discounted_price": "10.00", "discounted_price_set": money_set("10.00"), "phone": null, "price": "10.00", "price_set": money_set("10.00"), "requested_fulfillment_service_id": null, "source": "shopify", "title": "Standard Shipping", "tax_lines": [], "discount_allocations": []}]
    });
    serde_json::to_vec(&v).unwrap()
}

/// A guest checkout: no customer object, only the order's email.
pub fn guest_order(id: u64, email: &str) -> Vec<u8> {
    order_json(&OrderSpec {
        customer_id: None,
        email: email.into(),
        ..OrderSpec::three_lines(id)
    })
}

pub fn refund_json(refund_id: u64, order_id: u64, amount: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": refund_id, "order_id": order_id, "created_at": "2026-11-22T09:00:00-05:00",
        "note": "damaged", "user_id": null, "processed_at": "2026-11-22T09:00:00-05:00",
        "restock": true, "duties": [], "order_adjustments": [],
        "refund_line_items": [{"id": 1, "line_item_id": 866550311766439020u64, "quantity": 1, "restock_type": "return", "subtotal": amount, "total_tax": "0.00"}],
        "transactions": [{"id": 3, "order_id": order_id, "kind": "refund", "gateway": "shopify_payments", "status": "success", "amount": amount, "currency": "USD"}]
    }))
    .unwrap()
}

pub fn delivered_json(order_id: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": 944956395, "fulfillment_id": 255858046, "status": "delivered", "message": null,
        "happened_at": "2026-11-24T14:00:00-05:00", "city": "Ottawa", "province": "Ontario",
        "country": "Canada", "zip": "K2P0V6", "address1": null, "latitude": null, "longitude": null,
        "shop_id": 548380009, "created_at": "2026-11-24T14:01:00-05:00", "updated_at": "2026-11-24T14:01:00-05:00",
        "estimated_delivery_at": null, "order_id": order_id
    }))
    .unwrap()
}

/// A WooCommerce REST v3 order as its webhooks send it; `refunds` are (id, amount) pairs.
pub fn woo_order_json(id: u64, status: &str, modified: &str, refunds: &[(u64, &str)]) -> Vec<u8> {
    let refunds: Vec<Value> = refunds
        .iter()
        .map(|(rid, amount)| json!({"id": rid, "reason": "damaged", "total": format!("-{amount}")}))
        .collect();
    serde_json::to_vec(&json!({
        "id": id, "parent_id": 0, "number": id.to_string(), "order_key": "wc_order_5a1b2c3d",
        "created_via": "checkout", "version": "9.4.1", "status": status, "currency": "EUR",
        "date_created": "2026-11-21T16:00:00", "date_created_gmt": "2026-11-21T15:00:00",
        "date_modified": modified, "date_modified_gmt": modified,
        "discount_total": "0.00", "discount_tax": "0.00", "shipping_total": "4.90", "shipping_tax": "0.93",
        "cart_tax": "8.36", "total": "57.19", "total_tax": "9.29", "prices_include_tax": false,
        "customer_id": 12, "customer_ip_address": "198.51.100.4",
        "customer_user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/132.0", "customer_note": "",
        "billing": {"first_name": "Anna", "last_name": "Schmidt", "company": "", "address_1": "Hauptstr. 5",
            "address_2": "", "city": "Berlin", "state": "BE", "postcode": "10115", "country": "DE",
            "email": "Anna.Schmidt@example.de", "phone": "+49301234567"},
        "shipping": {"first_name": "Anna", "last_name": "Schmidt", "company": "", "address_1": "Hauptstr. 5",
            "address_2": "", "city": "Berlin", "state": "BE", "postcode": "10115", "country": "DE", "phone": ""},
        "payment_method": "stripe", "payment_method_title": "Credit card", "transaction_id": "pi_3Q1x",
        "date_paid_gmt": "2026-11-21T15:00:05", "date_completed_gmt": null, "cart_hash": "8e2f1c",
        "meta_data": [{"id": 901, "key": "_stripe_customer_id", "value": "cus_R1"}],
        "line_items": [
            {"id": 315, "name": "Ceramic Dripper", "product_id": 93, "variation_id": 0, "quantity": 1,
             "tax_class": "", "subtotal": "29.90", "subtotal_tax": "5.68", "total": "29.90", "total_tax": "5.68",
             "taxes": [{"id": 1, "total": "5.68", "subtotal": "5.68"}], "meta_data": [], "sku": "DRIP-01", "price": 29.9,
             "image": {"id": "94", "src": "https://shop.example.com/wp-content/uploads/dripper.jpg"}, "parent_name": null},
            {"id": 316, "name": "Filter Papers - 100", "product_id": 22, "variation_id": 23, "quantity": 2,
             "tax_class": "", "subtotal": "11.00", "subtotal_tax": "2.09", "total": "11.00", "total_tax": "2.09",
             "taxes": [{"id": 1, "total": "2.09", "subtotal": "2.09"}], "meta_data": [{"id": 1, "key": "pa_size", "value": "100"}],
             "sku": "FILT-100", "price": 5.5, "image": {"id": "24", "src": ""}, "parent_name": "Filter Papers"}
        ],
        "tax_lines": [{"id": 317, "rate_code": "DE-MWST-1", "rate_id": 1, "label": "MwSt.", "compound": false, "tax_total": "8.36", "shipping_tax_total": "0.93"}],
        "shipping_lines": [{"id": 318, "method_title": "DHL", "method_id": "flat_rate", "total": "4.90", "total_tax": "0.93"}],
        "fee_lines": [], "coupon_lines": [], "refunds": refunds,
        "currency_symbol": "€"
    }))
    .unwrap()
}
