//! Every redb table the appliance uses, in one place. Changing a key or value type here
//! changes the file format: add a new table instead and migrate.

use redb::TableDefinition;

/// Calls `$m!(TABLE)` for every table but `META` (which opening reads first): to create
/// them when the database opens and to fingerprint them (`Storage::digest`). A new table
/// goes here.
macro_rules! each_table {
    ($m:ident) => {
        $m!(EVENTS);
        $m!(BODIES);
        $m!(QUARANTINE);
        $m!(DEDUPE);
        $m!(ORDERS);
        $m!(CUSTOMERS);
        $m!(CUSTOMER_LOOKUP);
        $m!(COUNTERS);
        $m!(CATALOG);
        $m!(CATALOG_IDS);
        $m!(CATALOG_HANDLES);
        $m!(PRODUCT_NOS);
        $m!(PRODUCT_KEYS);
        $m!(AFF_ITEMS);
        $m!(AFF_PAIRS);
        $m!(AFF_ORDERS);
        $m!(TIMELINE);
        $m!(PAIRINGS);
        $m!(FEEDBACK);
        $m!(PLANS);
        $m!(PLAN_QUEUE);
        $m!(SUPPRESSIONS);
        $m!(STORE_KEYS);
        $m!(CUSTOMER_REFUNDS);
        $m!(ORDER_VALUES);
        $m!(TOUCHES);
        $m!(TIMERS);
        $m!(ORDER_TOUCHES);
        $m!(SENDING);
        $m!(SENT_LOG);
        $m!(TICKETS);
        $m!(OFFER_RESPONSES);
        $m!(DELIVERIES);
        $m!(OUTCOME_COUNTS);
        $m!(OPENS);
        $m!(ATTEMPTS);
        $m!(RECEIPTS);
        $m!(DISABLED);
        $m!(DEAD_LETTERS);
        $m!(CLICKS);
        $m!(RESENT);
        $m!(MIRRORS);
        $m!(PENDING_COUNTS);
        $m!(PAUSED);
        $m!(CONVERSIONS);
        $m!(RECOVERY_NOTICES);
        $m!(SYNC);
        $m!(CODES);
    };
}
pub(crate) use each_table;

/// "schema_version" -> u32 LE; "processed_seq" -> u64 LE; "next_touch_id" -> u64 LE.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Commit sequence number -> event head (who sent it, headers, the normalized form).
/// Append-only; only the writer thread appends.
pub const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Commit sequence number -> the raw request body, compressed. Written with its head.
pub const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
/// Sequence number of a quarantined event (signed, but this build could not parse it) ->
/// its store.
pub const QUARANTINE: TableDefinition<u64, &str> = TableDefinition::new("quarantine");
/// (store, delivery key) -> sequence number of the event it was stored as.
pub const DEDUPE: TableDefinition<(&str, &str), u64> = TableDefinition::new("dedupe");
/// (store, order id) -> order state record.
pub const ORDERS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("orders");
/// (store, customer id) -> customer record: the only place, besides raw payloads, that holds
/// a customer's personal data.
pub const CUSTOMERS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("customers");
/// (store, "email:<normalized>" | "id:<platform id>") -> customer id.
pub const CUSTOMER_LOOKUP: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("customer_lookup");
/// (store, counter name) -> value.
pub const COUNTERS: TableDefinition<(&str, &str), i64> = TableDefinition::new("counters");

/// (store, catalog key: "sku:<SKU>" or "variant:<id>") -> catalog entry (one variant).
pub const CATALOG: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("catalog");
/// (store, "variant:<id>") -> catalog key: ids learned from line items and imports.
pub const CATALOG_IDS: TableDefinition<(&str, &str), &str> = TableDefinition::new("catalog_ids");
/// (store, handle, catalog key): the variants of a product, to fold them.
pub const CATALOG_HANDLES: TableDefinition<(&str, &str, &str), ()> =
    TableDefinition::new("catalog_handles");
/// (store, product key) -> product number; and back. Numbers are never reused.
pub const PRODUCT_NOS: TableDefinition<(&str, &str), u32> = TableDefinition::new("product_nos");
pub const PRODUCT_KEYS: TableDefinition<(&str, u32), &str> = TableDefinition::new("product_keys");
/// (store, kind, product) -> item counts and leader list (see `storage::affinity`).
pub const AFF_ITEMS: TableDefinition<(&str, u8, u32), &[u8]> = TableDefinition::new("aff_items");
/// (store, kind, antecedent, consequent) -> pair counts per month.
pub const AFF_PAIRS: TableDefinition<(&str, u8, u32, u32), &[u8]> =
    TableDefinition::new("aff_pairs");
/// (store, order id) -> what the order contributes to affinity now.
pub const AFF_ORDERS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("aff_orders");
/// (store, customer, order time ms, order id): each customer's counted orders in time order,
/// for next-order evidence.
pub const TIMELINE: TableDefinition<(&str, u64, i64, &str), ()> = TableDefinition::new("timeline");
/// (store, antecedent key, consequent key) -> manual pairing (priority, mode).
pub const PAIRINGS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("pairings");
/// (store, antecedent, consequent, recipe) -> offer feedback counters.
pub const FEEDBACK: TableDefinition<(&str, u32, u32, &str), &[u8]> =
    TableDefinition::new("feedback");

/// (store, order id) -> the order's plan record (`engine::lifecycle::PlanRecord`).
pub const PLANS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("plans");
/// (store, order id) -> latest refund time ms (0: none): orders the processor has changed
/// and the planner has not yet looked at. Filled in the processor's transaction, drained
/// in the planner's, so a crash between the two loses nothing.
pub const PLAN_QUEUE: TableDefinition<(&str, &str), i64> = TableDefinition::new("plan_queue");
/// (store, "email:<normalized>" | "phone:<digits>") -> suppression record.
pub const SUPPRESSIONS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("suppressions");
/// (store, name) -> a per-store secret generated once ("holdout_salt").
pub const STORE_KEYS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("store_keys");
/// (store, customer id) -> time of the customer's latest refund, ms.
pub const CUSTOMER_REFUNDS: TableDefinition<(&str, u64), i64> =
    TableDefinition::new("customer_refunds");
/// (store, bucket) -> counted orders in the store currency whose total falls in the bucket
/// (5% wide): the store's median and top-fifth order values without a scan.
pub const ORDER_VALUES: TableDefinition<(&str, u16), u64> = TableDefinition::new("order_values");

/// Touch id -> touch record (`storage::touches`).
pub const TOUCHES: TableDefinition<u64, &[u8]> = TableDefinition::new("touches");
/// (due time ms, touch id): the pending touches in due order.
pub const TIMERS: TableDefinition<(i64, u64), ()> = TableDefinition::new("timers");
/// (store, order id, touch id): each order's touches.
pub const ORDER_TOUCHES: TableDefinition<(&str, &str, u64), ()> =
    TableDefinition::new("order_touches");

/// (store, due day (days since 1970-01-01 UTC), touch kind) -> pending touches: the status
/// page's figures without a scan. Kept in step with `TIMERS` by `storage::touches`.
pub const PENDING_COUNTS: TableDefinition<(&str, i64, &str), u64> =
    TableDefinition::new("pending_counts");
/// (store, "sent" | "deferred" | "skipped", rule code) -> how many times since the start.
pub const OUTCOME_COUNTS: TableDefinition<(&str, &str, &str), u64> =
    TableDefinition::new("outcome_counts");
/// Touch id: touches handed to a channel and not yet recorded as sent (reconciled at start).
pub const SENDING: TableDefinition<u64, ()> = TableDefinition::new("sending");
/// (store, customer id, sent at ms, touch id) -> channel: each customer's messages, for
/// the frequency caps.
pub const SENT_LOG: TableDefinition<(&str, u64, i64, u64), &str> = TableDefinition::new("sent_log");

/// Touch id of a `recovery` notice -> which contact and ticket it is about
/// (`storage::intake`).
pub const RECOVERY_NOTICES: TableDefinition<u64, &[u8]> = TableDefinition::new("recovery_notices");
/// (store, contact key, ticket id) -> support ticket (`storage::intake`).
pub const TICKETS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("tickets");
/// (store, order id) -> the thank-you page offer's response.
pub const OFFER_RESPONSES: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("offer_responses");
/// Touch id -> (failed attempts so far, its due time ms at the first): touches a provider has not
/// taken yet, retried on a schedule.
pub const ATTEMPTS: TableDefinition<u64, (u32, i64)> = TableDefinition::new("attempts");
/// Touch id -> how it went out (`storage::touches::Receipt`): channel, the provider's
/// message id, latency.
pub const RECEIPTS: TableDefinition<u64, &[u8]> = TableDefinition::new("receipts");
/// Copy touch id -> the touch it copies to the store's webhook (`also_webhook`): not a
/// message to the customer, so never decided again nor counted for the caps.
pub const MIRRORS: TableDefinition<u64, u64> = TableDefinition::new("mirrors");
/// Touch id: sent again after a crash interrupted its send, through a channel without an
/// idempotency key (Twilio, Postmark); a second interruption makes it a dead letter.
pub const RESENT: TableDefinition<u64, ()> = TableDefinition::new("resent");
/// (store, touch id) -> the channel that refused it ("" when none did): the dead letters,
/// until retried or dropped.
pub const DEAD_LETTERS: TableDefinition<(&str, u64), &str> = TableDefinition::new("dead_letters");
/// (store, channel) -> why that endpoint is disabled (a webhook answered 410).
pub const DISABLED: TableDefinition<(&str, &str), &str> = TableDefinition::new("disabled");
/// (touch id, click time ms) -> device class: clicks on tracked links.
pub const CLICKS: TableDefinition<(u64, i64), &str> = TableDefinition::new("clicks");
/// Touch id -> when the customer opened that email (ms), as reported.
pub const OPENS: TableDefinition<u64, i64> = TableDefinition::new("opens");
/// (store, order id) -> delivery time ms told by hand.
pub const DELIVERIES: TableDefinition<(&str, &str), i64> = TableDefinition::new("deliveries");
/// Store id -> since when, and through what, its sending is paused (`storage::pause`):
/// durable, so a restart (a crash, systemd) does not resume sending.
pub const PAUSED: TableDefinition<&str, &[u8]> = TableDefinition::new("paused");
/// Store id -> its sync with the platform's API (`storage::sync::SyncState`).
pub const SYNC: TableDefinition<&str, &[u8]> = TableDefinition::new("sync");
/// (store, id of the order that made the offer) -> the offer's own discount code as made
/// through the platform's API (`storage::sync::CodeRow`): one per offer.
pub const CODES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("codes");
/// (store, id of the order that made the offer) -> its conversion
/// (`engine::attribution::Conversion`): the later order that bought it, the engagements
/// that earned it, and whether a refund or cancellation took it back. One per offer.
pub const CONVERSIONS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("conversions");

pub const SCHEMA_VERSION: u32 = 1;
