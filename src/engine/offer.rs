//! The thank-you page offer as the customer sees it: who may see it (an order token we
//! issue, or a Shopify checkout's session token), what its card says (nothing personal),
//! whether it is still open, and where taking it leads (the store's checkout: a new,
//! separate order).

use base64::Engine as _;
use hmac::Mac as _;
use serde::Serialize;

use super::catalog::Variant;
use super::lifecycle::{PlanRecord, Status};
use super::plan::{Channel, Offer, TouchKind};
use super::{constant_time_eq, percent_encode, Platform, Timestamp};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const DAY_MS: i64 = 86_400_000;
/// Clocks differ: a session token is taken this many seconds either side of its times.
const LEEWAY_SECS: i64 = 10;

/// The key order tokens are signed with: 64 hex characters derived from the store's link
/// key, so the WooCommerce snippet can hold it without holding the key of the links in
/// messages (unsubscribe links among them).
pub fn order_token_key(link_key: &[u8]) -> String {
    let mut m = HmacSha256::new_from_slice(link_key).expect("any key length");
    m.update(b"upsell-appliance offer tokens v1");
    super::hex(&m.finalize().into_bytes())
}

/// The token that opens the offer of `order` in `store`:
/// `base64url(HMAC-SHA256(key, "offer:{store}:{order}")[..16])`, the key being the 64
/// hex characters of [`order_token_key`] as text (what the PHP snippet computes).
pub fn order_token(key: &str, store: &str, order: &str) -> String {
    let mut m = HmacSha256::new_from_slice(key.as_bytes()).expect("any key length");
    m.update(format!("offer:{store}:{order}").as_bytes());
    B64.encode(&m.finalize().into_bytes()[..16])
}

pub fn order_token_valid(key: &str, store: &str, order: &str, token: &str) -> bool {
    constant_time_eq(order_token(key, store, order).as_bytes(), token.as_bytes())
}

/// A token for the same offer that works only until `until` (Unix seconds), given to a
/// Shopify checkout in its `accept_url`: a session token proves a checkout of the shop,
/// not of this order, so what it gets must not outlive the thank-you page.
pub fn order_token_until(key: &str, store: &str, order: &str, until: i64) -> String {
    let mut m = HmacSha256::new_from_slice(key.as_bytes()).expect("any key length");
    m.update(format!("offer:{store}:{order}:{until}").as_bytes());
    B64.encode(&m.finalize().into_bytes()[..16])
}

/// Whether `token` (with `until`, when the link carries one) opens the offer of `order`
/// at `now`.
pub fn token_opens(
    key: &str,
    store: &str,
    order: &str,
    token: &str,
    until: Option<i64>,
    now: Timestamp,
) -> bool {
    match until {
        None => order_token_valid(key, store, order, token),
        Some(u) => {
            now.0.div_euclid(1000) <= u
                && constant_time_eq(
                    order_token_until(key, store, order, u).as_bytes(),
                    token.as_bytes(),
                )
        }
    }
}

/// A session token opens only the offers of orders placed this recently: the thank-you
/// page is shown at checkout, and the token does not say which order is the buyer's.
pub const SESSION_ORDER_WINDOW_MS: i64 = 60 * 60 * 1000;
/// How long the accept and decline links a session-token caller gets keep working.
pub const SESSION_LINK_SECS: i64 = 60 * 60;

/// What a verified Shopify session token says about the checkout that asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkout {
    /// The signed-in buyer's numeric customer id (`sub`), when Shopify gives it.
    pub customer: Option<String>,
}

/// Verifies a session token of the store's Shopify app (a Checkout UI extension's): HS256
/// under one of `secrets` (the client secret; two during a rotation), `aud` the app's
/// client id, `dest` the shop, inside `exp`/`nbf`. The error says why, for the log only.
pub fn verify_session_token(
    jwt: &str,
    secrets: &[String],
    client_id: &str,
    shop_domain: &str,
    now: Timestamp,
) -> Result<Checkout, String> {
    let mut parts = jwt.trim().split('.');
    let (Some(head), Some(body), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT (three dot-separated parts)".into());
    };
    let header: serde_json::Value = decode_part(head)?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err(format!("algorithm {} is not HS256", header["alg"]));
    }
    let sig = B64
        .decode(sig.trim_end_matches('='))
        .map_err(|_| "the signature is not base64url")?;
    let signed = &jwt.trim()[..head.len() + 1 + body.len()];
    let genuine = secrets.iter().any(|s| {
        let mut m = HmacSha256::new_from_slice(s.as_bytes()).expect("any key length");
        m.update(signed.as_bytes());
        constant_time_eq(&m.finalize().into_bytes(), &sig)
    });
    if !genuine {
        return Err("the signature does not match the app's client secret".into());
    }
    let claims: serde_json::Value = decode_part(body)?;
    let secs = now.0.div_euclid(1000);
    let time = |name: &str| claims.get(name).and_then(serde_json::Value::as_i64);
    match time("exp") {
        Some(exp) if exp + LEEWAY_SECS >= secs => {}
        Some(_) => return Err("expired".into()),
        None => return Err("no exp claim".into()),
    }
    if time("nbf").is_some_and(|nbf| nbf - LEEWAY_SECS > secs) {
        return Err("not valid yet (nbf)".into());
    }
    let aud_ok = match &claims["aud"] {
        serde_json::Value::String(a) => a == client_id,
        serde_json::Value::Array(list) => list.iter().any(|a| a.as_str() == Some(client_id)),
        _ => false,
    };
    if !aud_ok {
        return Err(format!(
            "aud {} is not this store's shopify_client_id",
            claims["aud"]
        ));
    }
    let dest = claims["dest"].as_str().unwrap_or("");
    if !host_of(dest).eq_ignore_ascii_case(host_of(shop_domain)) {
        return Err(format!("dest {dest:?} is another shop than {shop_domain}"));
    }
    let customer = claims["sub"]
        .as_str()
        .map(|s| s.rsplit('/').next().unwrap_or(s).to_string())
        .filter(|s| !s.is_empty());
    Ok(Checkout { customer })
}

fn decode_part(part: &str) -> Result<serde_json::Value, String> {
    let bytes = B64
        .decode(part.trim_end_matches('='))
        .map_err(|_| "a part is not base64url".to_string())?;
    serde_json::from_slice(&bytes).map_err(|_| "a part is not JSON".to_string())
}

/// `https://shop.myshopify.com/` → `shop.myshopify.com`.
fn host_of(s: &str) -> &str {
    let s = s.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    s.split('/').next().unwrap_or(s)
}

/// The offer card: what the thank-you page, the widget and the hosted page show. Prices
/// are decimal strings in `currency`. Nothing about the customer or the order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Card {
    pub title: String,
    pub image_url: Option<String>,
    pub price: String,
    pub compare_at_price: Option<String>,
    pub currency: String,
    pub discount_code: Option<String>,
    pub saving: Option<String>,
}

/// The card of `offer`. `percent_off` is what the store says its discount code takes off
/// (`discount_codes` in config), so the card can show the price after it; without it the
/// saving is the catalog's compare-at price over the price, if any.
pub fn card(offer: &Offer, variant: Option<&Variant>, percent_off: Option<u32>) -> Card {
    let list = offer.price;
    // The catalog's compare-at price, in the offer's currency (the offer's price may have
    // been converted from the catalog's).
    let compare = variant.and_then(|v| match (v.compare_at_price, v.price) {
        (Some(c), Some(p)) if p > 0 && c > p => Some((c as i128 * list as i128 / p as i128) as i64),
        _ => None,
    });
    let off = percent_off
        .filter(|p| (1..100).contains(p) && offer.discount_code.is_some())
        .unwrap_or(0);
    let price = list - (list as i128 * off as i128 / 100) as i64;
    let was = compare.unwrap_or(list).max(list);
    let fmt = |m: i64| offer.currency.format_minor(m);
    Card {
        title: offer.title.clone(),
        image_url: variant.and_then(|v| v.image_url.clone()),
        price: fmt(price),
        compare_at_price: (was > price).then(|| fmt(was)),
        currency: offer.currency.as_str().to_string(),
        discount_code: offer.discount_code.clone(),
        saving: (was > price).then(|| fmt(was - price)),
    }
}

/// Whether an order's offer can still be taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Open {
    /// Yes, until then.
    Until(Timestamp),
    /// It was, and is no more: the reason, in words for the customer.
    Ended(&'static str),
    /// There is none to show: held out, or no offer was made.
    None,
}

/// Whether the offer of `rec` is open at `now`: for `valid_days` after the order, while
/// the sequence runs, the order is not refunded and the product is in stock (at or above
/// `stock_threshold` where the catalog counts it).
pub fn open(
    rec: &PlanRecord,
    variant: Option<&Variant>,
    valid_days: i64,
    stock_threshold: i64,
    now: Timestamp,
) -> Open {
    if rec.plan.holdout || rec.plan.offer.is_none() {
        return Open::None;
    }
    let until = Timestamp(rec.order_at.0 + valid_days * DAY_MS);
    match &rec.status {
        Status::Cancelled { .. } => return Open::Ended("the order was cancelled"),
        Status::Ended { .. } => return Open::Ended("a newer order replaced it"),
        Status::Active => {}
    }
    if rec.refunded_at.is_some() {
        return Open::Ended("the order was refunded");
    }
    if now > until {
        return Open::Ended("it has expired");
    }
    if variant
        .and_then(|v| v.inventory)
        .is_some_and(|n| n < stock_threshold)
    {
        return Open::Ended("it is out of stock");
    }
    Open::Until(until)
}

/// Where taking the offer leads: the store's checkout with the product (and the discount
/// code) in a new cart, which is a second order. Shopify: the cart permalink
/// `/cart/{variant}:1?discount=CODE`; WooCommerce: `{checkout_path}?add-to-cart=ID` with
/// `apply_coupon=CODE`, which the README's snippet applies (core WooCommerce takes no
/// coupon in a URL); BigCommerce: `/cart.php?action=buy`. Without the ids a cart needs,
/// the product page.
pub fn checkout_url(
    platform: Platform,
    domain: &str,
    checkout_path: &str,
    offer: &Offer,
    variant: Option<&Variant>,
) -> String {
    let base = format!("https://{}", domain.trim_end_matches('/'));
    let id = |s: Option<&String>| s.filter(|s| !s.is_empty() && *s != "0").cloned();
    let variant_id =
        id(offer.variant_id.as_ref()).or(id(variant.and_then(|v| v.variant_id.as_ref())));
    let product_id = id(variant.and_then(|v| v.product_id.as_ref()));
    let code = offer.discount_code.as_deref().map(percent_encode);
    let cart = match platform {
        Platform::Shopify => variant_id.map(|v| {
            let mut u = format!("{base}/cart/{}:1", percent_encode(&v));
            if let Some(c) = &code {
                u += &format!("?discount={c}");
            }
            u
        }),
        Platform::WooCommerce => variant_id.or(product_id).map(|id| {
            let path = format!("/{}", checkout_path.trim_matches('/'));
            let path = if path == "/" {
                path
            } else {
                format!("{path}/")
            };
            let mut u = format!(
                "{base}{path}?add-to-cart={}&quantity=1",
                percent_encode(&id)
            );
            if let Some(c) = &code {
                u += &format!("&apply_coupon={c}");
            }
            u
        }),
        Platform::BigCommerce => product_id.map(|p| {
            format!(
                "{base}/cart.php?action=buy&product_id={}",
                percent_encode(&p)
            )
        }),
    };
    cart.unwrap_or_else(|| product_page(platform, domain, offer, variant))
}

/// The offered product's page, tagged as coming from the thank-you page offer.
pub fn product_page(
    platform: Platform,
    domain: &str,
    offer: &Offer,
    variant: Option<&Variant>,
) -> String {
    super::links::product_url(
        platform,
        domain,
        variant.and_then(|v| v.handle.as_deref()),
        offer
            .variant_id
            .as_deref()
            .or(variant.and_then(|v| v.variant_id.as_deref())),
        Channel::Page,
        None,
        TouchKind::Page,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Currency;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const NOW: i64 = 1_790_000_000_000;

    fn offer() -> Offer {
        Offer {
            product: "SCALE".into(),
            sku: Some("SCALE".into()),
            variant_id: Some("4101".into()),
            title: "Coffee scale".into(),
            price: 2400,
            currency: Currency::parse("USD").unwrap(),
            discount_code: Some("THANKS 10".into()),
            trust: false,
            urgency: false,
        }
    }

    fn variant() -> Variant {
        Variant {
            product_id: Some("77".into()),
            variant_id: Some("4101".into()),
            handle: Some("coffee-scale".into()),
            title: "Coffee scale".into(),
            price: Some(2400),
            compare_at_price: Some(3000),
            image_url: Some("https://cdn.example.com/scale.jpg".into()),
            ..Variant::default()
        }
    }

    fn jwt(secret: &str, claims: serde_json::Value, alg: &str) -> String {
        let head = B64.encode(serde_json::json!({"alg": alg, "typ": "JWT"}).to_string());
        let body = B64.encode(claims.to_string());
        let mut m = HmacSha256::new_from_slice(secret.as_bytes()).unwrap();
        m.update(format!("{head}.{body}").as_bytes());
        format!("{head}.{body}.{}", B64.encode(m.finalize().into_bytes()))
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({
            "dest": "https://coffee.myshopify.com", "aud": "client-123",
            "exp": NOW / 1000 + 300, "nbf": NOW / 1000 - 5, "iat": NOW / 1000 - 5,
            "jti": "abc", "sub": "gid://shopify/Customer/991"
        })
    }

    #[test]
    fn order_tokens_open_one_order_of_one_store() {
        let t = order_token(KEY, "main", "5001");
        assert_eq!(t.len(), 22);
        assert!(order_token_valid(KEY, "main", "5001", &t));
        assert!(!order_token_valid(KEY, "main", "5002", &t));
        assert!(!order_token_valid(KEY, "other", "5001", &t));
        assert!(!order_token_valid(
            &KEY.replace('0', "1"),
            "main",
            "5001",
            &t
        ));
        let mut tampered = t.clone().into_bytes();
        tampered[0] ^= 1;
        assert!(!order_token_valid(
            KEY,
            "main",
            "5001",
            &String::from_utf8(tampered).unwrap()
        ));
        assert!(!order_token_valid(KEY, "main", "5001", ""));
        // A token until a time: only until then, only with that time.
        let until = NOW / 1000 + 3600;
        let u = order_token_until(KEY, "main", "5001", until);
        assert!(token_opens(
            KEY,
            "main",
            "5001",
            &u,
            Some(until),
            Timestamp(NOW)
        ));
        assert!(!token_opens(
            KEY,
            "main",
            "5001",
            &u,
            Some(until + 1),
            Timestamp(NOW)
        ));
        assert!(!token_opens(KEY, "main", "5001", &u, None, Timestamp(NOW)));
        assert!(!token_opens(
            KEY,
            "main",
            "5001",
            &u,
            Some(until),
            Timestamp((until + 1) * 1000)
        ));
        assert!(token_opens(KEY, "main", "5001", &t, None, Timestamp(NOW)));
        // Pinned: what Python's hmac module computes for the same inputs, as the README's
        // PHP snippet does (hash_hmac, first 16 bytes, base64url without padding).
        assert_eq!(t, "A32mVc2DbfAyPt7WZ9f5gw");
        // The key is derived, 64 hex characters, and differs per link key.
        let k = order_token_key(b"link key");
        assert_eq!(k.len(), 64);
        assert_ne!(k, order_token_key(b"another link key"));
    }

    #[test]
    fn session_tokens_are_checked_for_signature_audience_shop_and_time() {
        let secrets = vec!["old-secret".to_string(), "shpss_secret".to_string()];
        let ok = |t: &str| {
            verify_session_token(
                t,
                &secrets,
                "client-123",
                "coffee.myshopify.com",
                Timestamp(NOW),
            )
        };
        let good = jwt("shpss_secret", claims(), "HS256");
        assert_eq!(
            ok(&good),
            Ok(Checkout {
                customer: Some("991".into())
            })
        );
        // The old secret during a rotation.
        assert!(ok(&jwt("old-secret", claims(), "HS256")).is_ok());
        // dest without a scheme is the same shop.
        let mut c = claims();
        c["dest"] = "coffee.myshopify.com".into();
        assert!(ok(&jwt("shpss_secret", c, "HS256")).is_ok());

        let refused = |t: String, why: &str| {
            let e = ok(&t).unwrap_err();
            assert!(e.contains(why), "{e} (wanted {why})");
        };
        refused(jwt("wrong", claims(), "HS256"), "signature");
        let mut c = claims();
        c["exp"] = (NOW / 1000 - 11).into();
        refused(jwt("shpss_secret", c, "HS256"), "expired");
        let mut c = claims();
        c["nbf"] = (NOW / 1000 + 60).into();
        refused(jwt("shpss_secret", c, "HS256"), "nbf");
        let mut c = claims();
        c["dest"] = "https://other.myshopify.com".into();
        refused(jwt("shpss_secret", c, "HS256"), "another shop");
        let mut c = claims();
        c["aud"] = "another-app".into();
        refused(jwt("shpss_secret", c, "HS256"), "aud");
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        refused(jwt("shpss_secret", c, "HS256"), "no exp");
        refused(jwt("shpss_secret", claims(), "none"), "HS256");
        refused(jwt("shpss_secret", claims(), "HS512"), "HS256");
        // Claims changed after signing.
        let parts: Vec<&str> = good.split('.').collect();
        let mut c = claims();
        c["dest"] = "https://other.myshopify.com".into();
        let forged = format!("{}.{}.{}", parts[0], B64.encode(c.to_string()), parts[2]);
        refused(forged, "signature");
        for junk in ["", "a.b", "a.b.c.d", "!!.??.**"] {
            assert!(ok(junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn the_card_shows_prices_and_savings_and_nothing_personal() {
        let c = card(&offer(), Some(&variant()), None);
        assert_eq!(c.price, "24.00");
        assert_eq!(c.compare_at_price.as_deref(), Some("30.00"));
        assert_eq!(c.saving.as_deref(), Some("6.00"));
        assert_eq!(
            c.image_url.as_deref(),
            Some("https://cdn.example.com/scale.jpg")
        );
        // A 10% code: the price after it, the saving against the compare-at price.
        let c = card(&offer(), Some(&variant()), Some(10));
        assert_eq!(
            (c.price.as_str(), c.saving.as_deref()),
            ("21.60", Some("8.40"))
        );
        // No compare-at, no percentage: no saving to claim.
        let plain = Variant {
            compare_at_price: None,
            ..variant()
        };
        let c = card(&offer(), Some(&plain), None);
        assert_eq!((c.compare_at_price, c.saving), (None, None));
        // A percentage without a code is not applied.
        let mut o = offer();
        o.discount_code = None;
        assert_eq!(card(&o, Some(&plain), Some(10)).price, "24.00");
    }

    #[test]
    fn checkout_urls_start_a_new_cart_with_the_code() {
        let (o, v) = (offer(), variant());
        assert_eq!(
            checkout_url(Platform::Shopify, "coffee.myshopify.com", "", &o, Some(&v)),
            "https://coffee.myshopify.com/cart/4101:1?discount=THANKS%2010"
        );
        assert_eq!(
            checkout_url(Platform::WooCommerce, "shop.example.com", "checkout", &o, Some(&v)),
            "https://shop.example.com/checkout/?add-to-cart=4101&quantity=1&apply_coupon=THANKS%2010"
        );
        let simple = Variant {
            variant_id: None,
            ..v.clone()
        };
        let mut plain = o.clone();
        plain.variant_id = None;
        plain.discount_code = None;
        assert_eq!(
            checkout_url(
                Platform::WooCommerce,
                "shop.example.com",
                "/kasse/",
                &plain,
                Some(&simple)
            ),
            "https://shop.example.com/kasse/?add-to-cart=77&quantity=1"
        );
        assert_eq!(
            checkout_url(Platform::BigCommerce, "bc.example.com", "", &o, Some(&v)),
            "https://bc.example.com/cart.php?action=buy&product_id=77"
        );
        // No variant id for a Shopify cart: the product page.
        assert!(
            checkout_url(Platform::Shopify, "coffee.myshopify.com", "", &plain, Some(&simple))
                .starts_with("https://coffee.myshopify.com/products/coffee-scale?utm_source=upsell-appliance&utm_medium=thank_you_page")
        );
    }
}
