//! The status page on `admin_listen`: `GET /` for a browser. It signs in with a form that
//! sets a cookie (or takes the bearer header), and shows per store what `/api/status`
//! says, with the notices that need the operator on top. HTML and CSS come from
//! `assets/admin/`; no scripts, nothing external (the Content-Security-Policy says so).
//!
//! The cookie holds its issue time and an HMAC of it under the admin token, not the
//! token, so a copied cookie opens this page (for 7 days at most) but never the API,
//! which takes only the bearer header (and so needs no cross-site request protection).

use std::io::Cursor;

use hmac::Mac as _;
use tiny_http::{Request, Response};

use super::admin::{self, ago, millis_of, AdminCtx};
use super::{header, headers_of, read_body, respond};

const PAGE: &str = include_str!("../../assets/admin/page.html");
const LOGIN: &str = include_str!("../../assets/admin/login.html");
const CSS: &str = include_str!("../../assets/admin/admin.css");

const COOKIE: &str = "upsell_admin";
/// How often the page reloads itself.
const REFRESH_SECONDS: u32 = 30;
/// Sign-in stays valid this long in the browser.
const COOKIE_MAX_AGE: u32 = 7 * 86_400;

pub(super) type Page = Response<Cursor<Vec<u8>>>;

/// `GET /`: the page, or the sign-in form.
pub fn status(ctx: &AdminCtx, rq: Request) {
    if !signed_in(ctx, &rq) {
        return respond(rq, login_page(401, None));
    }
    let writable = ctx
        .health
        .writable
        .load(std::sync::atomic::Ordering::Relaxed);
    let now = ctx.clock.now();
    let report = match admin::report(&ctx.config, &ctx.storage, Some(writable), now) {
        Ok(r) => r,
        Err(e) => {
            let main = format!(
                "<ul class=\"notices\"><li class=\"bad\">The database could not be read: {}</li></ul>",
                esc(&e.to_string())
            );
            return respond(rq, html(500, &fill_page("Status", "", &main, true)));
        }
    };
    let admin::Report {
        stores,
        stored,
        processed,
        notices,
    } = report;

    let mut main = String::new();
    if notices.iter().any(|n| n.level != "info") {
        main.push_str("<ul class=\"notices\">");
    } else {
        main.push_str("<p class=\"allgood\">All is well: webhooks are being received and stored.</p><ul class=\"notices\">");
    }
    for n in &notices {
        main.push_str(&format!(
            "<li class=\"{}\">{}</li>",
            esc(&n.level),
            code_spans(&esc(&n.text))
        ));
    }
    main.push_str("</ul>");
    for (cfg, st) in ctx.config.stores.iter().zip(&stores) {
        let w = &st.webhooks;
        let last = match st.last_webhook_at.as_deref() {
            Some(t) => format!(
                "{}<small>{}</small>",
                millis_of(t).map_or_else(|| t.to_string(), |ms| ago(now, ms)),
                esc(t)
            ),
            None => "never".to_string(),
        };
        // Whether touches reach customers: the notices on top say what to do about it.
        let sending = match (&st.paused_since, cfg.mode) {
            (Some(t), _) => format!(
                "paused<small>since {}</small>",
                millis_of(t).map_or_else(|| esc(t), |ms| ago(now, ms))
            ),
            (None, crate::config::Mode::DryRun) => "dry run<small>outbox only</small>".into(),
            (None, crate::config::Mode::Live) => "live".into(),
        };
        let figures = [
            ("Sending", sending),
            ("Last webhook", last),
            ("Accepted", w.accepted.to_string()),
            ("Duplicates", w.duplicate.to_string()),
            ("Refused (signature)", w.rejected.to_string()),
            ("In quarantine", st.in_quarantine.to_string()),
            ("Other topics", w.ignored.to_string()),
            ("Orders", st.orders.to_string()),
            ("Customers", st.customers.to_string()),
            (
                "Privacy requests",
                format!(
                    "{} exported, {} erased",
                    st.privacy.exported, st.privacy.erased
                ),
            ),
        ];
        main.push_str(&format!(
            "<section class=\"store\"><h2>{} <span class=\"platform\">{} &middot; {}</span></h2><dl class=\"figures\">",
            esc(&cfg.id),
            cfg.platform.name(),
            esc(&cfg.domain)
        ));
        for (name, value) in figures {
            main.push_str(&format!("<div><dt>{name}</dt><dd>{value}</dd></div>"));
        }
        main.push_str("</dl>");
        main.push_str(&touch_figures(&st.touches));
        main.push_str(&dead_letters(ctx, &cfg.id));
        main.push_str(&lift(ctx, cfg));
        main.push_str("</section>");
    }
    let sched = ctx
        .scheduler
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if sched.late_at_start > 0 {
        let o = sched.late_outcome;
        main.push_str(&format!(
            "<p class=\"touches\">At start-up {} touches had fallen due while the service was stopped: {} fired, {} deferred, {} skipped (misfire policy).</p>",
            sched.late_at_start, o.sent, o.deferred, o.skipped
        ));
    }
    if let Some(e) = &sched.last_error {
        main.push_str(&format!(
            "<ul class=\"notices\"><li class=\"warn\">The scheduler's last error: {}</li></ul>",
            esc(e)
        ));
    }
    let meta = format!(
        "version {} &middot; up {} &middot; {} events stored, {} processed &middot; database {}",
        env!("CARGO_PKG_VERSION"),
        uptime(ctx.started.elapsed().as_secs()),
        stored,
        processed,
        if writable {
            "writable"
        } else {
            "refusing writes"
        }
    );
    respond(rq, html(200, &fill_page("Status", &meta, &main, true)));
}

/// How long a store's lift section is reused.
const LIFT_FOR: std::time::Duration = std::time::Duration::from_secs(300);
/// The period the status page's lift section covers.
const LIFT_PERIOD: &str = "12w";

/// A store's lift section (`charts::lift_section`), made at most every `LIFT_FOR`.
fn lift(ctx: &AdminCtx, cfg: &crate::config::StoreConfig) -> String {
    let mut cache = ctx.lift.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((at, html)) = cache.get(&cfg.id) {
        if at.elapsed() < LIFT_FOR {
            return html.clone();
        }
    }
    let now = ctx.clock.now();
    let report =
        crate::ops::report_of(&ctx.storage, &ctx.config, cfg, Some(LIFT_PERIOD), None, now);
    let html = match report {
        Ok(r) => super::charts::lift_section(&r),
        Err(e) => format!(
            "<ul class=\"notices\"><li class=\"warn\">The lift report could not be made: {}</li></ul>",
            esc(&e.to_string())
        ),
    };
    cache.insert(cfg.id.clone(), (std::time::Instant::now(), html.clone()));
    html
}

/// A store's dead letters (the latest few, with the provider's reason) and its disabled
/// endpoints.
fn dead_letters(ctx: &AdminCtx, store: &str) -> String {
    let Ok(snap) = ctx.storage.snapshot() else {
        return String::new();
    };
    let mut out = String::new();
    for ch in ["webhook", "klaviyo"] {
        if let Ok(Some(why)) = snap.disabled(store, ch) {
            out.push_str(&format!(
                "<ul class=\"notices\"><li class=\"bad\">The {ch} endpoint is disabled: {}. Fix it, then <code>upsell-appliance deadletters retry TOUCH --store {}</code> (a touch it refused) enables it again.</li></ul>",
                esc(&why),
                esc(store)
            ));
        }
    }
    let dead = snap.dead_letters(store).unwrap_or_default();
    if dead.is_empty() {
        return out;
    }
    out.push_str(&format!(
        "<h3>Dead letters</h3><p class=\"touches\">{} touches a provider refused; <code>upsell-appliance deadletters list --store {}</code> shows them all, <code>retry</code> or <code>drop</code> settles one.</p><table class=\"touches\"><tr><th>touch</th><th>order</th><th>kind</th><th>reason</th></tr>",
        dead.len(),
        esc(store)
    ));
    for (id, t) in dead.iter().rev().take(5) {
        let reason = match &t.state {
            crate::storage::touches::TouchState::Dead { reason } => reason.as_str(),
            s => s.as_str(),
        };
        out.push_str(&format!(
            "<tr><td>{id}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&t.order),
            t.kind.as_str(),
            esc(reason)
        ));
    }
    out.push_str("</table>");
    out
}

/// A store's touches: pending by day (the next 14 days with any) and kind, then what was
/// sent, deferred and skipped, by rule.
fn touch_figures(t: &crate::storage::TouchFigures) -> String {
    let mut out = format!(
        "<h3>Touches</h3><p class=\"touches\">{} pending</p>",
        t.pending
    );
    if !t.pending_by_day.is_empty() {
        out.push_str(
            "<table class=\"touches\"><tr><th>due (UTC)</th><th>touches</th><th>kinds</th></tr>",
        );
        for d in t.pending_by_day.iter().take(14) {
            let kinds: Vec<String> = d.kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&d.day),
                d.total,
                esc(&kinds.join(", "))
            ));
        }
        let later: u64 = t.pending_by_day.iter().skip(14).map(|d| d.total).sum();
        if later > 0 {
            out.push_str(&format!("<tr><td>later</td><td>{later}</td><td></td></tr>"));
        }
        out.push_str("</table>");
    }
    for (name, map) in [
        ("Sent", &t.sent),
        ("Deferred", &t.deferred),
        ("Skipped", &t.skipped),
    ] {
        if map.is_empty() {
            continue;
        }
        let parts: Vec<String> = map
            .iter()
            .map(|(k, n)| format!("{} {n}", k.replace('_', " ")))
            .collect();
        out.push_str(&format!(
            "<p class=\"touches\">{name}: {}</p>",
            esc(&parts.join(", "))
        ));
    }
    out
}

/// `POST /login` with the form's `token`.
pub fn login(ctx: &AdminCtx, mut rq: Request) {
    let token = read_body(&mut rq, 4096)
        .ok()
        .and_then(|body| form_value(&body, "token"))
        .unwrap_or_default();
    if !crate::ingest::constant_time_eq(token.trim().as_bytes(), ctx.config.admin_token.as_bytes())
    {
        // Slows down guessing (the token is at least 16 random characters anyway).
        std::thread::sleep(std::time::Duration::from_millis(300));
        let why = "That is not this service's admin_token. Copy it again from the config file.";
        return respond(rq, login_page(401, Some(why)));
    }
    let issued = ctx.clock.now().0 / 1000;
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={COOKIE_MAX_AGE}",
        session_value(&ctx.config.admin_token, issued)
    );
    let resp = html(303, "<a href=\"/\">Continue</a>")
        .with_header(header("Location", "/"))
        .with_header(header("Set-Cookie", &cookie));
    respond(rq, resp);
}

/// `POST /logout`: forgets the cookie.
pub fn logout(rq: Request) {
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    let resp = html(303, "<a href=\"/\">Continue</a>")
        .with_header(header("Location", "/"))
        .with_header(header("Set-Cookie", &cookie));
    respond(rq, resp);
}

/// `GET /admin.css` (no secrets in it, so no sign-in).
pub fn css(rq: Request) {
    let resp = Response::from_data(CSS.as_bytes().to_vec())
        .with_header(header("Content-Type", "text/css; charset=utf-8"))
        .with_header(header("Cache-Control", "max-age=3600"));
    respond(rq, resp);
}

fn signed_in(ctx: &AdminCtx, rq: &Request) -> bool {
    if admin::bearer_ok(ctx, rq) {
        return true;
    }
    let now = ctx.clock.now().0 / 1000;
    let headers = headers_of(rq);
    let cookies = headers.get("cookie").unwrap_or("");
    cookies.split(';').any(|c| {
        let Some(value) = c
            .trim()
            .strip_prefix(COOKIE)
            .and_then(|v| v.strip_prefix('='))
        else {
            return false;
        };
        let Some(issued) = value.split('.').next().and_then(|t| t.parse::<i64>().ok()) else {
            return false;
        };
        // Not from the future (a minute of clock slack), not older than its max age.
        let fresh = issued <= now + 60 && now - issued <= i64::from(COOKIE_MAX_AGE);
        fresh
            && crate::ingest::constant_time_eq(
                value.as_bytes(),
                session_value(&ctx.config.admin_token, issued).as_bytes(),
            )
    })
}

/// The cookie value: when it was issued, and an HMAC of that under the admin token. The
/// server checks its age (it expires after [`COOKIE_MAX_AGE`] even if copied out of the
/// browser), and changing the token signs every browser out.
fn session_value(token: &str, issued_secs: i64) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(b"upsell-appliance status page session v1:");
    mac.update(issued_secs.to_string().as_bytes());
    let tag = crate::engine::hex(&mac.finalize().into_bytes());
    format!("{issued_secs}.{tag}")
}

fn login_page(status: u16, error: Option<&str>) -> Page {
    let error = error.map_or(String::new(), |e| {
        format!("<p class=\"error\">{}</p>", esc(e))
    });
    let main = LOGIN.replace("{{error}}", &error);
    html(status, &fill_page("Sign in", "", &main, false))
}

fn fill_page(title: &str, meta: &str, main: &str, signed_in: bool) -> String {
    let refresh = if signed_in {
        format!("<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">")
    } else {
        String::new()
    };
    let logout = if signed_in {
        "<form method=\"post\" action=\"/logout\"><button type=\"submit\">Sign out</button></form>"
    } else {
        ""
    };
    PAGE.replace("{{refresh}}", &refresh)
        .replace("{{title}}", &format!("{title} · upsell-appliance"))
        .replace("{{meta}}", meta)
        .replace("{{logout}}", logout)
        .replace("{{main}}", main)
}

pub(super) fn html(status: u16, body: &str) -> Page {
    Response::from_data(body.as_bytes().to_vec())
        .with_status_code(status)
        .with_header(header("Content-Type", "text/html; charset=utf-8"))
        .with_header(header(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ))
        .with_header(header("X-Content-Type-Options", "nosniff"))
        .with_header(header("Referrer-Policy", "no-referrer"))
        .with_header(header("Cache-Control", "no-store"))
}

/// Escapes text for HTML content and attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Turns `command` spans of an escaped notice into `<code>`.
fn code_spans(escaped: &str) -> String {
    let mut out = String::with_capacity(escaped.len());
    for (i, part) in escaped.split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str("<code>");
            out.push_str(part);
            out.push_str("</code>");
        } else {
            out.push_str(part);
        }
    }
    if escaped.matches('`').count() % 2 == 1 {
        return escaped.to_string(); // unbalanced: leave it as it is
    }
    out
}

fn uptime(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        3600..=86_399 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} days", secs / 86_400),
    }
}

/// One field of an `application/x-www-form-urlencoded` body.
pub(crate) fn form_value(body: &[u8], key: &str) -> Option<String> {
    let body = std::str::from_utf8(body).ok()?;
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (percent_decode(k)? == key).then(|| percent_decode(v))?
    })
}

pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_decoded() {
        assert_eq!(
            form_value(b"a=1&token=ab%2Bc+d%21", "token").as_deref(),
            Some("ab+c d!")
        );
        assert_eq!(form_value(b"token=%zz", "token"), None);
        assert_eq!(form_value(b"other=1", "token"), None);
    }

    #[test]
    fn commands_in_notices_become_code() {
        assert_eq!(
            code_spans("run `a b` or `c`."),
            "run <code>a b</code> or <code>c</code>."
        );
        assert_eq!(code_spans("one ` only"), "one ` only");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
