//! Backups: every table of one read transaction (a consistent snapshot, taken while the
//! service goes on writing) as a stream of length-prefixed entries that ends with a
//! SHA-256 of everything before it; and the restore, which builds a new database file from
//! such a stream and swaps it in only once the stream proved whole and undamaged.
//!
//! The entries are the tables' own key and value bytes, so the records keep their version
//! bytes and a backup restores into any build with the same schema version. Layout (integers
//! little-endian):
//!
//! ```text
//! "UPSELL-BACKUP\n"  u32 format (1)  u32 schema version  i64 taken at (ms)  u16 n + version text
//! per table:  b'T' u16 n + name   { b'E' u32 n + key  u32 n + value }*   b'N' u64 entries
//! end:        b'Z' u64 tables  u64 entries   32 bytes: SHA-256 of every byte before them
//! ```

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use sha2::{Digest, Sha256};

use super::tables::*;
use super::{Error, Options, Storage, SCHEMA_VERSION};
use crate::engine::Timestamp;

const MAGIC: &[u8; 14] = b"UPSELL-BACKUP\n";
const FORMAT: u32 = 1;
const TABLE: u8 = b'T';
const ENTRY: u8 = b'E';
const TABLE_END: u8 = b'N';
const END: u8 = b'Z';
/// Keys and values are small records; a length beyond this means a damaged file, not a
/// record to allocate for.
const MAX_ITEM: u32 = 256 << 20;

/// What a backup holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub schema: u32,
    pub taken_at: Timestamp,
    /// The version of the appliance that took it.
    pub version: String,
    pub tables: u64,
    pub entries: u64,
    pub bytes: u64,
}

/// What a restore did.
#[derive(Clone, Debug)]
pub struct Restored {
    pub summary: Summary,
    pub file: PathBuf,
    /// Where the database that was there before is kept (a hard link to it), if there was one.
    pub previous: Option<PathBuf>,
}

impl Storage {
    /// Writes a backup of the whole database as it is now to `out`.
    pub fn backup(&self, out: &mut dyn Write, now: Timestamp) -> Result<Summary, Error> {
        let tx = self.db.begin_read()?;
        let mut w = Writer {
            out,
            hash: Sha256::new(),
            bytes: 0,
        };
        let version = env!("CARGO_PKG_VERSION");
        w.put(MAGIC)?;
        w.put(&FORMAT.to_le_bytes())?;
        w.put(&SCHEMA_VERSION.to_le_bytes())?;
        w.put(&now.0.to_le_bytes())?;
        w.put_short(version.as_bytes())?;
        let (mut tables, mut entries) = (1u64, dump(&tx, META, &mut w)?);
        macro_rules! each {
            ($t:ident) => {
                entries += dump(&tx, $t, &mut w)?;
                tables += 1;
            };
        }
        each_table!(each);
        w.put(&[END])?;
        w.put(&tables.to_le_bytes())?;
        w.put(&entries.to_le_bytes())?;
        let digest = w.hash.clone().finalize();
        w.out.write_all(&digest).map_err(io_err)?;
        w.out.flush().map_err(io_err)?;
        Ok(Summary {
            schema: SCHEMA_VERSION,
            taken_at: now,
            version: version.to_string(),
            tables,
            entries,
            bytes: w.bytes + 32,
        })
    }

    /// Replaces the database in `data_dir` with the backup in `source`. Refuses
    /// ([`Error::Locked`]) while another process has the database open. The backup is read
    /// through once to prove it whole and undamaged, then loaded into a new file beside the
    /// database, which takes the database's name in one rename; the file that was there is
    /// kept under `upsell.redb.before-restore-<time>`. Any failure before that rename leaves
    /// the data directory as it was.
    pub fn restore(
        data_dir: &Path,
        opts: &Options,
        source: &Path,
        now: Timestamp,
    ) -> Result<Restored, Error> {
        let open = || {
            std::fs::File::open(source)
                .map_err(|e| Error::Backup(format!("cannot read {}: {e}", source.display())))
        };
        let summary = verify(&mut io::BufReader::new(open()?))?;
        if summary.schema != SCHEMA_VERSION {
            return Err(Error::Backup(format!(
                "{} has schema version {} (taken by upsell-appliance {}), this build reads {}; restore it with that version",
                source.display(),
                summary.schema,
                summary.version,
                SCHEMA_VERSION
            )));
        }
        std::fs::create_dir_all(data_dir).map_err(|source| Error::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let live = data_dir.join(Storage::FILE_NAME);
        let existed = std::fs::symlink_metadata(&live).is_ok();
        // Held until the new file has the name, so that no service opens the old database
        // meanwhile, nor creates one that the rename would then orphan with the webhooks it
        // acknowledged: a missing database is created empty to be held.
        let held =
            match super::open_file(&live, false).and_then(|f| super::open_redb(f, &live, opts)) {
                Ok(db) => Some(db),
                Err(Error::Locked(p)) => return Err(Error::Locked(p)),
                // A damaged file is what a restore is for: nobody can be using it.
                Err(_) if existed => None,
                Err(e) => return Err(e),
            };
        // Touch ids name messages already sent, some after the backup was taken.
        let used_ids = held
            .as_ref()
            .and_then(|db| super::touches::next_touch_id_of(db).ok())
            .unwrap_or(0);
        let tmp = data_dir.join(format!("{}.restoring", Storage::FILE_NAME));
        let _ = std::fs::remove_file(&tmp);
        let loaded = super::open_file(&tmp, true).and_then(|file| {
            own_like(&file, data_dir)?;
            let db = super::open_redb(file, &tmp, opts)?;
            load(&db, &mut io::BufReader::new(open()?), &summary, used_ids)
        });
        // Leaves the data directory as it was: no new file, and no empty database made only
        // to be held.
        let undo = |held: Option<redb::Database>| {
            let _ = std::fs::remove_file(&tmp);
            if !existed {
                drop(held);
                let _ = std::fs::remove_file(&live);
            }
        };
        if let Err(e) = loaded {
            undo(held);
            return Err(e);
        }
        let previous = if existed {
            let stamp = chrono::DateTime::from_timestamp_millis(now.0)
                .unwrap_or_default()
                .format("%Y%m%dT%H%M%SZ");
            let kept = data_dir.join(format!("{}.before-restore-{stamp}", Storage::FILE_NAME));
            // A second name for the old file: the database's own name never goes missing.
            if let Err(e) = std::fs::hard_link(&live, &kept) {
                undo(held);
                return Err(Error::Backup(format!(
                    "cannot keep the current database as {}: {e}",
                    kept.display()
                )));
            }
            Some(kept)
        } else {
            None
        };
        if let Err(e) = std::fs::rename(&tmp, &live) {
            if let Some(p) = &previous {
                let _ = std::fs::remove_file(p);
            }
            undo(held);
            return Err(Error::Backup(format!(
                "cannot move the restored database into place: {e}"
            )));
        }
        drop(held);
        std::fs::File::open(data_dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err)?;
        Ok(Restored {
            summary,
            file: live,
            previous,
        })
    }
}

/// Reads a whole backup and checks its structure and checksum, without a database.
pub fn verify(input: &mut dyn Read) -> Result<Summary, Error> {
    let mut r = Reader::new(input);
    let summary = r.header()?;
    let (mut tables, mut entries) = (0u64, 0u64);
    while r.table()?.is_some() {
        while r.entry()?.is_some() {}
        tables += 1;
        entries += r.entries;
    }
    r.end(tables, entries)?;
    Ok(Summary {
        tables,
        entries,
        bytes: r.bytes,
        ..summary
    })
}

fn io_err(e: io::Error) -> Error {
    Error::Backup(e.to_string())
}

struct Writer<'a> {
    out: &'a mut dyn Write,
    hash: Sha256,
    bytes: u64,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) -> Result<(), Error> {
        self.hash.update(b);
        self.bytes += b.len() as u64;
        self.out.write_all(b).map_err(io_err)
    }

    fn put_short(&mut self, b: &[u8]) -> Result<(), Error> {
        self.put(&(b.len() as u16).to_le_bytes())?;
        self.put(b)
    }

    fn put_long(&mut self, b: &[u8]) -> Result<(), Error> {
        self.put(&(b.len() as u32).to_le_bytes())?;
        self.put(b)
    }
}

fn dump<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &redb::ReadTransaction,
    def: TableDefinition<'static, K, V>,
    w: &mut Writer<'_>,
) -> Result<u64, Error> {
    w.put(&[TABLE])?;
    w.put_short(def.name().as_bytes())?;
    let mut n = 0u64;
    match tx.open_table(def) {
        Ok(t) => {
            for item in t.iter()? {
                let (k, v) = item?;
                w.put(&[ENTRY])?;
                w.put_long(K::as_bytes(&k.value()).as_ref())?;
                w.put_long(V::as_bytes(&v.value()).as_ref())?;
                n += 1;
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    w.put(&[TABLE_END])?;
    w.put(&n.to_le_bytes())?;
    Ok(n)
}

/// Touch ids skipped at a restore beyond the highest either database used, for the
/// messages the replaced service sent after the backup was taken.
const TOUCH_ID_GAP: u64 = 1_000_000_000;

/// Loads a verified backup into the new, empty database `db`, in one transaction, with the
/// next touch id moved past `used_ids` and [`TOUCH_ID_GAP`] further.
fn load(
    db: &redb::Database,
    input: &mut dyn Read,
    expect: &Summary,
    used_ids: u64,
) -> Result<(), Error> {
    let tx = db.begin_write()?;
    let mut r = Reader::new(input);
    r.header()?;
    let mut tables = 0u64;
    while let Some(name) = r.table()? {
        let mut found = false;
        macro_rules! each {
            ($t:ident) => {
                if !found && name == $t.name() {
                    found = true;
                    fill(&tx, $t, &mut r)?;
                }
            };
        }
        each!(META);
        each_table!(each);
        if !found {
            return Err(Error::Backup(format!(
                "the backup has a table {name:?} this build does not know"
            )));
        }
        tables += 1;
    }
    r.end(tables, expect.entries)?;
    super::touches::skip_touch_ids(&tx, used_ids, TOUCH_ID_GAP)?;
    tx.commit()?;
    Ok(())
}

fn fill<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &redb::WriteTransaction,
    def: TableDefinition<'static, K, V>,
    r: &mut Reader<'_>,
) -> Result<(), Error> {
    let mut t = tx.open_table(def)?;
    while let Some((k, v)) = r.entry()? {
        t.insert(K::from_bytes(&k), V::from_bytes(&v))?;
    }
    Ok(())
}

/// Gives a file the owner and group of `dir`: a restore run as root into the service's
/// data directory must leave a file the service's own user can open. By the open file,
/// not its name, which the directory's owner could point elsewhere meanwhile.
pub(super) fn own_like(file: &std::fs::File, dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let want = std::fs::metadata(dir).map_err(io_err)?;
    let have = file.metadata().map_err(io_err)?;
    if (have.uid(), have.gid()) != (want.uid(), want.gid()) {
        std::os::unix::fs::fchown(file, Some(want.uid()), Some(want.gid())).map_err(|e| {
            Error::Backup(format!(
                "cannot give the restored database the owner of {} (uid {}): {e}",
                dir.display(),
                want.uid()
            ))
        })?;
    }
    Ok(())
}

/// A key's and its value's bytes.
type Entry = (Vec<u8>, Vec<u8>);

struct Reader<'a> {
    input: &'a mut dyn Read,
    hash: Sha256,
    bytes: u64,
    /// Entries read of the current table.
    entries: u64,
}

impl<'a> Reader<'a> {
    fn new(input: &'a mut dyn Read) -> Reader<'a> {
        Reader {
            input,
            hash: Sha256::new(),
            bytes: 0,
            entries: 0,
        }
    }

    fn take(&mut self, n: usize) -> Result<Vec<u8>, Error> {
        let mut b = vec![0u8; n];
        self.input.read_exact(&mut b).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Error::Backup(format!(
                    "the backup ends after {} bytes, before its end mark: it was cut short (a full disk, or a copy that stopped); take it again",
                    self.bytes
                ))
            } else {
                io_err(e)
            }
        })?;
        self.hash.update(&b);
        self.bytes += n as u64;
        Ok(b)
    }

    fn byte(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn long(&mut self) -> Result<Vec<u8>, Error> {
        let n = self.u32()?;
        if n > MAX_ITEM {
            return Err(self.damaged());
        }
        self.take(n as usize)
    }

    fn damaged(&self) -> Error {
        Error::Backup(format!(
            "the backup is damaged at byte {}: not what a backup holds there",
            self.bytes
        ))
    }

    fn header(&mut self) -> Result<Summary, Error> {
        if self.take(MAGIC.len()).ok().as_deref() != Some(&MAGIC[..]) {
            return Err(Error::Backup(
                "not a backup of upsell-appliance (it does not start like one); give the file `upsell-appliance backup` wrote".into(),
            ));
        }
        let format = self.u32()?;
        if format != FORMAT {
            return Err(Error::Backup(format!(
                "backup format {format}; this build reads format {FORMAT}: restore it with a newer upsell-appliance"
            )));
        }
        let schema = self.u32()?;
        let taken_at = Timestamp(self.u64()? as i64);
        let n = self.u16()?;
        let version = String::from_utf8_lossy(&self.take(n as usize)?).into_owned();
        Ok(Summary {
            schema,
            taken_at,
            version,
            tables: 0,
            entries: 0,
            bytes: 0,
        })
    }

    /// The next table's name, or `None` at the end mark.
    fn table(&mut self) -> Result<Option<String>, Error> {
        match self.byte()? {
            TABLE => {
                let n = self.u16()?;
                let name = self.take(n as usize)?;
                self.entries = 0;
                String::from_utf8(name)
                    .map(Some)
                    .map_err(|_| self.damaged())
            }
            END => Ok(None),
            _ => Err(self.damaged()),
        }
    }

    /// The current table's next entry, or `None` at its end (whose count is checked).
    fn entry(&mut self) -> Result<Option<Entry>, Error> {
        match self.byte()? {
            ENTRY => {
                let k = self.long()?;
                let v = self.long()?;
                self.entries += 1;
                Ok(Some((k, v)))
            }
            TABLE_END if self.u64()? == self.entries => Ok(None),
            _ => Err(self.damaged()),
        }
    }

    /// The end mark's counts and the checksum.
    fn end(&mut self, tables: u64, entries: u64) -> Result<(), Error> {
        if self.u64()? != tables || self.u64()? != entries {
            return Err(self.damaged());
        }
        let expect = self.hash.clone().finalize();
        let mut got = [0u8; 32];
        self.input.read_exact(&mut got).map_err(|_| {
            Error::Backup(
                "the backup ends before its checksum: it was cut short; take it again".into(),
            )
        })?;
        if got[..] != expect[..] {
            return Err(Error::Backup(
                "the backup's checksum does not match its contents: the file is damaged; use another backup".into(),
            ));
        }
        let mut extra = [0u8; 1];
        if self.input.read(&mut extra).map_err(io_err)? != 0 {
            return Err(Error::Backup(
                "the backup has bytes after its checksum: the file is damaged or two files were joined".into(),
            ));
        }
        self.bytes += 32;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage() -> (tempfile::TempDir, std::sync::Arc<Storage>) {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &Options::default()).unwrap();
        (dir, s)
    }

    #[test]
    fn a_backup_restores_to_the_same_tables() {
        let (dir, s) = storage();
        s.seed_salt("shop", b"0123456789abcdef").unwrap();
        let key = s.link_key("shop").unwrap();
        let mut bytes = Vec::new();
        let summary = s.backup(&mut bytes, Timestamp(1_700_000_000_000)).unwrap();
        assert_eq!(summary.bytes, bytes.len() as u64);
        assert_eq!(verify(&mut &bytes[..]).unwrap(), summary);
        let digest = s.digest().unwrap();
        drop(s);

        let file = dir.path().join("b.bak");
        std::fs::write(&file, &bytes).unwrap();
        let target = tempfile::tempdir().unwrap();
        let r = Storage::restore(target.path(), &Options::default(), &file, Timestamp(0)).unwrap();
        assert!(r.previous.is_none());
        let restored = Storage::open(target.path(), &Options::default()).unwrap();
        // Every table as it was, but the next touch id, moved past those the old service
        // may have used since.
        let without_meta = |d: Vec<(String, u64, String)>| -> Vec<_> {
            d.into_iter().filter(|(n, _, _)| n != "meta").collect()
        };
        assert_eq!(
            without_meta(restored.digest().unwrap()),
            without_meta(digest)
        );
        assert_eq!(restored.link_key("shop").unwrap(), key);
        assert_eq!(
            restored.snapshot().unwrap().next_touch_id().unwrap(),
            1 + TOUCH_ID_GAP
        );
    }

    #[test]
    fn damaged_or_short_backups_are_refused_and_change_nothing() {
        let (dir, s) = storage();
        s.seed_salt("shop", b"0123456789abcdef").unwrap();
        let mut bytes = Vec::new();
        s.backup(&mut bytes, Timestamp(0)).unwrap();
        drop(s);
        let before = std::fs::read(dir.path().join(Storage::FILE_NAME)).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (bytes[..bytes.len() - 40].to_vec(), "it was cut short"),
            (
                bytes[..bytes.len() - 10].to_vec(),
                "ends before its checksum",
            ),
            (b"hello".to_vec(), "not a backup of upsell-appliance"),
            ([&bytes[..], b"x"].concat(), "bytes after its checksum"),
            (
                {
                    let mut b = bytes.clone();
                    let at = b.len() - 60;
                    b[at] ^= 1;
                    b
                },
                "",
            ),
        ];
        for (bad, expect) in cases {
            let file = dir.path().join("bad.bak");
            std::fs::write(&file, &bad).unwrap();
            let e = Storage::restore(dir.path(), &Options::default(), &file, Timestamp(0))
                .unwrap_err()
                .to_string();
            assert!(e.contains(expect), "{expect:?} in {e}");
            assert_eq!(
                std::fs::read(dir.path().join(Storage::FILE_NAME)).unwrap(),
                before
            );
            let names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.starts_with("upsell.redb"))
                .collect();
            assert_eq!(names, ["upsell.redb"], "{e}");
        }
    }

    #[test]
    fn a_restore_that_fails_while_loading_leaves_an_empty_directory_empty() {
        // Whole and undamaged, but with a table this build does not know.
        let mut bytes = Vec::new();
        let mut w = Writer {
            out: &mut bytes,
            hash: Sha256::new(),
            bytes: 0,
        };
        w.put(MAGIC).unwrap();
        w.put(&FORMAT.to_le_bytes()).unwrap();
        w.put(&SCHEMA_VERSION.to_le_bytes()).unwrap();
        w.put(&0i64.to_le_bytes()).unwrap();
        w.put_short(b"9.9.9").unwrap();
        w.put(&[TABLE]).unwrap();
        w.put_short(b"from_the_future").unwrap();
        w.put(&[TABLE_END]).unwrap();
        w.put(&0u64.to_le_bytes()).unwrap();
        w.put(&[END]).unwrap();
        w.put(&1u64.to_le_bytes()).unwrap();
        w.put(&0u64.to_le_bytes()).unwrap();
        let digest = w.hash.clone().finalize();
        bytes.extend_from_slice(&digest);
        assert!(verify(&mut &bytes[..]).is_ok());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("future.backup");
        std::fs::write(&file, &bytes).unwrap();
        let data = dir.path().join("data");
        let e = Storage::restore(&data, &Options::default(), &file, Timestamp(0)).unwrap_err();
        assert!(
            e.to_string()
                .contains("\"from_the_future\" this build does not know"),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0);
    }

    #[test]
    fn a_restore_keeps_the_database_it_replaces() {
        let (dir, s) = storage();
        s.seed_salt("shop", b"0123456789abcdef").unwrap();
        let mut bytes = Vec::new();
        s.backup(&mut bytes, Timestamp(0)).unwrap();
        s.seed_salt("other", b"0123456789abcdef").unwrap();
        let newer = s.digest().unwrap();
        // Refused while the database is open.
        let file = dir.path().join("b.bak");
        std::fs::write(&file, &bytes).unwrap();
        let e = Storage::restore(dir.path(), &Options::default(), &file, Timestamp(0)).unwrap_err();
        assert!(matches!(e, Error::Locked(_)), "{e}");
        drop(s);
        let r = Storage::restore(
            dir.path(),
            &Options::default(),
            &file,
            Timestamp(1_763_800_000_000),
        )
        .unwrap();
        let kept = r.previous.unwrap();
        assert!(
            kept.ends_with("upsell.redb.before-restore-20251122T082640Z"),
            "{kept:?}"
        );
        let s = Storage::open(dir.path(), &Options::default()).unwrap();
        assert!(
            s.seed_salt("other", b"x").is_ok(),
            "the restored file lacks the later store"
        );
        assert_eq!(
            s.snapshot().unwrap().next_touch_id().unwrap(),
            1 + TOUCH_ID_GAP
        );
        drop(s);
        // Restored again, ids go on past the ones the first restore's database handed out.
        Storage::restore(
            dir.path(),
            &Options::default(),
            &file,
            Timestamp(1_763_800_001_000),
        )
        .unwrap();
        let s = Storage::open(dir.path(), &Options::default()).unwrap();
        assert_eq!(
            s.snapshot().unwrap().next_touch_id().unwrap(),
            1 + 2 * TOUCH_ID_GAP
        );
        drop(s);
        // The kept file is the database as it was.
        let old = tempfile::tempdir().unwrap();
        std::fs::copy(&kept, old.path().join(Storage::FILE_NAME)).unwrap();
        let s = Storage::open(old.path(), &Options::default()).unwrap();
        assert_eq!(s.digest().unwrap(), newer);
    }
}
