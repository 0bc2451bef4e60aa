//! Shopify's REST Admin API (`/admin/api/{version}/...`, `X-Shopify-Access-Token`).
//! Orders come back in the shape their webhooks carry, so they are normalized by the same
//! code; lists page through the `Link` header's cursor.

use super::{encode, id_of, next_link, Api, ApiError, ApiOrder, Subscription};
use crate::engine::Timestamp;

/// The topics the appliance acts on. The privacy topics (`customers/data_request`,
/// `customers/redact`, `shop/redact`) are the app's compliance webhooks, set in its
/// configuration, not through this API.
pub const TOPICS: &[&str] = &[
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

pub fn subscriptions(api: &Api) -> Result<Vec<Subscription>, ApiError> {
    let what = "GET webhooks.json";
    let mut url = Some(admin(api, "/webhooks.json?limit=250"));
    let mut out = Vec::new();
    while let Some(u) = url {
        let reply = api.get(what, &u)?;
        let v = api.json(what, &reply)?;
        let list = v["webhooks"]
            .as_array()
            .ok_or_else(|| api.malformed(what, "webhooks is not a list"))?;
        for w in list {
            out.push(Subscription {
                id: id_of(&w["id"]).ok_or_else(|| api.malformed(what, "a webhook has no id"))?,
                topic: w["topic"].as_str().unwrap_or_default().to_string(),
                address: w["address"].as_str().unwrap_or_default().to_string(),
                // Shopify deletes a failing subscription rather than disabling it.
                active: true,
            });
        }
        url = next_link(reply.header("link"));
    }
    Ok(out)
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
    let mut url = Some(admin(
        api,
        &format!(
            "/orders.json?status=any&limit={PAGE}&updated_at_min={}",
            encode(&since.to_rfc3339())
        ),
    ));
    let mut out = Vec::new();
    while let Some(u) = url {
        let reply = api.get(what, &u)?;
        let v = api.json(what, &reply)?;
        let list = v["orders"]
            .as_array()
            .ok_or_else(|| api.malformed(what, "orders is not a list"))?;
        for o in list {
            out.push(order_of(api, what, o)?);
        }
        url = next_link(reply.header("link"));
    }
    Ok(out)
}

pub fn order(api: &Api, id: &str) -> Result<ApiOrder, ApiError> {
    let what = format!("GET orders/{id}.json");
    let v = api.get_json(&what, &admin(api, &format!("/orders/{}.json", encode(id))))?;
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
    })
}
