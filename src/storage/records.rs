//! Versioned on-disk records. Each kind has its own version byte; see `codec` for how a
//! format change is made without breaking old files.

use serde::{Deserialize, Serialize};

use super::codec;
use super::Error;
use crate::engine::affinity::{Feedback, Leaders, Monthly, OrderEvidence, PairingMode};
use crate::engine::catalog::Variant;
use crate::engine::history::{Customer, OrderState};
use crate::engine::{Event, Platform, Source, Timestamp};

pub const EVENT_V1: u8 = 1;
pub const BODY_V1: u8 = 1;
/// `OrderState` without `delivery_failed_at`.
pub const ORDER_V1: u8 = 1;
pub const ORDER_V2: u8 = 2;
pub const CUSTOMER_V1: u8 = 1;
pub const VARIANT_V1: u8 = 1;
pub const ITEM_V1: u8 = 1;
pub const PAIR_V1: u8 = 1;
pub const EVIDENCE_V1: u8 = 1;
pub const PAIRING_V1: u8 = 1;
pub const FEEDBACK_V1: u8 = 1;

/// A product's affinity counts of one kind: as antecedent (A side), as consequent (B side;
/// next-order only, same-order uses the A side for both), and its leader list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRow {
    pub antecedent: Monthly,
    pub consequent: Monthly,
    pub leaders: Leaders,
}

impl ItemRow {
    pub fn is_empty(&self) -> bool {
        self.antecedent.0.is_empty() && self.consequent.0.is_empty() && self.leaders.0.is_empty()
    }
}

/// An item row's counts without its leader list, which is all that reading a rule needs:
/// the row starts with these two fields, so decoding stops before the leaders.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ItemSides {
    pub antecedent: Monthly,
    pub consequent: Monthly,
}

pub fn decode_item_sides(bytes: &[u8]) -> Result<ItemSides, Error> {
    codec::decode("affinity item", ITEM_V1, bytes)
}

/// One pair's counts per month, and (next-order) the sum of the gaps in seconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairRow {
    pub months: Monthly,
    pub gap_secs: u64,
}

/// A manual pairing as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingRow {
    pub priority: i32,
    pub mode: PairingMode,
}

/// One delivery as received: who sent it, what it said, and what we made of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    pub head: EventHead,
    /// The raw request body, byte for byte.
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventHead {
    pub store: String,
    pub platform: Platform,
    pub source: Source,
    pub received_at: Timestamp,
    pub topic: String,
    pub dedupe_key: String,
    pub headers: Vec<(String, String)>,
    pub parsed: ParsedRecord,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParsedRecord {
    Event(Event),
    Ignored,
    Unparseable(String),
    /// Appended last: the variants before it keep their stored numbers.
    Privacy(crate::engine::PrivacyRequest),
}

impl EventRecord {
    /// The head record and the body record, stored in two tables so that a scan of heads
    /// never reads bodies and each kind packs into pages by itself.
    pub fn encode(&self) -> Result<(Vec<u8>, Vec<u8>), Error> {
        Ok((
            codec::encode(EVENT_V1, &self.head)?,
            codec::encode_body(BODY_V1, &self.body),
        ))
    }

    pub fn decode(head: &[u8], body: &[u8]) -> Result<EventRecord, Error> {
        Ok(EventRecord {
            head: Self::decode_head(head)?,
            body: codec::decode_body("event body", BODY_V1, body)?,
        })
    }

    pub fn decode_head(bytes: &[u8]) -> Result<EventHead, Error> {
        codec::decode("event record", EVENT_V1, bytes)
    }
}

pub fn encode_order(o: &OrderState) -> Result<Vec<u8>, Error> {
    codec::encode(ORDER_V2, o)
}

pub fn decode_order(bytes: &[u8]) -> Result<OrderState, Error> {
    use crate::engine::{Fulfillment, Order, Source, Timestamp};
    #[derive(serde::Deserialize)]
    struct V1 {
        order: Option<Order>,
        customer: Option<u64>,
        source: Option<Source>,
        counted: Option<crate::engine::history::Counted>,
        refunds: Vec<(String, i64)>,
        fulfillments: Vec<Fulfillment>,
        shipped_at: Option<Timestamp>,
        delivered_at: Option<Timestamp>,
        delivery_estimate: Option<Timestamp>,
        fetch_requested: Option<Timestamp>,
    }
    if bytes.first() == Some(&ORDER_V1) {
        let v: V1 = codec::decode("order record", ORDER_V1, bytes)?;
        return Ok(OrderState {
            order: v.order,
            customer: v.customer,
            source: v.source,
            counted: v.counted,
            refunds: v.refunds,
            fulfillments: v.fulfillments,
            shipped_at: v.shipped_at,
            delivered_at: v.delivered_at,
            delivery_estimate: v.delivery_estimate,
            fetch_requested: v.fetch_requested,
            delivery_failed_at: None,
        });
    }
    codec::decode("order record", ORDER_V2, bytes)
}

pub fn encode_customer(c: &Customer) -> Result<Vec<u8>, Error> {
    codec::encode(CUSTOMER_V1, c)
}

pub fn decode_customer(bytes: &[u8]) -> Result<Customer, Error> {
    codec::decode("customer record", CUSTOMER_V1, bytes)
}

macro_rules! record {
    ($enc:ident, $dec:ident, $t:ty, $v:ident, $what:literal) => {
        pub fn $enc(x: &$t) -> Result<Vec<u8>, Error> {
            codec::encode($v, x)
        }
        pub fn $dec(bytes: &[u8]) -> Result<$t, Error> {
            codec::decode($what, $v, bytes)
        }
    };
}
record!(
    encode_variant,
    decode_variant,
    Variant,
    VARIANT_V1,
    "catalog entry"
);
record!(encode_item, decode_item, ItemRow, ITEM_V1, "affinity item");
record!(encode_pair, decode_pair, PairRow, PAIR_V1, "affinity pair");
record!(
    encode_evidence,
    decode_evidence,
    OrderEvidence,
    EVIDENCE_V1,
    "order evidence"
);
record!(
    encode_pairing,
    decode_pairing,
    PairingRow,
    PAIRING_V1,
    "manual pairing"
);
record!(
    encode_feedback,
    decode_feedback,
    Feedback,
    FEEDBACK_V1,
    "offer feedback"
);

#[cfg(test)]
mod tests {
    //! Golden bytes: the on-disk format is an API. If one of these fails, a change altered
    //! what stored bytes mean: keep the old decoder under the old version byte instead.

    use super::*;
    use crate::engine::history::{Counted, Customer, OrderState};
    use crate::engine::*;

    fn sample_order() -> Order {
        Order {
            id: "1001".into(),
            name: "#1001".into(),
            created_at: Timestamp(1_763_650_800_000),
            updated_at: Timestamp(1_763_651_100_000),
            currency: Currency::parse("USD").unwrap(),
            total: 11500,
            subtotal: 10500,
            financial_status: Some("paid".into()),
            cancelled_at: None,
            email: Some("jane@example.com".into()),
            phone: None,
            customer: Some(CustomerRef {
                platform_id: Some("42".into()),
                email: Some("jane@example.com".into()),
                phone: Some("+15555550123".into()),
                tags: vec!["vip".into()],
                email_consent: Consent::Subscribed,
                sms_consent: Consent::NotSubscribed,
            }),
            lines: vec![LineItem {
                id: "9".into(),
                product_id: Some("7".into()),
                variant_id: Some("8".into()),
                sku: Some("MUG".into()),
                quantity: 2,
                unit_price: 2500,
                title: "Mug".into(),
                variant_title: None,
                vendor: Some("Acme".into()),
                gift_card: false,
                requires_shipping: true,
            }],
            tags: vec![],
            discount_codes: vec!["WELCOME10".into()],
            shipping: Some(Region {
                country: Some("CA".into()),
                province: Some("ON".into()),
                zip: None,
            }),
            billing: None,
            refunds: vec![],
        }
    }

    const EVENT_GOLDEN: &str = "010464656d6f0000fd800f9a43350300000b6f72646572732f70616964076576656e743a31010f782d73686f706966792d746f7069630b6f72646572732f706169640000010431303031052331303031fd00138f4335030000fdc03a984335030000555344fbd859fb08520104706169640001106a616e65406578616d706c652e636f6d00010102343201106a616e65406578616d706c652e636f6d010c2b31353535353535303132330103766970010201013901013701013801034d554702fb8813034d756700010441636d65000100010957454c434f4d453130010102434101024f4e000000";
    const BODY_GOLDEN: &str = "010b000000b07b226964223a313030317d";

    #[test]
    fn golden_event_record() {
        let rec = EventRecord {
            head: EventHead {
                store: "demo".into(),
                platform: Platform::Shopify,
                source: Source::Webhook,
                received_at: Timestamp(1_763_651_160_000),
                topic: "orders/paid".into(),
                dedupe_key: "event:1".into(),
                headers: vec![("x-shopify-topic".into(), "orders/paid".into())],
                parsed: ParsedRecord::Event(Event::Order {
                    topic: OrderTopic::Paid,
                    order: Box::new(sample_order()),
                }),
            },
            body: br#"{"id":1001}"#.to_vec(),
        };
        let (head, body) = rec.encode().unwrap();
        assert_eq!(hex(&head), EVENT_GOLDEN);
        assert_eq!(hex(&body), BODY_GOLDEN);
        assert_eq!(EventRecord::decode(&head, &body).unwrap(), rec);
    }

    const ORDER_GOLDEN: &str = "01010431303031052331303031fd00138f4335030000fdc03a984335030000555344fbd859fb08520104706169640001106a616e65406578616d706c652e636f6d00010102343201106a616e65406578616d706c652e636f6d010c2b31353535353535303132330103766970010201013901013701013801034d554702fb8813034d756700010441636d65000100010957454c434f4d453130010102434101024f4e0000000103010001fbd85901027231fbe40c000001fd00d02f6d350300000000";

    const ORDER_GOLDEN_V2: &str = "02010431303031052331303031fd00138f4335030000fdc03a984335030000555344fbd859fb08520104706169640001106a616e65406578616d706c652e636f6d00010102343201106a616e65406578616d706c652e636f6d010c2b31353535353535303132330103766970010201013901013701013801034d554702fb8813034d756700010441636d65000100010957454c434f4d453130010102434101024f4e0000000103010001fbd85901027231fbe40c000001fd00d02f6d35030000000001fd02d02f6d35030000";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn golden_order_and_customer_records() {
        let state = OrderState {
            order: Some(sample_order()),
            customer: Some(3),
            source: Some(Source::Webhook),
            counted: Some(Counted { total: 11500 }),
            refunds: vec![("r1".into(), 1650)],
            fulfillments: vec![],
            shipped_at: None,
            delivered_at: Some(Timestamp(1_764_000_000_000)),
            delivery_estimate: None,
            fetch_requested: None,
            delivery_failed_at: None,
        };
        // A record of the first version still reads (it has no failed delivery).
        assert_eq!(decode_order(&unhex(ORDER_GOLDEN)).unwrap(), state);
        let failed = OrderState {
            delivery_failed_at: Some(Timestamp(1_764_000_000_001)),
            ..state
        };
        let bytes = encode_order(&failed).unwrap();
        assert_eq!(hex(&bytes), ORDER_GOLDEN_V2);
        assert_eq!(decode_order(&bytes).unwrap(), failed);

        let mut c = Customer::new(3);
        c.email = Some("jane@example.com".into());
        c.platform_ids = vec!["42".into()];
        c.order_count = 2;
        c.spent = 23000;
        c.refunded = 1650;
        c.product_ids.insert("7".into());
        let bytes = encode_customer(&c).unwrap();
        assert_eq!(hex(&bytes), CUSTOMER_GOLDEN);
        assert_eq!(decode_customer(&bytes).unwrap(), c);
    }

    const CUSTOMER_GOLDEN: &str =
        "01030102343201106a616e65406578616d706c652e636f6d000000000002fbb0b3fbe40c000000010137";

    #[test]
    fn newer_record_versions_are_refused_with_a_clear_error() {
        let err = decode_order(&[9, 0, 0]).unwrap_err().to_string();
        assert!(err.contains("record version 9 is not known"), "{err}");
        let err = EventRecord::decode_head(&[1, 4]).unwrap_err().to_string();
        assert!(err.starts_with("stored record: event record: "), "{err}");
        let err = codec::decode_body("event body", BODY_V1, &[1, 200, 0, 0, 0])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("stored record: event body: "), "{err}");
    }

    #[test]
    fn item_sides_read_the_counts_of_an_item_row() {
        let row = ItemRow {
            antecedent: Monthly(vec![(3, 2), (7, 9)]),
            consequent: Monthly(vec![(5, 1)]),
            leaders: Leaders(vec![(4, 9), (8, 2)]),
        };
        let sides = decode_item_sides(&encode_item(&row).unwrap()).unwrap();
        assert_eq!(sides.antecedent, row.antecedent);
        assert_eq!(sides.consequent, row.consequent);
    }
}
