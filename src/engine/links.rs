//! The links in messages: offer links to the hosted offer page (`/o/{store}/{token}`),
//! tracked product links (`/r/{store}/{token}`, in messages sent before the offer page
//! existed) and unsubscribe links (`/u/{store}/{token}`), each token the touch id and an HMAC of it under a
//! per-store key, so a forged or altered token is recognised without storing tokens; and
//! the product URL a tracked link leads to, with its UTM parameters.

use base64::Engine as _;
use hmac::Mac as _;

use super::plan::{Channel, Recipe, TouchKind};
use super::Platform;

/// What a link does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Records the click and shows the offer page (the card, with a button to take it).
    Offer,
    /// Records the click and redirects to the offered product.
    Redirect,
    /// Takes the customer off the list.
    Unsubscribe,
}

impl Link {
    fn purpose(self) -> &'static str {
        match self {
            Link::Offer => "o",
            Link::Redirect => "r",
            Link::Unsubscribe => "u",
        }
    }
}

fn mac(key: &[u8], link: Link, store: &str, touch: u64) -> String {
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    m.update(format!("{}:{store}:{touch}", link.purpose()).as_bytes());
    let full = m.finalize().into_bytes();
    // 128 bits are plenty for a link that only records a click or an unsubscribe.
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&full[..16])
}

/// The token of a link to touch `touch` of `store`.
pub fn token(key: &[u8], link: Link, store: &str, touch: u64) -> String {
    format!("{touch}.{}", mac(key, link, store, touch))
}

/// The touch a token names, if the token is genuine.
pub fn verify(key: &[u8], link: Link, store: &str, token: &str) -> Option<u64> {
    let (id, sig) = token.split_once('.')?;
    let touch: u64 = id.parse().ok()?;
    let want = mac(key, link, store, touch);
    super::constant_time_eq(want.as_bytes(), sig.as_bytes()).then_some(touch)
}

/// The link's full URL under `public_url`.
pub fn url(public_url: &str, key: &[u8], link: Link, store: &str, touch: u64) -> String {
    format!(
        "{}/{}/{store}/{}",
        public_url.trim_end_matches('/'),
        link.purpose(),
        token(key, link, store, touch)
    )
}

/// The product page a tracked link leads to: variant-specific where the variant is known,
/// with `utm_source=upsell-appliance`, `utm_medium` (email|sms), `utm_campaign` (the
/// recipe) and `utm_content` (the touch). Without a handle, the store's home page.
pub fn product_url(
    platform: Platform,
    domain: &str,
    handle: Option<&str>,
    variant_id: Option<&str>,
    medium: Channel,
    recipe: Option<Recipe>,
    kind: TouchKind,
) -> String {
    let enc = super::percent_encode;
    let base = format!("https://{}", domain.trim_end_matches('/'));
    let mut url = match (handle, platform) {
        (Some(h), Platform::Shopify) => format!("{base}/products/{}", enc(h)),
        (Some(h), Platform::WooCommerce) => format!("{base}/product/{}/", enc(h)),
        (Some(h), Platform::BigCommerce) => format!("{base}/{}/", enc(h)),
        (None, _) => format!("{base}/"),
    };
    let mut query = Vec::new();
    if let (Some(v), Some(_), Platform::Shopify) = (variant_id, handle, platform) {
        query.push(format!("variant={}", enc(v)));
    }
    let medium = match medium {
        Channel::Sms => "sms",
        Channel::Page => "thank_you_page",
        _ => "email",
    };
    query.push("utm_source=upsell-appliance".into());
    query.push(format!("utm_medium={medium}"));
    query.push(format!(
        "utm_campaign={}",
        recipe.map_or("follow_up", |r| r.as_str())
    ));
    query.push(format!("utm_content={}", kind.as_str()));
    url.push('?');
    url.push_str(&query.join("&"));
    url
}

/// The device class of a click, from its User-Agent.
pub fn device_class(user_agent: &str) -> &'static str {
    let ua = user_agent.to_ascii_lowercase();
    if ua.is_empty() {
        "unknown"
    } else if [
        "bot",
        "spider",
        "crawl",
        "preview",
        "scanner",
        "proofpoint",
        "mimecast",
    ]
    .iter()
    .any(|b| ua.contains(b))
    {
        "bot"
    } else if ua.contains("ipad") || ua.contains("tablet") {
        "tablet"
    } else if ua.contains("mobi") || ua.contains("iphone") || ua.contains("android") {
        "mobile"
    } else {
        "desktop"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn tokens_verify_and_forgeries_do_not() {
        let t = token(KEY, Link::Redirect, "demo", 42);
        assert_eq!(verify(KEY, Link::Redirect, "demo", &t), Some(42));
        // Another purpose, store, touch or key: refused.
        assert_eq!(verify(KEY, Link::Unsubscribe, "demo", &t), None);
        assert_eq!(verify(KEY, Link::Redirect, "other", &t), None);
        let altered = t.replacen("42.", "43.", 1);
        assert_eq!(verify(KEY, Link::Redirect, "demo", &altered), None);
        assert_eq!(verify(b"another key", Link::Redirect, "demo", &t), None);
        for junk in ["", "42", ".", "x.y", "42.", "-1.abc"] {
            assert_eq!(verify(KEY, Link::Redirect, "demo", junk), None, "{junk}");
        }
        assert_eq!(
            url("https://u.example.com/", KEY, Link::Unsubscribe, "demo", 7),
            format!(
                "https://u.example.com/u/demo/{}",
                token(KEY, Link::Unsubscribe, "demo", 7)
            )
        );
    }

    #[test]
    fn product_urls_carry_the_variant_and_utm() {
        assert_eq!(
            product_url(
                Platform::Shopify,
                "coffee.myshopify.com",
                Some("coffee-scale"),
                Some("41"),
                Channel::Email,
                Some(Recipe::CrossSell),
                TouchKind::Touch1
            ),
            "https://coffee.myshopify.com/products/coffee-scale?variant=41&utm_source=upsell-appliance&utm_medium=email&utm_campaign=cross_sell&utm_content=touch1"
        );
        assert_eq!(
            product_url(
                Platform::WooCommerce,
                "shop.example.com",
                Some("scale"),
                Some("41"),
                Channel::Sms,
                None,
                TouchKind::Sms
            ),
            "https://shop.example.com/product/scale/?utm_source=upsell-appliance&utm_medium=sms&utm_campaign=follow_up&utm_content=sms"
        );
        assert!(product_url(
            Platform::Shopify,
            "s.myshopify.com",
            None,
            Some("1"),
            Channel::Email,
            None,
            TouchKind::Review
        )
        .starts_with("https://s.myshopify.com/?utm_source"));
    }

    #[test]
    fn clicks_are_classed_by_device() {
        let c = device_class;
        assert_eq!(
            c("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148"),
            "mobile"
        );
        assert_eq!(c("Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X)"), "tablet");
        assert_eq!(
            c("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120"),
            "desktop"
        );
        assert_eq!(c("Googlebot/2.1"), "bot");
        assert_eq!(c(""), "unknown");
    }
}
