//! Message copy: built-in templates in `assets/templates/`, each overridable by a file of
//! the same name in `templates_dir` (the owner changes copy without a rebuild), rendered
//! with minijinja (HTML escaped in `.html` templates). SMS must fit one 160-character
//! segment after rendering: a longer one is refused, never split.

use std::path::Path;

use super::Message;

/// The templates and their built-in text.
pub const BUILT_IN: [(&str, &str); 4] = [
    (
        "email_subject.txt",
        include_str!("../../assets/templates/email_subject.txt"),
    ),
    (
        "email.html",
        include_str!("../../assets/templates/email.html"),
    ),
    (
        "email.txt",
        include_str!("../../assets/templates/email.txt"),
    ),
    ("sms.txt", include_str!("../../assets/templates/sms.txt")),
];

/// Longest SMS we send: one segment, 160 GSM-7 characters (70 when any character needs
/// UCS-2: an emoji, a curly quote).
pub const SMS_MAX: usize = 160;
const SMS_MAX_UCS2: usize = 70;

/// GSM 03.38's basic character set (one unit each)...
const GSM7: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// ...and its extension (two units each).
const GSM7_EXT: &str = "^{}\\[~]|€\u{c}";

/// Whether `body` fits one SMS segment; if not, how long it is and in which encoding.
pub fn sms_fits(body: &str) -> Result<(), String> {
    let gsm = body
        .chars()
        .all(|c| GSM7.contains(c) || GSM7_EXT.contains(c));
    if gsm {
        let units: usize = body
            .chars()
            .map(|c| if GSM7_EXT.contains(c) { 2 } else { 1 })
            .sum();
        if units > SMS_MAX {
            return Err(format!(
                "the rendered SMS is {units} characters, over the {SMS_MAX} of one segment; shorten sms.txt"
            ));
        }
    } else {
        let units = body.encode_utf16().count();
        if units > SMS_MAX_UCS2 {
            let c = body
                .chars()
                .find(|c| !(GSM7.contains(*c) || GSM7_EXT.contains(*c)))
                .unwrap_or(' ');
            return Err(format!(
                "the rendered SMS is {units} characters with {c:?} in it, which makes a segment 70 characters, not 160; shorten sms.txt or avoid such characters"
            ));
        }
    }
    Ok(())
}

pub struct Templates {
    env: minijinja::Environment<'static>,
}

/// A rendered email.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email {
    pub subject: String,
    pub html: String,
    pub text: String,
}

impl Templates {
    /// The built-in templates, with any file of the same name in `dir` instead. An error
    /// names the file and what is wrong in it.
    pub fn load(dir: Option<&Path>) -> Result<Templates, String> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        for (name, text) in BUILT_IN {
            let text = match dir.map(|d| d.join(name)) {
                Some(p) if p.exists() => std::fs::read_to_string(&p)
                    .map_err(|e| format!("template {}: cannot read it ({e})", p.display()))?,
                _ => text.to_string(),
            };
            env.add_template_owned(name, text)
                .map_err(|e| format!("template {name}: {e}"))?;
        }
        Ok(Templates { env })
    }

    fn render(&self, name: &str, ctx: &serde_json::Value) -> Result<String, String> {
        self.env
            .get_template(name)
            .and_then(|t| t.render(ctx))
            .map_err(|e| format!("template {name}: {e}"))
    }

    pub fn email(&self, m: &Message, store_name: &str) -> Result<Email, String> {
        let mut ctx = context(m, store_name);
        let subject = self.render("email_subject.txt", &ctx)?.trim().to_string();
        ctx["subject"] = subject.clone().into();
        Ok(Email {
            html: self.render("email.html", &ctx)?,
            text: self.render("email.txt", &ctx)?,
            subject,
        })
    }

    /// The SMS body, or why it cannot go (over one segment).
    pub fn sms(&self, m: &Message, store_name: &str) -> Result<String, String> {
        let body = self.render("sms.txt", &context(m, store_name))?;
        let body = body.trim().to_string();
        sms_fits(&body)?;
        Ok(body)
    }
}

impl Templates {
    /// Renders every template with a typical offer (a 30-character title, a code, links
    /// under `public_url` as long as real ones): an error says which template fails and
    /// why.
    pub fn check(&self, public_url: &str) -> Result<(), String> {
        let m = sample(public_url);
        self.email(&m, "Sample Store")?;
        self.sms(&m, "Sample Store")
            .map(|_| ())
            .map_err(|e| format!("{e} (rendered with a typical offer)"))
    }
}

/// A typical message, for checking templates.
fn sample(public_url: &str) -> Message {
    use crate::engine::plan::{Channel, Offer, Recipe, TouchKind};
    let link = format!(
        "{}/x/store/1234567.AAAAAAAAAAAAAAAAAAAAAA",
        public_url.trim_end_matches('/')
    );
    Message {
        touch_id: 1_234_567,
        store: "store".into(),
        kind: TouchKind::Sms,
        medium: Channel::Sms,
        order_id: "1001".into(),
        order_name: "#1001".into(),
        customer: None,
        email: None,
        phone: None,
        recipe: Some(Recipe::CrossSell),
        offer: Some(Offer {
            product: "sku:SAMPLE".into(),
            sku: Some("SAMPLE".into()),
            variant_id: None,
            title: "Sample Product Title Of Thirty".into(),
            price: 1900,
            currency: crate::engine::Currency::parse("USD").expect("a valid code"),
            discount_code: Some("THANKS10".into()),
            trust: false,
            urgency: false,
        }),
        image_url: None,
        due_at: crate::engine::Timestamp(0),
        at: crate::engine::Timestamp(0),
        ticket: None,
        links: super::Links {
            click: Some(link.replace("/x/", "/o/")),
            unsubscribe: link.replace("/x/", "/u/"),
        },
    }
}

/// What templates see: the touch, the order name, the offer (title, price, currency,
/// discount code, image URL), the links, the store's name and any urgency line.
pub fn context(m: &Message, store_name: &str) -> serde_json::Value {
    serde_json::json!({
        "touch": m.kind.as_str(),
        "channel": m.medium.as_str(),
        "order_name": m.order_name,
        "recipe": m.recipe.map(|r| r.as_str()),
        "store_name": store_name,
        "offer": m.offer.as_ref().map(|o| serde_json::json!({
            "title": o.title, "price": o.currency.format_minor(o.price),
            "currency": o.currency.as_str(), "discount_code": o.discount_code,
            "image_url": m.image_url,
        })),
        // Only where the store allowed it for this recipe (the plan decides).
        "urgency": m.offer.as_ref().filter(|o| o.urgency).map(|_| "Stock is limited."),
        "links": m.links,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_segment_is_counted_by_encoding() {
        assert!(sms_fits(&"a".repeat(160)).is_ok());
        assert!(sms_fits(&"a".repeat(161)).is_err());
        // Extension characters count twice.
        assert!(sms_fits(&format!("{}€", "a".repeat(158))).is_ok());
        assert!(sms_fits(&format!("{}€", "a".repeat(159))).is_err());
        // One curly apostrophe: a 70-character segment.
        let e = sms_fits(&format!("it\u{2019}s {}", "a".repeat(70))).unwrap_err();
        assert!(e.contains("70 characters"), "{e}");
        assert!(sms_fits("it\u{2019}s short").is_ok());
    }

    #[test]
    fn the_built_in_templates_pass_their_own_check() {
        let t = Templates::load(None).unwrap();
        t.check("https://upsell.example.com").unwrap();
        // Even with a longer public_url.
        t.check("https://upsell.coffee-company-example.com")
            .unwrap();
    }
}
