//! The links in messages, on the public listener: `/r/{store}/{token}` records the click
//! and redirects to the offered product (with UTM); `/u/{store}/{token}` shows a
//! confirmation page (GET) and unsubscribes (POST, including RFC 8058's one-click POST from
//! the mail client). A forged or altered token gets a 404 page and nothing is recorded.

use tiny_http::{Method, Request};

use super::page::{esc, html};
use super::public::PublicCtx;
use super::{header, headers_of, respond};
use crate::engine::links::{device_class, product_url, verify, Link};
use crate::engine::plan::{Channel, Suppressed};
use crate::storage::plans::{contact_of, suppression_key, SuppressionRow};
use crate::storage::touches::TouchRecord;

/// Answers `/r/...` and `/u/...`; hands the request back when the path is neither.
pub fn handle(ctx: &PublicCtx, rq: Request, path: &str) -> Option<Request> {
    let (link, rest) = if let Some(r) = path.strip_prefix("/r/") {
        (Link::Redirect, r)
    } else if let Some(r) = path.strip_prefix("/u/") {
        (Link::Unsubscribe, r)
    } else {
        return Some(rq);
    };
    let Some((store, token)) = rest.split_once('/') else {
        respond(rq, not_found());
        return None;
    };
    let Some((id, t)) = touch_of(ctx, link, store, token) else {
        respond(rq, not_found());
        return None;
    };
    match (link, rq.method()) {
        (Link::Redirect, Method::Get | Method::Head) => redirect(ctx, rq, id, &t),
        (Link::Unsubscribe, Method::Get | Method::Head) => confirm(rq, &t, path),
        (Link::Unsubscribe, Method::Post) => unsubscribe(ctx, rq, &t),
        _ => respond(rq, page(405, "This link is opened, not posted to.")),
    }
    None
}

/// The touch a link's token names, if the token is genuine and the touch is the store's.
pub(super) fn touch_of(
    ctx: &PublicCtx,
    link: Link,
    store: &str,
    token: &str,
) -> Option<(u64, TouchRecord)> {
    let id = verify(ctx.link_keys.get(store)?, link, store, token)?;
    match ctx.storage.snapshot().and_then(|s| s.touch(id)) {
        Ok(Some(t)) if t.store == store => Some((id, t)),
        _ => None,
    }
}

/// Records a click on touch `id`'s link with its device class (a HEAD, a link checker, is
/// not a click). The customer goes on either way; a click that cannot be recorded is said.
pub(super) fn click(ctx: &PublicCtx, rq: &Request, id: u64) {
    if *rq.method() != Method::Get {
        return;
    }
    let ua = headers_of(rq).get("user-agent").unwrap_or("").to_string();
    if let Err(e) = ctx
        .storage
        .record_click(id, ctx.clock.now(), device_class(&ua))
    {
        log::error!("links: recording a click on touch {id}: {e}");
    }
}

fn not_found() -> super::page::Page {
    page(
        404,
        "This link is not valid. If you copied it from a message, check that it is complete.",
    )
}

fn page(status: u16, text: &str) -> super::page::Page {
    html(status, &document(&format!("<p>{}</p>", esc(text))))
}

fn document(main: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Email preferences</title></head><body>{main}</body></html>"
    )
}

/// Records the click, then 302 to the product (the store's home page when the product is
/// not known).
fn redirect(ctx: &PublicCtx, rq: Request, id: u64, t: &TouchRecord) {
    let Some(store) = ctx.config.store(&t.store) else {
        respond(rq, not_found());
        return;
    };
    let snap = match ctx.storage.snapshot() {
        Ok(s) => s,
        Err(_) => {
            respond(rq, page(503, "Please try again in a moment."));
            return;
        }
    };
    let plan = snap.plan(&t.store, &t.order).ok().flatten();
    let offer = plan.as_ref().and_then(|p| p.plan.offer.as_ref());
    let variant = offer.and_then(|o| snap.variant_of_key(&t.store, &o.product).ok().flatten());
    let target = product_url(
        store.platform,
        &store.domain,
        variant.as_ref().and_then(|v| v.handle.as_deref()),
        offer
            .and_then(|o| o.variant_id.as_deref())
            .or(variant.as_ref().and_then(|v| v.variant_id.as_deref())),
        t.channel,
        plan.as_ref().and_then(|p| p.plan.recipe),
        t.kind,
    );
    click(ctx, &rq, id);
    respond(
        rq,
        tiny_http::Response::empty(302)
            .with_header(header("Location", &target))
            .with_header(header("Cache-Control", "no-store"))
            .with_header(header("Referrer-Policy", "no-referrer")),
    );
}

/// The contact an unsubscribe takes off the list: the phone for an SMS, else the email.
fn contact(ctx: &PublicCtx, t: &TouchRecord) -> Option<String> {
    let snap = ctx.storage.snapshot().ok()?;
    let (email, phone) = addresses(&snap, t);
    if t.channel == Channel::Sms {
        phone
    } else {
        email
    }
}

/// The (email, phone) a touch went to: its customer's, else its order's.
pub(super) fn addresses(
    snap: &crate::storage::Snapshot,
    t: &TouchRecord,
) -> (Option<String>, Option<String>) {
    let customer = t
        .customer
        .and_then(|c| snap.customer(&t.store, c).ok().flatten());
    let order = snap.order(&t.store, &t.order).ok().flatten();
    let (email, phone) = contact_of(
        customer.as_ref(),
        order.as_ref().and_then(|o| o.order.as_ref()),
    );
    (email.map(str::to_string), phone.map(str::to_string))
}

/// `j***@example.com`, `+1******0100`: enough to recognise, not to harvest.
fn masked(c: &str) -> String {
    match c.split_once('@') {
        Some((user, domain)) => {
            format!("{}***@{domain}", user.chars().next().unwrap_or('*'))
        }
        None => {
            let keep: String = c
                .chars()
                .rev()
                .take(4)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            format!("{}******{keep}", c.chars().take(2).collect::<String>())
        }
    }
}

fn confirm(rq: Request, t: &TouchRecord, path: &str) {
    let what = if t.channel == Channel::Sms {
        "text messages"
    } else {
        "emails"
    };
    let body = format!(
        "<h1>Unsubscribe?</h1><p>You will get no more of these {what} from this store.</p><form method=\"post\" action=\"{}\"><button type=\"submit\">Unsubscribe</button></form>",
        esc(path)
    );
    respond(rq, html(200, &document(&body)));
}

fn unsubscribe(ctx: &PublicCtx, rq: Request, t: &TouchRecord) {
    // No address on record (or not one we could key): nothing of theirs is kept to
    // message, and the page says so rather than claiming an unsubscribe.
    let Some((contact, key)) =
        contact(ctx, t).and_then(|c| suppression_key(&c).ok().map(|k| (c, k)))
    else {
        log::warn!(
            "links: unsubscribe for touch of order {} in store {}: no contact on record",
            t.order,
            t.store
        );
        respond(
            rq,
            page(
                200,
                "We hold no address for this message any more, so nothing more will be sent to it.",
            ),
        );
        return;
    };
    let row = SuppressionRow {
        reason: Suppressed::Unsubscribed,
        at: ctx.clock.now(),
        source: "unsubscribe link".into(),
    };
    // Committed before the answer: the very next due touch sees it.
    match ctx.storage.suppress(&t.store, &[(key, row)]) {
        Ok(_) => respond(
            rq,
            page(
                200,
                &format!(
                    "You are unsubscribed: {} gets no more of these messages.",
                    masked(&contact)
                ),
            ),
        ),
        Err(e) => {
            log::error!("links: recording an unsubscribe: {e}");
            respond(
                rq,
                page(
                    503,
                    "That did not work just now; please try again in a minute.",
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn contacts_are_masked() {
        assert_eq!(super::masked("jane@example.com"), "j***@example.com");
        assert_eq!(super::masked("+16175550100"), "+1******0100");
    }
}
