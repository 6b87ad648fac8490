//! The national identity number (fødselsnummer, `ddmmyyiiikk`) and its variants: D-number (day + 40),
//! H-number (month + 40) and synthetic test identities from Test-Norge/Tenor (month + 80).
//!
//! Control digits, as DESIGN section 5 states them:
//! k1 = 11 - (3,7,6,1,8,9,4,5,2 · first nine) mod 11 and k2 = 11 - (5,4,3,2,7,6,5,4,3,2 · first ten)
//! mod 11, where 11 becomes 0 and 10 means the number does not exist. Numbers issued under the
//! personal-number rule that takes effect in 2032 keep k2 but let k1 take four values; see
//! [`accepts_2032_rule`].
//!
//! The number and the birth date in it are personal data: they are never displayed.

use std::fmt;

use chrono::{Datelike, NaiveDate};

use super::{IdentError, digits, mod11_control_digit, weighted_remainder};

const WHAT: &str = "national identity number";

/// Weights of k1 over the first nine digits, then 1 for k1 itself: a classic number has a weighted
/// remainder of 0 over the first ten digits.
const K1_WEIGHTS: [u32; 10] = [3, 7, 6, 1, 8, 9, 4, 5, 2, 1];
/// Weights of k2 over the first ten digits, then 1 for k2 itself.
const K2_WEIGHTS: [u32; 11] = [5, 4, 3, 2, 7, 6, 5, 4, 3, 2, 1];

/// Which register issued the number, read from the offsets on day and month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NationalIdKind {
    /// An ordinary fødselsnummer from the National Population Register.
    Fodselsnummer,
    /// A D-number (day + 40), for people who are not resident in Norway.
    DNumber,
    /// An H-number, hjelpenummer (month + 40), a health-sector number for people without either.
    HNumber,
}

impl fmt::Display for NationalIdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fodselsnummer => "fødselsnummer",
            Self::DNumber => "D-number",
            Self::HNumber => "H-number",
        })
    }
}

/// Which rule the first control digit k1 satisfies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlDigitRule {
    /// k1 is the classic control digit: the weighted remainder including k1 is 0.
    Classic,
    /// k1 is one of the three extra values the 2032 rule allows (remainder 1, 2 or 3); only numbers
    /// issued under that rule look like this.
    From2032,
}

/// A valid national identity number.
///
/// `Debug` and `Display` show only the kind and flags, never the number or the birth date.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NationalId {
    number: String,
    /// Which register issued it.
    pub kind: NationalIdKind,
    /// A synthetic test identity from Test-Norge/Tenor (month + 80), never a real person.
    pub synthetic: bool,
    /// The birth date with the D, H and synthetic offsets removed and the century derived from the
    /// individual number.
    pub birth_date: NaiveDate,
    /// Which rule k1 satisfied.
    pub control_rule: ControlDigitRule,
}

impl NationalId {
    /// Parses an 11-digit national identity number (no spaces or separators).
    ///
    /// Checks, in order: length and digits, k2, k1 (classic, or the 2032 rule), the day and month
    /// offsets, the century from the individual number, and that the birth date exists.
    pub fn parse(value: &str) -> Result<Self, IdentError> {
        let digits = digits::<11>(value, WHAT, "11")?;
        let control_rule = control_rule(&digits).ok_or(IdentError::BadCheckDigit { what: WHAT })?;

        let raw_day = digits[0] * 10 + digits[1];
        let raw_month = digits[2] * 10 + digits[3];
        let year_in_century = digits[4] * 10 + digits[5];
        let individual =
            u16::from(digits[6]) * 100 + u16::from(digits[7]) * 10 + u16::from(digits[8]);

        let (day, d_number) = match raw_day {
            1..=31 => (raw_day, false),
            41..=71 => (raw_day - 40, true),
            _ => return Err(IdentError::BadDate { what: WHAT }),
        };
        let (month, h_number, synthetic) = match raw_month {
            1..=12 => (raw_month, false, false),
            41..=52 => (raw_month - 40, true, false),
            81..=92 => (raw_month - 80, false, true),
            _ => return Err(IdentError::BadDate { what: WHAT }),
        };
        let kind = match (d_number, h_number) {
            (false, false) => NationalIdKind::Fodselsnummer,
            (true, false) => NationalIdKind::DNumber,
            (false, true) => NationalIdKind::HNumber,
            // No register issues a number that is both.
            (true, true) => return Err(IdentError::BadDate { what: WHAT }),
        };

        let century = century(individual, year_in_century)
            .ok_or(IdentError::UnknownCentury { what: WHAT })?;
        let birth_date = NaiveDate::from_ymd_opt(
            century + i32::from(year_in_century),
            u32::from(month),
            u32::from(day),
        )
        .ok_or(IdentError::BadDate { what: WHAT })?;

        Ok(Self {
            number: value.to_owned(),
            kind,
            synthetic,
            birth_date,
            control_rule,
        })
    }

    /// The eleven digits, for storage. Never log what this returns.
    pub fn as_str(&self) -> &str {
        &self.number
    }
}

impl fmt::Debug for NationalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NationalId")
            .field("number", &"<redacted>")
            .field("kind", &self.kind)
            .field("synthetic", &self.synthetic)
            .field("control_rule", &self.control_rule)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for NationalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {}>", self.kind)
    }
}

/// The first year of the century the individual number (iii) assigns to a two-digit birth year,
/// per the National Population Register's allocation:
/// 000-499: 1900-1999; 500-749: 1854-1899; 500-999: 2000-2039; 900-999: 1940-1999.
fn century(individual: u16, year_in_century: u8) -> Option<i32> {
    match (individual, year_in_century) {
        (0..=499, _) => Some(1900),
        (500..=749, 54..=99) => Some(1800),
        (500..=999, 0..=39) => Some(2000),
        (900..=999, 40..=99) => Some(1900),
        _ => None,
    }
}

/// Which k1 rule the digits satisfy, if k2 holds. `None` when either control digit fails.
fn control_rule(digits: &[u8; 11]) -> Option<ControlDigitRule> {
    if weighted_remainder(digits, &K2_WEIGHTS) != 0 {
        return None;
    }
    match weighted_remainder(&digits[..10], &K1_WEIGHTS) {
        0 => Some(ControlDigitRule::Classic),
        1..=3 => Some(ControlDigitRule::From2032),
        _ => None,
    }
}

/// Whether both control digits hold under the classic rule: k1 and k2 are each the mod-11 control
/// digit of the digits before them. Looks only at the control digits, not at the date; false for
/// anything that is not eleven ASCII digits.
pub fn accepts_classic_rule(number: &str) -> bool {
    digits::<11>(number, WHAT, "11")
        .ok()
        .and_then(|digits| control_rule(&digits))
        == Some(ControlDigitRule::Classic)
}

/// Whether the control digits hold under the personal-number rule that takes effect in 2032.
///
/// When the individual numbers for a birth date run out, the National Population Register stops
/// treating k1 as a control digit that must match: it may take any of four values, those for which
/// the weighted sum of the first ten digits including k1 (weights 3,7,6,1,8,9,4,5,2,1) leaves a
/// remainder of 0, 1, 2 or 3 modulo 11. k2 is unchanged and must still hold, so every single-digit
/// error is still caught (k2's weights are all non-zero modulo the prime 11).
///
/// Every classic number also passes this rule (remainder 0). We accept such numbers today because an
/// export may be made after 2032, and the rule applies to numbers issued then whatever their birth
/// date. Looks only at the control digits, not at the date; false for anything that is not eleven
/// ASCII digits.
pub fn accepts_2032_rule(number: &str) -> bool {
    digits::<11>(number, WHAT, "11")
        .ok()
        .and_then(|digits| control_rule(&digits))
        .is_some()
}

/// A valid synthetic Test-Norge/Tenor fødselsnummer (month + 80) for `birth` and the individual
/// number `individual` (0-999), with classic control digits so that systems that only know the old
/// rule accept it too.
///
/// Returns `None` when `individual` is above 999, when it does not belong to the century of the
/// birth year (see the allocation in [`NationalId::parse`]), or when no classic control digits
/// exist for it (a remainder of 10 for k1 or k2). The caller tries the next individual number.
pub fn synthetic_fodselsnummer(birth: NaiveDate, individual: u16) -> Option<String> {
    if individual > 999 {
        return None;
    }
    let year_in_century = u8::try_from(birth.year().rem_euclid(100)).ok()?;
    if century(individual, year_in_century)? + i32::from(year_in_century) != birth.year() {
        return None;
    }
    let mut digits = [0u8; 11];
    let month = birth.month() as u8 + 80;
    let day = birth.day() as u8;
    digits[0] = day / 10;
    digits[1] = day % 10;
    digits[2] = month / 10;
    digits[3] = month % 10;
    digits[4] = year_in_century / 10;
    digits[5] = year_in_century % 10;
    digits[6] = (individual / 100) as u8;
    digits[7] = (individual / 10 % 10) as u8;
    digits[8] = (individual % 10) as u8;
    digits[9] = mod11_control_digit(&digits[..9], &K1_WEIGHTS[..9])?;
    digits[10] = mod11_control_digit(&digits[..10], &K2_WEIGHTS[..10])?;
    Some(
        digits
            .iter()
            .map(|digit| char::from(b'0' + digit))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds a number from its first nine digits with k1 chosen so that the k1 remainder is
    /// `k1_remainder` (0 for the classic rule), computed here from DESIGN section 5 independently of
    /// the module's helpers. `None` when k1 or k2 would be 10.
    fn with_control_digits(first_nine: &str, k1_remainder: u32) -> Option<String> {
        let digits: Vec<u32> = first_nine.bytes().map(|b| u32::from(b - b'0')).collect();
        let s1: u32 = [3, 7, 6, 1, 8, 9, 4, 5, 2]
            .iter()
            .zip(&digits)
            .map(|(w, d)| w * d)
            .sum();
        let k1 = (k1_remainder + 11 * 11 - s1 % 11) % 11;
        if k1 == 10 {
            return None;
        }
        let mut ten = digits.clone();
        ten.push(k1);
        let s2: u32 = [5, 4, 3, 2, 7, 6, 5, 4, 3, 2]
            .iter()
            .zip(&ten)
            .map(|(w, d)| w * d)
            .sum();
        let k2 = (11 - s2 % 11) % 11;
        if k2 == 10 {
            return None;
        }
        Some(format!("{first_nine}{k1}{k2}"))
    }

    /// The first nine digits for a date with the given day and month offsets.
    fn first_nine(date: NaiveDate, day_offset: u32, month_offset: u32, individual: u16) -> String {
        format!(
            "{:02}{:02}{:02}{:03}",
            date.day() + day_offset,
            date.month() + month_offset,
            date.year() % 100,
            individual
        )
    }

    /// An individual number valid for the year's century, picked from `seed`.
    fn individual_for_year(year: i32, seed: u16) -> u16 {
        match year {
            1854..=1899 => 500 + seed % 250,
            1900..=1939 => seed % 500,
            1940..=1999 => {
                if seed.is_multiple_of(2) {
                    seed % 500
                } else {
                    900 + seed % 100
                }
            }
            2000..=2039 => 500 + seed % 500,
            _ => unreachable!("year outside the allocation"),
        }
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn accepts_published_test_persons_with_their_birth_dates() {
        // Test persons from NHN's sample export (sfm-format); the file gives the first two birth dates.
        for (number, birth) in [
            ("26115400524", date(1954, 11, 26)),
            ("09010557876", date(2005, 1, 9)),
            ("12018729510", date(1987, 1, 12)),
            ("07013900188", date(1939, 1, 7)),
        ] {
            let id = NationalId::parse(number).expect("published test person");
            assert_eq!(id.birth_date, birth);
            assert_eq!(id.kind, NationalIdKind::Fodselsnummer);
            assert!(!id.synthetic);
            assert_eq!(id.control_rule, ControlDigitRule::Classic);
            assert_eq!(id.as_str(), number);
        }
    }

    #[test]
    fn numbers_built_from_a_date_parse_back_to_that_date() {
        for (birth, individual) in [
            (date(1860, 5, 17), 612),
            (date(1905, 12, 31), 123),
            (date(1970, 6, 1), 950),
            (date(1999, 2, 28), 400),
            (date(2000, 2, 29), 501),
            (date(2024, 7, 9), 980),
        ] {
            let Some(number) = (0..20)
                .map(|step| individual + step)
                .find_map(|i| with_control_digits(&first_nine(birth, 0, 0, i), 0))
            else {
                panic!("no control digits in 20 individual numbers");
            };
            let id = NationalId::parse(&number).unwrap();
            assert_eq!(id.birth_date, birth);
            assert_eq!(id.kind, NationalIdKind::Fodselsnummer);
        }
    }

    #[test]
    fn detects_d_h_and_synthetic_numbers() {
        let birth = date(1985, 3, 14);
        let cases = [
            (40, 0, NationalIdKind::DNumber, false),
            (0, 40, NationalIdKind::HNumber, false),
            (0, 80, NationalIdKind::Fodselsnummer, true),
            (40, 80, NationalIdKind::DNumber, true),
        ];
        for (day_offset, month_offset, kind, synthetic) in cases {
            let number = (100..200)
                .find_map(|i| {
                    with_control_digits(&first_nine(birth, day_offset, month_offset, i), 0)
                })
                .unwrap();
            let id = NationalId::parse(&number).unwrap();
            assert_eq!((id.kind, id.synthetic), (kind, synthetic));
            assert_eq!(id.birth_date, birth);
        }
        // D and H at once is not issued.
        let both = (100..200)
            .find_map(|i| with_control_digits(&first_nine(birth, 40, 40, i), 0))
            .unwrap();
        assert!(matches!(
            NationalId::parse(&both),
            Err(IdentError::BadDate { .. })
        ));
    }

    #[test]
    fn rejects_dates_that_do_not_exist() {
        for (day, month, year, individual) in [
            (31, 2, 85, 123),  // 31 February
            (29, 2, 0, 123),   // 1900 is not a leap year (000-499 means 1900-1999)
            (32, 1, 85, 123),  // day 32
            (0, 1, 85, 123),   // day 0
            (15, 13, 85, 123), // month 13
            (15, 0, 85, 123),  // month 0
            (15, 93, 85, 123), // synthetic month 13
            (72, 1, 85, 123),  // D-number day 32
        ] {
            let prefix = format!("{day:02}{month:02}{year:02}");
            let number = (0..50)
                .find_map(|step| {
                    with_control_digits(&format!("{prefix}{:03}", individual + step), 0)
                })
                .unwrap();
            assert!(
                matches!(NationalId::parse(&number), Err(IdentError::BadDate { .. })),
                "accepted an impossible date"
            );
        }
        // 29 February 2000 exists (individual 500-999 with year 00-39 means 2000-2039).
        let leap = (500..550)
            .find_map(|i| with_control_digits(&format!("290200{i:03}"), 0))
            .unwrap();
        assert_eq!(
            NationalId::parse(&leap).unwrap().birth_date,
            date(2000, 2, 29)
        );
    }

    #[test]
    fn rejects_individual_numbers_outside_the_century_allocation() {
        // 500-749 with year 40-53 and 750-899 with year 40-99 belong to no century.
        for (year, start) in [(45, 600), (53, 500), (60, 800)] {
            let number = (start..start + 50)
                .find_map(|i| with_control_digits(&format!("0101{year:02}{i:03}"), 0))
                .unwrap();
            assert!(matches!(
                NationalId::parse(&number),
                Err(IdentError::UnknownCentury { .. })
            ));
        }
    }

    #[test]
    fn rejects_wrong_length_and_non_digits() {
        assert!(matches!(
            NationalId::parse("2611540052"),
            Err(IdentError::WrongLength { found: 10, .. })
        ));
        assert!(matches!(
            NationalId::parse("261154 00524"),
            Err(IdentError::WrongLength { found: 12, .. })
        ));
        assert!(matches!(
            NationalId::parse("2611540052x"),
            Err(IdentError::NonDigit { .. })
        ));
        assert!(matches!(
            NationalId::parse(" 6115400524"),
            Err(IdentError::NonDigit { .. })
        ));
    }

    #[test]
    fn the_2032_rule_accepts_k1_remainders_one_to_three_only_when_k2_holds() {
        let birth = date(1990, 8, 21);
        let mut checked = [false; 4];
        for individual in 100..300 {
            let prefix = first_nine(birth, 0, 0, individual);
            for remainder in 1..=3 {
                let Some(number) = with_control_digits(&prefix, remainder) else {
                    continue;
                };
                checked[remainder as usize] = true;
                assert!(accepts_2032_rule(&number));
                assert!(!accepts_classic_rule(&number));
                let id = NationalId::parse(&number).expect("2032-rule number");
                assert_eq!(id.control_rule, ControlDigitRule::From2032);
                assert_eq!(id.birth_date, birth);

                // The same k1 with a wrong k2 is rejected.
                let mut bytes = number.into_bytes();
                bytes[10] = b'0' + (bytes[10] - b'0' + 1) % 10;
                let broken = String::from_utf8(bytes).unwrap();
                assert!(!accepts_2032_rule(&broken));
                assert!(matches!(
                    NationalId::parse(&broken),
                    Err(IdentError::BadCheckDigit { .. })
                ));
            }
            for remainder in 4..=10 {
                if let Some(number) = with_control_digits(&prefix, remainder) {
                    checked[0] = true;
                    assert!(!accepts_2032_rule(&number));
                    assert!(matches!(
                        NationalId::parse(&number),
                        Err(IdentError::BadCheckDigit { .. })
                    ));
                }
            }
        }
        assert_eq!(checked, [true; 4], "not every remainder was exercised");
    }

    #[test]
    fn never_prints_the_number_or_the_birth_date() {
        let id = NationalId::parse("26115400524").unwrap();
        for text in [format!("{id}"), format!("{id:?}")] {
            assert!(!text.contains("26115400524"));
            assert!(!text.contains("1954"));
            assert!(!text.contains("261154"));
        }
        let error = NationalId::parse("26115400525").unwrap_err();
        assert!(!error.to_string().contains("2611"));
    }

    #[test]
    fn synthetic_generator_respects_the_century_allocation() {
        assert_eq!(synthetic_fodselsnummer(date(1985, 3, 14), 1000), None);
        // 2010 needs 500-999; 1950 needs 000-499 or 900-999; 1870 needs 500-749.
        assert_eq!(synthetic_fodselsnummer(date(2010, 3, 14), 100), None);
        assert_eq!(synthetic_fodselsnummer(date(1950, 3, 14), 600), None);
        assert_eq!(synthetic_fodselsnummer(date(1870, 3, 14), 800), None);
        assert_eq!(synthetic_fodselsnummer(date(2045, 3, 14), 600), None);
        assert_eq!(synthetic_fodselsnummer(date(1853, 3, 14), 600), None);
    }

    /// Any date the allocation covers, 1854-2039.
    fn any_birth_date() -> impl Strategy<Value = NaiveDate> {
        (1854i32..=2039, 1u32..=12, 1u32..=31).prop_filter_map("not a real date", |(y, m, d)| {
            NaiveDate::from_ymd_opt(y, m, d)
        })
    }

    proptest! {
        #[test]
        fn generated_synthetic_numbers_round_trip(birth in any_birth_date(), seed in 0u16..1000) {
            let individual = individual_for_year(birth.year(), seed);
            let generated = synthetic_fodselsnummer(birth, individual);
            let expected = with_control_digits(&first_nine(birth, 0, 80, individual), 0);
            prop_assert_eq!(&generated, &expected);
            if let Some(number) = generated {
                let id = NationalId::parse(&number).unwrap();
                prop_assert_eq!(id.birth_date, birth);
                prop_assert!(id.synthetic);
                prop_assert_eq!(id.kind, NationalIdKind::Fodselsnummer);
                prop_assert_eq!(id.control_rule, ControlDigitRule::Classic);
                prop_assert_eq!(id.as_str(), number.as_str());
            }
        }

        #[test]
        fn every_single_digit_change_is_rejected(
            birth in any_birth_date(),
            seed in 0u16..1000,
            offsets in prop::sample::select(vec![(0u32, 0u32), (40, 0), (0, 40), (0, 80), (40, 80)]),
            k1_remainder in 0u32..=3,
        ) {
            let individual = individual_for_year(birth.year(), seed);
            let prefix = first_nine(birth, offsets.0, offsets.1, individual);
            let Some(number) = with_control_digits(&prefix, k1_remainder) else {
                return Ok(());
            };
            prop_assert!(NationalId::parse(&number).is_ok());
            let bytes = number.as_bytes();
            for position in 0..11 {
                for digit in b'0'..=b'9' {
                    if digit == bytes[position] {
                        continue;
                    }
                    let mut mutated = bytes.to_vec();
                    mutated[position] = digit;
                    let mutated = String::from_utf8(mutated).unwrap();
                    prop_assert!(NationalId::parse(&mutated).is_err(), "accepted a mutation at {}", position);
                }
            }
        }
    }
}
