//! WooCommerce's REST API v3 (`/wp-json/wc/v3/...`, the REST key as basic auth over
//! HTTPS). Orders come back in the shape their webhooks carry; lists page by number and
//! say how many pages there are in `X-WP-TotalPages`.

use super::{id_of, Api, ApiError, ApiOrder, Subscription};
use crate::config::StoreConfig;
use crate::engine::{percent_encode, Currency, Timestamp};
use crate::import::CatalogPatch;

pub const TOPICS: &[&str] = &[
    "order.created",
    "order.updated",
    "order.deleted",
    "order.restored",
];

/// Items per page (the most WooCommerce allows).
const PAGE: usize = 100;

/// A time as WooCommerce's `*_gmt` fields and filters write it: UTC without an offset.
fn gmt(t: Timestamp) -> String {
    chrono::DateTime::from_timestamp_millis(t.0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

fn rest(api: &Api, path: &str) -> String {
    api.url(&format!("/wp-json/wc/v3{path}"))
}

pub fn check(api: &Api) -> Result<String, ApiError> {
    let what = "GET settings/general";
    let v = api.get_json(what, &rest(api, "/settings/general"))?;
    // The store's address lines; the site's title is WordPress's, not WooCommerce's.
    let list = v
        .as_array()
        .ok_or_else(|| api.malformed(what, "settings is not a list"))?;
    let field = |id: &str| {
        list.iter()
            .find(|s| s["id"] == id)
            .and_then(|s| s["value"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    Ok(format!(
        "{} {}",
        field("woocommerce_store_address"),
        field("woocommerce_store_city")
    )
    .trim()
    .to_string())
}

/// Every page of a list.
fn all_pages(api: &Api, what: &str, path: &str) -> Result<Vec<serde_json::Value>, ApiError> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut out = Vec::new();
    for page in 1.. {
        api.next_page(what, page)?;
        let reply = api.get(
            what,
            &rest(api, &format!("{path}{sep}per_page={PAGE}&page={page}")),
        )?;
        let v = api.json(what, &reply)?;
        let list = v
            .as_array()
            .ok_or_else(|| api.malformed(what, "the answer is not a list"))?;
        let n = list.len();
        out.extend(list.iter().cloned());
        let pages = reply
            .header("x-wp-totalpages")
            .and_then(|p| p.trim().parse::<usize>().ok());
        if n == 0 || pages.is_some_and(|p| page >= p) || (pages.is_none() && n < PAGE) {
            break;
        }
    }
    Ok(out)
}

pub fn subscriptions(api: &Api) -> Result<Vec<Subscription>, ApiError> {
    let what = "GET webhooks";
    all_pages(api, what, "/webhooks")?
        .iter()
        .map(|w| {
            Ok(Subscription {
                id: id_of(&w["id"]).ok_or_else(|| api.malformed(what, "a webhook has no id"))?,
                topic: w["topic"].as_str().unwrap_or_default().to_string(),
                address: w["delivery_url"].as_str().unwrap_or_default().to_string(),
                active: w["status"] == "active",
            })
        })
        .collect()
}

pub fn subscribe(
    api: &Api,
    store: &StoreConfig,
    topic: &str,
    address: &str,
) -> Result<String, ApiError> {
    let what = format!("POST webhooks ({topic})");
    let body = serde_json::json!({
        "name": format!("upsell-appliance {topic}"), "topic": topic,
        "delivery_url": address, "secret": super::signing_secret(store), "status": "active",
    });
    let reply = api.call("POST", &what, &rest(api, "/webhooks"), Some(&body))?;
    let v = api.json(&what, &reply)?;
    id_of(&v["id"]).ok_or_else(|| api.malformed(&what, "id is missing"))
}

/// Points a webhook here again and turns it back on (WooCommerce disables one after 5
/// failed deliveries), with the store's current secret.
pub fn repoint(api: &Api, store: &StoreConfig, id: &str, address: &str) -> Result<(), ApiError> {
    let what = format!("PUT webhooks/{id}");
    let body = serde_json::json!({"delivery_url": address, "status": "active", "secret": super::signing_secret(store)});
    api.call(
        "PUT",
        &what,
        &rest(api, &format!("/webhooks/{}", percent_encode(id))),
        Some(&body),
    )?;
    Ok(())
}

pub fn orders_since(api: &Api, since: Timestamp) -> Result<Vec<ApiOrder>, ApiError> {
    let what = "GET orders";
    // `modified_after` (WooCommerce 5.8+) read as GMT with `dates_are_gmt`.
    let after = gmt(since);
    let path = format!(
        "/orders?modified_after={}&dates_are_gmt=true&orderby=id&order=asc",
        percent_encode(&after)
    );
    all_pages(api, what, &path)?
        .iter()
        .map(|o| order_of(api, what, o))
        .collect()
}

pub fn products(api: &Api, currency: Currency) -> Result<Vec<CatalogPatch>, ApiError> {
    let mut out = Vec::new();
    for p in all_pages(api, "GET products", "/products")? {
        let variations = match (p["type"].as_str(), id_of(&p["id"])) {
            (Some("variable"), Some(id)) => {
                let path = format!("/products/{}/variations", percent_encode(&id));
                all_pages(api, "GET products/variations", &path)?
            }
            _ => Vec::new(),
        };
        out.extend(crate::ingest::products::woocommerce(
            &p,
            &variations,
            currency,
        ));
    }
    Ok(out)
}

/// A coupon: `percent` off, one use, until the offer ends.
pub fn create_code(api: &Api, c: &super::NewCode<'_>) -> Result<(), ApiError> {
    let what = format!("POST coupons ({})", c.code);
    let expires = gmt(c.expires_at);
    let mut body = serde_json::json!({
        "code": c.code, "discount_type": "percent", "amount": c.percent.to_string(),
        "individual_use": true, "usage_limit": 1, "usage_limit_per_user": 1,
        "date_expires_gmt": expires, "description": c.note,
    });
    if let Some(p) = c.product_id.and_then(|p| p.parse::<u64>().ok()) {
        body["product_ids"] = serde_json::json!([p]);
    }
    match api.call("POST", &what, &rest(api, "/coupons"), Some(&body)) {
        Ok(_) => Ok(()),
        Err(ApiError::Refused {
            status: 400, body, ..
        }) if body.contains("woocommerce_rest_coupon_code_already_exists") => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn order(api: &Api, id: &str) -> Result<ApiOrder, ApiError> {
    let what = format!("GET orders/{id}");
    let v = api.get_json(
        &what,
        &rest(api, &format!("/orders/{}", percent_encode(id))),
    )?;
    order_of(api, &what, &v)
}

fn order_of(api: &Api, what: &str, o: &serde_json::Value) -> Result<ApiOrder, ApiError> {
    let id = id_of(&o["id"]).ok_or_else(|| api.malformed(what, "an order has no id"))?;
    let at = o["date_modified_gmt"]
        .as_str()
        .or(o["date_created_gmt"].as_str())
        .ok_or_else(|| api.malformed(what, format!("order {id} has no date_modified_gmt")))?;
    let updated_at = crate::ingest::wire::parse_gmt("date_modified_gmt", at)
        .map_err(|e| api.malformed(what, format!("order {id}: {e}")))?;
    Ok(ApiOrder {
        id,
        updated_at,
        topic: "order.updated",
        body: serde_json::to_vec(o).expect("JSON values serialize"),
        complete: true,
    })
}
