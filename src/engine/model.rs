//! The normalized commerce model every platform adapter produces and every decision reads.
//!
//! Platform-neutral: ids are the platform's own, as strings; money is integer minor units
//! in the order's currency; times are UTC milliseconds. Personal data (email, phone) is
//! carried here as the platforms send it; storage keeps it only in customer records and
//! raw payloads.

use serde::{Deserialize, Serialize};

use super::money::Currency;

/// A UTC instant in milliseconds since the Unix epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn to_rfc3339(self) -> String {
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            None => format!("@{}ms", self.0),
        }
    }
}

/// Which platform a store runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Platform {
    Shopify,
    WooCommerce,
    BigCommerce,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Shopify => "shopify",
            Platform::WooCommerce => "woocommerce",
            Platform::BigCommerce => "bigcommerce",
        }
    }

    /// The platform's name as its users write it, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Platform::Shopify => "Shopify",
            Platform::WooCommerce => "WooCommerce",
            Platform::BigCommerce => "BigCommerce",
        }
    }
}

/// What a customer said about marketing on one channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Consent {
    /// The platform did not say.
    #[default]
    Unknown,
    Subscribed,
    /// Never asked or never agreed.
    NotSubscribed,
    /// Explicitly withdrew: never message on this channel.
    Unsubscribed,
}

/// The customer as one order names them. `None` on the order for a guest checkout.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CustomerRef {
    pub platform_id: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub tags: Vec<String>,
    pub email_consent: Consent,
    pub sms_consent: Consent,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    pub id: String,
    /// `None` for custom line items that are not catalog products.
    pub product_id: Option<String>,
    pub variant_id: Option<String>,
    pub sku: Option<String>,
    pub quantity: u32,
    /// Price of one unit, in minor units of the order's currency.
    pub unit_price: i64,
    pub title: String,
    pub variant_title: Option<String>,
    pub vendor: Option<String>,
    pub gift_card: bool,
    pub requires_shipping: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Region {
    pub country: Option<String>,
    pub province: Option<String>,
    pub zip: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    /// The human name ("#1001").
    pub name: String,
    pub created_at: Timestamp,
    /// When this version of the order was made; later versions replace earlier ones.
    pub updated_at: Timestamp,
    pub currency: Currency,
    pub total: i64,
    pub subtotal: i64,
    pub financial_status: Option<String>,
    pub cancelled_at: Option<Timestamp>,
    /// Order-level contact, which a guest checkout has even without a customer.
    pub email: Option<String>,
    pub phone: Option<String>,
    pub customer: Option<CustomerRef>,
    pub lines: Vec<LineItem>,
    pub tags: Vec<String>,
    pub discount_codes: Vec<String>,
    pub shipping: Option<Region>,
    pub billing: Option<Region>,
    /// Refunds the order payload itself lists, as (refund id, amount in minor units):
    /// WooCommerce sends refunds only this way, inside `order.updated`.
    pub refunds: Vec<(String, i64)>,
}

impl Order {
    /// The email to know this customer by: the customer's, else the order's.
    pub fn contact_email(&self) -> Option<&str> {
        self.customer
            .as_ref()
            .and_then(|c| c.email.as_deref())
            .or(self.email.as_deref())
            .filter(|e| !e.trim().is_empty())
    }
}

#[cfg(test)]
impl Order {
    /// For tests: a paid order in USD, placed and last updated at `at`, with no lines.
    pub(crate) fn sample(id: &str, at: Timestamp, total: i64) -> Order {
        Order {
            id: id.into(),
            name: format!("#{id}"),
            created_at: at,
            updated_at: at,
            currency: Currency::parse("USD").expect("a valid code"),
            total,
            subtotal: total,
            financial_status: Some("paid".into()),
            cancelled_at: None,
            email: None,
            phone: None,
            customer: None,
            lines: vec![],
            tags: vec![],
            discount_codes: vec![],
            shipping: None,
            billing: None,
            refunds: vec![],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderTopic {
    Created,
    Paid,
    Updated,
    Cancelled,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    pub order_id: String,
    pub created_at: Timestamp,
    pub currency: Option<Currency>,
    /// Money returned, in minor units.
    pub amount: i64,
    /// (line item id, quantity) pairs refunded.
    pub lines: Vec<(String, u32)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fulfillment {
    pub id: String,
    pub order_id: String,
    pub status: String,
    pub shipment_status: Option<String>,
    pub at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryStatus {
    Shipped,
    InTransit,
    Delayed,
    Delivered,
    Failed,
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryEvent {
    pub order_id: String,
    pub fulfillment_id: Option<String>,
    pub status: DeliveryStatus,
    pub at: Timestamp,
    pub estimated_at: Option<Timestamp>,
}

/// A platform said an order changed but sent no content (BigCommerce's thin payloads):
/// the order must be fetched through the platform's API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderNotice {
    pub order_id: String,
    /// The platform's name for what happened (`store/order/created`).
    pub scope: String,
    pub at: Timestamp,
}

/// One normalized fact from a platform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Order {
        topic: OrderTopic,
        order: Box<Order>,
    },
    Refund(Refund),
    Fulfillment(Fulfillment),
    Delivery(DeliveryEvent),
    Notice(OrderNotice),
    /// Appended: the variants before it keep their stored numbers.
    Catalog(CatalogNotice),
}

/// A platform said a product or its stock changed (Shopify's `products/update`,
/// `inventory_levels/update`): the catalog entry is refreshed through its API, which says
/// how it is now (deliveries come out of order; the API does not).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CatalogNotice {
    Product(String),
    InventoryItem(String),
}

impl Event {
    /// The order the event is about (`""` for a catalog notice, which is about none).
    pub fn order_id(&self) -> &str {
        match self {
            Event::Catalog(_) => "",
            Event::Order { order, .. } => &order.id,
            Event::Refund(r) => &r.order_id,
            Event::Fulfillment(f) => &f.order_id,
            Event::Delivery(d) => &d.order_id,
            Event::Notice(n) => &n.order_id,
        }
    }
}

/// Who a privacy request is about: any of these names them.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Person {
    pub platform_id: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
}

/// A platform's privacy request (Shopify's mandatory topics).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrivacyRequest {
    /// `customers/data_request`: export everything held about the customer.
    Export {
        person: Person,
        /// Orders the platform names as theirs.
        orders: Vec<String>,
        /// The platform's id of the request.
        request: Option<String>,
    },
    /// `customers/redact`: erase the customer's personal data.
    Erase { person: Person, orders: Vec<String> },
    /// `shop/redact`: remove everything held about the store.
    EraseStore,
}

/// How an event reached us: orders that arrive by import update history but never plan
/// or send touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    Webhook,
    Import,
    /// Found by reconciliation: the platform's API lists it, its webhooks never came.
    /// (Appended: the variants before it keep their stored numbers.)
    Reconciled,
    /// Fetched through the platform's API because a webhook said it changed (BigCommerce's
    /// thin payloads).
    Fetched,
}

impl Source {
    /// Whether the platform itself told us about the order now, so it is planned and
    /// learnt from (an import is history).
    pub fn live(self) -> bool {
        self != Source::Import
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Webhook => "webhook",
            Source::Import => "import",
            Source::Reconciled => "reconciled",
            Source::Fetched => "fetched",
        }
    }
}
