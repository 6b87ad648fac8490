//! The organisation number (organisasjonsnummer) from the Central Coordinating Register for Legal
//! Entities: nine digits, the last a mod-11 control digit over the first eight.
//!
//! Organisation numbers are public register data, so unlike the personal identifiers they may be
//! displayed.

use std::fmt;

use super::{IdentError, digits, mod11_control_digit};

const WHAT: &str = "organisation number";
const WEIGHTS: [u32; 8] = [3, 2, 7, 6, 5, 4, 3, 2];

/// A valid organisation number.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrganisationNumber(String);

impl OrganisationNumber {
    /// Accepts exactly nine ASCII digits whose last digit is the control digit of the first eight
    /// (weights 3,2,7,6,5,4,3,2, mod 11; 11 becomes 0; 10 is never issued). No spaces or separators:
    /// the export format writes the bare number.
    pub fn parse(value: &str) -> Result<Self, IdentError> {
        let digits = digits::<9>(value, WHAT, "9")?;
        match mod11_control_digit(&digits[..8], &WEIGHTS) {
            Some(check) if check == digits[8] => Ok(Self(value.to_owned())),
            _ => Err(IdentError::BadCheckDigit { what: WHAT }),
        }
    }

    /// The nine digits, for storage and comparison.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrganisationNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for OrganisationNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OrganisationNumber({})", self.0)
    }
}

/// Completes the first eight digits (`first8` < 100,000,000, written with leading zeros) with their
/// control digit, or returns `None` when `first8` is too large or no control digit exists for it
/// (remainder 10), the same gap the register leaves. Used by the synthetic exporter.
pub fn organisation_number_with_check(first8: u32) -> Option<String> {
    if first8 >= 100_000_000 {
        return None;
    }
    let text = format!("{first8:08}");
    let digits: Vec<u8> = text.bytes().map(|byte| byte - b'0').collect();
    let check = mod11_control_digit(&digits, &WEIGHTS)?;
    Some(format!("{text}{check}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_known_registered_numbers() {
        for known in ["974760673", "983044778", "994598759", "100100614"] {
            let parsed = OrganisationNumber::parse(known).expect("known valid organisation number");
            assert_eq!(parsed.as_str(), known);
        }
    }

    #[test]
    fn rejects_wrong_length_and_non_digits() {
        assert!(matches!(
            OrganisationNumber::parse("97476067"),
            Err(IdentError::WrongLength { found: 8, .. })
        ));
        assert!(matches!(
            OrganisationNumber::parse("9747606730"),
            Err(IdentError::WrongLength { found: 10, .. })
        ));
        assert!(matches!(
            OrganisationNumber::parse("974 60673"),
            Err(IdentError::NonDigit { .. })
        ));
        assert!(matches!(
            OrganisationNumber::parse("+74760673"),
            Err(IdentError::NonDigit { .. })
        ));
    }

    #[test]
    fn rejects_wrong_check_digit() {
        assert_eq!(
            OrganisationNumber::parse("974760674"),
            Err(IdentError::BadCheckDigit { what: WHAT })
        );
    }

    #[test]
    fn generator_completes_known_numbers() {
        assert_eq!(
            organisation_number_with_check(97476067).as_deref(),
            Some("974760673")
        );
        assert_eq!(
            organisation_number_with_check(98304477).as_deref(),
            Some("983044778")
        );
        assert_eq!(organisation_number_with_check(100_000_000), None);
    }

    #[test]
    fn generator_returns_none_exactly_when_the_remainder_is_ten() {
        // 00000001: weighted sum 2, remainder 2, control digit 9.
        assert_eq!(
            organisation_number_with_check(1).as_deref(),
            Some("000000019")
        );
        // 00000005: weighted sum 10, remainder 10, control digit 11 - 10 = 1.
        assert_eq!(
            organisation_number_with_check(5).as_deref(),
            Some("000000051")
        );
        // 00000006: weighted sum 12, remainder 1, 11 - 1 = 10: no control digit.
        assert_eq!(organisation_number_with_check(6), None);
    }

    proptest! {
        #[test]
        fn generated_numbers_parse_and_every_single_digit_change_is_rejected(first8 in 0u32..100_000_000) {
            let Some(number) = organisation_number_with_check(first8) else {
                return Ok(());
            };
            prop_assert!(OrganisationNumber::parse(&number).is_ok());
            let bytes = number.as_bytes();
            for position in 0..9 {
                for digit in b'0'..=b'9' {
                    if digit == bytes[position] {
                        continue;
                    }
                    let mut mutated = bytes.to_vec();
                    mutated[position] = digit;
                    let mutated = String::from_utf8(mutated).unwrap();
                    prop_assert!(OrganisationNumber::parse(&mutated).is_err());
                }
            }
        }
    }
}
