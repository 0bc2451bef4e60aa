//! Deciding again when a touch falls due: send it now, defer it (with the time and the
//! reason), or skip it (with the reason). Pure: the scheduler loads the state the checks
//! read and hands over `now`; caps and quiet hours are computed in the customer's time zone.

use chrono::{TimeZone, Timelike};
use serde::{Deserialize, Serialize};

use super::lifecycle::Status;
use super::model::Timestamp;
use super::plan::{Channel, Suppressed, TouchKind};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// What to do with a due touch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Send,
    /// `code` names the rule (for counts on the status page), `reason` says it in words.
    Defer {
        until: Timestamp,
        reason: String,
        code: &'static str,
    },
    Skip {
        reason: String,
        code: &'static str,
    },
}

/// Frequency caps per customer, over any 7 days.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    pub emails_per_week: usize,
    pub sms_per_week: usize,
    pub messages_per_week: usize,
    /// An SMS suppresses email for this long.
    pub sms_quiets_email_hours: i64,
}

impl Default for Caps {
    fn default() -> Caps {
        Caps {
            emails_per_week: 2,
            sms_per_week: 1,
            messages_per_week: 3,
            sms_quiets_email_hours: 48,
        }
    }
}

/// The store's rules for due touches.
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    pub caps: Caps,
    /// SMS quiet hours in the customer's time zone: from this hour until `quiet_until`.
    pub quiet_from: u32,
    pub quiet_until: u32,
    /// How late a touch may still go out after downtime.
    pub grace: Grace,
    /// Lateness below this is the scheduler's own latency, never stale (on a fast demo
    /// clock a second of real time is hours).
    pub latency_ms: i64,
    /// How long touch-1 waits after the order for a page-offer acceptance to arrive.
    pub page_signal_buffer_ms: i64,
    /// How often a touch held by an open ticket or a missing delivery is looked at again.
    pub recheck_ms: i64,
    pub stock_threshold: i64,
}

/// How late a touch may still go out after downtime (ms), by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grace {
    pub page: i64,
    pub touch1: i64,
    pub sms: i64,
    /// Touch-2, the review, touch-3, the win-back and anticipation (day-N touches).
    pub later: i64,
}

impl Default for Grace {
    /// Touch-1 2 h, SMS 6 h, day-N touches 2 days.
    fn default() -> Grace {
        Grace {
            page: 30 * MINUTE,
            touch1: 2 * HOUR,
            sms: 6 * HOUR,
            later: 2 * DAY,
        }
    }
}

impl Grace {
    pub fn of(&self, kind: TouchKind) -> i64 {
        match kind {
            TouchKind::Page => self.page,
            TouchKind::Touch1 => self.touch1,
            TouchKind::Sms => self.sms,
            _ => self.later,
        }
    }
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            caps: Caps::default(),
            quiet_from: 21,
            quiet_until: 8,
            grace: Grace::default(),
            latency_ms: 0,
            page_signal_buffer_ms: 5 * MINUTE,
            recheck_ms: 6 * HOUR,
            stock_threshold: 10,
        }
    }
}

/// What a store says about its deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliveryRules {
    /// The platform sends delivery events (Shopify `fulfillment_events/create`). When it
    /// does not, an order counts as delivered `transit_days` after it shipped.
    pub events: bool,
    pub transit_days: i64,
}

impl Default for DeliveryRules {
    fn default() -> DeliveryRules {
        DeliveryRules {
            events: true,
            transit_days: 4,
        }
    }
}

/// What is known of an order's delivery.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryFacts {
    pub shipped_at: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
    pub estimate: Option<Timestamp>,
    /// The latest failed delivery attempt.
    pub failed_at: Option<Timestamp>,
}

impl DeliveryFacts {
    /// With a delivery told by hand (`order delivered`), which takes precedence.
    pub fn told_by_hand(self, at: Option<Timestamp>) -> DeliveryFacts {
        DeliveryFacts {
            delivered_at: at.or(self.delivered_at),
            ..self
        }
    }

    /// A failed delivery not followed by a reported one (an event or told by hand; not
    /// the transit-days estimate): the review request and touch-2 wait.
    pub fn failed(&self) -> Option<Timestamp> {
        self.failed_at.filter(|_| self.delivered_at.is_none())
    }

    /// When the order counts as delivered: the delivery event's time, or for a store
    /// without delivery events, the shipping time plus the transit days.
    pub fn delivered(&self, rules: &DeliveryRules) -> Option<Timestamp> {
        self.delivered_at
            .or_else(|| match (rules.events, self.shipped_at) {
                (false, Some(s)) => Some(Timestamp(s.0 + rules.transit_days * DAY)),
                _ => None,
            })
    }
}

/// Due times of the delivery-anchored touches, from what is known of the delivery.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Anchors {
    /// The review request: days after delivery, or (provisionally) after the carrier's
    /// estimate.
    pub review: Option<Timestamp>,
    /// Touch-2: days after delivery, once it is known.
    pub touch2: Option<Timestamp>,
}

impl Anchors {
    /// Where a touch of `kind` goes, if it moves with the delivery.
    pub fn of(self, kind: TouchKind, after_delivery: bool) -> Option<Timestamp> {
        match kind {
            TouchKind::Review if after_delivery => self.review,
            TouchKind::Touch2 => self.touch2,
            _ => None,
        }
    }

    /// Never in the past: a delivery learned late sends what is due at once rather than
    /// leaving it to be skipped as stale.
    pub fn not_before(self, now: Timestamp) -> Anchors {
        let clamp = |t: Option<Timestamp>| t.map(|t| Timestamp(t.0.max(now.0)));
        Anchors {
            review: clamp(self.review),
            touch2: clamp(self.touch2),
        }
    }
}

/// Where the delivery-anchored touches go, given the facts (`None`: where they are).
pub fn anchors(
    facts: &DeliveryFacts,
    rules: &DeliveryRules,
    cadence: &super::plan::Cadence,
) -> Anchors {
    let delivered = facts.delivered(rules);
    let after = |t: Timestamp, days: i64| Timestamp(t.0 + days * DAY);
    Anchors {
        review: delivered
            .or(facts.estimate)
            .map(|t| after(t, cadence.review_days_after_delivery)),
        touch2: delivered.map(|t| after(t, cadence.touch2_days_after_delivery)),
    }
}

/// The touch that fell due.
#[derive(Clone, Debug, PartialEq)]
pub struct Due {
    pub kind: TouchKind,
    pub channel: Channel,
    /// When it was due (after any earlier deferral).
    pub due_at: Timestamp,
    pub order_at: Timestamp,
    /// Waits for a delivery event (the review request).
    pub after_delivery: bool,
    /// It carries the plan's offer (page, touch-1, SMS, touch-2 and a durable's touch-3).
    pub carries_offer: bool,
}

/// A support ticket of the customer's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub id: String,
    pub open: bool,
    /// Satisfaction 1-5 once closed, where known.
    pub csat: Option<u8>,
    /// A poor rating a person has dealt with (`customer clear`): marketing may resume.
    pub cleared: bool,
}

impl Ticket {
    /// Closed with a rating of 1-2 that no person has cleared yet: the customer is on the
    /// recovery path, and gets no marketing.
    pub fn needs_recovery(&self) -> bool {
        needs_recovery(self.open, self.csat, self.cleared)
    }
}

/// The rule of [`Ticket::needs_recovery`], for a ticket however it is held.
pub fn needs_recovery(open: bool, csat: Option<u8>, cleared: bool) -> bool {
    !open && csat.is_some_and(|c| c <= 2) && !cleared
}

/// The reason a touch waits for an open ticket; `waits_for_ticket` recognises it in a
/// stored deferral, so closing the ticket can bring the touch forward.
fn ticket_wait(id: &str) -> String {
    format!("support ticket {id} is open: waits until it closes")
}

/// Whether a stored deferral reason is a wait for an open ticket.
pub fn waits_for_ticket(reason: &str) -> bool {
    reason.starts_with("support ticket ") && reason.ends_with(" is open: waits until it closes")
}

/// Everything the checks read, as it is now.
#[derive(Clone, Debug, PartialEq)]
pub struct State<'a> {
    pub status: &'a Status,
    pub refunded_at: Option<Timestamp>,
    pub suppressed: Option<&'a Suppressed>,
    pub page_offer_accepted: bool,
    pub tickets: &'a [Ticket],
    /// Whether each of the customer's last emails was opened, newest first; `None` when
    /// opens cannot be known (sent by Klaviyo, or SMS).
    pub recent_opens: Option<&'a [bool]>,
    /// Units in stock of the offered product, where known.
    pub offer_stock: Option<i64>,
    pub delivered_at: Option<Timestamp>,
    /// A failed delivery attempt with no delivery since (`DeliveryFacts::failed`).
    pub delivery_failed_at: Option<Timestamp>,
    /// The customer's messages already sent: (when, channel), any order.
    pub sent: &'a [(Timestamp, Channel)],
    /// The customer's time zone (the shipping address's, else the store's).
    pub tz: chrono_tz::Tz,
}

/// Decides what to do with a touch that is due at `now`.
pub fn on_due(touch: &Due, state: &State<'_>, rules: &Rules, now: Timestamp) -> Action {
    let skip = |code: &'static str, reason: String| Action::Skip { reason, code };
    match state.status {
        Status::Cancelled { .. } => return skip("cancelled", "the order was cancelled".into()),
        Status::Ended { by_order, .. } => {
            return skip(
                "bought_again",
                format!("the customer bought again (order {by_order}): this sequence ended"),
            )
        }
        Status::Active => {}
    }
    if let Some(s) = state.suppressed {
        return skip(
            "suppressed",
            match s {
                Suppressed::Unsubscribed => "the customer unsubscribed".into(),
                Suppressed::Complained => "the customer complained (marked as spam)".into(),
                Suppressed::Manual(r) => format!("suppressed by the store: {r}"),
            },
        );
    }
    if let Some(at) = state.refunded_at {
        return skip(
            "refunded",
            format!("the order was refunded on {}", at.to_rfc3339()),
        );
    }
    if touch.kind == TouchKind::Touch1 && state.page_offer_accepted {
        return skip(
            "page_offer_accepted",
            "the thank-you page offer was accepted".into(),
        );
    }
    let late = now.0 - touch.due_at.0;
    let grace = rules.grace.of(touch.kind).max(rules.latency_ms);
    if late > grace {
        return skip(
            "stale",
            format!(
                "stale: due {}, {} late, over the {} grace for {}",
                touch.due_at.to_rfc3339(),
                span(late),
                span(grace),
                touch.kind.as_str()
            ),
        );
    }
    if let Some(t) = state.tickets.iter().find(|t| t.needs_recovery()) {
        return skip(
            "poor_rating",
            format!(
                "ticket {} closed with a poor rating ({}/5): a person follows up, no marketing until `customer clear`",
                t.id,
                t.csat.unwrap_or_default()
            ),
        );
    }
    if let Some(t) = state.tickets.iter().find(|t| t.open) {
        return Action::Defer {
            until: Timestamp(now.0 + rules.recheck_ms),
            reason: ticket_wait(&t.id),
            code: "ticket_open",
        };
    }
    let engagement_rule = matches!(touch.kind, TouchKind::Touch2 | TouchKind::Touch3)
        && touch.channel == Channel::Email;
    if let (true, Some(opens)) = (engagement_rule, state.recent_opens) {
        if opens.len() >= 4 && opens[..4].iter().all(|o| !o) {
            return skip(
                "not_engaged",
                "no opens on the customer's last 4 emails".into(),
            );
        }
    }
    if let (true, Some(n)) = (touch.carries_offer, state.offer_stock) {
        if n < rules.stock_threshold {
            return skip(
                "low_stock",
                format!(
                    "the offered product is down to {n} in stock (threshold {})",
                    rules.stock_threshold
                ),
            );
        }
    }
    if touch.kind == TouchKind::Anticipation {
        if let Some(at) = state.delivered_at {
            return skip(
                "already_delivered",
                format!(
                    "already delivered on {}: nothing to anticipate",
                    at.to_rfc3339()
                ),
            );
        }
    }
    let waits_for_delivery = touch.after_delivery || touch.kind == TouchKind::Touch2;
    if let (true, Some(at)) = (waits_for_delivery, state.delivery_failed_at) {
        return Action::Defer {
            until: Timestamp(now.0 + rules.recheck_ms),
            reason: format!(
                "the delivery failed on {}: waits until it is delivered",
                at.to_rfc3339()
            ),
            code: "delivery_failed",
        };
    }
    if touch.after_delivery && state.delivered_at.is_none() {
        return Action::Defer {
            until: Timestamp(now.0 + rules.recheck_ms),
            reason: "not delivered yet: the review request waits for a delivery event".into(),
            code: "awaiting_delivery",
        };
    }
    if touch.kind == TouchKind::Touch1 {
        let signal = touch.order_at.0 + rules.page_signal_buffer_ms;
        if now.0 < signal {
            return Action::Defer {
                until: Timestamp(signal),
                reason: "waits for a page-offer acceptance to arrive".into(),
                code: "page_signal",
            };
        }
    }
    if let Some((until, why)) = capped(touch.channel, state.sent, &rules.caps, now) {
        return Action::Defer {
            until,
            reason: format!("frequency cap: {why}"),
            code: "frequency_cap",
        };
    }
    if touch.channel == Channel::Sms {
        if let Some(until) = quiet_end(state.tz, rules, now) {
            return Action::Defer {
                until,
                reason: format!(
                    "quiet hours ({:02}:00-{:02}:00 in {})",
                    rules.quiet_from,
                    rules.quiet_until,
                    state.tz.name()
                ),
                code: "quiet_hours",
            };
        }
    }
    Action::Send
}

fn span(ms: i64) -> String {
    if ms >= DAY && ms % DAY == 0 {
        format!("{} d", ms / DAY)
    } else if ms >= HOUR {
        format!("{:.1} h", ms as f64 / HOUR as f64)
    } else {
        format!("{} min", ms / MINUTE)
    }
}

/// The first moment from `now` at which one more message on `channel` fits the caps, if
/// it does not fit now, and which cap holds it.
fn capped(
    channel: Channel,
    sent: &[(Timestamp, Channel)],
    caps: &Caps,
    now: Timestamp,
) -> Option<(Timestamp, String)> {
    // The thank-you page is not a message; email, SMS and webhooks (to the store's own
    // messaging) are.
    let message = |c: Channel| c != Channel::Page;
    if !message(channel) {
        return None;
    }
    let mut t = now.0;
    let mut held: Option<String> = None;
    // A message sent at `s` counts in the window (t - 7 d, t]. Each step moves `t` to when
    // the message that holds it leaves the window, so this ends within as many steps as
    // there are messages.
    for _ in 0..=sent.len() + 1 {
        let in_week = |c: Option<Channel>| -> Vec<i64> {
            let mut v: Vec<i64> = sent
                .iter()
                .filter(|(at, ch)| {
                    at.0 > t - 7 * DAY && at.0 <= t && message(*ch) && c.is_none_or(|c| c == *ch)
                })
                .map(|(at, _)| at.0)
                .collect();
            v.sort_unstable();
            v
        };
        let (same, limit, what) = match channel {
            Channel::Sms => (in_week(Some(Channel::Sms)), caps.sms_per_week, "SMS"),
            Channel::Email => (
                in_week(Some(Channel::Email)),
                caps.emails_per_week,
                "emails",
            ),
            _ => (Vec::new(), usize::MAX, ""),
        };
        let all = in_week(None);
        let mut next = None;
        if same.len() >= limit.max(1) {
            next = Some((
                same[same.len() - limit.max(1)] + 7 * DAY,
                format!("{limit} {what} in 7 days"),
            ));
        } else if all.len() >= caps.messages_per_week.max(1) {
            next = Some((
                all[all.len() - caps.messages_per_week.max(1)] + 7 * DAY,
                format!("{} messages in 7 days", caps.messages_per_week),
            ));
        } else if channel == Channel::Email {
            let quiet = caps.sms_quiets_email_hours * HOUR;
            if let Some(last_sms) = sent
                .iter()
                .filter(|(at, ch)| *ch == Channel::Sms && at.0 <= t && at.0 > t - quiet)
                .map(|(at, _)| at.0)
                .max()
            {
                next = Some((
                    last_sms + quiet,
                    format!(
                        "an SMS went out in the last {} h",
                        caps.sms_quiets_email_hours
                    ),
                ));
            }
        }
        match next {
            Some((at, why)) => {
                t = at;
                held.get_or_insert(why);
            }
            None => break,
        }
    }
    held.map(|why| (Timestamp(t), why))
}

/// When the SMS quiet hours that `now` falls in end, in the customer's zone.
fn quiet_end(tz: chrono_tz::Tz, rules: &Rules, now: Timestamp) -> Option<Timestamp> {
    let local = tz.timestamp_millis_opt(now.0).single()?;
    let h = local.hour();
    let quiet = if rules.quiet_from > rules.quiet_until {
        h >= rules.quiet_from || h < rules.quiet_until
    } else {
        h >= rules.quiet_from && h < rules.quiet_until
    };
    if !quiet {
        return None;
    }
    let mut day = local.date_naive();
    if h >= rules.quiet_until {
        day = day.succ_opt()?;
    }
    let wake = day.and_hms_opt(rules.quiet_until, 0, 0)?;
    // A wake-up hour inside a DST gap does not exist that day: the first instant after.
    let at = tz.from_local_datetime(&wake).earliest().or_else(|| {
        tz.from_local_datetime(&(wake + chrono::Duration::hours(1)))
            .earliest()
    })?;
    Some(Timestamp(at.timestamp_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-20T15:00:00Z, 10:00 in New York.
    const T0: i64 = 1_795_186_800_000;

    /// One decision's inputs, defaulting to: touch-1 email of an active plan, due 20
    /// minutes after the order and looked at on time, nothing holding it.
    struct Case {
        touch: Due,
        status: Status,
        refunded_at: Option<Timestamp>,
        suppressed: Option<Suppressed>,
        page_offer_accepted: bool,
        tickets: Vec<Ticket>,
        opens: Option<Vec<bool>>,
        stock: Option<i64>,
        delivered_at: Option<Timestamp>,
        failed_at: Option<Timestamp>,
        sent: Vec<(Timestamp, Channel)>,
        tz: chrono_tz::Tz,
        now: i64,
    }

    fn case() -> Case {
        Case {
            touch: Due {
                kind: TouchKind::Touch1,
                channel: Channel::Email,
                due_at: Timestamp(T0 + 20 * MINUTE),
                order_at: Timestamp(T0),
                after_delivery: false,
                carries_offer: true,
            },
            status: Status::Active,
            refunded_at: None,
            suppressed: None,
            page_offer_accepted: false,
            tickets: vec![],
            opens: None,
            stock: Some(50),
            delivered_at: None,
            failed_at: None,
            sent: vec![],
            tz: chrono_tz::America::New_York,
            now: T0 + 20 * MINUTE,
        }
    }

    fn render(a: &Action) -> String {
        match a {
            Action::Send => "send".into(),
            Action::Defer { until, reason, .. } => {
                format!("defer until {}: {reason}", until.to_rfc3339())
            }
            Action::Skip { reason, .. } => format!("skip: {reason}"),
        }
    }

    fn decide(c: &Case) -> String {
        let state = State {
            status: &c.status,
            refunded_at: c.refunded_at,
            suppressed: c.suppressed.as_ref(),
            page_offer_accepted: c.page_offer_accepted,
            tickets: &c.tickets,
            recent_opens: c.opens.as_deref(),
            offer_stock: c.stock,
            delivered_at: c.delivered_at,
            delivery_failed_at: c.failed_at,
            sent: &c.sent,
            tz: c.tz,
        };
        render(&on_due(
            &c.touch,
            &state,
            &Rules::default(),
            Timestamp(c.now),
        ))
    }

    fn at(rfc: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc)
            .unwrap()
            .timestamp_millis()
    }

    fn sms(c: &mut Case, local_now: &str) {
        c.touch.kind = TouchKind::Sms;
        c.touch.channel = Channel::Sms;
        c.now = at(local_now);
        c.touch.due_at = Timestamp(c.now);
    }

    fn day_n(c: &mut Case, kind: TouchKind, days: i64) {
        c.touch.kind = kind;
        c.touch.due_at = Timestamp(T0 + days * DAY);
        c.now = T0 + days * DAY;
    }

    type Setup = fn(&mut Case);

    /// Every case: a name, how it differs from the default, and the decision it must print.
    const CASES: &[(&str, Setup, &str)] = &[
        ("nothing_holds_it", |_| {}, "send"),
        (
            "cancelled",
            |c| c.status = Status::Cancelled { at: Timestamp(T0) },
            "skip: the order was cancelled",
        ),
        (
            "a_new_purchase_ended_the_sequence",
            |c| c.status = Status::Ended { at: Timestamp(T0 + DAY), by_order: "2002".into() },
            "skip: the customer bought again (order 2002): this sequence ended",
        ),
        ("unsubscribed", |c| c.suppressed = Some(Suppressed::Unsubscribed), "skip: the customer unsubscribed"),
        (
            "refunded",
            |c| c.refunded_at = Some(Timestamp(T0 + 10 * MINUTE)),
            "skip: the order was refunded on 2026-11-20T15:10:00Z",
        ),
        ("page_offer_accepted_cancels_touch1", |c| c.page_offer_accepted = true, "skip: the thank-you page offer was accepted"),
        (
            "page_offer_accepted_keeps_touch2",
            |c| {
                c.page_offer_accepted = true;
                day_n(c, TouchKind::Touch2, 4)
            },
            "send",
        ),
        (
            "touch1_waits_for_the_page_signal",
            |c| {
                c.touch.due_at = Timestamp(T0 + 2 * MINUTE);
                c.now = T0 + 2 * MINUTE;
            },
            "defer until 2026-11-20T15:05:00Z: waits for a page-offer acceptance to arrive",
        ),
        ("late_within_grace_fires", |c| c.now = T0 + 20 * MINUTE + 90 * MINUTE, "send"),
        (
            "downtime_of_3_hours_touch1_is_stale",
            |c| c.now = T0 + 20 * MINUTE + 3 * HOUR,
            "skip: stale: due 2026-11-20T15:20:00Z, 3.0 h late, over the 2.0 h grace for touch1",
        ),
        (
            "downtime_of_3_hours_touch2_fires",
            |c| {
                day_n(c, TouchKind::Touch2, 4);
                c.now += 3 * HOUR;
            },
            "send",
        ),
        (
            "downtime_of_3_days_touch2_is_stale",
            |c| {
                day_n(c, TouchKind::Touch2, 4);
                c.now += 3 * DAY;
            },
            "skip: stale: due 2026-11-24T15:00:00Z, 3 d late, over the 2 d grace for touch2",
        ),
        (
            "open_ticket_defers",
            |c| c.tickets = vec![Ticket { id: "T-7".into(), open: true, csat: None, cleared: false }],
            "defer until 2026-11-20T21:20:00Z: support ticket T-7 is open: waits until it closes",
        ),
        (
            "closed_ticket_resumes",
            |c| c.tickets = vec![Ticket { id: "T-7".into(), open: false, csat: Some(5), cleared: false }],
            "send",
        ),
        (
            "poor_rating_goes_to_a_person",
            |c| c.tickets = vec![Ticket { id: "T-7".into(), open: false, csat: Some(1), cleared: false }],
            "skip: ticket T-7 closed with a poor rating (1/5): a person follows up, no marketing until `customer clear`",
        ),
        (
            "a_cleared_poor_rating_resumes",
            |c| c.tickets = vec![Ticket { id: "T-7".into(), open: false, csat: Some(1), cleared: true }],
            "send",
        ),
        (
            "another_ticket_open_still_defers",
            |c| c.tickets = vec![
                Ticket { id: "T-7".into(), open: false, csat: Some(4), cleared: false },
                Ticket { id: "T-8".into(), open: true, csat: None, cleared: false },
            ],
            "defer until 2026-11-20T21:20:00Z: support ticket T-8 is open: waits until it closes",
        ),
        (
            "no_opens_on_last_4_skips_touch2",
            |c| {
                day_n(c, TouchKind::Touch2, 4);
                c.opens = Some(vec![false; 4]);
            },
            "skip: no opens on the customer's last 4 emails",
        ),
        (
            "no_opens_does_not_apply_to_touch1",
            |c| c.opens = Some(vec![false; 4]),
            "send",
        ),
        (
            "opens_unknown_the_rule_does_not_apply",
            |c| {
                day_n(c, TouchKind::Touch3, 35);
                c.opens = None;
            },
            "send",
        ),
        (
            "offered_product_low_in_stock",
            |c| c.stock = Some(3),
            "skip: the offered product is down to 3 in stock (threshold 10)",
        ),
        (
            "review_waits_for_delivery",
            |c| {
                day_n(c, TouchKind::Review, 15);
                c.touch.after_delivery = true;
                c.touch.carries_offer = false;
            },
            "defer until 2026-12-05T21:00:00Z: not delivered yet: the review request waits for a delivery event",
        ),
        (
            "review_after_delivery",
            |c| {
                day_n(c, TouchKind::Review, 15);
                c.touch.after_delivery = true;
                c.delivered_at = Some(Timestamp(T0 + 5 * DAY));
            },
            "send",
        ),
        (
            "failed_delivery_holds_the_review",
            |c| {
                day_n(c, TouchKind::Review, 15);
                c.touch.after_delivery = true;
                c.failed_at = Some(Timestamp(T0 + 5 * DAY));
            },
            "defer until 2026-12-05T21:00:00Z: the delivery failed on 2026-11-25T15:00:00Z: waits until it is delivered",
        ),
        (
            "failed_delivery_holds_the_cross_sell",
            |c| {
                day_n(c, TouchKind::Touch2, 4);
                c.failed_at = Some(Timestamp(T0 + 3 * DAY));
            },
            "defer until 2026-11-24T21:00:00Z: the delivery failed on 2026-11-23T15:00:00Z: waits until it is delivered",
        ),
        (
            "failed_delivery_does_not_hold_touch1",
            |c| c.failed_at = Some(Timestamp(T0)),
            "send",
        ),
        (
            "cap_two_emails_a_week",
            |c| c.sent = vec![(Timestamp(T0 - 3 * DAY), Channel::Email), (Timestamp(T0 - DAY), Channel::Email)],
            "defer until 2026-11-24T15:00:00Z: frequency cap: 2 emails in 7 days",
        ),
        (
            "cap_three_messages_a_week",
            |c| {
                day_n(c, TouchKind::Touch2, 4);
                c.sent = vec![
                    (Timestamp(T0 - DAY), Channel::Sms),
                    (Timestamp(T0), Channel::Page),
                    (Timestamp(T0 + DAY), Channel::Email),
                    (Timestamp(T0 + 2 * DAY), Channel::Webhook),
                ];
            },
            "defer until 2026-11-26T15:00:00Z: frequency cap: 3 messages in 7 days",
        ),
        (
            "cap_sms_quiets_email_for_48_hours",
            |c| c.sent = vec![(Timestamp(T0 - HOUR), Channel::Sms)],
            "defer until 2026-11-22T14:00:00Z: frequency cap: an SMS went out in the last 48 h",
        ),
        (
            "cap_one_sms_a_week",
            |c| {
                sms(c, "2026-11-20T14:00:00-05:00");
                c.sent = vec![(Timestamp(T0 - 2 * DAY), Channel::Sms)];
            },
            "defer until 2026-11-25T15:00:00Z: frequency cap: 1 SMS in 7 days",
        ),
        (
            "quiet_hours_evening",
            |c| sms(c, "2026-11-20T22:30:00-05:00"),
            "defer until 2026-11-21T13:00:00Z: quiet hours (21:00-08:00 in America/New_York)",
        ),
        (
            "quiet_hours_early_morning",
            |c| sms(c, "2026-11-21T06:00:00-05:00"),
            "defer until 2026-11-21T13:00:00Z: quiet hours (21:00-08:00 in America/New_York)",
        ),
        (
            "quiet_hours_across_dst_end",
            // 22:30 EDT on Saturday; clocks go back that night: 08:00 is EST (UTC-5).
            |c| sms(c, "2026-10-31T22:30:00-04:00"),
            "defer until 2026-11-01T13:00:00Z: quiet hours (21:00-08:00 in America/New_York)",
        ),
        (
            "quiet_hours_across_dst_start",
            // 23:00 EST; clocks go forward that night: 08:00 is EDT (UTC-4).
            |c| sms(c, "2026-03-07T23:00:00-05:00"),
            "defer until 2026-03-08T12:00:00Z: quiet hours (21:00-08:00 in America/New_York)",
        ),
        ("sms_in_the_day", |c| sms(c, "2026-11-20T12:00:00-05:00"), "send"),
    ];

    #[test]
    fn decisions_at_the_due_time() {
        let mut failed = Vec::new();
        for (name, setup, want) in CASES {
            let mut c = case();
            setup(&mut c);
            let got = decide(&c);
            if got != *want {
                failed.push(format!("case {name}:\n  got  {got}\n  want {want}"));
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    #[test]
    fn on_a_fast_demo_clock_the_schedulers_own_latency_is_not_stale() {
        let c = case();
        let state = State {
            status: &c.status,
            refunded_at: None,
            suppressed: None,
            page_offer_accepted: false,
            tickets: &[],
            recent_opens: None,
            offer_stock: None,
            delivered_at: None,
            delivery_failed_at: None,
            sent: &[],
            tz: c.tz,
        };
        let three_hours_late = Timestamp(c.touch.due_at.0 + 3 * HOUR);
        let fast = Rules {
            latency_ms: (1.1 * 86_400_000.0) as i64,
            ..Rules::default()
        };
        assert_eq!(
            on_due(&c.touch, &state, &fast, three_hours_late),
            Action::Send
        );
        assert!(matches!(
            on_due(&c.touch, &state, &Rules::default(), three_hours_late),
            Action::Skip { .. }
        ));
    }

    #[test]
    fn a_deferral_for_caps_lands_where_the_caps_allow_it() {
        // Whatever the history, the deferred time admits the message.
        let mut c = case();
        c.sent = vec![
            (Timestamp(T0 - 6 * DAY), Channel::Email),
            (Timestamp(T0 - 5 * DAY), Channel::Sms),
            (Timestamp(T0 - 2 * DAY), Channel::Email),
            (Timestamp(T0 + 19 * MINUTE), Channel::Sms),
        ];
        let state_now =
            |now: i64| capped(Channel::Email, &c.sent, &Caps::default(), Timestamp(now));
        let (until, _) = state_now(c.now).expect("held");
        assert_eq!(state_now(until.0), None, "free at {}", until.to_rfc3339());
    }

    #[test]
    fn a_ticket_wait_is_recognised_in_a_stored_reason() {
        assert!(waits_for_ticket(&ticket_wait("T-7")));
        assert!(!waits_for_ticket("frequency cap: 2 emails in 7 days"));
        let failed = DeliveryFacts {
            failed_at: Some(Timestamp(T0)),
            ..Default::default()
        };
        assert_eq!(failed.failed(), Some(Timestamp(T0)));
        let no_events = DeliveryRules {
            events: false,
            transit_days: 3,
        };
        let shipped_then_failed = DeliveryFacts {
            shipped_at: Some(Timestamp(T0 - 5 * DAY)),
            ..failed
        };
        assert!(shipped_then_failed.delivered(&no_events).is_some());
        assert_eq!(
            shipped_then_failed.failed(),
            Some(Timestamp(T0)),
            "the transit estimate does not lift a reported failure"
        );
        let then_delivered = DeliveryFacts {
            delivered_at: Some(Timestamp(T0 + DAY)),
            ..failed
        };
        assert_eq!(then_delivered.failed(), None, "a delivery ends the hold");
    }

    #[test]
    fn delivery_anchors_follow_the_facts() {
        let cadence = crate::engine::plan::Cadence::default();
        let events = DeliveryRules::default();
        let no_events = DeliveryRules {
            events: false,
            transit_days: 3,
        };
        let t = |days: i64| Timestamp(T0 + days * DAY);
        let a = |f: DeliveryFacts, r: &DeliveryRules| anchors(&f, r, &cadence);
        // Nothing known: nothing moves.
        assert_eq!(a(DeliveryFacts::default(), &events), Anchors::default());
        // Shipped, with an estimate: the review follows the estimate; touch-2 stays.
        let shipped = DeliveryFacts {
            shipped_at: Some(t(1)),
            estimate: Some(t(5)),
            ..Default::default()
        };
        assert_eq!(
            a(shipped, &events),
            Anchors {
                review: Some(t(15)),
                touch2: None
            }
        );
        // The estimate slips 5 days: the review moves 5 days.
        let delayed = DeliveryFacts {
            estimate: Some(t(10)),
            ..shipped
        };
        assert_eq!(a(delayed, &events).review, Some(t(20)));
        // Delivered: review 10 days and touch-2 2 days after it.
        let delivered = DeliveryFacts {
            delivered_at: Some(t(9)),
            ..delayed
        };
        assert_eq!(
            a(delivered, &events),
            Anchors {
                review: Some(t(19)),
                touch2: Some(t(11))
            }
        );
        // Learned late (now day 25): what is due goes now, not into the stale past.
        assert_eq!(
            a(delivered, &events).not_before(t(25)),
            Anchors {
                review: Some(t(25)),
                touch2: Some(t(25))
            }
        );
        // A store without delivery events: shipped + transit days counts as delivered.
        let shipped_only = DeliveryFacts {
            shipped_at: Some(t(1)),
            ..Default::default()
        };
        assert_eq!(shipped_only.delivered(&no_events), Some(t(4)));
        assert_eq!(shipped_only.delivered(&events), None, "waits for the event");
        assert_eq!(
            a(shipped_only, &no_events),
            Anchors {
                review: Some(t(14)),
                touch2: Some(t(6))
            }
        );
    }
}
