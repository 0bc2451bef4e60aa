//! Each store's sync with its platform's API (`pipeline::sync`): how far orders have been
//! reconciled, what the last run found, and which webhook subscriptions the platform
//! reported missing. One row per store, written by the sync job, read by the status.

use redb::ReadableDatabase;
use serde::{Deserialize, Serialize};

use super::tables::*;
use super::{codec, Error, Storage};
use crate::engine::Timestamp;

const SYNC_V1: u8 = 1;
const CODE_V1: u8 = 1;

/// An offer's own discount code, once the platform has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRow {
    pub code: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A store's sync as it stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// Orders changed before this were listed by a sync that succeeded (its start, less an
    /// overlap for clocks and slow commits); the next sync lists from here.
    pub orders_through: Option<Timestamp>,
    /// When a sync last succeeded, and when one last failed and why.
    pub last_ok_at: Option<Timestamp>,
    pub last_error: Option<(Timestamp, String)>,
    /// The last sync that found orders the webhooks had not brought: when, how many.
    pub last_found: Option<(Timestamp, u64)>,
    /// Orders found that way since the store was connected.
    pub found_total: u64,
    /// Topics the platform holds no active subscription to this appliance for, as of
    /// `subscriptions_at` (Shopify deletes one after 8 failed retries, WooCommerce disables
    /// one after 5 failures): `connect` repairs them.
    pub missing_topics: Vec<String>,
    pub subscriptions_at: Option<Timestamp>,
    /// Catalog entries the last sync refreshed from the platform's products.
    pub catalog_variants: u64,
}

/// A store's sync as `/api/status` shows it (times in RFC 3339).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncView {
    pub orders_through: Option<String>,
    pub last_ok_at: Option<String>,
    pub last_error_at: Option<String>,
    pub last_error: Option<String>,
    pub last_found_at: Option<String>,
    pub last_found: u64,
    pub found_total: u64,
    pub missing_subscriptions: Vec<String>,
    pub subscriptions_checked_at: Option<String>,
    pub catalog_variants: u64,
}

impl From<SyncState> for SyncView {
    fn from(s: SyncState) -> SyncView {
        let t = |t: Option<Timestamp>| t.map(Timestamp::to_rfc3339);
        SyncView {
            orders_through: t(s.orders_through),
            last_ok_at: t(s.last_ok_at),
            last_error_at: t(s.last_error.as_ref().map(|e| e.0)),
            last_error: s.last_error.map(|e| e.1),
            last_found_at: t(s.last_found.map(|f| f.0)),
            last_found: s.last_found.map_or(0, |f| f.1),
            found_total: s.found_total,
            missing_subscriptions: s.missing_topics,
            subscriptions_checked_at: t(s.subscriptions_at),
            catalog_variants: s.catalog_variants,
        }
    }
}

/// The store's sync row from any handle on the table.
pub(super) fn read(
    t: &impl redb::ReadableTable<&'static str, &'static [u8]>,
    store: &str,
) -> Result<Option<SyncState>, Error> {
    t.get(store)?
        .map(|v| codec::decode("sync state", SYNC_V1, v.value()))
        .transpose()
}

impl Storage {
    /// The store's sync (the default when it never ran).
    pub fn sync_state(&self, store: &str) -> Result<SyncState, Error> {
        let tx = self.db.begin_read()?;
        Ok(read(&tx.open_table(SYNC)?, store)?.unwrap_or_default())
    }

    /// The code made for the offer of `order`, if one was.
    pub fn discount_code(&self, store: &str, order: &str) -> Result<Option<CodeRow>, Error> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(CODES)?;
        t.get((store, order))?
            .map(|v| codec::decode("discount code", CODE_V1, v.value()))
            .transpose()
    }

    /// Records the code the platform now has for the offer of `order`, durably.
    pub fn put_discount_code(&self, store: &str, order: &str, row: &CodeRow) -> Result<(), Error> {
        let tx = self.db.begin_write()?;
        tx.open_table(CODES)?
            .insert((store, order), codec::encode(CODE_V1, row)?.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Stores the store's sync, durably.
    pub fn put_sync_state(&self, store: &str, state: &SyncState) -> Result<(), Error> {
        let tx = self.db.begin_write()?;
        tx.open_table(SYNC)?
            .insert(store, codec::encode(SYNC_V1, state)?.as_slice())?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_code_row() {
        let row = CodeRow {
            code: "UP-ABCDEFGHJK".into(),
            created_at: Timestamp(1_764_000_000_000),
            expires_at: Timestamp(1_764_604_800_000),
        };
        let bytes = codec::encode(CODE_V1, &row).unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "010d55502d41424344454647484a4bfd00d02f6d35030000fd00d848b535030000"
        );
        assert_eq!(
            codec::decode::<CodeRow>("discount code", CODE_V1, &bytes).unwrap(),
            row
        );
    }

    #[test]
    fn golden_sync_state() {
        let s = SyncState {
            orders_through: Some(Timestamp(1_764_000_000_000)),
            last_found: Some((Timestamp(1_764_000_000_000), 3)),
            found_total: 3,
            missing_topics: vec!["orders/paid".into()],
            ..SyncState::default()
        };
        let bytes = codec::encode(SYNC_V1, &s).unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "0101fd00d02f6d35030000000001fd00d02f6d350300000303010b6f72646572732f706169640000"
        );
        let back: SyncState = codec::decode("sync state", SYNC_V1, &bytes).unwrap();
        assert_eq!(back, s);
    }
}
