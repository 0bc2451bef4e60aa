//! Offers' own discount codes (`[stores.offers] unique_codes`): a single-use code per offer,
//! made through the platform's API when the first message carrying the offer is sent, and
//! valid as long as the offer (`[stores.page] offer_valid_days` from the order).
//!
//! Made once per offer, even across a crash: the code's name is the offer's (a keyed hash
//! of its order), so making it again after a crash between the platform's answer and our
//! record finds it made; the record (`CODES`) then spares later messages the API.

use crate::config::{Mode, StoreConfig};
use crate::engine::plan::{Offer, Recipe};
use crate::engine::Timestamp;
use crate::outbound::platform::{Api, NewCode};
use crate::storage::sync::CodeRow;
use crate::storage::{Snapshot, Storage};

const DAY_MS: i64 = 86_400_000;
/// Letters and digits no one misreads (no 0/O, 1/I/L).
const ALPHABET: &[u8; 31] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";

/// The code of the offer `order` made: `UP-` and ten characters of an HMAC of the order
/// under the store's link key, so no one can guess another offer's.
pub fn code_name(key: &[u8], order: &str) -> String {
    use hmac::Mac as _;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(b"discount-code:");
    mac.update(order.as_bytes());
    let bytes = mac.finalize().into_bytes();
    let tail: String = bytes[..10]
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    format!("UP-{tail}")
}

/// Why an offer's code is not there to show.
#[derive(Debug)]
pub struct CodeError {
    /// The platform refused it (credentials, scopes, its own rules): trying again will not
    /// help, so the message goes without the code. Otherwise it did not answer: the message
    /// is tried again, like a provider that did not take it.
    pub permanent: bool,
    pub why: String,
}

impl From<crate::storage::Error> for CodeError {
    fn from(e: crate::storage::Error) -> CodeError {
        CodeError {
            permanent: false,
            why: e.to_string(),
        }
    }
}

/// The code a message carrying `offer` (of the order `order`, under `recipe`) shows:
/// `None` when the recipe has no unique codes or the offer has ended. The first time, the
/// code is made through the API (a live store; a dry run shows the code it would make and
/// makes none) and recorded.
#[allow(clippy::too_many_arguments)]
pub fn for_offer(
    storage: &Storage,
    snap: &Snapshot,
    store: &StoreConfig,
    api: Option<&Api>,
    key: &[u8],
    order: &str,
    offer: &Offer,
    recipe: Option<Recipe>,
    now: Timestamp,
) -> Result<Option<String>, CodeError> {
    let Some(&percent) = recipe.and_then(|r| store.offers.unique_codes.get(&r)) else {
        return Ok(None);
    };
    if let Some(row) = storage.discount_code(&store.id, order)? {
        return Ok((now < row.expires_at).then_some(row.code));
    }
    let Some(placed) = snap
        .order(&store.id, order)?
        .and_then(|s| s.order.map(|o| o.created_at))
    else {
        return Ok(None);
    };
    let expires_at = Timestamp(placed.0 + store.page.offer_valid_days * DAY_MS);
    if now >= expires_at {
        return Ok(None); // the offer ended: a message now carries no code
    }
    let code = code_name(key, order);
    if store.mode != Mode::Live {
        return Ok(Some(code));
    }
    let api = api.ok_or_else(|| CodeError {
        permanent: true,
        why: "the store has no [stores.api] to make its code".into(),
    })?;
    let product_id = snap
        .variant_of_key(&store.id, &offer.product)?
        .and_then(|v| v.product_id);
    api.create_code(&NewCode {
        code: &code,
        percent,
        starts_at: now,
        expires_at,
        product_id: product_id.as_deref(),
        variant_id: offer.variant_id.as_deref(),
        note: format!("upsell-appliance: the offer of order {order}"),
    })
    .map_err(|e| CodeError {
        permanent: !matches!(
            e,
            crate::outbound::platform::ApiError::Unavailable { .. }
                | crate::outbound::platform::ApiError::Interrupted { .. }
        ),
        why: e.to_string(),
    })?;
    let row = CodeRow {
        code: code.clone(),
        created_at: now,
        expires_at,
    };
    storage.put_discount_code(&store.id, order, &row)?;
    Ok(Some(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_the_offers_own_and_reads_without_ambiguity() {
        let a = code_name(b"key-1", "1001");
        assert_eq!(
            a,
            code_name(b"key-1", "1001"),
            "the same offer, the same code"
        );
        assert_ne!(a, code_name(b"key-1", "1002"));
        assert_ne!(a, code_name(b"key-2", "1001"));
        assert_eq!(a.len(), 13);
        assert!(a[3..].bytes().all(|c| ALPHABET.contains(&c)), "{a}");
        assert!(!a[3..].contains(['0', 'O', '1', 'I', 'L']), "{a}");
    }
}
