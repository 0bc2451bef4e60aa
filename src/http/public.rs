//! The public listener: platform webhooks (`POST /webhooks/{store}`), the links in
//! messages (`/r/...`, `/u/...`, see `links`) and `/healthz`. Customer data never leaves
//! through here.
//!
//! A webhook is verified and parsed on the worker, then handed to the writer with a reply
//! closure; the worker goes straight back to its next request, and the platform gets its
//! 2xx only once the delivery is durable.

use std::sync::Arc;

use crossbeam_channel::Sender;
use tiny_http::{Method, Request};

use super::{header, headers_of, read_body, respond, text, BodyError};
use crate::clock::Clock;
use crate::config::Config;
use crate::engine::{Platform, Source};
use crate::ingest::{self, woocommerce};
use crate::pipeline::writer::{Job, Outcome, Rejections, Reply};
use crate::storage::records::{EventHead, EventRecord};
use crate::storage::NewEvent;

pub struct PublicCtx {
    pub config: Arc<Config>,
    /// For the links in messages: clicks and unsubscribes are committed before the answer.
    pub storage: Arc<crate::storage::Storage>,
    pub link_keys: Arc<crate::outbound::LinkKeys>,
    pub jobs: Sender<Job>,
    pub rejections: Arc<Rejections>,
    pub clock: Arc<dyn Clock>,
}

pub fn handle(ctx: &PublicCtx, rq: Request) {
    let path = rq.url().split('?').next().unwrap_or("").to_string();
    let Some(rq) = super::links::handle(ctx, rq, &path) else {
        return;
    };
    let Some(rq) = super::offers::handle(ctx, rq, &path) else {
        return;
    };
    let method = rq.method().clone();
    if let Some((store, rest)) = path
        .strip_prefix("/webhooks/")
        .and_then(|p| p.split_once("/engagement"))
    {
        let secret = rest.strip_prefix('/').filter(|s| !s.is_empty());
        return match (method, rest.is_empty() || secret.is_some()) {
            (Method::Post, true) => engagement(ctx, rq, store, secret),
            (_, true) => respond(
                rq,
                text(405, "engagement webhooks are POSTed\n").with_header(header("Allow", "POST")),
            ),
            _ => respond(rq, text(404, "not found\n")),
        };
    }
    if let Some(store) = path.strip_prefix("/webhooks/") {
        if method == Method::Post {
            webhook(ctx, rq, store.trim_end_matches('/'));
        } else {
            respond(
                rq,
                text(405, "webhooks are POSTed\n").with_header(header("Allow", "POST")),
            );
        }
        return;
    }
    if let (Some(rest), Method::Post) = (path.strip_prefix("/sms/"), &method) {
        if let Some(store) = rest.strip_suffix("/inbound") {
            return sms_inbound(ctx, rq, store);
        }
    }
    match (&method, path.as_str()) {
        (Method::Get | Method::Head, "/healthz") => healthz(ctx, rq),
        _ => respond(rq, text(404, "not found\n")),
    }
}

/// `POST /sms/{store}/inbound`: the store's Twilio number's messaging webhook. A STOP reply
/// (signed by Twilio) puts the number on the suppression list before the answer.
fn sms_inbound(ctx: &PublicCtx, mut rq: Request, store_id: &str) {
    let Some(twilio) = ctx
        .config
        .store(store_id)
        .and_then(|s| s.channels.twilio.as_ref())
    else {
        respond(rq, text(404, "no store here sends SMS through Twilio\n"));
        return;
    };
    let Ok(body) = read_body(&mut rq, 64 * 1024) else {
        respond(rq, text(400, "the form could not be read\n"));
        return;
    };
    let params = ingest::twilio::parse_form(&body);
    // Twilio signs the URL it called: our public_url and this path and query.
    let url = format!(
        "{}{}",
        ctx.config.public_url.trim_end_matches('/'),
        rq.url()
    );
    let given = headers_of(&rq)
        .get("x-twilio-signature")
        .unwrap_or("")
        .to_string();
    if !ingest::twilio::verify(twilio.auth_token.expose(), &url, &params, &given) {
        respond(
            rq,
            text(
                403,
                "X-Twilio-Signature does not match this store's auth token and public_url\n",
            ),
        );
        return;
    }
    if let Some(phone) = ingest::twilio::opt_out(&params) {
        let key = crate::storage::plans::suppression_key(&phone);
        if let Ok(key) = key {
            let row = crate::storage::plans::SuppressionRow {
                reason: crate::engine::plan::Suppressed::Unsubscribed,
                at: ctx.clock.now(),
                source: "SMS STOP reply".into(),
            };
            if let Err(e) = ctx.storage.suppress(store_id, &[(key, row)]) {
                log::error!("sms: recording a STOP reply: {e}");
                respond(rq, text(503, "try again\n"));
                return;
            }
        }
    }
    respond(
        rq,
        tiny_http::Response::from_string("<Response/>")
            .with_header(header("Content-Type", "text/xml")),
    );
}

/// `POST /webhooks/{store}/engagement[/{secret}]`: opens, clicks, bounces, complaints and
/// unsubscribes from the email provider (`ingest::engagement`), authenticated by basic auth
/// or the secret path segment. Everything in a delivery is committed in one transaction
/// before the 200; a wrong credential is a 401 and records nothing.
fn engagement(ctx: &PublicCtx, mut rq: Request, store_id: &str, secret: Option<&str>) {
    use crate::engine::plan::Suppressed;
    use crate::ingest::engagement::{self as eng, Kind};
    use crate::storage::plans::{suppression_key, SuppressionRow};
    let Some((store, auth)) = ctx
        .config
        .store(store_id)
        .and_then(|s| s.engagement.as_ref().map(|a| (s, a)))
    else {
        let msg = format!("no engagement intake is configured for store {store_id:?}; set [stores.engagement] (README \"Engagement\")\n");
        return respond(rq, text(404, &msg));
    };
    let eq = |a: &str, b: &str| crate::engine::constant_time_eq(a.as_bytes(), b.as_bytes());
    let authorised = match secret {
        Some(s) => auth.path_secret.as_ref().is_some_and(|p| eq(p.expose(), s)),
        None => {
            use base64::Engine as _;
            let given = headers_of(&rq)
                .get("authorization")
                .and_then(|h| h.strip_prefix("Basic ").map(str::trim).map(str::to_string))
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .and_then(|b| String::from_utf8(b).ok());
            match (&auth.basic_auth, given) {
                (Some(want), Some(given)) => eq(want.expose(), &given),
                _ => false,
            }
        }
    };
    if !authorised {
        ctx.rejections.add(&store.id);
        return respond(
            rq,
            text(401, "wrong or missing credentials for this store's engagement webhook (basic auth or the secret path, as in [stores.engagement])\n")
                .with_header(header("WWW-Authenticate", "Basic realm=\"upsell-appliance engagement\"")),
        );
    }
    let body = match read_body(&mut rq, ctx.config.max_body_bytes) {
        Ok(b) => b,
        Err(e) => return respond(rq, body_refused(ctx, e)),
    };
    let items = match eng::parse(&body) {
        Ok(items) => items,
        Err(e) => return respond(rq, text(400, &format!("{e}\n"))),
    };
    let now = ctx.clock.now();
    let snap = match ctx.storage.snapshot() {
        Ok(s) => s,
        Err(e) => return respond(rq, unavailable(&e.to_string())),
    };
    let mut w = crate::storage::touches::EngagementWrites::default();
    let mut ignored = 0;
    for e in items {
        // The touch, if it is one of this store's.
        let touch = e
            .touch
            .and_then(|id| snap.touch(id).ok().flatten().map(|t| (id, t)))
            .filter(|(_, t)| t.store == store.id);
        let at = e.at.unwrap_or(now);
        match (e.kind, &touch) {
            (Kind::Open, Some((id, _))) => w.opens.push((*id, at)),
            (Kind::Click, Some((id, _))) => w.clicks.push((*id, at)),
            (Kind::Open | Kind::Click, None) => ignored += 1,
            (Kind::Bounce | Kind::Complaint | Kind::Unsubscribe, _) => {
                // The address reported, else the touch's customer's email.
                let email = e.email.clone().or_else(|| {
                    let (_, t) = touch.as_ref()?;
                    super::links::addresses(&snap, t).0
                });
                let Some(key) = email.and_then(|m| suppression_key(&m).ok()) else {
                    ignored += 1;
                    continue;
                };
                let (reason, source) = match e.kind {
                    Kind::Complaint => (
                        Suppressed::Complained,
                        "spam complaint (engagement webhook)",
                    ),
                    Kind::Unsubscribe => (
                        Suppressed::Unsubscribed,
                        "unsubscribed at the email provider",
                    ),
                    _ => (
                        Suppressed::Manual("the email provider reported a hard bounce".into()),
                        "hard bounce (engagement webhook)",
                    ),
                };
                w.suppressions.push((
                    key,
                    SuppressionRow {
                        reason,
                        at,
                        source: source.into(),
                    },
                ));
            }
        }
    }
    match ctx.storage.record_engagement(&store.id, &w) {
        Ok(()) => respond(
            rq,
            super::json(
                200,
                &serde_json::json!({"opens": w.opens.len(), "clicks": w.clicks.len(),
                    "suppressed": w.suppressions.len(), "ignored": ignored}),
            ),
        ),
        Err(e) => respond(rq, unavailable(&e.to_string())),
    }
}

fn webhook(ctx: &PublicCtx, mut rq: Request, store_id: &str) {
    let Some(store) = ctx.config.store(store_id) else {
        respond(
            rq,
            text(404, &format!("no store {store_id:?} is configured here\n")),
        );
        return;
    };
    let body = match read_body(&mut rq, ctx.config.max_body_bytes) {
        Ok(b) => b,
        Err(e) => return respond(rq, body_refused(ctx, e)),
    };
    let headers = headers_of(&rq);
    let secrets = &store.webhook_secrets;
    let received = match store.platform {
        Platform::Shopify => ingest::shopify::receive(headers, body, secrets).map(Some),
        Platform::WooCommerce => {
            ingest::woocommerce::receive(headers, body, secrets).map(|r| match r {
                woocommerce::Received::Ping => None,
                woocommerce::Received::Delivery(inbound) => Some(inbound),
            })
        }
        Platform::BigCommerce => {
            let header = &store.webhook_secret_header;
            ingest::bigcommerce::receive(headers, body, header, secrets).map(Some)
        }
    };
    let inbound = match received {
        Ok(Some(i)) => i,
        // WooCommerce's creation ping: exactly 200, nothing stored.
        Ok(None) => {
            respond(rq, tiny_http::Response::empty(200));
            return;
        }
        Err(e) => {
            ctx.rejections.add(&store.id);
            respond(rq, text(401, &format!("{e}\n")));
            return;
        }
    };
    let record = EventRecord {
        head: EventHead {
            store: store.id.clone(),
            platform: store.platform,
            source: Source::Webhook,
            received_at: ctx.clock.now(),
            topic: inbound.topic,
            dedupe_key: inbound.dedupe_key,
            headers: inbound.headers.0,
            parsed: crate::pipeline::record_of(inbound.parsed),
        },
        body: inbound.body,
    };
    let event = match NewEvent::encode(&record) {
        Ok(e) => e,
        Err(e) => {
            respond(rq, text(500, &format!("cannot encode the delivery: {e}\n")));
            return;
        }
    };
    let reply: Reply = Box::new(move |outcome: Outcome| match outcome {
        Ok(_) => respond(rq, tiny_http::Response::empty(200)),
        Err(e) => respond(rq, unavailable(&e.to_string())),
    });
    send(ctx, Job::Deliver(event, reply));
}

/// The answer to a webhook whose body could not be read.
fn body_refused(ctx: &PublicCtx, e: BodyError) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    match e {
        BodyError::TooLarge => {
            let msg = format!(
                "body is larger than max_body_kb = {}\n",
                ctx.config.max_body_bytes / 1024
            );
            text(413, &msg).with_header(header("Connection", "close"))
        }
        BodyError::Busy => unavailable("too many request bodies are being received at once"),
        BodyError::Stalled => {
            let msg = "the rest of the body stopped arriving (nothing for the socket timeout); send the request again\n";
            text(408, msg).with_header(header("Connection", "close"))
        }
        BodyError::Io(e) => text(400, &format!("could not read the body: {e}\n")),
    }
}

fn healthz(ctx: &PublicCtx, rq: Request) {
    let reply: Reply = Box::new(move |outcome: Outcome| match outcome {
        Ok(_) => respond(rq, text(200, "ok\n")),
        Err(e) => respond(rq, unavailable(&e.to_string())),
    });
    send(ctx, Job::Probe(reply));
}

/// Hands a job to the writer; if it has stopped, the job's own reply says so.
fn send(ctx: &PublicCtx, job: Job) {
    if let Err(crossbeam_channel::SendError(job)) = ctx.jobs.send(job) {
        let failed = Err(crate::pipeline::writer::CommitFailed(
            "the service is shutting down".into(),
        ));
        match job {
            Job::Deliver(_, reply) | Job::Probe(reply) => reply(failed),
        }
    }
}

fn unavailable(why: &str) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    text(503, &format!("{why}; try again later\n")).with_header(header("Retry-After", "5"))
}
