//! BigCommerce's API (`https://api.bigcommerce.com/stores/{hash}`, `X-Auth-Token`): the
//! V2 Orders API for orders and their products, V3 for webhooks. An order's body is
//! `{"order": <V2 order>, "products": [<V2 order products>]}`, which
//! `ingest::bigcommerce` reads under the topic `store/order/fetched`.

use super::{id_of, Api, ApiError, ApiOrder, Subscription};
use crate::config::StoreConfig;
use crate::engine::{percent_encode, Currency, Timestamp};
use crate::import::CatalogPatch;

pub const TOPICS: &[&str] = &[
    "store/order/created",
    "store/order/updated",
    "store/order/statusUpdated",
    "store/order/refund/created",
];

/// Items per page of a V2 list (the most it allows).
const PAGE: usize = 250;

pub fn check(api: &Api) -> Result<String, ApiError> {
    let what = "GET v2/store";
    let v = api.get_json(what, &api.url("/v2/store"))?;
    v["name"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| api.malformed(what, "name is missing"))
}

/// Every item of a V3 list (`{data: [...], meta: {pagination: {total_pages}}}`);
/// `path` has its query already.
fn v3_pages(api: &Api, what: &str, path: &str) -> Result<Vec<serde_json::Value>, ApiError> {
    let mut out = Vec::new();
    for page in 1.. {
        api.next_page(what, page)?;
        let mut v = api.get_json(what, &api.url(&format!("{path}&limit={PAGE}&page={page}")))?;
        let n = match v["data"].take() {
            serde_json::Value::Array(list) => {
                let n = list.len();
                out.extend(list);
                n
            }
            _ => return Err(api.malformed(what, "data is not a list")),
        };
        let pages = v["meta"]["pagination"]["total_pages"].as_u64().unwrap_or(1);
        if n == 0 || page as u64 >= pages {
            break;
        }
    }
    Ok(out)
}

/// Every item of a V2 list (an array, or 204 with no body when there is nothing more).
fn v2_pages(api: &Api, what: &str, path: &str) -> Result<Vec<serde_json::Value>, ApiError> {
    let mut out = Vec::new();
    for page in 1.. {
        api.next_page(what, page)?;
        let list =
            match api.get_json(what, &api.url(&format!("{path}&limit={PAGE}&page={page}")))? {
                serde_json::Value::Null => break,
                serde_json::Value::Array(list) => list,
                _ => return Err(api.malformed(what, "the answer is not a list")),
            };
        let n = list.len();
        out.extend(list);
        if n < PAGE {
            break;
        }
    }
    Ok(out)
}

pub fn subscriptions(api: &Api) -> Result<Vec<Subscription>, ApiError> {
    let what = "GET v3/hooks";
    v3_pages(api, what, "/v3/hooks?")?
        .iter()
        .map(|h| {
            Ok(Subscription {
                id: id_of(&h["id"]).ok_or_else(|| api.malformed(what, "a hook has no id"))?,
                topic: h["scope"].as_str().unwrap_or_default().to_string(),
                address: h["destination"].as_str().unwrap_or_default().to_string(),
                active: h["is_active"].as_bool().unwrap_or(false),
            })
        })
        .collect()
}

/// The custom header every callback carries: the secret our intake checks.
fn headers(store: &StoreConfig) -> serde_json::Value {
    serde_json::json!({ store.webhook_secret_header.as_str(): super::signing_secret(store) })
}

pub fn subscribe(
    api: &Api,
    store: &StoreConfig,
    topic: &str,
    address: &str,
) -> Result<String, ApiError> {
    let what = format!("POST v3/hooks ({topic})");
    let body = serde_json::json!({
        "scope": topic, "destination": address, "is_active": true, "headers": headers(store),
    });
    let reply = api.call("POST", &what, &api.url("/v3/hooks"), Some(&body))?;
    let v = api.json(&what, &reply)?;
    id_of(&v["data"]["id"]).ok_or_else(|| api.malformed(&what, "data.id is missing"))
}

/// Points a hook here again and turns it back on (BigCommerce deactivates one after ~48 h
/// of failed deliveries), with the store's current secret header.
pub fn repoint(api: &Api, store: &StoreConfig, id: &str, address: &str) -> Result<(), ApiError> {
    let what = format!("PUT v3/hooks/{id}");
    let body =
        serde_json::json!({"destination": address, "is_active": true, "headers": headers(store)});
    api.call(
        "PUT",
        &what,
        &api.url(&format!("/v3/hooks/{}", percent_encode(id))),
        Some(&body),
    )?;
    Ok(())
}

/// Orders modified at or after `since`, as the list gives them: without their products
/// (`complete` false), which `order` fetches for the ones the appliance needs. Paged in id
/// order, which an order changing during the listing does not move.
pub fn orders_since(api: &Api, since: Timestamp) -> Result<Vec<ApiOrder>, ApiError> {
    let what = "GET v2/orders";
    let after = chrono::DateTime::from_timestamp_millis(since.0)
        .unwrap_or_default()
        .to_rfc2822();
    let path = format!(
        "/v2/orders?min_date_modified={}&sort=id:asc",
        percent_encode(&after)
    );
    v2_pages(api, what, &path)?
        .into_iter()
        .map(|o| complete(api, o, None))
        .collect()
}

pub fn products(api: &Api, currency: Currency) -> Result<Vec<CatalogPatch>, ApiError> {
    let path = "/v3/catalog/products?include=variants,images";
    Ok(v3_pages(api, "GET v3/catalog/products", path)?
        .iter()
        .flat_map(|p| crate::ingest::products::bigcommerce(p, currency))
        .collect())
}

pub fn order(api: &Api, id: &str) -> Result<ApiOrder, ApiError> {
    let what = format!("GET v2/orders/{id}");
    let v = api.get_json(
        &what,
        &api.url(&format!("/v2/orders/{}", percent_encode(id))),
    )?;
    let id = id_of(&v["id"]).ok_or_else(|| api.malformed(&what, "the order has no id"))?;
    let products = v2_pages(
        api,
        &format!("GET v2/orders/{id}/products"),
        &format!("/v2/orders/{}/products?", percent_encode(&id)),
    )?;
    // Refunds are their own resource; asked for only when the order says it has some.
    let refunded = v["refunded_amount"]
        .as_str()
        .and_then(|a| a.trim().parse::<f64>().ok())
        .is_some_and(|a| a > 0.0);
    let refunds = if refunded {
        let what = format!("GET v3/orders/{id}/payment_actions/refunds");
        let url = api.url(&format!(
            "/v3/orders/{}/payment_actions/refunds",
            percent_encode(&id)
        ));
        api.get_json(&what, &url)?["data"].clone()
    } else {
        serde_json::Value::Array(vec![])
    };
    complete(api, v, Some((products, refunds)))
}

/// An order's record: `{order, products, refunds}`, complete when its products and
/// refunds were fetched.
fn complete(
    api: &Api,
    order: serde_json::Value,
    parts: Option<(Vec<serde_json::Value>, serde_json::Value)>,
) -> Result<ApiOrder, ApiError> {
    let id =
        id_of(&order["id"]).ok_or_else(|| api.malformed("GET v2/orders", "an order has no id"))?;
    let is_complete = parts.is_some();
    let (products, refunds) = parts.unwrap_or_default();
    let body = serde_json::json!({"order": order, "products": products, "refunds": refunds});
    let bytes = serde_json::to_vec(&body).expect("JSON values serialize");
    let updated_at = crate::ingest::bigcommerce::fetched_updated_at(&bytes)
        .map_err(|why| api.malformed(&format!("GET v2/orders/{id}"), why))?;
    Ok(ApiOrder {
        id,
        updated_at,
        topic: crate::ingest::bigcommerce::FETCHED,
        body: bytes,
        complete: is_complete,
    })
}
