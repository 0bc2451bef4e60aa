//! Shopify's REST Admin API (`/admin/api/{version}/...`, `X-Shopify-Access-Token`).
//! Orders come back in the shape their webhooks carry, so they are normalized by the same
//! code; lists page through the `Link` header's cursor.

use super::{id_of, Api, ApiError, ApiOrder, Subscription};
use crate::engine::{percent_encode, CatalogNotice, Currency, Timestamp};
use crate::import::CatalogPatch;

/// The topics the appliance acts on. The privacy topics (`customers/data_request`,
/// `customers/redact`, `shop/redact`) are the app's compliance webhooks, set in its
/// configuration, not through this API.
pub const TOPICS: &[&str] = &[
    "products/update",
    "inventory_levels/update",
    "orders/create",
    "orders/paid",
    "orders/updated",
    "orders/cancelled",
    "refunds/create",
    "fulfillments/create",
    "fulfillments/update",
    "fulfillment_events/create",
];

/// Orders per page (the most Shopify allows).
const PAGE: usize = 250;

fn admin(api: &Api, path: &str) -> String {
    api.url(&format!("/admin/api/{}{path}", api.config.version))
}

pub fn check(api: &Api) -> Result<String, ApiError> {
    let what = "GET shop.json";
    let v = api.get_json(what, &admin(api, "/shop.json"))?;
    v["shop"]["name"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| api.malformed(what, "shop.name is missing"))
}

/// Every item of a list (`{field: [...]}`) through its cursor pages (the `Link` header).
fn all(api: &Api, what: &str, path: &str, field: &str) -> Result<Vec<serde_json::Value>, ApiError> {
    let mut url = Some(admin(api, path));
    let mut out = Vec::new();
    let mut page = 0;
    while let Some(u) = url {
        page += 1;
        api.next_page(what, page)?;
        let reply = api.get(what, &u)?;
        let mut v = api.json(what, &reply)?;
        match v[field].take() {
            serde_json::Value::Array(list) => out.extend(list),
            _ => return Err(api.malformed(what, format!("{field} is not a list"))),
        }
        url = api.next_url(what, &reply)?;
    }
    Ok(out)
}

pub fn subscriptions(api: &Api) -> Result<Vec<Subscription>, ApiError> {
    let what = "GET webhooks.json";
    all(
        api,
        what,
        &format!("/webhooks.json?limit={PAGE}"),
        "webhooks",
    )?
    .iter()
    .map(|w| {
        Ok(Subscription {
            id: id_of(&w["id"]).ok_or_else(|| api.malformed(what, "a webhook has no id"))?,
            topic: w["topic"].as_str().unwrap_or_default().to_string(),
            address: w["address"].as_str().unwrap_or_default().to_string(),
            // Shopify deletes a failing subscription rather than disabling it.
            active: true,
        })
    })
    .collect()
}

pub fn subscribe(api: &Api, topic: &str, address: &str) -> Result<String, ApiError> {
    let what = format!("POST webhooks.json ({topic})");
    let body =
        serde_json::json!({"webhook": {"topic": topic, "address": address, "format": "json"}});
    let reply = api.call("POST", &what, &admin(api, "/webhooks.json"), Some(&body))?;
    let v = api.json(&what, &reply)?;
    id_of(&v["webhook"]["id"]).ok_or_else(|| api.malformed(&what, "webhook.id is missing"))
}

pub fn repoint(api: &Api, id: &str, address: &str) -> Result<(), ApiError> {
    let what = format!("PUT webhooks/{id}.json");
    let body = serde_json::json!({"webhook": {"id": id, "address": address}});
    api.call(
        "PUT",
        &what,
        &admin(api, &format!("/webhooks/{id}.json")),
        Some(&body),
    )?;
    Ok(())
}

/// Every order (any status) updated at or after `since`, through the cursor pages.
pub fn orders_since(api: &Api, since: Timestamp) -> Result<Vec<ApiOrder>, ApiError> {
    let what = "GET orders.json";
    let path = format!(
        "/orders.json?status=any&limit={PAGE}&updated_at_min={}",
        percent_encode(&since.to_rfc3339())
    );
    all(api, what, &path, "orders")?
        .iter()
        .map(|o| order_of(api, what, o))
        .collect()
}

pub fn products(api: &Api, currency: Currency) -> Result<Vec<CatalogPatch>, ApiError> {
    let path = format!("/products.json?limit={PAGE}");
    Ok(all(api, "GET products.json", &path, "products")?
        .iter()
        .flat_map(|p| crate::ingest::products::shopify(p, currency))
        .collect())
}

pub fn catalog_of(
    api: &Api,
    notice: &CatalogNotice,
    currency: Currency,
) -> Result<Vec<CatalogPatch>, ApiError> {
    match notice {
        CatalogNotice::Product(id) => {
            let what = format!("GET products/{id}.json");
            match api.get_json(
                &what,
                &admin(api, &format!("/products/{}.json", percent_encode(id))),
            ) {
                Ok(v) => Ok(crate::ingest::products::shopify(&v["product"], currency)),
                Err(e) if e.is_not_found() => Ok(Vec::new()),
                Err(e) => Err(e),
            }
        }
        // An inventory item is its variant's stock: its SKU names the catalog entry, and
        // its levels at every location add up to what can be sold.
        CatalogNotice::InventoryItem(id) => {
            let what = format!("GET inventory_items/{id}.json");
            let item = match api.get_json(
                &what,
                &admin(
                    api,
                    &format!("/inventory_items/{}.json", percent_encode(id)),
                ),
            ) {
                Ok(v) => v["inventory_item"].clone(),
                Err(e) if e.is_not_found() => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let Some(sku) = id_of(&item["sku"]) else {
                return Ok(Vec::new()); // no SKU: the sync's product listing covers it
            };
            if item["tracked"] == false {
                return Ok(Vec::new());
            }
            let what = "GET inventory_levels.json";
            let url = admin(
                api,
                &format!(
                    "/inventory_levels.json?inventory_item_ids={}",
                    percent_encode(id)
                ),
            );
            let levels = api.get_json(what, &url)?;
            let available = levels["inventory_levels"]
                .as_array()
                .ok_or_else(|| api.malformed(what, "inventory_levels is not a list"))?
                .iter()
                .filter_map(|l| l["available"].as_i64())
                .sum::<i64>();
            Ok(vec![CatalogPatch {
                sku: Some(sku),
                inventory: Some(available),
                ..CatalogPatch::default()
            }])
        }
    }
}

/// A price rule (the discount) and its one code, as the REST Admin API makes them.
pub fn create_code(api: &Api, c: &super::NewCode<'_>) -> Result<(), ApiError> {
    let what = format!("POST price_rules.json ({})", c.code);
    let variant: Option<u64> = c.variant_id.and_then(|v| v.parse().ok());
    let mut rule = serde_json::json!({
        "title": c.code, "target_type": "line_item", "allocation_method": "across",
        "value_type": "percentage", "value": format!("-{}.0", c.percent),
        "customer_selection": "all", "once_per_customer": true, "usage_limit": 1,
        "starts_at": c.starts_at.to_rfc3339(), "ends_at": c.expires_at.to_rfc3339(),
        "target_selection": if variant.is_some() { "entitled" } else { "all" },
    });
    if let Some(v) = variant {
        rule["entitled_variant_ids"] = serde_json::json!([v]);
    }
    let reply = api.call(
        "POST",
        &what,
        &admin(api, "/price_rules.json"),
        Some(&serde_json::json!({"price_rule": rule})),
    )?;
    let v = api.json(&what, &reply)?;
    let id = id_of(&v["price_rule"]["id"])
        .ok_or_else(|| api.malformed(&what, "price_rule.id is missing"))?;
    let what = format!("POST price_rules/{id}/discount_codes.json");
    let body = serde_json::json!({"discount_code": {"code": c.code}});
    match api.call(
        "POST",
        &what,
        &admin(api, &format!("/price_rules/{id}/discount_codes.json")),
        Some(&body),
    ) {
        Ok(_) => Ok(()),
        // "code must be unique": made already.
        Err(ApiError::Refused {
            status: 422, body, ..
        }) if body.contains("unique") => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn order(api: &Api, id: &str) -> Result<ApiOrder, ApiError> {
    let what = format!("GET orders/{id}.json");
    let v = api.get_json(
        &what,
        &admin(api, &format!("/orders/{}.json", percent_encode(id))),
    )?;
    order_of(api, &what, &v["order"])
}

fn order_of(api: &Api, what: &str, o: &serde_json::Value) -> Result<ApiOrder, ApiError> {
    let id = id_of(&o["id"]).ok_or_else(|| api.malformed(what, "an order has no id"))?;
    let at = o["updated_at"]
        .as_str()
        .or(o["created_at"].as_str())
        .ok_or_else(|| api.malformed(what, format!("order {id} has no updated_at")))?;
    let updated_at = crate::ingest::wire::parse_time("updated_at", at)
        .map_err(|e| api.malformed(what, format!("order {id}: {e}")))?;
    Ok(ApiOrder {
        id,
        updated_at,
        topic: "orders/updated",
        body: serde_json::to_vec(o).expect("JSON values serialize"),
        complete: true,
    })
}
