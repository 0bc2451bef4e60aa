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
    // A store's own intakes: /webhooks/{store}/{intake}[/{path secret}].
    if let Some((store, intake, secret)) = path.strip_prefix("/webhooks/").and_then(|p| {
        let mut parts = p.splitn(3, '/');
        let store = parts.next()?;
        let intake = Intake::of(parts.next()?)?;
        Some((store, intake, parts.next().filter(|s| !s.is_empty())))
    }) {
        if secret.is_some() && intake != Intake::Engagement {
            return respond(rq, text(404, "not found\n"));
        }
        if method != Method::Post {
            let msg = format!("{} webhooks are POSTed\n", intake.name());
            return respond(rq, text(405, &msg).with_header(header("Allow", "POST")));
        }
        return self::intake(ctx, rq, store, intake, secret);
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

/// A store's intake other than its platform's webhooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Intake {
    Engagement,
    Helpdesk,
    Delivery,
}

impl Intake {
    fn of(segment: &str) -> Option<Intake> {
        match segment {
            "engagement" => Some(Intake::Engagement),
            "helpdesk" => Some(Intake::Helpdesk),
            "delivery" => Some(Intake::Delivery),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Intake::Engagement => "engagement",
            Intake::Helpdesk => "helpdesk",
            Intake::Delivery => "delivery",
        }
    }

    /// The config table that enables it.
    fn table(self) -> &'static str {
        match self {
            Intake::Engagement => "[stores.engagement]",
            Intake::Helpdesk => "[stores.helpdesk]",
            Intake::Delivery => "[stores.carrier]",
        }
    }

    fn readme(self) -> &'static str {
        match self {
            Intake::Engagement => "Engagement",
            Intake::Helpdesk => "Helpdesk",
            Intake::Delivery => "Delivery tracking",
        }
    }
}

/// `POST /webhooks/{store}/{engagement|helpdesk|delivery}`: checks the store's
/// credentials for the intake (a wrong one is a 401 and records nothing), reads the body
/// and hands it to the intake.
fn intake(ctx: &PublicCtx, mut rq: Request, store_id: &str, which: Intake, secret: Option<&str>) {
    let store = ctx.config.store(store_id);
    let auth = store.and_then(|s| match which {
        Intake::Engagement => s.engagement.as_ref(),
        Intake::Helpdesk => s.helpdesk.as_ref(),
        Intake::Delivery => s.carrier.as_ref(),
    });
    let (Some(store), Some(auth)) = (store, auth) else {
        let msg = format!(
            "no {} intake is configured for store {store_id:?}; set {} (README \"{}\")\n",
            which.name(),
            which.table(),
            which.readme()
        );
        return respond(rq, text(404, &msg));
    };
    let headers = headers_of(&rq);
    // Without a signature, the credentials are in the URL or the headers: a stranger's
    // request is refused before its body is read.
    let signed = headers.get(ingest::SIGNATURE_HEADER).is_some();
    let body = if signed || ingest::intake_authorised(auth, &headers, secret, &[]) {
        match read_body(&mut rq, ctx.config.max_body_bytes) {
            Ok(b) => Some(b),
            Err(e) => return respond(rq, body_refused(ctx, e)),
        }
    } else {
        None
    };
    let body = body.filter(|b| ingest::intake_authorised(auth, &headers, secret, b));
    let Some(body) = body else {
        ctx.rejections.add(&store.id);
        let msg = format!(
            "wrong or missing credentials for this store's {} webhook (as set in {}: basic auth, the secret header or path, or X-Upsell-Signature)\n",
            which.name(),
            which.table()
        );
        let realm = format!("Basic realm=\"upsell-appliance {}\"", which.name());
        return respond(
            rq,
            text(401, &msg).with_header(header("WWW-Authenticate", &realm)),
        );
    };
    match which {
        Intake::Engagement => engagement(ctx, rq, store, &body),
        Intake::Helpdesk => helpdesk(ctx, rq, store, &body),
        Intake::Delivery => delivery(ctx, rq, store, headers, body),
    }
}

/// Opens, clicks, bounces, complaints and unsubscribes from the email provider
/// (`ingest::engagement`). Everything in a delivery is committed in one transaction
/// before the 200.
fn engagement(ctx: &PublicCtx, rq: Request, store: &crate::config::StoreConfig, body: &[u8]) {
    use crate::engine::plan::Suppressed;
    use crate::ingest::engagement::{self as eng, Kind};
    use crate::storage::plans::{suppression_key, SuppressionRow};
    let items = match eng::parse(body) {
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
        Platform::Shopify => {
            ingest::shopify::receive(headers, body, secrets, &store.domain).map(Some)
        }
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
    deliver(ctx, rq, store, inbound);
}

/// Ticket reports from the help desk (`ingest::helpdesk`): every report in a delivery is
/// applied in one durable transaction before the 200 (`storage::intake::apply_tickets`:
/// waits, resumes, recovery notices).
fn helpdesk(ctx: &PublicCtx, rq: Request, store: &crate::config::StoreConfig, body: &[u8]) {
    use crate::storage::intake::TicketChange;
    let updates = match crate::ingest::helpdesk::parse(body) {
        Ok(u) => u,
        Err(e) => return respond(rq, text(400, &format!("{e}\n"))),
    };
    let now = ctx.clock.now();
    let mut changes = Vec::new();
    for u in updates {
        let Ok(contact) = crate::storage::plans::suppression_key(&u.email) else {
            let msg = format!("customer_email {:?} is not an email address\n", u.email);
            return respond(rq, text(400, &msg));
        };
        changes.push(TicketChange {
            contact,
            ticket: u.ticket,
            open: u.open,
            csat: u.csat,
            // Never later than now: a sender's clock ahead must not freeze the ticket
            // against every later report.
            at: u.at.unwrap_or(now).min(now),
        });
    }
    match ctx.storage.apply_tickets(&store.id, &changes, now) {
        Ok(applied) => respond(
            rq,
            super::json(200, &serde_json::to_value(applied).unwrap_or_default()),
        ),
        Err(e) => respond(rq, unavailable(&e.to_string())),
    }
}

/// A signed carrier delivery event: stored like a platform's delivery (durable before the
/// 200, deduplicated by its body) and applied to the order's delivery state.
fn delivery(
    ctx: &PublicCtx,
    rq: Request,
    store: &crate::config::StoreConfig,
    headers: crate::ingest::Headers,
    body: Vec<u8>,
) {
    match ingest::carrier::receive(headers, body) {
        Ok(inbound) => deliver(ctx, rq, store, inbound),
        Err(e) => respond(rq, text(400, &format!("{e}\n"))),
    }
}

/// Hands a verified delivery to the writer; the reply is the 200 once it is durable.
fn deliver(
    ctx: &PublicCtx,
    rq: Request,
    store: &crate::config::StoreConfig,
    inbound: ingest::Inbound,
) {
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
