//! The byte codec for stored records: a version byte, then bincode 2 (standard config) of
//! the record's serde form. The only file that knows bincode.
//!
//! Records embed engine types by value. `tests::golden_*` pin the exact bytes: when a
//! change to an engine type breaks them, freeze the old shape under a new version byte
//! here instead of changing what old files mean.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Error;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode<T: Serialize>(version: u8, value: &T) -> Result<Vec<u8>, Error> {
    let mut out = vec![version];
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|e| Error::Codec(format!("encode: {e}")))?;
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(what: &str, version: u8, bytes: &[u8]) -> Result<T, Error> {
    match bytes.split_first() {
        Some((&v, rest)) if v == version => {
            let (value, _) = bincode::serde::decode_from_slice(rest, config())
                .map_err(|e| Error::Codec(format!("{what}: {e}")))?;
            Ok(value)
        }
        Some((&v, _)) => Err(Error::Codec(format!(
            "{what}: record version {v} is not known to this build (expected {version}); \
             was the data written by a newer upsell-appliance?"
        ))),
        None => Err(Error::Codec(format!("{what}: empty record"))),
    }
}

/// Compresses a raw request body: `version, lz4 block with its uncompressed size
/// prepended`. Platform JSON shrinks about threefold, which is as much less for the writer
/// to copy, checksum and sync while it holds the write lock, and for the disk to hold.
pub fn encode_body(version: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![version];
    out.extend_from_slice(&lz4_flex::block::compress_prepend_size(body));
    out
}

pub fn decode_body(what: &str, version: u8, bytes: &[u8]) -> Result<Vec<u8>, Error> {
    match bytes.split_first() {
        Some((&v, rest)) if v == version => lz4_flex::block::decompress_size_prepended(rest)
            .map_err(|e| Error::Codec(format!("{what}: {e}"))),
        Some((&v, _)) => Err(Error::Codec(format!(
            "{what}: record version {v} is not known to this build (expected {version})"
        ))),
        None => Err(Error::Codec(format!("{what}: empty record"))),
    }
}
