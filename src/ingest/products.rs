//! Products as the platforms' APIs (and Shopify's `products/update` webhook) describe them,
//! read into catalog patches: what the platform knows of each variant (ids, SKU, titles,
//! price, stock, image, whether it is published). Fields only the store's own catalog
//! holds (cost, consumable days, upgrade, bundles, rating) are left alone.
//!
//! Pure: JSON in, patches out.

use serde_json::Value;

use super::wire::text;
use crate::engine::Currency;
use crate::import::CatalogPatch;

/// A money field given as a decimal string or a number; `None` when absent, empty or not
/// an amount in `currency` (a price this store cannot read is not a price to offer at).
fn money(currency: Currency, v: &Value) -> Option<i64> {
    let t = text(Some(v))?;
    currency.parse_minor(&t).ok()
}

fn string(v: &Value) -> Option<String> {
    text(Some(v))
}

fn patch(product_id: Option<String>, variant_id: Option<String>) -> CatalogPatch {
    CatalogPatch {
        product_id,
        variant_id,
        ..CatalogPatch::default()
    }
}

/// A Shopify product (REST Admin API, or the `products/update` body): one patch per
/// variant. Stock is known only for variants Shopify tracks.
pub fn shopify(p: &Value, currency: Currency) -> Vec<CatalogPatch> {
    let product_id = string(&p["id"]);
    let image = p["image"]["src"]
        .as_str()
        .or(p["images"][0]["src"].as_str())
        .map(str::to_string);
    let tags = super::wire::split_tags(p["tags"].as_str());
    let active = p["status"].as_str().map(|s| s == "active");
    let empty = Vec::new();
    p["variants"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|v| {
            let title = v["title"].as_str().filter(|t| *t != "Default Title");
            let tracked = v["inventory_management"].as_str().is_some();
            CatalogPatch {
                sku: string(&v["sku"]),
                handle: string(&p["handle"]),
                title: string(&p["title"]),
                variant_title: title.map(str::to_string),
                product_type: string(&p["product_type"]),
                vendor: string(&p["vendor"]),
                tags: Some(tags.clone()),
                price: money(currency, &v["price"]),
                compare_at_price: money(currency, &v["compare_at_price"]),
                inventory: v["inventory_quantity"].as_i64().filter(|_| tracked),
                image_url: image.clone(),
                requires_shipping: v["requires_shipping"].as_bool(),
                active,
                ..patch(product_id.clone(), string(&v["id"]))
            }
        })
        .collect()
}

/// A WooCommerce product (REST v3): itself when simple, else each of its `variations`
/// (fetched separately) under the product's names.
pub fn woocommerce(p: &Value, variations: &[Value], currency: Currency) -> Vec<CatalogPatch> {
    let one = |v: &Value, variant_id: Option<String>| {
        let sale = money(currency, &v["sale_price"]);
        let tracked = v["manage_stock"].as_bool() == Some(true);
        let out_of_stock = v["stock_status"].as_str() == Some("outofstock");
        CatalogPatch {
            sku: string(&v["sku"]),
            handle: string(&p["slug"]),
            title: string(&p["name"]),
            variant_title: v["attributes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x["option"].as_str())
                        .collect::<Vec<_>>()
                        .join(" / ")
                })
                .filter(|t| !t.is_empty() && variant_id.is_some()),
            product_type: p["categories"][0]["name"].as_str().map(str::to_string),
            tags: Some(
                p["tags"]
                    .as_array()
                    .map(|t| {
                        t.iter()
                            .filter_map(|x| x["name"].as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            price: money(currency, &v["price"]),
            compare_at_price: sale.and(money(currency, &v["regular_price"])),
            inventory: match (tracked, out_of_stock) {
                (true, _) => v["stock_quantity"].as_i64(),
                (false, true) => Some(0),
                (false, false) => None,
            },
            image_url: v["image"]["src"]
                .as_str()
                .or(p["images"][0]["src"].as_str())
                .map(str::to_string),
            requires_shipping: v["virtual"].as_bool().map(|virt| !virt),
            active: p["status"].as_str().map(|s| s == "publish"),
            ..patch(string(&p["id"]), variant_id)
        }
    };
    if variations.is_empty() {
        vec![one(p, None)]
    } else {
        variations
            .iter()
            .map(|v| one(v, string(&v["id"])))
            .collect()
    }
}

/// A BigCommerce product (V3 catalog with `include=variants,images`): one patch per
/// variant (a product without options has one, its base variant).
pub fn bigcommerce(p: &Value, currency: Currency) -> Vec<CatalogPatch> {
    let product_id = string(&p["id"]);
    let images = p["images"].as_array();
    let image = images
        .and_then(|i| i.iter().find(|x| x["is_thumbnail"] == true).or(i.first()))
        .and_then(|x| x["url_standard"].as_str())
        .map(str::to_string);
    let tracking = p["inventory_tracking"].as_str().unwrap_or("none");
    let handle = p["custom_url"]["url"]
        .as_str()
        .map(|u| u.trim_matches('/').to_string())
        .filter(|h| !h.is_empty());
    let empty = Vec::new();
    let variants = p["variants"].as_array().unwrap_or(&empty);
    let one = |v: &Value, variant_id: Option<String>| {
        let price = money(currency, &v["sale_price"])
            .filter(|n| *n > 0)
            .or(money(currency, &v["price"]))
            .or(money(currency, &p["sale_price"]).filter(|n| *n > 0))
            .or(money(currency, &p["price"]));
        CatalogPatch {
            sku: string(&v["sku"]).or(string(&p["sku"])),
            handle: handle.clone(),
            title: string(&p["name"]),
            variant_title: v["option_values"]
                .as_array()
                .map(|o| {
                    o.iter()
                        .filter_map(|x| x["label"].as_str())
                        .collect::<Vec<_>>()
                        .join(" / ")
                })
                .filter(|t| !t.is_empty()),
            price,
            compare_at_price: money(currency, &p["retail_price"]).filter(|n| *n > 0),
            inventory: match tracking {
                "variant" => v["inventory_level"].as_i64(),
                "product" => p["inventory_level"].as_i64(),
                _ => None,
            },
            image_url: v["image_url"]
                .as_str()
                .filter(|u| !u.is_empty())
                .map(str::to_string)
                .or(image.clone()),
            requires_shipping: p["type"].as_str().map(|t| t != "digital"),
            active: p["is_visible"].as_bool(),
            ..patch(product_id.clone(), variant_id)
        }
    };
    if variants.is_empty() {
        vec![one(p, None)]
    } else {
        variants.iter().map(|v| one(v, string(&v["id"]))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_shopify_product_becomes_one_patch_per_variant() {
        let p = json!({"id": 632910392, "title": "Pour-over Kit", "handle": "pour-over-kit",
        "product_type": "Brewing", "vendor": "Acme", "tags": "coffee, gift", "status": "active",
        "image": {"src": "https://cdn.shopify.com/kit.jpg"},
        "variants": [
            {"id": 1, "sku": "KIT", "title": "Default Title", "price": "54.00", "compare_at_price": null,
             "inventory_quantity": 0, "inventory_management": "shopify", "requires_shipping": true},
            {"id": 2, "sku": "KIT-XL", "title": "XL", "price": "64.00", "compare_at_price": "70.00",
             "inventory_quantity": 12, "inventory_management": null}
        ]});
        let v = shopify(&p, Currency::parse("USD").unwrap());
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].sku.as_deref(), Some("KIT"));
        assert_eq!((v[0].price, v[0].inventory), (Some(5400), Some(0)));
        assert_eq!(v[0].variant_title, None);
        assert_eq!(
            v[0].tags.as_deref(),
            Some(&["coffee".to_string(), "gift".to_string()][..])
        );
        assert_eq!(
            (v[0].product_id.as_deref(), v[0].variant_id.as_deref()),
            (Some("632910392"), Some("1"))
        );
        assert_eq!(v[0].active, Some(true));
        assert_eq!(
            (v[1].compare_at_price, v[1].inventory),
            (Some(7000), None),
            "untracked stock is unknown"
        );
        assert_eq!(v[1].variant_title.as_deref(), Some("XL"));
    }

    #[test]
    fn woocommerce_and_bigcommerce_products_read_their_own_shapes() {
        let eur = Currency::parse("EUR").unwrap();
        let p = json!({"id": 10, "name": "Mug", "slug": "mug", "status": "publish", "sku": "MUG",
            "price": "8.00", "regular_price": "10.00", "sale_price": "8.00", "manage_stock": true,
            "stock_quantity": 3, "categories": [{"name": "Kitchen"}], "tags": [{"name": "gift"}],
            "images": [{"src": "https://shop.example.com/mug.jpg"}]});
        let v = woocommerce(&p, &[], eur);
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].price, v[0].compare_at_price, v[0].inventory),
            (Some(800), Some(1000), Some(3))
        );
        assert_eq!(v[0].product_type.as_deref(), Some("Kitchen"));
        let gone = json!({"id": 11, "name": "Tee", "status": "draft", "manage_stock": false, "stock_status": "outofstock", "price": "5"});
        let v = woocommerce(&gone, &[], eur);
        assert_eq!((v[0].inventory, v[0].active), (Some(0), Some(false)));

        let usd = Currency::parse("USD").unwrap();
        let p = json!({"id": 77, "name": "Beans", "sku": "BEANS", "price": 16.5, "sale_price": 0,
            "retail_price": 0, "inventory_tracking": "variant", "is_visible": true, "type": "physical",
            "custom_url": {"url": "/beans/"},
            "variants": [{"id": 5, "sku": "BEANS-250", "price": null, "sale_price": null, "inventory_level": 0,
                          "option_values": [{"label": "250 g"}]}]});
        let v = bigcommerce(&p, usd);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].sku.as_deref(), Some("BEANS-250"));
        assert_eq!((v[0].price, v[0].inventory), (Some(1650), Some(0)));
        assert_eq!(v[0].handle.as_deref(), Some("beans"));
        assert_eq!(v[0].variant_title.as_deref(), Some("250 g"));
    }
}
