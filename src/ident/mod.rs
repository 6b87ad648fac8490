//! Norwegian identifiers found in an FM export: the national identity number (fødselsnummer, with its
//! D-number, H-number and synthetic test variants), the organisation number (organisasjonsnummer) and
//! the HPR number (helsepersonellnummer). Parsing checks the format, the control digits and the birth
//! date exactly as DESIGN section 5 states them; the generators make valid synthetic numbers for the
//! exporter.
//!
//! National identity numbers and HPR numbers are personal data. Nothing in this module may print
//! one: `Debug` and `Display` redact them, and [`IdentError`] messages never quote the input. Read the
//! number only through `as_str()`, to store it.

mod hpr_number;
mod national_id;
mod organisation_number;

pub use hpr_number::HprNumber;
pub use national_id::{
    ControlDigitRule, NationalId, NationalIdKind, accepts_2032_rule, accepts_classic_rule,
    synthetic_fodselsnummer,
};
pub use organisation_number::{OrganisationNumber, organisation_number_with_check};

/// Why an identifier was rejected. The messages name the kind of identifier and the rule it broke,
/// never the characters of the input, so they can go into logs and API error bodies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentError {
    /// The input has the wrong number of characters.
    #[error("{what} must have {expected} digits, but the value has {found} characters")]
    WrongLength {
        what: &'static str,
        expected: &'static str,
        found: usize,
    },
    /// A character is not an ASCII digit (signs, spaces and separators included).
    #[error("{what} may contain only the digits 0-9")]
    NonDigit { what: &'static str },
    /// The control digits (kontrollsiffer) do not match the other digits.
    #[error("the check digit of the {what} does not match its other digits")]
    BadCheckDigit { what: &'static str },
    /// Day and month (after removing the D, H and synthetic offsets) do not form a real date.
    #[error("the {what} does not contain a real birth date")]
    BadDate { what: &'static str },
    /// The individual number (individnummer) is not allocated to any century for this birth year.
    #[error("the individual number of the {what} belongs to no birth century for its year")]
    UnknownCentury { what: &'static str },
    /// Every digit is zero: a placeholder, not an identifier.
    #[error("the {what} is all zeros, a placeholder rather than an identifier")]
    AllZeros { what: &'static str },
}

/// Parses an all-digit string of exactly `N` characters into its digit values.
fn digits<const N: usize>(
    value: &str,
    what: &'static str,
    expected: &'static str,
) -> Result<[u8; N], IdentError> {
    let bytes = value.as_bytes();
    if bytes.len() != N {
        return Err(IdentError::WrongLength {
            what,
            expected,
            found: value.chars().count(),
        });
    }
    let mut out = [0u8; N];
    for (slot, byte) in out.iter_mut().zip(bytes) {
        if !byte.is_ascii_digit() {
            return Err(IdentError::NonDigit { what });
        }
        *slot = byte - b'0';
    }
    Ok(out)
}

/// The weighted sum of `digits` modulo 11, the base of every mod-11 control digit used here.
fn weighted_remainder(digits: &[u8], weights: &[u32]) -> u32 {
    digits
        .iter()
        .zip(weights)
        .map(|(&digit, &weight)| u32::from(digit) * weight)
        .sum::<u32>()
        % 11
}

/// The mod-11 control digit for `digits`: 11 minus the weighted remainder, where 11 becomes 0 and 10
/// means that no control digit exists (such numbers are never issued).
fn mod11_control_digit(digits: &[u8], weights: &[u32]) -> Option<u8> {
    match 11 - weighted_remainder(digits, weights) {
        11 => Some(0),
        10 => None,
        digit => Some(digit as u8),
    }
}
