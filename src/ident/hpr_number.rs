//! The HPR number (helsepersonellnummer) from the Health Personnel Register.
//!
//! HPR numbers have no published control digit, so only the format can be checked here; that every
//! referenced HPR number belongs to a user in the organisation file is checked where both are known.
//! HPR numbers identify people: they are never displayed.

use std::fmt;
use std::hash::{Hash, Hasher};

use super::IdentError;

const WHAT: &str = "HPR number";
const MAX_DIGITS: usize = 9;

/// A well-formed HPR number.
///
/// Real exports write the same number with and without leading zeros (`002127296` in one element,
/// `2127296` elsewhere), so equality and hashing use the numeric value; [`HprNumber::as_str`] keeps
/// the text as written.
#[derive(Clone)]
pub struct HprNumber {
    text: String,
    value: u32,
}

impl HprNumber {
    /// Accepts 1 to 9 ASCII digits and nothing else: no sign, no spaces, no separators. Leading
    /// zeros are allowed because NHN's own sample export pads HPR numbers to nine digits. All zeros is
    /// rejected as a placeholder. Nine digits is the register's field width and fits in a `u32`.
    pub fn parse(value: &str) -> Result<Self, IdentError> {
        let length = value.len();
        if length == 0 || length > MAX_DIGITS {
            return Err(IdentError::WrongLength {
                what: WHAT,
                expected: "1 to 9",
                found: value.chars().count(),
            });
        }
        if !value.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(IdentError::NonDigit { what: WHAT });
        }
        let number = value
            .bytes()
            .fold(0u32, |acc, byte| acc * 10 + u32::from(byte - b'0'));
        if number == 0 {
            return Err(IdentError::AllZeros { what: WHAT });
        }
        Ok(Self {
            text: value.to_owned(),
            value: number,
        })
    }

    /// The number as written in the file, for storage.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The numeric value, the same for `002127296` and `2127296`.
    pub fn value(&self) -> u32 {
        self.value
    }
}

impl PartialEq for HprNumber {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl Eq for HprNumber {}

impl Hash for HprNumber {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.value.hash(state);
    }
}

impl fmt::Display for HprNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted HPR number>")
    }
}

impl fmt::Debug for HprNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HprNumber(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_one_to_nine_digits_and_keeps_the_text() {
        for valid in ["1", "2127296", "002127296", "222200082", "999999999"] {
            let parsed = HprNumber::parse(valid).expect("valid HPR number");
            assert_eq!(parsed.as_str(), valid);
        }
    }

    #[test]
    fn padded_and_unpadded_forms_are_the_same_number() {
        let padded = HprNumber::parse("002127296").unwrap();
        let bare = HprNumber::parse("2127296").unwrap();
        assert_eq!(padded, bare);
        assert_eq!(padded.value(), 2_127_296);
    }

    #[test]
    fn rejects_bad_formats() {
        assert!(matches!(
            HprNumber::parse(""),
            Err(IdentError::WrongLength { found: 0, .. })
        ));
        assert!(matches!(
            HprNumber::parse("1234567890"),
            Err(IdentError::WrongLength { found: 10, .. })
        ));
        for bad in [
            "+2127296", "-2127296", " 2127296", "2127296 ", "21272a6", "２１",
        ] {
            assert!(
                matches!(
                    HprNumber::parse(bad),
                    Err(IdentError::NonDigit { .. } | IdentError::WrongLength { .. })
                ),
                "accepted a malformed HPR number"
            );
        }
        assert!(matches!(
            HprNumber::parse("000000000"),
            Err(IdentError::AllZeros { .. })
        ));
    }

    #[test]
    fn never_prints_the_number() {
        let parsed = HprNumber::parse("222200082").unwrap();
        assert!(!format!("{parsed}").contains("222200082"));
        assert!(!format!("{parsed:?}").contains("222200082"));
        let error = HprNumber::parse("22220008x").unwrap_err();
        assert!(!error.to_string().contains("2222"));
    }
}
