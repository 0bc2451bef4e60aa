//! Every redb table the appliance uses, in one place. Changing a key or value type here
//! changes the file format: add a new table instead and migrate.

use redb::TableDefinition;

/// "schema_version" -> u32 LE; "processed_seq" -> u64 LE.
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

pub const SCHEMA_VERSION: u32 = 1;
