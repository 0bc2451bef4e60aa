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

/// Encodes a record whose large opaque tail (a raw request body) follows the bincode
/// header unencoded: `version, u32 LE header length, header, tail`.
pub fn encode_with_tail<T: Serialize>(
    version: u8,
    head: &T,
    tail: &[u8],
) -> Result<Vec<u8>, Error> {
    let tail = lz4_flex::block::compress_prepend_size(tail);
    let head = bincode::serde::encode_to_vec(head, config())
        .map_err(|e| Error::Codec(format!("encode: {e}")))?;
    let len = u32::try_from(head.len()).map_err(|_| Error::Codec("header too large".into()))?;
    let mut out = Vec::with_capacity(5 + head.len() + tail.len());
    out.push(version);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&tail);
    Ok(out)
}

pub fn decode_with_tail<T: DeserializeOwned>(
    what: &str,
    version: u8,
    bytes: &[u8],
) -> Result<(T, Vec<u8>), Error> {
    let (head, tail) = decode_head::<T>(what, version, bytes)?;
    let tail = lz4_flex::block::decompress_size_prepended(tail)
        .map_err(|e| Error::Codec(format!("{what}: compressed body: {e}")))?;
    Ok((head, tail))
}

/// Decodes only the header of a record written by [`encode_with_tail`].
pub fn decode_head<'b, T: DeserializeOwned>(
    what: &str,
    version: u8,
    bytes: &'b [u8],
) -> Result<(T, &'b [u8]), Error> {
    let bad = |why: &str| Error::Codec(format!("{what}: {why}"));
    let (&v, rest) = bytes.split_first().ok_or_else(|| bad("empty record"))?;
    if v != version {
        return Err(bad(&format!(
            "record version {v} is not known to this build (expected {version})"
        )));
    }
    if rest.len() < 4 {
        return Err(bad("truncated header"));
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let rest = &rest[4..];
    if rest.len() < len {
        return Err(bad("truncated header"));
    }
    let (head, tail) = rest.split_at(len);
    let (value, _) =
        bincode::serde::decode_from_slice(head, config()).map_err(|e| bad(&e.to_string()))?;
    Ok((value, tail))
}
