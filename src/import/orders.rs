//! Order history CSV import: a Shopify orders export or the native orders CSV, read one
//! order at a time (an order's rows are consecutive) into [`engine::Order`]s.
//!
//! Parses only: no storage, no clock, no I/O beyond the `Read` it is given. Memory stays
//! flat except for one small entry per order id seen (12 bytes of table per order, so a
//! million orders stay near 30 MB), which catches an order whose rows are split apart.
//!
//! [`engine::Order`]: crate::engine::Order

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Read;

use csv::StringRecord;

use crate::engine::{Consent, Currency, CustomerRef, LineItem, Order, Region};

use super::{
    parse_currency, parse_money, parse_positive, parse_time, Col, FileError, Next, Row, RowError,
    Rows,
};

/// Which kind of orders file the header says this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrdersFormat {
    /// Shopify's orders export: `Name` and `Lineitem quantity`.
    Shopify,
    /// The native orders CSV: `order_id`.
    Native,
}

/// One order read from the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedOrder {
    /// The line of the order's first row.
    pub line: u64,
    /// How many rows (line items) the order had in the file.
    pub rows: u32,
    pub order: Order,
}

/// The native orders columns: required first, then optional.
pub const NATIVE_REQUIRED: &[&str] = &[
    "order_id",
    "created_at",
    "customer_id",
    "email",
    "sku",
    "quantity",
    "unit_price",
];
pub const NATIVE_OPTIONAL: &[&str] = &["product_id", "variant_id", "title", "currency", "tags"];

/// The Shopify orders export columns read (plus one of `Lineitem sku` / `Lineitem name`).
pub const SHOPIFY_REQUIRED: &[&str] =
    &["Name", "Created at", "Lineitem quantity", "Lineitem price"];

const FORMATS: &str =
    "orders format: a Shopify orders export has \"Name\" and \"Lineitem quantity\", \
     a native orders CSV has \"order_id\"";

/// Streams an orders CSV, one order (or one error) per group of consecutive rows.
pub struct OrdersReader<R: Read> {
    rows: Rows<R>,
    store_currency: Currency,
    layout: Layout,
    /// The first row of the next order, read ahead while finishing the previous one.
    pending: Option<Next>,
    /// Hash of each order id seen -> the line it first appeared on.
    seen: HashMap<(u32, u32), u32>,
}

enum Layout {
    Shopify(Box<ShopifyCols>),
    Native(Box<NativeCols>),
}

struct ShopifyCols {
    name: Col,
    created_at: Col,
    quantity: Col,
    price: Col,
    sku: Option<Col>,
    title: Option<Col>,
    id: Option<Col>,
    email: Option<Col>,
    phone: Option<Col>,
    financial_status: Option<Col>,
    accepts_marketing: Option<Col>,
    currency: Option<Col>,
    subtotal: Option<Col>,
    total: Option<Col>,
    discount_code: Option<Col>,
    cancelled_at: Option<Col>,
    requires_shipping: Option<Col>,
    vendor: Option<Col>,
    tags: Option<Col>,
    shipping_country: Option<Col>,
    shipping_province: Option<Col>,
    shipping_zip: Option<Col>,
}

struct NativeCols {
    order_id: Col,
    created_at: Col,
    customer_id: Col,
    email: Col,
    sku: Col,
    quantity: Col,
    unit_price: Col,
    product_id: Option<Col>,
    variant_id: Option<Col>,
    title: Option<Col>,
    currency: Option<Col>,
    tags: Option<Col>,
}

impl Layout {
    /// The column that groups rows into orders.
    fn key_col(&self) -> &Col {
        match self {
            Layout::Shopify(c) => &c.name,
            Layout::Native(c) => &c.order_id,
        }
    }
}

impl<R: Read> OrdersReader<R> {
    /// Reads the header and detects the format. Orders without a currency column (or
    /// with an empty cell) are in `store_currency`.
    pub fn new(r: R, store_currency: Currency) -> Result<Self, FileError> {
        let rows = Rows::open(r)?;
        let h = &rows.header;
        let layout = if h.has("name") && h.has("lineitem quantity") {
            let sku = h.col("lineitem sku");
            let title = h.col("lineitem name");
            if sku.is_none() && title.is_none() {
                return Err(h.require("Lineitem sku").unwrap_err());
            }
            Layout::Shopify(Box::new(ShopifyCols {
                name: h.require("Name")?,
                created_at: h.require("Created at")?,
                quantity: h.require("Lineitem quantity")?,
                price: h.require("Lineitem price")?,
                sku,
                title,
                id: h.col("id"),
                email: h.col("email"),
                phone: h.col("phone"),
                financial_status: h.col("financial status"),
                accepts_marketing: h.col("accepts marketing"),
                currency: h.col("currency"),
                subtotal: h.col("subtotal"),
                total: h.col("total"),
                discount_code: h.col("discount code"),
                cancelled_at: h.col("cancelled at"),
                requires_shipping: h.col("lineitem requires shipping"),
                vendor: h.col("vendor"),
                tags: h.col("tags"),
                shipping_country: h.col("shipping country"),
                shipping_province: h.col("shipping province"),
                shipping_zip: h.col("shipping zip"),
            }))
        } else if h.has("order_id") {
            Layout::Native(Box::new(NativeCols {
                order_id: h.require("order_id")?,
                created_at: h.require("created_at")?,
                customer_id: h.require("customer_id")?,
                email: h.require("email")?,
                sku: h.require("sku")?,
                quantity: h.require("quantity")?,
                unit_price: h.require("unit_price")?,
                product_id: h.col("product_id"),
                variant_id: h.col("variant_id"),
                title: h.col("title"),
                currency: h.col("currency"),
                tags: h.col("tags"),
            }))
        } else {
            return Err(FileError::UnknownFormat {
                what: FORMATS,
                found: h.found(),
            });
        };
        Ok(OrdersReader {
            rows,
            store_currency,
            layout,
            pending: None,
            seen: HashMap::new(),
        })
    }

    pub fn format(&self) -> OrdersFormat {
        match self.layout {
            Layout::Shopify(_) => OrdersFormat::Shopify,
            Layout::Native(_) => OrdersFormat::Native,
        }
    }

    /// Bytes consumed so far, for a progress bar (includes one row read ahead).
    pub fn position(&self) -> u64 {
        self.rows.position()
    }

    fn next_record(&mut self) -> Option<Next> {
        self.pending.take().or_else(|| self.rows.next_record())
    }

    /// The grouping key of a record, read lossily so an unreadable row still groups.
    fn key_of(&self, next: &Next) -> Option<String> {
        let idx = self.layout.key_col().idx;
        match next {
            Next::Row(r) => Some(r.get(idx).unwrap_or("").trim().to_string()),
            Next::BadUtf8(b, _) => Some(
                b.get(idx)
                    .map(|f| String::from_utf8_lossy(f).trim().to_string())
                    .unwrap_or_default(),
            ),
            Next::Fatal(_) => None,
        }
    }

    /// Remembers `key` first seen at `line`; returns the earlier line if it was seen.
    fn first_seen(&mut self, key: &str, line: u64) -> Option<u64> {
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        let h = h.finish();
        let slot = ((h >> 32) as u32, h as u32);
        let line = u32::try_from(line).unwrap_or(u32::MAX);
        match self.seen.get(&slot) {
            Some(&first) => Some(u64::from(first)),
            None => {
                self.seen.insert(slot, line);
                None
            }
        }
    }
}

impl<R: Read> Iterator for OrdersReader<R> {
    type Item = Result<ImportedOrder, RowError>;

    fn next(&mut self) -> Option<Self::Item> {
        let first = self.next_record()?;
        let Some(key) = self.key_of(&first) else {
            if let Next::Fatal(e) = first {
                return Some(Err(e));
            }
            return None;
        };
        // Gather the order's rows: every consecutive record with the same key.
        let mut group = vec![first];
        while let Some(next) = self.rows.next_record() {
            if self.key_of(&next).as_deref() == Some(key.as_str()) {
                group.push(next);
            } else {
                self.pending = Some(next);
                break;
            }
        }
        let line = match &group[0] {
            Next::Row(r) => Row::new(r).line,
            Next::BadUtf8(_, e) => e.line,
            Next::Fatal(e) => e.line,
        };
        let key_col = self.layout.key_col().clone();
        if key.is_empty() {
            return Some(Err(RowError {
                line,
                column: key_col.name,
                value: String::new(),
                message: "is empty: every row needs its order's id".to_string(),
            }));
        }
        if let Some(first_line) = self.first_seen(&key, line) {
            return Some(Err(RowError {
                line,
                column: String::new(),
                value: key.clone(),
                message: format!(
                    "order {key} already appeared at line {first_line}: keep an order's rows together"
                ),
            }));
        }
        let mut records = Vec::with_capacity(group.len());
        for next in group {
            match next {
                Next::Row(r) => records.push(r),
                Next::BadUtf8(_, e) | Next::Fatal(e) => return Some(Err(e)),
            }
        }
        let built = match &self.layout {
            Layout::Shopify(c) => shopify_order(c, &records, self.store_currency),
            Layout::Native(c) => native_order(c, &records, &key, self.store_currency),
        };
        Some(built.map(|order| ImportedOrder {
            line,
            rows: u32::try_from(records.len()).unwrap_or(u32::MAX),
            order,
        }))
    }
}

fn currency_of(row: &Row, col: Option<&Col>, store: Currency) -> Result<Currency, RowError> {
    Ok(row.parse(col, parse_currency)?.unwrap_or(store))
}

fn required<'a>(row: &Row<'a>, col: &Col, what: &str) -> Result<&'a str, RowError> {
    row.get(Some(col))
        .ok_or_else(|| row.err(col, "", format!("is empty: {what}")))
}

fn quantity(row: &Row, col: &Col) -> Result<u32, RowError> {
    let s = required(row, col, "every line needs a quantity")?;
    parse_positive(s).map_err(|m| row.err(col, s, m))
}

fn unit_price(row: &Row, col: &Col, currency: Currency) -> Result<i64, RowError> {
    let s = required(row, col, "every line needs a unit price")?;
    parse_money(s, currency).map_err(|m| row.err(col, s, m))
}

fn sum_lines(row: &Row, lines: &[LineItem]) -> Result<i64, RowError> {
    lines
        .iter()
        .try_fold(0i64, |acc, l| {
            i64::from(l.quantity)
                .checked_mul(l.unit_price)
                .and_then(|x| acc.checked_add(x))
        })
        .ok_or_else(|| row.row_err("the order's total is too large"))
}

fn shopify_order(
    c: &ShopifyCols,
    records: &[StringRecord],
    store: Currency,
) -> Result<Order, RowError> {
    let first = Row::new(&records[0]);
    let name = required(&first, &c.name, "every row needs the order's Name")?.to_string();
    let id = first
        .text(c.id.as_ref())
        .unwrap_or_else(|| name.trim_start_matches('#').to_string());
    let created = required(
        &first,
        &c.created_at,
        "the order's first row needs its date",
    )?;
    let created_at =
        parse_time(created, false).map_err(|m| first.err(&c.created_at, created, m))?;
    let currency = currency_of(&first, c.currency.as_ref(), store)?;
    let cancelled_at = first.parse(c.cancelled_at.as_ref(), |s| parse_time(s, false))?;
    let email_consent = match first.boolean(c.accepts_marketing.as_ref())? {
        Some(true) => Consent::Subscribed,
        Some(false) => Consent::NotSubscribed,
        None => Consent::Unknown,
    };
    let email = first.text(c.email.as_ref());
    let mut lines = Vec::with_capacity(records.len());
    for (n, rec) in records.iter().enumerate() {
        let row = Row::new(rec);
        let sku = row.text(c.sku.as_ref());
        lines.push(LineItem {
            id: format!("{id}-{}", n + 1),
            product_id: None,
            variant_id: None,
            title: row
                .text(c.title.as_ref())
                .or_else(|| sku.clone())
                .unwrap_or_default(),
            sku,
            quantity: quantity(&row, &c.quantity)?,
            unit_price: unit_price(&row, &c.price, currency)?,
            variant_title: None,
            vendor: row.text(c.vendor.as_ref()),
            gift_card: false,
            requires_shipping: row.boolean(c.requires_shipping.as_ref())?.unwrap_or(true),
        });
    }
    let subtotal = match first.money(c.subtotal.as_ref(), currency)? {
        Some(s) => s,
        None => sum_lines(&first, &lines)?,
    };
    let total = first.money(c.total.as_ref(), currency)?.unwrap_or(subtotal);
    let shipping = Region {
        country: first.text(c.shipping_country.as_ref()),
        province: first.text(c.shipping_province.as_ref()),
        zip: first.text(c.shipping_zip.as_ref()),
    };
    Ok(Order {
        id,
        name,
        created_at,
        updated_at: created_at,
        currency,
        total,
        subtotal,
        financial_status: first.text(c.financial_status.as_ref()),
        cancelled_at,
        customer: email.as_ref().map(|e| CustomerRef {
            email: Some(e.clone()),
            email_consent,
            ..CustomerRef::default()
        }),
        email,
        phone: first.text(c.phone.as_ref()),
        lines,
        tags: first.list(c.tags.as_ref(), false).unwrap_or_default(),
        discount_codes: first
            .list(c.discount_code.as_ref(), false)
            .unwrap_or_default(),
        shipping: (shipping != Region::default()).then_some(shipping),
        billing: None,
        refunds: Vec::new(),
    })
}

fn native_order(
    c: &NativeCols,
    records: &[StringRecord],
    id: &str,
    store: Currency,
) -> Result<Order, RowError> {
    let first = Row::new(&records[0]);
    let created = required(
        &first,
        &c.created_at,
        "the order's first row needs its date",
    )?;
    let created_at = parse_time(created, true).map_err(|m| first.err(&c.created_at, created, m))?;
    let currency = currency_of(&first, c.currency.as_ref(), store)?;
    let email = first.text(Some(&c.email));
    let customer_id = first.text(Some(&c.customer_id));
    let mut lines = Vec::with_capacity(records.len());
    for (n, rec) in records.iter().enumerate() {
        let row = Row::new(rec);
        let sku = row.text(Some(&c.sku));
        let product_id = row.text(c.product_id.as_ref());
        if sku.is_none() && product_id.is_none() {
            return Err(row.err(
                &c.sku,
                "",
                "is empty and there is no product_id: a line needs one or the other",
            ));
        }
        lines.push(LineItem {
            id: format!("{id}-{}", n + 1),
            product_id,
            variant_id: row.text(c.variant_id.as_ref()),
            title: row
                .text(c.title.as_ref())
                .or_else(|| sku.clone())
                .unwrap_or_default(),
            sku,
            quantity: quantity(&row, &c.quantity)?,
            unit_price: unit_price(&row, &c.unit_price, currency)?,
            variant_title: None,
            vendor: None,
            gift_card: false,
            requires_shipping: true,
        });
    }
    let total = sum_lines(&first, &lines)?;
    Ok(Order {
        id: id.to_string(),
        name: format!("#{id}"),
        created_at,
        updated_at: created_at,
        currency,
        total,
        subtotal: total,
        financial_status: None,
        cancelled_at: None,
        customer: (email.is_some() || customer_id.is_some()).then(|| CustomerRef {
            platform_id: customer_id,
            email: email.clone(),
            ..CustomerRef::default()
        }),
        email,
        phone: None,
        lines,
        tags: first.list(c.tags.as_ref(), false).unwrap_or_default(),
        discount_codes: Vec::new(),
        shipping: None,
        billing: None,
        refunds: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Timestamp;

    const SHOPIFY: &str = "\
Name,Email,Financial Status,Paid at,Fulfillment Status,Accepts Marketing,Currency,Subtotal,Shipping,Taxes,Total,Discount Code,Discount Amount,Created at,Lineitem quantity,Lineitem name,Lineitem price,Lineitem sku,Lineitem requires shipping,Shipping Zip,Shipping Province,Shipping Country,Cancelled at,Vendor,Id,Tags,Phone
#1001,ana@example.com,paid,2024-03-05 14:25:00 -0500,fulfilled,yes,USD,73.00,5.00,0.00,70.70,SPRING10,7.30,2024-03-05 14:22:10 -0500,2,Classic Tee - S / Black,25.00,TEE-S-BLK,true,02139,MA,US,,Acme Apparel,5550001001,\"vip, repeat\",+16175550100
#1001,ana@example.com,,,,,,,,,,,,,1,Ceramic Mug,14.00,MUG-1,true,,,,,Acme Home,,,
#1001,ana@example.com,,,,,,,,,,,,,1,Brewing Guide (PDF),9.00,GUIDE-PDF,false,,,,,Acme Books,,,
#1002,bo@example.com,refunded,2024-03-06 09:00:00 -0500,,no,CAD,30.00,0.00,0.00,30.00,,0.00,2024-03-06 08:59:00 -0500,1,Brewing Guide,10.00,EBOOK-1,false,,,,2024-03-07 10:00:00 -0500,Acme Books,,,
#1002,bo@example.com,,,,,,,,,,,,2024-03-06 08:59:00 -0500,2,Gift wrap,10.00,,true,,,,,,,,
#1003,,paid,,,,USD,14.00,,,14.00,,,2024-03-07T10:00:00Z,1,Ceramic Mug,14.00,MUG-1,,,,,,Acme Home,5550001003,,
";

    fn cur(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    fn ts(rfc3339: &str) -> Timestamp {
        Timestamp(
            chrono::DateTime::parse_from_rfc3339(rfc3339)
                .unwrap()
                .timestamp_millis(),
        )
    }

    fn s(x: &str) -> Option<String> {
        Some(x.to_string())
    }

    fn strings(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|x| x.to_string()).collect()
    }

    fn line(id: &str, sku: Option<&str>, quantity: u32, unit_price: i64, title: &str) -> LineItem {
        LineItem {
            id: id.into(),
            product_id: None,
            variant_id: None,
            sku: sku.map(Into::into),
            quantity,
            unit_price,
            title: title.into(),
            variant_title: None,
            vendor: None,
            gift_card: false,
            requires_shipping: true,
        }
    }

    fn read(csv: &str) -> (OrdersFormat, Vec<Result<ImportedOrder, RowError>>) {
        let r = OrdersReader::new(csv.as_bytes(), cur("USD")).unwrap();
        (r.format(), r.collect())
    }

    #[test]
    fn shopify_export_groups_rows_into_orders() {
        let (format, got) = read(SHOPIFY);
        assert_eq!(format, OrdersFormat::Shopify);
        let first = Order {
            id: "5550001001".into(),
            name: "#1001".into(),
            created_at: ts("2024-03-05T19:22:10Z"),
            updated_at: ts("2024-03-05T19:22:10Z"),
            currency: cur("USD"),
            total: 7070,
            subtotal: 7300,
            financial_status: s("paid"),
            cancelled_at: None,
            email: s("ana@example.com"),
            phone: s("+16175550100"),
            customer: Some(CustomerRef {
                email: s("ana@example.com"),
                email_consent: Consent::Subscribed,
                ..CustomerRef::default()
            }),
            lines: vec![
                LineItem {
                    vendor: s("Acme Apparel"),
                    ..line(
                        "5550001001-1",
                        Some("TEE-S-BLK"),
                        2,
                        2500,
                        "Classic Tee - S / Black",
                    )
                },
                LineItem {
                    vendor: s("Acme Home"),
                    ..line("5550001001-2", Some("MUG-1"), 1, 1400, "Ceramic Mug")
                },
                LineItem {
                    vendor: s("Acme Books"),
                    requires_shipping: false,
                    ..line(
                        "5550001001-3",
                        Some("GUIDE-PDF"),
                        1,
                        900,
                        "Brewing Guide (PDF)",
                    )
                },
            ],
            tags: strings(&["vip", "repeat"]),
            discount_codes: strings(&["SPRING10"]),
            shipping: Some(Region {
                country: s("US"),
                province: s("MA"),
                zip: s("02139"),
            }),
            billing: None,
            refunds: Vec::new(),
        };
        // Cancelled, in CAD, without an Id: the id is the Name without '#'.
        let cancelled = Order {
            id: "1002".into(),
            name: "#1002".into(),
            created_at: ts("2024-03-06T13:59:00Z"),
            updated_at: ts("2024-03-06T13:59:00Z"),
            currency: cur("CAD"),
            total: 3000,
            subtotal: 3000,
            financial_status: s("refunded"),
            cancelled_at: Some(ts("2024-03-07T15:00:00Z")),
            email: s("bo@example.com"),
            phone: None,
            customer: Some(CustomerRef {
                email: s("bo@example.com"),
                email_consent: Consent::NotSubscribed,
                ..CustomerRef::default()
            }),
            lines: vec![
                LineItem {
                    vendor: s("Acme Books"),
                    requires_shipping: false,
                    ..line("1002-1", Some("EBOOK-1"), 1, 1000, "Brewing Guide")
                },
                line("1002-2", None, 2, 1000, "Gift wrap"),
            ],
            tags: Vec::new(),
            discount_codes: Vec::new(),
            shipping: None,
            billing: None,
            refunds: Vec::new(),
        };
        // A guest without an email: no customer.
        let guest = Order {
            id: "5550001003".into(),
            name: "#1003".into(),
            created_at: ts("2024-03-07T10:00:00Z"),
            updated_at: ts("2024-03-07T10:00:00Z"),
            currency: cur("USD"),
            total: 1400,
            subtotal: 1400,
            financial_status: s("paid"),
            cancelled_at: None,
            email: None,
            phone: None,
            customer: None,
            lines: vec![LineItem {
                vendor: s("Acme Home"),
                ..line("5550001003-1", Some("MUG-1"), 1, 1400, "Ceramic Mug")
            }],
            tags: Vec::new(),
            discount_codes: Vec::new(),
            shipping: None,
            billing: None,
            refunds: Vec::new(),
        };
        assert_eq!(
            got,
            vec![
                Ok(ImportedOrder {
                    line: 2,
                    rows: 3,
                    order: first
                }),
                Ok(ImportedOrder {
                    line: 5,
                    rows: 2,
                    order: cancelled
                }),
                Ok(ImportedOrder {
                    line: 7,
                    rows: 1,
                    order: guest
                }),
            ]
        );
    }

    const NATIVE: &str = "\
order_id,created_at,customer_id,email,sku,quantity,unit_price,product_id,variant_id,title,currency,tags
A-1,2024-03-05 14:22:10,C-9,ana@example.com,TEE-S-BLK,2,25.00,7001,7101,Classic Tee,,\"wholesale, vip\"
A-1,2024-03-05 14:22:10,C-9,ana@example.com,,1,14,7002,,,,
A-2,2024-03-06,,,MUG-1,3,1500,,,,JPY,
A-3,2024-03-07T08:00:00+01:00,C-10,,GUIDE,1,9.00,,,,,
";

    #[test]
    fn native_orders() {
        let (format, got) = read(NATIVE);
        assert_eq!(format, OrdersFormat::Native);
        let base = Order {
            id: String::new(),
            name: String::new(),
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
            currency: cur("USD"),
            total: 0,
            subtotal: 0,
            financial_status: None,
            cancelled_at: None,
            email: None,
            phone: None,
            customer: None,
            lines: Vec::new(),
            tags: Vec::new(),
            discount_codes: Vec::new(),
            shipping: None,
            billing: None,
            refunds: Vec::new(),
        };
        let expected = vec![
            ImportedOrder {
                line: 2,
                rows: 2,
                order: Order {
                    id: "A-1".into(),
                    name: "#A-1".into(),
                    created_at: ts("2024-03-05T14:22:10Z"),
                    updated_at: ts("2024-03-05T14:22:10Z"),
                    total: 6400,
                    subtotal: 6400,
                    email: s("ana@example.com"),
                    customer: Some(CustomerRef {
                        platform_id: s("C-9"),
                        email: s("ana@example.com"),
                        ..CustomerRef::default()
                    }),
                    lines: vec![
                        LineItem {
                            product_id: s("7001"),
                            variant_id: s("7101"),
                            ..line("A-1-1", Some("TEE-S-BLK"), 2, 2500, "Classic Tee")
                        },
                        LineItem {
                            product_id: s("7002"),
                            ..line("A-1-2", None, 1, 1400, "")
                        },
                    ],
                    tags: strings(&["wholesale", "vip"]),
                    ..base.clone()
                },
            },
            ImportedOrder {
                line: 4,
                rows: 1,
                order: Order {
                    id: "A-2".into(),
                    name: "#A-2".into(),
                    created_at: ts("2024-03-06T00:00:00Z"),
                    updated_at: ts("2024-03-06T00:00:00Z"),
                    currency: cur("JPY"),
                    total: 4500,
                    subtotal: 4500,
                    lines: vec![line("A-2-1", Some("MUG-1"), 3, 1500, "MUG-1")],
                    ..base.clone()
                },
            },
            ImportedOrder {
                line: 5,
                rows: 1,
                order: Order {
                    id: "A-3".into(),
                    name: "#A-3".into(),
                    created_at: ts("2024-03-07T07:00:00Z"),
                    updated_at: ts("2024-03-07T07:00:00Z"),
                    total: 900,
                    subtotal: 900,
                    customer: Some(CustomerRef {
                        platform_id: s("C-10"),
                        ..CustomerRef::default()
                    }),
                    lines: vec![line("A-3-1", Some("GUIDE"), 1, 900, "GUIDE")],
                    ..base
                },
            },
        ];
        assert_eq!(got, expected.into_iter().map(Ok).collect::<Vec<_>>());
    }

    fn ids(got: &[Result<ImportedOrder, RowError>]) -> Vec<Result<(u64, u32, String), RowError>> {
        got.iter()
            .map(|r| r.clone().map(|o| (o.line, o.rows, o.order.id)))
            .collect()
    }

    #[test]
    fn a_bad_row_fails_its_whole_order_and_reading_goes_on() {
        let csv = "order_id,created_at,customer_id,email,sku,quantity,unit_price,currency\n\
                   1,2024-03-05,,,A,1,1.00,\n\
                   1,2024-03-05,,,B,1,abc,\n\
                   1,2024-03-05,,,C,0,1.00,\n\
                   2,2024-03-05,,,A,0,1.00,\n\
                   3,2024-03-05,,,,1,1.00,\n\
                   4,05/03/2024,,,A,1,1.00,\n\
                   5,2024-03-05,,,A,1,1.00,US\n\
                   6,2024-03-05,,,A,1,1.001,\n\
                   ,2024-03-05,,,A,1,1.00,\n\
                   7,2024-03-05,,,A,1,1.00,\n";
        let (_, got) = read(csv);
        assert_eq!(
            ids(&got),
            vec![
                Err(RowError::new(3, "unit_price", "abc", "not a decimal number such as \"19.99\"")),
                Err(RowError::new(5, "quantity", "0", "not a positive whole number such as \"3\"")),
                Err(RowError::new(
                    6,
                    "sku",
                    "",
                    "is empty and there is no product_id: a line needs one or the other"
                )),
                Err(RowError::new(
                    7,
                    "created_at",
                    "05/03/2024",
                    "not a date such as \"2024-03-05T14:22:10Z\", \"2024-03-05 14:22:10\" (UTC) or \"2024-03-05\""
                )),
                Err(RowError::new(
                    8,
                    "currency",
                    "US",
                    "not a three-letter ISO 4217 currency code such as \"USD\""
                )),
                Err(RowError::new(9, "unit_price", "1.001", "has more decimals than USD allows (2)")),
                Err(RowError::new(10, "order_id", "", "is empty: every row needs its order's id")),
                Ok((11, 1, "7".into())),
            ]
        );
        assert_eq!(
            got[0].as_ref().unwrap_err().to_string(),
            "line 3, column unit_price: not a decimal number such as \"19.99\" (value \"abc\")"
        );
    }

    #[test]
    fn an_order_split_apart_is_an_error() {
        let csv = "Name,Created at,Lineitem quantity,Lineitem price,Lineitem name\n\
                   #1,2024-03-05 10:00:00 +0000,1,1.00,Mug\n\
                   #2,2024-03-05 10:00:00 +0000,1,1.00,Mug\n\
                   #1,2024-03-05 10:00:00 +0000,1,1.00,Tee\n\
                   #1,2024-03-05 10:00:00 +0000,1,1.00,Cap\n\
                   #3,2024-03-05 10:00:00 +0000,1,1.00,Mug\n";
        let (_, got) = read(csv);
        assert_eq!(
            ids(&got),
            vec![
                Ok((2, 1, "1".into())),
                Ok((3, 1, "2".into())),
                Err(RowError::new(
                    4,
                    "",
                    "#1",
                    "order #1 already appeared at line 2: keep an order's rows together"
                )),
                Ok((6, 1, "3".into())),
            ]
        );
        assert_eq!(
            got[2].as_ref().unwrap_err().to_string(),
            "line 4: order #1 already appeared at line 2: keep an order's rows together"
        );
    }

    #[test]
    fn bom_and_crlf() {
        let csv = "\u{feff}ORDER_ID,Created_At,customer_id,Email,sku,quantity,unit_price\r\n\
                   9,2024-03-05,,x@example.com,A,1,2.00\r\n\
                   \r\n\
                   9,2024-03-05,,x@example.com,B,2,3.00\r\n\
                   10,2024-03-06,,,A,1,2.00";
        let mut r = OrdersReader::new(csv.as_bytes(), cur("EUR")).unwrap();
        let got: Vec<_> = r
            .by_ref()
            .map(|o| o.map(|o| (o.line, o.rows, o.order.id, o.order.currency, o.order.total)))
            .collect();
        assert_eq!(
            got,
            vec![
                Ok((2, 2, "9".to_string(), cur("EUR"), 800)),
                Ok((5, 1, "10".to_string(), cur("EUR"), 200)),
            ]
        );
        assert_eq!(r.position(), csv.len() as u64);
    }

    #[test]
    fn missing_columns_and_unknown_formats_are_file_errors() {
        let err = |csv: &str| {
            OrdersReader::new(csv.as_bytes(), cur("USD"))
                .err()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            err("order_id,created_at,customer_id,email,sku,quantity\n1,2024-03-05,,,A,1\n"),
            "missing required column \"unit_price\" (the header has: order_id, created_at, \
             customer_id, email, sku, quantity); see README \"Import\" for the columns"
        );
        assert_eq!(
            err("Name,Created at,Lineitem quantity,Lineitem price\n"),
            "missing required column \"Lineitem sku\" (the header has: Name, Created at, \
             Lineitem quantity, Lineitem price); see README \"Import\" for the columns"
        );
        assert_eq!(
            err("Name,Lineitem quantity,Lineitem price,Lineitem sku\n"),
            "missing required column \"Created at\" (the header has: Name, Lineitem quantity, \
             Lineitem price, Lineitem sku); see README \"Import\" for the columns"
        );
        assert_eq!(
            err("id,date\n"),
            "the header matches no known orders format: a Shopify orders export has \"Name\" \
             and \"Lineitem quantity\", a native orders CSV has \"order_id\" (the header has: \
             id, date); see README \"Import\""
        );
        assert_eq!(err("\r\n\r\n"), "the file is empty: expected a header row");
    }

    #[test]
    fn seen_ids_stay_compact() {
        // 12 bytes per entry plus a control byte: a million orders need about 27 MB.
        assert_eq!(std::mem::size_of::<((u32, u32), u32)>(), 12);
    }
}
