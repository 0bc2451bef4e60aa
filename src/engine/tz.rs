//! A customer's time zone from the shipping address: the ISO 3166-1 alpha-2 country and the
//! subdivision code the platforms send (Shopify `province_code`, WooCommerce `state`: "NY",
//! "ON", "NSW", "Q ROO"; also the full ISO form "US-NY", any case, padded). SMS quiet hours
//! are kept in this zone; `None` means "no good guess", and the caller uses the store's zone.
//!
//! A split state or province gets the zone where most of its people live (Texas: Chicago,
//! Florida and Kentucky: New York, Oregon: Los Angeles, Nunavut: Iqaluit, Chihuahua: its
//! capital's zone, not Ciudad Juárez's). A country without a subdivision, or with one the
//! tables do not list, gets its default zone when one zone holds nearly all (≳ 85 %) of its
//! people: Spain, Portugal, Mexico (≈ 88 %), Brazil (≈ 93 %), Chile, Ecuador. The US,
//! Canada, Australia, Indonesia (≈ 79 % on Jakarta time) and Russia have no default, so an
//! address there without a listed subdivision gives `None`; for Russia only the Moscow and
//! St Petersburg regions and Kaliningrad are listed, the other 80 subjects give `None`.

use chrono_tz::{Africa, America, Asia, Atlantic, Australia, Europe, Indian, Pacific, Tz};

/// Each country's zone when the subdivision is absent or not in [`SUBDIVISIONS`].
#[rustfmt::skip]
const COUNTRIES: &[(&str, Tz)] = &[
    // Europe
    ("AD", Europe::Andorra), ("AL", Europe::Tirane), ("AT", Europe::Vienna),
    ("BA", Europe::Sarajevo), ("BE", Europe::Brussels), ("BG", Europe::Sofia),
    ("BY", Europe::Minsk), ("CH", Europe::Zurich), ("CY", Asia::Nicosia), ("CZ", Europe::Prague),
    ("DE", Europe::Berlin), ("DK", Europe::Copenhagen), ("EE", Europe::Tallinn),
    ("ES", Europe::Madrid), ("FI", Europe::Helsinki), ("FO", Atlantic::Faroe),
    ("FR", Europe::Paris), ("GB", Europe::London), ("GG", Europe::Guernsey),
    ("GI", Europe::Gibraltar), ("GR", Europe::Athens), ("HR", Europe::Zagreb),
    ("HU", Europe::Budapest), ("IE", Europe::Dublin), ("IM", Europe::Isle_of_Man),
    ("IS", Atlantic::Reykjavik), ("IT", Europe::Rome), ("JE", Europe::Jersey),
    ("LI", Europe::Vaduz), ("LT", Europe::Vilnius), ("LU", Europe::Luxembourg),
    ("LV", Europe::Riga), ("MC", Europe::Monaco), ("MD", Europe::Chisinau),
    ("ME", Europe::Podgorica), ("MK", Europe::Skopje), ("MT", Europe::Malta),
    ("NL", Europe::Amsterdam), ("NO", Europe::Oslo), ("PL", Europe::Warsaw), ("PT", Europe::Lisbon),
    ("RO", Europe::Bucharest), ("RS", Europe::Belgrade), ("SE", Europe::Stockholm),
    ("SI", Europe::Ljubljana), ("SK", Europe::Bratislava), ("SM", Europe::San_Marino),
    ("TR", Europe::Istanbul), ("UA", Europe::Kyiv), ("VA", Europe::Vatican),
    ("XK", Europe::Belgrade),
    // Asia and the Middle East
    ("AE", Asia::Dubai), ("AM", Asia::Yerevan), ("AZ", Asia::Baku), ("BD", Asia::Dhaka),
    ("BH", Asia::Bahrain), ("CN", Asia::Shanghai), ("GE", Asia::Tbilisi), ("HK", Asia::Hong_Kong),
    ("IL", Asia::Jerusalem), ("IN", Asia::Kolkata), ("JO", Asia::Amman), ("JP", Asia::Tokyo),
    ("KR", Asia::Seoul), ("KW", Asia::Kuwait), ("KZ", Asia::Almaty), ("LB", Asia::Beirut),
    ("LK", Asia::Colombo), ("MO", Asia::Macau), ("MY", Asia::Kuala_Lumpur), ("NP", Asia::Kathmandu),
    ("OM", Asia::Muscat), ("PH", Asia::Manila), ("PK", Asia::Karachi), ("QA", Asia::Qatar),
    ("SA", Asia::Riyadh), ("SG", Asia::Singapore), ("TH", Asia::Bangkok), ("TW", Asia::Taipei),
    ("UZ", Asia::Tashkent), ("VN", Asia::Ho_Chi_Minh),
    // Africa and the Indian Ocean
    ("DZ", Africa::Algiers), ("EG", Africa::Cairo), ("GH", Africa::Accra), ("KE", Africa::Nairobi),
    ("MA", Africa::Casablanca), ("MU", Indian::Mauritius), ("NG", Africa::Lagos),
    ("RE", Indian::Reunion), ("TN", Africa::Tunis), ("ZA", Africa::Johannesburg),
    // The Americas
    ("AR", America::Argentina::Buenos_Aires), ("BB", America::Barbados), ("BO", America::La_Paz),
    ("BR", America::Sao_Paulo), ("BS", America::Nassau), ("CL", America::Santiago),
    ("CO", America::Bogota), ("CR", America::Costa_Rica), ("DO", America::Santo_Domingo),
    ("EC", America::Guayaquil), ("GP", America::Guadeloupe), ("GT", America::Guatemala),
    ("HN", America::Tegucigalpa), ("JM", America::Jamaica), ("MQ", America::Martinique),
    ("MX", America::Mexico_City), ("NI", America::Managua), ("PA", America::Panama),
    ("PE", America::Lima), ("PR", America::Puerto_Rico), ("PY", America::Asuncion),
    ("SV", America::El_Salvador), ("TT", America::Port_of_Spain), ("UY", America::Montevideo),
    ("VE", America::Caracas),
    // Oceania (New Zealand's Chatham Islands, 600 people, are left to Auckland)
    ("FJ", Pacific::Fiji), ("GU", Pacific::Guam), ("NZ", Pacific::Auckland),
];

/// Subdivisions whose zone differs from their country's default (or whose country has
/// none): (country, zone, codes). Codes are normalized as [`of_address`] normalizes its
/// input: upper case, no country prefix, letters and digits only ("Q ROO" is "QROO").
/// Shopify, WooCommerce and ISO spellings are listed where they differ.
#[rustfmt::skip]
const SUBDIVISIONS: &[(&str, Tz, &[&str])] = &[
    ("US", America::New_York, &["CT", "DC", "DE", "FL", "GA", "KY", "MA", "MD", "ME", "NC",
                                "NH", "NJ", "NY", "OH", "PA", "RI", "SC", "VA", "VT", "WV"]),
    ("US", America::Detroit, &["MI"]),
    ("US", America::Indiana::Indianapolis, &["IN"]),
    ("US", America::Chicago, &["AL", "AR", "IA", "IL", "KS", "LA", "MN", "MO", "MS", "ND",
                               "NE", "OK", "SD", "TN", "TX", "WI"]),
    ("US", America::Denver, &["CO", "MT", "NM", "UT", "WY"]),
    ("US", America::Boise, &["ID"]),
    ("US", America::Phoenix, &["AZ"]),
    ("US", America::Los_Angeles, &["CA", "NV", "OR", "WA"]),
    ("US", America::Anchorage, &["AK"]),
    ("US", Pacific::Honolulu, &["HI"]),
    ("US", America::Puerto_Rico, &["PR"]),
    ("US", America::St_Thomas, &["VI"]),
    ("US", Pacific::Guam, &["GU"]),
    ("US", Pacific::Saipan, &["MP"]),
    ("US", Pacific::Pago_Pago, &["AS"]),
    ("CA", America::Vancouver, &["BC"]),
    ("CA", America::Edmonton, &["AB", "NT"]),
    ("CA", America::Regina, &["SK"]),
    ("CA", America::Winnipeg, &["MB"]),
    ("CA", America::Toronto, &["ON", "QC"]),
    ("CA", America::Moncton, &["NB"]),
    ("CA", America::Halifax, &["NS", "PE"]),
    ("CA", America::St_Johns, &["NL"]),
    ("CA", America::Whitehorse, &["YT"]),
    ("CA", America::Iqaluit, &["NU"]),
    ("AU", Australia::Sydney, &["NSW", "ACT"]),
    ("AU", Australia::Melbourne, &["VIC"]),
    ("AU", Australia::Brisbane, &["QLD"]),
    ("AU", Australia::Adelaide, &["SA"]),
    ("AU", Australia::Hobart, &["TAS"]),
    ("AU", Australia::Darwin, &["NT"]),
    ("AU", Australia::Perth, &["WA"]),
    ("BR", America::Manaus, &["AM"]),
    ("BR", America::Cuiaba, &["MT"]),
    ("BR", America::Campo_Grande, &["MS"]),
    ("BR", America::Porto_Velho, &["RO"]),
    ("BR", America::Boa_Vista, &["RR"]),
    ("BR", America::Rio_Branco, &["AC"]),
    // Shopify, WooCommerce, ISO.
    ("MX", America::Tijuana, &["BC", "BCN"]),
    ("MX", America::Mazatlan, &["BCS", "BS", "SIN", "SI", "NAY", "NA"]),
    ("MX", America::Hermosillo, &["SON", "SO"]),
    ("MX", America::Chihuahua, &["CHIH", "CH", "CHH"]),
    ("MX", America::Cancun, &["QROO", "QR", "ROO"]),
    // Canarias (ISO community), Las Palmas and Santa Cruz de Tenerife (letters and INE numbers).
    ("ES", Atlantic::Canary, &["CN", "GC", "TF", "35", "38"]),
    ("PT", Atlantic::Azores, &["20"]),
    ("PT", Atlantic::Madeira, &["30"]),
    ("CL", America::Punta_Arenas, &["MA"]),
    ("CL", America::Coyhaique, &["AI"]),
    ("EC", Pacific::Galapagos, &["W"]),
    ("ID", Asia::Jakarta, &["AC", "SU", "SB", "RI", "KR", "JA", "SS", "BB", "BE", "LA",
                            "JK", "JB", "BT", "JT", "JI", "YO", "KB", "KT"]),
    ("ID", Asia::Makassar, &["BA", "NB", "NT", "KS", "KI", "KU", "SA", "ST", "SG", "SR",
                             "SN", "GO"]),
    ("ID", Asia::Jayapura, &["MA", "MU", "PA", "PB", "PD", "PE", "PS", "PT"]),
    ("RU", Europe::Moscow, &["MOW", "MOS", "SPE", "LEN"]),
    ("RU", Europe::Kaliningrad, &["KGD"]),
];

/// A customer's time zone for an order: its shipping address's, else `fallback` (the
/// store's).
pub fn of_order(order: Option<&crate::engine::Order>, fallback: Tz) -> Tz {
    order
        .and_then(|o| o.shipping.as_ref())
        .and_then(|r| of_address(r.country.as_deref()?, r.province.as_deref()))
        .unwrap_or(fallback)
}

/// The customer's zone from the shipping country (ISO alpha-2, "UK" taken for "GB") and
/// subdivision; `None` when the country is unknown or spans zones and the subdivision does
/// not settle it. See the module documentation for the choices made.
pub fn of_address(country: &str, province: Option<&str>) -> Option<Tz> {
    let country = match country.trim().to_ascii_uppercase() {
        uk if uk == "UK" => "GB".to_owned(),
        other => other,
    };
    let code = province
        .map(|p| subdivision(&country, p))
        .unwrap_or_default();
    SUBDIVISIONS
        .iter()
        .find(|(c, _, codes)| *c == country && codes.contains(&code.as_str()))
        .map(|&(_, tz, _)| tz)
        .or_else(|| {
            COUNTRIES
                .iter()
                .find(|(c, _)| *c == country)
                .map(|&(_, tz)| tz)
        })
}

/// A subdivision code as the tables spell it: "us-ny " and "NY" are "NY", "Q ROO" is "QROO".
fn subdivision(country: &str, raw: &str) -> String {
    let upper = raw.trim().to_ascii_uppercase();
    let code = upper
        .strip_prefix(country)
        .and_then(|rest| rest.strip_prefix('-'))
        .unwrap_or(&upper);
    code.chars().filter(char::is_ascii_alphanumeric).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn addresses_resolve_to_the_expected_zone() {
        use America as Am;
        #[rustfmt::skip]
        let cases: &[(&str, Option<&str>, Option<Tz>)] = &[
            // One zone: the province does not matter; case, padding and "UK" are accepted.
            ("DE", None, Some(Europe::Berlin)), ("de", Some("BY"), Some(Europe::Berlin)),
            (" GB ", Some("ENG"), Some(Europe::London)), ("UK", None, Some(Europe::London)),
            ("JP", Some("JP-13"), Some(Asia::Tokyo)), ("NZ", None, Some(Pacific::Auckland)),
            // A default zone with exceptions.
            ("ES", None, Some(Europe::Madrid)), ("ES", Some("M"), Some(Europe::Madrid)),
            ("ES", Some("GC"), Some(Atlantic::Canary)), ("ES", Some("tf"), Some(Atlantic::Canary)),
            ("ES", Some("ES-CN"), Some(Atlantic::Canary)), ("PT", Some("13"), Some(Europe::Lisbon)),
            ("PT", Some("20"), Some(Atlantic::Azores)),
            ("PT", Some("PT-30"), Some(Atlantic::Madeira)), ("MX", None, Some(Am::Mexico_City)),
            ("MX", Some("JAL"), Some(Am::Mexico_City)), ("MX", Some("Q ROO"), Some(Am::Cancun)),
            ("MX", Some("MX-ROO"), Some(Am::Cancun)), ("MX", Some("BC"), Some(Am::Tijuana)),
            ("MX", Some("SON"), Some(Am::Hermosillo)), ("BR", None, Some(Am::Sao_Paulo)),
            ("BR", Some("SP"), Some(Am::Sao_Paulo)), ("BR", Some("AM"), Some(Am::Manaus)),
            ("CL", Some("MA"), Some(Am::Punta_Arenas)), ("EC", Some("W"), Some(Pacific::Galapagos)),
            // No default: the subdivision decides, or nothing does.
            ("US", Some("NY"), Some(Am::New_York)), ("US", Some("US-NY"), Some(Am::New_York)),
            ("us", Some(" us-ca "), Some(Am::Los_Angeles)), ("US", Some("TX"), Some(Am::Chicago)),
            ("US", Some("IN"), Some(Am::Indiana::Indianapolis)),
            ("US", Some("AZ"), Some(Am::Phoenix)), ("US", Some("HI"), Some(Pacific::Honolulu)),
            ("US", Some("AK"), Some(Am::Anchorage)), ("US", None, None), ("US", Some(""), None),
            ("US", Some("AE"), None), ("CA", Some("SK"), Some(Am::Regina)),
            ("CA", Some("NL"), Some(Am::St_Johns)), ("CA", Some("NT"), Some(Am::Edmonton)),
            ("CA", Some("NY"), None), ("CA", None, None),
            ("AU", Some("QLD"), Some(Australia::Brisbane)),
            ("AU", Some("act"), Some(Australia::Sydney)),
            ("AU", Some("NT"), Some(Australia::Darwin)), ("AU", None, None),
            ("ID", Some("BA"), Some(Asia::Makassar)), ("ID", Some("JK"), Some(Asia::Jakarta)),
            ("ID", None, None), ("RU", Some("MOW"), Some(Europe::Moscow)),
            ("RU", Some("NVS"), None),
            // Unknown or not alpha-2.
            ("ZZ", None, None), ("", None, None), ("USA", Some("NY"), None),
        ];
        for &(country, province, want) in cases {
            assert_eq!(
                of_address(country, province),
                want,
                "{country:?} {province:?}"
            );
        }
    }

    #[test]
    fn tables_are_normalized_and_unambiguous() {
        let mut countries = HashSet::new();
        for &(country, _) in COUNTRIES {
            assert!(country.len() == 2 && country.chars().all(|c| c.is_ascii_uppercase()));
            assert!(countries.insert(country), "{country} listed twice");
        }
        let mut pairs = HashSet::new();
        for &(country, _, codes) in SUBDIVISIONS {
            assert!(country.len() == 2 && country.chars().all(|c| c.is_ascii_uppercase()));
            for &code in codes {
                assert_eq!(
                    subdivision(country, code),
                    code,
                    "{country} {code} is not normalized"
                );
                assert!(
                    pairs.insert((country, code)),
                    "{country} {code} listed twice"
                );
            }
        }
    }
}
