//! The thank-you page offer on the public listener.
//!
//! - `GET /v1/offers/{store}/{order}`: the offer card as JSON, for the Shopify checkout
//!   extension (`Authorization: Bearer` a session token of the store's app) and the
//!   widget (`?t=` an order token). Anything else, unknown, not authorised, held out or
//!   without an offer, is the same 404. CORS allows any origin: the token, not the origin,
//!   protects it (the extension runs with a `null` origin).
//! - `GET|POST /v1/offers/{store}/{order}/accept?t=`: records the acceptance, then 303 to
//!   the store's checkout with the product and the code (a new order).
//! - `POST /v1/offers/{store}/{order}/decline?t=`: records the decline (204, or a page
//!   for a form).
//! - `GET /o/{store}/{token}`: the hosted offer page that offer messages link to (the
//!   click is recorded): the same card, server-rendered.
//! - `GET /thank-you.js`, `GET /offer.css`: the widget and the card's style.

use tiny_http::{Method, Request, Response};

use super::page::{esc, form_value, percent_decode};
use super::public::PublicCtx;
use super::{header, headers_of, json, respond};
use crate::config::StoreConfig;
use crate::engine::catalog::Variant;
use crate::engine::lifecycle::PlanRecord;
use crate::engine::links::Link;
use crate::engine::offer::{self, Card, Open};
use crate::engine::percent_encode;
use crate::engine::plan::TouchKind;

const CSS: &str = include_str!("../../assets/offer/card.css");
const PAGE: &str = include_str!("../../assets/offer/page.html");
/// The widget as served: `assets/thank-you.js` with `card.css` in place of its
/// placeholder, put together once.
static WIDGET_JS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    include_str!("../../assets/thank-you.js").replacen(
        "\"__CARD_CSS__\"",
        &serde_json::Value::from(CSS).to_string(),
        1,
    )
});

type Resp = Response<std::io::Cursor<Vec<u8>>>;

/// What an answer that could not be recorded says (the storage failed: retrying works).
const AGAIN: &str = "That did not work just now; please try again in a minute.";

/// Answers the paths above; hands the request back when the path is none of them.
pub fn handle(ctx: &PublicCtx, rq: Request, path: &str) -> Option<Request> {
    if let Some(rest) = path.strip_prefix("/v1/offers/") {
        api(ctx, rq, rest);
    } else if let Some(rest) = path.strip_prefix("/o/") {
        offer_page(ctx, rq, rest);
    } else if path == "/thank-you.js" {
        respond(
            rq,
            asset(WIDGET_JS.clone(), "text/javascript; charset=utf-8"),
        );
    } else if path == "/offer.css" {
        respond(rq, asset(CSS.to_string(), "text/css; charset=utf-8"));
    } else {
        return Some(rq);
    }
    None
}

fn asset(body: String, kind: &str) -> Resp {
    Response::from_data(body.into_bytes())
        .with_header(header("Content-Type", kind))
        .with_header(header("Cache-Control", "public, max-age=3600"))
        .with_header(header("Access-Control-Allow-Origin", "*"))
        .with_header(header("X-Content-Type-Options", "nosniff"))
}

fn cors(resp: Resp) -> Resp {
    resp.with_header(header("Access-Control-Allow-Origin", "*"))
        .with_header(header("Cache-Control", "no-store"))
}

/// The one answer for everything that is not an offer this caller may see.
fn not_found() -> Resp {
    cors(json(404, &serde_json::json!({"error": "no offer"})))
}

/// What `/v1/offers/...` names.
enum Action {
    Show,
    Accept,
    Decline,
}

fn api(ctx: &PublicCtx, rq: Request, rest: &str) {
    if *rq.method() == Method::Options {
        let resp = Response::empty(204)
            .with_header(header("Access-Control-Allow-Origin", "*"))
            .with_header(header("Access-Control-Allow-Methods", "GET, POST, OPTIONS"))
            .with_header(header(
                "Access-Control-Allow-Headers",
                "Authorization, Content-Type, Accept",
            ))
            .with_header(header("Access-Control-Max-Age", "86400"));
        return respond(rq, resp);
    }
    let mut parts = rest.trim_end_matches('/').split('/');
    let (store_id, order, action) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(s), Some(o), None, None) => (s, o, Action::Show),
        (Some(s), Some(o), Some("accept"), None) => (s, o, Action::Accept),
        (Some(s), Some(o), Some("decline"), None) => (s, o, Action::Decline),
        _ => return respond(rq, not_found()),
    };
    let method_ok = match action {
        Action::Show => matches!(rq.method(), Method::Get | Method::Head),
        Action::Accept => matches!(rq.method(), Method::Get | Method::Post),
        Action::Decline => *rq.method() == Method::Post,
    };
    if !method_ok {
        return respond(rq, cors(json(405, &serde_json::json!({"error": "method"}))));
    }
    let (Some(store), Some(order)) = (ctx.config.store(store_id), percent_decode(order)) else {
        return respond(rq, not_found());
    };
    let query = rq.url().split_once('?').map_or("", |(_, q)| q).to_string();
    let token = form_value(query.as_bytes(), "t");
    let until = form_value(query.as_bytes(), "e").and_then(|e| e.parse::<i64>().ok());
    let Some(key) = ctx
        .link_keys
        .get(&store.id)
        .map(|k| offer::order_token_key(k))
    else {
        return respond(rq, not_found());
    };
    let now = ctx.clock.now();
    let by_token = token
        .as_deref()
        .is_some_and(|t| offer::token_opens(&key, &store.id, &order, t, until, now));
    // Taking or refusing the offer needs our token: it is what accept_url carries.
    let checkout = match (&action, by_token) {
        (_, true) => None,
        (Action::Show, false) => match session(ctx, store, &rq) {
            Some(c) => Some(c),
            None => return respond(rq, not_found()),
        },
        _ => {
            let r = refused(&action, &rq);
            return respond(rq, r);
        }
    };
    let Some(found) = find(ctx, store, &order) else {
        let r = refused(&action, &rq);
        return respond(rq, r);
    };
    if let Some(c) = &checkout {
        // A session token proves a checkout of the shop, not of this order: it opens only
        // an order placed moments ago, and never another signed-in buyer's.
        let fresh = now.0 - found.rec.order_at.0 <= offer::SESSION_ORDER_WINDOW_MS;
        let other_buyer = c
            .customer
            .as_deref()
            .is_some_and(|buyer| found.customer.as_deref().is_some_and(|o| o != buyer));
        if !fresh || other_buyer {
            return respond(rq, not_found());
        }
    }
    // The links to take or refuse it: ours for good with our token, for an hour with a
    // session token.
    let links = match checkout {
        Some(_) => {
            let until = now.0.div_euclid(1000) + offer::SESSION_LINK_SECS;
            (
                offer::order_token_until(&key, &store.id, &order, until),
                Some(until),
            )
        }
        None => (offer::order_token(&key, &store.id, &order), None),
    };
    match action {
        Action::Show => show(ctx, rq, store, &found, (&links.0, links.1)),
        Action::Accept => {
            let via = via(ctx, &store.id, &query, &found);
            accept(ctx, rq, store, &found, via)
        }
        Action::Decline => {
            // An offer that has ended has nothing left to refuse: answered as done.
            let done = !matches!(found.open, Open::Until(_))
                || record(
                    ctx,
                    store,
                    &found.rec.order_id,
                    (false, via(ctx, &store.id, &query, &found)),
                    now,
                );
            let resp = match (html_wanted(&rq), done) {
                (true, true) => message(
                    store,
                    200,
                    "No thanks",
                    "No problem. Enjoy your order!",
                    None,
                ),
                (true, false) => message(store, 503, "Please try again", AGAIN, None),
                (false, true) => cors(Response::from_data(Vec::new()).with_status_code(204)),
                (false, false) => cors(json(503, &serde_json::json!({"error": AGAIN}))),
            };
            respond(rq, resp);
        }
    }
}

/// A Shopify checkout's session token, verified against the store's app.
fn session(ctx: &PublicCtx, store: &StoreConfig, rq: &Request) -> Option<offer::Checkout> {
    let client_id = store.shopify_client_id.as_deref()?;
    let auth = headers_of(rq).get("authorization")?.to_string();
    let jwt = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))?;
    match offer::verify_session_token(
        jwt,
        &store.webhook_secrets,
        client_id,
        &store.domain,
        ctx.clock.now(),
    ) {
        Ok(c) => Some(c),
        Err(why) => {
            // For the operator; the caller only sees the 404.
            log::info!("offers: store {}: session token refused: {why}", store.id);
            None
        }
    }
}

fn html_wanted(rq: &Request) -> bool {
    headers_of(rq)
        .get("accept")
        .is_some_and(|a| a.contains("text/html"))
}

fn refused(action: &Action, rq: &Request) -> Resp {
    match action {
        Action::Show => not_found(),
        _ if html_wanted(rq) => not_valid(""),
        _ => not_found(),
    }
}

/// An order's offer as the request finds it.
struct Found {
    rec: PlanRecord,
    variant: Option<Variant>,
    open: Open,
    /// The order's platform customer id, to match a signed-in buyer.
    customer: Option<String>,
    /// The customer has accepted or declined it.
    answered: bool,
}

fn find(ctx: &PublicCtx, store: &StoreConfig, order: &str) -> Option<Found> {
    let snap = ctx.storage.snapshot().ok()?;
    let rec = snap.plan(&store.id, order).ok().flatten()?;
    let offer = rec.plan.offer.as_ref()?;
    let variant = snap
        .variant_of_key(&store.id, &offer.product)
        .ok()
        .flatten();
    let customer = snap
        .order(&store.id, order)
        .ok()
        .flatten()
        .and_then(|o| o.order)
        .and_then(|o| o.customer)
        .and_then(|c| c.platform_id);
    let answered = snap
        .offer_response(&store.id, order)
        .ok()
        .flatten()
        .is_some();
    let open = offer::open(
        &rec,
        variant.as_ref(),
        store.page.offer_valid_days,
        store.offers.stock_threshold,
        ctx.clock.now(),
    );
    if open == Open::None {
        return None;
    }
    Some(Found {
        rec,
        variant,
        open,
        customer,
        answered,
    })
}

fn card_of(store: &StoreConfig, f: &Found) -> Option<Card> {
    let offer = f.rec.plan.offer.as_ref()?;
    let pct = f
        .rec
        .plan
        .recipe
        .and_then(|r| store.page.discount_percent.get(&r).copied())
        .filter(|_| {
            // The percentage describes the code config names for the recipe; an offer
            // planned with another code is shown without it.
            f.rec
                .plan
                .recipe
                .and_then(|r| store.offers.discount_codes.get(&r))
                == offer.discount_code.as_ref()
        });
    Some(offer::card(offer, f.variant.as_ref(), pct))
}

/// The accept and decline URLs with token `t` (and the time it works until, if it ends).
/// `via`: the message touch whose offer page shows them (for attribution).
fn urls(
    ctx: &PublicCtx,
    store: &StoreConfig,
    order: &str,
    (t, until): (&str, Option<i64>),
    via: Option<u64>,
) -> (String, String) {
    let base = format!(
        "{}/v1/offers/{}/{}",
        ctx.config.public_url.trim_end_matches('/'),
        percent_encode(&store.id),
        percent_encode(order)
    );
    let mut q = match until {
        Some(u) => format!("t={t}&e={u}"),
        None => format!("t={t}"),
    };
    if let Some(id) = via {
        q.push_str(&format!("&via={id}"));
    }
    (format!("{base}/accept?{q}"), format!("{base}/decline?{q}"))
}

/// The offer as JSON; the first time, the page counts as having shown it. Only a plan
/// with a thank-you page touch has one to show (replenishment and upgrade offers go by
/// message), and only until the customer answers it.
fn show(ctx: &PublicCtx, rq: Request, store: &StoreConfig, f: &Found, link: (&str, Option<i64>)) {
    let on_page = f.rec.plan.touches.iter().any(|t| t.kind == TouchKind::Page);
    let (Open::Until(until), Some(card), true, false) =
        (&f.open, card_of(store, f), on_page, f.answered)
    else {
        return respond(rq, not_found());
    };
    let (accept_url, decline_url) = urls(ctx, store, &f.rec.order_id, link, None);
    let body = serde_json::json!({
        "offer": card,
        "expires_at": until.to_rfc3339(),
        "accept_url": accept_url,
        "decline_url": decline_url,
    });
    if *rq.method() == Method::Get {
        if let Err(e) = ctx
            .storage
            .offer_shown(&store.id, &f.rec.order_id, ctx.clock.now())
        {
            // The customer still sees the offer; the view is not counted, and said so.
            log::error!(
                "offers: store {}: recording that order {}'s offer was shown: {e}",
                store.id,
                f.rec.order_id
            );
        }
    }
    respond(rq, cors(json(200, &body)));
}

/// The message touch an answer came through (`via=` of the offer page's links), when it
/// is one of this order's: attribution credits it rather than the thank-you page.
fn via(ctx: &PublicCtx, store: &str, query: &str, f: &Found) -> Option<u64> {
    let id = form_value(query.as_bytes(), "via")?.parse::<u64>().ok()?;
    let t = ctx.storage.snapshot().ok()?.touch(id).ok()??;
    (t.store == store && t.order == f.rec.order_id).then_some(id)
}

/// Records an answer; false (and logged) when it could not be.
fn record(
    ctx: &PublicCtx,
    store: &StoreConfig,
    order: &str,
    (accepted, via): (bool, Option<u64>),
    now: crate::engine::Timestamp,
) -> bool {
    match ctx
        .storage
        .respond_to_offer(&store.id, order, accepted, via, now)
    {
        Ok(_) => true,
        Err(e) => {
            log::error!(
                "offers: store {}: recording the answer to order {order}'s offer: {e}",
                store.id
            );
            false
        }
    }
}

/// Records the acceptance, then sends the customer to the checkout. An offer that has
/// ended gets a polite page instead.
fn accept(ctx: &PublicCtx, rq: Request, store: &StoreConfig, f: &Found, via: Option<u64>) {
    let offer = f.rec.plan.offer.as_ref().expect("found offers have one");
    if let Open::Ended(why) = f.open {
        return respond(rq, ended(store, offer, f.variant.as_ref(), why));
    }
    let to = offer::checkout_url(
        store.platform,
        &store.domain,
        &store.page.checkout_path,
        offer,
        f.variant.as_ref(),
    );
    if !record(ctx, store, &f.rec.order_id, (true, via), ctx.clock.now()) {
        return respond(rq, message(store, 503, "Please try again", AGAIN, None));
    }
    respond(
        rq,
        Response::empty(303)
            .with_header(header("Location", &to))
            .with_header(header("Cache-Control", "no-store"))
            .with_header(header("Referrer-Policy", "no-referrer"))
            .with_header(header("Access-Control-Allow-Origin", "*")),
    );
}

/// The polite page for an offer that has ended, with the product's page.
fn ended(
    store: &StoreConfig,
    offer: &crate::engine::plan::Offer,
    variant: Option<&Variant>,
    why: &str,
) -> Resp {
    let product = offer::product_page(store.platform, &store.domain, offer, variant);
    message(
        store,
        410,
        "This offer has ended",
        &format!("Sorry, this offer is no longer available: {why}."),
        Some((&product, &format!("See {} in the store", offer.title))),
    )
}

/// A page with one message and an optional link.
fn message(
    store: &StoreConfig,
    status: u16,
    title: &str,
    text: &str,
    link: Option<(&str, &str)>,
) -> Resp {
    let link = link.map_or(String::new(), |(href, label)| {
        format!("<p><a href=\"{}\">{}</a></p>", esc(href), esc(label))
    });
    let main = format!(
        "<h1>{}</h1><div class=\"upsell-message\"><p>{}</p>{link}</div>",
        esc(title),
        esc(text)
    );
    page_response(status, &document(title, &store.name, &main))
}

fn document(title: &str, store_name: &str, main: &str) -> String {
    PAGE.replace("{{title}}", &esc(title))
        .replace("{{store}}", &esc(store_name))
        .replace("{{main}}", main)
}

/// An HTML page of ours: our style only, product images from anywhere over HTTPS, forms
/// that post here and are redirected on to the store, which may redirect again (to its
/// own domain, www or not): so any HTTPS target. No script runs on these pages.
fn page_response(status: u16, body: &str) -> Resp {
    let csp = "default-src 'none'; style-src 'self'; img-src https: data:; form-action 'self' https:; frame-ancestors 'none'; base-uri 'none'";
    Response::from_data(body.as_bytes().to_vec())
        .with_status_code(status)
        .with_header(header("Content-Type", "text/html; charset=utf-8"))
        .with_header(header("Content-Security-Policy", csp))
        .with_header(header("X-Content-Type-Options", "nosniff"))
        .with_header(header("Referrer-Policy", "no-referrer"))
        .with_header(header("Cache-Control", "no-store"))
}

/// `GET /o/{store}/{token}`: the offer page of an offer message (the click is recorded).
fn offer_page(ctx: &PublicCtx, rq: Request, rest: &str) {
    let Some((store_id, token)) = rest.split_once('/') else {
        return respond(rq, not_valid(""));
    };
    let Some(store) = ctx.config.store(store_id) else {
        return respond(rq, not_valid(""));
    };
    if !matches!(rq.method(), Method::Get | Method::Head) {
        return respond(
            rq,
            message(
                store,
                405,
                "Offer",
                "This link is opened, not posted to.",
                None,
            ),
        );
    }
    let Some((id, t)) = super::links::touch_of(ctx, Link::Offer, &store.id, token) else {
        return respond(rq, not_valid(&store.name));
    };
    super::links::click(ctx, &rq, id);
    let Some(f) = find(ctx, store, &t.order) else {
        return respond(
            rq,
            message(
                store,
                410,
                "This offer has ended",
                "Sorry, this offer is no longer available.",
                Some((
                    &format!("https://{}/", store.domain.trim_end_matches('/')),
                    "Visit the store",
                )),
            ),
        );
    };
    let offer = f.rec.plan.offer.as_ref().expect("found offers have one");
    if let Open::Ended(why) = f.open {
        return respond(rq, ended(store, offer, f.variant.as_ref(), why));
    }
    let Some(card) = card_of(store, &f) else {
        return respond(rq, not_valid(&store.name));
    };
    let key = ctx
        .link_keys
        .get(&store.id)
        .map(|k| offer::order_token_key(k))
        .unwrap_or_default();
    let tok = offer::order_token(&key, &store.id, &f.rec.order_id);
    let (accept_url, decline_url) = urls(ctx, store, &f.rec.order_id, (&tok, None), Some(id));
    let main = card_html(&card, &accept_url, &decline_url);
    respond(
        rq,
        page_response(200, &document(&card.title, &store.name, &main)),
    );
}

/// The page for a link that is not (or no longer) one of ours.
fn not_valid(store_name: &str) -> Resp {
    page_response(
        404,
        &document(
            "Offer",
            store_name,
            "<p class=\"upsell-message\">This link is not valid. If you copied it from a message, check that it is complete.</p>",
        ),
    )
}

/// The card, as the widget builds it, with forms for the two answers (a POST, so a link
/// scanner opening the page takes nothing).
fn card_html(c: &Card, accept_url: &str, decline_url: &str) -> String {
    let money = |amount: &str| format!("{amount} {}", esc(&c.currency));
    let img = match &c.image_url {
        Some(u) => format!(
            "<img class=\"upsell-img\" src=\"{}\" alt=\"{}\" width=\"96\" height=\"96\">",
            esc(u),
            esc(&c.title)
        ),
        None => "<div class=\"upsell-img\" role=\"presentation\"></div>".into(),
    };
    let was = c.compare_at_price.as_deref().map_or(String::new(), |w| {
        format!(" <s aria-label=\"was {0}\">{0}</s>", money(w))
    });
    let saving = c
        .saving
        .as_deref()
        .map_or(String::new(), |s| format!("You save {}", money(s)));
    let code = c
        .discount_code
        .as_deref()
        .map_or(String::new(), |d| format!("Code {} applied", esc(d)));
    format!(
        "<section class=\"upsell-card\" aria-labelledby=\"upsell-title\"><div class=\"upsell-top\">{img}<div class=\"upsell-body\">\
<p class=\"upsell-kicker one\">You might also like</p><h2 id=\"upsell-title\">{title}</h2>\
<p class=\"upsell-price one\">{price}{was}</p><p class=\"upsell-saving one\">{saving}</p><p class=\"upsell-code one\">{code}</p></div></div>\
<div class=\"upsell-actions\"><form method=\"post\" action=\"{accept}\"><button class=\"upsell-accept\" type=\"submit\">Buy now \u{2014} new checkout</button></form>\
<form method=\"post\" action=\"{decline}\"><button class=\"upsell-decline\" type=\"submit\">No thanks</button></form></div>\
<p class=\"upsell-note one\">A separate order; yours is complete.</p></section>",
        title = esc(&c.title),
        price = money(&c.price),
        accept = esc(accept_url),
        decline = esc(decline_url),
    )
}
