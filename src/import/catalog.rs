//! Catalog CSV import: a Shopify product export or the native catalog CSV, read one row
//! at a time into [`CatalogPatch`]es that say only what the row says.
//!
//! Parses only: it never stores, never merges patches into a catalog (that is the
//! caller's job, through [`CatalogPatch::apply`]) and reads nothing but the `Read` it is
//! given. Memory stays flat however long the file: the only state kept between rows is
//! the current Shopify product's fields.

use std::io::Read;

use crate::engine::catalog::Variant;
use crate::engine::Currency;

use super::{parse_int, parse_positive, Col, FileError, Next, Row, RowError, Rows};

/// Which kind of catalog file the header says this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatalogFormat {
    /// Shopify's product export: `Handle` plus `Variant SKU` or `Variant Price`.
    Shopify,
    /// The native catalog CSV: `sku` plus optional extra fields.
    Native,
}

/// What one row says about one variant. `None` means "this row does not say" (an empty
/// cell or an absent column): applying the patch leaves that field alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CatalogPatch {
    /// The line the row starts on.
    pub line: u64,
    pub sku: Option<String>,
    pub handle: Option<String>,
    pub title: Option<String>,
    pub variant_title: Option<String>,
    pub product_type: Option<String>,
    pub vendor: Option<String>,
    pub tags: Option<Vec<String>>,
    pub price: Option<i64>,
    pub compare_at_price: Option<i64>,
    pub cost: Option<i64>,
    pub inventory: Option<i64>,
    pub image_url: Option<String>,
    pub gift_card: Option<bool>,
    pub requires_shipping: Option<bool>,
    pub upsell_eligible: Option<bool>,
    pub active: Option<bool>,
    pub consumable_days: Option<u32>,
    pub upgrade_to: Option<String>,
    pub bundles: Option<Vec<String>>,
    /// Hundredths of a star, 0..=500.
    pub rating: Option<u16>,
    pub product_id: Option<String>,
    pub variant_id: Option<String>,
}

impl CatalogPatch {
    /// Sets exactly the fields this row says; everything else on `v` is left alone.
    pub fn apply(&self, v: &mut Variant) {
        fn set<T: Clone>(field: &mut T, value: &Option<T>) {
            if let Some(x) = value {
                *field = x.clone();
            }
        }
        fn set_opt<T: Clone>(field: &mut Option<T>, value: &Option<T>) {
            if value.is_some() {
                field.clone_from(value);
            }
        }
        set_opt(&mut v.sku, &self.sku);
        set_opt(&mut v.handle, &self.handle);
        set(&mut v.title, &self.title);
        set_opt(&mut v.variant_title, &self.variant_title);
        set_opt(&mut v.product_type, &self.product_type);
        set_opt(&mut v.vendor, &self.vendor);
        set(&mut v.tags, &self.tags);
        set_opt(&mut v.price, &self.price);
        set_opt(&mut v.compare_at_price, &self.compare_at_price);
        set_opt(&mut v.cost, &self.cost);
        set_opt(&mut v.inventory, &self.inventory);
        set_opt(&mut v.image_url, &self.image_url);
        set(&mut v.gift_card, &self.gift_card);
        set(&mut v.requires_shipping, &self.requires_shipping);
        set(&mut v.upsell_eligible, &self.upsell_eligible);
        set(&mut v.active, &self.active);
        set_opt(&mut v.consumable_days, &self.consumable_days);
        set_opt(&mut v.upgrade_to, &self.upgrade_to);
        set(&mut v.bundles, &self.bundles);
        set_opt(&mut v.rating, &self.rating);
        set_opt(&mut v.product_id, &self.product_id);
        set_opt(&mut v.variant_id, &self.variant_id);
    }
}

/// The native catalog columns, in documented order. Only `sku` is required.
pub const NATIVE_COLUMNS: &[&str] = &[
    "sku",
    "handle",
    "title",
    "variant_title",
    "product_type",
    "vendor",
    "tags",
    "price",
    "compare_at_price",
    "cost",
    "inventory",
    "image_url",
    "requires_shipping",
    "gift_card",
    "upsell_eligible",
    "active",
    "consumable_days",
    "upgrade_to",
    "bundles",
    "rating",
    "product_id",
    "variant_id",
];

const FORMATS: &str =
    "catalog format: a Shopify product export has \"Handle\" and \"Variant SKU\" \
     (or \"Variant Price\"), a native catalog CSV has \"sku\"";

/// Streams a catalog CSV, one patch (or one error) per variant row.
pub struct CatalogReader<R: Read> {
    rows: Rows<R>,
    currency: Currency,
    layout: Layout,
    ignored: Vec<String>,
    /// Shopify: the product whose rows are being read.
    product: Option<Product>,
}

enum Layout {
    Shopify(Box<ShopifyCols>),
    Native(Box<NativeCols>),
}

struct ShopifyCols {
    handle: Col,
    title: Option<Col>,
    vendor: Option<Col>,
    product_type: Option<Col>,
    category: Option<Col>,
    tags: Option<Col>,
    published: Option<Col>,
    status: Option<Col>,
    gift_card: Option<Col>,
    image_src: Option<Col>,
    sku: Option<Col>,
    price: Option<Col>,
    compare_at_price: Option<Col>,
    inventory: Option<Col>,
    requires_shipping: Option<Col>,
    cost: Option<Col>,
    options: [Option<Col>; 3],
    variant_image: Option<Col>,
}

struct NativeCols {
    sku: Col,
    handle: Option<Col>,
    title: Option<Col>,
    variant_title: Option<Col>,
    product_type: Option<Col>,
    vendor: Option<Col>,
    tags: Option<Col>,
    price: Option<Col>,
    compare_at_price: Option<Col>,
    cost: Option<Col>,
    inventory: Option<Col>,
    image_url: Option<Col>,
    requires_shipping: Option<Col>,
    gift_card: Option<Col>,
    upsell_eligible: Option<Col>,
    active: Option<Col>,
    consumable_days: Option<Col>,
    upgrade_to: Option<Col>,
    bundles: Option<Col>,
    rating: Option<Col>,
    product_id: Option<Col>,
    variant_id: Option<Col>,
}

/// A Shopify product: its handle, the line of its first row and the product fields that
/// row carried (or why they could not be read), which its later rows inherit.
struct Product {
    handle: String,
    line: u64,
    fields: Result<ProductFields, RowError>,
}

#[derive(Clone, Default)]
struct ProductFields {
    title: Option<String>,
    vendor: Option<String>,
    product_type: Option<String>,
    tags: Option<Vec<String>>,
    active: Option<bool>,
    gift_card: Option<bool>,
    image_src: Option<String>,
}

impl<R: Read> CatalogReader<R> {
    /// Reads the header and detects the format. Prices are read in `currency`.
    pub fn new(r: R, currency: Currency) -> Result<Self, FileError> {
        let rows = Rows::open(r)?;
        let h = &rows.header;
        let (layout, ignored) =
            if h.has("handle") && (h.has("variant sku") || h.has("variant price")) {
                let cols = ShopifyCols {
                    handle: h.require("Handle")?,
                    title: h.col("title"),
                    vendor: h.col("vendor"),
                    product_type: h.col("type"),
                    category: h.col("product category"),
                    tags: h.col("tags"),
                    published: h.col("published"),
                    status: h.col("status"),
                    gift_card: h.col("gift card"),
                    image_src: h.col("image src"),
                    sku: h.col("variant sku"),
                    price: h.col("variant price"),
                    compare_at_price: h.col("variant compare at price"),
                    inventory: h.col("variant inventory qty"),
                    requires_shipping: h.col("variant requires shipping"),
                    cost: h.col("cost per item"),
                    options: [
                        h.col("option1 value"),
                        h.col("option2 value"),
                        h.col("option3 value"),
                    ],
                    variant_image: h.col("variant image"),
                };
                (Layout::Shopify(Box::new(cols)), Vec::new())
            } else if h.has("sku") {
                let cols = NativeCols {
                    sku: h.require("sku")?,
                    handle: h.col("handle"),
                    title: h.col("title"),
                    variant_title: h.col("variant_title"),
                    product_type: h.col("product_type"),
                    vendor: h.col("vendor"),
                    tags: h.col("tags"),
                    price: h.col("price"),
                    compare_at_price: h.col("compare_at_price"),
                    cost: h.col("cost"),
                    inventory: h.col("inventory"),
                    image_url: h.col("image_url"),
                    requires_shipping: h.col("requires_shipping"),
                    gift_card: h.col("gift_card"),
                    upsell_eligible: h.col("upsell_eligible"),
                    active: h.col("active"),
                    consumable_days: h.col("consumable_days"),
                    upgrade_to: h.col("upgrade_to"),
                    bundles: h.col("bundles"),
                    rating: h.col("rating"),
                    product_id: h.col("product_id"),
                    variant_id: h.col("variant_id"),
                };
                (Layout::Native(Box::new(cols)), h.unknown(NATIVE_COLUMNS))
            } else {
                return Err(FileError::UnknownFormat {
                    what: FORMATS,
                    found: h.found(),
                });
            };
        Ok(CatalogReader {
            rows,
            currency,
            layout,
            ignored,
            product: None,
        })
    }

    pub fn format(&self) -> CatalogFormat {
        match self.layout {
            Layout::Shopify(_) => CatalogFormat::Shopify,
            Layout::Native(_) => CatalogFormat::Native,
        }
    }

    /// Native format: header columns this reader does not use (empty for Shopify, whose
    /// exports carry many columns that are expected and not needed).
    pub fn ignored_columns(&self) -> &[String] {
        &self.ignored
    }

    /// Bytes consumed so far, for a progress bar.
    pub fn position(&self) -> u64 {
        self.rows.position()
    }
}

impl<R: Read> Iterator for CatalogReader<R> {
    type Item = Result<CatalogPatch, RowError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let rec = match self.rows.next_record()? {
                Next::Row(rec) => rec,
                Next::Fatal(e) => return Some(Err(e)),
                Next::BadUtf8(bytes, e) => {
                    // A product's unreadable first row poisons its later rows too.
                    if let Layout::Shopify(c) = &self.layout {
                        let handle = bytes
                            .get(c.handle.idx)
                            .map(|h| String::from_utf8_lossy(h).trim().to_string())
                            .unwrap_or_default();
                        if !handle.is_empty()
                            && self.product.as_ref().is_none_or(|p| p.handle != handle)
                        {
                            self.product = Some(Product {
                                handle,
                                line: e.line,
                                fields: Err(e.clone()),
                            });
                        }
                    }
                    return Some(Err(e));
                }
            };
            let row = Row::new(&rec);
            let out = match &self.layout {
                Layout::Shopify(c) => shopify_row(c, &row, self.currency, &mut self.product),
                Layout::Native(c) => native_row(c, &row, self.currency).map(Some),
            };
            match out {
                Ok(None) => continue,
                Ok(Some(p)) => return Some(Ok(p)),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// One Shopify row: `Ok(None)` for an image-only row.
fn shopify_row(
    c: &ShopifyCols,
    row: &Row,
    currency: Currency,
    product: &mut Option<Product>,
) -> Result<Option<CatalogPatch>, RowError> {
    let handle = row.text(Some(&c.handle));
    let fields = match &handle {
        Some(h) => {
            if product.as_ref().is_none_or(|p| &p.handle != h) {
                let fields = product_fields(c, row);
                *product = Some(Product {
                    handle: h.clone(),
                    line: row.line,
                    fields: fields.clone(),
                });
                fields?
            } else {
                match product.as_ref().map(|p| (p.line, &p.fields)) {
                    Some((_, Ok(f))) => f.clone(),
                    Some((line, Err(_))) => {
                        return Err(row.row_err(format!(
                            "the first row of product {h:?} (line {line}) has an error; \
                             fix that row and import again"
                        )))
                    }
                    None => ProductFields::default(),
                }
            }
        }
        None => product_fields(c, row)?,
    };
    let sku = row.text(c.sku.as_ref());
    let image_only = sku.is_none()
        && row.get(c.price.as_ref()).is_none()
        && row.get(c.options[0].as_ref()).is_none();
    if image_only {
        return Ok(None);
    }
    if sku.is_none() && handle.is_none() {
        return Err(row.row_err(
            "the row has neither a SKU (\"Variant SKU\") nor a handle (\"Handle\") to import it under",
        ));
    }
    let options: Vec<&str> = c
        .options
        .iter()
        .filter_map(|o| row.get(o.as_ref()))
        .collect();
    let variant_title = Some(options.join(" / ")).filter(|t| !t.is_empty() && t != "Default Title");
    let gift = fields.gift_card == Some(true);
    Ok(Some(CatalogPatch {
        line: row.line,
        sku,
        handle,
        title: fields.title,
        variant_title,
        product_type: fields.product_type,
        vendor: fields.vendor,
        tags: fields.tags,
        price: row.money(c.price.as_ref(), currency)?,
        compare_at_price: row.money(c.compare_at_price.as_ref(), currency)?,
        cost: row.money(c.cost.as_ref(), currency)?,
        inventory: row.parse(c.inventory.as_ref(), parse_int)?,
        image_url: row.text(c.variant_image.as_ref()).or(fields.image_src),
        gift_card: fields.gift_card,
        requires_shipping: row.boolean(c.requires_shipping.as_ref())?,
        upsell_eligible: gift.then_some(false),
        active: fields.active,
        ..CatalogPatch::default()
    }))
}

/// The product fields a Shopify product's first row carries.
fn product_fields(c: &ShopifyCols, row: &Row) -> Result<ProductFields, RowError> {
    let active = match row.get(c.status.as_ref()) {
        Some(s) => Some(s.eq_ignore_ascii_case("active")),
        None => row.boolean(c.published.as_ref())?,
    };
    // New exports put a taxonomy path in "Product Category": its last step is the type.
    let category = row
        .get(c.category.as_ref())
        .and_then(|s| s.rsplit('>').next())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    Ok(ProductFields {
        title: row.text(c.title.as_ref()),
        vendor: row.text(c.vendor.as_ref()),
        product_type: row.text(c.product_type.as_ref()).or(category),
        tags: row.list(c.tags.as_ref(), false),
        active,
        gift_card: row.boolean(c.gift_card.as_ref())?,
        image_src: row.text(c.image_src.as_ref()),
    })
}

fn native_row(c: &NativeCols, row: &Row, currency: Currency) -> Result<CatalogPatch, RowError> {
    let Some(sku) = row.text(Some(&c.sku)) else {
        return Err(row.err(
            &c.sku,
            "",
            "is empty: every row of a native catalog needs a SKU",
        ));
    };
    let gift_card = row.boolean(c.gift_card.as_ref())?;
    let upsell_eligible = match gift_card {
        Some(true) => Some(false),
        _ => row.boolean(c.upsell_eligible.as_ref())?,
    };
    Ok(CatalogPatch {
        line: row.line,
        sku: Some(sku),
        handle: row.text(c.handle.as_ref()),
        title: row.text(c.title.as_ref()),
        variant_title: row.text(c.variant_title.as_ref()),
        product_type: row.text(c.product_type.as_ref()),
        vendor: row.text(c.vendor.as_ref()),
        tags: row.list(c.tags.as_ref(), true),
        price: row.money(c.price.as_ref(), currency)?,
        compare_at_price: row.money(c.compare_at_price.as_ref(), currency)?,
        cost: row.money(c.cost.as_ref(), currency)?,
        inventory: row.parse(c.inventory.as_ref(), parse_int)?,
        image_url: row.text(c.image_url.as_ref()),
        gift_card,
        requires_shipping: row.boolean(c.requires_shipping.as_ref())?,
        upsell_eligible,
        active: row.boolean(c.active.as_ref())?,
        consumable_days: row.parse(c.consumable_days.as_ref(), parse_positive)?,
        upgrade_to: row.text(c.upgrade_to.as_ref()),
        bundles: row.list(c.bundles.as_ref(), true),
        rating: row.parse(c.rating.as_ref(), parse_rating)?,
        product_id: row.text(c.product_id.as_ref()),
        variant_id: row.text(c.variant_id.as_ref()),
    })
}

/// "4.6" -> 460: a decimal from 0 to 5 with at most two decimals, in hundredths.
fn parse_rating(s: &str) -> Result<u16, String> {
    let bad = || "not a rating from 0 to 5 such as \"4.6\"".to_string();
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let frac = frac.trim_end_matches('0');
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty())
        || !digits(int)
        || !digits(frac)
        || frac.len() > 2
        || int.len() > 1
    {
        return Err(bad());
    }
    let int: u16 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let mut hundredths = 0u16;
    for (i, b) in frac.bytes().enumerate() {
        hundredths += u16::from(b - b'0') * if i == 0 { 10 } else { 1 };
    }
    let v = int * 100 + hundredths;
    if v > 500 {
        return Err(bad());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOPIFY: &str = "\
Handle,Title,Body (HTML),Vendor,Product Category,Type,Tags,Published,Option1 Name,Option1 Value,Option2 Name,Option2 Value,Option3 Name,Option3 Value,Variant SKU,Variant Grams,Variant Inventory Qty,Variant Price,Variant Compare At Price,Variant Requires Shipping,Variant Taxable,Image Src,Image Position,Gift Card,Variant Image,Cost per item,Status
classic-tee,Classic Tee,\"<p>Soft cotton tee,
made to last.</p>\",Acme Apparel,Apparel & Accessories > Clothing > Shirts & Tops,Shirts,\"cotton, summer, Bestseller\",true,Size,S,Color,Black,,,TEE-S-BLK,200,12,25.00,30.00,true,true,https://cdn.example/tee-front.jpg,1,false,https://cdn.example/tee-black.jpg,9.50,active
classic-tee,,,,,,,,,M,,Black,,,TEE-M-BLK,200,-2,25.00,,true,true,https://cdn.example/tee-back.jpg,2,,,9.50,
classic-tee,,,,,,,,,L,,Black,,,TEE-L-BLK,200,0,27.00,,true,true,,,,https://cdn.example/tee-black-l.jpg,10.00,
classic-tee,,,,,,,,,,,,,,,,,,,,,https://cdn.example/tee-side.jpg,3,,,,
ceramic-mug,Ceramic Mug,<p>Holds 350 ml.</p>,Acme Home,,Mugs,\"kitchen,gift\",true,Title,Default Title,,,,,MUG-1,400,40,14.00,,true,true,https://cdn.example/mug.jpg,1,false,,4.20,active
gift-card,Gift Card,<p>Give the gift of choice.</p>,Acme,,Gift Cards,,true,Denominations,$25,,,,,GC-25,0,,25.00,,false,false,https://cdn.example/gc.jpg,1,true,,,active
gift-card,,,,,,,,,$50,,,,,GC-50,0,,50.00,,false,false,,,,,,
winter-scarf,Winter Scarf,,Acme Apparel,Apparel & Accessories > Clothing Accessories > Scarves & Shawls,,,false,Title,Default Title,,,,,,150,5,19.99,,true,true,,,false,,,draft
";

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    fn read(csv: &str) -> (CatalogFormat, Vec<Result<CatalogPatch, RowError>>) {
        let r = CatalogReader::new(csv.as_bytes(), usd()).unwrap();
        let format = r.format();
        (format, r.collect())
    }

    fn s(x: &str) -> Option<String> {
        Some(x.to_string())
    }

    fn list(xs: &[&str]) -> Option<Vec<String>> {
        Some(xs.iter().map(|x| x.to_string()).collect())
    }

    #[test]
    fn shopify_export_yields_one_patch_per_variant() {
        let (format, got) = read(SHOPIFY);
        assert_eq!(format, CatalogFormat::Shopify);
        let tee = CatalogPatch {
            line: 2,
            sku: s("TEE-S-BLK"),
            handle: s("classic-tee"),
            title: s("Classic Tee"),
            variant_title: s("S / Black"),
            product_type: s("Shirts"),
            vendor: s("Acme Apparel"),
            tags: list(&["cotton", "summer", "Bestseller"]),
            price: Some(2500),
            compare_at_price: Some(3000),
            cost: Some(950),
            inventory: Some(12),
            image_url: s("https://cdn.example/tee-black.jpg"),
            gift_card: Some(false),
            requires_shipping: Some(true),
            active: Some(true),
            ..CatalogPatch::default()
        };
        let gift = CatalogPatch {
            line: 8,
            sku: s("GC-25"),
            handle: s("gift-card"),
            title: s("Gift Card"),
            variant_title: s("$25"),
            product_type: s("Gift Cards"),
            vendor: s("Acme"),
            price: Some(2500),
            image_url: s("https://cdn.example/gc.jpg"),
            gift_card: Some(true),
            requires_shipping: Some(false),
            upsell_eligible: Some(false),
            active: Some(true),
            ..CatalogPatch::default()
        };
        let expected = vec![
            tee.clone(),
            // The quoted body spans lines 2-3, so the second variant starts on line 4. It
            // inherits the product fields and, having no variant image, the product image.
            CatalogPatch {
                line: 4,
                sku: s("TEE-M-BLK"),
                variant_title: s("M / Black"),
                compare_at_price: None,
                inventory: Some(-2),
                image_url: s("https://cdn.example/tee-front.jpg"),
                ..tee.clone()
            },
            // Line 6 is an image-only row: skipped.
            CatalogPatch {
                line: 5,
                sku: s("TEE-L-BLK"),
                variant_title: s("L / Black"),
                price: Some(2700),
                compare_at_price: None,
                cost: Some(1000),
                inventory: Some(0),
                image_url: s("https://cdn.example/tee-black-l.jpg"),
                ..tee
            },
            CatalogPatch {
                line: 7,
                sku: s("MUG-1"),
                handle: s("ceramic-mug"),
                title: s("Ceramic Mug"),
                variant_title: None,
                product_type: s("Mugs"),
                vendor: s("Acme Home"),
                tags: list(&["kitchen", "gift"]),
                price: Some(1400),
                cost: Some(420),
                inventory: Some(40),
                image_url: s("https://cdn.example/mug.jpg"),
                gift_card: Some(false),
                requires_shipping: Some(true),
                active: Some(true),
                ..CatalogPatch::default()
            },
            gift.clone(),
            CatalogPatch {
                line: 9,
                sku: s("GC-50"),
                variant_title: s("$50"),
                price: Some(5000),
                ..gift
            },
            // A draft with no SKU: keyed by handle, typed by its category's last step.
            CatalogPatch {
                line: 10,
                sku: None,
                handle: s("winter-scarf"),
                title: s("Winter Scarf"),
                product_type: s("Scarves & Shawls"),
                vendor: s("Acme Apparel"),
                price: Some(1999),
                inventory: Some(5),
                gift_card: Some(false),
                requires_shipping: Some(true),
                active: Some(false),
                ..CatalogPatch::default()
            },
        ];
        assert_eq!(got, expected.into_iter().map(Ok).collect::<Vec<_>>());
    }

    #[test]
    fn shopify_without_status_uses_published() {
        let csv = "Handle,Title,Published,Variant SKU,Variant Price\n\
                   a,A,FALSE,A-1,1\n\
                   b,B,yes,B-1,2\n";
        let got: Vec<_> = read(csv).1.into_iter().map(|p| p.unwrap().active).collect();
        assert_eq!(got, vec![Some(false), Some(true)]);
    }

    #[test]
    fn shopify_bad_first_row_fails_its_product() {
        let csv = "Handle,Title,Gift Card,Variant SKU,Variant Price,Option1 Value\n\
                   card,Card,maybe,C-1,10.00,Small\n\
                   card,,,C-2,20.00,Large\n\
                   mug,Mug,false,M-1,1.999,\n\
                   ,,,,3.00,\n";
        let (_, got) = read(csv);
        assert_eq!(
            got,
            vec![
                Err(RowError::new(
                    2,
                    "Gift Card",
                    "maybe",
                    "not true or false (yes/no and 1/0 also work)"
                )),
                Err(RowError::new(
                    3,
                    "",
                    "",
                    "the first row of product \"card\" (line 2) has an error; fix that row and import again"
                )),
                Err(RowError::new(
                    4,
                    "Variant Price",
                    "1.999",
                    "has more decimals than USD allows (2)"
                )),
                Err(RowError::new(
                    5,
                    "",
                    "",
                    "the row has neither a SKU (\"Variant SKU\") nor a handle (\"Handle\") to import it under"
                )),
            ]
        );
        assert_eq!(
            got[2].as_ref().unwrap_err().to_string(),
            "line 4, column Variant Price: has more decimals than USD allows (2) (value \"1.999\")"
        );
    }

    const NATIVE: &str = "\
sku,handle,title,product_type,vendor,tags,price,compare_at_price,cost,inventory,image_url,requires_shipping,gift_card,upsell_eligible,active,consumable_days,upgrade_to,bundles,rating,product_id,variant_id,Notes
COFFEE-250,house-blend,House Blend 250g,Coffee,Acme Roasters,coffee; beans,12.50,14.00,5.10,85,https://cdn.example/coffee.jpg,yes,no,yes,1,30,COFFEE-1KG,FILTERS;MUG-1,4.6,7001,7101,our favourite
EBOOK-1,,Brewing Guide,Books,,,9,,,,,false,,0,,,,,.5,,,
GC-10,,,,,,,,,,,,TRUE,true,,,,,,,,
";

    #[test]
    fn native_catalog_reads_every_field() {
        let r = CatalogReader::new(NATIVE.as_bytes(), usd()).unwrap();
        assert_eq!(r.format(), CatalogFormat::Native);
        assert_eq!(r.ignored_columns(), ["Notes".to_string()]);
        let got: Vec<_> = r.collect();
        let expected = vec![
            CatalogPatch {
                line: 2,
                sku: s("COFFEE-250"),
                handle: s("house-blend"),
                title: s("House Blend 250g"),
                product_type: s("Coffee"),
                vendor: s("Acme Roasters"),
                tags: list(&["coffee", "beans"]),
                price: Some(1250),
                compare_at_price: Some(1400),
                cost: Some(510),
                inventory: Some(85),
                image_url: s("https://cdn.example/coffee.jpg"),
                requires_shipping: Some(true),
                gift_card: Some(false),
                upsell_eligible: Some(true),
                active: Some(true),
                consumable_days: Some(30),
                upgrade_to: s("COFFEE-1KG"),
                bundles: list(&["FILTERS", "MUG-1"]),
                rating: Some(460),
                product_id: s("7001"),
                variant_id: s("7101"),
                ..CatalogPatch::default()
            },
            CatalogPatch {
                line: 3,
                sku: s("EBOOK-1"),
                title: s("Brewing Guide"),
                product_type: s("Books"),
                price: Some(900),
                requires_shipping: Some(false),
                upsell_eligible: Some(false),
                rating: Some(50),
                ..CatalogPatch::default()
            },
            // A gift card is never an upsell, whatever the row says.
            CatalogPatch {
                line: 4,
                sku: s("GC-10"),
                gift_card: Some(true),
                upsell_eligible: Some(false),
                ..CatalogPatch::default()
            },
        ];
        assert_eq!(got, expected.into_iter().map(Ok).collect::<Vec<_>>());
    }

    #[test]
    fn native_bad_values_name_line_column_and_value() {
        let csv = "sku,price,consumable_days,rating,inventory,active\n\
                   A,abc,,,,\n\
                   B,,0,,,\n\
                   C,,,5.5,,\n\
                   D,,,,1.5,\n\
                   E,,,,,maybe\n\
                   ,1.00,,,,\n\
                   ,,,,,\n\
                   F,,,,,\n";
        let (_, got) = read(csv);
        let expected = vec![
            Err(RowError::new(
                2,
                "price",
                "abc",
                "not a decimal number such as \"19.99\"",
            )),
            Err(RowError::new(
                3,
                "consumable_days",
                "0",
                "not a positive whole number such as \"3\"",
            )),
            Err(RowError::new(
                4,
                "rating",
                "5.5",
                "not a rating from 0 to 5 such as \"4.6\"",
            )),
            Err(RowError::new(
                5,
                "inventory",
                "1.5",
                "not a whole number such as \"12\"",
            )),
            Err(RowError::new(
                6,
                "active",
                "maybe",
                "not true or false (yes/no and 1/0 also work)",
            )),
            Err(RowError::new(
                7,
                "sku",
                "",
                "is empty: every row of a native catalog needs a SKU",
            )),
            // Line 8 has only empty cells: skipped.
            Ok(CatalogPatch {
                line: 9,
                sku: s("F"),
                ..CatalogPatch::default()
            }),
        ];
        assert_eq!(got, expected);
        assert_eq!(
            got[0].as_ref().unwrap_err().to_string(),
            "line 2, column price: not a decimal number such as \"19.99\" (value \"abc\")"
        );
    }

    #[test]
    fn bom_crlf_and_header_case_are_handled() {
        let csv = "\u{feff}SKU , Price,TITLE\r\nA-1, 2.00 ,Alpha\r\n\r\nB-1,3,\"Beta\r\nline two\"\r\nC-1,4,Gamma\r\n";
        let mut r = CatalogReader::new(csv.as_bytes(), usd()).unwrap();
        assert_eq!(r.format(), CatalogFormat::Native);
        assert!(r.ignored_columns().is_empty());
        let got: Vec<_> = r
            .by_ref()
            .map(|p| p.map(|p| (p.line, p.sku, p.price, p.title)))
            .collect();
        assert_eq!(
            got,
            vec![
                Ok((2, s("A-1"), Some(200), s("Alpha"))),
                Ok((4, s("B-1"), Some(300), s("Beta\r\nline two"))),
                Ok((6, s("C-1"), Some(400), s("Gamma"))),
            ]
        );
        assert_eq!(r.position(), csv.len() as u64);
    }

    #[test]
    fn unreadable_files_are_file_errors() {
        let err = |csv: &str| {
            CatalogReader::new(csv.as_bytes(), usd())
                .err()
                .unwrap()
                .to_string()
        };
        assert_eq!(err(""), "the file is empty: expected a header row");
        assert_eq!(
            err("Product,Price\nMug,3\n"),
            "the header matches no known catalog format: a Shopify product export has \"Handle\" \
             and \"Variant SKU\" (or \"Variant Price\"), a native catalog CSV has \"sku\" \
             (the header has: Product, Price); see README \"Import\""
        );
        let bad = CatalogReader::new(&b"sku,ti\xfftle\nA,B\n"[..], usd())
            .err()
            .unwrap();
        assert_eq!(
            bad.to_string(),
            "line 1: the header is not valid UTF-8; save the file as CSV UTF-8"
        );
    }

    #[test]
    fn non_utf8_row_is_a_row_error() {
        let (_, got) = read_bytes(b"sku,title\nA,Caf\xe9\nB,Tea\n");
        assert_eq!(
            got,
            vec![
                Err(RowError::new(
                    2,
                    "title",
                    "Caf\u{fffd}",
                    "not valid UTF-8; save the file as CSV UTF-8"
                )),
                Ok(CatalogPatch {
                    line: 3,
                    sku: s("B"),
                    title: s("Tea"),
                    ..CatalogPatch::default()
                }),
            ]
        );
    }

    fn read_bytes(csv: &[u8]) -> (CatalogFormat, Vec<Result<CatalogPatch, RowError>>) {
        let r = CatalogReader::new(csv, usd()).unwrap();
        (r.format(), r.collect())
    }

    #[test]
    fn apply_sets_only_what_the_row_says() {
        let mut v = Variant {
            sku: s("MUG-1"),
            title: "Old".into(),
            vendor: s("Acme"),
            price: Some(100),
            tags: vec!["x".into()],
            ..Variant::new()
        };
        CatalogPatch {
            line: 2,
            sku: s("MUG-1"),
            handle: s("mug"),
            title: s("Mug"),
            price: Some(1400),
            active: Some(false),
            rating: Some(470),
            ..CatalogPatch::default()
        }
        .apply(&mut v);
        assert_eq!(
            v,
            Variant {
                sku: s("MUG-1"),
                handle: s("mug"),
                title: "Mug".into(),
                vendor: s("Acme"),
                price: Some(1400),
                tags: vec!["x".into()],
                active: false,
                rating: Some(470),
                ..Variant::new()
            }
        );
    }

    #[test]
    fn ratings_are_hundredths() {
        let got: Vec<_> = [
            "4.6", "5", "0", "4.65", "5.00", "3.", "4.655", "5.01", "-1", "10", ".",
        ]
        .iter()
        .map(|s| parse_rating(s).ok())
        .collect();
        assert_eq!(
            got,
            vec![
                Some(460),
                Some(500),
                Some(0),
                Some(465),
                Some(500),
                Some(300),
                None,
                None,
                None,
                None,
                None
            ]
        );
    }
}
