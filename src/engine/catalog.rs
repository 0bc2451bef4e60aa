//! The catalog: what a store sells, one entry per sellable variant, and the product key
//! affinity is counted under. Pure: storage keeps these records, imports and webhooks
//! patch them.
//!
//! A variant is known by its SKU where it has one (Shopify's CSV exports carry no ids), and
//! by its platform ids once a webhook line item or an API sync has named them. The
//! *product key* folds variants into a product: the SKU of a single-variant product, else
//! the product handle (or the platform product id where a platform has no handle). It is
//! built from what a store's own exports already carry, so it does not change when ids are
//! learned later.

use serde::{Deserialize, Serialize};

use super::model::LineItem;

/// One sellable variant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    pub sku: Option<String>,
    pub product_id: Option<String>,
    pub variant_id: Option<String>,
    /// The product's URL handle (Shopify, WooCommerce slug); shared by its variants.
    pub handle: Option<String>,
    pub title: String,
    pub variant_title: Option<String>,
    /// The product type, used as its category.
    pub product_type: Option<String>,
    pub vendor: Option<String>,
    pub tags: Vec<String>,
    /// Minor units of the store's currency.
    pub price: Option<i64>,
    pub compare_at_price: Option<i64>,
    /// What one unit costs the store, for margin; optional.
    pub cost: Option<i64>,
    pub inventory: Option<i64>,
    pub image_url: Option<String>,
    pub gift_card: bool,
    /// `false` for digital goods.
    pub requires_shipping: bool,
    /// The store may offer it as an upsell (default yes; gift cards never).
    pub upsell_eligible: bool,
    /// Published (Shopify `Status` active); drafts and archived products are never offered.
    pub active: bool,
    /// A consumable runs out after this many days per unit.
    pub consumable_days: Option<u32>,
    /// The premium tier to offer instead (a SKU or product key).
    pub upgrade_to: Option<String>,
    pub bundles: Vec<String>,
    /// Average review rating in hundredths (0..=500).
    pub rating: Option<u16>,
}

impl Variant {
    pub fn new() -> Variant {
        Variant {
            requires_shipping: true,
            upsell_eligible: true,
            active: true,
            ..Variant::default()
        }
    }

    pub fn digital(&self) -> bool {
        !self.requires_shipping
    }

    /// The key this entry is stored under: its SKU, else its variant id, else its handle
    /// and position.
    pub fn catalog_key(&self) -> Option<String> {
        if let Some(s) = self.sku.as_deref().filter(|s| !s.trim().is_empty()) {
            return Some(format!("sku:{s}"));
        }
        if let Some(v) = &self.variant_id {
            return Some(format!("variant:{v}"));
        }
        None
    }

    /// Where the product can be seen, from the store's domain: by handle, which is known
    /// before any id.
    pub fn product_url(&self, domain: &str) -> Option<String> {
        self.handle
            .as_ref()
            .map(|h| format!("https://{domain}/products/{h}"))
    }
}

/// The product key for an entry of a product with `variants` variants in the catalog.
pub fn product_key(v: &Variant, variants: usize) -> Option<String> {
    let sku = v.sku.as_deref().filter(|s| !s.trim().is_empty());
    match (sku, variants <= 1) {
        (Some(s), true) => Some(s.to_string()),
        _ => v
            .handle
            .clone()
            .or_else(|| v.product_id.as_ref().map(|p| format!("product:{p}"))),
    }
    .or_else(|| sku.map(str::to_string))
}

/// The product key of a line item the catalog does not know: its SKU, else its platform
/// product id, else nothing (a custom line item, not a product).
pub fn uncatalogued_key(line: &LineItem) -> Option<String> {
    line.sku
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
        .or_else(|| line.product_id.as_ref().map(|p| format!("product:{p}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(sku: Option<&str>, handle: Option<&str>, product_id: Option<&str>) -> Variant {
        Variant {
            sku: sku.map(Into::into),
            handle: handle.map(Into::into),
            product_id: product_id.map(Into::into),
            ..Variant::new()
        }
    }

    #[test]
    fn product_keys_fold_variants_and_survive_learned_ids() {
        let mug = v(Some("MUG-1"), Some("mug"), None);
        assert_eq!(product_key(&mug, 1).as_deref(), Some("MUG-1"));
        assert_eq!(product_key(&mug, 3).as_deref(), Some("mug"));
        let learned = Variant {
            product_id: Some("77".into()),
            variant_id: Some("78".into()),
            ..mug.clone()
        };
        assert_eq!(product_key(&learned, 1), product_key(&mug, 1));
        assert_eq!(product_key(&learned, 3), product_key(&mug, 3));
        // A platform without handles folds by product id.
        let tee = v(Some("TEE-S"), None, Some("9"));
        assert_eq!(product_key(&tee, 2).as_deref(), Some("product:9"));
        // Nothing but a SKU: the SKU.
        assert_eq!(
            product_key(&v(Some("X"), None, None), 2).as_deref(),
            Some("X")
        );
        assert_eq!(
            v(None, Some("mug"), None)
                .product_url("shop.example")
                .as_deref(),
            Some("https://shop.example/products/mug")
        );
    }
}
