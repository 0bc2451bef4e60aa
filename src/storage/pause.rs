//! Paused stores (`upsell-appliance pause`): a row per store whose sending is stopped by
//! hand. Durable, so a restart, even a crash and systemd's restart, does not resume
//! sending; only `resume` removes it. The scheduler keeps the same state in memory
//! (`pipeline::pause`), loaded from here at start.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::tables::*;
use super::{codec, Error, Snapshot, Storage};
use crate::engine::Timestamp;

const PAUSE_V1: u8 = 1;

/// Since when a store's sending is paused, and through what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseRow {
    pub since: Timestamp,
    /// "the admin API", "the command line (service stopped)".
    pub source: String,
}

fn decode(b: &[u8]) -> Result<PauseRow, Error> {
    codec::decode("pause", PAUSE_V1, b)
}

/// The store's pause from any handle on the table.
pub(super) fn read(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    store: &str,
) -> Result<Option<PauseRow>, Error> {
    t.get(store)?.map(|v| decode(v.value())).transpose()
}

impl Snapshot {
    /// The store's pause, if it is paused.
    pub fn paused(&self, store: &str) -> Result<Option<PauseRow>, Error> {
        read(&self.paused, store)
    }
}

impl Storage {
    /// Pauses the store (`Some`) or resumes it (`None`), durably before it returns.
    /// A pause already in force keeps its time and source. Returns the row there was.
    pub fn set_paused(
        &self,
        store: &str,
        pause: Option<&PauseRow>,
    ) -> Result<Option<PauseRow>, Error> {
        let tx = self.db.begin_write()?;
        let before = {
            let mut t = tx.open_table(PAUSED)?;
            let before = read(&t, store)?;
            match (pause, &before) {
                (Some(_), Some(_)) => {}
                (Some(row), None) => {
                    t.insert(store, codec::encode(PAUSE_V1, row)?.as_slice())?;
                }
                (None, _) => {
                    t.remove(store)?;
                }
            }
            before
        };
        tx.commit()?;
        Ok(before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN: &str = "01fd00d02f6d350300000d7468652061646d696e20415049";

    #[test]
    fn golden_pause_row_and_a_pause_keeps_its_first_time() {
        let row = PauseRow {
            since: Timestamp(1_764_000_000_000),
            source: "the admin API".into(),
        };
        let bytes = codec::encode(PAUSE_V1, &row).unwrap();
        let hex = crate::engine::hex(&bytes);
        assert_eq!(hex, GOLDEN);
        assert_eq!(decode(&bytes).unwrap(), row);

        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &Default::default()).unwrap();
        assert_eq!(s.set_paused("a", Some(&row)).unwrap(), None);
        let later = PauseRow {
            since: Timestamp(1_764_000_060_000),
            source: "the command line (service stopped)".into(),
        };
        assert_eq!(s.set_paused("a", Some(&later)).unwrap(), Some(row.clone()));
        assert_eq!(
            s.snapshot().unwrap().paused("a").unwrap(),
            Some(row.clone())
        );
        assert_eq!(s.snapshot().unwrap().paused("b").unwrap(), None);
        drop(s);
        // Durable: read back after reopening.
        let s = Storage::open(dir.path(), &Default::default()).unwrap();
        assert_eq!(
            s.snapshot().unwrap().paused("a").unwrap(),
            Some(row.clone())
        );
        assert_eq!(s.set_paused("a", None).unwrap(), Some(row));
        assert_eq!(s.snapshot().unwrap().paused("a").unwrap(), None);
        assert_eq!(s.set_paused("a", None).unwrap(), None);
    }
}
