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
                eprintln!("sms: recording a STOP reply: {e}");
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
        Err(BodyError::TooLarge) => {
            let msg = format!(
                "body is larger than max_body_kb = {}\n",
                ctx.config.max_body_bytes / 1024
            );
            respond(
                rq,
                text(413, &msg).with_header(header("Connection", "close")),
            );
            return;
        }
        Err(BodyError::Busy) => {
            respond(
                rq,
                unavailable("too many request bodies are being received at once"),
            );
            return;
        }
        Err(BodyError::Stalled) => {
            let msg = "the rest of the body stopped arriving (nothing for the socket timeout); send the request again\n";
            respond(
                rq,
                text(408, msg).with_header(header("Connection", "close")),
            );
            return;
        }
        Err(BodyError::Io(e)) => {
            respond(rq, text(400, &format!("could not read the body: {e}\n")));
            return;
        }
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
